//! The CouchDB subset that rxdb 17's `replicateCouchDB` plugin uses, mounted at
//! `/couch/{coll}/`. Truce's `_rev` (`N-<32 hex>`, one linear history per
//! document) is the CouchDB revision; there are no revision trees.
//!
//! Answers and errors use CouchDB's shapes (`{"error","reason"}`), not Truce's.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use truce::budget::Budget;
use truce::record::StoredDoc;
use truce::{ConflictReason, Document, Expect, TxOp, WriteResult};

use super::error::ApiError;
use super::extract::{JsonBody, Params, PathParams, Standing, authorize};
use super::{AppState, WholeArray};
use crate::keys::{Principal, Role};

/// Default long-poll wait, in ms (CouchDB's default is 60 s); the largest
/// is `/v1`'s.
const LONGPOLL_TIMEOUT_MS_DEFAULT: u64 = 60_000;
use super::changes::LONGPOLL_TIMEOUT_MS_MAX;
/// Changes per answer unless `limit` says otherwise.
const CHANGES_LIMIT_DEFAULT: usize = 1000;
/// How far `_changes` counts the changes left after a page (`pending`): a
/// catch-up reading pages of 100 should not read 10,000 keys for each.
const PENDING_COUNTED_MAX: usize = 1000;
/// Rows of `GET _all_docs` unless `limit` says otherwise.
const ALL_DOCS_LIMIT_DEFAULT: usize = 1000;
/// Rows of one `_bulk_docs` request queued for the committer at once: they
/// still share group commits, and a request of 1,000 takes at most this
/// many of the commit queue's places.
const BULK_ROWS_IN_FLIGHT: usize = 128;

/// An error in CouchDB's shape.
pub struct CouchError(StatusCode, &'static str, String);

impl CouchError {
    /// A 400 `bad_request`, CouchDB's answer to a request it cannot take.
    fn bad_request(reason: impl Into<String>) -> CouchError {
        CouchError(StatusCode::BAD_REQUEST, "bad_request", reason.into())
    }
}

impl IntoResponse for CouchError {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(json!({"error": self.1, "reason": self.2}))).into_response();
        super::error::add_retry_after(&mut response);
        response
    }
}

impl From<ApiError> for CouchError {
    fn from(e: ApiError) -> CouchError {
        let (status, body) = e.status_and_body();
        let reason = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        CouchError(status, error_name(status), reason)
    }
}

/// CouchDB's `error` for an answer of `status`.
fn error_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_content_type",
        StatusCode::INSUFFICIENT_STORAGE => "insufficient_storage",
        StatusCode::NOT_IMPLEMENTED => "not_implemented",
        // Busy, not wrong: a client that reads `error` must not take them
        // for a request to give up on.
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "unknown_error",
    }
}

/// Gives every error answer under `/couch/` CouchDB's shape, `{"error",
/// "reason"}`, whoever made it: the handlers answer so themselves, but the
/// authentication in front of them, the request body's extractor and the
/// router's 405 answer as the `/v1` API does (`{"error", "message"}`).
pub async fn error_shape(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let couch = request.uri().path().starts_with("/couch/");
    let response = next.run(request).await;
    let status = response.status();
    if !couch || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // Error bodies are a line or two; a larger one is passed on untouched.
    if axum::body::HttpBody::size_hint(response.body())
        .upper()
        .is_none_or(|size| size > 64 * 1024)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let reason = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(body)) if !body.contains_key("reason") => body.get("message").cloned(),
        _ => None,
    };
    let Some(reason) = reason else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let couch = json!({"error": error_name(status), "reason": reason}).to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(couch))
}

impl From<truce::Error> for CouchError {
    fn from(e: truce::Error) -> CouchError {
        CouchError::from(ApiError::Engine(e))
    }
}

type CouchResult = Result<Response, CouchError>;

fn conflict() -> CouchError {
    CouchError(
        StatusCode::CONFLICT,
        "conflict",
        "Document update conflict.".into(),
    )
}

/// A document in CouchDB's shape: `_id`, `_rev`, the fields (`_deleted` on a
/// tombstone), serialised straight to an answer's bytes or, for the rows
/// built as values, by [`couch_doc`].
struct CouchDoc<'a>(&'a Document);

impl serde::Serialize for CouchDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let doc = self.0;
        let mut map = serializer.serialize_map(Some(doc.body.len() + 2 + usize::from(doc.is_deleted())))?;
        map.serialize_entry("_id", &doc.id)?;
        map.serialize_entry("_rev", &doc.rev())?;
        if doc.is_deleted() {
            map.serialize_entry("_deleted", &true)?;
        }
        for (k, v) in &doc.body {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A page's document as a `/couch` feed writes it ([`CouchDoc`]'s JSON).
trait CouchPaged {
    /// Appends document `id` in CouchDB's shape.
    fn write_couch(&self, id: &str, out: &mut Vec<u8>) -> truce::Result<()>;
}

/// Decoded: the tests' reference for the bytes the stored form writes (the
/// feed reads its pages as stored).
#[cfg(test)]
impl CouchPaged for Document {
    fn write_couch(&self, _id: &str, out: &mut Vec<u8>) -> truce::Result<()> {
        serde_json::to_writer(out, &CouchDoc(self)).map_err(super::unencodable)
    }
}

/// From its stored bytes, never decoded: the fields [`CouchDoc`] puts
/// first, then the body's entries (no body key begins with `_`).
impl CouchPaged for StoredDoc {
    fn write_couch(&self, id: &str, out: &mut Vec<u8>) -> truce::Result<()> {
        let body = self.object_json(id)?;
        out.extend_from_slice(b"{\"_id\":");
        serde_json::to_writer(&mut *out, id).map_err(super::unencodable)?;
        out.extend_from_slice(b",\"_rev\":\"");
        out.extend_from_slice(self.meta().rev.text().as_str().as_bytes());
        out.push(b'"');
        if self.meta().deleted {
            out.extend_from_slice(b",\"_deleted\":true");
        }
        let entries = &body[1..body.len() - 1];
        if !entries.is_empty() {
            out.push(b',');
            out.extend_from_slice(entries);
        }
        out.push(b'}');
        Ok(())
    }
}

fn couch_doc(doc: &Document) -> Value {
    serde_json::to_value(CouchDoc(doc)).unwrap_or(Value::Null)
}

/// The `_` fields CouchDB accepts in a document body (besides `_rev` and
/// `_deleted`, read above them): none holds anything Truce keeps.
const COUCH_SPECIAL_FIELDS: [&str; 7] = [
    "_id",
    "_attachments",
    "_revisions",
    "_conflicts",
    "_deleted_conflicts",
    "_local_seq",
    "_revs_info",
];

/// The write a CouchDB document body asks for: `_rev` means "exactly that
/// revision", none means create (also over a tombstone); `_deleted` deletes.
fn couch_write(coll: &str, id: &str, mut doc: Map<String, Value>) -> Result<TxOp, CouchError> {
    let rev = doc.remove("_rev");
    // Anything but a boolean is refused, as CouchDB refuses it: `"yes"` read
    // as false wrote a live document where the client meant a delete.
    let deleted = match doc.remove("_deleted") {
        None => false,
        Some(Value::Bool(deleted)) => deleted,
        Some(_) => return Err(CouchError::bad_request(truce_server::wire::DELETED_IS_BOOLEAN)),
    };
    let expect = match rev {
        // `0-0` is the revision a delete of a document that never existed
        // answers (`NO_REVISION`): nothing is there, as without `_rev`.
        None | Some(Value::Null) => Expect::Absent,
        Some(Value::String(rev)) if rev == NO_REVISION => Expect::Absent,
        Some(Value::String(rev)) => Expect::Rev(
            rev.parse()
                .map_err(|_| CouchError::bad_request(format!("invalid rev {rev:?}")))?,
        ),
        Some(_) => {
            return Err(CouchError::bad_request("_rev is a string"));
        }
    };
    // CouchDB's own special fields carry nothing Truce keeps; attachments do
    // (refused: dropping them would lose the client's data), and any other
    // `_` field is refused as CouchDB refuses it.
    if truce_server::wire::carries_attachments(&doc) {
        return Err(CouchError::bad_request(truce_server::wire::NO_ATTACHMENTS));
    }
    if let Some(key) = doc
        .keys()
        .find(|k| k.starts_with('_') && !COUCH_SPECIAL_FIELDS.contains(&k.as_str()))
    {
        return Err(CouchError(
            StatusCode::BAD_REQUEST,
            "doc_validation",
            format!("Bad special document member: {key}"),
        ));
    }
    doc.retain(|k, _| !k.starts_with('_'));
    let (collection, id) = (coll.to_string(), id.to_string());
    Ok(match (deleted, expect) {
        // No revision: right only when nothing live is there, so it is a check
        // that the document is absent (see `bulk_docs`), and writes nothing.
        (true, Expect::Absent) => TxOp::Check {
            collection,
            id,
            expect: Expect::Absent,
        },
        (true, expect) => TxOp::Delete {
            collection,
            id,
            expect,
        },
        (false, expect) => TxOp::Put {
            collection,
            id,
            body: Value::Object(doc),
            expect,
        },
    })
}

fn write_row(id: &str, result: Result<WriteResult, truce::Error>) -> Value {
    match result {
        Ok(Ok(written)) => json!({"ok": true, "id": id, "rev": written.doc.rev().to_string()}),
        Ok(Err(refused)) => {
            let CouchError(_, error, reason) = refused_write(&refused);
            json!({"id": id, "error": error, "reason": reason})
        }
        Err(e) => json!({"id": id, "error": e.code(), "reason": e.to_string()}),
    }
}

/// A write the committer refused, in CouchDB's terms: a stale revision is a
/// conflict; a value a unique index holds is `forbidden`, as a validation
/// function's refusal is (no revision would make it pass).
fn refused_write(refused: &truce::Conflict) -> CouchError {
    match (&refused.reason, refused.current_meta()) {
        (ConflictReason::UniqueViolation, holder) => CouchError(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a unique index holds this value (document {})",
                holder.map_or("another", |(id, _)| id)
            ),
        ),
        _ => conflict(),
    }
}

/// `GET /couch/{coll}/`: database information.
pub async fn info(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
) -> CouchResult {
    authorize(&who, Role::Read, Some(&coll))?;
    let collection = state.db.collection(&coll)?;
    let seq = state.db.durable_seq();
    let (live, deleted) = super::blocking(move || collection.count()).await?;
    Ok(axum::Json(json!({
        "db_name": coll, "doc_count": live, "doc_del_count": deleted, "update_seq": seq,
        "instance_start_time": "0", "purge_seq": 0,
    }))
    .into_response())
}

/// `PUT /couch/{coll}/`: collections exist once written; this only answers as CouchDB would.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
) -> CouchResult {
    authorize(&who, Role::Write, Some(&coll))?;
    truce::doc::validate_collection_name(&coll)?;
    if state.db.has_collection(&coll) {
        return Err(CouchError(
            StatusCode::PRECONDITION_FAILED,
            "file_exists",
            "The database already exists.".into(),
        ));
    }
    state.db.room_for_collection(&coll)?;
    Ok((StatusCode::CREATED, axum::Json(json!({"ok": true}))).into_response())
}

/// `GET /couch/{coll}/_changes`.
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    headers: HeaderMap,
    params: Params,
) -> CouchResult {
    authorize(&who, Role::Read, Some(&coll))?;
    truce::doc::validate_collection_name(&coll)?;
    if let Some(name) = ["filter", "doc_ids", "view"]
        .into_iter()
        .find(|n| params.0.contains_key(*n))
    {
        return Err(unsupported(name, "read the whole feed and filter on the client"));
    }
    if params.flag("descending")? {
        return Err(unsupported("descending", "the feed is read in commit order"));
    }
    let since = match params.0.get("since").map(String::as_str) {
        None | Some("0") => 0,
        Some("now") => state.db.durable_seq(),
        Some(s) => s
            .trim_matches('"')
            .parse::<u64>()
            .map_err(|_| CouchError::bad_request(format!("since={s:?} is not a sequence")))?,
    };
    // CouchDB has no cap: a larger limit gets a page of the most this feed
    // serves, and the client goes on from its last_seq as after any page.
    let limit = params
        .parse::<usize>("limit", "invalid_query")?
        .unwrap_or(CHANGES_LIMIT_DEFAULT)
        .clamp(1, truce::limits::CHANGES_LIMIT_MAX);
    let include_docs = params.flag("include_docs")?;
    let page = match params.0.get("feed").map(String::as_str).unwrap_or("normal") {
        "normal" => {
            let (db, coll) = (state.db.clone(), coll.clone());
            // Whole pages: RxDB's CouchDB replication takes a short page for
            // the end of the feed, and goes on live from "now".
            super::blocking(move || db.changes_whole_stored(Some(&coll), since, limit, include_docs)).await?
        }
        "longpoll" => {
            let timeout = params
                .parse::<u64>("timeout", "invalid_query")?
                .unwrap_or(LONGPOLL_TIMEOUT_MS_DEFAULT)
                .min(LONGPOLL_TIMEOUT_MS_MAX);
            let mut sub = state
                .db
                .subscribe(Some(&coll), since, include_docs)?
                .stored()
                .page_limit(limit)?
                .whole_pages();
            let standing = Standing::of(&state, &who, &headers, Some(&coll))?;
            standing
                .long_poll(&mut sub, Duration::from_millis(timeout))
                .await?
        }
        other => {
            return Err(CouchError::bad_request(format!("feed={other} is not supported")));
        }
    };
    // What is left after this answer, counted up to a page's worth (CouchDB's
    // readers use it to show progress and to read on); then the answer,
    // written as JSON off the HTTP thread, each document straight from the
    // page (a whole page of large documents takes a while).
    let db = state.db.clone();
    let answer = super::blocking(move || {
        let pending = match page.changes.is_empty() {
            true => 0,
            false => db.pending_changes(&coll, page.last_seq, PENDING_COUNTED_MAX)?,
        };
        changes_answer(&page, pending)
    })
    .await?;
    Ok(super::json_bytes(answer))
}

/// `{"results": [{"seq", "id", "changes": [{"rev"}], "deleted", "doc"}],
/// "last_seq", "pending"}` for `page`, as bytes.
fn changes_answer<D: CouchPaged>(page: &truce::ChangesPage<D>, pending: u64) -> truce::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"results\":[");
    for (i, c) in page.changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(c.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"id\":");
        serde_json::to_writer(&mut out, &c.id).map_err(super::unencodable)?;
        out.extend_from_slice(b",\"changes\":[{\"rev\":\"");
        out.extend_from_slice(c.rev.text().as_str().as_bytes());
        out.extend_from_slice(b"\"}]");
        if c.deleted {
            out.extend_from_slice(b",\"deleted\":true");
        }
        if let Some(doc) = &c.doc {
            out.extend_from_slice(b",\"doc\":");
            doc.write_couch(&c.id, &mut out)?;
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"last_seq\":");
    out.extend_from_slice(page.last_seq.to_string().as_bytes());
    out.extend_from_slice(b",\"pending\":");
    out.extend_from_slice(pending.to_string().as_bytes());
    out.push(b'}');
    Ok(out)
}

/// How `_all_docs` shows a deleted document asked for by key.
#[derive(Clone, Copy)]
enum Tombstones {
    /// `doc: null`, as CouchDB answers a POST (the plugin then writes without `_rev`).
    Null,
    /// The tombstone itself, which the plugin's conflict lookup (a GET) needs.
    Shown,
}

/// One `_all_docs` row for `key`: live, deleted or missing.
fn all_docs_row(key: &str, doc: Option<Document>, include_docs: bool, tombstones: Tombstones) -> Value {
    match doc {
        None => json!({"key": key, "error": "not_found"}),
        Some(doc) if doc.is_deleted() => {
            let mut row =
                json!({"id": key, "key": key, "value": {"rev": doc.rev().to_string(), "deleted": true}});
            if include_docs {
                row["doc"] = match tombstones {
                    Tombstones::Null => Value::Null,
                    Tombstones::Shown => couch_doc(&doc),
                };
            }
            row
        }
        Some(doc) => {
            let mut row = json!({"id": key, "key": key, "value": {"rev": doc.rev().to_string()}});
            if include_docs {
                row["doc"] = couch_doc(&doc);
            }
            row
        }
    }
}

async fn all_docs_for(
    state: &AppState,
    coll: &str,
    params: &Params,
    keys: Option<Vec<String>>,
    include_docs: bool,
    tombstones: Tombstones,
) -> CouchResult {
    let collection = state.db.collection(coll)?;
    if keys.is_some()
        && let Some(name) = ALL_DOCS_QUERY_ONLY.iter().find(|n| params.0.contains_key(**n))
    {
        // CouchDB refuses them with `keys` too: the rows are the keys given.
        return Err(unsupported(
            name,
            "with `keys`, whose rows are the keys given, in order",
        ));
    }
    let rows = match keys {
        // Off the HTTP thread, as the range below: up to a body's worth of
        // keys, each a read.
        Some(keys) => {
            let pages = Arc::clone(state.db.page_memory());
            super::blocking(move || -> truce::Result<_> {
                let mut rows = Rows::counted(&pages);
                for key in &keys {
                    // A key no document could have (`""`, `_design/x`, one
                    // past the id's length) is a row of its own, as CouchDB
                    // answers it, not a refusal of every key: RxDB asks for
                    // the ids of the documents it pushes.
                    let doc = match truce::doc::validate_id(key) {
                        Ok(()) => collection.get_current(key)?,
                        Err(_) => None,
                    };
                    rows.push(&all_docs_row(key, doc, include_docs, tombstones))?;
                }
                Ok(rows)
            })
            .await?
        }
        None => {
            let asked = params.parse::<usize>("limit", "invalid_query")?;
            let limit = asked.unwrap_or(ALL_DOCS_LIMIT_DEFAULT);
            if params.parse::<usize>("skip", "invalid_query")?.unwrap_or(0) > 0 {
                return Err(unsupported(
                    "skip",
                    "page with startkey (the last id, and limit + 1) instead",
                ));
            }
            // Document ids are strings: another key (`key=5`, an array)
            // would bound nothing, and answer every document.
            let key_param = |name: &str| -> Result<Option<Value>, CouchError> {
                match params.json(name)? {
                    None => Ok(None),
                    Some(Value::String(id)) => Ok(Some(Value::String(id))),
                    Some(other) => Err(CouchError::bad_request(format!(
                        "{name}={other}: keys of _all_docs are document ids, JSON strings"
                    ))),
                }
            };
            let (mut start, mut end) = (
                key_param("startkey")?.or(key_param("start_key")?),
                key_param("endkey")?.or(key_param("end_key")?),
            );
            if let Some(key) = key_param("key")? {
                if start.is_some() || end.is_some() {
                    return Err(CouchError::bad_request(
                        "`key` is incompatible with `startkey` and `endkey`",
                    ));
                }
                (start, end) = (Some(key.clone()), Some(key));
            }
            let descending = params.flag("descending")?;
            let inclusive_end = params
                .parse::<bool>("inclusive_end", "invalid_query")?
                .unwrap_or(true);
            // CouchDB reads from `startkey` towards `endkey`, so `startkey` is
            // the upper bound when descending; `inclusive_end` is `endkey`'s.
            let mut query = truce::Query {
                limit,
                ..truce::Query::default()
            };
            if descending {
                query.order = truce::Order::Desc;
                query.lte = start;
                if inclusive_end {
                    query.gte = end
                } else {
                    query.gt = end
                }
            } else {
                query.gte = start;
                if inclusive_end {
                    query.lte = end
                } else {
                    query.lt = end
                }
            }
            if limit == 0 {
                // CouchDB answers no rows (the engine's 0 means its default).
                return Ok(Rows::default().answer());
            }
            // `limit` rows, or all there are: a page of the engine may come
            // short with more to come (past `PAGE_BYTES_MAX` of documents, or
            // over documents past their TTL), and a CouchDB client takes a
            // short answer for the end of the range.
            let whole = asked.is_none();
            let (rows, more) = super::blocking(move || -> truce::Result<_> {
                let mut rows = Rows::default();
                loop {
                    let page = collection.query(&query)?;
                    for doc in page.docs {
                        rows.push(&all_docs_row(
                            &doc.id.clone(),
                            Some(doc),
                            include_docs,
                            tombstones,
                        ))?;
                    }
                    match page.next {
                        Some(next) if rows.0.len() < limit => {
                            query.after = Some(next);
                            query.limit = limit - rows.0.len();
                        }
                        // A full page has a `next` whether or not a
                        // document follows: a range of exactly the default
                        // number was refused as one of more. Looked for,
                        // when it decides the answer.
                        Some(next) if whole => {
                            query.after = Some(next);
                            query.limit = 1;
                            return Ok((rows, any_left(&collection, query)?));
                        }
                        next => return Ok((rows, next.is_some())),
                    }
                }
            })
            .await?;
            if asked.is_none() && more {
                // CouchDB would answer every row; cutting them short without
                // a word would look like the whole collection.
                return Err(CouchError::bad_request(format!(
                    "more than {ALL_DOCS_LIMIT_DEFAULT} documents in the range: page with limit (at most \
                     {ALL_DOCS_LIMIT_DEFAULT}) and startkey, the last id of the page before, whose row \
                     comes first again: drop it"
                )));
            }
            rows
        }
    };
    Ok(rows.answer())
}

/// Whether `query` (from some `after`) finds a document: its pages may come
/// empty with more to come (over documents past their TTL).
fn any_left(collection: &truce::Collection, mut query: truce::Query) -> truce::Result<bool> {
    loop {
        let page = collection.query(&query)?;
        if !page.docs.is_empty() {
            return Ok(true);
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(false),
        }
    }
}

/// `_all_docs` rows written out as they are made: a CouchDB client takes a
/// short answer for the end of the range, so the rows cannot be cut short,
/// and they are refused once they pass
/// [`WHOLE_PAGE_BYTES_MAX`](truce::limits::WHOLE_PAGE_BYTES_MAX) (413
/// `too_large`; `keys` may name one large document any number of times)
/// instead of being built whole.
#[derive(Default)]
struct Rows(WholeArray);

impl Rows {
    /// Rows by `keys`, which count against the memory of the pages being
    /// read themselves (forty requests of 63 keys naming 1 MB documents held
    /// 2.97 GB at once); those of a range are made from query pages, which
    /// count.
    fn counted(pages: &Arc<Budget>) -> Rows {
        Rows(WholeArray::counted(pages))
    }

    fn push(&mut self, row: &Value) -> truce::Result<()> {
        self.0
            .push(|out| serde_json::to_writer(out, row).map_err(super::unencodable))
    }

    /// `{"total_rows": N, "offset": 0, "rows": [...]}`.
    fn answer(self) -> Response {
        let mut json = format!(r#"{{"total_rows":{},"offset":0,"rows":"#, self.0.len()).into_bytes();
        self.0.write_into(&mut json);
        json.push(b'}');
        super::json_bytes(json)
    }
}

/// A CouchDB parameter that would change the answer and that this subset does
/// not implement: refused, where ignoring it would answer what was not asked.
fn unsupported(name: &str, instead: &str) -> CouchError {
    CouchError::bad_request(format!(
        "`{name}` is not supported by Truce's CouchDB subset: {instead} (docs/replication.md)"
    ))
}

/// `POST _all_docs` body keys that change nothing here: rows asked for by key
/// show deleted documents anyway (RxDB's plugin sends `"deleted": "ok"`),
/// and no document has conflicts or attachments.
const ALL_DOCS_BODY_IGNORED: [&str; 4] = ["deleted", "conflicts", "attachments", "att_encoding_info"];

/// `_all_docs` parameters read from the query string only.
const ALL_DOCS_QUERY_ONLY: [&str; 9] = [
    "startkey",
    "start_key",
    "endkey",
    "end_key",
    "key",
    "limit",
    "skip",
    "descending",
    "inclusive_end",
];

fn keys_of(value: Option<&Value>) -> Result<Option<Vec<String>>, CouchError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| k.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| CouchError::bad_request("keys are strings")),
        Some(_) => Err(CouchError::bad_request("`keys` must be an array")),
    }
}

/// `GET /couch/{coll}/_all_docs` (`keys` as a JSON parameter, or every live document).
pub async fn all_docs_get(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
) -> CouchResult {
    authorize(&who, Role::Read, Some(&coll))?;
    let keys = keys_of(params.json("keys")?.as_ref())?;
    let include_docs = params.flag("include_docs")?;
    all_docs_for(&state, &coll, &params, keys, include_docs, Tombstones::Shown).await
}

/// `POST /couch/{coll}/_all_docs` with `{"keys": [...]}`.
pub async fn all_docs_post(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
    JsonBody(body): JsonBody,
) -> CouchResult {
    authorize(&who, Role::Read, Some(&coll))?;
    // A body of another shape, or a misspelt `keys`, would answer every
    // document where the client asked for some.
    let Value::Object(fields) = &body else {
        return Err(CouchError::bad_request(
            "the body is an object: {\"keys\": [ids]}",
        ));
    };
    if fields.get("keys").is_some_and(Value::is_null) {
        return Err(CouchError::bad_request("`keys` must be an array"));
    }
    let keys = keys_of(fields.get("keys"))?;
    if let Some(name) = ALL_DOCS_QUERY_ONLY
        .iter()
        .find(|name| fields.contains_key(**name))
    {
        return Err(unsupported(name, "in a POST body; pass it in the query string"));
    }
    if let Some(name) = fields.keys().find(|k| {
        !matches!(k.as_str(), "keys" | "include_docs") && !ALL_DOCS_BODY_IGNORED.contains(&k.as_str())
    }) {
        return Err(CouchError::bad_request(format!(
            "unknown key `{name}` in the body: it takes `keys` and `include_docs` (and ignores {})",
            ALL_DOCS_BODY_IGNORED.join(", ")
        )));
    }
    // CouchDB accepts every _all_docs parameter in the POST body; this subset
    // reads `keys` and `include_docs` there.
    let include_docs = match fields.get("include_docs") {
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            return Err(CouchError::bad_request(format!(
                "include_docs is true or false, not {other}"
            )));
        }
        None => params.flag("include_docs")?,
    };
    let mut answer = all_docs_for(&state, &coll, &params, keys, include_docs, Tombstones::Null).await?;
    // A read sent as a POST: under memory pressure it may be refused.
    answer.extensions_mut().insert(super::answers::Unwritten);
    Ok(answer)
}

/// `POST /couch/{coll}/_bulk_docs`: each row applies on its own (as in CouchDB);
/// all are queued at once, so they share group commits.
pub async fn bulk_docs(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> CouchResult {
    // Counted for the insights under the caller's `Truce-Source` and
    // `Truce-Attempt`, as on every write route.
    let origin = super::extract::origin(&headers);
    authorize(&who, Role::Write, Some(&coll))?;
    match body.get("new_edits") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(CouchError::bad_request(
                "new_edits=false (client-assigned revisions) is not supported: Truce keeps one linear history",
            ));
        }
        Some(_) => return Err(CouchError::bad_request("new_edits is true or false")),
    }
    let Some(Value::Array(docs)) = body.get("docs") else {
        return Err(CouchError::bad_request("`docs` must be an array"));
    };
    if docs.len() > truce::limits::TX_OPS_MAX {
        return Err(truce::Error::LimitExceeded {
            what: "TX_OPS_MAX",
            limit: truce::limits::TX_OPS_MAX as u64,
        }
        .into());
    }
    // Every document is read before any is written: a bad one refuses the
    // request, and nothing of it is written.
    let mut ops = Vec::with_capacity(docs.len());
    for doc in docs {
        let Value::Object(doc) = doc.clone() else {
            return Err(CouchError::bad_request("every doc is an object"));
        };
        let id = match doc.get("_id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(CouchError::bad_request("a doc's _id must be a string")),
            None => return Err(CouchError::bad_request("every doc needs an _id")),
        };
        ops.push((id.clone(), couch_write(&coll, &id, doc)?));
    }
    // At most `BULK_ROWS_IN_FLIGHT` rows queued at once, so that a few bulk
    // requests share the commit queue with every other writer instead of
    // filling it (1,000 rows each: nine requests filled its 8,192 places,
    // and other clients' writes were refused with 429).
    let collection = state.db.collection(&coll)?;
    let mut rows = Vec::with_capacity(ops.len());
    let mut pending = std::collections::VecDeque::with_capacity(BULK_ROWS_IN_FLIGHT);
    let mut ops = ops.into_iter();
    loop {
        while pending.len() < BULK_ROWS_IN_FLIGHT
            && let Some((id, op)) = ops.next()
        {
            let submitted = match op {
                check @ TxOp::Check { .. } => state
                    .db
                    .submit_batch_from(vec![check], None, origin.clone())
                    .map(Pending::AbsentCheck),
                write => state
                    .db
                    .submit_write_from(write, None, origin.clone())
                    .map(Pending::Write),
            };
            pending.push_back((id, submitted));
        }
        let Some((id, submitted)) = pending.pop_front() else {
            break;
        };
        let row = match submitted {
            Ok(Pending::Write(write)) => write_row(&id, write.await),
            // A delete without `_rev` of what is already gone succeeds, as in
            // CouchDB; of a live document it is a conflict.
            Ok(Pending::AbsentCheck(check)) => {
                let answered = match check.await {
                    Ok(Ok(_)) => {
                        gone_rev(&collection, &id).map(|rev| json!({"ok": true, "id": id, "rev": rev}))
                    }
                    Ok(Err(_)) => {
                        Ok(json!({"id": id, "error": "conflict", "reason": "Document update conflict."}))
                    }
                    Err(e) => Err(CouchError::from(e)),
                };
                // An error answers its own row, as a write's does: the rows
                // before it were written, and those after it are tried.
                answered.unwrap_or_else(
                    |CouchError(_, error, reason)| json!({"id": id, "error": error, "reason": reason}),
                )
            }
            Err(e) => write_row(&id, Err(e)),
        };
        rows.push(row);
    }
    Ok((StatusCode::CREATED, axum::Json(Value::Array(rows))).into_response())
}

/// The revision a delete without `_rev` of a document that never existed
/// answers: it wrote nothing, so there is none; sent back as `_rev`, it means
/// "nothing there" again.
const NO_REVISION: &str = "0-0";

/// The revision of what a delete without `_rev` found gone: its tombstone's,
/// or [`NO_REVISION`] when it never existed.
fn gone_rev(collection: &truce::Collection, id: &str) -> Result<String, CouchError> {
    Ok(collection
        .get_current(id)?
        .map_or_else(|| NO_REVISION.to_string(), |d| d.rev().to_string()))
}

/// A `_bulk_docs` row on its way.
enum Pending {
    /// A write.
    Write(truce::PendingWrite),
    /// A delete without `_rev`: a check that nothing live is there.
    AbsentCheck(truce::PendingTx),
}

/// `GET /couch/{coll}/{id}`.
pub async fn get_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    params: Params,
) -> CouchResult {
    authorize(&who, Role::Read, Some(&coll))?;
    // Each changes the answer's shape or content (`open_revs` answers an
    // array): answering the plain document would answer what was not asked.
    if let Some(name) = [
        "open_revs",
        "revs",
        "revs_info",
        "conflicts",
        "deleted_conflicts",
        "attachments",
    ]
    .into_iter()
    // `open_revs` asks whatever its value; the others ask unless `false`.
    .find(|n| {
        *n == "open_revs" && params.0.contains_key(*n) || params.0.get(*n).is_some_and(|v| v != "false")
    }) {
        return Err(unsupported(
            name,
            "there are no revision trees: one linear history per document",
        ));
    }
    let doc = state.db.collection(&coll)?.get_current(&id)?;
    let wanted = params.0.get("rev");
    match doc {
        None => Err(CouchError(StatusCode::NOT_FOUND, "not_found", "missing".into())),
        Some(doc) if wanted.is_some_and(|r| *r != doc.rev().to_string()) => Err(CouchError(
            StatusCode::NOT_FOUND,
            "not_found",
            "only the latest revision is kept".into(),
        )),
        Some(doc) if doc.is_deleted() && wanted.is_none() => {
            Err(CouchError(StatusCode::NOT_FOUND, "not_found", "deleted".into()))
        }
        Some(doc) => Ok(axum::Json(CouchDoc(&doc)).into_response()),
    }
}

/// Any other method on `/couch/{coll}/{name}`. A `POST` of one of CouchDB's
/// other endpoints (`_revs_diff`, `_bulk_get`, `_find`, …), which this
/// subset does not serve, is named as such rather than met with a 405 as if
/// it were a document; anything else is 405 with `Allow` naming the methods
/// a document takes (axum's own 405 would list `POST`, which is refused).
pub async fn doc_other_method(
    method: Method,
    PathParams((_, name)): PathParams<(String, String)>,
) -> Response {
    if method == Method::POST && name.starts_with('_') {
        CouchError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{name} is not served by Truce's CouchDB subset, which serves what replication needs \
                 (docs/replication.md lists it); query through /v1"
            ),
        )
        .into_response()
    } else {
        let refused = CouchError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a document takes GET, PUT and DELETE; create documents with PUT or _bulk_docs".into(),
        );
        let mut response = refused.into_response();
        response.headers_mut().insert(
            axum::http::header::ALLOW,
            axum::http::HeaderValue::from_static("GET,HEAD,PUT,DELETE"),
        );
        response
    }
}

/// One document's write; a delete without `_rev` (or with `0-0`), which is a
/// check that nothing live is there and writes nothing, answers as in
/// `_bulk_docs`.
async fn write_one(state: &AppState, coll: &str, id: &str, op: TxOp, headers: &HeaderMap) -> CouchResult {
    let origin = super::extract::origin(headers);
    if let check @ TxOp::Check { .. } = op {
        return match state.db.submit_batch_from(vec![check], None, origin)?.await? {
            Ok(_) => {
                let rev = gone_rev(&state.db.collection(coll)?, id)?;
                Ok(axum::Json(json!({"ok": true, "id": id, "rev": rev})).into_response())
            }
            Err(_) => Err(conflict()),
        };
    }
    match state.db.submit_write_from(op, None, origin)?.await? {
        Ok(written) => {
            let status = if written.created() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"ok": true, "id": id, "rev": written.doc.rev().to_string()});
            Ok((status, axum::Json(body)).into_response())
        }
        // A revision of a document that was never written. One of a deleted
        // document (its tombstone's too, as in CouchDB 3) is a conflict, as in
        // `_bulk_docs`: the client's copy is stale, not missing.
        Err(c)
            if c.reason == ConflictReason::NotFound
                && c.current_meta().is_none()
                && state.db.collection(coll)?.get_current(id)?.is_none() =>
        {
            Err(CouchError(StatusCode::NOT_FOUND, "not_found", "missing".into()))
        }
        Err(refused) => Err(refused_write(&refused)),
    }
}

/// `PUT /couch/{coll}/{id}`: `_rev` in the body (or `?rev=`) for an update.
pub async fn put_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    params: Params,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> CouchResult {
    authorize(&who, Role::Write, Some(&coll))?;
    let Value::Object(mut doc) = body else {
        return Err(CouchError::bad_request("a document is a JSON object"));
    };
    // Two revisions that disagree are refused, as CouchDB refuses them: the
    // body's won, and a guard sent in the query was never checked.
    if let Some(rev) = params.0.get("rev") {
        match doc.get("_rev") {
            None => {
                doc.insert("_rev".into(), json!(rev));
            }
            Some(Value::String(body_rev)) if body_rev == rev => {}
            Some(_) => {
                return Err(CouchError::bad_request(
                    "Document rev from request body and query string have different values",
                ));
            }
        }
    }
    let op = couch_write(&coll, &id, doc)?;
    write_one(&state, &coll, &id, op, &headers).await
}

/// `DELETE /couch/{coll}/{id}?rev=R`.
pub async fn delete_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    params: Params,
    headers: HeaderMap,
) -> CouchResult {
    authorize(&who, Role::Write, Some(&coll))?;
    let Some(rev) = params.0.get("rev") else {
        return Err(conflict());
    };
    let mut doc = Map::new();
    doc.insert("_rev".into(), json!(rev));
    doc.insert("_deleted".into(), json!(true));
    let op = couch_write(&coll, &id, doc)?;
    write_one(&state, &coll, &id, op, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows asked for by `keys` count against the memory of the pages being
    /// read as they are written: beside another holder, past the room, the
    /// next row is refused (429) instead of built; alone, they are served
    /// whatever their size; dropped, they give it all back.
    #[test]
    fn rows_by_key_count_against_the_pages_memory() {
        let pages = Budget::new(1_000);
        let row = json!({"id": "a", "doc": {"blob": "x".repeat(600)}});
        let mut alone = Rows::counted(&pages);
        alone.push(&row).unwrap();
        alone.push(&row).unwrap();
        assert!(pages.held() > 1_000);
        drop(alone);
        let mut beside = truce::budget::Taken::new(&pages);
        assert!(beside.take(1));
        let mut rows = Rows::counted(&pages);
        rows.push(&row).unwrap();
        assert!(matches!(rows.push(&row), Err(truce::Error::PagesOverBudget)));
        drop(rows);
        assert_eq!(pages.held(), 1);
    }

    /// A busy server's refusals are not named as requests to give up on:
    /// a client that reads `error` retries them.
    #[test]
    fn busy_answers_are_not_named_bad_requests() {
        assert_eq!(error_name(StatusCode::TOO_MANY_REQUESTS), "too_many_requests");
        assert_eq!(error_name(StatusCode::SERVICE_UNAVAILABLE), "service_unavailable");
        assert_eq!(error_name(StatusCode::UNPROCESSABLE_ENTITY), "bad_request");
    }

    /// `_changes` written as bytes is the JSON it was built as before: each
    /// row's keys, `deleted` only when true, the document as CouchDB shows
    /// it (`_id`, `_rev`, `_deleted` on a tombstone, the fields).
    #[test]
    fn a_changes_page_is_written_as_couch_shows_it() {
        let doc = |deleted| {
            let body = json!({"x": [1, "é"], "k\"": null}).as_object().cloned().unwrap();
            let hash = truce::doc::content_hash(&truce::doc::canonical_bytes(&body), deleted);
            Document {
                id: "\"a\n".into(),
                meta: truce::doc::Meta {
                    rev: truce::doc::Rev { version: 2, hash },
                    seq: 9,
                    ts_ms: 1,
                    deleted,
                },
                body,
            }
        };
        let change = |d: Document| truce::Change {
            seq: 9,
            collection: "c".into(),
            id: d.id.clone(),
            rev: d.meta.rev,
            deleted: d.meta.deleted,
            doc: Some(d),
        };
        let page = truce::ChangesPage {
            changes: vec![change(doc(false)), change(doc(true))],
            last_seq: 9,
            from: None,
            memory: Default::default(),
        };
        // Written from the documents as stored (what the feed reads), the
        // same bytes as from their values, an empty body too.
        let mut empty = doc(true);
        empty.body.clear();
        empty.meta.rev.hash = truce::doc::content_hash(b"{}", true);
        let mut changes = page.changes.clone();
        changes.push(change(empty));
        let stored = truce::ChangesPage {
            changes: crate::http::stored_changes(&changes),
            last_seq: 9,
            from: None,
            memory: Default::default(),
        };
        let decoded = truce::ChangesPage {
            changes,
            ..page.clone()
        };
        assert_eq!(
            String::from_utf8(changes_answer(&stored, 4).unwrap()).unwrap(),
            String::from_utf8(changes_answer(&decoded, 4).unwrap()).unwrap()
        );
        let mut meta = doc(false).meta;
        meta.rev.hash = truce::doc::content_hash(b"[1]", false);
        let damaged = StoredDoc::read("a", truce::record::encode_document(&meta, b"[1]")).unwrap();
        assert!(matches!(
            damaged.write_couch("a", &mut Vec::new()),
            Err(truce::Error::Storage(_))
        ));
        let written: Value = serde_json::from_slice(&changes_answer(&page, 4).unwrap()).unwrap();
        let (rev, tombstone) = (doc(false).rev().to_string(), doc(true).rev().to_string());
        let live = json!({"_id": "\"a\n", "_rev": rev, "x": [1, "é"], "k\"": null});
        let gone = json!({"_id": "\"a\n", "_rev": tombstone, "_deleted": true, "x": [1, "é"], "k\"": null});
        assert_eq!(
            written,
            json!({"results": [
                {"seq": 9, "id": "\"a\n", "changes": [{"rev": rev}], "doc": live},
                {"seq": 9, "id": "\"a\n", "changes": [{"rev": tombstone}], "deleted": true, "doc": gone}],
                "last_seq": 9, "pending": 4})
        );
        assert_eq!(couch_doc(&doc(true)), gone);
    }
}
