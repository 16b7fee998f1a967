//! Counter caches and TTL: exact at every commit (`in_commit`), converging
//! exactly once (`after_commit`, also across crashes), recount, backfill, expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use truce::storage::{MemoryStorage, Space, Storage, WriteBatch};
use truce::{CollectionConfig, Db, Durability, Expect, Options};

use crate::{open_relaxed, update};

fn config(mode: &str) -> CollectionConfig {
    CollectionConfig::from_json(&json!({"counters": [
        {"name": "confirmed", "group_by": "campaign_id", "where": {"status": "confirmed"},
         "target": {"c": "campaign_metrics", "field": "confirmed"}, "mode": mode},
        {"name": "unconfirmed", "group_by": "campaign_id", "where": {"status": {"$ne": "confirmed"}},
         "target": {"c": "campaign_metrics", "field": "unconfirmed"}, "mode": mode},
        {"name": "spend", "group_by": "campaign_id", "sum": "spent",
         "target": {"c": "campaign_metrics", "field": "spent"}, "mode": mode}]}))
    .unwrap()
}

/// Ground truth from the source documents: campaign → (confirmed, unconfirmed, spent).
fn truth(db: &Db) -> BTreeMap<String, (i64, i64, i64)> {
    let subscribers = db.collection("subscribers").unwrap();
    let mut out: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    let page = subscribers
        .query(&truce::Query {
            limit: 1000,
            ..truce::Query::default()
        })
        .unwrap();
    for doc in page.docs {
        let campaign = doc.body["campaign_id"].as_str().unwrap().to_string();
        let entry = out.entry(campaign).or_default();
        if doc.body["status"] == "confirmed" {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        entry.2 += doc.body["spent"].as_i64().unwrap_or(0);
    }
    out
}

fn targets(db: &Db) -> BTreeMap<String, (i64, i64, i64)> {
    let metrics = db.collection("campaign_metrics").unwrap();
    let page = metrics
        .query(&truce::Query {
            limit: 1000,
            ..truce::Query::default()
        })
        .unwrap();
    let n = |d: &truce::Document, f: &str| d.body.get(f).and_then(Value::as_i64).unwrap_or(0);
    page.docs
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                (n(d, "confirmed"), n(d, "unconfirmed"), n(d, "spent")),
            )
        })
        .filter(|(_, v)| *v != (0, 0, 0))
        .collect()
}

/// A database whose subscribers are counted in `mode`, after `steps` of the
/// workload, `after_each` called after each (its directory goes with the
/// first value).
fn counted_with(mode: &str, steps: usize, after_each: impl FnMut(&Db)) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    db.collection("subscribers")
        .unwrap()
        .set_config(config(mode))
        .unwrap();
    workload(&db, steps, after_each);
    (dir, db)
}

/// [`counted_with`], `in_commit`, nothing after each step.
fn counted(steps: usize) -> (tempfile::TempDir, Db) {
    counted_with("in_commit", steps, |_| {})
}

/// A deterministic mix of inserts, confirmations, moves between campaigns and deletes.
fn workload(db: &Db, steps: usize, mut after_each: impl FnMut(&Db)) {
    let subscribers = db.collection("subscribers").unwrap();
    for i in 0..steps {
        let id = format!("s{}", i % 23);
        let campaign = format!("c{}", i % 3);
        match i % 5 {
            0 | 1 => drop(subscribers.put(
                &id,
                json!({"campaign_id": campaign, "status": "pending", "spent": i}),
                Expect::Any,
            )),
            2 => drop(subscribers.patch(&id, update(json!({"$set": {"status": "confirmed"}})), Expect::Any)),
            3 => drop(subscribers.patch(
                &id,
                update(json!({"$set": {"campaign_id": "c9"}, "$inc": {"spent": 5}})),
                Expect::Any,
            )),
            _ => drop(subscribers.delete(&id, Expect::Any)),
        }
        after_each(db);
    }
}

fn wait_for_outbox(db: &Db) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.outbox_status().0 > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain: {:?}",
            db.outbox_status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn in_commit_counters_are_exact_at_every_commit() {
    let (_dir, db) = counted_with("in_commit", 150, |db| assert_eq!(targets(db), truth(db)));
    assert!(!truth(&db).is_empty());
}

#[test]
fn after_commit_counters_converge_and_coalesce() {
    let (_dir, db) = counted_with("after_commit", 300, |_| {});
    wait_for_outbox(&db);
    assert_eq!(targets(&db), truth(&db));
    // Coalescing: far fewer target revisions than source writes.
    let versions: u64 = db
        .collection("campaign_metrics")
        .unwrap()
        .query(&truce::Query::default())
        .unwrap()
        .docs
        .iter()
        .map(|d| d.version())
        .sum();
    assert!(versions < 300, "{versions} target writes for 300 source writes");
}

#[test]
fn after_commit_deltas_survive_crashes_exactly_once() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    db.collection("subscribers")
        .unwrap()
        .set_config(config("after_commit"))
        .unwrap();
    workload(&db, 200, |_| {});
    let expected = truth(&db);
    // Crash at whatever point the drain has reached, several times.
    let mut image = Arc::new(storage.crash_image());
    drop(db);
    for _ in 0..3 {
        let db = Db::open_with_storage(image.clone(), Options::default()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let next = Arc::new(image.crash_image());
        drop(db);
        image = next;
    }
    let db = Db::open_with_storage(image, Options::default()).unwrap();
    wait_for_outbox(&db);
    assert_eq!(truth(&db), expected, "sources survive");
    assert_eq!(targets(&db), expected, "every delta applied exactly once");
}

#[test]
fn recount_finds_and_fixes_a_corrupted_counter_and_backfills_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    workload(&db, 100, |_| {});
    // Defined on a collection that already has documents: backfilled.
    let reports = db
        .collection("subscribers")
        .unwrap()
        .set_config(config("in_commit"))
        .unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(targets(&db), truth(&db));
    let metrics = db.collection("campaign_metrics").unwrap();
    let victim = truth(&db).keys().next().unwrap().clone();
    metrics
        .patch(&victim, update(json!({"$inc": {"confirmed": 40}})), Expect::Any)
        .unwrap()
        .unwrap();
    assert_ne!(targets(&db), truth(&db));
    let report = db
        .collection("subscribers")
        .unwrap()
        .recount("confirmed")
        .unwrap();
    assert_eq!(report.fixed.len(), 1, "{report:?}");
    assert_eq!(report.fixed[0].group, victim);
    assert_eq!(targets(&db), truth(&db));
    assert!(
        db.collection("subscribers")
            .unwrap()
            .recount("confirmed")
            .unwrap()
            .fixed
            .is_empty()
    );
    assert_eq!(
        db.collection("subscribers")
            .unwrap()
            .recount("nope")
            .unwrap_err()
            .code(),
        "not_found"
    );
}

/// A crash between a counter's declaration and its backfill: the declaration
/// stored it as waiting for one, and the next open runs it.
#[test]
fn a_backfill_a_crash_interrupted_runs_on_the_next_open() {
    let storage = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    workload(&db, 100, |_| {});
    let expected = truth(&db);
    drop(db);
    // What the declaration's commit stores, before its backfill runs: the
    // configuration, and each counter's wait for its backfill.
    let declared = config("in_commit");
    let mut batch = WriteBatch::new();
    batch.put(
        Space::Meta,
        truce::engine::config::meta_key("subscribers"),
        truce::record::encode_json(&declared.to_json()),
    );
    for (generation, counter) in declared.counters.iter().enumerate() {
        batch.put(
            Space::Meta,
            truce::engine::config::backfill_key("subscribers", &counter.name),
            truce::record::encode_counter(generation as u64 + 1),
        );
    }
    storage.apply(batch, Durability::Immediate).unwrap();
    let stored = truce::engine::check(&*storage.snapshot().unwrap(), &mut |_| {}).unwrap();
    let kinds: Vec<&str> = stored.counters_skipped.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["backfill_pending"; 3], "{:?}", stored.counters_skipped);

    let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
    let subscribers = db.collection("subscribers").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !subscribers.config().backfilling.is_empty() {
        assert!(Instant::now() < deadline, "the backfill did not resume");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(targets(&db), expected);
    // Declaring it again, as a client retrying its PUT does, changes nothing.
    assert!(subscribers.set_config(config("in_commit")).unwrap().is_empty());
    drop(db);
    let db = Db::open_with_storage(storage, Options::default()).unwrap();
    assert!(db.check(&mut |_| {}).unwrap().is_clean());
    assert_eq!(targets(&db), expected);
}

/// A counter defined otherwise under the same name counts by its new
/// definition from its backfill on, not by the old one's counts plus the new
/// one's deltas.
#[test]
fn a_counter_defined_anew_is_backfilled() {
    let (_dir, db) = counted(100);
    let subscribers = db.collection("subscribers").unwrap();
    let mut changed = config("in_commit").to_json();
    changed["counters"][0]["where"] = json!({"status": "pending"});
    let reports = subscribers
        .set_config(CollectionConfig::from_json(&changed).unwrap())
        .unwrap();
    assert_eq!(reports.len(), 1, "only the changed counter: {reports:?}");
    assert_eq!(reports[0].0, "confirmed");
    let (pending, _, _) = truth(&db).values().fold((0, 0, 0), |a, t| (a.0 + t.1, 0, 0));
    let held: i64 = targets(&db).values().map(|t| t.0).sum();
    assert_eq!(held, pending, "`confirmed` now counts the pending ones");
}

/// Recounts at once would each add the same difference; they run one at a time.
#[test]
fn recounts_at_once_fix_a_counter_once() {
    let (_dir, db) = counted(100);
    let subscribers = db.collection("subscribers").unwrap();
    let victim = truth(&db).keys().next().unwrap().clone();
    let metrics = db.collection("campaign_metrics").unwrap();
    for round in 0..5 {
        metrics
            .patch(&victim, update(json!({"$inc": {"spent": 1000}})), Expect::Any)
            .unwrap()
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let subscribers = subscribers.clone();
                std::thread::spawn(move || subscribers.recount("spend").unwrap())
            })
            .collect();
        let fixed: usize = threads.into_iter().map(|t| t.join().unwrap().fixed.len()).sum();
        assert_eq!(
            fixed, 1,
            "round {round}: one recount fixes it, the others find it right"
        );
        assert_eq!(targets(&db), truth(&db), "round {round}");
    }
}

/// A target field that someone set to a non-number cannot be fixed by an
/// increment: the recount reports it as unfixable and writes nothing (so it
/// takes no sequence number), and the check names it as such.
#[test]
fn a_target_that_is_not_a_number_is_reported_not_fixed() {
    let (_dir, db) = counted(30);
    let subscribers = db.collection("subscribers").unwrap();
    let victim = truth(&db)
        .into_iter()
        .find(|(_, (_, _, spent))| *spent > 0)
        .expect("a campaign that spent")
        .0;
    db.collection("campaign_metrics")
        .unwrap()
        .patch(&victim, update(json!({"$set": {"spent": "oops"}})), Expect::Any)
        .unwrap()
        .unwrap();
    let before = db.durable_seq();
    let report = subscribers.recount("spend").unwrap();
    assert!(report.fixed.is_empty(), "a fix it could not make: {report:?}");
    assert_eq!(report.unfixable, [(victim.clone(), json!("oops"))]);
    assert_eq!(report.seq, before, "{report:?}");
    let found = db.check(&mut |_| {}).unwrap();
    let kinds: Vec<&str> = found.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["counter_target_not_a_number"], "{:?}", found.problems);
    assert!(found.problems[0].detail.contains("put a number back"));
    let next = subscribers
        .put(
            "new",
            json!({"campaign_id": "c1", "status": "pending"}),
            Expect::Absent,
        )
        .unwrap()
        .unwrap();
    assert_eq!(next.doc.meta.seq, before + 1);
}

#[test]
fn ttl_hides_expired_documents_and_sweeps_them_into_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let sessions = db.collection("sessions").unwrap();
    let cfg = CollectionConfig::from_json(&json!({"ttl": {"field": "lastSeen", "seconds": 1}})).unwrap();
    sessions.set_config(cfg).unwrap();
    let beat = || update(json!({"$currentDate": {"lastSeen": true}, "$upsert": true}));
    sessions.patch("old", beat(), Expect::Any).unwrap().unwrap();
    sessions
        .put("forever", json!({"note": "no lastSeen field"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let since = db.durable_seq();
    std::thread::sleep(Duration::from_millis(700));
    sessions.patch("fresh", beat(), Expect::Any).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // "old" is past its TTL: reads no longer show it, swept or not.
    assert!(sessions.get("old").unwrap().is_none());
    assert!(sessions.get("fresh").unwrap().is_some());
    assert!(sessions.get("forever").unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sessions.get_stored("old").unwrap().unwrap().is_deleted() {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not delete the expired session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let feed = db.changes(Some("sessions"), since, 100, false).unwrap();
    assert!(
        feed.changes.iter().any(|c| c.id == "old" && c.deleted),
        "a normal change event"
    );
    assert_eq!(sessions.config().ttl.unwrap().seconds, 1);
}

#[test]
fn writers_see_an_expired_document_as_gone_like_readers_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("x").unwrap();
    c.set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 1}})).unwrap())
        .unwrap();
    let long_ago = truce_now_ms() - 5000;
    c.put("a", json!({"t": long_ago, "n": 1}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert!(c.get("a").unwrap().is_none(), "hidden from readers");
    let again = c
        .put("a", json!({"t": truce_now_ms(), "n": 2}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert!(again.created(), "created, not already_exists");
    assert!(
        again.doc.version() >= 2,
        "continues the version history (the sweeper may have left a tombstone)"
    );
    let missing = c
        .patch("b", update(json!({"$inc": {"n": 1}})), Expect::Any)
        .unwrap();
    assert!(missing.is_err());
}

/// A TTL field holding a time in seconds (written by mistake for ms) never
/// expires its document, nor is it swept: declared over a collection of
/// them, the TTL took every document at once, for good. Times in ms, `0`
/// included, expire as before.
#[test]
fn a_time_in_seconds_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("secs").unwrap();
    let now_s = truce_now_ms() / 1000;
    for (id, t) in [
        ("s0", now_s - 86_400),
        ("s1", 1_000_000_000),
        ("s2", 9_999_999_999),
    ] {
        c.put(id, json!({ "t": t }), Expect::Absent).unwrap().unwrap();
    }
    for (id, t) in [("m0", 0), ("m1", 10_000_000_000), ("m2", truce_now_ms() - 5000)] {
        c.put(id, json!({ "t": t }), Expect::Absent).unwrap().unwrap();
    }
    c.set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 1}})).unwrap())
        .unwrap();
    for id in ["m0", "m1", "m2"] {
        assert!(c.get(id).unwrap().is_none(), "{id} expired");
    }
    // Past several sweeps (one every 50 ms): still there.
    std::thread::sleep(Duration::from_millis(300));
    for id in ["s0", "s1", "s2"] {
        assert!(c.get(id).unwrap().is_some(), "{id} is not taken for 1970");
        assert!(
            c.get_stored(id).unwrap().is_some_and(|d| !d.is_deleted()),
            "{id} not swept"
        );
    }
}

/// A unique index's value held by a document past its TTL is free: the
/// document is gone for writers, and a conflict never shows it.
#[test]
fn a_unique_value_held_by_an_expired_document_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let c = db.collection("x").unwrap();
    let long_ago = truce_now_ms() - 5000;
    // Enough expired documents before it in id order that the sweeper's
    // first steps (500 deletes each, 50 ms apart) do not reach the holder.
    for batch in 0..6 {
        let ops = (0..1000)
            .map(|i| truce::TxOp::Put {
                collection: "x".into(),
                id: format!("a{:04}", batch * 1000 + i),
                body: json!({"t": long_ago}),
                expect: Expect::Absent,
            })
            .collect();
        db.batch(ops, None).unwrap().unwrap();
    }
    c.put("zz", json!({"t": long_ago, "email": "v@x"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let unique = truce::IndexSpec {
        fields: vec!["email".into()],
        unique: true,
    };
    c.create_index("by_email", unique).unwrap();
    crate::indexes::wait_ready(&c, "by_email");
    c.set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 1}})).unwrap())
        .unwrap();
    assert!(c.get("zz").unwrap().is_none(), "hidden from readers");
    let taken = c
        .put(
            "new",
            json!({"t": truce_now_ms(), "email": "v@x"}),
            Expect::Absent,
        )
        .unwrap();
    assert!(taken.is_ok(), "refused for an expired holder: {taken:?}");
    assert!(
        c.get_stored("zz").unwrap().is_some_and(|d| !d.is_deleted()),
        "the holder was not swept yet: the test proves nothing"
    );
    let refused = c
        .put(
            "other",
            json!({"t": truce_now_ms(), "email": "v@x"}),
            Expect::Absent,
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reason, truce::ConflictReason::UniqueViolation);
    assert_eq!(
        refused.current().unwrap().map(|d| d.id.clone()),
        Some("new".to_string())
    );
    // Counted as reads see them (CouchDB's `doc_count`): swept or not, the
    // expired ones are not live.
    assert_eq!(c.count().unwrap(), (1, 6001));
}

/// The `orders` collection, its `amt` summed by `shop` into `shops/{shop}.total`.
fn summed_orders(db: &Db) -> truce::Collection {
    let orders = db.collection("orders").unwrap();
    let config = json!({"counters": [{"name": "total", "group_by": "shop", "sum": "amt",
                                      "target": {"c": "shops", "field": "total"}}]});
    orders
        .set_config(CollectionConfig::from_json(&config).unwrap())
        .unwrap();
    orders
}

/// A correction the committer cannot apply (its target would pass the
/// document size limit) is reported unfixable by the recount, not fixed.
#[test]
fn a_correction_that_cannot_be_applied_is_not_reported_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let orders = summed_orders(&db);
    // The target, written by hand just under the size limit: the counter's
    // field does not fit in it.
    let blob = "x".repeat(truce::limits::DOC_SIZE_BYTES_MAX - 16);
    db.collection("shops")
        .unwrap()
        .put("s", json!({"blob": blob}), Expect::Any)
        .unwrap()
        .unwrap();
    orders
        .put("o1", json!({"shop": "s", "amt": 5}), Expect::Absent)
        .unwrap()
        .unwrap();
    let shop = db.collection("shops").unwrap().get("s").unwrap().unwrap();
    assert!(shop.body.get("total").is_none(), "the increment did not fit");
    let report = orders.recount("total").unwrap();
    assert!(report.fixed.is_empty(), "{report:?}");
    assert_eq!(report.unfixable.len(), 1, "{report:?}");
    assert_eq!(report.unfixable[0].0, "s");
}

/// An integer sum past i64 goes on as a float (a JSON number), as `$inc`
/// would not: the counter used to stop there, its increments dropped, and
/// a recount could not see it.
#[test]
fn a_sum_past_i64_goes_on_as_a_float() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let orders = summed_orders(&db);
    let big = 9_000_000_000_000_000_000_i64;
    for id in ["o1", "o2", "o3"] {
        orders
            .put(id, json!({"shop": "s", "amt": big}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let total = || {
        db.collection("shops").unwrap().get("s").unwrap().unwrap().body["total"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(total(), 3.0 * big as f64);
    assert!(orders.recount("total").unwrap().fixed.is_empty());
    orders.delete("o1", Expect::Any).unwrap().unwrap();
    orders.delete("o2", Expect::Any).unwrap().unwrap();
    assert_eq!(total(), big as f64);
    assert!(orders.recount("total").unwrap().fixed.is_empty());
}

/// A float sum past the largest number JSON holds is not stored (it was
/// written as 0, and a check and a recount took 0 for it): the target
/// keeps its last sum, and a recount reports the group unfixable.
#[test]
fn a_float_sum_past_the_largest_number_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let orders = summed_orders(&db);
    for id in ["o1", "o2"] {
        orders
            .put(id, json!({"shop": "s", "amt": 1e308}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let shop = db.collection("shops").unwrap().get("s").unwrap().unwrap();
    assert_eq!(shop.body["total"], json!(1e308));
    let report = orders.recount("total").unwrap();
    assert!(report.fixed.is_empty(), "{:?}", report.fixed);
    assert_eq!(report.unfixable, [("s".to_string(), json!(1e308))]);
    // Back within reach, the next write's sum is stored again.
    orders.delete("o2", Expect::Any).unwrap().unwrap();
    let report = orders.recount("total").unwrap();
    assert!(
        report.unfixable.is_empty() && report.fixed.len() == 1,
        "{report:?}"
    );
}

/// Fractional sums differ by the order they were added in — the target in
/// commit order, a recount in id order — which is rounding, not damage: the
/// check and a recount let it be.
#[test]
fn float_sums_within_rounding_are_the_same_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let orders = summed_orders(&db);
    for (i, amt) in [0.1, 0.2, 0.3, 0.7, 1.1, 0.6].iter().enumerate() {
        orders
            .put(&format!("o{i}"), json!({"shop": "a", "amt": amt}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    orders
        .patch("o0", update(json!({"$set": {"shop": "b"}})), Expect::Any)
        .unwrap()
        .unwrap();
    for id in ["o1", "o2", "o3", "o5"] {
        orders.delete(id, Expect::Any).unwrap().unwrap();
    }
    let held = db.collection("shops").unwrap().get("a").unwrap().unwrap().body["total"]
        .as_f64()
        .unwrap();
    assert_ne!(held, 1.1, "no rounding left: the test proves nothing");
    assert!((held - 1.1).abs() < 1e-12);
    let report = db.check(&mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(orders.recount("total").unwrap().fixed.is_empty());
}

/// A unique index built over a value held both by a document past its TTL
/// and by a live one (which took it, as writers may) is ready, not failed:
/// the backfill's uniqueness passes over the expired holder as writers' does.
/// The sweeper deletes the expired one within a tick or two; an attempt where
/// it got there before the index was built proves nothing, and is tried again.
#[test]
fn a_unique_index_built_over_an_expired_holder_is_ready() {
    for attempt in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let db = open_relaxed(dir.path());
        let c = db.collection("x").unwrap();
        c.put(
            "old",
            json!({"t": truce_now_ms() - 5000, "email": "v@x"}),
            Expect::Absent,
        )
        .unwrap()
        .unwrap();
        c.set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 1}})).unwrap())
            .unwrap();
        c.put(
            "new",
            json!({"t": truce_now_ms(), "email": "v@x"}),
            Expect::Absent,
        )
        .unwrap()
        .unwrap();
        let unique = truce::IndexSpec {
            fields: vec!["email".into()],
            unique: true,
        };
        c.create_index("by_email", unique).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let state = loop {
            let state = c.index_status("by_email").unwrap().state;
            if state != truce::IndexState::Building || Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if c.get_stored("old").unwrap().is_some_and(|d| !d.is_deleted()) {
            assert_eq!(state, truce::IndexState::Ready, "attempt {attempt}");
            return;
        }
    }
    panic!("the sweeper deleted the expired holder before every build: nothing proved");
}

/// A counter whose `where` uses `$ago` is refused: a document counted by
/// how old it was when written is judged by how old it is when deleted, and
/// one that stopped matching since was never taken out (the count stayed
/// at 1 with no document left).
#[test]
fn a_time_relative_counter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    for filter in [
        json!({"t": {"$gt": {"$ago": 300}}}),
        json!({"$or": [{"a": 1}, {"t": {"$lt": {"$ago": 5}}}]}),
    ] {
        let config = CollectionConfig::from_json(&json!({"counters": [{"name": "recent", "group_by": "g",
            "where": filter, "target": {"c": "totals", "field": "n"}}]}))
        .unwrap();
        let e = db.collection("src").unwrap().set_config(config).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("$ago"), "{e}");
    }
    // `$ago` as a plain value is a string, not a time.
    let config = CollectionConfig::from_json(&json!({"counters": [{"name": "tagged", "group_by": "g",
        "where": {"tag": "$ago"}, "target": {"c": "totals", "field": "n"}}]}))
    .unwrap();
    db.collection("src").unwrap().set_config(config).unwrap();
}

/// Counters that would not count alone are refused: two in one target field
/// (each recount would undo the other), and chains (counters do not
/// cascade, so the chained one would miss every increment).
#[test]
fn counters_that_would_not_count_alone_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let counter = |name: &str, target: &str, field: &str| {
        CollectionConfig::from_json(&json!({"counters": [{"name": name, "group_by": "g",
            "target": {"c": target, "field": field}}]}))
        .unwrap()
    };
    let two = |a: (&str, &str, &str), b: (&str, &str, &str)| {
        let first = counter(a.0, a.1, a.2).counters.remove(0);
        let mut config = counter(b.0, b.1, b.2);
        config.counters.insert(0, first);
        config
    };
    let refused = |collection: &str, config: CollectionConfig, needle: &str| {
        let e = db.collection(collection).unwrap().set_config(config).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains(needle), "{e}");
    };
    db.collection("a")
        .unwrap()
        .set_config(counter("n", "t", "n"))
        .unwrap();
    // Another collection's counter in the same field, and another of the same collection.
    refused("b", counter("m", "t", "n"), "target field n too");
    refused("a", two(("n", "t", "n"), ("m", "t", "n")), "target field n too");
    // A field that holds the other, or is held by it: `x` and `x.y` cannot
    // both be numbers, and each increment of the document was refused whole.
    refused("a", two(("n", "t", "n"), ("m", "t", "n.deep")), "holds it");
    refused("b", counter("m", "t", "n.deep"), "holds it");
    db.collection("b")
        .unwrap()
        .set_config(counter("m", "t", "nn"))
        .unwrap();
    db.collection("b")
        .unwrap()
        .set_config(CollectionConfig::default())
        .unwrap();
    // The same target document, another field: fine.
    db.collection("b")
        .unwrap()
        .set_config(counter("m", "t", "m"))
        .unwrap();
    // Chains, both ways: into a collection that has counters, and counting
    // a collection counters write into.
    refused("c", counter("x", "a", "x"), "which counter");
    refused("t", counter("y", "u", "y"), "counting its documents");
    // Declaring what is already there again is fine.
    db.collection("a")
        .unwrap()
        .set_config(counter("n", "t", "n"))
        .unwrap();
}

/// A counter may not count into its target collection's TTL field, nor a
/// TTL be declared on a field a counter counts into, in either order: each
/// count was read as a time in ms, so its document expired at once, was
/// swept, and every recount's fix was swept again.
#[test]
fn a_counter_and_a_ttl_never_share_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let config = |json: Value| CollectionConfig::from_json(&json).unwrap();
    let counter = |target: &str, field: &str| {
        config(json!({"counters": [{"name": "x", "group_by": "g", "target": {"c": target, "field": field}}]}))
    };
    let ttl = |field: &str| config(json!({"ttl": {"field": field, "seconds": 60}}));
    let refused = |collection: &str, config: CollectionConfig, needle: &str| {
        let e = db.collection(collection).unwrap().set_config(config).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains(needle), "{e}");
    };
    // The TTL first, then counters into its field, a field it holds, a
    // field that holds it.
    db.collection("tt").unwrap().set_config(ttl("stats.n")).unwrap();
    refused("src", counter("tt", "stats.n"), "TTL field stats.n");
    refused("src", counter("tt", "stats"), "TTL field");
    refused("src", counter("tt", "stats.n.deep"), "TTL field");
    db.collection("src")
        .unwrap()
        .set_config(counter("tt", "count"))
        .unwrap();
    // The counter first, then a TTL on its field.
    db.collection("src2")
        .unwrap()
        .set_config(counter("tt2", "seen"))
        .unwrap();
    refused("tt2", ttl("seen"), "counter src2/x's target field seen");
    refused("tt2", ttl("seen.at"), "counter src2/x");
    db.collection("tt2").unwrap().set_config(ttl("at")).unwrap();
    // Declaring what is already there again is fine.
    db.collection("tt").unwrap().set_config(ttl("stats.n")).unwrap();
    db.collection("src")
        .unwrap()
        .set_config(counter("tt", "count"))
        .unwrap();
}

fn truce_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A transaction that writes a counter's target document beside a document
/// the counter counts is answered with the target as the commit left it: the
/// op's own state was never stored (the increment went on top in the same
/// commit), and a client sending its version next met a conflict.
#[test]
fn a_target_written_beside_what_it_counts_is_answered_as_stored() {
    let (_dir, db) = counted(0);
    let metrics = db.collection("campaign_metrics").unwrap();
    metrics
        .put("c1", json!({"confirmed": 0, "label": "x"}), Expect::Absent)
        .unwrap()
        .unwrap();
    // A put that writes, then one of the content it finds (a no-op until
    // the counter writes the document).
    for (n, (version, after)) in [(1, 3), (3, 4)].into_iter().enumerate() {
        let ops = vec![
            truce::TxOp::Put {
                collection: "subscribers".into(),
                id: format!("s{n}"),
                body: json!({"campaign_id": "c1", "status": "confirmed"}),
                expect: Expect::Absent,
            },
            truce::TxOp::Put {
                collection: "campaign_metrics".into(),
                id: "c1".into(),
                body: json!({"confirmed": n, "label": "y"}),
                expect: Expect::Version(version),
            },
        ];
        let committed = db.batch(ops, None).unwrap().unwrap();
        let answer = committed.results[1].as_ref().unwrap();
        let answered = &answer.doc;
        let stored = metrics.get("c1").unwrap().unwrap();
        assert_eq!(
            (answered.version(), &answered.body),
            (stored.version(), &stored.body),
            "the answer is the stored document"
        );
        assert_eq!(
            (stored.body["confirmed"].as_i64(), stored.body["label"].as_str()),
            (Some(n as i64 + 1), Some("y"))
        );
        // The bytes an answer is written from are that document's too.
        let canonical = truce::doc::canonical_bytes(&stored.body);
        assert_eq!(answer.canonical.as_deref(), Some(&canonical), "put {n}");
        // Its version is the one the next write may name.
        assert_eq!(answered.version(), after);
    }
    let next = metrics.put("c1", json!({"confirmed": 2, "label": "z"}), Expect::Version(4));
    assert!(next.unwrap().is_ok());
}

/// A target field that holds something other than a number, or sits below
/// a value that is no object, drops its own increments, not those of the
/// other counters writing into the same target document (each increment of
/// the document was refused whole); a recount says it cannot fix it.
#[test]
fn a_broken_target_field_stops_only_its_own_counter() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let config = CollectionConfig::from_json(&json!({"counters": [
        {"name": "a", "group_by": "g", "target": {"c": "m", "field": "a"}},
        {"name": "b", "group_by": "g", "target": {"c": "m", "field": "b"}},
        {"name": "c", "group_by": "g", "target": {"c": "m", "field": "stats.n"}}]}))
    .unwrap();
    let src = db.collection("src").unwrap();
    src.set_config(config).unwrap();
    src.put("d1", json!({"g": "G"}), Expect::Absent).unwrap().unwrap();
    let m = db.collection("m").unwrap();
    m.patch(
        "G",
        update(json!({"$set": {"b": "oops", "stats": "oops"}})),
        Expect::Any,
    )
    .unwrap()
    .unwrap();
    for id in ["d2", "d3"] {
        src.put(id, json!({"g": "G"}), Expect::Absent).unwrap().unwrap();
    }
    let target = m.get("G").unwrap().unwrap();
    assert_eq!(
        (&target.body["a"], &target.body["b"], &target.body["stats"]),
        (&json!(3), &json!("oops"), &json!("oops"))
    );
    assert!(src.recount("a").unwrap().fixed.is_empty());
    for counter in ["b", "c"] {
        let report = src.recount(counter).unwrap();
        assert!(report.fixed.is_empty(), "{counter}: {:?}", report.fixed);
        assert_eq!(report.unfixable, [("G".to_string(), json!("oops"))], "{counter}");
    }
}

/// Counter increments are not checked against unique indexes (two target
/// documents could come to hold one count, in an index that says it is
/// unique), so a counter into a field a unique index covers is refused, in
/// either order of declaration.
#[test]
fn a_counter_and_a_unique_index_over_its_target_field_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let counter = |field: &str| {
        CollectionConfig::from_json(&json!({"counters": [{"name": "n", "group_by": "g",
            "target": {"c": "t", "field": field}}]}))
        .unwrap()
    };
    let spec = |field: &str, unique: bool| truce::IndexSpec {
        fields: vec![field.into()],
        unique,
    };
    let t = db.collection("t").unwrap();
    t.create_index("by_n", spec("n", true)).unwrap();
    t.create_index("by_m", spec("m", false)).unwrap();
    let src = db.collection("src").unwrap();
    let e = src.set_config(counter("n")).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    assert!(e.to_string().contains("unique index by_n"), "{e}");
    // A field no unique index covers is fine; then a unique index over it is
    // refused, and one over another field is not.
    src.set_config(counter("m")).unwrap();
    let e = t.create_index("by_m_unique", spec("m", true)).unwrap_err();
    assert_eq!(e.code(), "invalid_index", "{e}");
    assert!(e.to_string().contains("src/n"), "{e}");
    t.create_index("by_other", spec("other", true)).unwrap();
}

/// A counter's `where` runs on every write of its collection: a write pays
/// for it with its own filters (`FILTER_STEPS_MAX`), so a document too large
/// for the collection's counters is refused whole instead of holding every
/// writer for seconds (an audit's 16 counters of 255 nodes on a 140,000-number
/// array took 2-6 s a write). Removing a stored document's contribution is not
/// charged in a write of one document: such a document stays deletable.
#[test]
fn counter_filters_are_charged_to_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(dir.path());
    let src = db.collection("src").unwrap();
    // Stored before the counter exists (its backfill is the server's work).
    let big: Vec<i64> = (0..50_000).collect();
    src.put("old", json!({"g": "x", "a": big}), Expect::Absent)
        .unwrap()
        .unwrap();
    // 99 equality tests over the array (none holds), then one that does.
    let mut clauses: Vec<Value> = (1..=99).map(|k| json!({"a": -k})).collect();
    clauses.push(json!({"g": "x"}));
    let config = json!({"counters": [{"name": "n", "group_by": "g", "where": {"$or": clauses},
                                      "target": {"c": "t", "field": "n"}}]});
    src.set_config(CollectionConfig::from_json(&config).unwrap())
        .unwrap();
    // 99 equality tests over 50,000 values: 4,950,000 steps.
    let refused = src.put("new", json!({"g": "x", "a": big}), Expect::Absent);
    match refused {
        Err(truce::Error::LimitExceeded { what, .. }) => assert_eq!(what, "FILTER_STEPS_MAX"),
        other => panic!("expected FILTER_STEPS_MAX, got {:?}", other.map(|_| ())),
    }
    assert!(src.get("new").unwrap().is_none());
    // A smaller one is written and counted.
    let small: Vec<i64> = (0..1_000).collect();
    src.put("small", json!({"g": "x", "a": small}), Expect::Absent)
        .unwrap()
        .unwrap();
    let counted = db.collection("t").unwrap().get("x").unwrap().unwrap();
    assert_eq!(counted.body["n"], 2, "{:?}", counted.body);
    // In a transaction of several ops, taking it out of its count is
    // charged too: a thousand such deletes would hold the committer.
    let ops = vec![
        truce::TxOp::Delete {
            collection: "src".into(),
            id: "old".into(),
            expect: Expect::Any,
        },
        truce::TxOp::Delete {
            collection: "src".into(),
            id: "small".into(),
            expect: Expect::Any,
        },
    ];
    match db.batch(ops, None) {
        Err(truce::Error::LimitExceeded { what, .. }) => assert_eq!(what, "FILTER_STEPS_MAX"),
        other => panic!("expected FILTER_STEPS_MAX, got {:?}", other.map(|_| ())),
    }
    assert!(src.get("old").unwrap().is_some());
    // On its own, the old one goes, and its count with it.
    src.delete("old", Expect::Any).unwrap().unwrap();
    let counted = db.collection("t").unwrap().get("x").unwrap().unwrap();
    assert_eq!(counted.body["n"], 1, "{:?}", counted.body);
}
