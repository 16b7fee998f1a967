//! Collections, indexes and queries: `GET /v1/c`, `GET /v1/c/{coll}`,
//! `GET|PUT /v1/c/{coll}/_indexes[/{name}]`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use truce::{IndexDef, IndexSpec, IndexState, Order, Query};

use super::error::ApiError;
use super::extract::{JsonBody, Params, PathParams, authorize, first_unknown};
use super::{AppState, blocking};
use crate::keys::{Principal, Role};

fn index_json(def: &IndexDef) -> Value {
    json!({"name": def.name, "fields": def.spec.fields, "unique": def.spec.unique,
           "state": def.state.name(), "backfilled": def.backfilled, "failure": def.failure})
}

/// Names a page of `GET /v1/c` holds without `limit` (or with 0).
const COLLECTIONS_PAGE_DEFAULT: usize = 1000;

/// Most names a page of `GET /v1/c` holds.
const COLLECTIONS_PAGE_MAX: usize = 10_000;

/// Lists the collections this key may see, in name order, a page at a time.
#[utoipa::path(get, path = "/v1/c", tag = "queries",
    params(("limit" = Option<usize>, Query, maximum = 10000, description = "Most names per page; absent or 0: 1000"),
           ("after" = Option<String>, Query, description = "The `next` of the page before: names after it")),
    responses((status = 200, description = "Collection names, and the `after` of the next page (null at the end)", body = super::openapi::Collections),
              (status = 400, description = "invalid_query: a limit above 10000 or not a number, an after that is no collection name", body = super::openapi::ErrorBody)))]
pub async fn list_collections(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, None)?;
    params.only(&["limit", "after"])?;
    let limit = match params.parse::<usize>("limit", "invalid_query")? {
        None | Some(0) => COLLECTIONS_PAGE_DEFAULT,
        Some(n) if n <= COLLECTIONS_PAGE_MAX => n,
        Some(n) => {
            return Err(ApiError::BadRequest(
                "invalid_query",
                format!("limit {n} exceeds {COLLECTIONS_PAGE_MAX}"),
            ));
        }
    };
    let after = params.0.get("after").map(String::as_str);
    if after.is_some_and(|after| truce::doc::validate_collection_name(after).is_err()) {
        return Err(ApiError::BadRequest(
            "invalid_query",
            "after must be a collection name (^[A-Za-z][A-Za-z0-9_-]{0,63}$), as a page's next is".into(),
        ));
    }
    let (names, more) = match &who.collections {
        // A key of some collections: those of its names that exist, looked
        // up one by one, not every name the database holds looked through.
        Some(own) => {
            let mut own: Vec<&str> = own
                .iter()
                .map(String::as_str)
                .filter(|c| after.is_none_or(|after| *c > after))
                .collect();
            own.sort_unstable();
            own.dedup();
            let mut held = own
                .into_iter()
                .filter(|c| state.db.has_collection(c))
                .map(str::to_string);
            let page: Vec<String> = held.by_ref().take(limit).collect();
            let more = page.len() == limit && held.next().is_some();
            (page, more)
        }
        None => state.db.collections_page(after, limit),
    };
    let next = names.last().filter(|_| more);
    Ok(axum::Json(json!({"collections": names, "next": next})).into_response())
}

/// Lists a collection's indexes with their state.
#[utoipa::path(get, path = "/v1/c/{coll}/_indexes", tag = "queries", params(("coll" = String, Path)),
    responses((status = 200, description = "Indexes", body = super::openapi::Indexes)))]
pub async fn list_indexes(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    params.only(&[])?;
    let indexes: Vec<Value> = state
        .db
        .collection(&coll)?
        .indexes()
        .iter()
        .map(index_json)
        .collect();
    Ok(axum::Json(json!({"indexes": indexes})).into_response())
}

/// Declares an index; existing documents are added in the background.
#[utoipa::path(put, path = "/v1/c/{coll}/_indexes/{name}", tag = "queries",
    params(("coll" = String, Path), ("name" = String, Path)),
    request_body = super::openapi::IndexBody,
    responses((status = 200, description = "Ready", body = super::openapi::Index),
               (status = 202, description = "Building", body = super::openapi::Index),
               (status = 400, description = "Invalid definition", body = super::openapi::ErrorBody)))]
pub async fn put_index(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, name)): PathParams<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Admin, Some(&coll))?;
    params.only(&[])?;
    let invalid = |m: &str| ApiError::Engine(truce::Error::InvalidIndex(m.into()));
    // A misspelt `unique` would otherwise give a non-unique index, for good.
    let keys = body
        .as_object()
        .into_iter()
        .flat_map(|map| map.keys().map(String::as_str));
    if let Some(key) = first_unknown(keys, &["fields", "unique"]) {
        return Err(invalid(&format!(
            "an index takes \"fields\" and \"unique\", not {key:?}"
        )));
    }
    let fields = body
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("\"fields\" must be an array of field paths"))?
        .iter()
        .map(|f| {
            f.as_str()
                .map(String::from)
                .ok_or_else(|| invalid("every field is a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let unique = match body.get("unique") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("\"unique\" must be true or false"))?,
    };
    let collection = state.db.collection(&coll)?;
    let index_name = name.clone();
    let progress =
        blocking(move || collection.create_index(&index_name, IndexSpec { fields, unique })).await?;
    let def = state.db.collection(&coll)?.index_status(&name)?;
    let status = if progress.state == IndexState::Building {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(index_json(&def))).into_response())
}

/// Drops an index: at once it is neither maintained, enforced nor
/// queryable; its entries are deleted in the background, and until they are
/// gone the name cannot be declared again (503 `index_dropping`).
#[utoipa::path(delete, path = "/v1/c/{coll}/_indexes/{name}", tag = "queries",
    params(("coll" = String, Path), ("name" = String, Path)),
    responses((status = 202, description = "Dropped; its entries are being deleted", body = super::openapi::Index),
               (status = 400, description = "`invalid_index` (a name no index can have) or `invalid_query`", body = super::openapi::ErrorBody),
               (status = 404, description = "No such index", body = super::openapi::ErrorBody)))]
pub async fn delete_index(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, name)): PathParams<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Admin, Some(&coll))?;
    params.only(&[])?;
    let collection = state.db.collection(&coll)?;
    let dropped = blocking(move || collection.drop_index(&name)).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(index_json(&dropped))).into_response())
}

/// Queries a collection through an index, or in id order.
#[utoipa::path(get, path = "/v1/c/{coll}", tag = "queries",
    params(("coll" = String, Path), ("index" = Option<String>, Query), ("eq" = Option<String>, Query),
           ("gt" = Option<String>, Query), ("gte" = Option<String>, Query), ("lt" = Option<String>, Query),
           ("lte" = Option<String>, Query), ("limit" = Option<usize>, Query, maximum = 1000, description = "Most documents per page; absent or 0: 100"),
           ("after" = Option<String>, Query), ("order" = Option<String>, Query, pattern = "^(asc|desc)$")),
    responses((status = 200, description = "One page", body = super::openapi::QueryPage),
               (status = 400, description = "Invalid query", body = super::openapi::ErrorBody),
               (status = 404, description = "No such index", body = super::openapi::ErrorBody)))]
pub async fn query(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    let collection = state.db.collection(&coll)?;
    params.only(&["index", "eq", "gt", "gte", "lt", "lte", "order", "limit", "after"])?;
    let index = params.0.get("index").cloned();
    let compound = match &index {
        Some(name) => collection.index_fields(name)? > 1,
        None => false,
    };
    // A one-field index's `eq` is the value itself, an array too (a field
    // may hold one); a compound index's is the array of values.
    let eq = match (params.json("eq")?, &index) {
        (None, _) => Vec::new(),
        (Some(_), None) => return Err(bad("eq needs an index")),
        (Some(Value::Array(values)), Some(_)) if compound => values,
        (Some(_), Some(_)) if compound => {
            return Err(bad("eq of a compound index is a JSON array of values"));
        }
        (Some(value), Some(_)) => vec![value],
    };
    let bound = |name: &str| bound(params.json(name)?, name, compound, &eq);
    let (gt, gte, lt, lte) = (bound("gt")?, bound("gte")?, bound("lt")?, bound("lte")?);
    let order = match params.0.get("order") {
        None => Order::Asc,
        Some(name) => Order::from_name(name).ok_or_else(|| bad(&format!("order={name}: use asc or desc")))?,
    };
    let q = Query {
        index,
        eq,
        gt,
        gte,
        lt,
        lte,
        order,
        limit: params.parse::<usize>("limit", "invalid_query")?.unwrap_or(0),
        after: params.0.get("after").cloned(),
    };
    // Written as JSON where it is read, off the HTTP thread, each document
    // straight from the page (as the feeds' pages are).
    let answer = super::blocking(move || {
        let page = collection.query(&q)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"docs\":[");
        for (i, doc) in page.docs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            doc.write_json(&mut out).map_err(super::unencodable)?;
        }
        out.extend_from_slice(b"],\"next\":");
        serde_json::to_writer(&mut out, &page.next).map_err(super::unencodable)?;
        out.push(b'}');
        Ok(out)
    })
    .await?;
    Ok(super::json_bytes(answer))
}

/// Range bound `name` of a query, as the engine takes it: the value of the
/// index's field after the `eq` prefix. On a compound index the bound is
/// given as API.md has it, the array of the `eq` values and that one more,
/// or as that value alone; an array of another shape is refused, as it
/// would otherwise be read as an array value and find nothing.
fn bound(value: Option<Value>, name: &str, compound: bool, eq: &[Value]) -> Result<Option<Value>, ApiError> {
    match value {
        Some(Value::Array(mut values)) if compound => {
            let extends_eq = values.len() == eq.len() + 1
                && values
                    .iter()
                    .zip(eq)
                    .all(|(v, e)| truce::value_order::compare(v, e).is_eq());
            if !extends_eq {
                return Err(bad(&format!(
                    "{name} of a compound index is the array of the eq values ({}) and one value more \
                     for the next field, or that value alone",
                    Value::Array(eq.to_vec())
                )));
            }
            Ok(values.pop())
        }
        value => Ok(value),
    }
}

fn bad(message: &str) -> ApiError {
    ApiError::Engine(truce::Error::InvalidQuery(message.into()))
}
