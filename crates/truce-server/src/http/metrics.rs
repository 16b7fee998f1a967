//! `GET /metrics`: Prometheus (OpenMetrics text) metrics of the engine and of
//! the HTTP layer.
//!
//! The engine's counters are read at scrape time from [`Db::stats`] by a
//! collector; request latency is observed here, by method, route template and
//! status. Label values are bounded: routes are templates (`/v1/c/{coll}/{id}`,
//! never a path), collections and sources are bounded by the engine
//! ([`truce::limits::INSIGHT_LABEL_SETS_MAX`]) and document ids never appear.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeLabelSet, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use truce::{Db, Family as Counted};

use super::AppState;
use super::error::ApiError;
use super::extract::authorize;
use crate::keys::{Principal, Role};

/// The labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// The route template, or `unmatched`.
    pub route: Cow<'static, str>,
    /// The status code.
    pub status: u16,
}

/// A method's label: HTTP's own methods by name, any other `other`. A
/// method is any token a client sends, before it is authenticated: labelled
/// by name, made-up ones would each add a label set for good (500,000 of
/// them took 340 MB, and a scrape 1.2 GB).
fn method_label(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    })
}

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
}

impl Metrics {
    /// A registry over `db`'s counters, the HTTP request histogram and the
    /// answers being sent.
    pub fn new(
        db: Db,
        answers: &super::answers::Answers,
        connections: &crate::serve::Connections,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("truce");
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to about 13 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by method, route template and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(EngineCollector(db)));
        answers.register(&mut registry);
        connections.register(&mut registry);
        Metrics { registry, requests }
    }

    /// Counts one answered request. Labels that are constants are borrowed,
    /// so the direct document path allocates nothing here.
    pub fn observe_request(&self, method: &Method, route: Cow<'static, str>, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route,
                status,
            })
            .observe(seconds);
    }

    /// The OpenMetrics text of everything.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the engine's counters at scrape time.
struct EngineCollector(Db);

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// A histogram already counted elsewhere.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a truce::engine::insights::Histogram);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), fmt::Error> {
        let h = self.0;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(h.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter<N: EncodeCounterValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &truce::engine::insights::Histogram,
) -> fmt::Result {
    let metric = ConstHistogram(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.stats();
        let e = &mut encoder;
        counter(
            e,
            "commits",
            "Commits that wrote (one sequence number each)",
            s.commits,
        )?;
        counter(
            e,
            "group_commits",
            "Group commits stored, one fsync each",
            s.groups,
        )?;
        histogram(
            e,
            "group_commit_size",
            "Requests evaluated per group commit",
            &s.group_size,
        )?;
        histogram(
            e,
            "fsync_seconds",
            "Time to write and fsync one group commit",
            &s.fsync_seconds,
        )?;
        gauge(
            e,
            "commit_queue_depth",
            "Write requests waiting for the committer",
            s.queue_depth as f64,
        )?;
        counter(
            e,
            "committer_poll_seconds",
            "Time the committer spent polling its empty queue before blocking, or for more requests to fill a group (CPU used while waiting)",
            s.commit_poll_seconds,
        )?;
        counter(
            e,
            "writes",
            "Document changes (created, updated, deleted)",
            s.writes,
        )?;
        counter(
            e,
            "noop_writes",
            "Writes whose result equalled the document: nothing written",
            s.noops,
        )?;
        counter(
            e,
            "skipped_writes",
            "Conditional writes skipped by $if with $else skip",
            s.skipped,
        )?;
        counter(
            e,
            "idempotent_replays",
            "Answers replayed for a known Idempotency-Key",
            s.replays,
        )?;
        counter(
            e,
            "ttl_deletions",
            "Documents deleted by the TTL sweeper",
            s.ttl_deleted,
        )?;
        counter(
            e,
            "tombstones_purged",
            "Tombstones purged after their collection's tombstones.keep_seconds",
            s.tombstones_purged,
        )?;
        gauge(
            e,
            "outbox_entries",
            "after_commit counter increments not yet applied",
            s.outbox_entries as f64,
        )?;
        gauge(
            e,
            "outbox_oldest_age_seconds",
            "Age of the oldest waiting after_commit increment (0 when none)",
            s.outbox_oldest_age_ms.unwrap_or(0) as f64 / 1000.0,
        )?;
        gauge(
            e,
            "storage_failed",
            "1 once a storage write failed (writes are refused until a restart; /healthz says why), else 0",
            f64::from(u8::from(self.0.health().is_err())),
        )?;
        let disk = self.0.disk();
        if let Some(free) = disk.free_bytes {
            gauge(
                e,
                "disk_free_bytes",
                "Bytes free to the server on the data directory's filesystem, as last looked at (at least once a second)",
                free as f64,
            )?;
        }
        gauge(
            e,
            "disk_reserve_bytes",
            "The space kept free (--min-free-disk-mib and room for compactions) below which writes that add data are refused",
            disk.reserve_bytes as f64,
        )?;
        gauge(
            e,
            "disk_refusing_writes",
            "1 while writes that add data are refused for want of disk space (507 insufficient_storage), else 0",
            f64::from(u8::from(disk.refusing)),
        )?;
        gauge(
            e,
            "collections",
            "Collections the database holds (each made by its first write, never removed)",
            self.0.collection_count() as f64,
        )?;
        gauge(
            e,
            "collections_max",
            "The most collections the database may hold (--max-collections): a write that would make one more is refused",
            self.0.options().collections_max as f64,
        )?;
        let pages = self.0.page_memory();
        gauge(
            e,
            "page_memory_held_bytes",
            "Bytes the pages being read hold of --page-memory-mib (their documents, from when they are read until the answer is encoded)",
            pages.held() as f64,
        )?;
        counter(
            e,
            "page_memory_refusals",
            "Times a document of a page being read found no room in --page-memory-mib: the page ended early, was refused with 429 overloaded, or will be read again (long polls, streams)",
            pages.refused(),
        )?;
        gauge(
            e,
            "insights_tracked_keys",
            "Documents and ranges the hot-spot tracker holds",
            s.tracked_keys as f64,
        )?;
        gauge(
            e,
            "insights_tracker_bytes",
            "Approximate memory of the hot-spot tracker",
            s.tracker_bytes as f64,
        )?;
        let families = [
            (
                Counted::Conflicts,
                "conflicts",
                "Writes and transactions refused, by reason, collection and source",
            ),
            (
                Counted::Retries,
                "retries",
                "Write requests that declared themselves retries (Truce-Attempt > 1)",
            ),
            (
                Counted::PermanentFailures,
                "permanent_failures",
                "Refusals answered to a declared last attempt (Truce-Attempt: n/n)",
            ),
            (
                Counted::Overwrites,
                "lww_overwrites",
                "Blind full replaces of a document another source changed within the last minute",
            ),
        ];
        for (family, name, help) in families {
            let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (_, reason, collection, source, value) in s.labelled.iter().filter(|l| l.0 == family) {
                let mut labels = vec![("collection", collection.as_str()), ("source", source.as_str())];
                if family == Counted::Conflicts {
                    labels.insert(0, ("reason", reason));
                }
                ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The metrics, as OpenMetrics text. Needs a key whose role can read every
/// collection (labels name collections).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
               (status = 403, description = "The key is limited to some collections", body = super::openapi::ErrorBody)))]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, None)?;
    if who.collections.is_some() {
        return Err(ApiError::Forbidden(
            "metrics name every collection: use a key that is not limited to some".into(),
        ));
    }
    let text = state.metrics.render().map_err(|e| {
        tracing::error!("metrics encoding failed: {e}");
        ApiError::Engine(truce::Error::Unavailable(
            "the metrics could not be encoded".into(),
        ))
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
