//! A collection handle: the embedded API for reading and writing documents.

use std::sync::Arc;

use serde_json::Value;

use crate::doc::{self, Body, Document};
use crate::error::{Error, Result};
use crate::update::Update;

use super::Db;
use super::committer::read_document;
use super::evaluate::{WriteOp, check_precondition};
use super::outcome::{Expect, WriteResult, Written};
use super::pending::PendingWrite;
use super::retry::RetryPolicy;

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

    /// The storage key of document `id`: collection name, `0x00`, id. Names and ids
    /// have no NUL, so keys of different collections never collide and a
    /// collection's documents are one contiguous range, in id order.
    fn key(&self, id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.name.len() + 1 + id.len());
        key.extend_from_slice(self.name.as_bytes());
        key.push(0);
        key.extend_from_slice(id.as_bytes());
        key
    }

    /// The live document `id`, or `None` if it is absent or deleted.
    ///
    /// Never returns state that is not yet durable: if the stored state belongs to
    /// a commit still being synced, waits for that sync.
    pub fn get(&self, id: &str) -> Result<Option<Document>> {
        Ok(self.get_stored(id)?.filter(|d| !d.is_deleted()))
    }

    /// The stored state of `id`, tombstones included.
    pub fn get_stored(&self, id: &str) -> Result<Option<Document>> {
        doc::validate_id(id)?;
        let shared = self.db.shared();
        let stored = read_document(&*shared.storage, &self.key(id), id)?;
        if let Some(doc) = &stored {
            shared.watermark.wait_for(doc.meta.seq)?;
        }
        Ok(stored)
    }

    /// Queues a full-content write of `id` under precondition `expect`.
    pub fn submit_put(&self, id: &str, body: Value, expect: Expect) -> Result<PendingWrite> {
        doc::validate_id(id)?;
        let body = doc::body_from_value(body)?;
        let canonical = doc::validate_body(&body)?;
        self.submit(id, WriteOp::Put { body, canonical }, expect)
    }

    /// Queues an update-operator write of `id`.
    pub fn submit_patch(
        &self,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<PendingWrite> {
        doc::validate_id(id)?;
        self.submit(id, WriteOp::Patch(update.into()), expect)
    }

    /// Queues a delete of `id`, which leaves a tombstone.
    pub fn submit_delete(&self, id: &str, expect: Expect) -> Result<PendingWrite> {
        doc::validate_id(id)?;
        self.submit(id, WriteOp::Delete, expect)
    }

    fn submit(&self, id: &str, op: WriteOp, expect: Expect) -> Result<PendingWrite> {
        check_precondition(&op, expect)?;
        self.db.submit(self.key(id), id, op, expect)
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

    /// [`put`](Self::put) for async callers.
    pub async fn put_async(&self, id: &str, body: Value, expect: Expect) -> Result<WriteResult> {
        self.submit_put(id, body, expect)?.await
    }

    /// [`patch`](Self::patch) for async callers.
    pub async fn patch_async(
        &self,
        id: &str,
        update: impl Into<Arc<Update>>,
        expect: Expect,
    ) -> Result<WriteResult> {
        self.submit_patch(id, update, expect)?.await
    }

    /// [`delete`](Self::delete) for async callers.
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
    /// conflict.
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
            match self.put(id, new, expect)? {
                Ok(written) => return Ok(written),
                Err(conflict) if attempt >= attempts => {
                    return Err(Error::RetriesExhausted {
                        attempts,
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
}
