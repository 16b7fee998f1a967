//! An interrupted bench leaves nothing running: SIGINT (Ctrl-C), SIGTERM, or
//! SIGHUP with its stderr gone (a closed terminal) in the middle of a
//! measurement ends every server the bench started — `truce serve`, and
//! PostgreSQL and Redis where they are installed (the postmaster is not even
//! the bench's child) — removes their directories, and ends the bench by that
//! signal.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{postgres_installed, runs, server_binary};

/// How long the bench may take to start its servers (PostgreSQL's initdb).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// How long the undoing may take (PostgreSQL's fast stop, SIGTERMs).
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// The process id in a line the bench prints when it starts a server:
/// `truce: … serve (pid 123) on …`, `postgres: … (pid 123, …)`,
/// `redis: … (pid 123) on …`.
fn started_pid(line: &str) -> Option<(&'static str, u32)> {
    let system = ["truce", "postgres", "redis"]
        .into_iter()
        .find(|s| line.starts_with(&format!("{s}: ")))?;
    let rest = &line[line.find("(pid ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((system, digits.parse().ok()?))
}

/// Whether `pid` is a live process (not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

/// The servers the bench said it started: killed by id when the test ends, if
/// a failed check left them running, so a failure leaves nothing behind either.
struct Servers(Vec<(&'static str, u32)>);

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, pid) in &self.0 {
            if running(*pid) {
                // SAFETY: kill(2) has no memory-safety preconditions. (The id
                // is one the bench printed for a server it started, checked
                // just now to be live.)
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// The bench: if a check fails before it exits, SIGTERM (its own clean-up
/// then stops its servers), and SIGKILL if that takes too long.
struct Bench(Child);

impl Drop for Bench {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) has no memory-safety preconditions; the id is
            // our own child's, not yet reaped.
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = wait_for(&mut self.0, EXIT_DEADLINE);
        }
    }
}

/// Waits for `child` to exit, killing it if it takes longer than `deadline`.
fn wait_for(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            if !std::thread::panicking() {
                panic!("the bench did not exit within {deadline:?} of the signal");
            }
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the hot counter against every installed system, sends `signal` once
/// all of them are up and measuring (with the bench's stderr closed first if
/// `close_stderr`), and checks what is left.
fn interrupt_with(signal: i32, close_stderr: bool) {
    let dir = common::scratch_dir();
    let mut expected = vec!["truce"];
    let mut skip = Vec::new();
    for (system, installed) in [
        ("postgres", postgres_installed()),
        ("redis", runs("redis-server")),
    ] {
        if installed {
            expected.push(system);
        } else {
            skip.push(system);
        }
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_truce-bench"));
    command
        .args([
            "net-hot-counter",
            "--no-open-loop",
            "--rounds",
            "1",
            "--duration",
            "60s",
            "--clients",
            "2",
        ])
        .arg("--server-bin")
        .arg(server_binary())
        .arg("--dir")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !skip.is_empty() {
        command.arg("--skip").arg(skip.join(","));
    }
    // Declared before the bench, so dropped after it: on a failed check the
    // bench is asked to clean up first, and only what it left is killed.
    let mut servers = Servers(Vec::new());
    let mut bench = Bench(command.spawn().expect("the bench starts"));
    let stdout = bench.0.stdout.take().expect("stdout");
    let stderr = bench.0.stderr.take().expect("stderr");
    let (lines, read) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Read as it comes, unless it is to be closed: then it is left in its
    // pipe (a few lines before the signal) and closed just before it.
    let (errors, stderr_text) = mpsc::channel();
    let mut unread = None;
    if close_stderr {
        unread = Some(stderr);
    } else {
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
            let _ = errors.send(text);
        });
    }

    let until = Instant::now() + START_DEADLINE;
    let mut seen = String::new();
    while servers.0.len() < expected.len() {
        let line = read
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("not every server started; stdout so far:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        servers.0.extend(started_pid(&line));
    }
    // Into the measurement (60 s long): servers loaded, clients connected.
    std::thread::sleep(Duration::from_secs(2));
    for (system, pid) in &servers.0 {
        assert!(
            running(*pid),
            "{system} (pid {pid}) is not running before the signal"
        );
    }
    drop(unread.take());
    // SAFETY: kill(2) has no memory-safety preconditions; the id is our own
    // child's, not yet reaped.
    unsafe {
        libc::kill(bench.0.id() as libc::pid_t, signal);
    }
    let status = wait_for(&mut bench.0, EXIT_DEADLINE);
    // A server that outlived the bench may still hold the pipe open.
    let stderr = if close_stderr {
        "(closed before the signal)".to_string()
    } else {
        stderr_text
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                "(still open 10 s after the exit: something the bench started holds it)".into()
            })
    };
    assert_eq!(
        status.signal(),
        Some(signal),
        "after signal {signal} the bench ended with {status}, not by the signal\nstderr:\n{stderr}"
    );
    // The bench's own children are reaped by init once it has exited;
    // PostgreSQL's postmaster was stopped by pg_ctl. Give both a moment.
    let until = Instant::now() + Duration::from_secs(5);
    while servers.0.iter().any(|(_, pid)| running(*pid)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (system, pid) in &servers.0 {
        assert!(
            !running(*pid),
            "{system} (pid {pid}) still runs after the bench exited\nstderr:\n{stderr}"
        );
    }
    let left: Vec<String> = leftovers(dir.path());
    assert!(
        left.is_empty(),
        "left behind in --dir: {left:?}\nstderr:\n{stderr}"
    );
    assert!(
        close_stderr || stderr.contains("stopping the servers and removing the directories this run started"),
        "no word of the undoing on stderr:\n{stderr}"
    );
}

/// The scratch directories still in `dir` (`out/`, the charts' directory, is
/// not one: the bench writes it at the end and had not yet).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the test's directory")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "out")
        .collect()
}

/// One after the other: two benches at once would share the 2 cores.
#[test]
fn ctrl_c_sigterm_or_a_closed_terminal_ends_every_server_and_removes_their_directories() {
    interrupt_with(libc::SIGINT, false);
    interrupt_with(libc::SIGTERM, false);
    interrupt_with(libc::SIGHUP, true);
}
