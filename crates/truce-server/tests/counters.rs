//! Counter caches and collection configuration through a real `truce serve`:
//! `after_commit` deltas survive `kill -9` and land exactly once; a recount
//! finds and fixes a corrupted counter (over HTTP and with `truce recount` on a
//! stopped server's data); `_config` validates, round-trips and is
//! authorized; and the README's "Counters and TTL" commands work when pasted.

mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, truce_bin};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Http, Rng};

const CAMPAIGNS: usize = 3;

fn campaign(i: usize) -> String {
    format!("campaign-{}", 1 + i % CAMPAIGNS)
}

/// Counters of `subscribers` into `campaign_metrics`: confirmed, unconfirmed,
/// and the sum of `spent`.
fn subscriber_counters(mode: &str) -> Value {
    let counter = |name: &str, filter: Value, sum: Value, field: &str| {
        json!({"name": name, "group_by": "campaign_id", "where": filter, "sum": sum,
               "target": {"c": "campaign_metrics", "field": field}, "mode": mode})
    };
    json!({"counters": [
        counter("confirmed", json!({"status": "confirmed"}), Value::Null, "confirmed"),
        counter("unconfirmed", json!({"status": {"$ne": "confirmed"}}), Value::Null, "unconfirmed"),
        counter("spent", Value::Null, json!("spent"), "spent"),
    ]})
}

/// campaign → (confirmed, unconfirmed, spent), from the live subscribers.
type Counts = BTreeMap<String, (i64, i64, i64)>;

fn truth(http: &Http) -> Counts {
    let mut out: Counts = (0..CAMPAIGNS).map(|i| (campaign(i), (0, 0, 0))).collect();
    for doc in http.query_all("subscribers", "") {
        let entry = out
            .entry(doc["campaign_id"].as_str().expect("campaign_id").to_string())
            .or_default();
        if doc["status"] == "confirmed" {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        entry.2 += doc["spent"].as_i64().unwrap_or(0);
    }
    out
}

fn stored(http: &Http) -> Counts {
    let mut out: Counts = (0..CAMPAIGNS).map(|i| (campaign(i), (0, 0, 0))).collect();
    for doc in http.query_all("campaign_metrics", "") {
        let n = |f: &str| doc.get(f).map_or(0, |v| v.as_i64().expect("an integer"));
        out.insert(
            doc["_id"].as_str().expect("_id").to_string(),
            (n("confirmed"), n("unconfirmed"), n("spent")),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Crash: after_commit deltas survive kill -9, applied exactly once
// ---------------------------------------------------------------------------

const CRASH_WRITERS: usize = 16;
const CRASH_CYCLES: u64 = 3;
/// Upper bound on one writer's requests per cycle, whatever the timing.
const CRASH_WRITES_MAX: usize = 5_000;
/// Subscriber ids each writer cycles through.
const IDS_PER_WRITER: usize = 40;

/// Writes as fast as it can until `stop` or the server goes away: creates,
/// overwrites, confirmations, moves between campaigns with `$inc`, deletes —
/// every one of them feeding the counters. Returns unexpected answers.
fn crash_writer(http: &Http, writer: usize, cycle: u64, stop: &AtomicBool) -> Vec<String> {
    let mut rng = Rng::new((cycle << 8) + writer as u64 + 1);
    let mut unexpected = Vec::new();
    for i in 0..CRASH_WRITES_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("w{writer:02}-{:02}", rng.below(IDS_PER_WRITER));
        let path = format!("/v1/c/subscribers/{id}");
        let (method, path, body) = match i % 5 {
            0 | 1 => (
                Method::PUT,
                path,
                Some(
                    json!({"_version": -1, "campaign_id": campaign(rng.below(CAMPAIGNS)),
                            "status": "pending", "spent": rng.below(10)}),
                ),
            ),
            2 => (
                Method::PATCH,
                path,
                Some(
                    json!({"$set": {"status": "confirmed"}, "$setOnInsert": {"campaign_id": campaign(i)},
                            "$upsert": true}),
                ),
            ),
            3 => (
                Method::PATCH,
                path,
                Some(
                    json!({"$set": {"campaign_id": campaign(rng.below(CAMPAIGNS))}, "$inc": {"spent": 3},
                            "$upsert": true}),
                ),
            ),
            _ => (Method::DELETE, format!("{path}?version=-1"), None),
        };
        let delete = method == Method::DELETE;
        match http.try_call(method, &path, body.as_ref()) {
            Ok((200 | 201, _)) => {}
            Ok((404, _)) if delete => {}
            Ok((status, answer)) => unexpected.push(format!("{path}: {status} {answer}")),
            // The server was killed: whatever was in flight may or may not have
            // committed, and the counters must agree with whichever it was.
            Err(_) => break,
        }
    }
    unexpected
}

#[test]
fn after_commit_deltas_survive_kill_9_and_apply_exactly_once() {
    let mut server = Server::start();
    let started = Instant::now();
    let http = Http::new(&server);
    http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&subscriber_counters("after_commit")),
        200,
    );
    let mut pending_at_kill = Vec::new();
    for cycle in 0..CRASH_CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..CRASH_WRITERS)
            .map(|writer| {
                let (http, stop) = (http.fresh(), Arc::clone(&stop));
                thread::spawn(move || crash_writer(&http, writer, cycle, &stop))
            })
            .collect();
        // Write fast, then kill at once: at 300, 500, 700 ms.
        thread::sleep(Duration::from_millis(300 + 200 * cycle));
        let outbox = http.expect(Method::GET, "/v1/_outbox", None, 200);
        let pid = server.pid();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut unexpected = Vec::new();
        for writer in writers {
            unexpected.extend(writer.join().expect("writer"));
        }
        assert!(
            unexpected.is_empty(),
            "cycle {cycle}: {:?}",
            &unexpected[..3.min(unexpected.len())]
        );
        pending_at_kill.push(outbox["entries"].as_u64().expect("entries"));

        server.restart();
        let after_restart = http.expect(Method::GET, "/v1/_outbox", None, 200);
        let drained = http.wait_outbox_empty(Duration::from_secs(30));
        let (truth, stored) = (truth(&http), stored(&http));
        eprintln!(
            "cycle {cycle}: killed pid {pid} with {} increments pending a moment before; {} pending at \
             restart, drained in {drained:?}; counters {stored:?} ({:?})",
            outbox["entries"],
            after_restart["entries"],
            started.elapsed()
        );
        assert_eq!(
            stored, truth,
            "cycle {cycle}: counters (left) against the sources (right): no delta lost, none twice"
        );
        for name in ["confirmed", "unconfirmed", "spent"] {
            let report = http.expect(
                Method::POST,
                &format!("/v1/c/subscribers/_counters/{name}/recount"),
                None,
                200,
            );
            assert_eq!(report["fixed"], json!([]), "cycle {cycle}: {name}: {report}");
        }
    }
    assert!(
        pending_at_kill.iter().any(|&n| n > 0),
        "no kill came while increments were pending: {pending_at_kill:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Recount
// ---------------------------------------------------------------------------

/// 30 subscribers over the campaigns, half of them confirmed, `spent` = i.
fn create_subscribers(http: &Http) {
    let ops: Vec<Value> = (0..30)
        .map(|i| {
            let status = if i % 2 == 0 { "confirmed" } else { "pending" };
            json!({"op": "put", "c": "subscribers", "id": format!("sub-{i:02}"),
                   "doc": {"campaign_id": campaign(i), "status": status, "spent": i}})
        })
        .collect();
    http.expect(Method::POST, "/v1/tx", Some(&json!({"ops": ops})), 200);
}

#[test]
fn recount_over_http_finds_and_fixes_a_corrupted_counter() {
    let server = Server::start();
    let http = Http::new(&server);
    counted_subscribers(&http, "in_commit");
    let expected = truth(&http);
    assert_eq!(stored(&http), expected);

    // Someone writes the target field directly.
    let victim = campaign(1);
    let (right, _, _) = expected[&victim];
    http.expect(
        Method::PATCH,
        &format!("/v1/c/campaign_metrics/{victim}"),
        Some(&json!({"$inc": {"confirmed": 40}})),
        200,
    );
    assert_ne!(stored(&http), expected);
    let report = http.expect(
        Method::POST,
        "/v1/c/subscribers/_counters/confirmed/recount",
        None,
        200,
    );
    assert_eq!(
        report["fixed"],
        json!([{"group": victim, "was": right + 40, "now": right}]),
        "{report}"
    );
    assert_eq!(report["checked"], CAMPAIGNS, "{report}");
    assert!(report["seq"].as_u64().is_some(), "{report}");
    assert_eq!(stored(&http), expected, "fixed");
    let again = http.expect(
        Method::POST,
        "/v1/c/subscribers/_counters/confirmed/recount",
        None,
        200,
    );
    assert_eq!(again["fixed"], json!([]), "nothing left to fix: {again}");

    // A target field removed, and a whole target document deleted.
    let (_, unconfirmed, spent) = expected[&campaign(2)];
    http.expect(
        Method::PATCH,
        &format!("/v1/c/campaign_metrics/{}", campaign(2)),
        Some(&json!({"$unset": {"unconfirmed": true}})),
        200,
    );
    let report = http.expect(
        Method::POST,
        "/v1/c/subscribers/_counters/unconfirmed/recount",
        None,
        200,
    );
    assert_eq!(
        report["fixed"],
        json!([{"group": campaign(2), "was": 0, "now": unconfirmed}])
    );
    http.expect(
        Method::DELETE,
        &format!("/v1/c/campaign_metrics/{}?version=-1", campaign(2)),
        None,
        200,
    );
    for name in ["confirmed", "unconfirmed", "spent"] {
        http.expect(
            Method::POST,
            &format!("/v1/c/subscribers/_counters/{name}/recount"),
            None,
            200,
        );
    }
    assert_eq!(stored(&http), expected, "the deleted target is rebuilt");
    assert_eq!(expected[&campaign(2)].2, spent);

    let missing = http.expect(
        Method::POST,
        "/v1/c/subscribers/_counters/nope/recount",
        None,
        404,
    );
    assert_eq!(missing["error"], "not_found");
    let missing = http.expect(
        Method::POST,
        "/v1/c/nobody/_counters/confirmed/recount",
        None,
        404,
    );
    assert_eq!(missing["error"], "not_found");
}

// ---------------------------------------------------------------------------
// Configuration: validation, round trip, authorization
// ---------------------------------------------------------------------------

/// API.md's `_config` example.
fn api_md_example() -> Value {
    json!({"ttl": {"field": "lastSeen", "seconds": 30},
           "counters": [{"name": "confirmed", "group_by": "campaign_id",
                         "where": {"status": "confirmed"}, "sum": null,
                         "target": {"c": "campaign_metrics", "field": "confirmed_subscribers_count"},
                         "mode": "in_commit"}]})
}

#[test]
fn config_validates_round_trips_and_backfills() {
    let server = Server::start();
    let http = Http::new(&server);
    let empty = json!({"ttl": null, "counters": []});
    assert_eq!(
        http.expect(Method::GET, "/v1/c/subscribers/_config", None, 200),
        empty
    );

    // Defined over existing documents: backfilled, and the answer says so.
    http.expect(
        Method::PUT,
        "/v1/c/subscribers/s1",
        Some(&json!({"campaign_id": "c1", "status": "confirmed"})),
        201,
    );
    let answer = http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&api_md_example()),
        200,
    );
    let backfill = &answer["backfill"]["confirmed"];
    assert_eq!(backfill["checked"], 1, "{answer}");
    assert_eq!(
        backfill["fixed"],
        json!([{"group": "c1", "was": 0, "now": 1}]),
        "{answer}"
    );
    let mut without_backfill = answer.clone();
    without_backfill
        .as_object_mut()
        .expect("object")
        .remove("backfill");
    assert_eq!(without_backfill, api_md_example());
    let stored = http.expect(Method::GET, "/v1/c/subscribers/_config", None, 200);
    assert_eq!(stored, api_md_example(), "GET answers what was PUT");
    let metrics = http.expect(Method::GET, "/v1/c/campaign_metrics/c1", None, 200);
    assert_eq!(metrics["confirmed_subscribers_count"], 1);

    // PUT what GET answered: the same, and no backfill (nothing is new).
    let again = http.expect(Method::PUT, "/v1/c/subscribers/_config", Some(&stored), 200);
    assert_eq!(again["backfill"], json!({}));
    assert_eq!(
        http.expect(Method::GET, "/v1/c/subscribers/_config", None, 200),
        stored
    );

    // Defaults are written out: no where/sum is null, no mode is in_commit.
    let minimal = json!({"counters": [{"name": "all", "group_by": "campaign_id",
                                       "target": {"c": "campaign_metrics", "field": "subscribers"}}]});
    http.expect(Method::PUT, "/v1/c/other/_config", Some(&minimal), 200);
    assert_eq!(
        http.expect(Method::GET, "/v1/c/other/_config", None, 200),
        json!({"ttl": null, "counters": [{"name": "all", "group_by": "campaign_id", "where": null, "sum": null,
               "target": {"c": "campaign_metrics", "field": "subscribers"}, "mode": "in_commit"}]})
    );

    // Refused configurations change nothing.
    let counter = |extra: Value| {
        let mut c = json!({"name": "c", "group_by": "g", "target": {"c": "t", "field": "f"}});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        json!({ "counters": [c] })
    };
    let invalid_config = [
        json!([]),
        json!("ttl"),
        json!({"ttl": 5}),
        json!({"ttl": {"field": "t", "seconds": 0}}),
        json!({"ttl": {"field": "t", "seconds": 1.5}}),
        json!({"ttl": {"field": "t"}}),
        json!({"ttl": {"seconds": 5}}),
        json!({"ttl": {"field": "_t", "seconds": 5}}),
        json!({"ttl": {"field": "t", "seconds": 400_000_000}}),
        json!({"indexes": []}),
        json!({"counters": {}}),
        json!({"counters": [1]}),
        counter(json!({"name": null})),
        counter(json!({"name": "9bad"})),
        counter(json!({"group_by": null})),
        counter(json!({"group_by": "a..b"})),
        counter(json!({"target": null})),
        counter(json!({"target": {"c": "t"}})),
        counter(json!({"target": {"c": "t", "field": "_f"}})),
        counter(json!({"sum": 5})),
        counter(json!({"mode": "later"})),
        // Bodies hold no `_` fields: these would count nothing.
        counter(json!({"group_by": "_id"})),
        counter(json!({"sum": "_version"})),
        counter(json!({"where": {"$or": [{"status": "x"}, {"_deleted": false}]}})),
        // A target among the documents it counts.
        counter(json!({"target": {"c": "subscribers", "field": "n"}})),
        json!({"counters": [{"name": "c", "group_by": "g", "target": {"c": "t", "field": "f"}},
                            {"name": "c", "group_by": "h", "target": {"c": "t", "field": "f"}}]}),
    ];
    for body in &invalid_config {
        let answer = http.expect(Method::PUT, "/v1/c/subscribers/_config", Some(body), 400);
        assert_eq!(answer["error"], "invalid_config", "{body}: {answer}");
        assert!(answer["message"].is_string());
    }
    let refused = http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&counter(json!({"where": {"a": {"$bogus": 1}}}))),
        400,
    );
    assert_eq!(refused["error"], "invalid_filter");
    let refused = http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&counter(json!({"target": {"c": "9t", "field": "f"}}))),
        400,
    );
    assert_eq!(refused["error"], "invalid_collection");
    let many: Vec<Value> = (0..17)
        .map(|i| json!({"name": format!("c{i}"), "group_by": "g", "target": {"c": "t", "field": "f"}}))
        .collect();
    let refused = http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&json!({ "counters": many })),
        413,
    );
    assert_eq!(refused["error"], "limit_exceeded");
    let refused = http.expect(Method::PUT, "/v1/c/9bad/_config", Some(&api_md_example()), 400);
    assert_eq!(refused["error"], "invalid_collection");
    assert_eq!(
        http.expect(Method::GET, "/v1/c/subscribers/_config", None, 200),
        api_md_example(),
        "refused configurations changed nothing"
    );

    // An empty body removes everything.
    let cleared = http.expect(Method::PUT, "/v1/c/subscribers/_config", Some(&json!({})), 200);
    assert_eq!(cleared, json!({"ttl": null, "counters": [], "backfill": {}}));
    assert_eq!(
        http.expect(Method::GET, "/v1/c/subscribers/_config", None, 200),
        empty
    );
    let outbox = http.expect(Method::GET, "/v1/_outbox", None, 200);
    assert_eq!(outbox, json!({"entries": 0, "oldest_age_ms": null}));
}

fn create_key(data: &Path, args: &[&str]) -> String {
    let out = Command::new(truce_bin())
        .args(["keys", "create", "--data"])
        .arg(data)
        .args(args)
        .output()
        .expect("truce keys create");
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("Bearer {}", String::from_utf8(out.stdout).expect("utf-8").trim())
}

#[test]
fn config_routes_need_their_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let admin = create_key(&data, &["--role", "admin"]);
    let writer = create_key(&data, &["--role", "write"]);
    let reader = create_key(&data, &["--role", "read"]);
    let subscribers_admin = create_key(&data, &["--role", "admin", "--collections", "subscribers"]);
    let with_stats = create_key(&data, &["--role", "admin", "--collections", "subscribers,stats"]);
    let server = Server::start_in(&data, &[]);
    let http = Http::new(&server);
    let call = |key: &str, method: Method, path: &str, body: Option<&Value>| {
        let headers: &[(&str, &str)] = if key.is_empty() {
            &[]
        } else {
            &[("Authorization", key)]
        };
        http.try_call_with(method, path, headers, body)
            .expect("an answer")
    };
    let config = api_md_example();
    let recount = "/v1/c/subscribers/_counters/confirmed/recount";

    assert_eq!(call("", Method::GET, "/v1/_outbox", None).0, 401);
    assert_eq!(call("", Method::GET, "/v1/c/subscribers/_config", None).0, 401);
    for key in [&writer, &reader] {
        let (status, answer) = call(key, Method::PUT, "/v1/c/subscribers/_config", Some(&config));
        assert_eq!((status, answer["error"].clone()), (403, json!("forbidden")));
        assert_eq!(call(key, Method::POST, recount, None).0, 403);
    }
    // An admin of subscribers only may not make counters write elsewhere.
    let (status, answer) = call(
        &subscribers_admin,
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&config),
    );
    assert_eq!(status, 403, "{answer}");
    // One that may write the target's collection too may.
    let own = json!({"counters": [{"name": "n", "group_by": "kind",
                                   "target": {"c": "stats", "field": "n"}}]});
    assert_eq!(
        call(
            &subscribers_admin,
            Method::PUT,
            "/v1/c/subscribers/_config",
            Some(&own)
        )
        .0,
        403
    );
    assert_eq!(
        call(&with_stats, Method::PUT, "/v1/c/subscribers/_config", Some(&own)).0,
        200
    );
    assert_eq!(
        call(&admin, Method::PUT, "/v1/c/subscribers/_config", Some(&config)).0,
        200
    );
    assert_eq!(call(&subscribers_admin, Method::POST, recount, None).0, 403);
    assert_eq!(call(&admin, Method::POST, recount, None).0, 200);
    // Reading needs only read.
    let (status, stored) = call(&reader, Method::GET, "/v1/c/subscribers/_config", None);
    assert_eq!((status, stored), (200, config));
    assert_eq!(call(&reader, Method::GET, "/v1/_outbox", None).0, 200);
}

// ---------------------------------------------------------------------------
// `truce recount` on a data directory
// ---------------------------------------------------------------------------

/// Declares the subscriber counters in `mode`, then creates the subscribers.
fn counted_subscribers(http: &Http, mode: &str) {
    http.expect(
        Method::PUT,
        "/v1/c/subscribers/_config",
        Some(&subscriber_counters(mode)),
        200,
    );
    create_subscribers(http);
}

/// Runs `truce args --data data` (killed by PID after 30 s, a failure);
/// exit success, stdout, stderr.
fn run_truce(args: &[&str], data: &Path) -> (bool, String, String) {
    let (code, stdout, stderr) = run_truce_code(args, data);
    (code == 0, stdout, stderr)
}

/// [`run_truce`], with the exit code.
fn run_truce_code(args: &[&str], data: &Path) -> (i32, String, String) {
    let data = data.to_str().expect("a UTF-8 data path");
    let ran = common::run_bounded(&[args, &["--data", data]].concat(), Duration::from_secs(30));
    let status = ran
        .status
        .unwrap_or_else(|| panic!("truce {args:?} did not finish within 30 s"));
    (status.code().expect("an exit code"), ran.stdout, ran.stderr)
}

#[test]
fn cli_recount_refuses_a_running_server_and_fixes_a_stopped_ones_data() {
    let mut server = Server::start();
    let data = server.data.clone();
    let http = Http::new(&server);
    counted_subscribers(&http, "in_commit");
    let expected = truth(&http);
    let victim = campaign(0);
    http.expect(
        Method::PATCH,
        &format!("/v1/c/campaign_metrics/{victim}"),
        Some(&json!({"$inc": {"spent": -7}})),
        200,
    );

    let (ok, _, stderr) = run_truce(&["recount", "subscribers", "spent"], &data);
    assert!(!ok, "recount ran beside a live server");
    assert!(
        stderr.contains("running server") && stderr.contains("/v1/c/subscribers/_counters/spent/recount"),
        "the refusal names the HTTP endpoint: {stderr}"
    );

    assert!(server.terminate().success());
    let (ok, stdout, stderr) = run_truce(&["recount", "subscribers", "spent"], &data);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    let right = expected[&victim].2;
    assert_eq!(
        report["fixed"],
        json!([{"group": victim, "was": right - 7, "now": right}]),
        "{stdout}"
    );
    assert_eq!(report["checked"], CAMPAIGNS);
    let (ok, _, stderr) = run_truce(&["recount", "subscribers", "nope"], &data);
    assert!(!ok && stderr.contains("no counter nope"), "{stderr}");
    let (ok, _, stderr) = run_truce(&["recount", "subscribers", "spent"], &data.join("missing"));
    assert!(!ok && stderr.contains("no data directory"), "{stderr}");

    server.restart();
    assert_eq!(stored(&http), expected, "the fix is durable");

    // A target field no increment can fix: the report says so, and so does
    // the exit code (a script must not take the counter for repaired).
    http.expect(
        Method::PATCH,
        &format!("/v1/c/campaign_metrics/{victim}"),
        Some(&json!({"$set": {"spent": "oops"}})),
        200,
    );
    assert!(server.terminate().success());
    let (code, stdout, stderr) = run_truce_code(&["recount", "subscribers", "spent"], &data);
    assert_eq!(code, 1, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["unfixable"][0]["group"], json!(victim), "{stdout}");
    assert!(stderr.contains("put a number back"), "{stderr}");
}

/// `truce check` finds a counter's target written behind its back, in a backup
/// of the running server and in the stopped server's own directory; after a
/// recount it finds nothing.
#[test]
fn cli_check_finds_a_counter_written_behind_its_back() {
    let mut server = Server::start();
    let data = server.data.clone();
    let http = Http::new(&server);
    counted_subscribers(&http, "after_commit");
    // The targets exist once the outbox has drained.
    http.wait_outbox_empty(Duration::from_secs(30));
    let victim = campaign(1);
    http.expect(
        Method::PATCH,
        &format!("/v1/c/campaign_metrics/{victim}"),
        Some(&json!({"$inc": {"confirmed": 3}})),
        200,
    );

    let (code, _, stderr) = run_truce_code(&["check"], &data);
    assert_eq!(code, 2, "could not look, which is not damage: {stderr}");
    assert!(
        stderr.contains("running server") && stderr.contains("truce backup"),
        "{stderr}"
    );
    // A backup of the running server is checked instead.
    let copy = tempfile::tempdir().expect("tempdir");
    let backup = copy.path().join("b");
    let ran = common::run_bounded(
        &["backup", "--url", &server.url(), "--to", backup.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(ran.status.is_some_and(|s| s.success()), "{}", ran.stderr);
    let (code, stdout, stderr) = run_truce_code(&["check"], &backup);
    assert_eq!(code, 1, "the damage was not found: {stdout}");
    assert!(stderr.contains("1 problem found"), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["clean"], false);
    assert_eq!(report["problems"][0]["kind"], "counter_mismatch", "{stdout}");
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("campaign_metrics/{victim}.confirmed")),
        "{detail}"
    );
    assert!(report["checked"]["documents"].as_u64().unwrap() > 0);

    http.expect(
        Method::POST,
        "/v1/c/subscribers/_counters/confirmed/recount",
        None,
        200,
    );
    assert!(server.terminate().success());
    let (ok, stdout, stderr) = run_truce(&["check"], &data);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["clean"], true);
    assert_eq!(report["problems"], json!([]));
    assert!(stderr.contains("holds no damage"), "{stderr}");
    let (code, _, stderr) = run_truce_code(&["check"], &data.join("missing"));
    assert!(code == 2 && stderr.contains("no data directory"), "{stderr}");
}

/// One bad byte in the middle of the journal, with acknowledged commits
/// after it: `truce check` reports the damage (exit 1, `storage_damaged`)
/// and `truce serve` refuses to start, both leaving the journal as it was.
/// Before, both opened it as fjall does, cutting the journal at the bad
/// byte: every later commit was dropped for good, and check said "holds no
/// damage".
#[test]
fn a_journal_damaged_before_acknowledged_commits_is_reported_not_cut() {
    let (_server, data) = stopped_after_writes(200);
    let journal = walkdir(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a journal");
    let mut bytes = std::fs::read(&journal).expect("the journal");
    let data_end = bytes.iter().rposition(|&b| b != 0).expect("data") + 1;
    // The Start tag of a batch in the middle (it follows the last's End).
    let start = (data_end / 2..data_end)
        .find(|&i| bytes[i] == 1 && bytes[i - 4..i] == *b"FJL\x03")
        .expect("a batch in the second half");
    bytes[start] ^= 0x5a;
    std::fs::write(&journal, &bytes).expect("damage it");

    let (code, stdout, stderr) = run_truce_code(&["check"], &data);
    assert_eq!(code, 1, "damage found, not 'could not look': {stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["problems"][0]["kind"], "storage_damaged", "{stdout}");
    assert!(stderr.contains("intact commits follow"), "{stderr}");
    assert_eq!(
        std::fs::read(&journal).expect("the journal"),
        bytes,
        "check cut the journal"
    );

    serve_refuses(&data, "intact commits follow");
    assert_eq!(
        std::fs::read(&journal).expect("the journal"),
        bytes,
        "serve cut the journal"
    );
}

/// The journal removed after a clean stop: nothing is left for the storage
/// to find damaged, and the directory opened as an empty database (check:
/// "holds no damage"). The commit mark says 20 commits were made, so check
/// reports `commits_lost` (exit 1) and serve refuses to start; with the mark
/// removed, as the message says to accept the loss, it opens.
#[test]
fn a_data_directory_that_lost_its_journal_is_refused_by_its_commit_mark() {
    let (_server, data) = stopped_after_writes(20);
    for journal in walkdir(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
    {
        std::fs::remove_file(journal).expect("remove a journal");
    }
    let (code, stdout, stderr) = run_truce_code(&["check"], &data);
    assert_eq!(code, 1, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["problems"][0]["kind"], "commits_lost", "{stdout}");
    assert!(
        stderr.contains("commits up to seq 20") && stderr.contains("only up to seq 0"),
        "{stderr}"
    );
    serve_refuses(&data, "lost acknowledged commits");
    // A mark that does not decode is not compared, and check says so.
    std::fs::write(data.join("last-commit"), b"not a mark").expect("the mark");
    let (ok, stdout, stderr) = run_truce(&["check"], &data);
    assert!(ok && stderr.contains("not whole"), "{stdout} {stderr}");
    std::fs::remove_file(data.join("last-commit")).expect("the mark");
    let (ok, stdout, stderr) = run_truce(&["check"], &data);
    assert!(ok && stderr.contains("up to seq 0"), "{stdout} {stderr}");
    assert!(!stderr.contains("not whole"), "{stderr}");
}

/// A server that took `n` writes (`notes/n0`…) and was stopped, with its
/// data directory (kept while the server is).
fn stopped_after_writes(n: u32) -> (Server, std::path::PathBuf) {
    let mut server = Server::start();
    let data = server.data.clone();
    let http = Http::new(&server);
    for n in 0..n {
        http.expect(
            Method::PUT,
            &format!("/v1/c/notes/n{n}"),
            Some(&json!({"n": n})),
            201,
        );
    }
    assert!(server.terminate().success());
    (server, data)
}

/// `truce serve` on `data` refuses at once, saying `why`.
fn serve_refuses(data: &Path, why: &str) {
    let ran = common::run_bounded(
        &[
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    );
    let status = ran.status.expect("serve refuses at once, it does not start");
    assert!(!status.success());
    assert!(ran.stderr.contains(why), "{}", ran.stderr);
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).expect("a directory").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

// ---------------------------------------------------------------------------
// README
// ---------------------------------------------------------------------------

#[test]
fn the_readme_counters_section_works_when_pasted() {
    let server = Server::start();
    let Some(lines) = common::paste_readme_block("## Counters and TTL", &server) else {
        return;
    };
    let answers: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(answers.len(), 6, "one answer per command: {answers:#?}");
    let mut config = answers[0].clone();
    assert_eq!(config["backfill"]["confirmed"]["checked"], 0, "{config}");
    config.as_object_mut().expect("object").remove("backfill");
    assert_eq!(config, api_md_example(), "the README uses API.md's example");
    assert_eq!(answers[1]["created"], true);
    assert_eq!(answers[2]["version"], 2);
    assert_eq!(answers[3]["confirmed_subscribers_count"], 1, "{}", answers[3]);
    assert_eq!(answers[4]["fixed"], json!([]));
    assert_eq!(answers[5]["entries"], 0);
}

/// `tombstones.keep_seconds`: old tombstones are purged; a reader that may
/// have missed one of its deletes is answered 410 `history_purged` rather
/// than a history with the delete missing, and one that reads from the start
/// is never refused, however many pages it takes.
#[test]
fn old_tombstones_are_purged_and_only_readers_that_could_miss_them_are_refused() {
    let server = Server::start();
    let http = Http::new(&server);
    let config = json!({"tombstones": {"keep_seconds": 1}});
    let answer = http.expect(Method::PUT, "/v1/c/presence/_config", Some(&config), 200);
    assert_eq!(answer["tombstones"], json!({"keep_seconds": 1}), "{answer}");
    for tab in ["tab1", "tab2", "tab3", "tab4"] {
        http.expect(
            Method::PUT,
            &format!("/v1/c/presence/{tab}"),
            Some(&json!({"at": 1})),
            201,
        );
    }
    // Readers that have read tab1 and will go on from where they stopped.
    let first = http.expect(Method::GET, "/v1/c/presence/_changes?since=0&limit=1", None, 200);
    assert_eq!(first["results"][0]["id"], "tab1", "{first}");
    let (since, from) = (&first["last_seq"], &first["from"]);
    assert!(
        from.as_u64().is_some(),
        "a read from 0 says where its history began: {first}"
    );
    let pulled = http.expect(Method::GET, "/v1/c/presence/_pull?limit=1", None, 200);
    let checkpoint = pulled["checkpoint"].to_string();
    assert!(pulled["checkpoint"]["from"].as_u64().is_some(), "{pulled}");

    http.expect(Method::DELETE, "/v1/c/presence/tab1?version=-1", None, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.expect(Method::GET, "/v1/insights", None, 200)["totals"]["tombstones_purged"] != 1 {
        assert!(Instant::now() < deadline, "the tombstone was not purged");
        thread::sleep(Duration::from_millis(100));
    }

    // They would miss tab1's delete: refused, on every feed.
    let refused = [
        format!("/v1/c/presence/_changes?since={since}&from={from}"),
        format!("/v1/c/presence/_changes?since={since}&from={from}&feed=longpoll&timeout=10"),
        format!("/v1/c/presence/_changes?since={since}&from={from}&feed=sse"),
        format!("/v1/_changes?since={since}&from={from}"),
        format!("/v1/c/presence/_pull?checkpoint={}", support::enc(&checkpoint)),
    ];
    for path in &refused {
        let (status, body) = http.get(path);
        assert_eq!(
            (status, body["error"].as_str()),
            (410, Some("history_purged")),
            "{path}: {body}"
        );
    }
    let (_, body) = http.get(&refused[0]);
    assert!(
        body["message"].as_str().unwrap_or("").contains("from 0"),
        "{body}"
    );
    // An event stream resumed by its last event id, which does not say where
    // its history began, is checked by its position, even from `now`.
    for url in [
        "/v1/c/presence/_changes?feed=sse&since=now",
        "/v1/c/presence/_changes?feed=sse",
    ] {
        let since = since.to_string();
        let headers = [("Last-Event-ID", since.as_str())];
        let (status, body) = http
            .try_call_with(Method::GET, url, &headers, None)
            .expect("an answer");
        assert_eq!(
            (status, body["error"].as_str()),
            (410, Some("history_purged")),
            "{url}: {body}"
        );
    }
    // A read from `now` says where it began too; a start this server never
    // gave out is refused.
    let now = http.expect(Method::GET, "/v1/c/presence/_changes?since=now", None, 200);
    assert_eq!(now["from"], now["last_seq"], "{now}");
    let past = now["last_seq"].as_u64().expect("a number") + 1;
    let (status, body) = http.get(&format!("/v1/c/presence/_changes?since=1&from={past}"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_query")),
        "{body}"
    );
    let bad = support::enc(r#"{"seq":1,"id":"tab1","from":"x"}"#);
    let (status, body) = http.get(&format!("/v1/c/presence/_pull?checkpoint={bad}"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_query")),
        "{body}"
    );

    // A reader from the start, a page at a time, passing back what each
    // answer said, reads everything there is and is never refused.
    let mut ids = Vec::new();
    let mut next = "/v1/c/presence/_changes?since=0&limit=1".to_string();
    loop {
        let page = http.expect(Method::GET, &next, None, 200);
        let results = page["results"].as_array().expect("results");
        if results.is_empty() {
            break;
        }
        ids.extend(results.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()));
        next = format!(
            "/v1/c/presence/_changes?since={}&from={}&limit=1",
            page["last_seq"], page["from"]
        );
    }
    assert_eq!(ids, ["tab2", "tab3", "tab4"]);
    let mut pulled = Vec::new();
    let mut checkpoint = Value::Null;
    loop {
        let path = format!(
            "/v1/c/presence/_pull?limit=1&checkpoint={}",
            support::enc(&checkpoint.to_string())
        );
        let page = http.expect(Method::GET, &path, None, 200);
        let documents = page["documents"].as_array().expect("documents");
        if documents.is_empty() {
            break;
        }
        pulled.extend(
            documents
                .iter()
                .map(|d| d["id"].as_str().unwrap_or("").to_string()),
        );
        checkpoint = page["checkpoint"].clone();
    }
    assert_eq!(pulled, ["tab2", "tab3", "tab4"]);
}
