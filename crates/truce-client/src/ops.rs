//! Operations routes: health, metrics, insights, and collection
//! configuration (TTL, counters) with counter recounts.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::conflict::http_error;
use crate::error::ClientError;
use crate::transport::Call;

/// The answer of a counter recount.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Recount {
    /// How many groups were checked.
    pub checked: u64,
    /// The groups whose stored count was wrong and has been fixed.
    #[serde(default)]
    pub fixed: Vec<Value>,
}

impl Client {
    /// `GET /healthz`: `Ok` with the body (JSON, or the text as a JSON string)
    /// when the server answers 2xx.
    pub async fn healthz(&self) -> Result<Value, ClientError> {
        let text = self.fetch_text(&Call::get(self.url(&["healthz"]))).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.fetch_text(&Call::get(self.url(&["metrics"]))).await
    }

    /// `GET /v1/insights?window=`: conflict hot spots over the last `window`.
    pub async fn insights(&self, window: Duration) -> Result<Value, ClientError> {
        let mut url = self.url(&["v1", "insights"]);
        url.query_pairs_mut()
            .append_pair("window", &window.as_secs().to_string());
        self.fetch_json(&Call::get(url), "insights").await
    }

    /// `PUT /v1/c/{coll}/_config`: sets the TTL and counters of a collection
    /// (`config` as in the contract); answers the server's body.
    pub async fn set_config(&self, coll: &str, config: &Value) -> Result<Value, ClientError> {
        let url = self.url(&["v1", "c", coll, "_config"]);
        self.fetch_json(
            &Call::repeatable(Method::PUT, url, Some(config.clone())),
            "a config answer",
        )
        .await
    }

    /// `POST /v1/c/{coll}/_counters/{name}/recount`: recomputes a counter and
    /// fixes the groups that drifted. Repeating it is harmless.
    pub async fn recount(&self, coll: &str, counter: &str) -> Result<Recount, ClientError> {
        let url = self.url(&["v1", "c", coll, "_counters", counter, "recount"]);
        self.fetch_json(&Call::repeatable(Method::POST, url, None), "a recount answer")
            .await
    }

    async fn fetch_text(&self, call: &Call) -> Result<String, ClientError> {
        let answer = self.execute(call).await?;
        if !(200..300).contains(&answer.status) {
            return Err(http_error(answer.status, &answer.body));
        }
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }
}
