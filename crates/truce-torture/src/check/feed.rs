//! The change feed, followed by one subscriber across restarts: every
//! acknowledged commit exactly once, at the sequence it was acknowledged
//! with, in increasing order.
//!
//! Writers insert unique documents (one commit each, never changed again, so
//! the feed's "latest change per document" is every change). Events (`value`):
//! an `insert` invokes `{"e"}` and completes `ok` with `{"e", "seq"}`; each page
//! the subscriber got completes `changes` with `{"since", "results": [[seq, e], ..],
//! "last_seq"}`. The check wants the subscriber to have caught up at the end.

use std::collections::HashMap;

use super::{Anomaly, kinds};
use crate::history::{Completed, Kind, Op, pair};

/// Anomalies in the `workload` part of `ops`.
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let completed = pair(ops, workload);
    let inserts: HashMap<i64, &Completed<'_>> = completed
        .iter()
        .filter(|op| op.invoke.f == "insert")
        .filter_map(|op| Some((op.invoke.value["e"].as_i64()?, op)))
        .collect();
    let mut out = Vec::new();
    let mut flag = |kind: &str, detail: String| out.push(Anomaly::new(workload, kind, detail));
    // Each element delivered, at the sequence it came with.
    let mut delivered: HashMap<i64, u64> = HashMap::new();
    let mut last: Option<(u64, i64)> = None;
    for page in completed
        .iter()
        .filter(|op| op.invoke.f == "changes" && op.kind() == Kind::Ok)
    {
        let results = page.value()["results"].as_array().cloned().unwrap_or_default();
        for change in results {
            let (Some(seq), Some(e)) = (change[0].as_u64(), change[1].as_i64()) else {
                flag(
                    kinds::GARBAGE_READ,
                    format!("page {} has a malformed change {change}", page.invoke.index),
                );
                continue;
            };
            if let Some(earlier) = delivered.insert(e, seq) {
                flag(
                    kinds::FEED_DUPLICATE,
                    format!("{e} delivered at seq {earlier} and again at seq {seq}"),
                );
            } else if let Some((previous, p)) = last
                && seq <= previous
            {
                flag(
                    kinds::FEED_REORDER,
                    format!("{e} at seq {seq} came after {p} at seq {previous}"),
                );
            }
            last = Some((seq, e));
            match inserts.get(&e) {
                None => flag(
                    kinds::GARBAGE_READ,
                    format!("{e} at seq {seq} was never inserted"),
                ),
                Some(insert) if insert.kind() == Kind::Fail => flag(
                    kinds::ABORTED_READ,
                    format!("{e} at seq {seq}, whose insert {} failed", insert.invoke.index),
                ),
                Some(insert) if insert.kind() == Kind::Ok && insert.value()["seq"].as_u64() != Some(seq) => {
                    flag(
                        kinds::FEED_WRONG_SEQ,
                        format!(
                            "{e} delivered at seq {seq}, acknowledged at {}",
                            insert.value()["seq"]
                        ),
                    )
                }
                Some(_) => {}
            }
        }
    }
    let mut missing: Vec<(u64, i64)> = inserts
        .iter()
        .filter(|(e, insert)| insert.kind() == Kind::Ok && !delivered.contains_key(*e))
        .map(|(e, insert)| (insert.value()["seq"].as_u64().unwrap_or(0), *e))
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        flag(
            kinds::FEED_GAP,
            format!(
                "{} acknowledged commits never delivered, (seq, element): {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ),
        );
    }
    out
}
