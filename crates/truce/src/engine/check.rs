//! Consistency check: reads one durable snapshot of every space and verifies
//! that each record decodes and that everything derived from the documents
//! agrees with them — the change log, index entries, counter caches (with
//! their outbox) and idempotency expiry entries. It writes nothing.
//!
//! Memory stays bounded whatever the database's size: each space is walked
//! in chunks and each entry checked against the other spaces with point reads,
//! so every document is compared with its change-log entry and index entries,
//! and every change-log and index entry with its document. Only a counter's
//! groups are held (as a recount holds them), and at most
//! [`CHECK_PROBLEMS_MAX`] problems.

use std::collections::HashMap;

use serde_json::Value;

use super::Db;
use super::committer::{META_LAST_SEQ, read_meta_counter, scan_chunk};
use super::config::{self, CollectionConfig};
use super::counters;
use super::read::durable_snapshot;
use super::recount::tally;
use super::tx::{changes_key, doc_key};
use crate::doc::Document;
use crate::error::{Error, Result};
use crate::index::{self, IndexDef, IndexState};
use crate::limits::{CHECK_CHUNK_ENTRIES, CHECK_PROBLEMS_MAX};
use crate::record;
use crate::storage::{Space, StorageError, StorageRead};

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckProblem {
    /// What is wrong, a stable code (see `docs/reliability.md`, "Checking a
    /// database"): `corrupt_record`, `bad_key`, `ahead_of_last_seq`,
    /// `missing_change`, `stale_change`, `missing_index_entry`,
    /// `stale_index_entry`, `orphan_index_entry`, `duplicate_unique_value`,
    /// `missing_idempotency_expiry`, `stale_idempotency_expiry`,
    /// `counter_mismatch`, `counter_target_not_a_number`.
    pub kind: &'static str,
    /// The space it was found in (`Space::name`).
    pub space: &'static str,
    /// Which record, and what was expected of it.
    pub detail: String,
}

/// A counter a check did not compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSkip {
    /// `collection/name`.
    pub counter: String,
    /// Why, a stable code: `time_relative` (its filter uses `$ago`: what it
    /// holds depends on when each write came), `backfill_pending` (declared
    /// or defined anew, its backfill has not committed yet), `unreadable` (a
    /// document it reads does not decode: a problem of its own).
    pub kind: &'static str,
    /// The same in words.
    pub detail: String,
}

/// How far a running check has come (passed to its progress callback after
/// every chunk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckProgress {
    /// The space being checked (`Space::name`), or `counters`.
    pub space: &'static str,
    /// Entries checked so far, over every space.
    pub entries: u64,
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The snapshot checked holds every commit up to this sequence.
    pub seq: u64,
    /// Documents (tombstones included) checked.
    pub documents: u64,
    /// Change-log entries checked.
    pub changes: u64,
    /// Index entries checked.
    pub index_entries: u64,
    /// Idempotency records and expiry entries checked.
    pub idempotency: u64,
    /// Outbox entries (`after_commit` increments waiting) checked.
    pub outbox: u64,
    /// Counter groups compared with a recount.
    pub counter_groups: u64,
    /// Counters not compared, and why.
    pub counters_skipped: Vec<CheckSkip>,
    /// The first [`CHECK_PROBLEMS_MAX`] problems found.
    pub problems: Vec<CheckProblem>,
    /// Every problem found, including those past the first.
    pub problems_total: u64,
}

impl CheckReport {
    /// Whether nothing was found wrong.
    pub fn is_clean(&self) -> bool {
        self.problems_total == 0
    }

    fn problem(&mut self, kind: &'static str, space: Space, detail: String) {
        self.problems_total += 1;
        if self.problems.len() < CHECK_PROBLEMS_MAX {
            self.problems.push(CheckProblem {
                kind,
                space: space.name(),
                detail,
            });
        }
    }
}

impl Db {
    /// Checks a durable snapshot of the database (see [`check`]); writers go
    /// on meanwhile.
    pub fn check(&self, progress: &mut dyn FnMut(&CheckProgress)) -> Result<CheckReport> {
        let (view, _) = durable_snapshot(self.shared())?;
        check(&*view, progress)
    }
}

/// Splits `collection 0x00 rest`.
fn split_collection(key: &[u8]) -> Option<(&str, &[u8])> {
    let at = key.iter().position(|&b| b == 0)?;
    Some((std::str::from_utf8(&key[..at]).ok()?, &key[at + 1..]))
}

/// What the catalog says, as stored in the snapshot itself: its index
/// definitions and its collections' configurations.
struct Catalog {
    indexes: HashMap<String, Vec<IndexDef>>,
    configs: Vec<(String, CollectionConfig)>,
}

fn catalog(view: &dyn StorageRead, report: &mut CheckReport) -> Result<Catalog> {
    let mut indexes: HashMap<String, Vec<IndexDef>> = HashMap::new();
    for (key, bytes) in scan_chunk(view, Space::Meta, index::META_PREFIX, None, usize::MAX)?.0 {
        match record::decode_json(&bytes)
            .map_err(crate::Error::from)
            .and_then(|json| IndexDef::from_json(&json))
        {
            Ok(def) => indexes.entry(def.collection.clone()).or_default().push(def),
            Err(e) => report.problem(
                "corrupt_record",
                Space::Meta,
                format!("{}: {e}", String::from_utf8_lossy(&key)),
            ),
        }
    }
    let mut configs = HashMap::new();
    for (key, bytes) in scan_chunk(view, Space::Meta, config::META_PREFIX, None, usize::MAX)?.0 {
        let name = String::from_utf8_lossy(&key[config::META_PREFIX.len()..]).into_owned();
        match record::decode_json(&bytes)
            .map_err(crate::Error::from)
            .and_then(|json| CollectionConfig::from_json(&json))
        {
            Ok(config) => {
                configs.insert(name, config);
            }
            Err(e) => report.problem(
                "corrupt_record",
                Space::Meta,
                format!("configuration of {name}: {e}"),
            ),
        }
    }
    // A damaged mark is damage to report, not a reason not to look.
    if let Err(e) = config::read_backfills(view, &mut configs) {
        report.problem(
            "corrupt_record",
            Space::Meta,
            format!("counter backfill marks: {e}"),
        );
    }
    let mut configs: Vec<(String, CollectionConfig)> = configs.into_iter().collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Catalog { indexes, configs })
}

/// Walks `space` in chunks, calling `visit` on each entry and `progress` after
/// each chunk.
fn walk(
    view: &dyn StorageRead,
    space: Space,
    entries: &mut u64,
    progress: &mut dyn FnMut(&CheckProgress),
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (chunk, next) = scan_chunk(view, space, b"", after.as_deref(), CHECK_CHUNK_ENTRIES)?;
        for (key, value) in &chunk {
            visit(key, value)?;
        }
        *entries += chunk.len() as u64;
        progress(&CheckProgress {
            space: space.name(),
            entries: *entries,
        });
        match next {
            Some(key) => after = Some(key),
            None => return Ok(()),
        }
    }
}

/// Checks `view`, a snapshot of a whole database, and reports what it found
/// wrong. An error is a failure to read, not a finding.
pub fn check(view: &dyn StorageRead, progress: &mut dyn FnMut(&CheckProgress)) -> Result<CheckReport> {
    let mut report = CheckReport {
        seq: read_meta_counter(view, META_LAST_SEQ)?,
        ..CheckReport::default()
    };
    let catalog = catalog(view, &mut report)?;
    let mut entries = 0u64;
    // A ready index holds every live document; one still building, some.
    let ready_indexes = |collection: &str| {
        catalog
            .indexes
            .get(collection)
            .into_iter()
            .flatten()
            .filter(|d| d.state == IndexState::Ready)
    };
    // The document a change-log or index entry names, decoded (a document
    // that does not decode is reported once, by the walk of the documents).
    let document = |collection: &str, id: &str| -> Result<Option<Document>> {
        Ok(view
            .get(Space::Documents, &doc_key(collection, id))?
            .and_then(|bytes| record::decode_document(id, &bytes).ok()))
    };

    // Documents: each decodes, is not past the last commit, and has its
    // change-log entry and the entries of every index being kept.
    walk(view, Space::Documents, &mut entries, progress, |key, value| {
        report.documents += 1;
        let Some((collection, id)) =
            split_collection(key).and_then(|(c, id)| Some((c, std::str::from_utf8(id).ok()?)))
        else {
            report.problem(
                "bad_key",
                Space::Documents,
                format!("{:?}", String::from_utf8_lossy(key)),
            );
            return Ok(());
        };
        let doc = match record::decode_document(id, value) {
            Ok(doc) => doc,
            Err(e) => {
                report.problem(
                    "corrupt_record",
                    Space::Documents,
                    format!("{collection}/{id}: {e}"),
                );
                return Ok(());
            }
        };
        if doc.meta.seq > report.seq {
            report.problem(
                "ahead_of_last_seq",
                Space::Documents,
                format!(
                    "{collection}/{id} was written at seq {}, after the last commit {}",
                    doc.meta.seq, report.seq
                ),
            );
        }
        if view
            .get(
                Space::Changes,
                &changes_key(collection.as_bytes(), doc.meta.seq, id.as_bytes()),
            )?
            .is_none()
        {
            report.problem(
                "missing_change",
                Space::Changes,
                format!(
                    "{collection}/{id} has no change-log entry at its seq {}",
                    doc.meta.seq
                ),
            );
        }
        if !doc.is_deleted() {
            for def in ready_indexes(collection) {
                if view.get(Space::Index, &def.entry_key(id, &doc.body))?.is_none() {
                    report.problem(
                        "missing_index_entry",
                        Space::Index,
                        format!("index {collection}.{} has no entry for {id}", def.name),
                    );
                }
            }
        }
        Ok(())
    })?;

    // Change log: each entry is its document's latest change.
    walk(view, Space::Changes, &mut entries, progress, |key, _| {
        report.changes += 1;
        let parsed = split_collection(key).and_then(|(collection, rest)| {
            let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            Some((collection, seq, std::str::from_utf8(&rest[8..]).ok()?))
        });
        let Some((collection, seq, id)) = parsed else {
            report.problem(
                "bad_key",
                Space::Changes,
                format!("{:?}", String::from_utf8_lossy(key)),
            );
            return Ok(());
        };
        match document(collection, id)? {
            Some(doc) if doc.meta.seq == seq => {}
            found => report.problem(
                "stale_change",
                Space::Changes,
                format!(
                    "{collection}/{id} at seq {seq}: the document is {}",
                    found.map_or("absent".to_string(), |d| format!("at seq {}", d.meta.seq))
                ),
            ),
        }
        Ok(())
    })?;

    // Index entries: each belongs to a declared index, and one being kept
    // holds only its live documents' current entries; in a ready unique
    // index, no two live documents with every field present share values,
    // but where all holders but one are past their TTL (writers treat those
    // as gone until the sweeper deletes them). Entries come in key order, so
    // a value's holders are adjacent.
    let now = super::committer::now_ms();
    let ttl_of = |collection: &str| {
        catalog
            .configs
            .iter()
            .find(|(name, _)| name == collection)
            .and_then(|(_, config)| config.ttl.as_ref())
    };
    // The values (index prefix included) of the last unique entry seen, and
    // the first of their holders that is not past its TTL.
    let mut unique_run: Option<(Vec<u8>, Option<String>)> = None;
    walk(view, Space::Index, &mut entries, progress, |key, value| {
        report.index_entries += 1;
        let owner = split_collection(key).and_then(|(collection, rest)| {
            catalog
                .indexes
                .get(collection)?
                .iter()
                .find(|d| rest.starts_with(d.name.as_bytes()) && rest.get(d.name.len()) == Some(&0))
        });
        let Some(def) = owner else {
            report.problem(
                "orphan_index_entry",
                Space::Index,
                format!("{:?} belongs to no declared index", String::from_utf8_lossy(key)),
            );
            return Ok(());
        };
        if !matches!(def.state, IndexState::Ready | IndexState::Building) {
            return Ok(()); // a dropped or failed index's entries, being deleted
        }
        let id = String::from_utf8_lossy(value);
        let doc = document(&def.collection, &id)?.filter(|d| !d.is_deleted());
        let Some(doc) = doc.filter(|d| def.entry_key(&id, &d.body) == key) else {
            report.problem(
                "stale_index_entry",
                Space::Index,
                format!(
                    "index {}.{} holds an entry for {id} that its document does not have",
                    def.collection, def.name
                ),
            );
            return Ok(());
        };
        if !(def.spec.unique && def.state == IndexState::Ready && def.all_present(&doc.body)) {
            return Ok(());
        }
        let values = &key[..key.len() - id.len()];
        let gone =
            ttl_of(&def.collection).is_some_and(|ttl| super::committer::is_expired(&doc.body, ttl, now));
        match &mut unique_run {
            Some((run, holder)) if run.as_slice() == values => match holder {
                Some(first) if !gone => report.problem(
                    "duplicate_unique_value",
                    Space::Index,
                    format!(
                        "unique index {}.{}: {first} and {id} both hold {}",
                        def.collection,
                        def.name,
                        Value::Array(
                            def.paths
                                .iter()
                                .filter_map(|path| crate::update::path::get(&doc.body, path).cloned())
                                .collect()
                        )
                    ),
                ),
                Some(_) => {}
                None => *holder = (!gone).then(|| id.into_owned()),
            },
            _ => unique_run = Some((values.to_vec(), (!gone).then(|| id.into_owned()))),
        }
        Ok(())
    })?;

    // Idempotency: every record has its expiry entry, and every expiry entry
    // its record.
    walk(view, Space::Idempotency, &mut entries, progress, |key, value| {
        report.idempotency += 1;
        match record::decode_idempotency(value) {
            Ok(stored) => {
                let expiry = [&stored.expires_ms.to_be_bytes()[..], key].concat();
                if view.get(Space::IdempotencyExpiry, &expiry)?.is_none() {
                    report.problem(
                        "missing_idempotency_expiry",
                        Space::IdempotencyExpiry,
                        format!("key {:?}", String::from_utf8_lossy(key)),
                    );
                }
            }
            Err(e) => report.problem(
                "corrupt_record",
                Space::Idempotency,
                format!("key {:?}: {e}", String::from_utf8_lossy(key)),
            ),
        }
        Ok(())
    })?;
    walk(
        view,
        Space::IdempotencyExpiry,
        &mut entries,
        progress,
        |key, _| {
            report.idempotency += 1;
            let Some((expires, idempotency_key)) = key.split_at_checked(8) else {
                report.problem("bad_key", Space::IdempotencyExpiry, format!("{key:?}"));
                return Ok(());
            };
            let expires = u64::from_be_bytes(expires.try_into().unwrap_or_default());
            let matches = view
                .get(Space::Idempotency, idempotency_key)?
                .and_then(|bytes| record::decode_idempotency(&bytes).ok())
                .is_some_and(|stored| stored.expires_ms == expires);
            if !matches {
                report.problem(
                    "stale_idempotency_expiry",
                    Space::IdempotencyExpiry,
                    format!(
                        "key {:?} expiring at {expires}",
                        String::from_utf8_lossy(idempotency_key)
                    ),
                );
            }
            Ok(())
        },
    )?;

    // The outbox's increments decode (the counters below add them up).
    walk(view, Space::Outbox, &mut entries, progress, |key, value| {
        report.outbox += 1;
        if let Err(e) = counters::decode_outbox(value) {
            report.problem("corrupt_record", Space::Outbox, format!("{key:?}: {e}"));
        }
        Ok(())
    })?;

    // Counters: each group's target (plus the outbox) equals a recount.
    for (collection, config) in &catalog.configs {
        for def in &config.counters {
            let skip = |kind: &'static str, detail: String| CheckSkip {
                counter: format!("{collection}/{}", def.name),
                kind,
                detail,
            };
            if def.is_time_relative() {
                let why = "its filter uses $ago: what it holds depends on when each write came".into();
                report.counters_skipped.push(skip("time_relative", why));
                continue;
            }
            if config.backfilling.contains_key(&def.name) {
                let why = "declared or defined anew, its backfill has not committed yet (it resumes on open)"
                    .into();
                report.counters_skipped.push(skip("backfill_pending", why));
                continue;
            }
            let groups = match tally(view, collection, def, now) {
                Ok(groups) => groups,
                // Reported where the walk of the documents met it.
                Err(Error::Storage(StorageError::Corrupt(why))) => {
                    let why = format!("a document it reads does not decode ({why})");
                    report.counters_skipped.push(skip("unreadable", why));
                    continue;
                }
                Err(other) => return Err(other),
            };
            for tally in groups {
                report.counter_groups += 1;
                let target = format!("{}/{}.{}", def.target_collection, tally.group, def.target_field);
                if let Some(held) = tally.not_a_number {
                    report.problem(
                        "counter_target_not_a_number",
                        Space::Documents,
                        format!(
                            "counter {collection}/{} cannot count into {target}, which holds {held}: put a number \
                             back (what its documents say: {}), then recount",
                            def.name,
                            tally.expected.to_json()
                        ),
                    );
                } else if !tally.expected.is_finite() {
                    report.problem(
                        "counter_sum_overflow",
                        Space::Documents,
                        format!(
                            "counter {collection}/{} cannot hold what its documents say in {target}, a sum past \
                             the largest number JSON holds (it keeps {}); no recount fixes it until their sum is \
                             back within reach",
                            def.name,
                            tally.have.to_json()
                        ),
                    );
                } else if !tally.expected.same(tally.have) {
                    report.problem(
                        "counter_mismatch",
                        Space::Documents,
                        format!(
                            "counter {collection}/{} holds {} in {target} (with the outbox), its documents say {}: \
                             a recount fixes it, unless the correction would take the target document past \
                             1 MiB (the recount then reports it unfixable: make room in it first)",
                            def.name,
                            tally.have.to_json(),
                            tally.expected.to_json()
                        ),
                    );
                }
            }
            entries += 1;
            progress(&CheckProgress {
                space: "counters",
                entries,
            });
        }
    }
    Ok(report)
}
