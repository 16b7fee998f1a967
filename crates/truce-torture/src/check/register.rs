//! Registers written by compare-and-set on `_version`: linearizability, key by
//! key.
//!
//! Every successful write goes from version `n` to `n + 1` and writes a value
//! no other write uses, so the version a read returns says exactly where in
//! the register's one order it falls: after the write that made that version,
//! before the next. A history is linearizable iff that order agrees with real
//! time: an operation finished before another began never sits later in it.
//! A porcupine-style search is not needed — versions remove the guessing.
//!
//! Events (`value`): a read completes `{"k", "version", "value"}` (version 0,
//! value `null`: absent); a `cas` invokes `{"k", "expect", "value"}`, completes
//! `ok` with `{"version"}` (the new one) or `fail` with `{"current": {"version",
//! "value"}}` when a conflict returned the current document.

use std::collections::HashMap;

use serde_json::Value;

use super::{Anomaly, kinds};
use crate::history::{Completed, Kind, Op, by_key, pair};

/// Where an operation sits in a register's order: a write of version `n` is
/// `(n, 0)`, a read of version `n` is `(n, 1)`.
type Position = (u64, u8);

struct Placed {
    start: u64,
    end: u64,
    position: Position,
    what: String,
}

/// Anomalies in the `workload` part of `ops`.
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let completed = pair(ops, workload);
    by_key(&completed)
        .into_iter()
        .flat_map(|(k, ops)| check_key(workload, k, &ops))
        .collect()
}

/// A read's observation: `(version, value)`.
fn observed(value: &Value) -> Option<(u64, Value)> {
    Some((value["version"].as_u64()?, value["value"].clone()))
}

fn check_key(workload: &str, k: i64, ops: &[&Completed<'_>]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut flag =
        |kind: &str, detail: String| out.push(Anomaly::new(workload, kind, format!("key {k}: {detail}")));
    // Writes by the value they write (unique), and the version each ok write made.
    let mut writes: HashMap<String, &Completed<'_>> = HashMap::new();
    let mut made: HashMap<u64, &Completed<'_>> = HashMap::new();
    let mut placed = Vec::new();
    for op in ops.iter().filter(|op| op.invoke.f == "cas") {
        writes.insert(op.invoke.value["value"].to_string(), op);
        if op.kind() == Kind::Ok {
            let expect = op.invoke.value["expect"].as_u64().unwrap_or(0);
            let Some(version) = op.value()["version"].as_u64() else {
                flag(
                    kinds::GARBAGE_READ,
                    format!("cas {} answered no version", op.invoke.index),
                );
                continue;
            };
            if version != expect + 1 {
                flag(
                    kinds::LOST_UPDATE,
                    format!(
                        "cas {} expected version {expect} and made {version}",
                        op.invoke.index
                    ),
                );
            }
            if let Some(other) = made.insert(version, op) {
                flag(
                    kinds::LOST_UPDATE,
                    format!(
                        "writes {} and {} were both acknowledged as version {version}",
                        other.invoke.index, op.invoke.index
                    ),
                );
            }
        }
    }
    // Every observation: reads, and the current document a conflict carried.
    let mut observations = Vec::new();
    for op in ops {
        match (op.invoke.f.as_str(), op.kind()) {
            ("read", Kind::Ok) => observations.extend(observed(op.value()).map(|o| (*op, o))),
            ("cas", Kind::Fail) => observations.extend(observed(&op.value()["current"]).map(|o| (*op, o))),
            _ => {}
        }
    }
    for (op, (version, value)) in observations {
        let what = format!("op {} read version {version} = {value}", op.invoke.index);
        if version == 0 {
            if !value.is_null() {
                flag(kinds::GARBAGE_READ, what.clone());
            }
        } else {
            match writes.get(&value.to_string()) {
                None => {
                    flag(kinds::GARBAGE_READ, format!("{what}, a value no operation wrote"));
                    continue;
                }
                Some(writer) if writer.kind() == Kind::Fail => {
                    flag(
                        kinds::ABORTED_READ,
                        format!("{what}, written by op {} which failed", writer.invoke.index),
                    );
                    continue;
                }
                Some(writer) => {
                    let expect = writer.invoke.value["expect"].as_u64().unwrap_or(0);
                    if expect + 1 != version {
                        flag(
                            kinds::LOST_UPDATE,
                            format!(
                                "{what}, written by op {} on version {expect}",
                                writer.invoke.index
                            ),
                        );
                    }
                    match made.get(&version) {
                        Some(maker) if maker.invoke.index != writer.invoke.index => flag(
                            kinds::LOST_UPDATE,
                            format!(
                                "{what}, but op {} was acknowledged as that version",
                                maker.invoke.index
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            // An `info` write that did happen: it sits at `version`.
                            made.insert(version, writer);
                        }
                    }
                }
            }
        }
        placed.push(Placed {
            start: op.start(),
            end: op.end(),
            position: (version, 1),
            what,
        });
    }
    for (version, writer) in &made {
        placed.push(Placed {
            start: writer.start(),
            end: writer.end(),
            position: (*version, 0),
            what: format!("op {} wrote version {version}", writer.invoke.index),
        });
    }
    real_time(&mut placed, &mut flag);
    out
}

/// Flags every operation that begins after another finished yet sits before it.
fn real_time(placed: &mut [Placed], flag: &mut impl FnMut(&str, String)) {
    let mut by_end: Vec<&Placed> = placed.iter().filter(|p| p.end != u64::MAX).collect();
    by_end.sort_by_key(|p| p.end);
    let mut by_start: Vec<&Placed> = placed.iter().collect();
    by_start.sort_by_key(|p| p.start);
    let mut latest: Option<&Placed> = None;
    let mut next = 0;
    for op in by_start {
        while next < by_end.len() && by_end[next].end < op.start {
            if latest.is_none_or(|l| by_end[next].position > l.position) {
                latest = Some(by_end[next]);
            }
            next += 1;
        }
        if let Some(before) = latest
            && before.position > op.position
        {
            flag(
                kinds::NONLINEARIZABLE,
                format!(
                    "{} began after {} finished, yet sits before it",
                    op.what, before.what
                ),
            );
        }
    }
}
