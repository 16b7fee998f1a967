//! A scripted HTTP/1.1 server on the loopback address: it answers each
//! connection with the next scripted reply (or drops it) and records every
//! request, so the client's wire behaviour can be tested without Truce.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the server waits for a request before giving up (keeps a broken test from hanging).
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// The largest request head or body the mock reads.
const REQUEST_BYTES_MAX: usize = 1 << 20;

/// One scripted answer.
pub enum Reply {
    /// Answer with this status, extra headers and JSON body.
    Json(u16, Vec<(&'static str, &'static str)>, serde_json::Value),
    /// Answer with this status and no body.
    Empty(u16),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request, then hold the connection without answering for
    /// this long (a server hung), then close it.
    Silent(std::time::Duration),
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Starts a server that plays `script` (one reply per connection, then stops);
/// returns its base URL and the log of requests.
pub async fn serve(script: Vec<Reply>) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        for reply in script {
            let Ok(Ok((mut socket, _))) = tokio::time::timeout(REQUEST_WAIT, listener.accept()).await else {
                return;
            };
            let Some(request) = read_request(&mut socket).await else {
                return;
            };
            seen.lock().expect("log").push(request);
            let response = match reply {
                Reply::Drop => continue,
                Reply::Silent(hold) => {
                    tokio::time::sleep(hold).await;
                    continue;
                }
                Reply::Empty(status) => {
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                }
                Reply::Json(status, headers, body) => {
                    let body = body.to_string();
                    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n{extra}\r\n{body}",
                        body.len()
                    )
                }
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (base, log)
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(REQUEST_WAIT, socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buffer.len() > REQUEST_BYTES_MAX {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(REQUEST_BYTES_MAX);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(REQUEST_WAIT, socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A document as the server would send it.
pub fn doc(id: &str, version: u64, fields: serde_json::Value) -> serde_json::Value {
    let mut doc = serde_json::json!({"_id": id, "_rev": format!("{version}-abc"), "_version": version,
                                     "_seq": 100 + version, "_ts": 1_763_776_000_000u64});
    if let (Some(map), serde_json::Value::Object(fields)) = (doc.as_object_mut(), fields) {
        map.extend(fields);
    }
    doc
}

/// A write answer as the server would send it.
pub fn written(id: &str, version: u64, created: bool, fields: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"id": id, "rev": format!("{version}-abc"), "version": version, "seq": 100 + version,
                       "created": created, "noop": false, "skipped": false, "doc": doc(id, version, fields)})
}
