//! The timed run: N worker threads start together, each loops until its
//! deadline, and a progress line on stderr shows the operations so far.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

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
    /// Where the temporary databases are created.
    pub dir: PathBuf,
}

/// Shared by the workers of one run: the start line and the progress counter.
pub struct Race {
    start: Barrier,
    duration: Duration,
    done: AtomicU64,
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
}

/// Runs `worker(thread_index, race)` on `config.threads` threads, showing progress
/// labelled `system`, and returns the merged figures and the measured time (from
/// the common start until the last worker returned).
pub fn run<W>(system: &str, config: &Config, worker: W) -> (Recorder, Duration)
where
    W: Fn(usize, &Race) -> Recorder + Sync,
{
    let race = Race {
        start: Barrier::new(config.threads + 1),
        duration: config.duration,
        done: AtomicU64::new(0),
    };
    let (totals, elapsed) = thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|i| {
                let (race, worker) = (&race, &worker);
                scope.spawn(move || worker(i, race))
            })
            .collect();
        race.start.wait();
        let started = Instant::now();
        let mut last_shown = started;
        while !handles.iter().all(|h| h.is_finished()) {
            thread::sleep(Duration::from_millis(50));
            if last_shown.elapsed() >= PROGRESS_EVERY {
                last_shown = Instant::now();
                show_progress(system, started.elapsed(), race.done.load(Ordering::Relaxed));
            }
        }
        let mut totals = Recorder::default();
        for handle in handles {
            let recorder = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            totals.merge(&recorder);
        }
        (totals, started.elapsed())
    });
    show_progress(system, elapsed, race.done.load(Ordering::Relaxed));
    eprintln!();
    (totals, elapsed)
}

/// Redraws the progress line in place.
fn show_progress(system: &str, elapsed: Duration, done: u64) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{system:<8} {:>5.1} s  {done:>10} ops",
        elapsed.as_secs_f64()
    );
    let _ = err.flush();
}
