//! Optimistic transactions: the bank invariant, write skew, phantoms, batches,
//! own writes, and read-only transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use truce::{
    ConflictReason, Db, Durability, Expect, IndexSpec, Options, Query, RetryPolicy, TxFailure, TxOp,
};

use crate::update;

fn open_tx_db(dir: &std::path::Path) -> Db {
    let retry = RetryPolicy {
        max_attempts: 200,
        ..RetryPolicy::default()
    };
    Db::open(
        dir,
        Options {
            retry,
            durability: Durability::Immediate,
            ..Options::default()
        },
    )
    .unwrap()
}

const ACCOUNTS: usize = 20;
const OPENING_BALANCE: i64 = 1000;

fn balance(doc: &Option<truce::Document>) -> i64 {
    doc.as_ref().and_then(|d| d.body["balance"].as_i64()).unwrap_or(0)
}

#[test]
fn bank_transfers_keep_the_total_in_every_snapshot_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let ops = (0..ACCOUNTS)
        .map(|i| TxOp::Put {
            collection: "accounts".into(),
            id: format!("a{i}"),
            body: json!({"balance": OPENING_BALANCE}),
            expect: Expect::Absent,
        })
        .collect();
    db.batch(ops, None).unwrap().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let transfers: Vec<_> = (0..8)
        .map(|t| {
            let (db, stop, committed) = (db.clone(), Arc::clone(&stop), Arc::clone(&committed));
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let from = format!("a{}", (n as usize * 7 + t) % ACCOUNTS);
                    let to = format!("a{}", (n as usize * 13 + t * 3 + 1) % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    let amount = (n % 50 + 1) as i64;
                    db.transaction(|tx| {
                        let a = balance(&tx.get("accounts", &from)?);
                        let b = balance(&tx.get("accounts", &to)?);
                        tx.put("accounts", &from, json!({"balance": a - amount}), Expect::Exists)?;
                        tx.put("accounts", &to, json!({"balance": b + amount}), Expect::Exists)?;
                        Ok(())
                    })
                    .unwrap();
                    committed.lock().unwrap().push((from, to, amount));
                }
            })
        })
        .collect();
    let snapshots = Arc::new(AtomicU64::new(0));
    let reader = {
        let (db, stop, snapshots) = (db.clone(), Arc::clone(&stop), Arc::clone(&snapshots));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut tx = db.begin().unwrap();
                let total: i64 = (0..ACCOUNTS)
                    .map(|i| balance(&tx.get("accounts", &format!("a{i}")).unwrap()))
                    .sum();
                assert_eq!(
                    total,
                    OPENING_BALANCE * ACCOUNTS as i64,
                    "a snapshot saw money appear or vanish"
                );
                assert!(
                    tx.commit().unwrap().is_ok(),
                    "read-only transactions never conflict"
                );
                snapshots.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    transfers.into_iter().for_each(|t| t.join().unwrap());
    reader.join().unwrap();

    let mut expected = [OPENING_BALANCE; ACCOUNTS];
    let committed = committed.lock().unwrap();
    for (from, to, amount) in committed.iter() {
        expected[from[1..].parse::<usize>().unwrap()] -= amount;
        expected[to[1..].parse::<usize>().unwrap()] += amount;
    }
    let accounts = db.collection("accounts").unwrap();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            balance(&accounts.get(&format!("a{i}")).unwrap()),
            *want,
            "account a{i}"
        );
    }
    assert!(
        committed.len() > 100,
        "only {} transfers committed",
        committed.len()
    );
    assert!(snapshots.load(Ordering::Relaxed) > 10);
}

#[test]
fn write_skew_lets_exactly_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let doctors = db.collection("oncall").unwrap();
    doctors
        .put("alice", json!({"on": true}), Expect::Absent)
        .unwrap()
        .unwrap();
    doctors
        .put("bob", json!({"on": true}), Expect::Absent)
        .unwrap()
        .unwrap();
    let mut t1 = db.begin().unwrap();
    let mut t2 = db.begin().unwrap();
    for tx in [&mut t1, &mut t2] {
        assert!(tx.get("oncall", "alice").unwrap().is_some());
        assert!(tx.get("oncall", "bob").unwrap().is_some());
    }
    t1.put("oncall", "alice", json!({"on": false}), Expect::Any)
        .unwrap();
    t2.put("oncall", "bob", json!({"on": false}), Expect::Any)
        .unwrap();
    assert!(t1.commit().unwrap().is_ok());
    match t2.commit().unwrap() {
        Err(TxFailure::ReadConflict {
            collection,
            what,
            seq,
        }) => {
            assert_eq!(collection, "oncall");
            assert_eq!(what, "document alice");
            assert!(seq > 2);
        }
        other => panic!("expected a read conflict, got {other:?}"),
    }
    assert_eq!(doctors.get("bob").unwrap().unwrap().body["on"], true);
}

#[test]
fn a_phantom_insert_into_a_read_range_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let sessions = db.collection("sessions").unwrap();
    sessions
        .create_index(
            "by_path",
            IndexSpec {
                fields: vec!["path".into()],
                unique: false,
            },
        )
        .unwrap();
    crate::indexes::wait_ready(&sessions, "by_path");
    let mut tx = db.begin().unwrap();
    let q = Query {
        index: Some("by_path".into()),
        eq: vec![json!("/blog")],
        ..Query::default()
    };
    assert!(tx.query("sessions", &q).unwrap().docs.is_empty());
    // An insert outside the range does not disturb the transaction ...
    sessions
        .put("s0", json!({"path": "/about"}), Expect::Absent)
        .unwrap()
        .unwrap();
    // ... one inside it does.
    sessions
        .put("s1", json!({"path": "/blog"}), Expect::Absent)
        .unwrap()
        .unwrap();
    tx.put(
        "sessions",
        "s2",
        json!({"path": "/blog", "first": true}),
        Expect::Absent,
    )
    .unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::ReadConflict { what, .. }) => assert_eq!(what, "index by_path range"),
        other => panic!("expected a read conflict, got {other:?}"),
    }
    let mut clean = db.begin().unwrap();
    assert!(
        clean
            .query(
                "sessions",
                &Query {
                    eq: vec![json!("/nowhere")],
                    ..q
                }
            )
            .unwrap()
            .docs
            .is_empty()
    );
    sessions
        .put("s3", json!({"path": "/blog"}), Expect::Absent)
        .unwrap()
        .unwrap();
    clean
        .put("sessions", "s4", json!({"path": "/x"}), Expect::Absent)
        .unwrap();
    assert!(
        clean.commit().unwrap().is_ok(),
        "an insert elsewhere is no phantom"
    );
}

/// A transaction that read documents through an index depends on them, not
/// only on the index's entries: a commit that changes one of them without
/// moving its entry (its indexed fields unchanged) fails the transaction,
/// whether it writes that document (a lost update otherwise) or another
/// one from what it read. A change outside the range read does not.
#[test]
fn documents_read_through_an_index_conflict_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let accounts = db.collection("accounts").unwrap();
    accounts
        .create_index(
            "by_owner",
            IndexSpec {
                fields: vec!["owner".into()],
                unique: false,
            },
        )
        .unwrap();
    crate::indexes::wait_ready(&accounts, "by_owner");
    for (id, owner) in [("a", "alice"), ("b", "alice"), ("c", "carol")] {
        accounts
            .put(id, json!({"owner": owner, "balance": 100}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let alices = Query {
        index: Some("by_owner".into()),
        eq: vec![json!("alice")],
        ..Query::default()
    };
    let debit = || update(json!({"$inc": {"balance": -50}}));
    // Read-modify-write of a document found by the query.
    let mut tx = db.begin().unwrap();
    let found = tx.query("accounts", &alices).unwrap().docs;
    assert_eq!(found.len(), 2);
    accounts.patch("a", debit(), Expect::Any).unwrap().unwrap();
    tx.put(
        "accounts",
        "a",
        json!({"owner": "alice", "balance": 70}),
        Expect::Any,
    )
    .unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::ReadConflict { what, .. }) => assert_eq!(what, "index by_owner range"),
        other => panic!("expected a read conflict, got {other:?}"),
    }
    assert_eq!(
        accounts.get("a").unwrap().unwrap().body["balance"],
        50,
        "nothing lost"
    );
    // A write elsewhere, made from what was read.
    let mut tx = db.begin().unwrap();
    let total: i64 = tx
        .query("accounts", &alices)
        .unwrap()
        .docs
        .iter()
        .map(|d| d.body["balance"].as_i64().unwrap())
        .sum();
    accounts.patch("b", debit(), Expect::Any).unwrap().unwrap();
    tx.put("accounts", "total", json!({"alice": total}), Expect::Any)
        .unwrap();
    assert!(matches!(
        tx.commit().unwrap(),
        Err(TxFailure::ReadConflict { .. })
    ));
    // A change outside the range read is no conflict.
    let mut tx = db.begin().unwrap();
    tx.query("accounts", &alices).unwrap();
    accounts.patch("c", debit(), Expect::Any).unwrap().unwrap();
    tx.put("accounts", "total", json!({"alice": 100}), Expect::Any)
        .unwrap();
    assert!(tx.commit().unwrap().is_ok());
}

#[test]
fn reading_an_absent_document_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let mut tx = db.begin().unwrap();
    assert!(tx.get("c", "ghost").unwrap().is_none());
    db.collection("c")
        .unwrap()
        .put("ghost", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    tx.put("c", "other", json!({}), Expect::Absent).unwrap();
    assert!(matches!(
        tx.commit().unwrap(),
        Err(TxFailure::ReadConflict { .. })
    ));
}

#[test]
fn own_writes_are_visible_and_fold() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("c").unwrap();
    c.put("x", json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    let mut tx = db.begin().unwrap();
    tx.patch("c", "x", update(json!({"$inc": {"n": 10}})), Expect::Any)
        .unwrap();
    assert_eq!(tx.get("c", "x").unwrap().unwrap().body["n"], 11);
    tx.patch("c", "x", update(json!({"$inc": {"n": 100}})), Expect::Any)
        .unwrap();
    tx.put("c", "y", json!({"m": 1}), Expect::Absent).unwrap();
    assert_eq!(tx.get("c", "y").unwrap().unwrap().body["m"], 1);
    tx.delete("c", "y", Expect::Any).unwrap();
    assert!(tx.get("c", "y").unwrap().is_none());
    let committed = tx.commit().unwrap().unwrap();
    assert_eq!(c.get("x").unwrap().unwrap().body["n"], 111);
    assert_eq!(committed.results.len(), 2);
}

/// A document written twice in a transaction is written once, as the writes
/// in their order leave it; a patch's `$if` is judged on what the
/// transaction sees when it is folded, not dropped: skipped, or failing the
/// commit with `condition_failed` as the committer would fail it.
#[test]
fn folded_writes_keep_a_patchs_condition() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("c").unwrap();
    c.put("x", json!({"n": 10}), Expect::Absent).unwrap().unwrap();
    let guarded =
        |on_false: &str| update(json!({"$if": {"n": {"$lt": 5}}, "$else": on_false, "$inc": {"n": 1}}));
    let set_m = || update(json!({"$set": {"m": 1}}));
    // A failing `$if` (conflict), then a patch, or a put, of the document.
    for then_put in [false, true] {
        let mut tx = db.begin().unwrap();
        tx.patch("c", "x", guarded("conflict"), Expect::Any).unwrap();
        if then_put {
            tx.put("c", "x", json!({"n": 0}), Expect::Any).unwrap();
        } else {
            tx.patch("c", "x", set_m(), Expect::Any).unwrap();
        }
        match tx.commit().unwrap() {
            Err(TxFailure::Conflicts(conflicts)) => {
                assert_eq!(conflicts.len(), 1);
                assert_eq!(
                    (conflicts[0].index, conflicts[0].conflict.reason),
                    (0, ConflictReason::ConditionFailed)
                );
                assert_eq!(conflicts[0].conflict.current().unwrap().unwrap().body["n"], 10);
            }
            other => panic!("expected condition_failed, got {other:?}"),
        }
        assert_eq!(
            c.get("x").unwrap().unwrap().body,
            json!({"n": 10}).as_object().cloned().unwrap()
        );
    }
    // The second patch's `$if` failing, after a first write (and a third
    // write after it: one refusal).
    let mut tx = db.begin().unwrap();
    tx.put("c", "other", json!({}), Expect::Any).unwrap();
    tx.patch("c", "x", set_m(), Expect::Any).unwrap();
    tx.patch("c", "x", guarded("conflict"), Expect::Any).unwrap();
    tx.patch("c", "x", guarded("conflict"), Expect::Any).unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::Conflicts(conflicts)) => {
            let refused: Vec<_> = conflicts.iter().map(|c| (c.index, c.conflict.reason)).collect();
            assert_eq!(refused, [(1, ConflictReason::ConditionFailed)]);
        }
        other => panic!("expected condition_failed, got {other:?}"),
    }
    // Judged on the snapshot, the verdict stands only while that is
    // current: changed since, the answer is the read conflict (a retry
    // judges again, and here the condition holds).
    let mut tx = db.begin().unwrap();
    tx.patch("c", "x", guarded("conflict"), Expect::Any).unwrap();
    tx.patch("c", "x", set_m(), Expect::Any).unwrap();
    c.put("x", json!({"n": 1}), Expect::Any).unwrap().unwrap();
    assert!(matches!(
        tx.commit().unwrap(),
        Err(TxFailure::ReadConflict { .. })
    ));
    let mut attempts = 0;
    db.transaction(|tx| {
        attempts += 1;
        tx.patch("c", "x", guarded("conflict"), Expect::Any)?;
        tx.patch("c", "x", set_m(), Expect::Any)
    })
    .unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(
        c.get("x").unwrap().unwrap().body,
        json!({"n": 2, "m": 1}).as_object().cloned().unwrap()
    );
    c.put("x", json!({"n": 10}), Expect::Any).unwrap().unwrap();
    // Skipped: the other write stands; the transaction sees the document
    // as the skip leaves it.
    let mut tx = db.begin().unwrap();
    tx.patch("c", "x", guarded("skip"), Expect::Any).unwrap();
    assert_eq!(tx.get("c", "x").unwrap().unwrap().body["n"], 10);
    tx.patch("c", "x", set_m(), Expect::Any).unwrap();
    tx.patch("c", "x", guarded("skip"), Expect::Any).unwrap();
    tx.commit().unwrap().unwrap();
    assert_eq!(
        c.get("x").unwrap().unwrap().body,
        json!({"n": 10, "m": 1}).as_object().cloned().unwrap()
    );
    // Judged on the transaction's own write: it holds there.
    let mut tx = db.begin().unwrap();
    tx.put("c", "x", json!({"n": 1}), Expect::Any).unwrap();
    tx.patch("c", "x", guarded("conflict"), Expect::Any).unwrap();
    assert_eq!(tx.get("c", "x").unwrap().unwrap().body["n"], 2);
    tx.commit().unwrap().unwrap();
    assert_eq!(c.get("x").unwrap().unwrap().body["n"], 2);
}

/// A document written over whatever was there (a put or a patch with
/// `Expect::Any`), then deleted in the same transaction, ends absent: the
/// commit deletes it where it exists and writes nothing where it does not
/// (it was refused as `not_found` every time, so `Db::transaction` never
/// committed it), and fails if someone created it meanwhile.
#[test]
fn a_document_written_then_deleted_in_a_transaction_ends_absent() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("c").unwrap();
    c.put("old", json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    let upsert = || update(json!({"$inc": {"n": 1}, "$upsert": true}));
    db.transaction(|tx| {
        tx.put("c", "new", json!({"n": 1}), Expect::Any)?;
        tx.delete("c", "new", Expect::Any)?;
        tx.patch("c", "fresh", upsert(), Expect::Any)?;
        tx.delete("c", "fresh", Expect::Any)?;
        tx.put("c", "old", json!({"n": 2}), Expect::Any)?;
        tx.delete("c", "old", Expect::Any)?;
        Ok(())
    })
    .unwrap();
    for id in ["new", "fresh", "old"] {
        assert!(c.get(id).unwrap().is_none(), "{id}");
    }
    // A patch without `$upsert` of a missing document is `not_found`, in
    // order, whatever follows it.
    let mut tx = db.begin().unwrap();
    tx.patch("c", "never", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap();
    tx.delete("c", "never", Expect::Any).unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::Conflicts(conflicts)) => {
            let refused: Vec<_> = conflicts.iter().map(|c| (c.index, c.conflict.reason)).collect();
            assert_eq!(refused, [(0, ConflictReason::NotFound)]);
        }
        other => panic!("expected not_found, got {other:?}"),
    }
    let mut tx = db.begin().unwrap();
    tx.put("c", "new", json!({}), Expect::Any).unwrap();
    tx.delete("c", "new", Expect::Any).unwrap();
    c.put("new", json!({"by": "someone"}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert!(matches!(
        tx.commit().unwrap(),
        Err(TxFailure::ReadConflict { .. })
    ));
    assert_eq!(c.get("new").unwrap().unwrap().body["by"], "someone");
}

/// A transaction reads a document past its collection's TTL as absent, as
/// `Collection::get` and `query` do and as the committer judges it.
#[test]
fn a_transaction_reads_an_expired_document_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("s").unwrap();
    c.set_config(
        truce::CollectionConfig::from_json(&json!({"ttl": {"field": "exp", "seconds": 1}})).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.put("gone", json!({"exp": now}), Expect::Absent)
        .unwrap()
        .unwrap();
    c.put("kept", json!({"exp": now + 3_600_000}), Expect::Absent)
        .unwrap()
        .unwrap();
    // The snapshot holds it live; it expires while the transaction runs.
    let mut tx = db.begin().unwrap();
    thread::sleep(Duration::from_millis(1_300));
    assert!(tx.get("s", "gone").unwrap().is_none());
    assert!(tx.get("s", "kept").unwrap().is_some());
    let ids: Vec<String> = tx
        .query("s", &Query::default())
        .unwrap()
        .docs
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["kept"]);
}

#[test]
fn blind_patches_in_transactions_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("c").unwrap();
    c.put("hot", json!({"n": 0}), Expect::Absent).unwrap().unwrap();
    let mut tx = db.begin().unwrap();
    tx.patch("c", "hot", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap();
    c.patch("hot", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap()
        .unwrap();
    assert!(tx.commit().unwrap().is_ok());
    assert_eq!(c.get("hot").unwrap().unwrap().body["n"], 2);
}

#[test]
fn batches_are_all_or_nothing_and_name_every_failed_op() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("accounts").unwrap();
    c.put("a", json!({"balance": 10}), Expect::Absent)
        .unwrap()
        .unwrap();
    c.put("e", json!({"balance": 10}), Expect::Absent)
        .unwrap()
        .unwrap();
    let op = |id: &str, expect| TxOp::Put {
        collection: "accounts".into(),
        id: id.into(),
        body: json!({}),
        expect,
    };
    let failed = db
        .batch(
            vec![
                TxOp::Check {
                    collection: "accounts".into(),
                    id: "a".into(),
                    expect: Expect::Version(1),
                },
                op("b", Expect::Absent),
                op("a2", Expect::Version(3)),
                TxOp::Check {
                    collection: "accounts".into(),
                    id: "zz".into(),
                    expect: Expect::Exists,
                },
                op("e", Expect::Absent),
            ],
            None,
        )
        .unwrap()
        .unwrap_err();
    let TxFailure::Conflicts(conflicts) = failed else {
        panic!("expected op conflicts")
    };
    let got: Vec<(usize, ConflictReason)> = conflicts.iter().map(|c| (c.index, c.conflict.reason)).collect();
    assert_eq!(
        got,
        vec![
            (2, ConflictReason::NotFound),
            (3, ConflictReason::NotFound),
            (4, ConflictReason::AlreadyExists)
        ]
    );
    assert_eq!(
        conflicts[2].conflict.current().unwrap().unwrap().body["balance"],
        10
    );
    assert!(
        c.get("b").unwrap().is_none(),
        "nothing of a failed batch is written"
    );

    let written_twice = db
        .batch(
            vec![
                op("a", Expect::Any),
                TxOp::Patch {
                    collection: "accounts".into(),
                    id: "a".into(),
                    update: Arc::new(update(json!({"$inc": {"balance": -5}}))),
                    expect: Expect::Any,
                },
            ],
            None,
        )
        .unwrap_err();
    assert_eq!(written_twice.code(), "invalid_transaction");

    // API.md's own example: a check of a version read elsewhere guards a patch
    // of the same document; both see the state before the transaction.
    let guarded = |version| {
        vec![
            TxOp::Check {
                collection: "accounts".into(),
                id: "a".into(),
                expect: Expect::Version(version),
            },
            TxOp::Patch {
                collection: "accounts".into(),
                id: "a".into(),
                update: Arc::new(update(json!({"$inc": {"balance": 1}}))),
                expect: Expect::Any,
            },
        ]
    };
    let ok = db.batch(guarded(1), None).unwrap().unwrap();
    assert_eq!(
        ok.results[0].as_ref().unwrap().doc.version(),
        1,
        "the check saw the state before"
    );
    assert_eq!(ok.results[1].as_ref().unwrap().doc.version(), 2);
    let stale = db.batch(guarded(1), None).unwrap().unwrap_err();
    assert!(
        matches!(stale, TxFailure::Conflicts(ref c) if c[0].conflict.reason == ConflictReason::VersionMismatch)
    );
    db.batch(vec![op("a", Expect::Version(2))], None)
        .unwrap()
        .unwrap(); // back to 10 for what follows
    c.put("a", json!({"balance": 10}), Expect::Version(3))
        .unwrap()
        .unwrap();

    let transfer = db
        .batch(
            vec![
                TxOp::Patch {
                    collection: "accounts".into(),
                    id: "a".into(),
                    update: Arc::new(update(json!({"$inc": {"balance": -5}}))),
                    expect: Expect::Version(4),
                },
                TxOp::Patch {
                    collection: "accounts".into(),
                    id: "b".into(),
                    update: Arc::new(update(json!({"$inc": {"balance": 5}, "$upsert": true}))),
                    expect: Expect::Any,
                },
            ],
            None,
        )
        .unwrap()
        .unwrap();
    assert_eq!(transfer.results.len(), 2);
    assert_eq!(c.get("a").unwrap().unwrap().body["balance"], 5, "10 - 5");
    assert_eq!(c.get("b").unwrap().unwrap().body["balance"], 5);
    assert_eq!(
        c.get("a").unwrap().unwrap().meta.seq,
        c.get("b").unwrap().unwrap().meta.seq,
        "one commit"
    );
}

#[test]
fn a_checks_only_batch_answers_whether_reads_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_tx_db(dir.path());
    let c = db.collection("c").unwrap();
    c.put("a", json!({}), Expect::Absent).unwrap().unwrap();
    let check = |v| {
        vec![TxOp::Check {
            collection: "c".into(),
            id: "a".into(),
            expect: Expect::Version(v),
        }]
    };
    let committed = db.batch(check(1), None).unwrap().unwrap();
    assert_eq!(committed.results[0].as_ref().unwrap().doc.version(), 1);
    assert!(db.batch(check(2), None).unwrap().is_err());
}

#[test]
fn a_closure_that_always_conflicts_fails_naming_the_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let db = Db::open(
        dir.path(),
        Options {
            retry,
            ..Options::default()
        },
    )
    .unwrap();
    let c = db.collection("c").unwrap();
    c.put("x", json!({"n": 0}), Expect::Absent).unwrap().unwrap();
    let started = Instant::now();
    let mut attempts = 0;
    let err = db
        .transaction(|tx| {
            attempts += 1;
            tx.get("c", "x")?;
            c.patch("x", update(json!({"$inc": {"n": 1}})), Expect::Any)?
                .unwrap();
            tx.put("c", "y", json!({}), Expect::Any)
        })
        .unwrap_err();
    assert_eq!(attempts, 3);
    assert_eq!(err.code(), "transaction_failed");
    assert!(err.to_string().contains("document x"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A refusal that running the body again cannot change ends the retries at
/// once: a create-only put of a document that was there before the
/// transaction began took every attempt (ten, and their backoff), and
/// `atomic_update` did the same for a value another document holds in a
/// unique index. One that a retry can fix (the document changed after the
/// snapshot) is still retried.
#[test]
fn a_refusal_a_retry_cannot_change_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let users = db.collection("u").unwrap();
    users
        .put("alice", json!({"email": "a@x"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let mut runs = 0;
    let started = Instant::now();
    match db.transaction(|tx| {
        runs += 1;
        tx.put("u", "alice", json!({}), Expect::Absent)
    }) {
        Err(truce::Error::TransactionFailed { attempts, failure }) => {
            assert_eq!(attempts, 1);
            assert!(
                matches!(&*failure, TxFailure::Conflicts(c) if c[0].conflict.reason == ConflictReason::AlreadyExists),
                "{failure:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs, 1, "ran once, in {:?}", started.elapsed());

    // Changed after the snapshot: retried, and the retry sees it.
    let mut runs = 0;
    let outcome = db.transaction(|tx| {
        runs += 1;
        let seen = tx.get("u", "bob")?;
        if runs == 1 {
            users
                .put("bob", json!({"by": "other"}), Expect::Absent)
                .unwrap()
                .unwrap();
        }
        match seen {
            None => tx.put("u", "bob", json!({"by": "tx"}), Expect::Absent),
            Some(_) => Ok(()),
        }
    });
    outcome.unwrap();
    assert_eq!(runs, 2);

    users
        .create_index("by_email", crate::indexes::spec(&["email"], true))
        .unwrap();
    crate::indexes::wait_ready(&users, "by_email");
    let mut changes = 0;
    match users.atomic_update("carol", |_| {
        changes += 1;
        json!({"email": "a@x"})
    }) {
        Err(truce::Error::RetriesExhausted { attempts, last }) => {
            assert_eq!((attempts, last.reason), (1, ConflictReason::UniqueViolation));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(changes, 1);
}

/// A document written twice in a transaction: the second write's own
/// precondition was dropped, so a create-only put after a put committed,
/// where the two one after another (and `Db::batch`, and `/v1/tx`) refuse
/// it. It is judged on what the first write leaves; an exact version is
/// refused at once, the document's being unknown until the commit.
#[test]
fn a_second_write_of_a_document_keeps_its_own_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let mut tx = db.begin().unwrap();
    tx.put("c", "d", json!({"a": 1}), Expect::Any).unwrap();
    tx.put("c", "d", json!({"b": 2}), Expect::Absent).unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::Conflicts(c)) => assert_eq!(c[0].conflict.reason, ConflictReason::AlreadyExists),
        other => panic!("{:?}", other.map(|_| "committed")),
    }
    assert_eq!(
        db.collection("c").unwrap().get("d").unwrap(),
        None,
        "nothing written"
    );

    let mut tx = db.begin().unwrap();
    tx.put("c", "d", json!({"a": 1}), Expect::Absent).unwrap();
    tx.delete("c", "d", Expect::Any).unwrap();
    tx.patch("c", "d", update(json!({"$set": {"a": 2}})), Expect::Exists)
        .unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::Conflicts(c)) => assert_eq!(c[0].conflict.reason, ConflictReason::NotFound),
        other => panic!("{:?}", other.map(|_| "committed")),
    }

    let mut tx = db.begin().unwrap();
    tx.put("c", "d", json!({"a": 1}), Expect::Absent).unwrap();
    let again = tx.put("c", "d", json!({"a": 2}), Expect::Version(1)).unwrap_err();
    assert_eq!(again.code(), "invalid_transaction", "{again}");
    // What holds goes through: written, then written again expecting it.
    tx.put("c", "d", json!({"a": 3}), Expect::Exists).unwrap();
    tx.commit().unwrap().unwrap();
    let d = db.collection("c").unwrap().get("d").unwrap().unwrap();
    assert_eq!((d.body["a"].as_i64(), d.version()), (Some(3), 1));
}
