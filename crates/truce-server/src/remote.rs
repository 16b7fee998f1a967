//! What the commands that talk to a running server (`truce top`, `truce
//! backup`) share: a runtime of their own, and the Rust client for `--url`
//! with `--key`.

/// Runs `work` to its end on a single-threaded runtime.
pub fn block_on<T>(work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(work)
}

/// The client of the server at `url`, sending `key` when given, as `source`.
pub fn client(url: &str, key: Option<&str>, source: &str) -> Result<truce_client::Client, String> {
    let mut builder = truce_client::Client::builder(url).source(source);
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    builder.build().map_err(|e| e.to_string())
}
