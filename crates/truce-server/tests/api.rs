//! The HTTP API through the real `truce serve` binary: every route, every
//! precondition and every error code of API.md and docs/http.md, the change feed
//! (normal, long poll, SSE), graceful shutdown, and the settings sources.
//!
//! Each test starts its own server (a free loopback port, a temporary data
//! directory, ended by PID on drop) and talks to it with `reqwest::blocking`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use common::{RUN_BOUND, Reply, Server, Spawned, free_port, run_bounded, truce_bin};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A client of one server.
struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api::at(&server.url())
    }

    fn at(base: &str) -> Api {
        let http = common::http_client()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Api {
            base: base.to_string(),
            http,
        }
    }

    /// Any request; `body` is sent as-is with `Content-Type: application/json`.
    fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<String>) -> Reply {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().unwrap_or_else(|e| panic!("{what}: {e}"));
        Reply::read(response, &what)
    }

    fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, &[], None)
    }

    fn get_h(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::GET, path, headers, None)
    }

    fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, &[], Some(body.to_string()))
    }

    fn put_h(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::PUT, path, headers, Some(body.to_string()))
    }

    fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, &[], Some(body.to_string()))
    }

    fn patch_h(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::PATCH, path, headers, Some(body.to_string()))
    }

    fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, &[], None)
    }

    fn delete_h(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::DELETE, path, headers, None)
    }

    fn post(&self, path: &str, body: Value) -> Reply {
        self.post_h(path, body, &[])
    }

    fn post_h(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::POST, path, headers, Some(body.to_string()))
    }

    fn tx(&self, body: Value) -> Reply {
        self.post("/v1/tx", body)
    }

    fn tx_h(&self, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.post_h("/v1/tx", body, headers)
    }

    /// The `last_seq` of the whole change feed now.
    fn last_seq(&self) -> u64 {
        self.get("/v1/_changes?since=now").ok(200)["last_seq"]
            .as_u64()
            .expect("last_seq")
    }

    /// Declares a unique index `name` of `coll` over `field`, waits until it
    /// is ready, and returns the declaration's status (202 while it builds).
    fn unique_index(&self, coll: &str, name: &str, field: &str) -> u16 {
        let spec = json!({"fields": [field], "unique": true});
        let declared = self.put(&format!("/v1/c/{coll}/_indexes/{name}"), spec);
        self.wait_index_ready(coll, name);
        declared.status
    }

    /// Waits (bounded) until index `name` of `coll` is ready.
    fn wait_index_ready(&self, coll: &str, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.get(&format!("/v1/c/{coll}/_indexes"));
            let state = list.ok(200)["indexes"]
                .as_array()
                .and_then(|l| l.iter().find(|i| i["name"] == name))
                .map(|i| i["state"].clone());
            if state == Some(json!("ready")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "index {coll}/{name} not ready in time: {}",
                list.text
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every document of a query (following `next` cursors, at most 50 pages).
    fn query_all(&self, coll: &str, params: &str) -> Vec<Value> {
        let mut docs = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..50 {
            let cursor = after
                .as_deref()
                .map(|a| format!("&after={}", enc(a)))
                .unwrap_or_default();
            let page = self.get(&format!("/v1/c/{coll}?{params}{cursor}"));
            let body = page.ok(200);
            docs.extend(body["docs"].as_array().expect("docs").iter().cloned());
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return docs,
            }
        }
        panic!("query {coll}?{params} did not end within 50 pages");
    }
}

/// Percent-encodes a query parameter value (JSON values, cursors).
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `_id`s of a list of documents.
fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["_id"].as_str().expect("_id").to_string())
        .collect()
}

/// The ids of a change feed answer's results.
fn change_ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

/// Runs `truce keys create` on `data` and returns the key it prints.
fn create_key(data: &Path, role: &str) -> String {
    let out = Command::new(truce_bin())
        .args(["keys", "create", "--role", role, "--data"])
        .arg(data)
        .output()
        .expect("truce keys create");
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// A `truce serve` started without the harness, for settings the harness fixes
/// itself (`--listen`); ended by its PID on drop.
// ---------------------------------------------------------------------------
// Documents: PUT, GET
// ---------------------------------------------------------------------------

#[test]
fn put_preconditions() {
    let server = Server::start();
    let api = Api::new(&server);

    // No precondition: create only.
    let created = api.put("/v1/c/p/a", json!({"x": 1}));
    let body = created.ok(201);
    assert_eq!(body["id"], "a");
    assert_eq!(body["version"], 1);
    assert_eq!(body["created"], true);
    assert_eq!(body["noop"], false);
    assert_eq!(body["skipped"], false);
    assert!(
        body["rev"].as_str().unwrap().starts_with("1-"),
        "rev is version-hash: {}",
        body["rev"]
    );
    assert!(body["seq"].as_u64().unwrap() >= 1);
    assert_eq!(body["doc"]["x"], 1);
    assert_eq!(body["doc"]["_id"], "a");
    assert_eq!(body["doc"]["_version"], 1);
    assert_eq!(body["doc"]["_rev"], body["rev"]);
    assert!(
        body["doc"]["_ts"].as_u64().unwrap() > 1_600_000_000_000,
        "_ts is ms since the epoch"
    );
    let current = api
        .put("/v1/c/p/a", json!({"x": 2}))
        .conflict("already_exists")
        .clone();
    assert_eq!(current["x"], 1);
    assert_eq!(current["_version"], 1);

    // `_version: 0` and `If-None-Match: *`: create only.
    api.put("/v1/c/p/b", json!({"_version": 0, "x": 1})).ok(201);
    assert_eq!(
        api.put("/v1/c/p/b", json!({"_version": 0, "x": 2}))
            .conflict("already_exists")["x"],
        1
    );
    api.put_h("/v1/c/p/c", json!({"x": 1}), &[("If-None-Match", "*")])
        .ok(201);
    api.put_h("/v1/c/p/c", json!({"x": 2}), &[("If-None-Match", "*")])
        .conflict("already_exists");

    // `_version: N`: exactly that version.
    let v2 = api.put("/v1/c/p/a", json!({"_version": 1, "x": 2}));
    let rev2 = v2.ok(200)["rev"].as_str().unwrap().to_string();
    assert_eq!(v2.json["version"], 2);
    assert_eq!(v2.json["created"], false);
    assert!(v2.json["doc"].get("_version").is_some() && v2.json["doc"]["x"] == 2);
    let current = api
        .put("/v1/c/p/a", json!({"_version": 1, "x": 3}))
        .conflict("version_mismatch")
        .clone();
    assert_eq!(current["_version"], 2);
    assert_eq!(current["x"], 2);

    // `_rev` in the body.
    let v3 = api.put("/v1/c/p/a", json!({"_rev": rev2, "x": 3}));
    let rev3 = v3.ok(200)["rev"].as_str().unwrap().to_string();
    assert_eq!(v3.json["version"], 3);
    assert_eq!(
        api.put("/v1/c/p/a", json!({"_rev": rev2, "x": 9}))
            .conflict("version_mismatch")["_version"],
        3
    );

    // `If-Match: "<rev>"`.
    let quoted = format!("\"{rev3}\"");
    let v4 = api.put_h("/v1/c/p/a", json!({"x": 4}), &[("If-Match", &quoted)]);
    assert_eq!(v4.ok(200)["version"], 4);
    api.put_h("/v1/c/p/a", json!({"x": 9}), &[("If-Match", &quoted)])
        .conflict("version_mismatch");
    // One guard per write: a list of tags, or the header twice, is refused
    // (the second was ignored), and nothing written.
    let current = format!("\"{}\"", v4.json["rev"].as_str().unwrap());
    let list = format!("{quoted}, {current}");
    let refused = api.put_h("/v1/c/p/a", json!({"x": 9}), &[("If-Match", &list)]);
    assert!(
        refused.error(400, "invalid_precondition")["message"]
            .as_str()
            .unwrap()
            .contains("not a list"),
        "{}",
        refused.text
    );
    api.put_h(
        "/v1/c/p/a",
        json!({"x": 9}),
        &[("If-Match", &current), ("If-Match", &quoted)],
    )
    .error(400, "invalid_precondition");
    assert_eq!(api.get("/v1/c/p/a").ok(200)["x"], 4);

    // `If-Match: *`: must exist, any version.
    assert_eq!(
        api.put_h("/v1/c/p/a", json!({"x": 5}), &[("If-Match", "*")])
            .ok(200)["version"],
        5
    );
    let absent = api.put_h("/v1/c/p/nope", json!({"x": 1}), &[("If-Match", "*")]);
    assert_eq!(*absent.conflict("not_found"), Value::Null);
    // A version on an absent document: not_found too.
    assert_eq!(
        *api.put("/v1/c/p/nope", json!({"_version": 3, "x": 1}))
            .conflict("not_found"),
        Value::Null
    );

    // `_version: -1`: create or overwrite.
    assert_eq!(
        api.put("/v1/c/p/d", json!({"_version": -1, "x": 1})).ok(201)["created"],
        true
    );
    let over = api.put("/v1/c/p/d", json!({"_version": -1, "x": 2}));
    assert_eq!(over.ok(200)["version"], 2);
    assert_eq!(over.json["created"], false);

    // Two preconditions at once, in any combination.
    api.put_h("/v1/c/p/a", json!({"_version": 5, "x": 6}), &[("If-Match", "*")])
        .error(400, "invalid_precondition");
    api.put("/v1/c/p/a", json!({"_version": 5, "_rev": rev3, "x": 6}))
        .error(400, "invalid_precondition");
    api.put_h(
        "/v1/c/p/a",
        json!({"x": 6}),
        &[("If-Match", "*"), ("If-None-Match", "*")],
    )
    .error(400, "invalid_precondition");
    // A version that is neither 0, -1 nor ≥ 1.
    api.put("/v1/c/p/a", json!({"_version": -2, "x": 6}))
        .error(400, "invalid_precondition");
    let unchanged = api.get("/v1/c/p/a");
    assert_eq!(unchanged.ok(200)["_version"], 5, "refused writes change nothing");
    assert_eq!(unchanged.json["x"], 5);

    // A no-op PUT: same content, same revision, no change event.
    let before = unchanged.json.clone();
    let seq_before = api.last_seq();
    let noop = api.put("/v1/c/p/a", json!({"_version": 5, "x": 5}));
    assert_eq!(noop.ok(200)["noop"], true);
    assert_eq!(noop.json["created"], false);
    assert_eq!(noop.json["rev"], before["_rev"]);
    assert_eq!(noop.json["version"], 5);
    let noop_any = api.put("/v1/c/p/a", json!({"_version": -1, "x": 5}));
    assert_eq!(noop_any.ok(200)["noop"], true);
    let feed = api.get(&format!("/v1/c/p/_changes?since={seq_before}"));
    assert_eq!(feed.ok(200)["results"], json!([]), "a no-op is not a change");
    assert_eq!(api.get("/v1/c/p/a").json["_rev"], before["_rev"]);
}

#[test]
fn get_etag_not_modified_and_absent() {
    let server = Server::start();
    let api = Api::new(&server);
    let rev = api.put("/v1/c/g/doc", json!({"name": "x"})).ok(201)["rev"]
        .as_str()
        .unwrap()
        .to_string();

    let got = api.get("/v1/c/g/doc");
    let body = got.ok(200);
    assert_eq!(body["name"], "x");
    assert_eq!(body["_id"], "doc");
    assert_eq!(body["_rev"], rev);
    assert_eq!(body["_version"], 1);
    assert!(body["_seq"].as_u64().is_some() && body["_ts"].as_u64().is_some());
    let etag = got.header("etag").expect("ETag").to_string();
    assert_eq!(etag, format!("\"{rev}\""));

    let cached = api.get_h("/v1/c/g/doc", &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(cached.text.is_empty(), "304 has no body");
    // The weak form a compressing proxy sends back matches too.
    let weak = format!("W/{etag}");
    assert_eq!(api.get_h("/v1/c/g/doc", &[("If-None-Match", &weak)]).status, 304);
    assert_eq!(
        api.get_h("/v1/c/g/doc", &[("If-None-Match", "\"1-stale\"")])
            .status,
        200
    );
    // Unquoted, as writes take it; in a list; over two lines.
    let stale = "\"1-00000000000000000000000000000000\"";
    let (etag, weak, listed) = (etag.as_str(), weak.as_str(), format!("{stale}, {etag}"));
    let listed = listed.as_str();
    for (given, status) in [
        (vec![("If-None-Match", rev.as_str())], 304),
        (vec![("If-None-Match", listed)], 304),
        (vec![("If-None-Match", stale), ("If-None-Match", etag)], 304),
        (vec![("If-None-Match", stale)], 200),
        // If-Match (RFC 9110, 13.1.1): the strong comparison; 412 with the
        // current ETag when none is the document's. Then If-None-Match.
        (vec![("If-Match", etag)], 200),
        (vec![("If-Match", rev.as_str())], 200),
        (vec![("If-Match", "*")], 200),
        (vec![("If-Match", listed)], 200),
        (vec![("If-Match", stale), ("If-Match", etag)], 200),
        (vec![("If-Match", stale)], 412),
        (vec![("If-Match", weak)], 412),
        (vec![("If-Match", "")], 412),
        (vec![("If-Match", stale), ("If-None-Match", etag)], 412),
        (vec![("If-Match", etag), ("If-None-Match", etag)], 304),
    ] {
        let reply = api.get_h("/v1/c/g/doc", &given);
        assert_eq!(reply.status, status, "{given:?}: {}", reply.text);
        assert_eq!(reply.header("etag"), Some(etag), "{given:?}");
        if status == 412 {
            reply.error(412, "precondition_failed");
        }
    }

    // Absent (also in a collection that does not exist), then deleted.
    api.get("/v1/c/g/missing").error(404, "not_found");
    api.get("/v1/c/never/missing").error(404, "not_found");
    api.delete("/v1/c/g/doc?version=1").ok(200);
    api.get("/v1/c/g/doc").error(404, "not_found");
    api.get_h("/v1/c/g/doc", &[("If-None-Match", etag)])
        .error(404, "not_found");
    // A document that is not there is not there, whatever If-Match says
    // (RFC 9110, 13.2.1).
    api.get_h("/v1/c/g/doc", &[("If-Match", "*")])
        .error(404, "not_found");

    // Ids are path segments: percent-encoded characters round-trip.
    api.put("/v1/c/g/a%20b%2Fc", json!({"k": 1})).ok(201);
    assert_eq!(api.get("/v1/c/g/a%20b%2Fc").ok(200)["_id"], "a b/c");
}

// ---------------------------------------------------------------------------
// PATCH
// ---------------------------------------------------------------------------

#[test]
fn patch_operators_conditions_and_upsert() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put(
        "/v1/c/s/doc",
        json!({"n": 5, "m": 3, "lo": 10, "hi": 10, "tags": ["a"], "set": ["x"], "pull": [1, 2, 3, 2],
               "gone": true, "nested": {"deep": {"v": 1}}}),
    )
    .ok(201);

    // Every operator at once, with dotted paths.
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let patched = api.patch(
        "/v1/c/s/doc",
        json!({"$set": {"nested.deep.v": 2, "nested.new": "n"}, "$unset": {"gone": ""}, "$inc": {"n": 2},
               "$mul": {"m": 4}, "$min": {"lo": 3}, "$max": {"hi": 20}, "$push": {"tags": "b"},
               "$addToSet": {"set": {"$each": ["x", "y"]}}, "$pull": {"pull": 2},
               "$currentDate": {"at": true}, "$setOnInsert": {"ins": 1}}),
    );
    let doc = &patched.ok(200)["doc"];
    assert_eq!(patched.json["version"], 2);
    assert_eq!(patched.json["created"], false);
    assert_eq!(doc["n"], 7);
    assert_eq!(doc["m"], 12);
    assert_eq!(doc["lo"], 3);
    assert_eq!(doc["hi"], 20);
    assert_eq!(doc["tags"], json!(["a", "b"]));
    assert_eq!(doc["set"], json!(["x", "y"]));
    assert_eq!(doc["pull"], json!([1, 3]));
    assert!(doc.get("gone").is_none(), "$unset removed the field: {doc}");
    assert_eq!(doc["nested"], json!({"deep": {"v": 2}, "new": "n"}));
    let at = doc["at"]
        .as_u64()
        .expect("$currentDate writes ms since the epoch");
    assert!(at + 5_000 >= started_ms && at <= started_ms + 60_000, "at = {at}");
    assert!(doc.get("ins").is_none(), "$setOnInsert applies only on insert");
    assert_eq!(api.get("/v1/c/s/doc").json["n"], 7);

    // $min/$max that do not change anything, and a whole no-op PATCH.
    let noop = api.patch("/v1/c/s/doc", json!({"$min": {"lo": 100}, "$max": {"hi": 1}}));
    assert_eq!(noop.ok(200)["noop"], true);
    assert_eq!(noop.json["version"], 2);

    // $upsert creates (201), $setOnInsert applies then.
    let up = api.patch(
        "/v1/c/s/counter",
        json!({"$inc": {"count": 1}, "$setOnInsert": {"kind": "c"}, "$upsert": true}),
    );
    assert_eq!(up.ok(201)["created"], true);
    assert_eq!(up.json["doc"]["count"], 1);
    assert_eq!(up.json["doc"]["kind"], "c");
    let again = api.patch(
        "/v1/c/s/counter",
        json!({"$inc": {"count": 1}, "$setOnInsert": {"kind": "z"}, "$upsert": true}),
    );
    assert_eq!(again.ok(200)["doc"]["count"], 2);
    assert_eq!(again.json["doc"]["kind"], "c");

    // Absent without $upsert: 404 with current null.
    let missing = api.patch("/v1/c/s/absent", json!({"$set": {"a": 1}}));
    assert_eq!(missing.error(404, "not_found")["current"], Value::Null);

    // $if false: conflict by default and with $else: conflict; skip with $else: skip.
    let current = api
        .patch(
            "/v1/c/s/doc",
            json!({"$set": {"a": 1}, "$if": {"n": {"$gt": 100}}}),
        )
        .conflict("condition_failed")
        .clone();
    assert_eq!(current["n"], 7);
    api.patch(
        "/v1/c/s/doc",
        json!({"$set": {"a": 1}, "$if": {"n": 1}, "$else": "conflict"}),
    )
    .conflict("condition_failed");
    let skipped = api.patch(
        "/v1/c/s/doc",
        json!({"$set": {"a": 1}, "$if": {"n": 1}, "$else": "skip"}),
    );
    assert_eq!(skipped.ok(200)["skipped"], true);
    assert_eq!(skipped.json["version"], 2);
    // $if true writes; $and/$in/$exists/$ne/$nin/$not/$eq/$gte/$lte/$lt are accepted filters.
    let cond = json!({"$and": [{"n": {"$in": [7, 8]}}, {"gone": {"$exists": false}}, {"tags": {"$ne": "zz"}},
                               {"n": {"$nin": [1]}}, {"n": {"$not": {"$gt": 10}}}, {"n": {"$eq": 7}},
                               {"n": {"$gte": 7, "$lte": 7, "$lt": 8}}]});
    let written = api.patch("/v1/c/s/doc", json!({"$set": {"a": 1}, "$if": cond}));
    assert_eq!(written.ok(200)["skipped"], false);
    assert_eq!(written.json["doc"]["a"], 1);
    // An $if never matches an absent document (without $upsert): conflict... not 404.
    api.patch(
        "/v1/c/s/absent",
        json!({"$set": {"a": 1}, "$if": {"a": {"$exists": false}}}),
    )
    .error(404, "not_found");

    // PATCH honours the PUT preconditions.
    api.patch("/v1/c/s/doc", json!({"$set": {"b": 1}, "_version": 1}))
        .conflict("version_mismatch");
    // With $upsert absence is no failure: a precondition that needs the
    // document is a 409 `not_found`, as for PUT, not a 404.
    api.patch(
        "/v1/c/s/absent",
        json!({"$set": {"a": 1}, "$upsert": true, "_version": 5}),
    )
    .conflict("not_found");
    api.patch_h(
        "/v1/c/s/absent",
        json!({"$set": {"a": 1}, "$upsert": true}),
        &[("If-Match", "*")],
    )
    .conflict("not_found");
    api.put("/v1/c/s/absent", json!({"a": 1, "_version": 5}))
        .conflict("not_found");
    api.get("/v1/c/s/absent").error(404, "not_found");
    let rev = api.get("/v1/c/s/doc").json["_rev"].as_str().unwrap().to_string();
    api.patch_h(
        "/v1/c/s/doc",
        json!({"$set": {"b": 1}}),
        &[("If-Match", &format!("\"{rev}\""))],
    )
    .ok(200);
    api.patch_h(
        "/v1/c/s/doc",
        json!({"$set": {"b": 2}}),
        &[("If-Match", &format!("\"{rev}\""))],
    )
    .conflict("version_mismatch");
    api.patch("/v1/c/s/doc", json!({"$set": {"b": 2}, "_version": 0}))
        .conflict("already_exists");

    // $inc on a string: 400 invalid_operator, the document unchanged.
    api.put("/v1/c/s/str", json!({"name": "text"})).ok(201);
    api.patch("/v1/c/s/str", json!({"$inc": {"name": 1}}))
        .error(400, "invalid_operator");
    let unchanged = api.get("/v1/c/s/str");
    assert_eq!(unchanged.ok(200)["name"], "text");
    assert_eq!(unchanged.json["_version"], 1);
    // Unknown operators and replacement documents are invalid_operator too.
    api.patch("/v1/c/s/str", json!({"$frob": {"a": 1}}))
        .error(400, "invalid_operator");
    api.patch("/v1/c/s/str", json!({"name": "replacement"}))
        .error(400, "invalid_operator");
    api.patch("/v1/c/s/str", json!([1]))
        .error(400, "invalid_operator");
}

/// A top-level field name holding `.` is stored, but paths read the dot as a
/// step (as MongoDB's do), so no update or filter reaches it; a replication
/// `primaryKey` is a field name taken as written (docs/http.md, Conventions).
#[test]
fn a_dotted_field_name_is_stored_but_no_path_reaches_it() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put("/v1/c/dots/d", json!({"a.b": 1, "a": {"b": 5, "c": 1}}))
        .ok(201);
    let unset = api.patch("/v1/c/dots/d", json!({"$unset": {"a.b": 1}}));
    assert_eq!(unset.ok(200)["doc"]["a"], json!({"c": 1}), "{}", unset.text);
    assert_eq!(unset.json["doc"]["a.b"], 1, "{}", unset.text);
    api.put("/v1/c/dots/e", json!({"a.b": 1})).ok(201);
    let inc = api.patch("/v1/c/dots/e", json!({"$inc": {"a.b": 1}}));
    assert_eq!(inc.ok(200)["doc"]["a"], json!({"b": 1}), "{}", inc.text);
    assert_eq!(inc.json["doc"]["a.b"], 1, "{}", inc.text);
    api.put("/v1/c/dots/f", json!({"a.b": 1})).ok(201);
    let tested = api.patch(
        "/v1/c/dots/f",
        json!({"$set": {"x": 1}, "$if": {"a.b": 1}, "$else": "skip"}),
    );
    assert_eq!(tested.ok(200)["skipped"], true, "{}", tested.text);
    // An index over `a.b` holds `a`'s `b`: 1 only in `e`, though `d` and `f`
    // hold `"a.b": 1`.
    let declared = api.put("/v1/c/dots/_indexes/ab", json!({"fields": ["a.b"]}));
    assert!([200, 202].contains(&declared.status), "{}", declared.text);
    api.wait_index_ready("dots", "ab");
    let found = api.get("/v1/c/dots?index=ab&eq=1");
    let ids: Vec<&Value> = found.ok(200)["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["_id"])
        .collect();
    assert_eq!(ids, [&json!("e")], "{}", found.text);
    // `primaryKey=a.b` is the top-level field `a.b`: pulled documents carry
    // their id there, and a pushed one is read from there.
    api.put("/v1/c/pk/p", json!({"v": 1})).ok(201);
    let pulled = api.get("/v1/c/pk/_pull?checkpoint=null&primaryKey=a.b");
    assert_eq!(
        pulled.ok(200)["documents"][0],
        json!({"a.b": "p", "v": 1, "_deleted": false}),
        "{}",
        pulled.text
    );
    let pushed = api.post(
        "/v1/c/pk/_push?primaryKey=a.b",
        json!([{"newDocumentState": {"a.b": "q", "v": 2}}]),
    );
    assert_eq!(pushed.ok(200), &json!([]), "{}", pushed.text);
    let stored = api.get("/v1/c/pk/q");
    assert_eq!(stored.ok(200)["v"], 2, "{}", stored.text);
    assert!(stored.json.get("a.b").is_none(), "{}", stored.text);
}

#[test]
fn patch_heartbeat_example_of_api_md() {
    let server = Server::start();
    let api = Api::new(&server);
    // Verbatim from API.md.
    let heartbeat = r#"{"$set": {"currentPath": "/blog"}, "$currentDate": {"lastSeen": true},
 "$upsert": true, "$else": "skip",
 "$if": {"$or": [{"currentPath": {"$ne": "/blog"}},
                 {"lastSeen": {"$lt": {"$ago": 10000}}}]}}"#;
    let path = "/v1/c/activeSessions/s-123";
    let first = api.call(Method::PATCH, path, &[], Some(heartbeat.to_string()));
    assert_eq!(first.ok(201)["created"], true, "the first heartbeat creates");
    assert_eq!(first.json["doc"]["currentPath"], "/blog");
    assert!(first.json["doc"]["lastSeen"].as_u64().is_some());

    let repeat = api.call(Method::PATCH, path, &[], Some(heartbeat.to_string()));
    assert_eq!(repeat.ok(200)["skipped"], true, "an immediate repeat is skipped");
    assert_eq!(repeat.json["version"], 1);
    assert_eq!(repeat.json["rev"], first.json["rev"]);

    let moved = heartbeat.replace("/blog", "/about");
    let changed = api.call(Method::PATCH, path, &[], Some(moved));
    assert_eq!(changed.ok(200)["skipped"], false, "a changed path writes");
    assert_eq!(changed.json["version"], 2);
    assert_eq!(changed.json["doc"]["currentPath"], "/about");
}

// ---------------------------------------------------------------------------
// DELETE
// ---------------------------------------------------------------------------

#[test]
fn delete_preconditions_and_tombstones() {
    let server = Server::start();
    let api = Api::new(&server);
    for id in ["a", "b", "c", "d", "e"] {
        api.put(&format!("/v1/c/del/{id}"), json!({"v": id})).ok(201);
    }
    let since = api.last_seq();

    api.delete("/v1/c/del/a").error(428, "precondition_required");
    // If-None-Match guards no delete: refused for what it is, not taken for
    // no precondition at all.
    let answer = api.delete_h("/v1/c/del/a", &[("If-None-Match", "*")]);
    answer.error(400, "invalid_precondition");
    assert!(answer.text.contains("If-None-Match"), "{}", answer.text);
    api.delete("/v1/c/del/a?version=2").conflict("version_mismatch");
    let gone = api.delete("/v1/c/del/a?version=1");
    let body = gone.ok(200);
    assert_eq!(
        body["doc"]["_deleted"], true,
        "a delete answers the tombstone: {body}"
    );
    assert_eq!(body["version"], 2);
    assert_eq!(body["created"], false);
    api.get("/v1/c/del/a").error(404, "not_found");

    let rev_b = api.get("/v1/c/del/b").json["_rev"].as_str().unwrap().to_string();
    api.delete(&format!("/v1/c/del/b?rev={}", enc(&rev_b))).ok(200);
    // The same revision again: the document is gone now.
    api.delete(&format!("/v1/c/del/b?rev={}", enc(&rev_b)))
        .error(404, "not_found");

    let rev_c1 = api.get("/v1/c/del/c").json["_rev"].as_str().unwrap().to_string();
    let rev_c2 = api.put("/v1/c/del/c", json!({"_version": 1, "v": "c2"})).ok(200)["rev"]
        .as_str()
        .unwrap()
        .to_string();
    api.delete(&format!("/v1/c/del/c?rev={}", enc(&rev_c1)))
        .conflict("version_mismatch");
    api.delete_h("/v1/c/del/c", &[("If-Match", &format!("\"{rev_c1}\""))])
        .conflict("version_mismatch");
    api.delete_h("/v1/c/del/c", &[("If-Match", &format!("\"{rev_c2}\""))])
        .ok(200);
    api.delete_h("/v1/c/del/d", &[("If-Match", "*")]).ok(200);
    api.delete("/v1/c/del/e?version=-1").ok(200);

    // Absent (never written, or already deleted) with version=-1: 404.
    api.delete("/v1/c/del/never?version=-1").error(404, "not_found");
    let twice = api.delete("/v1/c/del/e?version=-1");
    assert_eq!(twice.error(404, "not_found")["current"], Value::Null);
    api.delete("/v1/c/del/e?version=abc")
        .error(400, "invalid_precondition");
    api.delete_h("/v1/c/del/x?version=1", &[("If-Match", "*")])
        .error(400, "invalid_precondition");

    // Tombstones appear in the feed with deleted: true.
    let feed = api.get(&format!("/v1/c/del/_changes?since={since}&include_docs=true"));
    let results = feed.ok(200)["results"].as_array().unwrap().clone();
    let deleted: BTreeSet<&str> = results
        .iter()
        .filter(|c| c["deleted"] == true)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        BTreeSet::from(["a", "b", "c", "d", "e"]),
        "{}",
        feed.text
    );
    assert!(results.iter().all(|c| c["doc"]["_deleted"] == true));

    // A deleted document can be created again.
    assert_eq!(
        api.put("/v1/c/del/a", json!({"v": "again"})).ok(201)["created"],
        true
    );
}

// ---------------------------------------------------------------------------
// Queries and indexes
// ---------------------------------------------------------------------------

#[test]
fn queries_indexes_and_collections() {
    let server = Server::start();
    let api = Api::new(&server);
    for i in 0..10 {
        let city = if i % 2 == 0 { "paris" } else { "rome" };
        api.put(
            &format!("/v1/c/people/p{i}"),
            json!({"age": 20 + i, "city": city, "email": format!("{i}@x")}),
        )
        .ok(201);
    }

    let declared = api.put(
        "/v1/c/people/_indexes/by_age",
        json!({"fields": ["age"], "unique": false}),
    );
    assert!(
        [200, 202].contains(&declared.status),
        "index PUT: {}",
        declared.text
    );
    assert_eq!(declared.json["name"], "by_age");
    assert_eq!(declared.json["fields"], json!(["age"]));
    assert_eq!(declared.json["unique"], false);
    assert!(["building", "ready"].contains(&declared.json["state"].as_str().unwrap()));
    api.put(
        "/v1/c/people/_indexes/by_city_age",
        json!({"fields": ["city", "age"]}),
    );
    api.wait_index_ready("people", "by_age");
    api.wait_index_ready("people", "by_city_age");
    let listed = api.get("/v1/c/people/_indexes");
    let names: BTreeSet<&str> = listed.ok(200)["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["by_age", "by_city_age"]));
    // Declaring the same index again answers 200 (ready).
    api.put("/v1/c/people/_indexes/by_age", json!({"fields": ["age"]}))
        .ok(200);

    let q = |params: &str| {
        ids(api.get(&format!("/v1/c/people?{params}")).ok(200)["docs"]
            .as_array()
            .unwrap())
    };
    assert_eq!(q("index=by_age&eq=25"), ["p5"]);
    assert_eq!(q("index=by_age&gt=25"), ["p6", "p7", "p8", "p9"]);
    assert_eq!(q("index=by_age&gte=25&lt=28"), ["p5", "p6", "p7"]);
    assert_eq!(q("index=by_age&lte=22"), ["p0", "p1", "p2"]);
    assert_eq!(q("index=by_age&order=desc&limit=4"), ["p9", "p8", "p7", "p6"]);
    assert_eq!(q("index=by_age&order=desc&gt=26&lte=28"), ["p8", "p7"]);

    // Cursor pagination: every page follows the last, nothing twice, nothing lost.
    let first = api.get("/v1/c/people?index=by_age&limit=3");
    assert_eq!(ids(first.ok(200)["docs"].as_array().unwrap()), ["p0", "p1", "p2"]);
    assert!(first.json["next"].is_string());
    let paged = ids(&api.query_all("people", "index=by_age&limit=3"));
    assert_eq!(paged, (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>());
    let paged_desc = ids(&api.query_all("people", "index=by_age&limit=4&order=desc"));
    assert_eq!(
        paged_desc,
        (0..10).rev().map(|i| format!("p{i}")).collect::<Vec<_>>()
    );
    // A cursor continues only the query that returned it: not in the other
    // order, through another index, or in id order.
    let desc = api.get("/v1/c/people?index=by_age&order=desc&limit=2");
    let cursor = enc(desc.ok(200)["next"].as_str().expect("a next cursor"));
    assert_eq!(
        ids(api
            .get(&format!(
                "/v1/c/people?index=by_age&order=desc&limit=2&after={cursor}"
            ))
            .ok(200)["docs"]
            .as_array()
            .unwrap()),
        ["p7", "p6"]
    );
    for other in [
        "index=by_age&order=asc",
        "index=by_city_age&order=desc",
        "order=desc",
    ] {
        api.get(&format!("/v1/c/people?{other}&after={cursor}"))
            .error(400, "invalid_query");
    }

    // Compound index: eq as an array, a prefix allowed, then a range on the next field.
    assert_eq!(
        q(&format!("index=by_city_age&eq={}", enc("[\"paris\"]"))),
        ["p0", "p2", "p4", "p6", "p8"]
    );
    assert_eq!(
        q(&format!("index=by_city_age&eq={}", enc("[\"rome\", 23]"))),
        ["p3"]
    );
    assert_eq!(
        q(&format!("index=by_city_age&eq={}&gt=24", enc("[\"rome\"]"))),
        ["p5", "p7", "p9"]
    );
    // ... and its bounds as API.md gives them: the eq values and one more
    // (an array read as an array value found nothing, without an error).
    assert_eq!(
        q(&format!("index=by_city_age&gt={}", enc("[\"paris\"]"))),
        ["p1", "p3", "p5", "p7", "p9"]
    );
    assert_eq!(
        q(&format!(
            "index=by_city_age&eq={}&gte={}&lt={}",
            enc("[\"rome\"]"),
            enc("[\"rome\", 23]"),
            enc("[\"rome\", 27.0]")
        )),
        ["p3", "p5"]
    );
    for bounds in [
        format!("gt={}", enc("[\"rome\", 24]")),
        format!("eq={}&gt={}", enc("[\"rome\"]"), enc("[\"paris\", 24]")),
        format!("eq={}&gt={}", enc("[\"rome\"]"), enc("[24]")),
        format!("lte={}", enc("[]")),
    ] {
        let refused = api.get(&format!("/v1/c/people?index=by_city_age&{bounds}"));
        let message = refused.error(400, "invalid_query")["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("eq values"), "{bounds}: {message}");
    }

    // A one-field index's eq is the value itself, an array too.
    api.put("/v1/c/tagged/t1", json!({"tags": [0, "x"]})).ok(201);
    api.put("/v1/c/tagged/t2", json!({"tags": 0})).ok(201);
    api.put("/v1/c/tagged/_indexes/by_tags", json!({"fields": ["tags"]}));
    api.wait_index_ready("tagged", "by_tags");
    let tagged = |eq: &str| {
        ids(api
            .get(&format!("/v1/c/tagged?index=by_tags&eq={}", enc(eq)))
            .ok(200)["docs"]
            .as_array()
            .unwrap())
    };
    assert_eq!(tagged("[0, \"x\"]"), ["t1"]);
    assert_eq!(tagged("0"), ["t2"], "not multikey");

    // Without an index: id order, bounds are ids.
    assert_eq!(q("limit=3"), ["p0", "p1", "p2"]);
    assert_eq!(q(&format!("gt={}", enc("\"p6\""))), ["p7", "p8", "p9"]);
    assert_eq!(ids(&api.query_all("people", "limit=4")).len(), 10);

    // Bad queries.
    api.get("/v1/c/people?index=by_age&order=sideways")
        .error(400, "invalid_query");
    api.get("/v1/c/people?eq=1").error(400, "invalid_query");
    api.get("/v1/c/people?index=by_age&gt=1&gte=1")
        .error(400, "invalid_query");
    api.get("/v1/c/people?index=by_age&gt=notjson")
        .error(400, "invalid_query");
    api.get("/v1/c/people?limit=5000").error(400, "invalid_query");
    api.get("/v1/c/people?limit=-1").error(400, "invalid_query");
    api.get("/v1/c/people?index=by_age&after=garbage")
        .error(400, "invalid_query");
    api.get("/v1/c/people?index=nope").error(404, "not_found");
    api.get("/v1/c/people?index=nope&eq=1").error(404, "not_found");
    api.put("/v1/c/people/_indexes/bad", json!({"fields": "age"}))
        .error(400, "invalid_index");
    api.put("/v1/c/people/_indexes/bad", json!({"fields": []}))
        .error(400, "invalid_index");

    // A unique index: the second holder of a value is refused, current = the holder.
    api.unique_index("people", "by_email", "email");
    let clash = api.put("/v1/c/people/q1", json!({"email": "3@x"}));
    let holder = clash.error(409, "unique_violation")["current"].clone();
    assert_eq!(holder["_id"], "p3");
    api.get("/v1/c/people/q1").error(404, "not_found");
    api.patch("/v1/c/people/p4", json!({"$set": {"email": "3@x"}}))
        .error(409, "unique_violation");
    assert_eq!(
        api.get("/v1/c/people?index=by_email&eq=%223%40x%22").ok(200)["docs"][0]["_id"],
        "p3"
    );

    // Dropping the unique index: it stops refusing at once, is neither
    // listed nor queryable, and its name comes back once its entries are gone.
    let dropped = api.delete("/v1/c/people/_indexes/by_email");
    assert_eq!(dropped.ok(202)["state"], "dropping");
    assert_eq!(dropped.json["name"], "by_email");
    assert_eq!(dropped.json["unique"], true);
    api.patch("/v1/c/people/p4", json!({"$set": {"email": "3@x"}}))
        .ok(200);
    // p3 moves away: an entry of the dropped index left in the new one
    // would still find it under 3@x.
    api.patch("/v1/c/people/p3", json!({"$set": {"email": "moved@x"}}))
        .ok(200);
    api.get("/v1/c/people?index=by_email&eq=%223%40x%22")
        .error(404, "not_found");
    let listed = api.get("/v1/c/people/_indexes");
    assert!(
        listed.ok(200)["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "by_email"),
        "{}",
        listed.text
    );
    api.delete("/v1/c/people/_indexes/by_email")
        .error(404, "not_found");
    api.delete("/v1/c/people/_indexes/by_email?force=1")
        .error(400, "invalid_query");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = api.put("/v1/c/people/_indexes/by_email", json!({"fields": ["email"]}));
        if again.status != 503 {
            assert!(matches!(again.status, 200 | 202), "{}", again.text);
            break;
        }
        again.error(503, "index_dropping");
        assert!(
            Instant::now() < deadline,
            "the dropped index's name never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    api.wait_index_ready("people", "by_email");
    let now = api.get("/v1/c/people?index=by_email&eq=%223%40x%22");
    assert_eq!(ids(now.ok(200)["docs"].as_array().unwrap()), ["p4"]);

    // GET /v1/c lists collections.
    api.put("/v1/c/other/x", json!({})).ok(201);
    let collections = api.get("/v1/c");
    let names: BTreeSet<&str> = collections.ok(200)["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        names.contains("people") && names.contains("other"),
        "{}",
        collections.text
    );
}

/// `--max-collections`: a write that would make one collection more is
/// 413 `limit_exceeded` naming the flag, whatever route it takes, and writes
/// nothing; `GET /v1/c` answers in pages of names, `next` naming where the
/// next one starts.
#[test]
fn collections_are_bounded_and_listed_in_pages() {
    let server = Server::start_with(&["--max-collections", "3"]);
    let api = Api::new(&server);
    for c in ["b", "a", "c"] {
        api.put(&format!("/v1/c/{c}/x"), json!({})).ok(201);
    }
    let refused = |reply: Reply| {
        let message = reply.error(413, "limit_exceeded")["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("collection d ") && message.contains("--max-collections"),
            "{message}"
        );
    };
    refused(api.put("/v1/c/d/x", json!({})));
    refused(api.patch("/v1/c/d/x", json!({"$inc": {"n": 1}, "$upsert": true})));
    refused(
        api.tx(json!({"ops": [{"op": "put", "c": "a", "id": "y", "doc": {}},
                                  {"op": "put", "c": "d", "id": "x", "doc": {}}]})),
    );
    refused(api.post(
        "/v1/c/d/_push?primaryKey=id",
        json!([{"newDocumentState": {"id": "x"}}]),
    ));
    // A declaration makes its collection too, and a counter's target.
    refused(api.put("/v1/c/d/_indexes/n", json!({"fields": ["n"]})));
    refused(api.put("/v1/c/d/_config", json!({"ttl": {"field": "t", "seconds": 60}})));
    let counter = json!({"counters": [{"name": "n", "group_by": "g", "target": {"c": "d", "field": "n"}}]});
    refused(api.put("/v1/c/a/_config", counter));
    // CouchDB's side: a database is made by its first write, and one that
    // could not be is not announced as made.
    let couch = api.put("/couch/d", json!({}));
    assert_eq!(
        (couch.status, couch.json["error"].as_str()),
        (413, Some("too_large")),
        "{}",
        couch.text
    );
    // `_bulk_docs` answers each row (CouchDB's way).
    let couch = api.post("/couch/d/_bulk_docs", json!({"docs": [{"_id": "x"}]}));
    assert_eq!(
        (couch.status, couch.json[0]["error"].as_str()),
        (201, Some("limit_exceeded")),
        "{}",
        couch.text
    );
    assert_eq!(api.put("/couch/a", json!({})).status, 412, "a database there");
    api.get("/v1/c/a/y").error(404, "not_found");
    api.get("/v1/c/d/x").error(404, "not_found");
    api.put("/v1/c/a/y", json!({})).ok(201);
    let metrics = api.get("/metrics").text;
    for (line, value) in [("truce_collections", "3.0"), ("truce_collections_max", "3.0")] {
        assert!(
            metrics.lines().any(|l| l == format!("{line} {value}")),
            "{line} in {metrics}"
        );
    }

    assert_eq!(
        api.get("/v1/c").ok(200),
        &json!({"collections": ["a", "b", "c"], "next": null})
    );
    assert_eq!(
        api.get("/v1/c?limit=2").ok(200),
        &json!({"collections": ["a", "b"], "next": "b"})
    );
    assert_eq!(
        api.get("/v1/c?limit=2&after=b").ok(200),
        &json!({"collections": ["c"], "next": null})
    );
    assert_eq!(
        api.get("/v1/c?limit=1&after=a").ok(200),
        &json!({"collections": ["b"], "next": "b"})
    );
    assert_eq!(
        api.get("/v1/c?limit=0&after=c").ok(200),
        &json!({"collections": [], "next": null})
    );
    for bad in [
        "limit=10001",
        "limit=-1",
        "limit=x",
        "after=",
        "after=..",
        "after=1a",
        "since=0",
    ] {
        api.get(&format!("/v1/c?{bad}")).error(400, "invalid_query");
    }

    // Without `limit`, pages of 1,000; at most 10,000.
    let server = Server::start();
    let api = Api::new(&server);
    let names: Vec<String> = (0..1001).map(|i| format!("c{i:04}")).collect();
    for part in names.chunks(500) {
        let ops: Vec<Value> = part
            .iter()
            .map(|c| json!({"op": "put", "c": c, "id": "x", "doc": {}}))
            .collect();
        api.tx(json!({ "ops": ops })).ok(200);
    }
    let first = api.get("/v1/c").ok(200).clone();
    assert_eq!(first["collections"].as_array().unwrap().len(), 1000);
    assert_eq!(first["next"], "c0999");
    assert_eq!(
        api.get("/v1/c?after=c0999").ok(200),
        &json!({"collections": ["c1000"], "next": null})
    );
    let all = api.get("/v1/c?limit=10000").ok(200).clone();
    assert_eq!(
        (all["collections"].as_array().unwrap().len(), &all["next"]),
        (1001, &Value::Null)
    );
}

// ---------------------------------------------------------------------------
// Replication: RxDB push and the CouchDB subset (beyond tests/interop)
// ---------------------------------------------------------------------------

/// A JavaScript client holds numbers as doubles: the `1.0` a pull showed (the
/// server's `$inc` of floats stores one) comes back as `1`, and an integer
/// past 2^53 comes back rounded. Its assumed state is the master all the
/// same: compared exactly, such a row conflicted on every retry and its edit
/// was lost.
#[test]
fn a_push_compares_numbers_as_its_client_holds_them() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put(
        "/v1/c/fl/item",
        json!({"price": 0.5, "big": 9007199254740993u64, "list": [2.0]}),
    )
    .ok(201);
    api.patch("/v1/c/fl/item", json!({"$inc": {"price": 0.5}}))
        .ok(200);
    let pulled = api.get("/v1/c/fl/_pull?primaryKey=id").ok(200).clone();
    assert!(pulled.to_string().contains("\"price\":1.0"), "{pulled}");
    let as_js_holds = json!({"id": "item", "price": 1, "big": 9007199254740992u64, "list": [2]});
    let mut edited = as_js_holds.clone();
    edited["name"] = json!("edited");
    let reply = api.post(
        "/v1/c/fl/_push?primaryKey=id",
        json!([{"assumedMasterState": as_js_holds, "newDocumentState": edited}]),
    );
    assert_eq!(reply.ok(200), &json!([]), "{}", reply.text);
    assert_eq!(api.get("/v1/c/fl/item").ok(200)["name"], "edited");
    // A number that differs is still a conflict.
    let stale = json!({"id": "item", "price": 2, "big": 9007199254740992u64, "list": [2], "name": "edited"});
    let reply = api.post(
        "/v1/c/fl/_push?primaryKey=id",
        json!([{"assumedMasterState": stale, "newDocumentState": {"id": "item"}}]),
    );
    assert_eq!(reply.ok(200)[0]["price"], 1, "{}", reply.text);
}

/// A pushed row that takes a value a unique index holds is neither a race to
/// retry nor a conflict a master state answers (the row's document may not
/// exist): the push is refused naming the row, and nothing of its
/// transaction is written. It used to answer `[]` (the row silently
/// dropped: client and server diverged for good) or a "master state" equal
/// to the assumed one (a conflict no retry could resolve).
#[test]
fn a_push_that_takes_a_unique_value_is_refused_naming_the_row() {
    let server = Server::start();
    let api = Api::new(&server);
    assert_eq!(api.unique_index("users", "email", "email"), 202);
    api.put("/v1/c/users/alice", json!({"email": "a@x"})).ok(201);
    api.put("/v1/c/users/bob", json!({"email": "b@x"})).ok(201);
    let push = |rows: Value| api.post("/v1/c/users/_push?primaryKey=id", rows);
    let carol = json!({"assumedMasterState": null, "newDocumentState": {"id": "carol", "email": "a@x"}});
    let dave = json!({"assumedMasterState": null, "newDocumentState": {"id": "dave", "email": "d@x"}});
    let bob_takes_alices = json!({"assumedMasterState": {"id": "bob", "email": "b@x"},
                                  "newDocumentState": {"id": "bob", "email": "a@x"}});
    for (rows, row, id) in [
        (json!([carol]), 0, "carol"),
        (json!([dave, carol]), 1, "carol"),
        (json!([bob_takes_alices]), 0, "bob"),
    ] {
        let reply = push(rows.clone());
        let refused = reply.error(409, "conflict");
        let conflict = &refused["conflicts"][0];
        assert_eq!(
            (
                &conflict["index"],
                &conflict["id"],
                &conflict["reason"],
                &conflict["current"]["_id"]
            ),
            (
                &json!(row),
                &json!(id),
                &json!("unique_violation"),
                &json!("alice")
            ),
            "{rows}: {refused}"
        );
    }
    // Through /couch it is what a validation function's refusal is in
    // CouchDB: forbidden, not a conflict a newer revision would resolve.
    let rows = api.post(
        "/couch/users/_bulk_docs",
        json!({"docs": [{"_id": "carol", "email": "a@x"}]}),
    );
    assert_eq!(rows.ok(201)[0]["error"], "forbidden", "{}", rows.text);
    let put = api.put("/couch/users/carol", json!({"email": "a@x"}));
    assert_eq!(
        (put.status, &put.json["error"]),
        (403, &json!("forbidden")),
        "{}",
        put.text
    );
    assert!(
        put.json["reason"].as_str().unwrap().contains("alice"),
        "{}",
        put.text
    );
    for id in ["carol", "dave"] {
        assert_eq!(api.get(&format!("/v1/c/users/{id}")).status, 404, "{id}");
    }
    assert_eq!(api.get("/v1/c/users/bob").ok(200)["email"], "b@x");
}

/// A push's answer holds the master state of every row that conflicted,
/// written as a pull writes them, within a whole page's bytes
/// (`WHOLE_PAGE_BYTES_MAX`): a push of a few kilobytes whose rows all met
/// large documents answered 52.8 MB and took the server to 1.1 GB. Past it,
/// 413 `limit_exceeded`, as a pull of as many: push fewer rows at once.
#[test]
fn a_push_answers_its_conflicts_within_a_whole_page() {
    let server = Server::start();
    let api = Api::new(&server);
    let blob = "x".repeat(truce::limits::DOC_SIZE_BYTES_MAX - 100);
    let whole = truce::limits::WHOLE_PAGE_BYTES_MAX / blob.len() + 1;
    for i in 0..whole {
        api.put(&format!("/v1/c/big/d{i}"), json!({"blob": blob})).ok(201);
    }
    // Each row assumes no document: each meets one and conflicts.
    let rows = |n: usize| {
        json!((0..n)
            .map(|i| json!({"assumedMasterState": null, "newDocumentState": {"id": format!("d{i}"), "v": 1}}))
            .collect::<Vec<_>>())
    };
    let answer = api.post("/v1/c/big/_push?primaryKey=id", rows(3));
    let masters = answer.ok(200).as_array().unwrap();
    assert_eq!(masters.len(), 3);
    assert_eq!(masters[2], json!({"id": "d2", "blob": blob, "_deleted": false}));
    let answer = api.post("/v1/c/big/_push?primaryKey=id", rows(whole));
    answer.error(413, "limit_exceeded");
    assert!(answer.text.contains("WHOLE_PAGE_BYTES_MAX"), "{}", answer.text);
}

/// RxDB pushes that the interop suite's real clients do not make: an assumed
/// state for a document the server has never had, rows naming two ids, and a
/// master past its TTL that the sweeper has not reached.
#[test]
fn replication_push_edges() {
    let server = Server::start();
    let api = Api::new(&server);
    let push = |rows: Value| api.post("/v1/c/rx/_push?primaryKey=id", rows);
    // No document, not even a tombstone: nothing to overwrite, so the row is
    // written (an empty answer tells RxDB so), whatever form the assumed
    // state takes.
    let rev = "1-f005e81b26bb8250ecb22686f22788c4";
    for (id, assumed) in [
        ("by-rev", json!({"id": "by-rev", "_rev": rev})),
        ("by-version", json!({"id": "by-version", "_version": 3})),
        ("by-fields", json!({"id": "by-fields", "v": 1})),
    ] {
        let answer = push(json!([{"assumedMasterState": assumed,
                                  "newDocumentState": {"id": id, "v": 2}}]));
        assert_eq!(answer.ok(200), &json!([]), "{id}");
        assert_eq!(api.get(&format!("/v1/c/rx/{id}")).ok(200)["v"], 2, "{id}");
    }
    // A deleted master still conflicts with a live assumed state, and the
    // conflict is counted as any write's, by collection and source.
    api.delete("/v1/c/rx/by-rev?version=-1").ok(200);
    let answer = api.post_h(
        "/v1/c/rx/_push?primaryKey=id",
        json!([{"assumedMasterState": {"id": "by-rev", "v": 2},
                "newDocumentState": {"id": "by-rev", "v": 3}}]),
        &[("Truce-Source", "rxclient")],
    );
    assert_eq!(answer.ok(200)[0]["_deleted"], true, "{}", answer.text);
    assert!(answer.ok(200)[0].get("_rev").is_none(), "{}", answer.text);
    // With meta=true, as the client's pulls may ask, a conflict's master state
    // carries the metadata its next assumed state can name.
    let stale = json!([{"assumedMasterState": {"id": "by-version", "v": 1},
                        "newDocumentState": {"id": "by-version", "v": 3}}]);
    let answer = api.post("/v1/c/rx/_push?primaryKey=id&meta=true", stale.clone());
    let master = api.get("/v1/c/rx/by-version").ok(200).clone();
    let shown = &answer.ok(200)[0];
    assert_eq!(
        (&shown["_rev"], &shown["_version"], &shown["v"], &shown["id"]),
        (
            &master["_rev"],
            &master["_version"],
            &json!(2),
            &json!("by-version")
        ),
        "{}",
        answer.text
    );
    let answer = api.post("/v1/c/rx/_push?primaryKey=id", stale);
    assert!(answer.ok(200)[0].get("_version").is_none(), "{}", answer.text);
    // A guard that cannot be read is refused, naming the row: dropped, the
    // row would be compared by its fields alone, and a write made from an
    // older state with the same fields (A, B, A) would pass.
    for guard in [
        json!({"_version": "2"}),
        json!({"_version": -5}),
        json!({"_version": 0}),
        json!({"_version": 1.5}),
        json!({"_rev": 2}),
        json!({"_rev": "2-not-a-hash"}),
    ] {
        let mut assumed = json!({"id": "by-version", "v": 2});
        assumed
            .as_object_mut()
            .unwrap()
            .extend(guard.as_object().unwrap().clone());
        let answer = push(json!([{"assumedMasterState": assumed,
                                  "newDocumentState": {"id": "by-version", "v": 9}}]));
        let body = answer.error(400, "invalid_precondition");
        assert!(
            body["message"].as_str().unwrap().contains("row 0"),
            "{guard}: {}",
            answer.text
        );
    }
    assert_eq!(api.get("/v1/c/rx/by-version").ok(200)["v"], 2);
    let metrics = api.get("/metrics");
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == r#"truce_conflicts_total{reason="not_found",collection="rx",source="rxclient"} 1"#),
        "{}",
        metrics.text
    );
    // One row, two documents.
    push(json!([{"assumedMasterState": {"id": "p2", "v": 1},
                 "newDocumentState": {"id": "q2", "v": 2}}]))
    .error(400, "invalid_transaction");
    assert_eq!(api.get("/v1/c/rx/q2").status, 404);
    // Other `_` fields would be dropped too: refused, naming the row. The
    // metadata a client holds is not.
    let answer = push(
        json!([{"assumedMasterState": null, "newDocumentState": {"id": "m1", "v": 1}},
                             {"assumedMasterState": null, "newDocumentState": {"id": "m2", "_foo": 1}}]),
    );
    answer.error(400, "reserved_field");
    assert!(
        answer.text.contains("row 1") && answer.text.contains("_foo"),
        "{}",
        answer.text
    );
    assert_eq!(api.get("/v1/c/rx/m1").status, 404);
    let held = json!({"id": "m3", "v": 1, "_deleted": false, "_attachments": {}, "_meta": {"lwt": 1.5},
                      "_rev": rev, "_version": 1, "_seq": 1, "_ts": 1});
    assert_eq!(
        push(json!([{"assumedMasterState": null, "newDocumentState": held}])).ok(200),
        &json!([])
    );
    assert_eq!(api.get("/v1/c/rx/m3").ok(200)["v"], 1);
    // A body of another shape than an array of rows.
    push(json!({"assumedMasterState": null})).error(400, "invalid_transaction");
    // An id no URL could name is refused with its row named.
    let dots = push(json!([{"assumedMasterState": null, "newDocumentState": {"id": "..", "v": 1}}]));
    let message = dots.error(400, "invalid_id")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("row 0: \"..\""), "{message}");
    // A misspelt assumedMasterState was read as absent: an insert.
    let misspelt =
        push(json!([{"assumedMasterStat": {"id": "m3", "v": 1}, "newDocumentState": {"id": "m3", "v": 2}}]));
    assert!(
        misspelt.error(400, "invalid_transaction")["message"]
            .as_str()
            .unwrap()
            .contains("row 0: \"assumedMasterStat\""),
        "{}",
        misspelt.text
    );
    assert_eq!(api.get("/v1/c/rx/m3").ok(200)["v"], 1);
    // Attachments would be dropped, not stored: refused, as on /couch.
    push(json!([{"assumedMasterState": null,
                 "newDocumentState": {"id": "att", "_attachments": {"f": {"data": "aGk="}}}}]))
    .error(400, "invalid_transaction");
    assert_eq!(api.get("/v1/c/rx/att").status, 404);
    // More than one transaction may write (16 MiB), within the body limit
    // (20 MiB): written in as many transactions as it takes, not refused for
    // ever (a client retries the same batch).
    let blob = "x".repeat(170_000);
    let rows: Vec<Value> = (0..100)
        .map(|i| json!({"assumedMasterState": null, "newDocumentState": {"id": format!("big{i}"), "blob": blob}}))
        .collect();
    assert_eq!(push(Value::Array(rows)).ok(200), &json!([]));
    for i in [0, 50, 99] {
        assert_eq!(
            api.get(&format!("/v1/c/rx/big{i}")).ok(200)["blob"]
                .as_str()
                .map(str::len),
            Some(170_000)
        );
    }
    // Large documents pushed small: one transaction would meet more than
    // TX_READ_BYTES_MAX of them, so each row goes alone, and all are written.
    let large = "y".repeat(1_000_000);
    for i in 0..18 {
        api.put(&format!("/v1/c/rx/large{i}"), json!({ "blob": large }))
            .ok(201);
    }
    // Past 16 MiB of documents a query page comes short; /couch's
    // _all_docs still answers every row of the range (a CouchDB client
    // takes a short answer for the end), not a refusal.
    let count = api.get("/couch/rx/").ok(200)["doc_count"].as_u64().unwrap();
    assert!(count > 100, "{count}");
    let all = api.get("/couch/rx/_all_docs");
    assert_eq!(all.ok(200)["rows"].as_array().map(Vec::len), Some(count as usize));
    let limited = api.get(&format!("/couch/rx/_all_docs?limit={count}"));
    assert_eq!(
        limited.ok(200)["rows"].as_array().map(Vec::len),
        Some(count as usize)
    );
    // Among them, a rename whose new id comes before the old one's delete:
    // written alone, the new one is refused at first (the old one holds its
    // unique value), and goes once more after the others.
    assert_eq!(api.unique_index("rx", "email", "email"), 202);
    api.put("/v1/c/rx/orig", json!({"email": "x@y"})).ok(201);
    let mut rows: Vec<Value> = (0..18)
        .map(|i| {
            json!({"assumedMasterState": {"id": format!("large{i}"), "blob": large},
                   "newDocumentState": {"id": format!("large{i}"), "blob": "small"}})
        })
        .collect();
    rows.insert(
        0,
        json!({"assumedMasterState": null, "newDocumentState": {"id": "renamed", "email": "x@y"}}),
    );
    rows.push(json!({"assumedMasterState": {"id": "orig", "email": "x@y"},
                     "newDocumentState": {"id": "orig", "email": "x@y", "_deleted": true}}));
    // And a chain: c1 takes c2's value, c2 takes c3's, c3 is deleted last;
    // each pass over the refused rows frees one value.
    for i in 1..=3 {
        api.put(&format!("/v1/c/rx/c{i}"), json!({ "email": format!("v{i}") }))
            .ok(201);
    }
    // (Inserted in reverse: the rows go c1, c2, ..., c3's delete.)
    for (id, from, to) in [("c2", "v2", "v3"), ("c1", "v1", "v2")] {
        rows.insert(
            1,
            json!({"assumedMasterState": {"id": id, "email": from},
                   "newDocumentState": {"id": id, "email": to}}),
        );
    }
    rows.push(json!({"assumedMasterState": {"id": "c3", "email": "v3"},
                     "newDocumentState": {"id": "c3", "email": "v3", "_deleted": true}}));
    assert_eq!(push(Value::Array(rows)).ok(200), &json!([]));
    assert_eq!(api.get("/v1/c/rx/renamed").ok(200)["email"], "x@y");
    assert_eq!(api.get("/v1/c/rx/orig").status, 404);
    assert_eq!(api.get("/v1/c/rx/c1").ok(200)["email"], "v2");
    assert_eq!(api.get("/v1/c/rx/c2").ok(200)["email"], "v3");
    assert_eq!(api.get("/v1/c/rx/large17").ok(200)["blob"], "small");
    // A push refused in its second transaction says that its first was
    // written (it said "nothing"), and how many rows.
    let mut rows: Vec<Value> = (0..99)
        .map(|i| json!({"assumedMasterState": null, "newDocumentState": {"id": format!("g{i}"), "blob": blob}}))
        .collect();
    rows.push(json!({"assumedMasterState": null, "newDocumentState": {"id": "g-taken", "email": "x@y"}}));
    let reply = push(Value::Array(rows));
    let refused = reply.error(409, "conflict");
    let written = (0..99)
        .filter(|i| api.get(&format!("/v1/c/rx/g{i}")).status == 200)
        .count();
    assert!(
        (90..99).contains(&written),
        "the first transaction's rows: {written}"
    );
    assert_eq!(refused["written_rows"], written, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains(&format!("; {written} row(s) of this push were written before it")),
        "{refused}"
    );
    assert_eq!(refused["conflicts"][0]["index"], 99, "{refused}");

    // A row's errors name it; a _deleted that is not a boolean is refused,
    // not read as false (which stored a live document).
    let ok_row = json!({"assumedMasterState": null, "newDocumentState": {"id": "fine"}});
    let reply = push(
        json!([ok_row, {"assumedMasterState": null, "newDocumentState": {"id": "bad", "$set": {"a": 1}}}]),
    );
    let refused = reply.error(400, "invalid_document");
    assert!(
        refused["message"].as_str().unwrap().contains("row 1: "),
        "{refused}"
    );
    let reply =
        push(json!([{"assumedMasterState": null, "newDocumentState": {"id": "str", "_deleted": "true"}}]));
    reply.error(400, "invalid_transaction");
    assert_eq!(api.get("/v1/c/rx/str").status, 404);
    assert_eq!(
        api.get("/v1/c/rx/fine").status,
        404,
        "a refused push writes no row"
    );

    // A document written through /v1 with the client's primary-key field:
    // holding its own id there, it replicates both ways without a conflict;
    // holding anything else, the pull refuses it, rather than showing the id
    // over the value (which a push of the pulled copy would then drop).
    api.put("/v1/c/pk/same", json!({"id": "same", "name": "x"}))
        .ok(201);
    let pulled = api.get("/v1/c/pk/_pull?primaryKey=id");
    let doc = pulled.ok(200)["documents"][0].clone();
    assert_eq!(doc["id"], "same");
    let mut renamed = doc.clone();
    renamed["name"] = json!("y");
    let answer = api.post(
        "/v1/c/pk/_push?primaryKey=id",
        json!([{"assumedMasterState": doc, "newDocumentState": renamed}]),
    );
    assert_eq!(
        answer.ok(200),
        &json!([]),
        "pushing back what was pulled is no conflict"
    );
    assert_eq!(api.get("/v1/c/pk/same").ok(200)["name"], "y");
    api.put("/v1/c/pk/other", json!({"id": 42, "name": "x"})).ok(201);
    let refused = api.get("/v1/c/pk/_pull?primaryKey=id");
    assert!(
        refused.error(400, "invalid_query")["message"]
            .as_str()
            .unwrap()
            .contains("other"),
        "{}",
        refused.text
    );

    // Past its TTL: a tombstone for reads and writes of every route. The
    // sweeper writes the real tombstone within a tick or so; only a round
    // it did not reach first shows anything, and that one says so by the
    // version the push wrote: 2 over the expired document, 3 over the
    // sweeper's tombstone.
    api.put("/v1/c/old/_config", json!({"ttl": {"field": "u", "seconds": 1}}))
        .ok(200);
    let before_the_sweeper = (0..20).any(|round| {
        let path = format!("/v1/c/old/gone{round}");
        api.put(&path, json!({"u": 0, "v": 1})).ok(201);
        api.get(&path).error(404, "not_found");
        let couch = api.get(&format!("/couch/old/gone{round}"));
        assert_eq!(couch.status, 404, "{}", couch.text);
        let row = json!({"assumedMasterState": null,
                         "newDocumentState": {"id": format!("gone{round}"), "v": 2}});
        let answer = api.post("/v1/c/old/_push?primaryKey=id", json!([row]));
        assert_eq!(answer.ok(200), &json!([]), "created anew over the expired one");
        let now = api.get(&path);
        assert_eq!(now.ok(200)["v"], 2);
        now.json["_version"] == 2
    });
    assert!(before_the_sweeper, "the sweeper was first in every round");
}

/// `_bulk_docs` queues a bounded number of its rows at once: 24 requests
/// of 1,000 rows at a time, 24,000 writes, no longer fill the
/// commit queue's 8,192 places, so none of their rows, and no other
/// client's write, is refused as `overloaded`.
#[test]
fn bulk_requests_at_once_do_not_fill_the_commit_queue() {
    let server = Server::start();
    let rows: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let bulks: Vec<_> = (0..24)
            .map(|b| {
                let api = Api::new(&server);
                scope.spawn(move || {
                    let docs: Vec<Value> = (0..1000)
                        .map(|i| json!({"_id": format!("b{b}-{i}"), "n": i}))
                        .collect();
                    let answer = api.post("/couch/bulk/_bulk_docs", json!({ "docs": docs }));
                    answer.ok(201).as_array().unwrap().clone()
                })
            })
            .collect();
        let api = Api::new(&server);
        for i in 0..50 {
            api.put(&format!("/v1/c/other/o{i}"), json!({"n": i})).ok(201);
        }
        bulks.into_iter().map(|b| b.join().unwrap()).collect()
    });
    for rows in rows {
        assert_eq!(rows.len(), 1000);
        let refused: Vec<&Value> = rows.iter().filter(|r| r["ok"] != true).collect();
        assert!(
            refused.is_empty(),
            "{} rows refused, the first {}",
            refused.len(),
            refused[0]
        );
    }
    let info = Api::new(&server).get("/couch/bulk/");
    assert_eq!(info.ok(200)["doc_count"], 24_000);
}

/// The CouchDB subset refuses what it cannot keep, before writing any
/// document of the request.
#[test]
fn couch_writes_refuse_what_they_cannot_keep() {
    let server = Server::start();
    let api = Api::new(&server);
    let bulk = |docs: Value| api.post("/couch/cb/_bulk_docs", json!({ "docs": docs }));
    let attachment = json!({"f": {"data": "aGk=", "content_type": "text/plain"}});
    for (docs, error) in [
        (
            json!([{"_id": "first"}, {"_id": "d", "_attachments": attachment}]),
            "bad_request",
        ),
        (
            json!([{"_id": "first"}, {"_id": "c", "_foo": 1}]),
            "doc_validation",
        ),
        // Read as false, `"yes"` wrote a live document for a delete.
        (
            json!([{"_id": "first"}, {"_id": "g", "_deleted": "yes"}]),
            "bad_request",
        ),
        (json!([{"_id": "first"}, {"_id": 5}]), "bad_request"),
    ] {
        let answer = bulk(docs);
        assert_eq!(answer.status, 400, "{}", answer.text);
        assert_eq!(answer.json["error"], error, "{}", answer.text);
        assert_eq!(
            api.get("/v1/c/cb/first").status,
            404,
            "nothing of the request is written"
        );
    }
    let answer = api.put("/couch/cb/e", json!({"_attachments": attachment}));
    assert_eq!(answer.status, 400, "{}", answer.text);
    let answer = api.put("/couch/cb/e", json!({"_deleted": 1}));
    assert_eq!(
        (answer.status, &answer.json["error"]),
        (400, &json!("bad_request")),
        "{}",
        answer.text
    );
    // `new_edits` of another type was read as true.
    let answer = api.post(
        "/couch/cb/_bulk_docs",
        json!({"docs": [{"_id": "first"}], "new_edits": "no"}),
    );
    assert_eq!(
        (answer.status, &answer.json["error"]),
        (400, &json!("bad_request")),
        "{}",
        answer.text
    );
    assert_eq!(api.get("/v1/c/cb/first").status, 404);
    // CouchDB's own fields, and no attachments, are fine.
    let answer = bulk(json!([{"_id": "ok", "_attachments": {}, "_conflicts": [], "n": 1}]));
    assert_eq!(answer.ok(201)[0]["ok"], true, "{}", answer.text);
    assert_eq!(api.get("/v1/c/cb/ok").ok(200)["n"], 1);
    // A delete without _rev of a document that never existed writes nothing
    // and answers the revision "0-0", which taken back as _rev means the
    // same "nothing there"; a PUT of such a delete answers as _bulk_docs does.
    let answer = bulk(json!([{"_id": "ghost", "_deleted": true}]));
    assert_eq!(answer.ok(201)[0]["rev"], "0-0", "{}", answer.text);
    let answer = api.put("/couch/cb/ghost", json!({"_rev": "0-0", "n": 2}));
    assert_eq!(answer.status, 201, "{}", answer.text);
    let answer = api.put("/couch/cb/ghost2", json!({"_deleted": true}));
    assert_eq!(answer.ok(200)["rev"], "0-0", "{}", answer.text);
    let answer = api.delete("/couch/cb/ghost3?rev=0-0");
    assert_eq!(answer.ok(200)["rev"], "0-0", "{}", answer.text);
    let answer = api.put("/couch/cb/ok", json!({"_deleted": true}));
    assert_eq!(
        answer.status, 409,
        "a live document needs its _rev: {}",
        answer.text
    );
    // A revision of a deleted document is a stale copy, a conflict (as in
    // CouchDB and `_bulk_docs`), not a missing document; one of a document
    // never written is missing.
    let live = api.get("/couch/cb/ok").ok(200)["_rev"]
        .as_str()
        .unwrap()
        .to_string();
    let tombstone = api.delete(&format!("/couch/cb/ok?rev={live}")).ok(200)["rev"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(api.get("/couch/cb/ok").json["reason"], "deleted");
    for stale in [&live, &tombstone] {
        let answer = api.delete(&format!("/couch/cb/ok?rev={stale}"));
        assert_eq!(
            (answer.status, &answer.json["error"]),
            (409, &json!("conflict")),
            "{}",
            answer.text
        );
        let answer = api.put("/couch/cb/ok", json!({"_rev": stale, "n": 2}));
        assert_eq!(answer.status, 409, "{}", answer.text);
        let row = &bulk(json!([{"_id": "ok", "_rev": stale, "n": 2}])).json[0];
        assert_eq!(row["error"], "conflict", "{row}");
    }
    let answer = api.delete(&format!("/couch/cb/never?rev={live}"));
    assert_eq!(
        (answer.status, &answer.json["reason"]),
        (404, &json!("missing")),
        "{}",
        answer.text
    );
    // A PUT's revision in the query and in the body agree, or it is refused
    // (as CouchDB refuses it): the body's won, and the query's guard was
    // never checked. The query's alone, or both the same, guard the write.
    let rev = api.put("/couch/cb/q", json!({"n": 1})).ok(201)["rev"]
        .as_str()
        .unwrap()
        .to_string();
    for body_rev in [json!(tombstone), json!(null), json!(5)] {
        let answer = api.put(
            &format!("/couch/cb/q?rev={rev}"),
            json!({"_rev": body_rev, "n": 2}),
        );
        assert_eq!(
            (answer.status, &answer.json["error"]),
            (400, &json!("bad_request")),
            "{body_rev}: {}",
            answer.text
        );
    }
    let answer = api.put(
        &format!("/couch/cb/q?rev={tombstone}"),
        json!({"_rev": rev, "n": 2}),
    );
    assert_eq!(answer.status, 400, "{}", answer.text);
    let answer = api.put(&format!("/couch/cb/q?rev={tombstone}"), json!({"n": 2}));
    assert_eq!(
        answer.status, 409,
        "the query's stale revision guards: {}",
        answer.text
    );
    let answer = api.put(&format!("/couch/cb/q?rev={rev}"), json!({"_rev": rev, "n": 2}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(api.get("/v1/c/cb/q").ok(200)["n"], 2);
}

/// `/couch` reads answer the range and order CouchDB's parameters ask for,
/// or refuse a parameter they do not implement; none is ignored (ignoring
/// `filter` or `key` would answer every document instead of the ones asked).
#[test]
fn couch_reads_answer_what_was_asked_or_refuse() {
    let server = Server::start();
    let api = Api::new(&server);
    for id in ["a", "b", "c", "d"] {
        api.put(&format!("/couch/cr/{id}"), json!({})).ok(201);
    }
    let ids = |query: &str| -> Vec<String> {
        let answer = api.get(&format!("/couch/cr/_all_docs?{query}"));
        answer.ok(200)["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(""), ["a", "b", "c", "d"]);
    assert_eq!(ids("key=%22b%22"), ["b"]);
    assert_eq!(ids("startkey=%22b%22&endkey=%22c%22"), ["b", "c"]);
    assert_eq!(ids("startkey=%22b%22&endkey=%22c%22&inclusive_end=false"), ["b"]);
    assert_eq!(ids("descending=true"), ["d", "c", "b", "a"]);
    assert_eq!(
        ids("descending=true&startkey=%22c%22&endkey=%22a%22"),
        ["c", "b", "a"]
    );
    assert_eq!(
        ids("descending=true&start_key=%22c%22&end_key=%22a%22&inclusive_end=false&limit=5"),
        ["c", "b"]
    );
    assert_eq!(ids("skip=0&limit=2"), ["a", "b"]);

    let refused = |answer: Reply, name: &str| {
        assert_eq!(answer.status, 400, "{}", answer.text);
        assert_eq!(answer.json["error"], "bad_request", "{}", answer.text);
        assert!(answer.text.contains(name), "{}", answer.text);
    };
    refused(api.get("/couch/cr/_all_docs?skip=1"), "skip");
    refused(api.get("/couch/cr/_all_docs?key=5"), "key");
    refused(api.get("/couch/cr/_all_docs?startkey=%5B%22a%22%5D"), "startkey");
    refused(api.get("/couch/cr/_all_docs?keys=%5B%22a%22%5D&limit=1"), "limit");
    refused(
        api.post("/couch/cr/_all_docs?descending=true", json!({"keys": ["a"]})),
        "descending",
    );
    refused(api.get("/couch/cr/_all_docs?key=%22a%22&startkey=%22a%22"), "key");
    refused(
        api.post("/couch/cr/_all_docs", json!({"startkey": "b"})),
        "startkey",
    );
    // A misspelt `keys`, or a body of another shape, would answer every row.
    refused(api.post("/couch/cr/_all_docs", json!({"kyes": ["a"]})), "kyes");
    refused(api.post("/couch/cr/_all_docs", json!({"keys": null})), "keys");
    refused(api.post("/couch/cr/_all_docs", json!("x")), "object");
    refused(api.post("/couch/cr/_all_docs", json!([])), "object");
    refused(
        api.post(
            "/couch/cr/_all_docs",
            json!({"keys": ["a"], "include_docs": "yes"}),
        ),
        "include_docs",
    );
    assert_eq!(
        api.post(
            "/couch/cr/_all_docs",
            json!({"keys": ["a"], "include_docs": true})
        )
        .ok(200)["rows"][0]["doc"]["_id"],
        "a"
    );
    // A key no document could have is a row of its own, as CouchDB
    // answers it, not a refusal of every key.
    let long = "x".repeat(600);
    let rows = api.post(
        "/couch/cr/_all_docs",
        json!({"keys": ["a", "", "_design/x", long, "zz"]}),
    );
    let rows = rows.ok(200)["rows"].as_array().cloned().expect("rows");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["id"], "a");
    for (row, key) in rows[1..].iter().zip(["", "_design/x", long.as_str(), "zz"]) {
        assert_eq!(row, &json!({"key": key, "error": "not_found"}));
    }
    refused(
        api.get("/couch/cr/_changes?filter=_doc_ids&doc_ids=%5B%22a%22%5D"),
        "filter",
    );
    refused(api.get("/couch/cr/_changes?doc_ids=%5B%22a%22%5D"), "doc_ids");
    refused(api.get("/couch/cr/_changes?filter=_view&view=v%2Fv"), "filter");
    refused(api.get("/couch/cr/_changes?descending=true"), "descending");
    // Without a limit, _all_docs answers every row or none: past 1,000 it
    // refuses rather than cut the list short without a word; limit=0 is no
    // row, as in CouchDB.
    let many: Vec<Value> = (0..1001).map(|i| json!({"_id": format!("m{i:04}")})).collect();
    for docs in many.chunks(1000) {
        api.post("/couch/many/_bulk_docs", json!({ "docs": docs }))
            .ok(201);
    }
    refused(api.get("/couch/many/_all_docs"), "limit");
    let page = api.get("/couch/many/_all_docs?limit=1000");
    assert_eq!(page.ok(200)["rows"].as_array().map(Vec::len), Some(1000));
    // Exactly 1,000 is every row, not "more than 1,000" (a full page of
    // the engine has a `next` whether or not a document follows), in the
    // whole collection and in a range alike.
    let whole = |query: &str| {
        api.get(&format!("/couch/many/_all_docs{query}")).ok(200)["rows"]
            .as_array()
            .map(Vec::len)
    };
    assert_eq!(whole("?startkey=%22m0001%22"), Some(1000));
    assert_eq!(whole("?endkey=%22m0999%22"), Some(1000));
    api.delete("/v1/c/many/m1000?version=1").ok(200);
    assert_eq!(whole(""), Some(1000));
    let none = api.get("/couch/many/_all_docs?limit=0");
    assert_eq!(none.ok(200)["rows"], json!([]));
    assert_eq!(
        api.get("/couch/cr/_all_docs").ok(200)["rows"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    // A GET option that changes the answer's shape is refused, not ignored.
    refused(api.get("/couch/cr/a?open_revs=all"), "open_revs");
    refused(api.get("/couch/cr/a?revs=true"), "revs");
    // What is left after a page cut by `limit`.
    let cut = api.get("/couch/cr/_changes?limit=1");
    assert_eq!(cut.ok(200)["pending"], 3, "{}", cut.text);
    let all = api.get("/couch/cr/_changes");
    assert_eq!(all.ok(200)["pending"], 0);
    // Without `limit`, a page of 1,000 (CouchDB would answer every change):
    // `pending` says there is more, read from `last_seq`.
    let first = api.get("/couch/many/_changes");
    let first = first.ok(200);
    assert_eq!(first["results"].as_array().map(Vec::len), Some(1000));
    assert_eq!(first["pending"], 1);
    let rest = api.get(&format!("/couch/many/_changes?since={}", first["last_seq"]));
    let rest = rest.ok(200);
    assert_eq!(rest["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["pending"], 0);
    // CouchDB has no cap on `limit`: past this feed's, a page, not a 400.
    let large = api.get("/couch/cr/_changes?limit=20000");
    assert_eq!(large.ok(200)["results"], all.json["results"], "{}", large.text);
    // Errors made in front of the handlers are in CouchDB's shape too.
    for (answer, status, error) in [
        (api.post("/couch/cr/_revs_diff", json!({})), 404, "not_found"),
        (api.post("/couch/cr/a", json!({})), 405, "method_not_allowed"),
        (api.patch("/couch/cr/a", json!({})), 405, "method_not_allowed"),
        (
            api.call(Method::PUT, "/couch/cr/raw", &[], Some("{not json".into())),
            400,
            "bad_request",
        ),
    ] {
        assert_eq!(answer.status, status, "{}", answer.text);
        if status == 405 {
            // The methods a document takes: not POST, which is refused.
            assert_eq!(
                answer.header("allow"),
                Some("GET,HEAD,PUT,DELETE"),
                "{}",
                answer.text
            );
        }
        assert_eq!(answer.json["error"], error, "{}", answer.text);
        assert!(
            answer.json["reason"].is_string() && answer.json.get("message").is_none(),
            "{}",
            answer.text
        );
    }
    // A route /couch does not have answers in CouchDB's shape too.
    let missing = api.get("/couch/cr/_design/v");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"], "not_found", "{}", missing.text);
    assert!(missing.json["reason"].is_string(), "{}", missing.text);
    // Marked as no route, as /v1's (a /v1 client given a base URL ending in
    // /couch must not read it as a missing document).
    assert_eq!(missing.json["no_route"], true, "{}", missing.text);
    let v1_under_couch = api.get("/couch/v1/c/users/a");
    assert_eq!(
        (v1_under_couch.status, &v1_under_couch.json["no_route"]),
        (404, &json!(true))
    );
    // What rxdb's plugin sends still works.
    let posted = api.post(
        "/couch/cr/_all_docs",
        json!({"keys": ["a"], "include_docs": true, "deleted": "ok"}),
    );
    assert_eq!(posted.ok(200)["rows"][0]["doc"]["_id"], "a");
    let changes =
        api.get("/couch/cr/_changes?style=all_docs&feed=normal&since=0&heartbeat=60000&descending=false");
    assert_eq!(changes.ok(200)["results"].as_array().map(Vec::len), Some(4));
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

#[test]
fn transactions_all_or_nothing() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put("/v1/c/acc/a", json!({"balance": 10})).ok(201);
    api.put("/v1/c/acc/y", json!({"rate": 1})).ok(201);
    api.put("/v1/c/acc/z", json!({"tmp": true})).ok(201);

    let ok = api.tx(json!({"source": "transferFunds", "ops": [
        {"op": "check", "c": "acc", "id": "y", "version": 1},
        {"op": "put", "c": "acc", "id": "b", "doc": {"balance": 5}, "version": 0},
        {"op": "patch", "c": "acc", "id": "a", "update": {"$inc": {"balance": -5}}},
        {"op": "delete", "c": "acc", "id": "z", "version": -1},
        {"op": "check", "c": "acc", "id": "absent", "version": 0},
        {"op": "put", "c": "log", "id": "t1", "doc": {"what": "transfer"}}
    ]}));
    let body = ok.ok(200);
    let seq = body["seq"].as_u64().expect("seq");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "one answer per op");
    assert_eq!(results[0]["id"], "y");
    assert_eq!(results[0]["version"], 1);
    assert_eq!(
        results[0]["doc"]["rate"], 1,
        "a check answers the current document"
    );
    assert_eq!(results[1]["created"], true);
    assert_eq!(results[2]["doc"]["balance"], 5);
    assert_eq!(results[3]["doc"]["_deleted"], true);
    assert_eq!(
        results[4],
        Value::Null,
        "a check of an absent document answers null"
    );
    assert_eq!(results[5]["seq"], seq);
    for r in [&results[1], &results[2], &results[3]] {
        assert_eq!(r["seq"], seq, "every write of a transaction is in one commit");
    }
    assert_eq!(api.get("/v1/c/acc/a").json["balance"], 5);
    assert_eq!(api.get("/v1/c/acc/b").json["balance"], 5);
    api.get("/v1/c/acc/z").error(404, "not_found");

    // A check-only transaction answers whether the reads are still current.
    let checks = api.tx(
        json!({"ops": [{"op": "check", "c": "acc", "id": "a", "version": 2},
                                       {"op": "check", "c": "acc", "id": "b"}]}),
    );
    assert_eq!(checks.ok(200)["results"].as_array().unwrap().len(), 2);

    // A failure names every op that did not hold; nothing is written.
    let failed = api.tx(json!({"ops": [
        {"op": "check", "c": "acc", "id": "a", "version": 1},
        {"op": "put", "c": "acc", "id": "fresh", "doc": {"n": 1}},
        {"op": "put", "c": "acc", "id": "b", "doc": {"n": 1}, "version": 0},
        {"op": "patch", "c": "acc", "id": "nobody", "update": {"$set": {"n": 1}}},
        {"op": "delete", "c": "acc", "id": "gone", "version": 1},
        {"op": "check", "c": "acc", "id": "zz"}
    ]}));
    let body = failed.error(409, "conflict");
    let conflicts = body["conflicts"].as_array().expect("conflicts");
    let got: Vec<(u64, &str, &str, &str)> = conflicts
        .iter()
        .map(|c| {
            assert_eq!(c["c"], "acc");
            assert!(c.get("current").is_some());
            (
                c["index"].as_u64().unwrap(),
                c["c"].as_str().unwrap(),
                c["id"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "acc", "a", "version_mismatch"),
            (2, "acc", "b", "already_exists"),
            (3, "acc", "nobody", "not_found"),
            (4, "acc", "gone", "not_found"),
            (5, "acc", "zz", "not_found"),
        ],
        "{}",
        failed.text
    );
    assert_eq!(conflicts[0]["current"]["_version"], 2);
    assert_eq!(conflicts[2]["current"], Value::Null);
    api.get("/v1/c/acc/fresh").error(404, "not_found");

    // The body's `source` names the caller, as `Truce-Source` does (and over it).
    api.tx_h(
        json!({"source": "transferFunds", "ops": [{"op": "check", "c": "acc", "id": "a", "version": 1}]}),
        &[("Truce-Source", "header")],
    )
    .error(409, "conflict");
    let metrics = api.get("/metrics");
    assert!(
        metrics.text.lines().any(|l| l.starts_with(
            r#"truce_conflicts_total{reason="version_mismatch",collection="acc",source="transferFunds"} 1"#
        )),
        "{}",
        metrics.text
    );

    // Invalid transactions.
    api.tx(json!({"ops": [{"op": "put", "c": "acc", "id": "d", "doc": {}},
                          {"op": "patch", "c": "acc", "id": "d", "update": {"$set": {"a": 1}}}]}))
        .error(400, "invalid_transaction");
    let answer = api.tx(json!({"ops": [{"op": "delete", "c": "acc", "id": "a"}]}));
    answer.error(428, "precondition_required");
    assert!(
        answer.text.contains("op 0: a delete needs a precondition"),
        "{}",
        answer.text
    );
    let answer = api.tx(json!({"ops": [{"op": "check", "c": "acc", "id": "a"},
                                       {"op": "delete", "c": "acc", "id": "a"}]}));
    answer.error(428, "precondition_required");
    // It names the op, and the op's keys, not a request's query or headers.
    assert!(
        answer
            .text
            .contains(r#"op 1: a delete needs a precondition: the op's \"version\""#),
        "{}",
        answer.text
    );
    // A transaction of one op names it too (the engine names ops only in
    // transactions of several, since one is also a document's own write).
    let answer = api.tx(json!({"ops": [{"op": "put", "c": "1t", "id": "a", "doc": {}}]}));
    answer.error(400, "invalid_collection");
    assert!(answer.text.contains("op 0: "), "{}", answer.text);
    let answer = api.put("/v1/c/1t/a", json!({}));
    answer.error(400, "invalid_collection");
    assert!(!answer.text.contains("op 0"), "{}", answer.text);
    api.tx(json!({"ops": [{"op": "frob", "c": "acc", "id": "a"}]}))
        .error(400, "invalid_transaction");
    api.tx(json!({"ops": "nope"})).error(400, "invalid_transaction");
    api.tx(json!([1])).error(400, "invalid_transaction");
    // A malformed precondition is what it is in a document's own request,
    // and names its op.
    // So does every other op that cannot be read: of a thousand ops, the
    // caller is told which one.
    for (op, code) in [
        (
            json!({"op": "check", "c": "acc", "id": "a", "version": 2, "rev": "2-x"}),
            "invalid_precondition",
        ),
        (
            json!({"op": "check", "c": "acc", "id": "a", "rev": "not a revision"}),
            "invalid_precondition",
        ),
        (
            json!({"op": "check", "c": "acc", "id": "a", "version": -7}),
            "invalid_precondition",
        ),
        (
            json!({"op": "check", "c": "acc", "id": "a", "version": "2"}),
            "invalid_precondition",
        ),
        (
            json!({"op": "patch", "c": "acc", "id": "b", "update": {"$inc": {"n": "1"}}}),
            "invalid_operator",
        ),
        (
            json!({"op": "patch", "c": "acc", "id": "b", "update": {"$inc": {"n": 1}, "$if": {"a": {"$bogus": 1}}}}),
            "invalid_filter",
        ),
        (
            json!({"op": "put", "c": "acc", "id": "_bad", "doc": {}}),
            "invalid_id",
        ),
        (
            json!({"op": "put", "c": "acc", "id": "b", "doc": {"_x": 1}}),
            "reserved_field",
        ),
        (
            json!({"op": "put", "c": "acc", "id": "b", "doc": [1]}),
            "invalid_document",
        ),
        (
            json!({"op": "check", "c": "bad coll", "id": "b"}),
            "invalid_collection",
        ),
    ] {
        let ops = json!({"ops": [{"op": "check", "c": "acc", "id": "a"}, op]});
        let reply = api.tx(ops.clone());
        let refused = reply.error(400, code);
        assert!(
            refused["message"].as_str().unwrap().contains("op 1: "),
            "{ops}: {refused}"
        );
    }
    // So does an update that fails on the document it meets (here an
    // overflow), among ops that would conflict: the caller of a thousand
    // ops is told which one.
    api.put("/v1/c/acc/big", json!({"n": i64::MAX})).ok(201);
    let reply = api.tx(json!({"ops": [{"op": "check", "c": "acc", "id": "a", "version": 99},
                      {"op": "patch", "c": "acc", "id": "big", "update": {"$inc": {"n": 1}}, "version": -1}]}));
    let refused = reply.error(400, "invalid_operator");
    assert!(
        refused["message"].as_str().unwrap().contains("op 1: "),
        "{refused}"
    );
    api.tx(json!({"ops": [{"op": "put", "c": "acc", "id": "d", "doc": [1]}]}))
        .error(400, "invalid_document");
    api.tx(json!({"ops": [{"op": "put", "c": "9acc", "id": "d", "doc": {}}]}))
        .error(400, "invalid_collection");
    assert_eq!(
        api.get("/v1/c/acc/a").json["_version"],
        2,
        "refused transactions write nothing"
    );
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

#[test]
fn idempotency_keys() {
    let server = Server::start();
    let api = Api::new(&server);
    let inc = json!({"$inc": {"n": 1}, "$upsert": true});
    let first = api.patch_h("/v1/c/idem/k", inc.clone(), &[("Idempotency-Key", "key-1")]);
    first.ok(201);
    let again = api.patch_h("/v1/c/idem/k", inc.clone(), &[("Idempotency-Key", "key-1")]);
    assert_eq!(again.status, first.status);
    assert_eq!(
        again.json, first.json,
        "the same key and request answer the first answer again"
    );
    assert_eq!(api.get("/v1/c/idem/k").json["n"], 1, "one increment");
    api.patch_h(
        "/v1/c/idem/k",
        json!({"$inc": {"n": 2}}),
        &[("Idempotency-Key", "key-1")],
    )
    .error(422, "idempotency_key_reused");
    // Without the key it increments again.
    assert_eq!(api.patch("/v1/c/idem/k", inc.clone()).ok(200)["doc"]["n"], 2);
    // Two keys guard nothing (a retry under the one not kept would write
    // again): refused, and nothing written.
    api.patch_h(
        "/v1/c/idem/k",
        inc,
        &[("Idempotency-Key", "key-2"), ("Idempotency-Key", "key-3")],
    )
    .error(400, "invalid_transaction");
    assert_eq!(api.get("/v1/c/idem/k").ok(200)["n"], 2);

    // A create-only PUT retried with its key answers 201 again instead of a conflict.
    let put = api.put_h("/v1/c/idem/p", json!({"a": 1}), &[("Idempotency-Key", "put-1")]);
    put.ok(201);
    assert_eq!(
        api.put_h("/v1/c/idem/p", json!({"a": 1}), &[("Idempotency-Key", "put-1")])
            .json,
        put.json
    );
    api.put_h("/v1/c/idem/p", json!({"a": 2}), &[("Idempotency-Key", "put-1")])
        .error(422, "idempotency_key_reused");

    // POST /v1/tx.
    let tx = json!({"ops": [{"op": "patch", "c": "idem", "id": "t", "update": {"$inc": {"n": 1}, "$upsert": true}}]});
    let first = api.tx_h(tx.clone(), &[("Idempotency-Key", "tx-1")]);
    first.ok(200);
    let again = api.tx_h(tx, &[("Idempotency-Key", "tx-1")]);
    assert_eq!(again.ok(200), &first.json);
    assert_eq!(api.get("/v1/c/idem/t").json["n"], 1);
    let other = json!({"ops": [{"op": "patch", "c": "idem", "id": "t", "update": {"$inc": {"n": 5}}}]});
    api.tx_h(other, &[("Idempotency-Key", "tx-1")])
        .error(422, "idempotency_key_reused");
    assert_eq!(api.get("/v1/c/idem/t").json["n"], 1);
}

// ---------------------------------------------------------------------------
// Change feed
// ---------------------------------------------------------------------------

#[test]
fn change_feed_normal_and_continuation() {
    let server = Server::start();
    let api = Api::new(&server);
    // One commit of three documents, then single writes, then d1 changed again.
    let tx = api.tx(json!({"ops": [
        {"op": "put", "c": "feed", "id": "t1", "doc": {"n": 1}},
        {"op": "put", "c": "feed", "id": "t2", "doc": {"n": 2}},
        {"op": "put", "c": "feed", "id": "t3", "doc": {"n": 3}}
    ]}));
    let tx_seq = tx.ok(200)["seq"].as_u64().unwrap();
    api.put("/v1/c/feed/d1", json!({"n": 1})).ok(201);
    api.put("/v1/c/feed/d2", json!({"n": 2})).ok(201);
    api.put("/v1/c/other/o1", json!({"n": 1})).ok(201);
    let d1_last = api.put("/v1/c/feed/d1", json!({"_version": 1, "n": 10})).ok(200)["seq"]
        .as_u64()
        .unwrap();

    // Everything, in commit order, d1 only at its latest change.
    let all = api.get("/v1/c/feed/_changes");
    let body = all.ok(200);
    assert_eq!(change_ids(body), ["t1", "t2", "t3", "d2", "d1"], "{}", all.text);
    assert_eq!(body["last_seq"], d1_last);
    let seqs: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "commit order: {seqs:?}");
    let first = &body["results"][0];
    assert!(first["rev"].as_str().unwrap().starts_with("1-"));
    assert_eq!(first["deleted"], false);
    assert!(first.get("doc").is_none(), "no doc unless include_docs");
    assert!(first.get("c").is_none(), "a collection's feed does not repeat c");

    // limit=1 still returns the whole first commit (never split).
    let page = api.get("/v1/c/feed/_changes?since=0&limit=1&include_docs=true");
    let body = page.ok(200);
    assert_eq!(change_ids(body), ["t1", "t2", "t3"], "{}", page.text);
    assert_eq!(body["last_seq"], tx_seq);
    assert_eq!(body["results"][1]["doc"]["n"], 2);
    assert_eq!(body["results"][1]["doc"]["_id"], "t2");
    // Continuing from last_seq gives the rest, without gap or duplicate.
    let mut seen = change_ids(body);
    let mut since = tx_seq;
    for _ in 0..10 {
        let next = api.get(&format!("/v1/c/feed/_changes?since={since}&limit=1"));
        let body = next.ok(200);
        if body["results"].as_array().unwrap().is_empty() {
            assert_eq!(body["last_seq"].as_u64().unwrap(), since.max(d1_last));
            break;
        }
        seen.extend(change_ids(body));
        since = body["last_seq"].as_u64().unwrap();
    }
    assert_eq!(seen, ["t1", "t2", "t3", "d2", "d1"]);

    // since=now: nothing, and last_seq where the feed stands.
    let now = api.get("/v1/c/feed/_changes?since=now");
    assert_eq!(now.ok(200)["results"], json!([]));
    assert!(now.json["last_seq"].as_u64().unwrap() >= d1_last);

    // The feed of every collection carries c.
    let everything = api.get("/v1/_changes?include_docs=true");
    let results = everything.ok(200)["results"].as_array().unwrap().clone();
    let pairs: Vec<(String, String)> = results
        .iter()
        .map(|c| {
            (
                c["c"].as_str().unwrap().to_string(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(pairs.contains(&("other".into(), "o1".into())), "{pairs:?}");
    assert!(pairs.contains(&("feed".into(), "d1".into())), "{pairs:?}");
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|c| c["doc"]["_id"] == c["id"]));
    api.get("/v1/_changes?since=0&limit=0")
        .error(400, "invalid_query");
    api.get("/v1/c/feed/_changes?feed=bogus")
        .error(400, "invalid_query");
    api.get("/v1/c/feed/_changes?since=x").error(400, "invalid_query");
    api.get("/v1/c/9feed/_changes").error(400, "invalid_collection");
}

/// A commit wakes the long polls of the collections it writes, those a
/// counter writes in the same commit included, and no others.
#[test]
fn a_long_poll_wakes_for_its_own_collections_commits() {
    let server = Server::start();
    let api = Api::new(&server);
    let counter = json!({"name": "n", "group_by": "g", "mode": "in_commit",
                         "target": {"c": "totals", "field": "n"}});
    api.put("/v1/c/src/_config", json!({ "counters": [counter] }))
        .ok(200);
    let since = api.get("/v1/_changes").ok(200)["last_seq"].as_u64().unwrap();
    let poll = |collection: &str, timeout_ms: u64| {
        let url = format!(
            "{}/v1/c/{collection}/_changes?feed=longpoll&since={since}&timeout={timeout_ms}",
            server.url()
        );
        std::thread::spawn(move || {
            let reply = Api::at("").call(Method::GET, &url, &[], None);
            (reply.status, reply.json, Instant::now())
        })
    };
    let totals = poll("totals", 10_000);
    let quiet = poll("quiet", 1_500);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        api.put(&format!("/v1/c/busy/d{i}"), json!({})).ok(201);
    }
    let written = Instant::now();
    api.put("/v1/c/src/s1", json!({"g": "x"})).ok(201);
    let (status, body, answered) = totals.join().expect("long poll thread");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        change_ids(&body),
        ["x"],
        "the counter's document, from the source's commit"
    );
    assert!(
        answered.duration_since(written) < Duration::from_secs(3),
        "answered when the commit landed, not at the timeout"
    );
    let (status, body, _) = quiet.join().expect("long poll thread");
    assert_eq!((status, &body["results"]), (200, &json!([])), "{body}");
}

#[test]
fn change_feed_longpoll() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put("/v1/c/lp/first", json!({})).ok(201);
    let since = api.get("/v1/c/lp/_changes").ok(200)["last_seq"].as_u64().unwrap();

    // A long poll returns as soon as a write arrives.
    let url = format!(
        "{}/v1/c/lp/_changes?feed=longpoll&since={since}&timeout=10000&include_docs=true",
        server.url()
    );
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = Api::at("").call(Method::GET, &url, &[], None);
        (reply.status, reply.json, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let written = Instant::now();
    api.put("/v1/c/lp/second", json!({"n": 2})).ok(201);
    let (status, body, _) = waiter.join().expect("long poll thread");
    assert_eq!(status, 200, "{body}");
    assert!(
        written.elapsed() < Duration::from_secs(3),
        "the long poll returned when the write arrived"
    );
    assert_eq!(change_ids(&body), ["second"]);
    assert_eq!(body["results"][0]["doc"]["n"], 2);
    let after = body["last_seq"].as_u64().unwrap();
    assert!(after > since);

    // With nothing to say it times out empty, at `since`.
    let started = Instant::now();
    let empty = api.get(&format!(
        "/v1/c/lp/_changes?feed=longpoll&since={after}&timeout=200"
    ));
    let elapsed = started.elapsed();
    assert_eq!(empty.ok(200)["results"], json!([]));
    assert_eq!(empty.json["last_seq"], after);
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );

    // A long poll behind the feed answers at once with what it missed.
    let started = Instant::now();
    let behind = api.get("/v1/_changes?feed=longpoll&since=0&timeout=10000");
    assert_eq!(change_ids(behind.ok(200)), ["first", "second"]);
    assert_eq!(behind.json["results"][0]["c"], "lp");
    assert!(started.elapsed() < Duration::from_secs(3));
    // `limit` bounds a long poll's answer as it does a normal one's, on the
    // CouchDB subset too; a stream has no answer to bound.
    let one = api.get("/v1/_changes?feed=longpoll&since=0&limit=1&timeout=10000");
    assert_eq!(change_ids(one.ok(200)), ["first"]);
    let couch = api.get("/couch/lp/_changes?feed=longpoll&since=0&limit=1&timeout=10000");
    assert_eq!(
        couch.ok(200)["results"].as_array().map(Vec::len),
        Some(1),
        "{}",
        couch.text
    );
    api.get("/v1/c/lp/_changes?feed=sse&limit=1")
        .error(400, "invalid_query");
    api.get("/v1/_changes?feed=longpoll&since=0&limit=0")
        .error(400, "invalid_query");
}

#[test]
fn change_feed_sse() {
    let server = Server::start();
    let api = Api::new(&server);
    let since = api.last_seq();
    // A write before connecting, from `since`, so the stream has something at once.
    api.put("/v1/c/ev/before", json!({"n": 0})).ok(201);

    let client = common::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client
        .get(format!(
            "{}/v1/c/ev/_changes?feed=sse&since={since}&include_docs=true",
            server.url()
        ))
        .send()
        .expect("SSE request");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut lines = BufReader::new(response).lines();
    let mut next_data = || -> Value {
        for line in lines.by_ref() {
            let line = line.expect("SSE line");
            if let Some(data) = line.strip_prefix("data:") {
                return serde_json::from_str(data.trim()).expect("SSE data is JSON");
            }
        }
        panic!("SSE stream ended");
    };
    let before = next_data();
    assert_eq!(before["id"], "before");

    // Writes made after connecting arrive as events, in order.
    api.put("/v1/c/ev/after1", json!({"n": 1})).ok(201);
    api.put("/v1/c/other/ignored", json!({})).ok(201);
    api.delete("/v1/c/ev/before?version=-1").ok(200);
    let after1 = next_data();
    assert_eq!(after1["id"], "after1");
    assert_eq!(after1["doc"]["n"], 1);
    let tombstone = next_data();
    assert_eq!(tombstone["id"], "before");
    assert_eq!(tombstone["deleted"], true);
    assert!(tombstone["seq"].as_u64() > after1["seq"].as_u64());

    // The feed of all collections as SSE carries c.
    let response = client
        .get(format!("{}/v1/_changes?feed=sse&since={since}", server.url()))
        .send()
        .unwrap();
    let mut lines = BufReader::new(response).lines();
    let first = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("data:")
                .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
        })
        .expect("an event");
    assert_eq!(first["c"], "ev");
}

/// The events of an SSE answer as `(id, data)`: `id` is `None` for an event
/// without one. Reads `count` events.
fn sse_events(response: reqwest::blocking::Response, count: usize) -> Vec<(Option<u64>, Value)> {
    let mut lines = BufReader::new(response).lines();
    let mut events = Vec::new();
    let (mut id, mut data) = (None, None);
    while events.len() < count {
        let line = lines.next().expect("the stream ended").expect("SSE line");
        if let Some(text) = line.strip_prefix("id:") {
            id = Some(text.trim().parse::<u64>().expect("a numeric id"));
        } else if let Some(text) = line.strip_prefix("data:") {
            data = Some(serde_json::from_str::<Value>(text.trim()).expect("SSE data is JSON"));
        } else if line.is_empty() {
            if let Some(data) = data.take() {
                events.push((id.take(), data));
            }
            id = None;
        }
    }
    events
}

/// The RxDB pull stream shows documents as `_pull` does: the id under the
/// client's primary key, and Truce's metadata only when `meta=true` asks.
#[test]
fn pull_stream_shows_documents_as_pull_does() {
    let server = Server::start();
    let api = Api::new(&server);
    let client = common::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let open = |query: &str| {
        let response = client
            .get(format!(
                "{}/v1/c/rs/_pull/stream?primaryKey=key{query}",
                server.url()
            ))
            .send()
            .expect("stream request");
        assert_eq!(response.status().as_u16(), 200);
        response
    };
    // Both are subscribed once their headers are in.
    let (plain, with_meta) = (open(""), open("&meta=true"));
    let written = api.put("/v1/c/rs/d1", json!({"n": 1})).ok(201).clone();
    let event = |response| sse_events(response, 1).remove(0).1["documents"][0].clone();
    assert_eq!(event(plain), json!({"key": "d1", "n": 1, "_deleted": false}));
    let shown = event(with_meta);
    assert_eq!(
        (&shown["key"], &shown["_rev"], &shown["_version"]),
        (&json!("d1"), &written["rev"], &json!(1)),
        "{shown}"
    );
    let pulled = api.get("/v1/c/rs/_pull?primaryKey=key&meta=true").ok(200).clone();
    assert_eq!(pulled["documents"][0], shown);
}

/// A browser's `EventSource` reconnects with the same URL and `Last-Event-ID`:
/// the stream must go on after that event, not from the URL's `since` (with
/// `since=now` everything committed meanwhile would be lost), and the id must
/// never name a commit whose changes were not all sent.
#[test]
fn sse_resumes_after_the_last_event_id() {
    let server = Server::start();
    let api = Api::new(&server);
    let since = api.last_seq();
    let one = api.put("/v1/c/rs/one", json!({})).ok(201)["seq"]
        .as_u64()
        .expect("seq");
    let pair = api.tx(json!({"ops": [
        {"op": "put", "c": "rs", "id": "a", "doc": {}},
        {"op": "put", "c": "rs", "id": "b", "doc": {}}
    ]}));
    let pair_seq = pair.ok(200)["seq"].as_u64().expect("seq");
    api.put("/v1/c/rs/two", json!({})).ok(201);

    let client = common::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/v1/c/rs/_changes?feed=sse&since={since}", server.url());
    let events = sse_events(client.get(&url).send().expect("SSE request"), 4);
    let ids: Vec<(Option<u64>, &str)> = events
        .iter()
        .map(|(id, data)| (*id, data["id"].as_str().unwrap()))
        .collect();
    // The transaction's two changes share its seq; only the second carries it.
    assert_eq!(ids[1], (None, "a"), "{events:?}");
    assert_eq!(ids[2], (Some(pair_seq), "b"), "{events:?}");
    assert_eq!(ids[0], (Some(one), "one"));
    assert_eq!(ids[3].1, "two");

    // Reconnecting after the first event, with a URL that says `now`: the
    // transaction and the later write come, nothing before them.
    let resumed = client
        .get(format!("{}/v1/c/rs/_changes?feed=sse&since=now", server.url()))
        .header("Last-Event-ID", one.to_string())
        .send()
        .expect("SSE request");
    assert_eq!(resumed.status().as_u16(), 200);
    let again: Vec<String> = sse_events(resumed, 3)
        .iter()
        .map(|(_, data)| data["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, ["a", "b", "two"]);
    // The feed of every collection resumes the same way.
    let all = client
        .get(format!("{}/v1/_changes?feed=sse&since=now", server.url()))
        .header("Last-Event-ID", pair_seq.to_string())
        .send()
        .expect("SSE request");
    assert_eq!(sse_events(all, 1)[0].1["id"], "two");

    // An id this feed cannot have sent is refused, not read as `since=0`; the
    // other feeds have no events and ignore the header.
    api.get_h("/v1/c/rs/_changes?feed=sse", &[("Last-Event-ID", "abc")])
        .error(400, "invalid_query");
    api.get_h("/v1/_changes?feed=sse", &[("Last-Event-ID", "-1")])
        .error(400, "invalid_query");
    let page = api.get_h("/v1/c/rs/_changes?since=0", &[("Last-Event-ID", "abc")]);
    assert_eq!(change_ids(page.ok(200)), ["one", "a", "b", "two"]);
    // A valid id does not hide a malformed `since` in the URL.
    api.get_h(
        "/v1/c/rs/_changes?feed=sse&since=yesterday",
        &[("Last-Event-ID", &one.to_string())],
    )
    .error(400, "invalid_query");
}

/// A feed position the server never gave out (past its last commit: its data
/// directory was replaced by an older copy) is refused on every feed, instead
/// of being echoed back as the next position, which would make the reader
/// skip every commit up to it.
#[test]
fn a_feed_position_past_the_last_commit_is_refused() {
    let server = Server::start();
    let api = Api::new(&server);
    api.put("/v1/c/ahead/a", json!({})).ok(201);
    let head = api.last_seq();
    let past = head + 1;
    for feed in ["normal", "longpoll", "sse"] {
        api.get(&format!("/v1/c/ahead/_changes?feed={feed}&since={past}"))
            .error(400, "invalid_query");
        api.get(&format!("/v1/_changes?feed={feed}&since={past}"))
            .error(400, "invalid_query");
        // Where a reader's history began, likewise, read from 0 or not.
        for since in [0, head] {
            api.get(&format!(
                "/v1/c/ahead/_changes?feed={feed}&since={since}&from={past}"
            ))
            .error(400, "invalid_query");
        }
    }
    api.get_h(
        "/v1/c/ahead/_changes?feed=sse&since=0",
        &[("Last-Event-ID", &past.to_string())],
    )
    .error(400, "invalid_query");
    // Sent twice, the first was taken: either may be the reader's position.
    // (Were it taken again, the stream would open and the client time out.)
    let twice = api.get_h(
        "/v1/c/ahead/_changes?feed=sse&since=0",
        &[("Last-Event-ID", "0"), ("Last-Event-ID", "1")],
    );
    let message = twice.error(400, "invalid_query")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("twice"), "{message}");
    let checkpoint = format!("%7B%22seq%22%3A{past}%2C%22id%22%3A%22%22%7D");
    let pull = api.get(&format!("/v1/c/ahead/_pull?checkpoint={checkpoint}"));
    assert!(
        pull.error(400, "invalid_query")["message"]
            .as_str()
            .unwrap()
            .contains(&format!("({head})"))
    );
    for feed in ["normal", "longpoll"] {
        let couch = api.get(&format!("/couch/ahead/_changes?feed={feed}&since={past}"));
        assert_eq!(
            (couch.status, &couch.json["error"]),
            (400, &json!("bad_request")),
            "{}",
            couch.text
        );
    }
    // The head itself is a position the server gave out.
    let at_head = api.get(&format!("/v1/c/ahead/_changes?since={head}"));
    assert_eq!(at_head.ok(200)["last_seq"], head);
    // A checkpoint comes back as read, with nothing else the client put in
    // it (an empty page answers the one given).
    api.put("/v1/c/echo/a", json!({})).ok(201);
    let first = api.get("/v1/c/echo/_pull").ok(200)["checkpoint"].clone();
    let mut junk = first.clone();
    junk["junk"] = json!({"big": "x".repeat(100)});
    let encoded: String = junk.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
    let again = api.get(&format!("/v1/c/echo/_pull?checkpoint={encoded}"));
    assert_eq!(again.ok(200)["documents"], json!([]));
    assert_eq!(again.ok(200)["checkpoint"], first);
}

/// A replica's checkpoint, and a feed page, name the database's history
/// (`epoch`). A database restored from a backup goes on from the backup's
/// last commit and hands out again sequence numbers its replicas passed: a
/// pull from a checkpoint of the history before (or a `_changes` from its
/// `since`) skipped every change up to it, for good. It is refused 410
/// `history_purged`, which a replica answers by pulling everything again; a
/// position without an epoch is taken by its position alone, as before.
#[test]
fn a_checkpoint_from_before_a_restore_is_refused_not_skipped() {
    let server = Server::start();
    let api = Api::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let encoded = |checkpoint: &Value| -> String {
        checkpoint
            .to_string()
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect()
    };
    api.put("/v1/c/items/a", json!({})).ok(201);
    let backup = dir.path().join("backup");
    let started = api.post("/v1/_backup", json!({ "path": backup }));
    assert_eq!(started.status, 202, "{}", started.text);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get("/v1/_backup").ok(200)["state"] == "running" {
        assert!(Instant::now() < deadline, "the backup is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api.get("/v1/_backup").ok(200)["state"], "done");
    // The replica goes on with the original, past the backup's last commit.
    for id in ["b", "c", "d"] {
        api.put(&format!("/v1/c/items/{id}"), json!({})).ok(201);
    }
    let pulled = api.get("/v1/c/items/_pull").ok(200).clone();
    let checkpoint = pulled["checkpoint"].clone();
    let epoch = checkpoint["epoch"]
        .as_u64()
        .expect("a checkpoint names its history");
    let from = |api: &Api, checkpoint: &Value| {
        api.get(&format!("/v1/c/items/_pull?checkpoint={}", encoded(checkpoint)))
    };
    assert_eq!(from(&api, &checkpoint).ok(200)["documents"], json!([]));
    let feed = api.get("/v1/c/items/_changes").ok(200).clone();
    assert_eq!(
        feed["epoch"].as_u64(),
        Some(epoch),
        "a feed page names the same history"
    );
    let since = format!("/v1/c/items/_changes?since={}&epoch={epoch}", feed["last_seq"]);
    api.get(&since).ok(200);

    // Restored from the backup, the database writes three documents again,
    // under the sequence numbers the replica already passed.
    drop(api);
    drop(server);
    let restored = Server::start_in(&backup, &[]);
    let api = Api::new(&restored);
    for id in ["x", "y", "z"] {
        api.put(&format!("/v1/c/items/{id}"), json!({})).ok(201);
    }
    let refused = from(&api, &checkpoint);
    let message = refused.error(410, "history_purged")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("another history"), "{message}");
    api.get(&since).error(410, "history_purged");
    let anew = api.get("/v1/c/items/_pull").ok(200).clone();
    assert_ne!(
        anew["checkpoint"]["epoch"].as_u64(),
        Some(epoch),
        "a backup's history is its own"
    );
    let ids: Vec<_> = anew["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, ["a", "x", "y", "z"]);
    // Without an epoch, a checkpoint is taken by its position, as before.
    let mut old = checkpoint.clone();
    old.as_object_mut().unwrap().remove("epoch");
    from(&api, &old).ok(200);
}

// ---------------------------------------------------------------------------
// Errors: every code of docs/http.md's table
// ---------------------------------------------------------------------------

/// The codes of docs/http.md's "Error codes and statuses" table, with their status.
fn documented_error_codes() -> BTreeMap<String, u16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/http.md");
    let text = std::fs::read_to_string(&path).expect("docs/http.md");
    let section = text
        .split("## Error codes and statuses")
        .nth(1)
        .expect("the error table section");
    let mut codes = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(status) = cells.get(1).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        for (i, part) in cells[2].split('`').enumerate() {
            // Codes are the backquoted snake_case words (not `Retry-After`).
            if i % 2 == 1 && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                codes.insert(part.to_string(), status);
            }
        }
    }
    assert!(codes.len() >= 20, "parsed the table: {codes:?}");
    codes
}

/// Codes that cannot be produced from outside without breaking the disk: a
/// storage failure (`unavailable`, `storage_error`), a damaged file (`corrupt`),
/// or a server bug (`internal`). The engine's own tests cover them.
const NOT_PRODUCIBLE_FROM_OUTSIDE: [&str; 4] = ["unavailable", "storage_error", "corrupt", "internal"];

/// Codes another test produces, because they take long or need setup: 408
/// `request_timeout` waits 10 s for a stalled body
/// (`bad_input.rs`, `a_stalled_body_is_the_clients_timeout`).
/// The backup's two, `backups_run_online_and_open_as_a_data_directory`.
/// And 507 `insufficient_storage`, `writes_that_add_data_are_refused_while_the_disk_is_short`
/// (a server of its own with a reserve no disk has free). 410 `history_purged`
/// waits for a tombstone purge (`counters.rs`,
/// `old_tombstones_are_purged_and_only_readers_that_could_miss_them_are_refused`).
const PRODUCED_ELSEWHERE: [(&str, u16); 6] = [
    ("request_timeout", 408),
    // A raw request in `tests/bad_input.rs` (`Transfer-Encoding: gzip, chunked`).
    ("not_implemented", 501),
    ("invalid_backup", 400),
    ("backup_running", 409),
    ("insufficient_storage", 507),
    ("history_purged", 410),
];

/// With a reserve larger than any disk's free space (`--min-free-disk-mib`
/// at its bound, 1 PiB), every write that adds data is refused with 507
/// `insufficient_storage`, through each route that writes; reads and deletes
/// go on, and `/healthz` and `/metrics` say so. The engine's tests fill and
/// free a disk (`errors.rs`); this one checks the real filesystem's figure
/// reaches the server's answers.
#[test]
fn writes_that_add_data_are_refused_while_the_disk_is_short() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let api = Api::new(&server);
    api.put("/v1/c/d/kept", json!({"n": 1})).ok(201);
    api.put("/v1/c/d/gone", json!({"n": 1})).ok(201);
    let health = api.get("/healthz").ok(200).clone();
    assert_eq!(health["status"], "ok", "{health}");
    // 256 MiB, and room for compactions as large as the database (here
    // mostly its first journal file, 64 MiB).
    let reserve = health["disk"]["reserve_bytes"].as_u64().unwrap();
    assert!((256 << 20..(256 + 128) << 20).contains(&reserve), "{health}");
    assert_eq!(health["disk"]["refusing_writes"], false, "{health}");
    assert!(health["disk"]["free_bytes"].as_u64().unwrap() > 0, "{health}");
    server.terminate();

    let server = Server::start_in(data.path(), &["--min-free-disk-mib", "1073741824"]);
    let api = Api::new(&server);
    let refused = |reply: Reply| {
        let body = reply.error(507, "insufficient_storage");
        assert!(body["message"].as_str().unwrap().contains("reserve"), "{body}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.text);
    };
    refused(api.put("/v1/c/d/new", json!({"n": 1})));
    refused(api.patch("/v1/c/d/kept", json!({"$inc": {"n": 1}})));
    refused(api.tx(json!({"ops": [{"op": "put", "c": "d", "id": "new", "doc": {}}]})));
    refused(api.post(
        "/v1/c/d/_push?primaryKey=id",
        json!([{"newDocumentState": {"id": "new", "n": 1}}]),
    ));
    refused(api.put("/v1/c/d/_indexes/by_n", json!({"fields": ["n"]})));
    let couch = api.put("/couch/d/new", json!({"n": 1}));
    assert_eq!(
        (couch.status, &couch.json["error"]),
        (507, &json!("insufficient_storage")),
        "CouchDB's shape: {}",
        couch.text
    );
    assert_eq!(couch.header("retry-after"), Some("1"), "{}", couch.text);
    assert_eq!(api.get("/v1/c/d/kept").ok(200)["n"], 1, "reads go on");
    api.get("/v1/c/d/new").error(404, "not_found");
    api.delete("/v1/c/d/gone?version=-1").ok(200);
    api.get("/v1/c/d/gone").error(404, "not_found");
    let health = api.get("/healthz").ok(200).clone();
    assert_eq!(health["status"], "insufficient_storage", "{health}");
    assert_eq!(health["disk"]["refusing_writes"], true, "{health}");
    assert!(
        health["disk"]["reserve_bytes"].as_u64().unwrap() >= 1u64 << 50,
        "{health}"
    );
    let free = health["disk"]["free_bytes"].as_u64().unwrap();
    let metrics = api.get("/metrics").text;
    let gauge = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} in {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    assert_eq!(gauge("truce_disk_refusing_writes"), 1.0);
    assert_eq!(gauge("truce_storage_failed"), 0.0, "refusing is not failing");
    assert!(gauge("truce_disk_reserve_bytes") >= (1u64 << 50) as f64);
    assert!(free > 0 && free < 1 << 50, "{health}");
    // Both looked at the same filesystem, at most a second apart.
    let seen = gauge("truce_disk_free_bytes");
    assert!(
        (seen - free as f64).abs() < (1u64 << 30) as f64,
        "{seen} and {free}"
    );
}

/// Request metrics label a method HTTP does not define `other`: labelled by
/// name, each made-up method any client (no key needed) sent added a label
/// set to `/metrics` for good.
#[test]
fn made_up_methods_share_one_metrics_label() {
    let server = Server::start();
    let api = Api::new(&server);
    for i in 0..20 {
        let method = Method::from_bytes(format!("M{i:04}").as_bytes()).unwrap();
        let answer = api.call(method, "/healthz", &[], None);
        assert_eq!(answer.status, 405, "{}", answer.text);
    }
    let metrics = api.get("/metrics").text;
    assert!(!metrics.contains("M0001"), "a label per made-up method");
    let other = metrics
        .lines()
        .find(|l| {
            l.starts_with("truce_http_request_duration_seconds_count") && l.contains(r#"method="other""#)
        })
        .unwrap_or_else(|| panic!("no method=\"other\" series:\n{metrics}"));
    assert!(other.ends_with(" 20"), "{other}");
}

/// A fault that fails every request does not bury the log: 5xx answers
/// are logged at most once a second, each line counting those left out (it
/// was one line per answer, thousands a second with a failed storage).
#[test]
fn server_errors_are_logged_once_a_second_with_a_count() {
    let server = Server::start_with(&["--min-free-disk-mib", "1073741824"]);
    let api = Api::new(&server);
    let refused = |n: usize| {
        for i in 0..n {
            api.put(&format!("/v1/c/d/{i}"), json!({}))
                .error(507, "insufficient_storage");
        }
    };
    let started = Instant::now();
    refused(200);
    // A second later the next one is logged, with the count of those left out.
    std::thread::sleep(Duration::from_millis(1100));
    refused(1);
    let took = started.elapsed().as_secs();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (log, lines, counted) = loop {
        let log = server.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("status=507"))
            .map(str::to_string)
            .collect();
        let counted: u64 = lines
            .iter()
            .map(|l| {
                let n = l.split("left_out=").nth(1).and_then(|r| r.split(' ').next());
                n.and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{l}"))
            })
            .sum::<u64>()
            + lines.len() as u64;
        // The log's reader is a thread of the test: wait for it.
        if counted >= 201 || Instant::now() > deadline {
            break (log, lines, counted);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counted, 201, "every answer logged or counted:\n{log}");
    // One line a second at most (and the first), not one per answer.
    assert!(
        lines.len() >= 2 && lines.len() as u64 <= took + 2,
        "{} lines of 201 answers in {took} s:\n{log}",
        lines.len()
    );
    assert!(lines[0].contains("left_out=0"), "{log}");
}

/// Answers that must be whole — a pull's page, `/couch` `_changes` and
/// `_all_docs` (their clients take a short page for the end) — are refused
/// with 413 once their documents pass `WHOLE_PAGE_BYTES_MAX`, instead of
/// being built (a pull of 10,000 documents of 1 MiB was 10 GB); a smaller
/// batch is served.
#[test]
fn whole_pages_past_their_bound_are_refused_not_built() {
    let server = Server::start();
    let api = Api::new(&server);
    let blob = "x".repeat(1_000_000);
    let count = truce::limits::WHOLE_PAGE_BYTES_MAX / blob.len() + 2;
    for i in 0..count {
        api.put(
            &format!("/v1/c/big/d{i:03}"),
            json!({"id": format!("d{i:03}"), "blob": blob}),
        )
        .ok(201);
    }
    let limit = api.get("/v1/c/big/_pull?primaryKey=id&limit=10000");
    assert!(
        limit.error(413, "limit_exceeded")["message"]
            .as_str()
            .unwrap()
            .contains("WHOLE_PAGE_BYTES_MAX"),
        "{}",
        limit.text
    );
    let fits = api.get("/v1/c/big/_pull?primaryKey=id&limit=50");
    assert_eq!(fits.ok(200)["documents"].as_array().unwrap().len(), 50);

    let couch_refused = |reply: Reply| {
        assert_eq!(
            (reply.status, &reply.json["error"]),
            (413, &json!("too_large")),
            "CouchDB's shape: {:.300}",
            reply.text
        );
    };
    couch_refused(api.get("/couch/big/_changes?include_docs=true&limit=10000"));
    couch_refused(api.get("/couch/big/_all_docs?include_docs=true&limit=1000"));
    // One document named again and again.
    let keys: Vec<String> = vec!["d000".into(); count];
    couch_refused(api.post("/couch/big/_all_docs?include_docs=true", json!({"keys": keys})));
    let rows = api.get("/couch/big/_all_docs?include_docs=true&limit=50");
    let rows = rows.ok(200);
    assert_eq!(rows["rows"].as_array().unwrap().len(), 50);
    assert_eq!(rows["total_rows"], 50);
    assert_eq!(rows["rows"][49]["doc"]["_id"], "d049");
    // Without documents, the rows are small and all there.
    let ids = api.post("/couch/big/_all_docs", json!({"keys": keys}));
    assert_eq!(ids.ok(200)["rows"].as_array().unwrap().len(), count);
    let changes = api.get("/couch/big/_changes?limit=10000");
    assert_eq!(changes.ok(200)["results"].as_array().unwrap().len(), count);
}

#[test]
fn every_documented_error_code_is_produced() {
    let documented = documented_error_codes();
    let mut seen: BTreeMap<String, u16> = BTreeMap::new();
    let mut record = |reply: &Reply| {
        let code = reply.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", reply.text));
        assert!(reply.json["message"].is_string(), "{}", reply.text);
        seen.insert(code.to_string(), reply.status);
    };

    let server = Server::start();
    let api = Api::new(&server);
    api.put("/v1/c/e/doc", json!({"s": "text"})).ok(201);

    // 400s.
    record(&api.call(Method::PUT, "/v1/c/e/x", &[], Some("{not json".into())));
    record(&api.put("/v1/c/e/x", json!([1, 2])));
    record(&api.put("/v1/c/e/_secret", json!({})));
    record(&api.put("/v1/c/9abc/x", json!({})));
    record(&api.put("/v1/c/e/x", json!({"_foo": 1})));
    record(&api.patch("/v1/c/e/doc", json!({"$inc": {"s": 1}})));
    record(&api.patch(
        "/v1/c/e/doc",
        json!({"$set": {"a": 1}, "$if": {"a": {"$bogus": 1}}}),
    ));
    record(&api.put_h("/v1/c/e/doc", json!({"_version": 1}), &[("If-Match", "*")]));
    record(&api.tx(
        json!({"ops": [{"op": "check", "c": "e", "id": "doc"}, {"op": "check", "c": "e", "id": "doc"}]}),
    ));
    record(&api.put("/v1/c/e/_indexes/bad", json!({"fields": 1})));
    record(&api.put("/v1/c/e/_config", json!({"ttl": {"field": "t", "seconds": 0}})));
    record(&api.get("/v1/c/e?order=sideways"));
    record(&api.get_h("/v1/c/e/doc", &[("Host", "localhost"), ("Host", "localhost")]));
    record(&api.put_h("/v1/c/e/doc", json!({}), &[("Content-Encoding", "gzip")]));
    record(&api.get_h("/v1/c/e/doc", &[("If-Match", "\"1-stale\"")]));
    // 404, 405, 409, 412, 422, 428.
    record(&api.get("/no/such/route"));
    let wrong_method = api.call(Method::POST, "/v1/c/e/doc", &[], Some("{}".into()));
    assert_eq!(
        wrong_method.header("allow"),
        Some("GET,HEAD,PUT,PATCH,DELETE"),
        "405 names the methods the route has"
    );
    record(&wrong_method);
    record(&api.put("/v1/c/e/doc", json!({})));
    api.put("/v1/c/e/_indexes/u", json!({"fields": ["s"], "unique": true}));
    api.wait_index_ready("e", "u");
    record(&api.put("/v1/c/e/other", json!({"s": "text"})));
    api.put_h("/v1/c/e/k", json!({}), &[("Idempotency-Key", "k")])
        .ok(201);
    record(&api.put_h("/v1/c/e/k", json!({"a": 1}), &[("Idempotency-Key", "k")]));
    record(&api.delete("/v1/c/e/doc"));
    // 413 limit_exceeded: more than 1,000 ops in a transaction.
    let ops: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "put", "c": "e", "id": format!("t{i}"), "doc": {}}))
        .collect();
    record(&api.tx(json!({ "ops": ops })));

    // 503 index_building: a query of an index still backfilling (thousands of
    // documents, 256 per backfill commit). Tried with a few new indexes in case
    // one is built before the query arrives.
    for chunk in 0..8 {
        let ops: Vec<Value> = (0..1000)
            .map(|i| json!({"op": "put", "c": "big", "id": format!("b{chunk}-{i}"), "doc": {"n": i, "c": chunk}}))
            .collect();
        api.tx(json!({ "ops": ops })).ok(200);
    }
    for attempt in 0..5 {
        let name = format!("by_n_{attempt}");
        let declared = api.put(
            &format!("/v1/c/big/_indexes/{name}"),
            json!({"fields": ["n", "c"]}),
        );
        if declared.status != 202 {
            continue;
        }
        let building = api.get(&format!("/v1/c/big?index={name}&eq=%5B1%5D"));
        if building.status == 503 {
            assert_eq!(
                building.header("retry-after"),
                Some("1"),
                "index_building carries Retry-After"
            );
            record(&building);
            break;
        }
    }

    // 503 index_dropping: the name of a dropped index whose 8,000 entries are
    // still being deleted (eight commits of 1,024). Tried a few times in case
    // the deletion is done before the declaration arrives.
    api.put("/v1/c/big/_indexes/gone", json!({"fields": ["n"]}));
    api.wait_index_ready("big", "gone");
    for _ in 0..5 {
        api.delete("/v1/c/big/_indexes/gone").ok(202);
        let again = api.put("/v1/c/big/_indexes/gone", json!({"fields": ["n"]}));
        if again.status == 503 {
            assert_eq!(again.header("retry-after"), Some("1"), "{}", again.text);
            record(&again);
            break;
        }
        api.wait_index_ready("big", "gone");
    }

    // 503 timeout: the same data served with a 1 ms request timeout; reading a
    // thousand documents takes longer than that.
    let mut server = server;
    server.kill9();
    let hurried = Server::start_in(&server.data, &["--request-timeout-ms", "1"]);
    // The timer's granularity is about a millisecond, so an answer can still
    // win a race now and then: try a few times.
    let hurried_api = Api::new(&hurried);
    let slow = (0..20)
        .map(|_| hurried_api.get("/v1/c/big?limit=1000"))
        .find(|reply| reply.status == 503)
        .expect("a thousand documents within 1 ms twenty times in a row");
    record(&slow);
    drop(hurried);

    // A server with keys, a small body limit, and one request at a time.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = format!("Bearer {}", create_key(&data, "admin"));
    let reader = format!("Bearer {}", create_key(&data, "read"));
    let strict = Server::start_in(
        &data,
        &["--max-body-bytes", "1000", "--max-concurrent-requests", "1"],
    );
    let api = Api::new(&strict);
    record(&api.get("/v1/c/e/doc"));
    record(&api.put_h("/v1/c/e/doc", json!({}), &[("Authorization", &reader)]));
    let big = json!({"pad": "x".repeat(2000)});
    record(&api.put_h("/v1/c/e/doc", big, &[("Authorization", &admin)]));
    // Hold the only long-poll slot with a long poll, then ask for another.
    let url = format!(
        "{}/v1/c/e/_changes?feed=longpoll&since=now&timeout=3000",
        strict.url()
    );
    let admin_for_poll = admin.clone();
    let holder = std::thread::spawn(move || {
        Api::at("").call(Method::GET, &url, &[("Authorization", &admin_for_poll)], None)
    });
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut overloaded = None;
    while overloaded.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let reply = api.get_h(
            "/v1/c/e/_changes?feed=longpoll&since=now&timeout=100",
            &[("Authorization", &admin)],
        );
        if reply.status == 429 {
            overloaded = Some(reply);
        }
    }
    let overloaded = overloaded.expect("429 while the long poll holds the only slot");
    assert_eq!(
        overloaded.header("retry-after"),
        Some("1"),
        "429 carries Retry-After"
    );
    record(&overloaded);
    assert_eq!(holder.join().expect("long poll").status, 200);
    assert_eq!(api.get("/healthz").status, 200, "the slot is free again");

    // Every documented code (but those only a broken disk produces) was seen,
    // with its documented status; nothing undocumented was.
    for (code, status) in &documented {
        if NOT_PRODUCIBLE_FROM_OUTSIDE.contains(&code.as_str())
            || PRODUCED_ELSEWHERE.contains(&(code.as_str(), *status))
        {
            continue;
        }
        assert_eq!(
            seen.get(code),
            Some(status),
            "{code} ({status}) was not produced; seen: {seen:?}"
        );
    }
    for (code, status) in &seen {
        assert_eq!(
            documented.get(code),
            Some(status),
            "{code} ({status}) is not in docs/http.md's table"
        );
    }
}

#[test]
fn request_errors_in_context() {
    let server = Server::start();
    let api = Api::new(&server);
    api.call(Method::PUT, "/v1/c/e/x", &[], Some("{not json".into()))
        .error(400, "invalid_json");
    api.call(Method::PUT, "/v1/c/e/x", &[], Some(String::new()))
        .error(400, "invalid_json");
    api.call(Method::POST, "/v1/tx", &[], Some("[".into()))
        .error(400, "invalid_json");
    api.call(Method::PATCH, "/v1/c/e/x", &[], Some("nope".into()))
        .error(400, "invalid_json");
    // A key named twice: serde_json alone would keep the last one, so a create
    // (`_version: 0`) would become a write guarded by version 5.
    let twice = api.call(
        Method::PUT,
        "/v1/c/e/x",
        &[],
        Some(r#"{"_version": 0, "_version": 5}"#.into()),
    );
    let message = twice.error(400, "invalid_json")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("\"_version\" appears twice"), "{}", twice.text);
    api.call(
        Method::PATCH,
        "/v1/c/e/x",
        &[],
        Some(r#"{"$inc": {"n": 1, "n": 2}, "$upsert": true}"#.into()),
    )
    .error(400, "invalid_json");
    api.call(
        Method::POST,
        "/v1/tx",
        &[],
        Some(
            r#"{"ops": [{"op": "put", "c": "e", "id": "t", "doc": {}, "version": 0, "version": 3}]}"#.into(),
        ),
    )
    .error(400, "invalid_json");
    api.get("/v1/c/e?eq=%7B%22a%22%3A1%2C%22a%22%3A2%7D")
        .error(400, "invalid_query");
    api.get("/v1/c/e/x").error(404, "not_found");
    api.put("/v1/c/e/x", json!([1, 2])).error(400, "invalid_document");
    api.put("/v1/c/e/x", json!("text")).error(400, "invalid_document");
    let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    api.call(Method::PUT, "/v1/c/e/deep", &[], Some(deep))
        .error(400, "invalid_document");
    api.put(&format!("/v1/c/e/{}", "i".repeat(600)), json!({}))
        .error(400, "invalid_id");
    api.put("/v1/c/e/a%01b", json!({})).error(400, "invalid_id");
    api.put(&format!("/v1/c/{}/x", "c".repeat(65)), json!({}))
        .error(400, "invalid_collection");
    api.put("/v1/c/e/x", json!({"_id": "x"}))
        .error(400, "reserved_field");
    api.put("/v1/c/e/x", json!({"_deleted": true}))
        .error(400, "reserved_field");
    api.put_h("/v1/c/e/x", json!({}), &[("If-Match", "\"garbage\"")])
        .error(400, "invalid_precondition");
    api.put_h("/v1/c/e/x", json!({}), &[("If-None-Match", "\"1-abc\"")])
        .error(400, "invalid_precondition");
    let long_key = "k".repeat(300);
    let refused = api.put_h("/v1/c/e/x", json!({}), &[("Idempotency-Key", &long_key)]);
    assert_eq!(
        refused.status, 400,
        "Idempotency-Key is 1..255 characters: {}",
        refused.text
    );
    api.get("/v1/c/e/x").error(404, "not_found");
    api.put("/v1/c/e/_x", json!({})).error(400, "invalid_id");
    api.get("/v1/c/e/_x").error(400, "invalid_id");
    api.delete("/v1/c/e/_x?version=-1").error(400, "invalid_id");
    api.put("/v1/c/9abc/x", json!({}))
        .error(400, "invalid_collection");
    api.get("/v1/c/9abc/x").error(400, "invalid_collection");
    api.get("/v1/c/9abc").error(400, "invalid_collection");
    api.put("/v1/c/e/x", json!({"_foo": 1}))
        .error(400, "reserved_field");
    api.put("/v1/c/e/x", json!({"a": 1})).ok(201);
    api.patch("/v1/c/e/x", json!({"$set": {"_foo": 1}}))
        .error(400, "reserved_field");
    api.patch(
        "/v1/c/e/x",
        json!({"$set": {"a": 2}, "$if": {"a": {"$bogus": 1}}}),
    )
    .error(400, "invalid_filter");
    api.patch("/v1/c/e/x", json!({"$set": {"a": 2}, "$if": {"$or": 3}}))
        .error(400, "invalid_filter");
    let not_a_filter = api.patch("/v1/c/e/x", json!({"$set": {"a": 2}, "$if": 3}));
    assert_eq!(not_a_filter.status, 400, "{}", not_a_filter.text);
    assert_eq!(api.get("/v1/c/e/x").json["a"], 1);

    // Unknown routes: 404 with a JSON error body, marked apart from a
    // missing document; a method a route does not have: 405.
    let unknown = api.get("/nope");
    unknown.error(404, "not_found");
    assert_eq!(unknown.json["no_route"], true, "{}", unknown.text);
    let missing = api.get("/v1/c/e/no-such-doc");
    missing.error(404, "not_found");
    assert_eq!(missing.json.get("no_route"), None, "{}", missing.text);
    assert!(
        unknown
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    api.call(Method::POST, "/v1/c/e/x", &[], Some("{}".into()))
        .error(405, "method_not_allowed");
    api.get("/v2/c").error(404, "not_found");

    // A transaction of more than 1,000 ops.
    let ops: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "check", "c": "e", "id": format!("c{i}"), "version": -1}))
        .collect();
    api.tx(json!({ "ops": ops })).error(413, "limit_exceeded");
    // A document over 1 MiB.
    api.put("/v1/c/e/huge", json!({"pad": "x".repeat(1_100_000)}))
        .error(413, "payload_too_large");
}

#[test]
fn body_limit_and_overload() {
    let server = Server::start_with(&["--max-body-bytes", "1000", "--max-concurrent-requests", "1"]);
    let api = Api::new(&server);
    api.put("/v1/c/small/a", json!({"pad": "x".repeat(900)})).ok(201);
    api.put("/v1/c/small/b", json!({"pad": "x".repeat(2000)}))
        .error(413, "payload_too_large");
    api.tx(json!({"ops": [{"op": "put", "c": "small", "id": "c", "doc": {"pad": "x".repeat(2000)}}]}))
        .error(413, "payload_too_large");
    api.get("/v1/c/small/b").error(404, "not_found");

    // A long poll holds a slot of its own: it does not starve requests (nor
    // /healthz, which takes none); a second long poll is refused.
    // (On /couch, and percent-encoded on /v1: long polls all the same.)
    let url = format!(
        "{}/couch/small/_changes?feed=longpoll&since=now&timeout=10000",
        server.url()
    );
    let holder = std::thread::spawn(move || Api::at("").call(Method::GET, &url, &[], None));
    let poll = format!(
        "{}/v1/c/small/_changes?fe%65d=long%70oll&since=now&timeout=100",
        server.url()
    );
    let second = wait_for_refusal(|| Api::at("").call(Method::GET, &poll, &[], None));
    second.error(429, "overloaded");
    // (The write ends the long poll, as a change of its collection: it still
    // holds its slot as the write comes.)
    assert!(
        !holder.is_finished(),
        "the long poll ended before the write was tried"
    );
    api.put("/v1/c/small/y", json!({"_version": -1})).ok_any();
    assert_eq!(api.get("/healthz").status, 200);
    assert_eq!(holder.join().expect("long poll").status, 200);

    // A request whose body is still coming holds the only request slot:
    // another is refused at once, /healthz is answered.
    let mut slow = std::net::TcpStream::connect(server.addr).expect("connect");
    let body = json!({"pad": "x".repeat(500)}).to_string();
    let head = format!(
        "PUT /v1/c/small/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut slow, format!("{head}{}", &body[..10]).as_bytes()).expect("send");
    // Each attempt its own content: one served before the slot was taken
    // may have written.
    let attempts = AtomicUsize::new(0);
    let refused = wait_for_refusal(|| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst);
        api.put("/v1/c/small/z", json!({"_version": -1, "attempt": attempt}))
    });
    let last = attempts.load(Ordering::SeqCst) - 1;
    refused.error(429, "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(api.get("/healthz").status, 200);
    // Monitoring sees the overload: `/metrics` has places of its own.
    assert_eq!(api.get("/metrics").status, 200);
    std::io::Write::write_all(&mut slow, &body.as_bytes()[10..]).expect("send the rest");
    let mut answer = String::new();
    let mut reader = BufReader::new(&slow);
    reader.read_line(&mut answer).expect("status line");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let after = api.get("/v1/c/small/z");
    assert!(
        after.status == 404 || after.json["attempt"] != last,
        "the refused write was not applied"
    );
    api.put("/v1/c/small/z", json!({"_version": -1, "attempt": "last"}))
        .ok_any();
}

/// Sends `request` every 50 ms, for at most 2.5 s, until one is refused.
fn wait_for_refusal(request: impl Fn() -> Reply) -> Reply {
    let deadline = Instant::now() + Duration::from_millis(2500);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let reply = request();
        if reply.status == 429 || Instant::now() > deadline {
            return reply;
        }
    }
}

/// A request of a document route: method, id, headers, body.
type DocumentRequest<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, Option<String>);

/// `GET`, `PUT` and `PATCH /v1/c/{coll}/{id}` take the server's direct path
/// (`http/fast.rs`) unless a segment is percent-encoded, which sends them
/// through the router. Two servers with the same limits get the same requests,
/// one with plain ids and one with an encoded character in every id: every
/// answer — status, content type, ETag, body — must be the same but for
/// commit times. Covers success, 201/200/304, every precondition form, 404,
/// 409 with its document, operator errors, invalid JSON, an oversized body,
/// idempotency keys, a non-object body, and the metric's route label.
#[test]
fn direct_document_path_answers_as_the_router_does() {
    let args = ["--max-body-bytes", "1000"];
    let direct_server = Server::start_with(&args);
    let routed_server = Server::start_with(&args);
    let direct = Api::new(&direct_server);
    let routed = Api::new(&routed_server);
    let big = json!({"pad": "x".repeat(2000)}).to_string();
    // (method, id, headers, body); the id's last character is encoded for `routed`.
    let requests: Vec<DocumentRequest> = vec![
        (Method::GET, "d1", vec![], None),
        (Method::PUT, "d1", vec![], Some(r#"{"n":1,"tags":["a"]}"#.into())),
        (Method::PUT, "d1", vec![], Some(r#"{"n":2}"#.into())),
        (Method::PUT, "d1", vec![], Some(r#"{"_version":1,"n":2}"#.into())),
        (Method::PUT, "d1", vec![], Some(r#"{"_version":1,"n":3}"#.into())),
        (Method::PUT, "d1", vec![], Some(r#"{"_version":-1,"n":3}"#.into())),
        (
            Method::PUT,
            "d1",
            vec![("if-match", "\"2-00000000000000000000000000000000\"")],
            Some("{}".into()),
        ),
        (
            Method::PUT,
            "d2",
            vec![("if-none-match", "*")],
            Some(r#"{"m":1}"#.into()),
        ),
        (
            Method::PUT,
            "d2",
            vec![("if-none-match", "*")],
            Some(r#"{"m":1}"#.into()),
        ),
        (
            Method::PUT,
            "d2",
            vec![("if-none-match", "x")],
            Some(r#"{"m":1}"#.into()),
        ),
        (Method::PUT, "d2", vec![], Some("[1,2]".into())),
        (Method::PUT, "d2", vec![], Some("{not json".into())),
        (Method::PUT, "d2", vec![], Some(big.clone())),
        (Method::PUT, "d2", vec![], Some(r#"{"_version":"one"}"#.into())),
        (
            Method::PUT,
            "d2",
            vec![],
            Some(r#"{"_version":-1,"_rev":"1-x"}"#.into()),
        ),
        (Method::PATCH, "d1", vec![], Some(r#"{"$inc":{"n":5}}"#.into())),
        (Method::PATCH, "d1", vec![], Some(r#"{"$set":{"n":8}}"#.into())),
        (Method::PATCH, "d1", vec![], Some(r#"{"$set":{"n":8}}"#.into())),
        (Method::PATCH, "d1", vec![], Some(r#"{"$inc":{"n":"x"}}"#.into())),
        (Method::PATCH, "d1", vec![], Some(r#"{"$nope":{"n":1}}"#.into())),
        (Method::PATCH, "d1", vec![], Some("7".into())),
        (Method::PATCH, "d1", vec![], Some(big)),
        (
            Method::PATCH,
            "d1",
            vec![],
            Some(r#"{"_version":1,"$inc":{"n":1}}"#.into()),
        ),
        (
            Method::PATCH,
            "d1",
            vec![],
            Some(r#"{"$if":{"n":{"$lt":0}},"$onFail":"skip","$inc":{"n":1}}"#.into()),
        ),
        (Method::PATCH, "d3", vec![], Some(r#"{"$inc":{"n":1}}"#.into())),
        (
            Method::PATCH,
            "d3",
            vec![],
            Some(r#"{"$inc":{"n":1},"$upsert":true}"#.into()),
        ),
        (
            Method::PATCH,
            "d3",
            vec![("idempotency-key", "k1")],
            Some(r#"{"$inc":{"n":1}}"#.into()),
        ),
        (
            Method::PATCH,
            "d3",
            vec![("idempotency-key", "k1")],
            Some(r#"{"$inc":{"n":1}}"#.into()),
        ),
        (
            Method::PATCH,
            "d3",
            vec![("idempotency-key", "k1")],
            Some(r#"{"$inc":{"n":2}}"#.into()),
        ),
        (
            Method::PATCH,
            "d3",
            vec![("truce-source", "equivalence"), ("truce-attempt", "2/5")],
            Some(r#"{"$inc":{"n":1}}"#.into()),
        ),
        (Method::GET, "d1", vec![], None),
        (Method::GET, "d3", vec![], None),
        (Method::GET, "d4", vec![], None),
    ];
    let strip_times = |mut value: Value| {
        fn strip(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    map.remove("_ts");
                    map.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut value);
        value
    };
    let mut statuses = BTreeSet::new();
    for (i, (method, id, headers, body)) in requests.into_iter().enumerate() {
        let (stem, last) = id.split_at(id.len() - 1);
        let encoded = format!("{stem}%{:02X}", last.as_bytes()[0]);
        let one = direct.call(method.clone(), &format!("/v1/c/eq/{id}"), &headers, body.clone());
        let two = routed.call(method.clone(), &format!("/v1/c/eq/{encoded}"), &headers, body);
        let what = format!("request {i}: {method} {id} {headers:?}");
        assert_eq!(one.status, two.status, "{what}: {} vs {}", one.text, two.text);
        for name in ["content-type", "etag"] {
            assert_eq!(one.header(name), two.header(name), "{what}: {name}");
        }
        assert_eq!(
            strip_times(one.json.clone()),
            strip_times(two.json),
            "{what}: {}",
            one.text
        );
        statuses.insert(one.status);
        // A 304 needs the ETag the GET just gave.
        if method == Method::GET && one.status == 200 {
            let etag = one.header("etag").expect("etag").to_string();
            let path = format!("/v1/c/eq/{id}");
            let not_modified = direct.get_h(&path, &[("if-none-match", &etag)]);
            assert_eq!(not_modified.status, 304, "{what}: If-None-Match");
            let routed_path = format!("/v1/c/eq/{encoded}");
            assert_eq!(
                routed.get_h(&routed_path, &[("if-none-match", &etag)]).status,
                304
            );
            statuses.insert(304);
        }
    }
    for status in [200, 201, 304, 400, 404, 409, 413, 422] {
        assert!(
            statuses.contains(&status),
            "the table produced a {status}: {statuses:?}"
        );
    }
    // Both servers counted the same requests under the same labels: the route
    // template, methods and statuses, whichever path served them; routed and
    // unmatched requests keep theirs.
    for api in [&direct, &routed] {
        api.get("/healthz").ok(200);
        api.get("/no/such/route").error(404, "not_found");
    }
    let counts = |api: &Api| -> BTreeSet<String> {
        api.get("/metrics")
            .text
            .lines()
            .filter(|line| line.starts_with("truce_http_request_duration_seconds_count"))
            .filter(|line| !line.contains("route=\"/metrics\""))
            .map(str::to_string)
            .collect()
    };
    let (direct_counts, routed_counts) = (counts(&direct), counts(&routed));
    assert_eq!(direct_counts, routed_counts);
    for (method, route) in [
        ("GET", "/v1/c/{coll}/{id}"),
        ("PUT", "/v1/c/{coll}/{id}"),
        ("PATCH", "/v1/c/{coll}/{id}"),
        ("GET", "/healthz"),
        ("GET", "unmatched"),
    ] {
        let labels = format!("method=\"{method}\",route=\"{route}\"");
        assert!(
            direct_counts.iter().any(|line| line.contains(&labels)),
            "{labels} in {direct_counts:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Operations: health, OpenAPI, caller headers
// ---------------------------------------------------------------------------

#[test]
fn healthz_and_openapi() {
    let server = Server::start();
    let api = Api::new(&server);
    let health = api.get("/healthz");
    assert_eq!(health.ok(200)["status"], "ok");
    assert!(health.json["durable_seq"].as_u64().is_some());

    let doc = api.get("/openapi.json");
    let spec = doc.ok(200);
    assert!(
        spec["openapi"]
            .as_str()
            .expect("openapi version")
            .starts_with("3."),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().expect("paths");

    // The routes of the server (mod.rs) and every `METHOD /path` docs/http.md names.
    let mut routes: BTreeSet<(String, String)> = [
        ("get", "/v1/c"),
        ("get", "/v1/c/{coll}"),
        ("get", "/v1/c/{coll}/{id}"),
        ("put", "/v1/c/{coll}/{id}"),
        ("patch", "/v1/c/{coll}/{id}"),
        ("delete", "/v1/c/{coll}/{id}"),
        ("get", "/v1/c/{coll}/_indexes"),
        ("put", "/v1/c/{coll}/_indexes/{name}"),
        ("get", "/v1/c/{coll}/_changes"),
        ("get", "/v1/_changes"),
        ("post", "/v1/tx"),
        ("get", "/healthz"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/http.md")).unwrap();
    let mut from_docs = 0;
    for (i, span) in docs.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        if let Some((method, path)) = span.split_once(' ')
            && ["GET", "PUT", "POST", "PATCH", "DELETE"].contains(&method)
            && path.starts_with('/')
            && !path.contains(' ')
        {
            routes.insert((method.to_lowercase(), path.to_string()));
            from_docs += 1;
        }
    }
    assert!(from_docs >= 5, "routes found in docs/http.md: {from_docs}");
    for (method, path) in &routes {
        let entry = paths
            .get(path)
            .unwrap_or_else(|| panic!("/openapi.json has no path {path}"));
        assert!(
            entry.get(method).is_some(),
            "/openapi.json has no {method} {path}"
        );
    }
}

/// As docs/http.md's conventions say: integers within 64 bits are exact,
/// others are floats, and `$inc` of 1 on a float that large changes nothing.
#[test]
fn numbers_past_64_bits_are_floats() {
    let server = Server::start();
    let api = Api::new(&server);
    let sent =
        r#"{"max": 18446744073709551615, "min": -9223372036854775808, "big": 12345678901234567890123}"#;
    let put = api.call(Method::PUT, "/v1/c/n/a", &[], Some(sent.to_string()));
    put.ok(201);
    let doc = api.get("/v1/c/n/a");
    assert!(doc.text.contains(r#""max":18446744073709551615"#), "{}", doc.text);
    assert!(doc.text.contains(r#""min":-9223372036854775808"#), "{}", doc.text);
    assert!(
        doc.text.contains(r#""big":1.2345678901234568e+22"#),
        "{}",
        doc.text
    );
    let inc = api.patch("/v1/c/n/a", json!({"$inc": {"big": 1}}));
    assert_eq!(inc.ok(200)["noop"], true, "{}", inc.text);
}

#[test]
fn caller_headers_are_accepted() {
    let server = Server::start();
    let api = Api::new(&server);
    let headers = [("Truce-Source", "checkout.handler"), ("Truce-Attempt", "1")];
    api.put_h("/v1/c/h/a", json!({"n": 1}), &headers).ok(201);
    api.patch_h(
        "/v1/c/h/a",
        json!({"$inc": {"n": 1}}),
        &[("Truce-Source", "retry"), ("Truce-Attempt", "2/5")],
    )
    .ok(200);
    api.tx_h(json!({"ops": [{"op": "check", "c": "h", "id": "a"}]}), &headers)
        .ok(200);
    api.get_h("/v1/c/h/a", &headers).ok(200);
    let long_label = "s".repeat(300);
    api.get_h("/v1/c/h/a", &[("Truce-Source", &long_label)]).ok(200);
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

#[test]
fn sigterm_under_load_exits_cleanly_and_keeps_acknowledged_writes() {
    let mut server = Server::start();
    let url = server.url();
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (url, acked) = (url.clone(), Arc::clone(&acked));
            std::thread::spawn(move || {
                let client = common::http_client()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut ok = Vec::new();
                for i in 0.. {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("t{t}-{i}");
                    let sent = client
                        .put(format!("{url}/v1/c/w/{id}"))
                        .header("content-type", "application/json")
                        .body(json!({"t": t, "i": i}).to_string())
                        .send();
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            ok.push(id);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break, // the server is going away
                    }
                }
                ok
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::Relaxed) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM under load exits with success, got {status}"
    );
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        acknowledged.len() >= 200,
        "writes were acknowledged before SIGTERM: {}",
        acknowledged.len()
    );

    server.restart();
    let api = Api::new(&server);
    let present: BTreeSet<String> = ids(&api.query_all("w", "limit=1000")).into_iter().collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Event streams count against the long polls' places
/// (`--max-concurrent-requests` of them) for as long as they are open: past
/// that a stream or long poll is refused with 429, other requests are
/// served, and a stream whose client went away gives its place back. They
/// were unbounded, and each commit wakes every open stream of its collections.
#[test]
fn event_streams_are_bounded_and_give_their_place_back() {
    let server = Server::start_with(&["--max-concurrent-requests", "2"]);
    let api = Api::new(&server);
    api.put("/v1/c/st/first", json!({})).ok(201);
    let client = common::http_client()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let open = |path: &str| {
        client
            .get(format!("{}{path}", server.url()))
            .send()
            .expect("a stream request")
    };
    let sse = open("/v1/c/st/_changes?feed=sse&since=now");
    assert_eq!(sse.status(), 200);
    let pull = open("/v1/c/st/_pull/stream");
    assert_eq!(pull.status(), 200);
    for path in [
        "/v1/c/st/_changes?feed=sse&since=now",
        "/v1/c/st/_pull/stream",
        "/v1/c/st/_changes?feed=longpoll&since=now&timeout=100",
    ] {
        let refused = open(path);
        assert_eq!(refused.status(), 429, "{path}");
        assert!(refused.headers().contains_key("retry-after"), "{path}");
    }
    api.get("/v1/c/st/first").ok(200);
    // The client goes; the server finds out at its next event and lets the
    // place go.
    drop(pull);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = api.put(
            "/v1/c/st/next",
            json!({"_version": -1, "at": format!("{:?}", Instant::now())}),
        );
        assert!(matches!(written.status, 200 | 201), "{}", written.text);
        let again = open("/v1/c/st/_pull/stream");
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(sse);
}

/// At a shutdown signal, long-lived reads end at once and cleanly, so that
/// their clients resume on the next server without waiting out the grace
/// period: a long poll (`/v1` and `/couch`) answers what it has — no change,
/// and its position —, an event stream (`_changes?feed=sse`, RxDB's
/// `_pull/stream`) ends its body, and the server exits. They used to be held
/// for the 10 s grace and then cut, with no answer.
#[test]
fn sigterm_answers_long_polls_and_ends_streams() {
    let mut server = Server::start();
    let api = Api::new(&server);
    let since = api.last_seq();
    api.put("/v1/c/st/first", json!({})).ok(201);
    let client = || {
        common::http_client()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };

    // The event streams, connected (their headers received), then idle.
    let (connected, is_connected) = std::sync::mpsc::channel();
    let streams: Vec<_> = [
        format!("/v1/c/st/_changes?feed=sse&since={since}"),
        "/v1/c/st/_pull/stream".to_string(),
    ]
    .into_iter()
    .map(|path| {
        let (url, connected) = (format!("{}{path}", server.url()), connected.clone());
        std::thread::spawn(move || {
            let response = client().get(url).send().expect("stream request");
            assert_eq!(response.status(), 200, "{path}");
            let _ = connected.send(());
            // To the end of the body: an error is a stream cut, not ended.
            for line in BufReader::new(response).lines() {
                if let Err(e) = line {
                    return Err(format!("{path}: {e}"));
                }
            }
            Ok(Instant::now())
        })
    })
    .collect();
    for _ in 0..2 {
        is_connected
            .recv_timeout(Duration::from_secs(10))
            .expect("the streams connected");
    }
    // Long polls that would wait a minute.
    let polls: Vec<_> = [
        "/v1/c/st/_changes?feed=longpoll&since=now&timeout=60000",
        "/couch/st/_changes?feed=longpoll&since=now&timeout=60000",
    ]
    .into_iter()
    .map(|path| {
        let url = format!("{}{path}", server.url());
        std::thread::spawn(move || {
            let response = client().get(url).send().expect("long poll");
            let status = response.status();
            let body: Value = response.json().expect("a JSON answer");
            (path, status, body, Instant::now())
        })
    })
    .collect();
    // Time for the long polls to be sent and read.
    std::thread::sleep(Duration::from_millis(800));

    let started = Instant::now();
    let status = server.terminate(); // one SIGTERM (a second would cut the grace short)
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    // Under the 10 s grace they used to be held for, with room for a
    // loaded machine.
    let prompt = Duration::from_secs(8);
    assert!(
        took < prompt,
        "the long-lived reads held the shutdown for {took:?}"
    );
    for poll in polls {
        let (path, status, body, answered) = poll.join().expect("long poll thread");
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["results"], json!([]), "{path}: {body}");
        assert_eq!(body["last_seq"], json!(since + 1), "{path}: its position");
        assert!(
            answered - started < prompt,
            "{path} answered {:?} after SIGTERM",
            answered - started
        );
    }
    for stream in streams {
        let ended = stream
            .join()
            .expect("stream thread")
            .expect("the stream ended cleanly");
        assert!(
            ended - started < prompt,
            "a stream ended {:?} after SIGTERM",
            ended - started
        );
    }
}

// ---------------------------------------------------------------------------
// Backups
// ---------------------------------------------------------------------------

/// `POST /v1/_backup` copies the database, online, into a new directory that a
/// server then serves as it is; one at a time; bad paths are refused at once.
#[test]
fn backups_run_online_and_open_as_a_data_directory() {
    let server = Server::start();
    let api = Api::new(&server);
    let dir = tempfile::tempdir().unwrap();
    api.get("/v1/_backup").error(404, "not_found");
    // Enough documents that a backup takes a while.
    let pad = "x".repeat(1000);
    for batch in 0..20 {
        let ops: Vec<Value> = (0..1000)
            .map(|i| json!({"op": "put", "c": "big", "id": format!("d{batch}-{i}"), "doc": {"pad": pad}}))
            .collect();
        api.tx(json!({ "ops": ops })).ok(200);
    }
    api.put("/v1/c/small/a", json!({"n": 1})).ok(201);
    let head = api.last_seq();

    let target = dir.path().join("b1");
    // `.` steps and a slash at the end name the directory without them
    // (`DIR/.` was copied whole, then its rename failed).
    let spelled = format!("{}/./b1/.", dir.path().display());
    let started = api.post("/v1/_backup", json!({ "path": spelled }));
    assert_eq!(started.status, 202, "{}", started.text);
    assert_eq!(started.json["state"], "running");
    assert_eq!(started.json["path"], json!(target), "{}", started.text);
    let second = api.post("/v1/_backup", json!({"path": dir.path().join("b2")}));
    second.error(409, "backup_running");
    // Writes go on meanwhile; they are not in the backup.
    api.put("/v1/c/small/after", json!({})).ok(201);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let status = api.get("/v1/_backup");
        let status = status.ok(200).clone();
        if status["state"] != "running" {
            break status;
        }
        assert!(Instant::now() < deadline, "still running: {status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["seq"], started.json["seq"],
        "the 202 said what it would hold"
    );
    assert!(done["seq"].as_u64() >= Some(head), "{done}");
    assert!(done["entries"].as_u64() > Some(20_000), "{done}");
    assert!(done["error"].is_null());

    let copy = Server::start_in(&target, &[]);
    let from_copy = Api::new(&copy);
    from_copy.get("/v1/c/small/a").ok(200);
    from_copy.get("/v1/c/big/d19-999").ok(200);
    let feed = from_copy.get("/v1/c/small/_changes?since=0");
    let feed = feed.ok(200);
    assert_eq!(feed["last_seq"], done["seq"]);
    assert_eq!(
        change_ids(feed),
        ["a"],
        "the write made after it started is not in it"
    );

    // Refused at once, each saying why.
    for (body, why) in [
        (json!({"path": "relative/dir"}), "absolute"),
        (
            json!({"path": format!("{}/b\n2026-12-07T00:00:00Z ERROR forged", dir.path().display())}),
            "control characters",
        ),
        (
            json!({"path": format!("{}/b\u{2028}forged", dir.path().display())}),
            "control characters",
        ),
        (json!({"path": target}), "exists already"),
        (
            json!({"path": server.data.join("inside")}),
            "outside the data directory",
        ),
        (json!({"path": dir.path().join("no/parent")}), "parent"),
        (
            json!({"path": dir.path().join("b3"), "compress": true}),
            "unknown field",
        ),
        (json!({}), "path"),
    ] {
        let refused = api.post("/v1/_backup", body.clone());
        let message = refused.error(400, "invalid_backup")["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(why), "{body}: {message}");
    }
    // The status still says the last backup, done.
    assert_eq!(api.get("/v1/_backup").ok(200)["state"], "done");

    // `truce backup` starts one and follows it to the end.
    let by_cli = dir.path().join("by-cli");
    let ran = run_bounded(
        &["backup", "--url", &server.url(), "--to", by_cli.to_str().unwrap()],
        RUN_BOUND,
    );
    assert!(ran.status.is_some_and(|s| s.success()), "{}", ran.stderr);
    let status: Value = serde_json::from_str(ran.stdout.trim()).expect("the final status, as JSON");
    assert_eq!(status["state"], "done");
    assert!(
        ran.stderr.contains("entries") && ran.stderr.contains("truce serve --data"),
        "{}",
        ran.stderr
    );
    assert!(by_cli.join("version").is_file());
    let ran = run_bounded(
        &["backup", "--url", &server.url(), "--to", by_cli.to_str().unwrap()],
        RUN_BOUND,
    );
    assert!(ran.status.is_some_and(|s| !s.success()));
    assert!(ran.stderr.contains("exists already"), "{}", ran.stderr);

    // A server stopped (SIGTERM) while a backup runs stops the backup and
    // leaves no `.partial` (or, had it finished first, a whole backup).
    let mut server = server;
    let halted = dir.path().join("halted");
    assert_eq!(api.post("/v1/_backup", json!({"path": halted})).status, 202);
    assert!(server.terminate().success());
    assert!(
        !dir.path().join("halted.partial").exists(),
        "a graceful stop leaves no .partial"
    );
    if halted.exists() {
        let copy = Server::start_in(&halted, &[]);
        Api::new(&copy).get("/v1/c/big/d19-999").ok(200);
    }
    server.restart();
    let api = Api::new(&server);

    // A server killed while a backup runs restarts with its own data; a
    // `.partial` left behind is refused as a target until removed. (Whether
    // the kill lands mid-copy is the machine's timing: the engine's
    // `a_backup_refuses_what_it_cannot_do_cleanly` stops one half-way for
    // certain, and checks that no directory is named like a backup.)
    let killed = dir.path().join("killed");
    assert_eq!(api.post("/v1/_backup", json!({"path": killed})).status, 202);
    server.kill9();
    if killed.exists() {
        // It finished first (a fast machine): then it is whole.
        let copy = Server::start_in(&killed, &[]);
        Api::new(&copy).get("/v1/c/big/d19-999").ok(200);
    }
    server.restart();
    let api = Api::new(&server);
    api.get("/v1/c/big/d19-999").ok(200);
    if dir.path().join("killed.partial").exists() {
        let refused = api.post("/v1/_backup", json!({"path": killed}));
        assert!(
            refused.error(400, "invalid_backup")["message"]
                .as_str()
                .unwrap()
                .contains(".partial")
        );
    }

    // `--backup-root` keeps backups inside one directory; one no backup could
    // go into stops the server at start.
    let root = dir.path().join("allowed");
    for (bad, data) in [
        (root.clone(), dir.path().join("d1")),
        (dir.path().join("d2/inside"), dir.path().join("d2")),
    ] {
        if bad.starts_with(&data) {
            // A data directory (a server made it), with the root inside.
            drop(Server::start_in(&data, &[]));
            std::fs::create_dir_all(&bad).unwrap();
        }
        let ran = run_bounded(
            &[
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--backup-root",
                bad.to_str().unwrap(),
            ],
            RUN_BOUND,
        );
        assert!(ran.status.is_some_and(|s| !s.success()), "{}", ran.stderr);
        assert!(ran.stderr.contains("backup_root"), "{}", ran.stderr);
    }
    std::fs::create_dir(&root).unwrap();
    let limited = Server::start_with(&["--backup-root", root.to_str().unwrap()]);
    let api = Api::new(&limited);
    let outside = api.post("/v1/_backup", json!({"path": dir.path().join("elsewhere")}));
    let message = outside.error(400, "invalid_backup")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("--backup-root"), "{message}");
    // A `..` under a directory not made yet passed as written, and led
    // outside the root once the directory was made.
    let climbing = root.join("not-yet/../../elsewhere");
    let refused = api.post("/v1/_backup", json!({ "path": climbing }));
    let message = refused.error(400, "invalid_backup")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(".."), "{message}");
    let inside = api.post("/v1/_backup", json!({"path": root.join("nightly")}));
    assert_eq!(inside.status, 202, "{}", inside.text);
}

/// A stop signal while the database opens (its recovery can take long; a
/// failpoint, which the test build has, holds it here) is a clean stop once
/// it has opened: the handlers were installed only after, and the signal's
/// default action killed the process mid-recovery.
#[cfg(unix)]
#[test]
fn a_signal_while_the_database_opens_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    for (i, signal) in [libc::SIGTERM, libc::SIGINT].into_iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut server = Spawned::start(
            &[
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &addr.to_string(),
            ],
            &[("FAILPOINTS", "db::open=sleep(3000)")],
        );
        std::thread::sleep(Duration::from_millis(500));
        // Still opening: it listens only once the database is open.
        assert!(!common::listening(addr), "the signal must come while it opens");
        server.signal(signal);
        let status = server.exit_within(Duration::from_secs(20)).expect("it stops");
        assert!(status.success(), "signal {signal}: {status}");
    }
}

/// A backup asked for while the server is stopping is refused, not started
/// and then cut short at the exit: its snapshot (held here by a failpoint,
/// which the test build has) is still being taken when SIGTERM arrives; the
/// request is answered 503 `unavailable` within the grace period, and
/// neither the backup nor its `.partial` is left.
#[cfg(unix)]
#[test]
fn a_backup_asked_for_as_the_server_stops_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, listen) = serve_with_failpoints(dir.path(), "backup::start=sleep(1500)");
    let api = Api::at(&format!("http://{listen}"));
    api.put("/v1/c/a/x", json!({"n": 1})).ok(201);
    let target = dir.path().join("late");
    let asked = {
        let (api, target) = (Api::at(&format!("http://{listen}")), target.clone());
        std::thread::spawn(move || api.post("/v1/_backup", json!({ "path": target })))
    };
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGTERM);
    let answer = asked.join().expect("the request's thread");
    let message = answer.error(503, "unavailable")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("shutting down"), "{message}");
    let status = server
        .exit_within(Duration::from_secs(20))
        .expect("exits after the grace period");
    assert!(status.success(), "{status}");
    assert!(!target.exists(), "no backup was made");
    assert!(!dir.path().join("late.partial").exists(), "and no .partial left");
}

/// A server on `dir/data` with `failpoints` armed (the test build has
/// them), listening; its address.
#[cfg(unix)]
fn serve_with_failpoints(dir: &Path, failpoints: &str) -> (Spawned, String) {
    let data = dir.join("data");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let mut server = Spawned::start(
        &["serve", "--data", data.to_str().unwrap(), "--listen", &listen],
        &[("FAILPOINTS", failpoints)],
    );
    server.wait_listening(addr);
    (server, listen)
}

/// A running backup is stopped by `DELETE /v1/_backup`, which answers once
/// nothing of it is left (`stopped`), and by Ctrl-C of `truce backup`, which
/// asks for that: before, the command died and the server went on copying
/// with no one watching. Each chunk of the copy is slowed by a failpoint
/// (the test build has them), so the backup is still running when stopped.
#[cfg(unix)]
#[test]
fn a_running_backup_is_stopped_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, listen) = serve_with_failpoints(dir.path(), "backup::chunk=sleep(200)");
    let api = Api::at(&format!("http://{listen}"));
    api.delete("/v1/_backup").error(404, "not_found");
    for i in 0..600 {
        api.put(&format!("/v1/c/a/d{i}"), json!({"n": i})).ok(201);
    }
    let target = dir.path().join("b1");
    let started = api.post("/v1/_backup", json!({ "path": target }));
    assert_eq!(started.status, 202, "{}", started.text);
    let stopped = api.delete("/v1/_backup");
    let stopped = stopped.ok(200).clone();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["error"]["error"], "backup_stopped", "{stopped}");
    assert!(
        !target.exists() && !dir.path().join("b1.partial").exists(),
        "nothing is left"
    );
    // Asked again, or read: what it came to.
    assert_eq!(api.delete("/v1/_backup").ok(200)["state"], "stopped");
    assert_eq!(api.get("/v1/_backup").ok(200)["state"], "stopped");
    // Asked by several at once: each answer waits for the stop (the ones
    // that did not take the backup's thread answered `running` at once).
    let target = dir.path().join("b3");
    assert_eq!(api.post("/v1/_backup", json!({ "path": target })).status, 202);
    let askers: Vec<_> = (0..3)
        .map(|_| {
            let api = Api::at(&format!("http://{listen}"));
            std::thread::spawn(move || api.delete("/v1/_backup").ok(200).clone())
        })
        .collect();
    for asker in askers {
        let answer = asker.join().expect("the asker");
        assert_eq!(answer["state"], "stopped", "{answer}");
    }
    assert!(
        !target.exists() && !dir.path().join("b3.partial").exists(),
        "nothing is left"
    );

    // Ctrl-C of the command stops the backup in the server.
    let url = format!("http://{listen}");
    let cli_target = dir.path().join("b2");
    let mut command = Command::new(truce_bin());
    command
        .args(["backup", "--url", &url, "--to", cli_target.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut cli = Spawned::from_command(command);
    let mut stderr = BufReader::new(cli.take_stderr().expect("piped")).lines();
    let first = stderr.next().expect("a line").expect("text");
    assert!(first.contains("started"), "{first}");
    cli.signal(libc::SIGINT);
    let status = cli.exit_within(Duration::from_secs(30)).expect("it exits");
    assert_eq!(status.code(), Some(1), "{status}");
    let said: Vec<String> = stderr.map_while(Result::ok).collect();
    assert!(
        said.iter().any(|l| l.contains("nothing of it is left")),
        "{said:?}"
    );
    assert_eq!(api.get("/v1/_backup").ok(200)["state"], "stopped");
    assert!(
        !cli_target.exists() && !dir.path().join("b2.partial").exists(),
        "nothing is left"
    );
    server.signal(libc::SIGTERM);
    assert!(
        server
            .exit_within(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[test]
fn serve_help_mentions_every_flag() {
    let out = Command::new(truce_bin())
        .args(["serve", "--help"])
        .output()
        .expect("truce serve --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--data",
        "--log-format",
        "--insecure-no-auth",
        "--tls-cert",
        "--tls-key",
        "--max-body-bytes",
        "--request-timeout-ms",
        "--max-concurrent-requests",
        "--http-threads",
        "--cors-origins",
        "--backup-root",
    ] {
        assert!(
            help.contains(flag),
            "serve --help does not mention {flag}:\n{help}"
        );
    }
    for env in ["TRUCE_LISTEN", "TRUCE_DATA", "TRUCE_CONFIG"] {
        assert!(help.contains(env), "serve --help does not mention {env}:\n{help}");
    }
}

/// `--http-threads`: that many threads serve HTTP, the server answers on
/// every connection and stops cleanly. (How connections are dealt to the
/// threads is `http_threads.rs`'s unit test.)
#[cfg(target_os = "linux")]
#[test]
fn http_threads_sets_how_many_threads_serve() {
    // One more than the default (one per CPU), so that an ignored flag shows.
    let asked = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let mut server = Server::start_with(&["--http-threads", &asked.to_string()]);
    let url = server.url();
    // Two connections per thread, dealt out in turn.
    let clients: Vec<Client> = (0..2 * asked)
        .map(|_| common::http_client().build().expect("an HTTP client"))
        .collect();
    for round in 0..3 {
        for (i, client) in clients.iter().enumerate() {
            let answer = client
                .put(format!("{url}/v1/c/threads/d{i}-{round}"))
                .header("content-type", "application/json")
                .body(json!({ "round": round }).to_string())
                .send()
                .expect("PUT");
            assert!(answer.status().is_success(), "{}", answer.status());
        }
    }
    let http_threads = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .expect("the server's threads")
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "truce-http")
        })
        .count();
    // Writes start no blocking-pool threads, which would share the name.
    assert_eq!(http_threads, asked);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
}

/// `--cors-origins`: a page of an allowed origin may call the API from a
/// browser — its preflight is answered without a key (browsers send none),
/// its answers carry `Access-Control-Allow-Origin` and expose `ETag` and
/// `Retry-After` — and a page of any other origin gets no CORS header. Off
/// by default: no CORS header at all, and a preflight is a 405.
#[test]
fn cors_lets_the_allowed_origins_call_from_a_browser() {
    let app = "https://app.example.com";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cors.toml");
    std::fs::write(
        &file,
        format!("cors_origins = [\"{app}\", \"http://localhost:3000\"]\n"),
    )
    .unwrap();
    let server = Server::start_with(&["--config", file.to_str().unwrap()]);
    let http = common::http_client().build().expect("an HTTP client");
    let preflight = |base: &str, origin: &str| {
        http.request(Method::OPTIONS, format!("{base}/v1/c/cors/doc"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,if-match,truce-source,truce-attempt",
            )
            .send()
            .expect("preflight")
    };
    let header = |response: &reqwest::blocking::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };

    let answer = preflight(&server.url(), app);
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        header(&answer, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let methods = header(&answer, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("PATCH") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = header(&answer, "access-control-allow-headers").unwrap_or_default();
    for name in [
        "authorization",
        "idempotency-key",
        "if-match",
        "truce-source",
        "last-event-id",
    ] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    assert_eq!(header(&answer, "access-control-max-age").as_deref(), Some("3600"));

    let write = http
        .put(format!("{}/v1/c/cors/doc", server.url()))
        .header("origin", app)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(write.status().as_u16(), 201);
    assert_eq!(
        header(&write, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let read = http
        .get(format!("{}/v1/c/cors/doc", server.url()))
        .header("origin", "http://localhost:3000")
        .send()
        .unwrap();
    assert_eq!(
        header(&read, "access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );
    let exposed = header(&read, "access-control-expose-headers").unwrap_or_default();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );
    // Routes the router serves get them too.
    let feed = http
        .get(format!("{}/v1/c/cors/_changes", server.url()))
        .header("origin", app)
        .send()
        .unwrap();
    assert_eq!(header(&feed, "access-control-allow-origin").as_deref(), Some(app));

    // An OPTIONS that is no preflight (no Origin, or no
    // Access-Control-Request-Method) is the app's to answer, as without
    // CORS: 405 with Allow on a route, 404 on none; it was 200 on any path,
    // and neither logged nor counted.
    let options = |path: &str, headers: &[(&str, &str)]| {
        let mut request = http.request(Method::OPTIONS, format!("{}{path}", server.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().expect("OPTIONS")
    };
    let plain = options("/v1/c/cors/doc", &[]);
    assert_eq!(plain.status().as_u16(), 405);
    assert!(header(&plain, "allow").is_some_and(|a| a.contains("PUT")));
    let half = options("/v1/c/cors/doc", &[("origin", app)]);
    assert_eq!(half.status().as_u16(), 405);
    let nowhere = options("/definitely/not/a/route", &[]);
    assert_eq!(nowhere.status().as_u16(), 404);
    let metrics = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("method=\"OPTIONS\"") && l.contains("status=\"405\"")),
        "OPTIONS answers are counted"
    );

    // Another origin: no CORS header, so its page cannot read the answer.
    let other = preflight(&server.url(), "https://evil.example");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    let read = http
        .get(format!("{}/v1/c/cors/doc", server.url()))
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(header(&read, "access-control-allow-origin"), None);

    // `*` from the environment allows every origin; without API keys only
    // with --insecure-no-auth (any page a local user opens could write).
    let data = dir.path().join("any");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (listen, data_arg) = (addr.to_string(), data.to_str().unwrap().to_string());
    let refused = run_bounded(
        &[
            "serve",
            "--listen",
            &listen,
            "--data",
            &data_arg,
            "--cors-origins",
            "*",
        ],
        RUN_BOUND,
    );
    assert!(refused.status.is_some_and(|s| !s.success()), "{}", refused.stderr);
    assert!(refused.stderr.contains("without API keys"), "{}", refused.stderr);
    let mut any = Spawned::start(
        &[
            "serve",
            "--listen",
            &listen,
            "--data",
            &data_arg,
            "--insecure-no-auth",
        ],
        &[("TRUCE_CORS_ORIGINS", "*")],
    );
    any.wait_listening(addr);
    let answer = preflight(&format!("http://{addr}"), "https://evil.example");
    assert_eq!(
        header(&answer, "access-control-allow-origin").as_deref(),
        Some("*")
    );

    // Off by default.
    let plain = Server::start();
    let answer = preflight(&plain.url(), app);
    assert_eq!(answer.status().as_u16(), 405);
    assert_eq!(header(&answer, "access-control-allow-origin"), None);

    // A page may send a text/plain POST anywhere without asking first: a
    // write that names another origin is refused, whatever CORS allows it to
    // read — on a server without keys it would otherwise apply. Clients that
    // are not browsers send no Origin; the server's own pages send its own.
    let api = Api::new(&plain);
    let csrf = |path: &str, method: Method, origin: &str, body: &str| {
        http.request(method, format!("{}{path}", plain.url()))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let tx = r#"{"ops": [{"op": "put", "c": "csrf", "id": "a", "doc": {}}]}"#;
    for (path, method, body) in [
        ("/v1/tx", Method::POST, tx),
        ("/v1/c/csrf/a", Method::PUT, "{}"),
        (
            "/v1/c/csrf/a",
            Method::PATCH,
            r#"{"$set": {"x": 1}, "$upsert": true}"#,
        ),
        (
            "/couch/csrf/_bulk_docs",
            Method::POST,
            r#"{"docs": [{"_id": "a"}]}"#,
        ),
    ] {
        let answer = csrf(path, method.clone(), "https://evil.example", body);
        assert_eq!(answer.status().as_u16(), 403, "{method} {path}");
    }
    // The server's own name is no exception: its pages only read, and a page
    // whose name was pointed at it (DNS rebinding) would claim it.
    let own = csrf("/v1/tx", Method::POST, &plain.url(), tx);
    assert_eq!(own.status().as_u16(), 403, "the server's own name");
    api.get("/v1/c/csrf/a").error(404, "not_found");

    // DNS rebinding: a page at attacker.example, its name pointed at
    // 127.0.0.1, is same-origin with the server in the browser's eyes and
    // sends no Origin on reads. A server without keys answers only loopback
    // names.
    let port = plain.addr.port();
    for host in [format!("attacker.example:{port}"), "attacker.example".to_string()] {
        let read = http
            .get(format!("{}/v1/c", plain.url()))
            .header("host", &host)
            .send()
            .unwrap();
        assert_eq!(read.status().as_u16(), 403, "{host}");
        let write = http
            .post(format!("{}/v1/tx", plain.url()))
            .header("host", &host)
            .header("content-type", "text/plain")
            .body(tx)
            .send()
            .unwrap();
        assert_eq!(write.status().as_u16(), 403, "{host}");
    }
    api.get("/v1/c/csrf/a").error(404, "not_found");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let read = http
            .get(format!("{}/v1/c", plain.url()))
            .header("host", &host)
            .send()
            .unwrap();
        assert_eq!(read.status().as_u16(), 200, "{host}");
    }

    // A value that is not an origin is refused at start, saying why.
    for bad in [
        "https://app.example.com/",
        "app.example.com",
        "*,https://a.example",
    ] {
        let ran = run_bounded(
            &[
                "serve",
                "--data",
                dir.path().join("bad").to_str().unwrap(),
                "--cors-origins",
                bad,
            ],
            RUN_BOUND,
        );
        assert!(ran.status.is_some_and(|s| !s.success()), "{bad}: {}", ran.stderr);
        assert!(ran.stderr.contains("cors_origins"), "{bad}: {}", ran.stderr);
    }
}

/// `truce keys` and `truce recount` find the data directory as `truce serve`
/// does (`--data`, `TRUCE_DATA`, then the `--config` file's `data`, from the
/// flag or `TRUCE_CONFIG`), and refuse a directory that is not the server's
/// instead of answering as if it had no keys or making a database of it.
#[test]
fn administration_commands_find_the_data_directory_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("truce.toml");
    std::fs::write(&config, format!("data = {:?}\n", data.display().to_string())).unwrap();
    let truce = |args: &[&str], envs: &[(&str, &std::path::Path)]| {
        let mut command = Command::new(truce_bin());
        command
            .args(args)
            .current_dir(dir.path())
            .env_remove("TRUCE_DATA")
            .env_remove("TRUCE_CONFIG");
        for (name, value) in envs {
            command.env(name, value);
        }
        let out = command.output().expect("truce");
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    // Created through the config file named by the flag, listed through the
    // variable, and the server started with that file finds it.
    let (ok, key, stderr) = truce(
        &[
            "keys",
            "create",
            "--role",
            "admin",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("did not exist"),
        "a new directory is pointed out: {stderr}"
    );
    assert!(
        data.join("api-keys.json").is_file(),
        "the key went to the file's data directory"
    );
    let (ok, listed, stderr) = truce(&["keys", "list"], &[("TRUCE_CONFIG", &config)]);
    assert!(ok, "{stderr}");
    assert!(listed.contains("\tadmin\t"), "{listed}");
    let key = key.trim().to_string();
    assert!(
        listed.contains(&key["truce_".len().."truce_".len() + 16]),
        "{listed}"
    );

    // A directory that is not there is an error, not "no keys".
    for command in [&["keys", "list"][..], &["keys", "revoke", "0123456789abcdef"]] {
        let typo = dir.path().join("dta");
        let (ok, _, stderr) = truce(&[command, &["--data", typo.to_str().unwrap()]].concat(), &[]);
        assert!(
            !ok && stderr.contains("no data directory"),
            "{command:?}: {stderr}"
        );
        assert!(!typo.exists(), "{command:?} created {}", typo.display());
    }
    // `recount` on a directory that holds no database refuses, and leaves it
    // as it was.
    let other = dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.jpg"), b"x").unwrap();
    let (ok, _, stderr) = truce(&["recount", "c", "n", "--data", other.to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("holds no Truce database"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "nothing was written into it"
    );
    // With the server's data (through TRUCE_CONFIG) it reaches the database.
    let server = Server::start_in(&data, &[]);
    // A second server on the same directory says who holds it.
    let listen = format!("127.0.0.1:{}", free_port());
    let second = run_bounded(
        &["serve", "--data", data.to_str().unwrap(), "--listen", &listen],
        RUN_BOUND,
    );
    assert!(second.status.is_some_and(|s| !s.success()), "{}", second.stderr);
    assert!(
        second.stderr.contains("in use by another process"),
        "{}",
        second.stderr
    );
    drop(server);
    let (ok, _, stderr) = truce(&["recount", "c", "n"], &[("TRUCE_CONFIG", &config)]);
    assert!(!ok && stderr.contains("has no counter n"), "{stderr}");
}

/// `truce serve --data DIR` makes a database only of a new or empty
/// directory (or one holding just what `truce keys create` wrote first, or a
/// volume's `lost+found`): a mistyped `--data` pointing at someone's files
/// used to get a 64 MiB journal and keyspaces written in among them. A
/// path that is a file says so.
#[test]
fn serve_makes_a_database_only_of_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let listen = || format!("127.0.0.1:{}", free_port());
    let serve = |data: &Path| {
        run_bounded(
            &["serve", "--data", data.to_str().unwrap(), "--listen", &listen()],
            RUN_BOUND,
        )
    };
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("precious.jpg"), b"x").unwrap();
    let ran = serve(&photos);
    assert!(ran.status.is_some_and(|s| !s.success()), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("holds no Truce database but is not empty"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        std::fs::read_dir(&photos).unwrap().count(),
        1,
        "nothing was written into it"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let ran = serve(&file);
    assert!(
        ran.stderr.contains("is a file, not a directory"),
        "{}",
        ran.stderr
    );

    // Keys made first, then the server: served.
    let keyed = dir.path().join("keyed");
    create_key(&keyed, "admin");
    std::fs::create_dir(keyed.join("lost+found")).unwrap();
    let server = Server::start_in(&keyed, &[]);
    drop(server);
}

/// A port another process listens on is said at once, before the data
/// directory is made or its database opened (whose recovery can take long).
#[test]
fn a_port_in_use_is_refused_before_the_database_is_opened() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new");
    let ran = run_bounded(
        &["serve", "--data", data.to_str().unwrap(), "--listen", &listen],
        RUN_BOUND,
    );
    assert!(ran.status.is_some_and(|s| !s.success()), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("cannot listen on {listen}")),
        "{}",
        ran.stderr
    );
    assert!(!data.exists(), "the data directory was not made");
}

/// A `TRUCE_LOG` that is no log filter is refused at startup, before the data
/// directory is made: it used to be ignored for the default, and a bare word
/// that is not a level (`verbose`) is a module name to tracing, which left
/// every line out — a quiet log where the operator asked for a loud one.
#[test]
fn a_log_filter_that_means_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["serve", "--data", data.to_str().unwrap(), "--listen", &listen];
    for (log, says) in [
        ("verbose", "\"verbose\" is not a level"),
        ("info,warning", "\"warning\" is not a level"),
        ("truce=loud", "is not a log filter"),
    ] {
        let ran = common::run_bounded_with_log(&args, log, RUN_BOUND);
        assert!(ran.status.is_some_and(|s| !s.success()), "{log}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{log}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("TRUCE_LOG=info,truce::http=debug"),
            "{log}: {}",
            ran.stderr
        );
        assert!(!data.exists(), "{log}: the data directory was not made");
    }
    // Levels, per module, any case: served.
    let mut server = Spawned::start(&args, &[("TRUCE_LOG", "WARN,truce::http=debug")]);
    server.wait_listening(listen.parse().unwrap());
}

/// The filter the server recommends for a line per request (in the refusal
/// of a `TRUCE_LOG` that means nothing, and in docs/http.md) logs one, and
/// turns on no other debug line. It used to be `info,truce_server=debug`,
/// which named no module of the binary (its crate is `truce`, the request
/// lines' target `truce::http`) and so added nothing; `truce=debug` would
/// also turn on the engine's (`truce::engine::…`, `truce::storage::…`).
#[cfg(unix)]
#[test]
fn the_recommended_log_filter_logs_a_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let args = ["serve", "--data", data.to_str().unwrap(), "--listen", &listen];
    let refused = common::run_bounded_with_log(&args, "verbose", RUN_BOUND);
    let recommended = refused
        .stderr
        .split("e.g. TRUCE_LOG=")
        .nth(1)
        .and_then(|rest| rest.split([';', ' ', '\n']).next())
        .unwrap_or_else(|| panic!("no filter recommended: {}", refused.stderr));
    let mut command = Command::new(truce_bin());
    command
        .args(args)
        .env("TRUCE_LOG", recommended)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = Spawned::from_command(command);
    server.wait_listening(addr);
    let answer = common::http_get(&format!("http://{listen}/v1/c"));
    assert_eq!(answer.status(), 200);
    server.signal(libc::SIGTERM);
    assert!(server.exit_within(Duration::from_secs(15)).is_some(), "stops");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut server.take_stderr().unwrap(), &mut log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG truce::http: request") && l.contains("route=\"/v1/c\"")),
        "{recommended}: no request line\n{log}"
    );
    let others: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" DEBUG ") && !l.contains(" DEBUG truce::http: "))
        .collect();
    assert!(others.is_empty(), "{recommended}: other debug lines {others:#?}");
}

/// With `--log-format json`, the reason a server stops at startup is a JSON
/// log line like every other (it was a plain `truce: …` line, the one line a
/// JSON log pipeline could not read).
///
/// So is every other reason once the format is known: settings that do not
/// hold (they were checked before the log was set up, and printed as
/// plain text), a settings file that does not read when the flag says
/// JSON, and a `TRUCE_LOG` that means nothing (said through a log set up
/// with the default filter). A log that leaves errors out (`TRUCE_LOG=off`)
/// still says why, as a plain line: it used to say nothing.
#[test]
fn a_startup_failure_is_logged_as_json_with_json_logs() {
    // Held, so that a server that wrongly started would stop at once.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new");
    let unreadable = dir.path().join("truce.toml");
    std::fs::write(&unreadable, "[unclosed").unwrap();
    let cannot_listen = format!("cannot listen on {listen}");
    let cases: [(&[&str], &str, &str); 6] = [
        (&[], "warn", &cannot_listen),
        (&["--cors-origins", "bad"], "warn", "\"bad\" is not an origin"),
        (&["--hot-spots", "0"], "warn", "hot_spots must be 1 to"),
        (
            &["--tls-cert", "cert.pem"],
            "warn",
            "TLS needs both tls_cert and tls_key",
        ),
        (&[], "verbose", "\"verbose\" is not a level"),
        (
            &["--config", unreadable.to_str().unwrap()],
            "warn",
            "unclosed table",
        ),
    ];
    let base = [
        "serve",
        "--log-format",
        "json",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    for (extra, log, says) in cases {
        let args = [&base[..], extra].concat();
        let ran = common::run_bounded_with_log(&args, log, RUN_BOUND);
        assert!(
            ran.status.is_some_and(|s| !s.success()),
            "{extra:?}: {}",
            ran.stderr
        );
        let lines: Vec<serde_json::Value> = ran
            .stderr
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{extra:?} {log}: not JSON ({e}): {line}"))
            })
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "ERROR" && l["message"].as_str().is_some_and(|m| m.contains(says))),
            "{extra:?} {log}: {}",
            ran.stderr
        );
        assert!(!data.exists(), "{extra:?} {log}: the data directory was not made");
    }
    // A log that leaves errors out still says why, as plain text.
    for (extra, says) in [
        (&["--hot-spots", "0"][..], "truce: hot_spots must be 1 to"),
        (&[], "truce: cannot listen on"),
    ] {
        let args = [&base[..], extra].concat();
        let ran = common::run_bounded_with_log(&args, "off", RUN_BOUND);
        assert!(
            ran.status.is_some_and(|s| !s.success()),
            "{extra:?}: {}",
            ran.stderr
        );
        assert!(ran.stderr.contains(says), "{extra:?}: {}", ran.stderr);
    }
}

/// A reader that goes away (`truce keys list | head -0`) ends the printing
/// commands quietly — it used to panic in `println!` — and ends `truce top`,
/// which used to poll the server until killed.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let server = Server::start();
    let keys = tempfile::tempdir().unwrap();
    let data = keys.path().to_str().unwrap().to_string();
    let closed_pipe = |args: &[&str]| {
        let mut child = Command::new(truce_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("truce");
        drop(child.stdout.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("truce {args:?} kept running with no one reading");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!stderr.contains("panicked"), "truce {args:?}: {stderr}");
        status
    };
    let created = closed_pipe(&["keys", "create", "--role", "read", "--data", &data]);
    assert!(
        created.success() || created.signal() == Some(libc::SIGPIPE),
        "{created:?}"
    );
    let listed = closed_pipe(&["keys", "list", "--data", &data]);
    assert!(
        listed.success() || listed.signal() == Some(libc::SIGPIPE),
        "{listed:?}"
    );
    let watched = closed_pipe(&["top", "--url", &server.url(), "--interval", "0.1"]);
    assert!(watched.success(), "{watched:?}");
}

#[test]
fn config_file_and_environment_set_the_listen_address() {
    let dir = tempfile::tempdir().unwrap();

    // A TOML file given by --config.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.path().join("truce.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &file,
        format!(
            "listen = \"{addr}\"\ndata = {:?}\nmax_body_bytes = 1000\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut from_file = Spawned::start(&["serve", "--config", file.to_str().unwrap()], &[]);
    from_file.wait_listening(addr);
    let api = Api::at(&format!("http://{addr}"));
    api.get("/healthz").ok(200);
    api.put("/v1/c/cfg/a", json!({"pad": "x".repeat(2000)}))
        .error(413, "payload_too_large");
    api.put("/v1/c/cfg/a", json!({})).ok(201);
    assert!(data.exists(), "the file's data directory is used");
    drop(from_file);

    // TRUCE_LISTEN (and TRUCE_DATA) in the environment.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.path().join("from-env");
    let mut from_env = Spawned::start(
        &["serve"],
        &[
            ("TRUCE_LISTEN", &addr.to_string()),
            ("TRUCE_DATA", data.to_str().unwrap()),
        ],
    );
    from_env.wait_listening(addr);
    Api::at(&format!("http://{addr}")).get("/healthz").ok(200);
    assert!(data.exists(), "TRUCE_DATA is used");
    drop(from_env);

    // A flag beats the environment, which beats the file.
    let (flag, env, in_file) = (free_port(), free_port(), free_port());
    let file = dir.path().join("prio.toml");
    std::fs::write(&file, format!("listen = \"127.0.0.1:{in_file}\"\n")).unwrap();
    let data = dir.path().join("prio");
    let listen = format!("127.0.0.1:{flag}");
    let env_listen = format!("127.0.0.1:{env}");
    let mut both = Spawned::start(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            &listen,
            "--data",
            data.to_str().unwrap(),
        ],
        &[("TRUCE_LISTEN", &env_listen)],
    );
    both.wait_listening(listen.parse().unwrap());
    Api::at(&format!("http://{listen}")).get("/healthz").ok(200);
    drop(both);
    let mut env_over_file = Spawned::start(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        &[("TRUCE_LISTEN", &env_listen)],
    );
    env_over_file.wait_listening(env_listen.parse().unwrap());
    Api::at(&format!("http://{env_listen}")).get("/healthz").ok(200);

    // A bad file is refused with its name in the message.
    std::fs::write(&file, "lisen = 1\n").unwrap();
    let ran = run_bounded(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        RUN_BOUND,
    );
    let stderr = ran.stderr;
    assert!(
        ran.status.is_some_and(|s| !s.success()),
        "a bad settings file is refused: {stderr}"
    );
    assert!(stderr.contains("lisen"), "{stderr}");
}
