//! Counters incremented with `$inc` under idempotency keys: every read lies
//! between the increments acknowledged before it began and those attempted
//! before it ended. Above that, an increment was applied twice; below, an
//! acknowledged one was lost.
//!
//! Events (`value`): an `add` invokes `{"k", "delta"}` (positive); a `read`
//! completes `{"k", "value"}`.

use super::{Anomaly, kinds};
use crate::history::{Kind, Op, by_key, pair};

/// Anomalies in the `workload` part of `ops`.
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let completed = pair(ops, workload);
    let mut out = Vec::new();
    for (k, ops) in by_key(&completed) {
        // (index, delta), sorted, with running sums for the bounds.
        let mut acknowledged: Vec<(u64, i64)> = Vec::new();
        let mut attempted: Vec<(u64, i64)> = Vec::new();
        for op in ops.iter().filter(|op| op.invoke.f == "add") {
            let delta = op.invoke.value["delta"].as_i64().unwrap_or(0);
            if op.kind() == Kind::Ok {
                acknowledged.push((op.end(), delta));
            }
            if op.kind() != Kind::Fail {
                attempted.push((op.start(), delta));
            }
        }
        let sums = |mut v: Vec<(u64, i64)>| {
            v.sort_unstable();
            let mut total = 0;
            v.into_iter()
                .map(|(index, delta)| {
                    total += delta;
                    (index, total)
                })
                .collect::<Vec<_>>()
        };
        let (acknowledged, attempted) = (sums(acknowledged), sums(attempted));
        // The running sum of every entry with index below `bound`.
        let upto = |sums: &[(u64, i64)], bound: u64| {
            let at = sums.partition_point(|(index, _)| *index < bound);
            if at == 0 { 0 } else { sums[at - 1].1 }
        };
        for read in ops
            .iter()
            .filter(|op| op.invoke.f == "read" && op.kind() == Kind::Ok)
        {
            let Some(value) = read.value()["value"].as_i64() else {
                continue;
            };
            let low = upto(&acknowledged, read.start());
            let high = upto(&attempted, read.end());
            let at = read.invoke.index;
            if value < low {
                out.push(Anomaly::new(
                    workload,
                    kinds::LOST_INCREMENT,
                    format!("key {k}: read {at} saw {value}, but {low} was acknowledged before it began"),
                ));
            }
            if value > high {
                out.push(Anomaly::new(
                    workload,
                    kinds::DOUBLE_INCREMENT,
                    format!("key {k}: read {at} saw {value}, but only {high} was attempted before it ended"),
                ));
            }
        }
    }
    out
}
