//! Tombstone purge (`tombstones.keep_seconds`): old tombstones go, record and
//! change-log entry, and a feed position from before the last one purged is
//! refused rather than shown a history with holes.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use truce::{CollectionConfig, Db, Error, Expect, TxOp};

/// Tombstones kept `seconds`.
fn keep(seconds: u64) -> CollectionConfig {
    CollectionConfig::from_json(&json!({"tombstones": {"keep_seconds": seconds}})).unwrap()
}

/// Waits until `count` tombstones in all have been purged.
pub fn purged(db: &Db, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stats().tombstones_purged < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} tombstones purged",
            db.stats().tombstones_purged
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every change of `collection` (`None`: all) from 0, as (id, deleted).
fn feed(db: &Db, collection: Option<&str>) -> Vec<(String, bool)> {
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let page = db.changes(collection, since, 10_000, false).unwrap();
        if page.changes.is_empty() {
            return all;
        }
        all.extend(page.changes.iter().map(|c| (c.id.clone(), c.deleted)));
        since = page.last_seq;
    }
}

fn is_purged(result: truce::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::HistoryPurged { .. }))
}

/// A database whose collection `c` had `a` and `b` deleted, and both
/// tombstones purged; `d` is live. Returns the commit of the last delete.
pub fn with_purged_tombstones(db: &Db) -> u64 {
    let c = db.collection("c").unwrap();
    c.set_config(keep(1)).unwrap();
    for id in ["a", "b", "d"] {
        c.put(id, json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    }
    c.delete("a", Expect::Any).unwrap().unwrap();
    let last = c.delete("b", Expect::Any).unwrap().unwrap().doc.meta.seq;
    purged(db, 2);
    last
}

#[test]
fn old_tombstones_are_purged_and_a_feed_from_before_them_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let last_delete = with_purged_tombstones(&db);
    let c = db.collection("c").unwrap();

    // Gone from the feeds, read as absent as before, and the data checks clean.
    assert_eq!(feed(&db, Some("c")), vec![("d".to_string(), false)]);
    assert_eq!(feed(&db, None), vec![("d".to_string(), false)]);
    assert!(c.get("a").unwrap().is_none());
    let report = db.check(&mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.documents, 1);

    // A reader that had read up to before a purged delete could have missed
    // it: refused on every feed. From the last delete on, or from 0, whole.
    for since in [1, last_delete - 1] {
        assert!(
            is_purged(db.changes(Some("c"), since, 10, false)),
            "since {since}"
        );
        assert!(is_purged(db.changes(None, since, 10, false)), "since {since}");
        assert!(is_purged(db.subscribe(Some("c"), since, false).map(|_| ())));
        assert!(is_purged(db.changes_whole(Some("c"), since, 10, false)));
    }
    assert!(db.changes(Some("c"), last_delete, 10, false).is_ok());
    assert!(db.changes(None, last_delete, 10, false).is_ok());
    assert!(db.subscribe(Some("c"), 0, false).is_ok());
    // RxDB checkpoints are positions within a commit: the last one purged
    // is `(last_delete, "b")`.
    assert!(is_purged(db.changes_after("c", Some((1, "d")), 10)));
    assert!(is_purged(db.changes_after("c", Some((last_delete, "a")), 10)));
    assert!(db.changes_after("c", Some((last_delete, "b")), 10).is_ok());
    assert!(db.changes_after("c", None, 10).is_ok());
    // Another collection's feed has nothing purged.
    assert!(db.changes(Some("other"), 1, 10, false).is_ok());

    // A document written again over a purged tombstone starts a new history.
    let again = c.put("a", json!({"n": 2}), Expect::Absent).unwrap().unwrap();
    assert_eq!(again.doc.meta.rev.version, 1);
}

/// Live documents, young tombstones and the tombstones of collections
/// without the setting are kept.
#[test]
fn only_tombstones_older_than_the_setting_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let (short, long, none) = (
        db.collection("short").unwrap(),
        db.collection("long").unwrap(),
        db.collection("none").unwrap(),
    );
    short.set_config(keep(1)).unwrap();
    long.set_config(keep(3600)).unwrap();
    for c in [&short, &long, &none] {
        c.put("old", json!({}), Expect::Absent).unwrap().unwrap();
        c.put("gone", json!({}), Expect::Absent).unwrap().unwrap();
        c.delete("gone", Expect::Any).unwrap().unwrap();
    }
    // A live document written between two tombstones: the purge passes it.
    short.put("young", json!({}), Expect::Absent).unwrap().unwrap();
    short.put("late", json!({}), Expect::Absent).unwrap().unwrap();
    short.delete("late", Expect::Any).unwrap().unwrap();
    purged(&db, 2);
    // Two more maintenance passes: nothing else goes.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(db.stats().tombstones_purged, 2);
    let ids = |c: &str| -> Vec<(String, bool)> { feed(&db, Some(c)) };
    assert_eq!(
        ids("short"),
        vec![("old".to_string(), false), ("young".to_string(), false)]
    );
    for c in ["long", "none"] {
        assert_eq!(
            ids(c),
            vec![("old".to_string(), false), ("gone".to_string(), true)],
            "{c}"
        );
    }
}

/// More old tombstones than one pass purges: passes go on where the last
/// stopped, and a reopened database goes on after its stored horizon.
#[test]
fn the_purge_goes_on_in_passes_and_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let total = truce::limits::TOMBSTONE_PURGES_MAX + 200;
    let last_delete = {
        let db = crate::open_relaxed(dir.path());
        db.collection("c").unwrap().set_config(keep(1)).unwrap();
        let ops = |delete: bool| -> Vec<TxOp> {
            (0..total)
                .map(|i| {
                    let id = format!("{i:05}");
                    if delete {
                        TxOp::Delete {
                            collection: "c".into(),
                            id,
                            expect: Expect::Any,
                        }
                    } else {
                        TxOp::Put {
                            collection: "c".into(),
                            id,
                            body: json!({}),
                            expect: Expect::Any,
                        }
                    }
                })
                .collect()
        };
        for delete in [false, true] {
            for chunk in ops(delete).chunks(truce::limits::TX_OPS_MAX) {
                db.batch(chunk.to_vec(), None).unwrap().unwrap();
            }
        }
        let last = db.durable_seq();
        purged(&db, total as u64);
        last
    };
    let db = crate::open_relaxed(dir.path());
    assert!(feed(&db, Some("c")).is_empty());
    // The horizon was stored: the refusal outlives the process.
    assert!(is_purged(db.changes(Some("c"), last_delete - 1, 10, false)));
    assert!(is_purged(db.changes(None, last_delete - 1, 10, false)));
    // And the purge goes on after it, with tombstones written since.
    let c = db.collection("c").unwrap();
    c.put("new", json!({}), Expect::Absent).unwrap().unwrap();
    c.delete("new", Expect::Any).unwrap().unwrap();
    purged(&db, 1);
    assert!(feed(&db, Some("c")).is_empty());
}
