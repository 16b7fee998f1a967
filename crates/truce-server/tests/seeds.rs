//! The stories of the seed documents, end to end through HTTP against a real
//! `truce serve`:
//!
//! - seed 000, the heartbeat of `activeSessions`: many tabs heartbeating the
//!   same sessions at once, every heartbeat one PATCH (API.md's example) that
//!   is written only when the path changed or the dedup window passed, and
//!   skipped otherwise — no conflict, no error, one durable write per session
//!   per window plus one per navigation; sessions listed by path through an
//!   index, and expired by a TTL once the tabs are gone;
//! - seed 003, counter caches on a hot summary row: `subscribers` and `opens`
//!   feeding `campaign_metrics` under 32 concurrent writers, in each mode;
//!   every counter ends equal to the ground truth read from the sources, with
//!   no error and no conflict.
//!
//! Each test starts its own server (a free loopback port, a temporary data
//! directory, ended by PID on drop).

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Http, RawConnection, Rng, Tally, enc, now_ms};

/// The concurrent workloads of these tests take turns: on a small machine, two
/// at once would each measure the other (the heartbeats would outlast their
/// dedup window). Setup, checks and TTL waits run in parallel.
static WORKLOAD: Mutex<()> = Mutex::new(());

fn workload_turn() -> std::sync::MutexGuard<'static, ()> {
    WORKLOAD.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Seed 000: the heartbeat
// ---------------------------------------------------------------------------

const SESSIONS: usize = 200;
/// Open tabs per session, each heartbeating.
const TABS: usize = 3;
/// Heartbeats per tab per beat: React StrictMode runs each effect twice.
const CALLS_PER_TAB: usize = 2;
const CALLS_PER_BEAT: usize = SESSIONS * TABS * CALLS_PER_TAB;
/// A beat every 200 ms for 5 s.
const BEAT: Duration = Duration::from_millis(200);
const BEATS: usize = 25;
/// The 5 s of heartbeats take longer when the server cannot keep up (a debug
/// build on a small machine); past this, throughput has collapsed.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Threads sharing the calls of each beat.
const HEARTBEAT_WORKERS: usize = 30;
/// The seed's `HEARTBEAT_DEDUP_MS`.
const DEDUP_MS: u64 = 10_000;
/// The TTL of a session: longer than the dedup window, as it must be — a live
/// session's `lastSeen` is only rewritten once per window, so a shorter TTL
/// would expire sessions whose tabs are still open (docs/counters.md). Ten
/// seconds more than the window, so the checks made while every session must
/// still be live (200 reads, the index) fit before the first expiry even when
/// a loaded machine stretches the 5 s run (with 12 s the test failed once on
/// a busy machine).
const SESSION_TTL_S: u64 = 20;
/// Sessions below this navigate to `/about` at beat `FIRST_MOVE`.
const MOVERS: usize = 10;
const FIRST_MOVE: usize = 10;
/// Sessions below this navigate again, to `/contact`, at beat `SECOND_MOVE`.
const MOVERS_AGAIN: usize = 4;
const SECOND_MOVE: usize = 18;
const LANDING_PATHS: [&str; 4] = ["/", "/blog", "/docs", "/pricing"];

/// Where session `s`'s tabs are at beat `beat`.
fn path_at(s: usize, beat: usize) -> &'static str {
    if s < MOVERS_AGAIN && beat >= SECOND_MOVE {
        "/contact"
    } else if s < MOVERS && beat >= FIRST_MOVE {
        "/about"
    } else {
        LANDING_PATHS[s % LANDING_PATHS.len()]
    }
}

/// How many times session `s` changes path during the run.
fn path_changes(s: usize) -> u64 {
    u64::from(s < MOVERS) + u64::from(s < MOVERS_AGAIN)
}

fn session_id(s: usize) -> String {
    format!("s-{s:03}")
}

/// API.md's heartbeat: written when the path changed or `lastSeen` is older than
/// the dedup window, else skipped; created when absent.
fn heartbeat(s: usize, path: &str) -> Value {
    json!({"$set": {"currentPath": path}, "$currentDate": {"lastSeen": true},
           "$setOnInsert": {"sessionId": session_id(s)},
           "$upsert": true, "$else": "skip",
           "$if": {"$or": [{"currentPath": {"$ne": path}},
                           {"lastSeen": {"$lt": {"$ago": DEDUP_MS}}}]}})
}

/// One heartbeat worker: the calls `worker`, `worker + WORKERS`, … of every beat,
/// where call `6s + k` is call `k` of session `s` — so the six calls of a session
/// go to six different workers and race each other. Also how many whole beats
/// this worker fell behind (finished a beat after the next was due): while it
/// lags, two tabs of a moving session can disagree about its path and
/// overwrite each other.
fn heartbeat_worker(base: &str, worker: usize, start: Instant, written_by: &Mutex<Vec<u64>>) -> (Tally, u64) {
    let mut connection = RawConnection::new(base);
    let mut tally = Tally::default();
    let mut mine = vec![0u64; SESSIONS];
    let mut lag_beats = 0;
    for beat in 0..BEATS {
        let due = start + BEAT * beat as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        for call in (worker..CALLS_PER_BEAT).step_by(HEARTBEAT_WORKERS) {
            let s = call / (TABS * CALLS_PER_TAB);
            let path = format!("/v1/c/activeSessions/{}", session_id(s));
            let body = heartbeat(s, path_at(s, beat));
            let before = tally.written;
            tally.record(&path, connection.call("PATCH", &path, &body));
            mine[s] += tally.written - before;
        }
        let behind = (Instant::now() - due).as_millis() / BEAT.as_millis();
        lag_beats = lag_beats.max(behind as u64);
    }
    let mut written = written_by.lock().unwrap_or_else(|p| p.into_inner());
    for (s, n) in mine.into_iter().enumerate() {
        written[s] += n;
    }
    (tally, lag_beats)
}

/// Follows a collection's change feed (long polls) until `stop`, counting the
/// changes of each document.
fn follow_changes(http: &Http, coll: &str, since: u64, stop: &AtomicBool) -> (BTreeMap<String, u64>, u64) {
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    let mut since = since;
    let mut last_round = false;
    // Bounded: the run is seconds long and each poll waits at most 500 ms.
    for _ in 0..10_000 {
        let path = format!("/v1/c/{coll}/_changes?since={since}&feed=longpoll&timeout=500&limit=10000");
        let page = http.expect(Method::GET, &path, None, 200);
        for change in page["results"].as_array().expect("results") {
            *events
                .entry(change["id"].as_str().expect("id").to_string())
                .or_default() += 1;
        }
        since = page["last_seq"].as_u64().expect("last_seq");
        if last_round {
            return (events, since);
        }
        last_round = stop.load(Ordering::Relaxed);
    }
    panic!("the change feed follower did not stop");
}

/// The sessions of `path`, through the index on `currentPath`: active ones only.
fn sessions_on(http: &Http, path: &str) -> BTreeSet<String> {
    let eq = enc(&json!(path).to_string());
    http.query_all("activeSessions", &format!("&index=by_path&eq={eq}"))
        .iter()
        .map(|d| d["_id"].as_str().expect("_id").to_string())
        .collect()
}

#[test]
fn seed000_heartbeats_never_conflict_write_once_per_window_and_expire() {
    let server = Server::start();
    let http = Http::new(&server);
    let test_started = Instant::now();
    let config = json!({"ttl": {"field": "lastSeen", "seconds": SESSION_TTL_S}});
    http.expect(Method::PUT, "/v1/c/activeSessions/_config", Some(&config), 200);
    let index = json!({"fields": ["currentPath"]});
    let (status, answer) = http.call(Method::PUT, "/v1/c/activeSessions/_indexes/by_path", Some(&index));
    assert!([200, 202].contains(&status), "{answer}");
    http.wait_index_ready("activeSessions", "by_path");

    let since = http.last_seq();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (http, stop) = (http.fresh(), Arc::clone(&stop));
        thread::spawn(move || follow_changes(&http, "activeSessions", since, &stop))
    };
    let written_by = Arc::new(Mutex::new(vec![0u64; SESSIONS]));
    let turn = workload_turn();
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..HEARTBEAT_WORKERS)
        .map(|worker| {
            let (base, written_by) = (server.url(), Arc::clone(&written_by));
            thread::spawn(move || heartbeat_worker(&base, worker, start, &written_by))
        })
        .collect();
    let mut tally = Tally::default();
    let mut lag_beats = 0;
    for worker in workers {
        let (worker_tally, worker_lag) = worker.join().expect("heartbeat worker");
        tally.add(worker_tally);
        lag_beats = lag_beats.max(worker_lag);
    }
    let run = start.elapsed();
    drop(turn);
    stop.store(true, Ordering::Relaxed);
    let (events, _) = follower.join().expect("change feed follower");

    assert!(
        run < RUN_DEADLINE,
        "the heartbeats took {run:?}: throughput collapsed"
    );
    let calls = (CALLS_PER_BEAT * BEATS) as u64;
    eprintln!(
        "seed 000: {calls} heartbeats of {SESSIONS} sessions by {HEARTBEAT_WORKERS} threads in {run:?} \
         ({:.0}/s): {} written, {} skipped, {} conflicts, {} errors; {} change events",
        calls as f64 / run.as_secs_f64(),
        tally.written,
        tally.skipped,
        tally.conflicts,
        tally.errors.len(),
        events.values().sum::<u64>()
    );
    assert!(
        tally.errors.is_empty(),
        "{} heartbeats failed (conflicts: {}), first: {:?}",
        tally.errors.len(),
        tally.conflicts,
        &tally.errors[..3.min(tally.errors.len())]
    );
    assert_eq!(tally.conflicts, 0);
    assert_eq!(tally.written + tally.skipped, calls);

    // Durable writes: one per session per dedup window (the run is shorter than
    // one unless the machine is very slow), plus one per change of path. When
    // workers lagged (a loaded machine), old-path and new-path calls of a
    // moving session overlap for up to `lag_beats + 1` beats after each move,
    // and each of those calls may flip the path once; a session that never
    // moves has nothing to flip, and without lag there is no flip at all.
    let windows = 1 + run.as_millis() as u64 / DEDUP_MS;
    let flips = if lag_beats > 0 {
        2 * (TABS * CALLS_PER_TAB) as u64 * (lag_beats + 1)
    } else {
        0
    };
    let written_by = written_by.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (s, &written) in written_by.iter().enumerate() {
        let id = session_id(s);
        let (least, most) = (1 + path_changes(s), windows + path_changes(s) * (1 + flips));
        let seen = events.get(&id).copied().unwrap_or(0);
        assert!(
            (least..=most).contains(&seen),
            "{id}: {seen} change events, expected {least}..={most}"
        );
        // The feed shows a document's latest change: two writes of it
        // between two of the follower's polls (a path flip of lagging
        // workers, ms apart) show as one. The versions count every write.
        assert!(
            seen <= written,
            "{id}: {seen} change events for {written} writes answered as written"
        );
        let doc = http.expect(Method::GET, &format!("/v1/c/activeSessions/{id}"), None, 200);
        assert_eq!(
            doc["_version"],
            json!(written),
            "{id}: one version per write answered as written"
        );
        assert_eq!(doc["currentPath"], path_at(s, BEATS - 1), "{id}");
        assert_eq!(doc["sessionId"], id.as_str());
    }
    assert_eq!(events.len(), SESSIONS, "no other document changed");

    // The active sessions of a path, through the index on currentPath.
    let mut listed = 0;
    for path in ["/about", "/contact"].iter().chain(LANDING_PATHS.iter()) {
        let expected: BTreeSet<String> = (0..SESSIONS)
            .filter(|&s| path_at(s, BEATS - 1) == *path)
            .map(session_id)
            .collect();
        assert_eq!(sessions_on(&http, path), expected, "sessions on {path}");
        listed += expected.len();
    }
    assert_eq!(listed, SESSIONS);

    // The tabs are closed: TTL_S after its last write, a session reads as gone
    // (swept or not yet), the index lists nobody, and the sweeper leaves one
    // tombstone per session in the feed.
    let since = http.last_seq();
    let last_seen: BTreeMap<String, u64> = http
        .query_all("activeSessions", "")
        .iter()
        .map(|d| {
            (
                d["_id"].as_str().expect("_id").to_string(),
                d["lastSeen"].as_u64().expect("lastSeen"),
            )
        })
        .collect();
    assert_eq!(last_seen.len(), SESSIONS, "every session is live before its TTL");
    let expires = last_seen.values().max().expect("sessions") + SESSION_TTL_S * 1000;
    let deadline =
        Instant::now() + Duration::from_millis(expires.saturating_sub(now_ms())) + Duration::from_secs(15);
    let mut gone = BTreeSet::new();
    while gone.len() < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "{} sessions still readable after their TTL",
            SESSIONS - gone.len()
        );
        for (id, seen) in &last_seen {
            if gone.contains(id) {
                continue;
            }
            let expires = seen + SESSION_TTL_S * 1000;
            let asked = now_ms();
            let (status, doc) = http.get(&format!("/v1/c/activeSessions/{id}"));
            let answered = now_ms();
            // One clock (the machine's); 500 ms of slack for the server's commit
            // time against this process's reading of it.
            match status {
                404 => {
                    assert!(answered + 500 >= expires, "{id} gone before its TTL");
                    gone.insert(id.clone());
                }
                200 => assert!(
                    asked < expires + 500,
                    "{id} still readable after its TTL (reads hide expired documents): {doc}"
                ),
                other => panic!("GET {id}: {other} {doc}"),
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    for path in ["/about", "/contact"].iter().chain(LANDING_PATHS.iter()) {
        assert!(
            sessions_on(&http, path).is_empty(),
            "expired sessions listed on {path}"
        );
    }
    let mut tombstones = BTreeSet::new();
    let mut since = since;
    while tombstones.len() < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "the sweeper left {} tombstones",
            tombstones.len()
        );
        let page = http.expect(
            Method::GET,
            &format!("/v1/c/activeSessions/_changes?since={since}&feed=longpoll&timeout=1000"),
            None,
            200,
        );
        for change in page["results"].as_array().expect("results") {
            assert_eq!(change["deleted"], true, "only tombstones after the run: {change}");
            tombstones.insert(change["id"].as_str().expect("id").to_string());
        }
        since = page["last_seq"].as_u64().expect("last_seq");
    }
    eprintln!(
        "seed 000: every session expired {SESSION_TTL_S} s after its last write and was swept; test took {:?}",
        test_started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Seed 003: counter caches on a hot summary row
// ---------------------------------------------------------------------------

const CAMPAIGNS: usize = 5;
/// Subscribers created before the counters are defined (backfilled), and after.
const SUBSCRIBERS_BEFORE: usize = 100;
const SUBSCRIBERS: usize = 400;
const COUNTER_WORKERS: usize = 32;
const OPS_PER_WORKER: usize = 150;

fn campaign(i: usize) -> String {
    format!("campaign-{}", 1001 + i % CAMPAIGNS)
}

fn subscriber_config(mode: &str) -> Value {
    let counter = |name: &str, filter: Value, field: &str| {
        json!({"name": name, "group_by": "campaign_id", "where": filter,
               "target": {"c": "campaign_metrics", "field": field}, "mode": mode})
    };
    json!({"counters": [
        counter("confirmed", json!({"status": "confirmed"}), "confirmed_subscribers_count"),
        counter("unconfirmed", json!({"status": {"$ne": "confirmed"}}), "unconfirmed_subscribers_count"),
    ]})
}

fn opens_config(mode: &str) -> Value {
    json!({"counters": [{"name": "email_opens", "group_by": "campaign_id",
                         "target": {"c": "campaign_metrics", "field": "email_opens_count"}, "mode": mode}]})
}

/// Puts subscribers `range` (status `pending`) in transactions of up to 500.
fn create_subscribers(http: &Http, range: std::ops::Range<usize>) {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                json!({"op": "put", "c": "subscribers", "id": format!("sub-{i:04}"), "version": 0,
                       "doc": {"email": format!("user{i}@host.com"), "campaign_id": campaign(i), "status": "pending"}})
            })
            .collect();
        http.expect(Method::POST, "/v1/tx", Some(&json!({"ops": ops})), 200);
    }
}

/// One worker of seed 003. Shared subscribers (created up front, never deleted)
/// are confirmed or unsubscribed by anyone; each worker also signs up its own
/// subscribers, moves them between campaigns and deletes them, and records and
/// deletes its own email opens — so every write is valid whatever the others do.
fn counters_worker(http: &Http, worker: usize) -> Tally {
    let mut rng = Rng::new(worker as u64 + 1);
    let mut tally = Tally::default();
    let mut own_subscribers: Vec<String> = Vec::new();
    let mut own_opens: Vec<String> = Vec::new();
    for op in 0..OPS_PER_WORKER {
        let roll = rng.below(100);
        let shared = format!("sub-{:04}", rng.below(SUBSCRIBERS));
        let (method, path, body) = match roll {
            // A subscriber confirms their email address.
            0..=29 => (
                Method::PATCH,
                format!("/v1/c/subscribers/{shared}"),
                Some(json!({"$set": {"status": "confirmed"}, "$currentDate": {"confirmed_at": true}})),
            ),
            // … or unsubscribes.
            30..=37 => (
                Method::PATCH,
                format!("/v1/c/subscribers/{shared}"),
                Some(json!({"$set": {"status": "unsubscribed"}})),
            ),
            // An email is opened.
            38..=67 => {
                let id = format!("open-{worker:02}-{op:03}");
                own_opens.push(id.clone());
                let open = json!({"campaign_id": campaign(rng.below(CAMPAIGNS)), "subscriber_id": shared});
                (Method::PUT, format!("/v1/c/opens/{id}"), Some(open))
            }
            // An open is retracted (a bot filter, say).
            68..=77 if !own_opens.is_empty() => {
                let id = own_opens.swap_remove(rng.below(own_opens.len()));
                (Method::DELETE, format!("/v1/c/opens/{id}?version=-1"), None)
            }
            // A new subscriber signs up.
            68..=87 => {
                let id = format!("new-{worker:02}-{op:03}");
                own_subscribers.push(id.clone());
                let status = if rng.below(2) == 0 { "pending" } else { "confirmed" };
                let doc = json!({"email": format!("{id}@host.com"), "campaign_id": campaign(rng.below(CAMPAIGNS)),
                                 "status": status});
                (Method::PUT, format!("/v1/c/subscribers/{id}"), Some(doc))
            }
            // One of them moves to another campaign.
            88..=93 if !own_subscribers.is_empty() => {
                let id = &own_subscribers[rng.below(own_subscribers.len())];
                let update = json!({"$set": {"campaign_id": campaign(rng.below(CAMPAIGNS))}});
                (Method::PATCH, format!("/v1/c/subscribers/{id}"), Some(update))
            }
            // … or is deleted.
            _ if !own_subscribers.is_empty() => {
                let id = own_subscribers.swap_remove(rng.below(own_subscribers.len()));
                (Method::DELETE, format!("/v1/c/subscribers/{id}?version=-1"), None)
            }
            _ => (
                Method::PATCH,
                format!("/v1/c/subscribers/{shared}"),
                Some(json!({"$set": {"status": "confirmed"}})),
            ),
        };
        let what = format!("{method} {path}");
        tally.record(&what, http.try_call(method, &path, body.as_ref()));
    }
    tally
}

/// campaign → (confirmed, unconfirmed, opens), from the source collections.
type Counts = BTreeMap<String, (i64, i64, i64)>;

fn ground_truth(http: &Http) -> Counts {
    let mut truth: Counts = (0..CAMPAIGNS).map(|i| (campaign(i), (0, 0, 0))).collect();
    for doc in http.query_all("subscribers", "") {
        let entry = truth
            .entry(doc["campaign_id"].as_str().expect("campaign_id").to_string())
            .or_default();
        if doc["status"] == "confirmed" {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    for doc in http.query_all("opens", "") {
        truth
            .entry(doc["campaign_id"].as_str().expect("campaign_id").to_string())
            .or_default()
            .2 += 1;
    }
    truth
}

fn stored_counters(http: &Http) -> (Counts, u64) {
    let mut counts: Counts = (0..CAMPAIGNS).map(|i| (campaign(i), (0, 0, 0))).collect();
    let mut versions = 0;
    for doc in http.query_all("campaign_metrics", "") {
        let n = |field: &str| {
            doc.get(field)
                .map_or(0, |v| v.as_i64().expect("an integer count"))
        };
        counts.insert(
            doc["_id"].as_str().expect("_id").to_string(),
            (
                n("confirmed_subscribers_count"),
                n("unconfirmed_subscribers_count"),
                n("email_opens_count"),
            ),
        );
        versions += doc["_version"].as_u64().expect("_version");
    }
    (counts, versions)
}

fn seed003(mode: &str) {
    let server = Server::start();
    let http = Http::new(&server);
    let started = Instant::now();

    // Some subscribers exist before the counters: defining them backfills.
    create_subscribers(&http, 0..SUBSCRIBERS_BEFORE);
    let answer = http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&subscriber_config(mode)),
        200,
    );
    let backfilled: i64 = answer["backfill"]["unconfirmed"]["fixed"]
        .as_array()
        .expect("the backfill of a new counter")
        .iter()
        .map(|f| f["now"].as_i64().expect("now") - f["was"].as_i64().expect("was"))
        .sum();
    assert_eq!(backfilled, SUBSCRIBERS_BEFORE as i64, "{answer}");
    assert_eq!(answer["backfill"]["confirmed"]["fixed"], json!([]), "{answer}");
    http.expect(Method::PUT, "/v1/c/opens/_config", Some(&opens_config(mode)), 200);
    create_subscribers(&http, SUBSCRIBERS_BEFORE..SUBSCRIBERS);

    let turn = workload_turn();
    let run_started = Instant::now();
    let workers: Vec<_> = (0..COUNTER_WORKERS)
        .map(|worker| {
            let http = http.fresh();
            thread::spawn(move || counters_worker(&http, worker))
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.add(worker.join().expect("worker"));
    }
    let run = run_started.elapsed();
    drop(turn);
    let drained = http.wait_outbox_empty(Duration::from_secs(20));
    let truth = ground_truth(&http);
    let (stored, target_versions) = stored_counters(&http);
    let ops = COUNTER_WORKERS * OPS_PER_WORKER;
    eprintln!(
        "seed 003 ({mode}): {ops} ops by {COUNTER_WORKERS} workers in {run:?}: {} written, {} skipped, \
         {} conflicts, {} errors; outbox empty {drained:?} later; {target_versions} versions of {CAMPAIGNS} \
         campaign_metrics documents",
        tally.written,
        tally.skipped,
        tally.conflicts,
        tally.errors.len()
    );
    assert!(
        tally.errors.is_empty(),
        "{} writes failed (conflicts: {}), first: {:?}",
        tally.errors.len(),
        tally.conflicts,
        &tally.errors[..3.min(tally.errors.len())]
    );
    assert_eq!(tally.conflicts, 0);
    assert_eq!(
        stored, truth,
        "counters (left) against the source collections (right)"
    );
    if mode == "after_commit" {
        // Coalesced: the hot summary rows are written far less often than the sources.
        assert!(
            target_versions < tally.written,
            "{target_versions} writes of campaign_metrics for {} source writes",
            tally.written
        );
    }
    let total: i64 = truth.values().map(|(c, u, _)| c + u).sum();
    assert!(total >= SUBSCRIBERS as i64, "{truth:?}");
    assert!(
        truth.values().all(|&(c, u, o)| c > 0 && u > 0 && o > 0),
        "the workload touched every counter of every campaign: {truth:?}"
    );

    // A recount of each counter finds nothing to fix.
    for (coll, name) in [
        ("subscribers", "confirmed"),
        ("subscribers", "unconfirmed"),
        ("opens", "email_opens"),
    ] {
        let report = http.expect(
            Method::POST,
            &format!("/v1/c/{coll}/_counters/{name}/recount"),
            None,
            200,
        );
        assert_eq!(report["fixed"], json!([]), "{coll}/{name}: {report}");
        assert_eq!(report["checked"], CAMPAIGNS, "{coll}/{name}: {report}");
    }
    let outbox = http.expect(Method::GET, "/v1/_outbox", None, 200);
    assert_eq!(outbox, json!({"entries": 0, "oldest_age_ms": null}));
    eprintln!("seed 003 ({mode}): test took {:?}", started.elapsed());
}

#[test]
fn seed003_in_commit_counters_equal_the_truth_without_conflicts() {
    seed003("in_commit");
}

#[test]
fn seed003_after_commit_counters_converge_to_the_truth_without_conflicts() {
    seed003("after_commit");
}
