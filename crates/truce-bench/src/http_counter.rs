//! `http-hot-counter` (issue 4): the release `truce` server on a free loopback
//! port with a fresh data directory and its default settings (immediate
//! durability), driven over N keep-alive HTTP/1.1 connections that each send
//! `PATCH /v1/c/counters/hot {"$inc":{"n":1},"$upsert":true}` and wait for the
//! answer. The load generator is one thread (a current-thread tokio runtime
//! with one task per connection over a minimal HTTP/1.1 client: `net::load`
//! and `net::truce_http`, the peers workloads' load generator), so it takes as little of the
//! 2 cores from the server as it can. Then SQLite's in-process hot counter runs
//! with as many threads, for the ratio: a different path (embedded, no
//! network, no HTTP), labelled so.

use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::cpu;
use crate::driver::Config;
use crate::net::load::{self, Pace};
use crate::net::{Workload, truce_http};
use crate::server::{self, TruceServer};
use crate::sqlite_side;
use crate::stats::{Outcome, Recorder, Report, json_float, json_object};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The server's run and SQLite's.
pub struct HttpReport {
    /// Keep-alive connections (and SQLite threads).
    pub connections: usize,
    /// The HTTP run: `ok` = 200/201 answers.
    pub truce: Outcome,
    /// The server's peak resident memory, KiB.
    pub server_peak_rss_kib: Option<u64>,
    /// Cores used during the HTTP run.
    pub usage: cpu::Usage,
    /// SQLite's in-process hot counter at as many threads.
    pub peer: Outcome,
}

impl HttpReport {
    /// The server's answered increments per second over SQLite's embedded ones.
    pub fn ratio(&self) -> f64 {
        let peer = self.peer.ops_per_s();
        if peer > 0.0 {
            self.truce.ops_per_s() / peer
        } else {
            f64::INFINITY
        }
    }

    /// The table, the checks and the ratio.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<26} {:>10} {:>9} {:>9} {:>9} {:>8}",
            "system", "ops/s", "p50 µs", "p99 µs", "p999 µs", "errors"
        );
        for (label, outcome) in [
            (format!("truce http ({} conns)", self.connections), &self.truce),
            (format!("sqlite embedded ({} thr)", self.connections), &self.peer),
        ] {
            let t = &outcome.totals;
            let _ = writeln!(
                out,
                "{label:<26} {:>10.1} {:>9} {:>9} {:>9} {:>8}",
                outcome.ops_per_s(),
                t.percentile_us(0.50),
                t.percentile_us(0.99),
                t.percentile_us(0.999),
                t.errors
            );
        }
        let rss = self.server_peak_rss_kib.map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
        );
        let _ = writeln!(out, "server peak RSS (VmHWM): {rss}");
        let _ = writeln!(
            out,
            "during the HTTP run: {} (this process = the load generator)",
            self.usage
        );
        for outcome in [&self.truce, &self.peer] {
            if let Some(error) = &outcome.totals.first_error {
                let _ = writeln!(out, "first error {}: {error}", outcome.system);
            }
        }
        for outcome in [&self.truce, &self.peer] {
            let _ = match &outcome.check {
                Ok(what) => writeln!(out, "check {}: ok ({what})", outcome.system),
                Err(what) => writeln!(out, "check {}: FAILED ({what})", outcome.system),
            };
        }
        let _ = writeln!(
            out,
            "ratio truce-over-http/sqlite-embedded = {:.1}× (different paths: network + HTTP against in-process calls)",
            self.ratio()
        );
        out
    }
}

impl Report for HttpReport {
    fn json_line(&self) -> String {
        let t = &self.truce.totals;
        let cores = |v: Option<f64>| v.map_or(serde_json::Value::Null, |c| json_float(c, 2));
        json_object(&[
            ("bench", "http-hot-counter".into()),
            ("connections", self.connections.into()),
            ("truce_ops_s", (self.truce.ops_per_s().round() as u64).into()),
            ("truce_p50_us", t.percentile_us(0.50).into()),
            ("truce_p99_us", t.percentile_us(0.99).into()),
            ("truce_p999_us", t.percentile_us(0.999).into()),
            ("truce_errors", t.errors.into()),
            ("server_peak_rss_kib", self.server_peak_rss_kib.into()),
            ("server_cpu_cores", cores(self.usage.watched)),
            ("client_cpu_cores", cores(self.usage.own)),
            ("other_cpu_cores", cores(self.usage.others)),
            ("peer", "sqlite-embedded".into()),
            ("peer_ops_s", (self.peer.ops_per_s().round() as u64).into()),
            ("peer_p50_us", self.peer.totals.percentile_us(0.50).into()),
            ("peer_p99_us", self.peer.totals.percentile_us(0.99).into()),
            ("ratio", json_float(self.ratio(), 2)),
        ])
    }

    fn checks_passed(&self) -> bool {
        self.truce.check.is_ok() && self.peer.check.is_ok()
    }
}

/// Starts the server, loads it, checks it, stops it; then SQLite.
pub fn run(config: &Config, server_bin: Option<&Path>) -> BoxResult<HttpReport> {
    let binary = server::truce_binary(server_bin)?;
    let mut server = TruceServer::start(&binary, &config.dir)?;
    let (addr, ready) = (server.addr, server.ready);
    let process = &mut server.process;
    println!(
        "http-hot-counter: {} keep-alive connections from one client thread, {:?}; server {} \
         (pid {}, default settings: immediate durability, info logging to a file) on {addr}, \
         answering after {ready:?}; then sqlite embedded with {} threads for reference",
        config.threads,
        config.duration,
        binary.display(),
        process.pid(),
        config.threads
    );

    let before = cpu::Snapshot::take(&[process.pid()]);
    let (totals, elapsed) = load(addr, config)?;
    let usage = cpu::Snapshot::take(&[process.pid()]).since(&before);
    println!("truce http: {usage}");
    let server_peak_rss_kib = process.peak_rss_kib();
    let check = truce_http::check(addr, Workload::HotCounter, totals.ok);
    let how = process.stop();
    println!("truce serve (pid {}) {how}", process.pid());
    drop(server);

    let truce = Outcome {
        system: "truce-http",
        elapsed,
        totals,
        check,
    };
    let sqlite_config = Config {
        in_flight: 1,
        ..config.clone()
    };
    let peer = sqlite_side::hot_counter(&sqlite_config)?;
    let report = HttpReport {
        connections: config.threads,
        truce,
        server_peak_rss_kib,
        usage,
        peer,
    };
    println!("{}", report.table());
    Ok(report)
}

/// Runs the connections on one thread until the deadline (the peers
/// workloads' load generator); returns the merged figures and the time from
/// the start until the last answer.
fn load(addr: SocketAddr, config: &Config) -> BoxResult<(Recorder, Duration)> {
    let runtime = load::runtime()?;
    let clients = runtime.block_on(truce_http::clients(addr, Workload::HotCounter, config.threads, 0))?;
    let (measured, _) = load::drive(
        &runtime,
        "truce-http",
        clients,
        config.duration,
        Pace::Closed,
        &[],
    );
    Ok((measured.totals, measured.elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(system: &'static str, ok: u64) -> Outcome {
        let mut totals = Recorder::default();
        totals.ok = ok;
        totals.latency(Duration::from_micros(400));
        Outcome {
            system,
            elapsed: Duration::from_secs(10),
            totals,
            check: Ok("fine".into()),
        }
    }

    #[test]
    fn report_line_and_ratio() {
        let report = HttpReport {
            connections: 32,
            truce: outcome("truce-http", 400_000),
            server_peak_rss_kib: Some(51_200),
            usage: cpu::Usage {
                own: Some(0.5),
                watched: Some(1.4),
                others: Some(0.01),
                own_kernel: None,
                watched_kernel: None,
                threads: Vec::new(),
                line_ns: (None, None),
            },
            peer: outcome("sqlite", 70_000),
        };
        assert!((report.ratio() - 400.0 / 70.0).abs() < 1e-9);
        let value: serde_json::Value = serde_json::from_str(&report.json_line()).expect("valid JSON");
        assert_eq!(value["bench"], "http-hot-counter");
        assert_eq!(value["truce_ops_s"], 40_000);
        assert_eq!(value["server_peak_rss_kib"], 51_200);
        assert_eq!(value["server_cpu_cores"], 1.4);
        assert_eq!(value["peer"], "sqlite-embedded");
        let table = report.table();
        assert!(table.contains("server peak RSS (VmHWM): 50.0 MiB"), "{table}");
        assert!(table.contains("different paths"));
    }
}
