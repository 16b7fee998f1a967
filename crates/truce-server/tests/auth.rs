//! API keys, roles, collection scopes, key reloads, the refusal to expose a
//! server without keys, and TLS — through the real `truce` binary.
//!
//! Keys are made with the binary itself (`truce keys create` prints the key on
//! stdout), before the server starts on that data directory or while it runs
//! (the server reloads the keys file about once a second).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use common::{RUN_BOUND, Reply, Server, Spawned, free_port, run_bounded, truce_bin};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How long a running server may take to see a changed keys file (it looks about
/// once a second; API.md and the brief say "within ~2 s").
const RELOAD_WITHIN: Duration = Duration::from_millis(3000);

/// A client of one server, sending `Authorization: Bearer <key>` when given one.
struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(base: &str) -> Api {
        let http = common::http_client()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Api {
            base: base.to_string(),
            http,
        }
    }

    fn call(&self, key: Option<&str>, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap_or_else(|e| panic!("{what}: {e}"));
        Reply::read(response, &what)
    }

    fn get(&self, key: Option<&str>, path: &str) -> Reply {
        self.call(key, Method::GET, path, None)
    }

    fn put(&self, key: Option<&str>, path: &str, body: Value) -> Reply {
        self.call(key, Method::PUT, path, Some(&body))
    }

    /// A `PUT` under an `Idempotency-Key`.
    fn put_keyed(&self, key: &str, path: &str, body: Value, idempotency_key: &str) -> Reply {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", idempotency_key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("request");
        Reply::read(response, path)
    }

    /// Sends a raw `Authorization` header value.
    fn get_with_authorization(&self, authorization: &str, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("authorization", authorization)
            .send()
            .expect("request");
        Reply::read(response, path)
    }

    /// Polls `path` with `key` until it answers `status`; how long that took.
    fn wait_for_status(&self, key: Option<&str>, path: &str, status: u16) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(8);
        loop {
            let reply = self.get(key, path);
            if reply.status == status {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered {status}; last: {} {}",
                reply.status,
                reply.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `truce keys create --role ROLE [--collections C] --data DIR`; the key it prints.
fn create_key(data: &Path, role: &str, collections: Option<&str>) -> String {
    let mut command = Command::new(truce_bin());
    command.args(["keys", "create", "--role", role]);
    if let Some(collections) = collections {
        command.args(["--collections", collections]);
    }
    let out = command
        .arg("--data")
        .arg(data)
        .output()
        .expect("truce keys create");
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert!(
        key.starts_with("truce_"),
        "a key reads truce_<id>_<secret>: {key}"
    );
    key
}

/// The public id of a key (`truce_<id>_<secret>`).
fn key_id(key: &str) -> &str {
    key.strip_prefix("truce_")
        .and_then(|rest| rest.split('_').next())
        .expect("key id")
}

/// Runs `truce keys revoke ID --data DIR`.
fn revoke_key(data: &Path, key: &str) {
    let out = Command::new(truce_bin())
        .args(["keys", "revoke", key_id(key), "--data"])
        .arg(data)
        .output()
        .expect("truce keys revoke");
    assert!(
        out.status.success(),
        "keys revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `truce serve` started without the harness (for `--listen` addresses the
/// harness does not use); ended by its PID on drop.
/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Read,
    Write,
    Admin,
}

/// One request of each route class, made unique by `tag` where it writes.
fn routes(tag: &str) -> Vec<(&'static str, Method, String, Option<Value>, Role)> {
    vec![
        (
            "get a document",
            Method::GET,
            "/v1/c/a/base".into(),
            None,
            Role::Read,
        ),
        (
            "query in id order",
            Method::GET,
            "/v1/c/a?limit=5".into(),
            None,
            Role::Read,
        ),
        (
            "query an index",
            Method::GET,
            "/v1/c/a?index=by_n&eq=1".into(),
            None,
            Role::Read,
        ),
        (
            "list indexes",
            Method::GET,
            "/v1/c/a/_indexes".into(),
            None,
            Role::Read,
        ),
        ("list collections", Method::GET, "/v1/c".into(), None, Role::Read),
        (
            "collection changes",
            Method::GET,
            "/v1/c/a/_changes?limit=5".into(),
            None,
            Role::Read,
        ),
        (
            "all changes",
            Method::GET,
            "/v1/_changes?limit=5".into(),
            None,
            Role::Read,
        ),
        (
            "long poll",
            Method::GET,
            "/v1/c/a/_changes?feed=longpoll&since=0&timeout=100".into(),
            None,
            Role::Read,
        ),
        (
            "check-only tx",
            Method::POST,
            "/v1/tx".into(),
            Some(json!({"ops": [{"op": "check", "c": "a", "id": "base"}]})),
            Role::Read,
        ),
        (
            "put",
            Method::PUT,
            format!("/v1/c/a/put-{tag}"),
            Some(json!({"by": tag})),
            Role::Write,
        ),
        (
            "patch",
            Method::PATCH,
            "/v1/c/a/base".into(),
            Some(json!({"$inc": {"hits": 1}})),
            Role::Write,
        ),
        (
            "delete",
            Method::DELETE,
            format!("/v1/c/a/del-{tag}?version=-1"),
            None,
            Role::Write,
        ),
        (
            "writing tx",
            Method::POST,
            "/v1/tx".into(),
            Some(json!({"ops": [{"op": "put", "c": "a", "id": format!("tx-{tag}"), "doc": {}}]})),
            Role::Write,
        ),
        (
            "put an index",
            Method::PUT,
            format!("/v1/c/a/_indexes/ix_{tag}"),
            Some(json!({"fields": ["n"]})),
            Role::Admin,
        ),
    ]
}

/// Creates what [`routes`] reads and deletes, with `key`.
fn prepare_routes(api: &Api, key: Option<&str>, tags: &[&str]) {
    assert!(api.put(key, "/v1/c/a/base", json!({"n": 1})).is_success());
    for tag in tags {
        assert!(
            api.put(key, &format!("/v1/c/a/del-{tag}"), json!({}))
                .is_success()
        );
    }
    let index = api.put(key, "/v1/c/a/_indexes/by_n", json!({"fields": ["n"]}));
    assert!(index.is_success(), "{}", index.text);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(key, "/v1/c/a?index=by_n&eq=1").status != 200 {
        assert!(Instant::now() < deadline, "index by_n not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn without_keys_everything_is_answered() {
    let server = Server::start();
    let api = Api::new(&server.url());
    prepare_routes(&api, None, &["anon"]);
    for (what, method, path, body, _) in routes("anon") {
        let reply = api.call(None, method, &path, body.as_ref());
        assert!(
            reply.is_success(),
            "{what} without keys: {} {}",
            reply.status,
            reply.text
        );
    }
    // With no keys, an Authorization header is not even looked at.
    assert_eq!(api.get(Some("truce_0000_0000"), "/v1/c/a/base").status, 200);
}

#[test]
fn every_role_against_every_route_class() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = [
        (Role::Read, create_key(&data, "read", None)),
        (Role::Write, create_key(&data, "write", None)),
        (Role::Admin, create_key(&data, "admin", None)),
    ];
    let admin = keys[2].1.clone();
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());
    let tags = ["Read", "Write", "Admin", "none"];
    prepare_routes(&api, Some(&admin), &tags);

    for (role, key) in &keys {
        let tag = format!("{role:?}");
        for (what, method, path, body, needs) in routes(&tag) {
            let reply = api.call(Some(key), method, &path, body.as_ref());
            if *role >= needs {
                assert!(
                    reply.is_success(),
                    "{role:?} key, {what}: {} {}",
                    reply.status,
                    reply.text
                );
            } else {
                reply.error(403, "forbidden");
            }
        }
    }
    // Refused writes wrote nothing.
    let admin = Some(admin.as_str());
    assert_eq!(api.get(admin, "/v1/c/a/put-Read").status, 404);
    assert_eq!(api.get(admin, "/v1/c/a/tx-Read").status, 404);
    assert_eq!(api.get(admin, "/v1/c/a/del-Read").status, 200);
    assert_eq!(
        api.get(admin, "/v1/c/a/base").json["hits"],
        2,
        "write and admin patched, read did not"
    );
    let indexes = api.get(admin, "/v1/c/a/_indexes").text;
    assert!(indexes.contains("ix_Admin") && !indexes.contains("ix_Write") && !indexes.contains("ix_Read"));

    // No key, a wrong key, or a malformed header: 401 on every route class.
    let mut wrong = keys[2].1.clone();
    let last = if wrong.ends_with('0') { '1' } else { '0' };
    wrong.pop();
    wrong.push(last);
    for (what, method, path, body, _) in routes("none") {
        api.call(None, method.clone(), &path, body.as_ref())
            .error(401, "unauthorized");
        let reply = api.call(Some(&wrong), method.clone(), &path, body.as_ref());
        assert_eq!(reply.status, 401, "{what} with a wrong key: {}", reply.text);
        api.call(Some("truce_nope_00"), method, &path, body.as_ref())
            .error(401, "unauthorized");
    }
    api.get_with_authorization(&keys[2].1, "/v1/c")
        .error(401, "unauthorized");
    api.get_with_authorization(&format!("Basic {}", keys[2].1), "/v1/c")
        .error(401, "unauthorized");
    api.get_with_authorization("Bearer ", "/v1/c")
        .error(401, "unauthorized");
    assert_eq!(
        api.get(admin, "/v1/c/a/put-none").status,
        404,
        "unauthenticated writes wrote nothing"
    );

    // Health and the API description stay open. Without a valid key,
    // health is its status alone; any valid key sees the details.
    let health = api.get(None, "/healthz");
    assert_eq!((health.status, &health.json), (200, &json!({"status": "ok"})));
    let health = api.get_with_authorization("Bearer truce_0000000000000000_00", "/healthz");
    assert_eq!((health.status, &health.json), (200, &json!({"status": "ok"})));
    let health = api.get(Some(&keys[0].1), "/healthz");
    assert_eq!(health.status, 200);
    assert!(health.json["durable_seq"].as_u64().is_some(), "{}", health.text);
    assert!(
        health.json["disk"]["free_bytes"].as_u64().is_some(),
        "{}",
        health.text
    );
    let openapi = api.get(None, "/openapi.json");
    assert_eq!(openapi.status, 200);
    assert!(openapi.json["openapi"].as_str().unwrap().starts_with("3."));

    // SSE follows the same rules (the stream is dropped once its status is known).
    let sse = |key: Option<&str>| {
        let mut request = api
            .http
            .get(format!("{}/v1/c/a/_changes?feed=sse&since=now", server.url()));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        request.send().expect("SSE").status().as_u16()
    };
    assert_eq!(sse(Some(&keys[0].1)), 200);
    assert_eq!(sse(None), 401);
}

#[test]
fn collection_scoped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = create_key(&data, "admin", None);
    let only_a = create_key(&data, "write", Some("a"));
    let a_and_b = create_key(&data, "read", Some("a,b"));
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());
    for coll in ["a", "b", "c"] {
        assert!(
            api.put(Some(&admin), &format!("/v1/c/{coll}/doc"), json!({"n": 1}))
                .is_success()
        );
    }
    let key = Some(only_a.as_str());

    // Collection a: read and write.
    assert_eq!(api.get(key, "/v1/c/a/doc").status, 200);
    assert_eq!(api.put(key, "/v1/c/a/new", json!({})).status, 201);
    assert_eq!(
        api.call(
            key,
            Method::PATCH,
            "/v1/c/a/doc",
            Some(&json!({"$inc": {"n": 1}}))
        )
        .status,
        200
    );
    assert_eq!(
        api.call(key, Method::DELETE, "/v1/c/a/new?version=-1", None)
            .status,
        200
    );
    assert_eq!(api.get(key, "/v1/c/a?limit=10").status, 200);
    assert_eq!(api.get(key, "/v1/c/a/_changes").status, 200);
    assert_eq!(api.get(key, "/v1/c/a/_indexes").status, 200);
    let tx_a = json!({"ops": [{"op": "put", "c": "a", "id": "t1", "doc": {}}]});
    assert_eq!(api.call(key, Method::POST, "/v1/tx", Some(&tx_a)).status, 200);

    // Collection b: 403 for everything.
    api.get(key, "/v1/c/b/doc").error(403, "forbidden");
    api.get(key, "/v1/c/b?limit=10").error(403, "forbidden");
    api.get(key, "/v1/c/b/_changes").error(403, "forbidden");
    api.get(key, "/v1/c/b/_indexes").error(403, "forbidden");
    api.put(key, "/v1/c/b/new", json!({})).error(403, "forbidden");
    api.call(
        key,
        Method::PATCH,
        "/v1/c/b/doc",
        Some(&json!({"$inc": {"n": 1}})),
    )
    .error(403, "forbidden");
    api.call(key, Method::DELETE, "/v1/c/b/doc?version=-1", None)
        .error(403, "forbidden");
    let tx_ab = json!({"ops": [{"op": "put", "c": "a", "id": "t2", "doc": {}},
                               {"op": "patch", "c": "b", "id": "doc", "update": {"$inc": {"n": 1}}}]});
    api.call(key, Method::POST, "/v1/tx", Some(&tx_ab))
        .error(403, "forbidden");
    let check_b = json!({"ops": [{"op": "check", "c": "b", "id": "doc"}]});
    api.call(key, Method::POST, "/v1/tx", Some(&check_b))
        .error(403, "forbidden");
    assert_eq!(
        api.get(Some(&admin), "/v1/c/a/t2").status,
        404,
        "a refused transaction writes nothing"
    );
    assert_eq!(api.get(Some(&admin), "/v1/c/b/doc").json["n"], 1);

    // The feed of every collection is refused to scoped keys; /v1/c lists only theirs.
    api.get(key, "/v1/_changes").error(403, "forbidden");
    api.get(key, "/v1/_changes?feed=longpoll&timeout=100")
        .error(403, "forbidden");
    assert_eq!(
        api.get(key, "/v1/c").json,
        json!({"collections": ["a"], "next": null})
    );
    assert_eq!(
        api.get(Some(&a_and_b), "/v1/c").json,
        json!({"collections": ["a", "b"], "next": null})
    );
    // Pages hold only the key's collections: `c`, after `b`, is no next page.
    assert_eq!(
        api.get(Some(&a_and_b), "/v1/c?limit=1").json,
        json!({"collections": ["a"], "next": "a"})
    );
    assert_eq!(
        api.get(Some(&a_and_b), "/v1/c?limit=1&after=a").json,
        json!({"collections": ["b"], "next": null})
    );
    let all = api.get(Some(&admin), "/v1/c").json["collections"].clone();
    assert!(all.as_array().unwrap().len() >= 3, "{all}");

    // A read key limited to a and b: reads both, writes neither, not c.
    assert_eq!(api.get(Some(&a_and_b), "/v1/c/b/doc").status, 200);
    api.get(Some(&a_and_b), "/v1/c/c/doc").error(403, "forbidden");
    api.put(Some(&a_and_b), "/v1/c/a/x", json!({}))
        .error(403, "forbidden");
    // A write key cannot declare indexes, even in its own collection.
    api.put(key, "/v1/c/a/_indexes/i", json!({"fields": ["n"]}))
        .error(403, "forbidden");

    // An admin of a alone may neither declare a counter that writes into b
    // nor take away one that does: its targets would change either way.
    let admin_of_a = create_key(&data, "admin", Some("a"));
    api.wait_for_status(Some(&admin_of_a), "/v1/c/a/_config", 200);
    let into_b = json!({"counters": [{"name": "n", "group_by": "g", "target": {"c": "b", "field": "n"}}]});
    api.put(Some(&admin_of_a), "/v1/c/a/_config", into_b.clone())
        .error(403, "forbidden");
    assert!(
        api.put(Some(&admin), "/v1/c/a/_config", into_b.clone())
            .is_success()
    );
    api.put(Some(&admin_of_a), "/v1/c/a/_config", json!({}))
        .error(403, "forbidden");
    api.put(
        Some(&admin_of_a),
        "/v1/c/a/_config",
        json!({"ttl": {"field": "t", "seconds": 60}}),
    )
    .error(403, "forbidden");
    assert_eq!(
        api.get(Some(&admin), "/v1/c/a/_config").json["counters"][0]["name"],
        "n"
    );
    // Without such a counter, its own collection's configuration is its own.
    assert!(api.put(Some(&admin), "/v1/c/a/_config", json!({})).is_success());
    assert!(
        api.put(
            Some(&admin_of_a),
            "/v1/c/a/_config",
            json!({"ttl": {"field": "t", "seconds": 60}})
        )
        .is_success()
    );
}

/// A scoped admin's change of its collection's configuration is judged by
/// the configuration it replaces, even when a global admin changes it at the
/// same moment: a counter the global admin declares into a collection the
/// scoped key may not write is never removed by the scoped key. (Before, the
/// server read the configuration, judged, then stored the new one: a counter
/// declared between the two was replaced without being judged. A race, so
/// the test runs many rounds of it; without the lock it failed in each of
/// several runs.)
#[test]
fn a_scoped_admin_never_replaces_a_counter_it_may_not_remove() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = create_key(&data, "admin", None);
    let admin_of_a = create_key(&data, "admin", Some("a"));
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());
    let into_b = json!({"counters": [{"name": "n", "group_by": "g", "target": {"c": "b", "field": "n"}}]});
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let scoped = {
        let (stop, answered, base) = (Arc::clone(&stop), Arc::clone(&answered), server.url());
        std::thread::spawn(move || {
            let api = Api::new(&base);
            let mut replaced = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = api.put(Some(&admin_of_a), "/v1/c/a/_config", json!({}));
                match reply.status {
                    200 => replaced += 1,
                    _ => assert_eq!(reply.error(403, "forbidden")["error"], "forbidden"),
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            replaced
        })
    };
    // Waits until every scoped request sent before now has been answered.
    let settle = || {
        let (seen, deadline) = (
            answered.load(Ordering::SeqCst),
            Instant::now() + Duration::from_secs(20),
        );
        while answered.load(Ordering::SeqCst) < seen + 2 {
            assert!(Instant::now() < deadline, "the scoped admin stopped");
            std::thread::yield_now();
        }
    };
    for round in 0..ROUNDS {
        api.put(Some(&admin), "/v1/c/a/_config", into_b.clone()).ok(200);
        settle();
        let config = api.get(Some(&admin), "/v1/c/a/_config");
        assert_eq!(
            config.ok(200)["counters"][0]["name"],
            "n",
            "round {round}: the scoped key removed the global admin's counter"
        );
        api.put(Some(&admin), "/v1/c/a/_config", json!({})).ok(200);
        settle();
    }
    stop.store(true, Ordering::Relaxed);
    let replaced = scoped.join().expect("the scoped admin");
    assert!(replaced > 0, "the scoped key never changed its configuration");
}

/// `/v1/insights` for a key limited to some collections counts only their
/// conflicts. Past `INSIGHT_LABEL_SETS_MAX` label sets the engine counts the
/// rest under `_other`, which cannot be told apart by collection: a scoped
/// key must not see it (it would count other tenants' conflicts).
#[test]
fn insights_of_a_scoped_key_count_only_its_collections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = create_key(&data, "admin", None);
    let only_a = create_key(&data, "read", Some("a"));
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());
    assert!(api.put(Some(&admin), "/v1/c/c/doc", json!({})).is_success());
    // One conflict in a, then more distinct (collection, source) label sets
    // in c than the engine keeps apart.
    let conflict = |coll: &str, source: String| {
        let tx = json!({"source": source,
                        "ops": [{"op": "put", "c": coll, "id": "doc", "doc": {}, "version": 99}]});
        let reply = api.call(Some(&admin), Method::POST, "/v1/tx", Some(&tx));
        assert_eq!(reply.status, 409, "{}", reply.text);
    };
    conflict("a", "mine".into());
    for i in 0..=truce::limits::INSIGHT_LABEL_SETS_MAX {
        conflict("c", format!("s{i}"));
    }
    let everything = api.get(Some(&admin), "/v1/insights").json["totals"].clone();
    assert!(
        everything["conflicts_by_source"]["_other"].as_u64() > Some(0),
        "{everything}"
    );
    let mine = api.get(Some(&only_a), "/v1/insights").json["totals"].clone();
    assert_eq!(mine["conflicts"], 1, "{mine}");
    assert_eq!(mine["conflicts_by_source"], json!({"mine": 1}), "{mine}");
    // Its hot spots are its own `limit` hottest: c's, hotter, took its one
    // place and left it an empty list (and stepping `limit` told how many
    // of others' rank above).
    let top = api.get(Some(&only_a), "/v1/insights?limit=1").json["hot_spots"].clone();
    assert_eq!(top.as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(
        (&top[0]["collection"], &top[0]["document"]),
        (&json!("a"), &json!("doc")),
        "{top}"
    );
    let all = api.get(Some(&admin), "/v1/insights?limit=1").json["hot_spots"].clone();
    assert_eq!(all[0]["collection"], "c", "{all}");
}

/// Idempotency keys belong to the API key that sent them: a client limited to
/// collection `a` cannot take (or learn of) a key a client of `b` will use,
/// and each API key's retries still get their first answers.
#[test]
fn idempotency_keys_are_kept_apart_by_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let only_a = create_key(&data, "write", Some("a"));
    let only_b = create_key(&data, "write", Some("b"));
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());

    let first = api.put_keyed(&only_a, "/v1/c/a/x", json!({"by": "a"}), "order-1");
    assert_eq!(first.status, 201, "{}", first.text);
    // The same key from another API key is another key: written, not refused
    // as reused (nor answered with a's answer).
    let other = api.put_keyed(&only_b, "/v1/c/b/y", json!({"by": "b"}), "order-1");
    assert_eq!(other.status, 201, "{}", other.text);
    assert_eq!(other.json["id"], "y");
    // Each one's retry is answered as the first time.
    let again = api.put_keyed(&only_a, "/v1/c/a/x", json!({"by": "a"}), "order-1");
    assert_eq!((again.status, &again.json), (201, &first.json));
    // Reused with another request, the error names the key as it was sent.
    let reused = api.put_keyed(&only_b, "/v1/c/b/z", json!({"by": "b"}), "order-1");
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.json["error"], "idempotency_key_reused");
    assert!(
        reused.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"order-1\"")),
        "{}",
        reused.text
    );
    // The key is still checked as sent.
    let long = api.put_keyed(&only_a, "/v1/c/a/w", json!({}), &"k".repeat(256));
    assert_eq!(
        (long.status, long.json["error"].as_str()),
        (400, Some("invalid_transaction"))
    );
}

/// A backup holds every collection and the keys: only an admin key not
/// limited to some collections may start or follow one, and a server started
/// on the backup knows the same keys.
#[test]
fn backups_need_an_admin_of_everything_and_carry_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = create_key(&data, "admin", None);
    let scoped_admin = create_key(&data, "admin", Some("a"));
    let writer = create_key(&data, "write", None);
    let server = Server::start_in(&data, &[]);
    let api = Api::new(&server.url());
    assert!(api.put(Some(&admin), "/v1/c/a/doc", json!({"n": 1})).is_success());
    let target = dir.path().join("backup");
    let body = json!({"path": target});
    for key in [None, Some(writer.as_str()), Some(scoped_admin.as_str())] {
        let refused = api.call(key, Method::POST, "/v1/_backup", Some(&body));
        assert!(matches!(refused.status, 401 | 403), "{key:?}: {}", refused.text);
        let refused = api.get(key, "/v1/_backup");
        assert!(matches!(refused.status, 401 | 403), "{key:?}: {}", refused.text);
    }
    assert!(!target.exists());
    let started = api.call(Some(&admin), Method::POST, "/v1/_backup", Some(&body));
    assert_eq!(started.status, 202, "{}", started.text);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get(Some(&admin), "/v1/_backup").json["state"] == "running" {
        assert!(Instant::now() < deadline, "the backup did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api.get(Some(&admin), "/v1/_backup").json["state"], "done");
    drop(server);
    let restored = Server::start_in(&target, &[]);
    let api = Api::new(&restored.url());
    assert_eq!(api.get(Some(&admin), "/v1/c/a/doc").json["n"], 1);
    assert_eq!(api.get(None, "/v1/c/a/doc").status, 401, "its keys came with it");
}

#[test]
fn keys_created_and_revoked_while_running_take_effect_within_seconds() {
    let server = Server::start();
    let data = server.data.clone();
    let api = Api::new(&server.url());
    assert_eq!(api.get(None, "/v1/c").status, 200, "no keys yet: open");

    // The first key turns authentication on.
    let admin = create_key(&data, "admin", None);
    let took = api.wait_for_status(None, "/v1/c", 401);
    assert!(took < RELOAD_WITHIN, "a new key took {took:?} to take effect");
    assert_eq!(api.get(Some(&admin), "/v1/c").status, 200);

    // A second key works within seconds too.
    let reader = create_key(&data, "read", None);
    let took = api.wait_for_status(Some(&reader), "/v1/c", 200);
    assert!(took < RELOAD_WITHIN, "a new key took {took:?} to work");

    // `keys list` shows ids, never secrets.
    let out = Command::new(truce_bin())
        .args(["keys", "list", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(key_id(&admin)) && listed.contains(key_id(&reader)),
        "{listed}"
    );
    assert!(
        !listed.contains(admin.rsplit('_').next().unwrap()),
        "no secret in keys list"
    );

    // Revoking makes the key fail within seconds; the other keeps working.
    revoke_key(&data, &reader);
    let took = api.wait_for_status(Some(&reader), "/v1/c", 401);
    assert!(took < RELOAD_WITHIN, "a revoked key kept working for {took:?}");
    assert_eq!(api.get(Some(&admin), "/v1/c").status, 200);

    // A revocation written in the same timestamp tick as the file the server last
    // loaded (coarse file-system clocks) is still seen.
    let rotated = create_key(&data, "write", None);
    api.wait_for_status(Some(&rotated), "/v1/c", 200);
    let file = data.join("api-keys.json");
    let loaded_mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    revoke_key(&data, &rotated);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(loaded_mtime)
        .unwrap();
    let took = api.wait_for_status(Some(&rotated), "/v1/c", 401);
    assert!(
        took < RELOAD_WITHIN,
        "a revocation with an unchanged mtime took {took:?}"
    );

    // Revoking an unknown id fails.
    let out = Command::new(truce_bin())
        .args(["keys", "revoke", "0123456789abcdef", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Revoking the last key does not open the server again, though it
    // listens on loopback only (a reverse proxy may make it reachable).
    revoke_key(&data, &admin);
    let took = api.wait_for_status(Some(&admin), "/v1/c", 401);
    assert!(took < RELOAD_WITHIN, "the last key kept working for {took:?}");
    std::thread::sleep(RELOAD_WITHIN);
    let refused = api.get(None, "/v1/c");
    refused.error(401, "unauthorized");
    assert!(refused.text.contains("keys create"), "{}", refused.text);
    api.put(None, "/v1/c/a/after-the-last-key", json!({}))
        .error(401, "unauthorized");
}

/// A client for feeds that last: one answer may take up to 20 s.
fn streaming_client() -> Client {
    common::http_client()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A feed open when its key is revoked ends (an event stream) or is refused
/// (a long poll) within seconds, and never delivers what is written after:
/// revoking a leaked key must end its access, and a stream would otherwise
/// stay open for ever on its keep-alives.
#[test]
fn open_feeds_end_when_their_key_is_revoked() {
    let server = Server::start();
    let data = server.data.clone();
    let api = Api::new(&server.url());
    let admin = create_key(&data, "admin", None);
    let reader = create_key(&data, "read", None);
    let scoped = create_key(&data, "read", Some("a"));
    api.wait_for_status(Some(&scoped), "/v1/c/a/x", 404);
    api.put(Some(&admin), "/v1/c/a/before", json!({})).ok(201);
    let streaming = streaming_client();
    let feeds = [
        (&reader, "/v1/_changes?feed=sse&since=now&include_docs=true"),
        (&scoped, "/v1/c/a/_changes?feed=sse&since=now&include_docs=true"),
        (&scoped, "/v1/c/a/_pull/stream"),
        (
            &reader,
            "/v1/c/a/_changes?feed=longpoll&since=now&include_docs=true&timeout=15000",
        ),
        (
            &scoped,
            "/couch/a/_changes?feed=longpoll&since=now&include_docs=true&timeout=15000",
        ),
    ];
    let readers: Vec<_> = feeds
        .iter()
        .map(|(key, path)| {
            let request = streaming
                .get(format!("{}{path}", server.url()))
                .header("authorization", format!("Bearer {key}"));
            let path = path.to_string();
            std::thread::spawn(move || {
                // Everything the feed sends until it ends: its status and body.
                let response = request.send().unwrap_or_else(|e| panic!("{path}: {e}"));
                let status = response.status().as_u16();
                let body = response
                    .text()
                    .unwrap_or_else(|e| panic!("{path} did not end: {e}"));
                (path, status, body)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    revoke_key(&data, &reader);
    revoke_key(&data, &scoped);
    api.wait_for_status(Some(&reader), "/v1/c/a/x", 401);
    api.wait_for_status(Some(&scoped), "/v1/c/a/x", 401);
    std::thread::sleep(Duration::from_millis(1500));
    api.put(Some(&admin), "/v1/c/a/after", json!({"secret": "s3cr3t"}))
        .ok(201);
    for reader in readers {
        let (path, status, body) = reader.join().expect("a feed reader");
        assert!(
            !body.contains("s3cr3t"),
            "{path} delivered a write made after its key was revoked: {body}"
        );
        if path.contains("longpoll") {
            assert_eq!(status, 401, "{path}: {body}");
        } else {
            assert_eq!(status, 200, "{path}");
        }
    }
}

/// A request that can only write, from a key that may not write there, is
/// refused before its body is read: a body that is not JSON is 403, not
/// 400, on every write route (the direct document path, the router's, and
/// `/couch`), and from a write key on every route that only administers. The handler refused it only after taking and parsing the
/// body, so a read key could make the server parse bodies up to
/// `--max-body-bytes`. Reads with a body still pass: a transaction of
/// checks, `_all_docs` by keys.
#[test]
fn a_key_that_may_not_write_is_refused_before_its_body() {
    let server = Server::start();
    let data = server.data.clone();
    let api = Api::new(&server.url());
    let admin = create_key(&data, "admin", None);
    let reader = create_key(&data, "read", None);
    let elsewhere = create_key(&data, "write", Some("other"));
    let writer = create_key(&data, "write", None);
    api.wait_for_status(None, "/v1/c/a/x", 401);
    api.put(Some(&admin), "/v1/c/a/doc", json!({"n": 1})).ok(201);
    let http = streaming_client();
    let send = |key: &str, method: Method, path: &str| {
        http.request(method, format!("{}{path}", server.url()))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body("this is not JSON")
            .send()
            .expect("request")
    };
    for (method, path) in [
        (Method::PUT, "/v1/c/a/doc"),
        (Method::PATCH, "/v1/c/a/doc"),
        (Method::PUT, "/v1/c/a/_config"),
        (Method::PUT, "/v1/c/a/_indexes/by_n"),
        (Method::POST, "/v1/c/a/_push"),
        (Method::POST, "/v1/_backup"),
        (Method::POST, "/couch/a/_bulk_docs"),
        (Method::PUT, "/couch/a/doc"),
    ] {
        // A write key of other collections, where the path names one (a
        // backup's admin role is its handler's to check, after the body).
        let keys = match path.contains("/a") {
            true => vec![&reader, &elsewhere],
            false => vec![&reader],
        };
        for key in keys {
            let answer = send(key, method.clone(), path);
            assert_eq!(answer.status(), 403, "{method} {path}");
        }
    }
    // The collection as the router decodes it: `%61` is `a`.
    for path in ["/v1/c/%61/doc", "/v1/c/%61/_push", "/couch/%61/_bulk_docs"] {
        let method = if path.ends_with("doc") {
            Method::PUT
        } else {
            Method::POST
        };
        assert_eq!(send(&elsewhere, method, path).status(), 403, "{path}");
    }
    // A method a route does not have, and a path none has, answer as they
    // did: 405 and 404, not a write refused.
    assert_eq!(send(&reader, Method::DELETE, "/v1/c/a/_config").status(), 405);
    assert_eq!(send(&reader, Method::PUT, "/couch/a/_all_docs").status(), 405);
    assert_eq!(send(&reader, Method::POST, "/couch/a/_bulk_get").status(), 404);
    // Reads that carry a body are the handlers' to judge.
    let checks = json!({"ops": [{"op": "check", "c": "a", "id": "doc", "version": 1}]});
    api.call(Some(&reader), Method::POST, "/v1/tx", Some(&checks))
        .ok(200);
    let keys = json!({"keys": ["doc"]});
    api.call(Some(&reader), Method::POST, "/couch/a/_all_docs", Some(&keys))
        .ok(200);
    assert_eq!(send(&reader, Method::POST, "/v1/tx").status(), 400);
    // A route that only administers refuses a write key before its body,
    // too; a write key's writes get their bodies read: 400 for this one.
    for (method, path) in [
        (Method::PUT, "/v1/c/a/_config"),
        (Method::PUT, "/v1/c/a/_indexes/by_n"),
        (Method::POST, "/v1/_backup"),
    ] {
        let answer = send(&writer, method.clone(), path);
        assert_eq!(answer.status(), 403, "{method} {path}");
        assert_eq!(
            send(&admin, method.clone(), path).status(),
            400,
            "{method} {path}"
        );
    }
    assert_eq!(send(&writer, Method::PUT, "/v1/c/a/doc").status(), 400);
    assert_eq!(send(&admin, Method::PUT, "/v1/c/a/doc").status(), 400);
}

/// `--max-streams-per-key`: one key holds at most that many long polls and
/// event streams at once, on every route that opens one; its next is 429
/// `overloaded`, while another key still opens its own; a long poll's place
/// comes back when it answers, a stream's when its client goes. One key
/// could take every place the server has, from every other tenant.
#[test]
fn each_key_holds_at_most_its_streams() {
    let server = Server::start_with(&["--max-streams-per-key", "2"]);
    let data = server.data.clone();
    let api = Api::new(&server.url());
    let admin = create_key(&data, "admin", None);
    let tenant = create_key(&data, "read", Some("a"));
    let other = create_key(&data, "read", Some("a"));
    // Until the server has read the keys, it serves anyone, uncounted.
    api.wait_for_status(None, "/v1/c/a/x", 401);
    let streaming = streaming_client();
    let open = |key: &str, path: &str| {
        streaming
            .get(format!("{}{path}", server.url()))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    // A long poll that answered holds nothing.
    let polled = open(&tenant, "/v1/c/a/_changes?feed=longpoll&since=now&timeout=50");
    assert_eq!(polled.status(), 200);
    drop(polled);
    let sse = open(&tenant, "/v1/c/a/_changes?feed=sse&since=now");
    assert_eq!(sse.status(), 200);
    let pull = open(&tenant, "/v1/c/a/_pull/stream");
    assert_eq!(pull.status(), 200);
    for path in [
        "/v1/c/a/_changes?feed=sse&since=now",
        "/v1/c/a/_pull/stream",
        "/v1/c/a/_changes?feed=longpoll&since=now&timeout=50",
        "/couch/a/_changes?feed=longpoll&since=now&timeout=50",
    ] {
        let refused = open(&tenant, path);
        assert_eq!(refused.status(), 429, "{path}");
        assert!(refused.headers().contains_key("retry-after"), "{path}");
        // `/couch` answers in CouchDB's shape.
        let (code, said) = if path.starts_with("/couch") {
            ("too_many_requests", "reason")
        } else {
            ("overloaded", "message")
        };
        let body: Value = refused.json().expect("a JSON error");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(
            body[said].as_str().unwrap().contains("max_streams_per_key"),
            "{path}: {body}"
        );
    }
    // Reads that end at once are not counted.
    api.get(Some(&tenant), "/v1/c/a/_changes").ok(200);
    let others: Vec<_> = (0..2).map(|_| open(&other, "/v1/c/a/_pull/stream")).collect();
    assert!(others.iter().all(|r| r.status() == 200), "another key's places");
    // The client goes; the server finds out at its next event and gives
    // the place back.
    drop(pull);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        api.put(Some(&admin), &format!("/v1/c/a/w{n}"), json!({})).ok(201);
        let again = open(&tenant, "/v1/c/a/_pull/stream");
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(sse);
}

/// An idle stream of a revoked key ends although no request comes to make the
/// server reload its keys: the server looks at the keys file on its own.
#[test]
fn an_idle_stream_ends_when_its_key_is_revoked() {
    let server = Server::start();
    let data = server.data.clone();
    let api = Api::new(&server.url());
    let reader = create_key(&data, "read", None);
    let _admin = create_key(&data, "admin", None);
    // The server has read the keys file once a request without a key is refused.
    api.wait_for_status(None, "/v1/c/a/x", 401);
    let streaming = streaming_client();
    let response = streaming
        .get(format!("{}/v1/c/a/_pull/stream", server.url()))
        .header("authorization", format!("Bearer {reader}"))
        .send()
        .expect("the stream");
    assert_eq!(response.status().as_u16(), 200);
    let (ended, ends) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let body = response.text();
        let _ = ended.send((started.elapsed(), body.is_ok()));
    });
    revoke_key(&data, &reader);
    // No request from here on: the keys file is read every second.
    let (after, cleanly) = ends
        .recv_timeout(Duration::from_secs(10))
        .expect("the revoked key's stream is still open");
    assert!(cleanly, "the stream ended with an error");
    assert!(after < Duration::from_secs(5), "ended after {after:?}");
}

#[test]
fn a_public_address_needs_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let public = format!("0.0.0.0:{port}");
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // No keys: refused, quickly, with a message that says what to do.
    let ran = run_bounded(
        &["serve", "--listen", &public, "--data", data.to_str().unwrap()],
        RUN_BOUND,
    );
    let (stderr, took) = (ran.stderr, ran.took);
    let status = ran.status.expect("truce serve exits on its own");
    assert!(!status.success(), "listening on {public} without keys must fail");
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
    assert!(stderr.contains("keys"), "the message mentions keys: {stderr}");
    assert!(
        stderr.contains("--insecure-no-auth"),
        "the message mentions the way out: {stderr}"
    );
    assert!(!data.exists(), "refused, it made no data directory");
    // Nor does a data directory named as an unfinished backup's.
    let partial = dir.path().join("copy.partial");
    let listen = format!("127.0.0.1:{}", free_port());
    let ran = run_bounded(
        &["serve", "--listen", &listen, "--data", partial.to_str().unwrap()],
        RUN_BOUND,
    );
    assert!(ran.status.is_some_and(|s| !s.success()), "{}", ran.stderr);
    assert!(ran.stderr.contains("unfinished backup"), "{}", ran.stderr);
    assert!(!partial.exists(), "refused, it made no data directory");
    // Nor a TLS certificate it cannot load (it was loaded after the
    // database had opened), nor a backup root that is not there.
    let refused = dir.path().join("refused");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    for bad in [
        &["--tls-cert", missing, "--tls-key", missing][..],
        &["--backup-root", missing],
    ] {
        let mut args = vec!["serve", "--listen", &listen, "--data", refused.to_str().unwrap()];
        args.extend_from_slice(bad);
        let ran = run_bounded(&args, RUN_BOUND);
        assert!(
            ran.status.is_some_and(|s| !s.success()),
            "{bad:?}: {}",
            ran.stderr
        );
        assert!(!refused.exists(), "{bad:?}: refused, it made no data directory");
    }

    // --insecure-no-auth: it starts, and answers without a key.
    {
        let mut insecure = Spawned::start(
            &[
                "serve",
                "--listen",
                &public,
                "--data",
                data.to_str().unwrap(),
                "--insecure-no-auth",
            ],
            &[],
        );
        insecure.wait_listening(local);
        assert_eq!(
            Api::new(&format!("http://{local}")).get(None, "/v1/c").status,
            200
        );
        // The data directory it made is its owner's alone (the documents'
        // files were readable by every local user).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    } // ended by PID
    // So is one `truce keys create` makes first.
    let fresh = dir.path().join("fresh").join("data");
    create_key(&fresh, "admin", None);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");

    // With a key present: it starts, and requires the key.
    let key = create_key(&data, "admin", None);
    let port = free_port();
    let public = format!("0.0.0.0:{port}");
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut keyed = Spawned::start(
        &["serve", "--listen", &public, "--data", data.to_str().unwrap()],
        &[],
    );
    keyed.wait_listening(local);
    let api = Api::new(&format!("http://{local}"));
    api.get(None, "/v1/c").error(401, "unauthorized");
    assert_eq!(api.get(Some(&key), "/v1/c").status, 200);
    drop(keyed);

    // On loopback, keys are required as soon as there are some.
    let server = Server::start_in(&data, &[]);
    Api::new(&server.url())
        .get(None, "/v1/c")
        .error(401, "unauthorized");
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();

    // Half a TLS configuration is refused.
    let ran = run_bounded(
        &[
            "serve",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--data",
            "/nonexistent",
        ],
        RUN_BOUND,
    );
    let stderr = ran.stderr;
    assert!(
        ran.status.is_some_and(|s| !s.success()),
        "--tls-cert without --tls-key: {stderr}"
    );

    let server = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let port = server.addr.port();

    // Plain HTTP to the TLS port does not get an answer.
    let plain = common::http_client()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}/healthz", server.url()))
        .send();
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain HTTP must not be served on the TLS port"
    );

    // `truce top` and `truce backup` reach it at its https URL, trusting
    // the certificate `--cacert` names (they had no TLS at all, and failed
    // as if the server were down); without it they say why they refuse.
    let https = format!("https://127.0.0.1:{port}");
    let top = |extra: &[&str]| {
        let mut args = vec!["top", "--url", &https, "--iterations", "1"];
        args.extend_from_slice(extra);
        run_bounded(&args, RUN_BOUND)
    };
    let shown = top(&["--cacert", cert.to_str().unwrap()]);
    assert!(shown.status.is_some_and(|s| s.success()), "{}", shown.stderr);
    assert!(shown.stdout.contains("no hot spots"), "{}", shown.stdout);
    let refused = top(&[]);
    assert!(refused.status.is_some_and(|s| !s.success()));
    assert!(refused.stderr.contains("certificate"), "{}", refused.stderr);
    let copy = dir.path().join("copy");
    let backup = run_bounded(
        &[
            "backup",
            "--url",
            &https,
            "--cacert",
            cert.to_str().unwrap(),
            "--to",
            copy.to_str().unwrap(),
        ],
        RUN_BOUND,
    );
    assert!(backup.status.is_some_and(|s| s.success()), "{}", backup.stderr);
    assert!(copy.join("version").is_file(), "the backup was written");
    // On a machine without system certificates (a small container) a
    // client of plain HTTP never looks for them (each client build read
    // them all, and failed without), and one of HTTPS takes `--cacert`'s.
    let plain_server = Server::start();
    let nowhere = dir.path().join("no-certificates");
    let without_system_roots = |url: &str, extra: &[&str]| {
        Command::new(truce_bin())
            .args(["top", "--url", url, "--iterations", "1"])
            .args(extra)
            .env("SSL_CERT_FILE", &nowhere)
            .env("SSL_CERT_DIR", &nowhere)
            .output()
            .expect("truce top")
    };
    for (url, extra) in [
        (plain_server.url(), &[][..]),
        (https.clone(), &["--cacert", cert.to_str().unwrap()][..]),
    ] {
        let shown = without_system_roots(&url, extra);
        assert!(
            shown.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
    }

    let curl = |extra: &[&str], url: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(url)
            .output()
    };
    let cacert = ["--cacert", cert.to_str().unwrap()];
    let out = match curl(&cacert, &format!("https://localhost:{port}/healthz")) {
        Ok(out) => out,
        Err(e) => {
            println!("note: curl is not available ({e}); the HTTPS request is not checked");
            return;
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The certificate is also valid for the IP address.
    let out = curl(&cacert, &format!("https://127.0.0.1:{port}/healthz")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The whole API is there, not only /healthz.
    let out = curl(&cacert, &format!("https://localhost:{port}/v1/c")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // Without trusting the certificate, curl refuses: it really is TLS with this certificate.
    let out = curl(&[], &format!("https://localhost:{port}/healthz")).unwrap();
    assert!(
        !out.status.success(),
        "an untrusted self-signed certificate must fail verification"
    );
}
