//! Names of the Redis keys, all under one prefix (`REDIS_KEY_PREFIX`), so
//! deployments and tests can share a Redis. See [`super::scripts`] for what
//! each key holds.
//!
//! **Shards.** The queues are cut into `QUEUE_SHARDS` shards. An application
//! belongs to shard `CRC16(token) mod QUEUE_SHARDS` (CRC-16/XMODEM, the hash
//! Redis Cluster itself uses for key slots), and every key one of its scripts
//! touches carries its shard's hash tag, `{prefix}{N}:…` with `N` in braces
//! ([`ShardKeys`]): its hash, its shard's pending and processing lists,
//! leases, batches, dead letters, dirty marks, lost numbers, idempotency keys
//! and epoch. So each Lua script touches one hash slot, which Redis Cluster
//! requires (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags>),
//! and the shards spread over the cluster's masters. The only keys outside a
//! shard ([`Keys::application_idempotency`], [`Keys::shard_count`]) are read
//! and written by single-key commands.

use super::lease::{LeaseSet, Queue};

/// The key segment of the lists where records wait (`pending:{kind}`).
const PENDING: &str = "pending:";

/// The queues of the buffer: two flushed to MariaDB (chats always before
/// messages) and one applied to Meilisearch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `pending:chats`
    Chats,
    /// `pending:messages`
    Messages,
    /// `pending:search`: changes waiting to be applied to Meilisearch
    /// (see [`crate::jobs::indexer`]); not a write to MariaDB.
    Search,
}

impl Kind {
    /// The kinds the flusher writes to MariaDB, in flush order.
    pub const FLUSHED_TO_DATABASE: [Kind; 2] = [Kind::Chats, Kind::Messages];

    /// Every queue, the search-index queue last.
    pub const EVERY_QUEUE: [Kind; 3] = [Kind::Chats, Kind::Messages, Kind::Search];

    /// The kind's name in keys, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chats => "chats",
            Kind::Messages => "messages",
            Kind::Search => "search",
        }
    }
}

/// The largest `QUEUE_SHARDS`: one shard per Redis Cluster slot would be the
/// most that can spread, and far more than any instance needs.
pub const MAX_SHARDS: u16 = 1024;

/// Builds key names from the prefix and the shard count.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    shards: u16,
}

impl Keys {
    /// Keys under `prefix` (for example `chat:`), in one shard.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self::with_shards(prefix, 1)
    }

    /// Keys under `prefix` in `shards` shards (at least 1).
    pub fn with_shards(prefix: impl Into<String>, shards: u16) -> Self {
        Self {
            prefix: prefix.into(),
            shards: shards.max(1),
        }
    }

    /// The key names of a configuration: `REDIS_KEY_PREFIX` cut into
    /// `QUEUE_SHARDS` shards.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::with_shards(config.redis_key_prefix.clone(), config.queue_shards)
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many shards the queues are cut into (`QUEUE_SHARDS`).
    pub fn shard_count(&self) -> u16 {
        self.shards
    }

    /// The shard of `token`'s application: CRC-16/XMODEM of the token, modulo
    /// the shard count.
    pub fn shard_index(&self, token: &str) -> u16 {
        const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
        CRC16.checksum(token.as_bytes()) % self.shards
    }

    /// The keys of `token`'s shard.
    pub fn for_token(&self, token: &str) -> ShardKeys {
        self.shard(self.shard_index(token))
    }

    /// The keys of shard `index` (taken modulo the shard count).
    pub fn shard(&self, index: u16) -> ShardKeys {
        let index = index % self.shards;
        ShardKeys {
            index,
            prefix: format!("{}{{{index}}}:", self.prefix),
        }
    }

    /// Every shard, in order.
    pub fn shards(&self) -> impl Iterator<Item = ShardKeys> + '_ {
        (0..self.shards).map(|i| self.shard(i))
    }

    /// The record of one `Idempotency-Key` of an application create, by the
    /// digest of the client and the key (no application exists yet to scope
    /// it by): `{fingerprint}\t{token}`. Outside the shards: only ever
    /// touched by single-key commands.
    pub fn application_idempotency(&self, digest: &str) -> String {
        format!("{}idem-apps:{digest}", self.prefix)
    }

    /// String holding the shard count the data in Redis was written with,
    /// set at the first start-up (see [`crate::writebehind::shards`]).
    pub fn shard_count_key(&self) -> String {
        format!("{}queue-shards", self.prefix)
    }
}

/// The keys of one shard: all carry its hash tag, so that a script may
/// touch any of them at once, also on Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    index: u16,
    prefix: String,
}

impl ShardKeys {
    /// The shard's number, from 0.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The prefix of every key of the shard, hash tag included (`chat:{3}:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of one application: id, chat counter, message counter per chat.
    pub fn app(&self, token: &str) -> String {
        format!("{}app:{token}", self.prefix)
    }

    /// Hash of the shard's Redis epoch: `epoch` (raised each time the Redis
    /// holding the shard may have lost data) and `run_id` (of the server that
    /// set it); see [`crate::redis::CHECK_EPOCH`].
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The record of one `Idempotency-Key` of an application (by the key's
    /// digest): `{fingerprint}\t{number}`, expiring after
    /// `IDEMPOTENCY_TTL_SECS`.
    pub fn idempotency(&self, token: &str, key_digest: &str) -> String {
        format!("{}idem:{token}:{key_digest}", self.prefix)
    }

    /// The lease set of the record queues (chats, messages, search): the
    /// flusher's and the indexer's batches.
    pub fn record_leases(&self) -> LeaseSet {
        LeaseSet {
            leases: self.leases(),
            batches: self.batches(),
            prefix: self.prefix.clone(),
            processing: "processing:",
            waiting: PENDING,
        }
    }

    /// The queue of `kind`'s records: the `pending:{kind}` list.
    pub fn record_queue(&self, kind: Kind) -> Queue {
        Queue {
            name: kind.as_str(),
            lease_set: self.record_leases(),
        }
    }

    /// The lease set of the dirty marks (the counts refresher's batches).
    pub fn dirty_lease_set(&self) -> LeaseSet {
        LeaseSet {
            leases: self.dirty_leases(),
            batches: format!("{}dirtybatches", self.prefix),
            prefix: self.prefix.clone(),
            processing: "dirtyproc:",
            waiting: "dirty:",
        }
    }

    /// The queue of the dirty marks of `scope` (`apps` or `chats`): the
    /// `dirty:{scope}` set.
    pub fn dirty_queue(&self, scope: &'static str) -> Queue {
        Queue {
            name: scope,
            lease_set: self.dirty_lease_set(),
        }
    }

    /// Set of ids whose cached count is stale (`scope` is `apps` or `chats`),
    /// for the counts refresh ([`crate::jobs::counts`]).
    pub fn dirty(&self, scope: &str) -> String {
        format!("{}dirty:{scope}", self.prefix)
    }

    /// Sorted set of the counts refresh's taken marks by lease deadline.
    pub fn dirty_leases(&self) -> String {
        format!("{}dirtyleases", self.prefix)
    }

    /// Hash of numbers whose record was dead-lettered, so that a lookup
    /// answers at once instead of waiting for a flush that will not store
    /// it: `c:{application_id}:{n}` or `m:{application_id}:{chat}:{n}` → the
    /// reason (see [`super::deadletter::lost_field`]).
    pub fn lost(&self) -> String {
        format!("{}lost", self.prefix)
    }

    /// Prefix of the read-your-writes marks of this shard's applications
    /// (with read replicas, see [`crate::store::replicas`]): string keys
    /// `causal:a:{application_id}` and `causal:c:{chat_id}` → the GTID of
    /// the scope's last write, expiring after `READ_REPLICA_MAX_LAG_SECS`
    /// + 10 s.
    pub fn causal(&self) -> String {
        format!("{}causal:", self.prefix)
    }

    /// List of records waiting to be flushed (or, for [`Kind::Search`],
    /// indexed).
    /// (The request path calls this on every create: it formats the one
    /// name, as [`Queue::waiting`] of [`Self::record_queue`] would.)
    pub fn pending(&self, kind: Kind) -> String {
        format!("{}{PENDING}{}", self.prefix, kind.as_str())
    }

    /// Sorted set of processing keys by lease deadline (ms since the epoch).
    pub fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }

    /// Hash of claimed batches: processing key → `{owner}\t{claimed_at_ms}`.
    pub fn batches(&self) -> String {
        format!("{}batches", self.prefix)
    }

    /// The string [`super::group_commit`] writes before each `WAIT`, so that
    /// one `WAIT` on its own connection covers every write made before it
    /// on the shard's master.
    pub fn replica_beacon(&self) -> String {
        format!("{}replica-beacon", self.prefix)
    }

    /// Hash of what the shard's record queues hold, counted exactly as
    /// records enter (the enqueue scripts, a replay) and leave (the
    /// acknowledgement of their batch): `bytes:chats` and `bytes:messages`
    /// (bytes of the records pending or claimed) and `app:{application_id}`
    /// (records of the application pending or claimed, both kinds). A field
    /// that falls to 0 is removed. It bounds Redis's memory
    /// (`MAX_PENDING_BYTES`) and each tenant's share of the buffer
    /// (`MAX_PENDING_PER_APPLICATION`).
    pub fn usage(&self) -> String {
        format!("{}usage", self.prefix)
    }

    /// The live-event flag of chat `chat` of `token`'s application: a
    /// string that exists while some instance holds a subscriber of the
    /// chat's event stream, with a time to live each such instance renews
    /// (see [`super::live`]). The enqueue and event scripts append to the
    /// chat's stream ([`Self::live_stream`]) only while it exists.
    pub fn live_flag(&self, token: &str, chat: i64) -> String {
        format!("{}live:{token}:{chat}", self.prefix)
    }

    /// The chat's capped stream of live events (a Redis Stream,
    /// `MAXLEN ~ LIVE_STREAM_MAXLEN`): `message.created`, `message.updated`,
    /// `message.deleted`, `chat.deleted` and `open` markers (see
    /// [`super::live`]).
    pub fn live_stream(&self, token: &str, chat: i64) -> String {
        format!("{}events:{token}:{chat}", self.prefix)
    }

    /// The generation of the chat's live stream: a random string made when
    /// the stream is created, part of every event id, so that a resume
    /// after the stream was lost and made again is told apart.
    pub fn live_generation(&self, token: &str, chat: i64) -> String {
        format!("{}events-gen:{token}:{chat}", self.prefix)
    }

    /// How many edit and delete events the chat's live stream has had in its
    /// generation (an integer, `INCR`ed by [`super::live::APPEND`], set to 0
    /// with a new generation): an event id carries it, so that a resume can
    /// prove that no edit or delete happened since (see [`super::live`]).
    pub fn live_changes(&self, token: &str, chat: i64) -> String {
        format!("{}events-chg:{token}:{chat}", self.prefix)
    }

    /// The open live event streams of `token`'s application, over every
    /// instance: a sorted set of `{instance}:{stream}` scored by the time
    /// (ms) their lease ends, renewed with the live flags (see
    /// [`super::live::ADMIT`]); `MAX_STREAMS_PER_APPLICATION` caps its size.
    pub fn live_streams(&self, token: &str) -> String {
        format!("{}live-streams:{token}", self.prefix)
    }

    /// The set of `token`'s chats that have had a live flag within the last
    /// [`super::live::STREAM_TTL_SECS`] (chat numbers), so that deleting the
    /// application can end their streams with `chat.deleted`.
    pub fn live_chats(&self, token: &str) -> String {
        format!("{}live-chats:{token}", self.prefix)
    }

    /// A one-entry stream the live readers of this shard also block on, so
    /// that a chat newly watched wakes them (see [`super::live`]).
    pub fn live_wake(&self) -> String {
        format!("{}live-wake", self.prefix)
    }

    /// List of records that could not be written, each a JSON object
    /// `{"record", "reason", "at"}` (see [`super::deadletter`]).
    pub fn dead_letter(&self, kind: Kind) -> String {
        format!("{}deadletter:{}", self.prefix, kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_list_is_the_waiting_list_of_its_record_queue() {
        let shard = Keys::with_shards("chat:", 4).shard(3);
        for kind in Kind::EVERY_QUEUE {
            assert_eq!(shard.pending(kind), shard.record_queue(kind).waiting());
        }
        assert_eq!(shard.pending(Kind::Chats), "chat:{3}:pending:chats");
    }

    #[test]
    fn a_token_always_lands_in_the_same_shard_and_shards_spread() {
        let keys = Keys::with_shards("chat:", 16);
        let a = keys.for_token("tok-a");
        assert_eq!(a, keys.for_token("tok-a"));
        assert!(
            a.app("tok-a")
                .starts_with(&format!("chat:{{{}}}:", a.index()))
        );
        // CRC-16/XMODEM of "123456789" is 0x31C3 (its check value).
        assert_eq!(
            Keys::with_shards("p", 1024).shard_index("123456789"),
            0x31C3 % 1024
        );
        let used: std::collections::HashSet<u16> = (0..1000)
            .map(|i| keys.shard_index(&format!("token-{i}")))
            .collect();
        assert_eq!(used.len(), 16);
    }
}
