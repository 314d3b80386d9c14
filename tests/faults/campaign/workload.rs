//! The workload: several clients over both instances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::history::{History, Op, Outcome, Request};
use super::{APPS, NO_SUCH_CHAT};

/// What the workers share.
pub(super) struct Workload {
    /// The campaign's seed (each worker derives its own generator from it).
    pub(super) seed: u64,
    /// The client of every request (time limit [`CLIENT_TIMEOUT`]).
    pub(super) http: reqwest::Client,
    /// `http://127.0.0.1:{port}` of each instance (ports survive restarts).
    pub(super) bases: Vec<String>,
    /// The applications' tokens (an op names an application by index).
    pub(super) tokens: Vec<String>,
    /// Acknowledged chat numbers of each application, oldest first.
    pub(super) chats: Mutex<Vec<Vec<i64>>>,
    /// Every request and its answer.
    pub(super) history: History,
    /// Set when the workload ends.
    pub(super) stop: AtomicBool,
    /// Set by the nemesis for a lull: workers only read, so that counters
    /// go idle and leave Redis.
    pub(super) lull: AtomicBool,
}

/// The texts of the 503 answers whose create may still have been applied
/// (Redis did not answer in time, or answered but no replica confirmed).
const MAY_HAVE_APPLIED: [&str; 2] = [
    "the write buffer (Redis) is unavailable",
    "not confirmed by a Redis replica",
];

/// A message this worker got a 201 for: `(app, chat, number, body)`.
pub(super) type Acked = (usize, i64, i64, String);

impl Workload {
    /// Sends `req` to instance `instance`, records it, and returns the outcome.
    pub(super) async fn perform(&self, worker: usize, instance: usize, req: Request) -> Outcome {
        let base = &self.bases[instance];
        let builder = match &req {
            Request::Message {
                app,
                chat,
                body,
                key,
            } => {
                let b = self
                    .http
                    .post(format!(
                        "{base}/api/v1/applications/{}/chats/{chat}/messages",
                        self.tokens[*app]
                    ))
                    .json(&json!({ "body": body }));
                match key {
                    Some(k) => b.header("Idempotency-Key", k),
                    None => b,
                }
            }
            Request::Chat { app, key } => {
                let b = self.http.post(format!(
                    "{base}/api/v1/applications/{}/chats",
                    self.tokens[*app]
                ));
                match key {
                    Some(k) => b.header("Idempotency-Key", k),
                    None => b,
                }
            }
            Request::Edit {
                app,
                chat,
                number,
                body,
            } => self
                .http
                .put(format!(
                    "{base}/api/v1/applications/{}/chats/{chat}/messages/{number}",
                    self.tokens[*app]
                ))
                .json(&json!({ "body": body })),
            Request::Delete { app, chat, number } => self.http.delete(format!(
                "{base}/api/v1/applications/{}/chats/{chat}/messages/{number}",
                self.tokens[*app]
            )),
            Request::Read {
                app, chat, number, ..
            } => self.http.get(format!(
                "{base}/api/v1/applications/{}/chats/{chat}/messages/{number}",
                self.tokens[*app]
            )),
        };
        let start_ms = self.history.now_ms();
        let answer = match builder.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(text) => Ok((status, text)),
                    Err(e) => Err(describe(&e)),
                }
            }
            Err(e) => Err(describe(&e)),
        };
        let (status, outcome) = match answer {
            Err(e) => (None, Outcome::Indeterminate(e)),
            Ok((status, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                let error = v["error"]
                    .as_str()
                    .map_or_else(|| text.chars().take(200).collect(), str::to_string);
                let outcome = match (&req, status) {
                    (Request::Read { .. }, 200) => {
                        Outcome::Read(200, v["body"].as_str().unwrap_or_default().to_string())
                    }
                    (Request::Read { .. }, s) => Outcome::Read(s, error),
                    // An edit or a delete is SQL: a 503 (MariaDB unavailable
                    // mid-statement, say) may have applied it.
                    (Request::Edit { .. } | Request::Delete { .. }, 200..300) => Outcome::Applied,
                    (Request::Edit { .. } | Request::Delete { .. }, 400..500) => {
                        Outcome::Refused(status, error)
                    }
                    (Request::Edit { .. } | Request::Delete { .. }, s) => {
                        Outcome::Indeterminate(format!("status {s}: {error}"))
                    }
                    (_, 201) => match v["number"].as_i64() {
                        Some(n) => Outcome::Acked(n),
                        None => Outcome::Indeterminate(format!("201 without a number: {text}")),
                    },
                    // A 503 for Redis timing out or no replica confirming
                    // in time may have been applied: it is no refusal.
                    (_, 503) if MAY_HAVE_APPLIED.iter().any(|m| error.contains(m)) => {
                        Outcome::Indeterminate(format!("503: {error}"))
                    }
                    (_, s) if (400..500).contains(&s) || s == 503 => Outcome::Refused(s, error),
                    (_, s) => Outcome::Indeterminate(format!("status {s}: {error}")),
                };
                (Some(status), outcome)
            }
        };
        let mut ops = self.history.ops.lock().unwrap();
        let id = ops.len();
        ops.push(Op {
            id,
            worker,
            instance,
            start_ms,
            end_ms: self.history.now_ms(),
            status,
            req,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// A chat of `app` to write to: mostly one of its two newest, so that
    /// older ones go idle (and leave Redis) and now and then come back.
    pub(super) fn pick_chat(&self, rng: &mut StdRng, app: usize) -> i64 {
        let chats = self.chats.lock().unwrap();
        let list = &chats[app];
        if rng.random_bool(0.6) {
            let newest = &list[list.len().saturating_sub(2)..];
            *newest.choose(rng).unwrap()
        } else {
            *list.choose(rng).unwrap()
        }
    }

    /// A message create, with `key` or without. A keyed create that got no
    /// answer or a 503 is retried (up to 3 sends, on either instance), and a
    /// keyed create that got its 201 is now and then sent again on the other
    /// instance (it must get the same number). Returns the number.
    pub(super) async fn create_message(
        &self,
        rng: &mut StdRng,
        worker: usize,
        (app, chat): (usize, i64),
        body: String,
        key: Option<String>,
    ) -> Option<i64> {
        let mut instance = rng.random_range(0..self.bases.len());
        let mut number = None;
        let mut replayed = false;
        for _ in 0..3 {
            let req = Request::Message {
                app,
                chat,
                body: body.clone(),
                key: key.clone(),
            };
            match self.perform(worker, instance, req).await {
                Outcome::Acked(n) => {
                    number = number.or(Some(n));
                    if key.is_none() || replayed || !rng.random_bool(0.2) {
                        break;
                    }
                    replayed = true;
                    instance = (instance + 1) % self.bases.len();
                }
                Outcome::Indeterminate(_) | Outcome::Refused(503, _) if key.is_some() => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                    instance = rng.random_range(0..self.bases.len());
                }
                _ => break,
            }
        }
        number
    }

    /// A GET of one of `acked`, on either instance.
    pub(super) async fn read_back(&self, rng: &mut StdRng, worker: usize, acked: &[Acked]) {
        if let Some((app, chat, number, body)) = acked.choose(rng).cloned() {
            let req = Request::Read {
                app,
                chat,
                number,
                body,
            };
            self.perform(worker, rng.random_range(0..self.bases.len()), req)
                .await;
        }
    }

    /// A chat create, keyed half of the time (retried like a keyed message).
    pub(super) async fn create_chat(&self, rng: &mut StdRng, worker: usize, app: usize) {
        let key = rng
            .random_bool(0.5)
            .then(|| format!("{:032x}", rng.random::<u128>()));
        let mut instance = rng.random_range(0..self.bases.len());
        for _ in 0..3 {
            let req = Request::Chat {
                app,
                key: key.clone(),
            };
            match self.perform(worker, instance, req).await {
                Outcome::Acked(n) => {
                    let mut chats = self.chats.lock().unwrap();
                    if !chats[app].contains(&n) {
                        chats[app].push(n);
                    }
                    break;
                }
                Outcome::Indeterminate(_) | Outcome::Refused(503, _) if key.is_some() => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                    instance = rng.random_range(0..self.bases.len());
                }
                _ => break,
            }
        }
    }
}

/// A transport error in a few words: timeout, connect, or the chain of causes.
pub(super) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout".into();
    }
    // The causes, without the URL the outermost message repeats.
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

/// One client: a seeded mix of message creates (some keyed, some retried),
/// reads, edits and deletes of its acknowledged messages, chat creates,
/// creates in a chat that does not exist (404) and key reuse with another
/// body (422).
pub(super) async fn worker(load: Arc<Workload>, w: usize) {
    let mut rng =
        StdRng::seed_from_u64(load.seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut acked: Vec<Acked> = Vec::new();
    let mut keyed: Vec<(usize, i64, String)> = Vec::new();
    let mut seq = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        seq += 1;
        // Unique in the run: the checker finds each request's rows by body.
        let body = format!("c{}-w{w}-{seq} ✓", load.seed);
        if load.lull.load(Ordering::SeqCst) {
            // Reads only, so that counters go idle.
            load.read_back(&mut rng, w, &acked).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match rng.random_range(0..100) {
            0..20 if !acked.is_empty() => load.read_back(&mut rng, w, &acked).await,
            20..23 => {
                let app = rng.random_range(0..APPS);
                load.create_chat(&mut rng, w, app).await;
            }
            23..26 => {
                let app = rng.random_range(0..APPS);
                let req = Request::Message {
                    app,
                    chat: NO_SUCH_CHAT,
                    body,
                    key: None,
                };
                load.perform(w, rng.random_range(0..load.bases.len()), req)
                    .await;
            }
            29..34 if !acked.is_empty() => {
                let i = rng.random_range(0..acked.len());
                let (app, chat, number, _) = acked[i].clone();
                let body = format!("e{}-w{w}-{seq} ✓", load.seed);
                let req = Request::Edit {
                    app,
                    chat,
                    number,
                    body: body.clone(),
                };
                match load
                    .perform(w, rng.random_range(0..load.bases.len()), req)
                    .await
                {
                    Outcome::Applied => acked[i].3 = body,
                    // Its body is no longer known (or it is gone): no more
                    // reads nor edits of it.
                    Outcome::Indeterminate(_) | Outcome::Refused(404, _) => {
                        acked.swap_remove(i);
                    }
                    _ => {}
                }
            }
            34..36 if !acked.is_empty() => {
                let i = rng.random_range(0..acked.len());
                let (app, chat, number, _) = acked[i].clone();
                let req = Request::Delete { app, chat, number };
                match load
                    .perform(w, rng.random_range(0..load.bases.len()), req)
                    .await
                {
                    Outcome::Applied | Outcome::Indeterminate(_) | Outcome::Refused(404, _) => {
                        acked.swap_remove(i);
                    }
                    _ => {}
                }
            }
            26..29 if !keyed.is_empty() => {
                let (app, chat, key) = keyed.choose(&mut rng).cloned().unwrap();
                let req = Request::Message {
                    app,
                    chat,
                    body,
                    key: Some(key),
                };
                load.perform(w, rng.random_range(0..load.bases.len()), req)
                    .await;
            }
            _ => {
                let app = rng.random_range(0..APPS);
                let chat = load.pick_chat(&mut rng, app);
                let key = rng
                    .random_bool(0.4)
                    .then(|| format!("{:032x}", rng.random::<u128>()));
                let number = load
                    .create_message(&mut rng, w, (app, chat), body.clone(), key.clone())
                    .await;
                if let Some(n) = number {
                    acked.push((app, chat, n, body));
                    if let Some(k) = key {
                        keyed.push((app, chat, k));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}
