//! Jepsen-style isolation check: concurrent list-append transactions, judged by `adya` (Elle in Rust).
//!
//! Sixteen threads run random transactions of reads and appends over a few hot documents, each
//! attempt one `Db::begin` … `Transaction::commit`, recorded as an Elle operation: `invoke`, then
//! `ok` with what it read, `fail` on a [`truce::TxFailure`] (definitely not committed), or `info`
//! on an error (outcome unknown). adya infers the dependency graph from what was read and must
//! find no cycle that strict serializability forbids, real-time order included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use adya::{History, Opts, Report, Valid, Workload};
use rand::Rng;
use serde_json::{Value, json};
use truce::{Db, Durability, Expect, Options, Transaction};

const COLLECTION: &str = "lists";
const THREADS: u64 = 16;
/// Committed transactions to reach, in all.
const TARGET_OK: u64 = 10_000;
/// Documents in play at any moment: few, so that transactions contend.
const HOT_KEYS: u64 = 8;
/// Transactions started before the hot set moves on to fresh documents. Elle rotates keys the
/// same way: every read records a whole list, so short lists keep the history and the check small.
const TXNS_PER_GENERATION: u64 = 250;
/// Give up (and fail the count assertion) rather than hang.
const DEADLINE: Duration = Duration::from_secs(120);

/// One planned micro-operation on key (document) `k`.
#[derive(Clone, Copy)]
enum Mop {
    Read(u64),
    Append(u64, u64),
}

/// What the threads share: the event counter that orders the history, and the counts that steer it.
struct Shared {
    db: Db,
    epoch: Instant,
    /// Numbers every event. An operation whose completion got a lower number than another's
    /// invocation finished before that one began, which is the real-time order adya checks.
    events: AtomicU64,
    started: AtomicU64,
    committed: AtomicU64,
    /// Fresh process ids: Elle retires a process whose operation ended `info`.
    processes: AtomicU64,
}

impl Shared {
    /// A history event stamped now, with its number for the final sort.
    fn event(&self, kind: &str, process: u64, value: &Value) -> (u64, Value) {
        let number = self.events.fetch_add(1, Ordering::SeqCst);
        let time = self.epoch.elapsed().as_nanos() as u64;
        (
            number,
            json!({"type": kind, "f": "txn", "process": process, "time": time, "value": value}),
        )
    }
}

fn doc_id(k: u64) -> String {
    format!("k{k}")
}

/// The list in document `k` as `tx` sees it; an absent document is the empty list.
fn items(tx: &mut Transaction, k: u64) -> truce::Result<Vec<u64>> {
    let doc = tx.get(COLLECTION, &doc_id(k))?;
    Ok(doc
        .map(|d| serde_json::from_value(d.body["items"].clone()).expect("items is a list of numbers"))
        .unwrap_or_default())
}

/// The micro-ops as invoked: reads not yet known. An append is a read-modify-write, so its read
/// is part of the transaction and recorded like any other: the checker then sees what every
/// writer built on, and a stale one shows up directly as a lost update.
fn planned(plan: &[Mop]) -> Value {
    let mut mops = Vec::new();
    for m in plan {
        match *m {
            Mop::Read(k) => mops.push(json!(["r", k, null])),
            Mop::Append(k, v) => mops.extend([json!(["r", k, null]), json!(["append", k, v])]),
        }
    }
    Value::Array(mops)
}

/// One attempt at `plan` in one transaction: the micro-ops with what each read, and the outcome.
fn attempt(db: &Db, plan: &[Mop]) -> truce::Result<(Value, truce::TxOutcome)> {
    let mut tx = db.begin()?;
    let mut done = Vec::new();
    for m in plan {
        match *m {
            Mop::Read(k) => done.push(json!(["r", k, items(&mut tx, k)?])),
            Mop::Append(k, v) => {
                let mut list = items(&mut tx, k)?;
                done.push(json!(["r", k, list]));
                list.push(v);
                // No precondition: only the commit's read-set validation stands between this
                // write and a lost update, and that validation is what is under test.
                tx.put(COLLECTION, &doc_id(k), json!({ "items": list }), Expect::Any)?;
                done.push(json!(["append", k, v]));
            }
        }
    }
    Ok((Value::Array(done), tx.commit()?))
}

/// One client: random transactions until enough committed, each attempt its own operation.
fn client(shared: &Shared, thread: u64) -> Vec<(u64, Value)> {
    let mut rng = rand::rng();
    let (mut process, mut appended, mut events) = (thread, 0, Vec::new());
    while shared.committed.load(Ordering::Relaxed) < TARGET_OK && shared.epoch.elapsed() < DEADLINE {
        let generation = shared.started.fetch_add(1, Ordering::Relaxed) / TXNS_PER_GENERATION;
        let plan: Vec<Mop> = (0..rng.random_range(1..=4))
            .map(|_| {
                let k = generation * HOT_KEYS + rng.random_range(0..HOT_KEYS);
                if rng.random_bool(0.5) {
                    appended += 1;
                    Mop::Append(k, thread * 1_000_000 + appended)
                } else {
                    Mop::Read(k)
                }
            })
            .collect();
        let invoked = planned(&plan);
        events.push(shared.event("invoke", process, &invoked));
        let (kind, value) = match attempt(&shared.db, &plan) {
            Ok((done, Ok(_))) => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
                ("ok", done)
            }
            Ok((_, Err(_conflict))) => ("fail", invoked),
            Err(e) => {
                eprintln!("process {process}: outcome unknown: {e}");
                ("info", invoked)
            }
        };
        events.push(shared.event(kind, process, &value));
        if kind == "info" {
            process = shared.processes.fetch_add(1, Ordering::Relaxed);
        }
    }
    events
}

/// Checks `ops` (Elle operations, in history order) against `model` with the list-append workload.
fn check(ops: Vec<Value>, model: &str) -> Report {
    let history = History::from_json(&Value::Array(ops).to_string()).expect("well-formed history");
    // A generous search budget: a valid history has no cycle to search, and a broken one
    // should come back with a concrete anomaly rather than `cycle-search-timeout`.
    let opts = Opts {
        models: vec![model.into()],
        timeout: Duration::from_secs(10),
        ..Opts::default()
    };
    adya::check(&history, Workload::ListAppend, &opts)
}

/// The verdict and the first few proofs of each anomaly, for a panic message.
fn describe(report: &Report) -> String {
    let mut out = format!(
        "{:?}: {:?}, not {:?}\n",
        report.valid, report.anomaly_types, report.not
    );
    for (kind, anomalies) in &report.anomalies {
        for anomaly in anomalies.iter().take(3) {
            out.push_str(&format!(
                "{kind} ({} in all):\n{}\n",
                anomalies.len(),
                anomaly.explanation
            ));
        }
    }
    out
}

#[test]
fn list_append_history_is_strict_serializable() {
    let dir = tempfile::tempdir().unwrap();
    // Immediate durability, as users run it: snapshots then wait for the durable watermark,
    // which is part of what makes reads fresh in real time. Group commit keeps it fast.
    let options = Options {
        durability: Durability::Immediate,
        ..Options::default()
    };
    let shared = Arc::new(Shared {
        db: Db::open(dir.path(), options).expect("open"),
        epoch: Instant::now(),
        events: AtomicU64::new(0),
        started: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        processes: AtomicU64::new(THREADS),
    });
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || client(&shared, t))
        })
        .collect();
    let mut events: Vec<(u64, Value)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let ran_for = shared.epoch.elapsed();

    // A final read of every document ever used, after everything else completed: an
    // acknowledged append missing from it is a real-time violation the checker catches.
    let generations = shared
        .started
        .load(Ordering::Relaxed)
        .div_ceil(TXNS_PER_GENERATION);
    let plan: Vec<Mop> = (0..generations * HOT_KEYS).map(Mop::Read).collect();
    let process = shared.processes.fetch_add(1, Ordering::Relaxed);
    events.push(shared.event("invoke", process, &planned(&plan)));
    let (read, outcome) = attempt(&shared.db, &plan).expect("final read");
    assert!(outcome.is_ok(), "a read-only transaction commits: {outcome:?}");
    events.push(shared.event("ok", process, &read));

    events.sort_by_key(|(number, _)| *number);
    let ops: Vec<Value> = events
        .into_iter()
        .enumerate()
        .map(|(index, (_, mut op))| {
            op["index"] = json!(index);
            op
        })
        .collect();
    let count = |kind: &str| ops.iter().filter(|op| op["type"] == kind).count();
    let (ok, failed, unknown) = (count("ok"), count("fail"), count("info"));
    let started = Instant::now();
    let report = check(ops.clone(), "strict-serializable");
    eprintln!(
        "list-append: {ok} ok, {failed} failed, {unknown} unknown in {ran_for:.1?}; checked in {:.1?}",
        started.elapsed()
    );
    // Anything but a clean verdict fails: `Unknown` (say, no dependency inferred) proves nothing.
    if report.valid != Valid::True {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("list-append-history.json");
        std::fs::write(&path, Value::Array(ops).to_string()).expect("write the history");
        panic!(
            "not strict serializable (history in {}):\n{}",
            path.display(),
            describe(&report)
        );
    }
    let committed = shared.committed.load(Ordering::Relaxed);
    assert!(
        committed >= TARGET_OK,
        "only {committed} transactions committed in {ran_for:?}"
    );
}

/// One hand-written history operation.
fn op(kind: &str, process: u64, value: Value) -> Value {
    json!({"type": kind, "process": process, "value": value})
}

/// Invocation and completion of one transaction that ran alone.
fn alone(process: u64, invoked: Value, completed: Value) -> [Value; 2] {
    [op("invoke", process, invoked), op("ok", process, completed)]
}

#[test]
fn checker_flags_broken_histories() {
    // (a) Lost update: both appenders read x = [1], and the final read keeps only one append.
    let mut lost = Vec::from(alone(0, json!([["append", "x", 1]]), json!([["append", "x", 1]])));
    lost.extend([
        op("invoke", 1, json!([["r", "x", null], ["append", "x", 2]])),
        op("invoke", 2, json!([["r", "x", null], ["append", "x", 3]])),
        op("ok", 1, json!([["r", "x", [1]], ["append", "x", 2]])),
        op("ok", 2, json!([["r", "x", [1]], ["append", "x", 3]])),
    ]);
    lost.extend(alone(3, json!([["r", "x", null]]), json!([["r", "x", [1, 3]]])));
    let report = check(lost, "strict-serializable");
    assert_eq!(report.valid, Valid::False, "{}", describe(&report));
    assert!(
        report.anomaly_types.iter().any(|t| t == "lost-update"),
        "{}",
        describe(&report)
    );

    // (b) Write skew (G2-item): each reads both keys empty and appends to a different one,
    // then a later read sees both appends. Snapshot isolation allows it; serializability does not.
    let mut skew = vec![
        op(
            "invoke",
            0,
            json!([["r", "x", null], ["r", "y", null], ["append", "x", 1]]),
        ),
        op(
            "invoke",
            1,
            json!([["r", "x", null], ["r", "y", null], ["append", "y", 1]]),
        ),
        op(
            "ok",
            0,
            json!([["r", "x", []], ["r", "y", []], ["append", "x", 1]]),
        ),
        op(
            "ok",
            1,
            json!([["r", "x", []], ["r", "y", []], ["append", "y", 1]]),
        ),
    ];
    skew.extend(alone(
        2,
        json!([["r", "x", null], ["r", "y", null]]),
        json!([["r", "x", [1]], ["r", "y", [1]]]),
    ));
    let report = check(skew.clone(), "strict-serializable");
    assert_eq!(report.valid, Valid::False, "{}", describe(&report));
    assert!(
        report.anomaly_types.iter().any(|t| t == "G2-item"),
        "{}",
        describe(&report)
    );
    assert_eq!(
        check(skew, "snapshot-isolation").valid,
        Valid::True,
        "write skew is legal under SI"
    );

    // (c) Stale read: a read invoked after an append was acknowledged misses it. Serializable
    // (the read can be ordered first) but not strict serializable: this proves the checker uses
    // the real-time order that the test above encodes in the order of events.
    let mut stale = Vec::from(alone(0, json!([["append", "x", 1]]), json!([["append", "x", 1]])));
    stale.extend(alone(1, json!([["r", "x", null]]), json!([["r", "x", []]])));
    let report = check(stale.clone(), "strict-serializable");
    assert_eq!(report.valid, Valid::False, "{}", describe(&report));
    assert_eq!(
        check(stale, "serializable").valid,
        Valid::True,
        "without real time the read can go first"
    );
}
