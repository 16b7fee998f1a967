//! One logical call, however many attempts it takes: the headers every attempt
//! carries (`Truce-Source`, `Truce-Attempt`, `Idempotency-Key`), and the retry
//! loop over transport failures and 408 / 429 / 503 answers.

use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::Client;
use crate::conflict::{ErrorBody, http_error};
use crate::error::ClientError;
use crate::retry::{is_retryable_status, new_idempotency_key, parse_retry_after};

/// Header naming the caller.
pub(crate) const SOURCE_HEADER: &str = "Truce-Source";
/// Header saying which attempt of the caller's operation this is: `n/max` or
/// `n` (the server counts attempts above 1 as retries after a conflict, and a
/// conflict answered to `n/n` as a permanent failure: docs/insights.md).
pub(crate) const ATTEMPT_HEADER: &str = "Truce-Attempt";
/// Header carrying the key that makes a write safe to repeat.
pub(crate) const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The longest `Idempotency-Key` the server takes.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// When a call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// After a transport failure or a 408 / 429 / 503 of any kind: repeating
    /// it is harmless (a read), or its idempotency key makes a
    /// repeat answer the first outcome (a write).
    Always,
    /// Only when the request certainly did nothing: the connection was never
    /// made, or the server refused it before doing anything (408, 429, a 503
    /// with a code of Truce's other than `timeout`). A change that may have
    /// applied is not sent again: by then someone else may have changed the
    /// same thing, and the repeat would undo it (configuration, indexes,
    /// starting a backup).
    IfNotApplied,
}

/// One logical call: sent once, or again (identically, same idempotency key) on
/// a transport failure or a 408 / 429 / 503, up to the policy's attempts, as
/// its [`Resend`] allows.
#[derive(Debug)]
pub(crate) struct Call {
    method: Method,
    url: Url,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
    idempotency_key: Option<String>,
    resend: Resend,
    /// Added to the client's timeout (the server-side wait of a long poll).
    extra_timeout: Duration,
    /// Which attempt of the caller's operation this call is, and of how many
    /// when that is known (`update_with_retry`'s rounds). Resending the same
    /// request after a transport failure or a 408 / 429 / 503 is the same attempt:
    /// the operation has not been redone, only its request delivered again.
    attempt: (u32, Option<u32>),
}

/// A final answer: status and the whole body, and whether an earlier
/// attempt of the call may have applied it (it got no answer once
/// connected, or a 503 `timeout` or a proxy's 503), so that a write's
/// outcome is unknown whatever this answer says that is not its own.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub earlier_unknown: bool,
}

impl Call {
    /// A read.
    pub fn get(url: Url) -> Call {
        Call::new(Method::GET, url, None, Resend::Always)
    }

    /// A document write or a transaction, under the caller's idempotency key
    /// or else a fresh one; every attempt of this call carries it. A key the
    /// server would refuse (not 1–255 visible ASCII characters or spaces) is
    /// an argument error.
    pub fn write(
        method: Method,
        url: Url,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Call, ClientError> {
        let key = match key {
            Some(key) => {
                // A space at either end would be dropped on the way (HTTP
                // trims a header's value): another key than the caller's.
                if key.is_empty()
                    || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
                    || !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                    || key.starts_with(' ')
                    || key.ends_with(' ')
                {
                    return Err(ClientError::InvalidArgument(format!(
                        "an idempotency key is 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters or inner spaces, not {key:?}"
                    )));
                }
                key.to_string()
            }
            None => new_idempotency_key(),
        };
        Ok(Call {
            idempotency_key: Some(key),
            ..Call::new(method, url, body, Resend::Always)
        })
    }

    /// A change without an idempotency key (configuration, indexes, a
    /// backup, a recount): sent again only when it certainly did nothing.
    pub fn change(method: Method, url: Url, body: Option<Value>) -> Call {
        Call::new(method, url, body, Resend::IfNotApplied)
    }

    fn new(method: Method, url: Url, body: Option<Value>, resend: Resend) -> Call {
        Call {
            method,
            url,
            headers: Vec::new(),
            body,
            idempotency_key: None,
            resend,
            extra_timeout: Duration::ZERO,
            attempt: (1, None),
        }
    }

    /// Adds a header to every attempt.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks this call as attempt `n` of at most `max` of the caller's
    /// operation (the default: the first, of a number the client does not know).
    pub fn attempt(mut self, n: u32, max: Option<u32>) -> Call {
        self.attempt = (n, max);
        self
    }

    /// Lets each attempt take `extra` longer than the client's timeout.
    pub fn extra_timeout(mut self, extra: Duration) -> Call {
        self.extra_timeout = extra;
        self
    }

    /// The idempotency key of this call, if it is a write.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

impl Client {
    /// Sends `call`, retrying transport failures and 408 / 429 / 503 answers with
    /// backoff, as far as its [`Resend`] allows; returns the first other
    /// answer, or the last one when attempts run out.
    pub(crate) async fn execute(&self, call: &Call) -> Result<Answer, ClientError> {
        let max = self.policy.attempts();
        let mut attempt = 1;
        // An attempt sent again that may have applied: what a change sent
        // only if it did nothing would not have been sent again after.
        let mut earlier_unknown = false;
        // When the whole call must be over (`ClientBuilder::deadline`); one
        // past what an `Instant` holds (`Duration::MAX`) is none.
        let ends = self
            .deadline
            .and_then(|d| Instant::now().checked_add(d.saturating_add(call.extra_timeout)));
        let in_time = |wait: Duration| ends.is_none_or(|ends| Instant::now() + wait < ends);
        loop {
            let left = ends.map(|ends| ends.saturating_duration_since(Instant::now()));
            let request = self.attempt_request(call, left)?;
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) if attempt < max && call.resend.after_answer(status, &body) => {
                            let retry_after = headers
                                .get(RETRY_AFTER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_retry_after);
                            let wait = self.policy.delay(attempt, retry_after);
                            if !in_time(wait) {
                                return Ok(Answer {
                                    status,
                                    body: body.to_vec(),
                                    earlier_unknown,
                                });
                            }
                            earlier_unknown |= !Resend::IfNotApplied.after_answer(status, &body);
                            tokio::time::sleep(wait).await;
                            drop(body);
                            attempt += 1;
                            continue;
                        }
                        Ok(body) => {
                            return Ok(Answer {
                                status,
                                body: body.to_vec(),
                                earlier_unknown,
                            });
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let wait = self.policy.delay(attempt, None);
            if failure.is_builder()
                || attempt >= max
                || !call.resend.after_failure(failure.is_connect())
                || !in_time(wait)
            {
                return Err(ClientError::Transport {
                    attempts: attempt,
                    source: failure,
                    idempotency_key: call.idempotency_key.clone(),
                });
            }
            earlier_unknown |= !Resend::IfNotApplied.after_failure(failure.is_connect());
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt of `call`, given `left` of the call's deadline at most.
    fn attempt_request(
        &self,
        call: &Call,
        left: Option<Duration>,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let attempt = match call.attempt {
            (n, Some(max)) => format!("{n}/{max}"),
            (n, None) => n.to_string(),
        };
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .timeout(
                left.map_or(self.timeout.saturating_add(call.extra_timeout), |left| {
                    left.min(self.timeout.saturating_add(call.extra_timeout))
                }),
            )
            .header(SOURCE_HEADER, self.source.clone())
            .header(ATTEMPT_HEADER, attempt);
        if let Some(key) = &self.api_key {
            request = request.header(reqwest::header::AUTHORIZATION, key.clone());
        }
        if let Some(key) = &call.idempotency_key {
            request = request.header(IDEMPOTENCY_HEADER, key.as_str());
        }
        for (name, value) in &call.headers {
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| ClientError::InvalidArgument(format!("{name}: {value:?} is not header text")))?;
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        Ok(request)
    }

    /// Sends `call` and decodes a 2xx JSON answer as `T`; any other status is an error.
    pub(crate) async fn fetch_json<T: DeserializeOwned>(
        &self,
        call: &Call,
        what: &str,
    ) -> Result<T, ClientError> {
        let answer = self.execute(call).await?;
        if !(200..300).contains(&answer.status) {
            return Err(http_error(answer.status, &answer.body));
        }
        decode(&answer.body, what)
    }
}

impl Resend {
    /// Whether an answer asks a call of this kind to come back later. Not
    /// Truce's 503 `unavailable`: a storage failure, refused until the server
    /// restarts. For a change sent only if it did nothing, not a 503 `timeout`
    /// (the request ran too long, and may yet apply) nor a 503 without a code
    /// of Truce's (a proxy's: who knows). A proxy's 502 or 504 (the server
    /// behind it restarting, or slow) says nothing of whether the request got
    /// there: a read, or a write under its idempotency key, is sent again; a
    /// change without a key is not.
    fn after_answer(self, status: u16, body: &[u8]) -> bool {
        if matches!(status, 502 | 504) {
            return self == Resend::Always;
        }
        if !is_retryable_status(status) {
            return false;
        }
        let code = (status == 503).then(|| ErrorBody::parse(body).map(|b| b.code));
        match (self, code) {
            (_, Some(Some(code))) if code == "unavailable" => false,
            (Resend::Always, _) | (Resend::IfNotApplied, None) => true,
            (Resend::IfNotApplied, Some(code)) => code.is_some_and(|code| code != "timeout"),
        }
    }

    /// Whether a call of this kind is sent again after the transport failed:
    /// always, or, for a change sent only if it did nothing, when the
    /// connection was never made (once it was, the request may have arrived).
    fn after_failure(self, never_connected: bool) -> bool {
        self == Resend::Always || never_connected
    }
}

/// Decodes a JSON answer, naming `what` in the error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::decode(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_carry_an_idempotency_key_and_it_is_drawn_per_call() {
        let url = Url::parse("http://h/v1/tx").expect("valid");
        assert!(Call::get(url.clone()).idempotency_key().is_none());
        let a = Call::write(Method::POST, url.clone(), None, None).expect("a call");
        let b = Call::write(Method::POST, url.clone(), None, None).expect("a call");
        assert_eq!(a.idempotency_key().map(str::len), Some(32));
        assert_ne!(a.idempotency_key(), b.idempotency_key());
        let mine = Call::write(Method::POST, url.clone(), None, Some("order 17 / try 1")).expect("a call");
        assert_eq!(mine.idempotency_key(), Some("order 17 / try 1"));
        assert!(Call::change(Method::PUT, url, None).idempotency_key().is_none());
    }

    #[test]
    fn a_key_the_server_would_refuse_is_an_argument_error() {
        let url = Url::parse("http://h/v1/tx").expect("valid");
        let long = "k".repeat(256);
        for bad in [
            "",
            "tab\there",
            "é",
            "line\n",
            " lead",
            "trail ",
            "   ",
            long.as_str(),
        ] {
            let err = Call::write(Method::POST, url.clone(), None, Some(bad)).expect_err(bad);
            assert_eq!(err.code(), "invalid_argument", "{bad:?}");
        }
        assert!(Call::write(Method::POST, url, None, Some(&"k".repeat(255))).is_ok());
    }

    #[test]
    fn a_change_comes_back_only_when_it_certainly_did_nothing() {
        let truce = |code: &str| format!(r#"{{"error":"{code}","message":"m"}}"#).into_bytes();
        for (status, body, always, if_not_applied) in [
            (429, truce("overloaded"), true, true),
            (408, truce("request_timeout"), true, true),
            (503, truce("index_building"), true, true),
            (503, truce("timeout"), true, false),
            (503, b"<html>proxy</html>".to_vec(), true, false),
            (503, truce("unavailable"), false, false),
            (500, truce("internal"), false, false),
            (502, b"<html>bad gateway</html>".to_vec(), true, false),
            (504, b"".to_vec(), true, false),
            (409, truce("conflict"), false, false),
        ] {
            assert_eq!(Resend::Always.after_answer(status, &body), always, "{status}");
            assert_eq!(
                Resend::IfNotApplied.after_answer(status, &body),
                if_not_applied,
                "{status}"
            );
        }
        for never_connected in [true, false] {
            assert!(Resend::Always.after_failure(never_connected));
        }
        assert!(Resend::IfNotApplied.after_failure(true));
        assert!(!Resend::IfNotApplied.after_failure(false));
    }
}
