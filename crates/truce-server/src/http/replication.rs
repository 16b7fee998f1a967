//! The RxDB replication protocol (`replicateRxCollection` of rxdb 17):
//! `GET /v1/c/{coll}/_pull`, `POST /v1/c/{coll}/_push`,
//! `GET /v1/c/{coll}/_pull/stream`.
//!
//! Documents travel as RxDB sees them: the user fields, the id under the
//! client's primary-key field, and `_deleted`. The checkpoint is the
//! `(seq, id)` position of the last document, which is unique per document.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Map, Value, json};
use truce::record::StoredDoc;
use truce::{Change, Document, Expect, TxFailure, TxOp};

use super::error::ApiError;
use super::extract::{JsonBody, Params, PathParams, Standing, Waited, authorize, origin};
use super::{AppState, WholeArray};
use crate::keys::{Principal, Role};

/// Documents per pull unless `limit` says otherwise.
const PULL_LIMIT_DEFAULT: usize = 100;
/// Rows per push: a push is one transaction where it can be.
const PUSH_ROWS_MAX: usize = truce::limits::TX_OPS_MAX;
/// Times a push re-reads and re-commits rows whose master changed meanwhile,
/// before answering them as conflicts with the latest master state.
const PUSH_ROUNDS_MAX: usize = 5;

/// The client's primary-key field (`primaryKey`, default `id`).
fn primary_key(params: &Params) -> Result<String, ApiError> {
    let key = params.0.get("primaryKey").cloned().unwrap_or_else(|| "id".into());
    if key.is_empty() || key.starts_with('_') || key.len() > 128 {
        return Err(ApiError::BadRequest(
            "invalid_query",
            format!("primaryKey {key:?} is not a field name"),
        ));
    }
    Ok(key)
}

/// How the replication routes show documents: the client's primary-key field
/// (`primaryKey`), and whether Truce's metadata is asked for (`meta=true`).
#[derive(Default, Clone)]
struct Shape {
    pk: String,
    meta: bool,
}

impl Shape {
    fn of(params: &Params) -> Result<Shape, ApiError> {
        Ok(Shape {
            pk: primary_key(params)?,
            meta: params.flag("meta")?,
        })
    }

    /// A pull's answer, `{"documents": [...], "checkpoint": ...}`, for the
    /// page `changes` of a reader whose history began at `from`
    /// (`checkpoint` when the page is empty), written straight to bytes: a
    /// page's documents are not copied into values of their own first (a
    /// page of small numbers took some 40 times its stored bytes that way),
    /// and a page read as stored is not decoded at all ([`PulledDoc`]).
    fn pull_answer<D: PulledDoc>(
        &self,
        changes: &[Change<D>],
        (from, epoch): (Option<u64>, u64),
        given: &Value,
    ) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"documents\":[");
        for (i, (id, doc)) in changes
            .iter()
            .filter_map(|c| c.doc.as_ref().map(|d| (&c.id, d)))
            .enumerate()
        {
            if i > 0 {
                out.push(b',');
            }
            doc.write_pulled(id, self, &mut out)?;
        }
        out.extend_from_slice(b"],\"checkpoint\":");
        let checkpoint = changes.last().map(|c| checkpoint_at(c.seq, &c.id, from, epoch));
        serde_json::to_writer(&mut out, checkpoint.as_ref().unwrap_or(given)).map_err(encode)?;
        out.push(b'}');
        Ok(out)
    }
}

fn encode(e: serde_json::Error) -> ApiError {
    ApiError::Engine(super::unencodable(e))
}

/// A page's document as a pull writes it ([`RxDoc`]'s JSON).
trait PulledDoc {
    /// Appends document `id` as `shape` shows it, or refuses it
    /// ([`holds_no_other_key`]).
    fn write_pulled(&self, id: &str, shape: &Shape, out: &mut Vec<u8>) -> Result<(), ApiError>;
}

impl PulledDoc for Document {
    fn write_pulled(&self, _id: &str, shape: &Shape, out: &mut Vec<u8>) -> Result<(), ApiError> {
        holds_no_other_key(self, &shape.pk)?;
        serde_json::to_writer(out, &RxDoc::of(self, shape)).map_err(encode)
    }
}

/// From its stored bytes, never decoded: the body's entries copied, then
/// the fields [`RxDoc`] adds. An entry under the client's primary-key field
/// is left out when it holds the id (the id is written under it, as for a
/// decoded body), and refuses the document otherwise.
impl PulledDoc for StoredDoc {
    fn write_pulled(&self, id: &str, shape: &Shape, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let body = self.object_json(id).map_err(truce::Error::from)?;
        let inner = 1..body.len() - 1;
        let (before, after) = match truce::doc::entry_at(body, &shape.pk) {
            None => (inner, 0..0),
            Some((_, value)) if body[value.clone()] != serde_json::to_vec(id).map_err(encode)? => {
                return Err(other_key(id, &shape.pk, String::from_utf8_lossy(&body[value])));
            }
            // The entries before it and after it, without the commas
            // around it.
            Some((entry, _)) => (
                inner.start..entry.start.saturating_sub(1).max(inner.start),
                (entry.end + 1).min(inner.end)..inner.end,
            ),
        };
        out.push(b'{');
        for entries in [before, after].into_iter().filter(|r| !r.is_empty()) {
            out.extend_from_slice(&body[entries]);
            out.push(b',');
        }
        // The added fields, after the `{` that begins them.
        let brace = out.len();
        let added = RxDoc {
            id,
            meta: self.meta(),
            body: None,
            shape,
        };
        serde_json::to_writer(&mut *out, &added).map_err(encode)?;
        out.remove(brace);
        Ok(())
    }
}

/// A document as RxDB sees it: the user fields, its id under the client's
/// primary-key field and `_deleted` (and with `meta`, Truce's `_rev`,
/// `_version`, `_seq`, `_ts`). Serialised straight to a pull's (or a push
/// conflict's) bytes, refusing first a document whose body holds that field
/// with another value ([`holds_no_other_key`]). Without `body`,
/// the fields it adds alone (a stored body's bytes go before them).
struct RxDoc<'a> {
    id: &'a str,
    meta: &'a truce::Meta,
    body: Option<&'a truce::Body>,
    shape: &'a Shape,
}

impl<'a> RxDoc<'a> {
    fn of(doc: &'a Document, shape: &'a Shape) -> RxDoc<'a> {
        RxDoc {
            id: &doc.id,
            meta: &doc.meta,
            body: Some(&doc.body),
            shape,
        }
    }
}

impl serde::Serialize for RxDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (meta, pk) = (self.meta, &self.shape.pk);
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in self.body.into_iter().flatten().filter(|(k, _)| *k != pk) {
            map.serialize_entry(k, v)?;
        }
        if self.shape.meta {
            map.serialize_entry("_rev", &meta.rev)?;
            map.serialize_entry("_seq", &meta.seq)?;
            map.serialize_entry("_ts", &meta.ts_ms)?;
            map.serialize_entry("_version", &meta.rev.version)?;
        }
        map.serialize_entry(pk, self.id)?;
        map.serialize_entry("_deleted", &meta.deleted)?;
        map.end()
    }
}

/// Refuses a document whose body holds the client's primary-key field with
/// another value than its id (written through `/v1` under a name the client
/// uses for its key): shown, the id would hide the value, and a push of what
/// was pulled would drop it, or conflict with it for ever.
fn holds_no_other_key(doc: &Document, primary_key: &str) -> Result<(), ApiError> {
    match doc.body.get(primary_key).filter(|v| v.as_str() != Some(&doc.id)) {
        None => Ok(()),
        Some(held) => Err(other_key(&doc.id, primary_key, held)),
    }
}

/// The refusal of document `id`, whose body holds `held` (its JSON) under
/// the client's primary-key field.
fn other_key(id: &str, primary_key: &str, held: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(
        "invalid_query",
        format!(
            "document {id} holds a field {primary_key:?} ({held}) other than its id: a replicated document may not \
             hold the client's primary-key field; rename the field, or replicate with another primaryKey"
        ),
    )
}

/// An `error` event, the stream's last.
pub(super) fn error_event(body: Value) -> Event {
    Event::default().event("error").data(body.to_string())
}

/// The checkpoint `{"seq", "id", "from", "epoch"}` (`from` when known) in
/// the history `epoch` (`Db::epoch`).
fn checkpoint_at(seq: u64, id: &str, from: Option<u64>, epoch: u64) -> Value {
    let mut checkpoint = json!({"seq": seq, "id": id, "epoch": epoch});
    if let Some(from) = from {
        checkpoint["from"] = json!(from);
    }
    checkpoint
}

fn parse_checkpoint(params: &Params) -> Result<Option<truce_server::wire::Checkpoint>, ApiError> {
    truce_server::wire::checkpoint(params.json("checkpoint")?)
        .map_err(|m| ApiError::BadRequest("invalid_query", format!("checkpoint: {m}")))
}

/// Documents changed after the checkpoint, in commit order, at their latest state.
#[utoipa::path(get, path = "/v1/c/{coll}/_pull", tag = "replication",
    params(("coll" = String, Path), ("checkpoint" = Option<String>, Query, description = "JSON {\"seq\", \"id\", \"from\", \"epoch\"} as a previous answer gave it, or null"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 10000),
           ("primaryKey" = Option<String>, Query, description = "the client's primary-key field (default id)"),
           ("meta" = Option<bool>, Query)),
    responses((status = 200, description = "Documents after the checkpoint, and the new checkpoint",
               body = super::openapi::PullAnswer),
              (status = 400, description = "Invalid parameters", body = super::openapi::ErrorBody),
              (status = 410, description = super::changes::HISTORY_PURGED_DESCRIPTION, body = super::openapi::ErrorBody),
              (status = 413, description = "`limit_exceeded`: the page's documents pass WHOLE_PAGE_BYTES_MAX (64 MiB); ask for fewer", body = super::openapi::ErrorBody)))]
pub async fn pull(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    let shape = Shape::of(&params)?;
    let after = parse_checkpoint(&params)?;
    let limit = params
        .parse::<usize>("limit", "invalid_query")?
        .unwrap_or(PULL_LIMIT_DEFAULT);
    let db = state.db.clone();
    let epoch = super::same_history(&db, after.as_ref().and_then(|c| c.epoch))?;
    // Given back as read, not as sent: whatever else the client put in it
    // is not echoed.
    let given = after
        .as_ref()
        .map_or(Value::Null, |c| checkpoint_at(c.seq, &c.id, c.from, epoch));
    // A checkpoint without `from` was given out before the server said where
    // a client's history began: checked by its position alone.
    let from = after.as_ref().map(|c| c.from.unwrap_or(0));
    // The answer is written off the HTTP thread too: a page of large
    // documents takes a while to encode, and every connection of that thread
    // would wait for it.
    let answer = super::blocking(move || {
        let page =
            db.changes_after_stored(&coll, after.as_ref().map(|c| (c.seq, c.id.as_str())), from, limit)?;
        Ok(shape.pull_answer(&page.changes, (page.from, epoch), &given))
    })
    .await??;
    Ok(super::json_bytes(answer))
}

/// One row of a push, parsed.
struct Row {
    /// Its position in the push.
    index: usize,
    id: String,
    /// The new content (no `_` fields, no primary key), or `None` for a delete.
    new: Option<Map<String, Value>>,
    /// The new content's canonical size (what a transaction's limit counts).
    bytes: usize,
    assumed: Option<Map<String, Value>>,
}

/// A body without RxDB's and Truce's `_` fields and without the primary key.
fn user_fields(doc: &Map<String, Value>, pk: &str) -> Map<String, Value> {
    doc.iter()
        .filter(|(k, _)| !k.starts_with('_') && k.as_str() != pk)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn is_deleted(doc: &Map<String, Value>) -> bool {
    doc.get("_deleted").and_then(Value::as_bool).unwrap_or(false)
}

/// The `_` fields a pushed document may carry, none of them stored: RxDB's
/// `_deleted`, `_attachments` (empty) and `_meta`, and Truce's metadata,
/// which a client pulling with `meta=true` holds.
const PUSHED_METADATA: [&str; 7] = [
    "_deleted",
    "_attachments",
    "_meta",
    "_rev",
    "_version",
    "_seq",
    "_ts",
];

fn parse_rows(body: Value, pk: &str) -> Result<Vec<Row>, ApiError> {
    let invalid =
        |i: usize, m: &str| ApiError::Engine(truce::Error::InvalidTransaction(format!("row {i}: {m}")));
    let Value::Array(rows) = body else {
        return Err(ApiError::Engine(truce::Error::InvalidTransaction(
            "a push is an array of {assumedMasterState, newDocumentState}".into(),
        )));
    };
    if rows.len() > PUSH_ROWS_MAX {
        return Err(ApiError::Engine(truce::Error::LimitExceeded {
            what: "TX_OPS_MAX",
            limit: PUSH_ROWS_MAX as u64,
        }));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let Value::Object(mut row) = row else {
            return Err(invalid(i, "a row is an object"));
        };
        let Some(Value::Object(new)) = row.remove("newDocumentState") else {
            return Err(invalid(i, "newDocumentState is a document"));
        };
        // Only user fields are kept: attachments would be lost, not stored.
        if truce_server::wire::carries_attachments(&new) {
            return Err(invalid(i, truce_server::wire::NO_ATTACHMENTS));
        }
        let id = new
            .get(pk)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(i, &format!("no string {pk:?}")))?;
        if !seen.insert(id.to_string()) {
            return Err(invalid(i, &format!("document {id} appears twice in one push")));
        }
        let assumed = match row.remove("assumedMasterState") {
            None | Some(Value::Null) => None,
            Some(Value::Object(a)) => Some(a),
            Some(_) => return Err(invalid(i, "assumedMasterState is a document or null")),
        };
        // A misspelt `assumedMasterState` would be read as absent: an insert.
        if let Some(key) = row.keys().next() {
            let key: String = key.chars().take(64).collect();
            return Err(invalid(
                i,
                &format!("{key:?}: a row holds assumedMasterState and newDocumentState only"),
            ));
        }
        // A guard the client sent decides (`master_equals`): one it cannot
        // be read as would be dropped, and the row compared by its fields.
        if let Some(assumed) = &assumed {
            let guard = |m: &str| {
                ApiError::Engine(truce::Error::InvalidPrecondition(m.into()).at(&format!("row {i}")))
            };
            if let Some(rev) = assumed.get("_rev") {
                rev.as_str()
                    .and_then(|text| text.parse::<truce::Rev>().ok())
                    .ok_or_else(|| {
                        guard("assumedMasterState's _rev must be a revision, as a pull gave it")
                    })?;
            }
            if let Some(version) = assumed.get("_version") {
                version
                    .as_u64()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| guard("assumedMasterState's _version must be a version, 1 or more"))?;
            }
        }
        if let Some(other) = assumed
            .as_ref()
            .and_then(|a| a.get(pk))
            .filter(|other| other.as_str() != Some(id))
        {
            return Err(invalid(
                i,
                &format!("assumedMasterState is of document {other}, newDocumentState of {id:?}"),
            ));
        }
        // Any other `_` field would be dropped, not stored: refused, as `/v1`
        // and `/couch` refuse it.
        if let Some(key) = new
            .keys()
            .find(|k| k.starts_with('_') && !PUSHED_METADATA.contains(&k.as_str()))
        {
            return Err(ApiError::Engine(
                truce::Error::ReservedField(format!(
                    "{key:?}: fields starting with '_' are metadata; a pushed document may carry \
                     {} (not stored), and no other",
                    PUSHED_METADATA.join(", ")
                ))
                .at(&format!("row {i}")),
            ));
        }
        if new.get("_deleted").is_some_and(|d| !d.is_boolean()) {
            // `"true"` would be read as false, and store a live document.
            return Err(invalid(i, truce_server::wire::DELETED_IS_BOOLEAN));
        }
        // What the transaction would refuse, refused here with the row named.
        let at = |e: truce::Error| ApiError::Engine(e.at(&format!("row {i}")));
        let new_body = (!is_deleted(&new)).then(|| user_fields(&new, pk));
        match new_body {
            Some(_) => truce::doc::validate_written_id(id),
            None => truce::doc::validate_id(id),
        }
        .map_err(at)?;
        let bytes = match &new_body {
            Some(body) => truce::doc::validate_body(body).map_err(at)?.len(),
            None => 0,
        };
        out.push(Row {
            index: i,
            id: id.to_string(),
            bytes,
            new: new_body,
            assumed,
        });
    }
    Ok(out)
}

/// Whether the master state `current` is what the client assumed. Server
/// metadata is ignored unless the client sent `_rev` or `_version`, which then decide.
fn master_equals(assumed: Option<&Map<String, Value>>, current: Option<&Document>, pk: &str) -> bool {
    // No document and no tombstone: the row can overwrite nothing, and a
    // conflict would have no master state to hand back (RxDB's own servers
    // write such a row too).
    let Some(current) = current else {
        return true;
    };
    let live = Some(current).filter(|d| !d.is_deleted());
    let Some(assumed) = assumed else {
        return live.is_none();
    };
    if let Some(rev) = assumed.get("_rev").and_then(Value::as_str) {
        return current.rev().to_string() == rev;
    }
    if let Some(version) = assumed.get("_version").and_then(Value::as_u64) {
        return current.version() == version;
    }
    match live {
        None => is_deleted(assumed),
        // The stored body may hold the primary key's field with the id as
        // its value: the client's copy has it too. Any other value there
        // (written through `/v1`) is a field the client's copy cannot hold
        // (`rx_doc` refuses to show it), so not what it assumed: the row
        // replaced the document, dropping that field, without a conflict.
        Some(doc) => {
            holds_no_other_key(doc, pk).is_ok()
                && !is_deleted(assumed)
                && same_fields(&user_fields(assumed, pk), &user_fields(&doc.body, pk))
        }
    }
}

/// Whether a client's copy of some fields is the master's as a JavaScript
/// client sees them: numbers by their double value (it cannot hold `1.0`
/// apart from `1`, which the server's own `$inc` of floats may store, nor an
/// integer past 2^53 exactly), everything else exactly. Compared exactly, a
/// pull's `1.0` pushed back as `1` was a conflict for ever.
fn same_fields(client: &Map<String, Value>, master: &Map<String, Value>) -> bool {
    client.len() == master.len()
        && client
            .iter()
            .all(|(key, value)| master.get(key).is_some_and(|m| same_value(value, m)))
}

fn same_value(client: &Value, master: &Value) -> bool {
    match (client, master) {
        (Value::Number(c), Value::Number(m)) => c.as_f64() == m.as_f64(),
        (Value::Array(c), Value::Array(m)) => {
            c.len() == m.len() && c.iter().zip(m).all(|(c, m)| same_value(c, m))
        }
        (Value::Object(c), Value::Object(m)) => same_fields(c, m),
        _ => client == master,
    }
}

/// The write that takes `current` to the row's new state, or `None` when there
/// is nothing to do (deleting what is already gone).
fn row_op(coll: &str, row: &Row, current: Option<&Document>) -> Option<TxOp> {
    let live = current.filter(|d| !d.is_deleted());
    let expect = live.map_or(Expect::Absent, |d| Expect::Version(d.version()));
    match (&row.new, live) {
        (None, None) => None,
        (None, Some(_)) => Some(TxOp::Delete {
            collection: coll.into(),
            id: row.id.clone(),
            expect,
        }),
        (Some(body), _) => Some(TxOp::Put {
            collection: coll.into(),
            id: row.id.clone(),
            body: Value::Object(body.clone()),
            expect,
        }),
    }
}

/// Applies a push: rows whose assumed master matches are written in one
/// transaction; rows whose master moved are answered with the master state.
#[utoipa::path(post, path = "/v1/c/{coll}/_push", tag = "replication",
    params(("coll" = String, Path), ("primaryKey" = Option<String>, Query),
           ("meta" = Option<bool>, Query, description = "conflicts' master states carry _rev, _version, _seq, _ts")),
    request_body = Vec<super::openapi::PushRow>,
    responses((status = 200, description = "The master state of every row that conflicted", body = Vec<Object>),
              (status = 400, description = "Invalid rows", body = super::openapi::ErrorBody),
              (status = 409, description = "Rows would take values a unique index holds: conflict, each such row in conflicts with reason unique_violation", body = super::openapi::ErrorBody)))]
pub async fn push(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    headers: HeaderMap,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Write, Some(&coll))?;
    let shape = Shape::of(&params)?;
    let rows = parse_rows(body, &shape.pk)?;
    let collection = state.db.collection(&coll)?;
    let origin = origin(&headers);
    let mut answer = Pushed {
        shape,
        conflicts: WholeArray::counted(state.db.page_memory()),
        ..Pushed::default()
    };
    let mut pushed = Ok(());
    for group in byte_groups(rows) {
        pushed = push_group(&state, &collection, &origin, group, &mut answer).await;
        if pushed.is_err() {
            break;
        }
    }
    // Counted as every write's conflicts are, by collection, document and
    // source, also when a later group failed.
    state.db.note_conflicts(&coll, &answer.noted, &origin);
    pushed.map_err(|e| match answer.written {
        0 => e,
        rows => ApiError::PartlyWritten(Box::new(e), rows),
    })?;
    let mut conflicts = Vec::new();
    answer.conflicts.write_into(&mut conflicts);
    Ok(super::json_bytes(conflicts))
}

/// What a push answers: the master state of every row that conflicted, and
/// the conflicts to count (those the comparison found; the committer counts
/// the ones it finds itself).
#[derive(Default)]
struct Pushed {
    shape: Shape,
    /// The master states answered so far, written as a pull writes them
    /// (never held as values: a few kilobytes of push made gigabytes of
    /// them), at most `WHOLE_PAGE_BYTES_MAX` of them, counted against the
    /// memory of the pages being read.
    conflicts: WholeArray,
    noted: Vec<(String, truce::ConflictReason)>,
    /// Documents whose conflict the committer counted when a batch of this
    /// push lost a race: the comparison that then finds their master moved
    /// answers the row without counting it a second time.
    counted: std::collections::HashSet<String>,
    /// Rows written so far.
    written: usize,
}

impl Pushed {
    /// A row whose assumed state is not `master`.
    fn conflict(&mut self, master: &Document, assumed: Option<&Map<String, Value>>) -> Result<(), ApiError> {
        let live_master = !master.is_deleted();
        let live_assumed = assumed.is_some_and(|a| !is_deleted(a));
        let reason = match (live_master, live_assumed) {
            (true, false) => truce::ConflictReason::AlreadyExists,
            (false, true) => truce::ConflictReason::NotFound,
            _ => truce::ConflictReason::VersionMismatch,
        };
        self.answer(master)?;
        if !self.counted.remove(&master.id) {
            self.noted.push((master.id.clone(), reason));
        }
        Ok(())
    }

    /// Answers `master` as a conflicting row's master state.
    fn answer(&mut self, master: &Document) -> Result<(), ApiError> {
        let shape = &self.shape;
        self.conflicts
            .push(|out| master.write_pulled(&master.id, shape, out))
    }
}

/// The write a row needs against the master as it is now: `None` when its
/// master moved (answered as a conflict) or there is nothing to do.
fn row_against_master(
    collection: &truce::Collection,
    row: &Row,
    answer: &mut Pushed,
) -> Result<Option<TxOp>, ApiError> {
    let current = collection.get_current(&row.id)?;
    if let Some(master) = current
        .as_ref()
        .filter(|_| !master_equals(row.assumed.as_ref(), current.as_ref(), &answer.shape.pk))
    {
        answer.conflict(master, row.assumed.as_ref())?;
        return Ok(None);
    }
    Ok(row_op(collection.name(), row, current.as_ref()))
}

/// `work` on the push's answer, in the blocking pool: reading master
/// states, comparing them with the assumed ones and writing the conflicts'
/// answer decodes documents, which on the HTTP thread held up every other
/// connection of that thread (a push of four rows meeting 800 KB documents
/// of small objects took readers beside it to 1 s at p99).
async fn off_thread<T: Send + 'static>(
    answer: &mut Pushed,
    work: impl FnOnce(&mut Pushed) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let mut taken = std::mem::take(answer);
    let (done, taken) = tokio::task::spawn_blocking(move || (work(&mut taken), taken))
        .await
        .map_err(super::not_joined)?;
    *answer = taken;
    done
}

/// [`row_against_master`] for each of `rows`, off the HTTP thread: the rows
/// that need a write, with it, in their order.
async fn against_masters(
    collection: &truce::Collection,
    rows: Vec<Row>,
    answer: &mut Pushed,
) -> Result<Vec<(TxOp, Row)>, ApiError> {
    let collection = collection.clone();
    off_thread(answer, move |answer| {
        let mut writes = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(op) = row_against_master(&collection, &row, answer)? {
                writes.push((op, row));
            }
        }
        Ok(writes)
    })
    .await
}

/// Writes `row`'s op in a transaction of its own. A row that conflicts alone
/// was written by someone else since, so it is answered with its master
/// state (the committer counted the conflict); one refused for a unique
/// value is `Some` with its conflicts, for the caller to try again.
async fn write_alone(
    state: &AppState,
    collection: &truce::Collection,
    origin: &truce::Origin,
    (op, row): (TxOp, &Row),
    answer: &mut Pushed,
) -> Result<Option<Vec<truce::OpConflict>>, ApiError> {
    match state
        .db
        .submit_batch_from(vec![op], None, origin.clone())?
        .await?
    {
        Ok(_) => {
            answer.written += 1;
            Ok(None)
        }
        Err(TxFailure::Conflicts(conflicts)) if is_unique(&conflicts) => Ok(Some(conflicts)),
        Err(TxFailure::Conflicts(_)) => {
            let (collection, id) = (collection.clone(), row.id.clone());
            off_thread(answer, move |answer| {
                if let Some(master) = collection.get_current(&id)? {
                    answer.answer(&master)?;
                }
                Ok(())
            })
            .await?;
            Ok(None)
        }
        Err(other) => Err(ApiError::Engine(truce::Error::TransactionFailed {
            attempts: 1,
            failure: Box::new(other),
        })),
    }
}

/// Whether a conflict is a unique index's refusal.
fn unique(conflict: &truce::OpConflict) -> bool {
    conflict.conflict.reason == truce::ConflictReason::UniqueViolation
}

fn is_unique(conflicts: &[truce::OpConflict]) -> bool {
    conflicts.iter().any(unique)
}

/// Refuses the push when a row of `rows` (the transaction's ops, in order)
/// took a value a unique index holds: that is no race to retry, and no
/// master state answers it (the row's document may not even exist), so the
/// client is told which row, as a write is (409 `unique_violation`, the
/// holder as `current`; `index` is the row's place in the push). Nothing of
/// that transaction was written.
fn refuse_unique(conflicts: &[truce::OpConflict], rows: &[Row]) -> Result<(), ApiError> {
    let unique: Vec<truce::OpConflict> = conflicts
        .iter()
        .filter(|c| unique(c))
        .map(|c| truce::OpConflict {
            index: rows[c.index].index,
            ..c.clone()
        })
        .collect();
    if unique.is_empty() {
        Ok(())
    } else {
        // Rows written before (earlier transactions, or alone) are said by
        // `ApiError::PartlyWritten`.
        Err(ApiError::TxConflicts(
            unique,
            "nothing of the refused rows' transaction was written",
        ))
    }
}

/// The rows in groups each of which one transaction can write: at most
/// `TX_WRITE_BYTES_MAX` of new documents (a push may carry more, up to the
/// body limit), in the order they came.
fn byte_groups(rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let size = row.bytes;
        match groups.last_mut() {
            Some(group) if bytes + size <= truce::limits::TX_WRITE_BYTES_MAX => {
                bytes += size;
                group.push(row);
            }
            _ => {
                bytes = size;
                groups.push(vec![row]);
            }
        }
    }
    groups
}

/// Writes one group of a push's rows: those whose assumed master matches, in
/// one transaction (read again and retried when another writer got there
/// first); pushes onto `conflicts` the master state of every row whose master
/// moved.
async fn push_group(
    state: &AppState,
    collection: &truce::Collection,
    origin: &truce::Origin,
    mut pending: Vec<Row>,
    answer: &mut Pushed,
) -> Result<(), ApiError> {
    // Each row in a transaction of its own, when together they meet more
    // than one transaction may (`TX_READ_BYTES_MAX`: large documents pushed
    // smaller, which `byte_groups` cannot know).
    let mut alone = false;
    for round in 0..=PUSH_ROUNDS_MAX {
        let (ops, batch_rows): (Vec<TxOp>, Vec<Row>) =
            against_masters(collection, std::mem::take(&mut pending), answer)
                .await?
                .into_iter()
                .unzip();
        if ops.is_empty() {
            break;
        }
        if round == PUSH_ROUNDS_MAX || alone {
            // Still racing after every round, because of one row or another:
            // each row on its own, so that one busy document does not keep the
            // others from being written (`write_alone`). A row refused for a
            // unique value goes once more after the others, which may free it
            // (a rename whose delete comes after its put), compared again with
            // its master then.
            let mut deferred = Vec::new();
            for (op, row) in ops.into_iter().zip(batch_rows) {
                if write_alone(state, collection, origin, (op, &row), answer)
                    .await?
                    .is_some()
                {
                    deferred.push(row);
                }
            }
            // Pass after pass while one gets a row through (a chain of moves
            // frees a value a pass), at most PUSH_ROUNDS_MAX.
            for pass in 1..=PUSH_ROUNDS_MAX {
                if deferred.is_empty() {
                    break;
                }
                let waiting = deferred.len();
                let mut refused = Vec::new();
                for (op, row) in against_masters(collection, std::mem::take(&mut deferred), answer).await? {
                    if let Some(conflicts) =
                        write_alone(state, collection, origin, (op, &row), answer).await?
                    {
                        refused.push((row, conflicts));
                    }
                }
                if let Some((row, conflicts)) = refused.first()
                    && (refused.len() == waiting || pass == PUSH_ROUNDS_MAX)
                {
                    refuse_unique(conflicts, std::slice::from_ref(row))?;
                }
                deferred = refused.into_iter().map(|(row, _)| row).collect();
            }
            break;
        }
        let submitted = state.db.submit_batch_from(ops, None, origin.clone())?.await;
        if let Err(truce::Error::LimitExceeded {
            what: "TX_READ_BYTES_MAX",
            ..
        }) = submitted
        {
            alone = true;
            pending = batch_rows;
            continue;
        }
        match submitted? {
            Ok(_) => {
                answer.written += batch_rows.len();
                break;
            }
            Err(TxFailure::Conflicts(conflicts)) => {
                refuse_unique(&conflicts, &batch_rows)?;
                // Someone wrote one of these documents since we read it:
                // nothing of the batch was written; read again and retry the
                // rows. The committer counted these conflicts.
                answer.counted.extend(conflicts.into_iter().map(|c| c.id));
                pending = batch_rows;
            }
            Err(other) => {
                return Err(ApiError::Engine(truce::Error::TransactionFailed {
                    attempts: 1,
                    failure: Box::new(other),
                }));
            }
        }
    }
    Ok(())
}

/// Server-Sent Events: `{"documents","checkpoint"}` per commit batch touching the
/// collection after the connection opened.
#[utoipa::path(get, path = "/v1/c/{coll}/_pull/stream", tag = "replication",
    params(("coll" = String, Path), ("primaryKey" = Option<String>, Query), ("meta" = Option<bool>, Query)),
    responses((status = 200, description = "text/event-stream of {documents, checkpoint}", content_type = "text/event-stream")))]
pub async fn pull_stream(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    let shape = Shape::of(&params)?;
    let standing = Standing::of(&state, &who, &headers, Some(&coll))?;
    let place = super::stream_permit(&state)?;
    // The stream's checkpoints carry its start as `from`: every position it
    // gives out is after its start, so a `_pull` from one of them is checked
    // by its position alone, however early the client's history began.
    let now = state.db.durable_seq();
    let sub = state
        .db
        .subscribe_from(Some(&coll), now, Some(now), true)?
        .stored();
    let epoch = state.db.epoch();
    Ok(super::event_stream(
        stream_events(sub, shape, standing, epoch),
        place,
    ))
}

/// One event per commit batch, until the engine fails or the caller's key may
/// no longer read the collection (`Standing`).
fn stream_events(
    sub: truce::Subscription<StoredDoc>,
    shape: Shape,
    standing: Standing,
    epoch: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let standing = Arc::new(standing);
    // The last page's hold on the memory of the pages being read goes with
    // the state, given back when the next page is asked for (its event was
    // taken by the connection by then), as on `/v1`'s stream.
    stream::unfold(Some((sub, truce::budget::Holding::default())), move |state| {
        let shape = shape.clone();
        let standing = Arc::clone(&standing);
        async move {
            let (mut sub, held) = state?;
            drop(held);
            let page = match standing.next_page(&mut sub).await {
                Waited::Page(Ok(page)) => page,
                Waited::Page(Err(e)) => return Some((Ok(error_event(json!({"error": e.code()}))), None)),
                Waited::Revoked | Waited::Stopping => return None,
            };
            let data = shape
                .pull_answer(&page.changes, (page.from, epoch), &Value::Null)
                .and_then(|data| Ok(super::event_text(data)?));
            match data {
                Ok(data) => Some((Ok(Event::default().data(data)), Some((sub, page.memory)))),
                Err(refused) => Some((Ok(error_event(refused.status_and_body().1)), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::stored_changes as stored;

    fn doc(id: &str, body: Value, deleted: bool) -> Document {
        let body = body.as_object().cloned().unwrap_or_default();
        Document {
            id: id.into(),
            meta: truce::doc::Meta {
                rev: truce::doc::Rev::compute(3, &truce::doc::canonical_bytes(&body), deleted),
                seq: 17,
                ts_ms: 1_700_000_000_000,
                deleted,
            },
            body,
        }
    }

    /// A page of `docs`, decoded.
    fn page_of(docs: &[Document]) -> Vec<Change> {
        docs.iter()
            .map(|d| Change {
                seq: d.meta.seq,
                collection: "c".into(),
                id: d.id.clone(),
                rev: d.meta.rev,
                deleted: d.meta.deleted,
                doc: Some(d.clone()),
            })
            .collect()
    }

    /// A push's assumed state is compared without the primary key's field,
    /// which holds the id; a master holding anything else there (written
    /// through `/v1`) is not the state assumed, so the row is a conflict,
    /// not a replacement that drops that field.
    #[test]
    fn a_master_with_another_key_value_is_not_the_one_assumed() {
        let assumed = json!({"id": "w", "v": 1, "_deleted": false});
        let assumed = assumed.as_object();
        for (master, equal) in [
            (json!({"v": 1}), true),
            (json!({"id": "w", "v": 1}), true),
            (json!({"id": "ext-123", "v": 1}), false),
            (json!({"id": 7, "v": 1}), false),
            (json!({"v": 2}), false),
        ] {
            let current = doc("w", master.clone(), false);
            assert_eq!(master_equals(assumed, Some(&current), "id"), equal, "{master}");
        }
    }

    /// A pull of each document alone is answered from its stored bytes as
    /// from its values, or refused the same way, under every primary key:
    /// the key's entry first, between others, last, alone, only nested,
    /// named with escapes, holding another value.
    #[test]
    fn a_pull_from_stored_bytes_is_the_pull_of_the_values() {
        let docs = [
            doc("first", json!({"id": "first", "z": [2]}), false),
            doc("mid", json!({"a": 1, "id": "mid", "z": [2]}), false),
            doc("last", json!({"a": 1, "id": "last"}), false),
            doc("only", json!({"id": "only"}), false),
            doc("nested", json!({"v": {"id": "x"}}), false),
            doc("q\"\n", json!({"k\"\n": "q\"\n", "é": 1}), false),
            doc("clash", json!({"a": 1, "id": "other", "k\"\n": 2}), false),
            doc("gone", json!({}), true),
        ];
        let (mut answered, mut refused) = (0, 0);
        for pk in ["id", "k\"\n", "key"] {
            for meta in [false, true] {
                let shape = Shape { pk: pk.into(), meta };
                for d in &docs {
                    let page = page_of(std::slice::from_ref(d));
                    let decoded = shape.pull_answer(&page, (None, 7), &Value::Null);
                    match (
                        decoded,
                        shape.pull_answer(&stored(&page), (None, 7), &Value::Null),
                    ) {
                        (Ok(a), Ok(b)) => {
                            answered += 1;
                            assert_eq!(
                                String::from_utf8(b).unwrap(),
                                String::from_utf8(a).unwrap(),
                                "{pk}"
                            )
                        }
                        (Err(a), Err(b)) => {
                            refused += 1;
                            assert_eq!(b.status_and_body(), a.status_and_body(), "{pk}")
                        }
                        (a, b) => panic!("{pk} {}: {:?} against {:?}", d.id, a.is_ok(), b.is_ok()),
                    }
                }
            }
        }
        assert_eq!((answered, refused), (44, 4));
    }

    /// A document as RxDB sees it in a pull's (and a push conflict's) bytes,
    /// written from its values or its stored bytes: user fields, the id
    /// under the primary key, `_deleted`, and with `meta` Truce's metadata;
    /// `_id` never.
    #[test]
    fn a_document_is_shown_as_rxdb_sees_it() {
        let docs = [
            doc("a", json!({"n": 1, "s": "x"}), false),
            doc("gone", json!({}), true),
            doc("pk-held", json!({"id": "pk-held", "v": [1, {"w": null}]}), false),
            doc("\"\n\u{2028}é", json!({"k\"\n": "\u{2028}", "é": 1.5}), false),
        ];
        let expected = [
            json!({"n": 1, "s": "x", "id": "a", "_deleted": false}),
            json!({"id": "gone", "_deleted": true}),
            json!({"id": "pk-held", "v": [1, {"w": null}], "_deleted": false}),
            json!({"k\"\n": "\u{2028}", "é": 1.5, "id": "\"\n\u{2028}é", "_deleted": false}),
        ];
        let page = page_of(&docs);
        for with_meta in [false, true] {
            let shape = Shape {
                pk: "id".into(),
                meta: with_meta,
            };
            // Written from the stored bytes: the same bytes, under the key
            // some bodies hold and under one that none does.
            let same_bytes = |shape: &Shape| {
                let bytes = shape.pull_answer(&page, (None, 7), &Value::Null).unwrap();
                let from_stored = shape
                    .pull_answer(&stored(&page), (None, 7), &Value::Null)
                    .unwrap();
                assert_eq!(
                    String::from_utf8(from_stored).unwrap(),
                    String::from_utf8(bytes.clone()).unwrap()
                );
                bytes
            };
            same_bytes(&Shape {
                pk: "key".into(),
                meta: with_meta,
            });
            let pulled: Value = serde_json::from_slice(&same_bytes(&shape)).unwrap();
            for ((d, want), pulled) in docs
                .iter()
                .zip(&expected)
                .zip(pulled["documents"].as_array().unwrap())
            {
                let mut want = want.clone();
                if with_meta {
                    let rev = d.meta.rev.to_string();
                    let meta = json!({"_rev": rev, "_seq": 17, "_ts": 1_700_000_000_000u64, "_version": 3});
                    want.as_object_mut()
                        .unwrap()
                        .extend(meta.as_object().unwrap().clone());
                }
                assert_eq!(pulled, &want, "meta {with_meta}: {}", d.id);
            }
            // A body holding the primary key with another value is refused by both.
            let clash = doc("c", json!({"id": "other"}), false);
            let mut clashing = page.clone();
            clashing[0].doc = Some(clash);
            assert!(shape.pull_answer(&clashing, (None, 7), &Value::Null).is_err());
            assert!(
                shape
                    .pull_answer(&stored(&clashing), (None, 7), &Value::Null)
                    .is_err()
            );
        }
        // And a page's answer carries its checkpoint, or the one given.
        let shape = Shape {
            pk: "id".into(),
            meta: false,
        };
        let answer: Value =
            serde_json::from_slice(&shape.pull_answer(&page, (Some(5), 7), &Value::Null).unwrap()).unwrap();
        assert_eq!(answer["documents"].as_array().map(Vec::len), Some(docs.len()));
        assert_eq!(
            answer["checkpoint"],
            json!({"seq": 17, "id": docs[3].id, "from": 5, "epoch": 7})
        );
        let empty: Value = serde_json::from_slice(
            &shape
                .pull_answer::<Document>(&[], (None, 7), &json!({"seq": 1}))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(empty, json!({"documents": [], "checkpoint": {"seq": 1}}));
    }
}
