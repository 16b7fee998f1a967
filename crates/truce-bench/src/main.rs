//! `truce-bench`: Truce against its peers on this machine, all durable, same
//! threads and duration, back to back in one process.
//!
//! ```text
//! cargo run --release -p truce-bench -- <WORKLOAD> \
//!     [--json] [--duration 10s] [--threads N] [--in-flight N] [--dir PATH]
//! ```
//!
//! Workloads: `hot-counter` and `spread-writes` (against SQLite; `all` runs
//! both), `transfers` (optimistic transactions under a Zipf skew, SQLite for
//! reference), `http-hot-counter` (the `truce` server over loopback HTTP),
//! `seed003` (counter caches against PostgreSQL), and `peers` (issue 7: the
//! network path against PostgreSQL and Redis, plus the embedded hot counter
//! against SQLite, with charts; `net-hot-counter`, `versioned-writes`,
//! `contended-rmw` and `heartbeats` run one of its workloads).
//! Each prints the machine line, a table, the post-run sanity
//! checks and the throughput ratio. With `--json`, one summary line per
//! measurement follows at the end. A failed sanity check or a setup error exits
//! non-zero.

/// See Cargo.toml: glibc malloc serialises frees across threads on the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cleanup;
mod cpu;
mod driver;
mod http_counter;
mod install;
mod net;
mod pg;
mod probe;
mod progress;
mod seed003;
mod server;
mod sqlite_side;
mod stats;
mod transfers;
mod truce_side;
mod workload;
mod zipf;

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use driver::Config;
use stats::{Comparison, Outcome, Report};

/// Truce against SQLite, both durable, on this machine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Which workload to run.
    workload: Workload,
    /// Also print one JSON summary line per workload at the end.
    #[arg(long)]
    json: bool,
    /// How long each system is measured, e.g. `10s`, `500ms`, `1m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Worker threads (or connections), the same on every system. Default:
    /// 8 for hot-counter and spread-writes; transfers runs 8 and then 32;
    /// 32 connections for http-hot-counter and the peers workloads, 32
    /// workers for seed003.
    #[arg(long, visible_alias = "clients", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Writes each Truce thread keeps outstanding in hot-counter (1 = wait for
    /// each answer), and in peers' embedded-hot-counter-pipelined row (where
    /// 1 means its default, 32). SQLite cannot pipeline and always runs
    /// synchronously; spread-writes reads before it writes and ignores this.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    in_flight: u16,
    /// Where the temporary databases and the fsync probe file go: put it on the
    /// disk you mean to measure (a tmpfs or ramfs is refused). Defaults to the
    /// system temp dir, or `/var/tmp` where that is a tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `truce` server binary for http-hot-counter. Default: build it with
    /// `cargo build --release -p truce-server` and use `target/release/truce`.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Systems to leave out of the peers workloads, e.g. `--skip redis,postgres`.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<net::System>,
    /// Where the peers workloads write results.json and the PNG charts.
    #[arg(long, default_value = "target/truce-bench")]
    out: PathBuf,
    /// Documents of versioned-writes (fewer for a quick smoke run).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    docs: u64,
    /// Leave out the peers workloads' open-loop (latency under load) runs.
    #[arg(long)]
    no_open_loop: bool,
    /// The peers workloads measure each system in this many slices of
    /// duration/rounds, alternating between the systems, so a neighbour's
    /// load on a shared machine falls on all of them alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// N threads increment one document / row.
    HotCounter,
    /// N threads do versioned read-then-write over 100,000 documents / rows.
    SpreadWrites,
    /// hot-counter and spread-writes.
    All,
    /// Transfers between 1,000 Zipf-skewed accounts in optimistic transactions
    /// (issue 3); SQLite's `BEGIN IMMEDIATE` for reference.
    Transfers,
    /// The release `truce` server over loopback HTTP: keep-alive connections
    /// `$inc` one document (issue 4); SQLite's embedded hot counter for reference.
    HttpHotCounter,
    /// Counter caches under concurrent confirm / open / delete (seed 003,
    /// issue 6): Truce in_commit and after_commit against PostgreSQL.
    Seed003,
    /// Issue 7's whole table: the four network workloads against PostgreSQL
    /// and Redis (closed loop, then open loop at 50 % of each peak), and the
    /// embedded hot counter against SQLite; table, JSON and PNG charts.
    Peers,
    /// peers' hot counter alone: `PATCH $inc`, `UPDATE n = n + 1`, `INCR`.
    NetHotCounter,
    /// peers' versioned writes alone: `PUT` with `_version` over 100k documents.
    VersionedWrites,
    /// peers' optimistic read-modify-write of one document, retried.
    ContendedRmw,
    /// peers' seed 000 heartbeats, skip if fresh.
    Heartbeats,
}

/// Workers of `seed003` when `--threads` is not given.
const SEED003_WORKERS: usize = 32;

/// Threads of the SQLite comparisons when `--threads` is not given.
const COMPARISON_THREADS: usize = 8;

/// Connections of `http-hot-counter` when `--threads` is not given.
const HTTP_CONNECTIONS: usize = 32;

/// Connections of the peers workloads when `--threads` is not given.
const PEERS_CLIENTS: usize = 32;

/// Thread counts of `transfers` when `--threads` is not given.
const TRANSFER_THREADS: [usize; 2] = [8, 32];

/// Parses `10s`, `250ms`, `2m` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("the duration must be positive: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// One workload: runs Truce, then SQLite, and prints the comparison.
fn compare(
    bench: &'static str,
    config: &Config,
    in_flight: usize,
    machine: &probe::Machine,
    truce: fn(&Config) -> BoxResult<Outcome>,
    sqlite: fn(&Config) -> BoxResult<Outcome>,
) -> BoxResult<Comparison> {
    println!("{machine}");
    let mode = if in_flight > 1 {
        format!("truce pipelined, {in_flight} writes in flight per thread")
    } else {
        "truce synchronous (1 in flight per thread)".into()
    };
    println!(
        "{bench}: {} threads, {:?} per system, both durable; {mode}; \
         sqlite always synchronous (one writer at a time, it cannot pipeline)",
        config.threads, config.duration
    );
    let run_config = Config {
        in_flight,
        ..config.clone()
    };
    let comparison = Comparison {
        bench,
        threads: config.threads,
        in_flight,
        truce: truce(&run_config)?,
        peer: sqlite(&run_config)?,
    };
    println!("{}", comparison.table());
    Ok(comparison)
}

fn run(cli: &Cli) -> BoxResult<Vec<Box<dyn Report>>> {
    let threads = cli.threads.map(usize::from);
    let config = Config {
        threads: threads.unwrap_or(COMPARISON_THREADS),
        duration: cli.duration,
        in_flight: usize::from(cli.in_flight),
        pace: None,
        dir: cli.dir.clone().unwrap_or_else(probe::default_dir),
    };
    probe::check_on_disk(&config.dir)?;
    let machine = probe::probe(&config.dir)?;
    let mut done: Vec<Box<dyn Report>> = Vec::new();
    if matches!(cli.workload, Workload::HotCounter | Workload::All) {
        done.push(Box::new(compare(
            "hot-counter",
            &config,
            config.in_flight,
            &machine,
            truce_side::hot_counter,
            sqlite_side::hot_counter,
        )?));
    }
    if matches!(cli.workload, Workload::SpreadWrites | Workload::All) {
        // Read-then-write cannot be pipelined: each write needs the version it read.
        done.push(Box::new(compare(
            "spread-writes",
            &config,
            1,
            &machine,
            truce_side::spread_writes,
            sqlite_side::spread_writes,
        )?));
    }
    if cli.workload == Workload::Transfers {
        let counts = threads.map_or(TRANSFER_THREADS.to_vec(), |t| vec![t]);
        for threads in counts {
            println!("{machine}");
            let config = Config {
                threads,
                ..config.clone()
            };
            done.push(Box::new(transfers::run(&config)?));
        }
    }
    if cli.workload == Workload::HttpHotCounter {
        println!("{machine}");
        let config = Config {
            threads: threads.unwrap_or(HTTP_CONNECTIONS),
            ..config.clone()
        };
        done.push(Box::new(http_counter::run(&config, cli.server_bin.as_deref())?));
    }
    if cli.workload == Workload::Seed003 {
        println!("{machine}");
        let config = Config {
            threads: threads.unwrap_or(SEED003_WORKERS),
            ..config.clone()
        };
        done.push(Box::new(seed003::run(&config)?));
    }
    let network = match cli.workload {
        Workload::Peers => net::Workload::ALL.to_vec(),
        Workload::NetHotCounter => vec![net::Workload::HotCounter],
        Workload::VersionedWrites => vec![net::Workload::VersionedWrites],
        Workload::ContendedRmw => vec![net::Workload::ContendedRmw],
        Workload::Heartbeats => vec![net::Workload::Heartbeats],
        _ => Vec::new(),
    };
    if !network.is_empty() {
        println!("{machine}");
        let options = net::Options {
            workloads: network,
            embedded: cli.workload == Workload::Peers,
            clients: threads.unwrap_or(PEERS_CLIENTS),
            embedded_threads: COMPARISON_THREADS,
            in_flight: config.in_flight,
            duration: cli.duration,
            dir: config.dir.clone(),
            skip: cli.skip.clone(),
            server_bin: cli.server_bin.clone(),
            docs: cli.docs,
            open_loop: !cli.no_open_loop,
            rounds: cli.rounds,
            out: cli.out.clone(),
        };
        done.push(Box::new(net::run(&options, &machine)?));
    }
    Ok(done)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cleanup::install() {
        eprintln!(
            "truce-bench: cannot catch Ctrl-C and SIGTERM ({e}); an interrupted run may leave its servers running"
        );
    }
    let reports = match run(&cli) {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("truce-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        for report in &reports {
            println!("{}", report.json_line());
        }
    }
    if reports.iter().all(|r| r.checks_passed()) {
        ExitCode::SUCCESS
    } else {
        eprintln!("truce-bench: a sanity check failed; the figures above measure a broken system");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["truce-bench", "hot-counter"]).expect("parses");
        assert_eq!(cli.workload, Workload::HotCounter);
        assert_eq!((cli.threads, cli.in_flight, cli.json), (None, 1, false));
        assert_eq!(cli.duration, Duration::from_secs(10));
        let cli = Cli::try_parse_from([
            "truce-bench",
            "all",
            "--json",
            "--in-flight",
            "32",
            "--duration",
            "1s",
        ])
        .expect("parses");
        assert_eq!((cli.workload, cli.in_flight, cli.json), (Workload::All, 32, true));
        let cli = Cli::try_parse_from(["truce-bench", "transfers", "--threads", "32"]).expect("parses");
        assert_eq!((cli.workload, cli.threads), (Workload::Transfers, Some(32)));
    }
}
