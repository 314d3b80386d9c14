//! The checker: the history against MariaDB.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;

use std::time::Duration;

use serde_json::Value;

use super::history::{Op, Outcome, Request};
use super::nemesis::{Fault, FaultKind, Nemesis};
use super::workload::describe;
use super::{NO_SUCH_CHAT, TAIL};
use crate::harness::World;

/// What MariaDB holds at the end, per application (by index).
pub(super) struct Stored {
    /// Messages: `(chat, number) → body`.
    pub(super) messages: Vec<HashMap<(i64, i64), String>>,
    /// Chat numbers.
    pub(super) chats: Vec<HashSet<i64>>,
    /// Skipped numbers per counter (chat number; 0 is the chat counter).
    pub(super) skips: Vec<HashMap<i64, Vec<RangeInclusive<i64>>>>,
    /// Every stored body, with where it is: `(app, chat, number)`.
    pub(super) bodies: HashMap<String, Vec<(usize, i64, i64)>>,
    /// Messages deleted (`deleted_at` set): `(chat, number)`.
    pub(super) deleted: Vec<HashSet<(i64, i64)>>,
}

impl Stored {
    /// Reads it, directly (never through the proxy).
    pub(super) async fn read(world: &World, tokens: &[String]) -> Stored {
        let mut stored = Stored {
            messages: Vec::new(),
            chats: Vec::new(),
            skips: Vec::new(),
            bodies: HashMap::new(),
            deleted: Vec::new(),
        };
        for (app, token) in tokens.iter().enumerate() {
            let deleted: HashSet<(i64, i64)> = sqlx::query_as::<_, (i64, i64)>(
                "SELECT c.number, m.number FROM messages m JOIN chats c ON c.id = m.chat_id \
                 JOIN applications a ON a.id = c.application_id \
                 WHERE a.token = ? AND m.deleted_at IS NOT NULL",
            )
            .bind(token)
            .fetch_all(&world.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
            let mut messages = HashMap::new();
            for (chat, number, body) in world.stored(token).await {
                // A deleted message keeps its row, its body blanked.
                if !deleted.contains(&(chat, number)) {
                    stored
                        .bodies
                        .entry(body.clone())
                        .or_default()
                        .push((app, chat, number));
                }
                messages.insert((chat, number), body);
            }
            stored.messages.push(messages);
            stored
                .chats
                .push(world.stored_chats(token).await.into_iter().collect());
            stored.skips.push(world.skips(token).await);
            stored.deleted.push(deleted);
        }
        stored
    }

    /// Whether `number` of the counter of `chat` (0: the chat counter) of
    /// `app` was skipped, or, for a message, its chat's number was.
    pub(super) fn skipped(&self, app: usize, chat: i64, number: i64) -> bool {
        let within = |counter: i64, n: i64| {
            self.skips[app]
                .get(&counter)
                .is_some_and(|rs| rs.iter().any(|r| r.contains(&n)))
        };
        within(chat, number) || (chat != 0 && within(0, chat))
    }
}

/// The edits and deletes the history sent to one message, `(app, chat,
/// number)`, in the order answered.
#[derive(Default)]
struct Fate<'a> {
    /// Each edit's body and whether it applied (`Some(true)`), was refused
    /// (`Some(false)`) or got no definite answer (`None`).
    edits: Vec<(&'a str, Option<bool>)>,
    /// Each delete's outcome, likewise.
    deletes: Vec<Option<bool>>,
}

impl Fate<'_> {
    /// Whether the message may hold `stored` at the end, created with
    /// `created`: the body of the last edit that applied (the create's
    /// before any), or the body of any edit without a definite answer (it
    /// may have applied at any time, even after a later one).
    fn allows(&self, created: &str, stored: &str) -> bool {
        let last = self
            .edits
            .iter()
            .rev()
            .find(|(_, applied)| *applied == Some(true))
            .map_or(created, |(b, _)| *b);
        stored == last
            || self
                .edits
                .iter()
                .any(|(b, applied)| applied.is_none() && *b == stored)
    }
}

/// The fate of every message the history edited or deleted.
type Fates<'a> = HashMap<(usize, i64, i64), Fate<'a>>;

/// Collects [`Fates`] from the history.
fn fates(ops: &[Op]) -> Fates<'_> {
    let mut fates = Fates::new();
    for op in ops {
        let outcome = match op.outcome {
            Outcome::Applied => Some(true),
            Outcome::Refused(..) => Some(false),
            _ => None,
        };
        match &op.req {
            Request::Edit {
                app,
                chat,
                number,
                body,
            } => fates
                .entry((*app, *chat, *number))
                .or_default()
                .edits
                .push((body.as_str(), outcome)),
            Request::Delete { app, chat, number } => fates
                .entry((*app, *chat, *number))
                .or_default()
                .deletes
                .push(outcome),
            _ => {}
        }
    }
    fates
}

/// Whether message `(app, chat, n)`, created with `created`, may hold
/// `body` at the end. A deleted message (its body blanked) may hold any:
/// rule 6 judges whether it should be deleted.
fn allows(
    fates: &Fates<'_>,
    stored: &Stored,
    (app, chat, n): (usize, i64, i64),
    created: &str,
    body: &str,
) -> bool {
    if stored.deleted[app].contains(&(chat, n)) {
        return true;
    }
    match fates.get(&(app, chat, n)) {
        Some(fate) => fate.allows(created, body),
        None => created == body,
    }
}

/// How the checker asks the service about a number it does not find stored.
pub(super) struct Lookups<'a> {
    /// The client.
    pub(super) http: &'a reqwest::Client,
    /// The instance asked.
    pub(super) base: &'a str,
    /// The applications' tokens, by index.
    pub(super) tokens: &'a [String],
}

impl Lookups<'_> {
    /// GET of a chat (`chat` 0: `number` is a chat) or a message: status and
    /// error text (a 503 is asked again, for up to 10 s).
    pub(super) async fn get(&self, app: usize, chat: i64, number: i64) -> (u16, String) {
        let token = &self.tokens[app];
        let url = if chat == 0 {
            format!("{}/api/v1/applications/{token}/chats/{number}", self.base)
        } else {
            format!(
                "{}/api/v1/applications/{token}/chats/{chat}/messages/{number}",
                self.base
            )
        };
        let mut last = (0, String::new());
        for _ in 0..20 {
            match self.http.get(&url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or_default();
                    last = (status, v["error"].as_str().unwrap_or_default().to_string());
                    if status != 503 {
                        return last;
                    }
                }
                Err(e) => last = (0, describe(&e)),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last
    }
}

/// Figures of the run for the summary.
#[derive(Default)]
pub(super) struct Figures {
    /// Acknowledged creates whose number answers 404 "skipped".
    pub(super) skipped: usize,
    /// Bodies stored although every request that sent them went unanswered.
    pub(super) indeterminate_stored: usize,
    /// Reads that answered 404 for a number since recorded as skipped.
    pub(super) reads_of_skipped: usize,
    /// Keyed requests that got another number after Redis lost their key.
    pub(super) keys_forgotten: usize,
    /// Message creates refused with 404 in a chat that is stored in the
    /// end (acknowledged earlier, never skipped): where they happened.
    pub(super) refused_in_live_chats: Vec<String>,
}

/// What the checker found.
pub(super) struct Verdict {
    /// One line per anomaly, each naming the seed.
    pub(super) anomalies: Vec<String>,
    /// Figures for the summary.
    pub(super) figures: Figures,
}

/// A scope of numbers: the chats of an application (`chat` 0), or the
/// messages of a chat.
pub(super) type Scope = (usize, i64);

/// What identifies a create for idempotency: scope, key and body; an
/// unkeyed create is only itself (its op id).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum Identity {
    /// A keyed create: scope, key and body.
    Keyed(Scope, String, String),
    /// An unkeyed create: the op's id.
    Once(usize),
}

/// The scope, identity and body of a create op (None for a read).
fn create_of(op: &Op) -> Option<(Scope, Identity, Option<&str>)> {
    match &op.req {
        Request::Message {
            app,
            chat,
            body,
            key,
        } => {
            let scope = (*app, *chat);
            let identity = match key {
                Some(k) => Identity::Keyed(scope, k.clone(), body.clone()),
                None => Identity::Once(op.id),
            };
            Some((scope, identity, Some(body.as_str())))
        }
        Request::Chat { app, key } => {
            let scope = (*app, 0);
            let identity = match key {
                Some(k) => Identity::Keyed(scope, k.clone(), String::new()),
                None => Identity::Once(op.id),
            };
            Some((scope, identity, None))
        }
        Request::Read { .. } | Request::Edit { .. } | Request::Delete { .. } => None,
    }
}

/// Checks the history against what is stored, rule by rule:
/// 1. no number of a scope is acknowledged to two different creates (a
///    keyed request sent again is the same create; the same keyed request
///    gets one number, unless Redis lost data in between and at most one
///    of its numbers is stored);
/// 2. every acknowledged create is stored under its number (a message with
///    its own body, or that of its last applied edit, or of an edit without
///    a definite answer), or its number answers 404 "skipped";
/// 3. no body sent only in refused requests (4xx, 503) is stored;
/// 4. no body is stored twice (an unanswered create at most once);
/// 5. a read of an acknowledged message shows its body (200; after an
///    applied edit, the edit's), or answers 503, or 404 for a number since
///    recorded as skipped;
/// 6. a message a delete applied to is deleted; no message is deleted that
///    no delete may have reached;
///
/// and no answer is a 5xx other than 503, and creates succeed again once
/// every fault is healed (at `healed_ms`).
pub(super) async fn check(
    seed: u64,
    ops: &[Op],
    stored: &Stored,
    faults: &[Fault],
    healed_ms: u64,
    lookups: &Lookups<'_>,
) -> Verdict {
    let mut found = Anomalies {
        seed,
        lines: Vec::new(),
    };
    let mut figures = Figures::default();
    check_answers(ops, healed_ms, &mut found);
    let fates = fates(ops);
    check_numbers(ops, stored, &fates, faults, &mut found, &mut figures);
    check_acknowledged(
        ops,
        stored,
        &fates,
        faults,
        lookups,
        &mut found,
        &mut figures,
    )
    .await;
    check_bodies(ops, stored, &mut found, &mut figures);
    check_reads(ops, stored, &mut found, &mut figures);
    check_deletes(stored, &fates, &mut found);
    check_edit_lookups(ops, stored, &mut found);
    // Not a rule, a figure: a create in a chat that exists should not get 404.
    for op in ops {
        if let (Request::Message { app, chat, .. }, Outcome::Refused(404, _)) =
            (&op.req, &op.outcome)
            && *chat != NO_SUCH_CHAT
            && stored.chats[*app].contains(chat)
        {
            figures
                .refused_in_live_chats
                .push(format!("app {app} chat {chat}: {}", op.at()));
        }
    }
    Verdict {
        anomalies: found.lines,
        figures,
    }
}

/// The anomalies found so far.
pub(super) struct Anomalies {
    /// The campaign's seed, in every line.
    pub(super) seed: u64,
    /// One line per anomaly.
    pub(super) lines: Vec<String>,
}

impl Anomalies {
    /// Adds one, under `rule`, naming the seed.
    pub(super) fn flag(&mut self, rule: &str, detail: String) {
        self.lines
            .push(format!("CHAOS_SEED={} [{rule}] {detail}", self.seed));
    }
}

/// No 5xx but 503, and some create acknowledged after `healed_ms`.
fn check_answers(ops: &[Op], healed_ms: u64, found: &mut Anomalies) {
    for op in ops {
        if let Some(s) = op.status.filter(|s| *s >= 500 && *s != 503) {
            found.flag("5xx", format!("status {s}: {}", op.at()));
        }
    }
    let after_healing = ops
        .iter()
        .filter(|op| op.start_ms >= healed_ms && matches!(op.outcome, Outcome::Acked(_)))
        .count();
    if after_healing == 0 {
        found.flag(
            "liveness",
            format!(
                "no create acknowledged in the {} s after healing",
                TAIL.as_secs()
            ),
        );
    }
}

/// Rule 1: one create per number of a scope, and one number per keyed request.
fn check_numbers(
    ops: &[Op],
    stored: &Stored,
    fates: &Fates<'_>,
    faults: &[Fault],
    found: &mut Anomalies,
    figures: &mut Figures,
) {
    let mut by_number: BTreeMap<(Scope, i64), Vec<(&Op, Identity)>> = BTreeMap::new();
    let mut by_identity: HashMap<Identity, Vec<(&Op, i64)>> = HashMap::new();
    for op in ops {
        if let (Some((scope, identity, _)), Outcome::Acked(n)) = (create_of(op), &op.outcome) {
            by_number
                .entry((scope, *n))
                .or_default()
                .push((op, identity.clone()));
            by_identity.entry(identity).or_default().push((op, *n));
        }
    }
    for (((app, chat), n), acks) in &by_number {
        let identities: HashSet<&Identity> = acks.iter().map(|(_, i)| i).collect();
        if identities.len() > 1 {
            let what = if *chat == 0 {
                format!("chat number {n} of app {app}")
            } else {
                format!("message number {n} of app {app} chat {chat}")
            };
            let who: Vec<String> = acks
                .iter()
                .map(|(op, _)| format!("{} {:?}", op.at(), op.req))
                .collect();
            found.flag(
                "1 number handed out twice",
                format!(
                    "{what} acknowledged to {} creates: {}",
                    identities.len(),
                    who.join("; ")
                ),
            );
        }
    }
    for (identity, acks) in &by_identity {
        let Identity::Keyed((app, chat), key, body) = identity else {
            continue;
        };
        let numbers: BTreeMap<i64, &Op> = acks.iter().map(|(op, n)| (*n, *op)).collect();
        if numbers.len() < 2 {
            continue;
        }
        let kept = numbers
            .keys()
            .filter(|n| {
                if *chat == 0 {
                    stored.chats[*app].contains(n)
                } else {
                    stored.messages[*app]
                        .get(&(*chat, **n))
                        .is_some_and(|b| allows(fates, stored, (*app, *chat, **n), body, b))
                }
            })
            .count();
        let from = acks.iter().map(|(op, _)| op.start_ms).min().unwrap_or(0);
        let to = acks.iter().map(|(op, _)| op.end_ms).max().unwrap_or(0);
        let lost_between = faults
            .iter()
            .any(|f| f.kind.loses_redis_data() && (from..=to).contains(&f.at_ms));
        let who: Vec<String> = numbers
            .iter()
            .map(|(n, op)| format!("{n} by {}", op.at()))
            .collect();
        if kept > 1 || !lost_between {
            found.flag(
                "1 one key, two numbers",
                format!(
                    "key {key} of app {app} chat {chat} got numbers {}; {kept} of them stored; Redis lost data in between: {lost_between}",
                    who.join(", ")
                ),
            );
        } else {
            figures.keys_forgotten += 1;
        }
    }
}

/// Rule 2: every acknowledged create is stored under its number, with its
/// body, or its number answers 404 "skipped" (asked of the service).
async fn check_acknowledged(
    ops: &[Op],
    stored: &Stored,
    fates: &Fates<'_>,
    faults: &[Fault],
    lookups: &Lookups<'_>,
    found: &mut Anomalies,
    figures: &mut Figures,
) {
    // When Redis lost data after `ms`, if it did.
    let loss_after = |ms: u64| {
        faults
            .iter()
            .find(|f| f.kind.loses_redis_data() && f.at_ms >= ms)
            .map_or("Redis lost no data after it".to_string(), |f| {
                format!(
                    "Redis lost data at +{:.2} s ({})",
                    f.at_ms as f64 / 1000.0,
                    f.what
                )
            })
    };
    let mut looked_up: HashSet<(usize, i64, i64)> = HashSet::new();
    let mut seen: HashSet<(usize, i64, i64, Option<&str>)> = HashSet::new();
    // Every place a body was acknowledged at: a keyed create that Redis
    // forgot (its key lost with the data) and that a retry acknowledged
    // again under another number is stored under that one (rule 1 judges
    // the two numbers).
    let acked_at: HashSet<(usize, i64, i64, &str)> = ops
        .iter()
        .filter_map(|op| match (create_of(op), &op.outcome) {
            (Some(((app, chat), _, Some(body))), Outcome::Acked(n)) => Some((app, chat, *n, body)),
            _ => None,
        })
        .collect();
    for op in ops {
        let (Some(((app, chat), _, body)), Outcome::Acked(n)) = (create_of(op), &op.outcome) else {
            continue;
        };
        if !seen.insert((app, chat, *n, body)) {
            continue;
        }
        let here = if chat == 0 {
            stored.chats[app].contains(n)
        } else {
            match stored.messages[app].get(&(chat, *n)) {
                Some(b) if allows(fates, stored, (app, chat, *n), body.unwrap_or_default(), b) => {
                    true
                }
                Some(other) => {
                    found.flag(
                        "2 stored with another body",
                        format!(
                            "app {app} chat {chat} number {n} holds {other:?}, acknowledged for {:?} by {}",
                            body.unwrap_or_default(),
                            op.at()
                        ),
                    );
                    continue;
                }
                None => false,
            }
        };
        if let Some(b) = body {
            for place in stored.bodies.get(b).into_iter().flatten() {
                if *place != (app, chat, *n) && !acked_at.contains(&(place.0, place.1, place.2, b))
                {
                    found.flag(
                        "2 stored under another number",
                        format!(
                            "{b:?} acknowledged as {n} by {} is stored at {place:?} (app, chat, number)",
                            op.at()
                        ),
                    );
                }
            }
        }
        if here || !looked_up.insert((app, chat, *n)) {
            continue;
        }
        let (status, error) = lookups.get(app, chat, *n).await;
        if status == 404 && error.contains("skipped") {
            figures.skipped += 1;
        } else {
            let ranges = stored.skips[app].get(&chat).map_or(0, Vec::len);
            found.flag(
                "2 acknowledged and missing",
                format!(
                    "app {app} chat {chat} number {n} ({}) is not stored; GET answers {status} {error:?}; acknowledged by {}; \
                     {}; its counter has {ranges} skipped ranges",
                    body.map_or("a chat".to_string(), |b| format!("{b:?}")),
                    op.at(),
                    loss_after(op.start_ms)
                ),
            );
        }
    }
}

/// Rules 3 and 4: each stored body against the requests that sent it.
fn check_bodies(ops: &[Op], stored: &Stored, found: &mut Anomalies, figures: &mut Figures) {
    let mut sent: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        if let Some((_, _, Some(body))) = create_of(op) {
            sent.entry(body).or_default().push(op);
        }
        if let Request::Edit { body, .. } = &op.req {
            sent.entry(body).or_default().push(op);
        }
    }
    for (body, places) in &stored.bodies {
        let senders = sent.get(body.as_str()).cloned().unwrap_or_default();
        let history: Vec<String> = senders.iter().map(|op| op.at()).collect();
        if senders.is_empty() {
            found.flag("3 stored, never sent", format!("{body:?} at {places:?}"));
        } else if senders
            .iter()
            .all(|op| matches!(op.outcome, Outcome::Refused(..)))
        {
            found.flag(
                "3 refused and stored",
                format!(
                    "{body:?} is stored at {places:?} (app, chat, number); every request refused: {}",
                    history.join("; ")
                ),
            );
        } else if senders
            .iter()
            .all(|op| matches!(op.outcome, Outcome::Indeterminate(_) | Outcome::Refused(..)))
        {
            figures.indeterminate_stored += 1;
        }
        if places.len() > 1 {
            found.flag(
                "4 stored twice",
                format!(
                    "{body:?} is stored at {places:?} (app, chat, number); sent by {}",
                    history.join("; ")
                ),
            );
        }
    }
}

/// Rule 5: reads of acknowledged messages.
fn check_reads(ops: &[Op], stored: &Stored, found: &mut Anomalies, figures: &mut Figures) {
    for op in ops {
        let (
            Request::Read {
                app,
                chat,
                number,
                body,
            },
            Outcome::Read(status, got),
        ) = (&op.req, &op.outcome)
        else {
            continue;
        };
        match status {
            200 if got == body => {}
            200 => found.flag(
                "5 read another body",
                format!(
                    "app {app} chat {chat} number {number} read {got:?}, acknowledged {body:?}: {}",
                    op.at()
                ),
            ),
            404 if stored.skipped(*app, *chat, *number)
                && stored.messages[*app].contains_key(&(*chat, *number)) =>
            {
                // Recorded skipped, yet stored: a read of an acknowledged
                // message that was still on its way answered "skipped".
                found.flag(
                    "5 read skipped, but stored",
                    format!(
                        "app {app} chat {chat} number {number} ({body:?}) answered 404 {got:?}, and is stored: {}",
                        op.at()
                    ),
                )
            }
            404 if stored.skipped(*app, *chat, *number) => figures.reads_of_skipped += 1,
            404 => found.flag(
                "5 read 404",
                format!(
                    "app {app} chat {chat} number {number} ({body:?}) answered 404 {got:?}, and is not recorded as skipped: {}",
                    op.at()
                ),
            ),
            503 => {}
            other => found.flag(
                "5 read status",
                format!(
                    "app {app} chat {chat} number {number}: {other} {got:?}: {}",
                    op.at()
                ),
            ),
        }
    }
}

/// Rule 5 for edits and deletes: they look their message up on the primary
/// (waiting for its flush), so a 404 for an acknowledged message that is
/// stored at the end, not deleted, and not skipped is a miss.
fn check_edit_lookups(ops: &[Op], stored: &Stored, found: &mut Anomalies) {
    for op in ops {
        let Outcome::Refused(404, why) = &op.outcome else {
            continue;
        };
        let (Request::Edit {
            app, chat, number, ..
        }
        | Request::Delete { app, chat, number }) = &op.req
        else {
            continue;
        };
        if stored.messages[*app].contains_key(&(*chat, *number))
            && !stored.deleted[*app].contains(&(*chat, *number))
            && !stored.skipped(*app, *chat, *number)
        {
            found.flag(
                "5 edit or delete 404",
                format!(
                    "app {app} chat {chat} number {number} answered 404 {why:?}, and is stored: {}",
                    op.at()
                ),
            );
        }
    }
}

/// Rule 6: a message a delete applied to is deleted; one no delete was
/// sent to (or every delete refused) is not.
fn check_deletes(stored: &Stored, fates: &Fates<'_>, found: &mut Anomalies) {
    for ((app, chat, n), fate) in fates {
        let applied = fate.deletes.contains(&Some(true));
        let stored_live = stored.messages[*app].contains_key(&(*chat, *n))
            && !stored.deleted[*app].contains(&(*chat, *n));
        if applied && stored_live {
            found.flag(
                "6 deleted, still there",
                format!("app {app} chat {chat} number {n}: a delete answered 2xx, and it is stored, not deleted"),
            );
        }
    }
    for (app, deleted) in stored.deleted.iter().enumerate() {
        for (chat, n) in deleted {
            let asked = fates
                .get(&(app, *chat, *n))
                .is_some_and(|f| f.deletes.iter().any(|d| *d != Some(false)));
            if !asked {
                found.flag(
                    "6 deleted, never asked",
                    format!("app {app} chat {chat} number {n} is deleted; no delete of it may have applied"),
                );
            }
        }
    }
}

/// Prints the summary line of a run (and the fault log).
pub(super) fn summary(
    seed: u64,
    ops: &[Op],
    nemesis: &Nemesis,
    figures: &Figures,
    dead: &[String],
    anomalies: &[String],
) {
    let (mut creates, mut acked, mut refused, mut unknown, mut reads) = (0, 0, 0, 0, 0);
    let mut applied = 0;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops {
        match op.outcome {
            Outcome::Read(..) => reads += 1,
            Outcome::Applied => applied += 1,
            Outcome::Acked(_) => acked += 1,
            Outcome::Refused(..) => refused += 1,
            Outcome::Indeterminate(_) => unknown += 1,
        }
        if matches!(op.req, Request::Message { .. } | Request::Chat { .. }) {
            creates += 1;
        }
        let kind = match op.req {
            Request::Message { .. } => "message",
            Request::Chat { .. } => "chat",
            Request::Read { .. } => "read",
            Request::Edit { .. } => "edit",
            Request::Delete { .. } => "delete",
        };
        let status = op.status.map_or("none".to_string(), |s| s.to_string());
        *statuses.entry(format!("{kind} {status}")).or_default() += 1;
        let reason = match &op.outcome {
            Outcome::Refused(s, error) => format!("{kind} refused {s}: {error}"),
            Outcome::Indeterminate(why) => format!("{kind} indeterminate: {why}"),
            _ => continue,
        };
        *reasons
            .entry(reason.chars().take(120).collect())
            .or_default() += 1;
    }
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    for f in &nemesis.log {
        *faults.entry(f.kind).or_default() += 1;
    }
    eprintln!("CHAOS_SEED={seed} fault log:");
    for f in &nemesis.log {
        eprintln!(
            "  +{:6.1} s {:?}: {}",
            f.at_ms as f64 / 1000.0,
            f.kind,
            f.what
        );
    }
    eprintln!("CHAOS_SEED={seed} answers: {statuses:?}");
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in reasons.iter().take(10) {
        eprintln!("CHAOS_SEED={seed}   {n:5} × {reason}");
    }
    eprintln!(
        "CHAOS_SEED={seed} summary: {} requests ({creates} creates, {reads} reads, {applied} edits and deletes applied), {acked} acknowledged, {refused} refused, \
         {unknown} indeterminate; faults {faults:?}; {} numbers skipped (acknowledged, lost with Redis), {} reads of skipped numbers, \
         {} keys forgotten with Redis, {} unanswered creates stored, {} idle counters evicted, {} dead letters; {} anomalies",
        ops.len(),
        figures.skipped,
        figures.reads_of_skipped,
        figures.keys_forgotten,
        figures.indeterminate_stored,
        nemesis.evictions,
        dead.len(),
        anomalies.len()
    );
    if !figures.refused_in_live_chats.is_empty() {
        eprintln!(
            "CHAOS_SEED={seed} {} message creates refused 404 in chats that are stored, the first: {:?}",
            figures.refused_in_live_chats.len(),
            &figures.refused_in_live_chats[..figures.refused_in_live_chats.len().min(3)]
        );
    }
    for d in dead.iter().take(5) {
        eprintln!("CHAOS_SEED={seed} dead letter: {d}");
    }
}
