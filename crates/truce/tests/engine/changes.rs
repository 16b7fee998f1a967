//! The change feed: commit order, no gaps, no duplicates, a document at its latest
//! change, live subscriptions that start mid-stream, and the same after reopen.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::json;
use truce::{Expect, TxOp};

use crate::{open, update};

#[test]
fn changes_are_in_commit_order_at_their_latest_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    let other = db.collection("other").unwrap();
    let a1 = c
        .put("a", json!({"v": 1}), Expect::Absent)
        .unwrap()
        .unwrap()
        .seq();
    other.put("x", json!({}), Expect::Absent).unwrap().unwrap();
    let b1 = c
        .put("b", json!({"v": 1}), Expect::Absent)
        .unwrap()
        .unwrap()
        .seq();
    let a2 = c.put("a", json!({"v": 2}), Expect::Any).unwrap().unwrap().seq();
    c.put("a", json!({"v": 2}), Expect::Any).unwrap().unwrap(); // a no-op: no change
    let d = c.delete("b", Expect::Any).unwrap().unwrap().seq();
    assert!(a1 < b1 && b1 < a2 && a2 < d);

    let page = db.changes(Some("c"), 0, 100, true).unwrap();
    let got: Vec<(u64, &str, bool)> = page
        .changes
        .iter()
        .map(|ch| (ch.seq, ch.id.as_str(), ch.deleted))
        .collect();
    assert_eq!(got, vec![(a2, "a", false), (d, "b", true)]);
    assert_eq!(page.changes[0].doc.as_ref().unwrap().body["v"], 2);
    assert_eq!(page.last_seq, d);
    assert!(
        db.changes(Some("c"), page.last_seq, 100, false)
            .unwrap()
            .changes
            .is_empty()
    );

    let all = db.changes(None, 0, 100, false).unwrap();
    let colls: Vec<&str> = all.changes.iter().map(|ch| ch.collection.as_str()).collect();
    assert_eq!(colls, ["other", "c", "c"]);
    assert!(all.changes.iter().all(|ch| ch.doc.is_none()));
}

#[test]
fn a_page_never_splits_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ops = (0..5)
        .map(|i| TxOp::Put {
            collection: "c".into(),
            id: format!("d{i}"),
            body: json!({}),
            expect: Expect::Absent,
        })
        .collect();
    let seq = db.batch(ops, None).unwrap().unwrap().seq;
    db.collection("c")
        .unwrap()
        .put("after", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    let page = db.changes(Some("c"), 0, 2, false).unwrap();
    assert_eq!(page.changes.len(), 5, "the whole commit, though the limit is 2");
    assert_eq!(page.last_seq, seq);
    let next = db.changes(Some("c"), page.last_seq, 2, false).unwrap();
    assert_eq!(
        next.changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
}

/// Many writes of the same documents submitted at once land in shared group
/// commits: the feed (per collection and global) still holds each document once,
/// at its last write, and the stored document's earlier entry is gone; the
/// same after reopen.
#[test]
fn documents_written_many_times_in_one_group_are_in_the_feed_once() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let db = open(dir.path());
        let c = db.collection("c").unwrap();
        c.put("stored", json!({"n": 0}), Expect::Absent).unwrap().unwrap();
        let inc = Arc::new(update(json!({"$inc": {"n": 1}, "$upsert": true})));
        let pending: Vec<_> = (0..200)
            .map(|i| {
                let id = if i % 2 == 0 { "stored" } else { "fresh" };
                c.submit_patch(id, Arc::clone(&inc), Expect::Any).unwrap()
            })
            .collect();
        let mut last: HashMap<String, u64> = HashMap::new();
        for written in pending {
            let written = written.wait().unwrap().unwrap();
            last.insert(written.doc.id.clone(), written.seq());
        }
        let mut expected: Vec<(u64, String)> = last.into_iter().map(|(id, seq)| (seq, id)).collect();
        expected.sort();
        expected
    };
    for round in 0..2 {
        let db = open(dir.path());
        for collection in [Some("c"), None] {
            let page = db.changes(collection, 0, 1000, false).unwrap();
            let got: Vec<(u64, String)> = page.changes.iter().map(|ch| (ch.seq, ch.id.clone())).collect();
            assert_eq!(got, expected, "round {round}, collection {collection:?}");
        }
        let stored = db.collection("c").unwrap().get("stored").unwrap().unwrap();
        assert_eq!(stored.body["n"], 100);
    }
}

/// Concurrent writers; a subscriber that starts in the middle sees every
/// acknowledged commit after its start exactly once and in order; the same after
/// close and reopen.
#[test]
fn a_subscriber_starting_mid_stream_sees_every_commit_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut since = 0;
    let mut latest: HashMap<String, u64> = HashMap::new();
    for round in 0..2 {
        let db = open(dir.path());
        let c = db.collection("feed").unwrap();
        let inc = Arc::new(update(json!({"$inc": {"n": 1}, "$upsert": true})));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (c, inc, stop) = (c.clone(), Arc::clone(&inc), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("r{round}-w{w}-{}", i % 7);
                        acked.push((
                            id.clone(),
                            c.patch(&id, Arc::clone(&inc), Expect::Any)
                                .unwrap()
                                .unwrap()
                                .seq(),
                        ));
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(100));
        // Start in the middle of the stream.
        let start = db.durable_seq();
        let mut sub = db.subscribe(Some("feed"), start.max(since), false).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < deadline {
            seen.extend(sub.next_timeout(Duration::from_millis(50)).unwrap().changes);
        }
        stop.store(true, Ordering::Relaxed);
        let acked: Vec<(String, u64)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        // Drain what is left.
        loop {
            let page = sub.next_timeout(Duration::from_millis(50)).unwrap();
            if page.changes.is_empty() {
                break;
            }
            seen.extend(page.changes);
        }
        for pair in seen.windows(2) {
            assert!(pair[0].seq <= pair[1].seq, "commit order");
            assert!(
                pair[0].seq < pair[1].seq || pair[0].id != pair[1].id,
                "no duplicates"
            );
        }
        // Every acknowledged commit after the start is covered: the document
        // shows up at that change or a later one.
        let mut last_seen: HashMap<&str, u64> = HashMap::new();
        for change in &seen {
            last_seen.insert(&change.id, change.seq);
        }
        for (id, seq) in acked.iter().filter(|(_, s)| *s > start.max(since)) {
            let shown = last_seen.get(id.as_str()).copied().unwrap_or(0);
            assert!(
                shown >= *seq,
                "round {round}: {id}@{seq} never appeared (last {shown})"
            );
        }
        assert!(!seen.is_empty());
        since = sub.since();
        for (id, seq) in acked {
            latest.insert(id, seq);
        }
    }
    let db = open(dir.path());
    let everything = db.changes(Some("feed"), 0, 10_000, false).unwrap();
    for (id, seq) in &latest {
        assert!(
            everything.changes.iter().any(|c| &c.id == id && c.seq == *seq),
            "{id}@{seq} after reopen"
        );
    }
}

#[test]
fn collections_are_listed_once_written_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        assert!(db.collections().is_empty());
        db.collection("zeta")
            .unwrap()
            .put("a", json!({}), Expect::Absent)
            .unwrap()
            .unwrap();
        db.collection("alpha")
            .unwrap()
            .put("a", json!({}), Expect::Absent)
            .unwrap()
            .unwrap();
        // A conflict writes nothing and registers nothing.
        db.collection("never")
            .unwrap()
            .delete("a", Expect::Any)
            .unwrap()
            .unwrap_err();
        assert_eq!(db.collections(), ["alpha", "zeta"]);
    }
    assert_eq!(open(dir.path()).collections(), ["alpha", "zeta"]);
}

/// The feed of every collection, merged from the per-collection logs, pages
/// through exactly what a model of the documents' latest changes says, in
/// commit order (then collection, then id), whatever the page size: no change
/// missed or repeated, no commit split across pages (a page goes over its
/// limit only to finish its last commit), and each collection's own feed the
/// same filtered, by sequence and by `(seq, id)` checkpoint.
#[test]
fn the_feed_of_every_collection_pages_through_the_model_at_any_limit() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    // One commit: (collection, id, delete) writes, at most one per document;
    // most in the first collection, so a page of every collection reads past
    // the first chunk of one of them.
    let collection = prop_oneof![5 => Just(0usize), 1 => Just(1), 1 => Just(2), 1 => Just(3)];
    let commit = prop::collection::btree_map((collection, 0..40usize), any::<bool>(), 1..12);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(
            &(prop::collection::vec(commit, 1..40), 1..40usize),
            |(commits, limit)| {
                let dir = tempfile::tempdir().unwrap();
                // Room for some 28 documents of a page with their bodies:
                // pages of larger limits end by it, with a commit.
                let db = crate::open_with_page_memory(dir.path(), 20_000);
                let collections = ["a", "b", "c", "d"];
                // (collection, id) → seq of its latest change; and which are live.
                let mut latest: BTreeMap<(String, String), u64> = BTreeMap::new();
                let mut live = std::collections::BTreeSet::new();
                let mut writes_made = 0;
                for writes in &commits {
                    let mut ops = Vec::new();
                    for (&(c, d), &delete) in writes {
                        let (collection, id) = (collections[c].to_string(), format!("d{d}"));
                        // Only a live document can be deleted; every put is new content.
                        writes_made += 1;
                        ops.push(if delete && live.remove(&(c, d)) {
                            TxOp::Delete {
                                collection,
                                id,
                                expect: Expect::Any,
                            }
                        } else {
                            live.insert((c, d));
                            TxOp::Put {
                                collection,
                                id,
                                body: json!({"write": writes_made}),
                                expect: Expect::Any,
                            }
                        });
                    }
                    let committed = db.batch(ops, None).unwrap().unwrap();
                    for &(c, d) in writes.keys() {
                        latest.insert((collections[c].to_string(), format!("d{d}")), committed.seq);
                    }
                }
                let mut model: Vec<(u64, String, String)> =
                    latest.into_iter().map(|((c, id), seq)| (seq, c, id)).collect();
                model.sort();
                for collection in [None, Some("a"), Some("c")] {
                    let want: Vec<_> = model
                        .iter()
                        .filter(|(_, c, _)| collection.is_none_or(|name| name == c))
                        .cloned()
                        .collect();
                    // Without documents; and with them, decoded or as
                    // stored, beside a holder of the pages' memory (never
                    // alone, so each page ends where its room does, with a
                    // whole commit).
                    for (include_docs, stored) in [(false, false), (true, false), (true, true)] {
                        let mut beside = truce::budget::Taken::new(db.page_memory());
                        prop_assert!(!include_docs || beside.take(1));
                        let mut got = Vec::new();
                        let mut since = 0;
                        loop {
                            fn key<D>(c: truce::Change<D>) -> (u64, String, String) {
                                (c.seq, c.collection, c.id)
                            }
                            let (changes, last_seq): (Vec<(u64, String, String)>, u64) = if stored {
                                let page = db
                                    .changes_from_stored(collection, since, None, limit, include_docs)
                                    .unwrap();
                                prop_assert!(page.changes.iter().all(|c| c.doc.is_some()));
                                (page.changes.into_iter().map(key).collect(), page.last_seq)
                            } else {
                                let page = db.changes(collection, since, limit, include_docs).unwrap();
                                (page.changes.into_iter().map(key).collect(), page.last_seq)
                            };
                            if changes.is_empty() {
                                break;
                            }
                            let seqs: Vec<u64> = changes.iter().map(|c| c.0).collect();
                            let last = *seqs.last().unwrap();
                            prop_assert!(last_seq >= last, "a page's last_seq covers its changes");
                            if seqs.len() >= limit {
                                prop_assert_eq!(last_seq, last, "a full page ends at its last commit");
                            }
                            prop_assert!(
                                last_seq == last || last_seq == db.durable_seq(),
                                "a page ends at its last commit, or at the end of the feed"
                            );
                            prop_assert!(
                                seqs.iter().filter(|&&s| s < last).count() < limit,
                                "over the limit {} only to finish the last commit: {:?}",
                                limit,
                                seqs
                            );
                            got.extend(changes);
                            since = last_seq;
                        }
                        prop_assert_eq!(
                            &got,
                            &want,
                            "collection {:?}, limit {}, documents {}, stored {}",
                            collection,
                            limit,
                            include_docs,
                            stored
                        );
                    }
                    // The replication path pages the same by `(seq, id)` checkpoints.
                    let Some(name) = collection else { continue };
                    let mut got = Vec::new();
                    let mut after: Option<(u64, String)> = None;
                    loop {
                        let checkpoint = after.as_ref().map(|(seq, id)| (*seq, id.as_str()));
                        let page = db.changes_after(name, checkpoint, None, limit).unwrap().changes;
                        prop_assert!(page.len() <= limit);
                        let Some(last) = page.last() else { break };
                        after = Some((last.seq, last.id.clone()));
                        got.extend(page.into_iter().map(|c| (c.seq, c.collection, c.id)));
                    }
                    prop_assert_eq!(&got, &want, "changes_after {:?}, limit {}", name, limit);
                    // And the same pages read as stored.
                    let mut stored = Vec::new();
                    let mut after: Option<(u64, String)> = None;
                    loop {
                        let checkpoint = after.as_ref().map(|(seq, id)| (*seq, id.as_str()));
                        let page = db
                            .changes_after_stored(name, checkpoint, None, limit)
                            .unwrap()
                            .changes;
                        let Some(last) = page.last() else { break };
                        after = Some((last.seq, last.id.clone()));
                        stored.extend(page.into_iter().map(|c| (c.seq, c.collection, c.id)));
                    }
                    prop_assert_eq!(&stored, &want, "changes_after_stored {:?}, limit {}", name, limit);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A position this database never gave out (past its last commit: the data
/// directory was replaced by an older copy, or the client mixed up servers)
/// is refused, not echoed: a reader waiting for commits after it would miss
/// every one up to it, with no sign.
#[test]
fn a_position_past_the_last_commit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    c.put("a", json!({}), Expect::Absent).unwrap().unwrap();
    let head = db.durable_seq();
    assert!(head > 0);

    let refused = |result: truce::Result<()>| match result {
        Err(truce::Error::InvalidQuery(message)) => {
            assert!(message.contains(&format!("({head})")), "{message}")
        }
        other => panic!("expected invalid_query, got {other:?}"),
    };
    refused(db.changes(Some("c"), head + 1, 10, false).map(drop));
    refused(db.changes(None, u64::MAX, 10, false).map(drop));
    refused(db.subscribe(Some("c"), head + 1, false).map(drop));
    refused(db.changes_after("c", Some((head + 1, "")), None, 10).map(drop));

    // The head itself is a position it gave out: nothing after it, yet.
    assert!(db.changes(Some("c"), head, 10, false).unwrap().changes.is_empty());
    let mut live = db.subscribe(Some("c"), head, false).unwrap();
    c.put("b", json!({}), Expect::Absent).unwrap().unwrap();
    // A timeout no `Instant` can hold is no deadline (it panicked, adding it).
    let page = live.next_timeout(Duration::MAX).unwrap();
    assert_eq!(page.changes[0].id, "b");
    assert_eq!(
        db.changes_after("c", Some((head, "a")), None, 10)
            .unwrap()
            .changes[0]
            .id,
        "b"
    );
}

/// Pages of documents end past `PAGE_BYTES_MAX` (holding at least one), and
/// the next page goes on exactly after: a query with a cursor, the feed after
/// the commit it ended with. Nothing is skipped or repeated. (Without the
/// bound, 10,000 documents of 1 MiB were one page.) Pages for RxDB, which
/// takes a short page for the end of the feed, are bounded by their limit
/// alone: a pull's and `changes_whole`'s.
#[test]
fn pages_of_large_documents_end_by_bytes_and_go_on() {
    let blob_len = 700_000;
    let count = truce::limits::PAGE_BYTES_MAX / blob_len * 2 + 3;
    let (_dir, db, big) = large_documents(blob_len, count);
    let all: Vec<String> = (0..count).map(|i| format!("d{i:03}")).collect();
    let most = truce::limits::PAGE_BYTES_MAX / blob_len + 1;

    // A query: pages by cursor.
    let mut seen = Vec::new();
    let mut query = truce::Query {
        limit: 1000,
        ..truce::Query::default()
    };
    loop {
        let page = big.query(&query).unwrap();
        assert!(
            !page.docs.is_empty() && page.docs.len() <= most,
            "{}",
            page.docs.len()
        );
        seen.extend(page.docs.iter().map(|d| d.id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all, "query pages");

    // The change feed with documents: pages end with a commit.
    let (mut seen, mut since, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = db.changes(Some("big"), since, 10_000, true).unwrap();
        if page.changes.is_empty() {
            break;
        }
        assert!(page.changes.len() <= most, "{}", page.changes.len());
        seen.extend(page.changes.iter().map(|c| c.id.clone()));
        since = page.last_seq;
        pages += 1;
    }
    assert_eq!(seen, all, "feed pages");
    assert!(pages >= 3, "{pages} pages");
    // Without documents, the page is not cut by their size.
    assert_eq!(
        db.changes(Some("big"), 0, 10_000, false).unwrap().changes.len(),
        count
    );

    // Whole pages: a pull, and the feed as /couch reads it.
    let pulled = db.changes_after("big", None, None, 10_000).unwrap().changes;
    assert_eq!(pulled.len(), count);
    let whole = db.changes_whole(Some("big"), 0, 10_000, true).unwrap();
    assert_eq!(whole.changes.len(), count);
}

/// A page's bytes are what its documents take decoded when that is more
/// than their stored bytes: documents of small numbers, a few MiB stored in
/// all, end a page and refuse a whole one as tens of MiB of values would (an
/// audit's pull of 64 MiB of them took 2.7 GB to answer). Read as stored
/// (`changes_after_stored`), which is all they then hold, they count their
/// stored bytes.
#[test]
fn pages_count_what_documents_take_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let nums = db.collection("nums").unwrap();
    let numbers = vec![1; 60_000];
    let decoded = truce::doc::decoded_size(json!({"a": numbers}).as_object().unwrap());
    assert!(decoded > 60_000 * 16, "{decoded}");
    let count = truce::limits::WHOLE_PAGE_BYTES_MAX / decoded + 2;
    for i in 0..count {
        let put = nums.put(&format!("d{i:03}"), json!({"a": numbers}), Expect::Absent);
        assert!(put.unwrap().is_ok());
    }
    // Stored, they would all fit in one page.
    assert!(count * 120_100 < truce::limits::PAGE_BYTES_MAX, "{count}");
    let most = truce::limits::PAGE_BYTES_MAX / decoded + 1;
    let page = db.changes(Some("nums"), 0, 10_000, true).unwrap();
    assert!(
        !page.changes.is_empty() && page.changes.len() <= most,
        "{} of {count}, at most {most}",
        page.changes.len()
    );
    let page = nums
        .query(&truce::Query {
            limit: 1000,
            ..truce::Query::default()
        })
        .unwrap();
    assert!(
        page.docs.len() <= most && page.next.is_some(),
        "{}",
        page.docs.len()
    );
    match db.changes_after("nums", None, None, 10_000) {
        Err(truce::Error::LimitExceeded { what, .. }) => assert_eq!(what, "WHOLE_PAGE_BYTES_MAX"),
        other => panic!("expected WHOLE_PAGE_BYTES_MAX, got {:?}", other.map(|_| ())),
    }
    let pulled = db.changes_after("nums", None, None, most).unwrap().changes;
    assert_eq!(pulled.len(), most);
    // Read as stored, they hold their stored bytes only: one page holds
    // them all, each the decoded one's document.
    let stored = db.changes_after_stored("nums", None, None, 10_000).unwrap();
    assert_eq!(stored.changes.len(), count);
    assert!(
        stored.memory.bytes() < count * 130_000,
        "{}",
        stored.memory.bytes()
    );
    for (stored, decoded) in stored.changes.iter().zip(&pulled) {
        assert_eq!(
            (stored.seq, &stored.id, stored.rev),
            (decoded.seq, &decoded.id, decoded.rev)
        );
        let doc = stored.doc.as_ref().unwrap();
        assert_eq!(doc.meta(), &decoded.doc.as_ref().unwrap().meta);
        assert_eq!(&doc.decode(&stored.id).unwrap(), decoded.doc.as_ref().unwrap());
    }
    // So do the change feed's pages read as stored, and a subscription's.
    let feed = db
        .changes_from_stored(Some("nums"), 0, None, 10_000, true)
        .unwrap();
    assert_eq!(feed.changes.len(), count);
    let whole = db.changes_whole_stored(Some("nums"), 0, 10_000, true).unwrap();
    assert_eq!(whole.changes.len(), count);
    let mut sub = db.subscribe(Some("nums"), 0, true).unwrap().stored();
    assert_eq!(sub.poll().unwrap().changes.len(), count);
}

/// The pages being read share `Options::page_memory_bytes`. Beside a page
/// that holds most of it, a query page and a feed page end early (the feed
/// with the last commit that fits whole, never inside one) and the reader
/// goes on from there; a page that must be whole, or that not one commit
/// fits, is refused with `PagesOverBudget`; a page read alone is served
/// whatever its size; and dropped pages give back all they held (ten pulls
/// of large documents at once held 700 MB before).
#[test]
fn the_pages_being_read_share_their_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_with_page_memory(dir.path(), 1_000_000);
    let big = db.collection("big").unwrap();
    let blob = "x".repeat(100_000);
    // Ten documents of a commit each, then one commit of five.
    for i in 0..10 {
        let put = big.put(&format!("d{i:02}"), json!({"blob": blob}), Expect::Absent);
        assert!(put.unwrap().is_ok());
    }
    let ops = (0..5)
        .map(|i| TxOp::Put {
            collection: "big".into(),
            id: format!("t{i}"),
            body: json!({"blob": blob}),
            expect: Expect::Absent,
        })
        .collect();
    let five = db.batch(ops, None).unwrap().unwrap().seq;
    let pages = db.page_memory();

    // Seven documents held: room for two more.
    let held = db.changes_after("big", None, None, 7).unwrap();
    let each = held.memory.bytes() / 7;
    assert!(
        each >= 100_000 && pages.held() == 7 * each,
        "{each} {}",
        pages.held()
    );
    let refusals = pages.refused();

    let mut query = truce::Query {
        limit: 100,
        ..truce::Query::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = big.query(&query).unwrap();
        assert!(
            !page.docs.is_empty() && page.docs.len() <= 2,
            "{}",
            page.docs.len()
        );
        ids.extend(page.docs.iter().map(|d| d.id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let all: Vec<String> = (0..10)
        .map(|i| format!("d{i:02}"))
        .chain((0..5).map(|i| format!("t{i}")))
        .collect();
    assert_eq!(ids, all, "every document once, in order, two at a time");
    assert!(pages.refused() > refusals, "the query pages found no room");

    // The feed: single commits two at a time; the commit of five fits
    // nowhere beside the held page, and is not split.
    let page = db.changes(Some("big"), 0, 100, true).unwrap();
    assert_eq!(page.changes.len(), 2);
    assert_eq!(page.last_seq, page.changes[1].seq);
    assert_eq!(page.memory.bytes(), 2 * each);
    drop(page);
    let before_five = five - 1;
    let page = db.changes(Some("big"), before_five - 1, 100, true).unwrap();
    assert_eq!(
        (page.changes.len(), page.last_seq, page.memory.bytes()),
        (1, before_five, each),
        "cut back to the commit before the five, which did not fit whole"
    );
    drop(page);
    fn over_budget<T>(result: truce::Result<T>) {
        match result {
            Err(e @ truce::Error::PagesOverBudget) => assert!(e.is_retryable() && e.code() == "overloaded"),
            other => panic!("expected PagesOverBudget, got {:?}", other.map(|_| ())),
        }
    }
    over_budget(db.changes(Some("big"), before_five, 100, true));
    over_budget(db.changes_whole(Some("big"), 0, 100, true));
    over_budget(db.changes_after("big", None, None, 3));
    assert_eq!(pages.held(), 7 * each, "what was refused gave back what it took");
    // Without documents, a page holds nothing.
    let page = db.changes(Some("big"), 0, 100, false).unwrap();
    assert_eq!((page.changes.len(), page.memory.bytes()), (15, 0));

    // Alone, a page of all fifteen (past the budget) is served whole.
    drop(held);
    assert_eq!(pages.held(), 0);
    let all = db.changes_after("big", None, None, 100).unwrap();
    assert_eq!((all.changes.len(), all.memory.bytes()), (15, 15 * each));
    let copy = all.clone();
    drop(all);
    assert_eq!(pages.held(), 15 * each, "a clone holds it still");
    drop(copy);
    assert_eq!(pages.held(), 0);
}

/// Collection `big` of a fresh database: `count` documents `d000`… of
/// `{"blob": <blob_len bytes>, "i": i}`.
fn large_documents(blob_len: usize, count: usize) -> (tempfile::TempDir, truce::Db, truce::Collection) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let big = db.collection("big").unwrap();
    let blob = "x".repeat(blob_len);
    for i in 0..count {
        let put = big.put(&format!("d{i:03}"), json!({"blob": blob, "i": i}), Expect::Absent);
        assert!(put.unwrap().is_ok());
    }
    (dir, db, big)
}

/// A page that must be whole (a pull's, `changes_whole`'s, a whole-page
/// subscription's) is refused once its documents pass
/// `WHOLE_PAGE_BYTES_MAX`, instead of being built: 10,000 documents of 1 MiB
/// were 10 GB for one request. A smaller batch is served, and without
/// documents the page is not bounded by their size.
#[test]
fn whole_pages_past_their_bound_are_refused_not_built() {
    let blob_len = 1_000_000;
    let count = truce::limits::WHOLE_PAGE_BYTES_MAX / blob_len + 2;
    let (_dir, db, _) = large_documents(blob_len, count);
    fn refused<T>(result: truce::Result<T>) {
        match result {
            Err(truce::Error::LimitExceeded { what, limit }) => {
                assert_eq!(
                    (what, limit),
                    ("WHOLE_PAGE_BYTES_MAX", truce::limits::WHOLE_PAGE_BYTES_MAX as u64)
                );
            }
            other => panic!("expected WHOLE_PAGE_BYTES_MAX, got {:?}", other.map(|_| ())),
        }
    }
    refused(db.changes_after("big", None, None, 10_000));
    refused(db.changes_after_stored("big", None, None, 10_000));
    refused(db.changes_whole(Some("big"), 0, 10_000, true));
    let mut live = db
        .subscribe(Some("big"), 0, true)
        .unwrap()
        .page_limit(10_000)
        .unwrap()
        .whole_pages();
    refused(live.next_timeout(Duration::from_millis(10)));

    // A batch that fits is served whole, and the next goes on after it.
    let fits = truce::limits::WHOLE_PAGE_BYTES_MAX / (blob_len + 1_000);
    let first = db.changes_after("big", None, None, fits).unwrap().changes;
    assert_eq!(first.len(), fits);
    let last = first.last().unwrap();
    let rest = db
        .changes_after("big", Some((last.seq, &last.id)), None, fits)
        .unwrap()
        .changes;
    assert_eq!(fits + rest.len(), count);
    assert_eq!(
        db.changes_whole(Some("big"), 0, fits, true)
            .unwrap()
            .changes
            .len(),
        fits
    );
    assert_eq!(
        db.changes_whole(Some("big"), 0, 10_000, false)
            .unwrap()
            .changes
            .len(),
        count,
        "without documents, not bounded by their size"
    );
    // A page that may end early still does, with its commit.
    let page = db.changes(Some("big"), 0, 10_000, true).unwrap();
    assert!(page.changes.len() < count && !page.changes.is_empty());
}

/// The TTL sweeper goes on from the document where a step stopped at its
/// delete cap, not from the end of the documents that step looked at: more
/// expired documents than one step deletes, then a long run of live ones,
/// then one more expired document — the first ones are all deleted before
/// the last, instead of waiting a whole pass over the collection (before,
/// a step looked at 2,000 documents, deleted 500 and went on past all
/// 2,000).
#[test]
fn the_ttl_sweeper_goes_on_where_its_delete_cap_stopped_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let c = db.collection("sessions").unwrap();
    let expired = |id: String| (id, json!({"exp": 0}));
    let live = |id: String| (id, json!({"exp": 4_000_000_000_000u64}));
    let docs: Vec<(String, serde_json::Value)> = (0..2000)
        .map(|i| expired(format!("a{i:04}")))
        .chain((0..6000).map(|i| live(format!("b{i:04}"))))
        .chain(std::iter::once(expired("c".into())))
        .collect();
    let docs: Vec<(&str, String, serde_json::Value)> = docs
        .into_iter()
        .map(|(id, body)| ("sessions", id, body))
        .collect();
    put_all(&db, &docs);
    c.set_config(
        truce::CollectionConfig::from_json(&json!({"ttl": {"field": "exp", "seconds": 1}})).unwrap(),
    )
    .unwrap();
    let tombstones = swept(&db, 2001);
    let tombstones: HashMap<String, u64> = tombstones.into_iter().map(|((_, id), seq)| (id, seq)).collect();
    let last_of_the_first = tombstones
        .iter()
        .filter(|(id, _)| id.starts_with('a'))
        .map(|(_, seq)| *seq)
        .max();
    assert!(
        last_of_the_first < Some(tombstones["c"]),
        "the last of a0000..a1999 was deleted at {last_of_the_first:?}, after c at {}",
        tombstones["c"]
    );
}

/// Writes `docs` (collection, id, body), a thousand to a commit.
fn put_all(db: &truce::Db, docs: &[(&str, String, serde_json::Value)]) {
    for chunk in docs.chunks(1000) {
        let ops = chunk
            .iter()
            .map(|(collection, id, body)| TxOp::Put {
                collection: collection.to_string(),
                id: id.clone(),
                body: body.clone(),
                expect: Expect::Absent,
            })
            .collect();
        db.batch(ops, None).unwrap().unwrap();
    }
}

/// The tombstones of the feed of every collection, (collection, id) → seq,
/// once there are `count` of them (within a minute).
fn swept(db: &truce::Db, count: usize) -> BTreeMap<(String, String), u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut tombstones = BTreeMap::new();
        let mut since = 0;
        loop {
            let page = db.changes(None, since, 10_000, false).unwrap();
            if page.changes.is_empty() {
                break;
            }
            for change in page.changes.iter().filter(|change| change.deleted) {
                tombstones.insert((change.collection.clone(), change.id.clone()), change.seq);
            }
            since = page.last_seq;
        }
        if tombstones.len() == count {
            return tombstones;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} swept",
            tombstones.len()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn ttl_config(field: &str) -> truce::CollectionConfig {
    truce::CollectionConfig::from_json(&json!({"ttl": {"field": field, "seconds": 1}})).unwrap()
}

/// One sweep deletes what expired in all TTL collections in one commit:
/// each collection's sweep was a commit (an fsync) of its own, every tick.
#[test]
fn one_sweep_deletes_the_expired_documents_of_many_collections_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let names: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
    for name in &names {
        db.collection(name)
            .unwrap()
            .set_config(ttl_config("exp"))
            .unwrap();
    }
    // All expired already, and all in one commit.
    let docs: Vec<(&str, String, serde_json::Value)> = names
        .iter()
        .map(|c| (c.as_str(), "d".to_string(), json!({"exp": 0})))
        .collect();
    put_all(&db, &docs);
    let seqs: std::collections::BTreeSet<u64> = swept(&db, 50).into_values().collect();
    assert_eq!(seqs.len(), 1, "swept in commits {seqs:?}");
}

/// TTL collections take turns: a collection after a large one is swept
/// in the next tick, not once the large one's pass is done.
#[test]
fn a_large_ttl_collection_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    // `a`: 5,000 live documents, then one expired; `b`: one expired.
    let mut docs: Vec<(&str, String, serde_json::Value)> = (0..5000)
        .map(|i| ("a", format!("d{i:04}"), json!({"exp": 4_000_000_000_000u64})))
        .collect();
    docs.push(("a", "zz".into(), json!({"exp": 0})));
    docs.push(("b", "x".into(), json!({"exp": 0})));
    put_all(&db, &docs);
    // A pass over `a` takes three sweeps of 2,000 documents.
    db.collection("a").unwrap().set_config(ttl_config("exp")).unwrap();
    db.collection("b").unwrap().set_config(ttl_config("exp")).unwrap();
    let tombstones = swept(&db, 2);
    let (last_of_a, b) = (
        tombstones[&("a".into(), "zz".into())],
        tombstones[&("b".into(), "x".into())],
    );
    assert!(
        b < last_of_a,
        "b swept at {b}, with or after the end of a's pass at {last_of_a}"
    );
}

/// The feed of every collection holds, from any position, exactly the
/// changes of the collections' own feeds, merged in commit order: before a
/// reopen, across it (positions before it are read for in storage, those
/// after it among the collections written since) and after it.
#[test]
fn the_feed_of_every_collection_is_the_merge_of_their_feeds_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let write = |db: &truce::Db, round: usize| {
        for i in 0..12 {
            // A few collections, new ones included; documents written again
            // (their change moves) and deleted.
            let collection = format!("c{}", (i * 7 + round) % 5 + round);
            let id = format!("d{}", i % 4);
            let c = db.collection(&collection).unwrap();
            if i % 5 == 4 {
                let _ = c.delete(&id, Expect::Any);
            } else {
                c.put(&id, json!({"round": round, "i": i}), Expect::Any)
                    .unwrap()
                    .expect("written");
            }
        }
    };
    let check = |db: &truce::Db| {
        let everything = db.changes(None, 0, 10_000, false).unwrap();
        let head = everything.last_seq;
        let mut merged: Vec<(u64, String, String, bool)> = db
            .collections()
            .iter()
            .flat_map(|c| db.changes(Some(c), 0, 10_000, false).unwrap().changes)
            .map(|ch| (ch.seq, ch.collection, ch.id, ch.deleted))
            .collect();
        merged.sort();
        for since in 0..=head {
            let page = db.changes(None, since, 10_000, false).unwrap();
            let got: Vec<(u64, String, String, bool)> = page
                .changes
                .into_iter()
                .map(|ch| (ch.seq, ch.collection, ch.id, ch.deleted))
                .collect();
            let want: Vec<_> = merged.iter().filter(|ch| ch.0 > since).cloned().collect();
            assert_eq!(got, want, "since {since}");
            assert_eq!(page.last_seq, head, "since {since}");
        }
        head
    };
    let db = crate::open(dir.path());
    write(&db, 0);
    write(&db, 1);
    let before = check(&db);
    drop(db);
    let db = crate::open(dir.path());
    assert_eq!(check(&db), before);
    write(&db, 2);
    assert!(check(&db) > before);
}

/// A subscriber to the feed of every collection, started mid-stream while
/// writers keep creating collections, sees every write after its start
/// exactly once and in commit order: the collections it reads come from the
/// committer's record of which moved, which must name each before its
/// commit is durable.
#[test]
fn the_feed_of_every_collection_keeps_up_with_new_collections() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::open_relaxed(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // A new collection every third write.
                    let collection = format!("w{w}c{}", i / 3);
                    let c = db.collection(&collection).unwrap();
                    let id = format!("d{i}");
                    let seq = c.put(&id, json!({}), Expect::Absent).unwrap().unwrap().seq();
                    acked.push((seq, collection, id));
                    i += 1;
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    let start = db.durable_seq();
    let mut sub = db.subscribe(None, start, false).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < deadline {
        seen.extend(sub.next_timeout(Duration::from_millis(20)).unwrap().changes);
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<(u64, String, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    loop {
        let page = sub.next_timeout(Duration::from_millis(50)).unwrap();
        if page.changes.is_empty() {
            break;
        }
        seen.extend(page.changes);
    }
    let seen: Vec<(u64, String, String)> = seen
        .into_iter()
        .map(|ch| (ch.seq, ch.collection, ch.id))
        .collect();
    acked.retain(|(seq, _, _)| *seq > start);
    acked.sort();
    assert!(acked.len() > 100, "only {} writes", acked.len());
    assert_eq!(seen, acked, "every write after the start, once, in order");
}
