//! Interactive optimistic transactions: reads from one snapshot (plus the
//! transaction's own writes), recorded in a read set; writes buffered and sent to
//! the committer, which validates the read set and applies all or nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::doc::{self, Body, Document, Meta, Rev};
use crate::error::{Error, Result};
use crate::index::query::{Query, QueryPage};
use crate::limits::{TX_LIFETIME_MS_MAX, TX_OPS_MAX};
use crate::storage::{Space, StorageRead};
use crate::update::{Update, Work};

use super::Db;
use super::committer::{now_ms, read_document};
use super::evaluate::WriteOp;
use super::insights::Origin;
use super::outcome::Expect;
use super::read::{durable_snapshot, run_query};
use super::readset::ReadSet;
use super::tx::{self, Commit, PreparedOp, TxCommitted, TxOp, TxOutcome};

/// A transaction in progress. Build it with [`Db::transaction`] (retried) or
/// [`Db::begin`] (one attempt).
pub struct Transaction {
    db: Db,
    view: Box<dyn StorageRead>,
    snapshot_seq: u64,
    started: Instant,
    reads: ReadSet,
    ops: Vec<PreparedOp>,
    by_key: HashMap<Vec<u8>, usize>,
    origin: Origin,
}

impl Transaction {
    pub(crate) fn begin(db: &Db) -> Result<Transaction> {
        let (view, snapshot_seq) = durable_snapshot(db.shared())?;
        Ok(Transaction {
            db: db.clone(),
            view,
            snapshot_seq,
            started: Instant::now(),
            reads: ReadSet::default(),
            ops: Vec::new(),
            by_key: HashMap::new(),
            origin: Origin::default(),
        })
    }

    /// Attributes this transaction's outcome to `origin` in the engine's
    /// insights ([`Db::transaction`] sets the attempt itself).
    pub fn set_origin(&mut self, origin: Origin) {
        self.origin = origin;
    }

    /// Who this transaction is attributed to.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The commit sequence the transaction's reads see.
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// Reads the snapshot's state of a document and records the read.
    fn read_snapshot(&mut self, key: &[u8], id: &str) -> Result<Option<Document>> {
        self.reads.add_point(Space::Documents, key.to_vec())?;
        Ok(read_document(&*self.view, key, id)?.filter(|d| !d.is_deleted()))
    }

    /// The live document `id` of `collection` as this transaction sees it: its own
    /// writes first, else the snapshot. A document the transaction wrote shows
    /// `_seq` and `_ts` 0 until it commits.
    pub fn get(&mut self, collection: &str, id: &str) -> Result<Option<Document>> {
        doc::validate_collection_name(collection)?;
        doc::validate_id(id)?;
        let key = tx::doc_key(collection, id);
        let Some(&index) = self.by_key.get(&key) else {
            return self.read_snapshot(&key, id);
        };
        let base = match &self.ops[index].write {
            Some(WriteOp::Put { body, .. }) => return Ok(Some(self.own(id, body.clone()))),
            Some(WriteOp::Delete) => return Ok(None),
            Some(WriteOp::Patch(update)) => {
                let update = Arc::clone(update);
                let base = self.read_snapshot(&key, id)?;
                patched(&update, base.as_ref().map(|d| &d.body))?
            }
            None => return self.read_snapshot(&key, id),
        };
        Ok(base.map(|body| self.own(id, body)))
    }

    /// A document showing this transaction's own write.
    fn own(&self, id: &str, body: Body) -> Document {
        let canonical = doc::canonical_bytes(&body);
        let meta = Meta {
            rev: Rev::compute(1, &canonical, false),
            seq: 0,
            ts_ms: 0,
            deleted: false,
        };
        Document {
            id: id.to_string(),
            meta,
            body,
        }
    }

    /// Queues a write. A document written twice keeps the first write's
    /// precondition and ends as the last write left it.
    fn write(&mut self, op: TxOp) -> Result<()> {
        let prepared = PreparedOp::prepare(op)?;
        let Some(&index) = self.by_key.get(&prepared.key) else {
            if self.ops.len() >= TX_OPS_MAX {
                return Err(Error::LimitExceeded {
                    what: "TX_OPS_MAX",
                    limit: TX_OPS_MAX as u64,
                });
            }
            self.by_key.insert(prepared.key.clone(), self.ops.len());
            self.ops.push(prepared);
            return Ok(());
        };
        let folded = match prepared.write {
            Some(WriteOp::Patch(update)) => {
                let id = prepared.id.clone();
                let current = self.get(&prepared.collection, &id)?;
                match patched(&update, current.as_ref().map(|d| &d.body))? {
                    Some(body) => put_op(body)?,
                    None => {
                        return Err(Error::InvalidTransaction(format!(
                            "patch of {}/{id}, which this transaction deleted or never saw, without $upsert",
                            prepared.collection
                        )));
                    }
                }
            }
            // Created and deleted within the transaction: nothing to write, but
            // the creation's "must be absent" still has to hold.
            Some(WriteOp::Delete) if self.ops[index].expect == Expect::Absent => None,
            other => other,
        };
        self.ops[index].write = folded;
        Ok(())
    }

    /// Queues a full-content write.
    pub fn put(&mut self, collection: &str, id: &str, body: Value, expect: Expect) -> Result<()> {
        self.write(TxOp::Put {
            collection: collection.into(),
            id: id.into(),
            body,
            expect,
        })
    }

    /// Queues an update. Unless the transaction also read the document, this is a
    /// blind write: it applies to whatever state the document has at commit.
    pub fn patch(
        &mut self,
        collection: &str,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<()> {
        self.write(TxOp::Patch {
            collection: collection.into(),
            id: id.into(),
            update: update.into(),
            expect,
        })
    }

    /// Queues a delete.
    pub fn delete(&mut self, collection: &str, id: &str, expect: Expect) -> Result<()> {
        self.write(TxOp::Delete {
            collection: collection.into(),
            id: id.into(),
            expect,
        })
    }

    /// Runs a query on the snapshot and records the part of the index it consumed,
    /// so a concurrent insert into that range (a phantom) fails the commit. Own
    /// writes are not reflected in query results.
    pub fn query(&mut self, collection: &str, query: &Query) -> Result<QueryPage> {
        doc::validate_collection_name(collection)?;
        let read = run_query(
            self.db.shared(),
            &*self.view,
            self.snapshot_seq,
            collection,
            query,
        )?;
        self.reads.add_range(read.space, read.consumed)?;
        Ok(read.page)
    }

    /// Commits: validated against everything committed since the snapshot, then
    /// all writes apply atomically, or none does. A transaction that wrote nothing
    /// never conflicts.
    pub fn commit(self) -> Result<TxOutcome> {
        if self.ops.is_empty() {
            return Ok(Ok(TxCommitted {
                seq: self.snapshot_seq,
                results: Vec::new(),
                replayed: false,
            }));
        }
        if self.started.elapsed() > Duration::from_millis(TX_LIFETIME_MS_MAX) {
            return Err(Error::LimitExceeded {
                what: "TX_LIFETIME_MS_MAX",
                limit: TX_LIFETIME_MS_MAX,
            });
        }
        tx::check_batch(&self.ops)?;
        let commit = Commit {
            ops: self.ops,
            reads: Some((self.reads, self.snapshot_seq)),
            idempotency: None,
            origin: self.origin,
            seen: None,
        };
        self.db.submit_commit(commit)?.wait()
    }
}

/// The body after `update` on `base` (`None` = absent), or `None` if the update
/// does not create an absent document. `$if` is evaluated at commit, not here.
fn patched(update: &Update, base: Option<&Body>) -> Result<Option<Body>> {
    let work = &mut Work::new();
    match base {
        Some(body) => Ok(Some(update.apply(Some(body), now_ms(), work)?)),
        None if update.upsert() => Ok(Some(update.apply(None, now_ms(), work)?)),
        None => Ok(None),
    }
}

fn put_op(body: Body) -> Result<Option<WriteOp>> {
    let canonical = doc::validate_body(&body)?;
    Ok(Some(WriteOp::Put { body, canonical }))
}
