//! The document routes' direct path: `GET`, `PUT` and `PATCH /v1/c/{coll}/{id}`
//! served without the router.
//!
//! These three are most of a busy server's requests, and on the hot counter
//! the router's matching, its two `from_fn` layers (a boxed service clone and
//! a boxed future each) and the extractors cost more instructions than the
//! handler itself (`scripts/callgrind-inc`). Here the same steps run as plain
//! calls, in the same order, through the same functions: `Observed` and
//! `limited` (the `front` layer), `principal` and `timed` (the `guard` layer),
//! the body limit, `parse_json`, and the handlers' bodies in `documents.rs`.
//! Anything else — another method, a percent-encoded or `_`-prefixed segment,
//! any other path — goes to the router unchanged, so the answers are the
//! router's (`tests/api.rs` compares the two on a table of requests).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use hyper::body::Incoming;
use tower::Service;

use super::documents::{self, DocumentCall};
use super::extract::read_json;
use super::{AppState, Observed, RouteName, limited, principal, refused_before_body, timed};

/// The document route's template, as the router names it in metrics and logs.
const DOCUMENT_ROUTE: &str = "/v1/c/{coll}/{id}";

/// The server's service: the document routes directly, the router for the rest.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    router: Router,
}

/// A boxed direct answer, or the router's own future.
pub type Answer = Either<
    Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    <Router as Service<Request<Body>>>::Future,
>;

impl App {
    /// `router` (built by `http::router` over `state`) behind the direct
    /// document path.
    pub fn new(state: Arc<AppState>, router: Router) -> App {
        App { state, router }
    }
}

impl Service<Request<Incoming>> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    /// Always ready, as axum's `Router` is (its `poll_ready` is
    /// `Poll::Ready(Ok(()))`), so `call` may hand a request straight to it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Answer {
        let direct = matches!(*request.method(), Method::GET | Method::PUT | Method::PATCH);
        match document_path(request.uri().path()).filter(|_| direct) {
            Some((coll, id)) => {
                let (coll, id) = (coll.to_string(), id.to_string());
                Either::Left(Box::pin(serve_document(
                    Arc::clone(&self.state),
                    request,
                    coll,
                    id,
                )))
            }
            None => Either::Right(self.router.call(request.map(Body::new))),
        }
    }
}

/// `{coll}` and `{id}` of `/v1/c/{coll}/{id}` when the router would match that
/// route with them as they are: two non-empty segments, neither needing
/// percent-decoding, the id not `_`-prefixed (`_indexes`, `_config`, `_pull`,
/// `_push`, `_changes` are routes of their own).
fn document_path(path: &str) -> Option<(&str, &str)> {
    let (coll, id) = path.strip_prefix("/v1/c/")?.split_once('/')?;
    let plain = |segment: &str| !segment.is_empty() && !segment.contains(['/', '%']);
    (plain(coll) && plain(id) && !id.starts_with('_')).then_some((coll, id))
}

/// One document request, through the steps of `front`, `guard`, the
/// extractors and the handler, in their order.
async fn serve_document(
    state: Arc<AppState>,
    request: Request<Incoming>,
    coll: String,
    id: String,
) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let observed = Observed::begin(
        &parts.method,
        RouteName::Static(DOCUMENT_ROUTE),
        &parts.uri,
        &parts.headers,
    );
    let response = limited(&state.permits, async {
        let who = match principal(&state, parts.version, &parts.method, &parts.uri, &parts.headers) {
            Ok(who) => who,
            Err(refusal) => return refusal,
        };
        if let Err(refusal) = refused_before_body(&who, &parts.method, DOCUMENT_ROUTE, parts.uri.path()) {
            return refusal.into_response();
        }
        timed(&state, async {
            let call = DocumentCall::new(&state, &who, (coll, id), &parts.headers, parts.uri.query());
            let answer = match parts.method {
                Method::GET => documents::read(call),
                ref method => match read_json(&parts.headers, body, &state).await {
                    Ok(value) if method == Method::PUT => documents::put(call, value).await,
                    Ok(value) => documents::patch(call, value).await,
                    Err(e) => Err(e),
                },
            };
            answer.into_response()
        })
        .await
    })
    .await;
    let response = state.answers.hold(parts.method == Method::GET, response).await;
    observed.end(&state, &response);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::document_path;

    #[test]
    fn only_what_the_router_would_match_as_is_takes_the_direct_path() {
        assert_eq!(document_path("/v1/c/users/u1"), Some(("users", "u1")));
        assert_eq!(document_path("/v1/c/users/a.b-c~d"), Some(("users", "a.b-c~d")));
        for path in [
            "/v1/c/users",
            "/v1/c/users/",
            "/v1/c//u1",
            "/v1/c/users/u1/",
            "/v1/c/users/u1/x",
            "/v1/c/users/_indexes",
            "/v1/c/users/_changes",
            "/v1/c/users/u%201",
            "/v1/c/us%2Fers/u1",
            "/v1/cc/users/u1",
            "/couch/users/u1",
        ] {
            assert_eq!(document_path(path), None, "{path}");
        }
    }
}
