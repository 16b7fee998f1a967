//! Idempotency keys: the first answer again, also after a restart; a different
//! request under the same key refused; expired keys forgotten.

use std::time::Duration;

use serde_json::json;
use truce::{Db, Expect, Options, TxOp};

use crate::{open, update};

#[test]
fn a_replay_returns_the_first_answer_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let inc = || update(json!({"$inc": {"n": 1}, "$upsert": true}));
    let first = {
        let db = open(dir.path());
        let c = db.collection("c").unwrap();
        let first = c
            .patch_idempotent("key-1", "x", inc(), Expect::Any)
            .unwrap()
            .unwrap();
        let again = c
            .patch_idempotent("key-1", "x", inc(), Expect::Any)
            .unwrap()
            .unwrap();
        assert_eq!(again, first, "the same answer, not a second increment");
        assert_eq!(c.get("x").unwrap().unwrap().body["n"], 1);
        first
    };
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    let after_restart = c
        .patch_idempotent("key-1", "x", inc(), Expect::Any)
        .unwrap()
        .unwrap();
    assert_eq!(after_restart, first);
    assert_eq!(c.get("x").unwrap().unwrap().body["n"], 1);

    let reused = c
        .patch_idempotent("key-1", "x", update(json!({"$inc": {"n": 2}})), Expect::Any)
        .unwrap_err();
    assert_eq!(reused.code(), "idempotency_key_reused");
    let other_doc = c.patch_idempotent("key-1", "y", inc(), Expect::Any).unwrap_err();
    assert_eq!(other_doc.code(), "idempotency_key_reused");

    let ops = || {
        vec![TxOp::Put {
            collection: "c".into(),
            id: "t".into(),
            body: json!({"a": 1}),
            expect: Expect::Absent,
        }]
    };
    let tx1 = db.batch(ops(), Some("tx-key")).unwrap().unwrap();
    let tx2 = db.batch(ops(), Some("tx-key")).unwrap().unwrap();
    assert!(!tx1.replayed && tx2.replayed);
    assert_eq!(tx1.results, tx2.results);
    assert_eq!(tx1.seq, tx2.seq);
}

/// A transaction of checks alone keeps no record under its key: it wrote
/// nothing a retry could repeat, and the record would hold every document it
/// read for a day (a read-only API key could fill the disk with them). Its
/// key is still looked up: one a write took answers as for that write.
#[test]
fn a_transaction_of_checks_keeps_no_record() {
    use std::ops::Bound::Unbounded;
    use truce::storage::{Direction, MemoryStorage, Space, StorageRead};
    let storage = std::sync::Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let records = || {
        storage
            .scan(Space::Idempotency, Unbounded, Unbounded, Direction::Forward, 10)
            .unwrap()
            .len()
    };
    let c = db.collection("c").unwrap();
    c.put("x", json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    let check = |version| {
        vec![TxOp::Check {
            collection: "c".into(),
            id: "x".into(),
            expect: Expect::Version(version),
        }]
    };
    let first = db.batch(check(1), Some("checks")).unwrap();
    assert!(first.is_ok());
    c.put("x", json!({"n": 2}), Expect::Any).unwrap().unwrap();
    let again = db.batch(check(1), Some("checks")).unwrap();
    assert!(again.is_err(), "checked again, not the first answer: {again:?}");
    assert!(db.batch(check(2), Some("checks")).unwrap().is_ok());
    assert_eq!(records(), 0, "no record was stored");
    c.put_idempotent("w", "y", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert_eq!(records(), 1);
    let reused = db.batch(check(2), Some("w")).unwrap_err();
    assert_eq!(reused.code(), "idempotency_key_reused");
}

#[test]
fn expired_keys_are_forgotten_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        idempotency_retention: Duration::from_millis(50),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    let c = db.collection("c").unwrap();
    let inc = || update(json!({"$inc": {"n": 1}, "$upsert": true}));
    c.patch_idempotent("k", "x", inc(), Expect::Any).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(80));
    c.patch_idempotent("k", "x", inc(), Expect::Any).unwrap().unwrap();
    assert_eq!(
        c.get("x").unwrap().unwrap().body["n"],
        2,
        "an expired key guards nothing"
    );
    // Its new record replaced the old one, expiry entry and all, before any
    // purge: the consistency check finds one entry per record.
    let report = db.check(&mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // The committer purges expired keys when idle (about every second).
    std::thread::sleep(Duration::from_millis(1300));
    c.patch_idempotent("k", "x", update(json!({"$inc": {"n": 5}})), Expect::Any)
        .unwrap()
        .unwrap();
    assert_eq!(c.get("x").unwrap().unwrap().body["n"], 7);
}

/// Expired keys are purged as fast as they come: a batch of 1,000 at a
/// time, the next at the next background tick while a batch comes back
/// full (at one batch a second, any writer of more than 1,000 keyed writes
/// a second grew the keys without end).
#[test]
fn expired_keys_are_purged_faster_than_a_batch_a_second() {
    use std::time::Instant;
    use truce::storage::{Direction, MemoryStorage, Space, StorageRead};
    let storage = std::sync::Arc::new(MemoryStorage::new());
    let options = Options {
        idempotency_retention: Duration::from_millis(1),
        ..Options::default()
    };
    let db = Db::open_with_storage(storage.clone(), options).unwrap();
    const KEYED: usize = 5_000;
    // Queued at once, so that they are written in a fraction of a second:
    // written over seconds, a batch a second would keep up with them too.
    let pending: Vec<_> = (0..KEYED)
        .map(|i| {
            let inc = TxOp::Patch {
                collection: "c".into(),
                id: format!("d{i}"),
                update: update(json!({"$inc": {"n": 1}, "$upsert": true})).into(),
                expect: Expect::Any,
            };
            db.submit_batch(vec![inc], Some(&format!("k{i}"))).unwrap()
        })
        .collect();
    for written in pending {
        written.wait().unwrap().unwrap();
    }
    let stored = || {
        let all = |space| {
            storage
                .scan(
                    space,
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Unbounded,
                    Direction::Forward,
                    usize::MAX,
                )
                .unwrap()
                .len()
        };
        (all(Space::Idempotency), all(Space::IdempotencyExpiry))
    };
    // The first upkeep comes within a second; at a batch a second, 2,000
    // of them would be left 2.5 s after the writes.
    let deadline = Instant::now() + Duration::from_millis(2_500);
    while stored() != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "still stored: {:?} of {KEYED}",
            stored()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    for bad in [String::new(), "k".repeat(256), "a\nb".to_string()] {
        let err = c.put_idempotent(&bad, "x", json!({}), Expect::Any).unwrap_err();
        assert_eq!(err.code(), "invalid_transaction", "{bad:?}");
    }
}
