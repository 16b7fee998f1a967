//! Truce's side of the network workloads: `truce serve` over loopback HTTP/1.1
//! keep-alive connections, each a bare hyper client connection (no pool, no
//! TLS) with its request bodies built as plain strings, so a request costs the
//! load generator as little as it can.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;

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

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive connection, reopened after it broke.
pub struct Http {
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Http {
    /// Opens a connection (Nagle off).
    pub async fn connect(addr: SocketAddr) -> BoxResult<Http> {
        let mut http = Http { addr, sender: None };
        http.sender = Some(open(addr).await?);
        Ok(http)
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        // A connection the server closed while it idled (between slices, past
        // its keep-alive timeout) is reopened before use, as a pooled client does.
        if self.sender.as_ref().is_some_and(Sender::is_closed) {
            self.sender = None;
        }
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => self
                .sender
                .insert(open(self.addr).await.map_err(|e| format!("connect: {e}"))?),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        answer.map_err(|e| {
            self.sender = None;
            format!("connection: {e}")
        })
    }
}

async fn open(addr: SocketAddr) -> BoxResult<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
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
/// read; a 409 backs off (full jitter) and redoes the PUT from the document
/// the 409 carries, until it succeeds.
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
    loop {
        let body = format!(r#"{{"n":{},"_version":{version}}}"#, n + 1);
        match http.send(Method::PUT, RMW_PATH, body.into()).await {
            Ok((StatusCode::OK, _)) => return Answer::Done { retries: failed },
            Ok((StatusCode::CONFLICT, body)) => {
                (version, n) = match conflict_current(&body) {
                    Some(current) => current,
                    None => return unexpected(StatusCode::CONFLICT, &body),
                };
                failed += 1;
                tokio::time::sleep(backoff(rng, failed)).await;
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
/// successful operations; nothing to check for the other workloads.
pub fn check(addr: SocketAddr, workload: Workload, successes: u64) -> Result<String, String> {
    let path = match workload {
        Workload::HotCounter => HOT_PATH,
        Workload::ContendedRmw => RMW_PATH,
        Workload::VersionedWrites | Workload::Heartbeats => return Ok("no check".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
