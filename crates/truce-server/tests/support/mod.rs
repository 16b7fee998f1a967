//! HTTP helpers of the seed and counter tests: a blocking client that answers
//! (status, JSON), a minimal keep-alive HTTP/1.1 connection for request storms,
//! a deterministic generator, and a tally of answers.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::Value;

use crate::common::Server;

/// No single request may hang a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A small blocking client of one server: every call answers (status, JSON body).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        Http::at(&server.url())
    }

    /// Another client of the same server, with its own connection pool (as an
    /// independent caller has).
    pub fn fresh(&self) -> Http {
        Http::at(&self.base)
    }

    pub fn at(base: &str) -> Http {
        let client = crate::common::http_client()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        Http {
            base: base.to_string(),
            client,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request; `Err` only for transport failures.
    pub fn try_call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        self.try_call_with(method, path, &[], body)
    }

    /// A request with extra headers; `Err` only for transport failures.
    pub fn try_call_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let text = response.text().map_err(|e| error_chain(&e))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let what = format!("{method} {path}");
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// A call that must answer `status`.
    pub fn expect(&self, method: Method, path: &str, body: Option<&Value>, status: u16) -> Value {
        let what = format!("{method} {path}");
        let (got, answer) = self.call(method, path, body);
        assert_eq!(got, status, "{what}: {answer}");
        answer
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None)
    }

    /// Every live document of a query (following `next`, bounded).
    pub fn query_all(&self, coll: &str, params: &str) -> Vec<Value> {
        let mut docs = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..1_000 {
            let cursor = after
                .as_deref()
                .map(|a| format!("&after={}", enc(a)))
                .unwrap_or_default();
            let page = self.expect(
                Method::GET,
                &format!("/v1/c/{coll}?limit=1000{params}{cursor}"),
                None,
                200,
            );
            docs.extend(page["docs"].as_array().expect("docs").iter().cloned());
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return docs,
            }
        }
        panic!("query {coll}{params} did not end within 1,000 pages");
    }

    /// The commit sequence of the whole database now.
    pub fn last_seq(&self) -> u64 {
        self.expect(Method::GET, "/v1/_changes?since=now", None, 200)["last_seq"]
            .as_u64()
            .expect("last_seq")
    }

    /// Waits (bounded) until index `name` of `coll` is ready.
    pub fn wait_index_ready(&self, coll: &str, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.expect(Method::GET, &format!("/v1/c/{coll}/_indexes"), None, 200);
            let ready = list["indexes"]
                .as_array()
                .expect("indexes")
                .iter()
                .any(|i| i["name"] == name && i["state"] == "ready");
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "index {coll}/{name} not ready: {list}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the counter outbox is empty.
    pub fn wait_outbox_empty(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let outbox = self.expect(Method::GET, "/v1/_outbox", None, 200);
            if outbox["entries"] == 0 {
                assert!(outbox["oldest_age_ms"].is_null(), "{outbox}");
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the outbox did not drain within {within:?}: {outbox}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A minimal HTTP/1.1 keep-alive client over one connection, for the heartbeat
/// storm: 30 of these cost the test process a fraction of what 30 `reqwest`
/// clients cost in a debug build, which leaves the two-core test machine's CPU
/// to the server under test.
pub struct RawConnection {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl RawConnection {
    pub fn new(base: &str) -> RawConnection {
        RawConnection {
            addr: base.trim_start_matches("http://").to_string(),
            stream: None,
        }
    }

    /// One request with a JSON body: (status, body as JSON). Transport failures
    /// are errors (never retried: the test counts them).
    pub fn call(&mut self, method: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let result = self.exchange(method, path, body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, method: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(|e| e.to_string())?;
            self.stream = Some(BufReader::new(stream));
        }
        let reader = self.stream.as_mut().expect("connected");
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("status line: {e}"))?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().map_err(|_| format!("{header:?}"))?,
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                "transfer-encoding" => return Err(format!("unexpected {header:?}")),
                _ => {}
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).map_err(|e| format!("body: {e}"))?;
        if close {
            self.stream = None;
        }
        Ok((status, serde_json::from_slice(&answer).unwrap_or(Value::Null)))
    }
}

/// Percent-encodes a query parameter value.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A tiny deterministic generator (xorshift64*), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// What workers saw: counts of answers by kind, and the first few surprises.
#[derive(Default)]
pub struct Tally {
    pub written: u64,
    pub skipped: u64,
    pub conflicts: u64,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.written += other.written;
        self.skipped += other.skipped;
        self.conflicts += other.conflicts;
        self.errors.extend(other.errors);
    }

    /// Records an answer that should be a 2xx.
    pub fn record(&mut self, what: &str, answer: Result<(u16, Value), String>) -> Option<Value> {
        match answer {
            Ok((200 | 201, body)) => {
                if body["skipped"] == true {
                    self.skipped += 1;
                } else {
                    self.written += 1;
                }
                Some(body)
            }
            Ok((409, body)) => {
                self.conflicts += 1;
                self.errors.push(format!("{what}: 409 {body}"));
                None
            }
            Ok((status, body)) => {
                self.errors.push(format!("{what}: {status} {body}"));
                None
            }
            Err(e) => {
                self.errors.push(format!("{what}: transport: {e}"));
                None
            }
        }
    }
}

/// Sends `method path` as `source` (and `attempt`, e.g. `"2/3"`), asserting the
/// status.
pub fn send_as(
    http: &Http,
    method: Method,
    path: &str,
    (source, attempt): (&str, Option<&str>),
    body: &Value,
    status: u16,
) -> Value {
    let mut headers = vec![("truce-source", source)];
    if let Some(attempt) = attempt {
        headers.push(("truce-attempt", attempt));
    }
    let what = format!("{method} {path} as {source}");
    let (got, answer) = http
        .try_call_with(method, path, &headers, Some(body))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got, status, "{what}: {answer}");
    answer
}

/// A workload of known conflicts in collection `coll` (docs/insights.md):
/// - `fight`: `alice` and `bob` write with the same version six times; bob's
///   six writes conflict; then `billing` retries a stale write (attempts 2/3
///   and 3/3): two conflicts, two retries, one permanent failure;
/// - `counter`: `web` increments by read-modify-write, `worker` races it four
///   times with numbers only: four conflicts, remedy `use_update_operators`;
/// - `beat`: a `tab` sends the same heartbeat seven times (one write, six
///   no-ops) and a guarded one three times (three skips);
/// - `profile`: `alice` and `bob` overwrite it blindly in turn: three overwrites
///   (bob two, alice one).
pub fn conflict_workload(http: &Http, coll: &str) {
    let doc = |id: &str| format!("/v1/c/{coll}/{id}");
    let put = |who: (&str, Option<&str>), id: &str, body: Value, status: u16| {
        send_as(http, Method::PUT, &doc(id), who, &body, status);
    };
    put(
        ("alice", None),
        "fight",
        serde_json::json!({"owner": "alice", "round": 0, "_version": 0}),
        201,
    );
    for round in 1..=6 {
        put(
            ("alice", None),
            "fight",
            serde_json::json!({"owner": "alice", "round": round, "_version": round}),
            200,
        );
        put(
            ("bob", None),
            "fight",
            serde_json::json!({"owner": "bob", "round": round, "_version": round}),
            409,
        );
    }
    put(
        ("web", None),
        "counter",
        serde_json::json!({"n": 0, "_version": 0}),
        201,
    );
    for n in 1..=4 {
        put(
            ("web", None),
            "counter",
            serde_json::json!({"n": n, "_version": n}),
            200,
        );
        put(
            ("worker", None),
            "counter",
            serde_json::json!({"n": n + 100, "_version": n}),
            409,
        );
    }
    let beat = serde_json::json!({"$set": {"tab": "open"}, "$upsert": true});
    for i in 0..7 {
        let status = if i == 0 { 201 } else { 200 };
        send_as(http, Method::PATCH, &doc("beat"), ("tab", None), &beat, status);
    }
    let guarded = serde_json::json!({"$set": {"x": 1}, "$if": {"tab": "closed"}, "$else": "skip"});
    for _ in 0..3 {
        let answer = send_as(http, Method::PATCH, &doc("beat"), ("tab", None), &guarded, 200);
        assert_eq!(answer["skipped"], true, "{answer}");
    }
    for (i, who) in ["alice", "bob", "alice", "bob"].into_iter().enumerate() {
        let status = if i == 0 { 201 } else { 200 };
        put(
            (who, None),
            "profile",
            serde_json::json!({"by": who, "_version": -1}),
            status,
        );
    }
    for attempt in ["2/3", "3/3"] {
        put(
            ("billing", Some(attempt)),
            "fight",
            serde_json::json!({"owner": "billing", "_version": 1}),
            409,
        );
    }
}

/// An error with every cause after it (reqwest's own text omits them: "error
/// sending request" alone cannot tell a reset from a refused connection).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
