//! Truce's side of the network workloads: `truce serve` over loopback HTTP/1.1
//! keep-alive connections, with a minimal client (requests written from
//! plain strings into one reused buffer, answers framed by `Content-Length`
//! and parsed in place by httparse), as lean as the RESP client of the Redis
//! side, so a request costs the load generator as little as it can.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use rand::rngs::SmallRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Workload;
use super::load::{Answer, Client};
use super::workloads::{HEARTBEAT_DEDUP_MS, Slice, Tabs, backoff, client_rng};
use crate::server;
use crate::workload::PAYLOAD;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The hot counter's document.
const HOT_PATH: &str = "/v1/c/counters/hot";
/// The hot counter's body: operators run at the serialization point.
const HOT_BODY: &[u8] = br#"{"$inc":{"n":1},"$upsert":true}"#;
/// The contended read-modify-write document.
const RMW_PATH: &str = "/v1/c/rmw/one";
/// Versioned-writes documents are `/v1/c/docs/d{n}`.
const DOCS: &str = "docs";
/// Documents created per `POST /v1/tx` while preloading (the engine's
/// `TX_OPS_MAX`).
const PRELOAD_OPS_PER_TX: u64 = 1000;
/// How much of an unexpected answer is kept for the error report.
const ERROR_BODY_CHARS: usize = 200;
/// Answer headers a response may have (the server sends a handful).
const ANSWER_HEADERS_MAX: usize = 32;
/// Bytes an answer's status line and headers may take.
const ANSWER_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Read buffer reserved before each read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A connection idle this long is checked for a close by the server before
/// it is used (a busy one is not: the check costs a system call).
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// One open connection and its buffers, reused by every request.
struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    read: BytesMut,
    last_used: Instant,
}

/// One keep-alive connection, reopened after it broke or the server closed it.
pub struct Http {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Http {
    /// Opens a connection (Nagle off).
    pub async fn connect(addr: SocketAddr) -> BoxResult<Http> {
        Ok(Http {
            addr,
            conn: Some(open(addr).await?),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        // A connection the server closed while it idled (between slices, past
        // its keep-alive timeout) reads as end of file without waiting: it is
        // reopened before use, as a pooled client does.
        if let Some(conn) = &self.conn
            && conn.last_used.elapsed() >= IDLE_CHECK_AFTER
            && !conn.is_open()
        {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self
                .conn
                .insert(open(self.addr).await.map_err(|e| format!("connect: {e}"))?),
        };
        match exchange(conn, &method, path, &body).await {
            Ok((status, body, keep_alive)) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.conn = None;
                Err(format!("connection: {e}"))
            }
        }
    }
}

impl Conn {
    /// Whether the server has not closed the connection: nothing to read yet
    /// (a closed one reads as end of file at once). Asks the socket itself, not
    /// the runtime's readiness, which is only as fresh as its last poll.
    fn is_open(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: the descriptor belongs to `self.stream`, alive for the call;
        // the buffer is one valid byte; MSG_PEEK leaves the stream as it was.
        let read = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Conn {
        stream,
        request: Vec::with_capacity(1024),
        read: BytesMut::with_capacity(READ_CHUNK_BYTES),
        last_used: Instant::now(),
    })
}

/// Writes one request and reads its answer: status, body, and whether the
/// connection stays open.
async fn exchange(
    conn: &mut Conn,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<(StatusCode, Bytes, bool), String> {
    let request = &mut conn.request;
    request.clear();
    for part in [method.as_str(), " ", path, " HTTP/1.1\r\nhost: 127.0.0.1\r\n"] {
        request.extend_from_slice(part.as_bytes());
    }
    if !body.is_empty() || *method != Method::GET {
        request.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    conn.last_used = Instant::now();
    conn.stream.write_all(request).await.map_err(|e| e.to_string())?;
    loop {
        if let Some(answer) = parse_answer(&mut conn.read)? {
            return Ok(answer);
        }
        conn.read.reserve(READ_CHUNK_BYTES);
        match conn.stream.read_buf(&mut conn.read).await {
            Ok(0) => return Err("connection closed before the answer completed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A whole answer at the front of `read`, taken out of it; `None` while
/// more bytes are needed.
pub(crate) fn parse_answer(read: &mut BytesMut) -> Result<Option<(StatusCode, Bytes, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; ANSWER_HEADERS_MAX];
    let mut answer = httparse::Response::new(&mut headers);
    let head = match answer.parse(read) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if read.len() < ANSWER_HEAD_BYTES_MAX => return Ok(None),
        Ok(httparse::Status::Partial) => return Err("answer headers too long".into()),
        Err(e) => return Err(format!("unparsable answer: {e}")),
    };
    let status = answer
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or("answer without a status")?;
    let mut length = None;
    let mut keep_alive = true;
    for header in answer.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| "content-length is not text")?;
            length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("content-length: {e}"))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer (this client reads Content-Length answers only)".into());
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !header.value.eq_ignore_ascii_case(b"close");
        }
    }
    let length = match (length, status) {
        (Some(length), _) => length,
        (None, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) => 0,
        (None, _) => return Err(format!("{status} answer without content-length")),
    };
    if read.len() < head + length {
        return Ok(None);
    }
    read.advance(head);
    Ok(Some((status, read.split_to(length).freeze(), keep_alive)))
}

/// An unexpected answer as an error text.
fn unexpected(status: StatusCode, body: &[u8]) -> Answer {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .take(ERROR_BODY_CHARS)
        .collect();
    Answer::Error(format!("{status}: {text}"))
}

/// One client of one workload.
pub enum TruceClient {
    /// `PATCH $inc` on one document.
    HotCounter(Http),
    /// `PUT` with `_version` over the client's slice.
    Versioned(Http, Slice),
    /// GET, then PUT at the version read; on 409 back off and redo from the
    /// document it carries.
    Rmw(Http, SmallRng),
    /// The skip-if-fresh heartbeat `PATCH`.
    Heartbeat(Http, Tabs),
}

impl Client for TruceClient {
    async fn op(&mut self) -> Answer {
        match self {
            TruceClient::HotCounter(http) => {
                match http
                    .send(Method::PATCH, HOT_PATH, Bytes::from_static(HOT_BODY))
                    .await
                {
                    Ok((StatusCode::OK | StatusCode::CREATED, _)) => Answer::Done { retries: 0 },
                    Ok((status, body)) => unexpected(status, &body),
                    Err(e) => Answer::Error(e),
                }
            }
            TruceClient::Versioned(http, slice) => {
                let (id, version) = slice.pick();
                let body = format!(r#"{{{},"_version":{version}}}"#, slice.body_fields());
                match http
                    .send(Method::PUT, &format!("/v1/c/{DOCS}/d{id}"), body.into())
                    .await
                {
                    Ok((StatusCode::OK, _)) => {
                        slice.written();
                        Answer::Done { retries: 0 }
                    }
                    Ok((StatusCode::CONFLICT, _)) => Answer::Conflict,
                    Ok((status, body)) => unexpected(status, &body),
                    Err(e) => Answer::Error(e),
                }
            }
            TruceClient::Rmw(http, rng) => rmw(http, rng).await,
            TruceClient::Heartbeat(http, tabs) => {
                let (session, path) = tabs.next();
                match http
                    .send(
                        Method::PATCH,
                        &format!("/v1/c/activeSessions/s{session}"),
                        heartbeat(path).into(),
                    )
                    .await
                {
                    Ok((StatusCode::OK | StatusCode::CREATED, body)) if is_skipped(&body) => Answer::Skipped,
                    Ok((StatusCode::OK | StatusCode::CREATED, _)) => Answer::Done { retries: 0 },
                    Ok((status, body)) => unexpected(status, &body),
                    Err(e) => Answer::Error(e),
                }
            }
        }
    }
}

/// The client's `update_with_retry` (crates/truce-client/src/update.rs), on
/// the bench's connection: GET, compute `n + 1`, PUT at exactly the version
/// read; a 409 carries the current document, and the PUT is redone from it —
/// after a backoff (full jitter) when the lost write was made from a fresh
/// document, at once when it was the first write after a backoff (the wait
/// made its document stale; the one its 409 carries is fresh).
async fn rmw(http: &mut Http, rng: &mut SmallRng) -> Answer {
    let (mut version, mut n) = match http.send(Method::GET, RMW_PATH, Bytes::new()).await {
        Ok((StatusCode::OK, body)) => match version_and_n(&body) {
            Some(read) => read,
            None => return unexpected(StatusCode::OK, &body),
        },
        Ok((status, body)) => return unexpected(status, &body),
        Err(e) => return Answer::Error(e),
    };
    let mut failed = 0;
    let mut fresh = true;
    loop {
        let body = format!(r#"{{"n":{},"_version":{version}}}"#, n + 1);
        match http.send(Method::PUT, RMW_PATH, body.into()).await {
            Ok((StatusCode::OK, _)) => return Answer::Done { retries: failed },
            Ok((StatusCode::CONFLICT, body)) => {
                (version, n) = match conflict_current(&body) {
                    Some(current) => current,
                    None => return unexpected(StatusCode::CONFLICT, &body),
                };
                if fresh {
                    failed += 1;
                    tokio::time::sleep(backoff(rng, failed)).await;
                }
                fresh = !fresh;
            }
            Ok((status, body)) => return unexpected(status, &body),
            Err(e) => return Answer::Error(e),
        }
    }
}

/// `_version` and `n` of a document answer.
fn version_and_n(body: &[u8]) -> Option<(u64, u64)> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    doc_version_and_n(&doc)
}

/// `_version` and `n` of the current document a 409 carries.
fn conflict_current(body: &[u8]) -> Option<(u64, u64)> {
    let conflict: serde_json::Value = serde_json::from_slice(body).ok()?;
    doc_version_and_n(&conflict["current"])
}

fn doc_version_and_n(doc: &serde_json::Value) -> Option<(u64, u64)> {
    Some((doc["_version"].as_u64()?, doc["n"].as_u64()?))
}

/// The heartbeat of seed 000: written when the path changed or `lastSeen` is
/// older than the dedup window, otherwise skipped.
fn heartbeat(path: &str) -> String {
    format!(
        r#"{{"$set":{{"currentPath":"{path}"}},"$currentDate":{{"lastSeen":true}},"$upsert":true,"$else":"skip","$if":{{"$or":[{{"currentPath":{{"$ne":"{path}"}}}},{{"lastSeen":{{"$lt":{{"$ago":{HEARTBEAT_DEDUP_MS}}}}}}}]}}}}"#
    )
}

/// Whether a write answer says the write was skipped.
fn is_skipped(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == br#""skipped":true"#)
}

/// Creates what `workload` needs (through the server, like any client) and
/// connects `clients` clients.
pub async fn clients(
    addr: SocketAddr,
    workload: Workload,
    clients: usize,
    docs: u64,
) -> BoxResult<Vec<TruceClient>> {
    let mut setup = Http::connect(addr).await?;
    match workload {
        Workload::VersionedWrites => preload(&mut setup, docs).await?,
        Workload::ContendedRmw => {
            let (status, body) = setup
                .send(Method::PUT, RMW_PATH, Bytes::from_static(br#"{"n":0}"#))
                .await?;
            if status != StatusCode::CREATED {
                return Err(
                    format!("creating {RMW_PATH}: {status} {}", String::from_utf8_lossy(&body)).into(),
                );
            }
        }
        Workload::HotCounter | Workload::Heartbeats => {}
    }
    let mut all = Vec::with_capacity(clients);
    for i in 0..clients {
        let http = Http::connect(addr).await?;
        all.push(match workload {
            Workload::HotCounter => TruceClient::HotCounter(http),
            Workload::VersionedWrites => TruceClient::Versioned(http, Slice::new(i, clients, docs)),
            Workload::ContendedRmw => TruceClient::Rmw(http, client_rng(i)),
            Workload::Heartbeats => TruceClient::Heartbeat(http, Tabs::new(i, clients)),
        });
    }
    Ok(all)
}

/// Creates documents `d0 … d{docs-1}` at version 1, a thousand per transaction.
async fn preload(http: &mut Http, docs: u64) -> BoxResult<()> {
    let started = Instant::now();
    for first in (0..docs).step_by(PRELOAD_OPS_PER_TX as usize) {
        let ops: Vec<String> = (first..(first + PRELOAD_OPS_PER_TX).min(docs))
            .map(|n| {
                format!(
                    r#"{{"op":"put","c":"{DOCS}","id":"d{n}","version":0,"doc":{{"v":0,"payload":"{PAYLOAD}"}}}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
        let (status, answer) = http.send(Method::POST, "/v1/tx", body.into()).await?;
        if status != StatusCode::OK {
            return Err(format!(
                "preload POST /v1/tx: {status} {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
    }
    eprintln!("truce: preloaded {docs} documents in {:?}", started.elapsed());
    Ok(())
}

/// The post-run check: the counter (hot counter, read-modify-write) equals the
/// successful operations; for versioned writes, the sum of every document's
/// `_version - 1` does, as PostgreSQL's sum of `version - 1`; nothing to
/// check for heartbeats.
pub fn check(addr: SocketAddr, workload: Workload, successes: u64) -> Result<String, String> {
    let path = match workload {
        Workload::HotCounter => HOT_PATH,
        Workload::ContendedRmw => RMW_PATH,
        Workload::VersionedWrites => return check_versions(addr, successes),
        Workload::Heartbeats => return Ok("no check".into()),
    };
    let (status, body) =
        server::http_once(addr, "GET", path, None).map_err(|e| format!("GET {path}: {e}"))?;
    if status == 404 && successes == 0 {
        return Ok("no success, no document".into());
    }
    let doc: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET {path} answered {status}: {e}"))?;
    match doc["n"].as_u64() {
        Some(n) if n == successes => Ok(format!("n = {n} = successful operations (read back over HTTP)")),
        _ => Err(format!("n = {}, but {successes} operations succeeded", doc["n"])),
    }
}

/// Sums `_version - 1` over the versioned-writes documents, read back in
/// query pages of 1,000: every successful write added one version.
fn check_versions(addr: SocketAddr, successes: u64) -> Result<String, String> {
    let (mut sum, mut docs, mut after) = (0u64, 0u64, String::new());
    loop {
        let path = format!("/v1/c/{DOCS}?limit=1000{after}");
        let (status, body) =
            server::http_once(addr, "GET", &path, None).map_err(|e| format!("GET {path}: {e}"))?;
        let page: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {path} answered {status}: {e}"))?;
        let Some(found) = page["docs"].as_array() else {
            return Err(format!("GET {path} answered {status}: {body:.200}"));
        };
        for doc in found {
            let version = doc["_version"]
                .as_u64()
                .ok_or_else(|| format!("no _version in {doc}"))?;
            sum += version - 1;
            docs += 1;
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    if sum == successes {
        Ok(format!(
            "sum of (_version - 1) over {docs} documents = {sum} = successful operations (read back over HTTP)"
        ))
    } else {
        Err(format!(
            "sum of (_version - 1) = {sum}, but {successes} operations succeeded"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_the_server_closed_is_seen_closed() {
        let runtime = super::super::load::runtime().expect("runtime");
        runtime.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
            let conn = open(listener.local_addr().expect("address"))
                .await
                .expect("connect");
            let (server_side, _) = listener.accept().expect("accept");
            assert!(conn.is_open());
            drop(server_side);
            let closed = (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                !conn.is_open()
            });
            assert!(closed, "the close was not seen within 2 s");
        });
    }

    #[test]
    fn answers_are_framed_by_content_length() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\n{\"a\""[..],
        );
        assert_eq!(parse_answer(&mut read), Ok(None), "body incomplete");
        read.extend_from_slice(b"}HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        assert_eq!(
            parse_answer(&mut read),
            Ok(Some((StatusCode::OK, Bytes::from_static(b"{\"a\"}"), true)))
        );
        assert_eq!(
            parse_answer(&mut read),
            Ok(Some((StatusCode::CONFLICT, Bytes::from_static(b"{}"), false)))
        );
        assert!(read.is_empty());
        let mut partial = BytesMut::from(&b"HTTP/1.1 204 No Content\r\n"[..]);
        assert_eq!(parse_answer(&mut partial), Ok(None), "head incomplete");
        partial.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_answer(&mut partial),
            Ok(Some((StatusCode::NO_CONTENT, Bytes::new(), true)))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            assert!(
                parse_answer(&mut BytesMut::from(bad)).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bodies_are_json() {
        let value: serde_json::Value = serde_json::from_str(&heartbeat("/blog")).expect("valid JSON");
        assert_eq!(
            value["$if"]["$or"][1]["lastSeen"]["$lt"]["$ago"],
            HEARTBEAT_DEDUP_MS
        );
        assert_eq!(value["$set"]["currentPath"], "/blog");
        assert!(is_skipped(br#"{"id":"s1","skipped":true,"noop":false}"#));
        assert!(!is_skipped(br#"{"id":"s1","skipped":false}"#));
        assert_eq!(
            version_and_n(br#"{"_id":"one","_version":7,"n":6}"#),
            Some((7, 6))
        );
        assert_eq!(
            conflict_current(
                br#"{"error":"conflict","reason":"version_mismatch","current":{"_id":"one","_version":8,"n":7}}"#
            ),
            Some((8, 7))
        );
        assert_eq!(conflict_current(br#"{"error":"conflict","current":null}"#), None);
    }
}
