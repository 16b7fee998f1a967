//! The committer: the only writer. One thread drains every waiting request,
//! evaluates them in order on the latest state, writes the group with one fsync,
//! and only then answers them all (group commit).
//!
//! Hot path: `run_group` and `commit` run for every request; keep allocation and
//! locking out of them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::doc::{Document, Meta};
use crate::error::{Error, Result};
use crate::index::{self, IndexDef, IndexState};
use crate::limits::{
    BACKFILL_CHUNK_DOCS, BACKGROUND_TICK_MS, COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_MET_BYTES_MAX,
    COMMIT_BATCH_REQUESTS_MAX, COMMITTER_IDLE_MS, FILTER_STEPS_MAX, INDEX_PURGE_CHUNK_ENTRIES,
    INDEX_VALUES_BYTES_MAX, TX_READ_BYTES_MAX, TX_WRITE_BYTES_MAX,
};
use crate::record::{self, IdempotencyRecord};
use crate::storage::{Direction, Durability, Space, Storage};
use crate::update::{Update, Work};

use super::config::{self, CollectionConfig, CounterMode};
use super::counters::{self, Increment};
use super::evaluate::{self, CommitClock, WriteOp};
use super::group::{Group, Held, Met};
use super::insights::{self, Event, Insights, Kind, Target};
use super::outcome::{Conflict, ConflictReason, Effect, Expect, Written};
use super::poll::PollWindow;
use super::readset::RecentWrites;
use super::tx::{self, Commit, OpConflict, PreparedOp, Seen, TxCommitted, TxFailure, TxOutcome};
use super::watermark::Watermark;

mod background;
mod turns;

use turns::Turns;

/// Meta key of the last committed sequence number.
pub const META_LAST_SEQ: &[u8] = b"last_seq";
/// Meta key of the last commit time, so `_ts` never decreases across restarts.
pub const META_LAST_TS: &[u8] = b"last_ts";
/// Meta key of the history's epoch ([`Shared::epoch`]).
pub const META_EPOCH: &[u8] = b"epoch";

/// A new history epoch: random, never 0 (a stored 0 would read as none),
/// below 2^53, so that a JavaScript client holds it exactly (a number past
/// that came back from RxDB rounded, and every pull was refused as from
/// another history).
pub fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

/// Where an index stands after a definition or a backfill step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexProgress {
    /// Building, ready or failed.
    pub state: IndexState,
    /// Documents added by the backfill so far.
    pub backfilled: u64,
    /// Where the next backfill step starts (the last document key done).
    pub next: Option<Vec<u8>>,
    /// Which declaration of its name the index is ([`IndexDef::declared_seq`]).
    pub declared_seq: u64,
}

impl IndexDef {
    /// Where this index stands, with the next backfill step at `next`.
    fn progress(&self, next: Option<Vec<u8>>) -> IndexProgress {
        IndexProgress {
            state: self.state,
            backfilled: self.backfilled,
            next,
            declared_seq: self.declared_seq,
        }
    }
}

/// A request waiting for the committer, with where its answer goes once the
/// group is durable.
pub enum Request {
    /// Commit a transaction (a single write is a transaction of one operation).
    Commit(Box<Commit>, oneshot::Sender<Result<TxOutcome>>),
    /// Register a new index; it is maintained from this commit on.
    DefineIndex(Box<IndexDef>, oneshot::Sender<Result<IndexProgress>>),
    /// Replace a collection's configuration (TTL, counters).
    SetConfig(String, Box<CollectionConfig>, oneshot::Sender<Result<u64>>),
    /// Add amounts to target fields in one commit (recount corrections); when
    /// the recount was the backfill of a counter declared, the same commit
    /// records that it is done.
    Increment(
        Vec<Increment>,
        Option<Backfilled>,
        oneshot::Sender<Result<Corrected>>,
    ),
    /// Drop an index: from this commit on it is neither maintained nor read.
    /// Answers the definition dropped.
    DropIndex {
        /// Collection.
        collection: String,
        /// Index name.
        name: String,
        /// Where the definition goes.
        reply: oneshot::Sender<Result<IndexDef>>,
    },
    /// Delete the next chunk of a dropped index's entries (the last step also
    /// its definition). Answers the last entry deleted while more may remain,
    /// `None` once the index is gone.
    PurgeIndex {
        /// Collection.
        collection: String,
        /// Index name.
        name: String,
        /// The last entry already deleted.
        after: Option<Vec<u8>>,
        /// Where the cursor goes.
        reply: oneshot::Sender<Result<Option<Vec<u8>>>>,
    },
    /// Add the next chunk of existing documents to a building index.
    Backfill {
        /// Collection.
        collection: String,
        /// Index name.
        name: String,
        /// Which declaration of the name this step is for: a step of an
        /// earlier declaration, dropped since, is refused.
        declared_seq: u64,
        /// The last document key already done.
        after: Option<Vec<u8>>,
        /// Where the progress goes.
        reply: oneshot::Sender<Result<IndexProgress>>,
    },
}

/// An answer waiting for its group's fsync.
enum Answer {
    Commit(oneshot::Sender<Result<TxOutcome>>, Result<TxOutcome>),
    Index(oneshot::Sender<Result<IndexProgress>>, Result<IndexProgress>),
    Seq(oneshot::Sender<Result<u64>>, Result<u64>),
    Corrected(oneshot::Sender<Result<Corrected>>, Result<Corrected>),
    Dropped(oneshot::Sender<Result<IndexDef>>, Result<IndexDef>),
    Cursor(oneshot::Sender<Result<Option<Vec<u8>>>>, Result<Option<Vec<u8>>>),
}

impl Answer {
    /// Sends the answer, or `unavailable` if the group failed to store. A caller
    /// that stopped waiting is no reason to stop the others.
    fn deliver(self, stored: &Result<()>) {
        match (self, stored) {
            (Answer::Commit(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Index(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Seq(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Corrected(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Dropped(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Cursor(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Commit(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Index(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Seq(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Corrected(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Dropped(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Cursor(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
        }
    }
}

impl Request {
    /// Answers `unavailable` without evaluating: the engine has failed.
    fn fail(self, error: &Error) {
        match self {
            Request::Commit(_, tx) => drop(tx.send(Err(unavailable(error)))),
            Request::DefineIndex(_, tx) | Request::Backfill { reply: tx, .. } => {
                drop(tx.send(Err(unavailable(error))))
            }
            Request::SetConfig(_, _, tx) => drop(tx.send(Err(unavailable(error)))),
            Request::Increment(_, _, tx) => drop(tx.send(Err(unavailable(error)))),
            Request::DropIndex { reply, .. } => drop(reply.send(Err(unavailable(error)))),
            Request::PurgeIndex { reply, .. } => drop(reply.send(Err(unavailable(error)))),
        }
    }
}

/// Logs an increment of `collection/id`'s `field` skipped because the sum
/// would pass the largest number JSON holds.
fn warn_sum_not_finite(collection: &str, id: &str, field: &str) {
    tracing::warn!(
        target_doc = %format!("{collection}/{id}"),
        "counter increment skipped: the sum in {field} would pass the largest number JSON holds"
    );
}

/// What a commit of corrections did: its sequence, and the target documents
/// (collection, id) whose increments could not be applied (`skipped`: the
/// target would pass a limit, or its field holds no number), each logged.
pub struct Corrected {
    /// The commit's sequence (the last one's, when nothing was written).
    pub seq: u64,
    /// Targets left as they were.
    pub skipped: Vec<(String, String)>,
}

/// A counter's backfill done: counter `name` of `collection`, as declared in
/// `generation` (`CollectionConfig::backfilling`).
pub struct Backfilled {
    /// The counter's collection (its source).
    pub collection: String,
    /// The counter's name.
    pub name: String,
    /// The declaration the recount read.
    pub generation: u64,
}

/// Fails the engine, stickily, if dropped while the committer's thread unwinds
/// (a panic below it, in the storage engine say): every write would otherwise
/// wait for a committer that is gone, and `Db::health` say all is well.
/// Locals drop in reverse order, so one declared after the requests and
/// answers of a loop or a group drops before their reply channels do: a
/// writer whose channel closes because the storage panicked (every reply of
/// the group is then in its answers) finds the engine already failed. A
/// panic while one request is evaluated drops that request's reply first:
/// its writer is told the committer stopped, and the engine fails just after.
struct FailOnUnwind(Arc<Shared>);

impl Drop for FailOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the committer thread panicked; the engine refuses writes until it is reopened");
            self.0
                .watermark
                .fail("the committer stopped (it panicked): reopen the database (restart the server)".into());
        }
    }
}

/// The indexes of every collection, by collection name.
pub type Catalog = HashMap<String, Vec<IndexDef>>;

/// What the committer shares with readers.
pub struct Shared {
    /// Where bytes go.
    pub storage: Arc<dyn Storage>,
    /// Whether each group is fsynced before answers go out.
    pub durability: Durability,
    /// The durable sequence and the sticky failure flag.
    pub watermark: Watermark,
    /// Index definitions as of the last durable group.
    pub catalog: RwLock<Catalog>,
    /// How long idempotency keys are remembered, in ms.
    pub idempotency_retention_ms: u64,
    /// Names of every collection that was ever written, as of the last durable group.
    pub collections: RwLock<BTreeSet<String>>,
    /// Most collections a write may make (`Options::collections_max`).
    pub collections_max: usize,
    /// Collection configurations as of the last durable group.
    pub configs: RwLock<HashMap<String, CollectionConfig>>,
    /// Which collections' change logs moved since the database was opened,
    /// for the feed of every collection; set before a group's commits are
    /// durable, so a durable snapshot never holds a change it does not name.
    pub feed_heads: RwLock<super::read::FeedHeads>,
    /// `after_commit` increments waiting in the outbox, and the time of the oldest.
    pub outbox: RwLock<(u64, Option<u64>)>,
    /// Counters and hot spots.
    pub insights: Insights,
    /// The storage's free space, and whether writes are refused for want of it.
    pub disk: super::disk::DiskSpace,
    /// The memory of the pages being read (`Options::page_memory_bytes`).
    pub pages: Arc<crate::budget::Budget>,
    /// This database's history epoch, set at recovery: drawn when the
    /// database is made, drawn anew in each backup ([`super::Db::epoch`]).
    pub epoch: std::sync::OnceLock<u64>,
}

/// Refuses making the collections `new` (none of the `held` there) when
/// they would take the database past `limit`
/// ([`Error::TooManyCollections`], naming the first by name).
pub(crate) fn room(held: usize, new: &BTreeSet<&str>, limit: usize) -> Result<()> {
    match new.first() {
        Some(first) if held + new.len() > limit => Err(Error::TooManyCollections {
            collection: first.to_string(),
            limit,
        }),
        _ => Ok(()),
    }
}

/// Meta-space prefix of the collection registry: `coll 0x00 name` → empty.
pub const META_COLLECTION_PREFIX: &[u8] = b"coll\0";

/// The committer's own state between groups.
pub struct Committer {
    shared: Arc<Shared>,
    last_seq: u64,
    last_ts_ms: u64,
    indexes: Catalog,
    /// Dropped indexes whose entries are still being deleted (not in `indexes`).
    dropping: Vec<IndexDef>,
    collections: BTreeSet<String>,
    /// Collections this group made, published to `Shared::collections`
    /// once it is stored.
    made: Vec<String>,
    configs: HashMap<String, CollectionConfig>,
    /// The generation of the last counter declaration that waited for its
    /// backfill (`CollectionConfig::backfilling`).
    backfill_generation: u64,
    outbox_entries: u64,
    outbox_oldest_ms: Option<u64>,
    /// The last outbox key drained by this process (everything before it is gone).
    outbox_cursor: Option<Vec<u8>>,
    /// The collections with a TTL, taking turns at the sweep (those of
    /// `configs` with one; `set_config` keeps them so), each cursor the
    /// last document key looked at.
    ttl: Turns,
    /// The TTL collections the sweeper found a time in seconds in (which
    /// never expires), each logged once by this process.
    ttl_in_seconds: HashSet<String>,
    /// The collections that purge their tombstones, taking turns at the
    /// purge, each cursor the last change-log key looked at.
    purge: Turns,
    last_background: Instant,
    recent: RecentWrites,
    last_maintenance: Instant,
    /// The last upkeep left expired idempotency keys or tombstones to purge
    /// (it purges a bounded batch of each): the next runs at the next
    /// background tick, not a second later, so that writers faster than a
    /// batch a second are kept up with.
    maintenance_backlog: bool,
    /// What this group did, for the insights (handed over when it is stored).
    events: Vec<Event>,
    /// Documents this group changed, by hash: a second change is contended.
    group_docs: GroupDocs,
    /// How it waits for requests, and gathers them into groups.
    poll: PollWindow,
}

/// The counter increments a commit implies, by mode.
#[derive(Default)]
struct CounterEffects {
    in_commit: Vec<Increment>,
    after_commit: Vec<Increment>,
}

/// Stored entries, key and value.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Checks, at open, that the storage holds what its last commit says: the
/// newest change of each collection is no later than `last_seq`, and its
/// document is there, written at that change. Two reads per collection. A
/// journal removed or cut (each of fjall's spaces flushes on its own, so
/// the others may hold later commits than the meta space's `last_seq`), or
/// a space's files removed, failed nothing before: the server handed out
/// the lost sequence numbers again, or served the documents as absent and
/// took create-only writes over them.
fn check_log_heads(storage: &dyn crate::storage::StorageRead, last_seq: u64) -> Result<()> {
    let corrupt = |why: String| {
        Err(Error::Storage(crate::storage::StorageError::Corrupt(format!(
            "{why}: the storage has lost commits (a journal or a space's files removed or damaged). \
             Restore the data directory from a backup; `truce check` lists what is wrong"
        ))))
    };
    let mut from: Option<Vec<u8>> = None;
    loop {
        let start = from
            .as_deref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
        let Some((first, _)) = storage
            .scan(
                Space::Changes,
                start,
                std::ops::Bound::Unbounded,
                Direction::Forward,
                1,
            )?
            .pop()
        else {
            return Ok(());
        };
        let Some(name_end) = first.iter().position(|&b| b == 0) else {
            return corrupt(format!("a change-log key holds no collection: {first:?}"));
        };
        let prefix = &first[..=name_end];
        let end = index::keys::prefix_end(prefix);
        let (last, _) = storage
            .scan(
                Space::Changes,
                std::ops::Bound::Included(prefix),
                end.as_deref()
                    .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                Direction::Reverse,
                1,
            )?
            .pop()
            .unwrap_or((first.clone(), Vec::new()));
        let collection = String::from_utf8_lossy(&first[..name_end]).into_owned();
        let Some(seq) = last.get(name_end + 1..name_end + 9) else {
            return corrupt(format!("a change-log key of {collection} is too short"));
        };
        let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
        let id = String::from_utf8_lossy(&last[name_end + 9..]).into_owned();
        if seq > last_seq {
            return corrupt(format!(
                "the change log of {collection} holds seq {seq} ({id}), past the last commit, {last_seq}"
            ));
        }
        let written = match storage.get(Space::Documents, &tx::doc_key(&collection, &id))? {
            Some(bytes) => Some(record::decode_document_meta(&id, &bytes)?.0.seq),
            None => None,
        };
        if written != Some(seq) {
            return corrupt(format!(
                "the newest change of {collection}, {id} at seq {seq}, has {} in the documents",
                written.map_or("no document".to_string(), |s| format!(
                    "a document written at seq {s}"
                ))
            ));
        }
        match end {
            Some(end) => from = Some(end),
            None => return Ok(()),
        }
    }
}

/// Every entry of `space` whose key starts with `prefix`.
fn scan_prefix(storage: &dyn crate::storage::StorageRead, space: Space, prefix: &[u8]) -> Result<Entries> {
    Ok(scan_chunk(storage, space, prefix, None, usize::MAX)?.0)
}

/// The next at most `chunk` entries of `space` under `prefix`, after `after`
/// (the last key of the chunk before, so what that chunk deleted is not
/// stepped over again), and the key the chunk after them starts after:
/// `None` when these reach the end of the prefix. The TTL sweep, index
/// backfills, dropped-index purges and backups (the empty prefix) walk their
/// prefixes this way.
pub(super) fn scan_chunk(
    storage: &dyn crate::storage::StorageRead,
    space: Space,
    prefix: &[u8],
    after: Option<&[u8]>,
    chunk: usize,
) -> Result<(Entries, Option<Vec<u8>>)> {
    let start = after.map_or_else(|| prefix.to_vec(), crate::index::query::successor);
    let end = index::keys::prefix_end(prefix);
    let entries = storage.scan(
        space,
        std::ops::Bound::Included(&start),
        end.as_deref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        Direction::Forward,
        chunk,
    )?;
    let next = match entries.last() {
        Some((key, _)) if entries.len() == chunk => Some(key.clone()),
        _ => None,
    };
    Ok((entries, next))
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the stored state of a document, verifying its record.
pub fn read_document(
    storage: &dyn crate::storage::StorageRead,
    key: &[u8],
    id: &str,
) -> Result<Option<Document>> {
    match storage.get(Space::Documents, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(record::decode_document(id, &bytes)?)),
    }
}

fn unavailable(e: &Error) -> Error {
    match e {
        Error::Unavailable(why) => Error::Unavailable(why.clone()),
        other => Error::Unavailable(other.to_string()),
    }
}

/// Reads a `u64` meta value (0 if absent) from storage.
pub fn read_meta_counter(storage: &dyn crate::storage::StorageRead, key: &[u8]) -> Result<u64> {
    Ok(match storage.get(Space::Meta, key)? {
        Some(bytes) => record::decode_counter(&bytes)?,
        None => 0,
    })
}

/// Evaluates a `check` operation.
fn check(op: &PreparedOp, current: Option<&Arc<Document>>) -> std::result::Result<Option<Written>, Conflict> {
    let live = current.filter(|d| !d.is_deleted());
    let failed = match (op.expect, live) {
        (Expect::Any, _) | (Expect::Absent, None) => None,
        (Expect::Absent, Some(_)) => Some(ConflictReason::AlreadyExists),
        (_, None) => Some(ConflictReason::NotFound),
        (Expect::Version(v), Some(d)) if d.version() != v => Some(ConflictReason::VersionMismatch),
        (Expect::Rev(r), Some(d)) if d.rev() != r => Some(ConflictReason::VersionMismatch),
        _ => None,
    };
    match failed {
        Some(reason) => Err(Conflict::new(reason, live.cloned())),
        None => Ok(live.map(|doc| Written {
            doc: Arc::clone(doc),
            effect: Effect::Checked,
            canonical: None,
        })),
    }
}

impl Committer {
    /// Dropped indexes whose entries are still being deleted, as
    /// `(collection, name)`: a purge resumes for each on open.
    pub fn dropping(&self) -> Vec<(String, String)> {
        self.dropping
            .iter()
            .map(|d| (d.collection.clone(), d.name.clone()))
            .collect()
    }

    /// Recovers the last sequence number, commit time and index definitions.
    /// `poll` is how it will wait for requests (`engine/poll.rs`).
    pub fn recover(shared: Arc<Shared>, poll: PollWindow) -> Result<Committer> {
        let storage = &*shared.storage;
        let last_seq = read_meta_counter(storage, META_LAST_SEQ)?;
        if last_seq > crate::limits::COMMIT_SEQ_MAX {
            return Err(Error::Storage(crate::storage::StorageError::Corrupt(format!(
                "last_seq {last_seq} is beyond COMMIT_SEQ_MAX"
            ))));
        }
        check_log_heads(storage, last_seq)?;
        let last_ts_ms = read_meta_counter(storage, META_LAST_TS)?;
        let epoch = match read_meta_counter(storage, META_EPOCH)? {
            0 => {
                // A database made before epochs (or just now): its first.
                let epoch = new_epoch();
                let mut batch = crate::storage::WriteBatch::new();
                batch.put(Space::Meta, META_EPOCH.to_vec(), record::encode_counter(epoch));
                shared.storage.apply(batch, shared.durability)?;
                epoch
            }
            epoch => epoch,
        };
        let _ = shared.epoch.set(epoch);
        let mut indexes: Catalog = HashMap::new();
        let mut dropping = Vec::new();
        for (_, bytes) in scan_prefix(storage, Space::Meta, index::META_PREFIX)? {
            let def = IndexDef::from_json(&record::decode_json(&bytes)?)?;
            if def.state == IndexState::Dropping {
                dropping.push(def);
            } else {
                if def.key_format != index::keys::KeyFormat::CURRENT {
                    tracing::info!(
                        collection = %def.collection,
                        index = %def.name,
                        "this index was declared before 2026-12-07: if its fields hold arrays or objects, \
                         those with equal numbers written differently (1 and 1.0) are different values to it \
                         (a unique index lets both in, an equality finds one); drop it and declare it again \
                         to have them equal. An index over other values needs nothing"
                    );
                }
                indexes.entry(def.collection.clone()).or_default().push(def);
            }
        }
        let collections: BTreeSet<String> = scan_prefix(storage, Space::Meta, META_COLLECTION_PREFIX)?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[META_COLLECTION_PREFIX.len()..]).into_owned())
            .collect();
        let mut configs = HashMap::new();
        for (key, bytes) in scan_prefix(storage, Space::Meta, config::META_PREFIX)? {
            let name = String::from_utf8_lossy(&key[config::META_PREFIX.len()..]).into_owned();
            configs.insert(name, CollectionConfig::from_json(&record::decode_json(&bytes)?)?);
        }
        let backfill_generation = config::read_backfills(storage, &mut configs)?;
        let outbox = scan_prefix(storage, Space::Outbox, b"")?;
        let outbox_entries = outbox.len() as u64;
        let outbox_oldest_ms = match outbox.first() {
            Some((_, bytes)) => Some(counters::decode_outbox(bytes)?.1),
            None => None,
        };
        *shared.configs.write().unwrap_or_else(|p| p.into_inner()) = configs.clone();
        let ttl = Turns::new(&configs, |c| c.ttl.is_some());
        let purge = Turns::new(&configs, |c| c.tombstones.is_some());
        *shared.outbox.write().unwrap_or_else(|p| p.into_inner()) = (outbox_entries, outbox_oldest_ms);
        shared
            .feed_heads
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .opened(last_seq);
        shared.watermark.advance(last_seq, None);
        *shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = indexes.clone();
        *shared.collections.write().unwrap_or_else(|p| p.into_inner()) = collections.clone();
        Ok(Committer {
            shared,
            last_seq,
            last_ts_ms,
            indexes,
            dropping,
            collections,
            made: Vec::new(),
            configs,
            backfill_generation,
            outbox_entries,
            outbox_oldest_ms,
            outbox_cursor: None,
            ttl,
            ttl_in_seconds: HashSet::new(),
            purge,
            last_background: Instant::now(),
            recent: RecentWrites::new(last_seq),
            last_maintenance: Instant::now(),
            maintenance_backlog: false,
            events: Vec::new(),
            group_docs: GroupDocs::default(),
            poll,
        })
    }

    /// Whether background work (outbox, TTL, a purge's backlog) wants the
    /// short tick.
    fn busy_in_background(&self) -> bool {
        self.outbox_entries > 0 || !self.ttl.is_empty() || self.maintenance_backlog
    }

    /// Runs until every sender of `queue` is gone.
    pub fn run(mut self, queue: Receiver<Request>) {
        let idle = Duration::from_millis(COMMITTER_IDLE_MS);
        let tick = Duration::from_millis(BACKGROUND_TICK_MS);
        let mut waiting = VecDeque::with_capacity(COMMIT_BATCH_REQUESTS_MAX);
        // Declared after the requests it outlives in a panic (see the type).
        let _failed_if_it_unwinds = FailOnUnwind(Arc::clone(&self.shared));
        loop {
            let wait = if self.busy_in_background() { tick } else { idle };
            let (next, polled) = self.poll.recv(&queue, wait);
            self.shared.insights.add_polled(polled);
            match next {
                Ok(first) => waiting.push_back(first),
                Err(RecvTimeoutError::Timeout) => {
                    self.background();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while waiting.len() < COMMIT_BATCH_REQUESTS_MAX {
                match queue.try_recv() {
                    Ok(request) => waiting.push_back(request),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let gathered = self.poll.gather(&queue, &mut waiting, COMMIT_BATCH_REQUESTS_MAX);
            self.shared.insights.add_polled(gathered);
            while !waiting.is_empty() {
                self.run_group(&mut waiting);
            }
            self.poll.round_done();
            if self.last_background.elapsed() >= tick {
                self.background();
            }
        }
    }

    /// Evaluates requests from the front of `waiting` until it is empty or the
    /// group reaches [`COMMIT_BATCH_BYTES_MAX`] written,
    /// [`COMMIT_BATCH_MET_BYTES_MAX`] met or [`FILTER_STEPS_MAX`] of filtering,
    /// stores them with one fsync, and answers them.
    fn run_group(&mut self, waiting: &mut VecDeque<Request>) {
        if let Err(e) = self.shared.watermark.check() {
            self.dequeued(waiting.len());
            waiting.drain(..).for_each(|r| r.fail(&e));
            return;
        }
        let storage = Arc::clone(&self.shared.storage);
        let mut group = Group::new(&*storage, self.last_seq, now_ms().max(self.last_ts_ms));
        let mut answers = Vec::with_capacity(waiting.len());
        let _failed_if_it_unwinds = FailOnUnwind(Arc::clone(&self.shared));
        let mut settled_early = 0;
        let mut catalog_changed = false;
        let mut config_changed = false;
        // A group closes early once it has written, met or filtered enough:
        // every request in it waits for all of them before its fsync.
        while group.bytes < COMMIT_BATCH_BYTES_MAX
            && group.met < COMMIT_BATCH_MET_BYTES_MAX
            && group.filter_steps < FILTER_STEPS_MAX
            && let Some(request) = waiting.pop_front()
        {
            self.dequeued(1);
            answers.push(match request {
                Request::Commit(mut commit, reply) => {
                    let mut work = Work::new();
                    let outcome = self.commit(&mut group, &mut commit, &mut work);
                    group.filter_steps += work.used();
                    let mark = self.events.len();
                    self.observe(&commit, &outcome);
                    if settled(&commit, &outcome, self.last_seq) {
                        // Its counts go in before its answer goes out, as for
                        // every other answer.
                        let mut own = self.events.split_off(mark);
                        self.shared.insights.absorb(&mut own, 0, 0, None);
                        drop(reply.send(as_of_durable(outcome, self.last_seq)));
                        settled_early += 1;
                        continue;
                    }
                    Answer::Commit(reply, outcome)
                }
                Request::DefineIndex(def, reply) => {
                    catalog_changed = true;
                    Answer::Index(reply, self.define_index(&mut group, *def))
                }
                Request::DropIndex {
                    collection,
                    name,
                    reply,
                } => {
                    catalog_changed = true;
                    Answer::Dropped(reply, self.drop_index(&mut group, &collection, &name))
                }
                Request::PurgeIndex {
                    collection,
                    name,
                    after,
                    reply,
                } => Answer::Cursor(reply, self.purge_index(&mut group, &collection, &name, after)),
                Request::Backfill {
                    collection,
                    name,
                    declared_seq,
                    after,
                    reply,
                } => {
                    catalog_changed = true;
                    let step = self.backfill(&mut group, &collection, &name, declared_seq, after);
                    Answer::Index(reply, step)
                }
                Request::SetConfig(collection, config, reply) => {
                    config_changed = true;
                    Answer::Seq(reply, self.set_config(&mut group, collection, *config))
                }
                Request::Increment(increments, backfilled, reply) => {
                    group.seq += 1;
                    let mut written = Vec::new();
                    let skipped =
                        self.apply_increments(&mut group, counters::coalesce(increments), &mut written);
                    if written.is_empty() {
                        // Every increment was skipped (or there were none): no
                        // commit, so no sequence number of its own, which the
                        // next commit would otherwise be answered with too.
                        group.seq -= 1;
                    } else {
                        self.recent.record(group.seq, written);
                    }
                    if let Some(done) = backfilled {
                        config_changed |= self.backfilled(&mut group, &done);
                    }
                    let seq = group.seq;
                    Answer::Corrected(reply, Ok(Corrected { seq, skipped }))
                }
            });
        }
        let stored = self.store(group, answers.len() + settled_early);
        if stored.is_ok() && catalog_changed {
            *self.shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = self.indexes.clone();
        }
        if stored.is_ok() && config_changed {
            *self.shared.configs.write().unwrap_or_else(|p| p.into_inner()) = self.configs.clone();
        }
        if stored.is_ok() {
            self.publish_outbox();
        }
        answers.into_iter().for_each(|answer| answer.deliver(&stored));
        self.recent.trim();
    }

    /// Evaluates one transaction into the group: idempotency, read-set validation,
    /// every operation's precondition, unique indexes; then applies all or nothing.
    fn commit(&mut self, group: &mut Group<'_>, commit: &mut Commit, work: &mut Work) -> Result<TxOutcome> {
        // A key used again after its record expired, before the purge took it:
        // the new record replaces it, and so does its expiry entry.
        let mut expired_record = None;
        if let Some(idem) = &commit.idempotency
            && let Some(bytes) = group.get(Space::Idempotency, idem.key.as_bytes())?
        {
            let stored = record::decode_idempotency(&bytes)?;
            if stored.expires_ms > group.ts_ms {
                if stored.fingerprint != idem.fingerprint {
                    return Err(Error::IdempotencyKeyReused(idem.key.clone()));
                }
                return Ok(Ok(tx::decode_committed(&stored.answer)?));
            }
            expired_record = Some(stored.expires_ms);
        }
        // After a replay was answered, and for commits queued before space
        // ran short (`engine/disk.rs`).
        self.shared.disk.admit(commit)?;
        if let Some((reads, snapshot_seq)) = &commit.reads
            && let Err(failure) = self.recent.validate(reads, *snapshot_seq)
        {
            return Ok(Err(failure));
        }
        let clock = CommitClock {
            seq: group.seq + 1,
            ts_ms: group.ts_ms,
        };
        let mut seen = commit.seen.take();
        let several = commit.ops.len() > 1;
        let mut conflicts = Vec::new();
        let mut results = Vec::with_capacity(commit.ops.len());
        let mut states = Vec::new();
        // The new states' bytes: a patch's are known only here, and a
        // transaction of small patches of large documents may not write
        // more than one of large puts (`tx::check_batch`).
        let mut bytes = 0;
        // The bytes of the documents its ops meet, each its stored bytes or
        // what its values take decoded, whichever is more: the work of
        // evaluating an op grows with its document's values, and 17 `$inc`s
        // on documents of 375,000 numbers, 16 MiB stored, held every other
        // writer 1.5 s. Values by their length, not their room, so that a
        // document counts the same read from storage or copied by an
        // earlier write of the group (`doc::decoded_len_size`). An op that
        // meets its document undecoded (`lazy`, below) counts its stored
        // bytes only: it never decodes it (`group::Met`), whatever came
        // before it in the group.
        let mut met = 0;
        let measured = |met: &mut usize, more: usize| {
            *met += more;
            if *met > TX_READ_BYTES_MAX {
                return Err(Error::LimitExceeded {
                    what: "TX_READ_BYTES_MAX",
                    limit: TX_READ_BYTES_MAX as u64,
                });
            }
            Ok(())
        };
        // Mutable: a put's body moves into its new state (`evaluate::build`).
        for (index, op) in commit.ops.iter_mut().enumerate() {
            let config = self.configs.get(&*op.collection);
            let ttl = config.and_then(|c| c.ttl.as_ref());
            let indexed = self
                .indexes
                .get(&*op.collection)
                .is_some_and(|defs| !defs.is_empty());
            // A put or a delete replaces the state whatever its body: it
            // never decodes it (a conflict carries the stored record, a put
            // of the same content is found by its bytes), unless its
            // collection has a TTL (is the state expired?), indexes
            // (`Group::apply` compares the old entries) or counters
            // (`counter_deltas` reads the old values).
            let counted = config.is_some_and(|c| !c.counters.is_empty());
            let lazy = ttl.is_none()
                && !indexed
                && !counted
                && matches!(op.write, Some(WriteOp::Put { .. } | WriteOp::Delete));
            if several && lazy {
                measured(&mut met, group.stored_bytes_lazily(&op.key, &op.id)?)?;
            } else if several {
                let decoded = group
                    .current(&op.key, &op.id)?
                    .map_or(0, |doc| crate::doc::decoded_len_size(&doc.body));
                measured(&mut met, group.current_bytes(&op.key).max(decoded))?;
            }
            let now = group.ts_ms;
            // A single write's read by its caller (only those carry one), if
            // it is still the stored state.
            let seen = seen
                .take()
                .filter(|seen| self.recent.untouched_since(Space::Documents, &op.key, seen.seq))
                .map(|seen| seen.held);
            let in_op = |e: Error| if several { e.in_op(index) } else { e };
            let expired_view;
            let (outcome, current) = match op.write.as_mut() {
                Some(write) if lazy => {
                    let mut state_met = group.meet_lazily(&op.key, &op.id, seen)?;
                    let (answer, state) =
                        evaluate::evaluate(&op.id, write, op.expect, &mut state_met, &clock, work)
                            .map_err(in_op)?;
                    // Nothing compares the old body: no indexes.
                    (answer.map(|written| (Some(written), state)), None)
                }
                write => {
                    let current = group.meet(&op.key, &op.id, seen)?;
                    let current = match (ttl, current) {
                        (Some(ttl), Some(doc)) if is_expired_for_writers(doc, ttl, now) => {
                            expired_view = expired_as_deleted(doc);
                            Some(&expired_view)
                        }
                        (_, current) => current,
                    };
                    let outcome = match write {
                        None => check(op, current).map(|written| (written, None)),
                        Some(write) => {
                            let (answer, state) =
                                evaluate::evaluate(&op.id, write, op.expect, &mut { current }, &clock, work)
                                    .map_err(in_op)?;
                            answer.map(|written| (Some(written), state))
                        }
                    };
                    (outcome, current)
                }
            };
            match outcome {
                Ok((written, state)) => {
                    results.push(written);
                    if let Some(state) = state {
                        // New documents, as `tx::check_batch` counts puts: a
                        // tombstone writes no body.
                        if !state.doc.is_deleted() {
                            bytes += state.canonical.len();
                            let before = current.filter(|d| !d.is_deleted()).map(|d| &d.body);
                            self.check_index_values(&op.collection, &state, before)?;
                        }
                        if bytes > TX_WRITE_BYTES_MAX {
                            return Err(Error::LimitExceeded {
                                what: "TX_WRITE_BYTES_MAX",
                                limit: TX_WRITE_BYTES_MAX as u64,
                            });
                        }
                        states.push((index, state));
                    }
                }
                Err(conflict) => conflicts.push(op_conflict(index, op, conflict)),
            }
        }
        let commit = &*commit;
        self.check_unique(group, commit, &states, &mut conflicts)?;
        if !conflicts.is_empty() {
            return Ok(Err(TxFailure::Conflicts(conflicts)));
        }
        self.check_room(states.iter().map(|(index, _)| &*commit.ops[*index].collection))?;
        if !states.is_empty() {
            // The counters first, while nothing is applied: their filters
            // are charged to the request's meter, and a write they take past
            // it is refused whole.
            let mut effects = CounterEffects::default();
            for (index, state) in &states {
                let op = &commit.ops[*index];
                let charge_old = commit.ops.len() > 1;
                self.counter_deltas(
                    group,
                    &op.collection,
                    &op.key,
                    state,
                    (work, charge_old),
                    &mut effects,
                )?;
            }
            work.check()?;
            group.seq += 1;
            let mut written = Vec::with_capacity(states.len() * 2);
            for (index, state) in states {
                let op = &commit.ops[index];
                self.apply_source(group, &op.collection, &op.key, state, &mut written);
            }
            let incremented = !effects.in_commit.is_empty();
            self.finish_counters(group, effects, &mut written);
            if incremented {
                // A counter's target that this commit also wrote (beside what
                // the counter counts) is answered as the commit left it, not
                // as its op did: the version a client sends next must be the
                // stored one. (A delete's answer stays its tombstone.)
                // Its bytes too: the op's own were of the body it wrote.
                for (result, op) in results.iter_mut().zip(&commit.ops) {
                    if let Some(answer) = result.as_mut().filter(|w| !w.doc.is_deleted())
                        && let Some(now) = group
                            .current(&op.key, &op.id)?
                            .filter(|now| !Arc::ptr_eq(now, &answer.doc))
                            .cloned()
                    {
                        answer.doc = now;
                        answer.canonical = group.written_bytes(&op.key);
                    }
                }
            }
            self.recent.record(group.seq, written);
        }
        let committed = TxCommitted {
            seq: group.seq,
            results,
            replayed: false,
        };
        if commit.keeps_record()
            && let Some(idem) = &commit.idempotency
        {
            let expires_ms = group.ts_ms.saturating_add(self.shared.idempotency_retention_ms);
            let stored = IdempotencyRecord {
                fingerprint: idem.fingerprint,
                expires_ms,
                answer: tx::encode_committed(&committed),
            };
            group.put(
                Space::Idempotency,
                idem.key.as_bytes().to_vec(),
                Some(record::encode_idempotency(&stored)),
            );
            let expiry_key = |at: u64| [&at.to_be_bytes()[..], idem.key.as_bytes()].concat();
            if let Some(expired) = expired_record {
                group.put(Space::IdempotencyExpiry, expiry_key(expired), None);
            }
            group.put(Space::IdempotencyExpiry, expiry_key(expires_ms), Some(Vec::new()));
        }
        Ok(Ok(committed))
    }

    /// Refuses a new state whose values in one of its collection's indexes
    /// are over `INDEX_VALUES_BYTES_MAX` (an index that failed is not kept),
    /// unless the document held those values `before` (an entry stored before
    /// the limit: a write that leaves it as it is goes through).
    fn check_index_values(
        &self,
        collection: &str,
        state: &evaluate::NewState,
        before: Option<&crate::doc::Body>,
    ) -> Result<()> {
        let defs = self.indexes.get(collection).into_iter().flatten();
        // Each field's JSON text is part of the document's, and bounds its
        // encoding (`KeyFormat::most_bytes`): a document small enough for
        // that bound needs no look.
        let may_pass = |def: &&IndexDef| {
            def.key_format
                .most_bytes(state.canonical.len())
                .saturating_mul(def.paths.len())
                > INDEX_VALUES_BYTES_MAX
        };
        for def in defs.filter(|d| d.state != IndexState::Failed).filter(may_pass) {
            let values = def.values(&state.doc.body);
            let refused = crate::index::check_values(&values);
            if refused.is_err() && before.is_none_or(|b| def.values(b) != values) {
                return refused;
            }
        }
        Ok(())
    }

    /// Adds a `unique_violation` conflict for every new live state whose values a
    /// unique index already holds for another document (or another op of this
    /// transaction claims).
    fn check_unique(
        &self,
        group: &mut Group<'_>,
        commit: &Commit,
        states: &[(usize, evaluate::NewState)],
        conflicts: &mut Vec<OpConflict>,
    ) -> Result<()> {
        let mut claimed: Vec<(Vec<u8>, &str)> = Vec::new();
        for (index, state) in states {
            let op = &commit.ops[*index];
            let Some(defs) = self.indexes.get(&*op.collection) else {
                continue;
            };
            if state.doc.is_deleted() {
                continue;
            }
            // A holder past its TTL is gone for writers, as for readers: it
            // neither refuses the value nor shows in the conflict.
            let ttl = self.configs.get(&*op.collection).and_then(|c| c.ttl.as_ref());
            let gone = gone_at(ttl, group.ts_ms);
            for def in defs
                .iter()
                .filter(|d| d.spec.unique && d.state != IndexState::Failed)
            {
                if !def.all_present(&state.doc.body) {
                    continue;
                }
                let prefix = def.values_key(&state.doc.body);
                // A holder this commit deletes or moves off the value leaves it
                // free: a rename to a new id, a swap of two values, a value
                // freed and taken again are one transaction's end state.
                let leaves = |holder: &Document| {
                    gone(holder)
                        || states
                            .iter()
                            .rev()
                            .find(|(i, s)| {
                                s.doc.id == holder.id && commit.ops[*i].collection == op.collection
                            })
                            .is_some_and(|(_, s)| {
                                s.doc.is_deleted()
                                    || !def.all_present(&s.doc.body)
                                    || def.values_key(&s.doc.body) != prefix
                            })
                };
                // Another op of this commit may take it: its document is the
                // holder shown if it holds the value already, else none is
                // (its stored state, holding another value, is not one).
                let by_op = claimed
                    .iter()
                    .find(|(p, id)| *p == prefix && *id != state.doc.id)
                    .map(|(_, id)| *id);
                let holder = match by_op {
                    Some(id) => Some(id.to_string()),
                    None => group.unique_holder(&op.collection, &prefix, &state.doc.id, &leaves)?,
                };
                match holder {
                    None => claimed.push((prefix, &state.doc.id)),
                    Some(holder) => {
                        let key = tx::doc_key(&op.collection, &holder);
                        let current = group
                            .current(&key, &holder)?
                            .filter(|d| !d.is_deleted())
                            .filter(|d| by_op.is_none() || def.values_key(&d.body) == prefix)
                            .cloned();
                        let conflict = Conflict::new(ConflictReason::UniqueViolation, current);
                        conflicts.push(op_conflict(*index, op, conflict));
                        // One conflict per op, whatever its other unique
                        // indexes would say: a single write answers one.
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Collects the deltas a new state of a document of `collection` implies
    /// for its collection's counters, their filters charged to `work` (the
    /// replaced state's only when `charge_old`: `counters::deltas`), which
    /// the caller checks, before the state is applied.
    fn counter_deltas(
        &self,
        group: &mut Group<'_>,
        collection: &str,
        key: &[u8],
        state: &evaluate::NewState,
        (work, charge_old): (&mut Work, bool),
        effects: &mut CounterEffects,
    ) -> Result<()> {
        let Some(config) = self.configs.get(collection).filter(|c| !c.counters.is_empty()) else {
            return Ok(());
        };
        let ts_ms = group.ts_ms;
        let old = group.current(key, &state.doc.id)?.filter(|d| !d.is_deleted());
        let old = old.map(|d| &d.body);
        let new = (!state.doc.is_deleted()).then_some(&state.doc.body);
        for def in &config.counters {
            let deltas = counters::deltas(def, old, new, ts_ms, work, charge_old);
            match def.mode {
                CounterMode::InCommit => effects.in_commit.extend(deltas),
                CounterMode::AfterCommit => effects.after_commit.extend(deltas),
            }
        }
        Ok(())
    }

    /// Applies a new state of a document of `collection` to the group:
    /// registers the collection and maintains its indexes (its counters'
    /// deltas were collected before: [`Committer::counter_deltas`]).
    fn apply_source(
        &mut self,
        group: &mut Group<'_>,
        collection: &str,
        key: &[u8],
        state: evaluate::NewState,
        written: &mut Vec<(Space, Vec<u8>)>,
    ) {
        self.register(group, collection);
        let indexes = self.indexes.get(collection).map_or(&[][..], Vec::as_slice);
        group.apply(collection, key, state, indexes, written);
    }

    /// Registers `collection` in the group if it is new.
    fn register(&mut self, group: &mut Group<'_>, collection: &str) {
        if !self.collections.contains(collection) {
            self.collections.insert(collection.to_string());
            self.made.push(collection.to_string());
            let mut registry = META_COLLECTION_PREFIX.to_vec();
            registry.extend_from_slice(collection.as_bytes());
            group.put(Space::Meta, registry, Some(Vec::new()));
        }
    }

    /// Refuses to make the collections of `names` that are new when they
    /// would take the database past `collections_max`. Writes, index and
    /// configuration declarations (a counter's target too) make them, so a
    /// counter's increments never do.
    fn check_room<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Result<()> {
        let new: BTreeSet<&str> = names
            .into_iter()
            .filter(|name| !self.collections.contains(*name))
            .collect();
        room(self.collections.len(), &new, self.shared.collections_max)
    }

    /// Applies a commit's `in_commit` counter increments in the same commit, and
    /// writes its `after_commit` ones to the outbox.
    fn finish_counters(
        &mut self,
        group: &mut Group<'_>,
        effects: CounterEffects,
        written: &mut Vec<(Space, Vec<u8>)>,
    ) {
        // Most commits touch no collection with counters: spare them the work.
        if effects.in_commit.is_empty() && effects.after_commit.is_empty() {
            return;
        }
        self.apply_increments(group, counters::coalesce(effects.in_commit), written);
        for (n, inc) in counters::coalesce(effects.after_commit).into_iter().enumerate() {
            if !inc.amount.is_finite() {
                // One commit's increments of one target, merged past the
                // largest number JSON holds: no outbox entry can carry it.
                warn_sum_not_finite(&inc.collection, &inc.id, &inc.field);
                continue;
            }
            let mut key = group.seq.to_be_bytes().to_vec();
            key.extend_from_slice(&(n as u32).to_be_bytes());
            group.put(
                Space::Outbox,
                key,
                Some(counters::encode_outbox(&inc, group.ts_ms)),
            );
            self.outbox_entries += 1;
            self.outbox_oldest_ms.get_or_insert(group.ts_ms);
        }
    }

    /// Adds each increment to its target document in the current commit
    /// (`group.seq`), creating targets that are missing; the targets' other fields
    /// are untouched. Counters do not cascade: increments feed no further counters.
    /// Returns the targets (collection, id) some of whose increments could
    /// not be applied, each logged.
    fn apply_increments(
        &mut self,
        group: &mut Group<'_>,
        increments: Vec<Increment>,
        written: &mut Vec<(Space, Vec<u8>)>,
    ) -> Vec<(String, String)> {
        let mut skipped = Vec::new();
        // (collection, id, [(field, amount)]) of each target document, in
        // the order first met, and where each is (a search of the list for
        // each increment was quadratic in a recount's groups).
        type Target = (String, String, Vec<(String, counters::Amount)>);
        let mut by_target: Vec<Target> = Vec::new();
        let mut at: foldhash::HashMap<(String, String), usize> = Default::default();
        for inc in increments {
            let index = *at
                .entry((inc.collection.clone(), inc.id.clone()))
                .or_insert_with(|| {
                    by_target.push((inc.collection, inc.id, Vec::new()));
                    by_target.len() - 1
                });
            by_target[index].2.push((inc.field, inc.amount));
        }
        let clock = CommitClock {
            seq: group.seq,
            ts_ms: group.ts_ms,
        };
        for (collection, id, fields) in by_target {
            let key = tx::doc_key(&collection, &id);
            let mut field_skipped = false;
            // The committer is the one writer: it adds with the counters' own
            // arithmetic (an integer sum past i64 goes on as a float, where
            // `$inc` would refuse it and the counter would stop) and sets.
            let state = group.current(&key, &id).and_then(|current| {
                let body = current.filter(|d| !d.is_deleted()).map(|d| &d.body);
                let mut sums = serde_json::Map::new();
                for (field, amount) in fields {
                    let Ok(path) = crate::update::Path::parse(&field) else {
                        continue; // declared fields parse
                    };
                    // A value above the field that is no object (`stats` a
                    // string, for `stats.n`) holds it as much as a non-number
                    // in it: `$set` could not write it.
                    // (A field that is there has nothing blocking above it.)
                    let have = body.and_then(|b| {
                        crate::update::path::get(b, &path)
                            .map(Ok)
                            .or_else(|| crate::update::path::blocking_parent(b, &path).map(Err))
                    });
                    let sum = match have {
                        None => amount,
                        Some(Ok(have)) if have.is_number() => counters::Amount::from_json(have).add(amount),
                        // This field's increments are dropped (a recount
                        // reports it unfixable); the target's other counters
                        // go on.
                        Some(Ok(other) | Err(other)) => {
                            tracing::warn!(
                                target_doc = %format!("{collection}/{id}"),
                                "counter increment skipped: the target field {field} holds {}, not a number",
                                crate::doc::json_type_name(other)
                            );
                            field_skipped = true;
                            continue;
                        }
                    };
                    if !sum.is_finite() {
                        // JSON has no number for it: the field keeps its last
                        // one (written as 0, it looked like a recount's).
                        warn_sum_not_finite(&collection, &id, &field);
                        field_skipped = true;
                        continue;
                    }
                    sums.insert(field, sum.to_json());
                }
                if sums.is_empty() {
                    return Ok(None);
                }
                let update = Update::parse(&serde_json::json!({"$set": sums, "$upsert": true}))?;
                let mut op = WriteOp::Patch(std::sync::Arc::new(update));
                Ok(evaluate::evaluate(
                    &id,
                    &mut op,
                    Expect::Any,
                    &mut { current },
                    &clock,
                    &mut Work::unmetered(),
                )?
                .1)
            });
            match state {
                Ok(Some(state)) => {
                    self.register(group, &collection);
                    let indexes = self.indexes.get(&collection).map_or(&[][..], Vec::as_slice);
                    group.apply(&collection, &key, state, indexes, written);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target_doc = %format!("{collection}/{id}"), "counter increment skipped: {e}");
                    field_skipped = true;
                }
            }
            if field_skipped {
                skipped.push((collection, id));
            }
        }
        skipped
    }

    /// Stores `collection`'s configuration, which applies from the next commit
    /// on; returns the sequence it is current as of. Refuses what a new
    /// declaration may not say (`CollectionConfig::check_declared`). Its
    /// counters that are new or defined otherwise than before wait for their
    /// backfill, each under a generation of its own, until a recount's commit
    /// says it is done ([`Self::backfilled`]); one still waiting keeps its
    /// generation, and a removed one stops waiting.
    fn set_config(
        &mut self,
        group: &mut Group<'_>,
        collection: String,
        mut config: CollectionConfig,
    ) -> Result<u64> {
        let before = self.configs.get(&collection).cloned().unwrap_or_default();
        config.check_declared(&collection, &before)?;
        let others: Vec<(&str, &config::CounterDef)> = self
            .configs
            .iter()
            .filter(|(name, _)| **name != collection)
            .flat_map(|(name, c)| c.counters.iter().map(move |d| (name.as_str(), d)))
            .collect();
        config.check_alone(&collection, &before, &others)?;
        config.check_targets_not_unique(&before, &self.indexes)?;
        let ttl_of = |name: &str| match name == collection {
            true => config.ttl.as_ref(),
            false => self.configs.get(name).and_then(|c| c.ttl.as_ref()),
        };
        config.check_ttl_apart(&collection, &before, ttl_of, &others)?;
        // The collection and its counters' targets are made by the
        // declaration (removing one makes none).
        let made: Vec<String> = match config.is_empty() {
            true => Vec::new(),
            false => std::iter::once(collection.clone())
                .chain(config.counters.iter().map(|d| d.target_collection.clone()))
                .collect(),
        };
        self.check_room(made.iter().map(String::as_str))?;
        for name in &made {
            self.register(group, name);
        }
        config.backfilling.clear();
        for def in &config.counters {
            let generation = if config.defines_anew(&def.name, &before) {
                self.backfill_generation += 1;
                let key = config::backfill_key(&collection, &def.name);
                group.put(
                    Space::Meta,
                    key,
                    Some(record::encode_counter(self.backfill_generation)),
                );
                self.backfill_generation
            } else if let Some(&generation) = before.backfilling.get(&def.name) {
                generation
            } else {
                continue;
            };
            config.backfilling.insert(def.name.clone(), generation);
        }
        for name in before
            .backfilling
            .keys()
            .filter(|n| !config.backfilling.contains_key(*n))
        {
            group.put(Space::Meta, config::backfill_key(&collection, name), None);
        }
        let key = config::meta_key(&collection);
        self.ttl.configured(&collection, &config);
        self.purge.configured(&collection, &config);
        if config.is_empty() {
            group.put(Space::Meta, key, None);
            self.configs.remove(&collection);
        } else {
            group.put(Space::Meta, key, Some(record::encode_json(&config.to_json())));
            self.configs.insert(collection, config);
        }
        Ok(group.seq)
    }

    /// Records the backfill `done` ended, if its counter still waits for that
    /// declaration's (a recount of an earlier definition ends nothing);
    /// whether the configuration changed.
    fn backfilled(&mut self, group: &mut Group<'_>, done: &Backfilled) -> bool {
        let Some(config) = self.configs.get_mut(&done.collection) else {
            return false;
        };
        if config.backfilling.get(&done.name) != Some(&done.generation) {
            return false;
        }
        config.backfilling.remove(&done.name);
        group.put(
            Space::Meta,
            config::backfill_key(&done.collection, &done.name),
            None,
        );
        true
    }

    fn define_index(&mut self, group: &mut Group<'_>, def: IndexDef) -> Result<IndexProgress> {
        let dropping = self
            .dropping
            .iter()
            .filter(|d| d.collection == def.collection)
            .collect::<Vec<_>>();
        if dropping.iter().any(|d| d.name == def.name) {
            return Err(Error::IndexDropping(def.name));
        }
        let dropping = dropping.len();
        let list = self.indexes.entry(def.collection.clone()).or_default();
        if let Some(existing) = list.iter().find(|d| d.name == def.name) {
            if existing.spec != def.spec {
                return Err(Error::InvalidIndex(format!(
                    "index {} of {} exists with a different definition",
                    def.name, def.collection
                )));
            }
            if existing.state == IndexState::Failed {
                // Declaring it again would not build it again: say how to.
                return Err(Error::InvalidIndex(format!(
                    "index {} of {} failed to build ({}); drop it and declare it again",
                    def.name,
                    def.collection,
                    existing.failure.as_deref().unwrap_or("no reason kept")
                )));
            }
            return Ok(existing.progress(None));
        }
        let held = list.len();
        // A new index adds entries (declared again as it is, it adds none).
        self.shared.disk.admit_any()?;
        // A dropped index counts until its entries are gone.
        index::check_count(held + dropping)?;
        self.check_room([def.collection.as_str()])?;
        let counters = self
            .configs
            .iter()
            .flat_map(|(source, config)| config.counters.iter().map(move |c| (source, c)));
        if let Some((source, c)) = counters
            .filter(|(_, c)| c.target_collection == def.collection)
            .find(|(_, c)| config::unique_covers(&def.spec, c))
        {
            let (counter, field) = (&c.name, &c.target_field);
            return Err(Error::InvalidIndex(format!(
                "unique index {} would cover {field}, which counter {source}/{counter} writes: counters' \
                 increments are not checked against unique indexes, and two targets could come to hold one value",
                def.name
            )));
        }
        let mut def = def;
        // A sequence of its own names this declaration of the name.
        group.seq += 1;
        def.declared_seq = group.seq;
        group.put(
            Space::Meta,
            def.meta_key(),
            Some(record::encode_json(&def.to_json())),
        );
        let progress = def.progress(None);
        let collection = def.collection.clone();
        self.register(group, &collection);
        self.indexes.entry(collection).or_default().push(def);
        Ok(progress)
    }

    /// Takes index `name` of `collection` out of use, as a commit of its own
    /// (the next sequence): later commits neither maintain nor check it, and
    /// no reader can find it once this group is stored. Its entries stay
    /// until [`purge_index`](Self::purge_index) has deleted them.
    fn drop_index(&mut self, group: &mut Group<'_>, collection: &str, name: &str) -> Result<IndexDef> {
        let list = self.indexes.get_mut(collection);
        let Some((list, at)) = list.and_then(|l| l.iter().position(|d| d.name == name).map(|at| (l, at)))
        else {
            return Err(Error::NotFound(format!(
                "index {name} of collection {collection}"
            )));
        };
        let mut def = list.remove(at);
        def.state = IndexState::Dropping;
        group.put(
            Space::Meta,
            def.meta_key(),
            Some(record::encode_json(&def.to_json())),
        );
        self.dropping.push(def.clone());
        group.seq += 1;
        // Readers take their snapshot first and read the catalog after it
        // (`read::run_query`), so with the index gone from the shared
        // catalog before this group is stored, a reader that still finds it
        // has a snapshot from before the drop.
        let mut catalog = self.shared.catalog.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = catalog.get_mut(collection) {
            list.retain(|d| d.name != name);
        }
        drop(catalog);
        // A transaction that read a range of this index before the drop would
        // not see later writes into that range (they no longer write its
        // entries): every transaction whose snapshot is older than the drop
        // fails as too old and is retried.
        self.recent.forget_through(group.seq);
        Ok(def)
    }

    /// Deletes up to [`INDEX_PURGE_CHUNK_ENTRIES`] entries of dropped index
    /// `name` of `collection` after `after` (the last one a step deleted: the
    /// deleted ones are not scanned again), and with the last of them its
    /// definition, which frees the name. Answers where the next step starts,
    /// `None` once the index is gone.
    fn purge_index(
        &mut self,
        group: &mut Group<'_>,
        collection: &str,
        name: &str,
        after: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        let at = self
            .dropping
            .iter()
            .position(|d| d.collection == collection && d.name == name)
            .ok_or_else(|| Error::NotFound(format!("dropped index {name} of collection {collection}")))?;
        // Stored entries only: none are added after the drop, and this step
        // comes after the drop's group was stored.
        let prefix = self.dropping[at].prefix();
        let (entries, next) = scan_chunk(
            &*self.shared.storage,
            Space::Index,
            &prefix,
            after.as_deref(),
            INDEX_PURGE_CHUNK_ENTRIES,
        )?;
        if next.is_none() {
            let def = self.dropping.remove(at);
            group.put(Space::Meta, def.meta_key(), None);
        }
        for (key, _) in entries {
            group.put(Space::Index, key, None);
        }
        Ok(next)
    }

    fn backfill(
        &mut self,
        group: &mut Group<'_>,
        collection: &str,
        name: &str,
        declared_seq: u64,
        after: Option<Vec<u8>>,
    ) -> Result<IndexProgress> {
        // Documents past their TTL are gone for the uniqueness a backfill
        // checks, as for writers' (`check_unique`); they keep their entries.
        let ttl = self.configs.get(collection).and_then(|c| c.ttl.clone());
        let gone = gone_at(ttl.as_ref(), group.ts_ms);
        // Only this declaration's steps: a backfill of an index dropped since
        // would otherwise go on, from its own position, in the new one.
        let def = self
            .indexes
            .get_mut(collection)
            .and_then(|list| {
                list.iter_mut()
                    .find(|d| d.name == name && d.declared_seq == declared_seq)
            })
            .ok_or_else(|| Error::NotFound(format!("index {name} of collection {collection}")))?;
        if def.state != IndexState::Building {
            return Ok(def.progress(None));
        }
        if after.is_none() {
            // A walk from the start (a resumed backfill begins again): what an
            // interrupted one counted is walked again.
            def.backfilled = 0;
        }
        let base = tx::doc_key(collection, "");
        let storage = Arc::clone(&self.shared.storage);
        let (docs, next) = scan_chunk(
            &*storage,
            Space::Documents,
            &base,
            after.as_deref(),
            BACKFILL_CHUNK_DOCS,
        )?;
        for (key, _) in &docs {
            let id = String::from_utf8_lossy(&key[base.len()..]).into_owned();
            let (entry, claims, fits) = match group.current(key, &id)?.filter(|d| !d.is_deleted()) {
                Some(doc) => {
                    let values = def.values(&doc.body);
                    (
                        def.entry_key_of(&values, &id),
                        def.all_present(&doc.body) && !gone(doc),
                        crate::index::check_values(&values).is_ok(),
                    )
                }
                None => continue,
            };
            let failure = if !fits {
                Some(format!(
                    "document {id} puts more than INDEX_VALUES_BYTES_MAX ({INDEX_VALUES_BYTES_MAX}) bytes of \
                     values into index {name}"
                ))
            } else if def.spec.unique && claims {
                let prefix = &entry[..entry.len() - id.len()];
                group
                    .unique_holder(collection, prefix, &id, &gone)?
                    .map(|holder| {
                        format!("documents {holder} and {id} share the values of unique index {name}")
                    })
            } else {
                None
            };
            if failure.is_some() {
                def.state = IndexState::Failed;
                def.failure = failure;
                group.put(
                    Space::Meta,
                    def.meta_key(),
                    Some(record::encode_json(&def.to_json())),
                );
                return Ok(def.progress(None));
            }
            group.put(Space::Index, entry, Some(id.into_bytes()));
        }
        def.backfilled += docs.len() as u64;
        if next.is_none() {
            // A sequence of its own: the first snapshot that holds every
            // entry (`read::ready_index` refuses older ones).
            group.seq += 1;
            def.state = IndexState::Ready;
            def.ready_seq = group.seq;
        }
        group.put(
            Space::Meta,
            def.meta_key(),
            Some(record::encode_json(&def.to_json())),
        );
        Ok(def.progress(next))
    }

    /// Writes a group as one atomic storage batch (with the new last sequence and
    /// time if it committed anything); on failure the engine stops writing for good.
    fn store(&mut self, group: Group<'_>, requests: usize) -> Result<()> {
        self.group_docs.clear();
        if group.is_empty() {
            self.shared.insights.absorb(&mut self.events, requests, 0, None);
            self.poll.stored(requests, 0, None);
            return Ok(());
        }
        let (seq, ts_ms) = (group.seq, group.ts_ms);
        self.shared.disk.stored(group.bytes as u64);
        let before = self.last_seq;
        let collections = group.collections();
        let mut batch = group.into_batch();
        if seq > self.last_seq {
            batch.put(Space::Meta, META_LAST_SEQ.to_vec(), record::encode_counter(seq));
            batch.put(Space::Meta, META_LAST_TS.to_vec(), record::encode_counter(ts_ms));
        }
        let started = Instant::now();
        self.shared.watermark.writing(seq);
        let stored = self.shared.storage.apply(batch, self.shared.durability);
        let took = started.elapsed();
        let result = match stored {
            Ok(()) => {
                self.last_seq = seq;
                self.last_ts_ms = self.last_ts_ms.max(ts_ms);
                if !collections.is_empty() {
                    self.shared
                        .feed_heads
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .wrote(&collections, seq);
                }
                // A store without a commit (idempotency keys and tombstones
                // purged) changes nothing a reader waits for.
                if seq > before {
                    self.shared.watermark.advance(seq, Some(&collections));
                }
                // Listed once a reader can see what made them.
                if !self.made.is_empty() {
                    let mut published = self.shared.collections.write().unwrap_or_else(|p| p.into_inner());
                    published.extend(self.made.drain(..));
                }
                Ok(())
            }
            Err(e) => {
                let why = format!("a storage write failed; the database refuses writes until reopened: {e}");
                tracing::error!("{why}");
                self.shared.watermark.fail(why.clone());
                Err(Error::Unavailable(why))
            }
        };
        let commits = self.last_seq - before;
        self.shared
            .insights
            .absorb(&mut self.events, requests, commits, Some(took));
        self.poll.stored(requests, commits, Some(took));
        result
    }

    /// Counts requests taken off the queue.
    fn dequeued(&self, n: usize) {
        self.shared
            .insights
            .queue_depth
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes what one evaluated commit did, for the insights.
    fn observe(&mut self, commit: &Commit, outcome: &Result<TxOutcome>) {
        observe(commit, outcome, &mut self.events, &mut self.group_docs);
    }

    /// Notes the counter targets a backed-up outbox drain applies increments to.
    fn observe_outbox(&mut self, increments: &[Increment]) {
        let mut per_target: Vec<(&str, &str, u64)> = Vec::new();
        for inc in increments {
            match per_target
                .iter_mut()
                .find(|(c, id, _)| *c == inc.collection && *id == inc.id)
            {
                Some((_, _, n)) => *n += 1,
                None => per_target.push((&inc.collection, &inc.id, 1)),
            }
        }
        for (collection, id, n) in per_target {
            self.events.push(Event::Hot {
                collection: Arc::from(collection),
                target: Target::Document(id.to_string()),
                kind: Kind::OutboxDeltas(n),
                source: None,
            });
        }
    }
}

/// The documents a group changed so far, by hash, each with the position in
/// the group's events of its latest `Contended` event (none while changed once).
pub(crate) type GroupDocs = foldhash::HashMap<u64, Option<usize>>;

/// Notes what one evaluated commit did, for the insights: into `events`, with
/// `group_docs` the documents its group changed so far (a second change of
/// one is contended).
pub(crate) fn observe(
    commit: &Commit,
    outcome: &Result<TxOutcome>,
    events: &mut Vec<Event>,
    group_docs: &mut GroupDocs,
) {
    let origin = &commit.origin;
    let source = origin.source.clone();
    let hot = |collection: &Arc<str>, target: Target, kind: Kind| Event::Hot {
        collection: Arc::clone(collection),
        target,
        kind,
        source: source.clone(),
    };
    match outcome {
        Err(_) => {}
        Ok(Ok(committed)) if committed.replayed => events.push(Event::Replayed),
        Ok(Ok(committed)) => {
            // The collections a retried request's retry was counted in: once
            // in each it wrote.
            let mut counted_in: Vec<&Arc<str>> = Vec::new();
            for (op, result) in commit.ops.iter().zip(&committed.results) {
                if op.write.is_none() {
                    continue;
                }
                if origin.is_retry() {
                    let counted = !counted_in.contains(&&op.collection);
                    if counted {
                        counted_in.push(&op.collection);
                    }
                    events.push(hot(
                        &op.collection,
                        Target::Document(op.id.clone()),
                        Kind::Retry { counted },
                    ));
                }
                let Some(written) = result else { continue };
                let kind = match written.effect {
                    Effect::NoOp => Kind::NoOp,
                    Effect::Skipped => Kind::Skipped,
                    Effect::Checked => continue,
                    Effect::Created | Effect::Updated | Effect::Deleted => {
                        let blind_put = matches!(op.write, Some(WriteOp::Put { .. }))
                            && op.expect == Expect::Any
                            && written.effect == Effect::Updated;
                        let hash = insights::document_hash(&op.collection, &op.id);
                        match group_docs.entry(hash) {
                            Entry::Vacant(first) => {
                                first.insert(None);
                            }
                            // Another change of it by the same source: one more
                            // on the group's event (one event per document and
                            // source, however hot the document).
                            Entry::Occupied(mut seen) => match seen.get().and_then(|at| events.get_mut(at)) {
                                Some(Event::Hot {
                                    kind: Kind::Contended(n),
                                    source: by,
                                    target: Target::Document(id),
                                    collection,
                                }) if *by == source && *id == op.id && *collection == op.collection => {
                                    *n += 1
                                }
                                _ => {
                                    seen.insert(Some(events.len()));
                                    events.push(hot(
                                        &op.collection,
                                        Target::Document(op.id.clone()),
                                        Kind::Contended(1),
                                    ));
                                }
                            },
                        }
                        events.push(Event::Changed {
                            hash,
                            source: source.clone(),
                            blind_put: blind_put.then(|| (Arc::clone(&op.collection), op.id.clone())),
                        });
                        continue;
                    }
                };
                events.push(hot(&op.collection, Target::Document(op.id.clone()), kind));
            }
        }
        Ok(Err(failure)) => {
            let refused: Vec<(Arc<str>, Target, usize, bool)> = match failure {
                TxFailure::Conflicts(conflicts) => conflicts
                    .iter()
                    .map(|c| {
                        let op = &commit.ops[c.index];
                        let numbers_only = c.conflict.reason == ConflictReason::VersionMismatch
                            && match (&op.write, c.conflict.current_body()) {
                                (Some(WriteOp::Put { body, canonical }), Some(current)) => {
                                    insights::numbers_only((body, canonical), current)
                                }
                                _ => false,
                            };
                        let code = insights::conflict_index(c.conflict.reason.code());
                        (
                            Arc::clone(&op.collection),
                            Target::Document(op.id.clone()),
                            code,
                            numbers_only,
                        )
                    })
                    .collect(),
                TxFailure::ReadConflict { collection, what, .. } => {
                    let target = match what.strip_prefix("document ") {
                        Some(id) => Target::Document(id.to_string()),
                        None => Target::Range(what.clone()),
                    };
                    vec![(
                        Arc::from(collection.as_str()),
                        target,
                        insights::READ_CONFLICT,
                        false,
                    )]
                }
                // A commit of reads alone (a transaction's refusal, checked
                // against what it read) names no collection: its caller
                // counts it (`Transaction::commit`).
                TxFailure::SnapshotTooOld { .. } => commit
                    .ops
                    .first()
                    .map(|op| {
                        (
                            Arc::clone(&op.collection),
                            Target::Range(String::new()),
                            insights::SNAPSHOT_TOO_OLD,
                            false,
                        )
                    })
                    .into_iter()
                    .collect(),
            };
            let mut seen: Vec<Arc<str>> = Vec::new();
            for (collection, target, code, numbers_only) in refused {
                let first = !seen.contains(&collection);
                if first {
                    seen.push(Arc::clone(&collection));
                }
                insights::refused(events, &collection, target, code, numbers_only, origin, first);
            }
        }
    }
}

/// Answers a single write without the committer when the latest durable state
/// shows it writes nothing: a no-op, a skip, or a refused precondition. Tried
/// for guarded updates (`$if`) and writes with a precondition only. `None`
/// when it may write (or the document has a change still being synced, or the
/// write carries an idempotency key): then it goes through the queue as usual,
/// with the state read here for the committer (`Commit::seen`).
///
/// Sound for the same reason as [`settled`]: the answer reads only durable
/// state, so it linearizes at the read, before any write not yet acknowledged.
/// It spares skipped heartbeats and refused stale writes the wait for a group
/// commit and its fsync.
pub(crate) fn settle_from_durable(shared: &Shared, commit: &mut Commit) -> Result<Option<TxOutcome>> {
    let [op] = commit.ops.as_slice() else {
        return Ok(None);
    };
    let Some(write) = &op.write else {
        return Ok(None);
    };
    if commit.idempotency.is_some() || commit.reads.is_some() {
        return Ok(None);
    }
    // Only where writing nothing is likely enough to pay for the extra read: a
    // guarded update (`$if`), or any write with a precondition. A bare update
    // such as `$inc` goes straight to the queue.
    let guarded = match write {
        WriteOp::Patch(update) => update.condition().is_some(),
        WriteOp::Put { .. } | WriteOp::Delete => false,
    };
    if !guarded && matches!(op.expect, Expect::Any) {
        return Ok(None);
    }
    let durable_seq = shared.watermark.durable_seq();
    // Undecoded: a put or a delete needs only the metadata and the body's
    // bytes, here as in the committer (`group::Met`).
    let (mut held, _) = Held::read(&*shared.storage, &op.key, &op.id)?;
    if held.meta().is_some_and(|m| m.seq > durable_seq) {
        return Ok(None);
    }
    let now = now_ms();
    let ttl = shared
        .configs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&*op.collection)
        .and_then(|c| c.ttl.clone());
    let clock = CommitClock {
        seq: durable_seq + 1,
        ts_ms: now,
    };
    let decision = match &ttl {
        // As in `commit`: past its TTL, a document is gone for writers too.
        Some(ttl) => {
            let current = held.doc(&op.id)?;
            let expired_view = current
                .filter(|doc| is_expired_for_writers(doc, ttl, now))
                .map(|doc| expired_as_deleted(doc));
            let mut current = expired_view.as_ref().or(current);
            evaluate::decide(write, op.expect, &mut current, &clock, &mut Work::new())?
        }
        None => evaluate::decide(
            write,
            op.expect,
            &mut Met::new(&mut held, &op.id),
            &clock,
            &mut Work::new(),
        )?,
    };
    let unchanged = |written| {
        Some(Ok(TxCommitted {
            seq: durable_seq,
            results: vec![Some(written)],
            replayed: false,
        }))
    };
    let settled = match decision {
        evaluate::Decision::Writes(_) => None,
        evaluate::Decision::Settled(Ok(written))
            if matches!(written.effect, Effect::NoOp | Effect::Skipped) =>
        {
            unchanged(written)
        }
        evaluate::Decision::SamePut(meta) => {
            let op = &mut commit.ops[0];
            let write = op.write.as_mut().expect("a write: looked at above");
            unchanged(evaluate::same_put(&op.id, write, meta))
        }
        evaluate::Decision::Settled(Err(conflict)) => {
            Some(Err(TxFailure::Conflicts(vec![op_conflict(0, op, conflict)])))
        }
        evaluate::Decision::Settled(Ok(_)) => None,
    };
    if settled.is_none() {
        // It writes: the committer evaluates it again, on this read if nothing
        // has written the document since.
        commit.seen = Some(Seen {
            seq: durable_seq,
            held,
        });
    }
    Ok(settled)
}

/// Whether a commit's answer may go out before its group's fsync: it writes
/// nothing (no-ops, skips, checks, or conflicts; no idempotency record) and
/// every document the answer shows was durable before the group began (its
/// commit is at or before `durable_seq`). Such an answer reads only durable
/// state, so it stays true whatever happens to the group; a heartbeat that is
/// skipped, or a stale write refused, does not wait for other writers' fsync.
fn settled(commit: &Commit, outcome: &Result<TxOutcome>, durable_seq: u64) -> bool {
    if commit.keeps_record() {
        return false;
    }
    let durable = |meta: &Meta| meta.seq <= durable_seq;
    match outcome {
        Ok(Ok(committed)) => {
            !committed.replayed
                && committed.results.iter().all(|r| {
                    r.as_ref().is_some_and(|w| {
                        matches!(w.effect, Effect::NoOp | Effect::Skipped | Effect::Checked)
                            && durable(&w.doc.meta)
                    })
                })
        }
        Ok(Err(TxFailure::Conflicts(conflicts))) => conflicts
            .iter()
            .all(|c| c.conflict.current_meta().is_some_and(|(_, meta)| durable(meta))),
        _ => false,
    }
}

/// A [`settled`] answer, which read only durable state, as of the last
/// durable commit: a commit that writes nothing takes the group's sequence
/// so far, which may be an earlier commit of the same group, not durable
/// yet when this answer goes out (and never, if its fsync fails).
fn as_of_durable(outcome: Result<TxOutcome>, durable_seq: u64) -> Result<TxOutcome> {
    outcome.map(|answer| {
        answer.map(|mut committed| {
            committed.seq = committed.seq.min(durable_seq);
            committed
        })
    })
}

/// Whether writers see `doc` as past its TTL: live, with an expired TTL field.
fn is_expired_for_writers(doc: &Document, ttl: &config::TtlConfig, now_ms: u64) -> bool {
    !doc.is_deleted() && is_expired(&doc.body, ttl, now_ms)
}

/// Whether a document is gone for writers at `now_ms` under `ttl` (past it).
fn gone_at(ttl: Option<&config::TtlConfig>, now_ms: u64) -> impl Fn(&Document) -> bool + '_ {
    move |doc| ttl.is_some_and(|ttl| is_expired_for_writers(doc, ttl, now_ms))
}

/// A document past its TTL is gone for writers as it is for readers, even
/// before the sweeper's tombstone: seen as deleted (so a new document
/// continues its version history).
fn expired_as_deleted(doc: &Document) -> Arc<Document> {
    Arc::new(as_deleted(doc))
}

/// `doc` as the tombstone of its version: deleted, with no body.
pub(crate) fn as_deleted(doc: &Document) -> Document {
    Document {
        id: doc.id.clone(),
        meta: crate::doc::Meta {
            deleted: true,
            ..doc.meta
        },
        body: crate::doc::Body::new(),
    }
}

/// Whether a document's TTL field says it has expired at `now_ms`.
pub fn is_expired(body: &crate::doc::Body, ttl: &config::TtlConfig, now_ms: u64) -> bool {
    ttl.time_of(body).is_some_and(|t| ttl.expired_at(t, now_ms))
}

fn op_conflict(index: usize, op: &PreparedOp, conflict: Conflict) -> OpConflict {
    OpConflict {
        index,
        collection: op.collection.to_string(),
        id: op.id.clone(),
        conflict,
    }
}
