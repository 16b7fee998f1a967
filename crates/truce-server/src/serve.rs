//! `truce serve`: open the database, check the security settings, serve HTTP(S)
//! until SIGTERM/SIGINT, then finish what is in flight and close cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use tokio::sync::Semaphore;
use truce::{Db, Options};

use axum_server::accept::Accept;

use crate::config::{LogFormat, ServeArgs, Settings};
use crate::http::{self, AppState};
use crate::http_threads::HttpThreads;
use crate::keys::KeyStore;

/// How long shutdown waits for in-flight requests before closing anyway.
const SHUTDOWN_GRACE_MS: u64 = 10_000;

/// Longest a client may take to send a request line and headers, in ms. Without
/// it a client sending a byte a second (slow loris) holds a connection forever,
/// and enough of them exhaust the server's files. Ten seconds is far beyond what
/// any client on any real network needs for a few hundred bytes.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// The most an HTTP/1 request line and its headers may take together, in
/// bytes (hyper's read buffer, past which a head is 431; bodies are then
/// read through it 32 KiB at a time, and answers flushed at that size).
/// With hyper's default, about 400 KiB, a connection that sent that much of
/// a head and never finished it held half a megabyte until its header
/// timeout (the buffer grows by doubling): 5,000 of them took 2.6 GB in an
/// audit's run against a release build. 32 KiB is twice Node's default and
/// nginx's; ids are at most 512 bytes, cursors 4 KiB.
pub const HTTP1_HEAD_BYTES_MAX: usize = 32 * 1024;

/// Connections the kernel holds for the server to accept. The usual default
/// (128) is filled by one burst of clients, whose connects are then retried
/// only after a second; 1024 is nginx's and Go's order (the kernel caps it at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG_CONNECTIONS: u32 = 1024;

/// Wait before accepting again after `accept` failed (out of files).
const ACCEPT_RETRY_MS: u64 = 50;

/// Connections open at once by default (`--max-connections`): past this a
/// new one is closed as soon as it is accepted. Each open connection costs
/// a file, a task and its buffers; this bounds them all, far above what a
/// server serves at once (requests in flight: `--max-concurrent-requests`).
pub const MAX_CONNECTIONS_DEFAULT: usize = 16_384;
/// The largest `--max-connections`.
pub const MAX_CONNECTIONS_MAX: usize = 1_000_000;

/// The open connections (a gauge) and those closed at once because
/// `--max-connections` were open (a counter), for `/metrics`.
#[derive(Clone)]
pub struct Connections {
    max: i64,
    open: prometheus_client::metrics::gauge::Gauge,
    refused: prometheus_client::metrics::counter::Counter,
}

/// One open connection's place in [`Connections`], given back when dropped.
pub struct Open(prometheus_client::metrics::gauge::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Connections {
    /// At most `max` open at once.
    pub fn new(max: usize) -> Connections {
        Connections {
            max: i64::try_from(max).unwrap_or(i64::MAX),
            open: Default::default(),
            refused: Default::default(),
        }
    }

    /// Registers the gauge and the counter.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("connections_open", "Connections open", self.open.clone());
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted because --max-connections were open",
            self.refused.clone(),
        );
    }

    /// A place for one more connection, or `None` (counted, and logged at
    /// the first refusal and every 1,000th after) when all are taken. Only
    /// the accepting thread takes places, so the count never passes `max`.
    fn admit(&self) -> Option<Open> {
        if self.open.get() >= self.max {
            let before = self.refused.inc();
            if before.is_multiple_of(1000) {
                tracing::warn!(
                    refused = before + 1,
                    "refusing connections: {} are open (--max-connections)",
                    self.max
                );
            }
            return None;
        }
        self.open.inc();
        Some(Open(self.open.clone()))
    }
}

/// What a directory may hold before `truce serve` makes a database of it: an
/// API keys file made first (`truce keys create --data DIR`) and its lock,
/// and a filesystem's `lost+found` (a volume mounted there).
const DATA_DIRECTORY_MAY_HOLD: [&str; 3] =
    [crate::keys::KEYS_FILE, crate::keys::KEYS_LOCK_FILE, "lost+found"];

/// Creates the data directory, or refuses one that holds other things and no
/// Truce database (a mistyped `--data` would otherwise get a database written
/// in among someone's files).
fn prepare_data_directory(data: &std::path::Path) -> Result<(), String> {
    make_private_directory(data)
        .map_err(|e| format!("cannot create data directory {}: {e}", data.display()))?;
    if truce::storage::FjallStorage::holds_database(data) {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(data).map_err(|e| format!("cannot read data directory {}: {e}", data.display()))?;
    for entry in entries {
        let name = entry
            .map_err(|e| format!("cannot read data directory {}: {e}", data.display()))?
            .file_name();
        let name = name.to_string_lossy();
        if !DATA_DIRECTORY_MAY_HOLD.contains(&name.as_ref()) {
            return Err(format!(
                "data directory {} holds no Truce database but is not empty ({name}, …): give a new or empty \
                 directory, or the one a Truce server made",
                data.display()
            ));
        }
    }
    Ok(())
}

/// Makes `dir` (and its missing parents) readable by its owner alone, as
/// PostgreSQL keeps its data directory: the documents are in files the
/// umask would leave readable by every local user. A directory that exists
/// is left as it is, permissions included.
pub(crate) fn make_private_directory(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
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
    if settings.cors_origins.iter().any(|o| o == "*") && keys.is_empty() && !settings.insecure_no_auth {
        return Err(
            "refusing --cors-origins '*' without API keys: any web page a user of this machine opens \
             could read and write everything. Create a key with `truce keys create`, list the origins \
             that may call it, or pass --insecure-no-auth."
                .into(),
        );
    }
    Ok(())
}

/// Runs the server until a shutdown signal.
pub fn run(args: ServeArgs) -> Result<(), String> {
    // The log is set up first, in the format the flag or the file asks for
    // (a file that does not read names none), so that every reason not to
    // start after that — settings that do not hold, a `TRUCE_LOG` that means
    // nothing — is said in it.
    let file = args.file();
    let format = args.log_format(file.as_ref().ok());
    let result = crate::log::init(format)
        .and(file)
        .and_then(|file| args.settings_with(file))
        .and_then(serve_with);
    match result {
        // With JSON logs the reason goes through the log too, as one JSON
        // line, so that a pipeline reading them sees why the server
        // stopped; the empty message tells `main` it was said. A log that
        // leaves errors out (`TRUCE_LOG=off`) would say nothing: `main`
        // says it then, as plain text.
        Err(message) if format == LogFormat::Json && tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!("{message}");
            Err(String::new())
        }
        result => result,
    }
}

/// [`run`] once its logging is set up.
fn serve_with(settings: Settings) -> Result<(), String> {
    truce::failpoints::setup_from_env(); // no-op unless built with the `failpoints` feature
    let files = FilesPlan::new(
        open_files_limit(),
        settings.max_connections,
        settings.http_threads,
    )?;
    // A port already taken is said before the database is opened (its
    // recovery can take long) — bound, not listened on, so that no client
    // waits in a backlog while the database opens.
    bind(settings.listen).map_err(|e| cannot_listen(settings.listen, &e))?;
    // This thread accepts connections and waits for the signal; the HTTP
    // threads serve them (`http_threads.rs`). Its runtime comes first, to
    // install the signal handlers before the database opens (its recovery
    // can take long): a signal meanwhile is then a clean stop once it has
    // opened, not the default action (the process killed mid-recovery).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let signal = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    // What refuses to start refuses before the data directory is made: a
    // server refused leaves none behind (a data directory not made yet
    // has no keys, and holds no backup root).
    let tls = match &settings.tls {
        Some((cert, key)) => Some(runtime.block_on(load_tls(cert, key))?),
        None => None,
    };
    if settings.data.exists() && !settings.data.is_dir() {
        return Err(format!(
            "data directory {} is a file, not a directory",
            settings.data.display()
        ));
    }
    let keys = KeyStore::open(&settings.data)?;
    check_exposure(&settings, &keys)?;
    if let Some(why) = truce::engine::unfinished_backup(&settings.data) {
        return Err(why);
    }
    let backups = http::backup::Backups::new(settings.backup_root.clone(), &settings.data)?;
    prepare_data_directory(&settings.data)?;
    let options = Options {
        hot_spots: settings.hot_spots,
        fjall: truce::storage::FjallOptions {
            cache_bytes: settings.cache_mib << 20,
            memtable_bytes: settings.memtable_mib << 20,
            workers_nice: settings.storage_workers_nice,
            cached_files: files.cached_files,
        },
        commit_poll: Duration::from_micros(settings.commit_poll_us),
        min_free_disk_bytes: settings.min_free_disk_mib << 20,
        page_memory_bytes: usize::try_from(settings.page_memory_mib << 20).unwrap_or(usize::MAX),
        collections_max: settings.max_collections,
        ..Options::default()
    };
    let db = Db::open(&settings.data, options).map_err(|e| e.to_string())?;
    let threads = HttpThreads::start(settings.http_threads)
        .map_err(|e| format!("cannot start the HTTP threads: {e}"))?;
    let answers = http::answers::Answers::new(
        usize::try_from(settings.answer_memory_mib << 20).unwrap_or(usize::MAX),
        Duration::from_millis(settings.answer_stall_ms),
    );
    let connections = Connections::new(files.connections);
    // Turned at the shutdown signal: connections close, long-lived reads end.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        metrics: http::metrics::Metrics::new(db.clone(), &answers, &connections),
        answers,
        db: db.clone(),
        keys,
        permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        long_polls: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        key_streams: http::extract::KeyStreams::new(settings.max_streams_per_key),
        parses: Arc::new(Semaphore::new(settings.http_threads.max(1))),
        scrapes: Semaphore::new(http::SCRAPES_AT_ONCE),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        data: settings.data.clone(),
        cors_origins: settings.cors_origins.clone(),
        any_host: settings.insecure_no_auth,
        backups,
        config_changes: Arc::default(),
        max_body_bytes: settings.max_body_bytes,
        bodies: truce::budget::Budget::new(
            usize::try_from(settings.body_memory_mib << 20).unwrap_or(usize::MAX),
        ),
        stopping,
        server_errors: Default::default(),
    });
    let app = http::app(Arc::clone(&state));
    // Revocations reach open streams when no request comes to reload the keys.
    let keys = Arc::clone(&state);
    runtime.spawn(async move { keys.keys.follow().await });
    let write_stalls = state.answers.write_stalls();
    let serving = Serving {
        threads,
        write_stalls,
        connections,
    };
    let result = runtime.block_on(serve(app, &settings, tls, serving, signal, stop));
    // A backup cut short by the exit would leave its `.partial`.
    state.backups.stop_and_wait();
    // Every acknowledged write is already durable. Closing joins the committer
    // once the last handle is gone (blocking work still running past the
    // grace period holds one, and the process exits without waiting for it).
    drop(runtime);
    drop(db);
    tracing::info!("stopped");
    result
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C). The handlers are installed when
/// this is called (within a runtime), not when it is first awaited: called
/// before the database opens, a signal that comes while it starts is a clean
/// shutdown rather than the default action (the process killed).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let signalled = signalled();
    async move {
        signalled.await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}

#[cfg(unix)]
fn signalled() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn on(installed: std::io::Result<Signal>) {
        match installed {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
    let terminate = on(signal(SignalKind::terminate()));
    let interrupt = on(signal(SignalKind::interrupt()));
    // What a closing terminal or SSH session sends: the same clean stop
    // (the default action killed the process mid-request, and left a
    // running backup's `.partial`) — unless the server was started to
    // ignore it (`nohup`), which it keeps doing.
    let hangup = if hangup_ignored() {
        None
    } else {
        Some(signal(SignalKind::hangup()))
    };
    let hangup = async move {
        match hangup {
            Some(installed) => on(installed).await,
            None => std::future::pending().await,
        }
    };
    async move {
        tokio::select! {
            () = terminate => {},
            () = interrupt => {},
            () = hangup => {},
        }
    }
}

/// Whether SIGHUP is ignored (`nohup`, `trap '' HUP`), as it was inherited.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: a null new action makes sigaction only read the current one
    // into `old`, a zeroed struct of the right type.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(not(unix))]
fn signalled() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What serves the connections: the HTTP threads, the count of answers
/// whose writes stalled, and the connections' cap.
struct Serving {
    threads: HttpThreads,
    write_stalls: prometheus_client::metrics::counter::Counter,
    connections: Connections,
}

/// The TLS configuration of `--tls-cert` and `--tls-key`, loaded (and so
/// checked) before anything else starts.
async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| format!("cannot load TLS certificate/key: {e}"))
}

async fn serve(
    app: http::Service,
    settings: &Settings,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    serving: Serving,
    signal: impl std::future::Future<Output = ()>,
    stop: tokio::sync::watch::Sender<bool>,
) -> Result<(), String> {
    let Serving {
        threads,
        write_stalls,
        connections,
    } = serving;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = listen(settings.listen).map_err(|e| cannot_listen(settings.listen, &e))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let first_byte = FirstByteWithin {
        first_byte_ms: HEADER_READ_TIMEOUT_MS,
        write_stall: Duration::from_millis(settings.answer_stall_ms) * WRITE_STALL_TIMES_ANSWER_STALL,
        write_stalls,
    };
    match tls {
        None => {
            tracing::info!(data = %settings.data.display(), "listening on {scheme}://{local}");
            serve_connections(listener, first_byte, app, threads, connections, signal, stop).await
        }
        Some(config) => {
            tracing::info!(data = %settings.data.display(), "listening on {scheme}://{local}");
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(first_byte);
            serve_connections(listener, tls, app, threads, connections, signal, stop).await
        }
    }
}

/// Accepts connections until `signal` and hands each to the next
/// HTTP thread, which runs `acceptor` (the first-byte wait, TLS) and then
/// HTTP on it; one past `connections`' limit is closed at once. After the
/// signal, `stop` turns true: no new connections; long polls answer and
/// change-feed streams end (`Waited::Stopping`); each open connection
/// finishes the request it is serving and closes, for at most
/// [`SHUTDOWN_GRACE_MS`]; then the HTTP threads stop, closing whatever is
/// left.
async fn serve_connections<A>(
    listener: std::net::TcpListener,
    acceptor: A,
    app: http::Service,
    mut threads: HttpThreads,
    connections: Connections,
    signal: impl std::future::Future<Output = ()>,
    stop: tokio::sync::watch::Sender<bool>,
) -> Result<(), String>
where
    A: Accept<tokio::net::TcpStream, (), Service = ()> + Clone + Send + Sync + 'static,
    A::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A::Future: Send,
{
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let stopping = stop.subscribe();
    let accept_failures = crate::log::Throttle::default();
    // Each connection holds a sender; the receiver ends when all are gone.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(signal);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of files or memory: back off instead of spinning.
                if let Some(left_out) = accept_failures.admit() {
                    tracing::warn!(left_out, "cannot accept a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Some(place) = connections.admit() else {
            drop(stream);
            continue;
        };
        // Registered with the HTTP thread's runtime instead of this one.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot hand a connection over: {e}");
                continue;
            }
        };
        threads.spawn(serve_connection(
            stream,
            acceptor.clone(),
            app.clone(),
            stopping.clone(),
            (open.clone(), place),
        ));
    }
    // Refuse new connections at once rather than leave them waiting.
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    // A second signal ends the grace period at once.
    let again = signalled();
    tokio::select! {
        closed = tokio::time::timeout(grace, all_closed.recv()) => if closed.is_err() {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE_MS} ms: closing them");
        },
        () = again => tracing::warn!("a second signal: closing the connections still open"),
    }
    threads.stop();
    Ok(())
}

/// One connection, on its HTTP thread: `acceptor`, then HTTP/1 or HTTP/2
/// until the client closes or `stopping` turns true, then a graceful close.
async fn serve_connection<A>(
    stream: std::net::TcpStream,
    acceptor: A,
    app: http::Service,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    _open: (tokio::sync::mpsc::Sender<()>, Open),
) where
    A: Accept<tokio::net::TcpStream, (), Service = ()>,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let accepted = tokio::select! {
        accepted = acceptor.accept(stream, ()) => accepted,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let Ok((stream, ())) = accepted else {
        return;
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    limit_heads(&mut builder);
    let connection = builder.serve_connection_with_upgrades(
        hyper_util::rt::TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(app),
    );
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// How long an HTTP/2 connection may go without receiving anything before
/// it is pinged, and how long the ping's answer may take: long enough for a
/// pong queued behind megabytes of answers on a slow link (gRPC's default).
pub const HTTP2_PING_MS: u64 = 20_000;

/// Closes an HTTP/1 connection whose request headers take longer than
/// [`HEADER_READ_TIMEOUT_MS`] to arrive once they have begun (also an idle
/// keep-alive connection between requests), and an HTTP/2 connection whose
/// peer does not answer a ping (sent after [`HTTP2_PING_MS`] without a
/// frame) within as long: a client that opened it and went silent, or never
/// spoke HTTP/2 past its preface, no longer holds it for ever. An HTTP/1
/// request line and headers may take [`HTTP1_HEAD_BYTES_MAX`] bytes at most.
fn limit_heads(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    let ping = Duration::from_millis(HTTP2_PING_MS);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
        .max_buf_size(HTTP1_HEAD_BYTES_MAX);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(ping))
        .keep_alive_timeout(ping);
}

/// A listening socket with a backlog of [`LISTEN_BACKLOG_CONNECTIONS`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind(addr)?.listen(LISTEN_BACKLOG_CONNECTIONS)?.into_std()
}

/// A socket bound to `addr`, not listening yet.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

fn cannot_listen(addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    format!("cannot listen on {addr}: {e}")
}

/// Drops a connection that sends nothing for `first_byte_ms` after it is
/// accepted. hyper's header read timeout starts only once a first byte has
/// told HTTP/1 from HTTP/2, so without this an idle connection would be held
/// forever. Sets `TCP_NODELAY` on the rest: an answer is written whole, and
/// Nagle's algorithm would only hold it back behind the client's delayed ACK.
/// Each accepted connection's writes may stay blocked for `write_stall` at
/// most ([`WriteStall`]), each time counted in `write_stalls`.
#[derive(Clone)]
struct FirstByteWithin {
    first_byte_ms: u64,
    write_stall: Duration,
    write_stalls: prometheus_client::metrics::counter::Counter,
}

/// A connection's writes may stay blocked for this many times
/// `--answer-stall-ms` (60 s by default, as nginx's `send_timeout`): longer
/// than an answer may stall before it is dropped to make room, as some
/// clients read in bursts — curl's `--limit-rate` takes megabytes at once,
/// then reads nothing for tens of seconds — and are cut only when needed.
pub const WRITE_STALL_TIMES_ANSWER_STALL: u32 = 2;

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for FirstByteWithin {
    type Stream = WriteStall<tokio::net::TcpStream>;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<(Self::Stream, S)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let within = Duration::from_millis(self.first_byte_ms);
        let (write_stall, write_stalls) = (self.write_stall, self.write_stalls.clone());
        Box::pin(async move {
            match tokio::time::timeout(within, stream.peek(&mut [0u8; 1])).await {
                Ok(peeked) => {
                    peeked?;
                    stream.set_nodelay(true)?;
                    limit_unsent(&stream);
                    Ok((WriteStall::new(stream, write_stall, write_stalls), service))
                }
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        })
    }
}

/// A connection whose writes may stay blocked for at most `limit` in a row
/// (`WRITE_STALL_TIMES_ANSWER_STALL` × `--answer-stall-ms`), after which the
/// write fails, hyper closes the connection, and `stalls` counts it. A client that stops reading otherwise holds for ever what the
/// socket's buffers and hyper's write buffer (up to about 400 KB) keep for
/// it, answers `http::answers` no longer counts. Costs nothing while writes go
/// through; the timer is made on the first blocked write and re-armed after.
struct WriteStall<S> {
    inner: S,
    limit: Duration,
    stalls: prometheus_client::metrics::counter::Counter,
    /// Armed while a write is blocked.
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<S> WriteStall<S> {
    fn new(inner: S, limit: Duration, stalls: prometheus_client::metrics::counter::Counter) -> WriteStall<S> {
        WriteStall {
            inner,
            limit,
            stalls,
            blocked: None,
            armed: false,
        }
    }

    /// `polled`, or an error once writes have been blocked for the limit.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalls.inc();
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client read nothing of its answers for the write stall time",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open files to its hard limit, as Go and
/// nginx do: each connection is a file, and a low soft limit (often 1024) would
/// make the server stop accepting at a thousand idle clients.
#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return Some(limit.rlim_max);
            }
            tracing::warn!(soft = limit.rlim_cur, "cannot raise the open files limit");
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// Files the server keeps for itself beyond its databases' and its HTTP
/// threads': standard streams, the listener, the accepting runtime's
/// polling and waking files, the keys file, certificates, the logs.
const FILES_OF_THE_SERVER: u64 = 64;

/// Files each HTTP thread's runtime holds: its epoll and its waker.
const FILES_PER_HTTP_THREAD: u64 = 2;

/// How the open-files limit is shared: the storage's files for the
/// database and for a backup being written (each a fjall database with
/// `cached_files` tables open at most), the server's own, and connections
/// — fewer than `--max-connections` when the limit is low. Connections
/// that took the storage's files made a flush fail with EMFILE, which
/// stops every write until a restart (an audit of 8f3cf1a, `ulimit -n
/// 1024` and 1,100 connections).
#[derive(Debug, PartialEq, Eq)]
struct FilesPlan {
    cached_files: usize,
    connections: usize,
}

impl FilesPlan {
    /// The table cache at an open-files limit of `limit` (a low limit
    /// shrinks it too, down to fjall's least), and the files kept for the
    /// storage and the server.
    fn kept(limit: u64, http_threads: usize) -> (usize, u64) {
        use truce::storage::{FJALL_CACHED_FILES, FJALL_CACHED_FILES_MIN, FJALL_FILES_BESIDES_CACHED};
        let cached_files = usize::try_from(limit / 8)
            .unwrap_or(usize::MAX)
            .clamp(FJALL_CACHED_FILES_MIN, FJALL_CACHED_FILES);
        let kept = 2 * (cached_files + FJALL_FILES_BESIDES_CACHED) as u64
            + FILES_OF_THE_SERVER
            + FILES_PER_HTTP_THREAD * http_threads as u64;
        (cached_files, kept)
    }

    /// The plan for an open-files limit of `limit` (`None`: unknown, the
    /// defaults), at most `max_connections` and `http_threads`.
    fn new(limit: Option<u64>, max_connections: usize, http_threads: usize) -> Result<FilesPlan, String> {
        let Some(limit) = limit else {
            return Ok(FilesPlan {
                cached_files: truce::storage::FJALL_CACHED_FILES,
                connections: max_connections,
            });
        };
        let (cached_files, kept) = FilesPlan::kept(limit, http_threads);
        if limit < kept + CONNECTIONS_LEAST {
            // The kept files grow with the limit: the least that works is
            // found, not computed from this one.
            let least = (limit..)
                .find(|&l| l >= FilesPlan::kept(l, http_threads).1 + CONNECTIONS_LEAST)
                .unwrap_or(u64::MAX);
            return Err(format!(
                "the open-files limit is {limit}: the storage and the server keep {kept} files, which leaves \
                 too few for connections; raise it to at least {least} (ulimit -n, or LimitNOFILE= in a systemd \
                 unit)"
            ));
        }
        let room = usize::try_from(limit - kept).unwrap_or(usize::MAX);
        if room < max_connections {
            tracing::info!(
                open_files = limit,
                kept_for_storage = kept,
                "at most {room} connections at once (not --max-connections {max_connections}): the open-files \
                 limit leaves no more"
            );
        }
        Ok(FilesPlan {
            cached_files,
            connections: room.min(max_connections),
        })
    }
}

/// The fewest connections an open-files limit must leave room for.
const CONNECTIONS_LEAST: u64 = 16;

/// Bytes a connection's socket may hold that its client has not been sent
/// yet (`TCP_NOTSENT_LOWAT`): past them a write waits. Without it the kernel
/// takes megabytes of an answer at once and wakes the writer only once about
/// a third of that has drained, so a client reading a large answer slowly
/// (under 40 KB/s) showed no progress for longer than the stall time, and
/// lost its answer when the memory of answers was at its limit
/// (`http::answers`). The data in flight is not bounded by it.
pub const UNSENT_BYTES_MAX: u32 = 64 * 1024;

#[cfg(target_os = "linux")]
fn limit_unsent(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let bytes = UNSENT_BYTES_MAX as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&bytes`, a live c_int.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(
            "cannot set TCP_NOTSENT_LOWAT: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent(_stream: &tokio::net::TcpStream) {}

#[cfg(test)]
mod tests {
    use super::{Accept, FilesPlan, FirstByteWithin, WriteStall};

    #[test]
    fn the_open_files_limit_is_shared_between_storage_and_connections() {
        let plan = |limit, max| FilesPlan::new(limit, max, 2);
        let share = |cached_files, connections| {
            Ok(FilesPlan {
                cached_files,
                connections,
            })
        };
        // Unknown, or plenty: the defaults.
        assert_eq!(plan(None, 16_384), share(512, 16_384));
        assert_eq!(plan(Some(1 << 20), 16_384), share(512, 16_384));
        assert_eq!(plan(Some(u64::MAX), 7), share(512, 7));
        // 1,024 (a common hard limit): a smaller table cache; two databases'
        // files (the backup's too) and the server's are kept.
        let kept = 2 * (128 + 64) + 64 + 2 * 2;
        assert_eq!(plan(Some(1024), 16_384), share(128, 1024 - kept));
        // Each HTTP thread's runtime holds two files of its own.
        assert_eq!(
            FilesPlan::new(Some(1024), 16_384, 256),
            share(128, 1024 - kept - 2 * 254)
        );
        // Too low for anything: refused, saying how high it must be — the
        // least limit that leaves 16 connections.
        let refused = plan(Some(64), 16_384).unwrap_err();
        let least: u64 = refused
            .split("at least ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            plan(Some(least), 16_384).is_ok_and(|p| p.connections >= 16),
            "{least}"
        );
        assert!(plan(Some(least - 1), 16_384).is_err(), "{least}");
        // The same from any limit below it.
        assert!(
            plan(Some(least - 40), 16_384)
                .unwrap_err()
                .contains(&format!("at least {least} "))
        );
    }
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;

    /// The socket's `TCP_NOTSENT_LOWAT`.
    #[cfg(target_os = "linux")]
    fn unsent_limit(stream: &tokio::net::TcpStream) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, a live c_int.
        let got = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(got, 0, "getsockopt: {}", std::io::Error::last_os_error());
        value
    }

    fn on_a_runtime(test: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test);
    }

    fn within(first_byte_ms: u64) -> FirstByteWithin {
        FirstByteWithin {
            first_byte_ms,
            write_stall: Duration::from_secs(30),
            write_stalls: Default::default(),
        }
    }

    #[test]
    fn an_accepted_connection_has_nodelay_and_a_silent_one_is_dropped() {
        on_a_runtime(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let mut talking = tokio::net::TcpStream::connect(addr).await.expect("connect");
            talking.write_all(b"G").await.expect("first byte");
            let (stream, _) = listener.accept().await.expect("accept");
            assert!(!stream.nodelay().expect("nodelay"), "off until accepted");
            let (stream, ()) = within(1_000).accept(stream, ()).await.expect("accepted");
            assert!(stream.inner.nodelay().expect("nodelay"));
            #[cfg(target_os = "linux")]
            assert_eq!(
                unsent_limit(&stream.inner),
                super::UNSENT_BYTES_MAX as libc::c_int
            );

            let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let refused = within(50)
                .accept(stream, ())
                .await
                .map(|_| ())
                .expect_err("silent");
            assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut);
        });
    }

    /// Writes to a peer that reads nothing fail once blocked for the limit.
    #[test]
    fn a_write_blocked_for_the_limit_fails() {
        on_a_runtime(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let peer = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let limit = Duration::from_millis(300);
            let stalls = prometheus_client::metrics::counter::Counter::<u64>::default();
            let mut stream = WriteStall::new(stream, limit, stalls.clone());
            // The peer reads nothing: the buffers fill, then the limit.
            let chunk = vec![0u8; 64 * 1024];
            let blocked = async {
                loop {
                    let before = Instant::now();
                    if let Err(e) = stream.write_all(&chunk).await {
                        break (e, before.elapsed());
                    }
                }
            };
            let failed = tokio::time::timeout(limit * 10, blocked)
                .await
                .expect("a blocked write never fails");
            assert_eq!(failed.0.kind(), std::io::ErrorKind::TimedOut);
            assert_eq!(stalls.get(), 1, "counted");
            assert!(failed.1 >= limit, "failed after {:?}", failed.1);
            drop(peer);
        });
    }
}
