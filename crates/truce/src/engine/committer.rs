//! The committer: the only writer. One thread drains every waiting request,
//! evaluates them in order on the latest state, writes the group with one fsync,
//! and only then answers them all (group commit).
//!
//! Hot path: `run_group` and `commit` run for every request; keep allocation and
//! locking out of them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::doc::Document;
use crate::error::{Error, Result};
use crate::index::{self, IndexDef, IndexState};
use crate::limits::{
    BACKFILL_CHUNK_DOCS, COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_REQUESTS_MAX, COMMITTER_IDLE_MS,
    IDEMPOTENCY_PURGE_BATCH_MAX,
};
use crate::record::{self, IdempotencyRecord};
use crate::storage::{Direction, Durability, Space, Storage};

use super::evaluate::{self, CommitClock};
use super::group::Group;
use super::outcome::{Conflict, ConflictReason, Effect, Expect, Written};
use super::readset::RecentWrites;
use super::tx::{self, Commit, OpConflict, PreparedOp, TxCommitted, TxFailure, TxOutcome};
use super::watermark::Watermark;

/// Meta key of the last committed sequence number.
pub const META_LAST_SEQ: &[u8] = b"last_seq";
/// Meta key of the last commit time, so `_ts` never decreases across restarts.
pub const META_LAST_TS: &[u8] = b"last_ts";

/// Where an index stands after a definition or a backfill step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexProgress {
    /// Building, ready or failed.
    pub state: IndexState,
    /// Documents added by the backfill so far.
    pub backfilled: u64,
    /// Where the next backfill step starts (the last document key done).
    pub next: Option<Vec<u8>>,
}

/// A request waiting for the committer, with where its answer goes once the
/// group is durable.
pub enum Request {
    /// Commit a transaction (a single write is a transaction of one operation).
    Commit(Box<Commit>, oneshot::Sender<Result<TxOutcome>>),
    /// Register a new index; it is maintained from this commit on.
    DefineIndex(Box<IndexDef>, oneshot::Sender<Result<IndexProgress>>),
    /// Add the next chunk of existing documents to a building index.
    Backfill {
        /// Collection.
        collection: String,
        /// Index name.
        name: String,
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
}

impl Answer {
    /// Sends the answer, or `unavailable` if the group failed to store. A caller
    /// that stopped waiting is no reason to stop the others.
    fn deliver(self, stored: &Result<()>) {
        match (self, stored) {
            (Answer::Commit(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Index(tx, answer), Ok(())) => drop(tx.send(answer)),
            (Answer::Commit(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
            (Answer::Index(tx, _), Err(e)) => drop(tx.send(Err(unavailable(e)))),
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
}

/// Meta-space prefix of the collection registry: `coll 0x00 name` → empty.
pub const META_COLLECTION_PREFIX: &[u8] = b"coll\0";

/// The committer's own state between groups.
pub struct Committer {
    shared: Arc<Shared>,
    last_seq: u64,
    last_ts_ms: u64,
    indexes: Catalog,
    collections: BTreeSet<String>,
    recent: RecentWrites,
    last_maintenance: Instant,
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
fn check(op: &PreparedOp, current: Option<&Document>) -> std::result::Result<Option<Written>, Conflict> {
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
        Some(reason) => Err(Conflict {
            reason,
            current: live.cloned(),
        }),
        None => Ok(live.map(|doc| Written {
            doc: doc.clone(),
            effect: Effect::Checked,
        })),
    }
}

impl Committer {
    /// Recovers the last sequence number, commit time and index definitions.
    pub fn recover(shared: Arc<Shared>) -> Result<Committer> {
        let storage = &*shared.storage;
        let last_seq = read_meta_counter(storage, META_LAST_SEQ)?;
        let last_ts_ms = read_meta_counter(storage, META_LAST_TS)?;
        let mut indexes: Catalog = HashMap::new();
        let end = index::keys::prefix_end(index::META_PREFIX);
        let defs = storage.scan(
            Space::Meta,
            std::ops::Bound::Included(index::META_PREFIX),
            end.as_deref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            Direction::Forward,
            usize::MAX,
        )?;
        for (_, bytes) in defs {
            let def = IndexDef::from_json(&record::decode_json(&bytes)?)?;
            indexes.entry(def.collection.clone()).or_default().push(def);
        }
        let end = index::keys::prefix_end(META_COLLECTION_PREFIX);
        let names = storage.scan(
            Space::Meta,
            std::ops::Bound::Included(META_COLLECTION_PREFIX),
            end.as_deref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            Direction::Forward,
            usize::MAX,
        )?;
        let collections: BTreeSet<String> = names
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[META_COLLECTION_PREFIX.len()..]).into_owned())
            .collect();
        shared.watermark.advance(last_seq);
        *shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = indexes.clone();
        *shared.collections.write().unwrap_or_else(|p| p.into_inner()) = collections.clone();
        Ok(Committer {
            shared,
            last_seq,
            last_ts_ms,
            indexes,
            collections,
            recent: RecentWrites::new(last_seq),
            last_maintenance: Instant::now(),
        })
    }

    /// Runs until every sender of `queue` is gone.
    pub fn run(mut self, queue: Receiver<Request>) {
        let idle = Duration::from_millis(COMMITTER_IDLE_MS);
        let mut waiting = VecDeque::with_capacity(COMMIT_BATCH_REQUESTS_MAX);
        loop {
            match queue.recv_timeout(idle) {
                Ok(first) => waiting.push_back(first),
                Err(RecvTimeoutError::Timeout) => {
                    self.maintain();
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
            while !waiting.is_empty() {
                self.run_group(&mut waiting);
            }
            if self.last_maintenance.elapsed() >= idle {
                self.maintain();
            }
        }
    }

    /// Evaluates requests from the front of `waiting` until it is empty or the
    /// group reaches [`COMMIT_BATCH_BYTES_MAX`], stores them with one fsync, and
    /// answers them.
    fn run_group(&mut self, waiting: &mut VecDeque<Request>) {
        if let Err(e) = self.shared.watermark.check() {
            waiting.drain(..).for_each(|r| r.fail(&e));
            return;
        }
        let storage = Arc::clone(&self.shared.storage);
        let mut group = Group::new(&*storage, self.last_seq, now_ms().max(self.last_ts_ms));
        let mut answers = Vec::with_capacity(waiting.len());
        let mut catalog_changed = false;
        while group.bytes < COMMIT_BATCH_BYTES_MAX
            && let Some(request) = waiting.pop_front()
        {
            answers.push(match request {
                Request::Commit(commit, reply) => Answer::Commit(reply, self.commit(&mut group, &commit)),
                Request::DefineIndex(def, reply) => {
                    catalog_changed = true;
                    Answer::Index(reply, self.define_index(&mut group, *def))
                }
                Request::Backfill {
                    collection,
                    name,
                    after,
                    reply,
                } => {
                    catalog_changed = true;
                    Answer::Index(reply, self.backfill(&mut group, &collection, &name, after))
                }
            });
        }
        let stored = self.store(group);
        if stored.is_ok() && catalog_changed {
            *self.shared.catalog.write().unwrap_or_else(|p| p.into_inner()) = self.indexes.clone();
        }
        let published = self
            .shared
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if stored.is_ok() && published != self.collections.len() {
            *self.shared.collections.write().unwrap_or_else(|p| p.into_inner()) = self.collections.clone();
        }
        answers.into_iter().for_each(|answer| answer.deliver(&stored));
        self.recent.trim();
    }

    /// Evaluates one transaction into the group: idempotency, read-set validation,
    /// every operation's precondition, unique indexes; then applies all or nothing.
    fn commit(&mut self, group: &mut Group<'_>, commit: &Commit) -> Result<TxOutcome> {
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
        }
        if let Some((reads, snapshot_seq)) = &commit.reads
            && let Err(failure) = self.recent.validate(reads, *snapshot_seq)
        {
            return Ok(Err(failure));
        }
        let clock = CommitClock {
            seq: group.seq + 1,
            ts_ms: group.ts_ms,
        };
        let mut conflicts = Vec::new();
        let mut results = Vec::with_capacity(commit.ops.len());
        let mut states = Vec::new();
        for (index, op) in commit.ops.iter().enumerate() {
            let current = group.current(&op.key, &op.id)?;
            let outcome = match &op.write {
                None => check(op, current).map(|written| (written, None)),
                Some(write) => {
                    let (answer, state) = evaluate::evaluate(&op.id, write, op.expect, current, &clock)?;
                    answer.map(|written| (Some(written), state))
                }
            };
            match outcome {
                Ok((written, state)) => {
                    results.push(written);
                    states.extend(state.map(|s| (index, s)));
                }
                Err(conflict) => conflicts.push(op_conflict(index, op, conflict)),
            }
        }
        self.check_unique(group, commit, &states, &mut conflicts)?;
        if !conflicts.is_empty() {
            return Ok(Err(TxFailure::Conflicts(conflicts)));
        }
        if !states.is_empty() {
            group.seq += 1;
            let mut written = Vec::with_capacity(states.len() * 2);
            for (index, state) in states {
                let op = &commit.ops[index];
                if !self.collections.contains(&*op.collection) {
                    self.collections.insert(op.collection.to_string());
                    let mut key = META_COLLECTION_PREFIX.to_vec();
                    key.extend_from_slice(op.collection.as_bytes());
                    group.put(Space::Meta, key, Some(Vec::new()));
                }
                let indexes = self.indexes.get(&*op.collection).map_or(&[][..], Vec::as_slice);
                group.apply(&op.collection, op.key.clone(), state, indexes, &mut written);
            }
            self.recent.record(group.seq, written);
        }
        let committed = TxCommitted {
            seq: group.seq,
            results,
            replayed: false,
        };
        if let Some(idem) = &commit.idempotency {
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
            let mut expiry = expires_ms.to_be_bytes().to_vec();
            expiry.extend_from_slice(idem.key.as_bytes());
            group.put(Space::IdempotencyExpiry, expiry, Some(Vec::new()));
        }
        Ok(Ok(committed))
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
            for def in defs
                .iter()
                .filter(|d| d.spec.unique && d.state != IndexState::Failed)
            {
                if !def.all_present(&state.doc.body) {
                    continue;
                }
                let mut prefix = def.prefix();
                prefix.extend_from_slice(&def.values(&state.doc.body));
                let holder = match claimed.iter().find(|(p, id)| *p == prefix && *id != state.doc.id) {
                    Some((_, id)) => Some(id.to_string()),
                    None => group.unique_holder(&prefix, &state.doc.id)?,
                };
                match holder {
                    None => claimed.push((prefix, &state.doc.id)),
                    Some(holder) => {
                        let key = tx::doc_key(&op.collection, &holder);
                        let current = group.current(&key, &holder)?.filter(|d| !d.is_deleted()).cloned();
                        let conflict = Conflict {
                            reason: ConflictReason::UniqueViolation,
                            current,
                        };
                        conflicts.push(op_conflict(*index, op, conflict));
                    }
                }
            }
        }
        Ok(())
    }

    fn define_index(&mut self, group: &mut Group<'_>, def: IndexDef) -> Result<IndexProgress> {
        let list = self.indexes.entry(def.collection.clone()).or_default();
        if let Some(existing) = list.iter().find(|d| d.name == def.name) {
            if existing.spec != def.spec {
                return Err(Error::InvalidIndex(format!(
                    "index {} of {} exists with a different definition",
                    def.name, def.collection
                )));
            }
            return Ok(IndexProgress {
                state: existing.state,
                backfilled: existing.backfilled,
                next: None,
            });
        }
        index::check_count(list.len())?;
        group.put(
            Space::Meta,
            def.meta_key(),
            Some(record::encode_json(&def.to_json())),
        );
        let progress = IndexProgress {
            state: def.state,
            backfilled: 0,
            next: None,
        };
        list.push(def);
        Ok(progress)
    }

    fn backfill(
        &mut self,
        group: &mut Group<'_>,
        collection: &str,
        name: &str,
        after: Option<Vec<u8>>,
    ) -> Result<IndexProgress> {
        let def = self
            .indexes
            .get_mut(collection)
            .and_then(|list| list.iter_mut().find(|d| d.name == name))
            .ok_or_else(|| Error::NotFound(format!("index {name} of {collection}")))?;
        if def.state != IndexState::Building {
            return Ok(IndexProgress {
                state: def.state,
                backfilled: def.backfilled,
                next: None,
            });
        }
        let base = tx::doc_key(collection, "");
        let start = after.map_or_else(|| base.clone(), |k| crate::index::query::successor(&k));
        let end = index::keys::prefix_end(&base);
        let storage = Arc::clone(&self.shared.storage);
        let docs = storage.scan(
            Space::Documents,
            std::ops::Bound::Included(&start),
            end.as_deref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            Direction::Forward,
            BACKFILL_CHUNK_DOCS,
        )?;
        for (key, _) in &docs {
            let id = String::from_utf8_lossy(&key[base.len()..]).into_owned();
            let (entry, all_present) = match group.current(key, &id)?.filter(|d| !d.is_deleted()) {
                Some(doc) => (def.entry_key(&id, &doc.body), def.all_present(&doc.body)),
                None => continue,
            };
            if def.spec.unique && all_present {
                let prefix = &entry[..entry.len() - id.len()];
                if let Some(holder) = group.unique_holder(prefix, &id)? {
                    def.state = IndexState::Failed;
                    def.failure = Some(format!(
                        "documents {holder} and {id} share the values of unique index {name}"
                    ));
                    group.put(
                        Space::Meta,
                        def.meta_key(),
                        Some(record::encode_json(&def.to_json())),
                    );
                    return Ok(IndexProgress {
                        state: def.state,
                        backfilled: def.backfilled,
                        next: None,
                    });
                }
            }
            group.put(Space::Index, entry, Some(id.into_bytes()));
        }
        def.backfilled += docs.len() as u64;
        let next = match docs.last() {
            Some((key, _)) if docs.len() == BACKFILL_CHUNK_DOCS => Some(key.clone()),
            _ => {
                def.state = IndexState::Ready;
                None
            }
        };
        group.put(
            Space::Meta,
            def.meta_key(),
            Some(record::encode_json(&def.to_json())),
        );
        Ok(IndexProgress {
            state: def.state,
            backfilled: def.backfilled,
            next,
        })
    }

    /// Background upkeep between groups: forget expired idempotency keys.
    fn maintain(&mut self) {
        self.last_maintenance = Instant::now();
        self.recent.trim();
        if self.shared.watermark.check().is_err() {
            return;
        }
        let now = now_ms().to_be_bytes();
        let storage = Arc::clone(&self.shared.storage);
        let expired = match storage.scan(
            Space::IdempotencyExpiry,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Excluded(&now),
            Direction::Forward,
            IDEMPOTENCY_PURGE_BATCH_MAX,
        ) {
            Ok(expired) if !expired.is_empty() => expired,
            Ok(_) => return,
            Err(e) => return tracing::warn!("idempotency purge skipped: {e}"),
        };
        let mut group = Group::new(&*storage, self.last_seq, self.last_ts_ms);
        for (key, _) in expired {
            let Some((expiry, idem_key)) = key.split_first_chunk::<8>() else {
                continue;
            };
            let expires_ms = u64::from_be_bytes(*expiry);
            let live = group.get(Space::Idempotency, idem_key).ok().flatten();
            // A key reused after it expired has a newer record: leave that one.
            if live
                .and_then(|b| record::decode_idempotency(&b).ok())
                .is_some_and(|r| r.expires_ms == expires_ms)
            {
                group.put(Space::Idempotency, idem_key.to_vec(), None);
            }
            group.put(Space::IdempotencyExpiry, key.clone(), None);
        }
        if let Err(e) = self.store(group) {
            tracing::error!("idempotency purge failed: {e}");
        }
    }

    /// Writes a group as one atomic storage batch (with the new last sequence and
    /// time if it committed anything); on failure the engine stops writing for good.
    fn store(&mut self, group: Group<'_>) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let (seq, ts_ms) = (group.seq, group.ts_ms);
        let mut batch = group.into_batch();
        if seq > self.last_seq {
            batch.put(Space::Meta, META_LAST_SEQ.to_vec(), record::encode_counter(seq));
            batch.put(Space::Meta, META_LAST_TS.to_vec(), record::encode_counter(ts_ms));
        }
        match self.shared.storage.apply(batch, self.shared.durability) {
            Ok(()) => {
                self.last_seq = seq;
                self.last_ts_ms = self.last_ts_ms.max(ts_ms);
                self.shared.watermark.advance(seq);
                Ok(())
            }
            Err(e) => {
                let why = format!("a storage write failed; the database refuses writes until reopened: {e}");
                tracing::error!("{why}");
                self.shared.watermark.fail(why.clone());
                Err(Error::Unavailable(why))
            }
        }
    }
}

fn op_conflict(index: usize, op: &PreparedOp, conflict: Conflict) -> OpConflict {
    OpConflict {
        index,
        collection: op.collection.to_string(),
        id: op.id.clone(),
        conflict,
    }
}
