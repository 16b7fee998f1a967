//! The change feed: `GET /v1/c/{coll}/_changes` (and `/v1/_changes` for all
//! collections), as a normal request or a long poll.

use std::time::Duration;

use serde::Deserialize;

use crate::client::Client;
use crate::document::Document;
use crate::error::ClientError;
use crate::query::with_params;
use crate::transport::Call;

/// How the feed answers when nothing newer than `since` exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feed {
    /// Answer at once, possibly with no results.
    #[default]
    Normal,
    /// Wait up to `timeout` for a change before answering.
    Longpoll {
        /// The longest wait on the server.
        timeout: Duration,
    },
}

/// Parameters of a change-feed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesOptions {
    since: Option<u64>,
    from: Option<u64>,
    epoch: Option<u64>,
    limit: Option<u32>,
    include_docs: bool,
    feed: Feed,
}

impl ChangesOptions {
    /// From the beginning, server default page size, without documents.
    pub fn new() -> ChangesOptions {
        ChangesOptions::default()
    }

    /// Only changes after commit sequence `seq` (a previous answer's `last_seq`).
    pub fn since(mut self, seq: u64) -> ChangesOptions {
        self.since = Some(seq);
        self
    }

    /// Where this reader's history began: the [`Changes::from`] of its
    /// first page, read from the start. With it the server refuses (410
    /// `history_purged`) a `since` that could miss a delete whose tombstone
    /// the collection has purged (`tombstones.keep_seconds`); without it, it
    /// does not check.
    pub fn from(mut self, from: Option<u64>) -> ChangesOptions {
        self.from = from;
        self
    }

    /// The database's history this reader's position is in: the
    /// [`Changes::epoch`] of its last page. With it the server refuses (410
    /// `history_purged`) a `since` of another history — the database was
    /// restored from a backup since, and hands out those positions again —
    /// where reading on would skip changes for good; without it, it does
    /// not check.
    pub fn epoch(mut self, epoch: Option<u64>) -> ChangesOptions {
        self.epoch = epoch;
        self
    }

    /// At most `limit` results.
    pub fn limit(mut self, limit: u32) -> ChangesOptions {
        self.limit = Some(limit);
        self
    }

    /// Whether each result carries the document.
    pub fn include_docs(mut self, include: bool) -> ChangesOptions {
        self.include_docs = include;
        self
    }

    /// Waits on the server up to `timeout` for a change (`feed=longpoll`).
    pub fn longpoll(mut self, timeout: Duration) -> ChangesOptions {
        self.feed = Feed::Longpoll { timeout };
        self
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(since) = self.since {
            params.push(("since", since.to_string()));
        }
        if let Some(from) = self.from {
            params.push(("from", from.to_string()));
        }
        if let Some(epoch) = self.epoch {
            params.push(("epoch", epoch.to_string()));
        }
        if let Some(limit) = self.limit {
            params.push(("limit", limit.to_string()));
        }
        if self.include_docs {
            params.push(("include_docs", "true".to_string()));
        }
        if let Feed::Longpoll { timeout } = self.feed {
            params.push(("feed", "longpoll".to_string()));
            params.push(("timeout", timeout.as_millis().to_string()));
        }
        params
    }

    fn server_wait(&self) -> Duration {
        match self.feed {
            Feed::Normal => Duration::ZERO,
            Feed::Longpoll { timeout } => timeout,
        }
    }
}

/// One entry of the feed: a document at its latest change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    /// The commit sequence of the change.
    pub seq: u64,
    /// The collection (in the all-collections feed only).
    #[serde(default)]
    pub c: Option<String>,
    /// The document id.
    pub id: String,
    /// Its revision after the change.
    pub rev: String,
    /// Whether the change deleted it.
    #[serde(default)]
    pub deleted: bool,
    /// The document, when `include_docs` was asked for.
    #[serde(default)]
    pub doc: Option<Document>,
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Changes {
    /// Changes in commit order, no gaps, no duplicates.
    pub results: Vec<Change>,
    /// Where to continue: pass it as `since` next time.
    pub last_seq: u64,
    /// Where this reader's history began: pass it as `from` next time.
    #[serde(default)]
    pub from: Option<u64>,
    /// The database's history (absent from a server before epochs): pass it
    /// as `epoch` next time.
    #[serde(default)]
    pub epoch: Option<u64>,
}

impl Client {
    /// Changes of collection `coll`.
    pub async fn changes(&self, coll: &str, options: &ChangesOptions) -> Result<Changes, ClientError> {
        self.changes_at(self.url_for(&["v1", "c", coll, "_changes"])?, options)
            .await
    }

    /// Changes of all collections (each result carries its collection in `c`).
    pub async fn changes_all(&self, options: &ChangesOptions) -> Result<Changes, ClientError> {
        self.changes_at(self.url(&["v1", "_changes"]), options).await
    }

    async fn changes_at(&self, url: reqwest::Url, options: &ChangesOptions) -> Result<Changes, ClientError> {
        let call = Call::get(with_params(url, &options.params())).extra_timeout(options.server_wait());
        self.fetch_json(&call, "a change feed page").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::decode;

    #[test]
    fn options_become_query_parameters() {
        assert!(ChangesOptions::new().params().is_empty());
        let options = ChangesOptions::new()
            .since(17)
            .epoch(Some(9))
            .limit(50)
            .include_docs(true)
            .longpoll(Duration::from_secs(2));
        let params: Vec<(&str, String)> = options.params();
        let expected = [
            ("since", "17"),
            ("epoch", "9"),
            ("limit", "50"),
            ("include_docs", "true"),
            ("feed", "longpoll"),
            ("timeout", "2000"),
        ];
        assert_eq!(
            params.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(options.server_wait(), Duration::from_secs(2));
    }

    #[test]
    fn pages_decode_with_and_without_documents() {
        let body = br#"{"results": [
            {"seq": 3, "id": "a", "rev": "2-x", "deleted": false,
             "doc": {"_id": "a", "_rev": "2-x", "_version": 2, "_seq": 3, "_ts": 1, "n": 2}},
            {"seq": 4, "c": "other", "id": "b", "rev": "3-y", "deleted": true}
        ], "last_seq": 4}"#;
        let page: Changes = decode(body, "changes").expect("decodes");
        assert_eq!(page.last_seq, 4);
        assert_eq!(page.results[0].doc.as_ref().map(|d| d.version), Some(2));
        assert!(page.results[1].deleted && page.results[1].doc.is_none());
        assert_eq!(page.results[1].c.as_deref(), Some("other"));
    }
}
