//! The `truce serve` child under test: started on a loopback port with its own
//! data directory, killed (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted by
//! its PID, and killed when dropped, so a panic leaves no server behind.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to open its data and listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped) `truce serve`.
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    paused: bool,
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts `bin serve` on a free loopback port with data in `data`; its
    /// stderr goes to `log` (appended across restarts).
    pub async fn start(bin: &Path, data: &Path, log: &Path) -> Result<Server, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut server = Server {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            paused: false,
        };
        server.spawn(None).await?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process (with `FAILPOINTS` set to `failpoints`, if given) and
    /// waits until it listens.
    pub async fn spawn(&mut self, failpoints: Option<&str>) -> Result<(), String> {
        assert!(self.child.is_none(), "one server at a time");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let mut command = Command::new(&self.bin);
        command
            .args(["serve", "--listen", &self.addr.to_string(), "--data"])
            .arg(&self.data)
            .env("TRUCE_LOG", "warn")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            // Not a connection to itself: a connect to a port nobody listens on
            // yet can pick that port as its source (TCP simultaneous open).
            if let Ok(stream) = tokio::net::TcpStream::connect(self.addr).await
                && stream.local_addr().ok() != Some(self.addr)
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!(
                    "truce serve exited with {status} before listening (see {})",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "truce serve did not listen on {} within {STARTUP_TIMEOUT:?}",
            self.addr
        ))
    }

    /// SIGKILL by PID, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL to this child's PID, paused or not
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&mut self) {
        if self.signal(libc::SIGSTOP) {
            self.paused = true;
        }
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&mut self) {
        if self.paused && self.signal(libc::SIGCONT) {
            self.paused = false;
        }
    }

    fn signal(&self, signal: libc::c_int) -> bool {
        let Some(child) = &self.child else { return false };
        let pid = child.id() as libc::pid_t;
        // SAFETY: sends a signal to our own child, whose PID we have not reaped.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// Kills and starts again on the same data and port.
    pub async fn restart(&mut self, failpoints: Option<&str>) -> Result<(), String> {
        self.kill9();
        self.spawn(failpoints).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
