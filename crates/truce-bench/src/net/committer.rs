//! Truce's committer during a run, read from the server's `/metrics` before
//! and after each slice: how many groups it stored (one fsync each), how many
//! requests a group held, and how much of the time it spent storing a group
//! (the journal write, the fdatasync and the memtable inserts). Next to the
//! server's CPU split by thread it says what bounds a figure: a committer
//! storing most of the time with cores to spare is bound by its serial cycle
//! and the group sizes the clients give it, not by CPU.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::server;

/// The counters this reads, as `/metrics` names them.
const GROUPS: &str = "truce_group_commits_total";
const REQUESTS: &str = "truce_group_commit_size_sum";
const STORE_SECONDS: &str = "truce_fsync_seconds_sum";

/// The committer's counters at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counters {
    /// When they were read: the time between two readings is the time the
    /// counters moved in, so the share of it spent storing cannot pass 1.
    at: Instant,
    groups: f64,
    requests: f64,
    store_seconds: f64,
}

impl Counters {
    /// Reads them from the server at `addr`; `None` if it cannot (the run
    /// goes on without these figures).
    pub fn read(addr: SocketAddr) -> Option<Counters> {
        let (status, text) = server::http_once(addr, "GET", "/metrics", None).ok()?;
        if status != 200 {
            return None;
        }
        Counters::parse(&text)
    }

    /// The counters in a Prometheus text exposition read just now.
    pub fn parse(text: &str) -> Option<Counters> {
        let value = |name: &str| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok()).flatten()
            })
        };
        Some(Counters {
            at: Instant::now(),
            groups: value(GROUPS)?,
            requests: value(REQUESTS)?,
            store_seconds: value(STORE_SECONDS)?,
        })
    }
}

/// What the committer did over some seconds of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Committer {
    /// Groups stored.
    pub groups: f64,
    /// Requests evaluated in them.
    pub requests: f64,
    /// Seconds spent storing them.
    pub store_seconds: f64,
    /// Seconds of the run.
    pub seconds: f64,
}

impl Committer {
    /// From `before` to `after`.
    pub fn between(before: Counters, after: Counters) -> Committer {
        Committer {
            groups: after.groups - before.groups,
            requests: after.requests - before.requests,
            store_seconds: after.store_seconds - before.store_seconds,
            seconds: after.at.saturating_duration_since(before.at).as_secs_f64(),
        }
    }

    /// From the engine's counters `before` and `after` a run of `seconds` in
    /// process (the embedded rows), as `/metrics` reports them for a server.
    pub fn from_stats([before, after]: &[truce::Stats; 2], seconds: f64) -> Committer {
        Committer {
            groups: after.groups.saturating_sub(before.groups) as f64,
            requests: after.group_size.sum - before.group_size.sum,
            store_seconds: after.fsync_seconds.sum - before.fsync_seconds.sum,
            seconds,
        }
    }

    /// Adds a later slice of the same run.
    pub fn absorb(&mut self, later: Committer) {
        self.groups += later.groups;
        self.requests += later.requests;
        self.store_seconds += later.store_seconds;
        self.seconds += later.seconds;
    }

    /// Groups stored per second.
    pub fn groups_per_s(&self) -> f64 {
        ratio(self.groups, self.seconds)
    }

    /// Requests per group, on average.
    pub fn group_size(&self) -> f64 {
        ratio(self.requests, self.groups)
    }

    /// The share of the time spent storing groups, 0 to 1.
    pub fn store_share(&self) -> f64 {
        ratio(self.store_seconds, self.seconds)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl fmt::Display for Committer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "committer: {:.0} groups/s of {:.1} requests, storing {:.0} % of the time",
            self.groups_per_s(),
            self.group_size(),
            self.store_share() * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP truce_group_commits Group commits stored, one fsync each
# TYPE truce_group_commits counter
truce_group_commits_total 100
truce_group_commit_size_sum 1150.0
truce_group_commit_size_count 100
truce_group_commit_size_bucket{le=\"1.0\"} 0
truce_fsync_seconds_sum 0.02
truce_fsync_seconds_count 100
";

    #[test]
    fn reads_the_counters_from_the_exposition() {
        let counters = Counters::parse(METRICS).expect("parsed");
        assert_eq!(
            (counters.groups, counters.requests, counters.store_seconds),
            (100.0, 1150.0, 0.02)
        );
        assert_eq!(
            Counters::parse("truce_group_commits_total 1\n"),
            None,
            "one missing"
        );
    }

    #[test]
    fn in_process_figures_come_from_the_engines_counters() {
        use std::sync::Arc;
        use truce::storage::MemoryStorage;
        let db =
            truce::Db::open_with_storage(Arc::new(MemoryStorage::new()), truce::Options::default()).unwrap();
        let docs = db.collection("c").unwrap();
        docs.put("before", serde_json::json!({}), truce::Expect::Any)
            .unwrap()
            .unwrap();
        let before = db.stats();
        for id in ["a", "b", "c"] {
            docs.put(id, serde_json::json!({}), truce::Expect::Any)
                .unwrap()
                .unwrap();
        }
        let c = Committer::from_stats(&[before, db.stats()], 2.0);
        assert_eq!((c.groups, c.requests, c.seconds), (3.0, 3.0, 2.0), "{c:?}");
        assert_eq!((c.groups_per_s(), c.group_size()), (1.5, 1.0));
        assert!(c.store_seconds > 0.0 && c.store_share() < 1.0, "{c:?}");
    }

    #[test]
    fn figures_come_from_the_difference_and_slices_add_up() {
        let t0 = Instant::now();
        let at = |second: u64, groups, requests, store_seconds| Counters {
            at: t0 + std::time::Duration::from_secs(second),
            groups,
            requests,
            store_seconds,
        };
        let mut run = Committer::between(at(0, 100.0, 1000.0, 1.0), at(1, 4100.0, 46_000.0, 1.8));
        assert_eq!(run.groups_per_s(), 4000.0);
        assert_eq!(run.group_size(), 11.25);
        assert!((run.store_share() - 0.8).abs() < 1e-9);
        run.absorb(Committer::between(
            at(5, 0.0, 0.0, 0.0),
            at(6, 2000.0, 14_000.0, 0.2),
        ));
        assert_eq!(run.groups_per_s(), 3000.0);
        assert_eq!(run.group_size(), 59_000.0 / 6000.0);
        assert!((run.store_share() - 0.5).abs() < 1e-9);
        assert_eq!(
            run.to_string(),
            "committer: 3000 groups/s of 9.8 requests, storing 50 % of the time"
        );
        assert_eq!(
            Committer::default().group_size(),
            0.0,
            "no group, no division by zero"
        );
    }
}
