//! The engine: the [`Db`] handle, collections, and the committer behind them.
//!
//! Reads go straight to storage (and wait for durability when they observe a
//! commit still being synced); writes go through a bounded queue to the one
//! committer thread.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::doc;
use crate::error::{Error, Result};
use crate::limits::COMMIT_QUEUE_REQUESTS_MAX;
use crate::storage::{Durability, FjallStorage, Storage};

mod collection;
mod committer;
mod evaluate;
pub mod outcome;
mod pending;
mod retry;
mod watermark;

pub use collection::Collection;
pub use evaluate::WriteOp;
pub use pending::{PendingWrite, PendingWriteFuture};
pub use retry::RetryPolicy;

use committer::{Committer, Request, Shared};

/// How to open a database.
#[derive(Clone, Debug)]
pub struct Options {
    /// When a write is acknowledged. [`Durability::Immediate`] (the default) answers
    /// only after the fsync; [`Durability::Relaxed`] is for tests and loses the last
    /// writes on a machine crash.
    pub durability: Durability,
    /// The retry policy of [`Collection::atomic_update`].
    pub retry: RetryPolicy,
    /// Writes waiting for the committer before new ones fail with
    /// [`Error::Overloaded`]. At most [`COMMIT_QUEUE_REQUESTS_MAX`].
    pub queue_capacity: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Immediate,
            retry: RetryPolicy::default(),
            queue_capacity: COMMIT_QUEUE_REQUESTS_MAX,
        }
    }
}

/// An open database. Cheap to clone, `Send + Sync`: share it between threads and tasks.
/// The committer stops when the last clone (and every [`Collection`]) is dropped.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    queue: Option<SyncSender<Request>>,
    committer: Option<JoinHandle<()>>,
    options: Options,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has answered everything
        // queued; joining it releases the storage before a reopen.
        self.queue.take();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

impl Db {
    /// Opens (or creates) the database in directory `path` with the embedded
    /// storage engine, recovering whatever the last run left durable.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        let storage = FjallStorage::open(path.as_ref())?;
        Db::open_with_storage(Arc::new(storage), options)
    }

    /// Opens a database on any [`Storage`] backend.
    pub fn open_with_storage(storage: Arc<dyn Storage>, options: Options) -> Result<Db> {
        if options.queue_capacity == 0 || options.queue_capacity > COMMIT_QUEUE_REQUESTS_MAX {
            return Err(Error::LimitExceeded {
                what: "COMMIT_QUEUE_REQUESTS_MAX",
                limit: COMMIT_QUEUE_REQUESTS_MAX as u64,
            });
        }
        let shared = Arc::new(Shared {
            storage,
            durability: options.durability,
            watermark: Default::default(),
        });
        let committer = Committer::recover(Arc::clone(&shared))?;
        let (queue, receiver) = mpsc::sync_channel(options.queue_capacity);
        let handle = std::thread::Builder::new()
            .name("truce-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| Error::Unavailable(format!("cannot start the committer thread: {e}")))?;
        let inner = Inner {
            shared,
            queue: Some(queue),
            committer: Some(handle),
            options,
        };
        Ok(Db {
            inner: Arc::new(inner),
        })
    }

    /// A handle on collection `name` (created by its first write).
    pub fn collection(&self, name: &str) -> Result<Collection> {
        doc::validate_collection_name(name)?;
        Ok(Collection::new(self.clone(), name))
    }

    /// The highest commit sequence number that is durable.
    pub fn durable_seq(&self) -> u64 {
        self.inner.shared.watermark.durable_seq()
    }

    /// The options the database was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Queues a write for the committer without waiting for it.
    pub(crate) fn submit(&self, key: Vec<u8>, id: &str, op: WriteOp, expect: Expect) -> Result<PendingWrite> {
        self.inner.shared.watermark.check()?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            id: id.to_string(),
            op,
            expect,
            reply,
        };
        let stopped = || Error::Unavailable("the committer has stopped".into());
        let queue = self.inner.queue.as_ref().ok_or_else(stopped)?;
        match queue.try_send(request) {
            Ok(()) => Ok(PendingWrite::new(answer)),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }
}

use outcome::Expect;
