//! Starting and stopping a real `truce serve` for tests: a free loopback port, a
//! temporary data directory, readiness by `/healthz`, and an end by PID.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A blocking HTTP client's builder, for plain HTTP
/// ([`truce_torture::http::plain_http_tls`] says why it brings its TLS
/// configuration).
pub fn http_client() -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder().tls_backend_preconfigured(truce_torture::http::plain_http_tls())
}

/// `GET url`, answered (a transport failure panics, naming the URL).
pub fn http_get(url: &str) -> reqwest::blocking::Response {
    http_client()
        .build()
        .expect("an HTTP client")
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// How long a server may take to start answering `/healthz`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `truce serve` child process.
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// Extra arguments it was started with.
    args: Vec<String>,
    /// What the server wrote on stderr (bounded).
    log: Arc<Mutex<String>>,
}

/// The `truce` binary built for these tests.
pub fn truce_bin() -> &'static str {
    env!("CARGO_BIN_EXE_truce")
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether something listens on `addr`: a connection that is not to itself.
/// A connect to a loopback port nobody listens on yet can pick that very port
/// as its source and connect to itself (TCP simultaneous open), which would
/// pass for a server that has not started listening.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_ok_and(|stream| !connected_to_itself(&stream))
}

/// Whether `stream`'s two ends are the same address: a self-connection.
pub fn connected_to_itself(stream: &std::net::TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

/// Waits (at most [`STARTUP_TIMEOUT`]) until something listens on `addr`;
/// `Err` with the exit status if `child` exits first; panics on the timeout.
pub fn wait_listening(child: &mut Child, addr: SocketAddr) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if listening(addr) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("truce did not listen on {addr} within {STARTUP_TIMEOUT:?}");
}

/// Makes the kernel kill `command`'s process (SIGKILL) when the thread that
/// starts it ends: a test binary killed from outside, or one whose test
/// thread panicked past a leaked handle, runs no `Drop`, and its servers
/// were left listening. Every test starts its servers on its own thread and
/// ends them before it returns. A process whose parent is already gone
/// when it starts exits at once.
#[cfg(target_os = "linux")]
pub fn ends_with_its_starter(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec, only async-signal-safe calls: prctl,
    // getppid and _exit.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// Elsewhere the kernel has no such request: `command` as it is.
#[cfg(not(target_os = "linux"))]
pub fn ends_with_its_starter(command: &mut Command) -> &mut Command {
    command
}

/// A `truce` process started with arguments of a test's choosing, killed by
/// PID when dropped.
pub struct Spawned(Child);

impl Spawned {
    /// Starts `truce args` with `envs` set, its output discarded.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Spawned {
        let mut command = Command::new(truce_bin());
        command
            .args(args)
            .env("TRUCE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in envs {
            command.env(name, value);
        }
        Spawned(ends_with_its_starter(&mut command).spawn().expect("start truce"))
    }

    /// Spawns `command` (which must run truce in this process, `exec` from a
    /// shell included), killed by PID when dropped.
    pub fn from_command(mut command: Command) -> Spawned {
        Spawned(ends_with_its_starter(&mut command).spawn().expect("start truce"))
    }

    /// Sends `signal` to the process by its PID.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to our own child's PID.
        assert_eq!(
            unsafe { libc::kill(self.0.id() as libc::pid_t, signal) },
            0,
            "kill"
        );
    }

    /// The exit status, if the process exits within `bound`.
    pub fn exit_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }

    /// The process's standard error, if it was piped and not taken yet.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.0.stderr.take()
    }

    /// `sh -c "{prelude} exec truce args…"` (so the PID is truce's), its
    /// output discarded, with SIGHUP at its default action even when the
    /// tests run under `nohup` (a shell cannot undo an ignored signal it
    /// inherited). Set the command's streams otherwise before spawning it
    /// with [`from_command`](Self::from_command).
    #[cfg(unix)]
    pub fn shell_command(prelude: &str, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude} exec \"$0\" \"$@\""))
            .arg(truce_bin())
            .args(args)
            .env("TRUCE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec, only restores a signal's default action.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        command
    }

    /// Starts `truce args` with its open-files limit (soft and hard) set to
    /// `files` by the shell that execs it.
    #[cfg(unix)]
    pub fn start_with_files_limit(args: &[&str], files: u64) -> Spawned {
        Spawned::from_command(Spawned::shell_command(&format!("ulimit -n {files} &&"), args))
    }

    /// Waits (bounded) until `addr` accepts connections; panics if the process exits.
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        if let Err(status) = wait_listening(&mut self.0, addr) {
            panic!("truce exited with {status} before listening on {addr}");
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL to this child's PID
        let _ = self.0.wait();
    }
}

/// How long a `truce` that should exit on its own may run in [`run_bounded`].
pub const RUN_BOUND: Duration = Duration::from_secs(10);

/// What a bounded run of `truce` left.
pub struct Ran {
    /// `None` when it was killed at the bound.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// How long it ran.
    pub took: Duration,
}

/// Runs `truce` with `args` until it exits, or kills it by PID once `bound`
/// has passed (status `None`).
pub fn run_bounded(args: &[&str], bound: Duration) -> Ran {
    run_bounded_with_log(args, "warn", bound)
}

/// [`run_bounded`] with `TRUCE_LOG` set to `log`.
pub fn run_bounded_with_log(args: &[&str], log: &str, bound: Duration) -> Ran {
    let started = Instant::now();
    let mut child = ends_with_its_starter(
        Command::new(truce_bin())
            .args(args)
            .env("TRUCE_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .spawn()
    .expect("start truce");
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(pipe) = child.stdout.as_mut() {
        let _ = std::io::Read::read_to_string(pipe, &mut stdout);
    }
    if let Some(pipe) = child.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(pipe, &mut stderr);
    }
    Ran {
        status,
        stdout,
        stderr,
        took,
    }
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server on a fresh data directory with extra `serve` arguments.
    pub fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut server = Server::start_in(&data, args);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on `data` (kept by the caller).
    pub fn start_in(data: &Path, args: &[&str]) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut server = Server {
            child: None,
            addr,
            data: data.to_path_buf(),
            _dir: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            log: Arc::default(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = ends_with_its_starter(
            Command::new(truce_bin())
                .args(["serve", "--listen", &self.addr.to_string(), "--data"])
                .arg(&self.data)
                .args(&self.args)
                .env("TRUCE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .spawn()
        .expect("start truce serve");
        // Drain stderr on a thread, so a chatty server never blocks on a full pipe;
        // what it said is kept for the report if it dies before listening.
        let mut child = child;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() < 64 * 1024 {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        self.log = log;
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Err(status) = wait_listening(child, self.addr) {
            std::thread::sleep(Duration::from_millis(50)); // let the drain catch up
            let err = self.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            panic!("truce serve exited with {status} before listening:\n{err}");
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server wrote to standard error so far (its first 64 KiB).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL by PID, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL to this child's PID
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM by PID and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("truce serve did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The first shell block after the heading `section` in the README, as a user
/// would paste it.
pub fn readme_sh_block(section: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    let after = readme
        .split(section)
        .nth(1)
        .unwrap_or_else(|| panic!("README has no {section:?}"));
    let block = after.split("```sh\n").nth(1).expect("a sh block");
    block.split("```").next().expect("the block's end").to_string()
}

/// Runs the first `sh` block of README `section` with bash against `server`,
/// each `curl -s` answer on a line of its own; `None` (after a note) when curl
/// is missing. Returns the non-empty output lines.
pub fn paste_readme_block(section: &str, server: &Server) -> Option<Vec<String>> {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed; skipping the README check");
        return None;
    }
    let script = readme_sh_block(section)
        .replace("localhost:7070", &server.addr.to_string())
        .replace("curl -s ", "echo; curl -s ");
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "README {section}: the commands failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
    )
}

/// One HTTP answer of the `reqwest` clients of `api.rs` and `auth.rs`:
/// status, headers, and the body as text and as JSON (`Value::Null` when the
/// body is empty or not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    /// Reads `response` whole; `what` names the request in a panic.
    pub fn read(response: reqwest::blocking::Response, what: &str) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().unwrap_or_else(|e| panic!("{what}: body: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Asserts a success status and returns the body.
    pub fn ok(&self, status: u16) -> &serde_json::Value {
        assert_eq!(self.status, status, "expected {status}, got: {}", self.text);
        &self.json
    }

    /// Asserts a 200 or 201 and returns the body.
    pub fn ok_any(&self) -> &serde_json::Value {
        assert!(
            [200, 201].contains(&self.status),
            "expected 200 or 201, got {}: {}",
            self.status,
            self.text
        );
        &self.json
    }

    /// Asserts an error answer with `status` and stable `code` (and a
    /// message); a 401 names its scheme.
    pub fn error(&self, status: u16, code: &str) -> &serde_json::Value {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got: {}",
            self.text
        );
        if status == 401 {
            assert_eq!(self.header("www-authenticate"), Some("Bearer realm=\"truce\""));
        }
        assert_eq!(self.json["error"], code, "error code in {}", self.text);
        assert!(
            self.json["message"].is_string(),
            "an error carries a message: {}",
            self.text
        );
        &self.json
    }

    /// Asserts a 409 `conflict` with `reason`; returns `current`.
    pub fn conflict(&self, reason: &str) -> &serde_json::Value {
        let body = self.error(409, "conflict");
        assert_eq!(body["reason"], reason, "conflict reason in {}", self.text);
        assert!(
            body.get("current").is_some(),
            "a conflict carries current: {}",
            self.text
        );
        &body["current"]
    }
}
