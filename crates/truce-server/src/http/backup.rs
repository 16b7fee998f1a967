//! Online backups over HTTP: `POST /v1/_backup` starts one into a new directory
//! on the server's machine (the engine's `Db::backup`, on a thread of its own),
//! `GET /v1/_backup` says how far it has come, `DELETE /v1/_backup` stops it.
//! One at a time; admin keys not limited to some collections only (a backup
//! holds every collection).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{JsonBody, Params, authorize};
use super::{AppState, blocking};
use crate::keys::{KEYS_FILE, Principal, Role};

/// The server's last backup since it started, if any, and where backups may go.
pub struct Backups {
    last: Mutex<Option<Status>>,
    /// The running backup's stop handle and thread, for a shutdown.
    running: Mutex<Option<(truce::BackupStop, std::thread::JoinHandle<()>)>>,
    /// Numbers the backups, so that a finishing one updates its own status.
    started: AtomicU64,
    /// `--backup-root`: the one directory backups may be written into.
    root: Option<PathBuf>,
}

impl Backups {
    /// No backup yet; backups limited to `root` when given, which must be a
    /// directory outside the data directory `data` (else no backup could go
    /// anywhere, and the server refuses to start).
    pub fn new(root: Option<PathBuf>, data: &Path) -> Result<Backups, String> {
        if let Some(root) = &root {
            if !root.is_dir() {
                return Err(format!("backup_root {} is not a directory", root.display()));
            }
            if within(root, data) {
                return Err(format!(
                    "backup_root {} is inside the data directory {}, where no backup may go",
                    root.display(),
                    data.display()
                ));
            }
        }
        Ok(Backups {
            last: Mutex::default(),
            running: Mutex::default(),
            started: AtomicU64::new(0),
            root,
        })
    }

    /// The running backup's number, if one runs.
    fn running_id(&self) -> Option<u64> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|s| s.finished_ms.is_none()).map(|s| s.id)
    }

    /// Stops a running backup between two chunks and waits for it to have
    /// removed what it wrote, so that a server shutting down (or a `DELETE
    /// /v1/_backup`) leaves no `DIR.partial` behind.
    pub fn stop_and_wait(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, thread)) = running {
            stop.stop();
            if !thread.is_finished() {
                tracing::info!("stopping the running backup");
            }
            let _ = thread.join();
        }
    }
}

/// A backup's state, as `GET /v1/_backup` shows it.
#[derive(Clone)]
struct Status {
    /// Which backup since the server started (not shown).
    id: u64,
    path: PathBuf,
    started_ms: u64,
    finished_ms: Option<u64>,
    space: &'static str,
    entries: u64,
    bytes: u64,
    /// The commit it holds everything up to (known from its start).
    seq: u64,
    /// Once failed: why.
    error: Option<(&'static str, String)>,
}

impl Status {
    fn json(&self) -> Value {
        let state = match (self.finished_ms, &self.error) {
            (None, _) => "running",
            (Some(_), None) => "done",
            (Some(_), Some((code, _))) if *code == truce::Error::BackupStopped.code() => "stopped",
            (Some(_), Some(_)) => "failed",
        };
        json!({
            "state": state,
            "path": self.path.display().to_string(),
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "space": self.space,
            "entries": self.entries,
            "bytes": self.bytes,
            "seq": self.seq,
            "error": self.error.as_ref().map(|(code, message)| json!({"error": code, "message": message})),
        })
    }
}

/// Whether `path` is `dir` or under it, links resolved where they exist.
fn within(path: &Path, dir: &Path) -> bool {
    let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolved(path).starts_with(resolved(dir))
}

fn admin_of_everything(who: &Principal) -> Result<(), ApiError> {
    authorize(who, Role::Admin, None)?;
    if who.collections.is_some() {
        return Err(ApiError::Forbidden(
            "a backup holds every collection: it needs a key not limited to some".into(),
        ));
    }
    Ok(())
}

/// The directory a backup may be written to: an absolute path (the server's
/// working directory is no one's business), outside the data directory.
fn target(
    body: &serde_json::Map<String, Value>,
    data: &Path,
    root: Option<&Path>,
) -> Result<PathBuf, ApiError> {
    if let Some(key) = body.keys().find(|k| k.as_str() != "path") {
        return Err(truce::Error::InvalidBackup(format!(
            "unknown field {key:?}: the body is {{\"path\": DIR}}"
        ))
        .into());
    }
    let path = body
        .get("path")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| truce::Error::InvalidBackup("the body is {\"path\": DIR}, DIR a string".into()))?;
    // A line break in a directory's name wrote lines of the caller's
    // choosing into the server's log, and made a directory no shell lists
    // plainly.
    // (U+2028 and U+2029 break lines too, where they are read as text.)
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if path.as_os_str().to_string_lossy().chars().any(breaks) {
        return Err(truce::Error::InvalidBackup(format!(
            "{:?}: give a path without control characters (line breaks, tabs, escapes)",
            path
        ))
        .into());
    }
    if !path.is_absolute() {
        return Err(truce::Error::InvalidBackup(format!(
            "{}: give an absolute path on the server's machine",
            path.display()
        ))
        .into());
    }
    // `..` is resolved only where the directories exist: one under a
    // directory not made yet passed the checks below as written, and led
    // elsewhere (outside `--backup-root`, into the data directory) once it
    // was made.
    if path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(
            truce::Error::InvalidBackup(format!("{}: give the path without `..`", path.display())).into(),
        );
    }
    // Without `.` steps, `//` or a slash at the end: `DIR/.` passed every
    // check as DIR (which is what `components` sees), and was copied whole
    // before its final rename failed on the name as written.
    let path: PathBuf = path.components().collect();
    let parent = path.parent().unwrap_or(Path::new("/"));
    if within(parent, data) {
        return Err(truce::Error::InvalidBackup(format!(
            "{}: a backup goes outside the data directory",
            path.display()
        ))
        .into());
    }
    if let Some(root) = root
        && !within(parent, root)
    {
        return Err(truce::Error::InvalidBackup(format!(
            "{}: this server writes backups only into {} (--backup-root)",
            path.display(),
            root.display()
        ))
        .into());
    }
    Ok(path)
}

/// Starts a backup of the whole database into a new directory.
#[utoipa::path(post, path = "/v1/_backup", tag = "operations",
    request_body = super::openapi::BackupBody,
    responses((status = 202, description = "Started; `GET /v1/_backup` follows it", body = super::openapi::BackupStatus),
               (status = 409, description = "A backup is running (`backup_running`)", body = super::openapi::ErrorBody)))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    admin_of_everything(&who)?;
    params.only(&[])?;
    let body = body
        .as_object()
        .ok_or_else(|| truce::Error::InvalidBackup("the body is {\"path\": DIR}".into()))?;
    let path = target(body, &state.data, state.backups.root.as_deref())?;
    // The snapshot is taken before the answer: the backup holds every write
    // acknowledged before it (and says up to which commit, `seq`).
    let keys = state.data.join(KEYS_FILE);
    let job = {
        let (db, path) = (state.db.clone(), path.clone());
        blocking(move || {
            let files: Vec<&Path> = if keys.is_file() { vec![&keys] } else { Vec::new() };
            db.start_backup(&path, &files)
        })
        .await?
    };
    let id = state.backups.started.fetch_add(1, Ordering::Relaxed);
    let status = Status {
        id,
        path: path.clone(),
        started_ms: truce::engine::now_ms(),
        finished_ms: None,
        space: "",
        entries: 0,
        bytes: 0,
        seq: job.seq(),
        error: None,
    };
    *state.backups.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
    let thread_state = Arc::clone(&state);
    let stop = job.stopper();
    // A shutdown that began while the snapshot was taken (its grace period
    // lets requests finish) would cut the copy short at the exit: it does
    // not start. One that begins after finds it running, and stops it.
    let mut running = state.backups.running.lock().unwrap_or_else(|p| p.into_inner());
    if *state.stopping.borrow() {
        drop(running);
        drop(job); // removes its DIR.partial
        let closing = truce::Error::Unavailable("the server is shutting down; no backup starts".into());
        finish(&state, id, Err(&closing));
        return Err(closing.into());
    }
    let spawned = std::thread::Builder::new()
        .name("truce-backup".into())
        .spawn(move || run(&thread_state, id, &path, job));
    match spawned {
        Ok(thread) => *running = Some((stop, thread)),
        Err(e) => {
            drop(running);
            let failed = truce::Error::Unavailable(format!("cannot start the backup thread: {e}"));
            finish(&state, id, Err(&failed));
            return Err(failed.into());
        }
    }
    Ok((StatusCode::ACCEPTED, axum::Json(status.json())).into_response())
}

/// Runs backup `id` on this thread. Its status is finished also if it
/// panics (else `GET` would say "running" for ever), and only its own: the
/// slot is free once `job` is gone, so the next backup may already have
/// replaced it.
fn run(state: &AppState, id: u64, path: &Path, job: truce::Backup) {
    tracing::info!(path = ?path, seq = job.seq(), "backup started");
    let copy = std::panic::AssertUnwindSafe(|| {
        job.run(&mut |progress| {
            update(state, id, |status| {
                (status.space, status.entries, status.bytes) =
                    (progress.space, progress.entries, progress.bytes);
            })
        })
    });
    let result = std::panic::catch_unwind(copy)
        .unwrap_or_else(|_| Err(truce::Error::Unavailable("the backup thread panicked".into())));
    match &result {
        Ok(report) => {
            tracing::info!(path = ?path, seq = report.seq, entries = report.entries, "backup done")
        }
        Err(e) => tracing::warn!(path = ?path, "backup failed: {e}"),
    }
    finish(state, id, result.as_ref().map(drop));
}

/// Changes backup `id`'s status, if it is still the last one.
fn update(state: &AppState, id: u64, change: impl FnOnce(&mut Status)) {
    let mut last = state.backups.last.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(status) = last.as_mut().filter(|s| s.id == id) {
        change(status);
    }
}

fn finish(state: &AppState, id: u64, result: Result<(), &truce::Error>) {
    update(state, id, |status| {
        status.finished_ms = Some(truce::engine::now_ms());
        if let Err(e) = result {
            status.error = Some((e.code(), e.to_string()));
        }
    });
}

/// The running backup, or the last one since the server started.
#[utoipa::path(get, path = "/v1/_backup", tag = "operations",
    responses((status = 200, description = "The running or last backup", body = super::openapi::BackupStatus),
               (status = 404, description = "No backup since the server started", body = super::openapi::ErrorBody)))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> Result<Response, ApiError> {
    admin_of_everything(&who)?;
    params.only(&[])?;
    last_status(&state)
}

/// The last backup's status as an answer.
fn last_status(state: &AppState) -> Result<Response, ApiError> {
    let last = state
        .backups
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match last {
        Some(status) => Ok(axum::Json(status.json()).into_response()),
        None => Err(ApiError::NotFound("no backup since the server started".into())),
    }
}

/// Stops the running backup between two of its chunks, and answers once it
/// has removed what it wrote (`DIR.partial`): its status, `stopped`. With
/// none running, the last one's status, as `GET` (so a repeat, or a backup
/// that finished first, answers what it came to).
#[utoipa::path(delete, path = "/v1/_backup", tag = "operations",
    responses((status = 200, description = "The backup, stopped, or the last one if none was running", body = super::openapi::BackupStatus),
               (status = 404, description = "No backup since the server started", body = super::openapi::ErrorBody)))]
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> Result<Response, ApiError> {
    admin_of_everything(&who)?;
    params.only(&[])?;
    let stopping = Arc::clone(&state);
    blocking(move || {
        // The backup running now, which this request waits for: a second
        // DELETE finds the thread taken by the first, and answered
        // `running` at once while the copy was still there.
        let running = stopping.backups.running_id();
        stopping.backups.stop_and_wait();
        while running.is_some() && stopping.backups.running_id() == running {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    })
    .await?;
    last_status(&state)
}
