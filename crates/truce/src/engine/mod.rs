//! The engine: the [`Db`] handle, collections, transactions, indexes, the change
//! feed, and the committer behind them.
//!
//! Reads go straight to storage (and wait for durability when they observe a
//! commit still being synced); writes go through a bounded queue to the one
//! committer thread.

use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::doc::{self, Document};
use crate::error::{Error, Result};
use crate::index::{IndexDef, IndexState};
use crate::limits::{
    COLLECTIONS_DEFAULT, COLLECTIONS_MAX, COMMIT_POLL_US_DEFAULT, COMMIT_POLL_US_MAX,
    COMMIT_QUEUE_REQUESTS_MAX, HOT_SPOTS_TRACKED_DEFAULT, IDEMPOTENCY_RETENTION_MS_DEFAULT,
    MIN_FREE_DISK_BYTES_DEFAULT, PAGE_MEMORY_BYTES_DEFAULT,
};
use crate::record::StoredDoc;
use crate::storage::{Durability, FjallOptions, FjallStorage, Storage};

mod backup;
mod check;
mod collection;
mod committer;
pub mod config;
mod counters;
mod disk;
mod evaluate;
mod group;
pub mod insights;
mod mark;
pub mod outcome;
mod pending;
mod poll;
mod purge;
pub mod read;
mod readset;
mod recount;
mod retry;
mod transaction;
pub mod tx;
mod watermark;

use poll::PollWindow;

pub use backup::{Backup, BackupProgress, BackupReport, BackupStop, unfinished as unfinished_backup};
pub use check::{CheckProblem, CheckProgress, CheckReport, CheckSkip, check};
pub use collection::Collection;
pub use committer::{IndexProgress, now_ms};
pub use disk::DiskStatus;
pub use evaluate::WriteOp;
pub use insights::{InsightsReport, Origin, Stats};
pub use mark::{COMMIT_MARK_FILE, MarkCheck, lost_commits};
pub use pending::{Pending, PendingFuture, PendingTx, PendingWrite};
pub use read::{Change, ChangesPage, CheckpointPage};
pub use recount::{RecountFix, RecountReport};
pub use retry::RetryPolicy;
pub use transaction::Transaction;

use committer::{Committer, Request, Shared};
use tx::{Commit, IdempotencyKey, TxFailure, TxOp, TxOutcome};

/// How to open a database.
#[derive(Clone, Debug)]
pub struct Options {
    /// When a write is acknowledged. [`Durability::Immediate`] (the default) answers
    /// only after the fsync; [`Durability::Relaxed`] is for tests and loses the last
    /// writes on a machine crash.
    pub durability: Durability,
    /// The retry policy of [`Collection::atomic_update`] and [`Db::transaction`].
    pub retry: RetryPolicy,
    /// Writes waiting for the committer before new ones fail with
    /// [`Error::Overloaded`]. At most [`COMMIT_QUEUE_REQUESTS_MAX`].
    pub queue_capacity: usize,
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_retention: Duration,
    /// Keys each minute's hot-spot summary tracks ([`HOT_SPOTS_TRACKED_DEFAULT`];
    /// at most [`HOT_SPOTS_TRACKED_MAX`](crate::limits::HOT_SPOTS_TRACKED_MAX)).
    pub hot_spots: usize,
    /// Memory bounds of the embedded storage ([`Db::open`] only): block cache
    /// and per-keyspace memtables.
    pub fjall: FjallOptions,
    /// How long the committer polls its empty queue before it blocks (an
    /// adaptive window: it opens only while requests keep coming within it),
    /// and the longest it polls for more requests to fill a group (for no
    /// longer than the last group's store took, and only while that pays);
    /// zero never polls. Default [`COMMIT_POLL_US_DEFAULT`], at most
    /// [`COMMIT_POLL_US_MAX`].
    pub commit_poll: Duration,
    /// Free space to keep on the storage's filesystem, *plus* room for the
    /// storage's compactions, as much as the database takes on disk (a 10 GB
    /// database needs 10 GB + this free): while less is free, writes that add
    /// data fail with [`Error::InsufficientStorage`] and deletes go on
    /// (`engine/disk.rs`). Default [`MIN_FREE_DISK_BYTES_DEFAULT`] (256 MiB);
    /// 0 turns the whole reserve off.
    pub min_free_disk_bytes: u64,
    /// Memory for the pages being read at once (queries, feeds, pulls):
    /// past it, pages end early or are refused with
    /// [`Error::PagesOverBudget`]. Default [`PAGE_MEMORY_BYTES_DEFAULT`]
    /// (256 MiB); a page read alone always fits.
    pub page_memory_bytes: usize,
    /// Most collections the database holds: a write that would make one
    /// more is refused with [`Error::TooManyCollections`] (collections are
    /// never removed; a database that already holds more keeps them all).
    /// Default [`COLLECTIONS_DEFAULT`], at most [`COLLECTIONS_MAX`].
    pub collections_max: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Immediate,
            retry: RetryPolicy::default(),
            queue_capacity: COMMIT_QUEUE_REQUESTS_MAX,
            idempotency_retention: Duration::from_millis(IDEMPOTENCY_RETENTION_MS_DEFAULT),
            hot_spots: HOT_SPOTS_TRACKED_DEFAULT,
            fjall: FjallOptions::default(),
            commit_poll: Duration::from_micros(COMMIT_POLL_US_DEFAULT),
            min_free_disk_bytes: MIN_FREE_DISK_BYTES_DEFAULT,
            page_memory_bytes: PAGE_MEMORY_BYTES_DEFAULT,
            collections_max: COLLECTIONS_DEFAULT,
        }
    }
}

/// An open database. Cheap to clone, `Send + Sync`: share it between threads and tasks.
/// The committer stops when the last handle on it is dropped: every clone,
/// [`Collection`], [`Subscription`] and [`Transaction`], and the step a
/// background job (an index backfill, a purge, a counter's recount) is
/// running; there is no `close` to wait on. The thread that drops the last
/// handle waits for the committer to answer what is queued (do not drop it
/// on an async runtime's worker), and a [`Db::open`] of the same directory
/// meanwhile fails with `InUse`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    queue: Option<SyncSender<Request>>,
    committer: Option<JoinHandle<()>>,
    /// Keeps the commit mark of a database opened on a directory (durable
    /// only); its last write, at close, follows the committer's end.
    mark: Option<mark::MarkKeeper>,
    options: Options,
    /// Taken while a backup runs.
    backup: backup::BackupGate,
    /// Held by a recount from its snapshot to its corrections' commit: two at
    /// once would each add the same difference.
    recounting: std::sync::Mutex<()>,
    /// The index backfills running, by collection, name and declaration: an
    /// index declared again as it is while it builds needs no second walk
    /// (which walked every document again and counted each twice).
    backfilling: std::sync::Mutex<std::collections::HashSet<(String, String, u64)>>,
}

/// A backfill's walk, taken out of `Inner::backfilling` when its thread ends.
struct Running {
    db: Weak<Inner>,
    walk: (String, String, u64),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(inner) = self.db.upgrade() {
            inner
                .backfilling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.walk);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has answered everything
        // queued; joining it releases the storage before a reopen.
        self.queue.take();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
        self.mark.take();
    }
}

impl Db {
    /// Opens (or creates) the database in directory `path` with the embedded
    /// storage engine, recovering whatever the last run left durable.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        if !(0..=crate::storage::FJALL_WORKERS_NICE_MAX).contains(&options.fjall.workers_nice) {
            return Err(Error::LimitExceeded {
                what: "FJALL_WORKERS_NICE_MAX",
                limit: crate::storage::FJALL_WORKERS_NICE_MAX as u64,
            });
        }
        if let Some(why) = backup::unfinished(path.as_ref()) {
            return Err(Error::InvalidBackup(why));
        }
        let storage = FjallStorage::open_with(path.as_ref(), options.fjall)?;
        mark::verify(path.as_ref(), &storage)?;
        // A test's stand-in for a long recovery (inert unless built with
        // `failpoints` and named in `FAILPOINTS`).
        fail::fail_point!("db::open");
        let poll = Db::checked(&options)?;
        Db::start(Arc::new(storage), options, poll, Some(path.as_ref()))
    }

    /// Opens a database on any [`Storage`] backend.
    pub fn open_with_storage(storage: Arc<dyn Storage>, options: Options) -> Result<Db> {
        let poll = Db::checked(&options)?;
        Db::start(storage, options, poll, None)
    }

    /// Refuses `options` past their limits; the commit poll window they ask for.
    fn checked(options: &Options) -> Result<PollWindow> {
        if options.queue_capacity == 0 || options.queue_capacity > COMMIT_QUEUE_REQUESTS_MAX {
            return Err(Error::LimitExceeded {
                what: "COMMIT_QUEUE_REQUESTS_MAX",
                limit: COMMIT_QUEUE_REQUESTS_MAX as u64,
            });
        }
        if options.collections_max > COLLECTIONS_MAX {
            return Err(Error::LimitExceeded {
                what: "COLLECTIONS_MAX",
                limit: COLLECTIONS_MAX as u64,
            });
        }
        if options.commit_poll > Duration::from_micros(COMMIT_POLL_US_MAX) {
            return Err(Error::LimitExceeded {
                what: "COMMIT_POLL_US_MAX",
                limit: COMMIT_POLL_US_MAX,
            });
        }
        Ok(PollWindow::new(options.commit_poll))
    }

    /// Starts the committer on `storage` with `poll` (tests pass windows past
    /// [`COMMIT_POLL_US_MAX`], to make its waits long enough to time), and
    /// for a database in directory `dir` with durable commits, the keeper
    /// of its commit mark.
    fn start(
        storage: Arc<dyn Storage>,
        options: Options,
        poll: PollWindow,
        dir: Option<&Path>,
    ) -> Result<Db> {
        let shared = Arc::new(Shared {
            storage,
            durability: options.durability,
            watermark: Default::default(),
            catalog: RwLock::default(),
            idempotency_retention_ms: options.idempotency_retention.as_millis() as u64,
            collections: RwLock::default(),
            collections_max: options.collections_max,
            configs: RwLock::default(),
            feed_heads: RwLock::default(),
            outbox: RwLock::default(),
            insights: insights::Insights::new(options.hot_spots)?,
            disk: disk::DiskSpace::new(options.min_free_disk_bytes),
            pages: crate::budget::Budget::new(options.page_memory_bytes),
            epoch: Default::default(),
        });
        shared
            .disk
            .observe(shared.storage.free_bytes(), shared.storage.used_bytes());
        let committer = Committer::recover(Arc::clone(&shared), poll)?;
        let dropping = committer.dropping();
        let mark = match dir {
            Some(dir) if options.durability == Durability::Immediate => {
                mark::MarkKeeper::start(dir, Arc::clone(&shared))
            }
            _ => None,
        };
        let (queue, receiver) = mpsc::sync_channel(options.queue_capacity);
        let handle = std::thread::Builder::new()
            .name("truce-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| Error::Unavailable(format!("cannot start the committer thread: {e}")))?;
        let inner = Inner {
            shared,
            queue: Some(queue),
            committer: Some(handle),
            mark,
            options,
            backup: Default::default(),
            recounting: Default::default(),
            backfilling: Default::default(),
        };
        let db = Db {
            inner: Arc::new(inner),
        };
        db.resume_backfills();
        db.resume_counter_backfills();
        for (collection, name) in dropping {
            db.spawn_purge(collection, name);
        }
        Ok(db)
    }

    /// A handle on collection `name` (created by its first write).
    pub fn collection(&self, name: &str) -> Result<Collection> {
        doc::validate_collection_name(name)?;
        Ok(Collection::new(self.clone(), name))
    }

    /// The names of every collection that has ever been written, in order.
    pub fn collections(&self) -> Vec<String> {
        self.collections_page(None, usize::MAX).0
    }

    /// How many collections were ever written (of at most
    /// [`Options::collections_max`]).
    pub fn collection_count(&self) -> usize {
        self.shared()
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether collection `name` was ever written.
    pub fn has_collection(&self, name: &str) -> bool {
        let names = self
            .shared()
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner());
        names.contains(name)
    }

    /// Refuses ([`Error::TooManyCollections`]) when a write could not make
    /// collection `name`: it is not there and the database holds
    /// [`Options::collections_max`].
    pub fn room_for_collection(&self, name: &str) -> Result<()> {
        let names = self
            .shared()
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let new = Some(name)
            .filter(|name| !names.contains(*name))
            .into_iter()
            .collect();
        committer::room(names.len(), &new, self.shared().collections_max)
    }

    /// At most `limit` names of the collections ever written, in order,
    /// from the first after `after`; and whether more follow the last of
    /// them.
    pub fn collections_page(&self, after: Option<&str>, limit: usize) -> (Vec<String>, bool) {
        use std::ops::Bound;
        let names = self
            .shared()
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut kept = names.range::<str, _>((from, Bound::Unbounded));
        let page: Vec<String> = kept.by_ref().take(limit).cloned().collect();
        let more = page.len() == limit && kept.next().is_some();
        (page, more)
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

    /// Taken by a recount for its whole run (see `Inner::recounting`).
    pub(crate) fn recounting(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.recounting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request for the committer.
    fn submit(&self, request: Request) -> Result<()> {
        self.inner.shared.watermark.check()?;
        // A keyed commit may be a replay, which writes nothing, and an index
        // declared again as it is writes nothing: the committer judges those.
        if let Request::Commit(commit, _) = &request
            && commit.idempotency.is_none()
        {
            self.inner.shared.disk.admit(commit)?;
        }
        let stopped = || Error::Unavailable("the committer has stopped".into());
        let queue = self.inner.queue.as_ref().ok_or_else(stopped)?;
        let depth = &self.inner.shared.insights.queue_depth;
        depth.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = queue.try_send(request);
        if sent.is_err() {
            depth.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }

    /// Queues a prepared commit.
    pub(crate) fn submit_commit(&self, commit: Commit) -> Result<PendingTx> {
        self.submit_commit_as(commit, Ok)
    }

    /// Queues a prepared commit whose answer `convert` turns into a `T`.
    pub(crate) fn submit_commit_as<T>(
        &self,
        commit: Commit,
        convert: fn(TxOutcome) -> Result<T>,
    ) -> Result<Pending<TxOutcome, T>> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Commit(Box::new(commit), reply))?;
        Ok(Pending::new(answer, convert))
    }

    /// Starts a transaction on a fresh snapshot; one attempt, no retries. It
    /// must commit within [`TX_LIFETIME_MS_MAX`](crate::limits::TX_LIFETIME_MS_MAX)
    /// (10 s) of its start, else its commit is `LimitExceeded`; one never
    /// committed holds its snapshot (and what the storage keeps for it) until
    /// it is dropped.
    pub fn begin(&self) -> Result<Transaction> {
        Transaction::begin(self)
    }

    /// Runs `body` as an optimistic, serializable transaction, re-running it on a
    /// conflict under the database's [`RetryPolicy`] (exponential backoff with full
    /// jitter). Each attempt must commit within
    /// [`TX_LIFETIME_MS_MAX`](crate::limits::TX_LIFETIME_MS_MAX) (10 s) of its
    /// start, else it fails with `LimitExceeded`, not retried. Errors returned by `body` end the transaction without retrying.
    /// When every attempt conflicted, fails with [`Error::TransactionFailed`]
    /// naming what conflicted. So does, at once, an attempt whose every write
    /// refused was refused by a document as it already was when the attempt
    /// began (a create-only put of a document that was there, a value a
    /// unique index held for another): `body` run again would see the same
    /// and meet the same refusal.
    pub fn transaction<T>(&self, mut body: impl FnMut(&mut Transaction) -> Result<T>) -> Result<T> {
        let policy = self.inner.options.retry;
        let attempts = policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut tx = self.begin()?;
            tx.set_origin(tx.origin().clone().attempt(attempt, Some(attempts)));
            let value = body(&mut tx)?;
            let snapshot = tx.snapshot_seq();
            match tx.commit()? {
                Ok(_) => return Ok(value),
                Err(failure)
                    if attempt >= attempts
                        || matches!(&failure, TxFailure::Conflicts(refused)
                            if refused.iter().all(|r| r.conflict.met_at_or_before(snapshot))) =>
                {
                    return Err(Error::TransactionFailed {
                        attempts: attempt,
                        failure: Box::new(failure),
                    });
                }
                Err(_) => {
                    std::thread::sleep(policy.delay(attempt));
                    attempt += 1;
                }
            }
        }
    }

    /// Queues a batch transaction: `check`/`put`/`patch`/`delete` operations, each
    /// with its precondition, applied all together or not at all. With an
    /// idempotency key, the same batch sent again within the retention window gets
    /// the first answer without writing again.
    pub fn submit_batch(&self, ops: Vec<TxOp>, idempotency_key: Option<&str>) -> Result<PendingTx> {
        self.submit_batch_from(ops, idempotency_key, Origin::default())
    }

    /// Counts conflicts found outside the committer, as if a write had met
    /// them: `(id, reason)` of documents of `collection`, on behalf of
    /// `origin` (its retries and permanent failures too). Replication's push
    /// compares a client's assumed state with the master's itself, and its
    /// conflicts belong in [`stats`](Self::stats) and the hot spots like any.
    pub fn note_conflicts(
        &self,
        collection: &str,
        conflicts: &[(String, outcome::ConflictReason)],
        origin: &Origin,
    ) {
        let refusals = conflicts.iter().map(|(id, reason)| {
            (
                insights::Target::Document(id.clone()),
                insights::conflict_index(reason.code()),
            )
        });
        self.note_refusals(collection, refusals, origin);
    }

    /// Counts a transaction of `collection` refused as `snapshot_too_old`
    /// where the committer could not name its collection (a commit of reads
    /// alone).
    pub(crate) fn note_snapshot_too_old(&self, collection: &str, origin: &Origin) {
        let refusal = (insights::Target::Range(String::new()), insights::SNAPSHOT_TOO_OLD);
        self.note_refusals(collection, [refusal], origin);
    }

    /// Counts refusals `(target, conflict code)` of `collection` met outside
    /// the committer, on behalf of `origin`.
    fn note_refusals(
        &self,
        collection: &str,
        refusals: impl IntoIterator<Item = (insights::Target, usize)>,
        origin: &Origin,
    ) {
        let collection: Arc<str> = Arc::from(collection);
        let mut events = Vec::new();
        for (i, (target, code)) in refusals.into_iter().enumerate() {
            insights::refused(&mut events, &collection, target, code, false, origin, i == 0);
        }
        if !events.is_empty() {
            self.shared().insights.absorb(&mut events, 0, 0, None);
        }
    }

    /// [`submit_batch`](Self::submit_batch) on behalf of `origin`, to whom its
    /// conflicts, retries and failures are attributed in [`stats`](Self::stats)
    /// and [`insights`](Self::insights).
    pub fn submit_batch_from(
        &self,
        ops: Vec<TxOp>,
        idempotency_key: Option<&str>,
        origin: Origin,
    ) -> Result<PendingTx> {
        let ops = tx::prepare_all(ops)?;
        let idempotency = idempotency_key
            .map(|key| IdempotencyKey::new(key, &ops))
            .transpose()?;
        self.submit_commit(Commit {
            ops,
            reads: None,
            idempotency,
            origin,
            seen: None,
        })
    }

    /// Queues one write (a `put`, `patch` or `delete` op), optionally guarded by
    /// an idempotency key; the answer is that write's result.
    pub fn submit_write(&self, op: TxOp, idempotency_key: Option<&str>) -> Result<PendingWrite> {
        self.submit_write_from(op, idempotency_key, Origin::default())
    }

    /// [`submit_write`](Self::submit_write) on behalf of `origin`.
    pub fn submit_write_from(
        &self,
        op: TxOp,
        idempotency_key: Option<&str>,
        origin: Origin,
    ) -> Result<PendingWrite> {
        let op = tx::PreparedOp::prepare(op)?;
        if op.write.is_none() {
            return Err(Error::InvalidTransaction(
                "a single write cannot be a check".into(),
            ));
        }
        let idempotency = idempotency_key
            .map(|k| IdempotencyKey::new(k, std::slice::from_ref(&op)))
            .transpose()?;
        let mut commit = Commit {
            ops: vec![op],
            reads: None,
            idempotency,
            origin,
            seen: None,
        };
        let shared = &self.inner.shared;
        shared.watermark.check()?;
        if let Some(outcome) = committer::settle_from_durable(shared, &mut commit)? {
            let ok = Ok(outcome);
            let mut events = Vec::new();
            committer::observe(&commit, &ok, &mut events, &mut Default::default());
            shared.insights.absorb(&mut events, 0, 0, None);
            let (reply, answer) = oneshot::channel();
            drop(reply.send(ok));
            return Ok(Pending::new(answer, pending::single_write));
        }
        self.submit_commit_as(commit, pending::single_write)
    }

    /// The engine's counters: commits, groups and their fsync times, conflicts,
    /// retries, permanent failures and overwrites by reason, collection and
    /// source, no-ops, skips, replays, TTL deletions, queue and outbox.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let outbox = *shared.outbox.read().unwrap_or_else(|p| p.into_inner());
        shared.insights.stats(outbox, committer::now_ms())
    }

    /// The `limit` hottest documents and ranges of the last `window` (at most
    /// an hour; counted by whole minutes, so over up to a minute more): where
    /// conflicts, retries, overwrites and duplicate writes come from, each
    /// with a remedy (docs/insights.md).
    pub fn insights(&self, window: Duration, limit: usize) -> Result<InsightsReport> {
        self.insights_of(window, limit, &|_| true)
    }

    /// [`insights`](Self::insights) of the collections `shown` accepts: the
    /// `limit` hottest among them, however many of others rank above.
    pub fn insights_of(
        &self,
        window: Duration,
        limit: usize,
        shown: &dyn Fn(&str) -> bool,
    ) -> Result<InsightsReport> {
        let shared = &self.inner.shared;
        let (_, oldest) = *shared.outbox.read().unwrap_or_else(|p| p.into_inner());
        let backed_up = oldest
            .is_some_and(|ms| committer::now_ms().saturating_sub(ms) > crate::limits::OUTBOX_BACKED_UP_MS);
        shared.insights.report(window, limit, shown, backed_up)
    }

    /// This database's history epoch: a random number drawn when the
    /// database was made, and drawn anew in every backup. Positions in its
    /// change feed (sequence numbers) belong to one history: a database
    /// restored from a backup goes on from the backup's last commit, and
    /// hands out again sequence numbers its replicas may already have
    /// passed. A replica that keeps the epoch beside its position knows
    /// that its position is from another history when the epoch differs.
    pub fn epoch(&self) -> u64 {
        self.shared().epoch.get().copied().unwrap_or(0)
    }

    /// `Ok` while the database accepts writes; the sticky failure otherwise.
    pub fn health(&self) -> Result<()> {
        self.inner.shared.watermark.check()
    }

    /// The free space of the storage's filesystem as last looked at, and
    /// whether writes that add data are refused for want of it.
    pub fn disk(&self) -> DiskStatus {
        self.inner.shared.disk.status()
    }

    /// The memory of the pages being read ([`Options::page_memory_bytes`]):
    /// what they hold now, and how often one found no room.
    pub fn page_memory(&self) -> &Arc<crate::budget::Budget> {
        &self.inner.shared.pages
    }

    /// [`submit_batch`](Self::submit_batch) and wait for the answer.
    pub fn batch(&self, ops: Vec<TxOp>, idempotency_key: Option<&str>) -> Result<TxOutcome> {
        self.submit_batch(ops, idempotency_key)?.wait()
    }

    /// Changes after `since` (of one collection, or all with `None`), in commit
    /// order, each document at its latest change; at most `limit`, never splitting
    /// a commit. Only durable commits are shown. The feed of all collections
    /// merges theirs: a page reads at least a few entries of every collection.
    ///
    /// A `since` past the last durable commit is [`Error::InvalidQuery`]: this
    /// database never gave it out (its data may have been replaced by an older
    /// copy), and a reader waiting for commits after it would miss every one
    /// up to it.
    ///
    /// With documents, a page also ends (with its commit) once it holds
    /// [`PAGE_BYTES_MAX`](crate::limits::PAGE_BYTES_MAX) of them: it may hold
    /// fewer than `limit` changes with more to come. Go on from its
    /// `last_seq` until a page is empty.
    ///
    /// A reader of a collection that purges its tombstones passes back the
    /// page's `from` with [`changes_from`](Self::changes_from) to be refused
    /// rather than miss a delete; this method does not check.
    pub fn changes(
        &self,
        collection: Option<&str>,
        since: u64,
        limit: usize,
        include_docs: bool,
    ) -> Result<ChangesPage> {
        self.changes_from(collection, since, None, limit, include_docs)
    }

    /// [`Self::changes`] for a reader whose history began at commit `from`
    /// (the `from` of its first page, read from 0): a `since` before the
    /// last tombstone purged of a delete after `from` is
    /// [`Error::HistoryPurged`], since the reader may have missed it
    /// (`engine/purge.rs`). `None`: not checked.
    pub fn changes_from(
        &self,
        collection: Option<&str>,
        since: u64,
        from: Option<u64>,
        limit: usize,
        include_docs: bool,
    ) -> Result<ChangesPage> {
        self.changes_within(
            collection,
            (since, from),
            limit,
            include_docs,
            crate::limits::PAGE_BYTES_MAX,
        )
    }

    /// [`Self::changes`], its page bounded by `limit` alone: for a client that
    /// takes a page shorter than `limit` for the end of the feed, and would
    /// skip what follows (RxDB's CouchDB replication starts its live feed
    /// from "now" once a page comes short). With documents, a page past
    /// [`WHOLE_PAGE_BYTES_MAX`](crate::limits::WHOLE_PAGE_BYTES_MAX) of them
    /// is refused ([`Error::LimitExceeded`]): the client lowers its `limit`.
    pub fn changes_whole(
        &self,
        collection: Option<&str>,
        since: u64,
        limit: usize,
        include_docs: bool,
    ) -> Result<ChangesPage> {
        self.changes_within(collection, (since, None), limit, include_docs, read::Page::WHOLE)
    }

    /// [`changes_from`](Self::changes_from) with each document as stored,
    /// verified but not decoded, as
    /// [`changes_after_stored`](Self::changes_after_stored) reads them: for a
    /// reader that copies their JSON into an answer. Each counts its stored
    /// bytes against the page's limits.
    pub fn changes_from_stored(
        &self,
        collection: Option<&str>,
        since: u64,
        from: Option<u64>,
        limit: usize,
        include_docs: bool,
    ) -> Result<ChangesPage<StoredDoc>> {
        self.changes_within(
            collection,
            (since, from),
            limit,
            include_docs,
            crate::limits::PAGE_BYTES_MAX,
        )
    }

    /// [`changes_whole`](Self::changes_whole) with each document as stored,
    /// as [`changes_from_stored`](Self::changes_from_stored) reads them.
    pub fn changes_whole_stored(
        &self,
        collection: Option<&str>,
        since: u64,
        limit: usize,
        include_docs: bool,
    ) -> Result<ChangesPage<StoredDoc>> {
        self.changes_within(collection, (since, None), limit, include_docs, read::Page::WHOLE)
    }

    /// A page after `since` for a reader whose history began at `from`.
    fn changes_within<D: read::PageDoc>(
        &self,
        collection: Option<&str>,
        (since, from): (u64, Option<u64>),
        limit: usize,
        include_docs: bool,
        bytes_max: usize,
    ) -> Result<ChangesPage<D>> {
        if let Some(c) = collection {
            doc::validate_collection_name(c)?;
        }
        let (view, upto) = read::durable_snapshot(self.shared())?;
        check_position(since, upto)?;
        let from = reader_start(since, from, upto)?;
        purge::check(&*view, collection, (since, None), from)?;
        let page = read::Page { limit, bytes_max };
        let collections = match collection {
            Some(c) => vec![c.to_string()],
            None => {
                let heads = self.shared().feed_heads.read().unwrap_or_else(|p| p.into_inner());
                match heads.collections_after(since) {
                    Some(moved) => moved,
                    None => {
                        drop(heads);
                        read::feed_collections(&*view)?
                    }
                }
            }
        };
        let mut page = read::read_changes(
            &*view,
            (collections, since, upto),
            page,
            include_docs,
            &self.shared().pages,
        )?;
        page.from = from;
        Ok(page)
    }

    /// How many changes of `collection` come after position `since`, counted
    /// up to `cap` (the answer is then `cap`): what a feed's reader has left.
    /// Reads only the change log's keys, from one durable snapshot.
    pub fn pending_changes(&self, collection: &str, since: u64, cap: usize) -> Result<u64> {
        doc::validate_collection_name(collection)?;
        let (view, _) = read::durable_snapshot(self.shared())?;
        let prefix = tx::changes_key(collection.as_bytes(), 0, b"");
        let start = tx::changes_key(collection.as_bytes(), since.saturating_add(1), b"");
        let end = crate::index::keys::prefix_end(&prefix[..=collection.len()]);
        let counted = view.scan(
            crate::storage::Space::Changes,
            std::ops::Bound::Included(&start),
            end.as_deref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            crate::storage::Direction::Forward,
            cap,
        )?;
        Ok(counted.len() as u64)
    }

    /// Changes of `collection` after a `(seq, id)` position (the RxDB checkpoint),
    /// with their documents, from one durable snapshot. The page is bounded
    /// by `limit` alone, and refused past
    /// [`WHOLE_PAGE_BYTES_MAX`](crate::limits::WHOLE_PAGE_BYTES_MAX) of
    /// documents ([`Error::LimitExceeded`]), or when the pages being read
    /// have no room for it ([`Error::PagesOverBudget`]).
    ///
    /// `from` is where the reader's history began, as
    /// [`changes_from`](Self::changes_from) takes it; the page's `from` is
    /// what to pass next time (the snapshot's sequence for a read from the
    /// start).
    pub fn changes_after(
        &self,
        collection: &str,
        after: Option<(u64, &str)>,
        from: Option<u64>,
        limit: usize,
    ) -> Result<CheckpointPage> {
        self.changes_after_as(collection, after, from, limit)
    }

    /// [`changes_after`](Self::changes_after) with each document as stored,
    /// verified but not decoded ([`StoredDoc`]),
    /// for a reader that copies its JSON into an answer
    /// ([`StoredDoc::write_json`](crate::record::StoredDoc::write_json), or
    /// its entries from [`object_json`](crate::record::StoredDoc::object_json)):
    /// decoding took about half of the server's time for an RxDB pull. Each
    /// counts its stored bytes against the page's limits, all it holds.
    pub fn changes_after_stored(
        &self,
        collection: &str,
        after: Option<(u64, &str)>,
        from: Option<u64>,
        limit: usize,
    ) -> Result<CheckpointPage<StoredDoc>> {
        self.changes_after_as(collection, after, from, limit)
    }

    fn changes_after_as<D: read::PageDoc>(
        &self,
        collection: &str,
        after: Option<(u64, &str)>,
        from: Option<u64>,
        limit: usize,
    ) -> Result<CheckpointPage<D>> {
        doc::validate_collection_name(collection)?;
        let (view, upto) = read::durable_snapshot(self.shared())?;
        let at = after.map_or(0, |(seq, _)| seq);
        check_position(at, upto)?;
        let from = reader_start(at, from, upto)?;
        purge::check(&*view, Some(collection), (at, after.map(|(_, id)| id)), from)?;
        let (changes, memory) =
            read::read_changes_after(&*view, (collection, after, upto), limit, &self.shared().pages)?;
        Ok(CheckpointPage {
            changes,
            from,
            memory,
        })
    }

    /// A live subscription to the change feed from `since`, with no gap and no
    /// duplicate between what it catches up on and what it sees live. A `since`
    /// past the last durable commit is [`Error::InvalidQuery`], as in
    /// [`changes`](Self::changes). A subscription from 0 knows where its
    /// history began, and a page that could miss a delete whose tombstone
    /// was purged is refused ([`Error::HistoryPurged`]); from elsewhere it
    /// is checked only with [`subscribe_from`](Self::subscribe_from).
    pub fn subscribe(
        &self,
        collection: Option<&str>,
        since: u64,
        include_docs: bool,
    ) -> Result<Subscription> {
        self.subscribe_from(collection, since, None, include_docs)
    }

    /// [`Self::subscribe`] for a reader whose history began at `from`, as
    /// [`changes_from`](Self::changes_from) takes it.
    pub fn subscribe_from(
        &self,
        collection: Option<&str>,
        since: u64,
        from: Option<u64>,
        include_docs: bool,
    ) -> Result<Subscription> {
        if let Some(c) = collection {
            doc::validate_collection_name(c)?;
        }
        let upto = self.durable_seq();
        check_position(since, upto)?;
        let from = reader_start(since, from, upto)?;
        // Refused here rather than on its first page, so that a stream is
        // answered 410 before it starts; a snapshot only when it can be.
        if purge::is_checked(since, from) {
            let (view, _) = read::durable_snapshot(self.shared())?;
            purge::check(&*view, collection, (since, None), from)?;
        }
        Ok(Subscription {
            db: self.clone(),
            collection: collection.map(String::from),
            since,
            from,
            include_docs,
            page: SUBSCRIPTION_PAGE,
            page_bytes: crate::limits::PAGE_BYTES_MAX,
            held: std::marker::PhantomData,
        })
    }

    /// Starts background backfills of indexes that were building when the
    /// database was last closed.
    fn resume_backfills(&self) {
        let catalog = self
            .shared()
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for def in catalog
            .values()
            .flatten()
            .filter(|d| d.state == IndexState::Building)
        {
            self.spawn_backfill(def.collection.clone(), def.name.clone(), def.declared_seq);
        }
    }

    /// Runs `step` on a background thread named `thread` until it answers
    /// `Ok(false)` (done) or fails; a full queue is retried after a pause.
    /// Holds only a weak handle between steps, so a closed database stays
    /// closed once the step running ends (an index backfill's or a purge's is
    /// one chunk; a counter backfill's is a whole recount, which a reopen in
    /// the same process waits for or meets as `InUse`); unfinished work
    /// resumes on the next open.
    fn spawn_steps(&self, thread: String, mut step: impl FnMut(&Db) -> Result<bool> + Send + 'static) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let name = thread.clone();
        let spawned = std::thread::Builder::new().name(thread.clone()).spawn(move || {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                match step(&Db { inner }) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(Error::Overloaded) => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => return tracing::warn!("{name} stopped: {e}"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the {thread} thread: {e}");
        }
    }

    /// Backfills index `name` of `collection` (its declaration `declared_seq`)
    /// in short steps on a background thread; an unfinished backfill resumes
    /// on the next open.
    pub(crate) fn spawn_backfill(&self, collection: String, name: String, declared_seq: u64) {
        let walk = (collection.clone(), name.clone(), declared_seq);
        if !self.backfilling().insert(walk.clone()) {
            return; // already walking
        }
        // Its walk is over however its thread ends (done, dropped, failed):
        // declared again, the index then gets a new one.
        let running = Running {
            db: Arc::downgrade(&self.inner),
            walk,
        };
        let mut after = None;
        self.spawn_steps(format!("truce-backfill-{name}"), move |db| {
            let _running = &running;
            let request = |reply| Request::Backfill {
                collection: collection.clone(),
                name: name.clone(),
                declared_seq,
                after: after.clone(),
                reply,
            };
            let progress = match db.ask(request) {
                Err(Error::NotFound(_)) => {
                    tracing::info!(index = %name, collection = %collection, "index backfill stopped: the index was dropped");
                    return Ok(false);
                }
                answer => answer?,
            };
            if progress.state == IndexState::Building {
                tracing::info!(index = %name, collection = %collection, backfilled = progress.backfilled, "index backfill");
                after = progress.next;
                return Ok(true);
            }
            tracing::info!(index = %name, collection = %collection, state = progress.state.name(), "index backfill done");
            Ok(false)
        });
    }

    fn backfilling(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String, u64)>> {
        self.inner.backfilling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the entries of dropped index `name` of `collection` in short
    /// steps on a background thread; an unfinished purge resumes on the next open.
    pub(crate) fn spawn_purge(&self, collection: String, name: String) {
        let mut after = None;
        let mut steps = 0;
        self.spawn_steps(format!("truce-purge-{name}"), move |db| {
            after = db.ask(|reply| Request::PurgeIndex {
                collection: collection.clone(),
                name: name.clone(),
                after: after.clone(),
                reply,
            })?;
            steps += 1;
            let what = if after.is_some() {
                "dropped index purge"
            } else {
                "dropped index purge done"
            };
            tracing::info!(index = %name, collection = %collection, steps, "{what}");
            Ok(after.is_some())
        });
    }

    /// Sends the request `make` builds to the committer and waits for its answer.
    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.submit(make(reply))?;
        answer
            .recv()
            .unwrap_or_else(|_| Err(Error::Unavailable("committer stopped".into())))
    }

    /// Drops index `name` of `collection` (see [`Collection::drop_index`]).
    pub(crate) fn submit_drop_index(&self, collection: &str, name: &str) -> Result<IndexDef> {
        let dropped = self.ask(|reply| Request::DropIndex {
            collection: collection.to_string(),
            name: name.to_string(),
            reply,
        })?;
        self.spawn_purge(collection.to_string(), name.to_string());
        Ok(dropped)
    }

    /// Adds amounts to target fields in one commit, which also records the
    /// backfill of counter `backfilled` (collection, name) done; returns the
    /// commit's sequence (the last one's if every increment was skipped).
    pub(crate) fn submit_increments(
        &self,
        increments: Vec<counters::Increment>,
        backfilled: Option<committer::Backfilled>,
    ) -> Result<committer::Corrected> {
        self.ask(|reply| Request::Increment(increments, backfilled, reply))
    }

    /// Runs again, on a background thread, the backfills of counters whose
    /// declaration committed and whose backfill did not (a crash came
    /// between). A full commit queue retries the same counter; another
    /// failure is logged and leaves that one waiting for the next open.
    fn resume_counter_backfills(&self) {
        let mut pending: std::collections::VecDeque<(String, String)> = self
            .shared()
            .configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|(collection, config)| {
                config
                    .backfilling
                    .keys()
                    .map(|name| (collection.clone(), name.clone()))
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        self.spawn_steps("truce-counter-backfill".into(), move |db| {
            let Some((collection, name)) = pending.front() else {
                return Ok(false);
            };
            match recount::backfill(db, collection, name) {
                Ok(Some(report)) => {
                    tracing::info!(collection = %collection, counter = %name, fixed = report.fixed.len(), "counter backfill done");
                }
                // A `PUT` of the configuration backfilled it meanwhile.
                Ok(None) => {}
                // Removed from the configuration since: nothing to backfill.
                Err(Error::NotFound(_)) => {}
                Err(Error::Overloaded) => return Err(Error::Overloaded),
                Err(e) => {
                    tracing::warn!(collection = %collection, counter = %name, "counter backfill failed, left for the next open: {e}");
                }
            }
            pending.pop_front();
            Ok(true)
        });
    }

    /// Replaces `collection`'s configuration; returns the sequence it applies after.
    pub(crate) fn submit_config(&self, collection: &str, config: config::CollectionConfig) -> Result<u64> {
        self.ask(|reply| Request::SetConfig(collection.to_string(), Box::new(config), reply))
    }

    /// `after_commit` counter increments still waiting, and the age of the oldest in ms.
    pub fn outbox_status(&self) -> (u64, Option<u64>) {
        let (entries, oldest) = *self.shared().outbox.read().unwrap_or_else(|p| p.into_inner());
        (entries, oldest.map(|ms| committer::now_ms().saturating_sub(ms)))
    }

    pub(crate) fn submit_define_index(&self, def: crate::index::IndexDef) -> Result<IndexProgress> {
        self.ask(|reply| Request::DefineIndex(Box::new(def), reply))
    }
}

/// Where a reader's history began: at the snapshot of its first read when it
/// reads from 0 (it holds nothing yet), else where it says (`from`, which
/// this database must have given out: one past its last commit is refused
/// even from 0, as a `_pull` checkpoint's is).
fn reader_start(since: u64, from: Option<u64>, head: u64) -> Result<Option<u64>> {
    if let Some(from) = from
        && from > head
    {
        return Err(Error::InvalidQuery(format!(
            "from {from} is past this database's last commit ({head}): it was not given out by this data \
             directory; read the feed again from 0, without from"
        )));
    }
    if since == 0 {
        return Ok(Some(head));
    }
    Ok(from)
}

/// Refuses a feed position this database cannot have given out: past `head`,
/// its last durable commit.
fn check_position(since: u64, head: u64) -> Result<()> {
    if since > head {
        return Err(Error::InvalidQuery(format!(
            "position {since} is past this database's last commit ({head}): it was not given out by \
             this data directory (was it replaced by an older copy?); read the feed again from 0, \
             or from {head} to skip its history"
        )));
    }
    Ok(())
}

/// A live change feed. Each call returns the next changes after the last ones it
/// returned; a commit is never split or repeated. A clone goes on from where
/// this one stands, on its own. Its pages hold their documents decoded, or
/// as stored once it is [`stored`](Self::stored).
pub struct Subscription<D = Document> {
    db: Db,
    collection: Option<String>,
    since: u64,
    /// Where its history began, as [`Db::changes_from`] takes it.
    from: Option<u64>,
    include_docs: bool,
    page: usize,
    /// Bytes of documents past which a page ends, as in [`Db::changes`].
    page_bytes: usize,
    /// How its pages hold their documents.
    held: std::marker::PhantomData<fn() -> D>,
}

// By hand: a derive would ask `D: Clone`, which nothing here holds.
impl<D> Clone for Subscription<D> {
    fn clone(&self) -> Self {
        Subscription {
            db: self.db.clone(),
            collection: self.collection.clone(),
            held: std::marker::PhantomData,
            ..*self
        }
    }
}

/// Changes per page of a subscription unless [`Subscription::page_limit`] says.
const SUBSCRIPTION_PAGE: usize = 1000;

impl Subscription<Document> {
    /// The same subscription, its pages holding each document as stored,
    /// verified but not decoded, as [`Db::changes_from_stored`] reads them.
    pub fn stored(self) -> Subscription<StoredDoc> {
        Subscription {
            db: self.db,
            collection: self.collection,
            since: self.since,
            from: self.from,
            include_docs: self.include_docs,
            page: self.page,
            page_bytes: self.page_bytes,
            held: std::marker::PhantomData,
        }
    }
}

impl<D: read::PageDoc> Subscription<D> {
    /// At most `limit` changes per page, as [`Db::changes`]'s `limit` (1 to
    /// [`CHANGES_LIMIT_MAX`](crate::limits::CHANGES_LIMIT_MAX); a commit is
    /// never split).
    pub fn page_limit(mut self, limit: usize) -> Result<Subscription<D>> {
        read::check_changes_limit(limit)?;
        self.page = limit;
        Ok(self)
    }

    /// Pages bounded by their limit alone, as [`Db::changes_whole`]'s (and
    /// refused as they are).
    pub fn whole_pages(mut self) -> Subscription<D> {
        self.page_bytes = read::Page::WHOLE;
        self
    }

    /// Where the subscription stands: every change up to here has been returned.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Where its reader's history began, as [`Db::changes_from`] takes it.
    pub fn from(&self) -> Option<u64> {
        self.from
    }

    /// The next changes there are now, without waiting: an empty page when
    /// none came. Reads storage and decodes documents: a caller on an async
    /// runtime's thread that others share runs it on a blocking one (a
    /// clone, [`poll`](Self::poll)ed there, then put back), and waits with
    /// [`changed`](Self::changed).
    pub fn poll(&mut self) -> Result<ChangesPage<D>> {
        let page = self.db.changes_within(
            self.collection.as_deref(),
            (self.since, self.from),
            self.page,
            self.include_docs,
            self.page_bytes,
        )?;
        self.since = page.last_seq;
        self.from = page.from;
        Ok(page)
    }

    /// Waits (asynchronously) until a commit after where it stands is
    /// durable that may hold changes for it (of its collection, or any).
    pub async fn changed(&self) -> Result<()> {
        let shared = self.db.shared();
        shared
            .watermark
            .beyond(self.since, self.collection.as_deref())
            .await
    }

    /// The next changes, waiting up to `timeout` for some; an empty page when
    /// none came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<ChangesPage<D>> {
        // A timeout past what an `Instant` can hold (`Duration::MAX`) is none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let page = self.poll()?;
            if !page.changes.is_empty() {
                return Ok(page);
            }
            if !self.db.shared().watermark.wait_until(self.since + 1, deadline)? {
                return Ok(page);
            }
        }
    }

    /// The next changes, waiting (asynchronously) until there are some.
    pub async fn next(&mut self) -> Result<ChangesPage<D>> {
        loop {
            let page = self.poll()?;
            if !page.changes.is_empty() {
                return Ok(page);
            }
            self.changed().await?;
        }
    }
}
