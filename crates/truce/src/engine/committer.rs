//! The committer: the only writer. One thread drains every waiting request,
//! evaluates them in order on the latest state, writes the batch with one fsync,
//! and only then answers them all (group commit).
//!
//! Hot path: everything in `run_batch` runs once per request; keep allocation and
//! locking out of it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::doc::Document;
use crate::error::{Error, Result};
use crate::limits::{COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_REQUESTS_MAX};
use crate::record;
use crate::storage::{Durability, Space, Storage, WriteBatch};

use super::evaluate::{self, CommitClock, WriteOp};
use super::outcome::{Expect, WriteResult};
use super::watermark::Watermark;

/// Meta key of the last committed sequence number.
pub const META_LAST_SEQ: &[u8] = b"last_seq";
/// Meta key of the last commit time, so `_ts` never decreases across restarts.
pub const META_LAST_TS: &[u8] = b"last_ts";

/// A write waiting for the committer.
pub struct Request {
    /// The storage key of the document (`collection 0x00 id`).
    pub key: Vec<u8>,
    /// The document id.
    pub id: String,
    /// What to do.
    pub op: WriteOp,
    /// The precondition.
    pub expect: Expect,
    /// Where the answer goes, after the batch is durable.
    pub reply: oneshot::Sender<Result<WriteResult>>,
}

/// What the committer shares with readers.
pub struct Shared {
    /// Where bytes go.
    pub storage: Arc<dyn Storage>,
    /// Whether each batch is fsynced before answers go out.
    pub durability: Durability,
    /// The durable sequence and the sticky failure flag.
    pub watermark: Watermark,
}

/// The committer's own state between batches.
pub struct Committer {
    shared: Arc<Shared>,
    last_seq: u64,
    last_ts_ms: u64,
}

/// A document slot touched by the current batch.
struct Slot {
    current: Option<Document>,
    /// Canonical body bytes of `current` if this batch wrote it.
    written: Option<Vec<u8>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the stored state of a document, verifying its record.
pub fn read_document(storage: &dyn Storage, key: &[u8], id: &str) -> Result<Option<Document>> {
    match storage.get(Space::Documents, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(record::decode_document(id, &bytes)?)),
    }
}

impl Committer {
    /// Recovers the last sequence number and commit time from storage.
    pub fn recover(shared: Arc<Shared>) -> Result<Committer> {
        let read = |key: &[u8]| -> Result<u64> {
            Ok(match shared.storage.get(Space::Meta, key)? {
                Some(bytes) => record::decode_counter(&bytes)?,
                None => 0,
            })
        };
        let last_seq = read(META_LAST_SEQ)?;
        let last_ts_ms = read(META_LAST_TS)?;
        shared.watermark.advance(last_seq);
        Ok(Committer {
            shared,
            last_seq,
            last_ts_ms,
        })
    }

    /// Runs until every sender of `queue` is gone.
    pub fn run(mut self, queue: Receiver<Request>) {
        let mut waiting = VecDeque::with_capacity(COMMIT_BATCH_REQUESTS_MAX);
        while let Ok(first) = queue.recv() {
            waiting.push_back(first);
            while waiting.len() < COMMIT_BATCH_REQUESTS_MAX {
                match queue.try_recv() {
                    Ok(request) => waiting.push_back(request),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            while !waiting.is_empty() {
                self.run_group(&mut waiting);
            }
        }
    }

    /// Evaluates requests from the front of `waiting` until it is empty or the
    /// group reaches [`COMMIT_BATCH_BYTES_MAX`], stores them with one fsync, and
    /// answers them.
    fn run_group(&mut self, waiting: &mut VecDeque<Request>) {
        if let Err(e) = self.shared.watermark.check() {
            for request in waiting.drain(..) {
                let _ = request.reply.send(Err(clone_unavailable(&e)));
            }
            return;
        }
        let ts_ms = now_ms().max(self.last_ts_ms);
        let mut slots: HashMap<Vec<u8>, Slot> = HashMap::new();
        let mut answers = Vec::with_capacity(waiting.len());
        let mut seq = self.last_seq;
        let mut bytes = 0usize;
        while bytes < COMMIT_BATCH_BYTES_MAX
            && let Some(request) = waiting.pop_front()
        {
            let answer = self.evaluate_one(&request, &mut slots, &mut seq, &mut bytes, ts_ms);
            answers.push((request.reply, answer));
        }
        let committed = self.store(&slots, seq, ts_ms);
        for (reply, answer) in answers {
            let answer = match &committed {
                Ok(()) => answer,
                Err(e) => Err(clone_unavailable(e)),
            };
            // A caller that stopped waiting is no reason to stop the others.
            let _ = reply.send(answer);
        }
    }

    fn evaluate_one(
        &self,
        request: &Request,
        slots: &mut HashMap<Vec<u8>, Slot>,
        seq: &mut u64,
        bytes: &mut usize,
        ts_ms: u64,
    ) -> Result<WriteResult> {
        if !slots.contains_key(&request.key) {
            let current = read_document(&*self.shared.storage, &request.key, &request.id)?;
            slots.insert(
                request.key.clone(),
                Slot {
                    current,
                    written: None,
                },
            );
        }
        let slot = slots
            .get_mut(&request.key)
            .unwrap_or_else(|| unreachable!("inserted above"));
        let clock = CommitClock { seq: *seq + 1, ts_ms };
        let (answer, new_state) = evaluate::evaluate(
            &request.id,
            &request.op,
            request.expect,
            slot.current.as_ref(),
            &clock,
        )?;
        if let Some(state) = new_state {
            *seq += 1;
            *bytes += request.key.len() + state.canonical.len();
            slot.current = Some(state.doc);
            slot.written = Some(state.canonical);
        }
        Ok(answer)
    }

    /// Writes every slot this batch changed, plus the new last sequence and time,
    /// as one atomic storage batch; on failure the engine stops writing for good.
    fn store(&mut self, slots: &HashMap<Vec<u8>, Slot>, seq: u64, ts_ms: u64) -> Result<()> {
        if seq == self.last_seq {
            return Ok(()); // Nothing written: conflicts, no-ops and skips only.
        }
        let mut write = WriteBatch::new();
        for (key, slot) in slots {
            if let (Some(canonical), Some(doc)) = (&slot.written, &slot.current) {
                write.put(
                    Space::Documents,
                    key.clone(),
                    record::encode_document(&doc.meta, canonical),
                );
            }
        }
        write.put(Space::Meta, META_LAST_SEQ.to_vec(), record::encode_counter(seq));
        write.put(Space::Meta, META_LAST_TS.to_vec(), record::encode_counter(ts_ms));
        match self.shared.storage.apply(write, self.shared.durability) {
            Ok(()) => {
                self.last_seq = seq;
                self.last_ts_ms = ts_ms;
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

fn clone_unavailable(e: &Error) -> Error {
    match e {
        Error::Unavailable(why) => Error::Unavailable(why.clone()),
        other => Error::Unavailable(other.to_string()),
    }
}
