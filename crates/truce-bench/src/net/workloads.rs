//! What the network workloads share on every side, so each system gets the
//! same operations: the versioned-writes slices with their known versions,
//! the heartbeat tabs, the retry backoff, and the documents' bodies.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::workload::PAYLOAD;

/// Sessions of the heartbeat workload (seed 000).
pub const SESSIONS: u64 = 1_000;
/// Tabs per session, each sending its own heartbeats.
pub const TABS_PER_SESSION: u64 = 3;
/// A heartbeat is written when the path changed or the stored one is older than this.
pub const HEARTBEAT_DEDUP_MS: u64 = 10_000;
/// How often a tab navigates before a heartbeat, in percent: enough that
/// writes and skips both happen (the 3 tabs of a session then disagree on the path).
pub const NAVIGATE_PERCENT: u32 = 2;
/// The pages tabs move between.
pub const PATHS: [&str; 8] = [
    "/", "/blog", "/about", "/pricing", "/docs", "/login", "/cart", "/help",
];

/// Ceiling of the first backoff of a retried read-modify-write (full jitter,
/// doubling per failed attempt), the same on every system.
pub const RMW_BACKOFF_BASE: Duration = Duration::from_micros(500);
/// No single backoff is longer.
pub const RMW_BACKOFF_MAX: Duration = Duration::from_millis(20);

/// A per-client random source: seeded by the client's index so every system
/// sees the same sequence of operations.
pub fn client_rng(client: usize) -> SmallRng {
    SmallRng::seed_from_u64(0x7_2ACE ^ client as u64)
}

/// The wait after failed attempt `failed` (1-based): uniform in
/// `[0, min(max, base · 2^(failed-1))]`.
pub fn backoff(rng: &mut SmallRng, failed: u32) -> Duration {
    let ceiling = RMW_BACKOFF_BASE
        .checked_mul(1u32 << failed.saturating_sub(1).min(16))
        .unwrap_or(RMW_BACKOFF_MAX)
        .min(RMW_BACKOFF_MAX);
    ceiling.mul_f64(rng.random::<f64>())
}

/// The versioned-writes documents client `client` of `clients` owns (every
/// `clients`-th of `docs`), with the version each is known to be at. Owning
/// disjoint slices, a client always writes at the current version: the
/// workload measures versioned writes, not collisions.
pub struct Slice {
    ids: Vec<u64>,
    versions: Vec<u64>,
    rng: SmallRng,
    picked: usize,
    writes: u64,
}

impl Slice {
    /// The slice of client `client`; every document starts at version 1.
    pub fn new(client: usize, clients: usize, docs: u64) -> Slice {
        let ids: Vec<u64> = (client as u64..docs).step_by(clients.max(1)).collect();
        Slice {
            versions: vec![1; ids.len()],
            ids,
            rng: client_rng(client),
            picked: 0,
            writes: 0,
        }
    }

    /// A random owned document: its number and known version.
    pub fn pick(&mut self) -> (u64, u64) {
        self.picked = self.rng.random_range(0..self.ids.len().max(1));
        (self.ids[self.picked], self.versions[self.picked])
    }

    /// The last picked document was written: one version further.
    pub fn written(&mut self) {
        self.versions[self.picked] += 1;
        self.writes += 1;
    }

    /// The JSON body of the next write, without the version. `v` starts at 1:
    /// the preloaded documents have `v: 0`, and rewriting the same body is a
    /// no-op in Truce (the version stays).
    pub fn body_fields(&self) -> String {
        format!(r#""v":{},"payload":"{PAYLOAD}""#, self.writes + 1)
    }
}

/// The heartbeat tabs client `client` of `clients` owns: tab `t` belongs to
/// session `t / TABS_PER_SESSION` and is on one of [`PATHS`].
pub struct Tabs {
    tabs: Vec<(u64, usize)>,
    rng: SmallRng,
}

impl Tabs {
    /// Every tab starts on `/`.
    pub fn new(client: usize, clients: usize) -> Tabs {
        let tabs = (client as u64..SESSIONS * TABS_PER_SESSION)
            .step_by(clients.max(1))
            .map(|tab| (tab / TABS_PER_SESSION, 0))
            .collect();
        Tabs {
            tabs,
            rng: client_rng(client),
        }
    }

    /// The next heartbeat: a random owned tab, which sometimes navigated first.
    pub fn next(&mut self) -> (u64, &'static str) {
        let i = self.rng.random_range(0..self.tabs.len().max(1));
        if self.rng.random_range(0..100) < NAVIGATE_PERCENT {
            self.tabs[i].1 = self.rng.random_range(0..PATHS.len());
        }
        let (session, path) = self.tabs[i];
        (session, PATHS[path])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_partition_the_documents() {
        let mut all: Vec<u64> = (0..3).flat_map(|c| Slice::new(c, 3, 10).ids).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let mut slice = Slice::new(1, 3, 10);
        let (id, version) = slice.pick();
        assert_eq!((id % 3, version), (1, 1));
        slice.written();
        assert_eq!(slice.versions.iter().sum::<u64>(), slice.ids.len() as u64 + 1);
        assert!(slice.body_fields().starts_with(r#""v":2,"payload":"#));
    }

    #[test]
    fn tabs_and_backoff() {
        let mut tabs = Tabs::new(0, 32);
        let sessions: Vec<u64> = (0..1000).map(|_| tabs.next().0).collect();
        assert!(sessions.iter().all(|s| *s < SESSIONS));
        let mut a = Tabs::new(5, 32);
        let mut b = Tabs::new(5, 32);
        assert!(
            (0..100).all(|_| a.next() == b.next()),
            "same client, same sequence"
        );
        let mut rng = client_rng(0);
        assert!(backoff(&mut rng, 1) <= RMW_BACKOFF_BASE);
        assert!(backoff(&mut rng, 40) <= RMW_BACKOFF_MAX);
    }
}
