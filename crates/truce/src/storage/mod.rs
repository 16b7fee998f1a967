//! The storage trait: the narrow seam between the engine and whatever keeps bytes
//! on disk (fjall by default; PostgreSQL, a fault-injecting memory store and a
//! crash-recording memory store follow the same contract, checked by one
//! [`conformance`] suite).
//!
//! Storage knows keys, values, spaces and atomic durable batches. It knows nothing
//! about documents, JSON, versions or HTTP.

use std::ops::Bound;

pub mod conformance;
mod crash;
mod fjall_journal;
mod fjall_repair;
mod fjall_store;
mod fjall_workers;
mod memory;

pub use crash::{CrashStorage, Tail};
pub use fjall_store::{
    FJALL_CACHE_BYTES, FJALL_CACHED_FILES, FJALL_CACHED_FILES_MIN, FJALL_FILES_BESIDES_CACHED,
    FJALL_MEMTABLE_BYTES, FJALL_WORKERS_NICE_SERVER, FjallOptions, FjallStorage,
};
pub use fjall_workers::FJALL_WORKERS_NICE_MAX;
pub use memory::{Fault, MemoryStorage};

/// A separate key space, like a column family or a table. Keys of different
/// spaces never collide and a batch may write to several atomically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Space {
    /// Documents and tombstones, keyed by collection, `0x00`, id.
    Documents,
    /// Engine bookkeeping: last sequence number, last commit time, index definitions.
    Meta,
    /// Secondary index entries: collection, `0x00`, index, `0x00`, encoded values, id.
    Index,
    /// Per-collection change log: collection, `0x00`, sequence (8 bytes BE), id.
    /// The feed of every collection merges these (there is no global log: its
    /// two entries per write were a sixth of the journal).
    Changes,
    /// Idempotency records, keyed by the idempotency key.
    Idempotency,
    /// Idempotency expiry order: expiry time in ms (8 bytes BE), key.
    IdempotencyExpiry,
    /// The `after_commit` counter outbox: commit seq (8 bytes BE), entry (4 bytes BE).
    Outbox,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 7] = [
        Space::Documents,
        Space::Meta,
        Space::Index,
        Space::Changes,
        Space::Idempotency,
        Space::IdempotencyExpiry,
        Space::Outbox,
    ];

    /// A stable name for the space, used as a keyspace or table name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Documents => "docs",
            Space::Meta => "meta",
            Space::Index => "index",
            Space::Changes => "changes",
            Space::Idempotency => "idem",
            Space::IdempotencyExpiry => "idem_expiry",
            Space::Outbox => "outbox",
        }
    }
}

/// When a write becomes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `apply` returns only after the batch is on stable storage (fdatasync). The default.
    #[default]
    Immediate,
    /// `apply` returns once the batch is handed to the OS; a machine crash may lose
    /// it (a process crash does not). For tests and throwaway data only.
    Relaxed,
}

/// Key order for scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Ascending byte order.
    Forward,
    /// Descending byte order.
    Reverse,
}

/// One write of a batch: a put (`Some`) or a removal (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchWrite {
    /// Where.
    pub space: Space,
    /// Which key.
    pub key: Vec<u8>,
    /// The new value, or `None` to remove the key.
    pub value: Option<Vec<u8>>,
}

/// Writes applied all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    writes: Vec<BatchWrite>,
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.writes.push(BatchWrite {
            space,
            key,
            value: Some(value),
        });
    }

    /// Adds a removal.
    pub fn remove(&mut self, space: Space, key: Vec<u8>) {
        self.bytes += key.len();
        self.writes.push(BatchWrite {
            space,
            key,
            value: None,
        });
    }

    /// The writes, in the order they were added (a later write to the same key wins).
    pub fn writes(&self) -> &[BatchWrite] {
        &self.writes
    }

    /// Consumes the batch into its writes.
    pub fn into_writes(self) -> Vec<BatchWrite> {
        self.writes
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// A key-value pair returned by a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Failures of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed (I/O, fsync, lost connection). After a failed `apply`
    /// the engine stops writing: the batch may or may not be durable.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// Bytes read back do not decode or fail their checksum, or the storage
    /// lost what it held (journal damage with commits after it, commits
    /// past the commit mark missing).
    #[error("storage damaged: {0}")]
    Corrupt(String),
    /// Another process holds the data directory (a running server).
    #[error("{0} is in use by another process (it holds the directory's lock)")]
    InUse(String),
}

/// Reading: what both a live store and a snapshot offer.
pub trait StorageRead: Send + Sync {
    /// The value of `key` in `space`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` entries of `space` with keys within `(start, end)`, in `direction`.
    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError>;
}

/// What the engine needs from a store of bytes.
///
/// Contract (checked by [`conformance::run_all`]):
/// - `apply` is atomic: after it returns `Ok`, and after any crash, either every
///   write of the batch is visible or none is; with [`Durability::Immediate`] the
///   batch survives a crash once `apply` returned `Ok`.
/// - Batches are applied in the order `apply` is called; within a batch a later
///   write to the same key wins.
/// - Reads see every batch whose `apply` returned. They may also see a batch
///   whose `apply` has not returned yet; the engine never relies on either.
/// - A snapshot sees exactly the batches applied before it was taken, all of
///   each or none, and never changes afterwards.
/// - Keys order as unsigned bytes.
pub trait Storage: StorageRead + 'static {
    /// Applies every write of `batch` atomically, durably when `durability` says so.
    fn apply(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError>;

    /// A consistent, unchanging view of the store as of now.
    fn snapshot(&self) -> Result<Box<dyn StorageRead>, StorageError>;

    /// Bytes available to this process on the filesystem the store writes
    /// to; `None` when the backend cannot say (the engine then refuses
    /// nothing for want of space: `engine/disk.rs`).
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// Bytes the store takes on disk (its compactions need room to match);
    /// `None` when the backend cannot say.
    fn used_bytes(&self) -> Option<u64> {
        None
    }

    /// Why the store can no longer write, if it has failed on its own (a
    /// background flush or compaction that failed: the next write would
    /// fail too); `None` while it works.
    fn failed(&self) -> Option<String> {
        None
    }
}
