//! The OpenAPI 3 document served at `GET /openapi.json`, generated from the
//! handlers' annotations and the schemas below (which describe the JSON the
//! handlers write).

#![allow(dead_code)] // The schema types exist to be described, not constructed.

use serde_json::{Map, Value};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, Header, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// A document: user fields plus `_id`, `_rev`, `_version`, `_seq`, `_ts` (and
/// `_deleted` on a tombstone).
#[derive(ToSchema)]
pub struct Doc {
    _id: String,
    _rev: String,
    _version: u64,
    _seq: u64,
    _ts: u64,
}

/// Every error: a stable code and a message; conflicts add `reason`, `current`
/// or `conflicts`.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: String,
    message: String,
}

/// The answer to a write.
#[derive(ToSchema)]
pub struct WriteAnswer {
    id: String,
    rev: String,
    version: u64,
    seq: u64,
    created: bool,
    noop: bool,
    skipped: bool,
    doc: Doc,
}

/// Collection names.
#[derive(ToSchema)]
pub struct Collections {
    collections: Vec<String>,
}

/// An index and its state.
#[derive(ToSchema)]
pub struct Index {
    name: String,
    fields: Vec<String>,
    unique: bool,
    /// `building`, `ready` or `failed`.
    state: String,
    backfilled: u64,
    failure: Option<String>,
}

/// A collection's indexes.
#[derive(ToSchema)]
pub struct Indexes {
    indexes: Vec<Index>,
}

/// An index declaration.
#[derive(ToSchema)]
pub struct IndexBody {
    /// Field paths (dotted), 1 to 8.
    #[schema(min_items = 1, max_items = 8)]
    fields: Vec<String>,
    /// Default false; `null` is refused.
    #[schema(nullable = false)]
    unique: Option<bool>,
}

/// One page of a query.
#[derive(ToSchema)]
pub struct QueryPage {
    docs: Vec<Doc>,
    next: Option<String>,
}

/// One change.
#[derive(ToSchema)]
pub struct ChangeItem {
    seq: u64,
    id: String,
    rev: String,
    deleted: bool,
    c: Option<String>,
    doc: Option<Doc>,
}

/// A page of the change feed.
#[derive(ToSchema)]
pub struct ChangesPage {
    results: Vec<ChangeItem>,
    last_seq: u64,
}

/// What a transaction op does.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum TxOpKind {
    Check,
    Put,
    Patch,
    Delete,
}

/// One op of a transaction. The optional fields are absent or of their type:
/// the server refuses `null` for any of them.
#[derive(ToSchema)]
pub struct TxOpBody {
    op: TxOpKind,
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    c: String,
    #[schema(min_length = 1)]
    id: String,
    /// The new content, for `put`.
    #[schema(nullable = false)]
    doc: Option<Map<String, Value>>,
    /// Update operators, for `patch`.
    #[schema(nullable = false)]
    update: Option<Map<String, Value>>,
    #[schema(nullable = false)]
    version: Option<i64>,
    #[schema(nullable = false)]
    rev: Option<String>,
}

/// A transaction: up to 1,000 ops, all or nothing.
#[derive(ToSchema)]
pub struct TxBody {
    /// The caller's label (as `Truce-Source`).
    #[schema(nullable = false)]
    source: Option<String>,
    #[schema(max_items = 1000)]
    ops: Vec<TxOpBody>,
}

/// A committed transaction: one answer per op (`null` for a check of an absent document).
#[derive(ToSchema)]
pub struct TxAnswer {
    seq: u64,
    results: Vec<Option<WriteAnswer>>,
}

/// Health.
#[derive(ToSchema)]
pub struct Health {
    status: String,
    durable_seq: u64,
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Truce HTTP API", version = "1", description = "Concurrent writes, safe, fast and unsurprising."),
    paths(
        super::documents::get_doc, super::documents::put_doc, super::documents::patch_doc,
        super::documents::delete_doc, super::queries::list_collections, super::queries::query,
        super::queries::list_indexes, super::queries::put_index, super::tx::transaction,
        super::changes::collection_changes, super::changes::all_changes, super::healthz,
    ),
    components(schemas(Doc, ErrorBody, WriteAnswer, Collections, Index, Indexes, IndexBody, QueryPage,
                       ChangeItem, ChangesPage, TxOpKind, TxOpBody, TxBody, TxAnswer, Health)),
    modifiers(&Conventions)
)]
pub struct ApiDoc;

/// Collection and index names (API.md, "Conventions").
const NAME_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_-]{0,63}$";
/// Document ids: not starting with `_`, no control characters (and 1–512 bytes,
/// which a JSON Schema length in characters cannot say exactly).
const ID_PATTERN: &str = "^[^_\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// What holds for every route, said once here rather than on each annotation:
/// the shape of path parameters, and the answers that layers shared by all
/// routes (authentication, concurrency limit, timeout, body limit) or input
/// validation can give. Without them the document would not list statuses the
/// server really answers (docs/http.md, "Error codes and statuses").
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                constrain_path_parameters(operation);
                add_shared_responses(path, operation);
            }
        }
    }
}

fn constrain_path_parameters(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in != ParameterIn::Path {
            continue;
        }
        let (pattern, description) = match parameter.name.as_str() {
            "coll" => (NAME_PATTERN, "Collection name"),
            "name" => (NAME_PATTERN, "Index name"),
            "id" => (
                ID_PATTERN,
                "Document id: 1–512 bytes of UTF-8, no control characters, not starting with `_`",
            ),
            _ => continue,
        };
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(pattern));
        parameter.schema = Some(schema.into());
        parameter.description = Some(description.into());
    }
}

fn error_response(description: &str, retry_after: bool) -> ResponseBuilder {
    let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body);
    if retry_after {
        let seconds = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        response.header("Retry-After", seconds)
    } else {
        response
    }
}

fn add_shared_responses(path: &str, operation: &mut Operation) {
    let takes_input =
        operation.request_body.is_some() || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut shared = vec![(
        "429",
        error_response("`overloaded`: too many requests at once", true),
    )];
    if takes_input {
        shared.push((
            "400",
            error_response("Invalid input: a stable `invalid_…` code says which", false),
        ));
    }
    if operation.request_body.is_some() {
        shared.push((
            "413",
            error_response("`payload_too_large` or `limit_exceeded`", false),
        ));
    }
    // Authentication and the request timeout apply to the API routes, not to
    // `/healthz` (which documents its own 503).
    if path.starts_with("/v1") {
        shared.push((
            "401",
            error_response(
                "`unauthorized`: the server has API keys and this one is missing or invalid",
                false,
            ),
        ));
        shared.push((
            "403",
            error_response(
                "`forbidden`: this key's role or collections do not allow it",
                false,
            ),
        ));
        shared.push((
            "503",
            error_response(
                "`unavailable` (storage failed, or the request timed out) or `index_building`",
                true,
            ),
        ));
    }
    for (status, response) in shared {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(response.build()));
    }
}

/// The document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}
