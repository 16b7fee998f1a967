//! Every error and conflict becomes a status and a JSON body here, in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use truce::{Conflict, ConflictReason, OpConflict};

/// Seconds a client should wait before retrying an overloaded or building
/// server, or one short of disk space.
const RETRY_AFTER_SECS: &str = "1";

/// What a refused transaction's answer says it wrote.
pub const NOTHING_WRITTEN: &str = "nothing was written";

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    /// An engine error, by its stable code.
    Engine(truce::Error),
    /// A single-document write that did not apply.
    Conflict(Conflict),
    /// A single-document write to a document that is not there (PATCH without
    /// `$upsert`, DELETE).
    Missing,
    /// Transaction operations that did not hold, and what the answer says
    /// was written (`NOTHING_WRITTEN` for a transaction).
    TxConflicts(Vec<OpConflict>, &'static str),
    /// The body is not JSON (or not the expected shape).
    InvalidJson(String),
    /// A bad request that is not the engine's to judge (headers, parameters).
    BadRequest(&'static str, String),
    /// No key, or an invalid one.
    Unauthorized(&'static str),
    /// The key may not do this.
    Forbidden(String),
    /// No such resource.
    NotFound(String),
    /// No such route: `not_found` too (API.md), marked `"no_route": true` so
    /// that a client whose base URL is wrong does not read it as a missing
    /// document, and empty data.
    NoRoute,
    /// The route exists but has no such method (the router adds `Allow`).
    MethodNotAllowed,
    /// A DELETE without a precondition (in a transaction: that op's index).
    PreconditionRequired(Option<usize>),
    /// The request body is too large.
    PayloadTooLarge(String),
    /// Too many requests at once.
    Overloaded,
    /// A replication checkpoint or feed position from another history of
    /// this database (its epoch, `given`, is not the database's, `epoch`).
    OtherHistory { given: u64, epoch: u64 },
    /// The caller's API key holds this many long polls and event streams,
    /// its most (`--max-streams-per-key`).
    KeyStreamsFull(usize),
    /// Too many answers not read yet by their clients (`answers.rs`).
    AnswersUnread,
    /// The request bodies being received take all of `--body-memory-mib`.
    BodiesOverBudget,
    /// The request took longer than its timeout.
    Timeout,
    /// The request body stopped arriving.
    BodyTimeout,
    /// The body is in an encoding the server does not decode (its
    /// `Content-Encoding`, as sent).
    UnsupportedEncoding(String),
    /// The body is sent in a transfer coding besides `chunked` (its
    /// `Transfer-Encoding`, as sent), which the server does not decode.
    UnsupportedTransferCoding(String),
    /// A read's `If-Match` names none of the document's revision (or a
    /// weak tag): its ETag.
    PreconditionFailed(String),
    /// The request body was still arriving when the request timeout (this)
    /// passed.
    BodyTooSlow(std::time::Duration),
    /// What a push met after this many of its rows were written (by its
    /// earlier transactions, or alone): the error's own answer, saying so
    /// where it would say that nothing was.
    PartlyWritten(Box<ApiError>, usize),
}

impl From<truce::Error> for ApiError {
    fn from(e: truce::Error) -> ApiError {
        ApiError::Engine(e)
    }
}

/// Status of an engine error code.
pub fn engine_status(code: &str) -> StatusCode {
    match code {
        "invalid_document"
        | "invalid_id"
        | "invalid_collection"
        | "reserved_field"
        | "invalid_operator"
        | "invalid_filter"
        | "invalid_precondition"
        | "invalid_transaction"
        | "invalid_index"
        | "invalid_config"
        | "invalid_backup"
        | "invalid_query" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "history_purged" => StatusCode::GONE,
        "payload_too_large" | "limit_exceeded" => StatusCode::PAYLOAD_TOO_LARGE,
        "idempotency_key_reused" => StatusCode::UNPROCESSABLE_ENTITY,
        "overloaded" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" | "index_building" | "index_dropping" => StatusCode::SERVICE_UNAVAILABLE,
        // A stopped backup is only ever a status's `error`; as an answer it
        // would be a request that met another's stop.
        "retries_exhausted" | "transaction_failed" | "backup_running" | "backup_stopped" => {
            StatusCode::CONFLICT
        }
        "insufficient_storage" => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `object` (a non-empty JSON object of strings and numbers) with one more
/// field, `key` (a plain name, written as it is), whose value `value` writes.
fn with_field(object: &Value, key: &'static str, out: &mut Vec<u8>, value: impl FnOnce(&mut Vec<u8>)) {
    // Writing it cannot fail, and it ends with its closing brace.
    let _ = serde_json::to_writer(&mut *out, object);
    out.pop();
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    value(out);
    out.push(b'}');
}

/// `object` with `"current"`, the conflict's document or `null`, written
/// straight from it or from its stored record
/// (`Conflict::write_current_json`).
fn with_current(object: &Value, conflict: &truce::Conflict, out: &mut Vec<u8>) {
    with_field(object, "current", out, |out| conflict.write_current_json(out));
}

/// The body of a conflict's answer (a single write's, or a transaction's
/// with its `written` message), each current document written straight
/// from it or from its stored record (`with_current`): built as a `Value`,
/// a conflict over a document of 100,000
/// values copied them all once more on the HTTP thread before encoding
/// them.
fn conflicts_json(error: &ApiError) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match error {
        ApiError::Conflict(conflict) => {
            let fields = match conflict.reason {
                ConflictReason::UniqueViolation => json!({
                    "error": "unique_violation",
                    "message": "a unique index already holds these values for another document",
                }),
                reason => json!({
                    "error": "conflict",
                    "reason": reason.code(),
                    "message": format!("the write did not apply: {}", reason.code()),
                }),
            };
            with_current(&fields, conflict, &mut out);
        }
        ApiError::TxConflicts(conflicts, written) => {
            let message = format!("{} operation(s) did not hold; {written}", conflicts.len());
            let fields = json!({"error": "conflict", "message": message});
            with_field(&fields, "conflicts", &mut out, |out| {
                out.push(b'[');
                for (i, c) in conflicts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let reason = match c.conflict.reason {
                        ConflictReason::UniqueViolation => "unique_violation",
                        other => other.code(),
                    };
                    let fields = json!({"index": c.index, "c": c.collection, "id": c.id, "reason": reason});
                    with_current(&fields, &c.conflict, out);
                }
                out.push(b']');
            });
        }
        _ => return None,
    }
    Some(out)
}

impl ApiError {
    /// The status and body of this error: the one mapping of the server.
    pub fn status_and_body(&self) -> (StatusCode, Value) {
        let plain = |status: StatusCode, code: &str, message: String| {
            (status, json!({"error": code, "message": message}))
        };
        match self {
            ApiError::Engine(e) => plain(engine_status(e.code()), e.code(), e.to_string()),
            // Written as bytes for an answer (`conflicts_json`); read back
            // where a `Value` is wanted (`/couch`, an event of a stream).
            ApiError::Conflict(_) | ApiError::TxConflicts(..) => (
                StatusCode::CONFLICT,
                conflicts_json(self)
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or(Value::Null),
            ),
            ApiError::Missing => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "no such document", "current": null}),
            ),
            ApiError::InvalidJson(message) => plain(StatusCode::BAD_REQUEST, "invalid_json", message.clone()),
            ApiError::BadRequest(code, message) => plain(StatusCode::BAD_REQUEST, code, message.clone()),
            ApiError::Unauthorized(message) => {
                plain(StatusCode::UNAUTHORIZED, "unauthorized", message.to_string())
            }
            ApiError::Forbidden(message) => plain(StatusCode::FORBIDDEN, "forbidden", message.clone()),
            ApiError::NotFound(message) => plain(StatusCode::NOT_FOUND, "not_found", message.clone()),
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "no_route": true,
                       "message": "no such route; see /openapi.json (the /v1 API) and docs/replication.md (/couch)"}),
            ),
            ApiError::MethodNotAllowed => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method; the Allow header lists those it takes".into(),
            ),
            ApiError::PreconditionRequired(op) => plain(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                match op {
                    None => "a delete needs a precondition: version=N, rev=R, If-Match, or version=-1 for any"
                        .into(),
                    Some(i) => format!(
                        "op {i}: a delete needs a precondition: the op's \"version\" (N, or -1 for any) or \"rev\""
                    ),
                },
            ),
            ApiError::UnsupportedEncoding(encoding) => plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "a body in Content-Encoding {encoding:?} is not decoded by this server: send it \
                     uncompressed (JSON, no Content-Encoding); nothing was done"
                ),
            ),
            ApiError::UnsupportedTransferCoding(coding) => plain(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                format!(
                    "a body in Transfer-Encoding {coding:?} is not decoded by this server, which takes only \
                     chunked: send it uncompressed (JSON); nothing was done"
                ),
            ),
            ApiError::PreconditionFailed(_) => plain(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "If-Match names none of the document's revisions (its ETag is in this answer; a weak W/ tag \
                 never matches)"
                    .into(),
            ),
            ApiError::PayloadTooLarge(message) => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message.clone(),
            ),
            ApiError::Overloaded => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many requests at once; retry after a short pause".into(),
            ),
            ApiError::OtherHistory { given, epoch } => plain(
                StatusCode::GONE,
                "history_purged",
                format!(
                    "this position is from another history of this database (epoch {given}; the \
                     database's is {epoch}): it was restored from a backup since, whose history goes on \
                     apart from the one the position followed, and hands out its positions again. Read \
                     again from the start (a null checkpoint, since=0) and drop what the server no longer \
                     has; truce-rxdb does so on its own"
                ),
            ),
            ApiError::KeyStreamsFull(max) => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "this API key holds {max} long polls and event streams, the most one key may \
                     (max_streams_per_key); end one, or retry after a short pause"
                ),
            ),
            ApiError::AnswersUnread => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many answers are waiting for their clients to read them (answer_memory_mib); nothing was \
                 done; retry after a short pause"
                    .into(),
            ),
            ApiError::BodiesOverBudget => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the request bodies being received take all the memory the server keeps for them \
                 (body_memory_mib); nothing was done; retry after a short pause"
                    .into(),
            ),
            ApiError::BodyTimeout => plain(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "no byte of the request body arrived for {} ms; nothing was done",
                    super::extract::BODY_IDLE_TIMEOUT_MS
                ),
            ),
            ApiError::BodyTooSlow(timeout) => plain(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body had not all arrived after {} ms, the server's request timeout; \
                     nothing was done",
                    timeout.as_millis()
                ),
            ),
            ApiError::Timeout => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the server's request timeout; a write may still commit".into(),
            ),
            ApiError::PartlyWritten(error, rows) => {
                let (status, mut body) = error.status_and_body();
                let said = body["message"].as_str().unwrap_or_default();
                let said = match said.strip_suffix(NOTHING_WRITTEN) {
                    Some(before) => format!("{before}nothing of its transaction was written"),
                    None => said.to_string(),
                };
                body["message"] = json!(format!(
                    "{said}; {rows} row(s) of this push were written before it (sent again, they come back as \
                     conflicts whose master state is what was written)"
                ));
                body["written_rows"] = json!(rows);
                (status, body)
            }
        }
    }
}

/// `Retry-After` on an answer that asks the client to come back later (429,
/// 503, 507), in either error shape.
pub fn add_retry_after(response: &mut Response) {
    if matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, mut response) = match conflicts_json(&self) {
            Some(bytes) => {
                let json = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
                (
                    StatusCode::CONFLICT,
                    (StatusCode::CONFLICT, json, bytes).into_response(),
                )
            }
            None => {
                let (status, body) = self.status_and_body();
                (status, (status, axum::Json(body)).into_response())
            }
        };
        if let ApiError::PartlyWritten(..) = self {
            response.extensions_mut().insert(super::answers::PartlyWritten);
        }
        if let ApiError::PreconditionFailed(etag) = &self
            && let Ok(etag) = HeaderValue::from_str(etag)
        {
            response.headers_mut().insert(header::ETAG, etag);
        }
        add_retry_after(&mut response);
        if let ApiError::UnsupportedEncoding(_) = self {
            // RFC 9110, 15.5.16: the encodings it takes, which is none.
            response
                .headers_mut()
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 asks every 401 to name its scheme (RFC 6750's Bearer).
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(WWW_AUTHENTICATE),
            );
        }
        response
    }
}

/// The challenge of every 401.
const WWW_AUTHENTICATE: &str = "Bearer realm=\"truce\"";

#[cfg(test)]
mod tests {
    use super::*;

    /// A body refused for its `Content-Encoding` is answered with the one
    /// the server takes (RFC 9110, 15.5.16).
    #[test]
    fn an_unsupported_encoding_names_the_one_taken() {
        let response = ApiError::UnsupportedEncoding("gzip".into()).into_response();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(response.headers()[header::ACCEPT_ENCODING], "identity");
        let other = ApiError::Overloaded.into_response();
        assert!(!other.headers().contains_key(header::ACCEPT_ENCODING));
    }

    /// A conflict's answer written as bytes holds what its `Value` held:
    /// the reason, the message and the current document as `to_json` gives
    /// it (or `null`), for a single write and for each op of a transaction.
    #[test]
    fn conflict_answers_are_their_json() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = truce::Db::open(dir.path(), truce::Options::default()).expect("open");
        let c = db.collection("c").expect("collection");
        let body = json!({"a": [1, {"b": "é\n"}], "z": null});
        c.put("d\"1", body, truce::Expect::Any)
            .expect("put")
            .expect("written");
        let conflict = c
            .put("d\"1", json!({}), truce::Expect::Absent)
            .expect("put")
            .expect_err("conflict");
        let parsed = |error: &ApiError| -> Value {
            serde_json::from_slice(&conflicts_json(error).expect("a conflict")).expect("JSON")
        };
        let single = ApiError::Conflict(conflict.clone());
        // Written from the stored record (the write was refused before the
        // committer, from durable state), then from the decoded document.
        let stored = parsed(&single);
        let current = conflict.current().expect("decodes").expect("current").to_json();
        assert_eq!(
            stored,
            json!({"error": "conflict", "reason": "already_exists",
                   "message": "the write did not apply: already_exists", "current": current})
        );
        assert_eq!(parsed(&single), stored);
        assert_eq!(single.status_and_body(), (StatusCode::CONFLICT, parsed(&single)));
        let unique = truce::Conflict::new(ConflictReason::UniqueViolation, None);
        assert_eq!(
            parsed(&ApiError::Conflict(unique)),
            json!({"error": "unique_violation", "current": null,
                   "message": "a unique index already holds these values for another document"})
        );
        let op = |index, conflict| OpConflict {
            index,
            collection: "c".into(),
            id: "d\"1".into(),
            conflict,
        };
        let none = truce::Conflict::new(ConflictReason::NotFound, None);
        let tx = ApiError::TxConflicts(vec![op(0, conflict), op(3, none)], NOTHING_WRITTEN);
        assert_eq!(
            parsed(&tx),
            json!({"error": "conflict", "message": "2 operation(s) did not hold; nothing was written",
                   "conflicts": [
                       {"index": 0, "c": "c", "id": "d\"1", "reason": "already_exists", "current": current},
                       {"index": 3, "c": "c", "id": "d\"1", "reason": "not_found", "current": null}]})
        );
        assert!(conflicts_json(&ApiError::Missing).is_none());
    }

    /// Every engine code has a deliberate status; none falls through to 500 by accident.
    #[test]
    fn every_engine_code_maps_to_its_status() {
        let internal = ["storage_error", "corrupt"];
        for code in truce::Error::ALL_CODES {
            let status = engine_status(code);
            assert_eq!(
                status == StatusCode::INTERNAL_SERVER_ERROR,
                internal.contains(code),
                "{code} → {status}"
            );
        }
        assert_eq!(engine_status("overloaded"), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            engine_status("idempotency_key_reused"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    /// A push refused after some rows were written says so, keeps its
    /// error's status, and is marked so that no answer budget replaces it.
    #[test]
    fn a_partly_written_answer_says_how_much_and_is_never_refused() {
        let error = ApiError::Engine(truce::Error::InsufficientStorage { free: 1, reserve: 2 });
        let (status, body) = ApiError::PartlyWritten(Box::new(error), 3).status_and_body();
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(body["written_rows"], 3);
        let message = body["message"].as_str().unwrap();
        assert!(!message.contains("nothing was written"), "{message}");
        assert!(
            message.contains("3 row(s) of this push were written"),
            "{message}"
        );
        let response = ApiError::PartlyWritten(Box::new(ApiError::Overloaded), 1).into_response();
        assert!(
            response
                .extensions()
                .get::<super::super::answers::PartlyWritten>()
                .is_some()
        );
    }

    #[test]
    fn overload_answers_carry_retry_after() {
        let response = ApiError::Overloaded.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
