//! Every error code is produced here, and the engine stops writing after a storage failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use truce::storage::{Fault, MemoryStorage, Space, Storage, WriteBatch};
use truce::{ConflictReason, Db, Error, Expect, Options, Query, RetryPolicy, TxFailure, TxOp, Update};

use crate::indexes::spec;
use crate::{open_relaxed, update};

fn memory_db() -> (Arc<MemoryStorage>, Db) {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    (storage, db)
}

#[test]
fn every_error_code_is_produced() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.put("s", json!({"name": "a string"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let big = "x".repeat(truce::limits::DOC_SIZE_BYTES_MAX);
    let mut errors: Vec<Error> = vec![
        c.put("x", json!([1]), Expect::Absent).unwrap_err(),
        c.get("").unwrap_err(),
        db.collection("9lives").err().unwrap(),
        c.put("x", json!({"_secret": 1}), Expect::Absent).unwrap_err(),
        Update::parse(&json!({"name": "replacement"})).unwrap_err(),
        c.patch("s", update(json!({"$inc": {"name": 1}})), Expect::Any)
            .unwrap_err(),
        Update::parse(&json!({"$set": {"a": 1}, "$if": {"a": {"$bogus": 1}}})).unwrap_err(),
        c.delete("s", Expect::Absent).unwrap_err(),
        c.put("x", json!({"big": big}), Expect::Absent).unwrap_err(),
        Db::open_with_storage(
            Arc::new(MemoryStorage::new()),
            Options {
                queue_capacity: 0,
                ..Options::default()
            },
        )
        .err()
        .unwrap(),
    ];

    // overloaded: a stalled committer and a queue of one.
    let storage = Arc::new(MemoryStorage::new());
    storage.inject(Fault::Delay(Duration::from_millis(300)));
    let slow = Db::open_with_storage(
        storage.clone(),
        Options {
            queue_capacity: 1,
            ..Options::default()
        },
    )
    .unwrap();
    let slow_c = slow.collection("c").unwrap();
    let first = slow_c.submit_put("a", json!({}), Expect::Any).unwrap();
    let mut overloaded = None;
    let mut queued = Vec::new();
    for i in 0..3 {
        match slow_c.submit_put(&format!("b{i}"), json!({}), Expect::Any) {
            Ok(pending) => queued.push(pending),
            Err(e) => overloaded = Some(e),
        }
    }
    errors.push(overloaded.expect("a full queue refuses"));
    assert!(first.wait().unwrap().is_ok());
    queued
        .into_iter()
        .for_each(|p| assert!(p.wait().unwrap().is_ok()));

    // unavailable: a failed fsync.
    let (storage, failing) = memory_db();
    storage.inject(Fault::FailSync);
    errors.push(
        failing
            .collection("c")
            .unwrap()
            .put("a", json!({}), Expect::Any)
            .unwrap_err(),
    );

    // storage_error: the data directory is a file.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    errors.push(Db::open(&file, Options::default()).err().unwrap());

    // corrupt: a document record that fails its checksum.
    let (storage, corrupted) = memory_db();
    let mut garbage = WriteBatch::new();
    garbage.put(Space::Documents, b"c\x00bad".to_vec(), vec![1, 1, 0, 0, 0, 0, 9]);
    storage.apply(garbage, truce::Durability::Immediate).unwrap();
    errors.push(corrupted.collection("c").unwrap().get("bad").unwrap_err());

    // retries_exhausted: every attempt meets a concurrent change.
    let once = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let interferer = c.clone();
    let exhausted = c
        .atomic_update_with("s", &once, |current| {
            let n = current
                .and_then(|b| b.get("n"))
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            interferer
                .patch("s", update(json!({"$inc": {"n": 1}})), Expect::Any)
                .unwrap()
                .unwrap();
            json!({"n": n + 100})
        })
        .unwrap_err();
    match &exhausted {
        Error::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 2);
            assert_eq!(last.reason, ConflictReason::VersionMismatch);
            assert_eq!(last.current().unwrap().unwrap().body["n"], 2);
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    errors.push(exhausted);

    // The codes of transactions, indexes and idempotency.
    errors.push(c.create_index("no_fields", spec(&[], false)).unwrap_err());
    errors.push(
        c.query(&Query {
            gt: Some(json!(1)),
            gte: Some(json!(1)),
            ..Query::default()
        })
        .unwrap_err(),
    );
    let twice = |id: &str| TxOp::Check {
        collection: "c".into(),
        id: id.into(),
        expect: Expect::Any,
    };
    errors.push(db.batch(vec![twice("s"), twice("s")], None).unwrap_err());
    errors.push(c.index_status("nope").unwrap_err());
    c.put_idempotent("k", "i", json!({"a": 1}), Expect::Any)
        .unwrap()
        .unwrap();
    errors.push(
        c.put_idempotent("k", "i", json!({"a": 2}), Expect::Any)
            .unwrap_err(),
    );
    let no_retry = Db::open_with_storage(
        Arc::new(MemoryStorage::new()),
        Options {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..Options::default()
        },
    )
    .unwrap();
    let nc = no_retry.collection("c").unwrap();
    errors.push(
        no_retry
            .transaction(|tx| {
                tx.get("c", "x")?;
                nc.put("x", json!({}), Expect::Any)?.unwrap();
                tx.put("c", "y", json!({}), Expect::Any)
            })
            .unwrap_err(),
    );
    // index_building: the first backfill step is held up by a slow disk.
    let storage = Arc::new(MemoryStorage::new());
    let building = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let bc = building.collection("c").unwrap();
    bc.put("a", json!({"k": 1}), Expect::Absent).unwrap().unwrap();
    storage.inject(Fault::Delay(Duration::ZERO));
    storage.inject(Fault::Delay(Duration::from_millis(500)));
    bc.create_index("by_k", spec(&["k"], false)).unwrap();
    errors.push(
        bc.query(&Query {
            index: Some("by_k".into()),
            ..Query::default()
        })
        .unwrap_err(),
    );

    // index_dropping: the same name declared while the dropped index's
    // entries are still being deleted (more than one purge step's worth, the
    // first step held up by a slow disk).
    let (storage, dropping) = memory_db();
    let dc = dropping.collection("c").unwrap();
    crate::indexes::put_many(&dropping, 3 * truce::limits::TX_OPS_MAX, |i| i);
    dc.create_index("by_k", spec(&["k"], false)).unwrap();
    crate::indexes::wait_ready(&dc, "by_k");
    storage.inject(Fault::Delay(Duration::ZERO));
    storage.inject(Fault::Delay(Duration::from_millis(500)));
    dc.drop_index("by_k").unwrap();
    errors.push(dc.create_index("by_k", spec(&["k"], false)).unwrap_err());

    errors
        .push(truce::CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 0}})).unwrap_err());

    // history_purged: a reader that had read a document whose delete was purged.
    let purged_dir = tempfile::tempdir().unwrap();
    let purged = open_relaxed(purged_dir.path());
    let (_, reader) = crate::purge::with_purged_tombstones(&purged);
    errors.push(reader.next(&purged).unwrap_err());

    // insufficient_storage: more free space asked for than any disk has.
    let full_dir = tempfile::tempdir().unwrap();
    let full = Db::open(
        full_dir.path(),
        Options {
            min_free_disk_bytes: u64::MAX,
            ..Options::default()
        },
    )
    .unwrap();
    errors.push(
        full.collection("c")
            .unwrap()
            .put("x", json!({}), Expect::Any)
            .unwrap_err(),
    );
    // invalid_backup, backup_running, backup_stopped.
    let backups = tempfile::tempdir().unwrap();
    errors.push(
        Db::open(backups.path().join("copy.partial"), Options::default())
            .err()
            .expect("an unfinished backup's name is refused"),
    );
    let first = purged.start_backup(&backups.path().join("first"), &[]).unwrap();
    errors.push(
        purged
            .backup(&backups.path().join("second"), &[], &mut |_| {})
            .unwrap_err(),
    );
    first.stopper().stop();
    errors.push(first.run(&mut |_| {}).unwrap_err());

    let produced: BTreeSet<&str> = errors.iter().map(Error::code).collect();
    let all: BTreeSet<&str> = Error::ALL_CODES.iter().copied().collect();
    assert_eq!(produced, all, "each code in ALL_CODES is produced once above");
    for e in &errors {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn every_conflict_reason_carries_the_current_document() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.put("a", json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    let reason = |r: truce::WriteResult| r.unwrap_err();
    let exists = reason(c.put("a", json!({"n": 2}), Expect::Absent).unwrap());
    assert_eq!(exists.reason, ConflictReason::AlreadyExists);
    assert_eq!(exists.current().unwrap().unwrap().body["n"], 1);
    let mismatch = reason(c.put("a", json!({"n": 2}), Expect::Version(7)).unwrap());
    assert_eq!(mismatch.reason, ConflictReason::VersionMismatch);
    assert_eq!(mismatch.current().unwrap().unwrap().version(), 1);
    let missing = reason(
        c.patch("nope", update(json!({"$inc": {"n": 1}})), Expect::Any)
            .unwrap(),
    );
    assert_eq!(
        (missing.reason, missing.current().unwrap()),
        (ConflictReason::NotFound, None)
    );
    let failed = reason(
        c.patch(
            "a",
            update(json!({"$set": {"n": 5}, "$if": {"n": {"$gt": 3}}})),
            Expect::Any,
        )
        .unwrap(),
    );
    assert_eq!(failed.reason, ConflictReason::ConditionFailed);
    assert_eq!(failed.current().unwrap().unwrap().body["n"], 1);
    let codes: BTreeSet<_> = [exists.reason, mismatch.reason, missing.reason, failed.reason]
        .iter()
        .map(|r| r.code())
        .collect();
    assert_eq!(codes.len(), 4);
}

#[test]
fn a_failed_fsync_stops_all_writes_and_loses_nothing_acknowledged() {
    let (storage, db) = memory_db();
    let c = db.collection("c").unwrap();
    c.put("kept", json!({"v": 1}), Expect::Absent).unwrap().unwrap();
    storage.inject(Fault::FailSync);
    let failed = c.put("lost", json!({"v": 2}), Expect::Absent).unwrap_err();
    assert_eq!(failed.code(), "unavailable");
    // Sticky: later writes fail at once, without touching storage.
    for _ in 0..3 {
        assert_eq!(
            c.put("later", json!({}), Expect::Any).unwrap_err().code(),
            "unavailable"
        );
        assert_eq!(
            c.patch("kept", update(json!({"$inc": {"v": 1}})), Expect::Any)
                .unwrap_err()
                .code(),
            "unavailable"
        );
    }
    // Reads of durable state still work.
    assert_eq!(c.get("kept").unwrap().unwrap().body["v"], 1);
    drop(c);
    drop(db);
    // What a crash leaves: the acknowledged write, not the failed one; and a
    // reopened database writes again.
    let image = Arc::new(storage.crash_image());
    let reopened = Db::open_with_storage(image, Options::default()).unwrap();
    let c = reopened.collection("c").unwrap();
    assert_eq!(c.get("kept").unwrap().unwrap().body["v"], 1);
    assert!(c.get("lost").unwrap().is_none());
    assert!(c.put("after", json!({}), Expect::Absent).unwrap().is_ok());
}

#[test]
fn a_failed_write_stops_all_writes() {
    let (storage, db) = memory_db();
    let c = db.collection("c").unwrap();
    storage.inject(Fault::FailWrite);
    assert_eq!(
        c.put("a", json!({}), Expect::Any).unwrap_err().code(),
        "unavailable"
    );
    assert_eq!(
        c.put("b", json!({}), Expect::Any).unwrap_err().code(),
        "unavailable"
    );
    assert!(c.get("a").unwrap().is_none());
}

/// A committer that dies — a panic below it, in the storage engine — fails
/// the engine for good, visibly: `health` says so, and every later write is
/// refused at once instead of waiting for a committer that is gone.
#[test]
fn a_panicking_committer_fails_the_engine_visibly() {
    let (storage, db) = memory_db();
    let c = db.collection("c").unwrap();
    c.put("before", json!({}), Expect::Any).unwrap().unwrap();
    assert!(db.health().is_ok());
    storage.inject(Fault::Panic);
    assert_eq!(
        c.put("a", json!({}), Expect::Any).unwrap_err().code(),
        "unavailable"
    );
    let why = db.health().unwrap_err();
    assert_eq!(why.code(), "unavailable");
    assert!(why.to_string().contains("panicked"), "{why}");
    assert_eq!(
        c.put("b", json!({}), Expect::Any).unwrap_err().code(),
        "unavailable"
    );
    assert!(c.get("before").unwrap().is_some(), "reads go on");
}

#[test]
fn a_type_error_in_one_patch_changes_nothing_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.put("d", json!({"name": "x", "n": 1}), Expect::Absent)
        .unwrap()
        .unwrap();
    let good = c
        .submit_patch("d", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap();
    let bad = c
        .submit_patch("d", update(json!({"$inc": {"n": 1, "name": 1}})), Expect::Any)
        .unwrap();
    let good_again = c
        .submit_patch("d", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap();
    assert!(good.wait().unwrap().is_ok());
    assert_eq!(bad.wait().unwrap_err().code(), "invalid_operator");
    assert!(good_again.wait().unwrap().is_ok());
    let doc = c.get("d").unwrap().unwrap();
    assert_eq!(
        (doc.body["n"].as_i64(), doc.body["name"].as_str(), doc.version()),
        (Some(3), Some("x"), 3)
    );
}

#[test]
fn the_commit_poll_window_is_bounded() {
    let open = |micros: u64| {
        Db::open_with_storage(
            Arc::new(MemoryStorage::new()),
            Options {
                commit_poll: Duration::from_micros(micros),
                ..Options::default()
            },
        )
    };
    match open(truce::limits::COMMIT_POLL_US_MAX + 1).err().unwrap() {
        Error::LimitExceeded { what, limit } => {
            assert_eq!((what, limit), ("COMMIT_POLL_US_MAX", 1000));
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    for micros in [0, truce::limits::COMMIT_POLL_US_MAX] {
        let db = open(micros).unwrap();
        let c = db.collection("c").unwrap();
        assert!(c.put("a", json!({"n": micros}), Expect::Absent).unwrap().is_ok());
    }
}

#[test]
fn the_storage_workers_nice_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let open = |nice: i32| {
        Db::open(
            dir.path(),
            Options {
                fjall: truce::storage::FjallOptions {
                    workers_nice: nice,
                    ..Default::default()
                },
                ..Options::default()
            },
        )
    };
    for nice in [-1, truce::storage::FJALL_WORKERS_NICE_MAX + 1] {
        match open(nice).err().unwrap() {
            Error::LimitExceeded { what, limit } => {
                assert_eq!((what, limit), ("FJALL_WORKERS_NICE_MAX", 19));
            }
            other => panic!("expected LimitExceeded for {nice}, got {other:?}"),
        }
    }
    // 0 leaves the workers alone. What a value in range does to the threads is
    // checked in tests/workers_nice.rs, in a process of its own: it applies to
    // every fjall worker of the process, these tests' included.
    let db = open(0).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.put("a", json!({"n": 0}), Expect::Absent).unwrap().is_ok());
}

/// A write that would make a collection past `collections_max` is refused
/// whole, before anything is written, and so is a declaration of an index
/// or a configuration (a counter's target too) that would; writes to the
/// collections there go on; the bound holds across a reopen and moves with
/// the option. A declaration makes its collections, so a counter's
/// increments never make one.
#[test]
fn collections_are_bounded_and_listed_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let open = |max| {
        Db::open(
            dir.path(),
            Options {
                durability: truce::Durability::Relaxed,
                collections_max: max,
                ..Options::default()
            },
        )
    };
    match open(truce::limits::COLLECTIONS_MAX + 1).err().unwrap() {
        Error::LimitExceeded { what, limit } => assert_eq!((what, limit), ("COLLECTIONS_MAX", 1_000_000)),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    let put = |c: &str, id: &str| TxOp::Put {
        collection: c.into(),
        id: id.into(),
        body: json!({"amt": 1, "shop": "s"}),
        expect: Expect::Any,
    };
    let too_many = |result: Result<(), Error>, first: &str, max: usize| match result {
        Err(e @ Error::TooManyCollections { .. }) => {
            assert_eq!(e.code(), "limit_exceeded");
            let Error::TooManyCollections { collection, limit } = &e else {
                unreachable!()
            };
            assert_eq!((collection.as_str(), *limit), (first, max));
            assert!(e.to_string().contains("--max-collections"), "{e}");
        }
        other => panic!("expected TooManyCollections, got {other:?}"),
    };
    let batch = |db: &Db, ops| db.batch(ops, None).map(|r| assert!(r.is_ok()));
    let counter = json!({"counters": [{"name": "total", "group_by": "shop", "sum": "amt",
                                       "target": {"c": "shops", "field": "total"}, "mode": "in_commit"}]});
    let counted = |db: &Db| {
        let config = truce::CollectionConfig::from_json(&counter).unwrap();
        db.collection("a").unwrap().set_config(config).map(drop)
    };
    {
        let db = open(3).unwrap();
        batch(&db, vec![put("a", "1"), put("b", "1")]).unwrap();
        assert_eq!((db.has_collection("a"), db.has_collection("c")), (true, false));
        // One slot left: a transaction making two is refused whole, naming
        // the first by name.
        too_many(
            batch(&db, vec![put("a", "2"), put("d", "1"), put("c", "1")]),
            "c",
            3,
        );
        assert!(
            db.collection("a").unwrap().get("2").unwrap().is_none(),
            "nothing written"
        );
        batch(&db, vec![put("c", "1")]).unwrap();
        too_many(batch(&db, vec![put("d", "1")]), "d", 3);
        too_many(db.room_for_collection("d"), "d", 3);
        assert!(db.has_collection("c") && db.room_for_collection("c").is_ok());
        // Reads, and writes that make nothing, are not refused.
        assert!(db.collection("d").unwrap().get("1").unwrap().is_none());
        batch(&db, vec![put("a", "2"), put("c", "2")]).unwrap();
        // Declarations that would make one are refused, others are not.
        too_many(counted(&db), "shops", 3);
        let index = |c: &str| {
            db.collection(c)
                .unwrap()
                .create_index("by_amt", spec(&["amt"], false))
                .map(drop)
        };
        too_many(index("e"), "e", 3);
        index("a").unwrap();
        assert_eq!(db.collections(), ["a", "b", "c"]);
    }
    // Reopened with the same bound, the three stand and none is made; with
    // a larger one, more are: the counter's target by its declaration.
    too_many(batch(&open(3).unwrap(), vec![put("d", "1")]), "d", 3);
    let db = open(5).unwrap();
    counted(&db).unwrap();
    assert_eq!(db.collections(), ["a", "b", "c", "shops"]);
    batch(&db, vec![put("a", "3")]).unwrap();
    // (`a/1` and `a/2` by the declaration's backfill, `a/3` in its commit.)
    assert_eq!(
        db.collection("shops").unwrap().get("s").unwrap().unwrap().body["total"],
        3
    );
    batch(&db, vec![put("d", "1")]).unwrap();
    too_many(batch(&db, vec![put("e", "1")]), "e", 5);
    assert_eq!(db.collection_count(), 5);
    // Pages, in name order, with whether more follow.
    let page = |after: Option<&str>, limit| db.collections_page(after, limit);
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(page(None, 2), (names(&["a", "b"]), true));
    assert_eq!(page(Some("b"), 2), (names(&["c", "d"]), true));
    assert_eq!(page(Some("d"), 2), (names(&["shops"]), false));
    assert_eq!(page(Some("c"), 3), (names(&["d", "shops"]), false));
    assert_eq!(
        page(Some("bb"), 1),
        (names(&["c"]), true),
        "after need not be a collection"
    );
    assert_eq!(page(Some("shops"), 2), (names(&[]), false));
}

/// A transaction's documents are bounded whatever its ops: those it writes
/// by `TX_WRITE_BYTES_MAX` (only puts were counted: patches that grew small
/// documents passed), and those its ops meet by `TX_READ_BYTES_MAX` (a 7 KB
/// request of a hundred `$inc`s of 1 MB documents had the committer write
/// 100 MB in one commit while every other writer waited, and a thousand
/// checks held a gigabyte). Nothing of a refused transaction is written.
#[test]
fn a_transactions_documents_are_bounded_whatever_its_ops() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("big").unwrap();
    let blob = "x".repeat(900_000);
    let many = truce::limits::TX_WRITE_BYTES_MAX / blob.len() + 2;
    let fits = truce::limits::TX_WRITE_BYTES_MAX / blob.len() - 1;
    for i in 0..many {
        let put = c.put(&format!("big{i}"), json!({"s": blob, "n": 0}), Expect::Absent);
        assert!(put.unwrap().is_ok());
        let put = c.put(&format!("small{i}"), json!({"n": 0}), Expect::Absent);
        assert!(put.unwrap().is_ok());
    }
    let ops = |prefix: &str, count: usize, spec: Value| {
        (0..count)
            .map(|i| TxOp::Patch {
                collection: "big".into(),
                id: format!("{prefix}{i}"),
                update: Arc::new(update(spec.clone())),
                expect: Expect::Any,
            })
            .collect::<Vec<_>>()
    };
    let checks = |count: usize| {
        (0..count)
            .map(|i| TxOp::Check {
                collection: "big".into(),
                id: format!("big{i}"),
                expect: Expect::Exists,
            })
            .collect::<Vec<_>>()
    };
    let refused = |ops: Vec<TxOp>, limit: &str| match db.batch(ops, None) {
        Err(Error::LimitExceeded { what, .. }) => assert_eq!(what, limit),
        // Not the documents: megabytes each.
        other => panic!("expected {limit}, got {:?}", other.map(|r| r.is_ok())),
    };
    refused(
        ops("small", many, json!({"$set": {"s": blob}})),
        "TX_WRITE_BYTES_MAX",
    );
    refused(ops("big", many, json!({"$inc": {"n": 1}})), "TX_READ_BYTES_MAX");
    refused(checks(many), "TX_READ_BYTES_MAX");
    for i in 0..many {
        let small = c.get(&format!("small{i}")).unwrap().unwrap();
        let big = c.get(&format!("big{i}")).unwrap().unwrap();
        assert_eq!(
            (small.body.get("s"), &big.body["n"]),
            (None, &json!(0)),
            "nothing written"
        );
    }
    // Within the bounds they commit, and the committer goes on.
    assert!(
        db.batch(ops("big", fits, json!({"$inc": {"n": 1}})), None)
            .unwrap()
            .is_ok()
    );
    assert!(db.batch(checks(fits), None).unwrap().is_ok());
    assert_eq!(c.get("big0").unwrap().unwrap().body["n"], 1);
}

/// The documents a transaction's ops meet count what their values take
/// decoded when that is more than their stored bytes: two `$inc`s on
/// documents of 300,000 small numbers (0.6 MB stored, some 9.6 MB of
/// values each) are refused whole, while each alone, or beside a small
/// document, is still written (17 such ops, 16 MiB stored, held every other
/// writer 1.5 s). The values count by their length, so that the same
/// transaction meets the same bytes whether its documents come from
/// storage or from an earlier write of its group.
#[test]
fn a_transaction_meets_its_documents_as_they_take_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("nums").unwrap();
    let body = json!({"a": vec![1; 300_000], "n": 0});
    for id in ["a", "b"] {
        assert!(c.put(id, body.clone(), Expect::Absent).unwrap().is_ok());
    }
    assert!(c.put("small", json!({"n": 0}), Expect::Absent).unwrap().is_ok());
    let stored = c.get("a").unwrap().unwrap();
    let decoded = truce::doc::decoded_len_size(&stored.body);
    assert!(
        decoded < truce::limits::TX_READ_BYTES_MAX && 2 * decoded > truce::limits::TX_READ_BYTES_MAX,
        "{decoded}"
    );
    assert!(
        truce::doc::decoded_size(&stored.body) > truce::limits::TX_READ_BYTES_MAX,
        "by its room, one such document read from storage would be refused alone"
    );
    let inc = |id: &str| TxOp::Patch {
        collection: "nums".into(),
        id: id.into(),
        update: Arc::new(update(json!({"$inc": {"n": 1}}))),
        expect: Expect::Any,
    };
    match db.batch(vec![inc("a"), inc("b")], None) {
        Err(Error::LimitExceeded { what, .. }) => assert_eq!(what, "TX_READ_BYTES_MAX"),
        other => panic!("expected TX_READ_BYTES_MAX, got {:?}", other.map(|r| r.is_ok())),
    }
    assert_eq!(c.get("a").unwrap().unwrap().body["n"], 0, "nothing written");
    for id in ["a", "b"] {
        assert!(db.batch(vec![inc(id), inc("small")], None).unwrap().is_ok());
        assert_eq!(c.get(id).unwrap().unwrap().body["n"], 1);
    }
    assert_eq!(c.get("small").unwrap().unwrap().body["n"], 2);

    // Puts replace their documents whatever their values and meet them
    // undecoded, by their stored bytes: two pass. Two that conflict carry
    // both documents undecoded for their answers (`Conflict::current`
    // decodes one when asked), so they count their stored bytes too: both
    // are answered.
    let put = |id: &str, expect| TxOp::Put {
        collection: "nums".into(),
        id: id.into(),
        body: json!({"a": vec![2; 300_000], "n": 5}),
        expect,
    };
    let stale = vec![put("a", Expect::Version(1)), put("b", Expect::Version(1))];
    match db.batch(stale, None) {
        Ok(Err(TxFailure::Conflicts(conflicts))) => {
            let answered: Vec<(usize, Option<u64>)> = conflicts
                .iter()
                .map(|c| (c.index, c.conflict.current_meta().map(|(_, m)| m.version())))
                .collect();
            assert_eq!(answered, vec![(0, Some(2)), (1, Some(2))]);
            assert_eq!(conflicts[1].conflict.current().unwrap().unwrap().body["n"], 1);
        }
        other => panic!("expected two conflicts, got {:?}", other.map(|r| r.is_ok())),
    }
    assert!(
        db.batch(vec![put("a", Expect::Any), put("b", Expect::Any)], None)
            .unwrap()
            .is_ok()
    );
    for id in ["a", "b"] {
        assert_eq!(c.get(id).unwrap().unwrap().body["n"], 5);
    }
    // Two puts of the content they find are told from the stored bytes,
    // decoding nothing: answered as no-ops.
    let same = db.batch(vec![put("a", Expect::Version(3)), put("b", Expect::Any)], None);
    let effects: Vec<_> = same
        .unwrap()
        .unwrap()
        .results
        .iter()
        .map(|r| r.as_ref().map(|w| w.effect))
        .collect();
    assert_eq!(effects, vec![Some(truce::Effect::NoOp); 2]);

    // Where a counter reads the old values, the puts count them too.
    let counted = db.collection("counted").unwrap();
    let counter = json!({"counters": [{"name": "total", "group_by": "g", "sum": "n",
        "target": {"c": "totals", "field": "n"}}]});
    counted
        .set_config(truce::CollectionConfig::from_json(&counter).unwrap())
        .unwrap();
    for id in ["a", "b"] {
        assert!(counted.put(id, body.clone(), Expect::Absent).unwrap().is_ok());
    }
    let put = |id: &str| TxOp::Put {
        collection: "counted".into(),
        id: id.into(),
        body: json!({"a": vec![2; 300_000], "n": 5}),
        expect: Expect::Any,
    };
    match db.batch(vec![put("a"), put("b")], None) {
        Err(Error::LimitExceeded { what, .. }) => assert_eq!(what, "TX_READ_BYTES_MAX"),
        other => panic!("expected TX_READ_BYTES_MAX, got {:?}", other.map(|r| r.is_ok())),
    }
}

/// Polls `done` every 20 ms for up to 5 s: the committer looks at the free
/// space on its background tick (each second when idle).
fn within_seconds(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn writes_that_add_data_are_refused_while_the_disk_is_short_and_resume_when_it_is_not() {
    let storage = Arc::new(MemoryStorage::new());
    storage.set_free_bytes(Some(10_000));
    let db = Db::open_with_storage(
        storage.clone(),
        Options {
            min_free_disk_bytes: 1_000,
            ..Options::default()
        },
    )
    .unwrap();
    let c = db.collection("c").unwrap();
    for id in ["kept", "gone", "tx-gone"] {
        c.put(id, json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    }
    c.create_index("by_id", spec(&["id"], false)).unwrap();
    let first = c
        .put_idempotent("k0", "done", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert_eq!(
        db.disk(),
        truce::DiskStatus {
            free_bytes: Some(10_000),
            reserve_bytes: 1_000,
            refusing: false
        }
    );

    // The filesystem fills up: below the reserve within a tick.
    storage.set_free_bytes(Some(999));
    within_seconds("refusing writes", || db.disk().refusing);
    assert_eq!(db.disk().free_bytes, Some(999));
    fn refused<T>(result: truce::Result<T>) {
        match result {
            Err(
                e @ Error::InsufficientStorage {
                    free: 999,
                    reserve: 1_000,
                },
            ) => {
                assert_eq!(e.code(), "insufficient_storage");
                assert!(e.is_retryable(), "it may succeed once space is freed");
            }
            other => panic!("expected insufficient_storage, got {:?}", other.map(|_| ())),
        }
    }
    refused(c.put("new", json!({"n": 1}), Expect::Absent));
    refused(c.put_idempotent("k1", "kept", json!({"n": 2}), Expect::Any));
    // A transaction of checks writes nothing, its key no record either:
    // answered, keyed or not. With a delete, its key's record would keep
    // the documents its checks read: refused.
    let check = || TxOp::Check {
        collection: "c".into(),
        id: "kept".into(),
        expect: Expect::Exists,
    };
    assert!(db.batch(vec![check()], Some("k2")).unwrap().is_ok());
    assert!(db.batch(vec![check()], None).unwrap().is_ok());
    refused(db.batch(
        vec![
            check(),
            TxOp::Delete {
                collection: "c".into(),
                id: "gone".into(),
                expect: Expect::Any,
            },
        ],
        Some("k4"),
    ));
    // A write retried with the key it committed under gets its answer, not
    // a refusal that would say it was never written.
    let replayed = c
        .put_idempotent("k0", "done", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert_eq!(replayed.doc.rev(), first.doc.rev());
    refused(c.patch("kept", update(json!({"$inc": {"n": 1}})), Expect::Any));
    refused(db.batch(
        vec![
            TxOp::Delete {
                collection: "c".into(),
                id: "tx-gone".into(),
                expect: Expect::Any,
            },
            TxOp::Put {
                collection: "c".into(),
                id: "other".into(),
                body: json!({}),
                expect: Expect::Any,
            },
        ],
        None,
    ));
    refused(c.create_index("by_n", spec(&["n"], false)));
    // Declared again as it is, an index writes nothing: an application
    // that ensures its indexes at startup still starts.
    c.create_index("by_id", spec(&["id"], false)).unwrap();
    // Nothing of those was written.
    assert_eq!(c.get("kept").unwrap().unwrap().body["n"], 1);
    assert!(c.get("new").unwrap().is_none());
    assert!(
        c.get("tx-gone").unwrap().is_some(),
        "the refused transaction wrote none of its ops"
    );
    assert_eq!(c.indexes().len(), 1, "by_id alone");

    // What frees space, or adds none, goes on: deletes (alone or with
    // checks), and configuration (a TTL is how space is freed).
    assert!(c.delete_idempotent("k3", "gone", Expect::Any).unwrap().is_ok());
    assert!(
        db.batch(
            vec![
                TxOp::Check {
                    collection: "c".into(),
                    id: "kept".into(),
                    expect: Expect::Version(1),
                },
                TxOp::Delete {
                    collection: "c".into(),
                    id: "tx-gone".into(),
                    expect: Expect::Any,
                },
            ],
            None,
        )
        .unwrap()
        .is_ok()
    );
    c.set_config(
        truce::CollectionConfig::from_json(&json!({"ttl": {"field": "exp", "seconds": 60}})).unwrap(),
    )
    .unwrap();
    assert!(c.get("gone").unwrap().is_none() && c.get("tx-gone").unwrap().is_none());

    // Space is freed: writes resume within a tick, and a key refused before
    // was never recorded, so its write now applies.
    storage.set_free_bytes(Some(100_000));
    within_seconds("accepting writes again", || !db.disk().refusing);
    let written = c
        .put_idempotent("k1", "kept", json!({"n": 2}), Expect::Any)
        .unwrap()
        .unwrap();
    assert_eq!(written.doc.version(), 2);
    c.create_index("by_n", spec(&["n"], false)).unwrap();
    assert!(c.put("new", json!({"n": 1}), Expect::Absent).unwrap().is_ok());
}

/// A storage that fails in its own background work (fjall's flush or
/// compaction, for want of space or of files) would fail the next write:
/// the engine says so at its next tick instead, so that `/healthz` and the
/// answers tell the truth (a disk-full audit found 200 and 507 "free space
/// and retry" seconds after the storage had failed).
#[test]
fn a_storage_that_failed_on_its_own_is_reported_within_a_tick() {
    let (storage, db) = memory_db();
    let c = db.collection("c").unwrap();
    c.put("a", json!({}), Expect::Absent).unwrap().unwrap();
    storage.fail_background("compaction failed: No space left on device");
    within_seconds("the failure seen", || db.health().is_err());
    match db.health() {
        Err(Error::Unavailable(why)) => assert!(why.contains("No space left"), "{why}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        c.put("b", json!({}), Expect::Absent),
        Err(Error::Unavailable(_))
    ));
    assert!(c.get("a").unwrap().is_some(), "reads go on");
}

#[test]
fn a_database_opened_on_a_full_disk_refuses_its_first_write() {
    let storage = Arc::new(MemoryStorage::new());
    storage.set_free_bytes(Some(0));
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    assert!(db.disk().refusing, "looked at before the first write");
    let c = db.collection("c").unwrap();
    assert!(matches!(
        c.put("a", json!({}), Expect::Absent),
        Err(Error::InsufficientStorage { free: 0, .. })
    ));
    // A reserve of 0 refuses nothing, even with no byte free.
    drop(db);
    let off = Db::open_with_storage(
        storage,
        Options {
            min_free_disk_bytes: 0,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(!off.disk().refusing);
    assert!(
        off.collection("c")
            .unwrap()
            .put("a", json!({}), Expect::Absent)
            .unwrap()
            .is_ok()
    );
}

/// Runs `threads` × `each` requests made by `request` at once on `db`, and
/// the sizes of the groups that held them: (largest group's bucket bound,
/// groups).
fn grouped(db: &Db, threads: usize, each: usize, request: impl Fn(&Db) + Sync) -> (f64, u64) {
    let before = db.stats().group_size;
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                for _ in 0..each {
                    request(db);
                }
            });
        }
    });
    let after = db.stats().group_size;
    let largest = (0..after.counts.len())
        .rev()
        .find(|&b| after.counts[b] > before.counts[b])
        .map_or(0.0, |b| after.bounds.get(b).copied().unwrap_or(f64::INFINITY));
    (largest, after.count - before.count)
}

/// A group closes once its requests' filters have taken FILTER_STEPS_MAX
/// steps, or its requests have met COMMIT_BATCH_MET_BYTES_MAX of documents:
/// each request was bounded, but a group held up to 4,096 of them, all
/// waiting for the last before their fsync.
#[test]
fn a_group_closes_once_its_requests_have_done_enough() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    let numbers: Vec<u64> = (0..140_000).collect();
    c.put("big", json!({ "a": numbers }), Expect::Absent)
        .unwrap()
        .unwrap();
    // 3M steps each: an `$if` of 21 equality tests over 140,001 values, the
    // last of which holds.
    let mut or: Vec<Value> = (1..21).map(|k| json!({"a": -k})).collect();
    or.push(json!({"a": 139_999}));
    let filtered = update(json!({"$inc": {"n": 1}, "$if": {"$or": or}}));
    let (largest, groups) = grouped(&db, 8, 2, |db| {
        let c = db.collection("c").unwrap();
        c.patch("big", filtered.clone(), Expect::Any).unwrap().unwrap();
    });
    assert!(
        largest <= 2.0,
        "a group of up to {largest} requests of 3M steps ({groups} groups)"
    );
    let n = c.get("big").unwrap().unwrap().body["n"].clone();
    assert_eq!(n, 16);
    // Transactions that meet a document of 140,000 numbers (~890 kB) with a
    // `$set` of the value it holds (a no-op, which writes nothing, so the
    // bytes written never close the group, but rebuilds and compares the
    // document) and write a small one: a group closes at its 19th (16 MiB
    // met).
    let same = Arc::new(update(json!({"$set": {"n": 16}})));
    let small = std::sync::atomic::AtomicU64::new(0);
    let (largest, groups) = grouped(&db, 48, 2, |db| {
        let i = small.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ops = vec![
            TxOp::Patch {
                collection: "c".into(),
                id: "big".into(),
                update: Arc::clone(&same),
                expect: Expect::Any,
            },
            TxOp::Put {
                collection: "c".into(),
                id: format!("s{i}"),
                body: json!({}),
                expect: Expect::Absent,
            },
        ];
        db.batch(ops, None).unwrap().unwrap();
    });
    assert!(
        largest <= 32.0,
        "a group of up to {largest} requests meeting 890 kB ({groups} groups)"
    );
}

/// A document the TTL sweep cannot read is left, and reported: the others
/// after it are swept. (Its turn ended at the first such document, and the
/// next turn started over from the same place, so none past it was ever
/// deleted.)
#[test]
fn the_ttl_sweep_goes_past_a_document_it_cannot_read() {
    let (storage, db) = memory_db();
    let c = db.collection("c").unwrap();
    for id in ["a", "c"] {
        c.put(id, json!({"exp": 0}), Expect::Absent).unwrap().unwrap();
    }
    let mut garbage = WriteBatch::new();
    garbage.put(Space::Documents, b"c\x00b".to_vec(), vec![1, 1, 0, 0, 0, 0, 9]);
    storage.apply(garbage, truce::Durability::Immediate).unwrap();
    let ttl = json!({"ttl": {"field": "exp", "seconds": 1}});
    c.set_config(truce::CollectionConfig::from_json(&ttl).unwrap())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.stats().ttl_deleted < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 2 swept",
            db.stats().ttl_deleted
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let page = db.changes(Some("c"), 0, 100, false).unwrap();
    let deleted: BTreeSet<String> = page
        .changes
        .into_iter()
        .filter(|ch| ch.deleted)
        .map(|ch| ch.id)
        .collect();
    assert_eq!(deleted, BTreeSet::from(["a".to_string(), "c".to_string()]));
}

/// `Expect::Version(0)` could never match (versions start at 1), so every
/// write with it failed as a conflict; the wire's `_version: 0` means
/// "absent", and code ported from it met conflicts instead of creates.
#[test]
fn version_zero_is_an_invalid_precondition_not_a_conflict() {
    let (_, db) = memory_db();
    let c = db.collection("c").unwrap();
    let refused = c.put("x", json!({}), Expect::Version(0)).unwrap_err();
    assert_eq!(refused.code(), "invalid_precondition", "{refused}");
    assert!(refused.to_string().contains("absent"), "{refused}");
    c.put("x", json!({}), Expect::Absent).unwrap().unwrap();
    let refused = c
        .patch("x", update(json!({"$set": {"a": 1}})), Expect::Version(0))
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_precondition");
}
