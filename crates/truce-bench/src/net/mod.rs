//! `peers` (issue 7): Truce against the systems users would pick instead, on
//! the network path, back to back in one run with the same clients: `truce
//! serve` over HTTP keep-alive, PostgreSQL and Redis over their native
//! protocols, each started by the bench and ended by its process id. Every
//! workload runs closed loop (the peak), then open loop at 50 % of that peak
//! (latency under load). The embedded hot counter (Truce's Rust API against
//! SQLite, in process) closes the table. Results: a table, JSON, PNG charts.

pub mod charts;
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

/// The name of the embedded row.
pub const EMBEDDED: &str = "embedded-hot-counter";

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
    /// Where the charts and results.json go.
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

/// Runs everything asked, prints the table, writes results.json and the charts.
pub fn run(options: &Options) -> BoxResult<PeersReport> {
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
        if let Some(binary) = &truce_bin {
            rows.extend(truce_rows(binary, workload, options)?);
        }
        for &peer in workload.peers() {
            match peer {
                System::Postgres => {
                    if let Some(server) = postgres.get(options)? {
                        rows.extend(postgres_rows(server, workload, options)?);
                    }
                }
                System::Redis => match &redis_bin {
                    Some(binary) => rows.extend(redis_rows(binary, workload, options)?),
                    None => println!("redis {}: skipped", workload.name()),
                },
                System::Truce | System::Sqlite => {}
            }
        }
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

/// The closed-loop run, then the open-loop one at half its rate; `memory`
/// is sampled after each, `check` gets the successes of both.
#[allow(clippy::too_many_arguments)]
fn measure<C: Client + 'static>(
    runtime: &tokio::runtime::Runtime,
    workload: &'static str,
    system: System,
    clients: Vec<C>,
    options: &Options,
    watched: &[u32],
    memory: (&'static str, &dyn Fn() -> Option<u64>),
    check: &dyn Fn(u64) -> Result<String, String>,
) -> Vec<Row> {
    let count = clients.len();
    let label = format!("{} {workload}", system.name());
    let summarize = |mode: Mode, measured: &Measured| {
        let row = Row {
            usage: measured.usage,
            per_second: measured.per_second.clone(),
            ..Row::new(workload, system, mode, count, &measured.totals, measured.elapsed)
        };
        println!(
            "{label} {}: {:.0} ops/s, p50/p99/p999 {}/{}/{} µs, {} errors; {}; per second: {}",
            row.mode_name(),
            row.ops_s,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.errors,
            measured.usage,
            crate::driver::timeline(&measured.per_second)
        );
        row
    };
    let (closed, clients) = load::drive(runtime, &label, clients, options.duration, Pace::Closed, watched);
    let mut peak = memory.1();
    let mut successes = closed.totals.ok;
    let mut rows = vec![summarize(Mode::Closed, &closed)];
    let peak_ops_s = rows[0].ops_s;
    if options.open_loop && peak_ops_s > 0.0 {
        let target_ops_s = peak_ops_s * OPEN_LOOP_FRACTION;
        let (open, _) = load::drive(
            runtime,
            &format!("{label} @{target_ops_s:.0}/s"),
            clients,
            options.duration,
            Pace::Open {
                ops_per_s: target_ops_s,
            },
            watched,
        );
        successes += open.totals.ok;
        peak = peak.max(memory.1());
        rows.push(summarize(Mode::Open { target_ops_s }, &open));
    }
    let check = check(successes);
    match &check {
        Ok(what) => println!("{label}: check ok ({what})"),
        Err(what) => println!("{label}: check FAILED ({what})"),
    }
    for row in &mut rows {
        row.check = check.clone();
        row.peak_memory_kib = peak;
        row.memory_kind = memory.0;
    }
    rows
}

/// A fresh `truce serve` for the workload.
fn truce_rows(binary: &std::path::Path, workload: Workload, options: &Options) -> BoxResult<Vec<Row>> {
    let mut server = TruceServer::start(binary, &options.dir)?;
    let addr = server.addr;
    println!(
        "truce: {} serve (pid {}) on {addr}, default settings",
        binary.display(),
        server.process.pid()
    );
    let runtime = load::runtime()?;
    let clients = runtime.block_on(truce_http::clients(addr, workload, options.clients, options.docs))?;
    let pid = server.process.pid();
    let process = &server.process;
    let rows = measure(
        &runtime,
        workload.name(),
        System::Truce,
        clients,
        options,
        &[pid],
        ("VmHWM", &|| process.peak_rss_kib()),
        &|ok| truce_http::check(addr, workload, ok),
    );
    drop(runtime);
    let how = server.process.stop();
    println!("truce serve (pid {pid}) {how}");
    Ok(rows)
}

/// Fresh tables on the shared PostgreSQL server.
fn postgres_rows(server: &PgServer, workload: Workload, options: &Options) -> BoxResult<Vec<Row>> {
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
    // Shared buffers are mapped by every backend: PSS splits them fairly.
    let memory = || {
        let each: Vec<u64> = pids.iter().filter_map(|&pid| server::pss_kib(pid)).collect();
        (!each.is_empty()).then(|| each.iter().sum())
    };
    let rows = measure(
        &runtime,
        workload.name(),
        System::Postgres,
        clients,
        options,
        &pids,
        ("PSS sum", &memory),
        &|ok| runtime.block_on(pg_peer::check(&conninfo, workload, ok)),
    );
    Ok(rows)
}

/// A fresh redis-server for the workload.
fn redis_rows(binary: &std::path::Path, workload: Workload, options: &Options) -> BoxResult<Vec<Row>> {
    let mut server = redis_peer::RedisServer::start(binary, &options.dir)?;
    let (addr, pid) = (server.addr, server.process.pid());
    println!(
        "redis: {} (pid {pid}) on {addr}, appendonly yes, appendfsync always, save ''",
        binary.display()
    );
    let runtime = load::runtime()?;
    let clients = runtime.block_on(redis_peer::clients(addr, workload, options.clients))?;
    let process = &server.process;
    let rows = measure(
        &runtime,
        workload.name(),
        System::Redis,
        clients,
        options,
        &[pid],
        ("VmHWM", &|| process.peak_rss_kib()),
        &|ok| runtime.block_on(redis_peer::check(addr, workload, ok)),
    );
    drop(runtime);
    let how = server.process.stop();
    println!("redis-server (pid {pid}) {how}");
    Ok(rows)
}

/// The embedded hot counter: Truce's Rust API against SQLite, in process.
fn embedded_rows(options: &Options) -> BoxResult<Vec<Row>> {
    let config = Config {
        threads: options.embedded_threads,
        duration: options.duration,
        in_flight: options.in_flight,
        dir: options.dir.clone(),
    };
    println!(
        "== {EMBEDDED}: {} threads, {:?} per system, {} in flight per Truce thread",
        config.threads, config.duration, config.in_flight
    );
    let mut rows = Vec::new();
    if !options.skip.contains(&System::Truce) {
        let outcome = truce_side::hot_counter(&config)?;
        rows.push(Row::embedded(EMBEDDED, System::Truce, config.threads, &outcome));
    }
    if !options.skip.contains(&System::Sqlite) {
        let outcome = sqlite_side::hot_counter(&Config {
            in_flight: 1,
            ..config
        })?;
        rows.push(Row::embedded(
            EMBEDDED,
            System::Sqlite,
            options.embedded_threads,
            &outcome,
        ));
    }
    Ok(rows)
}
