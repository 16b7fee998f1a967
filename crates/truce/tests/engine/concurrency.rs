//! Many writers on one document: nothing lost, nothing conflicting that should not.

use std::sync::Arc;
use std::thread;

use serde_json::json;
use truce::{ConflictReason, Expect, RetryPolicy};

use crate::{open, update};

#[test]
fn sixteen_threads_of_inc_on_one_document_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let counters = db.collection("counters").unwrap();
    let inc = Arc::new(update(json!({"$inc": {"n": 1}, "$upsert": true})));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let counters = counters.clone();
            let inc = Arc::clone(&inc);
            thread::spawn(move || {
                for _ in 0..2000 {
                    let written = counters.patch("hot", Arc::clone(&inc), Expect::Any).unwrap();
                    assert!(written.is_ok(), "a patch never conflicts: {written:?}");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let doc = counters.get("hot").unwrap().unwrap();
    assert_eq!(doc.body["n"], 32_000);
    assert_eq!(doc.version(), 32_000, "every increment is its own revision");
    drop(counters);
    drop(db);
    let reopened = open(dir.path());
    assert_eq!(
        reopened
            .collection("counters")
            .unwrap()
            .get("hot")
            .unwrap()
            .unwrap()
            .body["n"],
        32_000
    );
}

#[test]
fn sixteen_threads_of_atomic_update_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let accounts = db.collection("accounts").unwrap();
    // Enough attempts that 16 contending writers always get through.
    let policy = RetryPolicy {
        max_attempts: 1000,
        ..RetryPolicy::default()
    };
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let accounts = accounts.clone();
            thread::spawn(move || {
                for _ in 0..300 {
                    accounts
                        .atomic_update_with("shared", &policy, |current| {
                            let n = current.and_then(|b| b["n"].as_i64()).unwrap_or(0);
                            json!({"n": n + 1})
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(accounts.get("shared").unwrap().unwrap().body["n"], 16 * 300);
}

/// Seed 001: A and B read version 1; A writes version 2; B's write conflicts and
/// carries version 2; B retries on it and succeeds.
#[test]
fn seed_001_second_writer_gets_a_conflict_with_the_current_document() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let cats = db.collection("cats").unwrap();
    cats.put("cat-001", json!({"name": "New Cat"}), Expect::Absent)
        .unwrap()
        .unwrap();
    let read_by_a = cats.get("cat-001").unwrap().unwrap();
    let read_by_b = cats.get("cat-001").unwrap().unwrap();
    assert_eq!((read_by_a.version(), read_by_b.version()), (1, 1));

    let a = cats
        .put(
            "cat-001",
            json!({"name": "A's name"}),
            Expect::Version(read_by_a.version()),
        )
        .unwrap();
    assert_eq!(a.unwrap().doc.version(), 2);

    let conflict = cats
        .put(
            "cat-001",
            json!({"name": "B's name"}),
            Expect::Version(read_by_b.version()),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(conflict.reason, ConflictReason::VersionMismatch);
    let current = conflict
        .current()
        .unwrap()
        .expect("a conflict carries the current document");
    assert_eq!(
        (current.version(), current.body["name"].as_str()),
        (2, Some("A's name"))
    );

    let retried = cats
        .put(
            "cat-001",
            json!({"name": "B's name"}),
            Expect::Version(current.version()),
        )
        .unwrap();
    let retried = retried.unwrap();
    assert_eq!(
        (retried.doc.version(), retried.doc.body["name"].as_str()),
        (3, Some("B's name"))
    );
}

#[test]
fn async_callers_get_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    let inc = Arc::new(update(json!({"$inc": {"n": 1}, "$upsert": true})));
    let pending: Vec<_> = (0..100)
        .map(|_| c.submit_patch("x", Arc::clone(&inc), Expect::Any).unwrap())
        .collect();
    let versions: Vec<u64> = pending
        .into_iter()
        .map(|p| p.wait().unwrap().unwrap().doc.version())
        .collect();
    assert_eq!(
        versions,
        (1..=100).collect::<Vec<_>>(),
        "answers come back in submission order"
    );
    let written = futures_lite_block_on(c.put_async("y", json!({"a": 1}), Expect::Absent))
        .unwrap()
        .unwrap();
    assert!(written.created());
}

/// A minimal executor: polls a future on this thread until it is ready.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => thread::park(),
        }
    }
}

/// Writes that write nothing and read only durable state do not wait for other
/// writers' fsync. A skip and a refused stale write are answered without the
/// committer at all, even while it is stalled; an unguarded no-op goes through
/// the committer and is answered before its group's fsync. All stay true when
/// that fsync fails; a real write in the same group waits for it.
#[test]
fn answers_from_durable_state_do_not_wait_for_the_group_fsync() {
    use std::time::{Duration, Instant};
    use truce::storage::{Fault, MemoryStorage};

    for fail in [false, true] {
        let storage = Arc::new(MemoryStorage::new());
        let db = truce::Db::open_with_storage(storage.clone(), truce::Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        c.put("beat", json!({"tab": "open"}), Expect::Absent)
            .unwrap()
            .unwrap();
        // Group 1 stalls in storage for 300 ms.
        storage.inject(Fault::Delay(Duration::from_millis(300)));
        let started = Instant::now();
        let first = c.submit_put("a", json!({}), Expect::Any).unwrap();
        thread::sleep(Duration::from_millis(50));
        let skip = c
            .submit_patch(
                "beat",
                update(json!({"$set": {"x": 1}, "$if": {"tab": "closed"}, "$else": "skip"})),
                Expect::Any,
            )
            .unwrap();
        let stale = c
            .submit_put("beat", json!({"tab": "x"}), Expect::Version(7))
            .unwrap();
        assert!(skip.wait().unwrap().unwrap().skipped());
        let refused = stale.wait().unwrap().unwrap_err();
        assert_eq!(refused.reason, ConflictReason::VersionMismatch);
        assert_eq!(refused.current().unwrap().unwrap().version(), 1);
        let fast = started.elapsed();
        assert!(
            fast < Duration::from_millis(250),
            "answered while group 1 was stalled: {fast:?}"
        );
        // Group 2 (a write and an unguarded no-op) stalls too, or fails.
        storage.inject(if fail {
            Fault::FailSync
        } else {
            Fault::Delay(Duration::from_millis(500))
        });
        let write = c.submit_put("b", json!({}), Expect::Any).unwrap();
        let same = c.submit_put("beat", json!({"tab": "open"}), Expect::Any).unwrap();
        // A batch that writes nothing, answered early behind that write in
        // its group, gives a position that is durable already.
        let check = db
            .submit_batch(
                vec![truce::TxOp::Check {
                    collection: "c".into(),
                    id: "beat".into(),
                    expect: Expect::Exists,
                }],
                None,
            )
            .unwrap();
        assert!(first.wait().unwrap().is_ok());
        assert!(same.wait().unwrap().unwrap().noop());
        let checked = check.wait().unwrap().unwrap();
        assert!(
            checked.seq <= db.durable_seq(),
            "a check answered early at {} with {} durable",
            checked.seq,
            db.durable_seq()
        );
        let early = started.elapsed();
        let written = write.wait();
        let late = started.elapsed();
        if fail {
            assert_eq!(written.unwrap_err().code(), "unavailable");
        } else {
            assert!(written.unwrap().is_ok());
            assert!(
                late >= early + Duration::from_millis(300),
                "the no-op ({early:?}) came before its group's fsync ended ({late:?})"
            );
        }
    }
}

/// Some answers go out before their group's fsync (a skip, a no-op or a
/// conflict that read only durable state; `committer::settled`), and a group
/// reads the writes of the requests before it in the same group. No answer
/// may show a state before it is durable: every document an answer carries
/// (written, skipped, unchanged or the current one of a conflict) has a
/// sequence the durable watermark has already passed when the answer arrives.
#[test]
fn no_answer_shows_a_state_before_it_is_durable() {
    use std::time::{Duration, Instant};
    const THREADS: usize = 4;
    const IN_FLIGHT: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let c = db.collection("c").unwrap();
    for d in 0..3 {
        c.put(&format!("d{d}"), json!({"n": 0, "tab": "open"}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let until = Instant::now() + Duration::from_millis(1500);
    let checked: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, c) = (&db, &c);
                scope.spawn(move || {
                    let mut checked = 0;
                    let mut round = 0;
                    while Instant::now() < until {
                        round += 1;
                        let stale = c.submit_put("d0", json!({}), Expect::Absent).unwrap();
                        let pending: Vec<_> = (0..IN_FLIGHT)
                            .map(|i| {
                                let id = format!("d{}", (t + i) % 3);
                                // The answers that may go out early come first, so
                                // each is checked as soon as it arrives.
                                let spec = match i % 4 {
                                    // Skipped: the tab is never closed.
                                    0 => json!({"$set": {"x": 1}, "$if": {"tab": "closed"}, "$else": "skip"}),
                                    // Unchanged: the tab is open already.
                                    1 => json!({"$set": {"tab": "open"}}),
                                    2 => json!({"$inc": {"n": 1}}),
                                    _ => json!({"$set": {"by": t, "round": round}}),
                                };
                                c.submit_patch(&id, update(spec), Expect::Any).unwrap()
                            })
                            .collect();
                        let current =
                            Arc::clone(stale.wait().unwrap().unwrap_err().current().unwrap().unwrap());
                        let durable = db.durable_seq();
                        assert!(
                            current.meta.seq <= durable,
                            "conflict at seq {} before durable {durable}",
                            current.meta.seq
                        );
                        for p in pending {
                            let doc = p.wait().unwrap().unwrap().doc;
                            let durable = db.durable_seq();
                            assert!(
                                doc.meta.seq <= durable,
                                "answer at seq {} before durable {durable}",
                                doc.meta.seq
                            );
                            checked += 1;
                        }
                    }
                    checked
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let stats = db.stats();
    assert!(stats.skipped > 0 && stats.noops > 0, "{stats:?}");
    assert!(
        stats.commits > 2 * stats.groups,
        "groups of more than one write: {stats:?}"
    );
    eprintln!("{checked} answers checked in {} groups", stats.groups);
}
