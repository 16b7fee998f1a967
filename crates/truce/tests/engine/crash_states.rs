//! Crash states below the engine: a deterministic workload runs on a
//! [`CrashStorage`], which records every write and sync; then, for every crash
//! point (after each write and each sync) and every tail a crash can leave there
//! (unsynced batches dropped, kept, or torn to a prefix), the database is reopened
//! on that image and checked: recovery succeeds, every acknowledged commit is
//! there with its content, and nothing partial is visible (indexes, change logs,
//! counters, the outbox and idempotency records agree with the documents; the
//! bank's money is conserved).
//!
//! Two more tests prove the checker can fail: an engine that answers before its
//! sync, and a storage that splits a commit across two batches
//! ([`CrashStorage::splitting_batches`]), are both caught.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use truce::record;
use truce::storage::{
    CrashStorage, Direction, Durability, MemoryStorage, Space, Storage, StorageError, StorageRead, Tail,
};
use truce::{CollectionConfig, Db, Document, Effect, Expect, IndexSpec, Options, TxOp, Written};

use crate::update;

const ACCOUNTS: usize = 4;
const BALANCE: i64 = 100;
const CAMPAIGNS: usize = 3;
const ROUNDS: usize = 40;

/// What to send again, with its idempotency key, to check the first answer is kept.
#[derive(Clone)]
enum Replay {
    Write(TxOp),
    Batch(Vec<TxOp>),
}

/// An acknowledged commit: when it was answered, and what it wrote.
struct Ack {
    /// Storage events that had happened when the answer arrived.
    events: usize,
    seq: u64,
    /// (collection, document) of every document the commit wrote.
    docs: Vec<(String, Document)>,
    idempotent: Option<(String, Replay)>,
}

struct Workload<'a> {
    db: &'a Db,
    storage: &'a dyn Fn() -> usize,
    acks: Vec<Ack>,
}

impl Workload<'_> {
    fn written(&mut self, collection: &str, written: Written, idempotent: Option<(String, Replay)>) {
        if matches!(
            written.effect,
            Effect::Created | Effect::Updated | Effect::Deleted
        ) {
            self.acks.push(Ack {
                events: (self.storage)(),
                seq: written.doc.meta.seq,
                docs: vec![(
                    collection.to_string(),
                    std::sync::Arc::unwrap_or_clone(written.doc),
                )],
                idempotent,
            });
        }
    }

    fn write(&mut self, collection: &str, op: TxOp, key: Option<&str>) {
        let written = self
            .db
            .submit_write(op.clone(), key)
            .and_then(|p| p.wait())
            .expect("write")
            .expect("no conflict");
        self.written(
            collection,
            written,
            key.map(|k| (k.to_string(), Replay::Write(op))),
        );
    }

    fn batch(&mut self, ops: Vec<TxOp>, key: Option<&str>) {
        let committed = self
            .db
            .batch(ops.clone(), key)
            .expect("batch")
            .expect("no conflict");
        self.commit(committed, key.map(|k| (k.to_string(), Replay::Batch(ops))));
    }

    fn commit(&mut self, committed: truce::TxCommitted, idempotent: Option<(String, Replay)>) {
        let docs: Vec<_> = committed
            .results
            .into_iter()
            .flatten()
            .filter(|w| matches!(w.effect, Effect::Created | Effect::Updated | Effect::Deleted))
            .map(|w| (collection_of(&w), std::sync::Arc::unwrap_or_clone(w.doc)))
            .collect();
        if !docs.is_empty() {
            self.acks.push(Ack {
                events: (self.storage)(),
                seq: committed.seq,
                docs,
                idempotent,
            });
        }
    }
}

/// Which collection a transaction's written document belongs to (the workload's
/// transactions touch only accounts).
fn collection_of(_: &Written) -> String {
    "accounts".to_string()
}

fn put(collection: &str, id: &str, body: Value, expect: Expect) -> TxOp {
    TxOp::Put {
        collection: collection.into(),
        id: id.into(),
        body,
        expect,
    }
}

fn patch(collection: &str, id: &str, spec: Value) -> TxOp {
    TxOp::Patch {
        collection: collection.into(),
        id: id.into(),
        update: Arc::new(update(spec)),
        expect: Expect::Any,
    }
}

/// Documents, two indexes (one built by backfill), in-commit and after-commit
/// counters, batches and interactive transactions, idempotency keys, deletes and
/// TTL expiry; returns every acknowledged commit.
fn run_workload(db: &Db, events: &dyn Fn() -> usize) -> Vec<Ack> {
    let mut w = Workload {
        db,
        storage: events,
        acks: Vec::new(),
    };
    let counters = json!({"counters": [
        {"name": "confirmed", "group_by": "campaign", "where": {"status": "confirmed"},
         "target": {"c": "metrics", "field": "confirmed"}, "mode": "in_commit"},
        {"name": "total", "group_by": "campaign",
         "target": {"c": "metrics", "field": "total"}, "mode": "after_commit"}]});
    let orders = db.collection("orders").unwrap();
    orders
        .set_config(CollectionConfig::from_json(&counters).unwrap())
        .unwrap();
    let sessions = db.collection("sessions").unwrap();
    sessions
        .set_config(
            CollectionConfig::from_json(&json!({"ttl": {"field": "lastSeen", "seconds": 1}})).unwrap(),
        )
        .unwrap();
    let spec = |field: &str, unique| IndexSpec {
        fields: vec![field.to_string()],
        unique,
    };
    orders
        .create_index("by_campaign", spec("campaign", false))
        .unwrap();
    db.collection("accounts")
        .unwrap()
        .create_index("by_owner", spec("owner", true))
        .unwrap();
    let opening = (0..ACCOUNTS)
        .map(|a| {
            put(
                "accounts",
                &format!("a{a}"),
                json!({"owner": format!("owner-{a}"), "balance": BALANCE}),
                Expect::Absent,
            )
        })
        .collect();
    w.batch(opening, None);

    for i in 0..ROUNDS {
        let campaign = format!("c{}", i % CAMPAIGNS);
        let order = json!({"campaign": campaign, "status": "pending", "n": i});
        w.write(
            "orders",
            put("orders", &format!("o{i}"), order, Expect::Absent),
            None,
        );
        if i % 2 == 1 {
            let confirm = patch(
                "orders",
                &format!("o{}", i - 1),
                json!({"$set": {"status": "confirmed"}}),
            );
            w.write("orders", confirm, None);
        }
        if i == ROUNDS / 2 {
            // Built over the orders written so far by background backfill commits.
            orders.create_index("by_status", spec("status", false)).unwrap();
        }
        let (from, to, amount) = (
            format!("a{}", i % ACCOUNTS),
            format!("a{}", (i + 1) % ACCOUNTS),
            i as i64 + 1,
        );
        let transfer = vec![
            patch("accounts", &from, json!({"$inc": {"balance": -amount}})),
            patch("accounts", &to, json!({"$inc": {"balance": amount}})),
        ];
        let key = format!("transfer-{i}");
        w.batch(transfer, (i % 3 == 0).then_some(key.as_str()));
        if i % 4 == 2 {
            // An interactive transaction: read two accounts, move half of one.
            let mut tx = db.begin().unwrap();
            let balance = |d: Option<Document>| d.and_then(|d| d.body["balance"].as_i64()).unwrap();
            let a = balance(tx.get("accounts", &to).unwrap());
            let b = balance(tx.get("accounts", &from).unwrap());
            tx.patch(
                "accounts",
                &to,
                update(json!({"$set": {"balance": a - a / 2}})),
                Expect::Exists,
            )
            .unwrap();
            tx.patch(
                "accounts",
                &from,
                update(json!({"$set": {"balance": b + a / 2}})),
                Expect::Exists,
            )
            .unwrap();
            let committed = tx.commit().unwrap().expect("no concurrent writer");
            w.commit(committed, None);
        }
        if i % 3 == 1 {
            let note = put(
                "notes",
                &format!("n{i}"),
                json!({"text": "x".repeat(i * 10)}),
                Expect::Absent,
            );
            w.write("notes", note, Some(&format!("note-{i}")));
        }
        if i % 5 == 4 {
            let delete = TxOp::Delete {
                collection: "orders".into(),
                id: format!("o{}", i - 2),
                expect: Expect::Any,
            };
            w.write("orders", delete, None);
        }
        // Already expired: the TTL sweep turns it into a tombstone in the background.
        let session = put("sessions", &format!("s{i}"), json!({"lastSeen": 0}), Expect::Any);
        w.write("sessions", session, None);
    }
    // Let the outbox drain, the sweep and the backfill commit in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = || {
        db.outbox_status().0 == 0
            && orders.index_status("by_status").unwrap().state == truce::IndexState::Ready
            && sessions.count().unwrap().0 == 0
    };
    while !settled() {
        assert!(Instant::now() < deadline, "background work did not settle");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.acks
}

fn corrupt(e: StorageError) -> String {
    e.to_string()
}

fn scan_all(store: &dyn StorageRead, space: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan(
            space,
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Forward,
            usize::MAX,
        )
        .expect("scan")
}

fn split_at_zero(bytes: &[u8]) -> (String, &[u8]) {
    let at = bytes.iter().position(|&b| b == 0).expect("a 0x00 separator");
    (
        String::from_utf8_lossy(&bytes[..at]).into_owned(),
        &bytes[at + 1..],
    )
}

fn number(body: &truce::Body, field: &str) -> f64 {
    body.get(field).and_then(Value::as_f64).unwrap_or(0.0)
}

type Docs = BTreeMap<(String, String), Document>;

/// What must hold of any state a crash leaves, read from the raw image before
/// the engine opens it: every record decodes, and everything derived from the
/// documents (change logs, index entries, counters with their outbox,
/// idempotency expiry entries) agrees with them. Returns the documents and the
/// recovered `last_seq`.
fn check_image(image: &MemoryStorage) -> Result<(Docs, u64), String> {
    let last_seq = match image.get(Space::Meta, b"last_seq").map_err(corrupt)? {
        Some(bytes) => record::decode_counter(&bytes).map_err(corrupt)?,
        None => 0,
    };
    let mut docs = Docs::new();
    for (key, value) in scan_all(image, Space::Documents) {
        let (collection, id) = split_at_zero(&key);
        let id = String::from_utf8_lossy(id).into_owned();
        let doc = record::decode_document(&id, &value).map_err(corrupt)?;
        if doc.meta.seq > last_seq {
            return Err(format!(
                "{collection}/{id} has seq {} above last_seq {last_seq}",
                doc.meta.seq
            ));
        }
        docs.insert((collection, id), doc);
    }

    // Everything derived from the documents agrees with them: one change-log
    // entry each, at its latest change; a ready index's entries exactly the
    // live documents', one still building a subset; counters (with the
    // outbox's pending increments) what a recount says; every idempotency
    // record with its expiry entry. The check users run (`truce check`).
    // A counter may wait for its backfill: the crash came between its
    // declaration's commit and its recount's (`check_recovered` sees it run).
    let report = truce::engine::check(image, &mut |_| {}).map_err(|e| e.to_string())?;
    let unexplained = report
        .counters_skipped
        .iter()
        .any(|skip| skip.kind != "backfill_pending");
    if !report.is_clean() || unexplained {
        return Err(format!("{:?} {:?}", report.problems, report.counters_skipped));
    }

    // The bank: a transaction moves money, never creates or loses it.
    let accounts: Vec<&Document> = docs
        .iter()
        .filter(|((c, _), _)| c == "accounts")
        .map(|(_, d)| d)
        .collect();
    let money: f64 = accounts.iter().map(|d| number(&d.body, "balance")).sum();
    if !accounts.is_empty() && (accounts.len() != ACCOUNTS || money != (ACCOUNTS as i64 * BALANCE) as f64) {
        return Err(format!("{} accounts hold {money}", accounts.len()));
    }

    Ok((docs, last_seq))
}

/// What the reopened engine must answer: every commit acknowledged before the
/// crash is there with its content, the change feed lists every document once in
/// commit order, an idempotent request sent again gets its first answer without
/// writing, and a new write continues the sequence.
fn check_recovered(db: &Db, docs: &Docs, last_seq: u64, acked: &[&Ack]) -> Result<(), String> {
    // Background work (TTL sweeps, outbox drains, backfills) may commit at once.
    if db.durable_seq() < last_seq {
        return Err(format!(
            "recovered at {} with last_seq {last_seq}",
            db.durable_seq()
        ));
    }
    for ack in acked {
        if ack.seq > last_seq {
            return Err(format!(
                "acknowledged commit {} is lost (recovered up to {last_seq})",
                ack.seq
            ));
        }
        for (collection, written) in &ack.docs {
            let stored = db
                .collection(collection)
                .and_then(|c| c.get_stored(&written.id))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("acknowledged {collection}/{} is gone", written.id))?;
            let exact = stored.meta.seq == written.meta.seq;
            if stored.meta.seq < written.meta.seq || (exact && stored != *written) {
                return Err(format!(
                    "acknowledged {collection}/{} at seq {} reads back as seq {} {:?}",
                    written.id, written.meta.seq, stored.meta.seq, stored.body
                ));
            }
        }
    }
    let feed = db
        .changes(None, 0, truce::limits::CHANGES_LIMIT_MAX, false)
        .map_err(|e| e.to_string())?;
    let listed: Vec<(String, String, u64)> = feed
        .changes
        .iter()
        .map(|c| (c.collection.clone(), c.id.clone(), c.seq))
        .collect();
    let mut in_order = listed.clone();
    in_order.sort_by_key(|c| c.2);
    // Documents background commits changed since the reopen are listed there.
    let moved: BTreeSet<(&str, &str)> = listed
        .iter()
        .filter(|c| c.2 > last_seq)
        .map(|(c, id, _)| (c.as_str(), id.as_str()))
        .collect();
    let recovered: BTreeSet<_> = listed.iter().filter(|c| c.2 <= last_seq).cloned().collect();
    let expected: BTreeSet<_> = docs
        .iter()
        .filter(|((c, id), _)| !moved.contains(&(c.as_str(), id.as_str())))
        .map(|((c, id), d)| (c.clone(), id.clone(), d.meta.seq))
        .collect();
    if listed != in_order || recovered != expected || listed.len() < docs.len() {
        return Err(format!(
            "the change feed lists {} changes for {} documents",
            listed.len(),
            docs.len()
        ));
    }
    for ack in acked {
        let Some((key, replay)) = &ack.idempotent else {
            continue;
        };
        let stored = |ack: &Ack| -> Result<Vec<Option<Document>>, String> {
            ack.docs
                .iter()
                .map(|(c, d)| db.collection(c).and_then(|c| c.get_stored(&d.id)))
                .collect::<truce::Result<_>>()
                .map_err(|e| e.to_string())
        };
        let before = stored(ack)?;
        let seq = match replay {
            Replay::Write(op) => {
                db.submit_write(op.clone(), Some(key))
                    .and_then(|p| p.wait())
                    .map_err(|e| e.to_string())?
                    .map_err(|c| format!("replay of {key} conflicts: {c:?}"))?
                    .doc
                    .meta
                    .seq
            }
            Replay::Batch(ops) => {
                db.batch(ops.clone(), Some(key))
                    .map_err(|e| e.to_string())?
                    .map_err(|f| format!("replay of {key} fails: {f:?}"))?
                    .seq
            }
        };
        if seq != ack.seq {
            return Err(format!(
                "idempotency key {key} answered seq {seq}, first {}",
                ack.seq
            ));
        }
        if stored(ack)? != before {
            return Err(format!("the replayed idempotent request {key} wrote again"));
        }
    }
    let next = db
        .collection("after")
        .and_then(|c| c.put("crash", json!({}), Expect::Any))
        .map_err(|e| e.to_string())?
        .map_err(|c| format!("{c:?}"))?;
    if next.doc.meta.seq <= last_seq {
        return Err(format!(
            "the first write after recovery got seq {}",
            next.doc.meta.seq
        ));
    }
    // A backfill the crash interrupted runs again, and then every counter is
    // exact.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = db.check(&mut |_| {}).map_err(|e| e.to_string())?;
        if !report.is_clean() {
            return Err(format!("after recovery: {:?}", report.problems));
        }
        if report.counters_skipped.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("backfills did not resume: {:?}", report.counters_skipped));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks the state a crash after `point` events, keeping `tail`, leaves.
fn check_crash_state(storage: &CrashStorage, point: usize, tail: Tail, acks: &[Ack]) -> Result<(), String> {
    let image = Arc::new(storage.image(point, tail));
    let (docs, last_seq) = check_image(&image)?;
    let db = Db::open_with_storage(image, Options::default()).map_err(|e| format!("recovery: {e}"))?;
    let acked: Vec<&Ack> = acks.iter().filter(|a| a.events <= point).collect();
    check_recovered(&db, &docs, last_seq, &acked)
}

fn record_workload(
    storage: Arc<dyn Storage>,
    durability: Durability,
    events: &dyn Fn() -> usize,
) -> Vec<Ack> {
    let db = Db::open_with_storage(
        storage,
        Options {
            durability,
            ..Options::default()
        },
    )
    .unwrap();
    run_workload(&db, events)
}

#[test]
fn every_crash_point_recovers_every_acknowledged_commit_and_nothing_partial() {
    let started = Instant::now();
    let storage = Arc::new(CrashStorage::new());
    let events = || storage.events();
    let acks = record_workload(storage.clone(), Durability::Immediate, &events);
    let total = storage.events();
    let mut states = 0;
    for point in 0..=total {
        for tail in storage.tails(point) {
            check_crash_state(&storage, point, tail, &acks)
                .unwrap_or_else(|e| panic!("crash after {point} of {total} events, {tail:?}: {e}"));
            states += 1;
        }
    }
    assert!(
        acks.len() > 40,
        "the workload acknowledged only {} commits",
        acks.len()
    );
    assert!(states > 2 * acks.len(), "only {states} crash states");
    eprintln!(
        "crash states: {states} over {} points ({} commits acknowledged) in {:?}",
        total + 1,
        acks.len(),
        started.elapsed()
    );
}

#[test]
fn an_engine_that_answers_before_its_sync_is_caught() {
    // Relaxed durability acknowledges before anything is synced: the deliberate bug.
    let storage = Arc::new(CrashStorage::new());
    let events = || storage.events();
    let acks = record_workload(storage.clone(), Durability::Relaxed, &events);
    let end = storage.events();
    let error = check_crash_state(&storage, end, Tail::Drop, &acks).expect_err("lost acknowledged commits");
    assert!(error.contains("acknowledged"), "{error}");
    // Every torn prefix is still a consistent state: only acknowledgements are wrong.
    let tails = storage.tails(end);
    assert!(tails.len() > 40, "{} tails", tails.len());
    for tail in tails.into_iter().step_by(7) {
        let image = storage.image(end, tail);
        check_image(&image).unwrap_or_else(|e| panic!("{tail:?}: {e}"));
    }
}

#[test]
fn a_commit_split_across_two_batches_is_caught() {
    let storage = Arc::new(CrashStorage::splitting_batches());
    let events = || storage.events();
    let acks = record_workload(storage.clone(), Durability::Immediate, &events);
    assert!(!acks.is_empty());
    let caught = (0..=storage.events())
        .filter(|&point| check_image(&storage.image(point, Tail::Drop)).is_err())
        .count();
    assert!(
        caught > 10,
        "a split commit was caught at only {caught} crash points"
    );
}
