//! The HTTP API v1 (API.md) on axum: routes, shared state, and the layers every
//! request passes (logging, authentication, concurrency limit, timeout).
//!
//! HTTP ends here: handlers turn requests into engine calls and engine answers
//! into JSON; the engine knows nothing about HTTP.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;
use tower::util::Either;
use truce::Db;

pub mod answers;
pub mod backup;
mod changes;
pub(crate) mod config;
pub mod cors;
mod couch;
mod documents;
pub mod error;
pub mod extract;
pub mod fast;
mod insights;
pub mod metrics;
pub mod openapi;
mod queries;
mod replication;
mod tx;

use crate::keys::{AuthFailure, KeyStore, Principal, Role};
use error::ApiError;

/// Longest `Truce-Source` label logged; longer ones are cut.
const SOURCE_BYTES_MAX: usize = 64;

/// Scrapes of `/metrics` served at once, on places of their own: an
/// overload that takes every request's place is what monitoring must see,
/// and a scraper gone wild takes no request's place either.
pub const SCRAPES_AT_ONCE: usize = 8;

/// What every handler shares.
pub struct AppState {
    /// The database.
    pub db: Db,
    /// API keys (none since the start: no authentication).
    pub keys: KeyStore,
    /// Requests being served; none waits for a permit.
    pub permits: Arc<Semaphore>,
    /// Long polls waiting and event streams open, as many again: held for
    /// up to two minutes (a long poll) or for good (a stream), they would
    /// otherwise take every request's permit (and `/healthz`'s). A stream
    /// holds its permit until it ends (`stream_permit`): each commit wakes
    /// the open streams of its collections (and all of the feed of every
    /// collection), so an unbounded number of them slowed all writes.
    pub long_polls: Arc<Semaphore>,
    /// The places among them each API key holds (`--max-streams-per-key`),
    /// taken with its [`extract::Standing`].
    pub key_streams: extract::KeyStreams,
    /// Scrapes of `/metrics` being served (`SCRAPES_AT_ONCE`).
    pub scrapes: Semaphore,
    /// Answers being sent, counted against `--answer-memory-mib`.
    pub answers: Arc<answers::Answers>,
    /// The largest request body (`--max-body-bytes`).
    pub max_body_bytes: usize,
    /// Request bodies over `extract::PARSE_ON_THREAD_BYTES_MAX` parsed at
    /// once in the blocking pool: one per HTTP thread, as many as when each
    /// was parsed on its own HTTP thread (a body's parsed values take many
    /// times its bytes).
    pub parses: Arc<Semaphore>,
    /// Memory for request bodies being received (`--body-memory-mib`,
    /// `extract::Receiving`).
    pub bodies: Arc<truce::budget::Budget>,
    /// Non-streaming requests time out after this.
    pub request_timeout: Duration,
    /// `/metrics`: the engine's counters and request latency.
    pub metrics: metrics::Metrics,
    /// Origins whose pages may call the API (`--cors-origins`); a write from a
    /// page of any other origin is refused (`cors::cross_origin_write`).
    pub cors_origins: Vec<String>,
    /// `--insecure-no-auth`: a server without keys answers requests addressed
    /// to it by any name, not only by a loopback one (`cors::rebound`).
    pub any_host: bool,
    /// The data directory (where the API keys are, and where a backup may not go).
    pub data: std::path::PathBuf,
    /// Held while a collection's configuration is judged and replaced
    /// (`config::put_config`), one change at a time.
    pub config_changes: Arc<tokio::sync::Mutex<()>>,
    /// The running or last backup (`/v1/_backup`).
    pub backups: backup::Backups,
    /// Turns true when the server starts shutting down (`Waited::Stopping`).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The `warn` line of a 5xx answer, at most one a second.
    pub server_errors: crate::log::Throttle,
}

/// Health: 200 while the storage works (`status` says whether writes that add
/// data are refused for want of disk space), 503 after a storage failure.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The storage works: `ok`, or `insufficient_storage` while writes that add data are refused for want of disk space", body = openapi::Health),
               (status = 503, description = "Storage failed; writes are refused", body = openapi::ErrorBody)))]
pub async fn healthz(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.db.health()?;
    let disk = state.db.disk();
    let status = if disk.refusing {
        "insufficient_storage"
    } else {
        "ok"
    };
    // A load balancer needs no key, and gets the status alone: how fast the
    // database commits and how much disk it has are not for anyone who can
    // reach the port of a server with keys. Any valid key sees them.
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if state.keys.caller(authorization).is_err() {
        return Ok(Json(json!({ "status": status })).into_response());
    }
    Ok(Json(json!({
        "status": status,
        "durable_seq": state.db.durable_seq(),
        "disk": {
            "free_bytes": disk.free_bytes,
            "reserve_bytes": disk.reserve_bytes,
            "refusing_writes": disk.refusing,
        },
    }))
    .into_response())
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

/// Runs blocking engine work (a recount reads a whole collection, an index
/// declaration or drop waits for its commit) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> truce::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work).await.map_err(not_joined)??)
}

/// A blocking task that did not finish (it panicked, or the runtime is
/// going away).
pub(crate) fn not_joined(e: tokio::task::JoinError) -> ApiError {
    ApiError::Engine(truce::Error::Unavailable(e.to_string()))
}

/// An answer already written as JSON bytes (large answers are, off the HTTP
/// threads, without a `Value` of their own first).
/// The database's history epoch (`Db::epoch`), once a reader's position
/// given in history `given` (its checkpoint's, or its `epoch` parameter) is
/// known to be in it. One of another history (the database was restored
/// from a backup since) is refused, 410 as a purged history is, which a
/// replica answers by reading everything again: its sequence numbers are
/// handed out again, and reading on from it would skip changes for good.
pub(crate) fn same_history(db: &truce::Db, given: Option<u64>) -> Result<u64, ApiError> {
    let epoch = db.epoch();
    match given {
        Some(given) if given != epoch => Err(ApiError::OtherHistory { given, epoch }),
        _ => Ok(epoch),
    }
}

pub(crate) fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Why an answer could not be written as JSON: into memory, only a map key
/// that is not a string fails, which no stored document holds.
pub(crate) fn unencodable(e: serde_json::Error) -> truce::Error {
    truce::Error::Unavailable(format!("cannot encode the answer: {e}"))
}

/// A JSON array of an answer that must be whole, written as its elements
/// come: refused past [`WHOLE_PAGE_BYTES_MAX`](truce::limits::WHOLE_PAGE_BYTES_MAX)
/// (413) as it grows, instead of being built whole, and, when
/// [`counted`](Self::counted), its bytes taken from the memory of the pages
/// being read until it is dropped: past its room, beside the other pages
/// being read, [`PagesOverBudget`](truce::Error::PagesOverBudget) (429).
#[derive(Default)]
pub(crate) struct WholeArray {
    /// The elements, comma-separated.
    json: Vec<u8>,
    len: usize,
    taken: Option<truce::budget::Taken>,
}

impl WholeArray {
    /// An array whose bytes count against `pages`.
    pub(crate) fn counted(pages: &Arc<truce::budget::Budget>) -> WholeArray {
        WholeArray {
            taken: Some(truce::budget::Taken::new(pages)),
            ..WholeArray::default()
        }
    }

    /// Appends the element `write` writes.
    pub(crate) fn push<E: From<truce::Error>>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let before = self.json.len();
        if self.len > 0 {
            self.json.push(b',');
        }
        write(&mut self.json)?;
        self.len += 1;
        truce::engine::read::whole_page_holds(self.json.len())?;
        let grown = self.json.len() - before;
        if self.taken.as_mut().is_some_and(|taken| !taken.take(grown)) {
            return Err(truce::Error::PagesOverBudget.into());
        }
        Ok(())
    }

    /// How many elements it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `[`, the elements, `]` to `out`.
    pub(crate) fn write_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.json.len() + 2);
        out.push(b'[');
        out.extend_from_slice(&self.json);
        out.push(b']');
    }
}

/// An event's data from an answer's bytes, which hold UTF-8 unless a
/// stored document's record was damaged (its bytes are copied, not decoded).
pub(crate) fn event_text(data: Vec<u8>) -> truce::Result<String> {
    String::from_utf8(data).map_err(|_| {
        truce::Error::Storage(truce::storage::StorageError::Corrupt(
            "a stored document is not UTF-8".into(),
        ))
    })
}

/// `page` with each document as stored, as the feeds read them
/// (`changes_from_stored`, `changes_after_stored`): for tests that hold what
/// is written from the bytes equal to what is written from the values.
#[cfg(test)]
pub(crate) fn stored_changes(page: &[truce::Change]) -> Vec<truce::Change<truce::record::StoredDoc>> {
    page.iter()
        .map(|c| truce::Change {
            seq: c.seq,
            collection: c.collection.clone(),
            id: c.id.clone(),
            rev: c.rev,
            deleted: c.deleted,
            doc: c.doc.as_ref().map(|d| {
                let record = truce::record::encode_document(&d.meta, &truce::doc::canonical_bytes(&d.body));
                truce::record::StoredDoc::read(&c.id, record).unwrap()
            }),
        })
        .collect()
}

async fn no_route(uri: Uri) -> Response {
    if uri.path().starts_with("/couch/") {
        // CouchDB's clients read `reason`, as on every other /couch answer;
        // marked as `/v1`'s is (a base URL of `…/couch` given to a client of
        // the `/v1` API must not read as missing data).
        let body = json!({
            "error": "not_found",
            "no_route": true,
            "reason": "no such route: Truce serves the part of CouchDB's API that RxDB's CouchDB replication \
                       uses (see docs/replication.md)",
        });
        return (axum::http::StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    ApiError::NoRoute.into_response()
}

async fn no_method() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The server's service over `state`: the document routes' direct path
/// (`fast.rs`) in front of the router, and CORS (`cors.rs`) in front of both
/// when `state.cors_origins` allows any.
pub fn app(state: Arc<AppState>) -> Service {
    let router = router(Arc::clone(&state));
    let cors = (!state.cors_origins.is_empty()).then(|| state.cors_origins.clone());
    let app = fast::App::new(state, router);
    match cors {
        None => Either::Right(app),
        Some(origins) => Either::Left(cors::WithCors::new(&origins, app)),
    }
}

/// The server's service: [`fast::App`], behind CORS when origins are allowed
/// (with none, nothing is in front of it).
pub type Service = Either<cors::WithCors, fast::App>;

/// Builds the router over `state`, with its body limit.
///
/// Every request passes one `front` layer (log line, latency metric,
/// concurrency limit); API routes pass one `guard` layer (authentication and
/// the request timeout), streams only the authentication. Few layers: each
/// costs a boxed service clone per request.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/c", get(queries::list_collections))
        .route("/v1/c/{coll}", get(queries::query))
        .route("/v1/c/{coll}/_indexes", get(queries::list_indexes))
        .route(
            "/v1/c/{coll}/_indexes/{name}",
            put(queries::put_index).delete(queries::delete_index),
        )
        .route(
            "/v1/c/{coll}/_config",
            get(config::get_config).put(config::put_config),
        )
        .route("/v1/c/{coll}/_counters/{name}/recount", post(config::recount))
        .route("/v1/_outbox", get(config::outbox))
        .route(
            "/v1/_backup",
            get(backup::status).post(backup::start).delete(backup::stop),
        )
        .route(
            "/v1/c/{coll}/{id}",
            get(documents::get_doc)
                .put(documents::put_doc)
                .patch(documents::patch_doc)
                .delete(documents::delete_doc),
        )
        .route("/v1/tx", post(tx::transaction))
        .route("/v1/insights", get(insights::insights))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/c/{coll}/_pull", get(replication::pull))
        .route("/v1/c/{coll}/_push", post(replication::push))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard));
    // Streams (long poll, SSE) are exempt from the request timeout.
    let streams = Router::new()
        .route("/v1/c/{coll}/_changes", get(changes::collection_changes))
        .route("/v1/_changes", get(changes::all_changes))
        .route("/v1/c/{coll}/_pull/stream", get(replication::pull_stream))
        .route("/couch/{coll}/_changes", get(couch::changes))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), authenticate));
    let couch = Router::new()
        .route("/couch/{coll}/", get(couch::info).put(couch::create))
        .route("/couch/{coll}", get(couch::info).put(couch::create))
        .route(
            "/couch/{coll}/_all_docs",
            get(couch::all_docs_get).post(couch::all_docs_post),
        )
        .route("/couch/{coll}/_bulk_docs", post(couch::bulk_docs))
        .route(
            "/couch/{coll}/{id}",
            get(couch::get_doc)
                .put(couch::put_doc)
                .delete(couch::delete_doc)
                .fallback(couch::doc_other_method),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard));
    api.merge(streams)
        .merge(couch)
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .route("/dashboard", get(insights::dashboard))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), front))
        // Outside `front`, so that its 429 under /couch is CouchDB-shaped too.
        .layer(middleware::from_fn(couch::error_shape))
        .with_state(state)
}

/// The caller named by the request's API key (anyone when the server never
/// had keys); the refusal otherwise, also of a write a page of an origin not
/// allowed sent (`cors::cross_origin_write`), and, on a server without keys,
/// of a request addressed to it by a name that is not a loopback one
/// (`cors::rebound`).
fn principal(
    state: &AppState,
    version: Version,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    if let Some(refusal) = cors::host_refusal(version, headers) {
        return Err(refusal.into_response());
    }
    if let Some(refusal) = cors::cross_origin_write(&state.cors_origins, method, headers) {
        return Err(refusal.into_response());
    }
    // Two keys: whichever were taken, the caller may have meant the other
    // (a proxy adding its own to the client's).
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        let twice = "Authorization is sent twice; a request takes one key".to_string();
        return Err(ApiError::BadRequest("invalid_request", twice).into_response());
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let who = state.keys.caller(authorization).map_err(|failure| {
        let why = match failure {
            AuthFailure::Missing => "send Authorization: Bearer <key>",
            AuthFailure::Invalid => "this key is not valid",
            AuthFailure::NoKeys => {
                "this server has no API keys (the last was revoked while it ran), and it does not \
                     fall open: create one with `truce keys create`"
            }
        };
        ApiError::Unauthorized(why).into_response()
    })?;
    if who.keyless
        && !state.any_host
        && let Some(refusal) = cors::rebound(uri, headers)
    {
        return Err(refusal.into_response());
    }
    Ok(who)
}

/// The role a request needs before its body is read: `method` on route
/// `template` where it can only write (every write route but `/v1/tx`,
/// whose ops decide its role), or only administer. `None` for a method a
/// route lacks (its 405 or 404 stays), and for a read that carries a body
/// (`/couch`'s `_all_docs`).
fn role_before_body(method: &Method, template: &str) -> Option<Role> {
    const DOCUMENT: &str = "/v1/c/{coll}/{id}";
    const INDEX: &str = "/v1/c/{coll}/_indexes/{name}";
    const COUCH_DOCUMENT: &str = "/couch/{coll}/{id}";
    match (method.as_str(), template) {
        ("PUT", INDEX | "/v1/c/{coll}/_config")
        | ("DELETE", INDEX)
        | ("POST", "/v1/c/{coll}/_counters/{name}/recount" | "/v1/_backup") => Some(Role::Admin),
        ("PUT", DOCUMENT | COUCH_DOCUMENT | "/couch/{coll}/" | "/couch/{coll}")
        | ("PATCH", DOCUMENT)
        | ("DELETE", DOCUMENT | COUCH_DOCUMENT)
        | ("POST", "/v1/c/{coll}/_push" | "/couch/{coll}/_bulk_docs") => Some(Role::Write),
        _ => None,
    }
}

/// Refuses, before its body is read, a request to a route that can only
/// write or administer ([`role_before_body`]) from a key whose role is
/// short of it, or that may not use the collection its path names. The
/// handler refused it only after taking and parsing its body, so a read
/// key could make the server parse bodies up to `--max-body-bytes`, and
/// was told 400 for one that was not JSON. The handlers still check the
/// role each route needs.
fn refused_before_body(who: &Principal, method: &Method, template: &str, path: &str) -> Result<(), ApiError> {
    let Some(role) = role_before_body(method, template) else {
        return Ok(());
    };
    // The collection as the router decodes it (`%61` is `a`); one that
    // does not decode is refused by the route before its body is read.
    let collection = path
        .strip_prefix("/v1/c/")
        .or_else(|| path.strip_prefix("/couch/"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|name| percent_encoding::percent_decode_str(name).decode_utf8().ok());
    extract::authorize(who, role, collection.as_deref())
}

/// Verifies the API key and attaches the caller; the refusal otherwise
/// (also of a write its key may not make: [`refused_before_body`]).
fn verify(state: &AppState, request: &mut Request) -> Result<(), Response> {
    let principal = principal(
        state,
        request.version(),
        request.method(),
        request.uri(),
        request.headers(),
    )?;
    if let Some(template) = request.extensions().get::<MatchedPath>() {
        refused_before_body(
            &principal,
            request.method(),
            template.as_str(),
            request.uri().path(),
        )
        .map_err(IntoResponse::into_response)?;
    }
    request.extensions_mut().insert(principal);
    Ok(())
}

/// Authentication only (streams).
async fn authenticate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    match verify(&state, &mut request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

/// Authentication, then the request timeout.
async fn guard(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    if let Err(refusal) = verify(&state, &mut request) {
        return refusal;
    }
    timed(&state, next.run(request)).await
}

/// `serve`'s response, or `timeout` once the request timeout has passed;
/// `request_timeout` (408) instead if the request's body was still arriving
/// then ([`extract::RECEIVING`]): nothing was done, the client was too slow.
async fn timed(state: &AppState, serve: impl Future<Output = Response>) -> Response {
    let timed = async {
        match tokio::time::timeout(state.request_timeout, serve).await {
            Ok(response) => response,
            Err(_) if extract::RECEIVING.with(std::cell::Cell::get) => {
                ApiError::BodyTooSlow(state.request_timeout).into_response()
            }
            Err(_) => ApiError::Timeout.into_response(),
        }
    };
    extract::RECEIVING.scope(std::cell::Cell::new(false), timed).await
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> String {
    let text = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    text.chars().take(SOURCE_BYTES_MAX).collect()
}

/// What every request passes first: the concurrency limit (429 at once rather
/// than a queue), the latency metric by method, route template and status, and
/// a log line (method, route, status, latency, source, attempt) — at `debug`
/// level, or `warn` for a 5xx.
async fn front(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(matched) => RouteName::Template(matched.clone()),
        None => RouteName::Unmatched,
    };
    let observed = Observed::begin(request.method(), route, request.uri(), request.headers());
    // What monitoring reads during an incident is never refused.
    let read = request.method().is_safe() && request.uri().path() != "/metrics";
    let response = match permits_of(&state, request.uri()) {
        // A load balancer's check is answered whatever the load.
        None => next.run(request).await,
        Some(permits) => limited(permits, next.run(request)).await,
    };
    let response = state.answers.hold(read, response).await;
    observed.end(&state, &response);
    response
}

/// The permits a request takes: none for `/healthz`, their own for
/// `/metrics` and for a long poll of the change feed (`feed=longpoll` as
/// the handler decodes it, so a percent-encoded one counts too).
fn permits_of<'a>(state: &'a AppState, uri: &Uri) -> Option<&'a Semaphore> {
    let path = uri.path();
    let long_poll = || {
        uri.query().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(name, value)| name == "feed" && value == "longpoll")
        })
    };
    if path == "/healthz" {
        None
    } else if path == "/metrics" {
        Some(&state.scrapes)
    } else if path.ends_with("/_changes") && long_poll() {
        Some(&state.long_polls)
    } else {
        Some(&state.permits)
    }
}

/// A place among [`AppState::long_polls`] for an event stream, held until
/// the stream is dropped; `overloaded` when none is free.
pub fn stream_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    Arc::clone(&state.long_polls)
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)
}

/// How often an idle event stream sends a keep-alive comment.
const SSE_KEEPALIVE_MS: u64 = 15_000;

/// An event stream's answer: `events`, holding `place` until the stream is
/// dropped (its client gone, or its end), with a keep-alive comment every
/// [`SSE_KEEPALIVE_MS`] while it is idle.
pub fn event_stream<S>(events: S, place: tokio::sync::OwnedSemaphorePermit) -> Response
where
    S: futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
        + Send
        + 'static,
{
    let events = futures_util::StreamExt::map(events, move |event| {
        let _held = &place;
        event
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_millis(SSE_KEEPALIVE_MS)))
        .into_response()
}

/// `serve`'s response while one of `permits` is free, `overloaded` at once
/// otherwise.
async fn limited(permits: &Semaphore, serve: impl Future<Output = Response>) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => serve.await,
        Err(_) => ApiError::Overloaded.into_response(),
    }
}

/// The route template a request matched, for its metric and log line.
enum RouteName {
    /// Matched by the router.
    Template(MatchedPath),
    /// Matched by the document routes' direct path (`fast.rs`).
    Static(&'static str),
    /// Matched nothing.
    Unmatched,
}

impl RouteName {
    fn as_str(&self) -> Option<&str> {
        match self {
            RouteName::Template(matched) => Some(matched.as_str()),
            RouteName::Static(name) => Some(name),
            RouteName::Unmatched => None,
        }
    }

    /// The metric's label: borrowed where the name is a constant.
    fn label(&self) -> Cow<'static, str> {
        match self {
            RouteName::Template(matched) => Cow::Owned(matched.as_str().to_string()),
            RouteName::Static(name) => Cow::Borrowed(name),
            RouteName::Unmatched => Cow::Borrowed("unmatched"),
        }
    }
}

/// A request's latency metric and log line: begun before it is served, ended
/// with its response.
struct Observed {
    started: Instant,
    method: Method,
    route: RouteName,
    /// Path, `Truce-Source` and `Truce-Attempt`, kept only when debug lines are logged.
    detail: Option<(String, String, String)>,
}

impl Observed {
    fn begin(method: &Method, route: RouteName, uri: &Uri, headers: &HeaderMap) -> Observed {
        let detail = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            (
                uri.path().to_string(),
                header_text(headers, extract::TRUCE_SOURCE),
                header_text(headers, extract::TRUCE_ATTEMPT),
            )
        });
        Observed {
            started: Instant::now(),
            method: method.clone(),
            route,
            detail,
        }
    }

    fn end(self, state: &AppState, response: &Response) {
        let status = response.status();
        let elapsed = self.started.elapsed();
        let method = self.method;
        let matched = self.route.as_str();
        let route = matched.unwrap_or("unmatched");
        state.metrics.observe_request(
            &method,
            self.route.label(),
            status.as_u16(),
            elapsed.as_secs_f64(),
        );
        let latency_us = elapsed.as_micros() as u64;
        // A 501 is the client's transfer coding (`UnsupportedTransferCoding`),
        // not the server's fault: logged as one, a client's flood of them
        // took the throttled line a real fault needs.
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            if let Some(left_out) = state.server_errors.admit() {
                tracing::warn!(%method, route, status = status.as_u16(), latency_us, left_out, "request");
            }
        } else if let Some((path, source, attempt)) = &self.detail {
            let route = matched.unwrap_or(path.as_str());
            tracing::debug!(%method, route, status = status.as_u16(), latency_us, source, attempt, "request");
        }
    }
}
