//! Cross-origin requests from browsers (`--cors-origins`): an RxDB app or a
//! heartbeat sent from a page served elsewhere than Truce. Off by default —
//! then the server sends no CORS header and a browser keeps a page of another
//! origin from reading its answers, as before.
//!
//! tower-http's `Cors` answers preflight requests itself (before
//! authentication: a browser sends no `Authorization` on a preflight) and adds
//! `Access-Control-Allow-Origin` to the answers of the origins allowed.
//!
//! CORS only decides what a page may *read*: a page may still *send* a
//! `POST` with a `text/plain` body anywhere, without asking first. A server
//! with no API keys (loopback, the quick start) would apply it — any web page
//! its user opens could write to it. So every write that carries an `Origin`
//! (browsers send it on every write) must come from an allowed origin
//! (`cross_origin_write`), and a server without keys answers only loopback
//! names, against DNS rebinding (`rebound`).

use std::time::Duration;

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use axum::response::Response;
use futures_util::future::Either;
use hyper::body::Incoming;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use super::error::ApiError;
use super::extract::{IDEMPOTENCY_KEY, LAST_EVENT_ID, TRUCE_ATTEMPT, TRUCE_SOURCE};
use super::fast::{Answer, App};

/// How long a browser may cache a preflight's answer.
pub const CORS_MAX_AGE_S: u64 = 3600;

/// The request headers the API reads, which a page must be allowed to send.
const ALLOWED_HEADERS: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    IDEMPOTENCY_KEY,
    TRUCE_SOURCE,
    TRUCE_ATTEMPT,
    LAST_EVENT_ID,
];

/// The answer headers a page's script may read besides the CORS-safelisted ones.
const EXPOSED_HEADERS: [HeaderName; 4] = [
    header::ETAG,
    header::RETRY_AFTER,
    header::ALLOW,
    header::WWW_AUTHENTICATE,
];

/// The refusal of a write (any method but `GET`, `HEAD`, `OPTIONS`) that a
/// browser sent from a page of an origin `allowed` does not list; `None` for
/// anything else, and for every request without `Origin` (clients that are
/// not browsers send none). No origin counts as the server's own: Truce's own
/// pages (the dashboard) only read, and a page whose name was pointed at the
/// server (DNS rebinding) names itself in `Origin` and `Host` alike.
pub fn cross_origin_write(allowed: &[String], method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    if method.is_safe() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|o| o == "*" || o == origin) {
        return None;
    }
    Some(ApiError::Forbidden(format!(
        "a write from a page of another origin ({origin:?}) is refused: allow the origin with --cors-origins \
         (docs/http.md, \"Browsers (CORS)\")"
    )))
}

/// The refusal of a request that does not name its host once, as RFC 9112
/// (§3.2) has a server refuse it: `Host` sent twice (which of them a
/// request is addressed to would depend on who reads it) or not text, or an
/// HTTP/1.1 request without one, in absolute form too. An HTTP/1.0 request
/// may name none, and an HTTP/2 one names it in its target.
pub fn host_refusal(version: Version, headers: &HeaderMap) -> Option<ApiError> {
    match super::extract::single_header(headers, &header::HOST, "invalid_request") {
        Err(refusal) => Some(refusal),
        Ok(None) if version == Version::HTTP_11 => Some(ApiError::BadRequest(
            "invalid_request",
            "an HTTP/1.1 request names its host in Host".into(),
        )),
        Ok(_) => None,
    }
}

/// On a server without API keys (which listens on loopback), the refusal of
/// a request addressed to it by a name that is not a loopback one (`Host`,
/// or in HTTP/2 the request's authority): a web page whose own name an
/// attacker pointed at 127.0.0.1 (DNS rebinding) would otherwise be
/// same-origin with the server, and read and write everything. `None` for
/// `localhost`, `127.x.x.x` and `[::1]`, with any port, and for a request
/// naming no host (browsers always name one).
pub fn rebound(uri: &Uri, headers: &HeaderMap) -> Option<ApiError> {
    // In absolute form the target's authority is the host, whatever `Host`
    // says (RFC 9112, §3.2.2).
    let host = match (uri.authority(), headers.get(header::HOST)) {
        (Some(authority), _) => authority.as_str(),
        (None, Some(value)) => value.to_str().unwrap_or("?"),
        (None, None) => return None,
    };
    let name = split_authority(host).map_or("", |(name, _)| name);
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        ApiError::Forbidden(format!(
            "this server has no API keys, so it answers only requests addressed to it by a loopback name \
             (localhost, 127.0.0.1, [::1]), not {host:?}: a page that reached it by another name may be \
             a DNS-rebinding attack. Create a key (truce keys create) to serve other names"
        ))
    })
}

/// `host[:port]` or `[v6 address][:port]`: the host (without brackets) and
/// the port's text, if any; `None` when the brackets do not close, or
/// anything but a port (digits) follows the host (`127.0.0.1:1@elsewhere`).
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']')? {
            (address, "") => (address, None),
            (address, rest) => (address, Some(rest.strip_prefix(':')?)),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    port.is_none_or(|port| port.bytes().all(|b| b.is_ascii_digit()))
        .then_some((host, port))
}

/// Checks the `cors_origins` setting: `*` alone, or origins as a browser sends
/// them in `Origin` (`scheme://host[:port]`, http or https, no path).
pub fn check_origins(origins: &[String]) -> Result<(), String> {
    if origins.iter().any(|o| o == "*") && origins.len() > 1 {
        return Err("cors_origins: `*` allows every origin and cannot be listed with others".into());
    }
    for origin in origins.iter().filter(|o| *o != "*") {
        // As a browser writes it in `Origin`, or it would never match:
        // lowercase, no path, a port only if it is not the scheme's default.
        let (scheme, authority) = origin.split_once("://").unwrap_or(("", ""));
        let default_port = match scheme {
            "https" => Some("443"),
            "http" => Some("80"),
            _ => None,
        };
        let (host, port) = split_authority(authority).unwrap_or(("", None));
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'));
        let port_ok = port.is_none_or(|port| {
            !port.starts_with('0') && port.parse::<u16>().is_ok_and(|n| n > 0) && Some(port) != default_port
        });
        let plain = default_port.is_some() && host_ok && port_ok;
        if !plain || HeaderValue::from_str(origin).is_err() {
            return Err(format!(
                "cors_origins: {origin:?} is not an origin: write it as a browser sends it in `Origin`, \
                 scheme://host[:port] with http or https, in lowercase, with no path and no default port \
                 (e.g. https://app.example.com), or `*`"
            ));
        }
    }
    Ok(())
}

/// The app behind CORS for what a browser sends: its requests, and its
/// preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
/// Any other `OPTIONS` goes to the app itself, which answers it as it
/// answers a method a route lacks (405 with `Allow`, or 404), logged and
/// counted: the CORS layer answered every `OPTIONS` 200, on any path, and
/// unseen (no log line, no metric, no request's place taken).
#[derive(Clone)]
pub struct WithCors {
    cors: Cors<App>,
    app: App,
}

impl WithCors {
    /// `app` behind CORS for `origins` (checked by [`check_origins`]).
    pub fn new(origins: &[String], app: App) -> WithCors {
        WithCors {
            cors: layer(origins, app.clone()),
            app,
        }
    }
}

/// Whether `request` is a CORS preflight (Fetch, "CORS-preflight request").
fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Service<Request<Incoming>> for WithCors {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<<Cors<App> as Service<Request<Incoming>>>::Future, Answer>;

    /// Always ready, as the app is (the CORS layer asks the app alone).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if request.method() == Method::OPTIONS && !is_preflight(&request) {
            Either::Right(self.app.call(request))
        } else {
            Either::Left(self.cors.call(request))
        }
    }
}

/// `service` behind CORS for `origins` (checked by [`check_origins`]).
fn layer<S>(origins: &[String], service: S) -> Cors<S> {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(Duration::from_secs(CORS_MAX_AGE_S))
        .layer(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// A write a browser sent from a page of an origin not allowed is
    /// refused — the server's own name included, which a rebound page would
    /// claim —; reads, clients without `Origin` and the allowed origins pass.
    #[test]
    fn writes_from_pages_of_other_origins_are_refused() {
        let host = ("host", "127.0.0.1:7070");
        let allowed = vec!["https://app.example.com".to_string()];
        let refused = |method: Method, pairs: &[(&'static str, &str)], allowed: &[String]| {
            cross_origin_write(allowed, &method, &headers(pairs)).is_some()
        };
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(refused(
                method.clone(),
                &[host, ("origin", "https://evil.example")],
                &allowed
            ));
            assert!(refused(method.clone(), &[host, ("origin", "null")], &allowed));
            assert!(refused(
                method.clone(),
                &[host, ("origin", "http://127.0.0.1:7070")],
                &[]
            ));
            assert!(
                !refused(method.clone(), &[host], &allowed),
                "no Origin: not a browser's page"
            );
            assert!(!refused(
                method.clone(),
                &[host, ("origin", "https://app.example.com")],
                &allowed
            ));
            assert!(!refused(
                method,
                &[host, ("origin", "https://evil.example")],
                &["*".to_string()]
            ));
        }
        assert!(!refused(
            Method::GET,
            &[host, ("origin", "https://evil.example")],
            &[]
        ));
    }

    /// A keyless server answers only loopback names: a page whose name was
    /// pointed at 127.0.0.1 sends its own name in `Host`.
    #[test]
    fn a_keyless_server_answers_only_loopback_names() {
        let uri = Uri::from_static("/v1/tx");
        let rebound_to = |host: &str| rebound(&uri, &headers(&[("host", host)])).is_some();
        for ok in [
            "localhost",
            "localhost:7070",
            "LocalHost:1",
            "127.0.0.1",
            "127.0.0.1:7070",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:7070",
        ] {
            assert!(!rebound_to(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7070",
            "10.0.0.1:7070",
            "localhost.attacker.example",
            "[::2]:1",
            "",
            "127.0.0.1:7070@attacker.example",
            "localhost:x",
            "[::1]:7070@attacker.example",
        ] {
            assert!(rebound_to(bad), "{bad}");
        }
        // HTTP/2 carries no Host: the URI's authority says it.
        assert!(
            rebound(
                &Uri::from_static("http://attacker.example/v1/tx"),
                &HeaderMap::new()
            )
            .is_some()
        );
        assert!(
            rebound(
                &Uri::from_static("http://127.0.0.1:7070/v1/tx"),
                &HeaderMap::new()
            )
            .is_none()
        );
        assert!(
            rebound(&uri, &HeaderMap::new()).is_none(),
            "no name at all: not a browser"
        );
        // In absolute form the target names the host, whatever Host says.
        assert!(
            rebound(
                &Uri::from_static("http://attacker.example/v1/tx"),
                &headers(&[("host", "localhost")])
            )
            .is_some()
        );
    }

    /// RFC 9112, §3.2: one Host, and an HTTP/1.1 request has one.
    #[test]
    fn a_request_names_its_host_once() {
        let one = headers(&[("host", "localhost")]);
        let mut two = one.clone();
        two.append(header::HOST, HeaderValue::from_static("localhost"));
        let mut not_text = HeaderMap::new();
        not_text.insert(header::HOST, HeaderValue::from_bytes(b"h\xffst").unwrap());
        let none = HeaderMap::new();
        let refused = |version, headers: &HeaderMap| host_refusal(version, headers).is_some();
        assert!(!refused(Version::HTTP_11, &one));
        assert!(refused(Version::HTTP_11, &two));
        assert!(refused(Version::HTTP_2, &two));
        assert!(refused(Version::HTTP_11, &not_text));
        assert!(refused(Version::HTTP_11, &none));
        assert!(!refused(Version::HTTP_10, &none));
        assert!(!refused(Version::HTTP_2, &none));
    }

    #[test]
    fn origins_are_checked() {
        let ok = |list: &[&str]| check_origins(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[]).is_ok());
        assert!(ok(&["*"]).is_ok());
        assert!(
            ok(&[
                "https://app.example.com",
                "http://localhost:3000",
                "http://[::1]:8080",
                "http://[::1]",
                "https://a.com:8443",
                "http://127.0.0.1:65535"
            ])
            .is_ok()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a.com/path",
            "ftp://a.com",
            "https://",
            "https://a b",
            "https://App.example.com",
            "https://a.com:443",
            "http://a.com:80",
            "https://a.com:99999",
            "https://a.com:abc",
            "https://a.com:",
            "https://:8080",
            "https://a.com:0443",
            "https://[::1",
            "https://[::1]x",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
        assert!(ok(&["*", "https://a.com"]).is_err());
    }
}
