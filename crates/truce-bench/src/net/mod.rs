//! `peers` (issue 7): Truce against the systems users would pick instead, on
//! the network path, back to back in one run with the same clients: `truce
//! serve` over HTTP keep-alive, PostgreSQL and Redis over their native
//! protocols, each started by the bench and ended by its process id. Every
//! workload runs closed loop (the peak), then open loop at 50 % of that peak
//! (latency under load). The embedded hot counter (Truce's Rust API against
//! SQLite, in process) closes the table. Results: a table, JSON, PNG charts.

pub mod charts;
pub mod committer;
pub mod load;
mod pg_peer;
mod redis_peer;
pub mod report;
pub mod truce_http;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use crate::driver::Config;
use crate::pg::{self, PgError, PgServer};
use crate::server::{self, TruceServer};
use crate::stats::Report;
use crate::{sqlite_side, truce_side};
use committer::{Committer, Counters};
use load::{Client, Measured, Pace};
use report::{Mode, Row};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The open-loop arrival rate as a fraction of the closed-loop peak.
const OPEN_LOOP_FRACTION: f64 = 0.5;

/// A network workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One document (row, key) incremented by every client.
    HotCounter,
    /// Writes at a known version over 100,000 documents.
    VersionedWrites,
    /// Optimistic read-modify-write of one document, retried until it succeeds.
    ContendedRmw,
    /// Seed 000's heartbeats: 1,000 sessions × 3 tabs, skip if fresh.
    Heartbeats,
}

impl Workload {
    /// Every network workload, in table order.
    pub const ALL: [Workload; 4] = [
        Workload::HotCounter,
        Workload::VersionedWrites,
        Workload::ContendedRmw,
        Workload::Heartbeats,
    ];

    /// The name in tables, JSON and chart files.
    pub fn name(self) -> &'static str {
        match self {
            Workload::HotCounter => "hot-counter",
            Workload::VersionedWrites => "versioned-writes",
            Workload::ContendedRmw => "contended-rmw",
            Workload::Heartbeats => "heartbeats",
        }
    }

    /// The peers it is compared with (issue 7's table).
    fn peers(self) -> &'static [System] {
        match self {
            Workload::HotCounter | Workload::ContendedRmw => &[System::Postgres, System::Redis],
            Workload::VersionedWrites | Workload::Heartbeats => &[System::Postgres],
        }
    }
}

/// The name of the embedded row: 8 threads, each waiting for its answer.
pub const EMBEDDED: &str = "embedded-hot-counter";
/// The name of the embedded row with writes in flight (`submit_patch`, the
/// oldest `PendingWrite` awaited when a thread's window is full).
pub const EMBEDDED_PIPELINED: &str = "embedded-hot-counter-pipelined";
/// Writes each thread keeps in flight in [`EMBEDDED_PIPELINED`] unless
/// `--in-flight` sets more than one.
pub const EMBEDDED_PIPELINED_IN_FLIGHT: usize = 32;

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// `truce serve` (or the engine in process for the embedded row).
    Truce,
    /// PostgreSQL, started with `initdb`/`pg_ctl`.
    Postgres,
    /// `redis-server`, AOF with `appendfsync always`.
    Redis,
    /// SQLite in process, WAL, `synchronous=FULL`.
    Sqlite,
}

impl System {
    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            System::Truce => "truce",
            System::Postgres => "postgres",
            System::Redis => "redis",
            System::Sqlite => "sqlite",
        }
    }
}

/// What a `peers` run is asked to do.
pub struct Options {
    /// Network workloads to run.
    pub workloads: Vec<Workload>,
    /// Also the embedded hot counter against SQLite.
    pub embedded: bool,
    /// Connections of the network workloads.
    pub clients: usize,
    /// Threads of the embedded hot counter.
    pub embedded_threads: usize,
    /// Writes each embedded Truce thread keeps in flight.
    pub in_flight: usize,
    /// How long each system is measured, in each pace.
    pub duration: Duration,
    /// Where the servers' data and the temporary databases go.
    pub dir: PathBuf,
    /// Systems not to run.
    pub skip: Vec<System>,
    /// The `truce` binary, if given.
    pub server_bin: Option<PathBuf>,
    /// Documents of versioned-writes.
    pub docs: u64,
    /// Also measure latency at a fixed rate (50 % of each peak).
    pub open_loop: bool,
    /// Slices per system and pace, alternating between the systems.
    pub rounds: u32,
    /// Where the charts, results.json and machine.json go.
    pub out: PathBuf,
}

/// Every row of a `peers` run.
pub struct PeersReport {
    /// In run order.
    pub rows: Vec<Row>,
}

impl Report for PeersReport {
    /// One JSON object per row, one per line.
    fn json_line(&self) -> String {
        let lines: Vec<String> = self
            .rows
            .iter()
            .map(|row| row.json(report::ratio(&self.rows, row)))
            .collect();
        lines.join("\n")
    }

    fn checks_passed(&self) -> bool {
        self.rows.iter().all(|row| row.check.is_ok())
    }
}

/// Runs everything asked, prints the table, writes results.json, machine.json
/// (the machine line's figures) and the charts.
pub fn run(options: &Options, machine: &crate::probe::Machine) -> BoxResult<PeersReport> {
    let skipped = |system: System| options.skip.contains(&system);
    let truce_bin = if skipped(System::Truce) || options.workloads.is_empty() {
        None
    } else {
        Some(server::truce_binary(options.server_bin.as_deref())?)
    };
    let mut postgres = LazyPostgres::new(skipped(System::Postgres));
    let redis_bin = match (
        skipped(System::Redis),
        options
            .workloads
            .iter()
            .any(|w| w.peers().contains(&System::Redis)),
    ) {
        (false, true) => redis_peer::find_or_install()
            .map_err(|why| println!("redis: skipped: {why}"))
            .ok(),
        _ => None,
    };
    let mut rows = Vec::new();
    for &workload in &options.workloads {
        println!(
            "== {}: {} clients, {:?} per system{}",
            workload.name(),
            options.clients,
            options.duration,
            if options.open_loop {
                ", then open loop at 50 % of each peak"
            } else {
                ""
            }
        );
        let mut sides = Vec::new();
        if let Some(binary) = &truce_bin {
            sides.push(Side::truce(binary, workload, options)?);
        }
        for &peer in workload.peers() {
            match peer {
                System::Postgres => {
                    if let Some(server) = postgres.get(options)? {
                        sides.push(Side::postgres(server, workload, options)?);
                    }
                }
                System::Redis => match &redis_bin {
                    Some(binary) => sides.push(Side::redis(binary, workload, options)?),
                    None => println!("redis {}: skipped", workload.name()),
                },
                System::Truce | System::Sqlite => {}
            }
        }
        rows.extend(measure(workload, &mut sides, options));
    }
    drop(postgres);
    if options.embedded {
        rows.extend(embedded_rows(options)?);
    }
    println!("{}", report::table(&rows));
    let report = PeersReport { rows };
    std::fs::create_dir_all(&options.out)?;
    let results = options.out.join("results.json");
    std::fs::write(&results, format!("{}\n", report.json_line()))?;
    std::fs::write(options.out.join("machine.json"), format!("{}\n", machine.json()))?;
    match charts::draw(&report.rows, &options.out) {
        Ok(files) => println!(
            "results: {}; charts: {}",
            results.display(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => println!("results: {}; charts not drawn: {e}", results.display()),
    }
    Ok(report)
}

/// PostgreSQL, started on first use (one server for every workload, fresh
/// tables for each), or skipped — said once, with the reason.
struct LazyPostgres {
    state: Option<Option<PgServer>>,
    skip: bool,
}

impl LazyPostgres {
    fn new(skip: bool) -> LazyPostgres {
        LazyPostgres { state: None, skip }
    }

    /// The server, started the first time; `None` when skipped.
    fn get(&mut self, options: &Options) -> BoxResult<Option<&PgServer>> {
        if self.state.is_none() {
            self.state = Some(if self.skip {
                println!("postgres: skipped (--skip)");
                None
            } else {
                match start_postgres(options) {
                    Ok(server) => Some(server),
                    Err(PgError::Skipped(why)) => {
                        println!("postgres: skipped: {why}");
                        None
                    }
                    Err(PgError::Failed(e)) => return Err(e),
                }
            });
        }
        Ok(self.state.as_ref().and_then(Option::as_ref))
    }
}

fn start_postgres(options: &Options) -> Result<PgServer, PgError> {
    let bin = pg::find_or_install()?;
    let config = Config {
        threads: options.clients,
        duration: options.duration,
        in_flight: 1,
        pace: None,
        dir: options.dir.clone(),
    };
    let server = PgServer::start(&bin, &config)?;
    println!(
        "postgres: {} (pid {}, 127.0.0.1:{}, default settings: synchronous_commit = on, fsync = on)",
        bin.display(),
        server.pid,
        server.port
    );
    Ok(server)
}

/// A system ready to be measured on one workload: its server (ended when
/// the side is dropped, after its connections), a runtime and the clients.
struct Side {
    system: System,
    /// Declared before the runtime and the server: dropped first.
    clients: Box<dyn Slices>,
    runtime: tokio::runtime::Runtime,
    server: Server,
    workload: Workload,
}

/// The server behind a side.
enum Server {
    Truce(TruceServer),
    Redis(redis_peer::RedisServer),
    /// The shared PostgreSQL server: its connection string and the ids of the
    /// postmaster and its children once the clients connected.
    Postgres {
        conninfo: String,
        pids: Vec<u32>,
    },
}

/// Runs a side's clients for one slice of time, whatever their type.
trait Slices {
    fn slice(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        label: &str,
        duration: Duration,
        pace: Pace,
        watched: &[u32],
    ) -> Measured;
}

/// The clients of one system (given back by every slice for the next).
struct Clients<C>(Vec<C>);

impl<C: Client + 'static> Slices for Clients<C> {
    fn slice(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        label: &str,
        duration: Duration,
        pace: Pace,
        watched: &[u32],
    ) -> Measured {
        let (measured, clients) = load::drive(
            runtime,
            label,
            std::mem::take(&mut self.0),
            duration,
            pace,
            watched,
        );
        self.0 = clients;
        measured
    }
}

impl Side {
    /// A fresh `truce serve` for the workload, its data created and its clients connected.
    fn truce(binary: &std::path::Path, workload: Workload, options: &Options) -> BoxResult<Side> {
        let server = TruceServer::start(binary, &options.dir)?;
        println!(
            "truce: {} serve (pid {}) on {}, default settings",
            binary.display(),
            server.process.pid(),
            server.addr
        );
        let runtime = load::runtime()?;
        let clients = runtime.block_on(truce_http::clients(
            server.addr,
            workload,
            options.clients,
            options.docs,
        ))?;
        Ok(Side {
            system: System::Truce,
            clients: Box::new(Clients(clients)),
            runtime,
            server: Server::Truce(server),
            workload,
        })
    }

    /// Fresh tables on the shared PostgreSQL server.
    fn postgres(server: &PgServer, workload: Workload, options: &Options) -> BoxResult<Side> {
        let conninfo = server.conninfo();
        let runtime = load::runtime()?;
        let clients = runtime.block_on(pg_peer::clients(
            &conninfo,
            workload,
            options.clients,
            options.docs,
        ))?;
        let mut pids = vec![server.pid];
        pids.extend(server::children(server.pid));
        Ok(Side {
            system: System::Postgres,
            clients: Box::new(Clients(clients)),
            runtime,
            server: Server::Postgres { conninfo, pids },
            workload,
        })
    }

    /// A fresh redis-server for the workload.
    fn redis(binary: &std::path::Path, workload: Workload, options: &Options) -> BoxResult<Side> {
        let server = redis_peer::RedisServer::start(binary, &options.dir)?;
        println!(
            "redis: {} (pid {}) on {}, appendonly yes, appendfsync always, save ''",
            binary.display(),
            server.process.pid(),
            server.addr
        );
        let runtime = load::runtime()?;
        let clients = runtime.block_on(redis_peer::clients(server.addr, workload, options.clients))?;
        Ok(Side {
            system: System::Redis,
            clients: Box::new(Clients(clients)),
            runtime,
            server: Server::Redis(server),
            workload,
        })
    }

    /// Truce's committer counters now; `None` for the peers.
    fn committer_counters(&self) -> Option<Counters> {
        match &self.server {
            Server::Truce(s) => Counters::read(s.addr),
            Server::Redis(_) | Server::Postgres { .. } => None,
        }
    }

    /// The server's process ids, for the CPU split.
    fn watched(&self) -> Vec<u32> {
        match &self.server {
            Server::Truce(s) => vec![s.process.pid()],
            Server::Redis(s) => vec![s.process.pid()],
            Server::Postgres { pids, .. } => pids.clone(),
        }
    }

    /// The server's peak memory so far and what kind of figure it is.
    fn memory(&self) -> (&'static str, Option<u64>) {
        match &self.server {
            Server::Truce(s) => ("VmHWM", s.process.peak_rss_kib()),
            Server::Redis(s) => ("VmHWM", s.process.peak_rss_kib()),
            // Shared buffers are mapped by every backend: PSS splits them fairly.
            Server::Postgres { pids, .. } => {
                let each: Vec<u64> = pids.iter().filter_map(|&pid| server::pss_kib(pid)).collect();
                ("PSS sum", (!each.is_empty()).then(|| each.iter().sum()))
            }
        }
    }

    /// The post-run check against `successes` in all.
    fn check(&self, successes: u64) -> Result<String, String> {
        match &self.server {
            Server::Truce(s) => truce_http::check(s.addr, self.workload, successes),
            Server::Redis(s) => self
                .runtime
                .block_on(redis_peer::check(s.addr, self.workload, successes)),
            Server::Postgres { conninfo, .. } => {
                self.runtime
                    .block_on(pg_peer::check(conninfo, self.workload, successes))
            }
        }
    }
}

/// Every side closed loop, then open loop at half its own peak; each in
/// `options.rounds` slices that alternate between the systems, so that a
/// neighbour's load on a shared machine falls on all of them alike. Memory
/// is sampled after every slice; the check gets the successes of all.
fn measure(workload: Workload, sides: &mut [Side], options: &Options) -> Vec<Row> {
    let rounds = options.rounds.max(1);
    let slice = options.duration / rounds;
    let mut paces: Vec<Vec<Pace>> = vec![vec![Pace::Closed; sides.len()]];
    let mut rows = Vec::new();
    let mut peaks = vec![None; sides.len()];
    let mut successes = vec![0; sides.len()];
    for phase in 0..2 {
        if phase == 1 {
            if !options.open_loop {
                break;
            }
            let open: Vec<Pace> = rows
                .iter()
                .map(|row: &Row| Pace::Open {
                    ops_per_s: row.ops_s * OPEN_LOOP_FRACTION,
                })
                .collect();
            paces.push(open);
        }
        let mut merged: Vec<Option<Measured>> = (0..sides.len()).map(|_| None).collect();
        for round in 0..rounds {
            for (i, side) in sides.iter_mut().enumerate() {
                let pace = paces[phase][i];
                if let Pace::Open { ops_per_s } = pace
                    && ops_per_s <= 0.0
                {
                    continue;
                }
                let label = format!(
                    "{} {} ({}/{rounds})",
                    side.system.name(),
                    workload.name(),
                    round + 1
                );
                let watched = side.watched();
                let before = side.committer_counters();
                let mut measured = side.clients.slice(&side.runtime, &label, slice, pace, &watched);
                measured.committer = before
                    .zip(side.committer_counters())
                    .map(|(before, after)| Committer::between(before, after));
                let (_, peak) = side.memory();
                peaks[i] = peaks[i].max(peak);
                match &mut merged[i] {
                    Some(total) => total.absorb(measured),
                    None => merged[i] = Some(measured),
                }
            }
        }
        let phase_rows: Vec<Row> = merged
            .into_iter()
            .zip(sides.iter())
            .enumerate()
            .filter_map(|(i, (measured, side))| {
                let measured = measured?;
                successes[i] += measured.totals.ok;
                let mode = match paces[phase][i] {
                    Pace::Closed => Mode::Closed,
                    Pace::Open { ops_per_s } => Mode::Open {
                        target_ops_s: ops_per_s,
                    },
                };
                Some(summarize(workload, side.system, mode, options.clients, &measured))
            })
            .collect();
        if phase == 0 {
            rows = phase_rows;
        } else {
            rows.extend(phase_rows);
        }
    }
    for (i, side) in sides.iter().enumerate() {
        let check = side.check(successes[i]);
        match &check {
            Ok(what) => println!("{} {}: check ok ({what})", side.system.name(), workload.name()),
            Err(what) => println!(
                "{} {}: check FAILED ({what})",
                side.system.name(),
                workload.name()
            ),
        }
        for row in rows.iter_mut().filter(|r| r.system == side.system) {
            row.check = check.clone();
            row.peak_memory_kib = peaks[i];
            row.memory_kind = side.memory().0;
        }
    }
    rows.sort_by_key(|r| {
        (
            sides.iter().position(|s| s.system == r.system),
            r.mode != Mode::Closed,
        )
    });
    rows
}

/// One run's row, and its summary line.
fn summarize(workload: Workload, system: System, mode: Mode, clients: usize, measured: &Measured) -> Row {
    let row = Row {
        usage: measured.usage.clone(),
        committer: measured.committer,
        per_second: measured.per_second.clone(),
        ..Row::new(
            workload.name(),
            system,
            mode,
            clients,
            &measured.totals,
            measured.elapsed,
        )
    };
    println!(
        "{} {} {}: {:.0} ops/s, p50/p99/p999 {}/{}/{} µs, {} errors; {}{}; per second: {}",
        system.name(),
        workload.name(),
        row.mode_name(),
        row.ops_s,
        row.p50_us,
        row.p99_us,
        row.p999_us,
        row.errors,
        measured.usage,
        measured.committer.map(|c| format!("; {c}")).unwrap_or_default(),
        crate::driver::timeline(&measured.per_second)
    );
    row
}

/// The embedded hot counter: Truce's Rust API against SQLite, in process —
/// Truce synchronous (each thread waits for its answer) and pipelined (writes
/// in flight); SQLite cannot pipeline, so its one synchronous run is the peer
/// of both rows. Then, unless `--no-open-loop`, the synchronous row under a
/// fixed arrival rate of half each system's own peak, as the network
/// workloads are (the pipelined row measures a peak: its threads never wait
/// for an answer, so a schedule has nothing to hold them to).
fn embedded_rows(options: &Options) -> BoxResult<Vec<Row>> {
    let config = Config {
        threads: options.embedded_threads,
        duration: options.duration,
        in_flight: 1,
        pace: None,
        dir: options.dir.clone(),
    };
    let pipelined = if options.in_flight > 1 {
        options.in_flight
    } else {
        EMBEDDED_PIPELINED_IN_FLIGHT
    };
    println!(
        "== {EMBEDDED}: {} threads, {:?} per system; {EMBEDDED_PIPELINED}: Truce with {pipelined} writes in flight per thread{}",
        config.threads,
        config.duration,
        if options.open_loop {
            format!("; then {EMBEDDED} in an open loop at 50 % of each peak")
        } else {
            String::new()
        }
    );
    let truce = |workload: &'static str, mode: Mode, config: &Config| -> BoxResult<Row> {
        let (outcome, stats) = truce_side::hot_counter_observed(config)?;
        let committer = Committer::from_stats(&stats, outcome.elapsed.as_secs_f64());
        println!("truce {workload} {}: {committer}", mode.name());
        Ok(Row {
            committer: Some(committer),
            ..Row::embedded(workload, System::Truce, mode, config.threads, &outcome)
        })
    };
    let mut rows = Vec::new();
    if !options.skip.contains(&System::Truce) {
        for (workload, in_flight) in [(EMBEDDED, 1), (EMBEDDED_PIPELINED, pipelined)] {
            let config = Config {
                in_flight,
                ..config.clone()
            };
            rows.push(truce(workload, Mode::Closed, &config)?);
        }
    }
    if !options.skip.contains(&System::Sqlite) {
        let outcome = sqlite_side::hot_counter(&config)?;
        for workload in [EMBEDDED, EMBEDDED_PIPELINED] {
            rows.push(Row::embedded(
                workload,
                System::Sqlite,
                Mode::Closed,
                config.threads,
                &outcome,
            ));
        }
    }
    if options.open_loop {
        let peaks: Vec<(System, f64)> = rows
            .iter()
            .filter(|row| row.workload == EMBEDDED && row.ops_s > 0.0)
            .map(|row| (row.system, row.ops_s))
            .collect();
        for (system, peak) in peaks {
            let target_ops_s = peak * OPEN_LOOP_FRACTION;
            let (mode, config) = (
                Mode::Open { target_ops_s },
                Config {
                    pace: Some(target_ops_s),
                    ..config.clone()
                },
            );
            rows.push(match system {
                System::Truce => truce(EMBEDDED, mode, &config)?,
                _ => Row::embedded(
                    EMBEDDED,
                    system,
                    mode,
                    config.threads,
                    &sqlite_side::hot_counter(&config)?,
                ),
            });
        }
    }
    Ok(rows)
}
