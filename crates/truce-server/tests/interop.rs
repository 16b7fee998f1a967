//! The JavaScript suites, run as part of `cargo test`: the interop suite
//! (`tests/interop`, real RxDB clients from npm against this build of `truce
//! serve`) and the dashboard test (`tests/dashboard`, Debian's Chromium driven
//! by playwright-core against a server under a conflict workload).
//!
//! Skips with a note when `node` (20 or later), `npm` or `chromium` is missing,
//! unless `TRUCE_REQUIRE_INTEROP=1` (CI) makes that a failure; as root, a
//! missing `chromium` is installed with apt-get first. Installs the locked
//! dependencies with `npm ci` when `node_modules` is missing or older than
//! `package-lock.json`, then runs `node --test` with `TRUCE_BIN` set to the
//! binary Cargo built. Output is relayed line by line (shown live with
//! `--nocapture`, otherwise on failure); both steps have a deadline.

mod common;
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::Server;
use reqwest::Method;
use serde_json::json;
use support::{Http, conflict_workload, send_as};

/// `npm ci` downloads rxdb and its dependencies: generous, but bounded.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
/// The whole node suite takes seconds; this only stops a hang.
const NODE_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of the output a failure message repeats.
const TAIL_LINES: usize = 200;

fn project_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(name)
}

/// Whether a missing tool should fail the test instead of skipping it.
fn required() -> bool {
    std::env::var("TRUCE_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!required(), "TRUCE_REQUIRE_INTEROP=1 but {why}");
    eprintln!("skipping the JavaScript interop tests: {why}");
}

/// `tool --version`'s output, or None when it cannot run.
fn version_of(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `node_modules` is missing, or was installed before the lock file changed.
/// npm writes `node_modules/.package-lock.json` on every install.
fn needs_install(dir: &Path) -> bool {
    let lock = mtime(&dir.join("package-lock.json"));
    let installed =
        mtime(&dir.join("node_modules/.package-lock.json")).or_else(|| mtime(&dir.join("node_modules")));
    match (installed, lock) {
        (None, _) => true,
        (Some(installed), Some(lock)) => installed < lock,
        (Some(_), None) => false,
    }
}

/// Runs `cmd` in its own process group, relaying its output line by line, and
/// kills the whole group (the command and everything it started, such as
/// `truce serve` children of the node tests) if it outlives `timeout`.
/// Returns the exit status (None on timeout) and the last lines of output.
#[cfg(unix)]
fn run(mut cmd: Command, what: &str, timeout: Duration) -> (Option<ExitStatus>, String) {
    use std::os::unix::process::CommandExt;

    eprintln!("== {what}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let relay = |stream: Box<dyn Read + Send>| {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut tail = tail.lock().expect("tail");
                tail.push(line);
                if tail.len() > TAIL_LINES {
                    tail.remove(0);
                }
            }
        })
    };
    let relays = [
        relay(Box::new(child.stdout.take().expect("stdout"))),
        relay(Box::new(child.stderr.take().expect("stderr"))),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            // The group id is the child's PID (process_group(0)).
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Grandchildren may hold the pipes open after a kill; do not wait forever.
    let relay_deadline = Instant::now() + Duration::from_secs(5);
    for handle in relays {
        while !handle.is_finished() && Instant::now() < relay_deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let tail = tail.lock().expect("tail").join("\n");
    (status, tail)
}

/// Checks node and npm and installs the locked dependencies of the node project
/// in `dir`; `false` (after a note) when the suite must be skipped.
#[cfg(unix)]
fn node_project(dir: &Path) -> bool {
    let Some(node) = version_of("node") else {
        skip("node is not installed");
        return false;
    };
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        skip(&format!("node {node} is older than 20"));
        return false;
    }
    let Some(npm) = version_of("npm") else {
        skip("npm is not installed");
        return false;
    };
    eprintln!("node {node}, npm {npm}, in {}", dir.display());
    if needs_install(dir) {
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
        let (status, tail) = run(cmd, "npm ci --no-audit --no-fund", NPM_CI_TIMEOUT);
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("npm ci failed ({s}):\n{tail}"),
            None => panic!("npm ci did not finish within {NPM_CI_TIMEOUT:?}:\n{tail}"),
        }
    }
    true
}

#[cfg(unix)]
#[test]
fn rxdb_clients_replicate_with_truce() {
    let dir = project_dir("interop");
    if !node_project(&dir) {
        return;
    }

    let mut cmd = Command::new("node");
    // --preserve-symlinks: the local `truce-rxdb` package is a symlink into
    // clients/js, and must find rxdb/rxjs in tests/interop/node_modules.
    cmd.args(["--preserve-symlinks", "--test", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("TRUCE_BIN", env!("CARGO_BIN_EXE_truce"))
        .env("TRUCE_LOG", "warn");
    let (status, tail) = run(cmd, "node --test (tests/interop)", NODE_TEST_TIMEOUT);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the interop tests failed ({s}):\n{tail}"),
        None => panic!("the interop tests did not finish within {NODE_TEST_TIMEOUT:?}:\n{tail}"),
    }
}

/// Debian's Chromium, installed first when missing and running as root.
#[cfg(unix)]
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.exists() {
        return Some(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return None;
    }
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
    ]);
    let (status, tail) = run(cmd, "apt-get install chromium", NPM_CI_TIMEOUT);
    if !status.is_some_and(|s| s.success()) {
        eprintln!("apt-get install chromium failed:\n{tail}");
    }
    path.exists().then_some(path)
}

#[cfg(unix)]
#[test]
fn the_dashboard_shows_a_live_workload_in_a_real_browser() {
    let dir = project_dir("dashboard");
    if !node_project(&dir) {
        return;
    }
    let Some(chromium) = chromium() else {
        return skip("chromium is not installed (apt-get install chromium)");
    };
    let server = Server::start();
    let http = Http::new(&server);
    conflict_workload(&http, "shop");
    // Keep commits and conflicts coming while the page watches: alice writes
    // `fight` at its version, bob then writes the same stale version.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, stop) = (http.fresh(), Arc::clone(&stop));
        std::thread::spawn(move || {
            for round in 100.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let doc = http.expect(Method::GET, "/v1/c/shop/fight", None, 200);
                let version = doc["_version"].as_u64().expect("a version");
                let alice = json!({"owner": "alice", "round": round, "_version": version});
                send_as(
                    &http,
                    Method::PUT,
                    "/v1/c/shop/fight",
                    ("alice", None),
                    &alice,
                    200,
                );
                let bob = json!({"owner": "bob", "_version": version});
                send_as(&http, Method::PUT, "/v1/c/shop/fight", ("bob", None), &bob, 409);
                // A source named as a property every JavaScript object has
                // took the page down for everyone (its series were kept in
                // a plain object); a conflict naming no source was drawn
                // at 0 every other tick.
                send_as(
                    &http,
                    Method::PUT,
                    "/v1/c/shop/fight",
                    ("constructor", None),
                    &bob,
                    409,
                );
                http.expect(Method::PUT, "/v1/c/shop/fight", Some(&bob), 409);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut cmd = Command::new("node");
    cmd.arg("check.mjs")
        .arg(server.url())
        .arg(&screenshot)
        .args(["fight", "reduce_contention", "bob,constructor,(no source)"])
        .env("CHROMIUM", &chromium)
        .current_dir(&dir);
    let (status, tail) = run(cmd, "node check.mjs (tests/dashboard)", NODE_TEST_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the dashboard test failed ({s}):\n{tail}"),
        None => panic!("the dashboard test did not finish within {NODE_TEST_TIMEOUT:?}:\n{tail}"),
    }
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}

/// A page of another origin calls the API from a real browser once the server
/// allows that origin (`--cors-origins`): Chromium's own CORS checks pass for
/// a write with the API's headers, `ETag` is readable, `EventSource` follows
/// the feed; a server that does not allow the origin is refused by the
/// browser (`tests/dashboard/cors.mjs`).
#[cfg(unix)]
#[test]
fn a_page_of_an_allowed_origin_calls_truce_from_a_real_browser() {
    let dir = project_dir("dashboard");
    if !node_project(&dir) {
        return;
    }
    let Some(chromium) = chromium() else {
        return skip("chromium is not installed (apt-get install chromium)");
    };
    let page_origin = format!("http://localhost:{}", common::free_port());
    let allowed = Server::start_with(&["--cors-origins", &page_origin]);
    let blocked = Server::start_with(&["--cors-origins", "https://another.example"]);
    let mut cmd = Command::new("node");
    cmd.arg("cors.mjs")
        .args([allowed.url(), blocked.url(), page_origin])
        .env("CHROMIUM", &chromium)
        .current_dir(&dir);
    let (status, tail) = run(cmd, "node cors.mjs (tests/dashboard)", NODE_TEST_TIMEOUT);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the browser CORS test failed ({s}):\n{tail}"),
        None => panic!("the browser CORS test did not finish within {NODE_TEST_TIMEOUT:?}:\n{tail}"),
    }
}
