//! Redis's side of the network workloads: `redis-server` started by the bench
//! on a free loopback port with every write fsynced before it answers
//! (`--appendonly yes --appendfsync always`, no RDB snapshots), and a minimal
//! RESP client (pre-serialized commands, replies parsed in place) on the load
//! generator's one thread.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Workload;
use super::load::{Answer, Client};
use super::workloads::{backoff, client_rng};
use crate::install;
use crate::server::{Process, free_loopback_port};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// `INCR hot`.
const INCR: &[u8] = b"*2\r\n$4\r\nINCR\r\n$3\r\nhot\r\n";
/// `WATCH rmw` and `GET rmw`, sent together.
const WATCH_GET: &[u8] = b"*2\r\n$5\r\nWATCH\r\n$3\r\nrmw\r\n*2\r\n$3\r\nGET\r\n$3\r\nrmw\r\n";

/// `redis-server` on the PATH, installed from Debian's `redis-server` as root.
pub fn find_or_install() -> Result<PathBuf, String> {
    let find = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    install::debian_package("redis (redis-server on the PATH)", "redis-server")?;
    find().ok_or_else(|| "redis-server installed, but not on the PATH".into())
}

/// A redis-server this bench started; ended by its id when dropped.
pub struct RedisServer {
    /// The process (declared first: it stops before the directory goes).
    pub process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
    _scratch: crate::cleanup::Scratch,
}

impl RedisServer {
    /// Starts `binary` with its append-only file in a new directory under `dir`.
    pub fn start(binary: &Path, dir: &Path) -> BoxResult<RedisServer> {
        let scratch = crate::cleanup::scratch_dir("redis-bench-", dir)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()?));
        let mut process = Process::spawn(
            "redis-server",
            Command::new(binary)
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .arg("--dir")
                .arg(scratch.path())
                .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
                .args(["--daemonize", "no", "--protected-mode", "no", "--logfile"])
                .arg(scratch.path().join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )?;
        let started = Instant::now();
        while !ping(addr) {
            process.check_running()?;
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("redis-server did not answer PING within {START_TIMEOUT:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RedisServer {
            process,
            addr,
            _scratch: scratch,
        })
    }
}

/// Whether a server answers PING (blocking, for startup).
fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3 abc`, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*2 …`, or `*-1` (nil: an EXEC whose WATCH fired).
    Array(Option<Vec<Reply>>),
}

/// Parses one reply at the start of `buf`: the reply and its length, or
/// `None` if `buf` does not hold all of it yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).map_err(|e| e.to_string())?;
    let after = end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|e| format!("bad RESP length {line:?}: {e}"))
    };
    match buf.first() {
        Some(b'+') => Ok(Some((Reply::Simple(line.to_string()), after))),
        Some(b'-') => Ok(Some((Reply::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Reply::Int(number()?), after))),
        Some(b'$') => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Bulk(None), after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(buf[after..after + len].to_vec())),
                after + len + 2,
            )))
        }
        Some(b'*') => {
            let Ok(count) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Array(None), after)));
            };
            let mut items = Vec::with_capacity(count);
            let mut at = after;
            for _ in 0..count {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(format!("not RESP: {:?}", String::from_utf8_lossy(&buf[..end]))),
    }
}

/// One connection.
pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects (Nagle off).
    pub async fn connect(addr: SocketAddr) -> BoxResult<Resp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream,
            buf: Vec::with_capacity(512),
        })
    }

    /// Sends `commands` (already RESP-encoded) and reads `replies` replies.
    pub async fn call(&mut self, commands: &[u8], replies: usize) -> Result<Vec<Reply>, String> {
        self.stream.write_all(commands).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(replies);
        while out.len() < replies {
            match parse(&self.buf)? {
                Some((reply, used)) => {
                    self.buf.drain(..used);
                    out.push(reply);
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let read = self.stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if read == 0 {
                        return Err("redis closed the connection".into());
                    }
                    self.buf.extend_from_slice(&chunk[..read]);
                }
            }
        }
        Ok(out)
    }
}

/// RESP encoding of one command.
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// One client of one workload.
pub enum RedisClient {
    /// `INCR hot`.
    HotCounter(Resp),
    /// `WATCH`+`GET`, then `MULTI`+`SET`+`EXEC`; a nil EXEC backs off and redoes.
    Rmw(Resp, SmallRng),
}

impl Client for RedisClient {
    async fn op(&mut self) -> Answer {
        let answer = match self {
            RedisClient::HotCounter(resp) => resp.call(INCR, 1).await.map(|replies| match &replies[..] {
                [Reply::Int(_)] => Answer::Done { retries: 0 },
                other => Answer::Error(format!("INCR answered {other:?}")),
            }),
            RedisClient::Rmw(resp, rng) => rmw(resp, rng).await,
        };
        answer.unwrap_or_else(Answer::Error)
    }
}

/// Optimistic read-modify-write the Redis way: a transaction that aborts when
/// the watched key changed.
async fn rmw(resp: &mut Resp, rng: &mut SmallRng) -> Result<Answer, String> {
    let mut failed = 0;
    loop {
        let replies = resp.call(WATCH_GET, 2).await?;
        let n: i64 = match &replies[1] {
            Reply::Bulk(Some(n)) => String::from_utf8_lossy(n)
                .parse()
                .map_err(|e| format!("GET rmw: {e}"))?,
            other => return Err(format!("GET rmw answered {other:?}")),
        };
        let mut exec = command(&["MULTI"]);
        exec.extend(command(&["SET", "rmw", &(n + 1).to_string()]));
        exec.extend(command(&["EXEC"]));
        match resp.call(&exec, 3).await?.pop() {
            Some(Reply::Array(Some(_))) => return Ok(Answer::Done { retries: failed }),
            Some(Reply::Array(None)) => {
                failed += 1;
                tokio::time::sleep(backoff(rng, failed)).await;
            }
            other => return Err(format!("EXEC answered {other:?}")),
        }
    }
}

/// Sets up `workload`'s key and connects `clients` clients.
pub async fn clients(addr: SocketAddr, workload: Workload, clients: usize) -> BoxResult<Vec<RedisClient>> {
    let mut setup = Resp::connect(addr).await?;
    let init = match workload {
        Workload::HotCounter => command(&["SET", "hot", "0"]),
        Workload::ContendedRmw => command(&["SET", "rmw", "0"]),
        Workload::VersionedWrites | Workload::Heartbeats => {
            return Err(format!("redis has no {} workload", workload.name()).into());
        }
    };
    setup.call(&init, 1).await?;
    let mut all = Vec::with_capacity(clients);
    for i in 0..clients {
        let resp = Resp::connect(addr).await?;
        all.push(match workload {
            Workload::HotCounter => RedisClient::HotCounter(resp),
            _ => RedisClient::Rmw(resp, client_rng(i)),
        });
    }
    Ok(all)
}

/// The counter equals the successful operations.
pub async fn check(addr: SocketAddr, workload: Workload, successes: u64) -> Result<String, String> {
    let key = if workload == Workload::HotCounter {
        "hot"
    } else {
        "rmw"
    };
    let mut resp = Resp::connect(addr).await.map_err(|e| e.to_string())?;
    let found = match resp.call(&command(&["GET", key]), 1).await?.pop() {
        Some(Reply::Bulk(Some(n))) => String::from_utf8_lossy(&n).parse::<u64>().ok(),
        _ => None,
    };
    match found {
        Some(n) if n == successes => Ok(format!("{key} = {n} = successful operations")),
        _ => Err(format!("{key} = {found:?}, but {successes} operations succeeded")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resp() {
        assert_eq!(parse(b":42\r\n").expect("ok"), Some((Reply::Int(42), 5)));
        assert_eq!(parse(b"$3\r\nab").expect("ok"), None);
        assert_eq!(parse(b"$-1\r\n").expect("ok"), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse(b"*-1\r\n").expect("ok"), Some((Reply::Array(None), 5)));
        let (reply, used) = parse(b"*1\r\n+OK\r\n+QUEUED\r\n").expect("ok").expect("whole");
        assert_eq!(
            (reply, used),
            (Reply::Array(Some(vec![Reply::Simple("OK".into())])), 9)
        );
        assert!(parse(b"hello\r\n").is_err());
        assert_eq!(command(&["GET", "rmw"]), b"*2\r\n$3\r\nGET\r\n$3\r\nrmw\r\n");
        assert_eq!(&command(&["INCR", "hot"])[..], INCR);
    }
}
