//! The nemesis: a schedule of faults drawn from the seed, and the code that
//! inflicts them on the server — SIGKILL and restart, SIGSTOP/SIGCONT, and a
//! restart with a storage failpoint armed, after which every write must be
//! refused with 503 until the next (clean) restart.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use crate::check::{Anomaly, kinds};
use crate::http::{Http, Outcome};
use crate::server::Server;

/// The storage failpoints of `truce` built with the `failpoints` feature.
pub const FAILPOINTS: [&str; 2] = ["storage::apply", "storage::fsync"];
/// A failpoint lets this many storage writes through, at most, before it fires.
const FAILPOINT_SKIP_MAX: u64 = 40;
/// How long an armed failpoint may take to fire: it fires within its first
/// 41 storage writes, a second or two on an idle machine, but each waits for
/// an fsync, and under other processes' disk traffic (a build, a soak) the
/// short torture test saw neither failpoint fire within 10 s. The wait ends
/// as soon as it fires.
const FAILPOINT_FIRE_WITHIN: Duration = Duration::from_secs(30);
/// How long, after it fired, writes are checked to be refused.
const FAILED_FOR: Duration = Duration::from_millis(1000);
/// Between two probe writes.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Longest pause (SIGSTOP to SIGCONT).
const PAUSE_MS_MAX: u64 = 2500;
/// Longest time a killed server stays down.
const DOWN_MS_MAX: u64 = 500;

/// A kind of fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NemesisKind {
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Restart with a storage write or fsync that fails.
    Failpoint,
}

impl FromStr for NemesisKind {
    type Err = String;

    fn from_str(s: &str) -> Result<NemesisKind, String> {
        match s {
            "kill" => Ok(NemesisKind::Kill),
            "pause" => Ok(NemesisKind::Pause),
            "failpoint" => Ok(NemesisKind::Failpoint),
            _ => Err(format!("unknown nemesis {s:?} (one of kill, pause, failpoint)")),
        }
    }
}

/// One fault with its parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, stay down this long, restart.
    Kill { down: Duration },
    /// SIGSTOP for this long.
    Pause { paused: Duration },
    /// Restart with `FAILPOINTS={name}={skip}*off->return`.
    Failpoint { name: &'static str, skip: u64 },
}

/// A fault and the quiet time before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Quiet time before the fault.
    pub after: Duration,
    /// The fault.
    pub fault: Fault,
}

/// The run's faults, drawn from `rng`: one every `interval` (drawn uniformly
/// between its bounds) until `duration` is filled. The first faults are one of
/// each kind chosen — and each of [`FAILPOINTS`] — in a random order, so even a
/// short run inflicts every one; after that, faults are drawn by weight.
pub fn plan(
    rng: &mut StdRng,
    kinds: &[NemesisKind],
    duration: Duration,
    interval: (Duration, Duration),
) -> Vec<Step> {
    let mut steps = Vec::new();
    if kinds.is_empty() {
        return steps;
    }
    let mut first: Vec<Fault> = Vec::new();
    for kind in kinds {
        match kind {
            NemesisKind::Failpoint => first.extend(FAILPOINTS.iter().map(|name| Fault::Failpoint {
                name,
                skip: rng.random_range(1..=FAILPOINT_SKIP_MAX),
            })),
            other => first.push(draw(rng, &[*other])),
        }
    }
    first.shuffle(rng);
    first.reverse(); // popped from the end
    let mut total = Duration::ZERO;
    loop {
        let after = rng.random_range(interval.0..=interval.1);
        total += after;
        if total >= duration {
            return steps;
        }
        let fault = first.pop().unwrap_or_else(|| draw(rng, kinds));
        steps.push(Step { after, fault });
    }
}

/// A fault by weight: kills most, then pauses, then failpoints.
fn draw(rng: &mut StdRng, kinds: &[NemesisKind]) -> Fault {
    let weights: Vec<(NemesisKind, u32)> = kinds
        .iter()
        .map(|k| match k {
            NemesisKind::Kill => (*k, 5),
            NemesisKind::Pause => (*k, 3),
            NemesisKind::Failpoint => (*k, 2),
        })
        .collect();
    let mut pick = rng.random_range(0..weights.iter().map(|w| w.1).sum::<u32>());
    let kind = weights
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map_or(kinds[0], |(k, _)| *k);
    match kind {
        NemesisKind::Kill => Fault::Kill {
            down: Duration::from_millis(rng.random_range(0..=DOWN_MS_MAX)),
        },
        NemesisKind::Pause => Fault::Pause {
            paused: Duration::from_millis(rng.random_range(200..=PAUSE_MS_MAX)),
        },
        NemesisKind::Failpoint => Fault::Failpoint {
            name: FAILPOINTS[rng.random_range(0..FAILPOINTS.len())],
            skip: rng.random_range(1..=FAILPOINT_SKIP_MAX),
        },
    }
}

/// What the nemesis did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// SIGKILLs (failpoint restarts included).
    pub kills: u64,
    /// SIGSTOP/SIGCONT pauses.
    pub pauses: u64,
    /// Failpoints armed, by name.
    pub failpoints_armed: BTreeMap<String, u64>,
    /// Failpoints that fired (the server answered 503 `unavailable`), by name.
    pub failpoints_fired: BTreeMap<String, u64>,
}

/// Inflicts `steps` on `server` until `deadline`; problems it saw go to `anomalies`.
pub async fn run(
    server: &mut Server,
    steps: &[Step],
    deadline: Instant,
    stats: &mut Stats,
    anomalies: &mut Vec<Anomaly>,
) -> Result<(), String> {
    let probe = Http::new(&server.url(), Duration::from_secs(2));
    for step in steps {
        let wake = tokio::time::Instant::now() + step.after;
        if Instant::now() + step.after >= deadline {
            break;
        }
        tokio::time::sleep_until(wake).await;
        match &step.fault {
            Fault::Kill { down } => {
                server.kill9();
                stats.kills += 1;
                tokio::time::sleep(*down).await;
                server.spawn(None).await?;
            }
            Fault::Pause { paused } => {
                server.pause();
                stats.pauses += 1;
                tokio::time::sleep(*paused).await;
                server.resume();
            }
            Fault::Failpoint { name, skip } => {
                server
                    .restart(Some(&format!("{name}={skip}*off->return")))
                    .await?;
                stats.kills += 1;
                *stats.failpoints_armed.entry(name.to_string()).or_default() += 1;
                if failed(&probe, anomalies).await {
                    *stats.failpoints_fired.entry(name.to_string()).or_default() += 1;
                }
                server.restart(None).await?;
                stats.kills += 1;
            }
        }
    }
    Ok(())
}

/// Writes until the server answers 503 `unavailable` (the failpoint fired),
/// then checks that it keeps refusing writes. Whether it fired.
async fn failed(probe: &Http, anomalies: &mut Vec<Anomaly>) -> bool {
    let body = json!({"$inc": {"n": 1}, "$upsert": true});
    let write = || probe.send_json(Method::PATCH, "/v1/c/nemesis/probe", &body);
    let unavailable = |o: &Outcome| matches!(o, Outcome::Info(why) if why == "503 unavailable");
    let armed = Instant::now();
    loop {
        if unavailable(&write().await) {
            break;
        }
        if armed.elapsed() > FAILPOINT_FIRE_WITHIN {
            return false;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let fired = Instant::now();
    while fired.elapsed() < FAILED_FOR {
        if let Outcome::Ok { body, .. } = write().await {
            anomalies.push(Anomaly::new(
                "nemesis",
                kinds::WRITE_AFTER_FAILURE,
                format!("a write succeeded after the storage failure: {body}"),
            ));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_fault_comes_first_and_the_plan_replays() {
        let kinds = [NemesisKind::Kill, NemesisKind::Pause, NemesisKind::Failpoint];
        let interval = (Duration::from_secs(3), Duration::from_secs(6));
        let steps = plan(
            &mut StdRng::seed_from_u64(8),
            &kinds,
            Duration::from_secs(60),
            interval,
        );
        let again = plan(
            &mut StdRng::seed_from_u64(8),
            &kinds,
            Duration::from_secs(60),
            interval,
        );
        assert_eq!(steps, again, "the seed decides the schedule");
        let first: Vec<&Fault> = steps.iter().take(4).map(|s| &s.fault).collect();
        assert!(first.iter().any(|f| matches!(f, Fault::Kill { .. })), "{first:?}");
        assert!(
            first.iter().any(|f| matches!(f, Fault::Pause { .. })),
            "{first:?}"
        );
        for name in FAILPOINTS {
            assert!(
                first
                    .iter()
                    .any(|f| matches!(f, Fault::Failpoint { name: n, .. } if *n == name)),
                "{first:?}"
            );
        }
        assert!(steps.len() >= 10, "{steps:?}");
        assert!(
            steps
                .iter()
                .all(|s| s.after >= interval.0 && s.after <= interval.1)
        );
    }
}
