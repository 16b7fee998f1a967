//! A collection handle: the embedded API for reading and writing documents,
//! declaring indexes and querying them.

use std::sync::Arc;

use serde_json::Value;

use crate::doc::{self, Body, Document};
use crate::error::{Error, Result};
use crate::index::query::{Query, QueryPage};
use crate::index::{IndexDef, IndexSpec};
use crate::update::Update;

use super::Db;
use super::committer::IndexProgress;
use super::config::CollectionConfig;
use super::group::Held;
use super::outcome::{ConflictReason, Expect, WriteResult, Written};
use super::pending::PendingWrite;
use super::read::{durable_snapshot, for_each_document, run_query};
use super::recount::RecountReport;
use super::retry::RetryPolicy;
use super::tx::{TxOp, doc_key};

/// A named collection of one database. Cheap to clone.
#[derive(Clone)]
pub struct Collection {
    db: Db,
    name: Arc<str>,
}

impl Collection {
    pub(crate) fn new(db: Db, name: &str) -> Collection {
        Collection {
            db,
            name: name.into(),
        }
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The live document `id`, or `None` if it is absent or deleted.
    ///
    /// Never returns state that is not yet durable: if the stored state belongs to
    /// a commit still being synced, waits for that sync.
    pub fn get(&self, id: &str) -> Result<Option<Document>> {
        Ok(self
            .get_stored(id)?
            .filter(|d| !d.is_deleted() && !self.expired(d)))
    }

    /// [`get`](Self::get)'s document as its JSON with its metadata
    /// ([`Document::write_json`]'s bytes), and its revision: written from
    /// the stored record without decoding the body
    /// ([`doc::write_stored_json`]), so that a read of a large document
    /// costs a copy of its bytes, not the values it holds. A collection with
    /// a TTL decodes it, to see whether it has expired.
    pub fn get_json(&self, id: &str) -> Result<Option<(crate::Rev, Vec<u8>)>> {
        let ttl = {
            let configs = self.db.shared().configs.read().unwrap_or_else(|p| p.into_inner());
            configs.get(&*self.name).is_some_and(|c| c.ttl.is_some())
        };
        if ttl {
            return Ok(self.get(id)?.map(|doc| {
                let mut out = Vec::new();
                // A document's keys are strings: writing it cannot fail.
                let _ = doc.write_json(&mut out);
                (doc.rev(), out)
            }));
        }
        // The revision hash was checked against the body's bytes.
        let stored = match self.read_durable(id)? {
            Held::Record(stored) if !stored.meta().deleted => stored,
            Held::Record(_) | Held::Doc(_) => return Ok(None),
        };
        let mut out = Vec::new();
        stored.write_json(id, &mut out)?;
        Ok(Some((stored.meta().rev, out)))
    }

    /// The stored state of `id`, read and verified but not decoded
    /// ([`Held::read`]), once every commit up to it is durable.
    fn read_durable(&self, id: &str) -> Result<Held> {
        doc::validate_id(id)?;
        let shared = self.db.shared();
        let (held, _) = Held::read(&*shared.storage, &doc_key(&self.name, id), id)?;
        if let Some(meta) = held.meta() {
            shared.watermark.wait_for(meta.seq)?;
        }
        Ok(held)
    }

    /// The state of `id` as a write meets it: [`get_stored`](Self::get_stored),
    /// with a document past its TTL that the sweeper has not reached yet seen
    /// as the tombstone it is about to become. What a replication peer is
    /// told the master state is.
    pub fn get_current(&self, id: &str) -> Result<Option<Document>> {
        Ok(self.get_stored(id)?.map(|d| {
            if !d.is_deleted() && self.expired(&d) {
                super::committer::as_deleted(&d)
            } else {
                d
            }
        }))
    }

    /// The stored state of `id`, tombstones included.
    pub fn get_stored(&self, id: &str) -> Result<Option<Document>> {
        self.read_durable(id)?.into_doc(id)
    }

    fn submit(&self, op: TxOp, idempotency_key: Option<&str>) -> Result<PendingWrite> {
        self.db.submit_write(op, idempotency_key)
    }

    fn put_op(&self, id: &str, body: Value, expect: Expect) -> TxOp {
        TxOp::Put {
            collection: self.name.to_string(),
            id: id.into(),
            body,
            expect,
        }
    }

    fn patch_op(&self, id: &str, update: impl Into<Arc<Update>>, expect: Expect) -> TxOp {
        TxOp::Patch {
            collection: self.name.to_string(),
            id: id.into(),
            update: update.into(),
            expect,
        }
    }

    fn delete_op(&self, id: &str, expect: Expect) -> TxOp {
        TxOp::Delete {
            collection: self.name.to_string(),
            id: id.into(),
            expect,
        }
    }

    /// Queues a full-content write of `id` under precondition `expect`.
    pub fn submit_put(&self, id: &str, body: Value, expect: Expect) -> Result<PendingWrite> {
        self.submit(self.put_op(id, body, expect), None)
    }

    /// Queues an update-operator write of `id`.
    pub fn submit_patch(
        &self,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<PendingWrite> {
        self.submit(self.patch_op(id, update, expect), None)
    }

    /// Queues a delete of `id`, which leaves a tombstone.
    pub fn submit_delete(&self, id: &str, expect: Expect) -> Result<PendingWrite> {
        self.submit(self.delete_op(id, expect), None)
    }

    /// Writes the whole content of `id` if `expect` holds; blocks until durable.
    ///
    /// `Ok(Err(conflict))` is the expected "someone else got there first" outcome,
    /// carrying the current document.
    pub fn put(&self, id: &str, body: Value, expect: Expect) -> Result<WriteResult> {
        self.submit_put(id, body, expect)?.wait()
    }

    /// Applies update operators to the latest state of `id`; blocks until durable.
    /// Concurrent patches of one document never conflict with each other.
    pub fn patch(&self, id: &str, update: impl Into<Arc<Update>>, expect: Expect) -> Result<WriteResult> {
        self.submit_patch(id, update, expect)?.wait()
    }

    /// Deletes `id` if `expect` holds; blocks until durable.
    pub fn delete(&self, id: &str, expect: Expect) -> Result<WriteResult> {
        self.submit_delete(id, expect)?.wait()
    }

    /// [`put`](Self::put) guarded by an idempotency key: sent again with the same
    /// key and content within the retention window, it answers as the first time
    /// without writing; with other content, [`Error::IdempotencyKeyReused`].
    pub fn put_idempotent(&self, key: &str, id: &str, body: Value, expect: Expect) -> Result<WriteResult> {
        self.submit(self.put_op(id, body, expect), Some(key))?.wait()
    }

    /// [`patch`](Self::patch) guarded by an idempotency key (see [`put_idempotent`](Self::put_idempotent)).
    pub fn patch_idempotent(
        &self,
        key: &str,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<WriteResult> {
        self.submit(self.patch_op(id, update, expect), Some(key))?.wait()
    }

    /// [`delete`](Self::delete) guarded by an idempotency key.
    pub fn delete_idempotent(&self, key: &str, id: &str, expect: Expect) -> Result<WriteResult> {
        self.submit(self.delete_op(id, expect), Some(key))?.wait()
    }

    /// [`put`](Self::put) for async callers. The write is queued when the
    /// future is first polled, on the polling thread (which reads the
    /// document for a precondition or an `$if`, as [`put`](Self::put)
    /// does); only the wait for the commit is asynchronous. A future dropped
    /// after that does not take the write back: it commits, so a timeout
    /// around it followed by a retry writes twice unless it is idempotent
    /// (a `*_idempotent` call on a blocking thread).
    pub async fn put_async(&self, id: &str, body: Value, expect: Expect) -> Result<WriteResult> {
        self.submit_put(id, body, expect)?.await
    }

    /// [`patch`](Self::patch) for async callers (as [`put_async`](Self::put_async):
    /// queued on the polling thread, committed even if the future is dropped).
    pub async fn patch_async(
        &self,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<WriteResult> {
        self.submit_patch(id, update, expect)?.await
    }

    /// [`delete`](Self::delete) for async callers (as [`put_async`](Self::put_async)).
    pub async fn delete_async(&self, id: &str, expect: Expect) -> Result<WriteResult> {
        self.submit_delete(id, expect)?.await
    }

    /// Read-modify-write of `id` on its exact version, re-run on conflict under
    /// the database's [`RetryPolicy`]. `change` gets the current content (`None`
    /// if absent) and returns the new content.
    pub fn atomic_update(&self, id: &str, change: impl FnMut(Option<&Body>) -> Value) -> Result<Written> {
        self.atomic_update_with(id, &self.db.options().retry, change)
    }

    /// [`atomic_update`](Self::atomic_update) with an explicit policy. When every
    /// attempt conflicted, fails with [`Error::RetriesExhausted`] carrying the last
    /// conflict; so does, at once, a `unique_violation` (the value `change`
    /// made is another document's in a unique index: made again from the
    /// same content, it would be refused again).
    pub fn atomic_update_with(
        &self,
        id: &str,
        policy: &RetryPolicy,
        mut change: impl FnMut(Option<&Body>) -> Value,
    ) -> Result<Written> {
        let attempts = policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let current = self.get(id)?;
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |d| Expect::Version(d.version()));
            let new = change(current.as_ref().map(|d| &d.body));
            let origin = super::insights::Origin::default().attempt(attempt, Some(attempts));
            match self
                .db
                .submit_write_from(self.put_op(id, new, expect), None, origin)?
                .wait()?
            {
                Ok(written) => return Ok(written),
                // A unique index holding the value for another document:
                // the document was as read, so `change` would make the same
                // value again; ended at once.
                Err(conflict)
                    if attempt >= attempts || conflict.reason == ConflictReason::UniqueViolation =>
                {
                    return Err(Error::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(conflict),
                    });
                }
                Err(_) => {
                    std::thread::sleep(policy.delay(attempt));
                    attempt += 1;
                }
            }
        }
    }

    /// Declares index `name` on `spec.fields`. Existing documents are added in the
    /// background in short commits that never block writers; new writes maintain
    /// the index from now on. Declaring the same index again is harmless; see
    /// [`index_status`](Self::index_status) for progress.
    pub fn create_index(&self, name: &str, spec: IndexSpec) -> Result<IndexProgress> {
        // An index declared before the rules of `check_declared` may be
        // declared again as it is (applications ensure their indexes at start).
        if !self.indexes().iter().any(|d| d.name == name && d.spec == spec) {
            spec.check_declared()?;
        }
        let def = IndexDef::new(&self.name, name, spec)?;
        let progress = self.db.submit_define_index(def)?;
        if progress.state == crate::index::IndexState::Building {
            self.db
                .spawn_backfill(self.name.to_string(), name.to_string(), progress.declared_seq);
        }
        Ok(progress)
    }

    /// Drops index `name` and answers its definition, in state `dropping`.
    /// From that commit on, writes neither maintain nor check it (a unique
    /// index no longer refuses anything) and queries cannot name it. A
    /// transaction with writes whose snapshot is older than the drop (it may
    /// have queried the index) fails to commit with `snapshot_too_old`,
    /// which [`Db::transaction`](crate::Db::transaction) retries. Its entries
    /// are deleted in the background in short commits; until they are gone,
    /// declaring an index of the same name fails with `index_dropping`, and
    /// the dropped index still counts towards the collection's limit.
    pub fn drop_index(&self, name: &str) -> Result<IndexDef> {
        crate::index::validate_name(name)?;
        self.db.submit_drop_index(&self.name, name)
    }

    /// Every index of the collection, with its state and backfill progress.
    pub fn indexes(&self) -> Vec<IndexDef> {
        let catalog = self.db.shared().catalog.read().unwrap_or_else(|p| p.into_inner());
        catalog.get(&*self.name).cloned().unwrap_or_default()
    }

    /// The state of index `name`: [`Error::InvalidIndex`] for a name no index
    /// can have, [`Error::NotFound`] for one no index has.
    pub fn index_status(&self, name: &str) -> Result<IndexDef> {
        self.with_index(name, IndexDef::clone)
    }

    /// How many fields index `name` has, errors as [`Self::index_status`]'s,
    /// without a copy of its definition (a query asks on every request).
    pub fn index_fields(&self, name: &str) -> Result<usize> {
        self.with_index(name, |def| def.spec.fields.len())
    }

    /// `read` of index `name`'s definition, under the catalog's lock.
    fn with_index<T>(&self, name: &str, read: impl FnOnce(&IndexDef) -> T) -> Result<T> {
        crate::index::validate_name(name)?;
        let catalog = self.db.shared().catalog.read().unwrap_or_else(|p| p.into_inner());
        catalog
            .get(&*self.name)
            .and_then(|defs| defs.iter().find(|d| d.name == name))
            .map(read)
            .ok_or_else(|| Error::NotFound(format!("index {name} of collection {}", self.name)))
    }

    /// The collection's configuration (TTL, counters); empty if none was set.
    pub fn config(&self) -> CollectionConfig {
        let configs = self.db.shared().configs.read().unwrap_or_else(|p| p.into_inner());
        configs.get(&*self.name).cloned().unwrap_or_default()
    }

    /// Replaces the collection's configuration. It applies from the next commit
    /// on; a counter that is new or defined otherwise than before is
    /// backfilled from the documents already there (a recount), and its report
    /// returned — as is one whose backfill a crash interrupted (it also
    /// resumes by itself on open).
    pub fn set_config(&self, config: CollectionConfig) -> Result<Vec<(String, RecountReport)>> {
        self.store_config(config)?;
        self.backfill_pending()
    }

    /// [`Self::set_config`]'s first step: the configuration is committed (and
    /// [`Self::config`] shows it) when this returns, its backfills not yet
    /// run. A caller that judges a change by the configuration it replaces
    /// (the server's scoped keys) holds its own lock across reading it and
    /// this, but not across the backfills, which may take long.
    pub fn store_config(&self, config: CollectionConfig) -> Result<()> {
        config.check_size(&self.config())?;
        self.db.submit_config(&self.name, config).map(drop)
    }

    /// [`Self::set_config`]'s second step: runs the backfills the stored
    /// configuration waits for (those a concurrent change declared too), and
    /// returns the report of each this call ran.
    pub fn backfill_pending(&self) -> Result<Vec<(String, RecountReport)>> {
        let mut reports = Vec::new();
        for name in self.config().backfilling.into_keys() {
            // `None`: the resumed backfill of the last open got there first.
            if let Some(report) = super::recount::backfill(&self.db, &self.name, &name)? {
                reports.push((name, report));
            }
        }
        Ok(reports)
    }

    /// Recomputes counter `name` from a snapshot of this collection and fixes
    /// every target that was wrong, without losing concurrent increments.
    pub fn recount(&self, name: &str) -> Result<RecountReport> {
        super::recount::recount(&self.db, &self.name, name)
    }

    /// Whether `doc` has expired under the collection's TTL but is not yet swept.
    fn expired(&self, doc: &Document) -> bool {
        expiry(self.db.shared(), &self.name)(doc)
    }

    /// Live and deleted documents of the collection, counted on one durable
    /// snapshot; one past its TTL counts as deleted, as reads see it. Reads
    /// every document: for status pages, not hot paths.
    pub fn count(&self) -> Result<(u64, u64)> {
        let (view, _) = durable_snapshot(self.db.shared())?;
        let (ttl, now) = (self.config().ttl, super::committer::now_ms());
        let (mut live, mut deleted) = (0, 0);
        for_each_document(&*view, &self.name, |doc| {
            let expired = ttl
                .as_ref()
                .is_some_and(|ttl| super::committer::is_expired(&doc.body, ttl, now));
            if doc.is_deleted() || expired {
                deleted += 1;
            } else {
                live += 1;
            }
            Ok(())
        })?;
        Ok((live, deleted))
    }

    /// One page of a query, read from one durable snapshot.
    pub fn query(&self, query: &Query) -> Result<QueryPage> {
        let shared = self.db.shared();
        let (view, seq) = durable_snapshot(shared)?;
        let read = match run_query(shared, &*view, seq, &self.name, query) {
            // The index became ready between the snapshot and the look at
            // the catalog: it is ready in a snapshot taken now.
            Err(Error::IndexBuilding { .. }) if query.index.is_some() => {
                let (view, seq) = durable_snapshot(shared)?;
                run_query(shared, &*view, seq, &self.name, query)
            }
            read => read,
        };
        let mut page = read?.page;
        let expired = expiry(shared, &self.name);
        page.docs.retain(|d| !expired(d));
        Ok(page)
    }
}

/// Whether a document of `collection` is past the collection's TTL now:
/// gone for readers (`Collection::get`, `query`, a transaction's reads).
/// The TTL is looked up once, for a page of documents.
pub(crate) fn expiry(
    shared: &super::committer::Shared,
    collection: &str,
) -> impl Fn(&Document) -> bool + use<> {
    let ttl = {
        let configs = shared.configs.read().unwrap_or_else(|p| p.into_inner());
        configs.get(collection).and_then(|c| c.ttl.clone())
    };
    let now = super::committer::now_ms();
    move |doc| {
        ttl.as_ref()
            .is_some_and(|ttl| super::committer::is_expired(&doc.body, ttl, now))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::committer::Request;
    use crate::index::{IndexDef, IndexSpec, IndexState};
    use crate::{Db, Error, Options};

    /// A document read as JSON from its stored bytes is what its decoded
    /// state writes, byte for byte; a deleted, missing or (in a collection
    /// with a TTL, read the decoded way) expired document is none.
    #[test]
    fn a_document_read_as_json_is_its_decoded_state() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let (c, t) = (db.collection("c").unwrap(), db.collection("t").unwrap());
        let config =
            crate::CollectionConfig::from_json(&json!({"ttl": {"field": "at", "seconds": 60}})).unwrap();
        t.set_config(config).unwrap();
        let body = json!({"A": 1, "b": [{"_x": "\"_"}], "": null, "~": "é", "Z\"": {}, "at": 0});
        for coll in [&c, &t] {
            coll.put("d", body.clone(), crate::Expect::Absent)
                .unwrap()
                .unwrap();
            let doc = coll.get("d").unwrap();
            let json = coll.get_json("d").unwrap();
            if std::ptr::eq(coll, &t) {
                assert!(doc.is_none() && json.is_none(), "expired at 0 + 60 s");
                continue;
            }
            let doc = doc.unwrap();
            let mut written = Vec::new();
            doc.write_json(&mut written).unwrap();
            assert_eq!(json, Some((doc.rev(), written)));
            coll.delete("d", crate::Expect::Any).unwrap().unwrap();
            assert_eq!(coll.get_json("d").unwrap(), None);
        }
        assert_eq!(c.get_json("nothing").unwrap(), None);
        assert!(matches!(c.get_json(""), Err(Error::InvalidId(_))));
    }

    /// A stored body that is not an object's JSON, though its revision hash
    /// matches (a forged or damaged record), is refused as corrupt, as a
    /// decoding read refuses it, not written out nor a panic.
    #[test]
    fn a_stored_body_that_is_not_an_object_is_corrupt_to_a_json_read() {
        use crate::storage::MemoryStorage;
        let storage = std::sync::Arc::new(MemoryStorage::new());
        let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        c.put("d", serde_json::json!({"a": 1}), crate::Expect::Absent)
            .unwrap()
            .unwrap();
        for body in [&b"[1]"[..], b"", b"{"] {
            crate::engine::group::tests::forge_body(&storage, "c", "d", body);
            assert!(matches!(c.get_json("d"), Err(Error::Storage(_))), "{body:?}");
            assert!(matches!(c.get("d"), Err(Error::Storage(_))), "{body:?}");
        }
    }

    /// An index on a `_` field, as an older version let one be declared,
    /// may be declared again the same way; a new one may not.
    #[test]
    fn an_index_declared_under_older_rules_may_be_declared_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let spec = IndexSpec {
            fields: vec!["_id".into()],
            unique: false,
        };
        db.submit_define_index(IndexDef::new("c", "old", spec.clone()).unwrap())
            .unwrap();
        let c = db.collection("c").unwrap();
        assert!(c.create_index("old", spec.clone()).is_ok());
        assert!(matches!(c.create_index("new", spec), Err(Error::InvalidIndex(_))));
        // A field path longer than INDEX_FIELD_BYTES_MAX, likewise.
        let long = IndexSpec {
            fields: vec!["f".repeat(crate::limits::INDEX_FIELD_BYTES_MAX + 1)],
            unique: false,
        };
        db.submit_define_index(IndexDef::new("c", "long", long.clone()).unwrap())
            .unwrap();
        assert!(c.create_index("long", long.clone()).is_ok());
        assert!(matches!(
            c.create_index("longer", long),
            Err(Error::LimitExceeded {
                what: "INDEX_FIELD_BYTES_MAX",
                ..
            })
        ));
    }

    /// A backfill step of a declaration that was dropped since (a backfill
    /// thread that slept through the drop) does not go on in the new
    /// declaration of the same name from its own position.
    #[test]
    fn a_backfill_step_of_a_dropped_declaration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        let spec = IndexSpec {
            fields: vec!["k".into()],
            unique: false,
        };
        // Declared without a backfill thread, so that this test takes its steps.
        let first = db
            .submit_define_index(IndexDef::new("c", "by_k", spec.clone()).unwrap())
            .unwrap();
        c.drop_index("by_k").unwrap();
        let second = loop {
            match db.submit_define_index(IndexDef::new("c", "by_k", spec.clone()).unwrap()) {
                Err(Error::IndexDropping(_)) => std::thread::sleep(std::time::Duration::from_millis(2)),
                declared => break declared.unwrap(),
            }
        };
        assert!(second.declared_seq > first.declared_seq);
        let step = |declared_seq| {
            db.ask(|reply| Request::Backfill {
                collection: "c".into(),
                name: "by_k".into(),
                declared_seq,
                after: None,
                reply,
            })
        };
        assert!(matches!(step(first.declared_seq), Err(Error::NotFound(_))));
        assert_eq!(step(second.declared_seq).unwrap().state, IndexState::Ready);
    }
}
