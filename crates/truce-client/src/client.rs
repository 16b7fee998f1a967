//! The [`Client`] handle and its builder: base URL, API key, source label,
//! retry policy and timeouts. The calls themselves live in one module per
//! concept (`documents`, `query`, `tx`, `changes`, `ops`, `update`).

use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;

use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// The `Truce-Source` label sent when none is configured.
pub const SOURCE_DEFAULT: &str = "truce-client";
/// The longest `Truce-Source` label the server accepts, in characters.
pub const SOURCE_LEN_MAX: usize = 64;
/// How long one attempt may take by default, from sending to the end of the answer.
const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long connecting may take by default.
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// A handle on one Truce server. Cheap to clone: clones share the connection pool.
///
/// Every call sends `Truce-Source` (the label of the calling function) and
/// `Truce-Attempt` (which attempt of the caller's operation it is: `1`, or
/// `n/max` for [`update_with_retry`](Client::update_with_retry)'s rounds), and
/// retries as its [`RetryPolicy`] says; see the crate README for which calls
/// retry and why that is safe.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    pub(crate) api_key: Option<HeaderValue>,
    pub(crate) source: HeaderValue,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Duration,
    /// How long a whole call may take, its retries and waits included.
    pub(crate) deadline: Option<Duration>,
}

/// Options of a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    source: String,
    policy: RetryPolicy,
    timeout: Duration,
    connect_timeout: Duration,
    deadline: Option<Duration>,
    /// Roots trusted beside the platform's (a server's self-signed
    /// certificate, a private authority's).
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7070`) with
    /// default options.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        Client::builder(base_url).build()
    }

    /// A builder for a client of the server at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_string(),
            api_key: None,
            source: SOURCE_DEFAULT.to_string(),
            policy: RetryPolicy::default(),
            timeout: REQUEST_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            deadline: None,
            roots: Vec::new(),
        }
    }

    /// The same client, sending `label` as `Truce-Source` (conflicts and retries
    /// are counted under it on the server). Name the function making the calls.
    pub fn with_source(&self, label: &str) -> Result<Client, ClientError> {
        Ok(Client {
            source: source_header(label)?,
            ..self.clone()
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry_policy(&self, policy: RetryPolicy) -> Client {
        Client {
            policy,
            ..self.clone()
        }
    }

    /// The `Truce-Source` label this client sends.
    pub fn source(&self) -> &str {
        // Built from a checked printable-ASCII string, so always text.
        self.source.to_str().unwrap_or(SOURCE_DEFAULT)
    }

    /// The retry policy of this client.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.policy
    }

    /// [`url`](Self::url) for segments a caller named (collections, ids,
    /// index and counter names): none may be empty, `.` or `..`, which the
    /// URL would not carry as a segment (the server never sees the id, and
    /// answers another route).
    pub(crate) fn url_for(&self, segments: &[&str]) -> Result<Url, ClientError> {
        // The URL parser drops a tab, LF or CR rather than encode it, so
        // `"bob\n"` would name document bob, and `"\t_config"` the
        // collection's configuration, past the checks on the text. No
        // collection, id or index name holds a control character.
        if let Some(bad) = segments.iter().find(|s| s.chars().any(char::is_control)) {
            return Err(ClientError::InvalidArgument(format!(
                "{bad:?} holds a control character, which no collection, id or index name may hold"
            )));
        }
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(ClientError::InvalidArgument(format!(
                "{bad:?} cannot be a collection, id or index name in a URL (a URL resolves `.` and `..` as \
                 path steps); a document stored under such an id earlier is reached by a transaction's ops"
            )));
        }
        Ok(self.url(segments))
    }

    /// The URL of document `id` of `coll`. An id starting with `_` is
    /// refused here: no document has one (the server refuses it), and its
    /// URL names another route (`_config`, `_changes`, `_indexes`), whose
    /// answer would be read as the document's, or a write sent to it.
    pub(crate) fn doc_url(&self, coll: &str, id: &str) -> Result<Url, ClientError> {
        if id.starts_with('_') {
            return Err(ClientError::InvalidArgument(format!(
                "document id {id:?} starts with '_', which is reserved: its URL names another route"
            )));
        }
        self.url_for(&["v1", "c", coll, id])
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded
    /// (so ids may hold `/`, `?`, `#`, spaces and any UTF-8 but control
    /// characters, which [`url_for`](Self::url_for) refuses).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <key>` on every call.
    pub fn api_key(mut self, key: &str) -> ClientBuilder {
        self.api_key = Some(key.to_string());
        self
    }

    /// The `Truce-Source` label (1–64 printable ASCII characters); default
    /// [`SOURCE_DEFAULT`].
    pub fn source(mut self, label: &str) -> ClientBuilder {
        self.source = label.to_string();
        self
    }

    /// The retry policy; default [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> ClientBuilder {
        self.policy = policy;
        self
    }

    /// How long one attempt may take (a long poll adds its own wait); default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// How long a whole call may take, every attempt and every wait between
    /// them included (a long poll adds its own wait); default none: up to
    /// the retry policy's attempts, each up to [`timeout`](Self::timeout).
    /// An attempt is given only what is left, and no retry is waited for
    /// that would start past it: the call then ends with its last answer or
    /// failure, as when its attempts run out (a write's error names its
    /// idempotency key where its outcome is unknown). More than zero.
    pub fn deadline(mut self, deadline: Duration) -> ClientBuilder {
        self.deadline = Some(deadline);
        self
    }

    /// How long connecting may take; default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Also trusts the certificates of `pem` (one or more, PEM-encoded) as
    /// roots for an `https` server: its own self-signed certificate, or a
    /// private authority's. The platform's roots are trusted without it.
    pub fn root_certificates_pem(mut self, pem: &[u8]) -> Result<ClientBuilder, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::InvalidArgument(format!("root certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "root certificates: no PEM certificate found".into(),
            ));
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// Checks the options and builds the client.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.deadline == Some(Duration::ZERO) {
            return Err(ClientError::InvalidArgument(
                "the deadline is more than zero".into(),
            ));
        }
        let base = Url::parse(&self.base_url)
            .map_err(|e| ClientError::InvalidArgument(format!("base URL {:?}: {e}", self.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::InvalidArgument(format!(
                "base URL {:?} is not an http URL",
                self.base_url
            )));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ClientError::InvalidArgument(format!(
                "base URL {:?} may not have a query or fragment",
                self.base_url
            )));
        }
        let api_key = match self.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| ClientError::InvalidArgument("the API key is not header text".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(base.scheme() == "https", self.roots)?)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| ClientError::InvalidArgument(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            api_key,
            source: source_header(&self.source)?,
            policy: self.policy,
            timeout: self.timeout,
            deadline: self.deadline,
        })
    }
}

/// rustls with ring (the server's provider: no second crypto library to
/// build), given to this client alone rather than made the process's
/// default, which is the application's to choose. For an `https` base URL,
/// certificates are verified against the platform's roots and `roots`; the
/// platform's are read only then (each build reads and parses every system
/// certificate, and fails on a machine that has none), never for `http`.
fn tls_config(
    https: bool,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| ClientError::InvalidArgument(format!("TLS: {e}"));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    if !https {
        return Ok(config
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider).map_err(tls_error)?;
    Ok(config
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth())
}

/// A checked `Truce-Source` value: 1–64 printable ASCII characters.
fn source_header(label: &str) -> Result<HeaderValue, ClientError> {
    let printable = label.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if label.is_empty() || label.len() > SOURCE_LEN_MAX || !printable {
        return Err(ClientError::InvalidArgument(format!(
            "source label {label:?} must be 1–{SOURCE_LEN_MAX} printable ASCII characters"
        )));
    }
    HeaderValue::from_str(label).map_err(|_| ClientError::InvalidArgument(format!("source label {label:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client brings its own TLS provider and leaves the process's
    /// default to the application (installing it made an application's
    /// own `install_default().unwrap()` panic); PEM roots are read, and a
    /// file holding none is refused.
    #[test]
    fn tls_is_the_clients_own_and_roots_come_from_pem() {
        let client = Client::new("https://127.0.0.1:7070");
        assert!(client.is_ok());
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        let refused = Client::builder("https://h").root_certificates_pem(b"not a certificate");
        assert!(matches!(refused, Err(ClientError::InvalidArgument(_))));
    }

    #[test]
    fn urls_encode_each_segment_and_keep_a_path_prefix() {
        let client = Client::new("http://127.0.0.1:7070").expect("valid");
        assert_eq!(
            client.url(&["v1", "c", "users", "a/b c?#é"]).as_str(),
            "http://127.0.0.1:7070/v1/c/users/a%2Fb%20c%3F%23%C3%A9"
        );
        let prefixed = Client::new("http://host/truce/").expect("valid");
        assert_eq!(prefixed.url(&["healthz"]).as_str(), "http://host/truce/healthz");
        let no_slash = Client::new("http://host/truce").expect("valid");
        assert_eq!(no_slash.url(&["v1", "tx"]).as_str(), "http://host/truce/v1/tx");
    }

    /// An id starting with `_` is refused before anything is sent: `PUT
    /// /v1/c/users/_config` would have replaced the collection's
    /// configuration with an admin key.
    #[test]
    fn reserved_ids_are_refused_not_sent_to_other_routes() {
        let client = Client::new("http://127.0.0.1:7070").expect("valid");
        for id in ["_config", "_changes", "_"] {
            assert!(
                matches!(client.doc_url("users", id), Err(ClientError::InvalidArgument(_))),
                "{id}"
            );
        }
        assert!(client.doc_url("users", "a_b").is_ok());
        // A tab, LF or CR would be dropped by the URL parser, not encoded:
        // "bob\n" named bob, "\t_config" the configuration, ".\t." a step up.
        for (coll, id) in [
            ("users", "bob\n"),
            ("users", "\t_config"),
            ("users", ".\t."),
            ("us\rers", "bob"),
        ] {
            let refused = client.doc_url(coll, id).expect_err(id);
            assert_eq!(refused.code(), "invalid_argument", "{coll:?} {id:?}");
        }
        for bad in ["a\u{7f}", "a\u{85}"] {
            assert!(client.doc_url("users", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for url in [
            "",
            "127.0.0.1:7070",
            "mailto:a@b",
            "ftp://host",
            "http://host/?q=1",
        ] {
            assert!(
                matches!(Client::new(url), Err(ClientError::InvalidArgument(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn source_labels_are_checked() {
        let client = Client::new("http://h").expect("valid");
        assert_eq!(client.source(), SOURCE_DEFAULT);
        assert_eq!(
            client.with_source("stats:heartbeat").expect("valid").source(),
            "stats:heartbeat"
        );
        for bad in ["", "tab\there", "é", &"x".repeat(SOURCE_LEN_MAX + 1)] {
            assert!(client.with_source(bad).is_err(), "{bad:?}");
        }
        assert!(client.with_source(&"x".repeat(SOURCE_LEN_MAX)).is_ok());
        assert!(Client::builder("http://h").source("").build().is_err());
    }

    #[test]
    fn api_keys_must_be_header_text() {
        assert!(Client::builder("http://h").api_key("k-123").build().is_ok());
        assert!(Client::builder("http://h").api_key("bad\nkey").build().is_err());
    }
}
