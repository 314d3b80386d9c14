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
//! The depth costs no extra round trip: every enqueue script already returns
//! its list's length, and the shedder keeps the last one seen per queue. The
//! share is capped at [`MAX_SHED_SHARE`] so that some requests still reach
//! Redis and bring back a fresh depth once the flusher has drained the list;
//! a list that is truly full is refused by the script itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::keys::Kind;

/// The largest share of creates refused before Redis (the rest go on and
/// refresh the observed depth).
pub const MAX_SHED_SHARE: f64 = 0.9;

/// Seconds a shed client is told to wait (`Retry-After`).
pub const SHED_RETRY_AFTER_SECS: u64 = 1;

/// The shedding state: thresholds and the last pending depth seen per queue.
/// Cheap to clone; clones share the depths.
#[derive(Debug, Clone)]
pub struct LoadShedder {
    high_water: u64,
    max_pending: u64,
    /// Last depth seen of the chats and the messages pending lists.
    depth: Arc<[AtomicU64; 2]>,
}

impl LoadShedder {
    /// Sheds between `high_water` and `max_pending` records per queue; a
    /// `high_water` at or above `max_pending` turns shedding off.
    pub fn new(high_water: u64, max_pending: u64) -> Self {
        Self {
            high_water,
            max_pending,
            depth: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    /// A shedder that never sheds.
    pub fn off() -> Self {
        Self::new(u64::MAX, 0)
    }

    fn slot(&self, kind: Kind) -> Option<&AtomicU64> {
        match kind {
            Kind::Chats => Some(&self.depth[0]),
            Kind::Messages => Some(&self.depth[1]),
            Kind::Search => None,
        }
    }

    /// Records `pending`, the length of `kind`'s pending list after an
    /// enqueue.
    pub fn observe(&self, kind: Kind, pending: u64) {
        if let Some(slot) = self.slot(kind) {
            slot.store(pending, Ordering::Relaxed);
        }
    }

    /// The share of `kind`'s creates to refuse now, in `[0, MAX_SHED_SHARE]`.
    pub fn share(&self, kind: Kind) -> f64 {
        let Some(slot) = self.slot(kind) else {
            return 0.0;
        };
        let depth = slot.load(Ordering::Relaxed);
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
        let s = LoadShedder::new(100, 200);
        assert_eq!(s.share(Kind::Messages), 0.0);
        s.observe(Kind::Messages, 100);
        assert_eq!(s.share(Kind::Messages), 0.0);
        s.observe(Kind::Messages, 150);
        assert_eq!(s.share(Kind::Messages), 0.5);
        assert_eq!(s.share(Kind::Chats), 0.0, "queues are apart");
        s.observe(Kind::Messages, 10_000);
        assert_eq!(s.share(Kind::Messages), MAX_SHED_SHARE);
        let admitted = (0..10_000).filter(|_| s.admit(Kind::Messages)).count();
        assert!((500..1500).contains(&admitted), "{admitted}");
        s.observe(Kind::Messages, 0);
        assert!((0..100).all(|_| s.admit(Kind::Messages)));
    }

    #[test]
    fn a_high_water_mark_at_max_pending_turns_shedding_off() {
        let s = LoadShedder::new(200, 200);
        s.observe(Kind::Chats, 10_000);
        assert_eq!(s.share(Kind::Chats), 0.0);
        let off = LoadShedder::off();
        off.observe(Kind::Chats, u64::MAX);
        assert!(off.admit(Kind::Chats));
    }
}
