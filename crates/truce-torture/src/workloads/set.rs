//! A set: unique create-only inserts (`PUT` without a version), and reads of
//! the whole collection page by page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, Process, Workload, pause_after, read_collection};
use crate::history::Kind;

const COLLECTION: &str = "set";
/// Between two reads of the whole set: each is many pages.
const READ_EVERY: Duration = Duration::from_millis(2000);
/// Between two inserts of one client: keeps the set, and its reads, small.
const INSERT_EVERY: Duration = Duration::from_millis(20);

/// What the clients share: the source of unique elements.
#[derive(Default)]
pub struct State {
    elements: AtomicU64,
}

/// One inserting client until the run stops.
pub async fn inserter(ctx: Arc<Ctx>, state: Arc<State>) {
    let mut process = Process::new(&ctx, Workload::Set);
    while !ctx.stopped() {
        let e = state.elements.fetch_add(1, Ordering::Relaxed) + 1;
        let value = json!({"e": e});
        process.invoke("add", value.clone());
        let outcome = process
            .ctx()
            .http
            .send_json(Method::PUT, &format!("/v1/c/{COLLECTION}/e{e}"), &value)
            .await;
        let kind = process.complete_with("add", &outcome, value.clone(), value);
        pause_after(kind).await;
        tokio::time::sleep(INSERT_EVERY).await;
    }
}

/// One reading client until the run stops.
pub async fn reader(ctx: Arc<Ctx>) {
    let mut process = Process::new(&ctx, Workload::Set);
    while !ctx.stopped() {
        read(&mut process).await;
        tokio::time::sleep(READ_EVERY).await;
    }
}

/// Reads the whole set; returns how it ended.
async fn read(process: &mut Process) -> Kind {
    process.invoke("read", Value::Null);
    let docs = match read_collection(process.ctx(), COLLECTION).await {
        Ok(docs) => docs,
        Err(outcome) => return process.complete_with("read", &outcome, Value::Null, Value::Null),
    };
    let elements: Vec<i64> = docs.iter().filter_map(|d| d["e"].as_i64()).collect();
    process.complete("read", Kind::Ok, json!({"elements": elements}), None);
    Kind::Ok
}

/// Reads the set once more after everything else (and the final restart).
pub async fn finish(ctx: &Arc<Ctx>) {
    let mut process = Process::new(ctx, Workload::Set);
    let kind = read(&mut process).await;
    if kind != Kind::Ok {
        process.unexpected(format!("the final read of the set ended {kind:?}"));
    }
}
