//! Recount: recompute a counter from a snapshot of its source, compare with its
//! targets (plus increments still in the outbox), and fix the difference with
//! commutative increments, so increments made meanwhile are never lost.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::storage::{Direction, Space, StorageRead};
use crate::update::{Work, path};

use super::Db;
use super::committer::{Backfilled, now_ms};
use super::config::CounterDef;
use super::counters::{self, Amount, Increment};
use super::read::{durable_snapshot, for_each_document};

/// A group whose target was wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct RecountFix {
    /// The group (target document id).
    pub group: String,
    /// What the target said (plus pending outbox increments).
    pub was: Value,
    /// What the source says.
    pub now: Value,
}

/// What a recount found.
#[derive(Clone, Debug, PartialEq)]
pub struct RecountReport {
    /// Groups compared.
    pub checked: usize,
    /// Groups that were wrong, now fixed.
    pub fixed: Vec<RecountFix>,
    /// Groups whose target field holds something other than a number, as
    /// `(group, what it holds)`: no increment can fix them (put a number back,
    /// then recount).
    pub unfixable: Vec<(String, Value)>,
    /// The commit of the corrections (the snapshot's, when nothing was wrong).
    pub seq: u64,
}

/// One group of a counter, as a recount sees it.
pub(super) struct Tally {
    /// The group (target document id).
    pub group: String,
    /// What the source documents say.
    pub expected: Amount,
    /// What the target says, plus the increments still in the outbox.
    pub have: Amount,
    /// What the target field holds when it is not a number (then `have` counts
    /// only the outbox).
    pub not_a_number: Option<Value>,
}

fn number(amount: Amount) -> Value {
    amount.to_json()
}

/// Recounts counter `name` of `collection`. One recount runs at a time. A
/// counter waiting for its backfill (declared, or defined anew) is
/// backfilled by it: its corrections' commit records the backfill done.
pub fn recount(db: &Db, collection: &str, name: &str) -> Result<RecountReport> {
    recount_with(db, collection, name, false)?
        .ok_or_else(|| Error::NotFound(format!("counter {name} of collection {collection}")))
}

/// The backfill of counter `name` of `collection`, if it still waits for one
/// once it is this recount's turn (`None`: another did it meanwhile, and a
/// second full read of the collection would change nothing).
pub fn backfill(db: &Db, collection: &str, name: &str) -> Result<Option<RecountReport>> {
    recount_with(db, collection, name, true)
}

fn recount_with(db: &Db, collection: &str, name: &str, only_waiting: bool) -> Result<Option<RecountReport>> {
    let _one_at_a_time = db.recounting();
    let shared = db.shared();
    // The definition and the declaration it waits a backfill for, read
    // together: its commit records that backfill done, and no later one.
    let (def, backfilling) = shared
        .configs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(collection)
        .and_then(|c| {
            let def = c.counters.iter().find(|d| d.name == name)?.clone();
            Some((def, c.backfilling.get(name).copied()))
        })
        .ok_or_else(|| Error::NotFound(format!("counter {name} of collection {collection}")))?;
    if only_waiting && backfilling.is_none() {
        return Ok(None);
    }
    let (view, seq) = durable_snapshot(shared)?;
    let mut fixed = Vec::new();
    let mut unfixable = Vec::new();
    let mut corrections = Vec::new();
    let groups = tally(&*view, collection, &def, now_ms())?;
    for tally in &groups {
        if let Some(held) = &tally.not_a_number {
            unfixable.push((tally.group.clone(), held.clone()));
        } else if !tally.expected.is_finite() {
            // No number could hold the count: none is written.
            unfixable.push((tally.group.clone(), tally.have.to_json()));
        } else if !tally.expected.same(tally.have) {
            fixed.push(RecountFix {
                group: tally.group.clone(),
                was: number(tally.have),
                now: number(tally.expected),
            });
            corrections.push(Increment {
                collection: def.target_collection.clone(),
                id: tally.group.clone(),
                field: def.target_field.clone(),
                amount: tally.expected.add(tally.have.negated()),
            });
        }
    }
    let backfilled = backfilling.map(|generation| Backfilled {
        collection: collection.to_string(),
        name: name.to_string(),
        generation,
    });
    let seq = if corrections.is_empty() && backfilled.is_none() {
        seq
    } else {
        let corrected = db.submit_increments(corrections, backfilled)?;
        // A correction the committer could not apply (the target would pass
        // a limit) fixed nothing: reported so, not as fixed.
        for (_, id) in corrected.skipped {
            if let Some(at) = fixed.iter().position(|f| f.group == id) {
                let was = fixed.remove(at).was;
                unfixable.push((id, was));
            }
        }
        corrected.seq
    };
    Ok(Some(RecountReport {
        checked: groups.len(),
        fixed,
        unfixable,
        seq,
    }))
}

/// Every group of counter `def` of collection `source` in `view`, in group
/// order: a group of the source documents, or of a target that holds the
/// field. `now` resolves a `$ago` in the counter's filter.
pub(super) fn tally(view: &dyn StorageRead, source: &str, def: &CounterDef, now: u64) -> Result<Vec<Tally>> {
    let mut truth: BTreeMap<String, Amount> = BTreeMap::new();
    for_each_document(view, source, |doc| {
        if !doc.is_deleted()
            && let Some((group, amount)) = counters::contribution(def, &doc.body, now, &mut Work::unmetered())
        {
            let entry = truth.entry(group).or_insert(Amount::Int(0));
            *entry = entry.add(amount);
        }
        Ok(())
    })?;
    let target_path = crate::update::Path::parse(&def.target_field)?;
    let mut observed: BTreeMap<String, Amount> = BTreeMap::new();
    let mut not_numbers: BTreeMap<String, Value> = BTreeMap::new();
    for_each_document(view, &def.target_collection, |doc| {
        if doc.is_deleted() {
            return Ok(());
        }
        match path::get(&doc.body, &target_path) {
            Some(value @ Value::Number(_)) => {
                observed.insert(doc.id.clone(), Amount::from_json(value));
            }
            Some(other) => {
                not_numbers.insert(doc.id.clone(), other.clone());
            }
            // Absent, unless a value above it keeps it from being written.
            None => {
                if let Some(above) = path::blocking_parent(&doc.body, &target_path) {
                    not_numbers.insert(doc.id.clone(), above.clone());
                }
            }
        }
        Ok(())
    })?;
    for (_, bytes) in view.scan(
        Space::Outbox,
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        Direction::Forward,
        usize::MAX,
    )? {
        let (inc, _) = counters::decode_outbox(&bytes)?;
        if inc.collection == def.target_collection && inc.field == def.target_field {
            let entry = observed.entry(inc.id).or_insert(Amount::Int(0));
            *entry = entry.add(inc.amount);
        }
    }
    let groups: BTreeSet<&String> = truth
        .keys()
        .chain(observed.keys())
        .chain(not_numbers.keys())
        .collect();
    Ok(groups
        .into_iter()
        .map(|group| {
            let of = |map: &BTreeMap<String, Amount>| map.get(group).copied().unwrap_or(Amount::Int(0));
            Tally {
                group: group.clone(),
                expected: of(&truth),
                have: of(&observed),
                not_a_number: not_numbers.get(group).cloned(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::committer::Backfilled;
    use crate::engine::config::CollectionConfig;
    use crate::storage::MemoryStorage;
    use crate::{Db, Options};

    fn counter(filter: serde_json::Value) -> CollectionConfig {
        CollectionConfig::from_json(
            &json!({"counters": [{"name": "n", "group_by": "g", "where": filter,
            "target": {"c": "totals", "field": "n"}}]}),
        )
        .unwrap()
    }

    fn waiting(db: &Db) -> Option<u64> {
        db.collection("src")
            .unwrap()
            .config()
            .backfilling
            .get("n")
            .copied()
    }

    fn done(generation: u64) -> Option<Backfilled> {
        Some(Backfilled {
            collection: "src".into(),
            name: "n".into(),
            generation,
        })
    }

    /// A recount that read an earlier definition (the counter was defined
    /// anew while it read) does not end the later definition's wait: that
    /// one's own backfill still has to come.
    #[test]
    fn a_backfill_ends_only_its_own_declarations_wait() {
        let db = Db::open_with_storage(Arc::new(MemoryStorage::new()), Options::default()).unwrap();
        db.submit_config("src", counter(json!(null))).unwrap();
        let first = waiting(&db).expect("declared: waits for its backfill");
        // Declared again as it is: the same wait.
        db.submit_config("src", counter(json!(null))).unwrap();
        assert_eq!(waiting(&db), Some(first));
        // Defined anew: a wait of its own, which the first one's end leaves.
        db.submit_config("src", counter(json!({"kind": "a"}))).unwrap();
        let second = waiting(&db).expect("defined anew: waits");
        assert_ne!(second, first);
        db.submit_increments(Vec::new(), done(first)).unwrap();
        assert_eq!(waiting(&db), Some(second), "a stale backfill ended a newer wait");
        // A backfill with nothing to correct commits no change: it takes no
        // sequence number, which would be a commit the feed has nothing for.
        let seq = db.submit_increments(Vec::new(), done(second)).unwrap().seq;
        assert_eq!((seq, db.durable_seq()), (0, 0));
        assert_eq!(waiting(&db), None);
        // Removed while waiting: the wait goes with it.
        db.submit_config("src", counter(json!({"kind": "b"}))).unwrap();
        db.submit_config("src", CollectionConfig::default()).unwrap();
        assert_eq!(waiting(&db), None);
    }
}
