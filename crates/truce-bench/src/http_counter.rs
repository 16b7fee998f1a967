//! `http-hot-counter` (issue 4): the release `truce` server on a free loopback
//! port with a fresh data directory and its default settings (immediate
//! durability), driven over N keep-alive HTTP/1.1 connections that each send
//! `PATCH /v1/c/counters/hot {"$inc":{"n":1},"$upsert":true}` and wait for the
//! answer. The load generator is one thread (a current-thread tokio runtime
//! with one task per connection over bare hyper), so it takes as little of the
//! 2 cores from the server as it can. Then SQLite's in-process hot counter runs
//! with as many threads, for the ratio: a different path (embedded, no
//! network, no HTTP), labelled so.

use std::error::Error;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::cpu;
use crate::driver::{self, Config};
use crate::server::{self, Process};
use crate::sqlite_side;
use crate::stats::{Outcome, Recorder, Report, json_float, json_object};

/// The document every request increments.
const PATH: &str = "/v1/c/counters/hot";

/// The request body.
const BODY: &[u8] = br#"{"$inc":{"n":1},"$upsert":true}"#;

/// How much of an unexpected answer is kept for the error report.
const ERROR_BODY_CHARS: usize = 200;

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
    let scratch = tempfile::Builder::new()
        .prefix("truce-bench-http-")
        .tempdir_in(&config.dir)?;
    let data = scratch.path().join("data");
    let log_path = scratch.path().join("server.log");
    let port = server::free_loopback_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log = File::create(&log_path)?;
    let mut process = Process::spawn(
        "truce serve",
        Command::new(&binary)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    let ready = server::wait_until_healthy(&mut process, addr).map_err(|e| {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        format!(
            "{e}; server log:\n{}",
            tail.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    })?;
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
    let check = final_value(addr, totals.ok);
    let how = process.stop();
    println!("truce serve (pid {}) {how}", process.pid());
    drop(process);

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

/// The counter read back must equal the acknowledged increments.
fn final_value(addr: SocketAddr, acknowledged: u64) -> Result<String, String> {
    let (status, body) =
        server::http_once(addr, "GET", PATH, None).map_err(|e| format!("GET {PATH}: {e}"))?;
    match status {
        200 => {}
        404 if acknowledged == 0 => return Ok("no increment acknowledged, no document".into()),
        _ => return Err(format!("GET {PATH} answered {status}: {body}")),
    }
    let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("GET {PATH}: {e}"))?;
    match doc["n"].as_u64() {
        Some(n) if n == acknowledged => {
            Ok(format!("n = {n} = acknowledged increments (read back over HTTP)"))
        }
        _ => Err(format!(
            "n = {}, but {acknowledged} increments were acknowledged",
            doc["n"]
        )),
    }
}

/// Runs the connections on one thread until the deadline; returns the merged
/// figures and the time from the start until the last answer.
fn load(addr: SocketAddr, config: &Config) -> BoxResult<(Recorder, Duration)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let duration = config.duration;
    let connections = config.threads;
    let (totals, elapsed) = runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + duration;
        let workers: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(connection(addr, deadline, Arc::clone(&done))))
            .collect();
        let progress = tokio::spawn({
            let done = Arc::clone(&done);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    driver::show_progress("http", started.elapsed(), done.load(Ordering::Relaxed));
                }
            }
        });
        let mut totals = Recorder::default();
        for worker in workers {
            match worker.await {
                Ok(recorder) => totals.merge(&recorder),
                Err(e) => totals.error(format!("a connection task failed: {e}")),
            }
        }
        progress.abort();
        (totals, started.elapsed())
    });
    driver::show_progress("http", elapsed, done.load(Ordering::Relaxed));
    eprintln!();
    Ok((totals, elapsed))
}

/// One keep-alive connection: send, wait for the answer, repeat until the
/// deadline. A broken connection is counted as an error and reopened.
async fn connection(addr: SocketAddr, deadline: Instant, done: Arc<AtomicU64>) -> Recorder {
    let mut recorder = Recorder::default();
    while Instant::now() < deadline {
        let mut sender = match open(addr).await {
            Ok(sender) => sender,
            Err(e) => {
                recorder.error(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while Instant::now() < deadline {
            let request = Request::builder()
                .method(Method::PATCH)
                .uri(PATH)
                .header(header::HOST, "127.0.0.1")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(BODY)))
                .expect("a valid request");
            let t0 = Instant::now();
            let answer = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            }
            .await;
            recorder.latency(t0.elapsed());
            done.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok((StatusCode::OK | StatusCode::CREATED, _)) => recorder.ok += 1,
                Ok((status, body)) => {
                    let text: String = String::from_utf8_lossy(&body)
                        .chars()
                        .take(ERROR_BODY_CHARS)
                        .collect();
                    recorder.error(format!("{status}: {text}"));
                }
                Err(e) => {
                    recorder.error(format!("connection: {e}"));
                    break;
                }
            }
        }
    }
    recorder
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens one HTTP/1.1 connection (Nagle off) and drives it on its own task.
async fn open(addr: SocketAddr) -> BoxResult<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
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
