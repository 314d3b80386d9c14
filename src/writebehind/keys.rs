//! Names of the Redis keys, all under one prefix (`REDIS_KEY_PREFIX`), so
//! deployments and tests can share a Redis. See [`super::scripts`] for what
//! each key holds.

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
    pub const ALL: [Kind; 2] = [Kind::Chats, Kind::Messages];

    /// Every queue, the search-index queue last.
    pub const QUEUES: [Kind; 3] = [Kind::Chats, Kind::Messages, Kind::Search];

    /// The kind's name in keys, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chats => "chats",
            Kind::Messages => "messages",
            Kind::Search => "search",
        }
    }
}

/// Builds key names from the prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (for example `chat:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of one application: id, chat counter, message counter per chat.
    pub fn app(&self, token: &str) -> String {
        format!("{}app:{token}", self.prefix)
    }

    /// Hash of the Redis epoch: `epoch` (raised each time Redis may have
    /// lost data) and `run_id` (of the server that set it); see
    /// [`crate::store::redis::CHECK_EPOCH`].
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The record of one `Idempotency-Key` of an application (by the key's
    /// digest): `{fingerprint}\t{number}`, expiring after
    /// `IDEMPOTENCY_TTL_SECS`.
    pub fn idempotency(&self, token: &str, key_digest: &str) -> String {
        format!("{}idem:{token}:{key_digest}", self.prefix)
    }

    /// The record of one `Idempotency-Key` of an application create, by the
    /// digest of the client and the key (no application exists yet to scope
    /// it by): `{fingerprint}\t{token}`.
    pub fn application_idempotency(&self, digest: &str) -> String {
        format!("{}idem-apps:{digest}", self.prefix)
    }

    /// Set of ids whose cached count is stale (`scope` is `apps` or `chats`),
    /// for the counts refresh ([`crate::jobs::counts`]).
    pub fn dirty(&self, scope: &str) -> String {
        format!("{}dirty:{scope}", self.prefix)
    }

    /// Hash of numbers whose record was dead-lettered, so that a lookup
    /// answers at once instead of waiting for a flush that will not store
    /// it: `c:{application_id}:{n}` or `m:{application_id}:{chat}:{n}` → the
    /// reason (see [`super::record::lost_field`]).
    pub fn lost(&self) -> String {
        format!("{}lost", self.prefix)
    }

    /// List of records waiting to be flushed.
    pub fn pending(&self, kind: Kind) -> String {
        format!("{}pending:{}", self.prefix, kind.as_str())
    }

    /// List holding one claimed batch (`batch` is a fresh UUID).
    pub fn processing(&self, kind: Kind, batch: &str) -> String {
        format!("{}processing:{}:{batch}", self.prefix, kind.as_str())
    }

    /// Sorted set of processing keys by lease deadline (ms since the epoch).
    pub fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }

    /// Hash of claimed batches: processing key → `{owner}\t{claimed_at_ms}`.
    pub fn batches(&self) -> String {
        format!("{}batches", self.prefix)
    }

    /// List of records that could not be written, each a JSON object
    /// `{"record", "reason", "at"}` (see [`super::deadletter`]).
    pub fn dead_letter(&self, kind: Kind) -> String {
        format!("{}deadletter:{}", self.prefix, kind.as_str())
    }
}
