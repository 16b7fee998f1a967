//! `truce serve`: open the database, check the security settings, serve HTTP(S)
//! until SIGTERM/SIGINT, then finish what is in flight and close cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use truce::{Db, Options};

use crate::config::{LogFormat, ServeArgs, Settings};
use crate::http::{self, AppState};
use crate::keys::KeyStore;

/// How long shutdown waits for in-flight requests before closing anyway.
const SHUTDOWN_GRACE_MS: u64 = 10_000;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Refuses to expose an unauthenticated server beyond loopback.
fn check_exposure(settings: &Settings, keys: &KeyStore) -> Result<(), String> {
    if !settings.listen.ip().is_loopback() && keys.is_empty() && !settings.insecure_no_auth {
        return Err(format!(
            "refusing to listen on {} without API keys: anyone reaching it could read and write everything. \
             Create a key with `truce keys create --role admin --data {}`, or pass --insecure-no-auth.",
            settings.listen,
            settings.data.display()
        ));
    }
    Ok(())
}

/// Runs the server until a shutdown signal.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let settings = args.settings()?;
    init_logging(settings.log_format);
    truce::failpoints::setup_from_env(); // no-op unless built with the `failpoints` feature
    std::fs::create_dir_all(&settings.data)
        .map_err(|e| format!("cannot create data directory {}: {e}", settings.data.display()))?;
    let keys = KeyStore::open(&settings.data)?;
    check_exposure(&settings, &keys)?;
    let options = Options {
        hot_spots: settings.hot_spots,
        fjall: truce::storage::FjallOptions {
            cache_bytes: settings.cache_mib << 20,
            memtable_bytes: settings.memtable_mib << 20,
        },
        ..Options::default()
    };
    let db = Db::open(&settings.data, options).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("truce-http")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let state = Arc::new(AppState {
        db: db.clone(),
        keys,
        permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        metrics: http::metrics::Metrics::new(db.clone()),
    });
    let app = http::router(state, settings.max_body_bytes);
    let result = runtime.block_on(serve(app, &settings));
    // Every acknowledged write is already durable; closing joins the committer.
    runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_GRACE_MS));
    drop(db);
    tracing::info!("stopped");
    result
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

async fn serve(app: axum::Router, settings: &Settings) -> Result<(), String> {
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    match &settings.tls {
        None => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(data = %settings.data.display(), "listening on {scheme}://{local}");
            // Graceful shutdown alone would wait for every connection to close, and
            // change-feed streams (SSE, long polls) never do: bound the wait as the
            // TLS path does.
            let (signalled, signal) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = signalled.send(true);
            });
            let (mut stop_accepting, mut grace) = (signal.clone(), signal);
            let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop_accepting.wait_for(|s| *s).await;
            });
            let grace_over = async move {
                let _ = grace.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
            };
            tokio::select! {
                result = graceful => result.map_err(|e| e.to_string()),
                () = grace_over => {
                    tracing::warn!("requests still open {SHUTDOWN_GRACE_MS} ms after the signal; closing them");
                    Ok(())
                }
            }
        }
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| format!("cannot load TLS certificate/key: {e}"))?;
            let handle = axum_server::Handle::new();
            let on_signal = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.graceful_shutdown(Some(Duration::from_millis(SHUTDOWN_GRACE_MS)));
            });
            tracing::info!(data = %settings.data.display(), "listening on {scheme}://{}", settings.listen);
            axum_server::bind_rustls(settings.listen, config)
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .map_err(|e| format!("cannot serve on {}: {e}", settings.listen))
        }
    }
}
