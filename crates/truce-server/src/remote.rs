//! What the commands that talk to a running server (`truce top`, `truce
//! backup`) share: a runtime of their own, and the Rust client for `--url`
//! with `--key` and `--cacert`.

/// Runs `work` to its end on a single-threaded runtime.
pub fn block_on<T>(work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(work)
}

/// `error` and each cause under it, as `error: cause: cause`: a transport
/// failure's own text says only that the request was not sent, its causes
/// why (a certificate not trusted, a connection refused).
pub fn failure(url: &str, error: &truce_client::ClientError) -> String {
    let mut text = format!("{url}: {error}");
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = e.source();
    }
    text
}

/// The client of the server at `url`, sending `key` when given, as `source`,
/// trusting `tls`'s certificates besides the system's.
pub fn client(
    url: &str,
    key: Option<&str>,
    tls: &crate::config::RemoteTls,
    source: &str,
) -> Result<truce_client::Client, String> {
    let mut builder = truce_client::Client::builder(url).source(source);
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    if let Some(path) = &tls.cacert {
        let pem = std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
        builder = builder
            .root_certificates_pem(&pem)
            .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    }
    builder.build().map_err(|e| e.to_string())
}
