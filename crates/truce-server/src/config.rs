//! Command line, environment and TOML settings, merged in that order of priority.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::http::answers::{DEFAULT_ANSWER_MEMORY_MIB, DEFAULT_ANSWER_STALL_MS};
use crate::http_threads::HTTP_THREADS_MAX;
use crate::serve::{MAX_CONNECTIONS_DEFAULT, MAX_CONNECTIONS_MAX};

/// Default listen address: loopback only, so an unconfigured server is never exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Reads a listen address: `IP:PORT`, or `HOST:PORT` resolved now, taking
/// its first IPv4 address (`localhost` may name `::1` first, where a client
/// asking for `localhost` most often tries `127.0.0.1`), or its first
/// address if it has none.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not IP:PORT or HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} names no address"))
}

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA: &str = "./truce-data";
/// Largest request body: a full transaction (16 MiB of documents) plus JSON overhead.
pub const DEFAULT_MAX_BODY_BYTES: usize = 20 * 1024 * 1024;
/// Default memory for request bodies being received, MiB (`--body-memory-mib`):
/// a dozen of the largest bodies at once, and thousands of ordinary ones.
/// Without it, bodies sent a byte at a time were bounded only by the requests
/// in flight, 4,096 of 20 MiB (an audit held 2.4 GB with 100).
pub const DEFAULT_BODY_MEMORY_MIB: u64 = 256;
/// Longest a non-streaming request may take before it is answered 503.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Requests served at once; past this they are refused with 429 at once.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 4096;
/// The largest `max_concurrent_requests`: far past what one process can hold
/// open, and within what a semaphore counts (a larger value made tokio panic
/// after the database had been opened).
pub const MAX_CONCURRENT_REQUESTS_MAX: usize = 1_000_000;
/// Largest `min_free_disk_mib`: 1 PiB, more than any one filesystem a
/// server writes to has free (so it also means "refuse every write that
/// adds data").
pub const MIN_FREE_DISK_MIB_MAX: u64 = 1 << 30;

/// Truce: a document database that makes concurrent writes safe, fast and unsurprising.
#[derive(Parser, Debug)]
#[command(name = "truce", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (HTTP API v1).
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Recount a counter cache directly on a stopped server's data directory and
    /// print the report (with the server running, use its HTTP endpoint
    /// `POST /v1/c/{coll}/_counters/{name}/recount`).
    Recount(RecountArgs),
    /// Watch a running server: commit and conflict rates and the hot spots with
    /// their remedies, refreshed every second (like `redis-cli --stat`).
    Top(TopArgs),
    /// Back up a running server, online, into a new directory on its machine
    /// (a data directory: `truce serve --data DIR` serves it); shows the
    /// progress until it is done.
    Backup(BackupArgs),
    /// Check a stopped server's data directory (or a backup) for damage: every
    /// record decodes, and change logs, index entries, counters and idempotency
    /// records agree with the documents. Prints the report as JSON; exits 1 if
    /// anything is wrong, 2 if it could not look.
    Check(CheckArgs),
}

/// `truce backup` arguments.
#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// The new directory to write the backup into, as an absolute path on the
    /// server's machine, outside its data directory; it must not exist.
    #[arg(long)]
    pub to: PathBuf,
    /// The server's base URL.
    #[arg(long, env = "TRUCE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// An admin API key not limited to some collections (when the server has keys).
    #[arg(long, env = "TRUCE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    #[command(flatten)]
    pub tls: RemoteTls,
}

/// How a command that talks to a running server trusts an `https` one.
#[derive(Args, Debug, Clone)]
pub struct RemoteTls {
    /// A PEM file of certificates to trust for an `https` URL besides the
    /// system's: the server's own self-signed `--tls-cert`, or the authority
    /// that signed it.
    #[arg(long, env = "TRUCE_CACERT", value_name = "PEM")]
    pub cacert: Option<PathBuf>,
}

/// `truce top` arguments.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// The server's base URL.
    #[arg(long, env = "TRUCE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// An API key with the read role (when the server has keys).
    #[arg(long, env = "TRUCE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    #[command(flatten)]
    pub tls: RemoteTls,
    /// The insights window in seconds (1 to 3600).
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Hot spots shown (1 to 100).
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Stop after this many refreshes (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

/// The data directory of an administration command, found as `truce serve`
/// finds its own: `--data` (or `TRUCE_DATA`), else the `data` of the
/// `--config` file (or `TRUCE_CONFIG`'s), else `./truce-data`.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Data directory [default: the --config file's `data`, else ./truce-data].
    #[arg(long, env = "TRUCE_DATA")]
    pub data: Option<PathBuf>,
    /// The server's TOML settings file, for its `data`.
    #[arg(long, env = "TRUCE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl DataArgs {
    /// The data directory these arguments name.
    pub fn dir(&self) -> Result<PathBuf, String> {
        let file = match (&self.data, &self.config) {
            (None, Some(path)) => read_file(path)?,
            _ => FileSettings::default(),
        };
        data_dir(self.data.clone(), file.data)
    }
}

/// The data directory of a flag (or its variable), else of the settings file,
/// else the default: `serve`, `keys` and `recount` alike.
fn data_dir(flag: Option<PathBuf>, file: Option<PathBuf>) -> Result<PathBuf, String> {
    Ok(path_setting("data", flag, file)?.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)))
}

/// `truce recount` arguments.
#[derive(Args, Debug, Clone)]
pub struct RecountArgs {
    /// Where the data directory is.
    #[command(flatten)]
    pub data: DataArgs,
    /// The collection the counter is defined on (its source).
    pub collection: String,
    /// The counter's name.
    pub counter: String,
}

/// `truce check` arguments.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Where the data directory is.
    #[command(flatten)]
    pub data: DataArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `truce serve` settings. Each can come from a flag, a `TRUCE_…` environment
/// variable, or the TOML file given by `--config` (in that order of priority).
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with `_`).
    #[arg(long, env = "TRUCE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, `IP:PORT` or `HOST:PORT` (a host name is
    /// resolved at startup; its first IPv4 address is taken, or its first
    /// address if it has none) [default: 127.0.0.1:7070].
    #[arg(long, env = "TRUCE_LISTEN", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./truce-data].
    #[arg(long, env = "TRUCE_DATA")]
    pub data: Option<PathBuf>,
    /// Log format [default: text]. Which lines are logged is `TRUCE_LOG`
    /// (`warn`; `info,truce::http=debug` for a line per request; …)
    /// [default: info].
    #[arg(long, env = "TRUCE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Allow listening beyond loopback without API keys. Anyone who can reach
    /// the port can then read and write everything.
    /// `--insecure-no-auth=false` (or `TRUCE_INSECURE_NO_AUTH=false`)
    /// overrides a settings file's `true`.
    #[arg(long, env = "TRUCE_INSECURE_NO_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
    /// PEM certificate chain: serve HTTPS (with --tls-key). The two may come
    /// from different sources (a flag and the --config file, say): each is
    /// checked for its pair once all are merged.
    #[arg(long, env = "TRUCE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TRUCE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes [default: 20971520].
    #[arg(long, env = "TRUCE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Longest a request may take, in ms (streams excepted) [default: 30000].
    #[arg(long, env = "TRUCE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Requests served at once before refusing with 429, 1 to 1000000
    /// [default: 4096]; long polls and event streams of the change feed have as many again of
    /// their own, and /healthz is always answered.
    #[arg(long, env = "TRUCE_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Long polls and event streams of the change feed one API key may hold
    /// at once, 1 to 1000000, past which its next is refused with 429
    /// [default: as many as --max-concurrent-requests, the places all keys
    /// share]. Set it when keys belong to different tenants, so that one
    /// cannot take every place from the others.
    #[arg(long, env = "TRUCE_MAX_STREAMS_PER_KEY")]
    pub max_streams_per_key: Option<usize>,
    /// Memory for answers waiting for their clients to read them, in MiB, 1 to
    /// 65536 [default: 64]. Answers over 16 KiB count until their last byte
    /// is handed to the connection; past this, those that made no progress
    /// for --answer-stall-ms are dropped, and if that frees too little,
    /// answers that report nothing done (reads, 4xx) are replaced by 429.
    #[arg(long, env = "TRUCE_ANSWER_MEMORY_MIB")]
    pub answer_memory_mib: Option<u64>,
    /// Memory for request bodies being received, in MiB, 1 to 65536, at least
    /// --max-body-bytes [default: 256, or --max-body-bytes if more]. A body counts from its first byte
    /// until it is read whole; a request whose body would pass this is
    /// answered 429.
    #[arg(long, env = "TRUCE_BODY_MEMORY_MIB")]
    pub body_memory_mib: Option<u64>,
    /// Memory for the pages being read at once (queries, change feeds,
    /// pulls), in MiB, 1 to 65536 [default: 256]. A page's documents count
    /// from when they are read until its answer is encoded; past this, a
    /// page that may end early does, and one that may not (or that nothing
    /// fits) is answered 429. A page read alone always fits.
    #[arg(long, env = "TRUCE_PAGE_MEMORY_MIB")]
    pub page_memory_mib: Option<u64>,
    /// How long an answer may make no progress before it may be dropped to
    /// make room for others, in ms, 1000 to 3600000 [default: 30000]; a
    /// connection whose writes stay blocked (its client reading nothing) for
    /// twice this is closed.
    #[arg(long, env = "TRUCE_ANSWER_STALL_MS")]
    pub answer_stall_ms: Option<u64>,
    /// Documents and ranges the hot-spot tracker keeps per minute, 1 to 4096
    /// [default: 128]. Its memory is about 61 (`HOT_SPOT_MINUTES_KEPT`) × this × (300 bytes + a
    /// document id's length) at most: 190 MB at 4096 with ids of 500 bytes.
    #[arg(long, env = "TRUCE_HOT_SPOTS")]
    pub hot_spots: Option<usize>,
    /// Most collections the database may hold, 1 to 1000000 [default:
    /// 100000]: a write that would make one more is answered 413
    /// `limit_exceeded`. Collections are made by their first write and never
    /// removed; each keeps its name in memory (~270 bytes resident).
    #[arg(long, env = "TRUCE_MAX_COLLECTIONS")]
    pub max_collections: Option<usize>,
    /// Storage block cache in MiB, 1 to 65536 [default: 32].
    #[arg(long, env = "TRUCE_CACHE_MIB")]
    pub cache_mib: Option<u64>,
    /// Largest memtable of each of the storage's 8 keyspaces in MiB, 1 to 1024
    /// [default: 8]; applies to keyspaces of a new data directory.
    #[arg(long, env = "TRUCE_MEMTABLE_MIB")]
    pub memtable_mib: Option<u64>,
    /// Longest the committer polls its empty queue before it blocks, in µs,
    /// 0 to 1000 [default: 200]; 0 never polls. Polling spares the next
    /// writer the committer's wake-up (large on VMs whose idle vCPUs halt) at
    /// the cost of CPU while waiting: the window opens only while writes keep
    /// arriving within it, but then it can keep up to one core busy. It also
    /// bounds how long the committer polls for writers to fill a group. Use 0
    /// (which turns both off) where CPU is capped or metered (a container's
    /// CPU limit).
    #[arg(long, env = "TRUCE_COMMIT_POLL_US")]
    pub commit_poll_us: Option<u64>,
    /// How many nice steps below the server's own threads the storage's
    /// background workers (memtable flushes, compactions) run, 0 to 19
    /// [default: 10]; 0 leaves them at the server's priority. On a machine
    /// whose cores are busy this keeps compaction bursts from taking CPU from
    /// the threads that answer, which is where latency under load goes; the
    /// workers still get CPU, and when flushes fall behind the storage slows
    /// writers down itself. Linux only.
    #[arg(long, env = "TRUCE_STORAGE_WORKERS_NICE")]
    pub storage_workers_nice: Option<i32>,
    /// Free space to keep on the data directory's filesystem, in MiB, 0 to
    /// 1073741824 [default: 256], beyond room for the storage's compactions
    /// (as much as the database takes on disk). While less is free, writes
    /// that add data are refused with 507 insufficient_storage (deletes,
    /// reads and the server's own work such as TTL sweeps go on), so the disk
    /// never fills under the storage, which would stop every write until a
    /// restart; writes resume within a second of space being freed. 0 turns
    /// the reserve off, room for compactions included.
    #[arg(long, env = "TRUCE_MIN_FREE_DISK_MIB")]
    pub min_free_disk_mib: Option<u64>,
    /// Connections open at once, 1 to 1000000 [default: 16384]; past this a
    /// new connection is closed as soon as it is accepted (and counted in
    /// truce_connections_refused_total). A low open-files limit lowers it:
    /// the storage's files are kept first (the log says so).
    #[arg(long, env = "TRUCE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Threads serving HTTP, 1 to 256 [default: one per CPU]. Each runs its
    /// connections on its own and keeps them; the committer and the blocking
    /// work (queries, feed pages) have threads of their own besides.
    #[arg(long, env = "TRUCE_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Origins whose pages may call the API from a browser, comma-separated
    /// (`https://app.example.com,http://localhost:3000`), or `*` for any
    /// [default: none: no CORS headers]. API keys still apply.
    #[arg(long, env = "TRUCE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The directory `POST /v1/_backup` (`truce backup`) may write backups
    /// into, and nowhere else [default: none: any absolute path outside the
    /// data directory, for an admin key].
    #[arg(long, env = "TRUCE_BACKUP_ROOT")]
    pub backup_root: Option<PathBuf>,
}

/// The settings file: the same names as the flags.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    listen: Option<String>,
    data: Option<PathBuf>,
    log_format: Option<LogFormat>,
    insecure_no_auth: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    max_concurrent_requests: Option<usize>,
    max_streams_per_key: Option<usize>,
    answer_memory_mib: Option<u64>,
    body_memory_mib: Option<u64>,
    page_memory_mib: Option<u64>,
    answer_stall_ms: Option<u64>,
    hot_spots: Option<usize>,
    max_collections: Option<usize>,
    cache_mib: Option<u64>,
    memtable_mib: Option<u64>,
    commit_poll_us: Option<u64>,
    storage_workers_nice: Option<i32>,
    min_free_disk_mib: Option<u64>,
    max_connections: Option<usize>,
    http_threads: Option<usize>,
    #[serde(default, deserialize_with = "comma_list")]
    cors_origins: Option<Vec<String>>,
    backup_root: Option<PathBuf>,
}

/// A list as the flag's value is (`"a,b"`) or as an array (`["a", "b"]`):
/// the file takes its keys "as the flags", and a string was refused.
fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        List(Vec<String>),
    }
    let given = Given::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected origins as one comma-separated string or an array of strings")
    })?;
    Ok(Some(match given {
        Given::Text(text) => text.split(',').map(str::to_string).collect(),
        Given::List(list) => list,
    }))
}

/// The effective settings of a server.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The data directory.
    pub data: PathBuf,
    /// Whether to allow a non-loopback address without keys.
    pub insecure_no_auth: bool,
    /// Certificate and key, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
    /// Concurrency limit.
    pub max_concurrent_requests: usize,
    /// Long polls and event streams one API key may hold at once.
    pub max_streams_per_key: usize,
    /// Memory for answers being sent, MiB.
    pub answer_memory_mib: u64,
    /// Memory for request bodies being received, MiB.
    pub body_memory_mib: u64,
    /// Memory for the pages being read, MiB.
    pub page_memory_mib: u64,
    /// How long an answer may stall before it may be dropped, ms.
    pub answer_stall_ms: u64,
    /// Hot-spot tracker capacity per minute.
    pub hot_spots: usize,
    /// Most collections the database may hold.
    pub max_collections: usize,
    /// Storage block cache, MiB.
    pub cache_mib: u64,
    /// Per-keyspace memtable bound, MiB.
    pub memtable_mib: u64,
    /// The committer's poll window bound, µs.
    pub commit_poll_us: u64,
    /// Nice steps between the storage's workers and the server's threads.
    pub storage_workers_nice: i32,
    /// Free space kept on the data directory's filesystem, MiB.
    pub min_free_disk_mib: u64,
    /// Connections open at once.
    pub max_connections: usize,
    /// HTTP threads.
    pub http_threads: usize,
    /// Origins allowed cross-origin requests (`*`: any); empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Where backups may be written, when limited.
    pub backup_root: Option<PathBuf>,
}

impl ServeArgs {
    /// Merges flags and environment (already in `self`) over the file over
    /// the defaults (the log format apart: [`log_format`](Self::log_format)).
    #[cfg(test)]
    pub fn settings(&self) -> Result<Settings, String> {
        self.settings_with(self.file()?)
    }

    /// The `--config` file read (empty without one).
    pub fn file(&self) -> Result<FileSettings, String> {
        match &self.config {
            Some(path) => read_file(path),
            None => Ok(FileSettings::default()),
        }
    }

    /// The log format alone, known before the other settings are checked so
    /// that what is wrong with them can be logged in it: the flag (or its
    /// variable), else `file`'s, else text. A file that does not read
    /// (`None`) says none.
    pub fn log_format(&self, file: Option<&FileSettings>) -> LogFormat {
        self.log_format
            .or(file.and_then(|file| file.log_format))
            .unwrap_or_default()
    }

    /// Merges flags and environment (already in `self`) over `file` (read by
    /// [`file`](Self::file)) over the defaults, the log format apart.
    pub fn settings_with(&self, file: FileSettings) -> Result<Settings, String> {
        let tls = match (
            path_setting("tls_cert", self.tls_cert.clone(), file.tls_cert)?,
            path_setting("tls_key", self.tls_key.clone(), file.tls_key)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(
                    "TLS needs both tls_cert and tls_key (from flags, TRUCE_TLS_* or the --config file)"
                        .into(),
                );
            }
        };
        let default_listen: SocketAddr = DEFAULT_LISTEN.parse().map_err(|e| format!("{e}"))?;
        let max_body_bytes = self
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_concurrent_requests = self
            .max_concurrent_requests
            .or(file.max_concurrent_requests)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS);
        let settings = Settings {
            listen: match (self.listen, file.listen) {
                (Some(flag), _) => flag,
                (None, Some(text)) => listen_addr(&text).map_err(|e| format!("listen: {e}"))?,
                (None, None) => default_listen,
            },
            data: data_dir(self.data.clone(), file.data)?,
            insecure_no_auth: self.insecure_no_auth.or(file.insecure_no_auth).unwrap_or(false),
            tls,
            max_body_bytes,
            request_timeout_ms: self
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
            max_concurrent_requests,
            max_streams_per_key: self
                .max_streams_per_key
                .or(file.max_streams_per_key)
                .unwrap_or(max_concurrent_requests),
            answer_memory_mib: self
                .answer_memory_mib
                .or(file.answer_memory_mib)
                .unwrap_or(DEFAULT_ANSWER_MEMORY_MIB),
            // By default room for one body of the largest size at least, so
            // that a server set to take bodies past 256 MiB still starts.
            body_memory_mib: self
                .body_memory_mib
                .or(file.body_memory_mib)
                .unwrap_or_else(|| DEFAULT_BODY_MEMORY_MIB.max((max_body_bytes as u64).div_ceil(1 << 20))),
            page_memory_mib: self
                .page_memory_mib
                .or(file.page_memory_mib)
                .unwrap_or((truce::limits::PAGE_MEMORY_BYTES_DEFAULT >> 20) as u64),
            answer_stall_ms: self
                .answer_stall_ms
                .or(file.answer_stall_ms)
                .unwrap_or(DEFAULT_ANSWER_STALL_MS),
            hot_spots: self
                .hot_spots
                .or(file.hot_spots)
                .unwrap_or(truce::limits::HOT_SPOTS_TRACKED_DEFAULT),
            max_collections: self
                .max_collections
                .or(file.max_collections)
                .unwrap_or(truce::limits::COLLECTIONS_DEFAULT),
            cache_mib: self
                .cache_mib
                .or(file.cache_mib)
                .unwrap_or(truce::storage::FJALL_CACHE_BYTES >> 20),
            memtable_mib: self
                .memtable_mib
                .or(file.memtable_mib)
                .unwrap_or(truce::storage::FJALL_MEMTABLE_BYTES >> 20),
            commit_poll_us: self
                .commit_poll_us
                .or(file.commit_poll_us)
                .unwrap_or(truce::limits::COMMIT_POLL_US_DEFAULT),
            storage_workers_nice: self
                .storage_workers_nice
                .or(file.storage_workers_nice)
                .unwrap_or(truce::storage::FJALL_WORKERS_NICE_SERVER),
            min_free_disk_mib: self
                .min_free_disk_mib
                .or(file.min_free_disk_mib)
                .unwrap_or(truce::limits::MIN_FREE_DISK_BYTES_DEFAULT >> 20),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(MAX_CONNECTIONS_DEFAULT),
            http_threads: self.http_threads.or(file.http_threads).unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |cpus| cpus.get())
                    .min(HTTP_THREADS_MAX)
            }),
            // "a, b" reads as two origins, and an empty value as none.
            cors_origins: if self.cors_origins.is_empty() {
                file.cors_origins.unwrap_or_default()
            } else {
                self.cors_origins.clone()
            }
            .iter()
            .map(|origin| origin.trim().to_string())
            .filter(|origin| !origin.is_empty())
            .collect(),
            backup_root: path_setting("backup_root", self.backup_root.clone(), file.backup_root)?,
        };
        if let Some(root) = &settings.backup_root
            && !root.is_absolute()
        {
            return Err(format!(
                "backup_root must be an absolute path, not {}",
                root.display()
            ));
        }
        crate::http::cors::check_origins(&settings.cors_origins)?;
        if settings.commit_poll_us > truce::limits::COMMIT_POLL_US_MAX {
            return Err(format!(
                "commit_poll_us must be 0 to {}",
                truce::limits::COMMIT_POLL_US_MAX
            ));
        }
        if !(0..=truce::storage::FJALL_WORKERS_NICE_MAX).contains(&settings.storage_workers_nice) {
            return Err(format!(
                "storage_workers_nice must be 0 to {}",
                truce::storage::FJALL_WORKERS_NICE_MAX
            ));
        }
        if !(1..=MAX_CONNECTIONS_MAX).contains(&settings.max_connections) {
            return Err(format!("max_connections must be 1 to {MAX_CONNECTIONS_MAX}"));
        }
        if settings.min_free_disk_mib > MIN_FREE_DISK_MIB_MAX {
            return Err(format!("min_free_disk_mib must be 0 to {MIN_FREE_DISK_MIB_MAX}"));
        }
        if !(1..=HTTP_THREADS_MAX).contains(&settings.http_threads) {
            return Err(format!("http_threads must be 1 to {HTTP_THREADS_MAX}"));
        }
        if !(1..=65_536).contains(&settings.cache_mib) || !(1..=1024).contains(&settings.memtable_mib) {
            return Err("cache_mib must be 1 to 65536 and memtable_mib 1 to 1024".into());
        }
        if !(1..=65_536).contains(&settings.answer_memory_mib) {
            return Err("answer_memory_mib must be 1 to 65536".into());
        }
        if !(1..=65_536).contains(&settings.page_memory_mib) {
            return Err("page_memory_mib must be 1 to 65536".into());
        }
        if !(1..=65_536).contains(&settings.body_memory_mib)
            || (settings.body_memory_mib << 20) < settings.max_body_bytes as u64
        {
            return Err(
                "body_memory_mib must be 1 to 65536, and hold a body of max_body_bytes (or no request could send one)"
                    .into(),
            );
        }
        if !(1_000..=3_600_000).contains(&settings.answer_stall_ms) {
            return Err("answer_stall_ms must be 1000 to 3600000".into());
        }
        if !(1..=truce::limits::HOT_SPOTS_TRACKED_MAX).contains(&settings.hot_spots) {
            return Err(format!(
                "hot_spots must be 1 to {}",
                truce::limits::HOT_SPOTS_TRACKED_MAX
            ));
        }
        if !(1..=truce::limits::COLLECTIONS_MAX).contains(&settings.max_collections) {
            return Err(format!(
                "max_collections must be 1 to {}",
                truce::limits::COLLECTIONS_MAX
            ));
        }
        if settings.max_concurrent_requests > MAX_CONCURRENT_REQUESTS_MAX {
            return Err(format!(
                "max_concurrent_requests must be 1 to {MAX_CONCURRENT_REQUESTS_MAX}"
            ));
        }
        if !(1..=MAX_CONCURRENT_REQUESTS_MAX).contains(&settings.max_streams_per_key) {
            return Err(format!(
                "max_streams_per_key must be 1 to {MAX_CONCURRENT_REQUESTS_MAX}"
            ));
        }
        if settings.max_body_bytes == 0
            || settings.request_timeout_ms == 0
            || settings.max_concurrent_requests == 0
        {
            return Err(
                "max_body_bytes, request_timeout_ms and max_concurrent_requests must be positive".into(),
            );
        }
        Ok(settings)
    }
}

/// Reads a settings file. A relative path in it (`data`, `tls_cert`,
/// `tls_key`, `backup_root`) is taken from the file's own directory, not from
/// wherever the server is started: `--config /etc/truce/truce.toml` with
/// `data = "data"` means `/etc/truce/data` from any working directory.
fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: FileSettings = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // Absolute, so that the paths made from it are (`backup_root` must be).
    let path = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    for setting in [
        &mut file.data,
        &mut file.tls_cert,
        &mut file.tls_key,
        &mut file.backup_root,
    ] {
        // An empty one is left empty, for `path_setting` to refuse.
        if let Some(relative) = setting
            .as_mut()
            .filter(|p| p.is_relative() && !p.as_os_str().is_empty())
        {
            *relative = base.join(&*relative);
        }
    }
    Ok(file)
}

/// A path setting: the flag's (or its variable's), else the file's, which
/// may not be empty: joined to the file's directory, `""` named that
/// directory, so `data = ""` made it the data directory (the flags refuse
/// an empty value). Refused only when it is the value used: a flag still
/// overrides such a file. From either, a part of the path that starts or
/// ends with white space is refused too: `data = " "` made a directory
/// named " ", and a stray space in a script's variable would do the same.
fn path_setting(name: &str, flag: Option<PathBuf>, file: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    let (path, from) = match (flag, file) {
        (Some(flag), _) => (flag, "its flag"),
        (None, Some(file)) if file.as_os_str().is_empty() => {
            return Err(format!(
                "{name} is empty in the --config file: name a path, or leave the setting out \
                 (before 2026-12-07 an empty path meant the file's own directory)"
            ));
        }
        (None, Some(file)) => (file, "the --config file"),
        (None, None) => return Ok(None),
    };
    let padded = path.components().any(|part| {
        let part = part.as_os_str().to_string_lossy();
        part.trim() != part
    });
    if padded {
        return Err(format!(
            "{name} {path:?} (from {from}) has a part that starts or ends with white space; a \
             stray space is the likely cause: take it out"
        ));
    }
    Ok(Some(path))
}

/// `truce keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// What the key may do: read, write (and read) or admin (everything).
        #[arg(long, value_enum)]
        role: crate::keys::Role,
        /// Limit the key to these collections (comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Option<Vec<String>>,
        /// The data directory of the server the key is for.
        #[command(flatten)]
        data: DataArgs,
    },
    /// List keys (ids, roles, collections; never secrets).
    List {
        /// The server's data directory.
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key by its id.
    Revoke {
        /// The key's id: the 16 hex digits between `truce_` and the next `_`
        /// (as `keys list` shows it); the whole key is taken too (only its
        /// id is read).
        id: String,
        /// The server's data directory.
        #[command(flatten)]
        data: DataArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndata = \"/from/file\"\nmax_body_bytes = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            data: Some("/from/flag".into()),
            ..ServeArgs::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.data, PathBuf::from("/from/flag"));
        assert_eq!(s.max_body_bytes, 10);
        assert_eq!(s.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
        std::fs::write(&file, "lisen = 1\n").unwrap();
        assert!(
            args.settings().unwrap_err().contains("lisen"),
            "unknown keys are refused"
        );
    }

    /// The log format is known before the other settings are checked: the
    /// flag's, else the file's, else text, and the flag's even when the file
    /// does not read (so that the file's error is said in it).
    #[test]
    fn the_log_format_is_known_before_the_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(&file, "log_format = \"json\"\nhot_spots = 0\n").unwrap();
        let args = |flag: Option<LogFormat>| ServeArgs {
            config: Some(file.clone()),
            log_format: flag,
            ..ServeArgs::default()
        };
        let format = |args: &ServeArgs| args.log_format(args.file().ok().as_ref());
        assert_eq!(format(&args(None)), LogFormat::Json);
        assert_eq!(format(&args(Some(LogFormat::Text))), LogFormat::Text);
        assert!(args(None).settings().is_err(), "hot_spots = 0 is refused after");
        std::fs::write(&file, "log_format = \"json\"\n[unclosed").unwrap();
        assert!(args(None).file().is_err());
        assert_eq!(
            format(&args(None)),
            LogFormat::Text,
            "a file that does not read says none"
        );
        assert_eq!(format(&args(Some(LogFormat::Json))), LogFormat::Json);
        assert_eq!(ServeArgs::default().log_format(None), LogFormat::Text);
    }

    /// TLS's two files may come from different sources; a lone one is an
    /// error only once every source is merged. A concurrency limit past a
    /// semaphore's is refused, not a panic.
    /// `path` relative to `base`, with `..` steps (both absolute).
    fn pathdiff(path: &Path, base: &Path) -> PathBuf {
        let (path, base): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
        let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
        let mut out = PathBuf::new();
        for _ in common..base.len() {
            out.push("..");
        }
        for part in &path[common..] {
            out.push(part);
        }
        out
    }

    /// The memory of the pages being read: 256 MiB unless said, from the
    /// file or a flag, and 0 refused (no page could be read beside another).
    #[test]
    fn page_memory_is_said_in_mib_and_never_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(&file, "page_memory_mib = 64\n").unwrap();
        let mib = |config: Option<PathBuf>, flag: Option<u64>| {
            ServeArgs {
                config,
                page_memory_mib: flag,
                ..ServeArgs::default()
            }
            .settings()
            .map(|s| s.page_memory_mib)
        };
        assert_eq!(mib(None, None), Ok(256));
        assert_eq!(mib(Some(file.clone()), None), Ok(64));
        assert_eq!(mib(Some(file), Some(512)), Ok(512));
        assert!(mib(None, Some(0)).unwrap_err().contains("page_memory_mib"));
    }

    /// The bound on collections: the engine's default unless said, from the
    /// file or a flag, 1 to `COLLECTIONS_MAX`.
    #[test]
    fn max_collections_is_bounded_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(&file, "max_collections = 7\n").unwrap();
        let max = |config: Option<PathBuf>, flag: Option<usize>| {
            ServeArgs {
                config,
                max_collections: flag,
                ..ServeArgs::default()
            }
            .settings()
            .map(|s| s.max_collections)
        };
        assert_eq!(max(None, None), Ok(truce::limits::COLLECTIONS_DEFAULT));
        assert_eq!(max(Some(file.clone()), None), Ok(7));
        assert_eq!(max(Some(file), Some(1_000_000)), Ok(1_000_000));
        for refused in [0, 1_000_001] {
            let error = max(None, Some(refused)).unwrap_err();
            assert_eq!(error, "max_collections must be 1 to 1000000");
        }
    }

    /// Origins are trimmed, and an empty value means none.
    #[test]
    fn cors_origins_are_trimmed() {
        let origins = |list: &[&str]| {
            let args = ServeArgs {
                cors_origins: list.iter().map(|s| s.to_string()).collect(),
                ..ServeArgs::default()
            };
            args.settings().unwrap().cors_origins
        };
        assert_eq!(
            origins(&["https://a.com", " https://b.com "]),
            ["https://a.com", "https://b.com"]
        );
        assert!(origins(&[""]).is_empty());
    }

    /// `--insecure-no-auth` alone says true; `=false` overrides the file.
    #[test]
    fn insecure_no_auth_can_be_said_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("open.toml");
        std::fs::write(&file, "insecure_no_auth = true\n").unwrap();
        let parsed = |extra: &[&str]| {
            let mut args = vec!["truce", "serve", "--config", file.to_str().unwrap()];
            args.extend_from_slice(extra);
            let Command::Serve(serve) = Cli::try_parse_from(args).unwrap().command else {
                panic!("serve")
            };
            serve.settings().unwrap().insecure_no_auth
        };
        assert!(parsed(&[]), "the file's true");
        assert!(
            !parsed(&["--insecure-no-auth=false"]),
            "the flag's false beats the file"
        );
        assert!(parsed(&["--insecure-no-auth"]));
        std::fs::write(&file, "").unwrap();
        assert!(!parsed(&[]));
        assert!(parsed(&["--insecure-no-auth=true"]));
    }

    /// Relative paths in a settings file are the file's directory's.
    #[test]
    fn relative_paths_in_the_file_are_taken_from_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(&file, "data = \"data\"\nbackup_root = \"/abs/backups\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let settings = args.settings().unwrap();
        assert_eq!(settings.data, dir.path().join("data"));
        assert_eq!(settings.backup_root, Some(PathBuf::from("/abs/backups")));
        // A relative --config path gives absolute paths too.
        std::fs::write(&file, "backup_root = \"backups\"\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(&file, &cwd);
        let args = ServeArgs {
            config: Some(relative),
            ..ServeArgs::default()
        };
        assert_eq!(
            args.settings().unwrap().backup_root,
            Some(dir.path().join("backups"))
        );
        std::fs::write(&file, "data = \"data\"\nbackup_root = \"/abs/backups\"\n").unwrap();
        let data = DataArgs {
            data: None,
            config: Some(file.clone()),
        };
        assert_eq!(
            data.dir().unwrap(),
            dir.path().join("data"),
            "keys and recount agree"
        );
        // An empty path would be the file's own directory: refused, as an
        // empty flag is.
        for setting in ["data", "tls_cert", "tls_key", "backup_root"] {
            std::fs::write(&file, format!("{setting} = \"\"\n")).unwrap();
            let args = ServeArgs {
                config: Some(file.clone()),
                ..ServeArgs::default()
            };
            let refused = args.settings().unwrap_err();
            assert!(refused.contains(&format!("{setting} is empty")), "{refused}");
        }
        // A flag that overrides it leaves it unused, and unrefused.
        std::fs::write(&file, "data = \"\"\n").unwrap();
        let overridden = ServeArgs {
            config: Some(file.clone()),
            data: Some(dir.path().join("flagged")),
            ..ServeArgs::default()
        };
        assert_eq!(overridden.settings().unwrap().data, dir.path().join("flagged"));
        let data = DataArgs {
            data: None,
            config: Some(file),
        };
        std::fs::write(data.config.as_ref().unwrap(), "data = \"\"\n").unwrap();
        assert!(data.dir().unwrap_err().contains("data is empty"));
        // White space at either end of a part of the path, from the file or
        // a flag, is refused: `data = " "` made a directory named " ".
        let file = data.config.clone().unwrap();
        for padded in [" ", "data ", " data", "/srv/ data/x", "a/\\tb"] {
            std::fs::write(&file, format!("data = \"{padded}\"\n")).unwrap();
            let args = ServeArgs {
                config: Some(file.clone()),
                ..ServeArgs::default()
            };
            let refused = args.settings().unwrap_err();
            assert!(refused.contains("white space"), "{padded:?}: {refused}");
            let flagged = ServeArgs {
                data: Some(PathBuf::from(padded.replace("\\t", "\t"))),
                ..ServeArgs::default()
            };
            let refused = flagged.settings().unwrap_err();
            assert!(refused.contains("(from its flag)"), "{padded:?}: {refused}");
        }
        // A space inside a part is a name like any other.
        std::fs::write(&file, "data = \"my data\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(args.settings().unwrap().data, dir.path().join("my data"));
    }

    #[test]
    fn settings_are_checked_once_merged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tls.toml");
        std::fs::write(&file, "tls_key = \"/etc/truce/key.pem\"\n").unwrap();
        let cli = Cli::try_parse_from([
            "truce",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--tls-cert",
            "/etc/truce/cert.pem",
        ])
        .expect("a cert flag without a key flag parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let tls = args.settings().unwrap().tls.unwrap();
        assert_eq!(tls.0, PathBuf::from("/etc/truce/cert.pem"));
        assert_eq!(tls.1, PathBuf::from("/etc/truce/key.pem"));
        let lone = ServeArgs {
            tls_cert: Some("/c.pem".into()),
            ..ServeArgs::default()
        };
        assert!(lone.settings().unwrap_err().contains("tls_key"));
        for (n, ok) in [
            (MAX_CONCURRENT_REQUESTS_MAX, true),
            (MAX_CONCURRENT_REQUESTS_MAX + 1, false),
            (usize::MAX, false),
        ] {
            let args = ServeArgs {
                max_concurrent_requests: Some(n),
                ..ServeArgs::default()
            };
            assert_eq!(args.settings().is_ok(), ok, "{n}");
        }
        // A key's places are the shared ones unless set apart.
        let shared = ServeArgs {
            max_concurrent_requests: Some(10),
            ..ServeArgs::default()
        };
        assert_eq!(shared.settings().unwrap().max_streams_per_key, 10);
        for (n, ok) in [(0, false), (1, true), (MAX_CONCURRENT_REQUESTS_MAX + 1, false)] {
            let args = ServeArgs {
                max_streams_per_key: Some(n),
                ..ServeArgs::default()
            };
            assert_eq!(args.settings().is_ok(), ok, "max_streams_per_key {n}");
        }
    }

    #[test]
    fn listen_takes_a_host_name() {
        assert_eq!(
            listen_addr("127.0.0.1:9000"),
            Ok("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(listen_addr("[::1]:9000"), Ok("[::1]:9000".parse().unwrap()));
        // `localhost` names loopback addresses only, IPv4 first when it has one.
        let local = listen_addr("localhost:9000").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9000, "{local}");
        let v4 = ("localhost", 9000)
            .to_socket_addrs()
            .unwrap()
            .any(|a| a.is_ipv4());
        assert_eq!(local.is_ipv4(), v4, "{local}");
        // None of these is looked up: each fails before (no port, or a bad one).
        for bad in ["localhost", "localhost:port", "127.0.0.1:70000", ""] {
            assert!(listen_addr(bad).is_err(), "{bad:?}");
        }
        let (_dir, args) = with_settings_file("listen = \"localhost:9001\"\n");
        assert_eq!(args.settings().unwrap().listen, SocketAddr::new(local.ip(), 9001));
        let (_dir, args) = with_settings_file("listen = \"nowhere\"\n");
        let refused = args.settings().unwrap_err();
        assert!(
            refused.contains("listen") && refused.contains("nowhere"),
            "{refused}"
        );
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let s = ServeArgs::default().settings().unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(s.commit_poll_us, truce::limits::COMMIT_POLL_US_DEFAULT);
    }

    /// Arguments naming a settings file that holds `text` (kept while the
    /// returned directory lives).
    fn with_settings_file(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("truce.toml");
        std::fs::write(&file, text).unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        (dir, args)
    }

    /// `cors_origins` in the file is written as the flag's value or as an
    /// array (a string was refused: "expected a sequence").
    #[test]
    fn cors_origins_in_the_file_are_a_string_or_an_array() {
        for text in [
            "cors_origins = \"https://a.com, https://b.com\"\n",
            "cors_origins = [\"https://a.com\", \"https://b.com\"]\n",
        ] {
            let (_dir, filed) = with_settings_file(text);
            assert_eq!(
                filed.settings().unwrap().cors_origins,
                ["https://a.com", "https://b.com"],
                "{text}"
            );
        }
        let (_dir, filed) = with_settings_file("cors_origins = 5\n");
        let refused = filed.settings().unwrap_err();
        assert!(
            refused.contains("comma-separated string or an array"),
            "{refused}"
        );
    }

    #[test]
    fn the_commit_poll_window_is_bounded() {
        let (_dir, filed) = with_settings_file("commit_poll_us = 0\n");
        assert_eq!(filed.settings().unwrap().commit_poll_us, 0, "0 turns polling off");
        let at_bound = ServeArgs {
            commit_poll_us: Some(truce::limits::COMMIT_POLL_US_MAX),
            ..ServeArgs::default()
        };
        assert_eq!(at_bound.settings().unwrap().commit_poll_us, 1000);
        let past = ServeArgs {
            commit_poll_us: Some(truce::limits::COMMIT_POLL_US_MAX + 1),
            ..ServeArgs::default()
        };
        assert_eq!(past.settings().unwrap_err(), "commit_poll_us must be 0 to 1000");
    }

    #[test]
    fn the_http_threads_are_bounded_and_one_per_cpu_by_default() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            ServeArgs::default().settings().unwrap().http_threads,
            cpus.min(HTTP_THREADS_MAX)
        );
        let (_dir, filed) = with_settings_file("http_threads = 3\n");
        assert_eq!(filed.settings().unwrap().http_threads, 3);
        for wrong in [0, 257] {
            let args = ServeArgs {
                http_threads: Some(wrong),
                ..ServeArgs::default()
            };
            assert_eq!(args.settings().unwrap_err(), "http_threads must be 1 to 256");
        }
    }

    #[test]
    fn the_connection_limit_is_bounded() {
        assert_eq!(ServeArgs::default().settings().unwrap().max_connections, 16_384);
        let (_dir, filed) = with_settings_file("max_connections = 1\n");
        assert_eq!(filed.settings().unwrap().max_connections, 1);
        for wrong in [0, MAX_CONNECTIONS_MAX + 1] {
            let args = ServeArgs {
                max_connections: Some(wrong),
                ..ServeArgs::default()
            };
            assert_eq!(
                args.settings().unwrap_err(),
                "max_connections must be 1 to 1000000"
            );
        }
    }

    #[test]
    fn the_free_space_reserve_is_bounded() {
        assert_eq!(ServeArgs::default().settings().unwrap().min_free_disk_mib, 256);
        let (_dir, filed) = with_settings_file("min_free_disk_mib = 0\n");
        assert_eq!(
            filed.settings().unwrap().min_free_disk_mib,
            0,
            "0 refuses nothing"
        );
        let at_bound = ServeArgs {
            min_free_disk_mib: Some(MIN_FREE_DISK_MIB_MAX),
            ..ServeArgs::default()
        };
        assert_eq!(at_bound.settings().unwrap().min_free_disk_mib, 1 << 30);
        let past = ServeArgs {
            min_free_disk_mib: Some(MIN_FREE_DISK_MIB_MAX + 1),
            ..ServeArgs::default()
        };
        assert_eq!(
            past.settings().unwrap_err(),
            "min_free_disk_mib must be 0 to 1073741824"
        );
    }

    #[test]
    fn the_storage_workers_nice_is_bounded() {
        assert_eq!(
            ServeArgs::default().settings().unwrap().storage_workers_nice,
            10,
            "the server's default"
        );
        let (_dir, filed) = with_settings_file("storage_workers_nice = 0\n");
        assert_eq!(
            filed.settings().unwrap().storage_workers_nice,
            0,
            "0 leaves them alone"
        );
        for wrong in [-1, 20] {
            let args = ServeArgs {
                storage_workers_nice: Some(wrong),
                ..ServeArgs::default()
            };
            assert_eq!(
                args.settings().unwrap_err(),
                "storage_workers_nice must be 0 to 19"
            );
        }
    }
}
