//! The embedded default backend: fjall 3, one keyspace per [`Space`], batches
//! committed through fjall's journal with fdatasync for [`Durability::Immediate`],
//! the journal filled ahead with zeroes first (`fjall_journal.rs`).

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::fjall_journal::ZeroAhead;
use super::fjall_workers::open_nicer;
use super::{Direction, Durability, Entry, Space, Storage, StorageError, StorageRead, WriteBatch};

/// Journal bytes a batch takes beyond its items: fjall's start and end entries
/// (an upper bound, for [`ZeroAhead`]'s estimate of where the journal ends).
const JOURNAL_BATCH_OVERHEAD_BYTES: u64 = 64;
/// Journal bytes an item takes beyond its key and value: fjall's item header
/// (an upper bound, as above).
const JOURNAL_ITEM_OVERHEAD_BYTES: u64 = 32;

/// Block cache size by default. Bounded so the server's memory stays
/// predictable (under 256 MiB in every workload of the peers benchmark); the
/// OS page cache does the rest. 32 MiB measured the same throughput as 64 MiB
/// on versioned writes over 100,000 documents, with 37 MiB less peak memory.
pub const FJALL_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Largest memtable of each keyspace by default. fjall's default (64 MiB)
/// times one keyspace per [`Space`] let a write-heavy run hold over 400 MiB
/// of memtables (measured by the peers benchmark); 8 MiB bounds them all to
/// 64 MiB and costs more, smaller flushes.
pub const FJALL_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// Journal size that forces the keyspaces holding its oldest part to flush
/// (fjall's minimum). Without it a keyspace written rarely never flushes and
/// pins the whole journal.
pub const FJALL_JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Table files fjall keeps open by default (its own default is 900 on Linux).
/// With [`FJALL_FILES_BESIDES_CACHED`], what a database may have open: `truce
/// serve` keeps that many files of its open-files limit for each database
/// (its own and a backup's) and gives the rest to connections.
pub const FJALL_CACHED_FILES: usize = 512;

/// Files a fjall database holds open beyond its cached table files: its
/// journals, the tables its flushes and compactions are writing, version
/// files and directories being synced, the lock file.
pub const FJALL_FILES_BESIDES_CACHED: usize = 64;

/// The fewest cached files fjall takes (it panics on fewer).
pub const FJALL_CACHED_FILES_MIN: usize = 10;

/// How much memory the embedded backend may hold, how many files, and how it shares the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FjallOptions {
    /// Block cache, shared by every keyspace.
    pub cache_bytes: u64,
    /// Largest memtable of each keyspace (there is one per [`Space`]).
    pub memtable_bytes: u64,
    /// How much `nice`r than the opening thread fjall's background workers
    /// (flushes, compactions) run; 0 or less leaves them alone (the default:
    /// an embedding process decides its own threads' priorities), and the
    /// result stops at Linux's 19. [`Db::open`](crate::Db::open) accepts 0 to
    /// [`FJALL_WORKERS_NICE_MAX`](super::FJALL_WORKERS_NICE_MAX); `truce
    /// serve` sets [`FJALL_WORKERS_NICE_SERVER`]. It applies to this
    /// database's workers only (see `fjall_workers.rs`).
    pub workers_nice: i32,
    /// Table files kept open at most ([`FJALL_CACHED_FILES`]; at least
    /// [`FJALL_CACHED_FILES_MIN`]): more are opened and closed as they are read.
    pub cached_files: usize,
}

/// The nice steps `truce serve` puts between fjall's workers and its own
/// threads: on a busy machine it took the open-loop p99 of versioned writes
/// from 58–83 ms to 28–44 ms at the same throughput (`docs/benchmarks-log.md`).
pub const FJALL_WORKERS_NICE_SERVER: i32 = 10;

impl Default for FjallOptions {
    fn default() -> FjallOptions {
        FjallOptions {
            cache_bytes: FJALL_CACHE_BYTES,
            memtable_bytes: FJALL_MEMTABLE_BYTES,
            workers_nice: 0,
            cached_files: FJALL_CACHED_FILES,
        }
    }
}

/// The keyspace of `space`; every variant of [`Space`] is opened in `open`.
fn keyspace_of(spaces: &[(Space, Keyspace)], space: Space) -> &Keyspace {
    &spaces
        .iter()
        .find(|(s, _)| *s == space)
        .expect("every space is opened")
        .1
}

/// A fjall database with one keyspace per [`Space`].
pub struct FjallStorage {
    db: Database,
    /// The data directory, whose filesystem's free space `free_bytes` reports.
    dir: std::path::PathBuf,
    spaces: Arc<Vec<(Space, Keyspace)>>,
    zero_ahead: Mutex<ZeroAhead>,
    /// The snapshot every reader is handed a copy of: taken by the writer
    /// right after each batch, while no other batch can be in flight, so it
    /// holds whole batches. fjall's own `snapshot()` does not promise that:
    /// it publishes a batch's sequence number once all of it is in the
    /// memtables, but a flush or compaction finishing meanwhile publishes a
    /// later one (lsm-tree's `SuperVersions::upgrade_version` takes the next
    /// number and makes it visible without the journal's lock), and a
    /// snapshot opened then saw the batch's first inserts and not the rest:
    /// half a transaction, a document past the snapshot's own `last_seq`,
    /// and a recount that "fixed" an exact counter wrongly (found by a
    /// history check under load, 2026-12-06). A reader never waits for a
    /// commit: while one is in flight it gets the one before, which is all
    /// that was acknowledged.
    latest: Mutex<fjall::Snapshot>,
    /// See [`torn_tail_dropped`](Self::torn_tail_dropped).
    torn_tail: Option<std::path::PathBuf>,
}

/// fjall's error as ours: [`StorageError::Corrupt`] for bytes on disk that
/// fail their checksum or do not decode (a damaged table, journal or
/// manifest), so that `truce check` reports them as damage found, not as
/// a check that could not look; else [`StorageError::Backend`].
fn backend(e: fjall::Error) -> StorageError {
    use fjall::LsmError;
    let damaged = matches!(
        &e,
        fjall::Error::Storage(
            LsmError::ChecksumMismatch { .. }
                | LsmError::Decompress(_)
                | LsmError::InvalidVersion(_)
                | LsmError::Unrecoverable
                | LsmError::InvalidTag(_)
                | LsmError::InvalidTrailer
                | LsmError::InvalidHeader(_)
                | LsmError::Utf8(_)
        ) | fjall::Error::JournalRecovery(_)
            | fjall::Error::InvalidVersion(_)
            | fjall::Error::Decompress(_)
            | fjall::Error::InvalidTrailer
            | fjall::Error::InvalidTag(_)
            | fjall::Error::Unrecoverable
    );
    match damaged {
        true => StorageError::Corrupt(e.to_string()),
        false => StorageError::Backend(e.to_string()),
    }
}

/// The file fjall writes first into a directory it makes a database of.
const FJALL_VERSION_FILE: &str = "version";
/// The file fjall holds a lock on (flock) while the database is open.
const FJALL_LOCK_FILE: &str = "lock";

/// Locks `file`, fjall's lock file of `dir`, as fjall does: three tries 100
/// ms apart, since a database just closed in this process gives its lock
/// back only once fjall's threads have ended.
fn lock_as_fjall_does(file: std::fs::File, dir: &Path) -> Result<std::fs::File, StorageError> {
    for attempt in 1..=3 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if attempt < 3 => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => break,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StorageError::Backend(format!(
                    "cannot lock {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    Err(StorageError::InUse(dir.display().to_string()))
}

impl FjallStorage {
    /// Whether `dir` holds a database of this backend (one [`open`](Self::open)
    /// made), so that a tool meant for existing data can refuse any other
    /// directory instead of making a database of it.
    pub fn holds_database(dir: &Path) -> bool {
        dir.join(FJALL_VERSION_FILE).is_file()
    }

    /// Opens (or creates) the database in `dir`, recovering from its journal.
    ///
    /// A final journal batch torn by a crash mid-fsync is dropped (see
    /// `storage/fjall_repair.rs`); any other damage is an error:
    /// [`StorageError::Corrupt`] for damage in the journal with intact
    /// commits after it, which fjall would have cut away with them.
    pub fn open(dir: &Path) -> Result<FjallStorage, StorageError> {
        FjallStorage::open_with(dir, FjallOptions::default())
    }

    /// [`open`](Self::open) with explicit memory bounds. The memtable bound
    /// applies to keyspaces this call creates; existing ones keep theirs.
    pub fn open_with(dir: &Path, options: FjallOptions) -> Result<FjallStorage, StorageError> {
        // The journal is read under fjall's own lock (`dir/lock`, flock):
        // a running server's, being appended to as it is read, could seem
        // damaged, with zeroes where a batch was not written yet and whole
        // batches after. A held lock is a server running there; no lock
        // file, no database yet (or one fjall refuses on its own).
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(FJALL_LOCK_FILE));
        let held = match lock {
            Ok(file) => Some(lock_as_fjall_does(file, dir)?),
            Err(_) => None,
        };
        let buried = super::fjall_repair::buried_damage(dir).map_err(|e| {
            StorageError::Backend(format!("cannot read the journal of {}: {e}", dir.display()))
        })?;
        // Given back for fjall to take (it tries three times, 100 ms apart).
        drop(held);
        if let Some(damage) = buried {
            return Err(StorageError::Corrupt(damage.to_string()));
        }
        // The workers fjall starts in the open inherit the opening thread's
        // priority (`fjall_workers.rs`).
        let open = || {
            open_nicer(options.workers_nice, || {
                Database::builder(dir)
                    .cache_size(options.cache_bytes)
                    .max_journaling_size(FJALL_JOURNAL_BYTES_MAX)
                    .max_cached_files(Some(options.cached_files.max(FJALL_CACHED_FILES_MIN)))
                    .open()
            })
            .map_err(|e| StorageError::Backend(format!("cannot start a thread to open the storage on: {e}")))
        };
        let mut torn_tail = None;
        let db = match open()? {
            Err(fjall::Error::JournalRecovery(why)) => {
                match super::fjall_repair::cut_torn_tail(dir)
                    .map_err(|e| StorageError::Backend(e.to_string()))?
                {
                    Some(copy) => {
                        torn_tail = Some(copy);
                        open()?
                    }
                    None => Err(fjall::Error::JournalRecovery(why)),
                }
            }
            other => other,
        }
        .map_err(|e| match e {
            fjall::Error::Locked => StorageError::InUse(dir.display().to_string()),
            // Which directory: a permission or a read-only filesystem is
            // about the path, which fjall's error does not name.
            // fjall's I/O errors name no file: say what the kind means here.
            fjall::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                StorageError::Backend(format!(
                    "{}: {e}: the process must be able to read and write every file in it (is it owned by \
                 another user, or on a read-only filesystem?)",
                    dir.display()
                ))
            }
            fjall::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                StorageError::Backend(format!(
                    "{}: {e}: a file of the database is missing (was something in the directory removed?); \
                 restore it from a backup",
                    dir.display()
                ))
            }
            other => match backend(other) {
                StorageError::Corrupt(why) => StorageError::Corrupt(format!("{}: {why}", dir.display())),
                StorageError::Backend(why) => StorageError::Backend(format!("{}: {why}", dir.display())),
                named => named,
            },
        })?;
        super::fjall_repair::sync_journals(dir).map_err(|e| {
            StorageError::Backend(format!("cannot sync the journal of {}: {e}", dir.display()))
        })?;
        let spaces = Space::ALL
            .iter()
            .map(|&space| {
                Ok((
                    space,
                    db.keyspace(space.name(), || {
                        KeyspaceCreateOptions::default().max_memtable_size(options.memtable_bytes)
                    })
                    .map_err(backend)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        drop_legacy_log(&db)?;
        // Nothing is being written while the database opens.
        let latest = Mutex::new(db.snapshot());
        Ok(FjallStorage {
            db,
            dir: dir.to_path_buf(),
            spaces: Arc::new(spaces),
            zero_ahead: Mutex::new(ZeroAhead::new(dir)),
            latest,
            torn_tail,
        })
    }

    /// Where this open kept the journal as it was, if it cut a last batch
    /// that was not whole (`storage/fjall_repair.rs`): `truce check`
    /// says so, where the server only logs it. After a crash that batch was
    /// torn and never acknowledged; after a clean stop it was damage.
    pub fn torn_tail_dropped(&self) -> Option<&Path> {
        self.torn_tail.as_deref()
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        keyspace_of(&self.spaces, space)
    }

    /// Makes the journal stretch `batch` will be appended to written zeroes
    /// (see `fjall_journal.rs`), and returns the lock the append must hold. A
    /// failure costs speed, not data, and stops the filling: it is logged once.
    fn zero_ahead_of(&self, batch: &WriteBatch) -> MutexGuard<'_, ZeroAhead> {
        let bytes = batch
            .writes()
            .iter()
            .fold(JOURNAL_BATCH_OVERHEAD_BYTES, |sum, w| {
                sum + (w.key.len() + w.value.as_ref().map_or(0, Vec::len)) as u64
                    + JOURNAL_ITEM_OVERHEAD_BYTES
            });
        let mut zero_ahead = self.zero_ahead.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = zero_ahead.before_append(bytes) {
            tracing::warn!("cannot fill the journal ahead with zeroes ({e}); syncs will be slower");
        }
        zero_ahead
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding
/// `dir` (`statvfs`'s available blocks: root's reserved blocks left out), or
/// `None` if it cannot be asked.
fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stats` is a buffer of the struct's size that `statvfs` fills on success,
    // the only case in which it is read.
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // The field types differ between platforms.
    Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Collects up to `limit` entries of a fjall iterator in `direction`.
fn collect(iter: fjall::Iter, direction: Direction, limit: usize) -> Result<Vec<Entry>, StorageError> {
    let to_entry = |guard: fjall::Guard| -> Result<Entry, StorageError> {
        let (key, value) = guard.into_inner().map_err(backend)?;
        Ok((key.to_vec(), value.to_vec()))
    };
    match direction {
        Direction::Forward => iter.take(limit).map(to_entry).collect(),
        Direction::Reverse => iter.rev().take(limit).map(to_entry).collect(),
    }
}

/// Name of the global change log (`seq, collection 0x00 id`) that data
/// directories written before the feed of every collection came from merging
/// the per-collection logs hold.
const LEGACY_LOG_KEYSPACE: &str = "log";

/// Deletes the legacy global change log if the data directory has one: nothing
/// reads or writes it any more, and its entries (one per document) would
/// otherwise stay on disk for good.
fn drop_legacy_log(db: &Database) -> Result<(), StorageError> {
    if !db.keyspace_exists(LEGACY_LOG_KEYSPACE) {
        return Ok(());
    }
    let legacy = db
        .keyspace(LEGACY_LOG_KEYSPACE, KeyspaceCreateOptions::default)
        .map_err(backend)?;
    db.delete_keyspace(legacy).map_err(backend)
}

impl StorageRead for FjallStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .keyspace(space)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        collect(
            self.keyspace(space).range::<&[u8], _>((start, end)),
            direction,
            limit,
        )
    }
}

/// A point-in-time view of a [`FjallStorage`].
struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    spaces: Arc<Vec<(Space, Keyspace)>>,
}

impl FjallSnapshot {
    fn keyspace(&self, space: Space) -> &Keyspace {
        keyspace_of(&self.spaces, space)
    }
}

impl StorageRead for FjallSnapshot {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .snapshot
            .get(self.keyspace(space), key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        collect(
            self.snapshot
                .range::<&[u8], _>(self.keyspace(space), (start, end)),
            direction,
            limit,
        )
    }
}

impl Storage for FjallStorage {
    fn free_bytes(&self) -> Option<u64> {
        available_bytes(&self.dir)
    }

    fn used_bytes(&self) -> Option<u64> {
        self.db.disk_space().ok()
    }

    fn failed(&self) -> Option<String> {
        // Writes nothing while the journal's buffer is empty (every batch is
        // written through): it only says whether fjall is poisoned.
        self.db
            .persist(PersistMode::Buffer)
            .err()
            .map(|e| format!("the storage failed in its background work (see the log): {e}"))
    }

    fn snapshot(&self) -> Result<Box<dyn StorageRead>, StorageError> {
        let snapshot = self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Box::new(FjallSnapshot {
            snapshot,
            spaces: Arc::clone(&self.spaces),
        }))
    }

    fn apply(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mode = match durability {
            Durability::Immediate => PersistMode::SyncData,
            Durability::Relaxed => PersistMode::Buffer,
        };
        fail::fail_point!("storage::apply", |_| Err(StorageError::Backend(
            "failpoint storage::apply: the write failed".into()
        )));
        // fjall panics on a key it cannot hold (inside the committer, which
        // then stopped): an error instead, which fails the database as any
        // failed write does (until it is reopened) but says why. The
        // engine's own limits keep every key far below it.
        if let Some(key) = batch
            .writes()
            .iter()
            .map(|w| &w.key)
            .find(|k| k.is_empty() || k.len() > usize::from(u16::MAX))
        {
            return Err(StorageError::Backend(format!(
                "a key of {} bytes: the storage holds keys of 1 to 65,535 bytes",
                key.len()
            )));
        }
        // Held until the batch is in the journal: no append runs while zeroes
        // are written ahead of the journal's end.
        let _appending = self.zero_ahead_of(&batch);
        let mut fjall_batch = self.db.batch().durability(Some(mode));
        for write in batch.into_writes() {
            let keyspace = self.keyspace(write.space);
            match write.value {
                Some(value) => fjall_batch.insert(keyspace, write.key, value),
                None => fjall_batch.remove(keyspace, write.key),
            }
        }
        fjall_batch.commit().map_err(backend)?;
        // Still holding `_appending`: no other batch is in flight.
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = self.db.snapshot();
        // The batch reached the journal; pretend its fsync failed. Whether it
        // survives is then unknown, as after a real fsync error.
        fail::fail_point!("storage::fsync", durability == Durability::Immediate, |_| Err(
            StorageError::Backend("failpoint storage::fsync: the fsync failed".into())
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot holds whole batches: none opened while a batch is being put
    /// into the memtables sees part of it. fjall publishes a batch's
    /// sequence number only after its inserts, but a flush worker finishing
    /// meanwhile publishes a later one of its own (lsm-tree's
    /// `upgrade_version`), which a snapshot opened then would read past the
    /// batch's first inserts. Here every batch writes all keys with one
    /// generation while memtables are rotated (so flushed) all along; every
    /// snapshot must see one generation.
    #[test]
    fn a_snapshot_never_holds_part_of_a_batch() {
        const KEYS: u32 = 200;
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(FjallStorage::open(dir.path()).unwrap());
        let value = |generation: u32| generation.to_be_bytes().repeat(64);
        let write = |generation: u32| {
            let mut batch = WriteBatch::new();
            for key in 0..KEYS {
                batch.put(Space::Documents, key.to_be_bytes().to_vec(), value(generation));
            }
            storage.apply(batch, Durability::Relaxed).unwrap();
        };
        write(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let torn = std::thread::scope(|scope| {
            scope.spawn(|| {
                for generation in 1.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    write(generation);
                }
            });
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = storage.keyspace(Space::Documents).rotate_memtable();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            let mut torn = None;
            while torn.is_none() && std::time::Instant::now() < deadline {
                let view = storage.snapshot().unwrap();
                let entries = view
                    .scan(
                        Space::Documents,
                        Bound::Unbounded,
                        Bound::Unbounded,
                        Direction::Forward,
                        usize::MAX,
                    )
                    .unwrap();
                let mut generations: Vec<&[u8]> = entries.iter().map(|(_, v)| &v[..4]).collect();
                generations.dedup();
                if entries.len() != KEYS as usize || generations.len() != 1 {
                    torn = Some(format!(
                        "{} keys, {} generations",
                        entries.len(),
                        generations.len()
                    ));
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            torn
        });
        assert_eq!(torn, None, "a snapshot held part of a batch");
    }

    /// A key fjall cannot hold (empty, or past 65,535 bytes) fails the
    /// write with an error, not a panic in fjall, and nothing of its batch
    /// is written.
    #[test]
    fn a_key_the_store_cannot_hold_fails_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FjallStorage::open(dir.path()).unwrap();
        for bad in [Vec::new(), vec![b'k'; usize::from(u16::MAX) + 1]] {
            let mut batch = WriteBatch::default();
            batch.put(Space::Documents, b"fine".to_vec(), b"v".to_vec());
            batch.put(Space::Documents, bad, b"v".to_vec());
            assert!(matches!(
                storage.apply(batch, Durability::Immediate),
                Err(StorageError::Backend(_))
            ));
            assert_eq!(storage.get(Space::Documents, b"fine").unwrap(), None);
        }
        let mut batch = WriteBatch::default();
        batch.put(Space::Documents, vec![b'k'; usize::from(u16::MAX)], b"v".to_vec());
        storage.apply(batch, Durability::Immediate).unwrap();
    }

    /// One bad byte in the middle of the journal: fjall's reader took it for
    /// the journal's end and cut the file there, dropping every later,
    /// acknowledged commit for good, without a word. The open is refused, and
    /// the file is left as it was; a torn last batch still opens, without it.
    #[test]
    fn damage_before_intact_commits_refuses_the_open_and_keeps_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let put = |storage: &FjallStorage, n: u32| {
            let mut batch = WriteBatch::new();
            batch.put(Space::Documents, n.to_be_bytes().to_vec(), vec![b'v'; 100]);
            storage.apply(batch, Durability::Immediate).unwrap();
        };
        {
            let storage = FjallStorage::open(dir.path()).unwrap();
            (0..200).for_each(|n| put(&storage, n));
        }
        let (_, journal) = super::super::fjall_repair::newest_journal(dir.path()).unwrap();
        let sound = std::fs::read(&journal).unwrap();
        let data = sound.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert!(data > 200 * 100, "the writes are in the journal: {data} bytes");
        assert_eq!(
            super::super::fjall_repair::buried_damage(dir.path()).unwrap(),
            None
        );
        let start = (data / 2..data)
            .find(|&i| sound[i] == 1 && sound[i - 4..i] == *b"FJL\x03")
            .unwrap();
        // A byte of a batch's framing (its Start tag), one inside an item,
        // and a sequence number lowered (the checksum does not cover it:
        // fjall took the batch's writes for older than those they replaced).
        let lowered = |bytes: &mut Vec<u8>| bytes[start + 5..start + 13].copy_from_slice(&[0; 8]);
        let flip = |at: usize| move |bytes: &mut Vec<u8>| bytes[at] ^= 0x5a;
        type Damage<'a> = &'a dyn Fn(&mut Vec<u8>);
        let damages: [Damage; 3] = [&flip(start), &flip(data / 2), &lowered];
        for (at, damage) in damages.into_iter().enumerate() {
            let mut damaged = sound.clone();
            damage(&mut damaged);
            std::fs::write(&journal, &damaged).unwrap();
            match FjallStorage::open(dir.path()) {
                Err(StorageError::Corrupt(why)) => assert!(why.contains("intact commits follow"), "{why}"),
                other => panic!("damage {at}: {:?}", other.map(|_| "opened")),
            }
            assert_eq!(
                std::fs::read(&journal).unwrap(),
                damaged,
                "the journal is left as it was"
            );
        }
        // The 199th write there, the last one gone with its batch.
        let ends_before_the_last = |storage: &FjallStorage| {
            assert!(
                storage
                    .get(Space::Documents, &198u32.to_be_bytes())
                    .unwrap()
                    .is_some()
            );
            assert_eq!(
                storage.get(Space::Documents, &199u32.to_be_bytes()).unwrap(),
                None
            );
        };
        // A last batch whose checksum fails, or whose item count is wrong
        // (fjall refuses both), is cut, the journal kept as it was, and the
        // open says so.
        let last = (data / 2..data - 13)
            .rev()
            .find(|&i| sound[i] == 1 && sound[i - 4..i] == *b"FJL\x03")
            .unwrap();
        let checksum = |bytes: &mut Vec<u8>| bytes[data - 20] ^= 0x5a;
        let count = |bytes: &mut Vec<u8>| bytes[last + 1] = bytes[last + 1].wrapping_add(1);
        let damages: [Damage; 2] = [&checksum, &count];
        for (at, damage) in damages.into_iter().enumerate() {
            let mut damaged = sound.clone();
            damage(&mut damaged);
            std::fs::write(&journal, &damaged).unwrap();
            let storage = FjallStorage::open(dir.path()).unwrap_or_else(|e| panic!("damage {at}: {e}"));
            ends_before_the_last(&storage);
            let copy = storage
                .torn_tail_dropped()
                .expect("the cut is told")
                .to_path_buf();
            assert_eq!(std::fs::read(&copy).unwrap(), damaged);
            assert_eq!(std::fs::read(&journal).unwrap(), damaged[..last]);
            drop(storage);
            std::fs::remove_file(&copy).unwrap();
        }
        // A last batch torn by a crash is the journal's end: it opens without it.
        std::fs::write(&journal, &sound[..data - 20]).unwrap();
        let storage = FjallStorage::open(dir.path()).unwrap();
        assert_eq!(
            storage.torn_tail_dropped(),
            None,
            "fjall drops an incomplete batch itself"
        );
        ends_before_the_last(&storage);
    }

    /// A database open elsewhere is in use, whatever its journal looks like
    /// meanwhile: read while a server appends to it, the journal can seem
    /// damaged (zeroes where a batch is not written yet, whole batches
    /// after), and `truce check` on a running server's directory said
    /// `storage_damaged` instead of "in use". Here the running one's journal
    /// really has a bad byte; the second open must still say "in use".
    #[test]
    fn a_journal_is_read_only_under_the_databases_lock() {
        let dir = tempfile::tempdir().unwrap();
        let running = FjallStorage::open(dir.path()).unwrap();
        for n in 0..50u32 {
            let mut batch = WriteBatch::new();
            batch.put(Space::Documents, n.to_be_bytes().to_vec(), vec![b'v'; 100]);
            running.apply(batch, Durability::Immediate).unwrap();
        }
        let (_, journal) = super::super::fjall_repair::newest_journal(dir.path()).unwrap();
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[100] ^= 0x5a;
        std::fs::write(&journal, &bytes).unwrap();
        assert!(
            super::super::fjall_repair::buried_damage(dir.path())
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            FjallStorage::open(dir.path()),
            Err(StorageError::InUse(_))
        ));
    }

    #[test]
    fn the_free_space_is_that_of_the_data_directorys_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FjallStorage::open(dir.path()).unwrap();
        let free = storage
            .free_bytes()
            .expect("statvfs answers for a directory that exists");
        assert!(
            free > 0,
            "the test could not have written its data directory otherwise"
        );
        assert_eq!(available_bytes(&dir.path().join("missing")), None);
        assert_eq!(available_bytes(Path::new("nul\0in the name")), None);
    }

    #[test]
    fn the_legacy_global_log_of_an_old_data_directory_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A data directory as an older Truce left it: a `log` keyspace with
            // an entry beside the others.
            let db = Database::builder(dir.path()).open().unwrap();
            let log = db
                .keyspace(LEGACY_LOG_KEYSPACE, KeyspaceCreateOptions::default)
                .unwrap();
            log.insert(b"\0\0\0\0\0\0\0\x01c\0a", b"").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let storage = FjallStorage::open(dir.path()).unwrap();
        assert!(!storage.db.keyspace_exists(LEGACY_LOG_KEYSPACE));
        drop(storage);
        // And it stays gone; opening a directory without one is a no-op.
        let storage = FjallStorage::open(dir.path()).unwrap();
        assert!(!storage.db.keyspace_exists(LEGACY_LOG_KEYSPACE));
        assert!(storage.db.keyspace_exists(Space::Changes.name()));
    }
}
