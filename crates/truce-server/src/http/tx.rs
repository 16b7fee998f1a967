//! `POST /v1/tx`: a batch of checks and writes, all or nothing.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value};
use truce::{Expect, TxFailure, TxOp, Update};

use super::AppState;
use super::error::ApiError;
use super::extract::{
    JsonBody, Params, authorize, expect_from_version, first_unknown, idempotency_key, object, origin_named,
};
use crate::keys::{Principal, Role};

fn invalid(index: usize, message: &str) -> ApiError {
    ApiError::Engine(truce::Error::InvalidTransaction(format!("op {index}: {message}")))
}

/// The precondition of op `index`: its `version` or `rev`, else `default`. A
/// malformed one is `invalid_precondition`, as in a document's own request.
fn op_expect(index: usize, op: &Map<String, Value>, default: Option<Expect>) -> Result<Expect, ApiError> {
    let malformed = |message: &str| truce::Error::InvalidPrecondition(message.into());
    let expect = match (op.get("version"), op.get("rev")) {
        (Some(_), Some(_)) => Err(malformed("give version or rev, not both")),
        (Some(v), None) => match v.as_i64() {
            Some(v) => expect_from_version(v).map_err(|e| match e {
                ApiError::Engine(e) => e,
                _ => malformed("version is an integer from -1 up"),
            }),
            // A number is named (it is short); any other value is not
            // echoed (a string may be megabytes).
            None if v.is_number() => Err(malformed(&format!(
                "version is an integer from -1 to {}, not {v}",
                i64::MAX
            ))),
            None => Err(malformed("version is an integer")),
        },
        (None, Some(r)) => match r.as_str() {
            Some(text) => text.parse().map(Expect::Rev),
            None => Err(malformed("rev is a string")),
        },
        (None, None) => return default.ok_or(ApiError::PreconditionRequired(Some(index))),
    };
    expect.map_err(|e| ApiError::Engine(e.in_op(index)))
}

/// The keys each kind of op takes (the OpenAPI document's `TxOpBody` says
/// the same, and a test holds the two equal).
pub(super) const OP_KEYS: [(&str, &[&str]); 4] = [
    ("check", &["op", "c", "id", "version", "rev"]),
    ("put", &["op", "c", "id", "version", "rev", "doc"]),
    ("patch", &["op", "c", "id", "version", "rev", "update"]),
    ("delete", &["op", "c", "id", "version", "rev"]),
];

/// Refuses a key that op `kind` does not take: a misspelt `version` would
/// otherwise drop the op's precondition without a word.
fn known_keys(index: usize, kind: &str, op: &Map<String, Value>) -> Result<(), ApiError> {
    let Some((_, takes)) = OP_KEYS.iter().find(|(name, _)| *name == kind) else {
        return Ok(()); // an unknown op is refused by name
    };
    match first_unknown(op.keys().map(String::as_str), takes) {
        Some(key) => Err(invalid(
            index,
            &format!("a {kind} op takes {}, not {key:?}", takes.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `error` naming op `index`.
fn in_op(error: ApiError, index: usize) -> ApiError {
    match error {
        ApiError::Engine(e) => ApiError::Engine(e.in_op(index)),
        other => other,
    }
}

/// Parses one op of the wire form into a [`TxOp`]; whether it writes.
fn parse_op(index: usize, value: Value) -> Result<(TxOp, bool), ApiError> {
    let mut op = match value {
        Value::Object(map) => map,
        _ => return Err(invalid(index, "an op is an object")),
    };
    let text = |op: &Map<String, Value>, key: &str| -> Result<String, ApiError> {
        op.get(key)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| invalid(index, &format!("\"{key}\" is a string")))
    };
    let (collection, id) = (text(&op, "c")?, text(&op, "id")?);
    let kind = text(&op, "op")?;
    known_keys(index, &kind, &op)?;
    Ok(match kind.as_str() {
        "check" => (
            TxOp::Check {
                collection,
                id,
                expect: op_expect(index, &op, Some(Expect::Exists))?,
            },
            false,
        ),
        "put" => {
            let body = op
                .remove("doc")
                .ok_or_else(|| invalid(index, "a put carries \"doc\""))?;
            let expect = op_expect(index, &op, Some(Expect::Absent))?;
            (
                TxOp::Put {
                    collection,
                    id,
                    body: Value::Object(object(body).map_err(|e| in_op(e, index))?),
                    expect,
                },
                true,
            )
        }
        "patch" => {
            let spec = op
                .get("update")
                .ok_or_else(|| invalid(index, "a patch carries \"update\""))?;
            let update = Arc::new(Update::parse(spec).map_err(|e| in_op(ApiError::Engine(e), index))?);
            (
                TxOp::Patch {
                    collection,
                    id,
                    update,
                    expect: op_expect(index, &op, Some(Expect::Any))?,
                },
                true,
            )
        }
        "delete" => (
            TxOp::Delete {
                collection,
                id,
                expect: op_expect(index, &op, None)?,
            },
            true,
        ),
        other => {
            return Err(invalid(
                index,
                &format!("unknown op {other:?}: use check, put, patch or delete"),
            ));
        }
    })
}

/// Runs a batch transaction.
#[utoipa::path(post, path = "/v1/tx", tag = "transactions",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false)),
    request_body = super::openapi::TxBody,
    responses((status = 200, description = "Committed", body = super::openapi::TxAnswer),
               (status = 409, description = "Every op that did not hold", body = super::openapi::ErrorBody),
               (status = 422, description = "Idempotency key reused with another request", body = super::openapi::ErrorBody),
               (status = 428, description = "A delete op without version or rev", body = super::openapi::ErrorBody)))]
pub async fn transaction(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let mut body = object(body).map_err(|_| {
        ApiError::Engine(truce::Error::InvalidTransaction(
            "the body is an object with \"ops\"".into(),
        ))
    })?;
    if let Some(key) = first_unknown(body.keys().map(String::as_str), &["ops", "source"]) {
        return Err(ApiError::Engine(truce::Error::InvalidTransaction(format!(
            "a transaction takes \"ops\" and \"source\", not {key:?}"
        ))));
    }
    let source = match body.remove("source") {
        None => None,
        Some(Value::String(source)) => Some(source),
        Some(_) => {
            return Err(ApiError::Engine(truce::Error::InvalidTransaction(
                "\"source\" is a string".into(),
            )));
        }
    };
    let ops = match body.remove("ops") {
        Some(Value::Array(ops)) => ops,
        _ => {
            return Err(ApiError::Engine(truce::Error::InvalidTransaction(
                "\"ops\" is an array of ops".into(),
            )));
        }
    };
    let mut parsed = Vec::with_capacity(ops.len());
    let mut writes = false;
    for (index, op) in ops.into_iter().enumerate() {
        let (op, writes_op) = parse_op(index, op)?;
        writes |= writes_op;
        parsed.push(op);
    }
    let role = if writes { Role::Write } else { Role::Read };
    authorize(&who, role, None)?;
    for op in &parsed {
        let (TxOp::Check { collection, .. }
        | TxOp::Put { collection, .. }
        | TxOp::Patch { collection, .. }
        | TxOp::Delete { collection, .. }) = op;
        authorize(&who, role, Some(collection))?;
    }
    let key = idempotency_key(&headers, &who)?;
    // The engine names the op of an error only in a transaction of several
    // (one op is also what a document's own write sends it); here there is
    // always a list of ops to point into.
    let single = parsed.len() == 1;
    let name_op = |e: truce::Error| {
        let e = key.as_sent(e);
        if single { e.in_op(0) } else { e }
    };
    match state
        .db
        .submit_batch_from(
            parsed,
            key.stored(),
            origin_named(source.as_deref().filter(|s| !s.is_empty()), &headers),
        )
        .map_err(name_op)?
        .await
        .map_err(name_op)?
    {
        Ok(committed) => {
            let mut answer =
                super::documents::json_body(|out| super::documents::write_tx_answer(&committed, out));
            if !writes {
                // Only checks: under memory pressure the answer may be refused.
                answer.extensions_mut().insert(super::answers::Unwritten);
            }
            Ok(answer)
        }
        Err(TxFailure::Conflicts(conflicts)) => {
            Err(ApiError::TxConflicts(conflicts, super::error::NOTHING_WRITTEN))
        }
        Err(other) => Err(ApiError::Engine(truce::Error::TransactionFailed {
            attempts: 1,
            failure: Box::new(other),
        })),
    }
}
