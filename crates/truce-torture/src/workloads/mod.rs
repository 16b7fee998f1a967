//! The workloads: concurrent clients that drive the server over HTTP and record
//! every operation, and the final reads that close each history.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::check::{Anomaly, kinds};
use crate::history::{Kind, Recorder};
use crate::http::{Http, Outcome};

pub mod counter;
pub mod feed;
pub mod list_append;
pub mod register;
pub mod replica;
pub mod set;

/// How long a client waits after an error before its next try, so a dead
/// server is not hammered.
pub const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A workload, by its name on the command line and in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// List-append transactions (adya, strict serializable).
    ListAppend,
    /// Compare-and-set registers (linearizable).
    Register,
    /// `$inc` counters with idempotency keys.
    Counter,
    /// Unique inserts into a set.
    Set,
    /// The change feed followed across restarts.
    Feed,
    /// Replicas of a collection that purges its tombstones.
    Replica,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 6] = [
        Workload::ListAppend,
        Workload::Register,
        Workload::Counter,
        Workload::Set,
        Workload::Feed,
        Workload::Replica,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::ListAppend => "list-append",
            Workload::Register => "register",
            Workload::Counter => "counter",
            Workload::Set => "set",
            Workload::Feed => "feed",
            Workload::Replica => "replica",
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Workload, String> {
        Workload::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
            format!("unknown workload {s:?} (one of {})", names.join(", "))
        })
    }
}

/// What every client shares.
pub struct Ctx {
    /// The server.
    pub http: Http,
    /// The history.
    pub recorder: Recorder,
    /// Set when the run's time is up: clients finish the operation in hand.
    pub stop: AtomicBool,
    /// Answers the harness did not expect (a 400, a 422): a harness or server bug.
    pub unexpected: Mutex<Vec<Anomaly>>,
}

impl Ctx {
    /// A context for the server at `base`.
    pub fn new(base: &str, timeout: Duration) -> Ctx {
        Ctx {
            http: Http::new(base, timeout),
            recorder: Recorder::new(),
            stop: AtomicBool::new(false),
            unexpected: Mutex::new(Vec::new()),
        }
    }

    /// Whether clients should stop starting operations.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One logical process of a workload: records its operations, and takes a
/// fresh process id after an `info` (its operation may still be in flight).
pub struct Process {
    ctx: Arc<Ctx>,
    workload: Workload,
    id: u64,
}

impl Process {
    /// A new process of `workload`.
    pub fn new(ctx: &Arc<Ctx>, workload: Workload) -> Process {
        Process {
            ctx: Arc::clone(ctx),
            workload,
            id: ctx.recorder.process(),
        }
    }

    /// The shared context.
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Records the invocation of `f` with `value`.
    pub fn invoke(&self, f: &str, value: Value) {
        self.ctx
            .recorder
            .record(Kind::Invoke, self.workload.name(), f, self.id, value, None);
    }

    /// Records the completion of `f`.
    pub fn complete(&mut self, f: &str, kind: Kind, value: Value, error: Option<String>) {
        self.ctx
            .recorder
            .record(kind, self.workload.name(), f, self.id, value, error);
        if kind == Kind::Info {
            self.id = self.ctx.recorder.process();
        }
    }

    /// Completes `f` as `outcome` says: `ok` with `ok_value`, else `fail` or
    /// `info` with `value`. Returns the kind recorded.
    pub fn complete_with(&mut self, f: &str, outcome: &Outcome, ok_value: Value, value: Value) -> Kind {
        let kind = kind_of(outcome);
        if let Outcome::Fail { status, code, .. } = outcome
            && !matches!(status, 0 | 404 | 409)
        {
            self.unexpected(format!("{f} answered {status} {code}"));
        }
        let value = if kind == Kind::Ok { ok_value } else { value };
        self.complete(f, kind, value, outcome.error());
        kind
    }

    /// Notes an answer the harness did not expect.
    pub fn unexpected(&self, detail: String) {
        let mut unexpected = self.ctx.unexpected.lock().unwrap_or_else(|p| p.into_inner());
        unexpected.push(Anomaly::new(self.workload.name(), kinds::UNEXPECTED, detail));
    }
}

/// The history kind of an outcome.
pub fn kind_of(outcome: &Outcome) -> Kind {
    match outcome {
        Outcome::Ok { .. } => Kind::Ok,
        Outcome::Fail { .. } => Kind::Fail,
        Outcome::Info(_) => Kind::Info,
    }
}

/// Every live document of `collection`, page by page (`after` the last
/// page's `next`); or the outcome of a page that did not come.
pub async fn read_collection(ctx: &Ctx, collection: &str) -> Result<Vec<Value>, Outcome> {
    /// Documents per page: the server's most.
    const PAGE_DOCS: u32 = 1000;
    let mut docs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/c/{collection}?limit={PAGE_DOCS}");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={}", percent_encode(cursor)));
        }
        let outcome = ctx.http.get(&path).await;
        let Outcome::Ok { body, .. } = outcome else {
            return Err(outcome);
        };
        let page = body["docs"].as_array().cloned().unwrap_or_default();
        let next = body["next"].as_str().map(String::from);
        let empty = page.is_empty();
        docs.extend(page);
        match next {
            Some(next) if !empty => after = Some(next),
            _ => return Ok(docs),
        }
    }
}

/// `text` as a query parameter value.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sleeps `ERROR_PAUSE` when `kind` is not `ok`.
pub async fn pause_after(kind: Kind) {
    if kind != Kind::Ok {
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}
