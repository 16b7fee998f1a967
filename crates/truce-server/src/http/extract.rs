//! Turning requests into engine inputs: JSON bodies, path and query parameters,
//! preconditions from bodies and headers, idempotency keys, authorization.
//! Every failure is an [`ApiError`] with a stable code.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use truce::budget::{Budget, Taken};
use truce::record::StoredDoc;
use truce::{Expect, Origin, Rev};

use super::AppState;
use super::error::ApiError;
use crate::keys::{Principal, Role};

/// Truce's own request headers, as names: a `&str` name is parsed again on
/// every lookup.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Who sent a write (insights).
pub const TRUCE_SOURCE: HeaderName = HeaderName::from_static("truce-source");
/// Which attempt of a retried write this is (insights).
pub const TRUCE_ATTEMPT: HeaderName = HeaderName::from_static("truce-attempt");
/// What a reconnecting `EventSource` sends: the id of the last event it got.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// How often, about, a long poll or an event stream whose page the pages
/// being read had no room for (`truce::Error::PagesOverBudget`) looks for
/// room given back, to read it again, ms.
pub const PAGES_OVER_BUDGET_RETRY_MS: u64 = 50;

/// How long a request body may go without a byte arriving: a stalled upload
/// is the client's doing, so it is 408 `request_timeout` rather than the
/// request timeout's 503 (which answers first if it is set lower). A slow
/// upload that keeps arriving is not cut off.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 10_000;

tokio::task_local! {
    /// Whether the request's body is being received ([`read_json`]), for
    /// the request timeout to tell a client too slow to send its body from
    /// a request too slow to serve (`timed`).
    pub static RECEIVING: std::cell::Cell<bool>;
}

/// A request body being received. It fails with [`BodyStalled`] once
/// nothing has arrived for [`BODY_IDLE_TIMEOUT_MS`] (a frame that is there
/// when asked for — a small body comes in the packets of its headers — arms
/// no timer), and its bytes count against the server's memory for request
/// bodies being received (`--body-memory-mib`, a [`Budget`]) from the frame
/// they arrive in until it is dropped (read whole, or given up): a frame the
/// budget cannot hold fails it with [`BodiesOverBudget`].
pub struct Receiving<B> {
    inner: B,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was armed.
    moved: bool,
    held: Taken,
}

impl<B> Receiving<B> {
    /// `inner`, with the idle timeout, counted against `budget`.
    pub fn new(inner: B, budget: &Arc<Budget>) -> Receiving<B> {
        Receiving {
            inner,
            stall: None,
            moved: false,
            held: Taken::new(budget),
        }
    }
}

/// What a [`Receiving`] body fails with when nothing arrives.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the request body arrived for {BODY_IDLE_TIMEOUT_MS} ms")]
pub struct BodyStalled;

/// What a [`Receiving`] body fails with when its budget is full.
#[derive(Debug, thiserror::Error)]
#[error("the request bodies being received take all of --body-memory-mib")]
pub struct BodiesOverBudget;

impl<B> hyper::body::Body for Receiving<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.moved = true;
            if let Some(Ok(arrived)) = &frame
                && let Some(data) = arrived.data_ref()
                && !this.held.take(data.len())
            {
                return Poll::Ready(Some(Err(Box::new(BodiesOverBudget))));
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
        let stall = this
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if std::mem::take(&mut this.moved) {
            stall.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses a body in an encoding other than `identity` (`gzip`, …) before
/// any of it is read: read as it is, a compressed body was `invalid_json`,
/// and a plain one labelled compressed was stored. So for a transfer coding
/// besides `chunked` (`gzip, chunked`: the HTTP library takes the chunks
/// and leaves the rest to us), as RFC 9112 (§6.1) has it: 501.
fn plain_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(coding) = other_coding(headers, header::TRANSFER_ENCODING, "chunked") {
        return Err(ApiError::UnsupportedTransferCoding(coding));
    }
    match other_coding(headers, header::CONTENT_ENCODING, "identity") {
        Some(coding) => Err(ApiError::UnsupportedEncoding(coding)),
        None => Ok(()),
    }
}

/// The first value of header `name` (a list of codings) that names one
/// besides `taken`, as sent.
fn other_coding(headers: &HeaderMap, name: header::HeaderName, taken: &str) -> Option<String> {
    headers.get_all(name).iter().find_map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes());
        let other = text
            .split(',')
            .map(str::trim)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(taken));
        other.then(|| text.into_owned())
    })
}

/// Refuses a body whose `Content-Length` says it is over `limit` before any
/// of it is read: a client that sent `Expect: 100-continue` gets the 413
/// instead of a 100 and an upload cut off at the limit.
pub fn declared_within(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(ApiError::PayloadTooLarge(format!(
            "the body is {length} bytes, over the limit of {limit} (--max-body-bytes); nothing was read"
        ))),
        _ => Ok(()),
    }
}

/// Whether `error`, or an error it was caused by, is a `T`.
fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<T>())
}

/// A request body read whole and parsed as JSON: not compressed
/// (`unsupported_media_type`), within `--max-body-bytes`
/// (`payload_too_large` past it, before any of it is read when
/// `Content-Length` says so), the memory for bodies (`overloaded`) and the
/// idle timeout (`request_timeout`); a body that cannot be read (its
/// chunks are malformed) is `invalid_request`, one that is not JSON
/// `invalid_json` ([`parse_json`]). The router's extractor and the
/// document routes' direct path both read bodies here.
pub async fn read_json<B>(headers: &HeaderMap, body: B, state: &AppState) -> Result<Value, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    plain_encoding(headers)?;
    declared_within(headers, state.max_body_bytes)?;
    let body = Receiving::new(body, &state.bodies);
    let receiving = |now: bool| {
        let _outside_a_timed_request = RECEIVING.try_with(|receiving| receiving.set(now));
    };
    receiving(true);
    let collected =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, state.max_body_bytes)).await;
    receiving(false);
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if caused_by::<BodiesOverBudget>(&*e) => return Err(ApiError::BodiesOverBudget),
        Err(e) if caused_by::<BodyStalled>(&*e) => return Err(ApiError::BodyTimeout),
        Err(e) if caused_by::<http_body_util::LengthLimitError>(&*e) => {
            return Err(ApiError::PayloadTooLarge(format!(
                "the body passed the limit of {} bytes (--max-body-bytes) as it arrived; nothing was done",
                state.max_body_bytes
            )));
        }
        // Its framing (a chunk's size that is not hex, say), not its JSON.
        Err(e) => {
            return Err(ApiError::BadRequest(
                "invalid_request",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    if bytes.len() <= PARSE_ON_THREAD_BYTES_MAX {
        return parse_json(&bytes);
    }
    // Each HTTP thread serves its own connections (`http_threads.rs`): a
    // large body parsed here would hold all of them. No more at once than
    // there are HTTP threads (`AppState::parses`).
    // Owned by the parse, not the request: a request that times out or is
    // dropped leaves its parse running, and the parse holds the permit.
    let parsing = Arc::clone(&state.parses)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Engine(truce::Error::Unavailable(e.to_string())))?;
    super::blocking(move || {
        let _parsing = parsing;
        Ok(parse_json(&bytes))
    })
    .await?
}

/// Largest request body parsed on the HTTP thread itself; larger ones (a
/// megabyte of small values takes tens of milliseconds) are parsed in the
/// blocking pool, so that the thread's other connections are not held.
/// About half a millisecond of parsing.
pub const PARSE_ON_THREAD_BYTES_MAX: usize = 64 * 1024;

/// A JSON request body, read by [`read_json`].
pub struct JsonBody(pub Value);

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<JsonBody, ApiError> {
        let (parts, body) = req.into_parts();
        read_json(&parts.headers, body, state).await.map(JsonBody)
    }
}

/// A request body parsed as JSON, or `invalid_json` (an object that names a
/// key twice too: [`truce_server::wire::json`]); 413 `limit_exceeded` past
/// [`truce_server::wire::JSON_VALUES_MAX`] values.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    truce_server::wire::json(bytes).map_err(|e| match e {
        truce_server::wire::JsonRefusal::TooManyValues => ApiError::Engine(truce::Error::LimitExceeded {
            what: "JSON_VALUES_MAX",
            limit: truce_server::wire::JSON_VALUES_MAX as u64,
        }),
        truce_server::wire::JsonRefusal::Invalid(_) => ApiError::InvalidJson(format!("body: {e}")),
    })
}

/// Path parameters; undecodable ones are `invalid_id`.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathParams<T>, ApiError> {
        if let Some(template) = parts.extensions.get::<axum::extract::MatchedPath>()
            && let Some(refusal) = malformed_escape(template.as_str(), parts.uri.path())
        {
            return Err(refusal);
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|rejection| path_refusal(rejection, parts.uri.path()))
    }
}

/// The refusal of a parameter of `path` (matched by route `template`) with
/// a `%` that two hex digits do not follow: decoding would keep it as it is
/// (`a%zz` and `a%25zz` would name one document).
fn malformed_escape(template: &str, path: &str) -> Option<ApiError> {
    let (key, segment) = template
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(t, p)| Some((t.strip_prefix('{')?.strip_suffix('}')?, p)))
        .find(|(_, p)| has_malformed_escape(p))?;
    let (code, what) = segment_named(key, path);
    Some(ApiError::BadRequest(
        code,
        format!("{what} {segment:?} has a % that two hex digits do not follow (send % as %25)"),
    ))
}

/// The error code and the words for path parameter `key` of `path`.
fn segment_named(key: &str, path: &str) -> (&'static str, String) {
    match key {
        "coll" => ("invalid_collection", "the collection name".to_string()),
        "id" => ("invalid_id", "the document id".to_string()),
        "name" if path.contains("/_counters/") => ("invalid_config", "the counter name".to_string()),
        "name" => ("invalid_index", "the index name".to_string()),
        other => ("invalid_id", format!("the {other} segment")),
    }
}

/// Names the segment of `path` that failed, in the API's words rather than
/// the router's.
fn path_refusal(rejection: PathRejection, path: &str) -> ApiError {
    if let PathRejection::FailedToDeserializePathParams(failed) = &rejection
        && let ErrorKind::InvalidUtf8InPathParam { key } = failed.kind()
    {
        let (code, what) = segment_named(key, path);
        return ApiError::BadRequest(code, format!("{what} is not UTF-8 once percent-decoded"));
    }
    ApiError::BadRequest("invalid_id", rejection.body_text())
}

/// Query parameters as strings; undecodable ones are `invalid_query`, and so
/// is one given twice (`limit=2&limit=3`: which one the caller meant is
/// anyone's guess).
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params, ApiError> {
        let pairs = query_pairs(parts.uri.query().unwrap_or(""))?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if map.contains_key(&name) {
                return Err(ApiError::BadRequest(
                    "invalid_query",
                    format!("the parameter {name:?} is given twice"),
                ));
            }
            map.insert(name, value);
        }
        Ok(Params(map))
    }
}

/// The `name=value` pairs of a query string, decoded as a form is (`+` a
/// space, `%XX` a byte), strictly: a `%` that two hex digits do not follow,
/// and bytes that are not UTF-8 once decoded, are `invalid_query`. Decoded
/// leniently, `%zz` was kept as typed and `%FF` became U+FFFD, so
/// `keys=["a%zz"]` and `gte="%FF"` matched documents the caller never named.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |text: &str| -> Result<String, ApiError> {
        let refused = |why: &str| {
            let shown: String = text.chars().take(64).collect();
            ApiError::BadRequest("invalid_query", format!("{shown:?} {why}"))
        };
        if has_malformed_escape(text) {
            return Err(refused(
                "has a % that two hex digits do not follow (send % as %25)",
            ));
        }
        let spaced = match text.contains('+') {
            true => std::borrow::Cow::Owned(text.replace('+', " ")),
            false => std::borrow::Cow::Borrowed(text),
        };
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| refused("is not UTF-8 once percent-decoded"))
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Whether `text` has a `%` that two hex digits do not follow.
fn has_malformed_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

impl Params {
    /// Refuses a parameter not in `names` (400 `invalid_query`): a misspelt
    /// `since` or `index` would otherwise answer as if it were absent, with
    /// data the caller did not ask for.
    pub fn only(&self, names: &[&str]) -> Result<(), ApiError> {
        match first_unknown(self.0.keys().map(String::as_str), names) {
            Some(name) => Err(unknown_parameter(name, names)),
            None => Ok(()),
        }
    }

    /// A parameter parsed with `FromStr`, or `None` when absent.
    pub fn parse<T: std::str::FromStr>(&self, name: &str, code: &'static str) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| ApiError::BadRequest(code, format!("{name}={v:?} is not valid")))
            })
            .transpose()
    }

    /// A parameter that holds JSON.
    pub fn json(&self, name: &str) -> Result<Option<Value>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                truce_server::wire::json(v.as_bytes())
                    .map_err(|e| ApiError::BadRequest("invalid_query", format!("{name}: not JSON: {e}")))
            })
            .transpose()
    }

    /// A boolean flag (`true`/`false`), `false` when absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        Ok(self.parse::<bool>(name, "invalid_query")?.unwrap_or(false))
    }
}

/// A precondition from the wire form of a version: 0, -1 or N ≥ 1.
pub fn expect_from_version(version: i64) -> Result<Expect, ApiError> {
    Ok(Expect::from_version(version)?)
}

fn parse_rev(text: &str) -> Result<Expect, ApiError> {
    Ok(Expect::Rev(text.parse::<Rev>()?))
}

/// Header `name` as text, if sent, refused with `code` when it is not text
/// or is sent twice: a second one would be ignored, and the write guarded
/// by another condition (or key) than the client meant.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    code: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(ApiError::BadRequest(
            code,
            format!("{name} is sent twice; a request takes one"),
        ));
    }
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(code, format!("{name} is not text")))
        })
        .transpose()
}

fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    single_header(headers, name, "invalid_precondition")
}

/// Removes `_version` / `_rev` from a body and turns them, or the `If-Match` /
/// `If-None-Match` headers, into a precondition; `default` when none is given.
pub fn precondition(
    body: &mut Map<String, Value>,
    headers: &HeaderMap,
    default: Expect,
) -> Result<Expect, ApiError> {
    let mut found = Vec::new();
    if let Some(v) = body.remove("_version") {
        let n = v.as_i64().ok_or_else(|| {
            ApiError::Engine(truce::Error::InvalidPrecondition(
                "_version must be an integer: -1 (anything), 0 (absent) or a version, 1 to 2^63 - 1".into(),
            ))
        })?;
        found.push(expect_from_version(n)?);
    }
    if let Some(v) = body.remove("_rev") {
        let text = v.as_str().ok_or_else(|| {
            ApiError::Engine(truce::Error::InvalidPrecondition("_rev must be a string".into()))
        })?;
        found.push(parse_rev(text)?);
    }
    if let Some(m) = header_value(headers, &header::IF_MATCH)? {
        found.push(match m.trim() {
            "*" => Expect::Exists,
            weak if weak.starts_with("W/") => {
                return Err(ApiError::Engine(truce::Error::InvalidPrecondition(
                    "If-Match takes a revision (the ETag of a GET, \"<rev>\") or *; a weak W/ tag \
                     cannot guard a write"
                        .into(),
                )));
            }
            list if list.contains(',') => {
                return Err(ApiError::Engine(truce::Error::InvalidPrecondition(
                    "If-Match takes one revision (the ETag of a GET, \"<rev>\") or *, not a list: a write is \
                     guarded by the one version it was made from"
                        .into(),
                )));
            }
            tag => parse_rev(tag.trim_matches('"'))?,
        });
    }
    if let Some(m) = header_value(headers, &header::IF_NONE_MATCH)? {
        if m.trim() != "*" {
            return Err(ApiError::Engine(truce::Error::InvalidPrecondition(
                "on a write, If-None-Match may only be *".into(),
            )));
        }
        found.push(Expect::Absent);
    }
    match found.as_slice() {
        [] => Ok(default),
        [one] => Ok(*one),
        _ => Err(ApiError::Engine(truce::Error::InvalidPrecondition(
            "give one precondition: _version, _rev, If-Match or If-None-Match".into(),
        ))),
    }
}

/// The least of `keys` that is not in `allowed`, if any (the least, so that
/// an answer does not depend on a map's order).
pub fn first_unknown<'a>(keys: impl IntoIterator<Item = &'a str>, allowed: &[&str]) -> Option<&'a str> {
    keys.into_iter().filter(|key| !allowed.contains(key)).min()
}

fn unknown_parameter(name: &str, names: &[&str]) -> ApiError {
    let takes = if names.is_empty() {
        "no query parameters".to_string()
    } else {
        names.join(", ")
    };
    ApiError::BadRequest(
        "invalid_query",
        format!("unknown query parameter {name:?}: this route takes {takes}"),
    )
}

/// Refuses any query parameter on a document's GET, PUT or PATCH, which take
/// none. `version` or `rev` on a write (DELETE's form of a precondition) is
/// `invalid_precondition`: PUT and PATCH take theirs from the body or the
/// headers, and a guard the client meant must not be silently dropped.
pub fn no_document_query(query: Option<&str>, writes: bool) -> Result<(), ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(()); // every request of the hot path
    };
    let names: Vec<_> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, _)| name)
        .collect();
    if writes && let Some(guard) = names.iter().find(|n| *n == "version" || *n == "rev") {
        return Err(ApiError::Engine(truce::Error::InvalidPrecondition(format!(
            "a PUT or PATCH takes its precondition from the body (_version, _rev) or a header \
             (If-Match, If-None-Match), not from the query parameter {guard:?}"
        ))));
    }
    match names.iter().min() {
        Some(name) => Err(unknown_parameter(name, &[])),
        None => Ok(()),
    }
}

/// A request's `Idempotency-Key`, if it sent one: as sent, and as the
/// engine stores it.
pub struct IdempotencyKey(Option<(String, String)>);

impl IdempotencyKey {
    /// What the engine stores: the key as sent on a server without API keys;
    /// else the sending API key's id and the SHA-256 of the key, so that each
    /// API key has keys of its own. A caller cannot take, or learn of, a key
    /// another API key's client will use (limited to other collections, say),
    /// and the stored form fits the engine's limit whatever the key's length.
    pub fn stored(&self) -> Option<&str> {
        self.0.as_ref().map(|(_, stored)| stored.as_str())
    }

    /// The engine's error, naming the key as the client sent it.
    pub fn as_sent(&self, error: truce::Error) -> truce::Error {
        match (error, &self.0) {
            (truce::Error::IdempotencyKeyReused(_), Some((sent, _))) => {
                truce::Error::IdempotencyKeyReused(sent.clone())
            }
            (other, _) => other,
        }
    }
}

/// The `Idempotency-Key` header, checked as sent and scoped to the API key
/// `who` presented.
pub fn idempotency_key(headers: &HeaderMap, who: &Principal) -> Result<IdempotencyKey, ApiError> {
    // Two keys (a proxy's and the client's, say) guard nothing: whichever was
    // kept, a retry under the other would write again.
    let Some(sent) = single_header(headers, &IDEMPOTENCY_KEY, "invalid_transaction")? else {
        return Ok(IdempotencyKey(None));
    };
    truce::validate_idempotency_key(sent)?;
    let stored = match &who.key_id {
        Some(id) => format!("{id}/{}", crate::keys::sha256_hex(sent)),
        None => sent.to_string(),
    };
    Ok(IdempotencyKey(Some((sent.to_string(), stored))))
}

/// What a long-lived read's wait for its next page ended with.
pub enum Waited {
    /// The page (or the engine's error).
    Page(truce::Result<truce::ChangesPage<StoredDoc>>),
    /// The caller's key may no longer read what was asked.
    Revoked,
    /// The server is shutting down: a long poll answers what it has (no
    /// change, its position), a stream ends, so that its client resumes
    /// from where it was at once, on this server's successor, rather than
    /// at the end of the shutdown's grace period when the connection is cut.
    Stopping,
}

/// The right a long-lived read was opened with, checked again while it lasts:
/// a stream open when its key is revoked, or narrowed, must not go on
/// delivering what the key may no longer read.
///
/// It holds one of its API key's places among the long-lived reads
/// (`--max-streams-per-key`, [`KeyStreams`]) until it is dropped: when the
/// long poll answers, or when the stream it was moved into ends.
pub struct Standing {
    state: Arc<AppState>,
    authorization: Option<String>,
    collection: Option<String>,
    /// The keys' reload count when the key was last found to hold (`None`:
    /// not checked yet).
    checked_at: std::sync::Mutex<Option<u64>>,
    /// The public id of the key whose place this holds (`None`: no key).
    place_of: Option<String>,
}

impl Standing {
    /// The standing of `who`, the caller of a long-lived read of
    /// `collection` (`None`: every collection) that sent `headers`, and
    /// one of its key's places; `overloaded` when the key holds them all.
    pub fn of(
        state: &Arc<AppState>,
        who: &Principal,
        headers: &HeaderMap,
        collection: Option<&str>,
    ) -> Result<Standing, ApiError> {
        let place_of = state.key_streams.take(who)?;
        Ok(Standing {
            state: Arc::clone(state),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            collection: collection.map(str::to_string),
            checked_at: std::sync::Mutex::new(None),
            place_of,
        })
    }

    /// Whether the key still may read what was asked.
    pub fn holds(&self) -> bool {
        self.state
            .keys
            .caller(self.authorization.as_deref())
            .is_ok_and(|who| {
                authorize(&who, Role::Read, self.collection.as_deref()).is_ok()
                    && (self.collection.is_some() || who.collections.is_none())
            })
    }

    /// Whether the key holds after the keys' `reload`: checked again only if
    /// they were reloaded since it last held.
    fn holds_after(&self, reload: u64) -> bool {
        let mut checked_at = self.checked_at.lock().unwrap_or_else(|p| p.into_inner());
        if *checked_at == Some(reload) {
            return true;
        }
        let holds = self.holds();
        if holds {
            *checked_at = Some(reload);
        }
        holds
    }

    /// A long poll's page: the subscription's next, or an empty one at its
    /// position once `timeout` has passed or the server is stopping (its
    /// client asks again from there); 401 once the key may no longer read.
    pub async fn long_poll(
        &self,
        sub: &mut truce::Subscription<StoredDoc>,
        timeout: Duration,
    ) -> Result<truce::ChangesPage<StoredDoc>, ApiError> {
        match tokio::time::timeout(timeout, self.next_page(sub)).await {
            Ok(Waited::Revoked) => Err(ApiError::Unauthorized(
                "the key was revoked while the request waited",
            )),
            Ok(Waited::Page(page)) => Ok(page?),
            Ok(Waited::Stopping) | Err(_) => Ok(truce::ChangesPage {
                changes: Vec::new(),
                last_seq: sub.since(),
                from: sub.from(),
                memory: Default::default(),
            }),
        }
    }

    /// The subscription's next page, if the caller still may read it
    /// (checked whenever the server reloads its keys while the page is
    /// awaited, and before a page goes out) and the server is not stopping.
    pub async fn next_page(&self, sub: &mut truce::Subscription<StoredDoc>) -> Waited {
        let mut reloads = self.state.keys.reloads();
        // The count is copied out before the key is checked: the channel's
        // read guard, held across `holds_after`, would deadlock a reload
        // (`KeyStore::refresh` sends on the channel).
        let reload = *reloads.borrow_and_update();
        if !self.holds_after(reload) {
            return Waited::Revoked;
        }
        let mut stopping = self.state.stopping.clone();
        let page = next_with_room(self.state.db.page_memory(), sub);
        tokio::pin!(page);
        loop {
            tokio::select! {
                page = &mut page => {
                    return if self.holds() { Waited::Page(page) } else { Waited::Revoked };
                }
                Ok(()) = reloads.changed() => {
                    let reload = *reloads.borrow_and_update();
                    if !self.holds_after(reload) {
                        return Waited::Revoked;
                    }
                }
                _ = stopping.wait_for(|stop| *stop) => return Waited::Stopping,
            }
        }
    }
}

impl Drop for Standing {
    fn drop(&mut self) {
        if let Some(key_id) = &self.place_of {
            self.state.key_streams.give_back(key_id);
        }
    }
}

/// The long polls and event streams each API key holds at once, at most
/// `--max-streams-per-key` of them, so that one key — one tenant, or one
/// leaked key — cannot take every place among them
/// ([`AppState::long_polls`]) from the others. A server without keys has
/// one caller, bounded by the shared places alone.
pub struct KeyStreams {
    max: usize,
    /// The places each key holds; a key holding none is not in it.
    held: std::sync::Mutex<HashMap<String, usize>>,
}

impl KeyStreams {
    /// At most `max` places per key.
    pub fn new(max: usize) -> KeyStreams {
        KeyStreams {
            max,
            held: Default::default(),
        }
    }

    /// A place for `who`'s key: its id, to give back (`None` without a key).
    fn take(&self, who: &Principal) -> Result<Option<String>, ApiError> {
        let Some(key_id) = &who.key_id else {
            return Ok(None);
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let places = held.entry(key_id.clone()).or_default();
        if *places >= self.max {
            return Err(ApiError::KeyStreamsFull(self.max));
        }
        *places += 1;
        Ok(Some(key_id.clone()))
    }

    fn give_back(&self, key_id: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(places) = held.get_mut(key_id) {
            *places -= 1;
            if *places == 0 {
                held.remove(key_id);
            }
        }
    }

    /// The places `key_id` holds now.
    #[cfg(test)]
    fn held_by(&self, key_id: &str) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .copied()
            .unwrap_or(0)
    }
}

/// The subscription's next page, read off the HTTP thread (a page of large
/// documents took every connection of its thread 100 to 200 ms to decode);
/// when the pages being read have no room for it, read again once some was
/// given back, looked at every [`PAGES_OVER_BUDGET_RETRY_MS`] or so
/// (jittered, so that waiting readers do not all try at once; a long poll's
/// timeout still ends the wait, and a stream is not ended for it).
pub async fn next_with_room(
    pages: &truce::budget::Budget,
    sub: &mut truce::Subscription<StoredDoc>,
) -> truce::Result<truce::ChangesPage<StoredDoc>> {
    loop {
        let given = pages.given();
        // A clone reads, and takes this one's place once it has: dropped
        // half-way (a long poll's timeout), this one stands where it stood.
        let mut reader = sub.clone();
        let (reader, page) = tokio::task::spawn_blocking(move || {
            let page = reader.poll();
            (reader, page)
        })
        .await
        .map_err(|e| truce::Error::Unavailable(format!("a feed's page was not read: {e}")))?;
        *sub = reader;
        match page {
            Ok(page) if page.changes.is_empty() => sub.changed().await?,
            Err(truce::Error::PagesOverBudget) => {
                while pages.given() == given {
                    let wait = rand::random_range(
                        PAGES_OVER_BUDGET_RETRY_MS / 2..=PAGES_OVER_BUDGET_RETRY_MS * 3 / 2,
                    );
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
            page => return page,
        }
    }
}

/// Refuses unless `who` has `role` and, when given, access to `collection`.
pub fn authorize(who: &Principal, role: Role, collection: Option<&str>) -> Result<(), ApiError> {
    if who.role < role {
        return Err(ApiError::Forbidden(format!(
            "this key's role cannot {}",
            role_verb(role)
        )));
    }
    if let Some(c) = collection
        && !who.may_access(c)
    {
        return Err(ApiError::Forbidden(format!(
            "this key is not allowed collection {c}"
        )));
    }
    Ok(())
}

fn role_verb(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Write => "write",
        Role::Admin => "administer",
    }
}

/// The body as an object, or `invalid_document`.
pub fn object(value: Value) -> Result<Map<String, Value>, ApiError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::Engine(truce::Error::InvalidDocument(format!(
            "a document is a JSON object, not {}",
            truce::doc::json_type_name(&other)
        )))),
    }
}

/// Who sent a write, for the insights: `Truce-Source` (cut to 64 bytes) and
/// `Truce-Attempt: n` or `n/max`. Both are advisory: a malformed attempt is
/// ignored (counted as a first attempt), never refused.
pub fn origin(headers: &HeaderMap) -> Origin {
    origin_named(None, headers)
}

/// [`origin`], with `source` (a transaction body's) in place of the
/// `Truce-Source` header when it is given.
pub fn origin_named(source: Option<&str>, headers: &HeaderMap) -> Origin {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // Bytes past ASCII are dropped with the other characters a label cannot
    // hold, not the whole header with them.
    let header_source = || {
        headers
            .get(TRUCE_SOURCE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    };
    let origin = match source {
        Some(source) => Origin::source(source),
        None => header_source().map_or_else(Origin::default, |s| Origin::source(&s)),
    };
    let Some(attempt) = text(TRUCE_ATTEMPT) else {
        return origin;
    };
    let (n, max) = match attempt.split_once('/') {
        Some((n, max)) => (n, Some(max)),
        None => (attempt, None),
    };
    let positive = |s: &str| s.trim().parse::<u32>().ok().filter(|n| *n >= 1);
    match (positive(n), max.map(positive)) {
        (Some(n), None) => origin.attempt(n, None),
        (Some(n), Some(Some(max))) if n <= max => origin.attempt(n, Some(max)),
        _ => origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query strings decode as forms do, strictly: a malformed escape or
    /// bytes that are not UTF-8 are refused, never kept or replaced.
    #[test]
    fn query_strings_decode_strictly() {
        let pairs = query_pairs("a=1&b=x+y%2Bz&&c&d=%C3%A9&e=").unwrap();
        let expected = [("a", "1"), ("b", "x y+z"), ("c", ""), ("d", "é"), ("e", "")];
        assert_eq!(pairs, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        for bad in ["a=%zz", "a=%2", "a=%", "a=%FF", "%zz=1", "a=%C3"] {
            assert!(
                matches!(query_pairs(bad), Err(ApiError::BadRequest("invalid_query", _))),
                "{bad}"
            );
        }
    }

    /// A key holds at most its number of places, gives each back once, and
    /// is forgotten when it holds none; other keys and a keyless caller are
    /// not counted against it.
    #[test]
    fn each_key_holds_at_most_its_places() {
        let key = |id: &str| Principal {
            key_id: Some(id.into()),
            ..Principal::anyone()
        };
        let streams = KeyStreams::new(2);
        let (a, b) = (key("a"), key("b"));
        assert_eq!(streams.take(&a).unwrap().as_deref(), Some("a"));
        assert_eq!(streams.take(&a).unwrap().as_deref(), Some("a"));
        assert!(matches!(streams.take(&a), Err(ApiError::KeyStreamsFull(2))));
        assert_eq!(streams.held_by("a"), 2, "a refusal takes no place");
        assert!(streams.take(&b).is_ok(), "another key has places of its own");
        for _ in 0..5 {
            assert_eq!(streams.take(&Principal::anyone()).unwrap(), None);
        }
        streams.give_back("a");
        assert_eq!(streams.held_by("a"), 1);
        assert!(streams.take(&a).is_ok(), "a place given back is taken again");
        streams.give_back("a");
        streams.give_back("a");
        streams.give_back("b");
        assert!(
            streams.held.lock().unwrap().is_empty(),
            "keys holding nothing are forgotten"
        );
    }

    #[test]
    fn only_a_body_in_identity_is_read() {
        let with = |name, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, axum::http::HeaderValue::from_static(value));
            headers
        };
        assert!(plain_encoding(&HeaderMap::new()).is_ok());
        // Per header: values read, values refused, and what the refusal
        // carries (the value as sent) when it is that header's.
        type Refused = fn(ApiError) -> Option<String>;
        let cases: [(HeaderName, &[&'static str], &[&'static str], Refused); 2] = [
            (
                header::CONTENT_ENCODING,
                &["identity", "Identity, ", ""],
                &["gzip", "identity, br", "x-gzip"],
                |e| match e {
                    ApiError::UnsupportedEncoding(sent) => Some(sent),
                    _ => None,
                },
            ),
            (
                header::TRANSFER_ENCODING,
                &["chunked", "Chunked", " CHUNKED ", ", chunked"],
                &["gzip, chunked", "identity, chunked", "x, Chunked"],
                |e| match e {
                    ApiError::UnsupportedTransferCoding(sent) => Some(sent),
                    _ => None,
                },
            ),
        ];
        for (name, read, refused, carried) in cases {
            for value in read {
                assert!(
                    plain_encoding(&with(name.clone(), value)).is_ok(),
                    "{name}: {value}"
                );
            }
            for value in refused {
                let error = plain_encoding(&with(name.clone(), value)).expect_err(value);
                assert_eq!(carried(error).as_deref(), Some(*value), "{name}");
            }
        }
    }

    /// A stream's or a long poll's page that finds the pages being read
    /// holding all their memory waits for room instead of failing, and is
    /// served once it is given back.
    #[tokio::test]
    async fn a_subscription_waits_for_room_among_the_pages_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let options = truce::Options {
            durability: truce::Durability::Relaxed,
            page_memory_bytes: 150_000,
            ..truce::Options::default()
        };
        let db = truce::Db::open(dir.path(), options).unwrap();
        let c = db.collection("c").unwrap();
        for id in ["a", "b"] {
            let body = serde_json::json!({"blob": "x".repeat(100_000)});
            c.put(id, body, truce::Expect::Absent).unwrap().unwrap();
        }
        let held = db.changes_after("c", None, None, 1).unwrap();
        let mut sub = db.subscribe(Some("c"), 1, true).unwrap().stored();
        assert!(matches!(sub.next().await, Err(truce::Error::PagesOverBudget)));
        let mut sub = db.subscribe(Some("c"), 1, true).unwrap().stored();
        let pages = Arc::clone(db.page_memory());
        let reader = tokio::spawn(async move { next_with_room(&pages, &mut sub).await });
        tokio::time::sleep(Duration::from_millis(5 * PAGES_OVER_BUDGET_RETRY_MS)).await;
        assert!(!reader.is_finished(), "it waits while the room is held");
        drop(held);
        let page = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("served once the room is given back")
            .unwrap()
            .unwrap();
        assert_eq!(page.changes[0].id, "b");
    }

    /// A `Truce-Source` with bytes past ASCII loses those, as a body's
    /// `source` does, not the whole label.
    #[test]
    fn a_source_header_drops_only_what_a_label_cannot_hold() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRUCE_SOURCE,
            axum::http::HeaderValue::from_bytes("é-source".as_bytes()).unwrap(),
        );
        let shown = |o: Origin| o.source.map(|s| s.to_string());
        assert_eq!(shown(origin(&headers)), Some("-source".to_string()));
        assert_eq!(
            shown(origin_named(Some("é-src"), &headers)),
            Some("-src".to_string())
        );
        headers.insert(
            TRUCE_SOURCE,
            axum::http::HeaderValue::from_bytes(&[0xC3, 0xA9]).unwrap(),
        );
        assert_eq!(shown(origin(&headers)), None);
    }

    /// If-Match compares strongly: a weak tag is refused with a message
    /// that says so, not read as a malformed revision.
    #[test]
    fn if_match_refuses_a_weak_tag_and_says_why() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_MATCH,
            "W/\"1-00000000000000000000000000000000\"".parse().unwrap(),
        );
        let refused = precondition(&mut Map::new(), &headers, Expect::Any).unwrap_err();
        let text = format!("{refused:?}");
        assert!(text.contains("weak W/ tag"), "{text}");
        headers.insert(
            header::IF_MATCH,
            "\"1-00000000000000000000000000000000\"".parse().unwrap(),
        );
        assert!(precondition(&mut Map::new(), &headers, Expect::Any).is_ok());
    }

    #[test]
    fn the_least_unknown_key_is_named() {
        assert_eq!(first_unknown(["b", "z", "a", "c"], &["a", "c"]), Some("b"));
        assert_eq!(first_unknown(["a"], &["a"]), None);
        assert_eq!(first_unknown(["x"], &[]), Some("x"));
    }
}
