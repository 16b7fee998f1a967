//! Replicas of a collection that purges its tombstones: each replica, caught
//! up once the writers were done, holds exactly the server's documents, and
//! holds only values some writer wrote (or may have: a put that certainly
//! failed wrote nothing).
//!
//! Events (`value`): a writer's `put` invokes `{"id", "w"}` (`w` unique per
//! put), a `delete` invokes `{"id"}`; each page a replica read completes
//! `pull` or `changes` with `{"at", "changes": [[id, w or null], ..]}`; a
//! refused page is `fail` and followed by a `reset`; and each replica ends with
//! `final` completing `{"route", "replica": {id: w}, "server": {id: w}}`.

use std::collections::{BTreeSet, HashMap};

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
