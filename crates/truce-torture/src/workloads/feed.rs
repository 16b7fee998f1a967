//! The change feed: writers insert unique documents (one commit each), and one
//! subscriber follows `_changes` by long poll from its own checkpoint, across
//! every kill and restart, as a replicating client would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, Process, Workload, pause_after};
use crate::history::Kind;
use crate::http::Outcome;

const COLLECTION: &str = "feed";
/// Changes per page.
const PAGE_CHANGES: u32 = 500;
/// How long one long poll waits for a change.
const LONGPOLL_MS: u64 = 500;
/// Between two inserts of one writer.
const INSERT_EVERY: Duration = Duration::from_millis(5);
/// How long the subscriber may take to catch up once the run is over.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What the writers and the subscriber share.
#[derive(Default)]
pub struct State {
    elements: AtomicU64,
    /// The highest sequence a writer was acknowledged with.
    acknowledged_seq: AtomicU64,
    /// Set once every writer is done: the subscriber stops when caught up.
    finishing: AtomicBool,
}

impl State {
    /// Tells the subscriber that no more writes will come.
    pub fn finish(&self) {
        self.finishing.store(true, Ordering::SeqCst);
    }
}

/// One writer until the run stops.
pub async fn writer(ctx: Arc<Ctx>, state: Arc<State>) {
    let mut process = Process::new(&ctx, Workload::Feed);
    while !ctx.stopped() {
        let e = state.elements.fetch_add(1, Ordering::Relaxed) + 1;
        let invoked = json!({"e": e});
        process.invoke("insert", invoked.clone());
        let outcome = process
            .ctx()
            .http
            .send_json(Method::PUT, &format!("/v1/c/{COLLECTION}/f{e}"), &json!({"e": e}))
            .await;
        let ok = match &outcome {
            Outcome::Ok { body, .. } => {
                let seq = body["seq"].as_u64().unwrap_or(0);
                state.acknowledged_seq.fetch_max(seq, Ordering::SeqCst);
                json!({"e": e, "seq": seq})
            }
            _ => Value::Null,
        };
        let kind = process.complete_with("insert", &outcome, ok, invoked);
        pause_after(kind).await;
        tokio::time::sleep(INSERT_EVERY).await;
    }
}

/// The subscriber: follows the feed until the writers are done and it has
/// seen everything acknowledged (or it runs out of time to catch up).
pub async fn subscriber(ctx: Arc<Ctx>, state: Arc<State>) {
    let mut process = Process::new(&ctx, Workload::Feed);
    let mut since = 0u64;
    let mut finishing_since: Option<Instant> = None;
    loop {
        if state.finishing.load(Ordering::SeqCst) {
            let started = *finishing_since.get_or_insert_with(Instant::now);
            if started.elapsed() > CATCH_UP {
                process.unexpected(format!(
                    "the subscriber did not catch up: at {since}, acknowledged up to {}",
                    state.acknowledged_seq.load(Ordering::SeqCst)
                ));
                return;
            }
        }
        let invoked = json!({"since": since});
        process.invoke("changes", invoked.clone());
        let path = format!(
            "/v1/c/{COLLECTION}/_changes?since={since}&limit={PAGE_CHANGES}&feed=longpoll&timeout={LONGPOLL_MS}"
        );
        let outcome = process.ctx().http.get(&path).await;
        let Outcome::Ok { body, .. } = &outcome else {
            let kind = process.complete_with("changes", &outcome, Value::Null, invoked);
            pause_after(kind).await;
            continue;
        };
        let results: Vec<Value> = body["results"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .map(|r| {
                        let e = r["id"]
                            .as_str()
                            .and_then(|id| id.strip_prefix('f'))
                            .and_then(|e| e.parse::<i64>().ok());
                        json!([r["seq"], e])
                    })
                    .collect()
            })
            .unwrap_or_default();
        let last_seq = body["last_seq"].as_u64().unwrap_or(since);
        let empty = results.is_empty();
        process.complete(
            "changes",
            Kind::Ok,
            json!({"since": since, "results": results, "last_seq": last_seq}),
            None,
        );
        since = since.max(last_seq);
        if empty
            && state.finishing.load(Ordering::SeqCst)
            && since >= state.acknowledged_seq.load(Ordering::SeqCst)
        {
            return;
        }
    }
}
