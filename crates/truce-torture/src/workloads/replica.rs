//! Replicas of a collection that purges its tombstones: writers put and delete
//! documents, and two replicas copy the collection — one through RxDB's
//! `_pull`, one through `_changes` with `from` — across every kill, restart
//! and pause, now and then lagging longer than the tombstones are kept. A
//! replica refused with 410 `history_purged` drops its copy and reads again
//! from the start, as a client must. Once the writers are done each replica
//! catches up and compares its copy with the server's documents: one that
//! missed a purged delete still holds a document the server does not.
//!
//! The writers work on a window of `KEYS` documents that moves on: each new
//! document pushes the oldest out, and a writer deletes each document that
//! left the window, in order, until the delete succeeds (or finds it gone);
//! no writer picks it again (one that picked it just before may still write
//! it once). A delete missed by a replica is so most often the document's
//! last change, which the final comparison sees; a document deleted and
//! written again within the window is then at its next version, or, once
//! its tombstone is purged, a new document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, Process, Workload, pause_after, percent_encode, read_collection};
use crate::history::{Kind, Op};
use crate::http::{Outcome, send};

const COLLECTION: &str = "replica";
/// Documents the writers share at a time: few, so that most deletes hit a
/// document a replica holds.
const KEYS: u64 = 40;
/// Of a writer's operations, the share that starts a new document (and
/// retires the oldest).
const NEW_PROBABILITY: f64 = 0.1;
/// How long the collection keeps a tombstone (`tombstones.keep_seconds`).
pub const KEEP_SECONDS: u64 = 1;
/// Of a writer's other operations, the share that deletes.
const DELETE_PROBABILITY: f64 = 0.35;
/// Between two operations of one writer.
const WRITE_EVERY: Duration = Duration::from_millis(10);
/// Documents per page: small, so a read from the start takes several.
const PAGE_DOCS: u32 = 7;
/// Between two pages once a replica has caught up.
const IDLE: Duration = Duration::from_millis(50);
/// A replica lags after about one page in this many.
const LAG_ONE_IN: u32 = 40;
/// How long it lags: from well under a tombstone's keeping to longer than
/// it and the purge's second between passes, so that a replica resumes
/// before, during and after the purge of what it missed.
const LAG: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(3200));
/// How long a replica may take to catch up once the run is over.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The two ways a replica reads the collection.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// `GET …/_pull?checkpoint=…`: RxDB's checkpoint, which carries `from`.
    Pull,
    /// `GET …/_changes?since=…&from=…&include_docs=true`.
    Changes,
}

impl Route {
    /// Both.
    pub const ALL: [Route; 2] = [Route::Pull, Route::Changes];

    /// Its name in the history (the function of its pages).
    pub fn name(self) -> &'static str {
        match self {
            Route::Pull => "pull",
            Route::Changes => "changes",
        }
    }
}

/// What the writers and the replicas share.
#[derive(Default)]
pub struct State {
    writes: AtomicU64,
    /// The next new document's number: the window is the `KEYS` before it.
    next_key: AtomicU64,
    /// Every document below this number that left the window is deleted.
    retired: AtomicU64,
    /// Set once every writer is done: the replicas catch up and compare.
    finishing: AtomicBool,
}

impl State {
    /// Tells the replicas that no more writes will come.
    pub fn finish(&self) {
        self.finishing.store(true, Ordering::SeqCst);
    }
}

/// Configures the collection to purge its tombstones; before any fault.
pub async fn setup(ctx: &Ctx) -> Result<(), String> {
    let config = json!({"tombstones": {"keep_seconds": KEEP_SECONDS}});
    match ctx
        .http
        .send_json(Method::PUT, &format!("/v1/c/{COLLECTION}/_config"), &config)
        .await
    {
        Outcome::Ok { .. } => Ok(()),
        other => Err(format!("cannot configure {COLLECTION}: {:?}", other.error())),
    }
}

/// Pages refused with `history_purged` in `ops`: each was followed by a
/// `reset` of its replica.
pub fn refusals(ops: &[Op]) -> u64 {
    let name = Workload::Replica.name();
    ops.iter()
        .filter(|op| op.workload == name && op.f == "reset" && op.kind == Kind::Ok)
        .count() as u64
}

/// One writer until the run stops: puts (last writer wins) and deletes.
pub async fn writer(ctx: Arc<Ctx>, state: Arc<State>, mut rng: StdRng) {
    let mut process = Process::new(&ctx, Workload::Replica);
    while !ctx.stopped() {
        let next = state.next_key.load(Ordering::Relaxed);
        let retired = state.retired.load(Ordering::Relaxed);
        let kind = if next >= KEYS && retired < next - KEYS {
            // The oldest document out of the window and not yet deleted:
            // until it is, the writers retry (two may race: one finds it gone).
            let (kind, gone) = delete(&mut process, retired).await;
            if gone {
                let _ = state.retired.compare_exchange(
                    retired,
                    retired + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            kind
        } else if next < KEYS || rng.random_bool(NEW_PROBABILITY) {
            put(
                &mut process,
                &state,
                state.next_key.fetch_add(1, Ordering::Relaxed),
            )
            .await
        } else {
            let n = rng.random_range(next - KEYS..next);
            if rng.random_bool(DELETE_PROBABILITY) {
                delete(&mut process, n).await.0
            } else {
                put(&mut process, &state, n).await
            }
        };
        pause_after(kind).await;
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

/// Writes document `n` with a new `w`, whatever it holds.
async fn put(process: &mut Process, state: &State, n: u64) -> Kind {
    let w = state.writes.fetch_add(1, Ordering::Relaxed) + 1;
    let invoked = json!({"id": format!("r{n}"), "w": w});
    process.invoke("put", invoked.clone());
    let path = format!("/v1/c/{COLLECTION}/r{n}");
    let body = json!({"w": w, "_version": -1});
    let outcome = process.ctx().http.send_json(Method::PUT, &path, &body).await;
    let done = with_seq(&invoked, &outcome);
    process.complete_with("put", &outcome, done, invoked)
}

/// A write's completion: what it was, and the commit it landed in.
fn with_seq(invoked: &Value, outcome: &Outcome) -> Value {
    let mut done = invoked.clone();
    if let Outcome::Ok { body, .. } = outcome {
        done["seq"] = body["seq"].clone();
    }
    done
}

/// Deletes document `n`, whatever it holds; also whether it is certainly
/// gone now (deleted, or a 404: not there).
async fn delete(process: &mut Process, n: u64) -> (Kind, bool) {
    let invoked = json!({"id": format!("r{n}")});
    process.invoke("delete", invoked.clone());
    let path = format!("/v1/c/{COLLECTION}/r{n}?version=-1");
    let outcome = send(process.ctx().http.request(Method::DELETE, &path)).await;
    let done = with_seq(&invoked, &outcome);
    let kind = process.complete_with("delete", &outcome, done, invoked);
    (kind, kind == Kind::Ok || outcome.is_not_found())
}

/// Where a replica stands in the collection's history.
#[derive(Default)]
struct Position {
    /// The `_pull` checkpoint (`null` at the start).
    checkpoint: Value,
    /// The `_changes` position.
    since: u64,
    /// Where the `_changes` reader's history began, once a page said.
    from: Option<u64>,
}

impl Position {
    fn path(&self, route: Route) -> String {
        match route {
            Route::Pull => {
                let mut path = format!("/v1/c/{COLLECTION}/_pull?limit={PAGE_DOCS}");
                if !self.checkpoint.is_null() {
                    let checkpoint = percent_encode(&self.checkpoint.to_string());
                    path.push_str(&format!("&checkpoint={checkpoint}"));
                }
                path
            }
            Route::Changes => {
                let mut path = format!(
                    "/v1/c/{COLLECTION}/_changes?since={}&limit={PAGE_DOCS}&include_docs=true",
                    self.since
                );
                if let Some(from) = self.from {
                    path.push_str(&format!("&from={from}"));
                }
                path
            }
        }
    }

    fn json(&self, route: Route) -> Value {
        match route {
            Route::Pull => json!({"checkpoint": self.checkpoint}),
            Route::Changes => json!({"since": self.since, "from": self.from}),
        }
    }

    /// The commit position this replica has read up to (within that
    /// commit, for a `_pull` checkpoint), 0 at the start.
    fn upto(&self, route: Route) -> u64 {
        match route {
            Route::Pull => self.checkpoint["seq"].as_u64().unwrap_or(0),
            Route::Changes => self.since,
        }
    }

    /// Takes a page's answer: its documents as `[id, w]` (`w` null for a
    /// delete), and where the next page starts.
    fn page(&mut self, route: Route, body: &Value) -> Vec<(String, Option<i64>)> {
        let docs: Vec<(String, Option<i64>)> = match route {
            Route::Pull => body["documents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let id = d["id"].as_str()?.to_string();
                    let deleted = d["_deleted"].as_bool().unwrap_or(false);
                    Some((id, if deleted { None } else { d["w"].as_i64() }))
                })
                .collect(),
            Route::Changes => body["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let id = r["id"].as_str()?.to_string();
                    let deleted = r["deleted"].as_bool().unwrap_or(false);
                    Some((id, if deleted { None } else { r["doc"]["w"].as_i64() }))
                })
                .collect(),
        };
        match route {
            Route::Pull => {
                if !body["checkpoint"].is_null() {
                    self.checkpoint = body["checkpoint"].clone();
                }
            }
            Route::Changes => {
                self.since = body["last_seq"].as_u64().unwrap_or(self.since);
                self.from = body["from"].as_u64().or(self.from);
            }
        }
        docs
    }
}

/// One replica, reading by `route`, until the writers are done and it has
/// caught up and compared its copy with the server's documents (or run out of
/// time to).
pub async fn replica(ctx: Arc<Ctx>, state: Arc<State>, route: Route, mut rng: StdRng) {
    let mut process = Process::new(&ctx, Workload::Replica);
    let f = route.name();
    let mut copy: BTreeMap<String, i64> = BTreeMap::new();
    let mut at = Position::default();
    let mut finishing_since: Option<Instant> = None;
    loop {
        let finishing = state.finishing.load(Ordering::SeqCst);
        if finishing && finishing_since.get_or_insert_with(Instant::now).elapsed() > CATCH_UP {
            process.unexpected(format!("the {f} replica did not catch up within {CATCH_UP:?}"));
            return;
        }
        let invoked = at.json(route);
        process.invoke(f, invoked.clone());
        let outcome = process.ctx().http.get(&at.path(route)).await;
        match &outcome {
            Outcome::Ok { body, .. } => {
                let docs = at.page(route, body);
                let changes: Vec<Value> = docs.iter().map(|(id, w)| json!([id, w])).collect();
                let upto = at.upto(route);
                let page = json!({"at": invoked, "changes": changes, "upto": upto});
                process.complete(f, Kind::Ok, page, None);
                let empty = docs.is_empty();
                for (id, w) in docs {
                    match w {
                        Some(w) => copy.insert(id, w),
                        None => copy.remove(&id),
                    };
                }
                if empty && finishing {
                    if compare(&mut process, route, &copy).await {
                        return;
                    }
                } else if empty {
                    tokio::time::sleep(IDLE).await;
                } else if !finishing && rng.random_ratio(1, LAG_ONE_IN) {
                    tokio::time::sleep(rng.random_range(LAG.0..LAG.1)).await;
                }
            }
            Outcome::Fail {
                status: 410, code, ..
            } if code == "history_purged" => {
                process.complete(f, Kind::Fail, invoked, outcome.error());
                process.invoke("reset", json!({"route": f}));
                copy.clear();
                at = Position::default();
                process.complete("reset", Kind::Ok, json!({"route": f}), None);
            }
            _ => {
                let kind = process.complete_with(f, &outcome, Value::Null, invoked);
                pause_after(kind).await;
            }
        }
    }
}

/// Reads every document the server holds, page by page, and records it
/// beside the replica's copy (`final`); returns whether it could read them.
async fn compare(process: &mut Process, route: Route, copy: &BTreeMap<String, i64>) -> bool {
    process.invoke("final", json!({"route": route.name()}));
    let docs = match read_collection(process.ctx(), COLLECTION).await {
        Ok(docs) => docs,
        Err(outcome) => {
            let kind = process.complete_with("final", &outcome, Value::Null, Value::Null);
            pause_after(kind).await;
            return false;
        }
    };
    let server: BTreeMap<String, Option<i64>> = docs
        .iter()
        .filter_map(|d| Some((d["_id"].as_str()?.to_string(), d["w"].as_i64())))
        .collect();
    process.complete(
        "final",
        Kind::Ok,
        json!({"route": route.name(), "replica": copy, "server": server}),
        None,
    );
    true
}
