//! The Elle-style history: every operation as an `invoke` and one completion
//! (`ok`, `fail` or `info`), numbered in the order they happened.
//!
//! The event number is the real-time order the checkers use: an operation whose
//! completion has a lower index than another's invocation finished before that
//! one began. `time` (ns since the run started) is kept for people reading it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The operation starts.
    Invoke,
    /// It happened, with this value.
    Ok,
    /// It certainly did not happen (a conflict, a refused connection).
    Fail,
    /// Unknown: a timeout, a reset, a 5xx. It may have happened, or may yet.
    Info,
}

/// One event of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history: the real-time order.
    pub index: u64,
    /// `invoke`, `ok`, `fail` or `info`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The workload it belongs to (`list-append`, `register`, …).
    pub workload: String,
    /// The function: `txn`, `read`, `cas`, `add`, `insert`, `changes`.
    pub f: String,
    /// The logical process; a process whose operation ended `info` is retired.
    pub process: u64,
    /// Nanoseconds since the run started.
    pub time: u64,
    /// What was asked (`invoke`) or what came back (completions).
    pub value: Value,
    /// Why a `fail` or `info` ended so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records events from many tasks in one order.
pub struct Recorder {
    epoch: Instant,
    events: Mutex<Vec<Op>>,
    processes: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder {
            epoch: Instant::now(),
            events: Mutex::new(Vec::new()),
            processes: AtomicU64::new(0),
        }
    }

    /// A process id never used before.
    pub fn process(&self) -> u64 {
        self.processes.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends an event; its index is its position.
    pub fn record(
        &self,
        kind: Kind,
        workload: &str,
        f: &str,
        process: u64,
        value: Value,
        error: Option<String>,
    ) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let op = Op {
            index: events.len() as u64,
            kind,
            workload: workload.to_string(),
            f: f.to_string(),
            process,
            time: self.epoch.elapsed().as_nanos() as u64,
            value,
            error,
        };
        events.push(op);
    }

    /// Every event so far, in order, leaving the recorder empty (a long run's
    /// history is large: it is not copied).
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// An operation with its invocation and completion paired.
#[derive(Clone, Debug)]
pub struct Completed<'a> {
    /// The `invoke` event.
    pub invoke: &'a Op,
    /// The `ok`, `fail` or `info` event; `None` if the history ends first
    /// (which counts as `info`).
    pub completion: Option<&'a Op>,
}

impl Completed<'_> {
    /// How it ended; an operation never completed is `info`.
    pub fn kind(&self) -> Kind {
        self.completion.map_or(Kind::Info, |c| c.kind)
    }

    /// Index of the completion, or `u64::MAX` if it may still be in flight.
    pub fn end(&self) -> u64 {
        match self.completion {
            Some(c) if c.kind != Kind::Info => c.index,
            _ => u64::MAX,
        }
    }

    /// Index of the invocation.
    pub fn start(&self) -> u64 {
        self.invoke.index
    }

    /// The completion's value, or the invocation's if there is none.
    pub fn value(&self) -> &Value {
        self.completion.map_or(&self.invoke.value, |c| &c.value)
    }
}

/// Pairs each invocation of `workload` with the next completion of its process.
pub fn pair<'a>(ops: &'a [Op], workload: &str) -> Vec<Completed<'a>> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<Completed<'a>> = Vec::new();
    for op in ops.iter().filter(|op| op.workload == workload) {
        match op.kind {
            Kind::Invoke => {
                open.insert(op.process, out.len());
                out.push(Completed {
                    invoke: op,
                    completion: None,
                });
            }
            _ => {
                if let Some(at) = open.remove(&op.process) {
                    out[at].completion = Some(op);
                }
            }
        }
    }
    out
}

/// Operations grouped by the register, counter or key their invocation names
/// in `value.k`.
pub fn by_key<'a, 'b>(
    completed: &'b [Completed<'a>],
) -> std::collections::BTreeMap<i64, Vec<&'b Completed<'a>>> {
    let mut groups: std::collections::BTreeMap<i64, Vec<&'b Completed<'a>>> =
        std::collections::BTreeMap::new();
    for op in completed {
        if let Some(k) = op.invoke.value["k"].as_i64() {
            groups.entry(k).or_default().push(op);
        }
    }
    groups
}

/// Counts of completions of one workload: `(ok, fail, info)`.
pub fn counts(ops: &[Op], workload: &str) -> (u64, u64, u64) {
    pair(ops, workload)
        .iter()
        .fold((0, 0, 0), |(ok, fail, info), op| match op.kind() {
            Kind::Ok => (ok + 1, fail, info),
            Kind::Fail => (ok, fail + 1, info),
            _ => (ok, fail, info + 1),
        })
}
