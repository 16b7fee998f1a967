//! List-append transactions over HTTP: read documents with `GET` (keeping their
//! versions), then `POST /v1/tx` with a `check` of every version read and a
//! `$push` of a unique value for each append. The commit validates the reads,
//! so the whole transaction takes effect at the commit, all or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::rngs::StdRng;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, Process, Workload, pause_after};
use crate::history::Kind;
use crate::http::Outcome;

const COLLECTION: &str = "la";
/// Documents in play at once: few, so transactions contend.
const HOT_KEYS: u64 = 5;
/// Transactions before the hot set moves on to fresh documents (Elle's key
/// rotation): short lists keep the history and the check small.
const TXNS_PER_GENERATION: u64 = 100;
/// Documents one transaction touches, at most.
const KEYS_PER_TXN_MAX: u64 = 3;
/// Documents per transaction of the final read: within the server's
/// 1,000 ops per transaction.
const FINAL_READ_KEYS: usize = 500;
/// Tries of each final read before giving up on it.
const FINAL_READ_TRIES: u32 = 50;

/// What the clients share.
#[derive(Default)]
pub struct State {
    started: AtomicU64,
    values: AtomicU64,
}

/// One planned micro-operation on document `k`.
#[derive(Clone, Copy)]
enum Mop {
    Read(u64),
    Append(u64, u64),
}

fn path(k: u64) -> String {
    format!("/v1/c/{COLLECTION}/k{k}")
}

/// One client until the run stops.
pub async fn client(ctx: Arc<Ctx>, state: Arc<State>, mut rng: StdRng) {
    let mut process = Process::new(&ctx, Workload::ListAppend);
    while !ctx.stopped() {
        let generation = state.started.fetch_add(1, Ordering::Relaxed) / TXNS_PER_GENERATION;
        let count = rng.random_range(1..=KEYS_PER_TXN_MAX);
        let mut keys: Vec<u64> = Vec::new();
        while (keys.len() as u64) < count {
            let k = generation * HOT_KEYS + rng.random_range(0..HOT_KEYS);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let plan: Vec<Mop> = keys
            .into_iter()
            .map(|k| {
                if rng.random_bool(0.5) {
                    Mop::Append(k, state.values.fetch_add(1, Ordering::Relaxed) + 1)
                } else {
                    Mop::Read(k)
                }
            })
            .collect();
        let kind = transaction(&mut process, &plan).await;
        pause_after(kind).await;
    }
}

/// The micro-ops as invoked: reads not yet known. An append reads its list
/// first (the read is part of the transaction, so a writer that built on a
/// stale list shows up as a lost update).
fn planned(plan: &[Mop]) -> Value {
    let mut mops = Vec::new();
    for m in plan {
        match *m {
            Mop::Read(k) => mops.push(json!(["r", k, null])),
            Mop::Append(k, v) => mops.extend([json!(["r", k, null]), json!(["append", k, v])]),
        }
    }
    Value::Array(mops)
}

/// The document's version and list; an absent document is version 0, empty.
async fn read(process: &Process, k: u64) -> Result<(u64, Vec<u64>), Outcome> {
    let outcome = process.ctx().http.get(&path(k)).await;
    match &outcome {
        Outcome::Ok { body, .. } => {
            let version = body["_version"].as_u64().unwrap_or(0);
            let items = serde_json::from_value(body["items"].clone()).unwrap_or_default();
            Ok((version, items))
        }
        _ if outcome.is_not_found() => Ok((0, Vec::new())),
        _ => Err(outcome),
    }
}

/// Runs `plan` as one transaction and records it; returns how it ended.
async fn transaction(process: &mut Process, plan: &[Mop]) -> Kind {
    let invoked = planned(plan);
    process.invoke("txn", invoked.clone());
    let mut done = Vec::new();
    let mut ops = Vec::new();
    for m in plan {
        let (Mop::Read(k) | Mop::Append(k, _)) = *m;
        let (version, items) = match read(process, k).await {
            Ok(read) => read,
            // Nothing was written yet: a read that did not answer changes nothing.
            Err(outcome) => {
                process.complete("txn", Kind::Fail, invoked, outcome.error());
                return Kind::Fail;
            }
        };
        let id = format!("k{k}");
        ops.push(json!({"op": "check", "c": COLLECTION, "id": id, "version": version}));
        done.push(json!(["r", k, items]));
        if let Mop::Append(_, v) = *m {
            ops.push(json!({"op": "patch", "c": COLLECTION, "id": id,
                            "update": {"$push": {"items": v}, "$upsert": true}}));
            done.push(json!(["append", k, v]));
        }
    }
    let outcome = process
        .ctx()
        .http
        .send_json(Method::POST, "/v1/tx", &json!({"source": "torture", "ops": ops}))
        .await;
    process.complete_with("txn", &outcome, Value::Array(done), invoked)
}

/// Reads every document the run used, after everything else, in read-only
/// transactions of at most `FINAL_READ_KEYS` documents: an acknowledged
/// append missing from them is a violation adya sees.
pub async fn finish(ctx: &Arc<Ctx>, state: &State) {
    let generations = state
        .started
        .load(Ordering::Relaxed)
        .div_ceil(TXNS_PER_GENERATION);
    let plan: Vec<Mop> = (0..generations * HOT_KEYS).map(Mop::Read).collect();
    let mut process = Process::new(ctx, Workload::ListAppend);
    for chunk in plan.chunks(FINAL_READ_KEYS) {
        let mut by_outcome: BTreeMap<&str, u32> = BTreeMap::new();
        for _ in 0..FINAL_READ_TRIES {
            let kind = transaction(&mut process, chunk).await;
            if kind == Kind::Ok {
                break;
            }
            *by_outcome
                .entry(if kind == Kind::Fail { "fail" } else { "info" })
                .or_default() += 1;
            tokio::time::sleep(super::ERROR_PAUSE).await;
        }
        if by_outcome.values().sum::<u32>() == FINAL_READ_TRIES {
            process.unexpected(format!("a final read never committed: {by_outcome:?}"));
        }
    }
}
