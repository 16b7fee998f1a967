//! Operations routes: health, metrics, insights, and collection
//! configuration (TTL, counters) with counter recounts.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::conflict::{http_error, missing};
use crate::error::ClientError;
use crate::transport::{Call, decode};

/// The answer of a counter recount.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Recount {
    /// How many groups were checked.
    pub checked: u64,
    /// The groups whose stored count was wrong and has been fixed.
    #[serde(default)]
    pub fixed: Vec<RecountFix>,
    /// The groups whose stored count is wrong and could not be fixed (the
    /// target's field holds something that is not a number): a recount that
    /// fixed nothing is not yet a correct counter while this is not empty.
    #[serde(default)]
    pub unfixable: Vec<RecountUnfixable>,
    /// The commit of the corrections (the snapshot's, when nothing was wrong).
    #[serde(default)]
    pub seq: u64,
}

/// A group whose counter was wrong, and is now fixed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecountFix {
    /// The group: the id of the target document.
    pub group: String,
    /// What the target held (plus increments still waiting in the outbox).
    pub was: Value,
    /// What the source documents say, now stored.
    pub now: Value,
}

/// A group whose counter is wrong and could not be fixed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecountUnfixable {
    /// The group: the id of the target document.
    pub group: String,
    /// What the target's field holds instead of a number.
    pub holds: Value,
}

/// The `after_commit` counter outbox of the server (`GET /v1/_outbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Outbox {
    /// Increments not yet applied to their targets.
    pub entries: u64,
    /// How long the oldest has waited, in ms; `None` when there are none.
    pub oldest_age_ms: Option<u64>,
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

    /// `GET /v1/insights?window=&limit=`: the `limit` hottest documents and
    /// ranges over the last `window`, with remedies, and the server's totals
    /// (docs/insights.md).
    pub async fn insights(&self, window: Duration, limit: usize) -> Result<Value, ClientError> {
        let mut url = self.url(&["v1", "insights"]);
        url.query_pairs_mut()
            .append_pair("window", &window.as_secs().to_string())
            .append_pair("limit", &limit.to_string());
        self.fetch_json(&Call::get(url), "insights").await
    }

    /// `GET /v1/c/{coll}/_config`: the TTL, counters and tombstone retention
    /// of a collection, as stored (`{"ttl": null, "counters": []}` when none;
    /// `tombstones` only when set).
    pub async fn config(&self, coll: &str) -> Result<Value, ClientError> {
        let url = self.url_for(&["v1", "c", coll, "_config"])?;
        self.fetch_json(&Call::get(url), "a config").await
    }

    /// `PUT /v1/c/{coll}/_config`: sets the TTL, counters and tombstone
    /// retention of a collection
    /// (`config` as in the contract); answers the stored configuration plus
    /// `backfill`, the recount report of each counter that is new, by name.
    pub async fn set_config(&self, coll: &str, config: &Value) -> Result<Value, ClientError> {
        let url = self.url_for(&["v1", "c", coll, "_config"])?;
        self.fetch_json(
            &Call::change(Method::PUT, url, Some(config.clone())),
            "a config answer",
        )
        .await
    }

    /// `POST /v1/c/{coll}/_counters/{name}/recount`: recomputes a counter and
    /// fixes the groups that drifted. Sent again only when it certainly did
    /// not start: a recount of a large collection can outlast the request
    /// timeout (503 `timeout`) and goes on running, and each repeat would
    /// start another scan of the whole collection beside it. Repeating it
    /// once it is done is harmless.
    pub async fn recount(&self, coll: &str, counter: &str) -> Result<Recount, ClientError> {
        let url = self.url_for(&["v1", "c", coll, "_counters", counter, "recount"])?;
        self.fetch_json(&Call::change(Method::POST, url, None), "a recount answer")
            .await
    }

    /// `GET /v1/_outbox`: `after_commit` counter increments not yet applied.
    /// Zero entries means every acknowledged write is reflected in its counters.
    pub async fn outbox(&self) -> Result<Outbox, ClientError> {
        let url = self.url(&["v1", "_outbox"]);
        self.fetch_json(&Call::get(url), "the outbox status").await
    }

    /// `POST /v1/_backup` (admin): starts a backup of the whole database into
    /// the new directory `path` on the server's machine; answers its status
    /// (`state` `running`). Sent again only when it certainly did not start
    /// (no connection, 429): if the answer is lost, ask
    /// [`backup_status`](Self::backup_status) rather than start it again.
    pub async fn start_backup(&self, path: &str) -> Result<Value, ClientError> {
        let call = Call::change(
            Method::POST,
            self.url(&["v1", "_backup"]),
            Some(serde_json::json!({ "path": path })),
        );
        self.fetch_json(&call, "a backup status").await
    }

    /// `GET /v1/_backup` (admin): the running backup or the last one since
    /// the server started (`state` `running`, `done`, `failed` or
    /// `stopped`), `None` if there was none.
    pub async fn backup_status(&self) -> Result<Option<Value>, ClientError> {
        self.backup_answer(&Call::get(self.url(&["v1", "_backup"]))).await
    }

    /// `DELETE /v1/_backup` (admin): stops the running backup and answers
    /// once nothing of it is left, with its status (`state` `stopped`); with
    /// none running, the last one's status (a backup that finished first
    /// answers `done`); `None` if there was none since the server started.
    pub async fn stop_backup(&self) -> Result<Option<Value>, ClientError> {
        let call = Call::change(Method::DELETE, self.url(&["v1", "_backup"]), None);
        self.backup_answer(&call).await
    }

    /// A backup's status, `None` for a 404 of "no backup since the server
    /// started".
    async fn backup_answer(&self, call: &Call) -> Result<Option<Value>, ClientError> {
        let answer = self.execute(call).await?;
        match answer.status {
            404 if missing(&answer.body) => Ok(None),
            200..=299 => decode(&answer.body, "a backup status").map(Some),
            status => Err(http_error(status, &answer.body)),
        }
    }

    async fn fetch_text(&self, call: &Call) -> Result<String, ClientError> {
        let answer = self.execute(call).await?;
        if !(200..300).contains(&answer.status) {
            return Err(http_error(answer.status, &answer.body));
        }
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }
}
