//! The durable watermark: the highest commit sequence known to be on disk, and a
//! way for readers to wait until a state they observed is durable.
//!
//! A read may see a commit whose fsync has not returned yet (storage may expose a
//! batch before it is synced). Answering with it would reveal state a crash could
//! take back, so such a read waits here until the watermark passes its `_seq`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::storage::StorageError;

/// How long a waiting reader sleeps between checks of the poisoned flag; a
/// fsync normally lands long before this.
const WATERMARK_POLL_MS: u64 = 50;

/// Highest durable sequence number, plus the engine's sticky failure.
#[derive(Default)]
pub struct Watermark {
    seq: AtomicU64,
    /// The highest sequence handed to storage. A stored state above it was
    /// never written by this engine: it is corrupt, and waiting for it would
    /// wait forever.
    written: AtomicU64,
    failure: Mutex<Option<String>>,
    lock: Mutex<()>,
    changed: Condvar,
    /// Tasks waiting for the watermark to move.
    wakers: Mutex<Waiting>,
}

/// The wakers of pending [`Beyond`]s, one each, by registration: a future
/// polled again replaces its own, and one dropped takes it out. (A list that
/// only a commit emptied grew by one waker per poll: on a quiet database,
/// every timed-out long poll and closed stream left its connection's task
/// allocated until the next commit.)
///
/// Those that wait for one collection's commits are kept by collection, so
/// that a commit wakes only its own collections' waiters: when every commit
/// woke every one, each of them read a page of its feed, and 8,000 streams
/// open on a quiet collection took another collection's writer from 3,333
/// to 54 writes a second.
#[derive(Default)]
struct Waiting {
    next: u64,
    /// Waiters for any commit (the feed of every collection).
    any: foldhash::HashMap<u64, Waker>,
    /// Waiters for a commit to one collection, by its name; a collection's
    /// entry goes when its last waiter does.
    one: foldhash::HashMap<Vec<u8>, foldhash::HashMap<u64, Waker>>,
}

impl Waiting {
    /// The waiters of `collection` (`None`: of any commit).
    fn of(&mut self, collection: Option<&[u8]>) -> Option<&mut foldhash::HashMap<u64, Waker>> {
        match collection {
            None => Some(&mut self.any),
            Some(c) => self.one.get_mut(c),
        }
    }
}

impl Watermark {
    /// The highest durable sequence.
    pub fn durable_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Records that every commit up to `seq` is durable and wakes the readers
    /// waiting for any commit, and those waiting for one of `collections`,
    /// which must hold every collection those commits wrote to (`None`:
    /// wake every reader).
    pub fn advance(&self, seq: u64, collections: Option<&[Vec<u8>]>) {
        self.written.fetch_max(seq, Ordering::AcqRel);
        self.seq.fetch_max(seq, Ordering::AcqRel);
        let Some(collections) = collections else {
            return self.wake_all();
        };
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
        drop(guard);
        let mut waiting = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut woken = std::mem::take(&mut waiting.any);
        for c in collections {
            if let Some(wakers) = waiting.one.remove(c.as_slice()) {
                woken.extend(wakers);
            }
        }
        drop(waiting);
        woken.into_values().for_each(Waker::wake);
    }

    /// Records that commits up to `seq` are being written (before `Storage::apply`).
    pub fn writing(&self, seq: u64) {
        self.written.fetch_max(seq, Ordering::AcqRel);
    }

    fn wake_all(&self) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
        drop(guard);
        let waiting = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        let one = waiting.one.into_values().flat_map(|wakers| wakers.into_values());
        waiting.any.into_values().chain(one).for_each(Waker::wake);
    }

    /// How many futures wait to be woken.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        let waiting = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        waiting.any.len() + waiting.one.values().map(|w| w.len()).sum::<usize>()
    }

    /// Resolves once the durable sequence is above `seq` or the engine
    /// failed. It is polled again (and then looks) only when a commit to
    /// `collection` (`None`: any commit) becomes durable, or the engine
    /// fails, so a caller must read all it waits for at or below the durable
    /// sequence of its `seq`.
    pub fn beyond<'a>(&'a self, seq: u64, collection: Option<&'a str>) -> Beyond<'a> {
        Beyond {
            watermark: self,
            seq,
            collection: collection.map(str::as_bytes),
            registered: None,
        }
    }

    /// Marks the engine failed: no more writes, and readers stop waiting.
    pub fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(why);
        drop(failure);
        self.wake_all();
    }

    /// `Err(Unavailable)` once the engine has failed.
    pub fn check(&self) -> Result<()> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    /// Blocks until `seq` is durable, or the engine failed.
    ///
    /// `seq` was read from storage, so it must have been written: a state beyond
    /// the last commit handed to storage is corrupt, not something to wait for.
    pub fn wait_for(&self, seq: u64) -> Result<()> {
        let written = self.written.load(Ordering::Acquire);
        if seq > written {
            return Err(Error::Storage(StorageError::Corrupt(format!(
                "a stored state names commit {seq}, beyond the last commit written ({written})"
            ))));
        }
        self.wait_until(seq, None).map(|_| ())
    }

    /// Blocks until `seq` is durable (`Ok(true)`), the deadline passes (`Ok(false)`)
    /// or the engine failed.
    pub fn wait_until(&self, seq: u64, deadline: Option<Instant>) -> Result<bool> {
        if self.durable_seq() >= seq {
            return Ok(true);
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.durable_seq() < seq {
            self.check()?;
            let mut pause = Duration::from_millis(WATERMARK_POLL_MS);
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                pause = pause.min(left);
            }
            guard = self
                .changed
                .wait_timeout(guard, pause)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(true)
    }
}

/// The future of [`Watermark::beyond`].
pub struct Beyond<'a> {
    watermark: &'a Watermark,
    seq: u64,
    collection: Option<&'a [u8]>,
    /// Its entry among the watermark's wakers, while it may have one.
    registered: Option<u64>,
}

impl Future for Beyond<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let seq = this.seq;
        let ready = |w: &Watermark| w.durable_seq() > seq || w.check().is_err();
        if ready(this.watermark) {
            return Poll::Ready(this.watermark.check());
        }
        {
            let mut waiting = this.watermark.wakers.lock().unwrap_or_else(|p| p.into_inner());
            let registered = this
                .registered
                .and_then(|id| waiting.of(this.collection)?.get_mut(&id));
            match registered {
                Some(waker) => waker.clone_from(cx.waker()),
                // Not yet, or woken (and taken out) since.
                None => {
                    let id = waiting.next;
                    waiting.next += 1;
                    let wakers = match this.collection {
                        None => &mut waiting.any,
                        Some(c) => waiting.one.entry(c.to_vec()).or_default(),
                    };
                    wakers.insert(id, cx.waker().clone());
                    this.registered = Some(id);
                }
            }
        }
        // Checked again after registering, so an advance in between is not missed.
        if ready(this.watermark) {
            return Poll::Ready(this.watermark.check());
        }
        Poll::Pending
    }
}

impl Drop for Beyond<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.registered {
            let mut waiting = self.watermark.wakers.lock().unwrap_or_else(|p| p.into_inner());
            let Some(wakers) = waiting.of(self.collection) else {
                return;
            };
            wakers.remove(&id);
            if wakers.is_empty()
                && let Some(c) = self.collection
            {
                waiting.one.remove(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiting futures hold one waker each, however often polled, and none once
    /// dropped; an advance wakes and forgets them all.
    #[test]
    fn waiters_are_forgotten_when_dropped() {
        let watermark = Watermark::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut pending: Vec<Beyond<'_>> = (0..100).map(|_| watermark.beyond(0, None)).collect();
        for _ in 0..10 {
            for future in &mut pending {
                assert!(Pin::new(future).poll(&mut cx).is_pending());
            }
        }
        assert_eq!(watermark.waiting(), 100, "one waker per future, not per poll");
        pending.truncate(40);
        assert_eq!(watermark.waiting(), 40, "a dropped future's waker goes with it");
        watermark.advance(1, None);
        assert_eq!(watermark.waiting(), 0);
        for future in &mut pending {
            assert!(Pin::new(future).poll(&mut cx).is_ready());
        }
        // Waiting again after a wake registers again.
        let mut later = watermark.beyond(1, None);
        assert!(Pin::new(&mut later).poll(&mut cx).is_pending());
        assert_eq!(watermark.waiting(), 1);
        drop(later);
        drop(pending);
        assert_eq!(watermark.waiting(), 0);
    }

    /// Counts its wakes.
    struct Counting(AtomicU64);

    impl std::task::Wake for Counting {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A commit wakes the waiters of its collections and of every commit,
    /// not the others; a failure wakes all.
    #[test]
    fn a_commit_wakes_only_its_collections_waiters() {
        let watermark = Watermark::default();
        let woken = |of: &std::sync::Arc<Counting>| of.0.load(Ordering::Relaxed);
        let counters: Vec<std::sync::Arc<Counting>> = (0..4)
            .map(|_| std::sync::Arc::new(Counting(AtomicU64::new(0))))
            .collect();
        let wakers: Vec<Waker> = counters
            .iter()
            .map(|c| Waker::from(std::sync::Arc::clone(c)))
            .collect();
        // Waiting for: a, b, any commit, a again.
        let of = [Some("a"), Some("b"), None, Some("a")];
        let mut pending: Vec<Beyond<'_>> = of.iter().map(|c| watermark.beyond(0, *c)).collect();
        let poll_all = |pending: &mut Vec<Beyond<'_>>| -> Vec<bool> {
            pending
                .iter_mut()
                .zip(&wakers)
                .map(|(f, w)| Pin::new(f).poll(&mut Context::from_waker(w)).is_ready())
                .collect()
        };
        assert_eq!(poll_all(&mut pending), [false; 4]);
        watermark.advance(1, Some(&[b"c".to_vec()]));
        assert_eq!(counters.iter().map(woken).collect::<Vec<_>>(), [0, 0, 1, 0]);
        assert_eq!(watermark.waiting(), 3);
        watermark.advance(2, Some(&[b"b".to_vec(), b"a".to_vec()]));
        assert_eq!(counters.iter().map(woken).collect::<Vec<_>>(), [1, 1, 1, 1]);
        assert_eq!(
            watermark.waiting(),
            0,
            "a collection's entry goes with its waiters"
        );
        // Each looks again when woken: past 0, so ready.
        assert_eq!(poll_all(&mut pending), [true; 4]);
        let mut later: Vec<Beyond<'_>> = of.iter().map(|c| watermark.beyond(2, *c)).collect();
        assert_eq!(poll_all(&mut later), [false; 4]);
        drop(later.remove(1));
        assert_eq!(watermark.waiting(), 3);
        watermark.fail("gone".into());
        assert_eq!(counters.iter().map(woken).collect::<Vec<_>>(), [2, 1, 2, 2]);
        assert_eq!(watermark.waiting(), 0);
    }
}
