//! Collection configuration (TTL, counter caches) and counters:
//! `GET|PUT /v1/c/{coll}/_config`, `POST /v1/c/{coll}/_counters/{name}/recount`,
//! `GET /v1/_outbox`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use truce::CollectionConfig;
use truce::engine::RecountReport;

use super::error::ApiError;
use super::extract::{JsonBody, Params, PathParams, authorize};
use super::{AppState, blocking};
use crate::keys::{Principal, Role};

/// A recount report as JSON: `{"checked", "fixed": [{"group", "was", "now"}],
/// "unfixable": [{"group", "holds"}], "seq"}`. The CLI (`truce recount`)
/// prints the same.
pub fn recount_json(report: &RecountReport) -> Value {
    let fixed: Vec<Value> = report
        .fixed
        .iter()
        .map(|f| json!({"group": f.group, "was": f.was, "now": f.now}))
        .collect();
    let unfixable: Vec<Value> = report
        .unfixable
        .iter()
        .map(|(group, holds)| json!({"group": group, "holds": holds}))
        .collect();
    json!({"checked": report.checked, "fixed": fixed, "unfixable": unfixable, "seq": report.seq})
}

/// Refuses unless `who` may also write every collection the counters write:
/// a counter's targets are written on the caller's behalf.
fn authorize_targets(who: &Principal, config: &CollectionConfig) -> Result<(), ApiError> {
    for counter in &config.counters {
        authorize(who, Role::Admin, Some(&counter.target_collection))?;
    }
    Ok(())
}

/// Reads a collection's configuration (empty when none was set).
#[utoipa::path(get, path = "/v1/c/{coll}/_config", tag = "configuration", params(("coll" = String, Path)),
    responses((status = 200, description = "The configuration", body = super::openapi::Config)))]
pub async fn get_config(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    params.only(&[])?;
    let config = state.db.collection(&coll)?.config();
    Ok(axum::Json(config.to_json()).into_response())
}

/// Replaces a collection's configuration. It applies from the next commit on;
/// counters that are new or defined anew, or whose backfill a crash
/// interrupted, are backfilled from the documents already there.
#[utoipa::path(put, path = "/v1/c/{coll}/_config", tag = "configuration", params(("coll" = String, Path)),
    request_body = super::openapi::ConfigBody,
    responses((status = 200, description = "The stored configuration, and the backfill of each counter that needed one",
               body = super::openapi::ConfigAnswer)))]
pub async fn put_config(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Admin, Some(&coll))?;
    params.only(&[])?;
    let collection = state.db.collection(&coll)?;
    let config = CollectionConfig::from_json(&body)?;
    authorize_targets(&who, &config)?;
    let stored = config.to_json();
    // Removing or redefining a counter changes what its targets hold too: a
    // key that could not declare it may not take it away. Judged by the
    // configuration it replaces, read and replaced under the lock, so that no
    // change slips in between (a global admin's counter into a collection
    // this key may not write, which it would then remove). The guard goes
    // with the store, so a request that times out still holds it until then,
    // and the backfills run in the same blocking task after it is released:
    // a request dropped between the two would otherwise leave them waiting
    // for the next open.
    let one_at_a_time = Arc::clone(&state.config_changes).lock_owned().await;
    authorize_targets(&who, &collection.config())?;
    let reports = blocking(move || {
        let stored = collection.store_config(config);
        drop(one_at_a_time);
        stored?;
        collection.backfill_pending()
    })
    .await?;
    let backfill: Map<String, Value> = reports
        .iter()
        .map(|(name, report)| (name.clone(), recount_json(report)))
        .collect();
    let mut answer = stored;
    answer["backfill"] = Value::Object(backfill);
    Ok(axum::Json(answer).into_response())
}

/// Recomputes a counter from its source documents and fixes the targets that
/// are wrong, with increments (so concurrent writes are never lost).
#[utoipa::path(post, path = "/v1/c/{coll}/_counters/{name}/recount", tag = "configuration",
    params(("coll" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "What was checked and fixed", body = super::openapi::RecountAnswer),
               (status = 404, description = "No such counter", body = super::openapi::ErrorBody)))]
pub async fn recount(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams((coll, name)): PathParams<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Admin, Some(&coll))?;
    params.only(&[])?;
    let collection = state.db.collection(&coll)?;
    authorize_targets(&who, &collection.config())?;
    let report = blocking(move || collection.recount(&name)).await?;
    Ok(axum::Json(recount_json(&report)).into_response())
}

/// `after_commit` counter increments not yet applied, and the age of the oldest.
#[utoipa::path(get, path = "/v1/_outbox", tag = "configuration",
    responses((status = 200, description = "The counter outbox", body = super::openapi::OutboxStatus)))]
pub async fn outbox(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, None)?;
    params.only(&[])?;
    let (entries, oldest_age_ms) = state.db.outbox_status();
    Ok(axum::Json(json!({"entries": entries, "oldest_age_ms": oldest_age_ms})).into_response())
}
