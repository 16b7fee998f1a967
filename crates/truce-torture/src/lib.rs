//! `truce-torture`: a Jepsen-style harness for the real `truce serve`.
//!
//! It starts the server as a child process on loopback with its own data
//! directory, drives it with concurrent HTTP clients (the workloads), injects
//! faults on a schedule drawn from a seed (the nemesis), records every
//! operation as an Elle-style history, and checks it at the end (the
//! checkers). See `docs/reliability.md`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

pub mod check;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod server;
pub mod workloads;

use check::Anomaly;
use history::Op;
use nemesis::{NemesisKind, Stats};
use server::Server;
use workloads::{Ctx, Workload, counter, feed, list_append, register, replica, set};

/// Concurrent clients of each workload (the feed has one subscriber besides).
pub const CLIENTS_DEFAULT: usize = 3;

/// Anomalies of one kind shown in a summary (all are in `report.json`).
const SUMMARY_ANOMALIES_MAX: usize = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds every random choice of the schedule and of the clients.
    pub seed: u64,
    /// How long the clients run, faults included.
    pub duration: Duration,
    /// Which workloads run, concurrently.
    pub workloads: Vec<Workload>,
    /// Which faults the nemesis may inflict.
    pub nemeses: Vec<NemesisKind>,
    /// The quiet time between two faults, drawn between these bounds.
    pub fault_interval: (Duration, Duration),
    /// The `truce` binary (built with the `failpoints` feature for that nemesis).
    pub server_bin: PathBuf,
    /// Where the data directory, the server log and the history go; a
    /// temporary directory (removed after) when `None`.
    pub out: Option<PathBuf>,
    /// Clients per workload.
    pub clients: usize,
    /// How long a request may take before it is `info`.
    pub request_timeout: Duration,
}

/// Operations of one workload, by how they ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Happened.
    pub ok: u64,
    /// Certainly did not happen.
    pub fail: u64,
    /// Unknown.
    pub info: u64,
}

/// What a run did and found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The seed, to replay the schedule.
    pub seed: u64,
    /// How long the clients ran.
    pub ran_ms: u64,
    /// How long the checks took.
    pub check_ms: u64,
    /// Operations per workload.
    pub workloads: BTreeMap<String, Counts>,
    /// What the nemesis did.
    pub nemesis: Stats,
    /// Pages of the replica workload refused with 410 `history_purged`
    /// (each replica so refused started again from an empty copy): how often
    /// the purge's refusal was exercised.
    pub purge_refusals: u64,
    /// Everything the checkers flagged; empty means the run passed.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Whether no anomaly was found.
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "seed {} ran {:.1} s, checked in {:.1} s\n",
            self.seed,
            self.ran_ms as f64 / 1000.0,
            self.check_ms as f64 / 1000.0
        );
        for (name, c) in &self.workloads {
            out.push_str(&format!(
                "  {name:<12} {:>7} ok {:>6} fail {:>6} info\n",
                c.ok, c.fail, c.info
            ));
        }
        if self.workloads.contains_key(Workload::Replica.name()) {
            out.push_str(&format!(
                "  {} replica pages refused for purged history\n",
                self.purge_refusals
            ));
        }
        let n = &self.nemesis;
        out.push_str(&format!(
            "  nemesis: {} kills, {} pauses, failpoints armed {:?}, fired {:?}\n",
            n.kills, n.pauses, n.failpoints_armed, n.failpoints_fired
        ));
        if self.anomalies.is_empty() {
            out.push_str("  no anomalies\n");
        }
        // Grouped: a broken server can produce thousands of one kind.
        let mut groups: BTreeMap<(&str, &str), Vec<&Anomaly>> = BTreeMap::new();
        for a in &self.anomalies {
            groups.entry((&a.workload, &a.kind)).or_default().push(a);
        }
        for ((workload, kind), found) in groups {
            out.push_str(&format!("  ANOMALY {workload} {kind} x{}:\n", found.len()));
            for a in found.iter().take(SUMMARY_ANOMALIES_MAX) {
                out.push_str(&format!("    {}\n", a.detail));
            }
        }
        out
    }
}

/// Runs the whole thing: server, clients, faults, final reads, checks.
pub fn run(config: &Config) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: &Config) -> Result<Report, String> {
    let temp;
    let dir = match &config.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("cannot clear {}: {e}", data.display()))?;
    }
    let log = dir.join("server.log");
    let _ = std::fs::remove_file(&log); // appended across restarts, not across runs
    let mut server = Server::start(&config.server_bin, &data, &log).await?;
    let ctx = Arc::new(Ctx::new(&server.url(), config.request_timeout));

    let mut schedule_rng = StdRng::seed_from_u64(config.seed);
    let steps = nemesis::plan(
        &mut schedule_rng,
        &config.nemeses,
        config.duration,
        config.fault_interval,
    );
    let client_rng = |workload: usize, client: usize| {
        StdRng::seed_from_u64(config.seed ^ ((workload as u64 + 1) << 48) ^ ((client as u64 + 1) << 32))
    };

    let started = Instant::now();
    let deadline = started + config.duration;
    let la = Arc::new(list_append::State::default());
    let reg = Arc::new(register::State::default());
    let ctr = Arc::new(counter::State::default());
    let set_state = Arc::new(set::State::default());
    let feed_state = Arc::new(feed::State::default());
    let replica_state = Arc::new(replica::State::default());
    if config.workloads.contains(&Workload::Replica) {
        replica::setup(&ctx).await?;
    }
    let mut clients = Vec::new();
    let mut subscribers = Vec::new();
    for (w, workload) in config.workloads.iter().enumerate() {
        for c in 0..config.clients {
            let ctx = Arc::clone(&ctx);
            let rng = client_rng(w, c);
            clients.push(match workload {
                Workload::ListAppend => tokio::spawn(list_append::client(ctx, Arc::clone(&la), rng)),
                Workload::Register => tokio::spawn(register::client(ctx, Arc::clone(&reg), rng)),
                Workload::Counter => tokio::spawn(counter::client(ctx, Arc::clone(&ctr), rng, config.seed)),
                Workload::Set => tokio::spawn(set::inserter(ctx, Arc::clone(&set_state))),
                Workload::Feed => tokio::spawn(feed::writer(ctx, Arc::clone(&feed_state))),
                Workload::Replica => tokio::spawn(replica::writer(ctx, Arc::clone(&replica_state), rng)),
            });
        }
        if *workload == Workload::Set {
            clients.push(tokio::spawn(set::reader(Arc::clone(&ctx))));
        }
        if *workload == Workload::Feed {
            subscribers.push(tokio::spawn(feed::subscriber(
                Arc::clone(&ctx),
                Arc::clone(&feed_state),
            )));
        }
        if *workload == Workload::Replica {
            for (r, route) in replica::Route::ALL.into_iter().enumerate() {
                subscribers.push(tokio::spawn(replica::replica(
                    Arc::clone(&ctx),
                    Arc::clone(&replica_state),
                    route,
                    client_rng(w, config.clients + r),
                )));
            }
        }
    }

    let mut stats = Stats::default();
    let mut anomalies = Vec::new();
    let faults = nemesis::run(&mut server, &steps, deadline, &mut stats, &mut anomalies).await;
    if faults.is_ok() {
        tokio::time::sleep_until(deadline.into()).await;
    }
    ctx.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for client in clients {
        client.await.map_err(|e| format!("a client panicked: {e}"))?;
    }
    faults?;
    let ran = started.elapsed();

    // A last crash: everything acknowledged must survive it.
    server.restart(None).await?;
    stats.kills += 1;
    for workload in &config.workloads {
        match workload {
            Workload::ListAppend => list_append::finish(&ctx, &la).await,
            Workload::Register => register::finish(&ctx).await,
            Workload::Counter => counter::finish(&ctx).await,
            Workload::Set => set::finish(&ctx).await,
            Workload::Feed => feed_state.finish(),
            Workload::Replica => replica_state.finish(),
        }
    }
    for subscriber in subscribers {
        subscriber
            .await
            .map_err(|e| format!("a subscriber panicked: {e}"))?;
    }
    drop(server);

    let ops = ctx.recorder.take();
    if let Some(dir) = &config.out {
        write_history(&dir.join("history.jsonl"), &ops)?;
    }
    let checking = Instant::now();
    anomalies.extend(check_all(&ops, &config.workloads));
    anomalies.extend(ctx.unexpected.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
    let report = Report {
        seed: config.seed,
        ran_ms: ran.as_millis() as u64,
        check_ms: checking.elapsed().as_millis() as u64,
        workloads: config
            .workloads
            .iter()
            .map(|w| {
                let (ok, fail, info) = history::counts(&ops, w.name());
                (w.name().to_string(), Counts { ok, fail, info })
            })
            .collect(),
        nemesis: stats,
        purge_refusals: replica::refusals(&ops),
        anomalies,
    };
    if let Some(dir) = &config.out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("report.json"), json).map_err(|e| format!("cannot write the report: {e}"))?;
    }
    Ok(report)
}

/// Runs the checker of every workload in `workloads` over `ops`.
pub fn check_all(ops: &[Op], workloads: &[Workload]) -> Vec<Anomaly> {
    workloads
        .iter()
        .flat_map(|w| match w {
            Workload::ListAppend => check::list_append::check(ops, w.name()),
            Workload::Register => check::register::check(ops, w.name()),
            Workload::Counter => check::counter::check(ops, w.name()),
            Workload::Set => check::set::check(ops, w.name()),
            Workload::Feed => check::feed::check(ops, w.name()),
            Workload::Replica => check::replica::check(ops, w.name()),
        })
        .collect()
}

/// Writes the history as JSON lines, one event a line.
fn write_history(path: &std::path::Path, ops: &[Op]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for op in ops {
        let line = serde_json::to_string(op).map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
