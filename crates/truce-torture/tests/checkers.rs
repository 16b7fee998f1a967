//! The checkers against hand-written histories: each known anomaly must be
//! flagged, and a correct history must pass. Without this, a clean run proves
//! nothing.

use serde_json::{Value, json};
use truce_torture::check::{self, Anomaly, kinds};
use truce_torture::history::{Kind, Op};

/// A history under construction, one workload.
struct History {
    workload: &'static str,
    ops: Vec<Op>,
}

impl History {
    fn new(workload: &'static str) -> History {
        History {
            workload,
            ops: Vec::new(),
        }
    }

    fn push(&mut self, kind: Kind, f: &str, process: u64, value: Value) -> &mut History {
        self.ops.push(Op {
            index: self.ops.len() as u64,
            kind,
            workload: self.workload.into(),
            f: f.into(),
            process,
            time: self.ops.len() as u64,
            value,
            error: None,
        });
        self
    }

    /// A transaction that ran alone and completed with what it was invoked with.
    fn txn(&mut self, kind: Kind, process: u64, mops: Value) -> &mut History {
        self.alone(kind, "txn", process, mops.clone(), mops)
    }

    /// An operation that ran alone: invoked, then completed as `kind`.
    fn alone(&mut self, kind: Kind, f: &str, process: u64, invoked: Value, completed: Value) -> &mut History {
        self.push(Kind::Invoke, f, process, invoked)
            .push(kind, f, process, completed)
    }
}

fn kinds_of(anomalies: &[Anomaly]) -> Vec<&str> {
    anomalies.iter().map(|a| a.kind.as_str()).collect()
}

fn assert_flags(anomalies: &[Anomaly], kind: &str) {
    assert!(
        anomalies.iter().any(|a| a.kind == kind),
        "expected {kind}, got {anomalies:#?}"
    );
}

// ---- list-append (adya) ----

fn list_append(h: &History) -> Vec<Anomaly> {
    check::list_append::check(&h.ops, h.workload)
}

#[test]
fn list_append_passes_a_serial_history() {
    let mut h = History::new("list-append");
    h.txn(Kind::Ok, 0, json!([["append", 1, 1]]));
    h.txn(Kind::Fail, 1, json!([["append", 1, 2]]));
    h.txn(Kind::Info, 2, json!([["append", 1, 3]]));
    h.alone(
        Kind::Ok,
        "txn",
        3,
        json!([["r", 1, null]]),
        json!([["r", 1, [1, 3]]]),
    );
    assert_eq!(list_append(&h), vec![]);
}

#[test]
fn list_append_flags_a_lost_update() {
    let mut h = History::new("list-append");
    h.txn(Kind::Ok, 0, json!([["append", 1, 1]]));
    h.push(Kind::Invoke, "txn", 1, json!([["r", 1, null], ["append", 1, 2]]))
        .push(Kind::Invoke, "txn", 2, json!([["r", 1, null], ["append", 1, 3]]))
        .push(Kind::Ok, "txn", 1, json!([["r", 1, [1]], ["append", 1, 2]]))
        .push(Kind::Ok, "txn", 2, json!([["r", 1, [1]], ["append", 1, 3]]));
    h.alone(
        Kind::Ok,
        "txn",
        3,
        json!([["r", 1, null]]),
        json!([["r", 1, [1, 3]]]),
    );
    assert_flags(&list_append(&h), "lost-update");
}

#[test]
fn list_append_flags_g1a_aborted_read() {
    let mut h = History::new("list-append");
    h.txn(Kind::Fail, 0, json!([["append", 1, 1]]));
    h.alone(
        Kind::Ok,
        "txn",
        1,
        json!([["r", 1, null]]),
        json!([["r", 1, [1]]]),
    );
    assert_flags(&list_append(&h), "G1a");
}

#[test]
fn list_append_flags_g1c_circular_information_flow() {
    let mut h = History::new("list-append");
    h.push(Kind::Invoke, "txn", 0, json!([["append", 1, 1], ["r", 2, null]]))
        .push(Kind::Invoke, "txn", 1, json!([["append", 2, 1], ["r", 1, null]]))
        .push(Kind::Ok, "txn", 0, json!([["append", 1, 1], ["r", 2, [1]]]))
        .push(Kind::Ok, "txn", 1, json!([["append", 2, 1], ["r", 1, [1]]]));
    assert_flags(&list_append(&h), "G1c");
}

#[test]
fn list_append_flags_g2_item_write_skew() {
    let mut h = History::new("list-append");
    h.push(
        Kind::Invoke,
        "txn",
        0,
        json!([["r", 1, null], ["r", 2, null], ["append", 1, 1]]),
    )
    .push(
        Kind::Invoke,
        "txn",
        1,
        json!([["r", 1, null], ["r", 2, null], ["append", 2, 1]]),
    )
    .push(
        Kind::Ok,
        "txn",
        0,
        json!([["r", 1, []], ["r", 2, []], ["append", 1, 1]]),
    )
    .push(
        Kind::Ok,
        "txn",
        1,
        json!([["r", 1, []], ["r", 2, []], ["append", 2, 1]]),
    );
    h.alone(
        Kind::Ok,
        "txn",
        2,
        json!([["r", 1, null], ["r", 2, null]]),
        json!([["r", 1, [1]], ["r", 2, [1]]]),
    );
    assert_flags(&list_append(&h), "G2-item");
}

#[test]
fn list_append_flags_a_lost_acknowledged_append() {
    // The final read, after the append was acknowledged, misses it: stale in real time.
    let mut h = History::new("list-append");
    h.txn(Kind::Ok, 0, json!([["append", 1, 1]]));
    h.alone(Kind::Ok, "txn", 1, json!([["r", 1, null]]), json!([["r", 1, []]]));
    assert!(!list_append(&h).is_empty());
}

// ---- register ----

fn register(h: &History) -> Vec<Anomaly> {
    check::register::check(&h.ops, h.workload)
}

fn read(h: &mut History, process: u64, version: u64, value: Value) {
    h.alone(
        Kind::Ok,
        "read",
        process,
        json!({"k": 0}),
        json!({"k": 0, "version": version, "value": value}),
    );
}

fn cas(h: &mut History, kind: Kind, process: u64, expect: u64, value: u64) {
    let invoked = json!({"k": 0, "expect": expect, "value": value});
    let mut done = invoked.clone();
    if kind == Kind::Ok {
        done["version"] = json!(expect + 1);
    }
    h.alone(kind, "cas", process, invoked, done);
}

#[test]
fn register_passes_a_linearizable_history() {
    let mut h = History::new("register");
    read(&mut h, 0, 0, Value::Null);
    cas(&mut h, Kind::Ok, 0, 0, 10);
    cas(&mut h, Kind::Fail, 1, 0, 11);
    cas(&mut h, Kind::Info, 2, 1, 12);
    read(&mut h, 3, 2, json!(12)); // the info write happened
    cas(&mut h, Kind::Ok, 3, 2, 13);
    read(&mut h, 4, 3, json!(13));
    assert_eq!(register(&h), vec![]);
}

#[test]
fn register_flags_a_stale_read() {
    let mut h = History::new("register");
    cas(&mut h, Kind::Ok, 0, 0, 10);
    read(&mut h, 1, 0, Value::Null);
    assert_flags(&register(&h), kinds::NONLINEARIZABLE);
}

#[test]
fn register_flags_a_read_from_the_future() {
    let mut h = History::new("register");
    read(&mut h, 1, 1, json!(10));
    cas(&mut h, Kind::Ok, 0, 0, 10);
    assert_flags(&register(&h), kinds::NONLINEARIZABLE);
}

#[test]
fn register_flags_two_writers_of_one_version() {
    let mut h = History::new("register");
    cas(&mut h, Kind::Ok, 0, 0, 10);
    cas(&mut h, Kind::Ok, 1, 0, 11);
    assert_flags(&register(&h), kinds::LOST_UPDATE);
}

#[test]
fn register_flags_a_read_of_a_failed_write() {
    let mut h = History::new("register");
    cas(&mut h, Kind::Fail, 0, 0, 10);
    read(&mut h, 1, 1, json!(10));
    assert_flags(&register(&h), kinds::ABORTED_READ);
}

#[test]
fn register_flags_a_conflict_that_showed_an_old_version() {
    let mut h = History::new("register");
    cas(&mut h, Kind::Ok, 0, 0, 10);
    cas(&mut h, Kind::Ok, 0, 1, 11);
    // A later conflict carries version 1 as current: version 2 was acknowledged before.
    h.alone(
        Kind::Fail,
        "cas",
        1,
        json!({"k": 0, "expect": 0, "value": 12}),
        json!({"k": 0, "expect": 0, "value": 12, "current": {"version": 1, "value": 10}}),
    );
    assert_flags(&register(&h), kinds::NONLINEARIZABLE);
}

// ---- counter ----

fn counter(h: &History) -> Vec<Anomaly> {
    check::counter::check(&h.ops, h.workload)
}

fn add(h: &mut History, kind: Kind, process: u64, delta: i64) {
    let value = json!({"k": 0, "delta": delta});
    h.alone(kind, "add", process, value.clone(), value);
}

fn read_counter(h: &mut History, process: u64, value: i64) {
    h.alone(
        Kind::Ok,
        "read",
        process,
        json!({"k": 0}),
        json!({"k": 0, "value": value}),
    );
}

#[test]
fn counter_passes_reads_within_bounds() {
    let mut h = History::new("counter");
    add(&mut h, Kind::Ok, 0, 2);
    add(&mut h, Kind::Info, 1, 3);
    add(&mut h, Kind::Fail, 2, 100);
    read_counter(&mut h, 3, 2);
    read_counter(&mut h, 3, 5);
    assert_eq!(counter(&h), vec![]);
}

#[test]
fn counter_flags_a_double_applied_increment() {
    let mut h = History::new("counter");
    add(&mut h, Kind::Ok, 0, 2);
    add(&mut h, Kind::Ok, 1, 3);
    read_counter(&mut h, 2, 7); // 3 applied twice
    assert_flags(&counter(&h), kinds::DOUBLE_INCREMENT);
}

#[test]
fn counter_flags_a_failed_increment_applied() {
    let mut h = History::new("counter");
    add(&mut h, Kind::Ok, 0, 2);
    add(&mut h, Kind::Fail, 1, 3);
    read_counter(&mut h, 2, 5);
    assert_flags(&counter(&h), kinds::DOUBLE_INCREMENT);
}

#[test]
fn counter_flags_a_lost_increment() {
    let mut h = History::new("counter");
    add(&mut h, Kind::Ok, 0, 2);
    add(&mut h, Kind::Ok, 1, 3);
    read_counter(&mut h, 2, 2);
    assert_flags(&counter(&h), kinds::LOST_INCREMENT);
}

// ---- set ----

fn set(h: &History) -> Vec<Anomaly> {
    check::set::check(&h.ops, h.workload)
}

fn insert(h: &mut History, kind: Kind, process: u64, e: i64) {
    h.alone(kind, "add", process, json!({"e": e}), json!({"e": e}));
}

fn read_set(h: &mut History, process: u64, elements: &[i64]) {
    h.alone(
        Kind::Ok,
        "read",
        process,
        Value::Null,
        json!({"elements": elements}),
    );
}

#[test]
fn set_passes_a_complete_read() {
    let mut h = History::new("set");
    insert(&mut h, Kind::Ok, 0, 1);
    insert(&mut h, Kind::Info, 1, 2);
    insert(&mut h, Kind::Fail, 2, 3);
    read_set(&mut h, 3, &[1]);
    read_set(&mut h, 3, &[1, 2]);
    assert_eq!(set(&h), vec![]);
}

#[test]
fn set_flags_a_lost_acknowledged_insert() {
    let mut h = History::new("set");
    insert(&mut h, Kind::Ok, 0, 1);
    insert(&mut h, Kind::Ok, 1, 2);
    read_set(&mut h, 2, &[2]);
    assert_flags(&set(&h), kinds::LOST_WRITE);
}

#[test]
fn set_flags_a_failed_insert_present() {
    let mut h = History::new("set");
    insert(&mut h, Kind::Fail, 0, 1);
    read_set(&mut h, 1, &[1]);
    assert_flags(&set(&h), kinds::ABORTED_READ);
}

// ---- change feed ----

fn feed(h: &History) -> Vec<Anomaly> {
    check::feed::check(&h.ops, h.workload)
}

fn insert_at(h: &mut History, kind: Kind, process: u64, e: i64, seq: u64) {
    h.alone(
        kind,
        "insert",
        process,
        json!({"e": e}),
        json!({"e": e, "seq": seq}),
    );
}

fn page(h: &mut History, since: u64, results: &[(u64, i64)]) {
    let last = results.iter().map(|r| r.0).max().unwrap_or(since);
    let results: Vec<Value> = results.iter().map(|(s, e)| json!([s, e])).collect();
    h.alone(
        Kind::Ok,
        "changes",
        99,
        json!({"since": since}),
        json!({"since": since, "results": results, "last_seq": last}),
    );
}

fn three_inserts() -> History {
    let mut h = History::new("feed");
    insert_at(&mut h, Kind::Ok, 0, 1, 1);
    insert_at(&mut h, Kind::Ok, 1, 2, 2);
    insert_at(&mut h, Kind::Ok, 2, 3, 3);
    h
}

#[test]
fn feed_passes_every_commit_once_in_order() {
    let mut h = three_inserts();
    insert_at(&mut h, Kind::Info, 3, 4, 0);
    page(&mut h, 0, &[(1, 1), (2, 2)]);
    page(&mut h, 2, &[(3, 3), (4, 4)]);
    page(&mut h, 4, &[]);
    assert_eq!(feed(&h), vec![]);
}

#[test]
fn feed_flags_a_gap() {
    let mut h = three_inserts();
    page(&mut h, 0, &[(1, 1), (3, 3)]);
    assert_eq!(kinds_of(&feed(&h)), vec![kinds::FEED_GAP]);
}

#[test]
fn feed_flags_a_duplicate() {
    let mut h = three_inserts();
    page(&mut h, 0, &[(1, 1), (2, 2)]);
    page(&mut h, 1, &[(2, 2), (3, 3)]);
    assert_eq!(kinds_of(&feed(&h)), vec![kinds::FEED_DUPLICATE]);
}

#[test]
fn feed_flags_a_reorder() {
    let mut h = three_inserts();
    page(&mut h, 0, &[(1, 1), (3, 3), (2, 2)]);
    assert_eq!(kinds_of(&feed(&h)), vec![kinds::FEED_REORDER]);
}

#[test]
fn feed_flags_a_change_at_the_wrong_seq() {
    let mut h = three_inserts();
    page(&mut h, 0, &[(1, 1), (2, 2), (4, 3)]);
    assert_eq!(kinds_of(&feed(&h)), vec![kinds::FEED_WRONG_SEQ]);
}

#[test]
fn feed_flags_a_failed_insert_delivered() {
    let mut h = History::new("feed");
    insert_at(&mut h, Kind::Fail, 0, 1, 0);
    page(&mut h, 0, &[(1, 1)]);
    assert_flags(&feed(&h), kinds::ABORTED_READ);
}

// ---- replicas of a collection that purges its tombstones ----

fn replica(h: &History) -> Vec<Anomaly> {
    check::replica::check(&h.ops, h.workload)
}

/// Puts `w` into `id` (process 0), deletes `deleted` (process 1), then the
/// `pull` replica (process 9) reads one page of `changes` and ends with its
/// copy `mine` beside the server's `theirs`.
fn replica_history(changes: Value, mine: Value, theirs: Value) -> History {
    let mut h = History::new("replica");
    let put = json!({"id": "r1", "w": 1});
    h.alone(Kind::Ok, "put", 0, put.clone(), put);
    let put = json!({"id": "r2", "w": 2});
    h.alone(Kind::Ok, "put", 0, put.clone(), put);
    let delete = json!({"id": "r2"});
    h.alone(Kind::Ok, "delete", 1, delete.clone(), delete);
    h.alone(
        Kind::Ok,
        "pull",
        9,
        json!({"checkpoint": null}),
        json!({"at": {"checkpoint": null}, "changes": changes}),
    );
    h.alone(
        Kind::Ok,
        "final",
        9,
        json!({"route": "pull"}),
        json!({"route": "pull", "replica": mine, "server": theirs}),
    );
    h
}

#[test]
fn replica_passes_a_copy_equal_to_the_server() {
    let h = replica_history(
        json!([["r1", 1], ["r2", null]]),
        json!({"r1": 1}),
        json!({"r1": 1}),
    );
    assert_eq!(replica(&h), vec![]);
}

#[test]
fn replica_flags_a_missed_delete() {
    let h = replica_history(
        json!([["r1", 1], ["r2", 2]]),
        json!({"r1": 1, "r2": 2}),
        json!({"r1": 1}),
    );
    assert_eq!(kinds_of(&replica(&h)), vec![kinds::REPLICA_DIVERGED]);
}

#[test]
fn replica_flags_a_missed_or_stale_write() {
    let missed = replica_history(json!([]), json!({}), json!({"r1": 1}));
    assert_eq!(kinds_of(&replica(&missed)), vec![kinds::REPLICA_DIVERGED]);
    let stale = replica_history(json!([["r1", 2]]), json!({"r1": 2}), json!({"r1": 1}));
    assert_eq!(kinds_of(&replica(&stale)), vec![kinds::REPLICA_DIVERGED]);
}

#[test]
fn replica_flags_a_value_no_put_wrote() {
    let h = replica_history(json!([["r1", 7]]), json!({"r1": 1}), json!({"r1": 1}));
    assert_eq!(kinds_of(&replica(&h)), vec![kinds::GARBAGE_READ]);
}

#[test]
fn replica_flags_a_value_of_a_failed_put() {
    let mut h = replica_history(json!([]), json!({}), json!({}));
    let put = json!({"id": "r3", "w": 3});
    h.alone(Kind::Fail, "put", 0, put.clone(), put);
    h.alone(
        Kind::Ok,
        "pull",
        9,
        json!({"checkpoint": null}),
        json!({"at": {"checkpoint": null}, "changes": [["r3", 3]]}),
    );
    assert_eq!(kinds_of(&replica(&h)), vec![kinds::ABORTED_READ]);
}

/// Writes of `r2` with their commits (`w` 2 at 2, the delete at 3, then
/// `later`), and the `pull` replica's `pages` (`[changes, upto]`), then a
/// reset of its copy and an empty copy equal to an empty server: whatever
/// the pages did, the final comparison passes.
fn replica_pages(later: &[(Kind, Value)], pages: &[(Value, u64)]) -> History {
    let mut h = History::new("replica");
    h.alone(
        Kind::Ok,
        "put",
        0,
        json!({"id": "r2", "w": 2}),
        json!({"id": "r2", "w": 2, "seq": 2}),
    );
    h.alone(
        Kind::Ok,
        "delete",
        1,
        json!({"id": "r2"}),
        json!({"id": "r2", "seq": 3}),
    );
    for (kind, done) in later {
        let invoked = json!({"id": done["id"], "w": done["w"]});
        h.alone(*kind, "put", 0, invoked, done.clone());
    }
    for (changes, upto) in pages {
        h.alone(
            Kind::Ok,
            "pull",
            9,
            json!({"checkpoint": null}),
            json!({"at": {"checkpoint": null}, "changes": changes, "upto": upto}),
        );
    }
    h.alone(
        Kind::Ok,
        "reset",
        9,
        json!({"route": "pull"}),
        json!({"route": "pull"}),
    );
    h.alone(
        Kind::Ok,
        "final",
        9,
        json!({"route": "pull"}),
        json!({"route": "pull", "replica": {}, "server": {}}),
    );
    h
}

/// A replica refused later drops its copy: a delete it missed must be
/// flagged at the page that read past it, not only at the end.
#[test]
fn replica_flags_a_missed_delete_at_the_page_though_a_reset_follows() {
    let h = replica_pages(&[], &[(json!([["r2", 2]]), 2), (json!([]), 5)]);
    assert_eq!(kinds_of(&replica(&h)), vec![kinds::REPLICA_DIVERGED]);
    // Read up to the delete's own commit only (a `_pull` checkpoint may
    // stand before the document within it): not yet judged.
    let h = replica_pages(&[], &[(json!([["r2", 2]]), 2), (json!([]), 3)]);
    assert_eq!(replica(&h), vec![]);
}

/// A delete that is not the document's last change may be superseded in
/// the feed (each document appears at its latest change): no anomaly; nor
/// for a document with a write of unknown outcome, which may have landed
/// after the delete.
#[test]
fn replica_judges_only_deletes_known_to_be_a_documents_last_change() {
    let later = (Kind::Ok, json!({"id": "r2", "w": 4, "seq": 6}));
    let h = replica_pages(
        &[later],
        &[(json!([["r2", 2]]), 2), (json!([]), 5), (json!([["r2", 4]]), 6)],
    );
    assert_eq!(replica(&h), vec![]);
    let unknown = (Kind::Info, json!({"id": "r2", "w": 5}));
    let h = replica_pages(&[unknown], &[(json!([["r2", 2]]), 2), (json!([]), 5)]);
    assert_eq!(replica(&h), vec![]);
}

#[test]
fn replica_flags_a_replica_that_never_compared() {
    let mut h = replica_history(json!([]), json!({}), json!({}));
    h.alone(
        Kind::Ok,
        "changes",
        8,
        json!({"since": 0, "from": null}),
        json!({"at": {"since": 0, "from": null}, "changes": []}),
    );
    assert_eq!(kinds_of(&replica(&h)), vec![kinds::REPLICA_DIVERGED]);
}

/// `check_all` runs every checker named: a bad history fails the whole run.
#[test]
fn check_all_reports_each_workloads_anomalies() {
    let mut h = History::new("counter");
    add(&mut h, Kind::Ok, 0, 2);
    read_counter(&mut h, 1, 4);
    let found = truce_torture::check_all(&h.ops, &truce_torture::workloads::Workload::ALL);
    assert_eq!(kinds_of(&found), vec![kinds::DOUBLE_INCREMENT]);
}
