//! The consistency check: clean on a database the engine wrote, whatever it
//! holds, and each kind of damage to a derived record is found and named.

use std::sync::Arc;

use serde_json::json;
use truce::engine::check;
use truce::record;
use truce::storage::{Direction, MemoryStorage, Space, Storage, StorageRead, WriteBatch};
use truce::{CheckReport, CollectionConfig, Db, Expect, IndexSpec, Options, TxOp};

use crate::indexes::{spec, wait_ready};
use crate::{copy_dir, open, update};

/// A database holding a bit of everything the check compares: documents
/// rewritten and deleted, a ready index, counters of both modes (with a sum),
/// idempotency records and a transaction.
fn populated() -> (Arc<MemoryStorage>, Db) {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let orders = db.collection("orders").unwrap();
    orders
        .set_config(
            CollectionConfig::from_json(&json!({"counters": [
                {"name": "placed", "group_by": "shop", "target": {"c": "shops", "field": "orders"}},
                {"name": "revenue", "group_by": "shop", "sum": "total", "mode": "after_commit",
                 "target": {"c": "shops", "field": "revenue"}}]}))
            .unwrap(),
        )
        .unwrap();
    orders
        .create_index(
            "by_shop",
            IndexSpec {
                fields: vec!["shop".into(), "total".into()],
                unique: false,
            },
        )
        .unwrap();
    wait_ready(&orders, "by_shop");
    for i in 0..40 {
        let body = json!({"shop": format!("s{}", i % 3), "total": i});
        orders
            .put_idempotent(&format!("key-{i}"), &format!("o{i}"), body, Expect::Absent)
            .unwrap()
            .unwrap();
    }
    for i in 0..10 {
        orders
            .patch(
                &format!("o{i}"),
                update(json!({"$set": {"shop": "s9"}, "$inc": {"total": 1}})),
                Expect::Any,
            )
            .unwrap()
            .unwrap();
        orders
            .delete(&format!("o{}", 20 + i), Expect::Any)
            .unwrap()
            .unwrap();
    }
    db.batch(
        vec![
            TxOp::Put {
                collection: "orders".into(),
                id: "t1".into(),
                body: json!({"shop": "s1", "total": 5}),
                expect: Expect::Absent,
            },
            TxOp::Delete {
                collection: "orders".into(),
                id: "o39".into(),
                expect: Expect::Any,
            },
        ],
        None,
    )
    .unwrap()
    .unwrap();
    // The after_commit counter's outbox is drained by commits of the
    // committer's background tick: wait for the last, so that nothing
    // commits while a test checks (a clean-clone CI run saw the check's
    // snapshot at 63 and the durable sequence at 64 a moment later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while db.stats().outbox_entries > 0 {
        assert!(std::time::Instant::now() < deadline, "the outbox never drained");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (storage, db)
}

fn check_of(storage: &MemoryStorage) -> CheckReport {
    let mut chunks = 0;
    let report = check(&*storage.snapshot().unwrap(), &mut |_| chunks += 1).unwrap();
    assert!(chunks > 0, "progress was reported");
    report
}

fn first_key(storage: &MemoryStorage, space: Space, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    storage
        .scan(
            space,
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
            Direction::Forward,
            1,
        )
        .unwrap()
        .pop()
        .expect("an entry")
}

fn damage(storage: &MemoryStorage, edit: impl FnOnce(&mut WriteBatch)) {
    let mut batch = WriteBatch::new();
    edit(&mut batch);
    storage.apply(batch, truce::Durability::Immediate).unwrap();
}

fn kinds(report: &CheckReport) -> Vec<&'static str> {
    report.problems.iter().map(|p| p.kind).collect()
}

#[test]
fn a_database_the_engine_wrote_is_clean() {
    let (storage, db) = populated();
    let online = db.check(&mut |_| {}).unwrap();
    assert!(online.is_clean(), "{:?}", online.problems);
    assert_eq!(online.seq, db.durable_seq());
    // 41 orders (tombstones too) and 4 shop documents, each with its entry.
    assert_eq!((online.documents, online.changes), (45, 45));
    assert_eq!(online.index_entries, 30, "the live orders");
    assert_eq!(online.idempotency, 80, "40 records and their expiry entries");
    assert_eq!(online.counter_groups, 8, "four shops, two counters");
    drop(db);
    assert_eq!(check_of(&storage), online, "the same offline");
}

#[test]
fn each_kind_of_damage_is_found() {
    let (storage, db) = populated();
    drop(db);
    let (change_key, _) = first_key(&storage, Space::Changes, b"orders\0");
    let (index_key, _) = first_key(&storage, Space::Index, b"orders\0by_shop\0");
    let (expiry_key, _) = first_key(&storage, Space::IdempotencyExpiry, b"");
    let (shop_key, shop_value) = first_key(&storage, Space::Documents, b"shops\0s1");
    damage(&storage, |b| {
        // A change-log entry lost, and one left behind by an older write.
        b.remove(Space::Changes, change_key.clone());
        b.put(
            Space::Changes,
            [&b"orders\0"[..], &1u64.to_be_bytes(), b"o1"].concat(),
            Vec::new(),
        );
        // An index entry lost; one for values no document has; one of no index.
        b.remove(Space::Index, index_key.clone());
        b.put(
            Space::Index,
            [&b"orders\0by_shop\0"[..], b"\x7fjunk", b"o1"].concat(),
            b"o1".to_vec(),
        );
        b.put(Space::Index, b"orders\0gone\0x".to_vec(), b"o1".to_vec());
        // An expiry entry lost.
        b.remove(Space::IdempotencyExpiry, expiry_key.clone());
        // A counter target rewritten behind the counter's back.
        let doc = record::decode_document("s1", &shop_value).unwrap();
        let mut body = doc.body.clone();
        body.insert("orders".into(), json!(1000));
        let canonical = truce::doc::canonical_bytes(&body);
        let meta = truce::Meta {
            rev: truce::Rev::compute(doc.meta.version() + 1, &canonical, false),
            ..doc.meta
        };
        b.put(
            Space::Documents,
            shop_key.clone(),
            record::encode_document(&meta, &canonical),
        );
    });
    let report = check_of(&storage);
    let mut found = kinds(&report);
    found.sort_unstable();
    found.dedup();
    assert_eq!(
        found,
        [
            "counter_mismatch",
            "missing_change",
            "missing_idempotency_expiry",
            "missing_index_entry",
            "orphan_index_entry",
            "stale_change",
            "stale_index_entry",
        ],
        "{:#?}",
        report.problems
    );
    assert_eq!(report.problems_total, report.problems.len() as u64);
    let mismatch = report
        .problems
        .iter()
        .find(|p| p.kind == "counter_mismatch")
        .unwrap();
    assert!(mismatch.detail.contains("shops/s1.orders"), "{}", mismatch.detail);
}

#[test]
fn a_corrupt_record_a_stale_expiry_entry_and_a_record_past_the_last_commit_are_found() {
    let (storage, db) = populated();
    drop(db);
    let (doc_key, doc_value) = first_key(&storage, Space::Documents, b"orders\0o2");
    let (flipped_key, mut flipped) = first_key(&storage, Space::Documents, b"orders\0o1");
    damage(&storage, |b| {
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        b.put(Space::Documents, flipped_key.clone(), flipped);
        b.put(
            Space::IdempotencyExpiry,
            [&7u64.to_be_bytes()[..], b"key-3"].concat(),
            Vec::new(),
        );
        let doc = record::decode_document("o2", &doc_value).unwrap();
        let meta = truce::Meta {
            seq: 1 << 40,
            ..doc.meta
        };
        let canonical = truce::doc::canonical_bytes(&doc.body);
        b.put(
            Space::Documents,
            doc_key.clone(),
            record::encode_document(&meta, &canonical),
        );
    });
    let report = check_of(&storage);
    let found = kinds(&report);
    assert_eq!(
        found.iter().filter(|k| **k == "corrupt_record").count(),
        1,
        "{found:?}"
    );
    // The counters of a collection holding it cannot be recounted: said, not failed.
    assert_eq!(report.counters_skipped.len(), 2, "{:?}", report.counters_skipped);
    assert!(
        report.counters_skipped.iter().all(|s| s.kind == "unreadable"),
        "{:?}",
        report.counters_skipped
    );
    assert!(found.contains(&"stale_idempotency_expiry"), "{found:?}");
    assert!(found.contains(&"ahead_of_last_seq"), "{found:?}");
    // Its change-log entry is at its old seq: missing at the new one, stale at the old.
    assert!(
        found.contains(&"missing_change") && found.contains(&"stale_change"),
        "{found:?}"
    );
}

/// The entry of `id` in `users.by_email`.
fn entry_of(storage: &MemoryStorage, id: &str) -> Vec<u8> {
    let prefix = b"users\0by_email\0";
    storage
        .scan(
            Space::Index,
            std::ops::Bound::Included(&prefix[..]),
            std::ops::Bound::Unbounded,
            Direction::Forward,
            usize::MAX,
        )
        .unwrap()
        .into_iter()
        .find(|(key, value)| key.starts_with(prefix) && value == id.as_bytes())
        .expect("an index entry")
        .0
}

/// Rewrites `id`'s body in place, as the engine would have written it (same
/// version and seq, so its change-log entry still matches), and moves its
/// index entry to `entry` (the caller's key for the new body).
fn rewrite(
    batch: &mut WriteBatch,
    storage: &MemoryStorage,
    id: &str,
    body: serde_json::Value,
    entry: Vec<u8>,
) {
    let key = [&b"users\0"[..], id.as_bytes()].concat();
    let old = storage
        .get(Space::Documents, &key)
        .unwrap()
        .expect("the document");
    let doc = record::decode_document(id, &old).unwrap();
    let body = body.as_object().unwrap().clone();
    let canonical = truce::doc::canonical_bytes(&body);
    let meta = truce::Meta {
        rev: truce::Rev::compute(doc.meta.version(), &canonical, false),
        ..doc.meta
    };
    batch.put(Space::Documents, key, record::encode_document(&meta, &canonical));
    batch.remove(Space::Index, entry_of(storage, id));
    batch.put(Space::Index, entry, id.as_bytes().to_vec());
}

/// The entry key `holder`'s entry would have if `id` held its values.
fn beside(storage: &MemoryStorage, holder: &str, id: &str) -> Vec<u8> {
    let entry = entry_of(storage, holder);
    [&entry[..entry.len() - holder.len()], id.as_bytes()].concat()
}

/// Two live documents that hold one value of a unique index are a finding;
/// a holder past its TTL is not (writers take it for gone, so another may
/// take its value before the sweeper deletes it), nor are documents without
/// the field.
#[test]
fn a_unique_value_held_twice_is_found_unless_a_holder_is_past_its_ttl() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let users = db.collection("users").unwrap();
    users
        .set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "exp", "seconds": 1}})).unwrap())
        .unwrap();
    users.create_index("by_email", spec(&["email"], true)).unwrap();
    wait_ready(&users, "by_email");
    let later = 4_000_000_000_000u64; // ms: the year 2096
    for (id, email) in [("u1", "a"), ("u2", "b"), ("u3", "c"), ("u4", "d")] {
        let body = json!({"email": email, "exp": later});
        users.put(id, body, Expect::Absent).unwrap().unwrap();
    }
    for id in ["n1", "n2"] {
        users
            .put(id, json!({"name": id}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    drop(users);
    drop(db);
    assert!(check_of(&storage).is_clean());
    let (u2_beside_u1, u4_beside_u3) = (beside(&storage, "u1", "u2"), beside(&storage, "u3", "u4"));
    let u3_entry = entry_of(&storage, "u3");
    damage(&storage, |b| {
        // u2 takes u1's value, both live.
        rewrite(
            b,
            &storage,
            "u2",
            json!({"email": "a", "exp": later}),
            u2_beside_u1,
        );
        // u3 is past its TTL (not yet swept), and u4 takes its value.
        rewrite(b, &storage, "u3", json!({"email": "c", "exp": 0}), u3_entry);
        rewrite(
            b,
            &storage,
            "u4",
            json!({"email": "c", "exp": later}),
            u4_beside_u3,
        );
    });
    let report = check_of(&storage);
    assert_eq!(
        kinds(&report),
        ["duplicate_unique_value"],
        "{:#?}",
        report.problems
    );
    assert_eq!(
        report.problems[0].detail,
        r#"unique index users.by_email: u1 and u2 both hold ["a"]"#
    );
}

/// A document whose values in an index are over `INDEX_VALUES_BYTES_MAX`
/// but were stored before the limit (planted here as such a database holds
/// them) may still be written as long as the write leaves those values as
/// they are; a write that changes them must bring them within the limit.
#[test]
fn an_entry_stored_before_the_limit_does_not_refuse_unrelated_writes() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let users = db.collection("users").unwrap();
    users.create_index("by_email", spec(&["email"], true)).unwrap();
    wait_ready(&users, "by_email");
    users
        .put("u1", json!({"email": "a"}), Expect::Absent)
        .unwrap()
        .unwrap();
    drop(users);
    drop(db);
    let long = "x".repeat(4000);
    let def = truce::IndexDef::new("users", "by_email", spec(&["email"], true)).unwrap();
    let body = json!({"email": long});
    let entry = def.entry_key("u1", body.as_object().unwrap());
    damage(&storage, |b| rewrite(b, &storage, "u1", body.clone(), entry));
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let users = db.collection("users").unwrap();
    users
        .patch("u1", update(json!({"$set": {"seen": 1}})), Expect::Any)
        .unwrap()
        .unwrap();
    let changed = users
        .patch(
            "u1",
            update(json!({"$set": {"email": format!("{long}y")}})),
            Expect::Any,
        )
        .unwrap_err();
    assert_eq!(changed.code(), "limit_exceeded");
    users
        .patch("u1", update(json!({"$set": {"email": "short"}})), Expect::Any)
        .unwrap()
        .unwrap();
}

/// A database whose storage lost commits is refused at open, not served: a
/// journal removed or cut took the meta space's last commits (fjall's
/// spaces flush on their own, so the change log held later ones), and a
/// space's files removed took documents the change log still names. The
/// first handed the lost sequence numbers out again; the second served
/// the documents as absent and took create-only writes over them.
#[test]
fn a_database_that_lost_commits_is_refused_at_open() {
    let (storage, db) = populated();
    drop(db);
    let last_seq = record::decode_counter(&storage.get(Space::Meta, b"last_seq").unwrap().unwrap()).unwrap();
    let refusal =
        |storage: &Arc<MemoryStorage>| match Db::open_with_storage(storage.clone(), Options::default()) {
            Err(truce::Error::Storage(truce::storage::StorageError::Corrupt(why))) => why,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("opened a database that lost commits"),
        };
    damage(&storage, |b| {
        b.put(
            Space::Meta,
            b"last_seq".to_vec(),
            record::encode_counter(last_seq - 1),
        )
    });
    let why = refusal(&storage);
    assert!(
        why.contains("past the last commit") && why.contains("Restore"),
        "{why}"
    );
    damage(&storage, |b| {
        b.put(
            Space::Meta,
            b"last_seq".to_vec(),
            record::encode_counter(last_seq),
        )
    });
    drop(Db::open_with_storage(storage.clone(), Options::default()).expect("opens as it was"));

    // The newest change of "orders" names a document; take it away.
    let (newest, _) = storage
        .scan(
            Space::Changes,
            std::ops::Bound::Included(&b"orders\0"[..]),
            std::ops::Bound::Excluded(&b"orders\x01"[..]),
            Direction::Reverse,
            1,
        )
        .unwrap()
        .pop()
        .expect("a change");
    let id = String::from_utf8(newest[b"orders\0".len() + 8..].to_vec()).unwrap();
    damage(&storage, |b| {
        b.remove(Space::Documents, truce::engine::tx::doc_key("orders", &id))
    });
    let why = refusal(&storage);
    assert!(
        why.contains(&format!("{id} at seq")) && why.contains("no document"),
        "{why}"
    );
}

/// Files taken away whole leave no damage for the storage to find: an older
/// copy of the database put back over a newer one, or its journal removed,
/// opened as a smaller database, as if the lost commits had never been
/// made, and handed their sequence numbers out again. The commit mark,
/// kept outside the storage, says how far the commits went.
#[test]
fn a_database_older_than_its_commit_mark_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (live, older) = (dir.path().join("live"), dir.path().join("older"));
    let write = |from: u32, to: u32| {
        let db = open(&live);
        let c = db.collection("c").unwrap();
        for i in from..to {
            c.put(&format!("d{i}"), json!({"i": i}), Expect::Absent)
                .unwrap()
                .unwrap();
        }
    };
    write(0, 10);
    copy_dir(&live, &older);
    write(10, 20);
    let mark = live.join(truce::engine::COMMIT_MARK_FILE);
    let marked = std::fs::read(&mark).unwrap();
    assert_eq!(marked.len(), 24, "the mark is written at close");
    // The older copy put back, all of it but the mark.
    std::fs::remove_dir_all(&live).unwrap();
    copy_dir(&older, &live);
    std::fs::write(&mark, &marked).unwrap();
    let refusal = match Db::open(&live, Options::default()) {
        Err(truce::Error::Storage(truce::storage::StorageError::Corrupt(why))) => why,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("opened a database older than its mark"),
    };
    assert!(
        refusal.contains("commits up to seq 20") && refusal.contains("only up to seq 10"),
        "{refusal}"
    );
    assert_eq!(
        std::fs::read(&mark).unwrap(),
        marked,
        "the refusal leaves the mark"
    );
    // A damaged mark is no reason to refuse (it is reported and written anew),
    // and with no mark the older copy opens as it is: the loss the mark catches.
    std::fs::write(&mark, b"TRUCEMK1 not a whole mark").unwrap();
    drop(open(&live));
    std::fs::remove_file(&mark).unwrap();
    // A mark that cannot be kept (here a directory in its place) is no
    // reason to refuse either: before the mark, this directory opened.
    std::fs::create_dir(&mark).unwrap();
    drop(open(&live));
    std::fs::remove_dir(&mark).unwrap();
    // Nor is a link followed: writing through it rewrote a file elsewhere.
    #[cfg(unix)]
    {
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"hello").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &mark).unwrap();
        drop(open(&live));
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"hello");
        std::fs::remove_file(&mark).unwrap();
    }
    let db = open(&live);
    assert_eq!(db.collection("c").unwrap().get("d10").unwrap(), None);
    assert!(db.collection("c").unwrap().get("d9").unwrap().is_some());
}
