//! Document routes: `GET|PUT|PATCH|DELETE /v1/c/{coll}/{id}`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use truce::{ConflictReason, Expect, TxOp, Update, WriteResult, Written};

use super::AppState;
use super::error::ApiError;
use super::extract::{
    JsonBody, Params, PathParams, authorize, idempotency_key, no_document_query, object, origin, precondition,
};
use crate::keys::{Principal, Role};

/// The answer to a successful write (API.md), serialized straight from the
/// engine's answer. Fields in sorted order, as a JSON object map writes them.
/// What [`write_answer`] and [`write_tx_answer`] are tested against: they
/// write the same bytes without serde.
#[cfg(test)]
#[derive(serde::Serialize)]
pub struct WriteAnswer<'a> {
    created: bool,
    doc: &'a truce::Document,
    id: &'a str,
    noop: bool,
    rev: truce::Rev,
    seq: u64,
    skipped: bool,
    version: u64,
}

#[cfg(test)]
impl<'a> WriteAnswer<'a> {
    /// The answer to `written`.
    pub fn new(written: &'a Written) -> WriteAnswer<'a> {
        WriteAnswer {
            created: written.created(),
            doc: &written.doc,
            id: &written.doc.id,
            noop: written.noop(),
            rev: written.doc.rev(),
            seq: written.doc.meta.seq,
            skipped: written.skipped(),
            version: written.doc.version(),
        }
    }
}

/// A JSON body written into one buffer sized for a small document (axum's
/// `Json` grows a `BytesMut` from 128 bytes a token at a time, which showed up
/// in the write path's profile).
pub(super) fn json_body(write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> Response {
    let mut bytes = Vec::with_capacity(512);
    match write(&mut bytes) {
        Ok(()) => super::json_bytes(bytes),
        Err(e) => ApiError::Engine(super::unencodable(e)).into_response(),
    }
}

/// Appends the bytes of `serde_json::to_vec(&WriteAnswer::new(written))`, its
/// keys written as the constants they are (see `Document::write_json`), and
/// the document's body copied from its canonical bytes when the write built
/// them (`Written::canonical`), as a read copies the stored ones.
fn write_answer(written: &Written, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let flag = |set: bool| if set { &b"true"[..] } else { &b"false"[..] };
    let doc = &written.doc;
    out.extend_from_slice(b"{\"created\":");
    out.extend_from_slice(flag(written.created()));
    out.extend_from_slice(b",\"doc\":");
    match &written.canonical {
        Some(canonical) => truce::doc::write_stored_json(&doc.id, &doc.meta, canonical, out),
        None => doc.write_json(out)?,
    }
    out.extend_from_slice(b",\"id\":");
    serde_json::to_writer(&mut *out, &doc.id)?;
    out.extend_from_slice(b",\"noop\":");
    out.extend_from_slice(flag(written.noop()));
    out.extend_from_slice(b",\"rev\":\"");
    out.extend_from_slice(doc.rev().text().as_str().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    serde_json::to_writer(&mut *out, &doc.meta.seq)?;
    out.extend_from_slice(b",\"skipped\":");
    out.extend_from_slice(flag(written.skipped()));
    out.extend_from_slice(b",\"version\":");
    serde_json::to_writer(&mut *out, &doc.version())?;
    out.push(b'}');
    Ok(())
}

/// Appends a committed transaction's answer, `{"results": [WriteAnswer or
/// null, …], "seq": N}`, written as [`write_answer`] writes each result: no
/// `Value` of the documents first (that copied every document of the
/// answer, a megabyte of small objects in tens of milliseconds).
pub(super) fn write_tx_answer(committed: &truce::TxCommitted, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"results\":[");
    for (index, result) in committed.results.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        match result {
            Some(written) => write_answer(written, out)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"],\"seq\":");
    serde_json::to_writer(&mut *out, &committed.seq)?;
    out.push(b'}');
    Ok(())
}

/// Turns a single write's outcome into a response; `not_found` conflicts are 404
/// when `missing_is_404` (PATCH, DELETE).
fn answer(result: WriteResult, missing_is_404: bool) -> Result<Response, ApiError> {
    match result {
        Ok(written) => {
            let status = if written.created() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, json_body(|out| write_answer(&written, out))).into_response())
        }
        Err(conflict) if missing_is_404 && conflict.reason == ConflictReason::NotFound => {
            Err(ApiError::Missing)
        }
        Err(conflict) => Err(ApiError::Conflict(conflict)),
    }
}

/// Queues one write and waits for its durable answer.
async fn write(
    (state, who): (&AppState, &Principal),
    op: TxOp,
    headers: &HeaderMap,
    missing_is_404: bool,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers, who)?;
    let pending = state
        .db
        .submit_write_from(op, key.stored(), origin(headers))
        .map_err(|e| key.as_sent(e))?;
    answer(pending.await.map_err(|e| key.as_sent(e))?, missing_is_404)
}

/// Reads a document.
#[utoipa::path(get, path = "/v1/c/{coll}/{id}", tag = "documents",
    params(("coll" = String, Path), ("id" = String, Path), ("If-Match" = Option<String>, Header, nullable = false),
           ("If-None-Match" = Option<String>, Header, nullable = false)),
    responses((status = 200, description = "The document with its metadata", body = super::openapi::Doc),
               (status = 304, description = "Unchanged since the revision in If-None-Match"),
               (status = 412, description = "If-Match names none of the document's revisions", body = super::openapi::ErrorBody),
               (status = 404, description = "Absent or deleted", body = super::openapi::ErrorBody)))]
pub async fn get_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(DocumentCall::new(
        &state,
        &who,
        (coll, id),
        &headers,
        query.as_deref(),
    ))
}

/// A document request taken apart: who asks for which document, with which
/// headers. Built by the handlers here and by the direct path (`fast.rs`).
pub(super) struct DocumentCall<'a> {
    state: &'a AppState,
    who: &'a Principal,
    coll: String,
    id: String,
    headers: &'a HeaderMap,
    /// The query string, undecoded.
    query: Option<&'a str>,
}

impl<'a> DocumentCall<'a> {
    pub(super) fn new(
        state: &'a AppState,
        who: &'a Principal,
        (coll, id): (String, String),
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> DocumentCall<'a> {
        DocumentCall {
            state,
            who,
            coll,
            id,
            headers,
            query,
        }
    }

    /// Refuses unless the caller has `role` on this collection.
    fn authorize(&self, role: Role) -> Result<(), ApiError> {
        authorize(self.who, role, Some(&self.coll))
    }
}

/// `GET /v1/c/{coll}/{id}` once the request is taken apart.
pub(super) fn read(call: DocumentCall<'_>) -> Result<Response, ApiError> {
    call.authorize(Role::Read)?;
    no_document_query(call.query, false)?;
    let (rev, json) = call
        .state
        .db
        .collection(&call.coll)?
        .get_json(&call.id)?
        .ok_or_else(|| ApiError::NotFound(format!("no such document: {}/{}", call.coll, call.id)))?;
    let etag = format!("\"{rev}\"");
    let rev = etag.trim_matches('"');
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| ApiError::NotFound(call.id))?;
    // RFC 9110, 13.2.2: If-Match first; a missing document was 404 above,
    // whatever the preconditions (13.2.1).
    if tags(call.headers, header::IF_MATCH).is_some_and(|mut tags| !tags.any(|tag| names(tag, rev, false))) {
        return Err(ApiError::PreconditionFailed(etag.clone()));
    }
    if tags(call.headers, header::IF_NONE_MATCH).is_some_and(|mut tags| tags.any(|tag| names(tag, rev, true)))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok(([(header::ETAG, etag_value)], super::json_bytes(json)).into_response())
}

/// The entity tags of every `name` header of a read, `None` without one. A
/// header that is not text names none.
fn tags(headers: &HeaderMap, name: header::HeaderName) -> Option<impl Iterator<Item = &str>> {
    let mut values = headers.get_all(name).into_iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(',').map(str::trim)),
    )
}

/// Whether entity tag `tag` of a read's precondition names revision `rev`
/// (or is `*`). Quotes may be left out, as writes take them. The weak
/// comparison of `If-None-Match` (RFC 9110, 13.1.2) takes `W/"…"` too, as a
/// proxy that compressed the answer may have turned the ETag into; the
/// strong one of `If-Match` never does.
fn names(tag: &str, rev: &str, weak: bool) -> bool {
    let opaque = match tag.strip_prefix("W/") {
        Some(_) if !weak => return false,
        Some(opaque) => opaque,
        None => tag,
    };
    tag == "*" || opaque.trim_matches('"') == rev
}

/// Writes a document's whole content.
#[utoipa::path(put, path = "/v1/c/{coll}/{id}", tag = "documents",
    params(("coll" = String, Path), ("id" = String, Path), ("If-Match" = Option<String>, Header, nullable = false),
           ("If-None-Match" = Option<String>, Header, nullable = false),
           ("Idempotency-Key" = Option<String>, Header, nullable = false)),
    request_body = super::openapi::DocBody,
    responses((status = 200, description = "Written", body = super::openapi::WriteAnswer),
               (status = 201, description = "Created", body = super::openapi::WriteAnswer),
               (status = 409, description = "Conflict; carries the current document", body = super::openapi::ErrorBody),
               (status = 422, description = "Idempotency key reused with another request", body = super::openapi::ErrorBody)))]
pub async fn put_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    put(
        DocumentCall::new(&state, &who, (coll, id), &headers, query.as_deref()),
        body,
    )
    .await
}

/// `PUT /v1/c/{coll}/{id}` once the request is taken apart.
pub(super) async fn put(call: DocumentCall<'_>, body: Value) -> Result<Response, ApiError> {
    call.authorize(Role::Write)?;
    let mut body = object(body)?;
    no_document_query(call.query, true)?;
    let expect = precondition(&mut body, call.headers, Expect::Absent)?;
    let op = TxOp::Put {
        collection: call.coll,
        id: call.id,
        body: Value::Object(body),
        expect,
    };
    write((call.state, call.who), op, call.headers, false).await
}

/// Applies update operators at the serialization point.
#[utoipa::path(patch, path = "/v1/c/{coll}/{id}", tag = "documents",
    params(("coll" = String, Path), ("id" = String, Path), ("If-Match" = Option<String>, Header, nullable = false),
           ("If-None-Match" = Option<String>, Header, nullable = false),
           ("Idempotency-Key" = Option<String>, Header, nullable = false)),
    request_body = super::openapi::UpdateBody,
    responses((status = 200, description = "Written, a no-op, or skipped", body = super::openapi::WriteAnswer),
               (status = 201, description = "Created by $upsert", body = super::openapi::WriteAnswer),
               (status = 404, description = "Absent and no $upsert", body = super::openapi::ErrorBody),
               (status = 409, description = "Conflict", body = super::openapi::ErrorBody),
               (status = 422, description = "Idempotency key reused with another request", body = super::openapi::ErrorBody)))]
pub async fn patch_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    patch(
        DocumentCall::new(&state, &who, (coll, id), &headers, query.as_deref()),
        body,
    )
    .await
}

/// `PATCH /v1/c/{coll}/{id}` once the request is taken apart.
pub(super) async fn patch(call: DocumentCall<'_>, body: Value) -> Result<Response, ApiError> {
    call.authorize(Role::Write)?;
    let mut spec = match body {
        Value::Object(map) => map,
        other => {
            return Err(ApiError::Engine(truce::Error::InvalidOperator(format!(
                "an update is a JSON object of operators, not {}",
                truce::doc::json_type_name(&other)
            ))));
        }
    };
    no_document_query(call.query, true)?;
    let expect = precondition(&mut spec, call.headers, Expect::Any)?;
    let update = Update::parse(&Value::Object(spec))?;
    // Without `$upsert` an absent document is 404, whatever the precondition;
    // with it, absence is no failure, so `not_found` can only be a failed
    // precondition, a 409 as for PUT.
    let missing_is_404 = !update.upsert();
    let op = TxOp::Patch {
        collection: call.coll,
        id: call.id,
        update: Arc::new(update),
        expect,
    };
    write((call.state, call.who), op, call.headers, missing_is_404).await
}

/// Deletes a document (leaves a tombstone for the change feed and replication).
#[utoipa::path(delete, path = "/v1/c/{coll}/{id}", tag = "documents",
    params(("coll" = String, Path), ("id" = String, Path), ("version" = Option<i64>, Query),
           ("rev" = Option<String>, Query), ("If-Match" = Option<String>, Header, nullable = false),
           ("Idempotency-Key" = Option<String>, Header, nullable = false)),
    responses((status = 200, description = "Deleted; doc is the tombstone", body = super::openapi::WriteAnswer),
               (status = 400, description = "A malformed precondition, or If-None-Match (which cannot guard a delete)", body = super::openapi::ErrorBody),
               (status = 404, description = "Absent", body = super::openapi::ErrorBody),
               (status = 409, description = "Conflict", body = super::openapi::ErrorBody),
               (status = 422, description = "Idempotency key reused with another request", body = super::openapi::ErrorBody),
               (status = 428, description = "No precondition given", body = super::openapi::ErrorBody)))]
pub async fn delete_doc(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, id)): PathParams<(String, String)>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Write, Some(&coll))?;
    params.only(&["version", "rev"])?;
    let mut given = serde_json::Map::new();
    if let Some(v) = params.parse::<i64>("version", "invalid_precondition")? {
        given.insert("_version".into(), json!(v));
    }
    if let Some(r) = params.0.get("rev") {
        given.insert("_rev".into(), json!(r));
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        // "Only if absent" (or "unless at this revision") cannot guard a
        // delete: read as no precondition, it would have been a 428 that
        // said none was sent.
        return Err(ApiError::Engine(truce::Error::InvalidPrecondition(
            "If-None-Match does not guard a delete: give version=N, rev=R, If-Match, or version=-1 for any"
                .into(),
        )));
    }
    if given.is_empty() && !headers.contains_key(header::IF_MATCH) {
        return Err(ApiError::PreconditionRequired(None));
    }
    let expect = precondition(&mut given, &headers, Expect::Any)?;
    write(
        (&state, &who),
        TxOp::Delete {
            collection: coll,
            id,
            expect,
        },
        &headers,
        true,
    )
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use truce::{Effect, Written};

    use super::{WriteAnswer, names, write_answer, write_tx_answer};

    /// If-None-Match compares weakly, If-Match strongly; quotes may be left out.
    #[test]
    fn a_reads_preconditions_compare_tags() {
        for (tag, weakly, strongly) in [
            ("\"3-abc\"", true, true),
            ("3-abc", true, true),
            ("*", true, true),
            ("W/\"3-abc\"", true, false),
            ("W/3-abc", true, false),
            ("\"3-abd\"", false, false),
            ("w/\"3-abc\"", false, false),
            ("", false, false),
            ("\"\"", false, false),
        ] {
            assert_eq!(
                (names(tag, "3-abc", true), names(tag, "3-abc", false)),
                (weakly, strongly),
                "{tag}"
            );
        }
    }

    #[test]
    fn write_answer_gives_the_bytes_of_serialize() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = truce::Db::open(dir.path(), truce::Options::default()).expect("open");
        let users = db.collection("users").expect("collection");
        users
            .put("u\"1", json!({"n": 1, "é": "x"}), truce::Expect::Any)
            .expect("put")
            .expect("written");
        let doc = users.get("u\"1").expect("get").expect("present");
        // Whether the body is encoded or copied from its canonical bytes;
        // keys before and after the metadata's, none, and a tombstone's.
        let mut docs = vec![doc.clone()];
        for (id, body) in [
            ("a", json!({"A": [1.5, {"z": null}], "b": "é\n"})),
            ("b", json!({})),
        ] {
            users
                .put(id, body, truce::Expect::Any)
                .expect("put")
                .expect("written");
            docs.push(users.get(id).expect("get").expect("present"));
        }
        let gone = users
            .delete("b", truce::Expect::Any)
            .expect("delete")
            .expect("deleted");
        docs.push(truce::Document::clone(&gone.doc));
        for doc in &docs {
            let canonical = std::sync::Arc::new(truce::doc::canonical_bytes(&doc.body));
            for effect in [Effect::Created, Effect::Updated, Effect::NoOp, Effect::Skipped] {
                for canonical in [None, Some(std::sync::Arc::clone(&canonical))] {
                    let written = Written {
                        doc: doc.clone().into(),
                        effect,
                        canonical,
                    };
                    let mut bytes = Vec::new();
                    write_answer(&written, &mut bytes).expect("written");
                    assert_eq!(
                        String::from_utf8(bytes).expect("text"),
                        serde_json::to_string(&WriteAnswer::new(&written)).expect("serialized"),
                        "{effect:?} {:?}",
                        written.canonical.is_some()
                    );
                }
            }
        }
        let committed = truce::TxCommitted {
            seq: 7,
            results: vec![
                Some(Written {
                    doc: doc.clone().into(),
                    effect: Effect::Updated,
                    canonical: None,
                }),
                None,
                Some(Written {
                    doc: doc.clone().into(),
                    effect: Effect::Checked,
                    canonical: None,
                }),
            ],
            replayed: false,
        };
        let mut bytes = Vec::new();
        write_tx_answer(&committed, &mut bytes).expect("written");
        let results: Vec<serde_json::Value> = committed
            .results
            .iter()
            .map(|r| {
                r.as_ref().map_or(serde_json::Value::Null, |w| {
                    serde_json::to_value(WriteAnswer::new(w)).unwrap()
                })
            })
            .collect();
        assert_eq!(
            String::from_utf8(bytes).expect("text"),
            serde_json::to_string(&json!({"seq": 7, "results": results})).expect("serialized")
        );
    }
}
