//! Conflict insights through the embedded API: a workload built to produce known
//! conflicts gives exactly the expected counts and the expected hot spots.

use std::time::Duration;

use serde_json::json;
use truce::engine::insights::Family;
use truce::{Db, Expect, IndexSpec, Origin, Query, Target, TxOp};

use crate::update;

fn labelled(db: &Db, family: Family, reason: &str, source: &str) -> u64 {
    db.stats()
        .labelled
        .iter()
        .filter(|l| l.0 == family && l.1 == reason && l.3 == source)
        .map(|l| l.4)
        .sum()
}

/// Document `id`'s hot spot in `report`.
fn hot_spot<'a>(report: &'a truce::InsightsReport, id: &str) -> &'a truce::engine::insights::HotSpot {
    report
        .hot_spots
        .iter()
        .find(|h| h.target == Target::Document(id.into()))
        .unwrap_or_else(|| panic!("{id} is not a hot spot: {report:#?}"))
}

fn put_from(
    db: &Db,
    origin: &Origin,
    id: &str,
    body: serde_json::Value,
    expect: Expect,
) -> truce::WriteResult {
    let op = TxOp::Put {
        collection: "c".into(),
        id: id.into(),
        body,
        expect,
    };
    db.submit_write_from(op, None, origin.clone())
        .unwrap()
        .wait()
        .unwrap()
}

#[test]
fn known_conflicts_give_exact_counts_and_the_expected_remedies() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let alice = Origin::source("alice");
    let bob = Origin::source("bob");

    // Two sources fight over one document with stale versions: 6 conflicts for
    // bob, whose writes differ from the current document in more than numbers.
    put_from(
        &db,
        &alice,
        "fight",
        json!({"owner": "alice", "v": 0}),
        Expect::Absent,
    )
    .unwrap();
    for round in 1..=6u64 {
        let stale = round;
        put_from(
            &db,
            &alice,
            "fight",
            json!({"owner": "alice", "v": round}),
            Expect::Version(stale),
        )
        .unwrap();
        put_from(
            &db,
            &bob,
            "fight",
            json!({"owner": "bob", "v": round}),
            Expect::Version(stale),
        )
        .unwrap_err();
    }

    // A counter written by read-modify-write: 4 conflicts whose writes change
    // only the number.
    put_from(&db, &alice, "counter", json!({"n": 0}), Expect::Absent).unwrap();
    for n in 1..=4u64 {
        put_from(&db, &alice, "counter", json!({"n": n}), Expect::Version(n)).unwrap();
        put_from(&db, &bob, "counter", json!({"n": n + 100}), Expect::Version(n)).unwrap_err();
    }

    // A duplicate heartbeat: 1 write, then 6 identical ones (no-ops).
    let beat = Origin::source("tab");
    for _ in 0..7 {
        let op = TxOp::Patch {
            collection: "c".into(),
            id: "beat".into(),
            update: update(json!({"$set": {"at": 1}, "$upsert": true})).into(),
            expect: Expect::Any,
        };
        db.submit_write_from(op, None, beat.clone())
            .unwrap()
            .wait()
            .unwrap()
            .unwrap();
    }

    // Blind overwrites by alternating sources: the first is a create, the next 3
    // each replace the other source's change.
    for (i, who) in [&alice, &bob, &alice, &bob].into_iter().enumerate() {
        put_from(&db, who, "shared", json!({"i": i}), Expect::Any).unwrap();
    }

    // Retries that end in a permanent failure: attempts 2/3 and 3/3 conflict.
    for attempt in 2..=3 {
        let origin = Origin::source("worker").attempt(attempt, Some(3));
        put_from(
            &db,
            &origin,
            "fight",
            json!({"owner": "worker"}),
            Expect::Version(1),
        )
        .unwrap_err();
    }

    assert_eq!(labelled(&db, Family::Conflicts, "version_mismatch", "bob"), 10);
    assert_eq!(labelled(&db, Family::Conflicts, "version_mismatch", "worker"), 2);
    assert_eq!(labelled(&db, Family::Conflicts, "version_mismatch", "alice"), 0);
    assert_eq!(labelled(&db, Family::Retries, "", "worker"), 2);
    assert_eq!(labelled(&db, Family::PermanentFailures, "", "worker"), 1);
    assert_eq!(labelled(&db, Family::Overwrites, "", "bob"), 2);
    assert_eq!(labelled(&db, Family::Overwrites, "", "alice"), 1);
    let stats = db.stats();
    assert_eq!(stats.noops, 6);
    assert_eq!(stats.skipped, 0);

    let report = db.insights(Duration::from_secs(300), 10).unwrap();
    let spot = |id: &str| hot_spot(&report, id);
    let fight = spot("fight");
    assert_eq!(fight.counts.conflicts[0], 8);
    assert_eq!(fight.counts.retries, 2);
    assert_eq!(fight.counts.permanent_failures, 1);
    assert_eq!(fight.remedy.code, "reduce_contention");
    assert_eq!(fight.sources[0], (Some("bob".to_string()), 6));
    assert_eq!(spot("counter").remedy.code, "use_update_operators");
    assert_eq!(spot("counter").counts.numbers_only, 4);
    assert_eq!(spot("beat").counts.noops, 6);
    assert_eq!(spot("beat").remedy.code, "deduplicate_writes");
    assert_eq!(spot("shared").counts.overwrites, 3);
    assert_eq!(spot("shared").remedy.code, "send_version");
    // Hottest first.
    assert_eq!(report.hot_spots[0].target, Target::Document("fight".into()));
}

#[test]
fn read_conflicts_on_a_range_suggest_narrowing_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let items = db.collection("items").unwrap();
    items
        .create_index(
            "by_kind",
            IndexSpec {
                fields: vec!["kind".into()],
                unique: false,
            },
        )
        .unwrap();
    crate::indexes::wait_ready(&items, "by_kind");
    for i in 0..3 {
        let mut tx = db.begin().unwrap();
        tx.set_origin(Origin::source("report"));
        let q = Query {
            index: Some("by_kind".into()),
            eq: vec![json!("a")],
            ..Query::default()
        };
        tx.query("items", &q).unwrap();
        items
            .put(&format!("x{i}"), json!({"kind": "a"}), Expect::Absent)
            .unwrap()
            .unwrap();
        tx.put("items", "summary", json!({"n": i}), Expect::Any).unwrap();
        assert!(tx.commit().unwrap().is_err());
    }
    assert_eq!(labelled(&db, Family::Conflicts, "read_conflict", "report"), 3);
    let report = db.insights(Duration::from_secs(60), 5).unwrap();
    let range = &report.hot_spots[0];
    assert_eq!(range.target, Target::Range("index by_kind range".into()));
    assert_eq!(range.counts.conflicts[5], 3);
    assert_eq!(range.remedy.code, "narrow_range");
}

#[test]
fn group_commits_and_the_queue_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open(dir.path());
    let c = db.collection("c").unwrap();
    for i in 0..10 {
        c.put(&format!("d{i}"), json!({"i": i}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.commits, 10);
    assert_eq!(stats.writes, 10);
    assert_eq!(stats.groups, 10);
    assert_eq!(stats.fsync_seconds.count, 10);
    assert!(stats.fsync_seconds.sum > 0.0);
    assert_eq!(
        stats.group_size.counts[0], 10,
        "each synchronous write is a group of one"
    );
    assert_eq!(stats.queue_depth, 0);
    assert!(db.insights(Duration::from_secs(0), 5).is_err());
    assert!(db.insights(Duration::from_secs(3601), 5).is_err());
    assert!(db.insights(Duration::from_secs(60), 0).is_err());
}

#[test]
fn the_committer_polls_between_prompt_writes_only_when_allowed() {
    // Back-to-back synchronous writes: each comes microseconds after the
    // previous answer, well inside a 1 ms window, so the committer polls for
    // them (engine/poll.rs) — unless polling is off.
    let polled = |micros: u64| {
        let db = Db::open_with_storage(
            std::sync::Arc::new(truce::storage::MemoryStorage::new()),
            truce::Options {
                commit_poll: Duration::from_micros(micros),
                ..truce::Options::default()
            },
        )
        .unwrap();
        let c = db.collection("c").unwrap();
        for i in 0..200 {
            c.put(&format!("d{i}"), json!({"i": i}), Expect::Absent)
                .unwrap()
                .unwrap();
        }
        db.stats().commit_poll_seconds
    };
    assert_eq!(polled(0), 0.0, "a zero window never polls");
    let on = polled(truce::limits::COMMIT_POLL_US_MAX);
    assert!(on > 0.0, "200 prompt writes and no polling at all");
    assert!(on < 1.0, "polled {on} s for 200 writes");
}

#[test]
fn concurrent_increments_show_a_contended_document_without_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let c = db.collection("c").unwrap();
                for _ in 0..200 {
                    c.patch(
                        "hot",
                        update(json!({"$inc": {"n": 1}, "$upsert": true})),
                        Expect::Any,
                    )
                    .unwrap()
                    .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let stats = db.stats();
    assert_eq!(stats.writes, 1600);
    assert!(stats.labelled.is_empty(), "no conflicts: {:?}", stats.labelled);
    // Two minutes: the run may cross into a new one.
    let report = db.insights(Duration::from_secs(120), 5).unwrap();
    let hot = &report.hot_spots[0];
    assert_eq!(hot.target, Target::Document("hot".into()));
    // Eight writers waiting on fsyncs share group commits.
    assert!(hot.counts.contended > 100, "{hot:?}");
    // Every group wrote the document; each change after a group's first is
    // contended, counted once whether a group has two or two hundred.
    assert_eq!(
        hot.counts.contended,
        stats.writes - stats.groups,
        "{hot:?} {stats:?}"
    );
    assert_eq!(hot.score, hot.counts.contended);
    assert_eq!(hot.counts.conflicts_total(), 0);
    assert_eq!(hot.remedy.code, "split_if_throughput_bound");
}

/// A hot spot names the sources with the most events: four callers that
/// conflicted once each took its four places for good, and one that then
/// conflicted fifty times was only "other sources". Equal scores come in a
/// fixed order (they swapped places between two reports of the same counts).
#[test]
fn a_hot_spot_names_its_busiest_sources_and_ties_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let stale = |db: &Db, source: &str, id: &str| {
        put_from(
            db,
            &Origin::source(source),
            id,
            json!({"x": source}),
            Expect::Version(9),
        )
        .unwrap_err();
    };
    put_from(&db, &Origin::default(), "d", json!({}), Expect::Absent).unwrap();
    for early in ["s1", "s2", "s3", "s4"] {
        stale(&db, early, "d");
    }
    for _ in 0..50 {
        stale(&db, "billing-worker", "d");
    }
    let report = db.insights(Duration::from_secs(60), 10).unwrap();
    let spot = hot_spot(&report, "d");
    // Named first, with its fifty and at most what it took over (s1's one).
    let (first, events) = spot.sources.first().cloned().expect("a source");
    assert_eq!(first.as_deref(), Some("billing-worker"), "{:?}", spot.sources);
    assert!(
        (50..=50 + spot.other_sources).contains(&events),
        "{events}, {:?}",
        spot.other_sources
    );
    let named: u64 = spot.sources.iter().map(|(_, n)| n).sum();
    assert_eq!(named, 54, "every event is counted once, under some source");

    // A steady source between one-off sources (a name per process, say),
    // beside three busier ones: started from its own count each time it came
    // back, it was the fewest again at the next one-off, and ended named
    // with 1 event of its 30.
    put_from(&db, &Origin::default(), "e", json!({}), Expect::Absent).unwrap();
    for busy in ["a", "b", "c"] {
        for _ in 0..40 {
            stale(&db, busy, "e");
        }
    }
    for round in 0..30 {
        stale(&db, &format!("one-off-{round}"), "e");
        stale(&db, "steady", "e");
    }
    let report = db.insights(Duration::from_secs(60), 10).unwrap();
    let spot = hot_spot(&report, "e");
    assert!(
        spot.sources
            .iter()
            .any(|(s, n)| s.as_deref() == Some("steady") && *n >= 30),
        "{:?}",
        spot.sources
    );

    for id in ["t3", "t1", "t2"] {
        put_from(&db, &Origin::default(), id, json!({}), Expect::Absent).unwrap();
        stale(&db, "tie", id);
    }
    let order = |db: &Db| {
        db.insights(Duration::from_secs(60), 10)
            .unwrap()
            .hot_spots
            .into_iter()
            .map(|h| h.target)
            .filter(|t| matches!(t, Target::Document(id) if id.starts_with('t')))
            .collect::<Vec<_>>()
    };
    let tied: Vec<Target> = ["t1", "t2", "t3"].map(|id| Target::Document(id.into())).into();
    for _ in 0..5 {
        assert_eq!(order(&db), tied);
    }
}

/// A request is one retry, and one permanent failure, however many of its
/// writes it has: a batch of five puts sent as attempt 2/5 counted five
/// retries, and one of three stale puts given up on (3/3) three permanent
/// failures. Each document's hot spot still shows the retry it was in.
#[test]
fn retries_and_permanent_failures_are_counted_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let puts = |expect: Expect| {
        (0..5)
            .map(|i| TxOp::Put {
                collection: "c".into(),
                id: format!("d{i}"),
                body: json!({"i": i}),
                expect,
            })
            .collect::<Vec<_>>()
    };
    let retried = Origin::source("batcher").attempt(2, Some(5));
    db.submit_batch_from(puts(Expect::Any), None, retried)
        .unwrap()
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(labelled(&db, Family::Retries, "", "batcher"), 1);
    let given_up = Origin::source("batcher").attempt(3, Some(3));
    let mut stale = puts(Expect::Version(9));
    stale.truncate(3);
    db.submit_batch_from(stale, None, given_up)
        .unwrap()
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(labelled(&db, Family::Retries, "", "batcher"), 2);
    assert_eq!(labelled(&db, Family::PermanentFailures, "", "batcher"), 1);
    assert_eq!(labelled(&db, Family::Conflicts, "version_mismatch", "batcher"), 3);
    // Refused inside a transaction (on what it reads): one retry too.
    let mut tx = db.begin().unwrap();
    tx.set_origin(Origin::source("batcher").attempt(2, Some(5)));
    for i in 0..3 {
        let id = format!("d{i}");
        tx.put("c", &id, json!({}), Expect::Any).unwrap();
        tx.put("c", &id, json!({}), Expect::Absent).unwrap();
    }
    assert!(tx.commit().unwrap().is_err());
    assert_eq!(labelled(&db, Family::Retries, "", "batcher"), 3);
    let report = db.insights(Duration::from_secs(300), 10).unwrap();
    let d4 = hot_spot(&report, "d4");
    assert_eq!(d4.counts.retries, 1, "each document shows the retry it was in");
}
