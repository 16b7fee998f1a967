//! How the committer waits for its next request: it polls the queue for a
//! short, adaptive window before it blocks.
//!
//! Why: when the committer blocks on an empty queue, the next writer has to
//! wake it (a futex wake, and on a virtual machine whose idle vCPUs halt, the
//! host's wake-up of that vCPU), and that latency lands on every request that
//! finds the committer idle. On a serial chain of writes — read-modify-write
//! of one hot document, where each success must wait for the previous one —
//! that is every request (`docs/benchmarks.md`, "Polling before blocking").
//!
//! The window adapts, a simpler form of the kernel's guest halt polling: it
//! opens to the full bound after a request arrived within the bound of the
//! wait's start (polling would have caught it, or did), and closes when a
//! wait outlasted the bound (the load is too sparse for polling to pay). So an idle or
//! lightly loaded server does not spin; a busy one polls in the gaps. Each
//! poll yields the CPU between looks, so a thread with work on the same core
//! runs first.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// The committer's adaptive poll window.
#[derive(Debug)]
pub(crate) struct PollWindow {
    /// The longest the window may open; zero turns polling off.
    bound: Duration,
    /// The current window.
    window: Duration,
}

impl PollWindow {
    /// A closed window that may open up to `bound`.
    pub(crate) fn new(bound: Duration) -> PollWindow {
        PollWindow {
            bound,
            window: Duration::ZERO,
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
            _ => Duration::ZERO,
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
            let until = start + self.window.min(timeout);
            loop {
                match queue.try_recv() {
                    Ok(request) => {
                        let waited = start.elapsed();
                        self.learn(Some(waited));
                        return (Ok(request), waited);
                    }
                    Err(TryRecvError::Disconnected) => {
                        return (Err(RecvTimeoutError::Disconnected), start.elapsed());
                    }
                    Err(TryRecvError::Empty) => {}
                }
                if Instant::now() >= until {
                    break;
                }
                std::thread::yield_now();
            }
            polled = start.elapsed();
        }
        let result = queue.recv_timeout(timeout.saturating_sub(start.elapsed()));
        self.learn(result.is_ok().then(|| start.elapsed()));
        (result, polled)
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
}
