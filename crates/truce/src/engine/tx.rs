//! Transactions as the committer sees them: a list of operations with per-op
//! preconditions, applied all together or not at all, optionally validated
//! against a read set. Also the answers: what committed, or why not.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::doc::{self, Document};
use crate::error::{Error, Result};
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, TX_OPS_MAX, TX_WRITE_BYTES_MAX};
use crate::update::Update;

use super::evaluate::WriteOp;
use super::outcome::{Conflict, Expect, Written};
use super::readset::ReadSet;

/// One operation of a transaction, as callers build it.
#[derive(Clone, Debug)]
pub enum TxOp {
    /// Assert that `expect` holds for the document; writes nothing.
    Check {
        /// Collection.
        collection: String,
        /// Document id.
        id: String,
        /// What must hold (`Expect::Exists` for "must exist").
        expect: Expect,
    },
    /// Replace the whole content.
    Put {
        /// Collection.
        collection: String,
        /// Document id.
        id: String,
        /// New content (a JSON object).
        body: Value,
        /// Precondition.
        expect: Expect,
    },
    /// Apply update operators.
    Patch {
        /// Collection.
        collection: String,
        /// Document id.
        id: String,
        /// The update.
        update: Arc<Update>,
        /// Precondition.
        expect: Expect,
    },
    /// Delete (leave a tombstone).
    Delete {
        /// Collection.
        collection: String,
        /// Document id.
        id: String,
        /// Precondition.
        expect: Expect,
    },
}

/// A validated operation, ready for the committer.
#[derive(Clone, Debug)]
pub struct PreparedOp {
    /// Collection.
    pub collection: Arc<str>,
    /// Document id.
    pub id: String,
    /// Storage key of the document.
    pub key: Vec<u8>,
    /// `None` for a check.
    pub write: Option<WriteOp>,
    /// Precondition.
    pub expect: Expect,
}

/// The storage key of document `id` of `collection`: collection, `0x00`, id. Names
/// and ids have no NUL, so collections never collide and each is one key range.
pub fn doc_key(collection: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + 1 + id.len());
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `collection 0x00 seq id`: the key of a per-collection change-log entry (its
/// position in the feed: commit order, then id).
pub fn changes_key(collection: &[u8], seq: u64, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + 9 + id.len());
    key.extend_from_slice(collection);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(id);
    key
}

impl PreparedOp {
    /// Validates an operation: names, body, precondition.
    pub fn prepare(op: TxOp) -> Result<PreparedOp> {
        let (collection, id, write, expect) = match op {
            TxOp::Check {
                collection,
                id,
                expect,
            } => (collection, id, None, expect),
            TxOp::Put {
                collection,
                id,
                body,
                expect,
            } => {
                let body = doc::body_from_value(body)?;
                let canonical = doc::validate_body(&body)?;
                (collection, id, Some(WriteOp::Put { body, canonical }), expect)
            }
            TxOp::Patch {
                collection,
                id,
                update,
                expect,
            } => (collection, id, Some(WriteOp::Patch(update)), expect),
            TxOp::Delete {
                collection,
                id,
                expect,
            } => (collection, id, Some(WriteOp::Delete), expect),
        };
        doc::validate_collection_name(&collection)?;
        match write {
            Some(WriteOp::Put { .. } | WriteOp::Patch(_)) => doc::validate_written_id(&id)?,
            _ => doc::validate_id(&id)?,
        }
        if let Some(write) = &write {
            super::evaluate::check_precondition(write, expect)?;
        }
        let key = doc_key(&collection, &id);
        Ok(PreparedOp {
            collection: collection.into(),
            id,
            key,
            write,
            expect,
        })
    }

    /// Bytes of new content this operation carries (puts only: the committer
    /// counts every new state against the same limit when it evaluates them).
    fn bytes(&self) -> usize {
        match &self.write {
            Some(WriteOp::Put { canonical, .. }) => canonical.len(),
            _ => 0,
        }
    }

    /// Feeds what identifies this operation into an idempotency fingerprint.
    fn fingerprint_into(&self, hasher: &mut xxhash_rust::xxh3::Xxh3) {
        let kind: u8 = match &self.write {
            None => 0,
            Some(WriteOp::Put { .. }) => 1,
            Some(WriteOp::Patch(_)) => 2,
            Some(WriteOp::Delete) => 3,
        };
        hasher.update(&[kind]);
        hasher.update(&(self.key.len() as u64).to_le_bytes());
        hasher.update(&self.key);
        hasher.update(format!("{:?}", self.expect).as_bytes());
        match &self.write {
            Some(WriteOp::Put { canonical, .. }) => hasher.update(canonical),
            Some(WriteOp::Patch(update)) => hasher.update(&update.fingerprint().to_le_bytes()),
            _ => {}
        }
    }
}

/// Validates a whole transaction: limits, and no document twice.
pub fn prepare_all(ops: Vec<TxOp>) -> Result<Vec<PreparedOp>> {
    if ops.len() > TX_OPS_MAX {
        return Err(Error::LimitExceeded {
            what: "TX_OPS_MAX",
            limit: TX_OPS_MAX as u64,
        });
    }
    // Errors name their op, as the committer's do, when there are several.
    let several = ops.len() > 1;
    let prepared = ops
        .into_iter()
        .enumerate()
        .map(|(index, op)| PreparedOp::prepare(op).map_err(|e| if several { e.in_op(index) } else { e }))
        .collect::<Result<Vec<_>>>()?;
    check_batch(&prepared)?;
    Ok(prepared)
}

/// The batch-level rules: each document written at most once and checked at
/// most once (a `check` and a write of the same document is how API.md guards a
/// write by a version read elsewhere), bytes within the limit. Every op sees the
/// state before the transaction.
pub fn check_batch(ops: &[PreparedOp]) -> Result<()> {
    // One op cannot repeat a document: single writes (the hot path) skip the set.
    if ops.len() > 1 {
        let mut seen = foldhash::HashSet::with_capacity_and_hasher(ops.len(), Default::default());
        for op in ops {
            if !seen.insert((op.key.as_slice(), op.write.is_some())) {
                let what = if op.write.is_some() { "written" } else { "checked" };
                return Err(Error::InvalidTransaction(format!(
                    "document {}/{} is {what} twice; one transaction writes (and checks) each document once",
                    op.collection, op.id
                )));
            }
        }
    }
    let bytes: usize = ops.iter().map(PreparedOp::bytes).sum();
    if bytes > TX_WRITE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "TX_WRITE_BYTES_MAX",
            limit: TX_WRITE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Refuses an idempotency key that is empty, longer than
/// [`IDEMPOTENCY_KEY_BYTES_MAX`] or holds a control character. Every write
/// checks its key so; a server that stores a caller's key in another form
/// (scoped to who sent it, say) checks the key as sent first.
pub fn validate_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX || key.chars().any(char::is_control) {
        return Err(Error::InvalidTransaction(format!(
            "idempotency keys are 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

/// An idempotency key and the fingerprint of the request it guards.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    /// The key the caller sent.
    pub key: String,
    /// Hash of the request: the same key with another fingerprint is refused.
    pub fingerprint: u128,
}

impl IdempotencyKey {
    /// Validates `key` and fingerprints `ops` under it.
    pub fn new(key: &str, ops: &[PreparedOp]) -> Result<IdempotencyKey> {
        validate_idempotency_key(key)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&(ops.len() as u64).to_le_bytes());
        for op in ops {
            op.fingerprint_into(&mut hasher);
        }
        Ok(IdempotencyKey {
            key: key.to_string(),
            fingerprint: hasher.digest128(),
        })
    }
}

/// Everything the committer needs to commit one transaction.
pub struct Commit {
    /// The operations, validated.
    pub ops: Vec<PreparedOp>,
    /// What the transaction read, and from which snapshot; `None` for blind batches.
    pub reads: Option<(ReadSet, u64)>,
    /// The idempotency key, if the caller sent one.
    pub idempotency: Option<IdempotencyKey>,
    /// Who sent it, and which attempt: what insights attribute it to.
    pub origin: super::insights::Origin,
    /// The caller's read of a single write's document, handed to the committer
    /// so it need not read the document again; `None` for everything else.
    pub seen: Option<Seen>,
}

impl Commit {
    /// Whether its idempotency key keeps a record of its answer: when it
    /// writes. A commit of checks alone changes nothing that a retry could
    /// repeat (run again, it checks again), and its record would keep every
    /// document it read for the key's whole retention; its key is still
    /// looked up, so one a write took answers as for that write.
    pub fn keeps_record(&self) -> bool {
        self.idempotency.is_some() && self.ops.iter().any(|op| op.write.is_some())
    }
}

/// A document as storage held it once every commit up to `seq` had been
/// applied, decoded only if the caller needed its body or the collection has
/// a TTL (is it expired?) (`group::Held`). The
/// committer uses it in place of its own read if no commit after `seq`
/// wrote the document (`RecentWrites::untouched_since` in
/// `engine/readset.rs`): then it is still the stored state.
pub struct Seen {
    pub seq: u64,
    pub held: super::group::Held,
}

/// A committed transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct TxCommitted {
    /// The commit's sequence number, or the latest sequence it was checked
    /// against if it wrote nothing.
    pub seq: u64,
    /// One answer per operation: the document after it (for a check, the current
    /// document; `None` if a check found none).
    pub results: Vec<Option<Written>>,
    /// Whether this answer is a replay of an earlier request with the same
    /// idempotency key.
    pub replayed: bool,
}

/// An operation whose precondition did not hold.
#[derive(Clone, Debug, PartialEq)]
pub struct OpConflict {
    /// Position of the operation in the transaction.
    pub index: usize,
    /// Collection.
    pub collection: String,
    /// Document id.
    pub id: String,
    /// Why, with the current document.
    pub conflict: Conflict,
}

/// Why a transaction did not commit.
#[derive(Clone, Debug, PartialEq)]
pub enum TxFailure {
    /// Operations whose preconditions failed — every one of them.
    Conflicts(Vec<OpConflict>),
    /// Something the transaction read changed after its snapshot.
    ReadConflict {
        /// The collection.
        collection: String,
        /// What was read: `doc <id>` or `index <name> range`.
        what: String,
        /// The commit that changed it.
        seq: u64,
    },
    /// The snapshot is older than the committer's window of recent writes (or
    /// than an index drop, which empties that window); retry.
    SnapshotTooOld {
        /// The transaction's snapshot.
        snapshot_seq: u64,
        /// Commits up to this one are no longer retained.
        forgotten_through: u64,
    },
}

impl fmt::Display for TxFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxFailure::Conflicts(conflicts) => {
                let parts: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("op {} ({}/{}): {}", c.index, c.collection, c.id, c.conflict))
                    .collect();
                write!(f, "{}", parts.join("; "))
            }
            TxFailure::ReadConflict {
                collection,
                what,
                seq,
            } => {
                write!(f, "read_conflict: {collection} {what} changed by commit {seq}")
            }
            TxFailure::SnapshotTooOld {
                snapshot_seq,
                forgotten_through,
            } => write!(
                f,
                "snapshot {snapshot_seq} is older than the retained write log (through {forgotten_through}: \
                 old writes are forgotten after a while, and all of them when an index is dropped)"
            ),
        }
    }
}

/// The answer to a transaction: committed, or an expected failure.
pub type TxOutcome = std::result::Result<TxCommitted, TxFailure>;

/// The stored form of a committed answer, for idempotent replays.
pub fn encode_committed(committed: &TxCommitted) -> Vec<u8> {
    let results: Vec<Value> = committed
        .results
        .iter()
        .map(|r| match r {
            None => Value::Null,
            Some(w) => {
                serde_json::json!({"effect": super::outcome::effect_name(w.effect), "doc": w.doc.to_json()})
            }
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"seq": committed.seq, "results": results})).unwrap_or_default()
}

/// Reads a stored answer back.
pub fn decode_committed(bytes: &[u8]) -> Result<TxCommitted> {
    let corrupt = || {
        Error::Storage(crate::storage::StorageError::Corrupt(
            "bad idempotent answer".into(),
        ))
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
    let seq = value.get("seq").and_then(Value::as_u64).ok_or_else(corrupt)?;
    let results = value
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(corrupt)?
        .iter()
        .map(|r| {
            if r.is_null() {
                return Ok(None);
            }
            let effect = r
                .get("effect")
                .and_then(Value::as_str)
                .and_then(super::outcome::effect_from_name)
                .ok_or_else(corrupt)?;
            let doc = Document::from_json(r.get("doc").ok_or_else(corrupt)?).ok_or_else(corrupt)?;
            Ok(Some(Written {
                doc: doc.into(),
                effect,
                canonical: None,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TxCommitted {
        seq,
        results,
        replayed: true,
    })
}
