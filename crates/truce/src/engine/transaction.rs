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
use crate::update::{OnFalse, Update, Work};

use super::Db;
use super::committer::{now_ms, read_document};
use super::evaluate::WriteOp;
use super::insights::Origin;
use super::outcome::{Conflict, ConflictReason, Expect};
use super::read::{durable_snapshot, run_query};
use super::readset::ReadSet;
use super::tx::{self, Commit, OpConflict, PreparedOp, TxCommitted, TxFailure, TxOp, TxOutcome};

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
    /// Ops already known to fail: a conditional patch (`$if`, failing with
    /// a conflict) of a document this transaction writes twice, its
    /// condition judged on what the transaction read when the writes were
    /// folded into one. The commit fails with them, as the committer would
    /// have failed it, once its reads are found current.
    refused: Vec<OpConflict>,
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
            refused: Vec::new(),
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

    /// Reads the snapshot's live state of a document of `collection` and
    /// records the read: none when deleted or past the collection's TTL, as
    /// [`Collection::get`](crate::Collection::get) and the committer see it.
    fn read_snapshot(&mut self, collection: &str, key: &[u8], id: &str) -> Result<Option<Document>> {
        self.reads.add_point(Space::Documents, key.to_vec())?;
        Ok(read_document(&*self.view, key, id)?
            .filter(|d| !d.is_deleted() && !super::collection::expiry(self.db.shared(), collection)(d)))
    }

    /// The live document `id` of `collection` as this transaction sees it: its own
    /// writes first, else the snapshot. A document the transaction wrote shows
    /// `_seq` and `_ts` 0, and a provisional `_version` (1) and `_rev`, until
    /// it commits.
    pub fn get(&mut self, collection: &str, id: &str) -> Result<Option<Document>> {
        doc::validate_collection_name(collection)?;
        doc::validate_id(id)?;
        let key = tx::doc_key(collection, id);
        let Some(&index) = self.by_key.get(&key) else {
            return self.read_snapshot(collection, &key, id);
        };
        let update = match &self.ops[index].write {
            Some(WriteOp::Put { body, .. }) => return Ok(Some(self.own(id, body.clone()))),
            Some(WriteOp::Delete) => return Ok(None),
            Some(WriteOp::Patch(update)) => Arc::clone(update),
            None => return self.read_snapshot(collection, &key, id),
        };
        let base = self.read_snapshot(collection, &key, id)?;
        Ok(match patched(&update, base.as_ref())? {
            Patched::Body(body) => Some(self.own(id, body)),
            // The document as it stands: the patch leaves it so, or fails
            // the commit.
            Patched::Unchanged | Patched::Refused => base,
            Patched::Absent => None,
        })
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
    /// precondition and ends as the writes in their order leave it: they are
    /// folded into one on what this transaction reads of it (so the commit
    /// checks that read), a patch's `$if` judged there (skipped, or failing
    /// the commit with `condition_failed`), and a write over anything then
    /// a delete ending with the document absent. A later write's own
    /// precondition is judged on what the earlier ones leave: "absent" or
    /// "exists" that does not hold fails the commit (`already_exists`,
    /// `not_found`), as the writes one after another would; an exact version
    /// or revision is refused at once (`InvalidTransaction`), since the
    /// document's is only known once the transaction commits.
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
        // The write it folds into must hold first: a conditional patch
        // that fails with a conflict fails the commit, whatever follows it.
        self.judge_condition(index)?;
        let (collection, id) = (prepared.collection.clone(), prepared.id.clone());
        // This write's own precondition, on what the earlier ones leave (it
        // was dropped: a create-only put after a put committed).
        match prepared.expect {
            Expect::Any => {}
            Expect::Version(_) | Expect::Rev(_) => {
                return Err(Error::InvalidTransaction(format!(
                    "{collection}/{id} is written twice in this transaction, the second time expecting a \
                     version or revision: the document's is only known once the transaction commits \
                     (write it once, or expect it to exist)"
                )));
            }
            Expect::Absent | Expect::Exists => {
                let current = self.get(&collection, &id)?;
                let refused = match (prepared.expect, &current) {
                    (Expect::Absent, Some(_)) => Some(ConflictReason::AlreadyExists),
                    (Expect::Exists, None) => Some(ConflictReason::NotFound),
                    _ => None,
                };
                if let Some(reason) = refused {
                    self.refuse(index, reason, current);
                    return Ok(());
                }
            }
        }
        let folded = match prepared.write {
            Some(WriteOp::Patch(update)) => {
                let current = self.get(&collection, &id)?;
                match patched(&update, current.as_ref())? {
                    Patched::Body(body) => put_op(body)?,
                    // Skipped: what the earlier writes leave stands.
                    Patched::Unchanged => return Ok(()),
                    Patched::Refused => {
                        self.refuse(index, ConflictReason::ConditionFailed, current);
                        return Ok(());
                    }
                    Patched::Absent => {
                        return Err(Error::InvalidTransaction(format!(
                            "patch of {collection}/{id}, which this transaction deleted or never saw, without $upsert"
                        )));
                    }
                }
            }
            // Created and deleted within the transaction: nothing to write, but
            // the creation's "must be absent" still has to hold.
            Some(WriteOp::Delete) if self.ops[index].expect == Expect::Absent => None,
            // Written over whatever was there (a put, or a patch with
            // `$upsert`), then deleted: the document ends absent. A delete
            // is `not_found` where the snapshot has none, so there the
            // commit writes nothing (the read makes it check that no one
            // created the document since). A patch without `$upsert` of a
            // missing document stays `not_found`, as in order.
            Some(WriteOp::Delete)
                if self.ops[index].expect == Expect::Any
                    && match &self.ops[index].write {
                        Some(WriteOp::Put { .. }) => true,
                        Some(WriteOp::Patch(update)) => update.upsert(),
                        _ => false,
                    } =>
            {
                let key = prepared.key.clone();
                self.read_snapshot(&collection, &key, &id)?
                    .map(|_| WriteOp::Delete)
            }
            other => other,
        };
        self.ops[index].write = folded;
        Ok(())
    }

    /// When op `index` is a patch whose `$if` fails with a conflict on the
    /// state this transaction reads, the commit fails with it: what the op
    /// is folded with next must not drop the condition.
    fn judge_condition(&mut self, index: usize) -> Result<()> {
        let Some(WriteOp::Patch(update)) = &self.ops[index].write else {
            return Ok(());
        };
        if update.condition().is_none() || update.on_false() != OnFalse::Conflict {
            return Ok(());
        }
        let update = Arc::clone(update);
        let (collection, key, id) = {
            let op = &self.ops[index];
            (op.collection.clone(), op.key.clone(), op.id.clone())
        };
        let base = self.read_snapshot(&collection, &key, &id)?;
        if let Patched::Refused = patched(&update, base.as_ref())? {
            self.refuse(index, ConflictReason::ConditionFailed, base);
            // Judged: what follows folds into a patch that does nothing.
            self.ops[index].write = None;
        }
        Ok(())
    }

    /// Op `index` fails the commit for `reason`, `current` being the
    /// document as this transaction sees it (once per op).
    fn refuse(&mut self, index: usize, reason: ConflictReason, current: Option<Document>) {
        if self.refused.iter().any(|r| r.index == index) {
            return;
        }
        let op = &self.ops[index];
        self.refused.push(OpConflict {
            index,
            collection: op.collection.to_string(),
            id: op.id.clone(),
            conflict: Conflict::new(reason, current.map(Arc::new)),
        });
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
        let mut page = read.page;
        let expired = super::collection::expiry(self.db.shared(), collection);
        page.docs.retain(|d| !expired(d));
        Ok(page)
    }

    /// Commits: validated against everything committed since the snapshot, then
    /// all writes apply atomically, or none does. A transaction that wrote nothing
    /// never conflicts.
    pub fn commit(self) -> Result<TxOutcome> {
        if !self.refused.is_empty() {
            // Judged on what the transaction read: the verdict is the
            // commit's only if that is still current (else the answer is the
            // read conflict, and a retry judges it again).
            let reads = Commit {
                ops: Vec::new(),
                reads: Some((self.reads, self.snapshot_seq)),
                idempotency: None,
                origin: self.origin.clone(),
                seen: None,
            };
            if let Err(failure) = self.db.submit_commit(reads)?.wait()? {
                if let TxFailure::SnapshotTooOld { .. } = failure {
                    // The committer cannot tell whose reads these were;
                    // counted as it counts a transaction's: under its first
                    // write's collection.
                    let collection = self
                        .ops
                        .first()
                        .map_or(self.refused[0].collection.as_str(), |op| &*op.collection);
                    self.db.note_snapshot_too_old(collection, &self.origin);
                }
                return Ok(Err(failure));
            }
            // One call per collection: the request is one retry (or one
            // permanent failure) there, however many of its writes were refused.
            let mut collections: Vec<&str> = self.refused.iter().map(|r| r.collection.as_str()).collect();
            collections.sort_unstable();
            collections.dedup();
            for collection in collections {
                let conflicts: Vec<_> = self
                    .refused
                    .iter()
                    .filter(|r| r.collection == collection)
                    .map(|r| (r.id.clone(), r.conflict.reason))
                    .collect();
                self.db.note_conflicts(collection, &conflicts, &self.origin);
            }
            return Ok(Err(TxFailure::Conflicts(self.refused)));
        }
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

/// What a patch makes of a document as this transaction sees it.
enum Patched {
    /// The body it writes.
    Body(Body),
    /// Its `$if` does not hold, and it is skipped (`$else: "skip"`).
    Unchanged,
    /// Its `$if` does not hold, and it fails with `condition_failed`.
    Refused,
    /// The document is absent, and the patch does not upsert.
    Absent,
}

/// `update` on `base` (`None` = absent), as the committer would judge it
/// (`evaluate::decide`): `$if` on a live document only.
fn patched(update: &Update, base: Option<&Document>) -> Result<Patched> {
    let work = &mut Work::new();
    let now = now_ms();
    match base {
        Some(doc) => {
            if let Some(condition) = update.condition()
                && !condition.matches(&doc.body, now, work)?
            {
                return Ok(match update.on_false() {
                    OnFalse::Skip => Patched::Unchanged,
                    OnFalse::Conflict => Patched::Refused,
                });
            }
            Ok(Patched::Body(update.apply(Some(&doc.body), now, work)?))
        }
        None if update.upsert() => Ok(Patched::Body(update.apply(None, now, work)?)),
        None => Ok(Patched::Absent),
    }
}

fn put_op(body: Body) -> Result<Option<WriteOp>> {
    let canonical = doc::validate_body(&body)?;
    Ok(Some(WriteOp::Put { body, canonical }))
}
