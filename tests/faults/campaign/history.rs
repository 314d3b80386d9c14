//! The history: every request of the workload and what it got.

use std::sync::Mutex;
use std::time::Instant;

/// What a request asked for.
#[derive(Clone, Debug)]
pub(super) enum Request {
    /// POST a message to `chat` of application `app` (an index).
    Message {
        app: usize,
        chat: i64,
        body: String,
        key: Option<String>,
    },
    /// POST a chat to application `app`.
    Chat { app: usize, key: Option<String> },
    /// PUT a new `body` on a message acknowledged earlier.
    Edit {
        app: usize,
        chat: i64,
        number: i64,
        body: String,
    },
    /// DELETE a message acknowledged earlier.
    Delete { app: usize, chat: i64, number: i64 },
    /// GET a message acknowledged earlier, which should show `body`.
    Read {
        app: usize,
        chat: i64,
        number: i64,
        body: String,
    },
}

/// What the answer said.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    /// A create's 201, with its number.
    Acked(i64),
    /// An edit's or a delete's 2xx.
    Applied,
    /// A create's definite refusal: a 4xx or a 503, with the error text.
    Refused(u16, String),
    /// No answer that says what happened: a timeout, a connection error (an
    /// instance killed, say), a 201 without a number, another 5xx.
    Indeterminate(String),
    /// A read's answer: status, and the body (200) or the error text.
    Read(u16, String),
}

/// One request of the history.
#[derive(Clone, Debug)]
pub(super) struct Op {
    /// Its index in the history.
    pub(super) id: usize,
    /// The worker that sent it.
    pub(super) worker: usize,
    /// The instance it went to.
    pub(super) instance: usize,
    /// When it was sent, in milliseconds since the start of the fault phase.
    pub(super) start_ms: u64,
    /// When its answer (or its failure) came, likewise.
    pub(super) end_ms: u64,
    /// The HTTP status, when an answer came.
    pub(super) status: Option<u16>,
    /// What it asked.
    pub(super) req: Request,
    /// What it got.
    pub(super) outcome: Outcome,
}

impl Op {
    /// `op #id (worker, instance, +start..end s, outcome)`, for the anomaly lines.
    pub(super) fn at(&self) -> String {
        format!(
            "op #{} (worker {}, instance {}, +{:.2}..{:.2} s, {:?})",
            self.id,
            self.worker,
            self.instance,
            self.start_ms as f64 / 1000.0,
            self.end_ms as f64 / 1000.0,
            self.outcome
        )
    }
}

/// Every request of the run, in the order answered.
pub(super) struct History {
    /// The start of the fault phase: time zero of every op and fault.
    pub(super) started: Instant,
    /// The ops, appended as they are answered.
    pub(super) ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history whose clock starts at `started`.
    pub(super) fn new(started: Instant) -> History {
        History {
            started,
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the start.
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
