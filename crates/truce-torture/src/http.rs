//! One HTTP call to the server, classified the way the history needs it: what
//! certainly happened (`Ok`), what certainly did not (`Fail`), and what is
//! unknown (`Info`: a timeout, a reset, a 5xx).

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

/// What one request came to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A 2xx answer and its body.
    Ok {
        /// The status.
        status: u16,
        /// The JSON body (`null` if empty).
        body: Value,
    },
    /// Certainly not applied: a 4xx answer, or a connection never made.
    Fail {
        /// The status, 0 when no connection was made.
        status: u16,
        /// The body's `error` code, or `connect`.
        code: String,
        /// The body.
        body: Value,
    },
    /// Unknown: the request may have been applied, or may still be.
    Info(String),
}

impl Outcome {
    /// A short description for a `fail` or `info` event.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::Fail { status, code, .. } => Some(format!("{status} {code}")),
            Outcome::Info(why) => Some(why.clone()),
        }
    }

    /// A 409 `conflict` (or `unique_violation`).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Outcome::Fail { status: 409, .. })
    }

    /// A 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Outcome::Fail { status: 404, .. })
    }
}

/// The TLS configuration of a client that speaks plain HTTP to loopback:
/// ring, and no roots. rustls is in every build of the workspace without a
/// provider of its own (the Rust client's HTTPS brings it; features unify),
/// and a reqwest client left to its own builds the platform's verifier,
/// which reads and parses every system certificate, for each client (16
/// test writers building theirs at once missed a kill 300 ms in), and
/// fails on a machine that has none.
pub fn plain_http_tls() -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The server's address and an HTTP client with the run's timeouts.
#[derive(Clone)]
pub struct Http {
    client: Client,
    base: String,
}

impl Http {
    /// A client for `base` (`http://127.0.0.1:PORT`); each request gives up
    /// after `timeout`, which makes it `info`.
    pub fn new(base: &str, timeout: Duration) -> Http {
        let client = Client::builder()
            .tls_backend_preconfigured(plain_http_tls())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client");
        Http {
            client,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// A request to `path` (starting with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Outcome {
        send(self.request(Method::GET, path)).await
    }

    /// `method path` with a JSON body.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Outcome {
        send(self.request(method, path).json(body)).await
    }
}

/// Sends `request` and classifies the answer.
pub async fn send(request: RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        // No connection was made: the server never saw the request.
        Err(e) if e.is_connect() => {
            return Outcome::Fail {
                status: 0,
                code: "connect".into(),
                body: Value::Null,
            };
        }
        Err(e) => return Outcome::Info(transport(&e)),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Info(transport(&e)),
    };
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(body) => body,
            Err(e) if status < 300 => {
                return Outcome::Info(format!("{status} with a body that is not JSON: {e}"));
            }
            Err(_) => Value::Null,
        }
    };
    let code = body["error"].as_str().unwrap_or_default().to_string();
    match status {
        200..=299 => Outcome::Ok { status, body },
        // A server error may come after the commit (a timeout, a failed fsync).
        500.. => Outcome::Info(format!("{status} {code}")),
        _ => Outcome::Fail { status, code, body },
    }
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else {
        format!("transport: {e}")
    }
}
