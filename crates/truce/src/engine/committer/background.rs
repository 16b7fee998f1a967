//! The committer's work between groups, on its own thread and in its own
//! commits: the free-space look, the counter outbox's drain, the TTL sweep,
//! the tombstone purge and the purge of expired idempotency keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::limits::{
    COMMITTER_IDLE_MS, IDEMPOTENCY_PURGE_BATCH_MAX, OUTBOX_DRAIN_ENTRIES_MAX, TOMBSTONE_PURGE_READ_BYTES,
    TOMBSTONE_PURGE_SCAN_ENTRIES, TOMBSTONE_PURGES_MAX, TTL_SWEEP_DELETES_MAX, TTL_SWEEP_SCAN_DOCS,
};
use crate::record;
use crate::storage::{Direction, Space};
use crate::update::Work;

use super::super::counters;
use super::super::evaluate::{self, CommitClock, WriteOp};
use super::super::group::Group;
use super::super::insights::Event;
use super::super::outcome::Expect;
use super::super::{config, purge, read, tx};
use super::{Committer, CounterEffects, now_ms, read_meta_counter, scan_chunk};

impl Committer {
    /// Background work between groups: look at the free space, drain the
    /// counter outbox and sweep expired documents (every tick), purge
    /// idempotency keys and old tombstones (about once a second).
    pub(super) fn background(&mut self) {
        self.last_background = Instant::now();
        if self.shared.watermark.check().is_err() {
            return;
        }
        if let Some(why) = self.shared.storage.failed() {
            tracing::error!("{why}; the database refuses writes until reopened");
            self.shared.watermark.fail(why);
            return;
        }
        self.shared
            .disk
            .observe(self.shared.storage.free_bytes(), self.shared.storage.used_bytes());
        if self.outbox_entries > 0
            && let Err(e) = self.drain_outbox()
        {
            tracing::error!("counter outbox drain failed: {e}");
        }
        self.sweep_ttl();
        if self.maintenance_backlog
            || self.last_maintenance.elapsed() >= Duration::from_millis(COMMITTER_IDLE_MS)
        {
            self.maintenance_backlog = false;
            self.maintain();
            self.purge_tombstones();
        }
    }

    /// Applies up to [`OUTBOX_DRAIN_ENTRIES_MAX`] outbox entries, coalesced per
    /// target, in one commit that also removes them: each delta lands exactly once.
    pub(super) fn drain_outbox(&mut self) -> Result<()> {
        let storage = Arc::clone(&self.shared.storage);
        let entries = self.outbox_ahead(OUTBOX_DRAIN_ENTRIES_MAX)?;
        if entries.is_empty() {
            self.outbox_entries = 0;
            self.outbox_oldest_ms = None;
            return Ok(());
        }
        let mut group = Group::new(&*storage, self.last_seq, now_ms().max(self.last_ts_ms));
        group.seq += 1;
        let mut increments = Vec::with_capacity(entries.len());
        for (key, bytes) in &entries {
            increments.push(counters::decode_outbox(bytes)?.0);
            group.put(Space::Outbox, key.clone(), None);
        }
        let backed_up = self
            .outbox_oldest_ms
            .is_some_and(|ms| group.ts_ms.saturating_sub(ms) > crate::limits::OUTBOX_BACKED_UP_MS);
        if backed_up {
            self.observe_outbox(&increments);
        }
        let targets = counters::coalesce(increments);
        let mut written = Vec::new();
        self.apply_increments(&mut group, targets, &mut written);
        let seq = group.seq;
        self.store(group, 1)?;
        self.recent.record(seq, written);
        self.outbox_cursor = entries.last().map(|(key, _)| key.clone());
        let rest = self.outbox_ahead(1)?;
        self.outbox_entries = self.outbox_entries.saturating_sub(entries.len() as u64);
        self.outbox_oldest_ms = match rest.first() {
            Some((_, bytes)) => Some(counters::decode_outbox(bytes)?.1),
            None => {
                self.outbox_entries = 0;
                None
            }
        };
        self.publish_outbox();
        Ok(())
    }

    /// Up to `limit` outbox entries after the last one drained. Entries are
    /// keyed by commit sequence, so everything before it is gone: start after
    /// it rather than stepping over the deleted entries again.
    fn outbox_ahead(&self, limit: usize) -> Result<super::Entries> {
        let after = self
            .outbox_cursor
            .as_deref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(self.shared.storage.scan(
            Space::Outbox,
            after,
            std::ops::Bound::Unbounded,
            Direction::Forward,
            limit,
        )?)
    }

    pub(super) fn publish_outbox(&self) {
        *self.shared.outbox.write().unwrap_or_else(|p| p.into_inner()) =
            (self.outbox_entries, self.outbox_oldest_ms);
    }

    /// Deletes expired documents: looks at up to [`TTL_SWEEP_SCAN_DOCS`]
    /// documents of the TTL collections, each from where its last look
    /// stopped, taking turns from the collection after the one whose turn
    /// came last, and deletes up to [`TTL_SWEEP_DELETES_MAX`] of them in one
    /// commit, as normal tombstones (change events, index and counter
    /// maintenance included). So a sweep's work is bounded however many TTL
    /// collections there are (when each had a step and a commit of its own
    /// every tick, 16,000 empty ones took another client's writes from 3,574
    /// to 2,918 a second on a release build), and a large one does not hold
    /// up the others for its whole pass.
    pub(super) fn sweep_ttl(&mut self) {
        let now = now_ms().max(self.last_ts_ms);
        // Each turn takes at least one of the budget, so no more turns than that.
        let turns = self.ttl.order(TTL_SWEEP_SCAN_DOCS);
        let mut budget = TTL_SWEEP_SCAN_DOCS;
        let mut expired = Vec::new();
        for collection in turns {
            if budget == 0 || expired.len() == TTL_SWEEP_DELETES_MAX {
                break;
            }
            match self.ttl_turn(&collection, budget, now, &mut expired) {
                Ok(looked) => budget -= looked.clamp(1, budget),
                Err(e) => {
                    tracing::error!(collection = %collection, "TTL sweep failed: {e}");
                    budget -= 1;
                }
            }
            self.ttl.took(collection);
        }
        if let Err(e) = self.delete_expired(expired, now) {
            tracing::error!("TTL sweep failed: {e}");
        }
    }

    /// Looks at up to `budget` documents of `collection` from where its last
    /// turn stopped, adding the expired ones to `expired` (collection, key,
    /// id) until it holds [`TTL_SWEEP_DELETES_MAX`]; how many it looked at.
    fn ttl_turn(
        &mut self,
        collection: &str,
        budget: usize,
        now: u64,
        expired: &mut Vec<(String, Vec<u8>, String)>,
    ) -> Result<usize> {
        let Some(ttl) = self.configs.get(collection).and_then(|c| c.ttl.clone()) else {
            return Ok(0);
        };
        let storage = Arc::clone(&self.shared.storage);
        let base = tx::doc_key(collection, "");
        let (docs, next) = scan_chunk(
            &*storage,
            Space::Documents,
            &base,
            self.ttl.cursor(collection),
            budget,
        )?;
        self.ttl.set_cursor(collection, next);
        for (key, bytes) in &docs {
            let id = String::from_utf8_lossy(&key[base.len()..]).into_owned();
            // One document that cannot be read is left (and reported); the
            // rest of the turn goes on.
            let doc = match record::decode_document(&id, bytes) {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::error!(collection, id, "TTL sweep skipped a document: {e}");
                    continue;
                }
            };
            // The TTL field read once, for both what follows.
            let Some(time) = ttl.number_in(&doc.body).filter(|_| !doc.is_deleted()) else {
                continue;
            };
            if config::TTL_SECONDS_LIKE.contains(&time) {
                if self.ttl_in_seconds.insert(collection.to_string()) {
                    tracing::warn!(
                        collection,
                        id,
                        field = %ttl.field,
                        "a TTL field holds a time in seconds, not ms: the document never expires \
                         (write ms, as $currentDate does; docs/counters.md, TTL); logged once per collection"
                    );
                }
                continue;
            }
            if ttl.expired_at(time, now) {
                expired.push((collection.to_string(), key.clone(), id));
                if expired.len() == TTL_SWEEP_DELETES_MAX {
                    // Its next turn goes on after this document, not after
                    // the documents looked at past it.
                    self.ttl.set_cursor(collection, Some(key.clone()));
                    break;
                }
            }
        }
        Ok(docs.len())
    }

    /// Deletes the `expired` documents (collection, key, id) in one commit.
    fn delete_expired(&mut self, expired: Vec<(String, Vec<u8>, String)>, now: u64) -> Result<()> {
        if expired.is_empty() {
            return Ok(());
        }
        let storage = Arc::clone(&self.shared.storage);
        let mut group = Group::new(&*storage, self.last_seq, now);
        let clock = CommitClock {
            seq: group.seq + 1,
            ts_ms: now,
        };
        group.seq += 1;
        let mut written = Vec::new();
        let mut effects = CounterEffects::default();
        let mut deleted = 0;
        for (collection, key, id) in expired {
            // One document that cannot be read or deleted is left (and
            // reported), not the sweep's other collections.
            let evaluated = group.current(&key, &id).and_then(|current| {
                evaluate::evaluate(
                    &id,
                    &mut WriteOp::Delete,
                    Expect::Any,
                    &mut { current },
                    &clock,
                    &mut Work::unmetered(),
                )
            });
            match evaluated {
                Ok((Ok(_), Some(state))) => {
                    // The server's own write: its counters are not metered.
                    let unmetered = (&mut Work::unmetered(), false);
                    self.counter_deltas(&mut group, &collection, &key, &state, unmetered, &mut effects)?;
                    self.apply_source(&mut group, &collection, &key, state, &mut written);
                    deleted += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(collection, id, "TTL sweep could not delete a document: {e}"),
            }
        }
        self.finish_counters(&mut group, effects, &mut written);
        let seq = group.seq;
        self.events.push(Event::Expired(deleted));
        self.store(group, 1)?;
        self.recent.record(seq, written);
        self.publish_outbox();
        Ok(())
    }

    /// Purges old tombstones: looks at up to [`TOMBSTONE_PURGE_SCAN_ENTRIES`]
    /// change-log entries (and [`TOMBSTONE_PURGE_READ_BYTES`] of their
    /// documents' records) of the collections with `tombstones.keep_seconds`,
    /// taking turns as the TTL sweep does, each from where its last turn
    /// stopped (past its horizon when this process has not looked yet), and
    /// removes up to [`TOMBSTONE_PURGES_MAX`] tombstones that old — record
    /// and change-log entry — in one commit that also moves each purged
    /// collection's horizon (`engine/purge.rs`). The commit takes no sequence
    /// number: no document changes state (a purged tombstone reads as
    /// absent, as it did).
    pub(super) fn purge_tombstones(&mut self) {
        if self.purge.is_empty() || self.shared.watermark.check().is_err() {
            return;
        }
        let storage = Arc::clone(&self.shared.storage);
        // Read before any turn moves a cursor: a pass cut short here would
        // leave its tombstones behind the cursors until a restart.
        let mut horizon_max = match read_meta_counter(&*storage, purge::HORIZON_MAX) {
            Ok(max) => max,
            Err(e) => return tracing::error!("tombstone purge skipped: {e}"),
        };
        let now = now_ms().max(self.last_ts_ms);
        let mut group = Group::new(&*storage, self.last_seq, self.last_ts_ms);
        let mut budget = PurgeBudget {
            entries: TOMBSTONE_PURGE_SCAN_ENTRIES,
            bytes: TOMBSTONE_PURGE_READ_BYTES,
            purges: TOMBSTONE_PURGES_MAX,
        };
        let mut purged = 0;
        let mut moved = false;
        for collection in self.purge.order(TOMBSTONE_PURGE_SCAN_ENTRIES) {
            if budget.spent() {
                break;
            }
            // A turn that fails leaves nothing in the group and its cursor
            // where it was: a purge is never stored without its horizon.
            match self.purge_turn(&collection, now, &mut budget) {
                Ok(turn) => {
                    if let Some(cursor) = turn.cursor {
                        self.purge.set_cursor(&collection, Some(cursor));
                    }
                    if let Some((seq, id)) = turn.last {
                        for (doc_key, change_key) in turn.removals {
                            group.put(Space::Documents, doc_key, None);
                            group.put(Space::Changes, change_key, None);
                            purged += 1;
                        }
                        group.put(
                            Space::Meta,
                            purge::horizon_key(&collection),
                            Some(purge::encode_horizon(seq, &id)),
                        );
                        if seq > horizon_max {
                            horizon_max = seq;
                            moved = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(collection = %collection, "tombstone purge failed: {e}");
                    budget.entries = budget.entries.saturating_sub(1);
                }
            }
            self.purge.took(collection);
        }
        if purged == 0 {
            return;
        }
        // Stopped by its count of purges: there may be more.
        self.maintenance_backlog |= budget.purges == 0;
        if moved {
            group.put(
                Space::Meta,
                purge::HORIZON_MAX.to_vec(),
                Some(record::encode_counter(horizon_max)),
            );
        }
        self.events.push(Event::Purged(purged));
        if let Err(e) = self.store(group, 1) {
            tracing::error!("tombstone purge failed: {e}");
        }
    }

    /// Looks at `collection`'s change-log entries from where its last turn
    /// stopped, within `budget`, for tombstones older than its
    /// `keep_seconds`. Stops at the first entry younger than that: every
    /// later one is younger still (commit times never decrease). An entry
    /// whose document cannot be read is reported and passed.
    fn purge_turn(&self, collection: &str, now: u64, budget: &mut PurgeBudget) -> Result<PurgeTurn> {
        let mut turn = PurgeTurn::default();
        let Some(keep) = self.configs.get(collection).and_then(|c| c.tombstones) else {
            return Ok(turn);
        };
        let cutoff = now.saturating_sub(keep.keep_seconds.saturating_mul(1000));
        let storage = &*self.shared.storage;
        let start = match self.purge.cursor(collection) {
            Some(key) => std::ops::Bound::Excluded(key.to_vec()),
            None => purge::resume_after(storage, collection)?,
        };
        // Most turns stop at once, at a young entry: a few entries first.
        let mut entries =
            read::FeedCursor::from(collection.to_string(), start, self.last_seq, PURGE_SCAN_FIRST);
        // Every turn takes at least one entry of the budget.
        budget.entries = budget.entries.saturating_sub(1);
        while let Some((seq, id)) = entries.next(storage, budget.entries + 1)? {
            let doc_key = tx::doc_key(collection, &id);
            let record = storage.get(Space::Documents, &doc_key)?;
            budget.bytes = budget.bytes.saturating_sub(record.as_ref().map_or(0, Vec::len));
            let meta = match &record {
                Some(bytes) => record::decode_document_meta(&id, bytes).map(|(meta, _)| meta),
                None => Err(crate::storage::StorageError::Corrupt("no document record".into())),
            };
            let key = tx::changes_key(collection.as_bytes(), seq, id.as_bytes());
            match meta {
                Ok(meta) if meta.ts_ms > cutoff => break,
                Ok(meta) if meta.deleted && meta.seq == seq => {
                    turn.removals.push((doc_key, key.clone()));
                    turn.last = Some((seq, id));
                    budget.purges -= 1;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(collection, id, "tombstone purge passed a change-log entry: {e}"),
            }
            turn.cursor = Some(key);
            if budget.spent() {
                break;
            }
            budget.entries -= 1;
        }
        Ok(turn)
    }

    /// Background upkeep between groups: forget expired idempotency keys.
    pub(super) fn maintain(&mut self) {
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
        // A full batch: there may be more.
        self.maintenance_backlog |= expired.len() == IDEMPOTENCY_PURGE_BATCH_MAX;
        let mut group = Group::new(&*storage, self.last_seq, self.last_ts_ms);
        for (key, _) in expired {
            let Some((expiry, idem_key)) = key.split_first_chunk::<8>() else {
                // Damaged (too short to hold a time): removed, so that it
                // does not come back first in every batch.
                group.put(Space::IdempotencyExpiry, key.clone(), None);
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
        if let Err(e) = self.store(group, 1) {
            tracing::error!("idempotency purge failed: {e}");
        }
    }
}

/// Change-log entries a purge turn reads first (then twice as many each
/// time, as a feed does).
const PURGE_SCAN_FIRST: usize = 16;

/// What is left of one tombstone-purge pass's work.
struct PurgeBudget {
    /// Change-log entries it may still look at.
    entries: usize,
    /// Bytes of document records it may still read.
    bytes: usize,
    /// Tombstones it may still purge.
    purges: usize,
}

impl PurgeBudget {
    fn spent(&self) -> bool {
        self.entries == 0 || self.bytes == 0 || self.purges == 0
    }
}

/// What one collection's turn at the purge found.
#[derive(Default)]
struct PurgeTurn {
    /// Each old tombstone's document key and change-log key.
    removals: Vec<(Vec<u8>, Vec<u8>)>,
    /// The position of the last of them: the collection's new horizon.
    last: Option<(u64, String)>,
    /// The last change-log key passed: where its next turn goes on.
    cursor: Option<Vec<u8>>,
}
