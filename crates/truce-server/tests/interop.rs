//! The JavaScript interop suite (`tests/interop`, real RxDB clients from npm
//! against this build of `truce serve`), run as part of `cargo test`.
//!
//! Skips with a note when `node` (20 or later) or `npm` is missing, unless
//! `TRUCE_REQUIRE_INTEROP=1` (CI) makes that a failure. Installs the locked
//! dependencies with `npm ci` when `node_modules` is missing or older than
//! `package-lock.json`, then runs `node --test` with `TRUCE_BIN` set to the
//! binary Cargo built. Output is relayed line by line (shown live with
//! `--nocapture`, otherwise on failure); both steps have a deadline.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// `npm ci` downloads rxdb and its dependencies: generous, but bounded.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
/// The whole node suite takes seconds; this only stops a hang.
const NODE_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of the output a failure message repeats.
const TAIL_LINES: usize = 200;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
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

#[cfg(unix)]
#[test]
fn rxdb_clients_replicate_with_truce() {
    let dir = interop_dir();
    let Some(node) = version_of("node") else {
        return skip("node is not installed");
    };
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return skip(&format!("node {node} is older than 20"));
    }
    let Some(npm) = version_of("npm") else {
        return skip("npm is not installed");
    };
    eprintln!("node {node}, npm {npm}, in {}", dir.display());

    if needs_install(&dir) {
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir);
        let (status, tail) = run(cmd, "npm ci --no-audit --no-fund", NPM_CI_TIMEOUT);
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("npm ci failed ({s}):\n{tail}"),
            None => panic!("npm ci did not finish within {NPM_CI_TIMEOUT:?}:\n{tail}"),
        }
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
