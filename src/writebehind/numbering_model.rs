//! An exhaustive model check of the numbering protocol (docs/numbering.md)
//! for one scope: a breadth-first search over every interleaving of the
//! protocol's steps, within small bounds, checking invariants I1, I2 and I3
//! in every state reached. It models the code as of issue 39's last
//! commit: restarts one at a time per process, the conditional RAISE_BOUND
//! (after a reservation, and after a RESTART that did not apply), and the
//! sweep's `marked_evicted` and checked-epoch filter.
//!
//! **What is modelled.** One message scope (a chat that MariaDB holds, never
//! deleted), its row in MariaDB (`reserved_to` R, `evicted_epoch` X), the
//! numbers stored (S) and recorded skipped (K); and one or two Redis servers
//! ("lineages"), each with its epoch hash (E and the lineage that set it),
//! the scope's counter C, checked field V, bound B, the queue of its
//! records and its skipped ranges waiting in `k:`. Each Lua script is one
//! atomic step. Each Rust-level sequence (a restart, a reservation, the
//! idle sweep, recording skips) is a slot per server holding what it read,
//! one step per Redis call or SQL statement, so that every other step may
//! run between two of them; a sequence in flight may be abandoned at any
//! point (an instance killed, a time-out, an error), and, while two servers
//! are live, its next call may reach the other one (an instance's pool
//! holding connections to both in a split brain: the old master still
//! reached, the promoted replica). Loss events: a `SAVE` (or any
//! persistence point), a restart from the last one (so from any earlier
//! state: the `SAVE` may have run at any point) or empty, both with a new
//! lineage; a fork (a replica, a copy of the data now or at the last save,
//! promoted while the old master lives on: split brain), once; and the end
//! of one of two servers.
//!
//! **What is left out, or abstracted.** Deletes and tombstones, idempotency
//! keys, dead letters, reshards, several scopes; one sweep and one
//! reservation per server at a time ([`Config::restart_slots`] restarts).
//! Every hand-out counts as acknowledged (indeterminate answers included):
//! the stronger check. The sweep reads C, V and B in one step (`HSCAN`
//! pages may split them), and any counter may be its candidate (the
//! "unchanged since the previous sweep" test is a heuristic of idleness;
//! the previous sweep may have seen the same value however long ago).
//! Reservations use one block size (`next_block` varies it; only the
//! arithmetic would change), so a reservation ahead is due exactly when
//! NO_BLOCK is (C = B), and both are one trigger. A queue is kept as the
//! set of its numbers. The `app:` hash's `id` is taken as always there
//! (APP_MISS is seeded at once). The gap window (O10) is far above the
//! model's numbers. Open items O5 and O6 are excluded by default, each
//! behind a flag of [`Config`] and shown found by a test.
//!
//! **Invariants.** I1: no number is handed out twice (checked at each
//! hand-out). I3: a number handed out is at most R at that moment, or in
//! the first block. I2, in *settled* states (on every live server the
//! queue flushed, the epoch valid, and the counter there, checked in it):
//! every number handed out is stored, or recorded skipped in MariaDB or in
//! a live server's `k:`. Before a scope restarts after a loss, a lost
//! number is recorded nowhere yet (RESTART records it in the step that
//! moves C past it, I2.2; a lookup restarts the scope first, 2.11), hence
//! the settled states. A second record under one number (a collision at
//! the flush) needs the number handed out twice, which I1 flags first; so a
//! flush of a number already stored is a replay of the same record
//! (idempotent), as after a restore.
//!
//! **Findings** (each a test below, with its trace): 1, the sweep marks an
//! epoch it never saw the counter checked in; 2a-2c, a RAISE_BOUND or a
//! sweep acting on the other server of a split brain, or a restart's
//! RAISE_BOUND past another lineage's numbers; 3, two restarts of a scope
//! in flight bring it back "exactly" at a stale H (closed by the eviction
//! generation G, O12). [`Config::with_fixes`] holds the fixes of 1 to 3,
//! all in the code now.
//!
//! Epochs and lineages are renumbered 1, 2, … in each state explored (they
//! are only compared for equality); a counterexample's trace is replayed
//! without renumbering, so each new one shows as a new number there.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// The rules of the protocol the model applies, the fixes it proposes, the
/// open items it lets happen, and its bounds.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// The implicit first block ([`crate::store::numbering::FIRST_BLOCK`],
    /// 16 in the code), also the block a restart reserves past its floor.
    first_block: u8,
    /// The block a reservation adds (`next_block`: 16 to 2048 in the code).
    block: u8,
    /// Search bound: no number above this is handed out.
    max_number: u8,
    /// Search bound: no compare-and-set takes R above this (at most 15).
    max_reserved: u8,
    /// Search bound: loss events (a restart from a save or empty, a fork).
    max_losses: u8,
    /// Search bound: sequences in flight at once over all servers
    /// (restarts, reservations, sweeps past their look, skips being
    /// recorded).
    max_in_flight: u8,
    /// Search bound: restarts in flight at once on one server (1 or 2:
    /// two instances hit by the same doubt).
    restart_slots: usize,
    /// Safety net: the search stops (the test fails) past this many states.
    max_states: usize,
    /// Search restriction: no loss event while a sweep is in flight (this
    /// leaves out finding 1).
    losses_between_sweeps_only: bool,
    /// Search restriction: every call of a sequence reaches the server it
    /// started on (no instance's pool holds connections to both servers
    /// of a split brain; this leaves out finding 2).
    one_server_per_sequence: bool,
    /// Search restriction: every call of a restart reaches the server it
    /// started on (with one restart slot, this leaves out finding 3).
    one_server_per_restart: bool,
    /// Search restriction: no idle sweep (no eviction).
    no_sweep: bool,
    /// EVICT takes only a counter checked in the current epoch (`c[2] ==
    /// ARGV[1]`); off: the pre-fix EVICT, which compared the value only.
    evict_requires_checked_epoch: bool,
    /// [`crate::store::numbering::reserve`] is a compare-and-set on R; off:
    /// the pre-fix `GREATEST(reserved_to, to)`, which always won.
    reserve_is_cas: bool,
    /// A won compare-and-set clears X (`evicted_epoch = NULL`).
    reserve_clears_evicted: bool,
    /// [`crate::store::numbering::mark_evicted`] sets X only where R is
    /// the bound the sweep read (else clears it); off: O2 before its fix.
    mark_evicted_requires_bound: bool,
    /// RESTART writes the range it jumps over to `k:`.
    restart_writes_skips: bool,
    /// A restart of a missing counter writes the gaps below H to `k:`
    /// (the fix of O4).
    restart_records_gaps: bool,
    /// A restart whose RESTART did not apply raises B to the bound it won
    /// (`restart_now` in the working tree; off: as at `ba223e8`).
    restart_raises_bound_when_not_applied: bool,
    /// Finding 1's fix, in the code (`src/jobs/idle.rs`): the sweep marks and evicts a
    /// candidate only if the V it read with C is the E it reads next
    /// (without it, a Redis loss between the two lets `mark_evicted` write
    /// an epoch the counter was never checked in, and the lost counter
    /// comes back "exactly", below numbers handed out).
    fix_sweep_marks_only_an_epoch_it_saw_checked: bool,
    /// Finding 2a's fix, in the code (RAISE_BOUND's third argument): a
    /// reservation's RAISE_BOUND raises B
    /// only if B (the first block's when absent) is still the value the
    /// compare-and-set went from. Without it, in a split brain, a step won
    /// from one server's B raises the other server's, and the numbers
    /// between (another lineage's) are handed out twice (finding 2a).
    fix_reservation_raises_only_from_its_bound: bool,
    /// Finding 2c's fix, in the code: the RAISE_BOUND a restart runs when
    /// its RESTART did not apply raises B only if B is the R its
    /// compare-and-set went from (finding 2c).
    fix_restart_raises_only_from_its_reservation: bool,
    /// Finding 3's fix (O12), in the code: an exact RESTART applies only
    /// if G is still the one the restart read before H (EVICT makes a new
    /// one); off: a restart that read H before another restart, a create,
    /// a flush and an eviction brings the counter back below that create.
    fix_exact_restart_checks_generation: bool,
    /// The flusher may store any queued record, not only the oldest
    /// (deferred messages, two instances flushing one shard: the situation
    /// of O4, closed by the gaps below H); off: oldest first.
    flush_out_of_order: bool,
    /// O5: a server may end (demoted and resynced, or gone) holding records
    /// or `k:` ranges that only it holds, or before its scope restarted
    /// after a loss (so what it lost is recorded nowhere).
    o5_end_holding_unrecorded: bool,
    /// O6: a memory-snapshot restore brings the last save back with the
    /// lineage unchanged.
    o6_memory_snapshot: bool,
}

impl Config {
    /// The protocol as the code has it, open items excluded; the tests set
    /// the bounds ([`bounded`]).
    fn as_coded() -> Self {
        Self {
            first_block: 2,
            block: 2,
            max_number: 4,
            max_reserved: 8,
            max_losses: 2,
            max_in_flight: 2,
            restart_slots: 1,
            max_states: 3_000_000,
            losses_between_sweeps_only: false,
            one_server_per_sequence: false,
            one_server_per_restart: false,
            no_sweep: false,
            evict_requires_checked_epoch: true,
            reserve_is_cas: true,
            reserve_clears_evicted: true,
            mark_evicted_requires_bound: true,
            restart_writes_skips: true,
            restart_records_gaps: true,
            restart_raises_bound_when_not_applied: true,
            fix_sweep_marks_only_an_epoch_it_saw_checked: true,
            fix_reservation_raises_only_from_its_bound: true,
            fix_restart_raises_only_from_its_reservation: true,
            fix_exact_restart_checks_generation: true,
            flush_out_of_order: true,
            o5_end_holding_unrecorded: false,
            o6_memory_snapshot: false,
        }
    }

    /// [`Config::as_coded`] with the fixes this model found (findings 1
    /// to 3).
    fn with_fixes() -> Self {
        Self {
            fix_sweep_marks_only_an_epoch_it_saw_checked: true,
            fix_reservation_raises_only_from_its_bound: true,
            fix_restart_raises_only_from_its_reservation: true,
            fix_exact_restart_checks_generation: true,
            ..Self::as_coded()
        }
    }
}

/// An FxHash-style hasher (std's SipHash is slow in a debug build, and the
/// states are not attacker-chosen).
#[derive(Default)]
struct Fx(u64);

impl Fx {
    /// Mixes in one word.
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The set of states seen.
type Seen = HashSet<State, BuildHasherDefault<Fx>>;

/// The bit of number `n` in a set of numbers.
fn bit(n: u8) -> u16 {
    1 << n
}

/// The set of numbers in `(after, to]`.
fn range(after: u8, to: u8) -> u16 {
    (after + 1..=to).fold(0, |m, n| m | bit(n))
}

/// The highest number of a set (0 when empty).
fn highest(set: u16) -> u8 {
    if set == 0 {
        0
    } else {
        (15 - set.leading_zeros()) as u8
    }
}

/// A set of numbers, written `{1,2}`.
fn show(set: u16) -> String {
    let items: Vec<String> = (0..16u8)
        .filter(|n| set & bit(*n) != 0)
        .map(|n| n.to_string())
        .collect();
    format!("{{{}}}", items.join(","))
}

/// A scope's checked field (`v:{n}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Checked {
    /// Checked in this epoch.
    Epoch(u8),
    /// Put in doubt by [`super::DOUBT`].
    Doubt,
}

/// What one Redis server holds of the scope: what `SAVE` writes, a restart
/// reads back, and a replica copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Data {
    /// The shard's epoch hash: E and the lineage that set it.
    epoch: Option<(u8, u8)>,
    /// C: the last number handed out (`None`: missing).
    counter: Option<u8>,
    /// V.
    checked: Option<Checked>,
    /// B (`None`: absent, the first block).
    bound: Option<u8>,
    /// The records queued and not flushed yet (their numbers).
    pending: u16,
    /// The numbers of the `k:` ranges.
    skips: u16,
    /// G: the application hash's eviction generation (`g`), fresh at each
    /// EVICT that takes the counter. Within one epoch valid on one server
    /// it only grows, so a fresh value stands for the code's `HINCRBY`.
    generation: u8,
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u8>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "E={} C={} V={} B={} queue={} k:={} G={}",
            self.epoch.map_or("-".to_string(), |(e, by)| format!(
                "{e} (set by lineage {by})"
            )),
            opt(self.counter),
            match self.checked {
                None => "-".to_string(),
                Some(Checked::Doubt) => "doubt".to_string(),
                Some(Checked::Epoch(e)) => e.to_string(),
            },
            opt(self.bound),
            show(self.pending),
            show(self.skips),
            self.generation,
        )
    }
}

/// An in-flight [`super::Numbering::restart`] (`restart_now`, after
/// COUNTER_MISS or UNVERIFIED, or a lookup's `WriteBehind::settle`): what
/// it read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum RestartOp {
    /// None.
    Idle,
    /// Next: read H (`chats::message_floor`).
    ReadHighest {
        /// The epoch the caller read.
        epoch: u8,
        /// The counter was missing.
        missing: bool,
        /// G as read, before H (`Numbering::eviction_generation`).
        generation: u8,
    },
    /// Next: read R and X ([`crate::store::numbering::reservation`]).
    ReadReservation {
        /// The epoch the caller read.
        epoch: u8,
        /// The counter was missing.
        missing: bool,
        /// H as read.
        highest: u8,
        /// G as read, before H.
        generation: u8,
    },
    /// Next: RESTART in exact mode.
    Exact {
        /// The epoch the caller read.
        epoch: u8,
        /// G as read, before H.
        generation: u8,
        /// H as read.
        highest: u8,
        /// max(R, H) as read.
        bound: u8,
    },
    /// Next: the compare-and-set of R from `read` to max(R, H) + the first
    /// block.
    Reserve {
        /// The epoch the caller read.
        epoch: u8,
        /// The counter was missing.
        missing: bool,
        /// H as read.
        highest: u8,
        /// R as read.
        read: u8,
    },
    /// The compare-and-set lost: next, read R again
    /// ([`crate::store::numbering::reserved_to`]).
    Reread {
        /// The epoch the caller read.
        epoch: u8,
        /// The counter was missing.
        missing: bool,
        /// H as read.
        highest: u8,
    },
    /// The compare-and-set won, the counter was missing: next, read the
    /// gaps below H ([`crate::store::numbering::gaps`]).
    Gaps {
        /// The epoch the caller read.
        epoch: u8,
        /// H as read.
        highest: u8,
        /// R as read: the compare-and-set went from it.
        read: u8,
        /// The new bound, R now.
        bound: u8,
    },
    /// Next: RESTART.
    Script {
        /// The epoch the caller read.
        epoch: u8,
        /// H as read.
        highest: u8,
        /// R as read: the compare-and-set went from it.
        read: u8,
        /// The new bound.
        bound: u8,
        /// The gaps read (numbers below H never stored).
        gaps: u16,
    },
    /// RESTART did not apply: next, RAISE_BOUND to the bound won.
    Raise {
        /// R as read: the compare-and-set went from it.
        read: u8,
        /// The bound won.
        bound: u8,
    },
}

/// An in-flight reservation ([`super::Numbering::reserve`] after NO_BLOCK,
/// or [`super::Numbering::reserve_ahead`]'s task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReserveOp {
    /// None.
    Idle,
    /// Next: read B (`HGET r:{n}`).
    ReadBound {
        /// The counter the create saw.
        counter: u8,
    },
    /// Next: the compare-and-set of R from `bound` to max(B, counter) +
    /// block.
    Cas {
        /// The counter the create saw.
        counter: u8,
        /// B as read (the first block's when absent).
        bound: u8,
    },
    /// The compare-and-set lost: next, read B again, or give up with DOUBT.
    Lost {
        /// The counter the create saw.
        counter: u8,
        /// B as read.
        bound: u8,
    },
    /// The compare-and-set won: next, RAISE_BOUND.
    Raise {
        /// The bound it started from.
        from: u8,
        /// R now.
        to: u8,
    },
}

/// The idle sweep of one instance ([`crate::jobs::idle::IdleCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SweepOp {
    /// Between sweeps.
    Idle,
    /// C is a candidate: next, read H (`chats::highest_message_numbers`).
    Highest {
        /// C as read.
        value: u8,
        /// B as read.
        bound: u8,
        /// V as read (kept only for the proposed fix).
        checked: Option<Checked>,
    },
    /// C = H: next, read E ([`super::Numbering::current_epoch`]).
    Epoch {
        /// C as read.
        value: u8,
        /// B as read.
        bound: u8,
        /// V as read (kept only for the proposed fix).
        checked: Option<Checked>,
    },
    /// Next: `mark_evicted`.
    Mark {
        /// C as read.
        value: u8,
        /// B as read.
        bound: u8,
        /// E as read.
        epoch: u8,
    },
    /// Next: read which scopes are marked
    /// ([`crate::store::numbering::marked_evicted`]).
    Marked {
        /// C as read.
        value: u8,
        /// E as read.
        epoch: u8,
    },
    /// Next: EVICT.
    Evict {
        /// C as read.
        value: u8,
        /// E as read.
        epoch: u8,
    },
}

/// An in-flight [`super::Numbering::record_skips`] (after a restart, or by
/// the sweep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RecordOp {
    /// None.
    Idle,
    /// Next: `record_skip` of the ranges read.
    Sql {
        /// `k:` as read.
        value: u16,
    },
    /// Next: CLEAR_SKIPS.
    Clear {
        /// `k:` as read.
        value: u16,
    },
}

/// The kinds of in-flight sequence on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// [`RestartOp`], in restart slot `.0`.
    Restart(usize),
    /// [`ReserveOp`].
    Reserve,
    /// [`SweepOp`].
    Sweep,
    /// [`RecordOp`].
    Record,
}

/// Restart slots per server, at most ([`Config::restart_slots`]).
const RESTART_SLOTS: usize = 2;

/// One Redis server, and the instances' sequences talking to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Lineage {
    /// Its lineage (`run_id/master_replid`): a new one at each restart.
    id: u8,
    /// Its data.
    data: Data,
    /// Its last `SAVE` (`None`: none).
    saved: Option<Data>,
    /// Restarts in flight.
    restarts: [RestartOp; RESTART_SLOTS],
    /// A reservation in flight.
    reserve: ReserveOp,
    /// The sweep.
    sweep: SweepOp,
    /// Skips being recorded.
    record: RecordOp,
}

impl Lineage {
    /// A server holding `data` under lineage `id`, nothing in flight.
    const fn new(id: u8, data: Data) -> Self {
        Self {
            id,
            data,
            saved: None,
            restarts: [RestartOp::Idle; RESTART_SLOTS],
            reserve: ReserveOp::Idle,
            sweep: SweepOp::Idle,
            record: RecordOp::Idle,
        }
    }

    /// The epoch in force, if the epoch hash is this lineage's.
    fn valid_epoch(&self) -> Option<u8> {
        self.data
            .epoch
            .filter(|(_, by)| *by == self.id)
            .map(|(e, _)| e)
    }

    /// Whether the slot `kind` is in use.
    fn busy(&self, kind: Slot) -> bool {
        match kind {
            Slot::Restart(i) => self.restarts[i] != RestartOp::Idle,
            Slot::Reserve => self.reserve != ReserveOp::Idle,
            Slot::Sweep => self.sweep != SweepOp::Idle,
            Slot::Record => self.record != RecordOp::Idle,
        }
    }

    /// Empties the slot `kind`.
    fn clear(&mut self, kind: Slot) {
        match kind {
            Slot::Restart(i) => self.restarts[i] = RestartOp::Idle,
            Slot::Reserve => self.reserve = ReserveOp::Idle,
            Slot::Sweep => self.sweep = SweepOp::Idle,
            Slot::Record => self.record = RecordOp::Idle,
        }
    }

    /// Sequences in flight.
    fn in_flight(&self) -> usize {
        self.restarts
            .iter()
            .filter(|r| **r != RestartOp::Idle)
            .count()
            + usize::from(self.reserve != ReserveOp::Idle)
            + usize::from(self.sweep != SweepOp::Idle)
            + usize::from(self.record != RecordOp::Idle)
    }
}

/// The unused place of a server that is not live.
const NONE: Lineage = Lineage::new(
    0,
    Data {
        epoch: None,
        counter: None,
        checked: None,
        bound: None,
        pending: 0,
        skips: 0,
        generation: 0,
    },
);

/// An invariant broken in a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Violation {
    /// I1: `.0` handed out a second time.
    HandedOutTwice(u8),
    /// I3: `n` handed out above R and the first block.
    AboveReserved {
        /// The number.
        n: u8,
        /// R then.
        reserved: u8,
    },
}

/// The whole system: MariaDB, the servers, and the bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    /// `number_reservations.reserved_to` (`None`: no row).
    row: Option<u8>,
    /// X: `evicted_epoch`.
    evicted: Option<u8>,
    /// S: the numbers stored.
    stored: u16,
    /// K: the numbers in `skipped_numbers`.
    skipped: u16,
    /// Every number handed out (and acknowledged).
    handed_out: u16,
    /// The servers: the first `live` are live, the others [`NONE`].
    lineages: [Lineage; 2],
    /// How many servers are live (1 or 2).
    live: usize,
    /// The next fresh lineage.
    next_id: u8,
    /// The next fresh epoch (A4: never set twice).
    next_epoch: u8,
    /// The next fresh eviction generation.
    next_generation: u8,
    /// Loss events so far.
    losses: u8,
    /// Whether the fork happened.
    forked: bool,
    /// A broken invariant (the state is not explored further).
    violation: Option<Violation>,
}

impl State {
    /// R as the code reads it (the first block when no row).
    fn reserved(&self, cfg: &Config) -> u8 {
        self.row.unwrap_or(cfg.first_block).max(cfg.first_block)
    }

    /// H: the highest number stored (0: none).
    fn highest(&self) -> u8 {
        highest(self.stored)
    }

    /// A fresh epoch value.
    fn fresh_epoch(&mut self) -> u8 {
        self.next_epoch += 1;
        self.next_epoch - 1
    }

    /// A fresh eviction generation.
    fn fresh_generation(&mut self) -> u8 {
        self.next_generation += 1;
        self.next_generation - 1
    }

    /// Calls `f` on every eviction generation the state holds (each
    /// server's G, saved or not, and the G restarts in flight read), in a
    /// fixed order.
    fn visit_generations(&mut self, f: &mut impl FnMut(&mut u8)) {
        for l in &mut self.lineages[..self.live] {
            f(&mut l.data.generation);
            if let Some(saved) = &mut l.saved {
                f(&mut saved.generation);
            }
            for r in &mut l.restarts {
                match r {
                    RestartOp::ReadHighest { generation, .. }
                    | RestartOp::ReadReservation { generation, .. }
                    | RestartOp::Exact { generation, .. } => f(generation),
                    _ => {}
                }
            }
        }
    }

    /// A fresh lineage.
    fn fresh_id(&mut self) -> u8 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// [`crate::store::numbering::reserve`]: R from `expected` to `to`;
    /// whether it won. A compare-and-set: the UPDATE matches R = expected,
    /// or, with no row, the INSERT succeeds when expected is the first
    /// block (a duplicate key loses); both clear X.
    fn reserve(&mut self, cfg: &Config, expected: u8, to: u8) -> bool {
        if !cfg.reserve_is_cas {
            self.row = Some(self.reserved(cfg).max(to));
        } else if self.reserved(cfg) == expected {
            self.row = Some(to);
        } else {
            return false;
        }
        if cfg.reserve_clears_evicted {
            self.evicted = None;
        }
        true
    }

    /// Calls `f` on every epoch value the state holds (E, V, X, and the
    /// epochs sequences in flight read), in a fixed order.
    fn visit_epochs(&mut self, f: &mut impl FnMut(&mut u8)) {
        /// The epochs of one server's data.
        fn data(d: &mut Data, f: &mut impl FnMut(&mut u8)) {
            if let Some((e, _)) = &mut d.epoch {
                f(e);
            }
            if let Some(Checked::Epoch(e)) = &mut d.checked {
                f(e);
            }
        }
        for l in &mut self.lineages[..self.live] {
            data(&mut l.data, f);
            if let Some(saved) = &mut l.saved {
                data(saved, f);
            }
            for r in &mut l.restarts {
                match r {
                    RestartOp::Idle | RestartOp::Raise { .. } => {}
                    RestartOp::ReadHighest { epoch, .. }
                    | RestartOp::ReadReservation { epoch, .. }
                    | RestartOp::Exact { epoch, .. }
                    | RestartOp::Reserve { epoch, .. }
                    | RestartOp::Reread { epoch, .. }
                    | RestartOp::Gaps { epoch, .. }
                    | RestartOp::Script { epoch, .. } => f(epoch),
                }
            }
            match &mut l.sweep {
                SweepOp::Highest { checked, .. } | SweepOp::Epoch { checked, .. } => {
                    if let Some(Checked::Epoch(e)) = checked {
                        f(e);
                    }
                }
                SweepOp::Mark { epoch, .. }
                | SweepOp::Marked { epoch, .. }
                | SweepOp::Evict { epoch, .. } => f(epoch),
                SweepOp::Idle => {}
            }
        }
        if let Some(x) = &mut self.evicted {
            f(x);
        }
    }

    /// Calls `f` on every lineage value the state holds, in a fixed order.
    fn visit_ids(&mut self, f: &mut impl FnMut(&mut u8)) {
        for l in &mut self.lineages[..self.live] {
            f(&mut l.id);
            if let Some((_, by)) = &mut l.data.epoch {
                f(by);
            }
            if let Some(Some((_, by))) = l.saved.as_mut().map(|d| &mut d.epoch) {
                f(by);
            }
        }
    }

    /// Puts the state in its canonical form: epochs and lineages renumbered
    /// 1, 2, … in the order they first appear (they are only ever compared
    /// for equality, A4, and a fresh one only needs to differ from those
    /// held), and a server's restarts in flight sorted (they are
    /// interchangeable). States that differ only there behave alike.
    fn canonical(&mut self) {
        /// Renumbers `v` by its place in `map` (the `len` values seen so
        /// far, in order), adding it when new.
        fn renumber(map: &mut [u8; 32], len: &mut usize, v: &mut u8) {
            let at = match map[..*len].iter().position(|m| m == v) {
                Some(i) => i,
                None => {
                    map[*len] = *v;
                    *len += 1;
                    *len - 1
                }
            };
            *v = at as u8 + 1;
        }
        let (mut map, mut len) = ([0; 32], 0);
        self.visit_epochs(&mut |e| renumber(&mut map, &mut len, e));
        self.next_epoch = len as u8 + 1;
        let (mut map, mut len) = ([0; 32], 0);
        self.visit_ids(&mut |e| renumber(&mut map, &mut len, e));
        self.next_id = len as u8 + 1;
        let (mut map, mut len) = ([0; 32], 0);
        self.visit_generations(&mut |g| renumber(&mut map, &mut len, g));
        self.next_generation = len as u8 + 1;
        for l in &mut self.lineages[..self.live] {
            // Idle ones last: with one slot in use, it stays the first.
            l.restarts.sort_by(|a, b| b.cmp(a));
        }
    }

    /// A picture of the state, one line for MariaDB and one per server.
    fn describe(&self, cfg: &Config) -> String {
        let mut out = format!(
            "MariaDB: R={}{} X={} S={} K={}; handed out {}",
            self.reserved(cfg),
            if self.row.is_none() { " (no row)" } else { "" },
            self.evicted.map_or("-".to_string(), |x| x.to_string()),
            show(self.stored),
            show(self.skipped),
            show(self.handed_out),
        );
        for (i, l) in self.lineages[..self.live].iter().enumerate() {
            out.push_str(&format!(
                "\n      server {i} (lineage {}): {}",
                l.id, l.data
            ));
            let mut busy = Vec::new();
            for r in l.restarts.iter().filter(|r| **r != RestartOp::Idle) {
                busy.push(format!("restart {r:?}"));
            }
            if l.reserve != ReserveOp::Idle {
                busy.push(format!("reserve {:?}", l.reserve));
            }
            if l.sweep != SweepOp::Idle {
                busy.push(format!("sweep {:?}", l.sweep));
            }
            if l.record != RecordOp::Idle {
                busy.push(format!("record {:?}", l.record));
            }
            if let Some(saved) = &l.saved {
                busy.push(format!("saved [{saved}]"));
            }
            if !busy.is_empty() {
                out.push_str(&format!("\n        {}", busy.join("; ")));
            }
        }
        out
    }
}

/// One transition, on server `.0`. Each is named after the script or
/// function it models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// [`crate::redis::CHECK_EPOCH`]: an epoch hash missing or set by
    /// another lineage gets a fresh E with this lineage (on a new
    /// connection, every few seconds, or after a create saw no valid
    /// epoch: `WriteBehind::reconcile` with epoch 0).
    CheckEpoch(usize),
    /// ENQUEUE_MESSAGE ([`super::super::scripts::enqueue_message`]): with E
    /// valid, V = E and n = C + 1 ≤ B, C := n and the record is queued, in
    /// one step.
    EnqueueMessage(usize),
    /// ENQUEUE_MESSAGE answered COUNTER_MISS (C missing) or UNVERIFIED (V ≠
    /// E) with E valid (`WriteBehind::reconcile`), or a lookup found V ≠
    /// the epoch value, valid or not (`WriteBehind::settle`):
    /// [`super::Numbering::restart`] with that epoch, in restart slot `.1`.
    StartRestart(usize, usize),
    /// [`super::Numbering::restart`] reads H (`chats::message_floor`).
    RestartReadHighest(usize, usize),
    /// [`super::Numbering::restart`] reads R and X
    /// ([`crate::store::numbering::reservation`]): exact when the counter
    /// was missing and X = the epoch.
    RestartReadReservation(usize, usize),
    /// [`super::RESTART`] in exact mode: if E is still the epoch and valid,
    /// V ≠ E and C missing: C := H, B := max(R, H), V := E.
    RestartExact(usize, usize),
    /// [`super::Numbering::restart`]'s compare-and-set
    /// ([`crate::store::numbering::reserve`]) of R from the value read to
    /// max(R, H) + the first block; lost, it ends if V is the epoch now
    /// (`restart_now` reads it), else reads R again.
    RestartReserve(usize, usize),
    /// [`super::Numbering::restart`] reads R again after a lost
    /// compare-and-set ([`crate::store::numbering::reserved_to`]).
    RestartRereadReservation(usize, usize),
    /// [`crate::store::numbering::gaps`], after the compare-and-set won,
    /// when the counter was missing: the numbers below the H read that
    /// MariaDB never stored (nor recorded skipped).
    RestartGaps(usize, usize),
    /// [`super::RESTART`]: if E is still the epoch and valid, and V ≠ E:
    /// kept := C (H when missing), `k:` += the gaps (when C is missing) and
    /// (kept, floor], C := max(kept, floor), B := max(B, bound), V := E.
    Restart(usize, usize),
    /// [`super::RAISE_BOUND`] to the bound the restart won, when its
    /// RESTART did not apply (`restart_now`: "the step this one won is
    /// committed, so Redis may use it too").
    RestartRaiseBound(usize, usize),
    /// ENQUEUE_MESSAGE answered NO_BLOCK, or a create left less than half a
    /// block ([`super::Numbering::reserve_ahead`]): with E valid, V = E and
    /// C ≥ B, a reservation starts with the counter seen.
    StartReserve(usize),
    /// `Numbering::reserve_now` reads B: done if B is past the counter seen.
    ReserveReadBound(usize),
    /// `Numbering::reserve_now`'s compare-and-set
    /// ([`crate::store::numbering::reserve`]) of R from B to max(B,
    /// counter) + block.
    ReserveCas(usize),
    /// `Numbering::reserve_now` tries again after a lost compare-and-set
    /// (reads B again).
    ReserveRetry(usize),
    /// [`super::DOUBT`] after the last lost compare-and-set: V := doubt if
    /// B is still the value seen.
    Doubt(usize),
    /// [`super::RAISE_BOUND`]: B := the value won, never lowered.
    RaiseBound(usize),
    /// `IdleCounters::sweep_once` reads the hash (`read_hash`): C, V and B.
    /// The sweep takes a counter that holds the value its previous sweep
    /// saw; the model lets any counter be one (its previous sweep, however
    /// long ago and whatever happened since, may have seen the same value:
    /// this is what let reproduction 1 of issue 39 evict after a loss).
    /// Idleness is a heuristic; safety rests on the checks of
    /// `mark_evicted` and EVICT, which are modelled.
    SweepLook(usize),
    /// `IdleCounters::sweep_once` reads H
    /// (`chats::highest_message_numbers`): still a candidate if C = H.
    SweepHighest(usize),
    /// `IdleCounters::sweep_once` reads E
    /// ([`super::Numbering::current_epoch`]: the value, valid or not).
    SweepEpoch(usize),
    /// [`crate::store::numbering::mark_evicted`]: a missing row is made at
    /// the B read with X := E; else X := E where R = that B, else X := none.
    MarkEvicted(usize),
    /// [`crate::store::numbering::marked_evicted`]: EVICT goes ahead only if
    /// X is the E the sweep marked (in the working tree).
    MarkedEvicted(usize),
    /// [`super::EVICT`]: C, V and B go if E is the one the sweep read and
    /// valid, C is unchanged, V = E, and no `k:` waits.
    Evict(usize),
    /// [`super::Numbering::record_skips`] reads `k:`.
    RecordSkipsRead(usize),
    /// [`crate::store::numbering::record_skip`] of the ranges read.
    RecordSkip(usize),
    /// [`super::CLEAR_SKIPS`]: `k:` goes if it is still what was read.
    ClearSkips(usize),
    /// The flusher stores queued record `.1` and drops it from the queue
    /// (claim, INSERT, COMMIT, ACK; any of them, or the oldest with
    /// [`Config::flush_out_of_order`] off).
    Flush(usize, u8),
    /// A sequence in flight ends (the instance killed, a time-out, a
    /// MariaDB error, the attempts used up).
    Abandon(usize, Slot),
    /// A sequence in flight makes its next call to the other live server
    /// (a pool holding connections to both, in a split brain).
    Switch(usize, Slot),
    /// `SAVE` (or any persistence point: an AOF prefix).
    Save(usize),
    /// Loss event 3.1: the server restarts empty, with a new lineage.
    RestartEmpty(usize),
    /// Loss events 3.2, 3.5, 3.6 (disk): the server restarts from its last
    /// save (empty when none), with a new lineage.
    RestoreSaved(usize),
    /// O6: a memory snapshot brings the last save back, lineage unchanged.
    MemorySnapshot(usize),
    /// Loss events 3.3, 3.4, 3.7: a replica holding a copy of the data now
    /// (`.1` false) or at the last save (true: replication lag) is promoted
    /// with a lineage of its own while the old master lives on (split
    /// brain). At most once.
    Fork(usize, bool),
    /// One of two servers ends (demoted and resynced, or gone), and its
    /// sequences in flight with it.
    End(usize),
}

/// A path to a broken invariant.
struct Counterexample {
    /// What broke.
    what: String,
    /// The steps from the initial state, each with the state after it.
    trace: Vec<(String, String)>,
    /// States explored before it was found.
    states: usize,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (found after {} states), in {} steps:",
            self.what,
            self.states,
            self.trace.len() - 1
        )?;
        for (i, (step, state)) in self.trace.iter().enumerate() {
            writeln!(f, "  {i:>2}. {step}\n      {state}")?;
        }
        Ok(())
    }
}

/// What a search that found nothing explored.
#[derive(Debug)]
struct Explored {
    /// Distinct states.
    states: usize,
    /// States where I2 was checked (settled).
    settled: usize,
    /// The longest shortest path.
    depth: u32,
}

/// The model under one configuration.
struct Model {
    /// Rules and bounds.
    cfg: Config,
}

impl Model {
    /// The initial state: a chat just created on one server (ENQUEUE_CHAT):
    /// its message counter at 0, checked in the current epoch, no bound,
    /// no row in MariaDB.
    fn initial(&self) -> State {
        let data = Data {
            epoch: Some((1, 1)),
            counter: Some(0),
            checked: Some(Checked::Epoch(1)),
            ..Data::default()
        };
        State {
            row: None,
            evicted: None,
            stored: 0,
            skipped: 0,
            handed_out: 0,
            lineages: [Lineage::new(1, data), NONE],
            live: 1,
            next_id: 2,
            next_epoch: 2,
            next_generation: 1,
            losses: 0,
            forked: false,
            violation: None,
        }
    }

    /// The states one step from `s`, each with its step.
    /// `canonical`: each put in its canonical form ([`State::canonical`]);
    /// else epochs and lineages keep their numbers (a trace reads better).
    fn successors(&self, s: &State, canonical: bool) -> Vec<(Step, State)> {
        let mut out = Vec::new();
        self.successors_into(s, &mut out, canonical);
        out
    }

    /// [`Model::successors`], into `out` (emptied first).
    fn successors_into(&self, s: &State, out: &mut Vec<(Step, State)>, canonical: bool) {
        out.clear();
        let out = &mut *out;
        for li in 0..s.live {
            self.redis_steps(s, li, out);
            for ri in 0..self.cfg.restart_slots {
                self.restart_steps(s, li, ri, out);
            }
            self.reserve_steps(s, li, out);
            self.sweep_steps(s, li, out);
            self.record_steps(s, li, out);
            self.instance_steps(s, li, out);
            self.loss_steps(s, li, out);
        }
        for (_, t) in out.iter_mut() {
            // With no loss left, saves cannot matter: forget them, so that
            // states that differ only there are one.
            if t.losses >= self.cfg.max_losses {
                for l in &mut t.lineages {
                    l.saved = None;
                }
            }
            if canonical {
                t.canonical();
            }
        }
    }

    /// Whether another sequence may start in `s` ([`Config::max_in_flight`]).
    fn may_start(&self, s: &State) -> bool {
        let busy: usize = s.lineages[..s.live].iter().map(Lineage::in_flight).sum();
        busy < usize::from(self.cfg.max_in_flight)
    }

    /// CHECK_EPOCH, the create, the flusher, and the triggers of a restart
    /// and of a reservation.
    fn redis_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let cfg = &self.cfg;
        let l = &s.lineages[li];
        let d = &l.data;
        for n in (1..=cfg.max_number).filter(|n| d.pending & bit(*n) != 0) {
            let mut t = *s;
            t.lineages[li].data.pending &= !bit(n);
            t.stored |= bit(n);
            out.push((Step::Flush(li, n), t));
            if !cfg.flush_out_of_order {
                break;
            }
        }
        let valid = l.valid_epoch();
        if valid.is_none() {
            let mut t = *s;
            let e = t.fresh_epoch();
            let id = t.lineages[li].id;
            t.lineages[li].data.epoch = Some((e, id));
            out.push((Step::CheckEpoch(li), t));
        }
        // A restart: after COUNTER_MISS or UNVERIFIED on a valid epoch, or
        // from a lookup's `settle` with the epoch value, valid or not.
        if let Some((e, _)) = d.epoch
            && (d.counter.is_none() || d.checked != Some(Checked::Epoch(e)))
        {
            let free = (0..cfg.restart_slots).find(|i| l.restarts[*i] == RestartOp::Idle);
            if let Some(ri) = free.filter(|_| self.may_start(s)) {
                let mut t = *s;
                t.lineages[li].restarts[ri] = RestartOp::ReadHighest {
                    epoch: e,
                    missing: d.counter.is_none(),
                    generation: d.generation,
                };
                out.push((Step::StartRestart(li, ri), t));
            }
        }
        let (Some(e), Some(c)) = (valid, d.counter) else {
            return;
        };
        if d.checked != Some(Checked::Epoch(e)) {
            return;
        }
        let bound = d.bound.unwrap_or(cfg.first_block);
        let n = c + 1;
        if n <= bound && n <= cfg.max_number {
            let mut t = *s;
            if t.handed_out & bit(n) != 0 {
                t.violation = Some(Violation::HandedOutTwice(n));
            } else if n > cfg.first_block && n > t.reserved(cfg) {
                t.violation = Some(Violation::AboveReserved {
                    n,
                    reserved: t.reserved(cfg),
                });
            }
            t.handed_out |= bit(n);
            let d = &mut t.lineages[li].data;
            d.counter = Some(n);
            d.pending |= bit(n);
            out.push((Step::EnqueueMessage(li), t));
        }
        if c >= bound && l.reserve == ReserveOp::Idle && self.may_start(s) {
            let mut t = *s;
            t.lineages[li].reserve = ReserveOp::ReadBound { counter: c };
            out.push((Step::StartReserve(li), t));
        }
    }

    /// [`super::Numbering::restart`] (`restart_now`) in slot `ri`, one
    /// step per statement or script.
    fn restart_steps(&self, s: &State, li: usize, ri: usize, out: &mut Vec<(Step, State)>) {
        let cfg = &self.cfg;
        let mut t = *s;
        let step = match s.lineages[li].restarts[ri] {
            RestartOp::Idle => return,
            RestartOp::ReadHighest {
                epoch,
                missing,
                generation,
            } => {
                t.lineages[li].restarts[ri] = RestartOp::ReadReservation {
                    epoch,
                    missing,
                    highest: s.highest(),
                    generation,
                };
                Step::RestartReadHighest(li, ri)
            }
            RestartOp::ReadReservation {
                epoch,
                missing,
                highest,
                generation,
            } => {
                let read = s.reserved(cfg);
                t.lineages[li].restarts[ri] = if missing && s.evicted == Some(epoch) {
                    RestartOp::Exact {
                        epoch,
                        generation,
                        highest,
                        bound: read.max(highest),
                    }
                } else {
                    RestartOp::Reserve {
                        epoch,
                        missing,
                        highest,
                        read,
                    }
                };
                Step::RestartReadReservation(li, ri)
            }
            RestartOp::Exact {
                epoch,
                generation,
                highest,
                bound,
            } => {
                let l = &mut t.lineages[li];
                l.restarts[ri] = RestartOp::Idle;
                if l.valid_epoch() == Some(epoch)
                    && l.data.checked != Some(Checked::Epoch(epoch))
                    && l.data.counter.is_none()
                    && (l.data.generation == generation || !cfg.fix_exact_restart_checks_generation)
                {
                    l.data.counter = Some(highest);
                    l.data.bound = Some(bound);
                    l.data.checked = Some(Checked::Epoch(epoch));
                }
                Step::RestartExact(li, ri)
            }
            RestartOp::Reserve {
                epoch,
                missing,
                highest,
                read,
            } => {
                let bound = read.max(highest) + cfg.first_block;
                if bound > cfg.max_reserved {
                    return;
                }
                t.lineages[li].restarts[ri] = match (t.reserve(cfg, read, bound), missing) {
                    (true, true) => RestartOp::Gaps {
                        epoch,
                        highest,
                        read,
                        bound,
                    },
                    (true, false) => RestartOp::Script {
                        epoch,
                        highest,
                        read,
                        bound,
                        gaps: 0,
                    },
                    // Lost: if a restart on this Redis checked the scope,
                    // nothing is left to do (`restart_now` reads V).
                    (false, _) if t.lineages[li].data.checked == Some(Checked::Epoch(epoch)) => {
                        RestartOp::Idle
                    }
                    (false, _) => RestartOp::Reread {
                        epoch,
                        missing,
                        highest,
                    },
                };
                Step::RestartReserve(li, ri)
            }
            RestartOp::Reread {
                epoch,
                missing,
                highest,
            } => {
                t.lineages[li].restarts[ri] = RestartOp::Reserve {
                    epoch,
                    missing,
                    highest,
                    read: s.reserved(cfg),
                };
                Step::RestartRereadReservation(li, ri)
            }
            RestartOp::Gaps {
                epoch,
                highest,
                read,
                bound,
            } => {
                let gaps = if cfg.restart_records_gaps {
                    range(0, highest) & !bit(highest) & !s.stored & !s.skipped
                } else {
                    0
                };
                t.lineages[li].restarts[ri] = RestartOp::Script {
                    epoch,
                    highest,
                    read,
                    bound,
                    gaps,
                };
                Step::RestartGaps(li, ri)
            }
            RestartOp::Script {
                epoch,
                highest,
                read,
                bound,
                gaps,
            } => {
                let l = &mut t.lineages[li];
                l.restarts[ri] = RestartOp::Idle;
                if l.valid_epoch() == Some(epoch) && l.data.checked != Some(Checked::Epoch(epoch)) {
                    let floor = read.max(highest);
                    let kept = l.data.counter.unwrap_or(highest);
                    if l.data.counter.is_none() {
                        l.data.skips |= gaps;
                    }
                    if kept < floor && cfg.restart_writes_skips {
                        l.data.skips |= range(kept, floor);
                    }
                    l.data.counter = Some(kept.max(floor));
                    l.data.bound = Some(l.data.bound.unwrap_or(0).max(bound));
                    l.data.checked = Some(Checked::Epoch(epoch));
                } else if cfg.restart_raises_bound_when_not_applied {
                    l.restarts[ri] = RestartOp::Raise { read, bound };
                }
                Step::Restart(li, ri)
            }
            RestartOp::Raise { read, bound } => {
                let l = &mut t.lineages[li];
                l.restarts[ri] = RestartOp::Idle;
                let from = l.data.bound.unwrap_or(cfg.first_block);
                if l.data.bound.unwrap_or(0) < bound
                    && (from == read || !cfg.fix_restart_raises_only_from_its_reservation)
                {
                    l.data.bound = Some(bound);
                }
                Step::RestartRaiseBound(li, ri)
            }
        };
        out.push((step, t));
    }

    /// `Numbering::reserve_now`, one step per call or statement.
    fn reserve_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let cfg = &self.cfg;
        let l = &s.lineages[li];
        let bound_now = l.data.bound.unwrap_or(cfg.first_block);
        let mut t = *s;
        let step = match l.reserve {
            ReserveOp::Idle => return,
            ReserveOp::ReadBound { counter } => {
                t.lineages[li].reserve = if bound_now > counter {
                    ReserveOp::Idle
                } else {
                    ReserveOp::Cas {
                        counter,
                        bound: bound_now,
                    }
                };
                Step::ReserveReadBound(li)
            }
            ReserveOp::Cas { counter, bound } => {
                let to = bound.max(counter) + cfg.block;
                if to > cfg.max_reserved {
                    return;
                }
                t.lineages[li].reserve = if t.reserve(cfg, bound, to) {
                    ReserveOp::Raise { from: bound, to }
                } else {
                    ReserveOp::Lost { counter, bound }
                };
                Step::ReserveCas(li)
            }
            ReserveOp::Lost { counter, bound } => {
                let mut retry = *s;
                retry.lineages[li].reserve = ReserveOp::ReadBound { counter };
                out.push((Step::ReserveRetry(li), retry));
                let l = &mut t.lineages[li];
                l.reserve = ReserveOp::Idle;
                if bound_now == bound {
                    l.data.checked = Some(Checked::Doubt);
                }
                Step::Doubt(li)
            }
            ReserveOp::Raise { from, to } => {
                let l = &mut t.lineages[li];
                l.reserve = ReserveOp::Idle;
                if l.data.bound.unwrap_or(0) < to
                    && (bound_now == from || !cfg.fix_reservation_raises_only_from_its_bound)
                {
                    l.data.bound = Some(to);
                }
                Step::RaiseBound(li)
            }
        };
        out.push((step, t));
    }

    /// `IdleCounters::sweep_once`, one step per call or statement.
    fn sweep_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let cfg = &self.cfg;
        let l = &s.lineages[li];
        let mut t = *s;
        let step = match l.sweep {
            SweepOp::Idle if cfg.no_sweep => return,
            SweepOp::Idle => {
                let d = &l.data;
                let Some(value) = d.counter.filter(|_| self.may_start(s)) else {
                    return;
                };
                t.lineages[li].sweep = SweepOp::Highest {
                    value,
                    bound: d.bound.unwrap_or(cfg.first_block),
                    checked: d
                        .checked
                        .filter(|_| cfg.fix_sweep_marks_only_an_epoch_it_saw_checked),
                };
                Step::SweepLook(li)
            }
            SweepOp::Highest {
                value,
                bound,
                checked,
            } => {
                t.lineages[li].sweep = if s.highest() == value {
                    SweepOp::Epoch {
                        value,
                        bound,
                        checked,
                    }
                } else {
                    SweepOp::Idle
                };
                Step::SweepHighest(li)
            }
            SweepOp::Epoch {
                value,
                bound,
                checked,
            } => {
                t.lineages[li].sweep = match l.data.epoch {
                    Some((epoch, _))
                        if !cfg.fix_sweep_marks_only_an_epoch_it_saw_checked
                            || checked == Some(Checked::Epoch(epoch)) =>
                    {
                        SweepOp::Mark {
                            value,
                            bound,
                            epoch,
                        }
                    }
                    _ => SweepOp::Idle,
                };
                Step::SweepEpoch(li)
            }
            SweepOp::Mark {
                value,
                bound,
                epoch,
            } => {
                match t.row {
                    None => {
                        t.row = Some(bound);
                        t.evicted = Some(epoch);
                    }
                    Some(r) => {
                        t.evicted =
                            (r == bound || !cfg.mark_evicted_requires_bound).then_some(epoch);
                    }
                }
                t.lineages[li].sweep = SweepOp::Marked { value, epoch };
                Step::MarkEvicted(li)
            }
            SweepOp::Marked { value, epoch } => {
                t.lineages[li].sweep = if s.evicted == Some(epoch) {
                    SweepOp::Evict { value, epoch }
                } else {
                    SweepOp::Idle
                };
                Step::MarkedEvicted(li)
            }
            SweepOp::Evict { value, epoch } => {
                let l = &mut t.lineages[li];
                l.sweep = SweepOp::Idle;
                let evicts = l.valid_epoch() == Some(epoch)
                    && l.data.counter == Some(value)
                    && (l.data.checked == Some(Checked::Epoch(epoch))
                        || !cfg.evict_requires_checked_epoch)
                    && l.data.skips == 0;
                if evicts {
                    let generation = t.fresh_generation();
                    let d = &mut t.lineages[li].data;
                    d.counter = None;
                    d.checked = None;
                    d.bound = None;
                    d.generation = generation;
                }
                Step::Evict(li)
            }
        };
        out.push((step, t));
    }

    /// `Numbering::record_skips`, one step per call or statement.
    fn record_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let l = &s.lineages[li];
        let mut t = *s;
        let step = match l.record {
            RecordOp::Idle if l.data.skips != 0 && self.may_start(s) => {
                t.lineages[li].record = RecordOp::Sql {
                    value: l.data.skips,
                };
                Step::RecordSkipsRead(li)
            }
            RecordOp::Idle => return,
            RecordOp::Sql { value } => {
                t.skipped |= value;
                t.lineages[li].record = RecordOp::Clear { value };
                Step::RecordSkip(li)
            }
            RecordOp::Clear { value } => {
                let l = &mut t.lineages[li];
                l.record = RecordOp::Idle;
                if l.data.skips == value {
                    l.data.skips = 0;
                }
                Step::ClearSkips(li)
            }
        };
        out.push((step, t));
    }

    /// A sequence abandoned, or continued on the other server.
    fn instance_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let kinds = (0..self.cfg.restart_slots).map(Slot::Restart).chain([
            Slot::Reserve,
            Slot::Sweep,
            Slot::Record,
        ]);
        for kind in kinds {
            if !s.lineages[li].busy(kind) {
                continue;
            }
            let mut t = *s;
            t.lineages[li].clear(kind);
            out.push((Step::Abandon(li, kind), t));
            // A CLEAR_SKIPS on the other server clears only ranges equal
            // to those just recorded: the same as that server recording its
            // own, so skips being recorded do not switch.
            let other = 1 - li;
            if kind != Slot::Record
                && !self.cfg.one_server_per_sequence
                && !(self.cfg.one_server_per_restart && matches!(kind, Slot::Restart(_)))
                && s.live == 2
                && !s.lineages[other].busy(kind)
            {
                let mut t = *s;
                let from = s.lineages[li];
                let to = &mut t.lineages[other];
                match kind {
                    Slot::Restart(i) => to.restarts[i] = from.restarts[i],
                    Slot::Reserve => to.reserve = from.reserve,
                    _ => to.sweep = from.sweep,
                }
                t.lineages[li].clear(kind);
                out.push((Step::Switch(li, kind), t));
            }
        }
    }

    /// Saves and loss events.
    fn loss_steps(&self, s: &State, li: usize, out: &mut Vec<(Step, State)>) {
        let cfg = &self.cfg;
        let l = &s.lineages[li];
        // O5: a server that ends with records only it holds, with ranges
        // waiting in its `k:`, or with its scope not restarted since it lost
        // data (so numbers it lost are recorded nowhere yet) takes them with
        // it; excluded unless `o5_end_holding_unrecorded`.
        if s.live == 2
            && (cfg.o5_end_holding_unrecorded || (self.settled(s, l) && l.data.skips == 0))
        {
            let mut t = *s;
            if li == 0 {
                t.lineages[0] = t.lineages[1];
            }
            t.lineages[1] = NONE;
            t.live = 1;
            out.push((Step::End(li), t));
        }
        if s.losses >= cfg.max_losses {
            return;
        }
        if l.saved != Some(l.data) {
            let mut t = *s;
            t.lineages[li].saved = Some(l.data);
            out.push((Step::Save(li), t));
        }
        let sweeping = s.lineages[..s.live]
            .iter()
            .any(|l| l.sweep != SweepOp::Idle);
        if cfg.losses_between_sweeps_only && sweeping {
            return;
        }
        let mut t = *s;
        t.losses += 1;
        t.lineages[li].id = t.fresh_id();
        t.lineages[li].data = Data::default();
        out.push((Step::RestartEmpty(li), t));
        let mut t = *s;
        t.losses += 1;
        t.lineages[li].id = t.fresh_id();
        t.lineages[li].data = l.saved.unwrap_or_default();
        out.push((Step::RestoreSaved(li), t));
        if let (true, Some(saved)) = (cfg.o6_memory_snapshot, l.saved) {
            let mut t = *s;
            t.losses += 1;
            t.lineages[li].data = saved;
            out.push((Step::MemorySnapshot(li), t));
        }
        if !s.forked && s.live == 1 {
            for from_saved in [false, true] {
                let data = match (from_saved, l.saved) {
                    (false, _) => l.data,
                    (true, Some(saved)) => saved,
                    (true, None) => continue,
                };
                let mut t = *s;
                t.losses += 1;
                t.forked = true;
                let id = t.fresh_id();
                t.lineages[1] = Lineage::new(id, data);
                t.live = 2;
                out.push((Step::Fork(li, from_saved), t));
            }
        }
    }

    /// Whether server `l` of `s` holds nothing unaccounted for: its queue
    /// flushed, its epoch valid, and the scope checked in it or evicted in
    /// it (X = E). With the counter there, the state is settled for I2.
    fn settled(&self, s: &State, l: &Lineage) -> bool {
        let d = &l.data;
        l.valid_epoch().is_some_and(|e| {
            d.pending == 0
                && match d.counter {
                    Some(_) => d.checked == Some(Checked::Epoch(e)),
                    None => s.evicted == Some(e),
                }
        })
    }

    /// The broken invariant of `s`, if any: one a transition flagged (I1,
    /// I3), or I2 in a settled state (see [`Model::settled`]). Also says
    /// whether `s` is settled.
    fn check(&self, s: &State) -> (Option<String>, bool) {
        if let Some(v) = s.violation {
            let what = match v {
                Violation::HandedOutTwice(n) => format!("I1 broken: {n} handed out twice"),
                Violation::AboveReserved { n, reserved } => {
                    format!("I3 broken: {n} handed out above R = {reserved} and the first block")
                }
            };
            return (Some(what), false);
        }
        let live = &s.lineages[..s.live];
        let counting = |l: &Lineage| self.settled(s, l) && l.data.counter.is_some();
        if !live.iter().all(counting) {
            return (None, false);
        }
        let waiting = live.iter().fold(0, |m, l| m | l.data.skips);
        let lost = s.handed_out & !(s.stored | s.skipped | waiting);
        if lost != 0 {
            let what = format!(
                "I2 broken: {} handed out, every queue flushed and the scope settled, \
                 but neither stored nor recorded skipped",
                show(lost)
            );
            return (Some(what), true);
        }
        (None, true)
    }

    /// Breadth-first search of every state reachable within the bounds.
    /// Returns what it explored, or the shortest path to a broken
    /// invariant.
    fn explore(&self) -> Result<Explored, Counterexample> {
        let start = self.initial();
        let mut seen = Seen::default();
        // Per state found, in order: its parent's index, the step, and its
        // depth.
        let mut parents: Vec<(u32, Option<Step>, u32)> = vec![(0, None, 0)];
        let mut queue: VecDeque<(State, u32)> = VecDeque::new();
        seen.insert(start);
        queue.push_back((start, 0));
        let (mut settled, mut depth) = (0, 0);
        let mut next = Vec::new();
        while let Some((s, at)) = queue.pop_front() {
            self.successors_into(&s, &mut next, true);
            for &(step, t) in &next {
                if !seen.insert(t) {
                    continue;
                }
                let index = parents.len() as u32;
                let d = parents[at as usize].2 + 1;
                depth = depth.max(d);
                parents.push((at, Some(step), d));
                let (broken, is_settled) = self.check(&t);
                settled += usize::from(is_settled);
                if let Some(what) = broken {
                    return Err(self.counterexample(what, &parents, index, seen.len()));
                }
                queue.push_back((t, index));
            }
            assert!(
                seen.len() <= self.cfg.max_states,
                "past {} states: bounds too large for a unit test",
                self.cfg.max_states
            );
        }
        Ok(Explored {
            states: seen.len(),
            settled,
            depth,
        })
    }

    /// The path to state `index`, replayed from the initial state.
    fn counterexample(
        &self,
        what: String,
        parents: &[(u32, Option<Step>, u32)],
        index: u32,
        states: usize,
    ) -> Counterexample {
        let mut steps = Vec::new();
        let mut at = index;
        while let (parent, Some(step), _) = parents[at as usize] {
            steps.push(step);
            at = parent;
        }
        steps.reverse();
        // Replayed on canonical states (as found), and alongside without
        // renumbering, for the trace: there a new lineage or epoch shows as
        // a new number.
        let mut s = self.initial();
        let mut raw = s;
        let mut trace = vec![("initial".to_string(), raw.describe(&self.cfg))];
        for step in steps {
            s = self
                .successors(&s, true)
                .into_iter()
                .find(|(st, _)| *st == step)
                .map(|(_, t)| t)
                .expect("the trace replays");
            let (raw_step, next) = self
                .successors(&raw, false)
                .into_iter()
                .find(|(_, t)| {
                    let mut c = *t;
                    c.canonical();
                    c == s
                })
                .expect("the trace replays without renumbering");
            raw = next;
            trace.push((format!("{raw_step:?}"), raw.describe(&self.cfg)));
        }
        Counterexample {
            what,
            trace,
            states,
        }
    }
}

/// The bounds every search of the whole protocol runs under, on top of
/// `cfg`'s rules: numbers up to 3, one loss event (a restart from a save or
/// empty, or the fork), one restart in flight per server; first R up to 6
/// with one sequence in flight at a time and records flushed in any order,
/// then R up to 5 with two sequences in flight and records flushed oldest
/// first (the out-of-order flushes are what the gaps below H are for). Each
/// runs in seconds in a debug build; larger bounds run in minutes.
fn bounded(cfg: Config) -> [(&'static str, Config); 2] {
    let one = Config {
        max_number: 3,
        max_reserved: 6,
        max_losses: 1,
        max_in_flight: 1,
        restart_slots: 1,
        ..cfg
    };
    let two = Config {
        max_reserved: 5,
        max_in_flight: 2,
        flush_out_of_order: false,
        ..one
    };
    [
        ("one sequence in flight", one),
        ("two sequences in flight", two),
    ]
}

/// [`Config::with_fixes`], restarts on one server (finding 3 has tests of
/// its own, [`two_restarts`]): the baseline of the mutation tests.
fn baseline() -> Config {
    Config {
        one_server_per_restart: true,
        ..Config::with_fixes()
    }
}

/// Runs the search under `cfg`, printing what it found and how long it
/// took.
fn run(name: &str, cfg: Config) -> Result<Explored, Counterexample> {
    let started = Instant::now();
    let result = Model { cfg }.explore();
    match &result {
        Ok(e) => println!(
            "{name}: no invariant broken in {} states ({} settled: I2 checked), depth {}, {:.1?}",
            e.states,
            e.settled,
            e.depth,
            started.elapsed()
        ),
        Err(cx) => println!("{name}: found in {:.1?}: {cx}", started.elapsed()),
    }
    result
}

/// Runs the search under `cfg` and panics with the counterexample found,
/// if any.
fn expect_holds(name: &str, cfg: Config) {
    if let Err(cx) = run(name, cfg) {
        panic!("{name}: an invariant breaks: {cx}");
    }
}

/// Runs the search under `cfg` and expects it to find a broken invariant
/// whose description starts with `invariant` ("I1", "I2", "I3", or "I"
/// for any); returns the counterexample.
fn expect_broken(name: &str, cfg: Config, invariant: &str) -> Counterexample {
    match run(name, cfg) {
        Ok(e) => panic!(
            "{name}: expected a counterexample, none in {} states",
            e.states
        ),
        Err(cx) => {
            assert!(
                cx.what.starts_with(invariant),
                "{name}: expected {invariant} broken, found: {cx}"
            );
            cx
        }
    }
}

/// Whether the trace of `cx` takes a step whose name starts with `name`.
fn takes(cx: &Counterexample, name: &str) -> bool {
    cx.trace.iter().any(|(step, _)| step.starts_with(name))
}

/// The protocol as the code has it breaks no invariant within the bounds
/// (both of [`bounded`]; the counterexamples of both are reported).
#[test]
fn the_protocol_holds_for_small_bounds() {
    // Restarts on one server, to keep the search small: finding 3's own
    // test runs two restarts in flight.
    let found: Vec<String> = bounded(Config {
        one_server_per_restart: true,
        ..Config::as_coded()
    })
    .into_iter()
    .filter_map(|(bounds, cfg)| {
        run(&format!("as coded, {bounds}"), cfg)
            .err()
            .map(|cx| format!("{bounds}: {cx}"))
    })
    .collect();
    assert!(
        found.is_empty(),
        "the protocol as coded breaks an invariant:\n{}",
        found.join("\n")
    );
}

/// With the fixes this model proposes, and restarts on one server, the
/// protocol breaks no invariant within the first bounds of [`bounded`].
#[test]
fn the_protocol_with_the_proposed_fixes_holds_for_small_bounds() {
    let [(bounds, cfg), _] = bounded(baseline());
    expect_holds(&format!("with the proposed fixes, {bounds}"), cfg);
}

/// The same within the second bounds of [`bounded`] (a test of its own,
/// so that the two run in parallel).
#[test]
fn the_protocol_with_the_proposed_fixes_holds_with_two_sequences_in_flight() {
    let [_, (bounds, cfg)] = bounded(baseline());
    expect_holds(&format!("with the proposed fixes, {bounds}"), cfg);
}

/// Finding 1: a Redis loss between the sweep's look and its epoch read
/// lets `mark_evicted` write the new epoch; EVICT finds no counter, and the
/// lost counter comes back "exactly" at H, below a number handed out.
#[test]
fn finding_1_the_sweep_marks_an_epoch_it_never_saw_the_counter_checked_in() {
    let [(_, cfg), _] = bounded(Config {
        fix_sweep_marks_only_an_epoch_it_saw_checked: false,
        ..baseline()
    });
    let cx = expect_broken("finding 1", cfg, "I");
    assert!(takes(&cx, "RestartEmpty") || takes(&cx, "RestoreSaved"));
    assert!(takes(&cx, "MarkEvicted") && takes(&cx, "RestartExact"));
}

/// Finding 2a: in a split brain, a reservation won from one server's bound
/// raises the other's (its calls reach both), and both hand out the
/// numbers between.
#[test]
fn finding_2a_a_reservation_raises_the_bound_of_the_other_server() {
    let [(_, cfg), _] = bounded(Config {
        fix_reservation_raises_only_from_its_bound: false,
        ..baseline()
    });
    let cfg = Config {
        max_number: 4,
        max_reserved: 8,
        ..cfg
    };
    let cx = expect_broken("finding 2a", cfg, "I1");
    assert!(takes(&cx, "Switch(0, Reserve)") || takes(&cx, "Switch(1, Reserve)"));
    assert!(takes(&cx, "Fork") && takes(&cx, "RaiseBound"));
}

/// Finding 2b: the code's sweep, in a split brain, reads C and B on one
/// server and E on the other, marks X with the other's epoch where R is the
/// first one's bound, and evicts the other's counter, which comes back
/// "exactly" with the first one's bound (no loss during the sweep needed).
#[test]
fn finding_2b_the_sweep_reads_one_server_and_evicts_on_the_other() {
    let [(_, cfg), _] = bounded(Config {
        fix_sweep_marks_only_an_epoch_it_saw_checked: false,
        losses_between_sweeps_only: true,
        ..baseline()
    });
    let cx = expect_broken("finding 2b", cfg, "I1");
    assert!(takes(&cx, "Switch(0, Sweep)") || takes(&cx, "Switch(1, Sweep)"));
    assert!(takes(&cx, "RestartExact"));
}

/// Finding 2c: in a split brain, of two restarts of a scope on one server
/// (two instances), the first applies; the other server reserves past
/// it (its compare-and-set loses, DOUBT, its restart wins the next step and
/// hands out numbers there); then the second restart wins the step after,
/// finds its RESTART not applied (the scope is checked), and its
/// RAISE_BOUND raises B past the other server's numbers.
#[test]
fn finding_2c_a_restart_that_did_not_apply_raises_the_bound_past_another_lineage() {
    let cfg = Config {
        fix_restart_raises_only_from_its_reservation: false,
        first_block: 1,
        block: 1,
        max_number: 4,
        max_reserved: 5,
        max_losses: 1,
        max_in_flight: 3,
        restart_slots: 2,
        one_server_per_sequence: true,
        no_sweep: true,
        flush_out_of_order: false,
        max_states: 6_000_000,
        ..baseline()
    };
    let cx = expect_broken("finding 2c", cfg, "I1");
    assert!(takes(&cx, "RestartRaiseBound") && takes(&cx, "Fork"));
}

/// The bounds of finding 3: two restarts of one scope in flight on one
/// server (two instances), which [`bounded`] leaves out.
fn two_restarts() -> Config {
    Config {
        max_number: 2,
        max_reserved: 4,
        max_losses: 0,
        max_in_flight: 3,
        restart_slots: 2,
        ..baseline()
    }
}

/// Finding 3 (O12), without its fix: a restart that read H, then waited
/// while another restart brought the counter back, a create went through
/// and the sweep evicted the counter again, brings it back "exactly" at
/// the H it read, below the number handed out since.
#[test]
fn finding_3_two_concurrent_restarts_bring_a_counter_back_at_a_stale_highest() {
    let cfg = Config {
        fix_exact_restart_checks_generation: false,
        ..two_restarts()
    };
    let cx = expect_broken("finding 3", cfg, "I1");
    assert!(takes(&cx, "RestartExact") && takes(&cx, "Evict("));
}

/// Finding 3's fix (O12): with the eviction generation checked by the
/// exact RESTART, two restarts in flight on one server break nothing.
#[test]
fn finding_3_is_closed_by_the_eviction_generation() {
    expect_holds("two restarts with the eviction generation", two_restarts());
}

/// Mutation: EVICT without its checked-epoch test (reproduction 1 of issue
/// 39) hands a number out twice. The proposed sweep fix guards the same
/// thing (a counter in doubt is never marked), so this runs the code as it
/// is, without the situations of findings 1 and 2 (no loss event during a
/// sweep, every sequence on one server): the protocol holds there, and
/// breaks without EVICT's test.
#[test]
fn the_pre_fix_evict_that_compared_the_value_only_is_caught() {
    let [(_, cfg), _] = bounded(Config {
        losses_between_sweeps_only: true,
        one_server_per_sequence: true,
        ..Config::as_coded()
    });
    expect_holds(
        "as coded, no loss during a sweep, one server per sequence",
        cfg,
    );
    // The sweep's own checked-epoch filter (finding 1's fix) guards the
    // same thing: both off, as before issue 39.
    let cfg = Config {
        evict_requires_checked_epoch: false,
        fix_sweep_marks_only_an_epoch_it_saw_checked: false,
        ..cfg
    };
    let cx = expect_broken("EVICT without the checked epoch", cfg, "I");
    assert!(takes(&cx, "Evict("));
}

/// Mutation: a reservation by `GREATEST` instead of a compare-and-set
/// (reproduction 3 of issue 39) hands a number out twice.
#[test]
fn the_pre_fix_greatest_reservation_is_caught() {
    let [(_, cfg), _] = bounded(Config {
        reserve_is_cas: false,
        ..baseline()
    });
    expect_broken("reserve by GREATEST", cfg, "I1");
}

/// Mutation: O2 before its fix (X written whatever R is, and not cleared by
/// a compare-and-set) hands a number out twice.
#[test]
fn the_pre_fix_mark_evicted_whatever_the_bound_is_caught() {
    let [(_, cfg), _] = bounded(Config {
        mark_evicted_requires_bound: false,
        reserve_clears_evicted: false,
        ..baseline()
    });
    let cx = expect_broken("mark_evicted whatever R (O2)", cfg, "I");
    assert!(takes(&cx, "RestartExact"));
}

/// Mutation: a RESTART that does not write the range it jumps over to `k:`
/// leaves lost numbers unrecorded (I2).
#[test]
fn a_restart_that_writes_no_skipped_range_is_caught() {
    let [(_, cfg), _] = bounded(Config {
        restart_writes_skips: false,
        ..baseline()
    });
    expect_broken("RESTART without k:", cfg, "I2");
}

/// Mutation: a restart of a missing counter that writes no gaps below H to
/// `k:` (O4 before its fix): a record flushed out of order and lost with
/// Redis is neither stored nor recorded skipped.
#[test]
fn a_restart_that_records_no_gaps_is_caught() {
    let [(_, cfg), _] = bounded(Config {
        restart_records_gaps: false,
        ..baseline()
    });
    let cx = expect_broken("RESTART without the gaps (O4)", cfg, "I2");
    assert!(takes(&cx, "RestartGaps"));
}

/// Open item O5, let in: a server ending with what only it holds loses
/// numbers unrecorded.
#[test]
fn open_item_o5_a_server_ending_with_unrecorded_numbers_is_found() {
    let [(_, cfg), _] = bounded(Config {
        o5_end_holding_unrecorded: true,
        ..baseline()
    });
    let cx = expect_broken("O5", cfg, "I2");
    assert!(takes(&cx, "End"));
}

/// Open item O6, let in: a memory-snapshot restore keeps the epoch valid
/// over older data.
#[test]
fn open_item_o6_a_memory_snapshot_restore_is_found() {
    let [(_, cfg), _] = bounded(Config {
        o6_memory_snapshot: true,
        ..baseline()
    });
    let cx = expect_broken("O6", cfg, "I");
    assert!(takes(&cx, "MemorySnapshot"));
}
