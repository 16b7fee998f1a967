//! Who used the CPU during a run: this process, the server processes it
//! started, and the rest of the machine (other people's builds and tests). On
//! 2 cores a busy neighbour halves a figure, so every run says how busy the
//! machine was instead of leaving it to be guessed. Linux `/proc` only; where
//! it cannot be read the figures are reported as unknown.

use std::fmt;
use std::time::Instant;

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_S: f64 = 100.0;

/// CPU counters at one instant.
pub struct Snapshot {
    at: Instant,
    /// Busy ticks of the whole machine, if `/proc/stat` was readable.
    machine: Option<u64>,
    /// This process's ticks.
    own: Option<u64>,
    /// The watched processes' ticks, summed.
    watched: Option<u64>,
}

/// Cores used on average between two snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// This process (the load generator, and the embedded database when there is one).
    pub own: Option<f64>,
    /// The watched processes (a server under test).
    pub watched: Option<f64>,
    /// Everything else on the machine.
    pub others: Option<f64>,
}

impl Snapshot {
    /// Takes the counters now; `watched` are process ids to account separately.
    pub fn take(watched: &[u32]) -> Snapshot {
        let watched = if watched.is_empty() {
            None
        } else {
            // Processes that exited meanwhile (a server's short-lived children) are left out.
            let ticks: Vec<u64> = watched
                .iter()
                .filter_map(|pid| process_ticks(&format!("/proc/{pid}/stat")))
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
        Usage { own, watched, others }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |c| format!("{c:.2}"));
        write!(f, "cpu: this process {} cores", show(self.own))?;
        if self.watched.is_some() {
            write!(f, ", server {} cores", show(self.watched))?;
        }
        write!(f, ", rest of the machine {} cores", show(self.others))
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

/// utime + stime of a `/proc/PID/stat` file, in ticks.
fn process_ticks(path: &str) -> Option<u64> {
    parse_process_ticks(&std::fs::read_to_string(path).ok()?)
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
        let earlier = Snapshot {
            at: t0,
            machine: Some(1_000),
            own: Some(100),
            watched: Some(50),
        };
        let later = Snapshot {
            at: t0 + std::time::Duration::from_secs(2),
            machine: Some(1_400),
            own: Some(250),
            watched: Some(150),
        };
        let usage = later.since(&earlier);
        let near = |v: Option<f64>, x: f64| (v.expect("known") - x).abs() < 1e-9;
        assert!(near(usage.own, 0.75) && near(usage.watched, 0.5) && near(usage.others, 0.75));
        assert!(usage.to_string().contains("server 0.50 cores"));
        assert!(Snapshot::take(&[]).since(&Snapshot::take(&[])).watched.is_none());
    }
}
