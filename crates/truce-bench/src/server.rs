//! Server processes the benchmark starts itself: finding (or building) the
//! `truce` binary, a free loopback port, waiting until a server answers, its
//! peak memory, and ending it by its process id — SIGTERM, then SIGKILL if it
//! has not exited in time. A [`Process`] ends its process when dropped, so an
//! error half-way never leaves a server behind, and registers it with
//! [`crate::cleanup`] meanwhile, so neither does Ctrl-C.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::cleanup::{self, Registered, Scratch};
use crate::net::truce_http;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The release `truce` binary: `explicit` if given; otherwise, when the bench
/// runs from its workspace, `cargo build --release -p truce-server` (a no-op
/// when it is up to date) and the `truce` next to this executable
/// (`target/release/truce`).
pub fn truce_binary(explicit: Option<&Path>) -> BoxResult<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("--server-bin {}: no such file", path.display()).into())
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if workspace.join("Cargo.toml").is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building the server: cargo build --release -p truce-server");
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "truce-server"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("cannot run cargo to build the server: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cargo build --release -p truce-server failed ({status}); pass --server-bin PATH"
            )
            .into());
        }
    }
    let candidate = std::env::current_exe()?.with_file_name("truce");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "no server binary at {}: build it with `cargo build --release -p truce-server` or pass --server-bin PATH",
            candidate.display()
        )
        .into())
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_loopback_port() -> BoxResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A process this benchmark started; ended by its id when dropped.
pub struct Process {
    child: Option<Child>,
    pid: u32,
    label: &'static str,
    /// Ends it if the bench is interrupted first.
    registered: Registered,
}

impl Process {
    /// Starts `command`.
    pub fn spawn(label: &'static str, command: &mut Command) -> BoxResult<Process> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {label}: {e}"))?;
        let pid = child.id();
        // The signal thread cannot reap our child, so it watches /proc; the id
        // cannot be reused while the child is unreaped.
        let registered = cleanup::register(format!("{label} (pid {pid})"), move || {
            match terminate(pid, || (!running(pid)).then_some(())) {
                Ended::AfterSigterm(_) => "exited after SIGTERM".into(),
                Ended::Killed => format!("killed after {STOP_TIMEOUT:?}"),
            }
        });
        Ok(Process {
            pid,
            child: Some(child),
            label,
            registered,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> BoxResult<()> {
        let child = &mut self.child;
        // A child that exited is reaped here, and its id is then free: the
        // registration goes with it, under the registry's lock.
        let state = self.registered.reap_if(
            || child.as_mut().map(Child::try_wait),
            |s| matches!(s, Some(Ok(Some(_)))),
        );
        match state {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!("{} exited early: {status}", self.label).into()),
            Some(Err(e)) => Err(format!("{}: {e}", self.label).into()),
            None => Err(format!("{} was already stopped", self.label).into()),
        }
    }

    /// Peak resident memory (VmHWM) in KiB, from `/proc/PID/status`.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| status_field_kib(&status, "VmHWM"))
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL (by id) after
    /// [`STOP_TIMEOUT`]. Returns how it ended.
    pub fn stop(&mut self) -> String {
        // The signal thread waits for this stop if one comes meanwhile.
        let _in_flight = self.registered.release();
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had exited: {status}");
        }
        match terminate(self.pid, || child.try_wait().ok().flatten()) {
            Ended::AfterSigterm(status) => format!("exited after SIGTERM: {status}"),
            Ended::Killed => match child.wait() {
                Ok(status) => format!("killed after {STOP_TIMEOUT:?}: {status}"),
                Err(e) => format!("killed after {STOP_TIMEOUT:?}; wait failed: {e}"),
            },
        }
    }
}

/// How [`terminate`] ended a process.
enum Ended<T> {
    /// It exited after SIGTERM, with what `exited` saw (its status, for a
    /// child the caller reaps).
    AfterSigterm(T),
    /// It was still there after [`STOP_TIMEOUT`]: SIGKILL.
    Killed,
}

/// SIGTERM to `pid`, then up to [`STOP_TIMEOUT`] for `exited` to see it gone;
/// SIGKILL after that, and up to [`KILL_WAIT`] more for it to go, so what it
/// held (its directory) is free when this returns. Only for an id that cannot
/// have been reused: a child not yet reaped.
fn terminate<T>(pid: u32, mut exited: impl FnMut() -> Option<T>) -> Ended<T> {
    let signal = |signal| {
        // SAFETY: kill(2) has no memory-safety preconditions. (That the id is
        // still our child's is the caller's promise above.)
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    };
    let mut gone = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(seen) = exited() {
                return Some(seen);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    signal(libc::SIGTERM);
    if let Some(seen) = gone(STOP_TIMEOUT) {
        return Ended::AfterSigterm(seen);
    }
    signal(libc::SIGKILL);
    let _ = gone(KILL_WAIT);
    Ended::Killed
}

/// How long a process may take to go after SIGKILL (a write in the kernel).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Whether `pid` is a live process (not a zombie waiting to be reaped).
pub fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.live())
}

/// What the bench reads of `/proc/PID/stat`.
pub struct ProcStat {
    /// The command name (without the parentheses).
    pub comm: String,
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: String,
    /// The parent's process id.
    pub ppid: u32,
}

impl ProcStat {
    /// Not a zombie waiting to be reaped, nor dead.
    pub fn live(&self) -> bool {
        !matches!(self.state.as_str(), "Z" | "X")
    }
}

/// `/proc/PID/stat` of `pid`, if it exists. The command name is in
/// parentheses and may hold spaces, so the fields are counted after its
/// last `)`.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    Some(ProcStat {
        comm: stat.get(open + 1..close)?.to_string(),
        state: rest.next()?.to_string(),
        ppid: rest.next()?.parse().ok()?,
    })
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            let how = self.stop();
            eprintln!("{} (pid {}) {how}", self.label, self.pid);
        }
    }
}

/// A `truce serve` on a free loopback port with a fresh data directory, its
/// default settings (immediate durability) and its log in a file. Dropping it
/// ends the process (by id), then removes the directory.
pub struct TruceServer {
    /// The server process (declared first: it stops before the directory goes).
    pub process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
    /// How long it took to answer `/healthz`.
    pub ready: Duration,
    _scratch: Scratch,
}

impl TruceServer {
    /// Starts `binary serve` with its data under a new temporary directory in
    /// `dir` and waits until it answers; the error carries the log's tail.
    pub fn start(binary: &Path, dir: &Path) -> BoxResult<TruceServer> {
        let scratch = cleanup::scratch_dir("truce-bench-server-", dir)?;
        let log_path = scratch.path().join("server.log");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()?));
        let log = std::fs::File::create(&log_path)?;
        let mut process = Process::spawn(
            "truce serve",
            Command::new(binary)
                .arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data")
                .arg(scratch.path().join("data"))
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let ready = wait_until_healthy(&mut process, addr).map_err(|e| {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!(
                "{e}; server log:\n{}",
                tail.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(TruceServer {
            process,
            addr,
            ready,
            _scratch: scratch,
        })
    }
}

/// Proportional set size of a process in KiB (`/proc/PID/smaps_rollup`): its
/// resident memory with each shared page divided among the processes that map
/// it, so the sum over a server's processes is that server's memory.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    status_field_kib(&rollup, "Pss")
}

/// The ids of `parent`'s child processes, from `/proc/*/stat`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|stat| stat.ppid == parent))
        .collect()
}

/// A `kB` field of `/proc/PID/status`, e.g. `VmHWM:   123456 kB`.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns
/// the status and the body. For setup and checks, not for load.
pub fn http_once(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> BoxResult<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    parse_response(&answer)
}

/// Status and body of a whole response, read by the load generator's parser
/// (`truce_http::parse_answer`: `Content-Length` framing, no chunked bodies).
fn parse_response(answer: &[u8]) -> BoxResult<(u16, String)> {
    match truce_http::parse_answer(&mut BytesMut::from(answer))? {
        Some((status, body, _)) => Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned())),
        None => Err(format!("an incomplete answer: {}", String::from_utf8_lossy(answer)).into()),
    }
}

/// Waits until `GET /healthz` answers 200, failing early if `process` exits.
pub fn wait_until_healthy(process: &mut Process, addr: SocketAddr) -> BoxResult<Duration> {
    let started = Instant::now();
    loop {
        process.check_running()?;
        if let Ok((200, _)) = http_once(addr, "GET", "/healthz", None) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(format!("the server did not answer /healthz within {START_TIMEOUT:?}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let status = "Name:\ttruce\nVmPeak:\t  900000 kB\nVmHWM:\t   45678 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_field_kib(status, "VmHWM"), Some(45_678));
        assert_eq!(status_field_kib(status, "VmRSS"), Some(40_000));
        assert_eq!(status_field_kib(status, "VmSwap"), None);
    }

    #[test]
    fn parses_responses() {
        let (status, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{\"n\":3}\n").expect("parses");
        assert_eq!((status, body.as_str()), (200, "{\"n\":3}\n"));
        assert!(parse_response(b"SSH-2.0").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err(),
            "cut short"
        );
    }

    #[test]
    fn reads_its_own_proc_stat() {
        let me = proc_stat(std::process::id()).expect("our own /proc/PID/stat");
        assert!(me.live(), "{}", me.state);
        let parent = std::os::unix::process::parent_id();
        assert_eq!(me.ppid, parent);
        assert!(children(parent).contains(&std::process::id()));
        assert!(!me.comm.is_empty() && !me.comm.contains(')'), "{}", me.comm);
        assert!(proc_stat(u32::MAX).is_none());
    }

    #[test]
    fn processes_end_by_pid() {
        let mut sleeper = Process::spawn("sleep", Command::new("sleep").arg("30")).expect("sleep runs");
        sleeper.check_running().expect("running");
        assert!(sleeper.peak_rss_kib().is_some());
        assert!(sleeper.stop().contains("SIGTERM"));
        assert!(sleeper.check_running().is_err());
        assert!(free_loopback_port().expect("a port") > 0);
    }
}
