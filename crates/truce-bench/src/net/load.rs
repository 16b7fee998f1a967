//! The network load generator: every client connection is a task on ONE
//! current-thread tokio runtime, so the generator takes as little of the 2
//! cores from the server under test as it can, and every system is driven by
//! the same loop. Closed loop: each client sends its next operation when the
//! previous one answered. Open loop: each client sends on a fixed schedule
//! (the total rate split evenly, the clients' schedules staggered), and the
//! latency of an operation that had to wait for the previous one on its
//! connection is counted from when it should have been sent (coordinated
//! omission corrected, as wrk2 does).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::committer::Committer;
use crate::cpu;
use crate::progress::Progress;
use crate::stats::Recorder;

/// What one operation came to.
pub enum Answer {
    /// It did what was asked; `retries` = attempts beyond the first (optimistic
    /// read-modify-write retries on conflicts until it succeeds).
    Done { retries: u32 },
    /// It was skipped by the dedup rule (heartbeats): a success that wrote nothing.
    Skipped,
    /// A versioned write refused because the version moved (not retried).
    Conflict,
    /// It failed.
    Error(String),
}

/// One client: a connection and its state.
pub trait Client {
    /// Sends one operation and waits for its answer.
    async fn op(&mut self) -> Answer;
}

/// How clients pace their operations.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as answers come back.
    Closed,
    /// A fixed total arrival rate in operations per second.
    Open { ops_per_s: f64 },
}

/// What a run measured.
pub struct Measured {
    /// Every client's figures merged.
    pub totals: Recorder,
    /// From the common start until the last client returned.
    pub elapsed: Duration,
    /// Cores used meanwhile (watched = the server's processes).
    pub usage: cpu::Usage,
    /// Operations finished in each whole second.
    pub per_second: Vec<u64>,
    /// Truce's committer meanwhile (None for the peers, or when the server's
    /// metrics could not be read).
    pub committer: Option<Committer>,
}

impl Measured {
    /// Adds a later slice of the same run: figures merged, times summed, the
    /// CPU split averaged over both.
    pub fn absorb(&mut self, later: Measured) {
        let (a, b) = (self.elapsed.as_secs_f64(), later.elapsed.as_secs_f64());
        self.usage = self.usage.weighted(a, &later.usage, b);
        // Figures of only some slices would not describe the run: all or none.
        self.committer = match (self.committer, later.committer) {
            (Some(mut total), Some(slice)) => {
                total.absorb(slice);
                Some(total)
            }
            _ => None,
        };
        self.totals.merge(&later.totals);
        self.elapsed += later.elapsed;
        self.per_second.extend(later.per_second);
    }
}

/// A current-thread runtime for one system's clients.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Runs `clients` on `runtime` for `duration` at `pace`, with a progress bar
/// labelled `label`; `watched` are the server's process ids for the CPU split.
/// Gives the clients back (with their connections and state) for a next run.
pub fn drive<C: Client + 'static>(
    runtime: &tokio::runtime::Runtime,
    label: &str,
    clients: Vec<C>,
    duration: Duration,
    pace: Pace,
    watched: &[u32],
) -> (Measured, Vec<C>) {
    let count = clients.len().max(1);
    let done = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let progress = Progress::new(label, duration);
    let span = cpu::Span::start(watched);
    let (totals, elapsed, per_second, clients) = local.block_on(runtime, async {
        let started = Instant::now();
        let deadline = started + duration;
        let interval = match pace {
            Pace::Closed => None,
            Pace::Open { ops_per_s } => Some(Duration::from_secs_f64(count as f64 / ops_per_s.max(1e-3))),
        };
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                // Open loop: client i's first send is i/count of an interval in.
                let first =
                    started + interval.map_or(Duration::ZERO, |every| every * i as u32 / count as u32);
                tokio::task::spawn_local(run_client(client, first, deadline, interval, Rc::clone(&done)))
            })
            .collect();
        let ticker = tokio::task::spawn_local({
            let done = Rc::clone(&done);
            async move {
                let mut per_second = Vec::new();
                let mut counted = 0;
                let mut next_second = started + Duration::from_secs(1);
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    progress.update(started.elapsed(), done.get());
                    if Instant::now() >= next_second {
                        per_second.push(done.get() - counted);
                        counted = done.get();
                        next_second += Duration::from_secs(1);
                    }
                    if Instant::now() >= deadline {
                        progress.finish();
                        return per_second;
                    }
                }
            }
        });
        let mut totals = Recorder::default();
        let mut clients = Vec::with_capacity(count);
        for task in tasks {
            match task.await {
                Ok((client, recorder)) => {
                    totals.merge(&recorder);
                    clients.push(client);
                }
                Err(e) => totals.error(format!("a client task failed: {e}")),
            }
        }
        let elapsed = started.elapsed();
        let per_second = ticker.await.unwrap_or_default();
        (totals, elapsed, per_second, clients)
    });
    let measured = Measured {
        totals,
        elapsed,
        usage: span.finish(watched),
        per_second,
        committer: None,
    };
    (measured, clients)
}

/// One client's loop until the deadline.
async fn run_client<C: Client>(
    mut client: C,
    first: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    done: Rc<Cell<u64>>,
) -> (C, Recorder) {
    let mut recorder = Recorder::default();
    let mut next = first;
    let mut previous_done = Instant::now();
    loop {
        let origin = match interval {
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                Instant::now()
            }
            Some(every) => {
                // Stop at the deadline even with a backlog: the run must end.
                if next >= deadline || Instant::now() >= deadline {
                    break;
                }
                let intended = next;
                next += every;
                if previous_done > intended {
                    // Still busy when this one was due: it waited behind the
                    // previous answer, and that wait is part of its latency.
                    intended
                } else {
                    // Free when it was due: any delay is the timer's, not the
                    // system's (tokio's timer has 1 ms granularity).
                    tokio::time::sleep_until(intended.into()).await;
                    Instant::now()
                }
            }
        };
        let answer = client.op().await;
        previous_done = Instant::now();
        recorder.latency(previous_done - origin);
        recorder.attempts += 1;
        match answer {
            Answer::Done { retries } => {
                recorder.ok += 1;
                recorder.attempts += u64::from(retries);
                recorder.conflicts += u64::from(retries);
            }
            Answer::Skipped => {
                recorder.ok += 1;
                recorder.skipped += 1;
            }
            Answer::Conflict => recorder.conflicts += 1,
            Answer::Error(e) => recorder.error(e),
        }
        done.set(done.get() + 1);
    }
    (client, recorder)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper {
        took: Duration,
        n: u32,
    }

    impl Client for Sleeper {
        async fn op(&mut self) -> Answer {
            tokio::time::sleep(self.took).await;
            self.n += 1;
            match self.n % 4 {
                0 => Answer::Skipped,
                1 => Answer::Done { retries: 1 },
                _ => Answer::Done { retries: 0 },
            }
        }
    }

    #[test]
    fn closed_and_open_loops() {
        let runtime = runtime().expect("a runtime");
        let clients = || {
            (0..4)
                .map(|_| Sleeper {
                    took: Duration::from_millis(2),
                    n: 0,
                })
                .collect::<Vec<_>>()
        };
        let (closed, back) = drive(
            &runtime,
            "test",
            clients(),
            Duration::from_millis(200),
            Pace::Closed,
            &[],
        );
        assert_eq!(back.len(), 4);
        // At most ~400 (4 clients, 2 ms each, 200 ms); far fewer on a busy machine.
        assert!(closed.totals.ok > 20, "{}", closed.totals.ok);
        assert!(closed.totals.skipped > 0 && closed.totals.conflicts > 0);
        let (open, _) = drive(
            &runtime,
            "test",
            clients(),
            Duration::from_millis(500),
            Pace::Open { ops_per_s: 200.0 },
            &[],
        );
        // 200/s for half a second: about 100 however fast the clients could
        // go (fewer if the machine is too busy to keep the schedule).
        assert!((40..=110).contains(&open.totals.ok), "{}", open.totals.ok);
        // Slower than the schedule: latency counts the wait for the connection.
        let (overloaded, _) = drive(
            &runtime,
            "test",
            clients(),
            Duration::from_millis(300),
            Pace::Open { ops_per_s: 4000.0 },
            &[],
        );
        assert!(overloaded.totals.percentile_us(0.99) > 50_000);
    }
}
