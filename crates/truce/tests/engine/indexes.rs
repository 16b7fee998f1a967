//! Secondary indexes: backfill, maintenance in the same commit, queries with
//! cursors, unique constraints and their races.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use truce::storage::{Direction, Fault, MemoryStorage, Space, StorageRead};
use truce::{
    Collection, ConflictReason, Db, Expect, IndexDef, IndexSpec, IndexState, Order, Query, TxFailure, TxOp,
};

use crate::{open, open_relaxed, update};

/// Waits (bounded) until index `name` is ready.
pub fn wait_ready(c: &Collection, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.index_status(name).unwrap().state != IndexState::Ready {
        assert!(
            Instant::now() < deadline,
            "index {name} not ready: {:?}",
            c.index_status(name)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The status of index `name` once its build has ended, ready or failed.
fn wait_built(c: &Collection, name: &str) -> IndexDef {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.index_status(name).unwrap();
        if status.state != IndexState::Building {
            return status;
        }
        assert!(Instant::now() < deadline, "index {name} still building");
        thread::sleep(Duration::from_millis(5));
    }
}

fn ids(docs: &[truce::Document]) -> Vec<String> {
    docs.iter().map(|d| d.id.clone()).collect()
}

#[test]
fn backfill_then_maintain_then_query_with_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let people = db.collection("people").unwrap();
    // More than one backfill chunk, written before the index exists.
    for i in 0..700 {
        people
            .put(
                &format!("p{i:04}"),
                json!({"age": i % 70, "city": if i % 2 == 0 { "Oslo" } else { "Rome" }}),
                Expect::Absent,
            )
            .unwrap()
            .unwrap();
    }
    let spec = IndexSpec {
        fields: vec!["city".into(), "age".into()],
        unique: false,
    };
    let progress = people.create_index("by_city_age", spec.clone()).unwrap();
    assert_eq!(progress.state, IndexState::Building);
    // Writers are not blocked while the backfill runs.
    people
        .put("late", json!({"age": 30, "city": "Oslo"}), Expect::Absent)
        .unwrap()
        .unwrap();
    wait_ready(&people, "by_city_age");
    // The backfill counts the documents it scanned: the 700, and "late" if it got there first.
    assert!(people.index_status("by_city_age").unwrap().backfilled >= 700);
    assert_eq!(
        people.create_index("by_city_age", spec).unwrap().state,
        IndexState::Ready,
        "declaring again is harmless"
    );

    let q = Query {
        index: Some("by_city_age".into()),
        eq: vec![json!("Oslo")],
        gte: Some(json!(30)),
        lt: Some(json!(32)),
        limit: 4,
        ..Query::default()
    };
    let mut seen = Vec::new();
    let mut page = people.query(&q).unwrap();
    loop {
        assert!(page.docs.iter().all(|d| d.body["city"] == "Oslo"));
        seen.extend(
            page.docs
                .iter()
                .map(|d| (d.body["age"].as_i64().unwrap(), d.id.clone())),
        );
        // Documents change between pages; the cursor stays correct.
        people
            .put("zz-new", json!({"age": 31, "city": "Oslo"}), Expect::Any)
            .unwrap()
            .unwrap();
        let Some(next) = page.next else { break };
        page = people
            .query(&Query {
                after: Some(next),
                ..q.clone()
            })
            .unwrap();
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ascending by age, then id");
    let expected = (0..700)
        .filter(|i| i % 2 == 0 && (30..32).contains(&(i % 70)))
        .count()
        + 2;
    assert_eq!(seen.len(), expected, "{seen:?}");

    let desc = people
        .query(&Query {
            order: Order::Desc,
            limit: 3,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(desc.docs[0].body["age"], 31);

    // Updates move entries; deletes remove them.
    people
        .patch("late", update(json!({"$set": {"city": "Rome"}})), Expect::Any)
        .unwrap()
        .unwrap();
    people.delete("zz-new", Expect::Any).unwrap().unwrap();
    let all = people
        .query(&Query {
            limit: 1000,
            ..q.clone()
        })
        .unwrap();
    assert!(!ids(&all.docs).contains(&"late".to_string()));
    assert!(!ids(&all.docs).contains(&"zz-new".to_string()));
}

#[test]
fn mixed_types_and_missing_fields_sort_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("mixed").unwrap();
    c.create_index(
        "by_v",
        IndexSpec {
            fields: vec!["v".into()],
            unique: false,
        },
    )
    .unwrap();
    wait_ready(&c, "by_v");
    let values: Vec<(&str, Option<Value>)> = vec![
        ("h-true", Some(json!(true))),
        ("a-missing", None),
        ("e-obj", Some(json!({"k": 1}))),
        ("c-num", Some(json!(-5))),
        ("d-str", Some(json!("abc"))),
        ("b-null", Some(json!(null))),
        ("f-arr", Some(json!([1]))),
        ("g-false", Some(json!(false))),
        ("c-num2", Some(json!(2.5))),
    ];
    for (id, v) in &values {
        let body = match v {
            Some(v) => json!({"v": v}),
            None => json!({}),
        };
        c.put(id, body, Expect::Absent).unwrap().unwrap();
    }
    let page = c
        .query(&Query {
            index: Some("by_v".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        ids(&page.docs),
        [
            "a-missing",
            "b-null",
            "c-num",
            "c-num2",
            "d-str",
            "e-obj",
            "f-arr",
            "g-false",
            "h-true"
        ]
    );
    // One-sided bounds stay within the type bracket, as in MongoDB.
    let numbers = c
        .query(&Query {
            index: Some("by_v".into()),
            gt: Some(json!(-100)),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&numbers.docs), ["c-num", "c-num2"]);
    // Bounds of two types hold nothing, as a filter's `$gt` and `$lt` of
    // two types match nothing (they answered everything between them); the
    // two booleans are one type.
    let two_sided = |lower: Value, upper: Value| {
        let query = Query {
            index: Some("by_v".into()),
            gt: Some(lower),
            lte: Some(upper),
            ..Query::default()
        };
        ids(&c.query(&query).unwrap().docs)
    };
    assert!(two_sided(json!(-100), json!("b")).is_empty());
    assert!(two_sided(json!(null), json!(true)).is_empty());
    assert_eq!(two_sided(json!(-100), json!(100)), ["c-num", "c-num2"]);
    assert_eq!(two_sided(json!(false), json!(true)), ["h-true"]);
    let by_id = c
        .query(&Query {
            gte: Some(json!("c")),
            lt: Some(json!("e")),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&by_id.docs), ["c-num", "c-num2", "d-str"]);
}

/// A write that two unique indexes refuse is one conflict, not two: a single
/// write answers one (two made it fail as `unavailable`, found by the API
/// fuzzer), and a transaction names each failing op once.
#[test]
fn a_write_two_unique_indexes_refuse_is_one_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let users = db.collection("users").unwrap();
    for (name, field) in [("by_email", "email"), ("by_phone", "phone")] {
        let spec = IndexSpec {
            fields: vec![field.into()],
            unique: true,
        };
        users.create_index(name, spec).unwrap();
        wait_ready(&users, name);
    }
    users
        .put("u1", json!({"email": "a@x", "phone": 1}), Expect::Absent)
        .unwrap()
        .unwrap();
    let conflict = users
        .put("u2", json!({"email": "a@x", "phone": 1}), Expect::Absent)
        .unwrap()
        .unwrap_err();
    assert_eq!(conflict.reason, ConflictReason::UniqueViolation);
    let put = |id: &str| TxOp::Put {
        collection: "users".into(),
        id: id.into(),
        body: json!({"email": "a@x", "phone": 1}),
        expect: Expect::Absent,
    };
    match db.batch(vec![put("u3"), put("u4")], None).unwrap() {
        Err(TxFailure::Conflicts(conflicts)) => {
            let ops: Vec<usize> = conflicts.iter().map(|c| c.index).collect();
            assert_eq!(ops, [0, 1], "{conflicts:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// A unique index judges a transaction by its end state: a value that one of
/// its ops frees (a delete, a rename to a new id, a swap, a value moved on)
/// may be taken by another of its ops. The check used to look only at what
/// was stored, and refused these with the leaving document as the holder.
#[test]
fn a_transaction_may_move_a_unique_value_between_its_documents() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let users = db.collection("users").unwrap();
    users.create_index("by_email", spec(&["email"], true)).unwrap();
    wait_ready(&users, "by_email");
    for (id, email) in [
        ("old", "a@x"),
        ("s1", "s1@x"),
        ("s2", "s2@x"),
        ("f1", "f@x"),
        ("u1", "u@x"),
    ] {
        users
            .put(id, json!({ "email": email }), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let put = |id: &str, email: &str| TxOp::Put {
        collection: "users".into(),
        id: id.into(),
        body: json!({ "email": email }),
        expect: Expect::Any,
    };
    let patch = |id: &str, spec: Value| TxOp::Patch {
        collection: "users".into(),
        id: id.into(),
        update: Arc::new(update(spec)),
        expect: Expect::Any,
    };
    let delete = |id: &str| TxOp::Delete {
        collection: "users".into(),
        id: id.into(),
        expect: Expect::Any,
    };
    let commits = [
        // A rename: the old id deleted, the new one takes its value.
        vec![delete("old"), put("new", "a@x")],
        // A swap.
        vec![patch("s1", json!({"$set": {"email": "s2@x"}})), put("s2", "s1@x")],
        // Freed after it is taken, in op order.
        vec![
            put("f2", "f@x"),
            patch("f1", json!({"$set": {"email": "f1-new@x"}})),
        ],
        // Freed by removing the field.
        vec![patch("u1", json!({"$unset": {"email": ""}})), put("u2", "u@x")],
    ];
    for ops in commits {
        let described = format!("{ops:?}");
        db.batch(ops, None)
            .unwrap()
            .unwrap_or_else(|e| panic!("{described}: {e:?}"));
    }
    let holder = |email: &str| {
        let page = users
            .query(&Query {
                index: Some("by_email".into()),
                eq: vec![json!(email)],
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        ids(&page.docs)
    };
    for (email, id) in [
        ("a@x", "new"),
        ("s1@x", "s2"),
        ("s2@x", "s1"),
        ("f@x", "f2"),
        ("u@x", "u2"),
    ] {
        assert_eq!(holder(email), [id], "{email}");
    }
    // A holder that keeps the value still refuses it, inside a transaction as
    // outside.
    let kept = db
        .batch(
            vec![patch("new", json!({"$set": {"n": 1}})), put("other", "a@x")],
            None,
        )
        .unwrap();
    match kept {
        Err(TxFailure::Conflicts(conflicts)) => {
            assert_eq!(conflicts.len(), 1, "{conflicts:?}");
            assert_eq!(conflicts[0].index, 1);
            assert_eq!(conflicts[0].conflict.reason, ConflictReason::UniqueViolation);
            assert_eq!(conflicts[0].conflict.current().unwrap().unwrap().id, "new");
        }
        other => panic!("{other:?}"),
    }
    // Two ops taking one value: the second's conflict names no holder (the
    // first op's document, as stored, does not hold it).
    let twice = db
        .batch(
            vec![
                patch("new", json!({"$set": {"email": "q@x"}})),
                put("other", "q@x"),
            ],
            None,
        )
        .unwrap();
    match twice {
        Err(TxFailure::Conflicts(conflicts)) => {
            assert_eq!(conflicts.len(), 1, "{conflicts:?}");
            assert_eq!(conflicts[0].index, 1);
            assert_eq!(conflicts[0].conflict.current().unwrap(), None);
        }
        other => panic!("{other:?}"),
    }
    let report = db.check(&mut |_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn unique_violations_name_the_holder_and_races_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let users = db.collection("users").unwrap();
    users.create_index("by_email", spec(&["email"], true)).unwrap();
    wait_ready(&users, "by_email");
    users
        .put("u1", json!({"email": "a@x"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let conflict = users
        .put("u2", json!({"email": "a@x"}), Expect::Absent)
        .unwrap()
        .unwrap_err();
    assert_eq!(conflict.reason, ConflictReason::UniqueViolation);
    assert_eq!(conflict.current().unwrap().unwrap().id, "u1");
    // Rewriting the holder itself, or freeing the value, is fine.
    users
        .put("u1", json!({"email": "a@x", "n": 1}), Expect::Any)
        .unwrap()
        .unwrap();
    users
        .put("u1", json!({"email": "b@x"}), Expect::Any)
        .unwrap()
        .unwrap();
    users
        .put("u2", json!({"email": "a@x"}), Expect::Absent)
        .unwrap()
        .unwrap();
    // Documents without the field are not constrained.
    users.put("n1", json!({}), Expect::Absent).unwrap().unwrap();
    users.put("n2", json!({}), Expect::Absent).unwrap().unwrap();

    for round in 0..5 {
        let email = format!("race{round}@x");
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let users = users.clone();
                let email = email.clone();
                thread::spawn(move || {
                    users.put(&format!("r{round}-{i}"), json!({"email": email}), Expect::Absent)
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one insert wins");
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(loser.reason, ConflictReason::UniqueViolation);
            assert_eq!(loser.current().unwrap().unwrap().id, winners[0].doc.id);
        }
    }
}

#[test]
fn a_unique_index_over_duplicates_fails_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.put("a", json!({"k": 1}), Expect::Absent).unwrap().unwrap();
    c.put("b", json!({"k": 1}), Expect::Absent).unwrap().unwrap();
    c.create_index(
        "by_k",
        IndexSpec {
            fields: vec!["k".into()],
            unique: true,
        },
    )
    .unwrap();
    let status = wait_built(&c, "by_k");
    assert_eq!(status.state, IndexState::Failed);
    assert!(status.failure.unwrap().contains("share"));
    let err = c
        .query(&Query {
            index: Some("by_k".into()),
            ..Query::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), "invalid_index");
    // Declaring it again does not build it again, and says what does.
    let again = c.create_index("by_k", spec(&["k"], true)).unwrap_err();
    assert_eq!(again.code(), "invalid_index");
    assert!(
        again.to_string().contains("drop it and declare it again"),
        "{again}"
    );
    // Nor is it maintained: a document whose values no index could hold
    // (an entry past the storage's 65,535 bytes, which panicked the
    // committer and stopped every write) is written, and writes go on.
    let big = "x".repeat(70_000);
    c.put("big", json!({"k": big}), Expect::Absent).unwrap().unwrap();
    c.put("after", json!({"k": 3}), Expect::Absent).unwrap().unwrap();
    c.delete("big", Expect::Any).unwrap().unwrap();
    c.drop_index("by_k").unwrap();
    c.put("b", json!({"k": 2}), Expect::Any).unwrap().unwrap();
    declare_after_drop(&c, "by_k", spec(&["k"], true));
    wait_ready(&c, "by_k");
    assert_eq!(c.drop_index("1bad").unwrap_err().code(), "invalid_index");
}

#[test]
fn indexes_survive_reopen_and_unfinished_backfills_resume() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_relaxed(dir.path());
        let c = db.collection("c").unwrap();
        for i in 0..600 {
            c.put(&format!("d{i}"), json!({"k": i}), Expect::Absent)
                .unwrap()
                .unwrap();
        }
        c.create_index(
            "by_k",
            IndexSpec {
                fields: vec!["k".into()],
                unique: false,
            },
        )
        .unwrap();
        // Closed right away: the backfill may be anywhere.
    }
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    wait_ready(&c, "by_k");
    let page = c.query(&Query {
        index: Some("by_k".into()),
        gte: Some(json!(100)),
        limit: 1000,
        ..Query::default()
    });
    assert_eq!(page.unwrap().docs.len(), 500);
    let names: BTreeSet<String> = c.indexes().into_iter().map(|d| d.name).collect();
    assert_eq!(names, BTreeSet::from(["by_k".to_string()]));
}

/// The entries stored under index `name` of `collection`.
fn stored_entries(storage: &MemoryStorage, collection: &str, name: &str) -> usize {
    let prefix = format!("{collection}\0{name}\0").into_bytes();
    let mut end = prefix.clone();
    *end.last_mut().unwrap() += 1;
    storage
        .scan(
            Space::Index,
            Bound::Included(&prefix),
            Bound::Excluded(&end),
            Direction::Forward,
            usize::MAX,
        )
        .unwrap()
        .len()
}

/// An index over `fields`.
pub fn spec(fields: &[&str], unique: bool) -> IndexSpec {
    IndexSpec {
        fields: fields.iter().map(|f| f.to_string()).collect(),
        unique,
    }
}

/// Documents `d00000`… of collection `c` with `k` from `k_of`, a
/// transaction's worth at a time.
pub fn put_many(db: &Db, docs: usize, k_of: impl Fn(usize) -> usize) {
    let ids: Vec<usize> = (0..docs).collect();
    for chunk in ids.chunks(truce::limits::TX_OPS_MAX) {
        let ops = chunk
            .iter()
            .map(|&i| TxOp::Put {
                collection: "c".into(),
                id: format!("d{i:05}"),
                body: json!({"k": k_of(i)}),
                expect: Expect::Absent,
            })
            .collect();
        db.batch(ops, None).unwrap().unwrap();
    }
}

/// Declares index `name` again, waiting (bounded) while the dropped one of
/// that name is still being purged.
fn declare_after_drop(c: &Collection, name: &str, spec: IndexSpec) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.create_index(name, spec.clone()) {
            Ok(_) => return,
            Err(e) if e.code() == "index_dropping" && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("declaring {name} again: {e}"),
        }
    }
}

#[test]
fn a_dropped_index_stops_at_once_is_purged_and_its_name_is_free_again() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    // Over two purge steps' worth of entries.
    let docs = 2 * truce::limits::INDEX_PURGE_CHUNK_ENTRIES + 100;
    put_many(&db, docs, |i| i);
    c.create_index("by_k", spec(&["k"], true)).unwrap();
    wait_ready(&c, "by_k");
    assert_eq!(stored_entries(&storage, "c", "by_k"), docs);
    let by_k = |value: Value| Query {
        index: Some("by_k".into()),
        eq: vec![value],
        ..Query::default()
    };

    let dropped = c.drop_index("by_k").unwrap();
    assert_eq!(
        (dropped.name.as_str(), dropped.state, dropped.spec.unique),
        ("by_k", IndexState::Dropping, true)
    );
    // From its answer on: not listed, not queryable, not enforced.
    assert!(c.indexes().is_empty());
    assert_eq!(c.index_status("by_k").unwrap_err().code(), "not_found");
    assert_eq!(c.query(&by_k(json!(1))).unwrap_err().code(), "not_found");
    c.put("d00000", json!({"k": 5}), Expect::Any).unwrap().unwrap();
    assert_eq!(c.drop_index("by_k").unwrap_err().code(), "not_found");

    // The name comes back once every entry is gone, and the new index holds
    // only what the documents say now (a stale entry would answer k = 0).
    declare_after_drop(&c, "by_k", spec(&["k"], false));
    wait_ready(&c, "by_k");
    assert_eq!(stored_entries(&storage, "c", "by_k"), docs);
    assert!(c.query(&by_k(json!(0))).unwrap().docs.is_empty());
    assert_eq!(ids(&c.query(&by_k(json!(5))).unwrap().docs), ["d00000", "d00005"]);
}

#[test]
fn a_purge_cut_short_resumes_on_open() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    let docs = 3 * truce::limits::INDEX_PURGE_CHUNK_ENTRIES;
    put_many(&db, docs, |i| i % 7);
    c.create_index("by_k", spec(&["k"], false)).unwrap();
    wait_ready(&c, "by_k");
    // The drop is stored, its first purge step is held up by a slow disk, and
    // the machine stops there.
    storage.inject(Fault::Delay(Duration::ZERO));
    storage.inject(Fault::Delay(Duration::from_secs(1)));
    c.drop_index("by_k").unwrap();
    let image = Arc::new(storage.crash_image());
    assert_eq!(stored_entries(&image, "c", "by_k"), docs, "no purge step yet");
    drop(c);
    drop(db);

    let db = Db::open_with_storage(image.clone(), truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.indexes().is_empty(), "a dropped index stays dropped");
    // Declared again over a field no document has: an entry left from the
    // dropped index would answer k's values.
    declare_after_drop(&c, "by_k", spec(&["j"], false));
    wait_ready(&c, "by_k");
    let page = c
        .query(&Query {
            index: Some("by_k".into()),
            eq: vec![json!(3)],
            ..Query::default()
        })
        .unwrap();
    assert!(
        page.docs.is_empty(),
        "left from the dropped index: {:?}",
        ids(&page.docs)
    );
    assert_eq!(
        stored_entries(&image, "c", "by_k"),
        docs,
        "one entry per document"
    );
}

#[test]
fn a_transaction_older_than_an_index_cannot_query_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.put("a", json!({"k": 1}), Expect::Absent).unwrap().unwrap();
    let mut before = db.begin().unwrap();
    c.create_index("by_k", spec(&["k"], false)).unwrap();
    wait_ready(&c, "by_k");
    let q = Query {
        index: Some("by_k".into()),
        eq: vec![json!(1)],
        ..Query::default()
    };
    // Its snapshot holds none of the index's entries: an empty page would be
    // a wrong answer, and a read set that no later write could disturb.
    assert_eq!(before.query("c", &q).unwrap_err().code(), "index_building");
    let mut after = db.begin().unwrap();
    assert_eq!(ids(&after.query("c", &q).unwrap().docs), ["a"]);
    assert_eq!(ids(&c.query(&q).unwrap().docs), ["a"]);
}

/// A transaction that read `k = 1` of collection `c` through index `by_k`
/// (and found nothing), begun after `before` ran.
fn tx_that_read_by_k(db: &Db, before: impl FnOnce(&Collection)) -> truce::Transaction {
    let c = db.collection("c").unwrap();
    before(&c);
    c.create_index("by_k", spec(&["k"], false)).unwrap();
    wait_ready(&c, "by_k");
    let mut tx = db.begin().unwrap();
    let q = Query {
        index: Some("by_k".into()),
        eq: vec![json!(1)],
        ..Query::default()
    };
    assert!(tx.query("c", &q).unwrap().docs.is_empty());
    tx
}

#[test]
fn a_transaction_that_read_a_dropped_index_fails_as_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let mut tx = tx_that_read_by_k(&db, |_| {});
    let c = db.collection("c").unwrap();
    c.drop_index("by_k").unwrap();
    // Into the range the transaction read: no longer an entry of by_k, so
    // only the drop itself can tell the transaction that its read is stale.
    c.put("a", json!({"k": 1}), Expect::Absent).unwrap().unwrap();
    tx.put("c", "b", json!({"none_with_k_1": true}), Expect::Absent)
        .unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::SnapshotTooOld { .. }) => {}
        other => panic!("expected snapshot_too_old, got {other:?}"),
    }
    // A transaction begun after the drop is not disturbed by it.
    let mut after = db.begin().unwrap();
    after.put("c", "b", json!({"ok": true}), Expect::Absent).unwrap();
    after.commit().unwrap().unwrap();
}

/// A transaction refused by a folded `$if` is checked against what it read
/// by a commit of reads alone; found too old, it is counted as any
/// transaction is, under its first write's collection, not under none.
#[test]
fn a_refused_transaction_too_old_is_counted_under_its_collection() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let mut tx = tx_that_read_by_k(&db, |c| {
        c.put("x", json!({"n": 10}), Expect::Absent).unwrap().unwrap();
    });
    tx.put("first", "z", json!({}), Expect::Any).unwrap();
    let guarded = update(json!({"$if": {"n": {"$lt": 5}}, "$else": "conflict", "$inc": {"n": 1}}));
    tx.patch("c", "x", guarded, Expect::Any).unwrap();
    // Folded into one write of x: the `$if` is judged now, and fails.
    tx.patch("c", "x", update(json!({"$set": {"m": 1}})), Expect::Any)
        .unwrap();
    db.collection("c").unwrap().drop_index("by_k").unwrap();
    match tx.commit().unwrap() {
        Err(TxFailure::SnapshotTooOld { .. }) => {}
        other => panic!("expected snapshot_too_old, got {other:?}"),
    }
    let counted: Vec<_> = db
        .stats()
        .labelled
        .iter()
        .filter(|l| l.1 == "snapshot_too_old")
        .map(|l| (l.2.to_string(), l.4))
        .collect();
    assert_eq!(counted, [("first".to_string(), 1)]);
}

/// A backfill interrupted (a crash, a close) walks the documents again from
/// the start on the next open; what it had counted is not added twice.
#[test]
fn a_resumed_backfill_counts_each_document_once() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
    let people = db.collection("people").unwrap();
    for i in 0..300 {
        people
            .put(&format!("p{i:04}"), json!({"age": i}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let spec = IndexSpec {
        fields: vec!["age".into()],
        unique: false,
    };
    people.create_index("by_age", spec.clone()).unwrap();
    wait_ready(&people, "by_age");
    drop(db);
    // As a crash half-way leaves it: still building, 200 counted.
    let mut def = truce::IndexDef::new("people", "by_age", spec).unwrap();
    let stored = IndexDef::from_json(&stored_definition(&storage, "by_age")).unwrap();
    def.declared_seq = stored.declared_seq;
    def.state = IndexState::Building;
    def.backfilled = 200;
    store_definition(&storage, "by_age", &def.to_json());

    let db = Db::open_with_storage(storage, truce::Options::default()).unwrap();
    let people = db.collection("people").unwrap();
    wait_ready(&people, "by_age");
    assert_eq!(people.index_status("by_age").unwrap().backfilled, 300);
}

/// The stored definition of the one index named `name`, as JSON.
fn stored_definition(storage: &MemoryStorage, name: &str) -> Value {
    let suffix = format!("\0{name}").into_bytes();
    let (_, stored) = storage
        .scan(
            Space::Meta,
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Forward,
            usize::MAX,
        )
        .unwrap()
        .into_iter()
        .find(|(key, _)| key.starts_with(b"index\0") && key.ends_with(&suffix))
        .expect("the index's definition");
    truce::record::decode_json(&stored).unwrap()
}

/// Stores `definition` as the index's, as a crash or an older version
/// left it, behind a closed database's back.
fn store_definition(storage: &MemoryStorage, name: &str, definition: &Value) {
    let def = IndexDef::from_json(definition).unwrap();
    assert_eq!(def.name, name);
    let mut batch = truce::storage::WriteBatch::new();
    batch.put(
        Space::Meta,
        def.meta_key(),
        truce::record::encode_json(definition),
    );
    truce::storage::Storage::apply(storage, batch, truce::Durability::Immediate).unwrap();
}

/// An index declared again as it is while it builds (an application that
/// ensures its indexes at start, twice) walks the documents once: each
/// declaration started a walk of its own, which counted every document again.
#[test]
fn an_index_declared_again_while_it_builds_is_walked_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    let docs = 6 * truce::limits::BACKFILL_CHUNK_DOCS * 4;
    put_many(&db, docs, |i| i % 7);
    for _ in 0..4 {
        let progress = c.create_index("by_k", spec(&["k"], false)).unwrap();
        assert_ne!(progress.state, IndexState::Failed);
    }
    wait_ready(&c, "by_k");
    assert_eq!(c.index_status("by_k").unwrap().backfilled, docs as u64);
}

/// The values a document puts into an index are bounded
/// (`INDEX_VALUES_BYTES_MAX`), so every entry fits in a query cursor: a
/// write past the bound is refused (a transaction as a whole), an
/// index built over a document past it fails, and an index of values just
/// within it pages through every document, in both orders. (Before, such
/// entries were written, and the cursor the first page handed out was
/// refused as "not a cursor returned by this server".)
#[test]
fn index_values_are_bounded_so_that_every_cursor_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    // A string takes its bytes plus 3 in an entry (tag and terminator).
    let longest = |tail: &str| format!("{}{tail}", "x".repeat(3069 - tail.len()));
    c.put("old", json!({"k": longest("") + "y"}), Expect::Absent)
        .unwrap()
        .unwrap();
    c.create_index("by_old", spec(&["k"], false)).unwrap();
    let status = wait_built(&c, "by_old");
    assert_eq!(status.state, IndexState::Failed);
    assert!(
        status
            .failure
            .unwrap()
            .contains("document old puts more than INDEX_VALUES_BYTES_MAX")
    );
    c.delete("old", Expect::Any).unwrap().unwrap();

    c.create_index("by_k", spec(&["k"], false)).unwrap();
    wait_ready(&c, "by_k");
    for i in 0..3 {
        c.put(
            &format!("d{i}"),
            json!({"k": longest(&i.to_string())}),
            Expect::Absent,
        )
        .unwrap()
        .unwrap();
    }
    let refused = c
        .put("long", json!({"k": longest("") + "y"}), Expect::Absent)
        .unwrap_err();
    assert_eq!(refused.code(), "limit_exceeded");
    assert!(
        refused.to_string().contains("INDEX_VALUES_BYTES_MAX"),
        "{refused}"
    );
    let patched = c
        .patch(
            "d0",
            update(json!({"$set": {"k": longest("") + "y"}})),
            Expect::Any,
        )
        .unwrap_err();
    assert_eq!(patched.code(), "limit_exceeded");
    let in_tx = db
        .batch(
            vec![
                TxOp::Put {
                    collection: "c".into(),
                    id: "short".into(),
                    body: json!({"k": "short"}),
                    expect: Expect::Absent,
                },
                TxOp::Put {
                    collection: "c".into(),
                    id: "long".into(),
                    body: json!({"k": longest("") + "y"}),
                    expect: Expect::Absent,
                },
            ],
            None,
        )
        .unwrap_err();
    assert_eq!(in_tx.code(), "limit_exceeded");
    assert!(
        c.get("short").unwrap().is_none(),
        "nothing of the transaction was written"
    );

    for order in [Order::Asc, Order::Desc] {
        let mut query = Query {
            index: Some("by_k".into()),
            limit: 1,
            order,
            ..Query::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = c.query(&query).unwrap();
            ids.extend(page.docs.iter().map(|d| d.id.clone()));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        let mut expected = vec!["d0", "d1", "d2"];
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(ids, expected, "{order:?}");
    }
}

/// A store, or one of its snapshots, that counts the scans made through it.
struct CountingScans<R> {
    inner: R,
    scans: Arc<std::sync::atomic::AtomicUsize>,
}

impl<R, T> StorageRead for CountingScans<R>
where
    R: std::ops::Deref<Target = T> + Send + Sync,
    T: StorageRead + ?Sized,
{
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, truce::storage::StorageError> {
        self.inner.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<truce::storage::Entry>, truce::storage::StorageError> {
        self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.scan(space, start, end, direction, limit)
    }
}

impl truce::storage::Storage for CountingScans<Arc<MemoryStorage>> {
    fn apply(
        &self,
        batch: truce::storage::WriteBatch,
        durability: truce::Durability,
    ) -> Result<(), truce::storage::StorageError> {
        self.inner.apply(batch, durability)
    }

    fn snapshot(&self) -> Result<Box<dyn StorageRead>, truce::storage::StorageError> {
        Ok(Box::new(CountingScans {
            inner: self.inner.snapshot()?,
            scans: Arc::clone(&self.scans),
        }))
    }
}

/// An id-order page after many tombstones (deleted documents keep their key)
/// reads them in growing scans: a page of one after 3,000 of them takes a
/// few hundred scans at most, not 3,000 (one per tombstone, as before: 3 s for a page of
/// one after a million).
#[test]
fn a_page_after_many_tombstones_reads_them_in_growing_scans() {
    let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let storage = Arc::new(CountingScans {
        inner: Arc::new(MemoryStorage::new()),
        scans: Arc::clone(&scans),
    });
    let db = Db::open_with_storage(storage, truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    for chunk in 0..3 {
        let ops = (0..1000)
            .map(|i| TxOp::Put {
                collection: "c".into(),
                id: format!("d{:04}", chunk * 1000 + i),
                body: json!({}),
                expect: Expect::Absent,
            })
            .collect();
        db.batch(ops, None).unwrap().unwrap();
        let deletes = (0..1000)
            .map(|i| TxOp::Delete {
                collection: "c".into(),
                id: format!("d{:04}", chunk * 1000 + i),
                expect: Expect::Any,
            })
            .collect();
        db.batch(deletes, None).unwrap().unwrap();
    }
    c.put("live", json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    let before = scans.load(std::sync::atomic::Ordering::Relaxed);
    let page = c
        .query(&Query {
            limit: 1,
            ..Query::default()
        })
        .unwrap();
    let used = scans.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(ids(&page.docs), ["live"]);
    assert!(
        used < 300,
        "{used} scans for a page of one after 3,000 tombstones"
    );
}

/// Equal arrays and objects are one index value whatever form their numbers
/// take (`[1]` and `[1.0]`, `{"k": 1}` and `{"k": 1.0}`): a unique index
/// refuses the second, and an equality finds both. They were two keys, as
/// their JSON text. An index declared before the fix keeps its keys (its
/// entries hold them), so its entries are still found and removed.
#[test]
fn equal_arrays_and_objects_are_one_index_value() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    for (name, field, unique) in [("u", "v", true), ("by_w", "w", false), ("old", "x", false)] {
        c.create_index(name, spec(&[field], unique)).unwrap();
        wait_ready(&c, name);
    }
    assert_eq!(c.index_status("u").unwrap().key_format, truce::KeyFormat::V2);
    c.put("a", json!({"v": [1], "w": {"k": 1}}), Expect::Absent)
        .unwrap()
        .unwrap();
    let refused = c
        .put("b", json!({"v": [1.0]}), Expect::Absent)
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reason, ConflictReason::UniqueViolation);
    c.put("b", json!({"v": [2], "w": {"k": 1.0}}), Expect::Absent)
        .unwrap()
        .unwrap();
    let equal_to = |index: &str, value: Value| {
        let page = c
            .query(&Query {
                index: Some(index.into()),
                eq: vec![value],
                ..Query::default()
            })
            .unwrap();
        ids(&page.docs)
    };
    assert_eq!(equal_to("by_w", json!({"k": 1.0})), ["a", "b"]);
    drop(c);
    drop(db);

    // `old` as an index declared before key formats were kept: its stored
    // definition has none.
    let mut old = stored_definition(&storage, "old");
    old.as_object_mut().unwrap().remove("key_format").expect("kept");
    store_definition(&storage, "old", &old);
    let db = Db::open_with_storage(storage, truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    assert_eq!(c.index_status("old").unwrap().key_format, truce::KeyFormat::V1);
    for (id, x) in [("c", json!({"k": 1.0})), ("d", json!({"k": 1}))] {
        c.put(id, json!({ "x": x }), Expect::Absent).unwrap().unwrap();
    }
    let old_equal = ids(&c
        .query(&Query {
            index: Some("old".into()),
            eq: vec![json!({"k": 1.0})],
            ..Query::default()
        })
        .unwrap()
        .docs);
    assert_eq!(old_equal, ["c"], "its keys as they were written");
    let checked = || {
        let report = db.check(&mut |_| {}).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    };
    checked();
    for id in ["a", "b", "c", "d"] {
        c.delete(id, Expect::Any).unwrap().unwrap();
    }
    checked();
}
