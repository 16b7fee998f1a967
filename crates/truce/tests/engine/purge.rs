//! Tombstone purge (`tombstones.keep_seconds`): old tombstones go, record and
//! change-log entry, and a feed reader that could have missed one of their
//! deletes is refused rather than shown a history with holes, while readers
//! from the start never are.

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

/// A reader that has read one change of collection `c` (`None`: of every
/// collection), before the deletes of `with_purged_tombstones`.
pub struct Reader {
    collection: Option<&'static str>,
    since: u64,
    from: Option<u64>,
}

impl Reader {
    fn start(db: &Db, collection: Option<&'static str>) -> Reader {
        let page = db.changes(collection, 0, 1, false).unwrap();
        assert_eq!(page.changes.len(), 1);
        assert!(page.from.is_some(), "a read from 0 says where its history began");
        Reader {
            collection,
            since: page.last_seq,
            from: page.from,
        }
    }

    /// Its next page.
    pub fn next(&self, db: &Db) -> truce::Result<truce::ChangesPage> {
        db.changes_from(self.collection, self.since, self.from, 10, false)
    }
}

/// Collection `c` with `a`, `b` and `d`; `a` and `b` deleted and their
/// tombstones purged, `d` live. Returns the commit of the last delete, and a
/// reader of `c` that had read `a` before it was deleted.
pub fn with_purged_tombstones(db: &Db) -> (u64, Reader) {
    let c = db.collection("c").unwrap();
    c.set_config(keep(1)).unwrap();
    for id in ["a", "b", "d"] {
        c.put(id, json!({"n": 1}), Expect::Absent).unwrap().unwrap();
    }
    let reader = Reader::start(db, Some("c"));
    c.delete("a", Expect::Any).unwrap().unwrap();
    let last = c.delete("b", Expect::Any).unwrap().unwrap().doc.meta.seq;
    purged(db, 2);
    (last, reader)
}

/// Every change of `collection` from 0, a page of one at a time, each page
/// asked for as the last one's answer says (`since` and `from`): never
/// refused.
fn paged(db: &Db, collection: Option<&str>) -> Vec<(String, bool)> {
    let mut all = Vec::new();
    let (mut since, mut from) = (0, None);
    loop {
        let page = db.changes_from(collection, since, from, 1, false).unwrap();
        if page.changes.is_empty() {
            return all;
        }
        all.extend(page.changes.iter().map(|c| (c.id.clone(), c.deleted)));
        (since, from) = (page.last_seq, page.from);
    }
}

#[test]
fn old_tombstones_are_purged_and_readers_that_could_miss_them_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let everything = {
        // A reader of every collection, started before the deletes too.
        db.collection("c")
            .unwrap()
            .put("first", json!({}), Expect::Absent)
            .unwrap()
            .unwrap();
        Reader::start(&db, None)
    };
    let (last_delete, reader) = with_purged_tombstones(&db);
    let c = db.collection("c").unwrap();

    // Gone from the feeds, read as absent as before, and the data checks clean.
    let live = vec![("first".to_string(), false), ("d".to_string(), false)];
    assert_eq!(feed(&db, Some("c")), live);
    assert_eq!(feed(&db, None), live);
    assert!(c.get("a").unwrap().is_none());
    let report = db.check(&mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.documents, 2);

    // The readers that had read `a` before its delete would miss it.
    assert!(is_purged(reader.next(&db)));
    assert!(is_purged(everything.next(&db)));
    assert!(is_purged(
        db.subscribe_from(Some("c"), reader.since, reader.from, false)
            .map(|_| ())
    ));
    // A reader whose start is not known is not checked.
    assert!(db.changes(Some("c"), reader.since, 10, false).is_ok());
    // Readers from the start are never refused, one page at a time too:
    // every live document comes before the last purged tombstone's commit.
    assert_eq!(paged(&db, Some("c")), live);
    assert_eq!(paged(&db, None), live);
    let mut sub = db.subscribe(Some("c"), 0, false).unwrap().page_limit(1).unwrap();
    for _ in 0..2 {
        assert_eq!(sub.next_timeout(Duration::ZERO).unwrap().changes.len(), 1);
    }
    // Past the last purged tombstone, a position is safe whatever its start.
    assert!(
        db.changes_from(Some("c"), last_delete, Some(1), 10, false)
            .is_ok()
    );
    // RxDB checkpoints are positions within a commit: the last one purged
    // is `(last_delete, "b")`. Checked by their position alone from 0.
    assert!(is_purged(db.changes_after("c", Some((1, "d")), Some(0), 10)));
    assert!(is_purged(db.changes_after(
        "c",
        Some((last_delete, "a")),
        Some(0),
        10
    )));
    assert!(
        db.changes_after("c", Some((last_delete, "b")), Some(0), 10)
            .is_ok()
    );
    let from = db.changes_after("c", None, None, 10).unwrap().from;
    assert!(db.changes_after("c", Some((1, "d")), from, 10).is_ok());
    // Another collection's feed has nothing purged.
    assert!(db.changes_from(Some("other"), 1, Some(1), 10, false).is_ok());

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
    assert!(is_purged(db.changes_from(
        Some("c"),
        last_delete - 1,
        Some(1),
        10,
        false
    )));
    assert!(is_purged(db.changes_from(
        None,
        last_delete - 1,
        Some(1),
        10,
        false
    )));
    // And the purge goes on after it, with tombstones written since.
    let c = db.collection("c").unwrap();
    c.put("new", json!({}), Expect::Absent).unwrap().unwrap();
    c.delete("new", Expect::Any).unwrap().unwrap();
    purged(&db, 1);
    assert!(feed(&db, Some("c")).is_empty());
}

/// The purge keeps up with deletes faster than one batch a second
/// (`TOMBSTONE_PURGES_MAX`): while a pass stops at its count, the next one
/// comes at the next background tick (a TTL deleting more than 1,000
/// documents a second left tombstones behind without end).
#[test]
fn tombstones_are_purged_faster_than_a_batch_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    db.collection("c").unwrap().set_config(keep(1)).unwrap();
    let total = 5 * truce::limits::TOMBSTONE_PURGES_MAX;
    for delete in [false, true] {
        let ops: Vec<TxOp> = (0..total)
            .map(|i| {
                let (collection, id) = ("c".to_string(), format!("{i:05}"));
                match delete {
                    true => TxOp::Delete {
                        collection,
                        id,
                        expect: Expect::Any,
                    },
                    false => TxOp::Put {
                        collection,
                        id,
                        body: json!({}),
                        expect: Expect::Any,
                    },
                }
            })
            .collect();
        for chunk in ops.chunks(truce::limits::TX_OPS_MAX) {
            db.batch(chunk.to_vec(), None).unwrap().unwrap();
        }
    }
    // From the first pass that finds them old enough, at a batch a second
    // the last would go 4 s later.
    purged(&db, 1);
    let first = Instant::now();
    purged(&db, total as u64);
    assert!(
        first.elapsed() < Duration::from_millis(2_000),
        "{total} tombstones took {:?}",
        first.elapsed()
    );
}

/// A change-log entry whose document cannot be read is reported and passed:
/// the tombstones after it are still purged.
#[test]
fn an_unreadable_entry_does_not_stop_the_purge() {
    use truce::storage::{MemoryStorage, Space, Storage, WriteBatch};
    let storage = std::sync::Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    c.set_config(keep(1)).unwrap();
    let at = c
        .put("a", json!({}), Expect::Absent)
        .unwrap()
        .unwrap()
        .doc
        .meta
        .seq;
    // An entry beside `a`'s whose document does not exist.
    let mut orphan = WriteBatch::new();
    orphan.put(
        Space::Changes,
        truce::engine::tx::changes_key(b"c", at, b"ghost"),
        Vec::new(),
    );
    storage.apply(orphan, truce::Durability::Immediate).unwrap();
    c.put("b", json!({}), Expect::Absent).unwrap().unwrap();
    c.delete("b", Expect::Any).unwrap().unwrap();
    purged(&db, 1);
    // (The feeds refuse the orphan: read the storage itself.)
    use truce::storage::StorageRead;
    let record = storage.get(Space::Documents, &truce::engine::tx::doc_key("c", "b"));
    assert_eq!(record.unwrap(), None, "b's tombstone was purged");
}

/// A subscription from 0 carries where it began from page to page: one that
/// read a document before its delete was purged is refused on a later page.
#[test]
fn a_subscription_is_refused_on_a_later_page() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let c = db.collection("c").unwrap();
    c.set_config(keep(1)).unwrap();
    for id in ["a", "b", "d"] {
        c.put(id, json!({}), Expect::Absent).unwrap().unwrap();
    }
    let mut sub = db.subscribe(Some("c"), 0, false).unwrap().page_limit(1).unwrap();
    assert_eq!(sub.next_timeout(Duration::ZERO).unwrap().changes[0].id, "a");
    c.delete("a", Expect::Any).unwrap().unwrap();
    c.delete("b", Expect::Any).unwrap().unwrap();
    purged(&db, 2);
    assert!(is_purged(sub.next_timeout(Duration::ZERO).map(|_| ())));
}
