//! The timed run: N worker threads start together, each loops until its
//! deadline, and a progress line on stderr shows the operations so far.

use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::cpu;
use crate::progress::Progress;
use crate::stats::Recorder;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What every workload is run with, on both systems.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads.
    pub threads: usize,
    /// How long each system is measured.
    pub duration: Duration,
    /// Writes each Truce thread keeps outstanding where pipelining makes sense.
    pub in_flight: usize,
    /// Open loop: operations per second in all, each thread sending its
    /// share on a fixed schedule (`Pacer`); `None`: closed loop, each thread
    /// as fast as its answers come. Workers that wait for each answer follow
    /// it (the embedded hot counter's synchronous side, SQLite's loops).
    pub pace: Option<f64>,
    /// Where the temporary databases are created.
    pub dir: PathBuf,
}

/// Shared by the workers of one run: the start line and the progress counter.
pub struct Race {
    start: Barrier,
    duration: Duration,
    done: AtomicU64,
    threads: usize,
    pace: Option<f64>,
}

impl Race {
    /// Waits until every worker (and the driver) is ready, then returns this
    /// worker's deadline. Per-thread setup belongs before this call.
    pub fn start(&self) -> Instant {
        self.start.wait();
        Instant::now() + self.duration
    }

    /// Counts one finished operation for the progress line.
    pub fn tick(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits at the start line as [`Race::start`] does, and gives thread
    /// `thread`'s schedule.
    pub fn start_paced(&self, thread: usize) -> Pacer {
        let deadline = self.start();
        let interval = self
            .pace
            .map(|ops_per_s| Duration::from_secs_f64(self.threads.max(1) as f64 / ops_per_s.max(1e-3)));
        // Thread i's first send is i/threads of an interval in, so that the
        // threads' sends interleave rather than come in bursts.
        let first = deadline - self.duration
            + interval.map_or(Duration::ZERO, |every| {
                every * thread as u32 / self.threads.max(1) as u32
            });
        Pacer {
            next: first,
            interval,
            deadline,
        }
    }
}

/// When a worker's operations start: as soon as the last answered (closed
/// loop), or on a fixed schedule (open loop, [`Config::pace`]), in which an
/// operation that had to wait for the one before counts its latency from
/// when it should have started (coordinated omission corrected, as wrk2
/// and the network load generator do).
pub struct Pacer {
    next: Instant,
    interval: Option<Duration>,
    deadline: Instant,
}

impl Pacer {
    /// Waits until the next operation is due and gives the time its latency
    /// counts from; `None` once the run's deadline has come.
    pub fn next(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let Some(interval) = self.interval else {
            return (now < self.deadline).then_some(now);
        };
        let due = self.next;
        if due >= self.deadline {
            return None;
        }
        if due > now {
            thread::sleep(due - now);
        }
        self.next = due + interval;
        Some(due)
    }
}

/// Runs `worker(thread_index, race)` on `config.threads` threads, showing progress
/// labelled `system`, and returns the merged figures and the measured time (from
/// the common start until the last worker returned). Prints how many cores this
/// process and the rest of the machine used meanwhile.
pub fn run<W>(system: &str, config: &Config, worker: W) -> (Recorder, Duration)
where
    W: Fn(usize, &Race) -> Recorder + Sync,
{
    let race = Race {
        start: Barrier::new(config.threads + 1),
        duration: config.duration,
        done: AtomicU64::new(0),
        threads: config.threads,
        pace: config.pace,
    };
    let (totals, elapsed, (usage, per_second)) = thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|i| {
                let (race, worker) = (&race, &worker);
                scope.spawn(move || worker(i, race))
            })
            .collect();
        // The workers wait at the barrier: nothing else runs yet.
        let span = cpu::Span::start(&[]);
        race.start.wait();
        let started = Instant::now();
        let progress = Progress::new(system, config.duration);
        let mut last_shown = started;
        let mut per_second = Vec::new();
        let mut counted = 0;
        while !handles.iter().all(|h| h.is_finished()) {
            thread::sleep(Duration::from_millis(50));
            if last_shown.elapsed() >= PROGRESS_EVERY {
                last_shown = Instant::now();
                let done = race.done.load(Ordering::Relaxed);
                per_second.push(done - counted);
                counted = done;
            }
            progress.update(started.elapsed(), race.done.load(Ordering::Relaxed));
        }
        progress.finish();
        let mut totals = Recorder::default();
        for handle in handles {
            let recorder = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            totals.merge(&recorder);
        }
        (totals, started.elapsed(), (span.finish(&[]), per_second))
    });
    println!("{system}: {usage}");
    println!(
        "{system}: operations finished in each second: {}",
        timeline(&per_second)
    );
    (totals, elapsed)
}

/// A per-second series, e.g. `30637 30095 27728`: shows a figure that decays
/// during the run, which the average hides.
pub fn timeline(per_second: &[u64]) -> String {
    let parts: Vec<String> = per_second.iter().map(u64::to_string).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_start_together_and_are_merged() {
        let config = Config {
            threads: 3,
            duration: Duration::from_millis(30),
            in_flight: 1,
            pace: None,
            dir: std::env::temp_dir(),
        };
        let (totals, elapsed) = run("test", &config, |i, race| {
            let mut recorder = Recorder::default();
            let deadline = race.start();
            while Instant::now() < deadline {
                recorder.ok += 1;
                race.tick();
                thread::sleep(Duration::from_millis(5));
            }
            recorder.attempts = i as u64;
            recorder
        });
        assert!(totals.ok >= 3, "{}", totals.ok);
        assert_eq!(totals.attempts, 3);
        assert!(elapsed >= Duration::from_millis(30));
        assert_eq!(timeline(&[3, 2, 1]), "3 2 1");
    }

    /// Open loop: each thread sends its share of the rate on schedule, and an
    /// operation that started late counts its latency from when it was due.
    #[test]
    fn paced_workers_keep_their_schedule() {
        let config = Config {
            threads: 2,
            duration: Duration::from_millis(400),
            in_flight: 1,
            pace: Some(100.0),
            dir: std::env::temp_dir(),
        };
        let (totals, _) = run("test", &config, |i, race| {
            let mut recorder = Recorder::default();
            let mut pacer = race.start_paced(i);
            let mut first = true;
            while let Some(due) = pacer.next() {
                // Thread 0's first operation takes three intervals (60 ms):
                // the two due meanwhile (at 20 and 40 ms) start late, and
                // count from when due (about 41 and 22 ms, not 1).
                thread::sleep(Duration::from_millis(if i == 0 && first { 60 } else { 1 }));
                first = false;
                recorder.latency(due.elapsed());
                recorder.ok += 1;
                race.tick();
            }
            recorder
        });
        // 100/s for 0.4 s, in all.
        assert_eq!(totals.ok, 40, "every due operation ran, none more");
        // Three of the 40 took 15 ms or more: the slow one and the two
        // that waited behind it.
        assert!(
            totals.percentile_us(0.93) >= 15_000,
            "the late ones count from when they were due: p93 {} µs",
            totals.percentile_us(0.93)
        );
    }
}
