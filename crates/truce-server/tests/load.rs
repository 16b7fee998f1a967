//! Load and crash tests of a real `truce serve`: concurrent `$inc` PATCHes never
//! conflict and lose nothing, read-modify-write under contention loses no update,
//! and every acknowledged write survives `kill -9`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use truce_client::RetryPolicy;

/// Concurrent clients of the `$inc` and read-modify-write tests.
const CLIENTS: usize = 32;
/// `$inc` PATCHes per client: 9,600 in all, a few seconds in a debug build.
const PATCHES_PER_CLIENT: usize = 300;
/// Read-modify-write increments per client.
const UPDATES_PER_CLIENT: u64 = 50;
/// Writer threads of the crash test.
const CRASH_WRITERS: usize = 16;
/// Kill/restart cycles of the crash test.
const CRASH_CYCLES: u64 = 3;
/// Counters the crash test's PATCHes share (few, so they are contended).
const CRASH_COUNTERS: usize = 4;
/// Upper bound on one crash writer's requests per cycle, whatever the timing.
const CRASH_WRITES_MAX: usize = 20_000;
/// No single request may hang a test: a server that stops answering fails it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A test slower than this fails: throughput has collapsed (counts and request
/// timeouts already keep every test finite).
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// A blocking client with its own connection pool (keep-alive), as one
/// independent caller would have.
fn http() -> Client {
    common::http_client()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

fn get_doc(http: &Client, server: &Server, coll: &str, id: &str) -> Option<Value> {
    let response = http
        .get(format!("{}/v1/c/{coll}/{id}", server.url()))
        .send()
        .expect("GET");
    match response.status().as_u16() {
        200 => Some(response.json().expect("GET answers JSON")),
        404 => None,
        status => panic!(
            "GET {coll}/{id}: {status} {}",
            response.text().unwrap_or_default()
        ),
    }
}

/// Every live document of `coll`, by id, through the id-order query and its cursor.
fn all_docs(http: &Client, server: &Server, coll: &str) -> HashMap<String, Value> {
    let mut docs = HashMap::new();
    let mut after: Option<String> = None;
    // A bound on pages: far more than the test writes at 1,000 per page.
    for _ in 0..1_000 {
        let mut url = reqwest::Url::parse(&format!("{}/v1/c/{coll}", server.url())).expect("url");
        url.query_pairs_mut().append_pair("limit", "1000");
        if let Some(cursor) = &after {
            url.query_pairs_mut().append_pair("after", cursor);
        }
        let response = http.get(url).send().expect("query");
        assert_eq!(response.status().as_u16(), 200, "query {coll}");
        let page: Value = response.json().expect("query answers JSON");
        for doc in page["docs"].as_array().expect("docs") {
            docs.insert(doc["_id"].as_str().expect("_id").to_string(), doc.clone());
        }
        match page["next"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => return docs,
        }
    }
    panic!("query of {coll} did not end within 1,000 pages");
}

/// API.md: "concurrent PATCHes never conflict with each other". 32 clients
/// hammer one document with `$inc` + `$upsert`: every call must succeed, exactly
/// one creates, and the final count is the number of acknowledged calls.
#[test]
fn concurrent_inc_patches_never_conflict_and_lose_nothing() {
    let server = Server::start();
    let started = Instant::now();
    let url = format!("{}/v1/c/load/hot", server.url());
    // Everyone starts together, so the first PATCHes race on the upsert too.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let http = http();
                let body = json!({"$inc": {"n": 1}, "$upsert": true});
                let (mut acked, mut created, mut failures) = (0u64, 0u64, Vec::new());
                barrier.wait();
                for _ in 0..PATCHES_PER_CLIENT {
                    match http.patch(&url).json(&body).send() {
                        Ok(r) if r.status().is_success() => {
                            acked += 1;
                            created += u64::from(r.status().as_u16() == 201);
                        }
                        Ok(r) => failures.push(format!("{} {}", r.status(), r.text().unwrap_or_default())),
                        Err(e) => failures.push(format!("transport: {e}")),
                    }
                }
                (acked, created, failures)
            })
        })
        .collect();
    let (mut acked, mut created, mut failures) = (0, 0, Vec::new());
    for worker in workers {
        let (a, c, f) = worker.join().expect("client thread");
        acked += a;
        created += c;
        failures.extend(f);
    }
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} PATCHes failed, first: {:?}",
        failures.len(),
        &failures[..3.min(failures.len())]
    );
    assert_eq!(acked, (CLIENTS * PATCHES_PER_CLIENT) as u64);
    assert_eq!(created, 1, "exactly one upsert creates the document");
    let doc = get_doc(&http(), &server, "load", "hot").expect("the counter exists");
    assert_eq!(doc["n"], json!(acked), "every acknowledged $inc counted once");
    // Each $inc is a real change (never a no-op), so each made one version.
    assert_eq!(doc["_version"], json!(acked));
    eprintln!(
        "{acked} concurrent $inc PATCHes in {elapsed:?} ({:.0}/s)",
        acked as f64 / elapsed.as_secs_f64()
    );
    assert!(started.elapsed() < TEST_DEADLINE, "took {:?}", started.elapsed());
}

/// Read → modify → PUT at the version read, retried on conflict (the client's
/// `update_with_retry`), by 32 clients on one document: conflicts happen (else
/// there is no contention to test) and no increment is lost.
#[test]
fn read_modify_write_under_contention_loses_no_update() {
    let server = Server::start();
    let started = Instant::now();
    let url = server.url();
    // Patient retries with short waits: 32 writers on one document each win about
    // one round in 32, so the default 5 attempts would give up; full jitter spreads
    // the retries. The count of increments bounds the test, not the attempts.
    let policy = RetryPolicy::new(10_000, Duration::from_millis(2), Duration::from_millis(40));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    // How many times `modify` ran: one more than the conflicts of each call.
    let rounds = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, barrier, rounds) = (url.clone(), Arc::clone(&barrier), Arc::clone(&rounds));
            thread::spawn(move || {
                // One independent client per thread, each with its own runtime and pool.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let client = truce_client::Client::builder(&url)
                    .source("load-rmw")
                    .retry_policy(policy)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("client");
                barrier.wait();
                runtime.block_on(async {
                    for _ in 0..UPDATES_PER_CLIENT {
                        client
                            .update_with_retry("load", "rmw", |current| {
                                rounds.fetch_add(1, Ordering::Relaxed);
                                let n = current
                                    .and_then(|d| d.get("n"))
                                    .and_then(Value::as_u64)
                                    .unwrap_or(0);
                                json!({"n": n + 1})
                            })
                            .await
                            .expect("update_with_retry gives up only after 10,000 rounds");
                    }
                });
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
    let elapsed = started.elapsed();
    let expected = CLIENTS as u64 * UPDATES_PER_CLIENT;
    let conflicts = rounds.load(Ordering::Relaxed) - expected;
    let doc = get_doc(&http(), &server, "load", "rmw").expect("the counter exists");
    assert_eq!(
        doc["n"],
        json!(expected),
        "a lost update: n != {CLIENTS} x {UPDATES_PER_CLIENT}"
    );
    assert_eq!(doc["_version"], json!(expected), "one version per successful PUT");
    eprintln!("{expected} read-modify-write updates in {elapsed:?} with {conflicts} conflicts (409) retried");
    assert!(
        conflicts > 0,
        "no 409 at all: the clients did not contend, so nothing was tested"
    );
    assert!(elapsed < TEST_DEADLINE, "took {elapsed:?}");
}

/// What one crash-test writer saw acknowledged (2xx).
#[derive(Default)]
struct Acked {
    /// Created ids and the body sent.
    created: Vec<(String, Value)>,
    /// Per counter, the highest `n` an answer carried.
    counters: HashMap<String, u64>,
    /// Answers that were neither 2xx nor a transport error (never expected).
    unexpected: Vec<String>,
}

/// One write of the crash test.
enum CrashWrite {
    /// A create-only PUT of a fresh id with this body.
    Create(String, Value),
    /// A `$inc` PATCH (with `$upsert`) of this counter.
    Inc(String),
}

/// One writer until `stop`: create-only PUTs of fresh ids, and every third
/// request a `$inc` PATCH of a shared counter. Transport errors (the server was
/// killed) end nothing: they are the point of the test, and are not counted.
fn crash_writer(base: &str, cycle: u64, writer: usize, stop: &AtomicBool) -> Acked {
    let http = http();
    let mut acked = Acked::default();
    let patch = json!({"$inc": {"n": 1}, "$upsert": true});
    for i in 0..CRASH_WRITES_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (sent, write) = if i % 3 == 2 {
            let counter = format!("c{}", (writer + i) % CRASH_COUNTERS);
            let sent = http
                .patch(format!("{base}/v1/c/counters/{counter}"))
                .json(&patch)
                .send();
            (sent, CrashWrite::Inc(counter))
        } else {
            let id = format!("k{cycle}-w{writer:02}-{i:05}");
            let body = json!({"cycle": cycle, "writer": writer, "i": i, "pad": "x".repeat(64)});
            let sent = http.put(format!("{base}/v1/c/created/{id}")).json(&body).send();
            (sent, CrashWrite::Create(id, body))
        };
        match sent {
            Ok(response) if response.status().is_success() => match write {
                CrashWrite::Create(id, body) => acked.created.push((id, body)),
                CrashWrite::Inc(counter) => {
                    let answer: Value = response.json().expect("a write answer");
                    let n = answer["doc"]["n"].as_u64().expect("n");
                    if answer["version"].as_u64() != Some(n) {
                        acked
                            .unexpected
                            .push(format!("{counter}: n {n} but version {}", answer["version"]));
                    }
                    let best = acked.counters.entry(counter).or_default();
                    *best = (*best).max(n);
                }
            },
            Ok(response) => acked.unexpected.push(format!(
                "{} {}",
                response.status(),
                response.text().unwrap_or_default()
            )),
            // Refused or cut by the kill: a write in flight may or may not have
            // applied, so it is neither counted nor checked.
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    acked
}

/// Every write answered 2xx is durable: 16 writers run while the server is
/// SIGKILLed by PID, and after a restart on the same data directory everything
/// acknowledged is there. Three cycles, each checking every cycle so far.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let started = Instant::now();
    // Everything acknowledged so far, over all cycles.
    let mut created: BTreeMap<String, Value> = BTreeMap::new();
    let mut counters: HashMap<String, u64> = HashMap::new();
    for cycle in 0..CRASH_CYCLES {
        let base = server.url();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..CRASH_WRITERS)
            .map(|writer| {
                let (base, stop) = (base.clone(), Arc::clone(&stop));
                thread::spawn(move || crash_writer(&base, cycle, writer, &stop))
            })
            .collect();
        // Kill at a different point of each cycle: 300, 550, 800 ms in.
        thread::sleep(Duration::from_millis(300 + 250 * cycle));
        let pid = server.pid();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let (mut creates, mut incs, mut unexpected) = (0, 0, Vec::new());
        for writer in writers {
            let acked = writer.join().expect("writer thread");
            creates += acked.created.len();
            created.extend(acked.created);
            for (counter, n) in acked.counters {
                incs += 1;
                let best = counters.entry(counter).or_default();
                *best = (*best).max(n);
            }
            unexpected.extend(acked.unexpected);
        }
        assert!(
            unexpected.is_empty(),
            "cycle {cycle}: unexpected answers: {:?}",
            &unexpected[..3.min(unexpected.len())]
        );
        assert!(
            creates > 0 && incs > 0,
            "cycle {cycle}: the kill came before any write was acknowledged"
        );

        server.restart();
        let http = http();
        let stored = all_docs(&http, &server, "created");
        for (id, body) in &created {
            let doc = stored
                .get(id)
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged create {id} is lost"));
            for (field, value) in body.as_object().expect("body") {
                assert_eq!(&doc[field], value, "cycle {cycle}: {id}.{field}");
            }
            assert_eq!(doc["_version"], json!(1), "cycle {cycle}: {id} was written once");
        }
        for (counter, acked_n) in &counters {
            let doc = get_doc(&http, &server, "counters", counter)
                .unwrap_or_else(|| panic!("cycle {cycle}: counter {counter} is lost"));
            let n = doc["n"].as_u64().expect("n");
            // Unacknowledged increments in flight at the kill may have applied too.
            assert!(
                n >= *acked_n,
                "cycle {cycle}: {counter}.n = {n} < acknowledged {acked_n}"
            );
            assert_eq!(
                doc["_version"],
                json!(n),
                "cycle {cycle}: {counter}: one version per $inc"
            );
        }
        eprintln!(
            "cycle {cycle}: killed pid {pid}; {} creates and counters {counters:?} acknowledged so far, all present \
             ({:?})",
            created.len(),
            started.elapsed()
        );
    }
    assert!(started.elapsed() < TEST_DEADLINE, "took {:?}", started.elapsed());
}
