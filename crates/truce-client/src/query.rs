//! Queries over a collection (by id or by an index, paged by cursor), the
//! list of collections, and secondary indexes.

use std::fmt;

use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::Client;
use crate::conflict::{http_error, missing};
use crate::document::Document;
use crate::error::ClientError;
use crate::transport::{Call, decode};

/// Sort order of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending (the default).
    Asc,
    /// Descending.
    Desc,
}

/// An opaque position in a query's results, to ask for the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor as sent in `after=`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A query: `GET /v1/c/{coll}?index=&eq=&gt=&gte=&lt=&lte=&limit=&after=&order=`.
///
/// Bounds are JSON values: index keys with `index` (a JSON array for a compound
/// index, a prefix allowed), ids (strings) without.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    index: Option<String>,
    bounds: Vec<(&'static str, Value)>,
    limit: Option<u32>,
    after: Option<Cursor>,
    order: Option<Order>,
}

impl Query {
    /// All documents in id order, in pages of the server's default size.
    pub fn new() -> Query {
        Query::default()
    }

    /// Query by the index `name` instead of by id.
    pub fn index(mut self, name: &str) -> Query {
        self.index = Some(name.to_string());
        self
    }

    /// Keys equal to `value`.
    pub fn eq(self, value: Value) -> Query {
        self.bound("eq", value)
    }

    /// Keys greater than `value`.
    pub fn gt(self, value: Value) -> Query {
        self.bound("gt", value)
    }

    /// Keys greater than or equal to `value`.
    pub fn gte(self, value: Value) -> Query {
        self.bound("gte", value)
    }

    /// Keys less than `value`.
    pub fn lt(self, value: Value) -> Query {
        self.bound("lt", value)
    }

    /// Keys less than or equal to `value`.
    pub fn lte(self, value: Value) -> Query {
        self.bound("lte", value)
    }

    fn bound(mut self, name: &'static str, value: Value) -> Query {
        self.bounds.retain(|(n, _)| *n != name);
        self.bounds.push((name, value));
        self
    }

    /// At most `limit` documents per page (server default 100, at most 1,000).
    pub fn limit(mut self, limit: u32) -> Query {
        self.limit = Some(limit);
        self
    }

    /// Continue after `cursor` (a previous page's [`Page::next`]).
    pub fn after(mut self, cursor: Cursor) -> Query {
        self.after = Some(cursor);
        self
    }

    /// Sort order.
    pub fn order(mut self, order: Order) -> Query {
        self.order = Some(order);
        self
    }

    /// The query parameters, in a stable order.
    pub(crate) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(index) = &self.index {
            params.push(("index", index.clone()));
        }
        params.extend(self.bounds.iter().map(|(name, value)| (*name, value.to_string())));
        if let Some(limit) = self.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.after {
            params.push(("after", cursor.0.clone()));
        }
        if let Some(order) = self.order {
            params.push((
                "order",
                if order == Order::Asc { "asc" } else { "desc" }.to_string(),
            ));
        }
        params
    }
}

/// One page of a query's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The documents of this page.
    pub docs: Vec<Document>,
    /// Where the next page starts, `None` on the last page.
    pub next: Option<Cursor>,
}

#[derive(Deserialize)]
struct RawPage {
    docs: Vec<Document>,
    #[serde(default)]
    next: Value,
}

impl From<RawPage> for Page {
    fn from(raw: RawPage) -> Page {
        let next = match raw.next {
            Value::Null => None,
            Value::String(s) => Some(Cursor(s)),
            // Not a string: passed back as its JSON text.
            other => Some(Cursor(other.to_string())),
        };
        Page { docs: raw.docs, next }
    }
}

/// The definition of a secondary index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexSpec {
    /// The indexed fields (dotted paths allowed), in key order.
    pub fields: Vec<String>,
    /// Whether two live documents may not share a key.
    pub unique: bool,
}

/// An index as `GET /v1/c/{coll}/_indexes` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IndexInfo {
    /// Its name.
    pub name: String,
    /// Its fields.
    pub fields: Vec<String>,
    /// Whether it is unique.
    #[serde(default)]
    pub unique: bool,
    /// Its state as the server names it (e.g. building, ready, failed).
    #[serde(default)]
    pub state: String,
    /// Anything else the server says (`backfilled`, `failure`, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The answer to creating an index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexCreated {
    /// True when it answered 200 (usable now), false for 202 (still building).
    pub ready: bool,
    /// The index, when the answer described it.
    pub info: Option<IndexInfo>,
}

#[derive(Deserialize)]
struct Collections {
    collections: Vec<String>,
    /// Absent from servers before pages: all names came at once.
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Indexes {
    indexes: Vec<IndexInfo>,
}

impl Client {
    /// One page of documents of `coll` matching `query`.
    pub async fn query(&self, coll: &str, query: &Query) -> Result<Page, ClientError> {
        let url = with_params(self.url_for(&["v1", "c", coll])?, &query.params());
        let raw: RawPage = self.fetch_json(&Call::get(url), "a query page").await?;
        Ok(raw.into())
    }

    /// The names of all collections, in name order, a page at a time (the
    /// server's default page; a server before pages answers all at once).
    pub async fn list_collections(&self) -> Result<Vec<String>, ClientError> {
        let mut names = Vec::new();
        let mut after = None;
        loop {
            let params: Vec<_> = after.take().map(|name| ("after", name)).into_iter().collect();
            let url = with_params(self.url(&["v1", "c"]), &params);
            let page: Collections = self.fetch_json(&Call::get(url), "the collections").await?;
            names.extend(page.collections);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// Creates (or confirms) index `name` on `coll` and starts building it over
    /// existing documents. Queries on it answer 503 `index_building` (retried) until ready.
    pub async fn create_index(
        &self,
        coll: &str,
        name: &str,
        spec: &IndexSpec,
    ) -> Result<IndexCreated, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let call = Call::change(
            Method::PUT,
            self.url_for(&["v1", "c", coll, "_indexes", name])?,
            Some(body),
        );
        let answer = self.execute(&call).await?;
        match answer.status {
            200..=202 => Ok(IndexCreated {
                ready: answer.status != 202,
                info: decode::<IndexInfo>(&answer.body, "an index").ok(),
            }),
            status => Err(http_error(status, &answer.body)),
        }
    }

    /// Drops index `name` of `coll`, if there is one (as SQL's `DROP INDEX IF
    /// EXISTS`): `Some` with the index this call dropped, `None` when there was
    /// none. It is sent again only when it certainly did nothing (as every
    /// change without a key): after a lost answer it is an error, and a
    /// caller that sends it again gets `None` if the first had dropped it.
    /// From the drop on the
    /// index is neither maintained, enforced nor queryable. Its entries are
    /// deleted in the background; until then declaring the name again
    /// answers 503 `index_dropping` (retried by
    /// [`create_index`](Self::create_index) like any 503).
    pub async fn drop_index(&self, coll: &str, name: &str) -> Result<Option<IndexInfo>, ClientError> {
        let call = Call::change(
            Method::DELETE,
            self.url_for(&["v1", "c", coll, "_indexes", name])?,
            None,
        );
        let answer = self.execute(&call).await?;
        match answer.status {
            202 => decode::<IndexInfo>(&answer.body, "the dropped index").map(Some),
            404 if missing(&answer.body) => Ok(None),
            status => Err(http_error(status, &answer.body)),
        }
    }

    /// The indexes of `coll` and their state.
    pub async fn list_indexes(&self, coll: &str) -> Result<Vec<IndexInfo>, ClientError> {
        let call = Call::get(self.url_for(&["v1", "c", coll, "_indexes"])?);
        let list: Indexes = self.fetch_json(&call, "the indexes").await?;
        Ok(list.indexes)
    }
}

/// `url` with `params` appended (form-encoded).
pub(crate) fn with_params(mut url: Url, params: &[(&'static str, String)]) -> Url {
    if !params.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in params {
            pairs.append_pair(name, value);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_are_sent_as_json_text_and_cursors_passed_back() {
        let query = Query::new()
            .index("by_session")
            .eq(json!(["s-1"]))
            .gt(json!(5))
            .gt(json!(6))
            .lte(json!("z"))
            .limit(10)
            .after(Cursor("c1".into()))
            .order(Order::Desc);
        let params = query.params();
        let expected = [
            ("index", "by_session"),
            ("eq", r#"["s-1"]"#),
            ("gt", "6"),
            ("lte", r#""z""#),
            ("limit", "10"),
            ("after", "c1"),
            ("order", "desc"),
        ];
        assert_eq!(
            params.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>(),
            expected
        );
        let url = with_params(Url::parse("http://h/v1/c/s").expect("valid"), &params);
        assert_eq!(
            url.query(),
            Some("index=by_session&eq=%5B%22s-1%22%5D&gt=6&lte=%22z%22&limit=10&after=c1&order=desc")
        );
        assert!(Query::new().params().is_empty());
    }

    #[test]
    fn pages_decode_with_or_without_a_next_cursor() {
        let doc = json!({"_id": "a", "_rev": "1-x", "_version": 1, "_seq": 1, "_ts": 1, "k": 1});
        let page: Page = decode::<RawPage>(
            &serde_json::to_vec(&json!({"docs": [doc], "next": "abc"})).expect("json"),
            "p",
        )
        .expect("page")
        .into();
        assert_eq!(page.docs.len(), 1);
        assert_eq!(page.next, Some(Cursor("abc".into())));
        let last: Page = decode::<RawPage>(br#"{"docs": [], "next": null}"#, "p")
            .expect("page")
            .into();
        assert_eq!(last.next, None);
        let structured: Page = decode::<RawPage>(br#"{"docs": [], "next": {"k": 1}}"#, "p")
            .expect("page")
            .into();
        assert_eq!(
            structured.next.map(|c| c.to_string()),
            Some(r#"{"k":1}"#.to_string())
        );
    }

    #[test]
    fn index_listings_keep_unknown_fields() {
        let body = br#"{"indexes": [{"name": "by_s", "fields": ["s"], "unique": true, "state": "ready",
                        "backfilled": 12, "failure": null}]}"#;
        let list: Indexes = decode(body, "indexes").expect("decodes");
        let index = &list.indexes[0];
        assert_eq!(
            (index.name.as_str(), index.unique, index.state.as_str()),
            ("by_s", true, "ready")
        );
        assert_eq!(index.other.get("backfilled"), Some(&json!(12)));
        assert_eq!(
            serde_json::to_value(IndexSpec {
                fields: vec!["s".into()],
                unique: false
            })
            .ok(),
            Some(json!({"fields": ["s"], "unique": false}))
        );
    }
}
