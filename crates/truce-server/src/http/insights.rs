//! `GET /v1/insights`: where conflicts come from and what to do about them
//! (docs/insights.md), and `GET /dashboard`, the page that shows it live.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use truce::{CONFLICT_CODES, Family, HotSpot, Target};

use super::AppState;
use super::error::ApiError;
use super::extract::{Params, authorize};
use crate::keys::{Principal, Role};

/// Default window of `/v1/insights`, in seconds.
const WINDOW_S_DEFAULT: u64 = 300;
/// Default number of hot spots listed.
const LIMIT_DEFAULT: usize = 10;

fn hot_spot_json(h: &HotSpot) -> Value {
    let conflicts: serde_json::Map<String, Value> = CONFLICT_CODES
        .iter()
        .zip(h.counts.conflicts)
        .filter(|(_, n)| *n > 0)
        .map(|(code, n)| (code.to_string(), json!(n)))
        .collect();
    let sources: Vec<Value> = h
        .sources
        .iter()
        // A write without `Truce-Source` is the source "", as in the totals
        // and in /metrics.
        .map(|(source, n)| json!({"source": source.as_deref().unwrap_or(""), "events": n}))
        .collect();
    let mut spot = json!({
        "collection": h.collection,
        "score": h.score,
        "error": h.error,
        "rate_per_s": (h.rate_per_s * 1000.0).round() / 1000.0,
        "conflicts": conflicts,
        "numbers_only_conflicts": h.counts.numbers_only,
        "retries": h.counts.retries,
        "permanent_failures": h.counts.permanent_failures,
        "overwrites": h.counts.overwrites,
        "noops": h.counts.noops,
        "skipped": h.counts.skipped,
        "outbox_deltas": h.counts.outbox_deltas,
        "contended_writes": h.counts.contended,
        "writes": h.counts.writes,
        "sources": sources,
        "other_sources": h.other_sources,
        "remedy": {"code": h.remedy.code, "advice": h.remedy.advice},
    });
    match &h.target {
        Target::Document(id) => spot["document"] = json!(id),
        Target::Range(what) => spot["range"] = json!(what),
    }
    spot
}

/// Hot spots over a window, with totals since the server started.
#[utoipa::path(get, path = "/v1/insights", tag = "operations",
    params(("window" = Option<u64>, Query, minimum = 1, maximum = 3600,
               description = "Seconds, 1 to 3600 (default 300); counted by whole minutes, so the hot spots cover the window and up to a minute more (covered_s)"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 100,
               description = "Hot spots listed, 1 to 100 (default 10)")),
    responses((status = 200, description = "Hot spots with remedies, and totals", body = super::openapi::Insights),
               (status = 400, description = "A window or limit out of range", body = super::openapi::ErrorBody)))]
pub async fn insights(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, None)?;
    params.only(&["window", "limit"])?;
    let window = params
        .parse::<u64>("window", "invalid_query")?
        .unwrap_or(WINDOW_S_DEFAULT);
    let limit = params
        .parse::<usize>("limit", "invalid_query")?
        .unwrap_or(LIMIT_DEFAULT);
    // Counts past the engine's label limit are kept under `_other`, whatever
    // their collection: a key limited to some collections cannot be shown
    // them (no collection name starts with `_`, so only an unlimited key may).
    let visible = |collection: &str| who.may_access(collection);
    // Its own `limit` hottest: cut after the others are left out, they
    // would take its places (and say how many rank above).
    let report = state
        .db
        .insights_of(Duration::from_secs(window), limit, &visible)?;
    let stats = state.db.stats();
    let totals_by = |family: Family| -> (u64, BTreeMap<String, u64>) {
        let mut total = 0;
        let mut by_source = BTreeMap::new();
        for (_, _, collection, source, n) in stats.labelled.iter().filter(|l| l.0 == family) {
            if visible(collection) {
                total += n;
                *by_source.entry(source.clone()).or_insert(0) += n;
            }
        }
        (total, by_source)
    };
    let (conflicts, conflicts_by_source) = totals_by(Family::Conflicts);
    let (retries, retries_by_source) = totals_by(Family::Retries);
    let (permanent_failures, _) = totals_by(Family::PermanentFailures);
    let (overwrites, _) = totals_by(Family::Overwrites);
    let mut conflicts_by_reason = BTreeMap::new();
    for (_, reason, collection, _, n) in stats.labelled.iter().filter(|l| l.0 == Family::Conflicts) {
        if visible(collection) {
            *conflicts_by_reason.entry(reason.to_string()).or_insert(0) += n;
        }
    }
    let hot_spots: Vec<Value> = report.hot_spots.iter().map(hot_spot_json).collect();
    Ok(axum::Json(json!({
        "window_s": report.window_s,
        "covered_s": (report.covered_s * 10.0).round() / 10.0,
        "totals": {
            "commits": stats.commits,
            "group_commits": stats.groups,
            "writes": stats.writes,
            "conflicts": conflicts,
            "conflicts_by_reason": conflicts_by_reason,
            "conflicts_by_source": conflicts_by_source,
            "retries": retries,
            "retries_by_source": retries_by_source,
            "permanent_failures": permanent_failures,
            "overwrites": overwrites,
            "noops": stats.noops,
            "skipped": stats.skipped,
            "replays": stats.replays,
            "ttl_deletions": stats.ttl_deleted,
            "tombstones_purged": stats.tombstones_purged,
            "queue_depth": stats.queue_depth,
            "outbox": {"entries": stats.outbox_entries, "oldest_age_ms": stats.outbox_oldest_age_ms},
        },
        "hot_spots": hot_spots,
    }))
    .into_response())
}

/// The dashboard page: one self-contained HTML file, no external assets.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The live dashboard (docs/insights.md). The page itself needs no key; it asks
/// for one when `/v1/insights` answers 401.
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String)))]
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}
