//! A grow-only set of unique inserts: every insert acknowledged before a read
//! began is in it, and nothing is in it that no insert attempted (or that an
//! insert known to have failed was to add).
//!
//! Events (`value`): an `add` invokes `{"e"}`; a `read` completes `{"elements": [..]}`.

use std::collections::{HashMap, HashSet};

use super::{Anomaly, kinds};
use crate::history::{Completed, Kind, Op, pair};

/// Anomalies in the `workload` part of `ops`.
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let completed = pair(ops, workload);
    let adds: HashMap<i64, &Completed<'_>> = completed
        .iter()
        .filter(|op| op.invoke.f == "add")
        .filter_map(|op| Some((op.invoke.value["e"].as_i64()?, op)))
        .collect();
    let mut out = Vec::new();
    for read in completed
        .iter()
        .filter(|op| op.invoke.f == "read" && op.kind() == Kind::Ok)
    {
        let seen: HashSet<i64> = read.value()["elements"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_i64()).collect())
            .unwrap_or_default();
        let at = read.invoke.index;
        let mut lost: Vec<i64> = adds
            .iter()
            .filter(|(e, add)| add.kind() == Kind::Ok && add.end() < read.start() && !seen.contains(*e))
            .map(|(e, _)| *e)
            .collect();
        lost.sort_unstable();
        if !lost.is_empty() {
            out.push(Anomaly::new(
                workload,
                kinds::LOST_WRITE,
                format!("read {at} misses {} acknowledged inserts: {lost:?}", lost.len()),
            ));
        }
        for e in seen {
            match adds.get(&e) {
                None => out.push(Anomaly::new(
                    workload,
                    kinds::GARBAGE_READ,
                    format!("read {at} has {e}, which nothing inserted"),
                )),
                Some(add) if add.kind() == Kind::Fail => out.push(Anomaly::new(
                    workload,
                    kinds::ABORTED_READ,
                    format!("read {at} has {e}, whose insert {} failed", add.invoke.index),
                )),
                Some(add) if add.start() > read.end() => out.push(Anomaly::new(
                    workload,
                    kinds::NONLINEARIZABLE,
                    format!("read {at} has {e}, inserted only after the read ended"),
                )),
                Some(_) => {}
            }
        }
    }
    out
}
