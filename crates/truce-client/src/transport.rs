//! One logical call, however many attempts it takes: the headers every attempt
//! carries (`Truce-Source`, `Truce-Attempt`, `Idempotency-Key`), and the retry
//! loop over transport failures and 408 / 429 / 503 answers.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::Client;
use crate::conflict::http_error;
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

/// One logical call: sent once, or again (identically, same idempotency key) on
/// a transport failure or a 408 / 429 / 503, up to the policy's attempts.
#[derive(Debug)]
pub(crate) struct Call {
    method: Method,
    url: Url,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
    idempotency_key: Option<String>,
    /// Whether repeating the request is harmless. Every call this crate makes is:
    /// reads are, writes carry an idempotency key, the rest (index and config
    /// PUTs, recounts) converge to the same state however often they run.
    retry_safe: bool,
    /// Added to the client's timeout (the server-side wait of a long poll).
    extra_timeout: Duration,
    /// Which attempt of the caller's operation this call is, and of how many
    /// when that is known (`update_with_retry`'s rounds). Resending the same
    /// request after a transport failure or a 408 / 429 / 503 is the same attempt:
    /// the operation has not been redone, only its request delivered again.
    attempt: (u32, Option<u32>),
}

/// A final answer: status and the whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Call {
    /// A read.
    pub fn get(url: Url) -> Call {
        Call::new(Method::GET, url, None, true)
    }

    /// A document write or a transaction: gets a fresh idempotency key, used by
    /// every attempt of this call.
    pub fn write(method: Method, url: Url, body: Option<Value>) -> Call {
        Call {
            idempotency_key: Some(new_idempotency_key()),
            ..Call::new(method, url, body, true)
        }
    }

    /// A request sent once: repeating it would not converge (starting a
    /// backup: a second start of one that did start is refused).
    pub fn once(method: Method, url: Url, body: Option<Value>) -> Call {
        Call::new(method, url, body, false)
    }

    /// A request that converges to the same state however often it is repeated.
    pub fn repeatable(method: Method, url: Url, body: Option<Value>) -> Call {
        Call::new(method, url, body, true)
    }

    fn new(method: Method, url: Url, body: Option<Value>, retry_safe: bool) -> Call {
        Call {
            method,
            url,
            headers: Vec::new(),
            body,
            idempotency_key: None,
            retry_safe,
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
    #[cfg(test)]
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

impl Client {
    /// Sends `call`, retrying transport failures and 408 / 429 / 503 answers with
    /// backoff; returns the first other answer, or the last one when attempts run out.
    pub(crate) async fn execute(&self, call: &Call) -> Result<Answer, ClientError> {
        let max = if call.retry_safe {
            self.policy.attempts()
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            let request = self.attempt_request(call)?;
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) if attempt < max && is_retryable_status(status) && !lasts(status, &body) => {
                            let retry_after = headers
                                .get(RETRY_AFTER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_retry_after);
                            tokio::time::sleep(self.policy.delay(attempt, retry_after)).await;
                            drop(body);
                            attempt += 1;
                            continue;
                        }
                        Ok(body) => {
                            return Ok(Answer {
                                status,
                                body: body.to_vec(),
                            });
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if failure.is_builder() || attempt >= max {
                return Err(ClientError::Transport {
                    attempts: attempt,
                    source: failure,
                });
            }
            tokio::time::sleep(self.policy.delay(attempt, None)).await;
            attempt += 1;
        }
    }

    fn attempt_request(&self, call: &Call) -> Result<reqwest::RequestBuilder, ClientError> {
        let attempt = match call.attempt {
            (n, Some(max)) => format!("{n}/{max}"),
            (n, None) => n.to_string(),
        };
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .timeout(self.timeout.saturating_add(call.extra_timeout))
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

/// Whether a retryable status is an error that lasts: Truce's 503
/// `unavailable` is a storage failure, refused until the server restarts.
fn lasts(status: u16, body: &[u8]) -> bool {
    status == 503
        && serde_json::from_slice::<Value>(body).is_ok_and(|answer| answer["error"] == "unavailable")
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
        assert!(
            Call::repeatable(Method::PUT, url.clone(), None)
                .idempotency_key()
                .is_none()
        );
        let a = Call::write(Method::POST, url.clone(), None);
        let b = Call::write(Method::POST, url, None);
        assert_eq!(a.idempotency_key().map(str::len), Some(32));
        assert_ne!(a.idempotency_key(), b.idempotency_key());
    }
}
