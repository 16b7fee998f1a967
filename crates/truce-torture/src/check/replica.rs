//! Replicas of a collection that purges its tombstones: each replica, caught
//! up once the writers were done, holds exactly the server's documents, and
//! holds only values some writer wrote (or may have: a put that certainly
//! failed wrote nothing).
//!
//! And at every page, not only at the end (a replica refused later drops its
//! copy, and with it the evidence): once a replica has read past a
//! document's last change, a delete, it does not hold the document.
//!
//! Events (`value`): a writer's `put` invokes `{"id", "w"}` (`w` unique per
//! put) and completes with the commit's `seq` added, a `delete` likewise with
//! `{"id"}`; each page a replica read completes `pull` or `changes` with
//! `{"at", "changes": [[id, w or null], ..], "upto"}` (`upto`: the commit it
//! has read up to, within it for `_pull`); a refused page is `fail` and
//! followed by a `reset` completing `{"route"}`; and each replica ends with
//! `final` completing `{"route", "replica": {id: w}, "server": {id: w}}`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::{Anomaly, kinds};
use crate::history::{Kind, Op, pair};

/// Anomalies in the `workload` part of `ops`.
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let completed = pair(ops, workload);
    // Each put writes a `w` of its own: how it ended.
    let puts: HashMap<i64, Kind> = completed
        .iter()
        .filter(|op| op.invoke.f == "put")
        .filter_map(|op| Some((op.invoke.value["w"].as_i64()?, op.kind())))
        .collect();
    let mut out = Vec::new();
    let mut flag = |kind: &str, detail: String| out.push(Anomaly::new(workload, kind, detail));
    missed_deletes(&completed, &mut flag);
    let mut garbage = |at: String, w: &Value| {
        if w.is_null() {
            return;
        }
        match w.as_i64().and_then(|w| puts.get(&w)) {
            None => flag(
                kinds::GARBAGE_READ,
                format!("{at} holds w = {w}, which no put wrote"),
            ),
            Some(Kind::Fail) => flag(
                kinds::ABORTED_READ,
                format!("{at} holds w = {w}, whose put certainly failed"),
            ),
            Some(_) => {}
        }
    };
    let mut routes_read = BTreeSet::new();
    for page in completed
        .iter()
        .filter(|op| matches!(op.invoke.f.as_str(), "pull" | "changes") && op.kind() == Kind::Ok)
    {
        routes_read.insert(page.invoke.f.as_str());
        for change in page.value()["changes"].as_array().into_iter().flatten() {
            garbage(
                format!("{} page {} ({change})", page.invoke.f, page.invoke.index),
                &change[1],
            );
        }
    }
    let mut finished = BTreeSet::new();
    let mut diverged = Vec::new();
    for end in completed
        .iter()
        .filter(|op| op.invoke.f == "final" && op.kind() == Kind::Ok)
    {
        let value = end.value();
        let route = value["route"].as_str().unwrap_or_default();
        finished.insert(route);
        let empty = serde_json::Map::new();
        let copy = value["replica"].as_object().unwrap_or(&empty);
        let server = value["server"].as_object().unwrap_or(&empty);
        for (id, w) in copy.iter().chain(server) {
            garbage(format!("the {route} replica's final {id}"), w);
        }
        let ids: BTreeSet<&String> = copy.keys().chain(server.keys()).collect();
        for id in ids {
            let (mine, theirs) = (copy.get(id), server.get(id));
            if mine != theirs {
                diverged.push(format!(
                    "the {route} replica holds {id} = {}, the server {}",
                    mine.map_or("nothing".to_string(), Value::to_string),
                    theirs.map_or("nothing".to_string(), Value::to_string)
                ));
            }
        }
    }
    for route in routes_read.difference(&finished) {
        diverged.push(format!("the {route} replica never caught up to compare its copy"));
    }
    for detail in diverged {
        flag(kinds::REPLICA_DIVERGED, detail);
    }
    out
}

/// Each replica's pages replayed in order: once a page has read past a
/// document's last change, which is a delete, the replica must not hold the
/// document. Documents with a write of unknown outcome are left out (it may
/// have landed after the delete), as are the pages of a replica before its
/// reset's copy is rebuilt (a reset clears it).
fn missed_deletes(completed: &[crate::history::Completed], flag: &mut impl FnMut(&str, String)) {
    let mut last: HashMap<&str, (u64, bool)> = HashMap::new();
    let mut unsure: HashSet<&str> = HashSet::new();
    for op in completed
        .iter()
        .filter(|op| matches!(op.invoke.f.as_str(), "put" | "delete"))
    {
        let Some(id) = op.invoke.value["id"].as_str() else {
            continue;
        };
        match op.kind() {
            Kind::Ok => {
                let Some(seq) = op.value()["seq"].as_u64() else {
                    unsure.insert(id);
                    continue;
                };
                let entry = last.entry(id).or_insert((0, false));
                if seq >= entry.0 {
                    *entry = (seq, op.invoke.f == "delete");
                }
            }
            Kind::Info => {
                unsure.insert(id);
            }
            _ => {}
        }
    }
    let deleted_last: HashMap<&str, u64> = last
        .into_iter()
        .filter(|(id, (_, deleted))| *deleted && !unsure.contains(id))
        .map(|(id, (seq, _))| (id, seq))
        .collect();
    for route in ["pull", "changes"] {
        let mut copy: BTreeMap<String, Value> = BTreeMap::new();
        for op in completed.iter().filter(|op| op.kind() == Kind::Ok) {
            let value = op.value();
            if op.invoke.f == "reset" && value["route"] == route {
                copy.clear();
                continue;
            }
            if op.invoke.f != route {
                continue;
            }
            for change in value["changes"].as_array().into_iter().flatten() {
                let Some(id) = change[0].as_str() else {
                    continue;
                };
                if change[1].is_null() {
                    copy.remove(id);
                } else {
                    copy.insert(id.to_string(), change[1].clone());
                }
            }
            // Past the delete's commit: a `_pull` checkpoint at that commit
            // may stand before the document within it.
            let Some(upto) = value["upto"].as_u64() else {
                continue;
            };
            for (id, w) in &copy {
                if let Some(&deleted) = deleted_last.get(id.as_str())
                    && deleted < upto
                {
                    flag(
                        kinds::REPLICA_DIVERGED,
                        format!(
                            "the {route} replica holds {id} = {w} after page {} read up to commit {upto}, \
                             though {id}'s last change, a delete, committed at {deleted}",
                            op.invoke.index
                        ),
                    );
                }
            }
        }
    }
}
