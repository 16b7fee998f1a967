//! Online backups: a consistent copy of the whole database as of one commit,
//! written into a new data directory that [`Db::open`] (and `truce serve
//! --data`) opens as it is.
//!
//! The copy reads one durable storage snapshot — every space at the same
//! commit, so a transaction is in it whole or not at all — and writes it in
//! chunks, each one durable batch of a new [`FjallStorage`] in `<dir>.partial`;
//! writers go on meanwhile (the snapshot keeps the versions it sees alive
//! until the copy ends). Only once everything is written and synced is the
//! directory renamed to `<dir>` (and the rename synced): a backup that stopped
//! half-way — an error, a crash — never looks like a complete one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Db;
use super::committer::{META_EPOCH, new_epoch, scan_chunk};
use super::read;
use crate::error::{Error, Result};
use crate::limits::{BACKUP_CHUNK_BYTES, BACKUP_CHUNK_ENTRIES, BACKUP_SCAN_ENTRIES};
use crate::storage::{Durability, FjallOptions, FjallStorage, Space, Storage, StorageRead, WriteBatch};

/// How far a running backup has come (passed to its progress callback after
/// every chunk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupProgress {
    /// The space being copied (`Space::name`).
    pub space: &'static str,
    /// Entries copied so far, over every space.
    pub entries: u64,
    /// Bytes of keys and values copied so far.
    pub bytes: u64,
}

/// A finished backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup holds every commit up to this sequence and none after.
    pub seq: u64,
    /// Entries copied.
    pub entries: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
}

/// What the directory a backup is written into is named, after the backup's.
const PARTIAL_SUFFIX: &str = ".partial";

/// A file in `<dir>.partial` from its making until its copy is complete and
/// synced: a directory holding it is part of a database.
const UNFINISHED_MARKER: &str = "UNFINISHED-BACKUP";

/// Why `dir` must not be opened as a database, if it is an unfinished backup
/// (a copy cut short by a crash or a stop: it holds part of the data, and
/// served it would take writes as if it were whole).
pub fn unfinished(dir: &Path) -> Option<String> {
    let marked = dir.join(UNFINISHED_MARKER).exists();
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(PARTIAL_SUFFIX));
    (marked || named).then(|| {
        format!(
            "{} is an unfinished backup (its copy was cut short, and it holds part of the data): take the \
             backup again, and remove this directory",
            dir.display()
        )
    })
}

/// One backup at a time per database.
#[derive(Default)]
pub(super) struct BackupGate(AtomicBool);

/// A backup that has its snapshot — it will hold exactly the commits up to
/// [`seq`](Self::seq) — and has not copied it yet ([`run`](Self::run)). Holds
/// the database's one backup slot until it is run or dropped.
pub struct Backup {
    view: Box<dyn StorageRead>,
    seq: u64,
    dir: PathBuf,
    /// Made by [`Db::start_backup`] (so no one else's), beside `dir`; removed
    /// unless the backup was published.
    partial: PathBuf,
    files: Vec<PathBuf>,
    published: bool,
    stop: BackupStop,
    /// Dropped last: the slot is free once `partial` is gone.
    slot: Slot,
}

/// The database's one backup slot, taken; freed on drop.
struct Slot(Db);

impl Slot {
    fn take(db: &Db) -> Result<Slot> {
        if db.inner.backup.0.swap(true, Ordering::AcqRel) {
            return Err(Error::BackupRunning);
        }
        Ok(Slot(db.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.backup.0.store(false, Ordering::Release);
    }
}

/// Stops a running backup between two of its chunks: [`Backup::run`] then
/// answers [`Error::BackupStopped`] and leaves nothing behind. For a server
/// that is shutting down, or asked to stop it (`DELETE /v1/_backup`).
#[derive(Clone, Debug, Default)]
pub struct BackupStop(Arc<AtomicBool>);

impl BackupStop {
    /// Asks the backup to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Backup {
    /// A backup not run, failed or unwound by a panic removes what it wrote
    /// (a crash leaves `<dir>.partial`, never `<dir>`); its slot is freed
    /// after.
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}

impl Db {
    /// Writes a consistent copy of the database, as of the last durable commit
    /// when it starts, into the new directory `dir`, together with `files`
    /// (copied into it under their own names: the server's API keys). Blocks
    /// until done, calling `progress` after every chunk; writes go on
    /// meanwhile. [`start_backup`](Self::start_backup) then
    /// [`Backup::run`].
    pub fn backup(
        &self,
        dir: &Path,
        files: &[&Path],
        progress: &mut dyn FnMut(&BackupProgress),
    ) -> Result<BackupReport> {
        self.start_backup(dir, files)?.run(progress)
    }

    /// Checks `dir` and takes the snapshot a backup copies, without copying
    /// it: a caller that runs the copy elsewhere knows at once what it will
    /// hold. `dir` must not exist and its parent must; `<dir>.partial` is
    /// where the copy is made, and must not exist either (a failed backup
    /// removes it).
    ///
    /// [`Error::InvalidBackup`] for such a path, [`Error::BackupRunning`]
    /// while another backup of this database is started or runs.
    pub fn start_backup(&self, dir: &Path, files: &[&Path]) -> Result<Backup> {
        let slot = Slot::take(self)?;
        let (view, seq) = read::durable_snapshot(self.shared())?;
        // Made last: from here `Backup`'s drop removes it.
        let partial = make_partial_dir(dir)?;
        // A test's stand-in for a long snapshot (inert unless built with
        // `failpoints` and named in `FAILPOINTS`).
        fail::fail_point!("backup::start");
        Ok(Backup {
            view,
            seq,
            dir: dir.to_path_buf(),
            partial,
            files: files.iter().map(|f| f.to_path_buf()).collect(),
            published: false,
            stop: BackupStop::default(),
            slot,
        })
    }
}

impl Backup {
    /// The backup holds every commit up to this sequence and none after.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A handle that stops this backup from another thread.
    pub fn stopper(&self) -> BackupStop {
        self.stop.clone()
    }

    /// Copies the snapshot into `<dir>.partial`, then renames it `<dir>`;
    /// calls `progress` after every chunk. On an error nothing is left.
    pub fn run(mut self, progress: &mut dyn FnMut(&BackupProgress)) -> Result<BackupReport> {
        let report = self.copy(progress)?;
        rename_no_replace(&self.partial, &self.dir)
            .map_err(|e| io_error("cannot rename the finished backup to", &self.dir, &e))?;
        self.published = true;
        sync_dir(self.partial.parent().unwrap_or(Path::new("."))).map_err(|e| {
            Error::InvalidBackup(format!(
                "the backup is whole at {}, but its name may not survive a power loss: {e}",
                self.dir.display()
            ))
        })?;
        Ok(report)
    }

    fn copy(&self, progress: &mut dyn FnMut(&BackupProgress)) -> Result<BackupReport> {
        // As many files as the database's own: `truce serve` keeps room for both.
        let options = FjallOptions {
            cached_files: self.slot.0.options().fjall.cached_files,
            ..FjallOptions::default()
        };
        let target = FjallStorage::open_with(&self.partial, options)?;
        let mut done = BackupProgress::default();
        // Read a few entries at a time (a read of 4,096 held that many
        // documents at once, gigabytes of large ones, and a stop or the
        // progress waited for all of them), written in batches of up to
        // BACKUP_CHUNK_ENTRIES or BACKUP_CHUNK_BYTES.
        let mut batch = WriteBatch::new();
        let mut batched = 0;
        for space in Space::ALL {
            done.space = space.name();
            let mut after: Option<Vec<u8>> = None;
            loop {
                if self.stop.stopped() {
                    return Err(Error::BackupStopped);
                }
                fail::fail_point!("backup::chunk");
                let (entries, next) =
                    scan_chunk(&*self.view, space, &[], after.as_deref(), BACKUP_SCAN_ENTRIES)?;
                for (key, mut value) in entries {
                    done.entries += 1;
                    done.bytes += (key.len() + value.len()) as u64;
                    if space == Space::Meta && key == META_EPOCH {
                        // The backup's history goes on apart from this
                        // database's from here: a replica of this one must
                        // not take the restored one's positions for its own.
                        value = crate::record::encode_counter(new_epoch());
                    }
                    batch.put(space, key, value);
                    batched += 1;
                    if batch.bytes() >= BACKUP_CHUNK_BYTES || batched >= BACKUP_CHUNK_ENTRIES {
                        target.apply(std::mem::take(&mut batch), Durability::Immediate)?;
                        batched = 0;
                    }
                }
                progress(&done);
                match next {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
        }
        if !batch.is_empty() {
            target.apply(batch, Durability::Immediate)?;
        }
        drop(target);
        for file in &self.files {
            let name = file
                .file_name()
                .ok_or_else(|| Error::InvalidBackup(format!("{} names no file", file.display())))?;
            let copy = self.partial.join(name);
            std::fs::copy(file, &copy).map_err(|e| io_error("cannot copy", file, &e))?;
            std::fs::File::open(&copy)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error("cannot sync", &copy, &e))?;
        }
        sync_dir(&self.partial)?;
        // Whole and durable: no longer unfinished (the rename follows).
        let marker = self.partial.join(UNFINISHED_MARKER);
        std::fs::remove_file(&marker).map_err(|e| io_error("cannot remove", &marker, &e))?;
        sync_dir(&self.partial)?;
        Ok(BackupReport {
            seq: self.seq,
            entries: done.entries,
            bytes: done.bytes,
        })
    }
}

/// Makes `<dir>.partial` (readable by this user only: it will hold every
/// document) once `dir` is a path a backup may take. Made here, not found: a
/// backup never writes into, or removes, a directory it did not make.
fn make_partial_dir(dir: &Path) -> Result<PathBuf> {
    /// The longest file name most file systems take.
    const NAME_BYTES_MAX: usize = 255;
    let invalid = |why: &str| Err(Error::InvalidBackup(format!("{}: {why}", dir.display())));
    let Some(name) = dir.file_name() else {
        return invalid("a backup needs a directory name of its own");
    };
    // Not `exists`, which follows a link: a dangling one would pass, and
    // the rename fail at the end of the copy.
    if dir.symlink_metadata().is_ok() {
        return invalid(
            "it exists already (or a link of that name does): a backup is written into a new directory",
        );
    }
    if name.to_str().is_some_and(|n| n.ends_with(PARTIAL_SUFFIX)) {
        // It would be taken for an unfinished one (`unfinished`).
        return invalid(&format!("a backup's name may not end in `{PARTIAL_SUFFIX}`"));
    }
    if name.len() + PARTIAL_SUFFIX.len() > NAME_BYTES_MAX {
        return invalid(&format!(
            "its name is too long: at most {} bytes, to leave room for `{PARTIAL_SUFFIX}`",
            NAME_BYTES_MAX - PARTIAL_SUFFIX.len()
        ));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return invalid(match parent.exists() {
            true => "its parent is not a directory",
            false => "its parent directory does not exist",
        });
    }
    let mut partial_name = name.to_os_string();
    partial_name.push(PARTIAL_SUFFIX);
    let partial = parent.join(partial_name);
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(&partial) {
        Ok(()) => {
            let marker = partial.join(UNFINISHED_MARKER);
            std::fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error("cannot create", &marker, &e))?;
            sync_dir(&partial)?;
            Ok(partial)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::InvalidBackup(format!(
            "{} exists: another backup is being written there, or one was stopped by a crash (remove it)",
            partial.display()
        ))),
        Err(e) => Err(io_error("cannot create", &partial, &e)),
    }
}

/// Renames `from` to `to` unless something is there: a plain rename
/// replaces an empty directory, which another program may have made at `to`
/// while the copy ran. Linux's `renameat2(RENAME_NOREPLACE)` checks and
/// renames at once (called as a system call: glibc before 2.28 has no
/// wrapper); where the file system does not take it (EINVAL), the kernel
/// does not have it (ENOSYS) or a sandbox refuses the call (EPERM), `to` is
/// looked at first.
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_path = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let (from_c, to_c) = (c_path(from)?, c_path(to)?);
        // SAFETY: both are NUL-terminated paths that live across the call;
        // the arguments are renameat2's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if !matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)
        ) {
            return Err(error);
        }
    }
    rename_if_absent(from, to)
}

/// `rename_no_replace` where the file system has no renameat2: look, then
/// rename (a name made between the two is replaced, the window the look
/// narrows to a moment).
fn rename_if_absent(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "something was made there while the backup ran",
        ));
    }
    std::fs::rename(from, to)
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::InvalidBackup(format!("{what} {}: {e}", path.display()))
}

/// Makes the names in `dir` (a rename, new files) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync", dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The look-then-rename fallback, which this machine's file systems
    /// never reach (they take renameat2): it refuses whatever is at `to`, a
    /// dangling link included, and renames otherwise.
    #[test]
    fn the_fallback_rename_replaces_nothing() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let from = root.path().join("b.partial");
        std::fs::create_dir(&from).expect("the copy");
        std::fs::write(from.join("f"), b"x").expect("a file in it");
        let to = root.path().join("b");
        std::fs::create_dir(&to).expect("an empty directory made meanwhile");
        let refused = rename_if_absent(&from, &to).expect_err("an empty directory is there");
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::remove_dir(&to).expect("removed");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &to).expect("a dangling link");
        let refused = rename_if_absent(&from, &to).expect_err("a link is there");
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::remove_file(&to).expect("removed");
        rename_if_absent(&from, &to).expect("nothing is there");
        assert_eq!(std::fs::read(to.join("f")).expect("moved"), b"x");
        assert!(!from.exists());
    }
}
