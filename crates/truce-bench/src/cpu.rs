//! Who used the CPU during a run: this process, the server processes it
//! started, and the rest of the machine (other people's builds and tests). On
//! 2 cores a busy neighbour halves a figure, so every run says how busy the
//! machine was instead of leaving it to be guessed. The server's share is also
//! split by thread name (`truce-http`, `truce-committer`, `fjall:worker`, …),
//! which says whether a figure is bound by CPU or by one serial thread, and
//! this process's and the server's time is split into user and kernel time:
//! on loopback most of a request's CPU is the kernel's (sockets, wake-ups,
//! context switches, fsync), which faster user-space code does not shorten,
//! only fewer syscalls and thread crossings do. Linux
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

/// A process's CPU time in ticks: in user space, and in the kernel for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    /// utime.
    pub user: u64,
    /// stime.
    pub system: u64,
}

impl Ticks {
    fn total(self) -> u64 {
        self.user + self.system
    }
}

impl std::iter::Sum for Ticks {
    fn sum<I: Iterator<Item = Ticks>>(iter: I) -> Ticks {
        iter.fold(Ticks::default(), |a, b| Ticks {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// CPU counters at one instant.
pub struct Snapshot {
    at: Instant,
    /// Busy ticks of the whole machine, if `/proc/stat` was readable.
    machine: Option<u64>,
    /// This process's ticks.
    own: Option<Ticks>,
    /// The watched processes' ticks, summed.
    watched: Option<Ticks>,
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
    /// Of `own`, the cores spent in the kernel.
    pub own_kernel: Option<f64>,
    /// Of `watched`, the cores spent in the kernel.
    pub watched_kernel: Option<f64>,
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
            let ticks: Vec<Ticks> = watched_pids
                .iter()
                .filter_map(|pid| process_ticks(format!("/proc/{pid}/stat")))
                .collect();
            (!ticks.is_empty()).then(|| ticks.into_iter().sum())
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
        let total = |t: Option<Ticks>| t.map(Ticks::total);
        let system = |t: Option<Ticks>| t.map(|t| t.system);
        let own = cores(total(self.own), total(earlier.own));
        let watched = cores(total(self.watched), total(earlier.watched));
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
            own_kernel: cores(system(self.own), system(earlier.own)),
            watched_kernel: cores(system(self.watched), system(earlier.watched)),
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
            own_kernel: mean(self.own_kernel, later.own_kernel),
            watched_kernel: mean(self.watched_kernel, later.watched_kernel),
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

    /// The share of this process's CPU spent in the kernel, 0 to 1.
    pub fn own_kernel_share(&self) -> Option<f64> {
        share(self.own_kernel, self.own)
    }

    /// The share of the watched processes' CPU spent in the kernel, 0 to 1.
    pub fn watched_kernel_share(&self) -> Option<f64> {
        share(self.watched_kernel, self.watched)
    }

    fn busiest_first(mut self) -> Usage {
        self.threads
            .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self
    }
}

/// `part` of `whole`, 0 to 1; unknown when either is, or `whole` is 0.
fn share(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(part), Some(whole)) if whole > 0.0 => Some((part / whole).clamp(0.0, 1.0)),
        _ => None,
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |c| format!("{c:.2}"));
        let kernel = |v: Option<f64>| v.map(|s| format!("{:.0} % kernel", s * 100.0));
        write!(f, "cpu: this process {} cores", show(self.own))?;
        if let Some(kernel) = kernel(self.own_kernel_share()) {
            write!(f, " ({kernel})")?;
        }
        if self.watched.is_some() {
            write!(f, ", server {} cores", show(self.watched))?;
            let busy: Vec<String> = kernel(self.watched_kernel_share())
                .into_iter()
                .chain(
                    self.threads
                        .iter()
                        .filter(|(_, cores)| *cores >= THREAD_SHOWN_CORES)
                        .map(|(name, cores)| format!("{name} {cores:.2}")),
                )
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

/// utime and stime of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) file.
fn process_ticks(path: impl AsRef<Path>) -> Option<Ticks> {
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
                *by_name.entry(name.trim_end().to_string()).or_default() += ticks.total();
            }
        }
    }
    by_name
}

/// utime and stime from the text of `/proc/PID/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_process_ticks(stat: &str) -> Option<Ticks> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(Ticks {
        user: fields.get(11)?.parse().ok()?,
        system: fields.get(12)?.parse().ok()?,
    })
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
        assert_eq!(
            parse_process_ticks(line),
            Some(Ticks {
                user: 734,
                system: 266
            })
        );
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
        let ticks = |user, system| Some(Ticks { user, system });
        let earlier = Snapshot {
            at: t0,
            machine: Some(1_000),
            own: ticks(60, 40),
            watched: ticks(30, 20),
            threads: threads(30, 20),
        };
        let later = Snapshot {
            at: t0 + std::time::Duration::from_secs(2),
            machine: Some(1_400),
            own: ticks(90, 160),
            watched: ticks(55, 95),
            threads: threads(50, 100),
        };
        let usage = later.since(&earlier);
        let near = |v: Option<f64>, x: f64| (v.expect("known") - x).abs() < 1e-9;
        assert!(near(usage.own, 0.75) && near(usage.watched, 0.5) && near(usage.others, 0.75));
        // In the kernel: 120 of this process's 150 ticks, 75 of the server's 100.
        assert!(near(usage.own_kernel, 0.6) && near(usage.watched_kernel, 0.375));
        assert!(near(usage.own_kernel_share(), 0.8) && near(usage.watched_kernel_share(), 0.75));
        let names: Vec<&str> = usage.threads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["truce-committer", "truce-http"], "busiest first");
        assert!(near(Some(usage.threads[0].1), 0.4) && near(Some(usage.threads[1].1), 0.1));
        assert!(
            usage
                .to_string()
                .starts_with("cpu: this process 0.75 cores (80 % kernel), server 0.50 cores (75 % kernel, truce-committer 0.40, truce-http 0.10)"),
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
            own_kernel: Some(own / 2.0),
            watched_kernel: None,
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
        assert!(near(both.own_kernel_share().expect("known"), 0.5));
        assert_eq!(both.watched_kernel_share(), None, "unknown stays unknown");
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
