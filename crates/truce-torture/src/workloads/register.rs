//! Registers: single-document reads, and compare-and-set writes on the version
//! just read (`PUT` with `_version: N`, or `0` to create).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::rngs::StdRng;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, Process, Workload, pause_after};
use crate::history::Kind;
use crate::http::Outcome;

const COLLECTION: &str = "reg";
/// Registers in play: few, so writers race.
const KEYS: u64 = 4;
/// How often a read is followed by a compare-and-set on what it saw.
const CAS_PROBABILITY: f64 = 0.7;

/// What the clients share: the source of unique values.
#[derive(Default)]
pub struct State {
    values: AtomicU64,
}

fn path(k: u64) -> String {
    format!("/v1/c/{COLLECTION}/r{k}")
}

/// `{"version", "value"}` of a document (or of `null`: version 0).
fn observation(doc: &Value) -> Value {
    json!({"version": doc["_version"].as_u64().unwrap_or(0), "value": doc["v"]})
}

/// One client until the run stops.
pub async fn client(ctx: Arc<Ctx>, state: Arc<State>, mut rng: StdRng) {
    let mut process = Process::new(&ctx, Workload::Register);
    while !ctx.stopped() {
        let k = rng.random_range(0..KEYS);
        let (kind, version) = read(&mut process, k).await;
        pause_after(kind).await;
        if let Some(version) = version
            && rng.random_bool(CAS_PROBABILITY)
        {
            let value = state.values.fetch_add(1, Ordering::Relaxed) + 1;
            let kind = cas(&mut process, k, version, value).await;
            pause_after(kind).await;
        }
    }
}

/// Reads register `k`; returns how it ended and the version seen.
async fn read(process: &mut Process, k: u64) -> (Kind, Option<u64>) {
    process.invoke("read", json!({"k": k}));
    let outcome = process.ctx().http.get(&path(k)).await;
    let seen = match &outcome {
        Outcome::Ok { body, .. } => observation(body),
        _ if outcome.is_not_found() => observation(&Value::Null),
        _ => {
            let kind = process.complete_with("read", &outcome, Value::Null, json!({"k": k}));
            return (kind, None);
        }
    };
    let version = seen["version"].as_u64();
    let mut value = seen;
    value["k"] = json!(k);
    process.complete("read", Kind::Ok, value, None);
    (Kind::Ok, version)
}

/// Writes `value` to register `k` if it is still at `expect`.
async fn cas(process: &mut Process, k: u64, expect: u64, value: u64) -> Kind {
    let invoked = json!({"k": k, "expect": expect, "value": value});
    process.invoke("cas", invoked.clone());
    let body = json!({"v": value, "_version": expect});
    let outcome = process.ctx().http.send_json(Method::PUT, &path(k), &body).await;
    match &outcome {
        Outcome::Ok { body, .. } => {
            let done = json!({"k": k, "expect": expect, "value": value, "version": body["version"]});
            process.complete("cas", Kind::Ok, done, None);
            Kind::Ok
        }
        // A conflict carries the current document: a read at the commit point.
        Outcome::Fail {
            status: 409, body, ..
        } => {
            let mut failed = invoked;
            failed["current"] = observation(&body["current"]);
            process.complete("cas", Kind::Fail, failed, outcome.error());
            Kind::Fail
        }
        _ => process.complete_with("cas", &outcome, Value::Null, invoked),
    }
}

/// Reads every register once more, after everything else (and after the final
/// restart): an acknowledged write missing then is a violation.
pub async fn finish(ctx: &Arc<Ctx>) {
    let mut process = Process::new(ctx, Workload::Register);
    for k in 0..KEYS {
        let (kind, _) = read(&mut process, k).await;
        if kind != Kind::Ok {
            process.unexpected(format!("the final read of register {k} ended {kind:?}"));
        }
    }
}
