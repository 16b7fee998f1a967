//! Counters: `PATCH … {"$inc"}` under an `Idempotency-Key`, retried with the
//! same key while the outcome is unknown; and plain reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, ERROR_PAUSE, Process, Workload, kind_of, pause_after};
use crate::history::Kind;
use crate::http::{Outcome, send};

const COLLECTION: &str = "ctr";
/// Counters in play: one hot document, and one less so.
const KEYS: u64 = 2;
/// How long an increment is retried (same key) before it is left `info`.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// How often an operation is an increment rather than a read.
const ADD_PROBABILITY: f64 = 0.6;
/// The largest increment.
const DELTA_MAX: i64 = 5;

/// What the clients share: the source of unique idempotency keys.
#[derive(Default)]
pub struct State {
    adds: AtomicU64,
}

fn path(k: u64) -> String {
    format!("/v1/c/{COLLECTION}/c{k}")
}

/// One client until the run stops.
pub async fn client(ctx: Arc<Ctx>, state: Arc<State>, mut rng: StdRng, run: u64) {
    let mut process = Process::new(&ctx, Workload::Counter);
    while !ctx.stopped() {
        let k = rng.random_range(0..KEYS);
        let kind = if rng.random_bool(ADD_PROBABILITY) {
            let delta = rng.random_range(1..=DELTA_MAX);
            let key = format!("torture-{run}-{}", state.adds.fetch_add(1, Ordering::Relaxed));
            add(&mut process, k, delta, &key).await
        } else {
            read(&mut process, k).await
        };
        pause_after(kind).await;
    }
}

/// Adds `delta` to counter `k`, retrying with the same idempotency key while
/// the outcome is unknown: the key makes the retries one increment.
async fn add(process: &mut Process, k: u64, delta: i64, key: &str) -> Kind {
    let invoked = json!({"k": k, "delta": delta, "key": key});
    process.invoke("add", invoked.clone());
    let body = json!({"$inc": {"n": delta}, "$upsert": true});
    let started = Instant::now();
    let mut unknown = None;
    loop {
        let request = process
            .ctx()
            .http
            .request(Method::PATCH, &path(k))
            .header("Idempotency-Key", key)
            .json(&body);
        let outcome = send(request).await;
        let retry = match &outcome {
            Outcome::Ok { .. } => false,
            Outcome::Info(why) => {
                unknown = Some(why.clone());
                true
            }
            // Refused before it reached the server: try again while it restarts.
            Outcome::Fail { status: 0, .. } => true,
            Outcome::Fail { .. } => false,
        };
        if !retry || started.elapsed() > RETRY_FOR {
            // A definite failure after an unknown attempt is still unknown.
            let outcome = match (kind_of(&outcome), unknown) {
                (Kind::Fail, Some(why)) => Outcome::Info(why),
                _ => outcome,
            };
            return process.complete_with("add", &outcome, invoked.clone(), invoked);
        }
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}

/// Reads counter `k` (an absent counter is 0).
async fn read(process: &mut Process, k: u64) -> Kind {
    process.invoke("read", json!({"k": k}));
    let outcome = process.ctx().http.get(&path(k)).await;
    let value = match &outcome {
        Outcome::Ok { body, .. } => body["n"].as_i64().unwrap_or(0),
        _ if outcome.is_not_found() => 0,
        _ => return process.complete_with("read", &outcome, Value::Null, json!({"k": k})),
    };
    process.complete("read", Kind::Ok, json!({"k": k, "value": value}), None);
    Kind::Ok
}

/// Reads every counter after everything else (and after the final restart).
pub async fn finish(ctx: &Arc<Ctx>) {
    let mut process = Process::new(ctx, Workload::Counter);
    for k in 0..KEYS {
        let kind = read(&mut process, k).await;
        if kind != Kind::Ok {
            process.unexpected(format!("the final read of counter {k} ended {kind:?}"));
        }
    }
}
