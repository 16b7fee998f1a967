//! Who used the CPU during a run: this process, the server processes it
//! started, and the rest of the machine (other people's builds and tests). On
//! 2 cores a busy neighbour halves a figure, so every run says how busy the
//! machine was instead of leaving it to be guessed. The server's share is also
//! split by thread name (`truce-http`, `truce-committer`, `fjall:worker`, …),
//! which says whether a figure is bound by CPU or by one serial thread. Linux
//! `/proc` only; where it cannot be read the figures are reported as unknown.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use crate::probe::{self, show_line_ns};

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_S: f64 = 100.0;

/// Threads that used less than this are left out of the summary line.
const THREAD_SHOWN_CORES: f64 = 0.01;

/// CPU counters at one instant.
pub struct Snapshot {
    at: Instant,
    /// Busy ticks of the whole machine, if `/proc/stat` was readable.
    machine: Option<u64>,
    /// This process's ticks.
    own: Option<u64>,
    /// The watched processes' ticks, summed.
    watched: Option<u64>,
    /// The watched processes' ticks by thread name (threads that exit between
    /// two snapshots drop out of the split).
    threads: BTreeMap<String, u64>,
}

/// Cores used on average between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// This process (the load generator, and the embedded database when there is one).
    pub own: Option<f64>,
    /// The watched processes (a server under test).
    pub watched: Option<f64>,
    /// Everything else on the machine.
    pub others: Option<f64>,
    /// The watched processes' cores by thread name, busiest first.
    pub threads: Vec<(String, f64)>,
    /// The cache-line probe (`probe::cache_line_round_trip_ns`) right before
    /// and right after the run, in ns: whether the cores' placement changed.
    pub line_ns: (Option<f64>, Option<f64>),
}

impl Snapshot {
    /// Takes the counters now; `watched` are process ids to account separately.
    pub fn take(watched_pids: &[u32]) -> Snapshot {
        let watched = if watched_pids.is_empty() {
            None
        } else {
            // Processes that exited meanwhile (a server's short-lived children) are left out.
            let ticks: Vec<u64> = watched_pids
                .iter()
                .filter_map(|pid| process_ticks(format!("/proc/{pid}/stat")))
                .collect();
            (!ticks.is_empty()).then(|| ticks.iter().sum())
        };
        Snapshot {
            at: Instant::now(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|text| machine_busy_ticks(&text)),
            own: process_ticks("/proc/self/stat"),
            watched,
            threads: thread_ticks(watched_pids),
        }
    }

    /// Average cores used from `earlier` to this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Usage {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        let cores = |now: Option<u64>, then: Option<u64>| match (now, then) {
            (Some(now), Some(then)) if secs > 0.0 => {
                Some(now.saturating_sub(then) as f64 / TICKS_PER_S / secs)
            }
            _ => None,
        };
        let machine = cores(self.machine, earlier.machine);
        let own = cores(self.own, earlier.own);
        let watched = cores(self.watched, earlier.watched);
        let others = machine
            .zip(own)
            .map(|(m, o)| (m - o - watched.unwrap_or(0.0)).max(0.0));
        let threads = self
            .threads
            .iter()
            .filter_map(|(name, &now)| {
                let then = earlier.threads.get(name).copied().unwrap_or(0);
                Some((name.clone(), cores(Some(now), Some(then))?))
            })
            .collect();
        Usage {
            own,
            watched,
            others,
            threads,
            line_ns: (None, None),
        }
        .busiest_first()
    }
}

/// A measured run: the CPU counters and the cache-line probe at its start, so
/// that its end gives the run's [`Usage`] with the probe from both ends.
pub struct Span {
    line_before: Option<f64>,
    cpu: Snapshot,
}

impl Span {
    /// Probes and takes the counters now; call it while the run's threads are
    /// idle (the probe spins both cores for a few ms).
    pub fn start(watched_pids: &[u32]) -> Span {
        Span {
            line_before: probe::cache_line_round_trip_ns(),
            cpu: Snapshot::take(watched_pids),
        }
    }

    /// The run's usage from its start to now, probing again.
    pub fn finish(&self, watched_pids: &[u32]) -> Usage {
        let mut usage = Snapshot::take(watched_pids).since(&self.cpu);
        usage.line_ns = (self.line_before, probe::cache_line_round_trip_ns());
        usage
    }
}

impl Usage {
    /// The average of `self` over `a` seconds and `later` over `b` seconds.
    pub fn weighted(&self, a: f64, later: &Usage, b: f64) -> Usage {
        let mean = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if a + b > 0.0 => Some((x * a + y * b) / (a + b)),
            _ => x.or(y),
        };
        let mut threads: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (name, cores) in &self.threads {
            threads.entry(name).or_default().0 = *cores;
        }
        for (name, cores) in &later.threads {
            threads.entry(name).or_default().1 = *cores;
        }
        Usage {
            own: mean(self.own, later.own),
            watched: mean(self.watched, later.watched),
            others: mean(self.others, later.others),
            threads: threads
                .into_iter()
                .filter_map(|(name, (x, y))| Some((name.to_string(), mean(Some(x), Some(y))?)))
                .collect(),
            // The earliest and the latest figure measured (a probe may have
            // given up on a busy machine).
            line_ns: (
                self.line_ns.0.or(later.line_ns.0),
                later.line_ns.1.or(self.line_ns.1),
            ),
        }
        .busiest_first()
    }

    fn busiest_first(mut self) -> Usage {
        self.threads
            .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |c| format!("{c:.2}"));
        write!(f, "cpu: this process {} cores", show(self.own))?;
        if self.watched.is_some() {
            write!(f, ", server {} cores", show(self.watched))?;
            let busy: Vec<String> = self
                .threads
                .iter()
                .filter(|(_, cores)| *cores >= THREAD_SHOWN_CORES)
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            if !busy.is_empty() {
                write!(f, " ({})", busy.join(", "))?;
            }
        }
        write!(f, ", rest of the machine {} cores", show(self.others))?;
        if self.line_ns != (None, None) {
            write!(
                f,
                "; cache-line round trip {} before, {} after",
                show_line_ns(self.line_ns.0),
                show_line_ns(self.line_ns.1)
            )?;
        }
        Ok(())
    }
}

/// Busy ticks from the first line of `/proc/stat`: everything but idle and iowait
/// (guest time is already inside user time).
pub fn machine_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    (ticks.len() >= 4).then_some(busy)
}

/// utime + stime of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) file, in ticks.
fn process_ticks(path: impl AsRef<Path>) -> Option<u64> {
    parse_process_ticks(&std::fs::read_to_string(path).ok()?)
}

/// The ticks of every thread of `pids`, summed by thread name (`comm`).
fn thread_ticks(pids: &[u32]) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            if let (Ok(name), Some(ticks)) = (
                std::fs::read_to_string(dir.join("comm")),
                process_ticks(dir.join("stat")),
            ) {
                *by_name.entry(name.trim_end().to_string()).or_default() += ticks;
            }
        }
    }
    by_name
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(text), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(machine_busy_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn parses_process_stat_with_awkward_names() {
        let line = "4242 (truce (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 734 266 0 0 20 0 9 0 1000 0 0";
        assert_eq!(parse_process_ticks(line), Some(734 + 266));
        assert_eq!(parse_process_ticks("garbage"), None);
    }

    #[test]
    fn usage_splits_the_machine() {
        let t0 = Instant::now();
        let threads = |http: u64, committer: u64| {
            BTreeMap::from([
                ("truce-http".to_string(), http),
                ("truce-committer".to_string(), committer),
            ])
        };
        let earlier = Snapshot {
            at: t0,
            machine: Some(1_000),
            own: Some(100),
            watched: Some(50),
            threads: threads(30, 20),
        };
        let later = Snapshot {
            at: t0 + std::time::Duration::from_secs(2),
            machine: Some(1_400),
            own: Some(250),
            watched: Some(150),
            threads: threads(50, 100),
        };
        let usage = later.since(&earlier);
        let near = |v: Option<f64>, x: f64| (v.expect("known") - x).abs() < 1e-9;
        assert!(near(usage.own, 0.75) && near(usage.watched, 0.5) && near(usage.others, 0.75));
        let names: Vec<&str> = usage.threads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["truce-committer", "truce-http"], "busiest first");
        assert!(near(Some(usage.threads[0].1), 0.4) && near(Some(usage.threads[1].1), 0.1));
        assert!(
            usage
                .to_string()
                .contains("server 0.50 cores (truce-committer 0.40, truce-http 0.10)"),
            "{usage}"
        );
        assert!(Snapshot::take(&[]).since(&Snapshot::take(&[])).watched.is_none());
    }

    #[test]
    fn slices_average_by_their_length() {
        let usage = |own: f64, threads: Vec<(&str, f64)>, line_ns| Usage {
            own: Some(own),
            watched: Some(1.0),
            others: None,
            threads: threads.into_iter().map(|(n, c)| (n.to_string(), c)).collect(),
            line_ns,
        };
        let first = usage(
            0.2,
            vec![("truce-http", 0.6), ("fjall:worker", 0.3)],
            (Some(50.0), Some(51.0)),
        );
        let later = usage(0.5, vec![("truce-http", 0.9)], (Some(330.0), Some(320.0)));
        let both = first.weighted(1.0, &later, 2.0);
        let near = |v: f64, x: f64| (v - x).abs() < 1e-9;
        assert!(near(both.own.expect("known"), 0.4));
        // A thread seen in one slice only used nothing in the other.
        assert_eq!(both.threads.len(), 2);
        assert!(both.threads[0].0 == "truce-http" && near(both.threads[0].1, 0.8));
        assert!(both.threads[1].0 == "fjall:worker" && near(both.threads[1].1, 0.1));
        // The cache-line probe: before the first slice, after the later one.
        assert_eq!(both.line_ns, (Some(50.0), Some(320.0)));
        // Where a probe gave up, the nearest one that did not.
        let gave_up = usage(0.5, Vec::new(), (None, None));
        let merged = first.weighted(1.0, &gave_up, 1.0);
        assert_eq!(merged.line_ns, (Some(50.0), Some(51.0)));
        assert_eq!(
            gave_up.weighted(1.0, &later, 1.0).line_ns,
            (Some(330.0), Some(320.0))
        );
        assert!(
            both.to_string()
                .ends_with("; cache-line round trip 50 ns before, 320 ns after"),
            "{both}"
        );
    }

    #[test]
    fn the_threads_of_this_process_are_found_by_name() {
        // The thread names itself as it starts, says so, and lives until the
        // snapshot is taken.
        let (ready, started) = std::sync::mpsc::channel::<()>();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let named = std::thread::Builder::new()
            .name("bench-cpu-test".into())
            .spawn(move || {
                ready.send(()).expect("send");
                wait.recv()
            })
            .expect("spawn");
        started.recv().expect("started");
        let ticks = thread_ticks(&[std::process::id()]);
        drop(done);
        let _ = named.join().expect("join");
        assert!(ticks.contains_key("bench-cpu-test"), "{ticks:?}");
    }
}
