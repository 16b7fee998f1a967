//! How the committer waits: for its next request, polling the queue for a
//! short, adaptive window before it blocks; and, with a request in hand, for
//! the writers its last group answered, so that they share the next fsync.
//!
//! Why poll: when the committer blocks on an empty queue, the next writer has to
//! wake it (a futex wake, and on a virtual machine whose idle vCPUs halt, the
//! host's wake-up of that vCPU), and that latency lands on every request that
//! finds the committer idle. On a serial chain of writes — read-modify-write
//! of one hot document, where each success must wait for the previous one —
//! that is every request (`docs/benchmarks-log.md`, "Polling before blocking").
//!
//! The window adapts, a simpler form of the kernel's guest halt polling: it
//! opens to the full bound after a request arrived within the bound of the
//! wait's start (polling would have caught it, or did), and closes when a
//! wait outlasted the bound (the load is too sparse for polling to pay). So an idle or
//! lightly loaded server does not spin; a busy one polls in the gaps. Each
//! poll yields the CPU between looks, so a thread with work on the same core
//! runs first.
//!
//! Why gather: writers that wait for their answer (an embedded caller's
//! `update`, a client's next request) come back one by one after a group's
//! answers, and a committer that stores the first to come alone makes the
//! others wait for that store and pay one of their own. So when fewer
//! requests are queued than the last group had, the committer polls for the
//! rest, for no longer than the last group's store took: a late writer it
//! catches saves a whole store, and the writers already queued wait at most
//! one store more. A gather that did not pay — what the commits it caught
//! saved, a store each less the wait, was no more than what the wait cost
//! the requests already in hand (latecomers that only lose a race on one
//! document save nothing: they need no store) — stops gathering for
//! [`GATHER_REST_ROUNDS`] chances, so that a serial chain, or a stream whose
//! requests come too slowly to fill the group within a store, is not held
//! up. A lone writer (a last group of one) is never held.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// Rounds that would gather and do not, after a gather that did not pay.
pub(crate) const GATHER_REST_ROUNDS: u32 = 64;

/// What a round of groups stored: the groups run on the requests one
/// `gather` left in hand.
#[derive(Debug, Default, PartialEq)]
struct Round {
    requests: usize,
    commits: u64,
    /// The longest store of the round; `None` when nothing was stored.
    took: Option<Duration>,
}

/// The committer's adaptive poll window, and what it knows for gathering.
#[derive(Debug)]
pub(crate) struct PollWindow {
    /// The longest the window may open, and the longest a gather may last;
    /// zero turns both off.
    bound: Duration,
    /// The current window.
    window: Duration,
    /// Requests in the last round: how many a gather waits for. Zero after
    /// a wait for the first request outlasted the bound (the last round's
    /// writers are not coming back promptly).
    last_group: usize,
    /// The longest store of the last round that stored anything: how long a
    /// gather may wait.
    last_store: Duration,
    /// Chances to gather still to skip.
    resting: u32,
    /// The current round's gather: the requests queued when it began, and
    /// how long it polled; `None` when it did not gather.
    gathered: Option<(usize, Duration)>,
    /// What the current round has stored so far.
    round: Round,
}

impl PollWindow {
    /// A closed window that may open up to `bound`.
    pub(crate) fn new(bound: Duration) -> PollWindow {
        PollWindow {
            bound,
            window: Duration::ZERO,
            last_group: 0,
            last_store: Duration::ZERO,
            resting: 0,
            gathered: None,
            round: Round::default(),
        }
    }

    /// The current window.
    #[cfg(test)]
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Learns from one wait: the next request came `waited` after the wait
    /// began (or none came, `None`, before the wait gave up).
    fn learn(&mut self, waited: Option<Duration>) {
        self.window = match waited {
            Some(waited) if waited <= self.bound => self.bound,
            _ => {
                self.last_group = 0;
                Duration::ZERO
            }
        };
    }

    /// The next request: polled for up to the window, then waited for up to
    /// `timeout` in all. `Timeout` when none came, `Disconnected` when every
    /// sender is gone. Also returns how long this wait polled (the CPU it
    /// spent, for the metric).
    pub(crate) fn recv<T>(
        &mut self,
        queue: &Receiver<T>,
        timeout: Duration,
    ) -> (Result<T, RecvTimeoutError>, Duration) {
        let start = Instant::now();
        let mut polled = Duration::ZERO;
        if !self.window.is_zero() {
            let mut first = None;
            let disconnected = poll(queue, start, self.window.min(timeout), |request| {
                first = Some(request);
                false
            });
            polled = start.elapsed();
            if let Some(request) = first {
                self.learn(Some(polled));
                return (Ok(request), polled);
            }
            if disconnected {
                return (Err(RecvTimeoutError::Disconnected), polled);
            }
        }
        let result = queue.recv_timeout(timeout.saturating_sub(start.elapsed()));
        self.learn(result.is_ok().then(|| start.elapsed()));
        (result, polled)
    }

    /// Begins a round: polls for more requests onto `waiting` until it holds
    /// as many as the last round had (at most `max`), for no longer than the
    /// last round's store took and the bound. Returns how long it polled.
    pub(crate) fn gather<T>(
        &mut self,
        queue: &Receiver<T>,
        waiting: &mut VecDeque<T>,
        max: usize,
    ) -> Duration {
        self.gathered = None;
        self.round = Round::default();
        let target = self.last_group.min(max);
        let limit = self.last_store.min(self.bound);
        if waiting.len() >= target || limit.is_zero() {
            return Duration::ZERO;
        }
        if self.resting > 0 {
            self.resting -= 1;
            return Duration::ZERO;
        }
        let before = waiting.len();
        let start = Instant::now();
        poll(queue, start, limit, |request| {
            waiting.push_back(request);
            waiting.len() < target
        });
        let polled = start.elapsed();
        self.gathered = Some((before, polled));
        polled
    }

    /// Counts a group just stored toward the round: `requests` taken,
    /// `commits` it made (requests that lost a race, or changed nothing, make
    /// none), and how long its store took (`None`: nothing to store). Stores
    /// outside a round (the committer's background work) are forgotten when
    /// the next round begins.
    pub(crate) fn stored(&mut self, requests: usize, commits: u64, took: Option<Duration>) {
        self.round.requests += requests;
        self.round.commits += commits;
        self.round.took = self.round.took.max(took);
    }

    /// Learns from the round just stored.
    ///
    /// A gather paid when what the commits it caught saved — each would have
    /// waited for this store and then its own: one store each, less the wait —
    /// outweighs what the wait cost the requests already in hand:
    /// `caught × (store − wait) > before × wait`. The commits caught are
    /// counted as those beyond the requests in hand, so requests in hand that
    /// commit nothing make a gather look worse than it was, never better.
    pub(crate) fn round_done(&mut self) {
        let round = std::mem::take(&mut self.round);
        if let Some((before, waited)) = self.gathered.take() {
            let caught = round.commits.saturating_sub(before as u64) as u128;
            let store = round.took.unwrap_or_default().as_nanos();
            let waited = waited.as_nanos();
            if caught * store.saturating_sub(waited) <= before as u128 * waited {
                self.resting = GATHER_REST_ROUNDS;
            }
        }
        if let Some(took) = round.took {
            self.last_store = took;
        }
        self.last_group = round.requests;
    }
}

/// Polls `queue`, yielding the CPU between looks, and hands each request to
/// `take` until `take` returns false, `limit` has passed since `start`, or
/// every sender is gone (then it returns true).
fn poll<T>(queue: &Receiver<T>, start: Instant, limit: Duration, mut take: impl FnMut(T) -> bool) -> bool {
    loop {
        match queue.try_recv() {
            Ok(request) => {
                if !take(request) {
                    return false;
                }
                continue;
            }
            Err(TryRecvError::Disconnected) => return true,
            Err(TryRecvError::Empty) => {}
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const BOUND: Duration = Duration::from_micros(200);

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        assert_eq!(rc, 0);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    #[test]
    fn the_window_opens_after_a_prompt_request_and_closes_after_a_slow_one() {
        let mut poll = PollWindow::new(BOUND);
        assert_eq!(poll.window(), Duration::ZERO, "a new window is closed");
        poll.learn(Some(Duration::from_micros(150)));
        assert_eq!(poll.window(), BOUND, "a request within the bound opens it fully");
        poll.learn(Some(Duration::from_micros(10)));
        assert_eq!(poll.window(), BOUND);
        poll.learn(Some(Duration::from_micros(201)));
        assert_eq!(
            poll.window(),
            Duration::ZERO,
            "a request after the bound closes it"
        );
        poll.learn(Some(Duration::from_micros(50)));
        poll.learn(None);
        assert_eq!(poll.window(), Duration::ZERO, "no request at all closes it");
    }

    #[test]
    fn a_zero_bound_never_polls() {
        let mut poll = PollWindow::new(Duration::ZERO);
        poll.learn(Some(Duration::ZERO));
        assert_eq!(poll.window(), Duration::ZERO);
        let (tx, rx) = mpsc::sync_channel(4);
        tx.send(1).unwrap();
        assert_eq!(poll.recv(&rx, Duration::from_millis(10)), (Ok(1), Duration::ZERO));
    }

    #[test]
    fn an_open_window_catches_a_request_by_polling() {
        let mut poll = PollWindow::new(Duration::from_millis(50));
        poll.learn(Some(Duration::ZERO));
        let (tx, rx) = mpsc::sync_channel(4);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            tx.send(7).unwrap();
            tx
        });
        let (next, polled) = poll.recv(&rx, Duration::from_secs(5));
        assert_eq!(next, Ok(7));
        // Caught while polling: the time until it came was all polling.
        assert!(polled >= Duration::from_millis(2), "{polled:?}");
        assert_eq!(poll.window(), Duration::from_millis(50));
        drop(sender.join().unwrap());
        let (next, _) = poll.recv(&rx, Duration::from_secs(5));
        assert_eq!(next, Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn an_idle_queue_is_waited_on_not_spun_on() {
        // The window is open, as after a busy spell; then nothing comes for a
        // while. Polling must stop after the window: the wait costs (nearly)
        // no CPU and closes the window.
        let window = Duration::from_millis(2);
        let mut poll = PollWindow::new(window);
        poll.learn(Some(Duration::ZERO));
        let (_tx, rx) = mpsc::sync_channel::<u32>(4);
        let cpu = thread_cpu();
        let started = Instant::now();
        let (next, polled) = poll.recv(&rx, Duration::from_millis(200));
        assert_eq!(next, Err(RecvTimeoutError::Timeout));
        let used = thread_cpu() - cpu;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            used < Duration::from_millis(50),
            "waiting 200 ms with a 2 ms window used {used:?} of CPU"
        );
        // It polled for the window, not for the whole wait.
        assert!(
            polled >= window && polled < Duration::from_millis(100),
            "{polled:?}"
        );
        assert_eq!(poll.window(), Duration::ZERO);
        // Closed, the next wait does not poll at all.
        assert_eq!(
            poll.recv(&rx, Duration::from_millis(5)),
            (Err(RecvTimeoutError::Timeout), Duration::ZERO)
        );
    }

    /// A window whose last round had `requests`, of which `commits` wrote,
    /// stored in `took`.
    fn after_round(bound: Duration, requests: usize, commits: u64, took: Duration) -> PollWindow {
        let mut poll = PollWindow::new(bound);
        end_round(&mut poll, requests, commits, took);
        poll
    }

    /// Ends a round of one group of `requests`, `commits` of them writing,
    /// stored in `took`.
    fn end_round(poll: &mut PollWindow, requests: usize, commits: u64, took: Duration) {
        poll.stored(requests, commits, Some(took));
        poll.round_done();
    }

    #[test]
    fn a_gather_waits_for_as_many_as_the_last_round_had() {
        let mut poll = after_round(Duration::from_secs(5), 4, 4, Duration::from_secs(2));
        let (tx, rx) = mpsc::sync_channel(8);
        let mut waiting = VecDeque::from([1]);
        let sender = std::thread::spawn(move || {
            for n in 2..=4 {
                std::thread::sleep(Duration::from_millis(1));
                tx.send(n).unwrap();
            }
            tx
        });
        let polled = poll.gather(&rx, &mut waiting, 64);
        assert_eq!(waiting, [1, 2, 3, 4]);
        assert!(
            polled < Duration::from_secs(1),
            "it stops once the group is full: {polled:?}"
        );
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_gather_waits_no_longer_than_the_last_store_took_nor_the_bound() {
        let (_tx, rx) = mpsc::sync_channel::<u32>(8);
        let mut poll = after_round(Duration::from_secs(5), 8, 8, Duration::from_millis(30));
        let mut waiting = VecDeque::from([1]);
        let polled = poll.gather(&rx, &mut waiting, 64);
        assert!(
            polled >= Duration::from_millis(30) && polled < Duration::from_secs(4),
            "{polled:?}"
        );
        assert_eq!(waiting, [1]);
        let mut poll = after_round(Duration::from_millis(20), 8, 8, Duration::from_secs(10));
        let polled = poll.gather(&rx, &mut waiting, 64);
        assert!(
            polled >= Duration::from_millis(20) && polled < Duration::from_secs(4),
            "{polled:?}"
        );
    }

    #[test]
    fn a_lone_writer_a_full_queue_a_zero_bound_and_a_new_window_do_not_gather() {
        let (tx, rx) = mpsc::sync_channel(8);
        tx.send(2).unwrap();
        let mut waiting = VecDeque::from([1]);
        let mut lone = after_round(Duration::from_secs(5), 1, 1, Duration::from_secs(1));
        assert_eq!(lone.gather(&rx, &mut waiting, 64), Duration::ZERO);
        let mut capped = after_round(Duration::from_secs(5), 8, 8, Duration::from_secs(1));
        assert_eq!(capped.gather(&rx, &mut waiting, 1), Duration::ZERO);
        let mut off = after_round(Duration::ZERO, 8, 8, Duration::from_secs(1));
        assert_eq!(off.gather(&rx, &mut waiting, 64), Duration::ZERO);
        let mut new = PollWindow::new(Duration::from_secs(5));
        assert_eq!(new.gather(&rx, &mut waiting, 64), Duration::ZERO);
        assert_eq!(waiting, [1], "none of them took from the queue");
        assert_eq!(rx.try_recv(), Ok(2));
    }

    #[test]
    fn a_first_request_after_a_long_wait_is_not_held() {
        // The last round had 8 writers; then the queue stays empty past the
        // bound: they are not coming back promptly, and the next lone
        // request is stored at once.
        let mut poll = after_round(Duration::from_millis(10), 8, 8, Duration::from_secs(1));
        let (tx, rx) = mpsc::sync_channel(8);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(1).unwrap();
            tx
        });
        let (first, _) = poll.recv(&rx, Duration::from_secs(5));
        let mut waiting = VecDeque::from([first.unwrap()]);
        assert_eq!(poll.gather(&rx, &mut waiting, 64), Duration::ZERO);
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_round_is_learned_whole_and_background_stores_are_not() {
        let (_tx, rx) = mpsc::sync_channel::<u32>(8);
        let mut poll = PollWindow::new(Duration::from_secs(5));
        let mut waiting = VecDeque::new();
        poll.gather(&rx, &mut waiting, 64);
        // A round split into two groups (by bytes).
        poll.stored(3, 3, Some(Duration::from_millis(1)));
        poll.stored(2, 2, Some(Duration::from_millis(5)));
        poll.round_done();
        assert_eq!((poll.last_group, poll.last_store), (5, Duration::from_millis(5)));
        // Background work stores between rounds; the next round forgets it.
        poll.stored(1, 1, Some(Duration::from_millis(50)));
        poll.gather(&rx, &mut waiting, 64);
        poll.stored(4, 4, None);
        poll.round_done();
        assert_eq!(
            (poll.last_group, poll.last_store),
            (4, Duration::from_millis(5)),
            "a round that stored nothing keeps the last store time"
        );
    }

    #[test]
    fn a_gather_pays_when_what_it_caught_saved_outweighs_what_it_cost() {
        let us = Duration::from_micros;
        // (requests in hand before, its wait, the round's commits, its store)
        let cases = [
            // 7 caught, each saving 100 - 20 µs, against 1 × 20 µs: paid.
            ((1, us(20)), 8, Some(us(100)), true),
            // 5 caught saving 20 µs each (100) against 3 × 80 µs (240).
            ((3, us(80)), 8, Some(us(100)), false),
            // Nothing caught (the latecomers lost their races).
            ((1, us(10)), 1, Some(us(100)), false),
            // A wait longer than the store saves nothing.
            ((1, us(150)), 8, Some(us(100)), false),
            // Nothing stored.
            ((1, us(10)), 0, None, false),
        ];
        for (gathered, commits, took, paid) in cases {
            let mut poll = PollWindow::new(Duration::from_secs(5));
            poll.gathered = Some(gathered);
            poll.stored(8, commits, took);
            poll.round_done();
            assert_eq!(poll.resting == 0, paid, "{gathered:?} {commits} {took:?}");
        }
    }

    #[test]
    fn a_gather_that_did_not_pay_rests_then_tries_again() {
        let store = Duration::from_secs(1);
        // The last round: two requests, one commit (the other lost the race).
        let mut poll = after_round(Duration::from_secs(5), 2, 1, store);
        let (tx, rx) = mpsc::sync_channel(8);
        let mut waiting = VecDeque::from([1]);
        tx.send(2).unwrap();
        poll.gather(&rx, &mut waiting, 64);
        assert_eq!(waiting, [1, 2], "it gathered the second");
        // Which lost its race too: nothing caught.
        end_round(&mut poll, 2, 1, store);
        waiting.truncate(1);
        tx.send(3).unwrap();
        for round in 0..GATHER_REST_ROUNDS {
            assert_eq!(
                poll.gather(&rx, &mut waiting, 64),
                Duration::ZERO,
                "round {round}"
            );
            assert_eq!(waiting, [1], "resting, it takes nothing (round {round})");
            end_round(&mut poll, 2, 1, store);
        }
        poll.gather(&rx, &mut waiting, 64);
        assert_eq!(waiting, [1, 3], "rested, it gathers again");
        // This one paid (two commits where one was in hand): no rest.
        end_round(&mut poll, 2, 2, store);
        waiting.truncate(1);
        tx.send(4).unwrap();
        poll.gather(&rx, &mut waiting, 64);
        assert_eq!(waiting, [1, 4]);
    }

    /// Through the engine: a write that finds fewer requests queued than the
    /// last group had waits for the next writer, and the two share a group.
    #[test]
    fn the_committer_gathers_a_late_writer_into_the_group() {
        use crate::storage::{Fault, MemoryStorage};
        use crate::{Db, Expect, Options};
        use serde_json::json;
        use std::sync::Arc;

        let storage = Arc::new(MemoryStorage::new());
        // A window far past the engine's bound, so that the gather is long
        // enough to catch a writer this test starts.
        let db = Db::start(
            storage.clone(),
            Options::default(),
            PollWindow::new(Duration::from_millis(600)),
            None,
        )
        .unwrap();
        let c = db.collection("c").unwrap();
        // The first group stalls in storage while two writes queue: they make
        // a group of two whose store (delayed too) takes 500 ms.
        storage.inject(Fault::Delay(Duration::from_millis(300)));
        storage.inject(Fault::Delay(Duration::from_millis(500)));
        let first = c.submit_put("a", json!({}), Expect::Any).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let pair = [
            c.submit_put("b", json!({}), Expect::Any).unwrap(),
            c.submit_put("c", json!({}), Expect::Any).unwrap(),
        ];
        first.wait().unwrap().unwrap();
        for write in pair {
            write.wait().unwrap().unwrap();
        }
        let groups = db.stats().groups;
        // One writer, then another 50 ms later: the committer waits (up to
        // 500 ms) for a second request, and stores both at once.
        let alone = c.submit_put("d", json!({}), Expect::Any).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.put("e", json!({}), Expect::Any).unwrap().unwrap();
        alone.wait().unwrap().unwrap();
        assert_eq!(db.stats().groups, groups + 1, "d and e were stored in one group");
    }
}
