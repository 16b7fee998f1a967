//! List-append transactions, judged by `adya` (Elle's list-append checker) for
//! strict serializability: G0, G1a–c, G-single, G2-item, lost updates,
//! real-time violations.

use std::time::Duration;

use adya::{History, Opts, Valid, Workload};
use serde_json::{Value, json};

use super::{Anomaly, kinds};
use crate::history::{Kind, Op};

/// The consistency model the list-append history must satisfy.
pub const MODEL: &str = "strict-serializable";

/// How long adya may search for cycles in one strongly connected component.
const CYCLE_SEARCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Anomalies in the `workload` part of `ops` (already in history order).
pub fn check(ops: &[Op], workload: &str) -> Vec<Anomaly> {
    let events: Vec<Value> = ops
        .iter()
        .filter(|op| op.workload == workload)
        .enumerate()
        .map(|(index, op)| {
            let kind = match op.kind {
                Kind::Invoke => "invoke",
                Kind::Ok => "ok",
                Kind::Fail => "fail",
                Kind::Info => "info",
            };
            json!({"index": index, "type": kind, "f": op.f, "process": op.process,
                   "time": op.time, "value": op.value})
        })
        .collect();
    if events.is_empty() {
        return Vec::new();
    }
    let history = match History::from_json(&Value::Array(events).to_string()) {
        Ok(history) => history,
        Err(e) => {
            return vec![Anomaly::new(
                workload,
                kinds::UNKNOWN,
                format!("malformed history: {e}"),
            )];
        }
    };
    let opts = Opts {
        models: vec![MODEL.into()],
        timeout: CYCLE_SEARCH_TIMEOUT,
        ..Opts::default()
    };
    let report = adya::check(&history, Workload::ListAppend, &opts);
    let mut out: Vec<Anomaly> = report
        .anomalies
        .iter()
        .map(|(kind, found)| {
            let first = found.first().map_or(String::new(), |a| a.explanation.clone());
            Anomaly::new(
                workload,
                kind,
                format!("{} found; the first: {first}", found.len()),
            )
        })
        .collect();
    match report.valid {
        Valid::True => Vec::new(),
        Valid::False if !out.is_empty() => out,
        _ => {
            out.push(Anomaly::new(
                workload,
                kinds::UNKNOWN,
                format!(
                    "adya: {:?}, anomaly types {:?}, not {:?}",
                    report.valid, report.anomaly_types, report.not
                ),
            ));
            out
        }
    }
}
