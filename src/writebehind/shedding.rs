//! Backpressure that bends: load shedding between a high-water mark and
//! `MAX_PENDING`.
//!
//! Without it, creation answers 201 until a pending list reaches
//! `MAX_PENDING` and then 503 to everyone: a cliff, reached with a queue that
//! takes minutes to drain. With it, once the pending depth passes
//! `PENDING_HIGH_WATER`, a growing share of creates is refused before Redis
//! is asked, with 503 and `Retry-After`, so that clients slow down while the
//! flusher still keeps up:
//!
//! ```text
//! share = (depth - high_water) / (max_pending - high_water), at most 0.9
//! ```
//!
//! This is the linear drop probability of Random Early Detection (Floyd and
//! Jacobson, "Random Early Detection Gateways for Congestion Avoidance",
//! IEEE/ACM Transactions on Networking, 1993), applied to the write buffer.
//!
//! The depth is the queue's total over every shard, as `MAX_PENDING` and
//! `PENDING_HIGH_WATER` are totals. It costs no extra round trip: every
//! enqueue script already returns its shard's list length, and the shedder
//! keeps the last one seen per shard and queue and sums them; the periodic
//! queue sampling (every 5 s) refreshes every shard. So a shard's answer
//! updates its own slot only, and an idempotent replay (which queues
//! nothing and reports no depth) changes nothing. The share is capped at
//! [`MAX_SHED_SHARE`] so that some requests still reach Redis and bring back
//! a fresh depth once the flusher has drained the list; a list that is truly
//! full is refused by the script itself, and one tenant is held to its own
//! share by `MAX_PENDING_PER_APPLICATION`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::keys::Kind;

/// The largest share of creates refused before Redis (the rest go on and
/// refresh the observed depth).
pub const MAX_SHED_SHARE: f64 = 0.9;

/// Seconds a shed client is told to wait (`Retry-After`).
pub const SHED_RETRY_AFTER_SECS: u64 = 1;

/// The shedding state: thresholds and the last pending depth seen per shard
/// and queue. Cheap to clone; clones share the depths.
#[derive(Debug, Clone)]
pub struct LoadShedder {
    high_water: u64,
    max_pending: u64,
    /// Last depth seen of each shard's chats and messages pending lists.
    depth: Arc<[Vec<AtomicU64>; 2]>,
    /// Last bytes sampled of each shard's chats and messages queues.
    bytes: Arc<[Vec<AtomicU64>; 2]>,
}

impl LoadShedder {
    /// Sheds between `high_water` and `max_pending` records per queue, in
    /// total over `shards` shards; a `high_water` at or above `max_pending`
    /// turns shedding off.
    pub fn new(high_water: u64, max_pending: u64, shards: u16) -> Self {
        let slots = || (0..shards.max(1)).map(|_| AtomicU64::new(0)).collect();
        Self {
            high_water,
            max_pending,
            depth: Arc::new([slots(), slots()]),
            bytes: Arc::new([slots(), slots()]),
        }
    }

    /// A shedder that never sheds.
    pub fn off() -> Self {
        Self::new(u64::MAX, 0, 1)
    }

    fn slots(&self, kind: Kind) -> Option<&[AtomicU64]> {
        Self::of(&self.depth, kind)
    }

    fn of(slots: &[Vec<AtomicU64>; 2], kind: Kind) -> Option<&[AtomicU64]> {
        match kind {
            Kind::Chats => Some(&slots[0]),
            Kind::Messages => Some(&slots[1]),
            Kind::Search => None,
        }
    }

    /// Records the bytes of `kind`'s records queued in shard `shard`, as
    /// sampled.
    pub fn observe_bytes(&self, kind: Kind, shard: u16, bytes: u64) {
        if let Some(slot) = Self::of(&self.bytes, kind).and_then(|s| s.get(usize::from(shard))) {
            slot.store(bytes, Ordering::Relaxed);
        }
    }

    /// The last sampled bytes of `kind` over every shard.
    pub fn bytes(&self, kind: Kind) -> u64 {
        Self::of(&self.bytes, kind)
            .map(|s| s.iter().map(|d| d.load(Ordering::Relaxed)).sum())
            .unwrap_or(0)
    }

    /// Records `pending`, the length of `kind`'s pending list in shard
    /// `shard` (after an enqueue, or as sampled).
    pub fn observe(&self, kind: Kind, shard: u16, pending: u64) {
        if let Some(slot) = self.slots(kind).and_then(|s| s.get(usize::from(shard))) {
            slot.store(pending, Ordering::Relaxed);
        }
    }

    /// The last known depth of `kind` in every shard but `shard`.
    pub fn depth_elsewhere(&self, kind: Kind, shard: u16) -> u64 {
        Self::elsewhere(self.slots(kind), shard)
    }

    /// The last sampled bytes of `kind` in every shard but `shard`.
    pub fn bytes_elsewhere(&self, kind: Kind, shard: u16) -> u64 {
        Self::elsewhere(Self::of(&self.bytes, kind), shard)
    }

    fn elsewhere(slots: Option<&[AtomicU64]>, shard: u16) -> u64 {
        slots
            .map(|s| {
                s.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != usize::from(shard))
                    .map(|(_, d)| d.load(Ordering::Relaxed))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The last known depth of `kind` over every shard.
    pub fn depth(&self, kind: Kind) -> u64 {
        self.slots(kind)
            .map(|s| s.iter().map(|d| d.load(Ordering::Relaxed)).sum())
            .unwrap_or(0)
    }

    /// The share of `kind`'s creates to refuse now, in `[0, MAX_SHED_SHARE]`.
    pub fn share(&self, kind: Kind) -> f64 {
        let depth = self.depth(kind);
        if self.high_water >= self.max_pending || depth <= self.high_water {
            return 0.0;
        }
        let share = (depth - self.high_water) as f64 / (self.max_pending - self.high_water) as f64;
        share.min(MAX_SHED_SHARE)
    }

    /// Whether a create of `kind` goes on to Redis (`false`: shed it).
    pub fn admit(&self, kind: Kind) -> bool {
        let share = self.share(kind);
        share <= 0.0 || rand::random::<f64>() >= share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_linearly_from_the_high_water_mark_and_is_capped() {
        let s = LoadShedder::new(100, 200, 4);
        assert_eq!(s.share(Kind::Messages), 0.0);
        s.observe(Kind::Messages, 0, 100);
        assert_eq!(s.share(Kind::Messages), 0.0);
        s.observe(Kind::Messages, 0, 150);
        assert_eq!(s.share(Kind::Messages), 0.5);
        assert_eq!(s.share(Kind::Chats), 0.0, "queues are apart");
        s.observe(Kind::Messages, 0, 10_000);
        assert_eq!(s.share(Kind::Messages), MAX_SHED_SHARE);
        let admitted = (0..10_000).filter(|_| s.admit(Kind::Messages)).count();
        assert!((500..1500).contains(&admitted), "{admitted}");
        s.observe(Kind::Messages, 0, 0);
        assert!((0..100).all(|_| s.admit(Kind::Messages)));
    }

    #[test]
    fn the_depth_is_the_total_over_the_shards_each_updating_its_own() {
        let s = LoadShedder::new(100, 200, 4);
        s.observe(Kind::Messages, 1, 90);
        s.observe(Kind::Messages, 2, 60);
        assert_eq!(s.depth(Kind::Messages), 150);
        assert_eq!(s.share(Kind::Messages), 0.5, "the total passes the mark");
        // Another shard's small answer does not reset shard 1's depth.
        s.observe(Kind::Messages, 3, 0);
        assert_eq!(s.depth(Kind::Messages), 150);
    }

    #[test]
    fn a_high_water_mark_at_max_pending_turns_shedding_off() {
        let s = LoadShedder::new(200, 200, 1);
        s.observe(Kind::Chats, 0, 10_000);
        assert_eq!(s.share(Kind::Chats), 0.0);
        let off = LoadShedder::off();
        off.observe(Kind::Chats, 0, u64::MAX);
        assert!(off.admit(Kind::Chats));
    }
}
