//! Malformed and hostile requests against the real `truce serve`: each row of a
//! table is sent as raw bytes over its own connection and must get its documented
//! status and error code — never a 5xx, never a hang — and afterwards the server
//! still serves everyone else. Then the connection-level attacks: a slow-loris
//! client and 10,000 idle connections, while a normal client keeps getting answers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::Server;

/// No request of this test may take longer than this to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The body limit the table's server runs with (`--max-body-bytes`): above the
/// 1 MiB document limit, so both limits can be hit.
const BODY_LIMIT_BYTES: usize = 2 * 1024 * 1024;

/// One answer, read off the wire.
struct Answer {
    status: u16,
    body: Value,
    text: String,
}

/// Sends `request` as raw bytes on a new connection and reads the whole answer
/// (the request says `Connection: close`).
fn send_raw(addr: SocketAddr, request: &[u8]) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    // The server may answer (413) and close before reading a big body: a write
    // error after that is fine, the answer is what counts.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) => return Err(format!("no answer: {e} (read {} bytes)", raw.len())),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:.200}"))?;
    let body_text = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body_text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        text: text.chars().take(400).collect(),
    })
}

/// A request with a body and the usual headers.
fn request(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
    let has_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !has_type {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// JSON nested `depth` levels deep: `{"a":{"a":…1…}}`.
fn nested_object(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// `[[[…]]]`, `depth` levels.
fn nested_array(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One row: a name, the raw request, and the documented answer.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        request,
        status,
        code,
    }
}

fn put(path: &str, body: impl AsRef<[u8]>) -> Vec<u8> {
    request("PUT", path, &[], body.as_ref())
}

fn patch(path: &str, body: impl AsRef<[u8]>) -> Vec<u8> {
    request("PATCH", path, &[], body.as_ref())
}

fn get(path: &str) -> Vec<u8> {
    request("GET", path, &[], b"")
}

fn cases() -> Vec<Case> {
    let deep = nested_object(10_000);
    let deep_path = vec!["a"; 33].join(".");
    let deep_array = nested_array(10_000);
    let too_deep_for_a_document = nested_object(40);
    let big_string = "x".repeat(truce::limits::DOC_SIZE_BYTES_MAX + 10);
    let huge_id = "i".repeat(truce::limits::ID_BYTES_MAX + 1);
    let giant_id = "i".repeat(100_000);
    let many_ops: Vec<Value> = (0..=truce::limits::TX_OPS_MAX)
        .map(|i| json!({"op": "put", "c": "t", "id": format!("tx{i}"), "doc": {}}))
        .collect();
    let many_push_rows: Vec<Value> = (0..=truce::limits::TX_OPS_MAX)
        .map(|i| json!({"newDocumentState": {"id": format!("push{i}")}}))
        .collect();
    let many_couch_docs: Vec<Value> = (0..=truce::limits::TX_OPS_MAX)
        .map(|i| json!({"_id": format!("bulk{i}")}))
        .collect();
    vec![
        // Bodies that are not JSON, or not the JSON asked for.
        case("invalid JSON", put("/v1/c/t/a", "not json"), 400, "invalid_json"),
        // The body's framing, not its JSON: a chunk's size that is not hex.
        case(
            "a malformed chunk of a document's body",
            b"PUT /v1/c/t/chunky HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            400,
            "invalid_request",
        ),
        case(
            "a malformed chunk of a transaction's body",
            b"POST /v1/tx HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            400,
            "invalid_request",
        ),
        // Read as it is, a gzipped body was invalid_json, a plain one stored.
        case(
            "a body in Content-Encoding gzip",
            request("PUT", "/v1/c/t/zipped", &[("Content-Encoding", b"gzip")], b"{}"),
            415,
            "unsupported_media_type",
        ),
        // RFC 9112, §6.1: the HTTP library took the chunks and the gzip
        // was left undone: the plain body labelled gzip was stored.
        case(
            "a body in Transfer-Encoding gzip, chunked",
            b"PUT /v1/c/t/zipped HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            501,
            "not_implemented",
        ),
        // CouchDB's name for it (was bad_request).
        case(
            "a /couch _bulk_docs in Transfer-Encoding gzip, chunked",
            b"POST /couch/t/_bulk_docs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            501,
            "not_implemented",
        ),
        case(
            "a /couch _bulk_docs in Content-Encoding gzip",
            request("POST", "/couch/t/_bulk_docs", &[("Content-Encoding", b"gzip")], br#"{"docs": []}"#),
            415,
            "bad_content_type",
        ),
        case(
            "a transaction in Content-Encoding identity, br",
            request("POST", "/v1/tx", &[("Content-Encoding", b"identity, br")], br#"{"ops": []}"#),
            415,
            "unsupported_media_type",
        ),
        // RFC 9112, §3.2: a request names its host once.
        case(
            "Host sent twice",
            request("GET", "/v1/c/t/a", &[("Host", b"localhost")], b""),
            400,
            "invalid_request",
        ),
        case(
            "Host sent twice, on a document write",
            request("PUT", "/v1/c/t/a", &[("Host", b"localhost")], b"{}"),
            400,
            "invalid_request",
        ),
        // Two keys: the server took the first, the caller may have meant the
        // other (a proxy adding its own to the client's).
        case(
            "Authorization sent twice",
            request(
                "GET",
                "/v1/c/t/a",
                &[("Authorization", b"Bearer a"), ("Authorization", b"Bearer b")],
                b"",
            ),
            400,
            "invalid_request",
        ),
        case(
            "an HTTP/1.1 request without Host",
            b"GET /v1/c/t/a HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        case(
            "truncated JSON",
            put("/v1/c/t/a", r#"{"a": [1, 2"#),
            400,
            "invalid_json",
        ),
        case("empty body", put("/v1/c/t/a", ""), 400, "invalid_json"),
        case(
            "trailing garbage",
            put("/v1/c/t/a", r#"{"a":1} x"#),
            400,
            "invalid_json",
        ),
        case(
            "wrong content type",
            request("PUT", "/v1/c/t/a", &[("Content-Type", b"text/plain")], b"hello"),
            400,
            "invalid_json",
        ),
        case(
            "invalid UTF-8 in a body",
            put("/v1/c/t/a", b"{\"a\":\"\xff\xfe\"}"),
            400,
            "invalid_json",
        ),
        case(
            "a body that is an array",
            put("/v1/c/t/a", "[1,2]"),
            400,
            "invalid_document",
        ),
        case(
            "a body that is a string",
            put("/v1/c/t/a", "\"s\""),
            400,
            "invalid_document",
        ),
        case(
            "an update sent as the document to store",
            put("/v1/c/t/a", r#"{"$set": {"x": 1}}"#),
            400,
            "invalid_document",
        ),
        case(
            "a number beyond f64",
            put("/v1/c/t/a", r#"{"n": 1e400}"#),
            400,
            "invalid_json",
        ),
        case(
            "a 10,000-digit number",
            put("/v1/c/t/a", format!(r#"{{"n": {}}}"#, "9".repeat(10_000))),
            400,
            "invalid_json",
        ),
        // Deep nesting: the JSON parser's recursion limit, then the document's.
        case(
            "document nested 10,000 levels",
            put("/v1/c/t/a", &deep),
            400,
            "invalid_json",
        ),
        case(
            "arrays nested 10,000 levels",
            put("/v1/c/t/a", format!(r#"{{"a": {deep_array}}}"#)),
            400,
            "invalid_json",
        ),
        case(
            "document nested 40 levels",
            put("/v1/c/t/a", &too_deep_for_a_document),
            400,
            "invalid_document",
        ),
        case(
            "update nested 10,000 levels",
            patch("/v1/c/t/a", format!(r#"{{"$set": {{"a": {deep}}}}}"#)),
            400,
            "invalid_json",
        ),
        case(
            "filter nested 10,000 levels",
            patch("/v1/c/t/a", format!(r#"{{"$set": {{"a": 1}}, "$if": {deep}}}"#)),
            400,
            "invalid_json",
        ),
        case(
            "update nested 40 levels",
            patch(
                "/v1/c/t/s",
                format!(r#"{{"$set": {{"a": {too_deep_for_a_document}}}}}"#),
            ),
            400,
            "invalid_document",
        ),
        case(
            "filter of 60 nested $not",
            patch(
                "/v1/c/t/a",
                format!(
                    r#"{{"$set": {{"a": 1}}, "$if": {{"a": {}1{}}}}}"#,
                    "{\"$not\":".repeat(60),
                    "}".repeat(60)
                ),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            // 3,000: 10,000 would pass the 32 KiB a request line may take.
            "query value nested 3,000 levels",
            get(&format!("/v1/c/t?gt={}", url_encode(&nested_array(3_000)))),
            400,
            "invalid_query",
        ),
        case(
            "transaction nested 10,000 levels",
            request(
                "POST",
                "/v1/tx",
                &[],
                format!(r#"{{"ops": [{{"op": "put", "c": "t", "id": "d", "doc": {deep}}}]}}"#).as_bytes(),
            ),
            400,
            "invalid_json",
        ),
        // Ids and collection names.
        case(
            "id over the id limit",
            put(&format!("/v1/c/t/{huge_id}"), "{}"),
            400,
            "invalid_id",
        ),
        // hyper refuses a request line and headers past 32 KiB
        // (HTTP1_HEAD_BYTES_MAX) before Truce sees them; 24 kB are served.
        case("a 100 kB id", put(&format!("/v1/c/t/{giant_id}"), "{}"), 431, ""),
        case(
            "40 kB of headers",
            request("GET", "/healthz", &[("x-big", "a".repeat(40_000).as_bytes())], b""),
            431,
            "",
        ),
        case(
            "24 kB of headers",
            request("GET", "/v1/c/t/s", &[("x-big", "a".repeat(24_000).as_bytes())], b""),
            200,
            "",
        ),
        case(
            "id with a control character",
            put("/v1/c/t/a%01b", "{}"),
            400,
            "invalid_id",
        ),
        case(
            "id that is invalid UTF-8",
            put("/v1/c/t/%FF%FE", "{}"),
            400,
            "invalid_id",
        ),
        case(
            "dropping an index by a name no index can have",
            request("DELETE", "/v1/c/t/_indexes/1bad", &[], b""),
            400,
            "invalid_index",
        ),
        case(
            "an index name that is invalid UTF-8",
            put("/v1/c/t/_indexes/%FF", r#"{"fields": ["k"]}"#),
            400,
            "invalid_index",
        ),
        case(
            "a collection name that is invalid UTF-8",
            get("/v1/c/%FF/_indexes"),
            400,
            "invalid_collection",
        ),
        // Kept as it is, `a%zz` named the document `a%25zz` names.
        case("an id with a malformed escape", put("/v1/c/t/a%zz", "{}"), 400, "invalid_id"),
        case("an id ending in a bare %", get("/v1/c/t/a%"), 400, "invalid_id"),
        case("an id ending in half an escape", request("DELETE", "/v1/c/t/a%2", &[], b""), 400, "invalid_id"),
        case("id starting with _", get("/v1/c/t/_secret"), 400, "invalid_id"),
        // URL resolution removes these segments, so no URL could name such a
        // document again: no write makes one.
        case("the id .", put("/v1/c/t/.", "{}"), 400, "invalid_id"),
        case("the id .., percent-encoded", put("/v1/c/t/%2E%2E", "{}"), 400, "invalid_id"),
        // One stored before the rule can still be read (and deleted).
        case("reading the id ..", get("/v1/c/t/%2E%2E"), 404, "not_found"),
        case(
            "the id .. in a transaction",
            request(
                "POST",
                "/v1/tx",
                &[],
                br#"{"ops": [{"op": "put", "c": "t", "id": "..", "doc": {}}]}"#,
            ),
            400,
            "invalid_id",
        ),
        // serde_json alone keeps the last of two equal keys: the create asked
        // for first would be a write guarded by version 5.
        case(
            "a key named twice",
            put("/v1/c/t/a", r#"{"_version": 0, "_version": 5}"#),
            400,
            "invalid_json",
        ),
        case(
            "bad collection name",
            put("/v1/c/9lives/a", "{}"),
            400,
            "invalid_collection",
        ),
        case(
            "collection name too long",
            put(&format!("/v1/c/{}/a", "c".repeat(65)), "{}"),
            400,
            "invalid_collection",
        ),
        // Server metadata in bodies.
        case(
            "a _ field in a body",
            put("/v1/c/t/a", r#"{"_secret": 1}"#),
            400,
            "reserved_field",
        ),
        case(
            "_id in a body",
            put("/v1/c/t/a", r#"{"_id": "b"}"#),
            400,
            "reserved_field",
        ),
        case(
            "_version that is a string",
            put("/v1/c/t/a", r#"{"_version": "1"}"#),
            400,
            "invalid_precondition",
        ),
        case(
            "_version below -1",
            put("/v1/c/t/a", r#"{"_version": -2}"#),
            400,
            "invalid_precondition",
        ),
        case(
            "_rev that is not a revision",
            put("/v1/c/t/a", r#"{"_rev": "garbage"}"#),
            400,
            "invalid_precondition",
        ),
        case(
            "$set of a _ field",
            patch("/v1/c/t/a", r#"{"$set": {"_seq": 1}}"#),
            400,
            "reserved_field",
        ),
        // Operators.
        case(
            "unknown operator",
            patch("/v1/c/t/a", r#"{"$frobnicate": {"a": 1}}"#),
            400,
            "invalid_operator",
        ),
        case(
            "a replacement body in PATCH",
            patch("/v1/c/t/a", r#"{"a": 1}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$inc by a string",
            patch("/v1/c/t/a", r#"{"$inc": {"n": "one"}}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$set that is not an object",
            patch("/v1/c/t/a", r#"{"$set": 5}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$inc of a string field",
            patch("/v1/c/t/s", r#"{"$inc": {"name": 1}}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$inc that overflows",
            patch("/v1/c/t/s", r#"{"$inc": {"big": 1.7e308}}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$upsert that is not a boolean",
            patch("/v1/c/t/a", r#"{"$set": {"a": 1}, "$upsert": "yes"}"#),
            400,
            "invalid_operator",
        ),
        case(
            "$else that is unknown",
            patch("/v1/c/t/a", r#"{"$set": {"a": 1}, "$if": {}, "$else": "maybe"}"#),
            400,
            "invalid_operator",
        ),
        case(
            "unknown filter operator",
            patch(
                "/v1/c/t/a",
                r#"{"$set": {"a": 1}, "$if": {"a": {"$regex": "x"}}}"#,
            ),
            400,
            "invalid_filter",
        ),
        case(
            "$in that is not a list",
            patch("/v1/c/t/a", r#"{"$set": {"a": 1}, "$if": {"a": {"$in": 5}}}"#),
            400,
            "invalid_filter",
        ),
        case(
            "a path with empty segments",
            patch("/v1/c/t/a", r#"{"$set": {"a..b": 1}}"#),
            400,
            "invalid_operator",
        ),
        // Sizes.
        case(
            "a document over 1 MiB",
            put("/v1/c/t/a", format!(r#"{{"s": "{big_string}"}}"#)),
            413,
            "payload_too_large",
        ),
        case(
            "a body over the body limit",
            put(
                "/v1/c/t/a",
                format!(r#"{{"s": "{}"}}"#, "x".repeat(BODY_LIMIT_BYTES)),
            ),
            413,
            "payload_too_large",
        ),
        case(
            "a transaction of too many ops",
            request(
                "POST",
                "/v1/tx",
                &[],
                json!({"ops": many_ops}).to_string().as_bytes(),
            ),
            413,
            "limit_exceeded",
        ),
        // Rows applied one by one, but refused whole past TX_OPS_MAX (the
        // test checks after the table that none was written).
        case(
            "a push of too many rows",
            request(
                "POST",
                "/v1/c/t/_push",
                &[],
                json!(many_push_rows).to_string().as_bytes(),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "a /couch _bulk_docs of too many rows",
            request(
                "POST",
                "/couch/t/_bulk_docs",
                &[],
                json!({"docs": many_couch_docs}).to_string().as_bytes(),
            ),
            413,
            "too_large",
        ),
        // Transactions.
        case(
            "ops that are not a list",
            request("POST", "/v1/tx", &[], br#"{"ops": "x"}"#),
            400,
            "invalid_transaction",
        ),
        case(
            "an unknown op",
            request(
                "POST",
                "/v1/tx",
                &[],
                br#"{"ops": [{"op": "upsert", "c": "t", "id": "a"}]}"#,
            ),
            400,
            "invalid_transaction",
        ),
        case(
            "an op without an id",
            request(
                "POST",
                "/v1/tx",
                &[],
                br#"{"ops": [{"op": "put", "c": "t", "doc": {}}]}"#,
            ),
            400,
            "invalid_transaction",
        ),
        // Query parameters.
        case(
            "limit that is not a number",
            get("/v1/c/t?limit=abc"),
            400,
            "invalid_query",
        ),
        case(
            "limit over the maximum",
            get("/v1/c/t?limit=100000"),
            400,
            "invalid_query",
        ),
        case("a negative limit", get("/v1/c/t?limit=-1"), 400, "invalid_query"),
        // Decoded leniently, `%zz` was kept as typed and `%FF` became
        // U+FFFD: bounds and keys that matched documents never named.
        case(
            "a query value with a % that two hex digits do not follow",
            get("/v1/c/t?gte=%22a%zz%22"),
            400,
            "invalid_query",
        ),
        case(
            "a query value that is not UTF-8 once decoded",
            get("/v1/c/t?gte=%22%FF%22"),
            400,
            "invalid_query",
        ),
        case(
            "a query name with a malformed escape",
            get("/v1/c/t?li%mit=1"),
            400,
            "invalid_query",
        ),
        case(
            "a /couch key that is not UTF-8 once decoded",
            get("/couch/t/_all_docs?keys=%5B%22%FF%22%5D"),
            400,
            "bad_request",
        ),
        case(
            "a bound that is not JSON",
            get("/v1/c/t?gt=%7Bnope"),
            400,
            "invalid_query",
        ),
        case(
            "a cursor that is not one",
            get("/v1/c/t?after=zz"),
            400,
            "invalid_query",
        ),
        case(
            "a cursor of another collection",
            get("/v1/c/t?after=7500"),
            400,
            "invalid_query",
        ),
        case(
            "an unknown order",
            get("/v1/c/t?order=sideways"),
            400,
            "invalid_query",
        ),
        case("an unknown index", get("/v1/c/t?index=nope"), 404, "not_found"),
        case(
            "since that is negative",
            get("/v1/c/t/_changes?since=-1"),
            400,
            "invalid_query",
        ),
        case(
            "since beyond u64",
            get("/v1/c/t/_changes?since=99999999999999999999999"),
            400,
            "invalid_query",
        ),
        case(
            "an unknown feed",
            get("/v1/c/t/_changes?feed=carrier-pigeon"),
            400,
            "invalid_query",
        ),
        case(
            "a checkpoint that is not JSON",
            get("/v1/c/t/_pull?checkpoint=%7B"),
            400,
            "invalid_query",
        ),
        case(
            "a checkpoint of the wrong shape",
            get("/v1/c/t/_pull?checkpoint=%5B1%5D"),
            400,
            "invalid_query",
        ),
        case(
            "a query string that is invalid UTF-8",
            get("/v1/c/t?limit=%FF"),
            400,
            "invalid_query",
        ),
        // Headers.
        case(
            "If-Match that is garbage",
            request("PUT", "/v1/c/t/a", &[("If-Match", b"garbage")], b"{}"),
            400,
            "invalid_precondition",
        ),
        case(
            "If-Match with a weak tag",
            request("PUT", "/v1/c/t/a", &[("If-Match", b"W/\"1-00000000000000000000000000000000\"")], b"{}"),
            400,
            "invalid_precondition",
        ),
        case(
            "If-Match that is not ASCII",
            request("PUT", "/v1/c/t/a", &[("If-Match", b"\"\xff\xfe\"")], b"{}"),
            400,
            "invalid_precondition",
        ),
        case(
            "two preconditions",
            request("PUT", "/v1/c/t/a", &[("If-Match", b"*")], br#"{"_version": 1}"#),
            400,
            "invalid_precondition",
        ),
        // What the OpenAPI document says with `not` and `anyOf`
        // (`one_precondition_per_body`, `UpdateBody`).
        case(
            "_version and _rev in one body",
            put(
                "/v1/c/t/a",
                r#"{"_version": 1, "_rev": "1-00000000000000000000000000000000"}"#,
            ),
            400,
            "invalid_precondition",
        ),
        case(
            "_version and _rev in one update",
            patch(
                "/v1/c/t/a",
                r#"{"$set": {"a": 1}, "_version": 1, "_rev": "1-00000000000000000000000000000000"}"#,
            ),
            400,
            "invalid_precondition",
        ),
        // DELETE's query-string preconditions are refused on PUT and PATCH,
        // on the direct path and (a percent-encoded id) through the router.
        case(
            "PATCH with ?version=",
            patch("/v1/c/t/a?version=1", r#"{"$inc": {"n": 1}}"#),
            400,
            "invalid_precondition",
        ),
        case(
            "PATCH through the router with ?version=",
            patch("/v1/c/t/%61?limit=2&version=-1", r#"{"$inc": {"n": 1}}"#),
            400,
            "invalid_precondition",
        ),
        case(
            "PUT with ?rev=",
            put("/v1/c/t/a?rev=1-00000000000000000000000000000000", "{}"),
            400,
            "invalid_precondition",
        ),
        case(
            "PUT through the router with ?rev=",
            put("/v1/c/t/%61?rev=x", "{}"),
            400,
            "invalid_precondition",
        ),
        // A misspelt key in a transaction would drop a precondition.
        case(
            "a transaction op with a misspelt version",
            request(
                "POST",
                "/v1/tx",
                &[],
                br#"{"ops": [{"op": "patch", "c": "t", "id": "s", "update": {"$inc": {"n": 1}}, "verison": 99}]}"#,
            ),
            400,
            "invalid_transaction",
        ),
        case(
            "a transaction check that carries a doc",
            request(
                "POST",
                "/v1/tx",
                &[],
                br#"{"ops": [{"op": "check", "c": "t", "id": "s", "doc": {}}]}"#,
            ),
            400,
            "invalid_transaction",
        ),
        case(
            "a transaction with a key besides ops and source",
            request("POST", "/v1/tx", &[], br#"{"ops": [{"op": "check", "c": "t", "id": "s"}], "sorce": "x"}"#),
            400,
            "invalid_transaction",
        ),
        // Index declarations: a typo must not give a different index for good.
        case(
            "an index declaration with a misspelt unique",
            put("/v1/c/t/_indexes/by_k", r#"{"fields": ["k"], "uniq": true}"#),
            400,
            "invalid_index",
        ),
        case(
            "an index on a metadata field",
            put("/v1/c/t/_indexes/by_id", r#"{"fields": ["_id"]}"#),
            400,
            "invalid_index",
        ),
        case(
            "an index that lists a field twice",
            put("/v1/c/t/_indexes/by_kk", r#"{"fields": ["k", "k"]}"#),
            400,
            "invalid_index",
        ),
        case("a query of an index named nothing", get("/v1/c/t?index="), 400, "invalid_index"),
        case("a query of an index named 1bad", get("/v1/c/t?index=1bad"), 400, "invalid_index"),
        // A path past PATH_SEGMENTS_MAX is the limit wherever it is met.
        case(
            "an index on a path of 33 segments",
            put("/v1/c/t/_indexes/deep", format!(r#"{{"fields": ["{deep_path}"]}}"#)),
            413,
            "limit_exceeded",
        ),
        case(
            "a TTL field of 33 segments",
            put("/v1/c/t/_config", format!(r#"{{"ttl": {{"field": "{deep_path}", "seconds": 60}}}}"#)),
            413,
            "limit_exceeded",
        ),
        case(
            "a counter grouping by a path of 33 segments",
            put(
                "/v1/c/t/_config",
                format!(
                    r#"{{"counters": [{{"name": "n", "group_by": "{deep_path}", "target": {{"c": "u", "field": "n"}}}}]}}"#
                ),
            ),
            413,
            "limit_exceeded",
        ),
        // A declaration stays in memory while it stands: its bytes are bounded.
        case(
            "an index on a field path past INDEX_FIELD_BYTES_MAX",
            put(
                "/v1/c/t/_indexes/long",
                format!(r#"{{"fields": ["{}"]}}"#, "f".repeat(truce::limits::INDEX_FIELD_BYTES_MAX + 1)),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "a configuration past CONFIG_BYTES_MAX",
            put(
                "/v1/c/t/_config",
                format!(
                    r#"{{"counters": [{{"name": "n", "group_by": "g", "where": {{"s": "{}"}}, "target": {{"c": "u", "field": "n"}}}}]}}"#,
                    "x".repeat(truce::limits::CONFIG_BYTES_MAX)
                ),
            ),
            413,
            "limit_exceeded",
        ),
        // A misspelt query parameter would answer as if it were absent.
        case("a feed with since misspelt", get("/v1/c/t/_changes?sinse=5"), 400, "invalid_query"),
        case("the global feed with an unknown parameter", get("/v1/_changes?style=all_docs"), 400, "invalid_query"),
        case("a parameter given twice", get("/v1/c/t?limit=2&limit=3"), 400, "invalid_query"),
        case("a feed parameter given twice", get("/v1/_changes?since=0&since=5"), 400, "invalid_query"),
        case("a query with where=", get("/v1/c/t?where=x"), 400, "invalid_query"),
        case("insights with window misspelt", get("/v1/insights?windw=5"), 400, "invalid_query"),
        case("a document read with ?rev=", get("/v1/c/t/s?rev=1-00000000000000000000000000000000"), 400, "invalid_query"),
        case("a document read through the router with ?x=", get("/v1/c/t/%73?x=1"), 400, "invalid_query"),
        case("a PATCH with ?x=", patch("/v1/c/t/s?x=1", r#"{"$inc": {"n": 1}}"#), 400, "invalid_query"),
        case(
            "a transaction with a query parameter",
            request("POST", "/v1/tx?dry_run=true", &[], br#"{"ops": [{"op": "check", "c": "t", "id": "s"}]}"#),
            400,
            "invalid_query",
        ),
        case("the collections with a query parameter", get("/v1/c?prefix=a"), 400, "invalid_query"),
        case("the indexes with a query parameter", get("/v1/c/t/_indexes?all=1"), 400, "invalid_query"),
        case("the config with a query parameter", get("/v1/c/t/_config?x=1"), 400, "invalid_query"),
        case("the outbox with a query parameter", get("/v1/_outbox?x=1"), 400, "invalid_query"),
        case(
            "DELETE with version misspelt",
            request("DELETE", "/v1/c/t/s?versoin=1", &[], b""),
            400,
            "invalid_query",
        ),
        // The rows of docs/http.md's "Limits" that one request reaches.
        case(
            "an update of 257 paths",
            patch(
                "/v1/c/t/s",
                json!({"$set": (0..=truce::limits::UPDATE_PATHS_MAX)
                    .map(|i| (format!("f{i}"), json!(1)))
                    .collect::<serde_json::Map<_, _>>()})
                .to_string(),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "a path of 33 segments",
            patch(
                "/v1/c/t/s",
                json!({"$set": {vec!["a"; truce::limits::PATH_SEGMENTS_MAX + 1].join("."): 1}}).to_string(),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "a filter of 257 nodes",
            patch(
                "/v1/c/t/s",
                json!({"$set": {"a": 1}, "$if": {"$or": (0..=truce::limits::FILTER_NODES_MAX)
                    .map(|i| json!({"a": i}))
                    .collect::<Vec<_>>()}})
                .to_string(),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "an index of 9 fields",
            put(
                "/v1/c/t/_indexes/nine",
                json!({"fields": (0..=truce::limits::INDEX_FIELDS_MAX).map(|i| format!("f{i}")).collect::<Vec<_>>()})
                    .to_string(),
            ),
            400,
            "invalid_index",
        ),
        case("a feed page of 0", get("/v1/c/t/_changes?limit=0"), 400, "invalid_query"),
        case(
            "a malformed long-poll timeout on a feed that does not wait",
            get("/v1/c/t/_changes?timeout=abc"),
            400,
            "invalid_query",
        ),
        case(
            "a feed page over the maximum",
            get(&format!("/v1/c/t/_changes?limit={}", truce::limits::CHANGES_LIMIT_MAX + 1)),
            400,
            "invalid_query",
        ),
        case(
            "17 counters",
            put(
                "/v1/c/cc/_config",
                json!({"counters": (0..=truce::limits::COUNTERS_PER_COLLECTION_MAX)
                    .map(|i| json!({"name": format!("n{i}"), "target": {"c": "tot", "field": "n"}, "group_by": "g"}))
                    .collect::<Vec<_>>()})
                .to_string(),
            ),
            413,
            "limit_exceeded",
        ),
        case(
            "a TTL over ten years",
            put(
                "/v1/c/cc/_config",
                json!({"ttl": {"field": "e", "seconds": truce::limits::TTL_SECONDS_MAX + 1}}).to_string(),
            ),
            400,
            "invalid_config",
        ),
        case(
            "tombstones kept for no time",
            put(
                "/v1/c/cc/_config",
                json!({"tombstones": {"keep_seconds": 0}}).to_string(),
            ),
            400,
            "invalid_config",
        ),
        case(
            "tombstones kept over ten years",
            put(
                "/v1/c/cc/_config",
                json!({"tombstones": {"keep_seconds": truce::limits::TOMBSTONE_KEEP_SECONDS_MAX + 1}})
                    .to_string(),
            ),
            400,
            "invalid_config",
        ),
        case(
            "an update whose operators name no path",
            patch("/v1/c/t/a", r#"{"$set": {}, "$inc": {}, "$upsert": true}"#),
            400,
            "invalid_operator",
        ),
        case(
            "an Idempotency-Key with a control character",
            request("PUT", "/v1/c/t/a", &[("Idempotency-Key", b"k\tk")], b"{}"),
            400,
            "invalid_transaction",
        ),
        case(
            "DELETE without a precondition",
            request("DELETE", "/v1/c/t/s", &[], b""),
            428,
            "precondition_required",
        ),
        case(
            "DELETE with version=abc",
            request("DELETE", "/v1/c/t/s?version=abc", &[], b""),
            400,
            "invalid_precondition",
        ),
        case(
            "an empty Idempotency-Key",
            request("PUT", "/v1/c/t/a", &[("Idempotency-Key", b"")], b"{}"),
            400,
            "invalid_transaction",
        ),
        case(
            "an Idempotency-Key over 255 bytes",
            request(
                "PUT",
                "/v1/c/t/a",
                &[("Idempotency-Key", "k".repeat(256).as_bytes())],
                b"{}",
            ),
            400,
            "invalid_transaction",
        ),
        case(
            "an Idempotency-Key that is not ASCII",
            request("PUT", "/v1/c/t/a", &[("Idempotency-Key", b"\xff")], b"{}"),
            400,
            "invalid_transaction",
        ),
        case(
            "a Truce-Attempt that is garbage",
            request("GET", "/v1/c/t/s", &[("Truce-Attempt", b"many")], b""),
            200,
            "",
        ),
        // Routes.
        case("an unknown route", get("/v1/nothing-here"), 404, "not_found"),
        case(
            "a method a route does not have",
            request("POST", "/v1/c/t/s", &[], b"{}"),
            405,
            "method_not_allowed",
        ),
    ]
}

#[test]
fn every_malformed_request_gets_its_documented_error() {
    let limit = BODY_LIMIT_BYTES.to_string();
    let server = Server::start_with(&["--max-body-bytes", &limit]);
    let setup = put("/v1/c/t/s", r#"{"name": "a string", "big": 1.7e308}"#);
    assert_eq!(send_raw(server.addr, &setup).unwrap().status, 201);
    let mut wrong = Vec::new();
    for case in cases() {
        let started = Instant::now();
        let answer = send_raw(server.addr, &case.request);
        let outcome = match &answer {
            Ok(a) => format!("{} {}", a.status, a.body["error"].as_str().unwrap_or("")),
            Err(e) => e.clone(),
        };
        let expected = format!("{} {}", case.status, case.code);
        if outcome.trim() != expected.trim() {
            let text = answer.map(|a| a.text).unwrap_or_default();
            wrong.push(format!(
                "{}: expected {expected}, got {outcome} in {:?}\n    {text}",
                case.name,
                started.elapsed()
            ));
        }
        // The server still answers a normal request after each one.
        let health = send_raw(server.addr, &get("/healthz")).expect("healthz answers");
        assert_eq!(health.status, 200, "after {}", case.name);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows answered wrongly:\n{}",
        wrong.len(),
        cases().len(),
        wrong.join("\n")
    );
    let after = put("/v1/c/t/after", r#"{"ok": true}"#);
    assert_eq!(send_raw(server.addr, &after).unwrap().status, 201);
    // Each is the client's doing, the 501 of a transfer coding too: none is
    // logged as the server's fault (its `warn` line, throttled, would
    // hide a real one behind a client's flood). The 501s were answered and
    // counted; the requests after them give the log's reader time to catch up.
    let metrics = common::http_get(&format!("{}/metrics", server.url()));
    let metrics = metrics.text().expect("metrics");
    assert!(metrics.contains("status=\"501\""), "the 501s were counted");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    assert!(
        !log.contains("status=5"),
        "a client's request logged as a 5xx:\n{log}"
    );
    // Nothing of a push or `_bulk_docs` refused for its rows was written.
    for id in ["push0", "push1000", "bulk0", "bulk1000"] {
        let answer = send_raw(server.addr, &get(&format!("/v1/c/t/{id}"))).unwrap();
        assert_eq!(answer.status, 404, "{id}: {}", answer.text);
    }
}

/// The malformed requests docs/http.md says hyper refuses before Truce sees
/// them: 400 with an empty body, the connection closed. Their neighbours
/// that pass hyper are Truce's to answer (here with its JSON errors).
#[test]
fn requests_hyper_refuses_get_an_empty_400() {
    let server = Server::start();
    let head = |line: &str, headers: &[u8]| {
        let mut raw = format!("{line}\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
        raw.extend_from_slice(headers);
        raw.extend_from_slice(b"\r\n");
        raw
    };
    // Each to a new document: a PUT over one is a conflict.
    let next = std::cell::Cell::new(0);
    let put = |headers: &[u8], body: &[u8]| {
        next.set(next.get() + 1);
        let mut raw = head(&format!("PUT /v1/c/h/{} HTTP/1.1", next.get()), headers);
        raw.extend_from_slice(body);
        raw
    };
    let refused: [(&str, Vec<u8>); 12] = [
        (
            "a control byte in a header value",
            head("GET /healthz HTTP/1.1", b"X-A: a\x01b\r\n"),
        ),
        (
            "DEL in a header value",
            head("GET /healthz HTTP/1.1", b"X-A: a\x7fb\r\n"),
        ),
        ("obs-fold", head("GET /healthz HTTP/1.1", b"X-A: a\r\n b\r\n")),
        (
            "conflicting Content-Length",
            put(b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
        ),
        ("a Content-Length list", put(b"Content-Length: 2, 2\r\n", b"{}")),
        (
            "a Content-Length that is no number",
            put(b"Content-Length: -2\r\n", b"{}"),
        ),
        (
            "Transfer-Encoding gzip",
            put(b"Transfer-Encoding: gzip\r\n", b"{}"),
        ),
        (
            "Transfer-Encoding chunked, gzip",
            put(b"Transfer-Encoding: chunked, gzip\r\n", b"{}"),
        ),
        ("a method that is no token", head("G(T /healthz HTTP/1.1", b"")),
        ("a control byte in the target", head("GET /a\x01b HTTP/1.1", b"")),
        ("< in the target", head("GET /a<b HTTP/1.1", b"")),
        ("HTTP/1.7", head("GET /healthz HTTP/1.7", b"")),
    ];
    for (what, raw) in refused {
        let answer = send_raw(server.addr, &raw).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (head, body) = answer.text.split_once("\r\n\r\n").unwrap_or((&answer.text, ""));
        assert_eq!(answer.status, 400, "{what}: {}", answer.text);
        assert_eq!(body, "", "{what}: {}", answer.text);
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{what}: {}",
            answer.text
        );
    }
    // Their neighbours reach Truce: a tab or UTF-8 in a header value, the
    // same Content-Length twice, `chunked` last, `{` in the target.
    let passed: [(&str, Vec<u8>, u16); 6] = [
        (
            "a tab and UTF-8 in a header value",
            head("GET /healthz HTTP/1.1", "X-A: a\tb \u{e9}\r\n".as_bytes()),
            200,
        ),
        (
            "the same Content-Length twice",
            put(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
            201,
        ),
        (
            "Transfer-Encoding gzip, chunked (read as chunked; Truce refuses the gzip it would not undo)",
            put(b"Transfer-Encoding: gzip, chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
            501,
        ),
        (
            "Transfer-Encoding Chunked, in any case",
            put(b"Transfer-Encoding:  Chunked \r\n", b"2\r\n{}\r\n0\r\n\r\n"),
            201,
        ),
        (
            "a malformed chunk",
            put(b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
            400,
        ),
        ("{ in the target", head("GET /v1/c/h/{a} HTTP/1.1", b""), 404),
    ];
    for (what, raw, status) in passed {
        let answer = send_raw(server.addr, &raw).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer.status, status, "{what}: {}", answer.text);
        assert!(
            answer.body["error"].is_string() || status < 400,
            "{what}: {}",
            answer.text
        );
    }
}

/// The rows of docs/http.md's "Limits" that take more than one request, or a
/// body over the table's server's limit.
#[test]
fn limits_that_take_setup_answer_as_documented() {
    let server = Server::start();
    let expect = |request: Vec<u8>, status: u16, code: &str| {
        let answer = send_raw(server.addr, &request).expect("an answer");
        assert_eq!(
            (answer.status, answer.body["error"].as_str().unwrap_or("")),
            (status, code),
            "{}",
            answer.text
        );
    };
    for i in 0..truce::limits::INDEXES_PER_COLLECTION_MAX {
        let answer = send_raw(
            server.addr,
            &put(
                &format!("/v1/c/ix/_indexes/i{i}"),
                json!({"fields": [format!("f{i}")]}).to_string(),
            ),
        )
        .expect("an answer");
        assert!(matches!(answer.status, 200 | 202), "{}", answer.text);
    }
    expect(
        put("/v1/c/ix/_indexes/one_more", r#"{"fields": ["g"]}"#),
        413,
        "limit_exceeded",
    );
    // 17 documents of ~1 MB each: under the 20 MiB body limit, over 16 MiB written.
    let big = "a".repeat(1_000_000);
    let ops: Vec<Value> = (0..17)
        .map(|i| json!({"op": "put", "c": "t", "id": format!("w{i}"), "doc": {"x": big}}))
        .collect();
    let body = json!({ "ops": ops }).to_string();
    expect(
        request("POST", "/v1/tx", &[], body.as_bytes()),
        413,
        "limit_exceeded",
    );
    // More values than a body may hold (JSON_VALUES_MAX): 3 MB of empty
    // arrays took some 200 MB to read; the fast path's PATCH likewise.
    let values = truce_server::wire::JSON_VALUES_MAX;
    let arrays = format!("[{}[]]", "[],".repeat(values));
    for (method, path) in [
        ("POST", "/v1/tx"),
        ("PATCH", "/v1/c/t/w0"),
        ("POST", "/v1/c/t/_push"),
    ] {
        let answer =
            send_raw(server.addr, &request(method, path, &[], arrays.as_bytes())).expect("an answer");
        assert_eq!(answer.status, 413, "{method} {path}: {}", answer.text);
        assert_eq!(answer.body["error"], "limit_exceeded", "{}", answer.text);
        assert!(answer.text.contains("JSON_VALUES_MAX"), "{}", answer.text);
    }
    // As many as it may: read (and then refused for its shape).
    let most = format!("[{}0]", "0,".repeat(values - 2));
    expect(
        request("POST", "/v1/tx", &[], most.as_bytes()),
        400,
        "invalid_transaction",
    );
    filters_that_would_compare_too_much_are_refused(&server);
}

/// FILTER_STEPS_MAX: filters over a 140,000-element array, alone and
/// shared by the ops of a transaction.
fn filters_that_would_compare_too_much_are_refused(server: &Server) {
    let send = |request: Vec<u8>| send_raw(server.addr, &request).expect("an answer");
    let numbers: Vec<u64> = (0..140_000).collect();
    for id in ["a", "b", "c"] {
        let answer = send(put(
            &format!("/v1/c/big/{id}"),
            json!({ "a": numbers }).to_string(),
        ));
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    // An `$if` of `clauses` equality tests of `a`, 140,001 steps each; the
    // last holds.
    let update = |clauses: i64| {
        let mut or: Vec<Value> = (1..clauses).map(|k| json!({"a": -k})).collect();
        or.push(json!({"a": 139_999}));
        json!({"$inc": {"b": 1}, "$if": {"$or": or}})
    };
    let version = || send(request("GET", "/v1/c/big/a", &[], b"")).body["_version"].clone();
    let refused = |answer: &Answer| {
        assert_eq!(answer.status, 413, "{}", answer.text);
        assert_eq!(answer.body["error"], "limit_exceeded", "{}", answer.text);
        assert!(answer.text.contains("FILTER_STEPS_MAX"), "{}", answer.text);
    };
    refused(&send(patch("/v1/c/big/a", update(30).to_string())));
    // Three ops of 10 clauses: each would fit alone, not together.
    let ops: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|id| json!({"op": "patch", "c": "big", "id": id, "update": update(10)}))
        .collect();
    refused(&send(request(
        "POST",
        "/v1/tx",
        &[],
        json!({ "ops": ops }).to_string().as_bytes(),
    )));
    assert_eq!(version(), 1, "nothing was written");
    let answer = send(request(
        "POST",
        "/v1/tx",
        &[],
        json!({ "ops": &ops[..1] }).to_string().as_bytes(),
    ));
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(version(), 2);
}

/// The server's `HEADER_READ_TIMEOUT_MS` (serve.rs): how long a client may take
/// to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `serve.rs`'s `HTTP2_PING_MS`.
const HTTP2_PING: Duration = Duration::from_secs(20);

/// Slack for a loaded 2-core machine on top of a server-side timeout.
const SLACK: Duration = Duration::from_secs(5);

/// A normal client's request must be answered within this while the attacks run.
const PROMPT: Duration = Duration::from_secs(5);

/// Asserts the server answers a normal read and write promptly.
fn assert_serving(addr: SocketAddr, what: &str) {
    for request in [
        get("/healthz"),
        put(&format!("/v1/c/t/{what}"), "{}"),
        get(&format!("/v1/c/t/{what}")),
    ] {
        let started = Instant::now();
        let answer = send_raw(addr, &request).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(answer.status < 300, "{what}: {}", answer.text);
        assert!(
            started.elapsed() < PROMPT,
            "{what}: answered in {:?}",
            started.elapsed()
        );
    }
}

/// Sends a request's headers one byte a second until the server cuts the
/// connection off; returns how long that took (or `None` if it never did
/// within `give_up`).
fn dribble_headers(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut header = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'x'));
    while started.elapsed() < give_up {
        if stream.write_all(&[*header.next().unwrap()]).is_err() {
            return Some(started.elapsed());
        }
        if cut_off(&stream, Duration::from_secs(1)) {
            return Some(started.elapsed());
        }
    }
    None
}

/// Opens an HTTP/2 connection (the preface and an empty SETTINGS frame) and
/// says nothing more, answering none of the server's pings; how long until
/// the server closes it (`None` if it has not within `give_up`). It used to
/// be held for ever: HTTP/2 had no timeout of any kind.
fn silent_http2(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("the preface");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("set a read timeout");
    let mut buffer = [0u8; 512];
    while started.elapsed() < give_up {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {} // the server's SETTINGS, its pings
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Whether the server has closed `stream` (or answered on it before closing,
/// as with a 408), waiting at most `wait` for a sign.
fn cut_off(mut stream: &TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("set a read timeout");
    let mut buffer = [0u8; 512];
    match stream.read(&mut buffer) {
        // 0: closed; more: an answer (a 408) before the close.
        Ok(_bytes) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn slow_loris_connections_are_cut_off_and_others_are_served() {
    let server = Server::start();
    let addr = server.addr;
    let give_up = HEADER_READ_TIMEOUT * 3;
    let slow: Vec<_> = (0..32)
        .map(|_| std::thread::spawn(move || dribble_headers(addr, give_up)))
        .collect();
    let silent: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || silent_http2(addr, HTTP2_PING * 3)))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for round in 0..3 {
        assert_serving(addr, &format!("during-{round}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    for client in slow {
        let cut_off = client
            .join()
            .unwrap()
            .expect("a slow-loris connection is never cut off");
        assert!(
            cut_off < HEADER_READ_TIMEOUT + SLACK,
            "cut off only after {cut_off:?}"
        );
    }
    // A ping after HTTP2_PING of silence, unanswered for as long.
    for client in silent {
        let cut_off = client
            .join()
            .unwrap()
            .expect("a silent HTTP/2 connection is never cut off");
        assert!(cut_off < HTTP2_PING * 2 + SLACK, "cut off only after {cut_off:?}");
        assert!(
            cut_off >= HTTP2_PING,
            "cut off after {cut_off:?}, before any ping was due"
        );
    }
    assert_serving(addr, "after");
}

/// Bodies being received count against `--body-memory-mib`: while one
/// sent in part holds most of it, a body that would pass it is refused with
/// 429 (through the document routes' direct path and the router alike), and
/// once that one is gone the same requests are served. A body sent a byte at
/// a time used to be held whatever the others held.
#[test]
fn bodies_being_received_share_a_memory_budget() {
    let server = Server::start_with(&["--max-body-bytes", "1000000", "--body-memory-mib", "1"]);
    let addr = server.addr;
    let mut held = TcpStream::connect(addr).expect("connect");
    held.write_all(
        b"PUT /v1/c/t/held HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
          content-length: 1000000\r\n\r\n{\"a\":\"",
    )
    .expect("headers");
    held.write_all(&vec![b'x'; 900_000]).expect("most of a body");
    // Written whatever is there (version -1), as often as it takes.
    let big = "y".repeat(200_000);
    let doc = format!(r#"{{"_version":-1,"a":"{big}"}}"#);
    let tx = format!(r#"{{"ops":[{{"op":"put","c":"t","id":"tx","version":-1,"doc":{{"a":"{big}"}}}}]}}"#);
    let sent = || {
        [
            send_raw(addr, &put("/v1/c/t/direct", &doc)).expect("an answer"),
            send_raw(addr, &request("POST", "/v1/tx", &[], tx.as_bytes())).expect("an answer"),
        ]
    };
    // The held body's bytes reach the server in a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let answers = sent();
        if answers.iter().all(|a| a.status == 429) || Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for answer in &refused {
        assert_eq!(answer.status, 429, "{}", answer.text);
        assert_eq!(answer.body["error"], "overloaded", "{}", answer.text);
        assert!(answer.text.contains("body_memory_mib"), "{}", answer.text);
        assert!(
            answer.text.to_lowercase().contains("retry-after: 1"),
            "{}",
            answer.text
        );
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let answers = sent();
        if answers.iter().all(|a| a.status == 201 || a.status == 200) || Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for answer in &served {
        assert!(matches!(answer.status, 200 | 201), "{}", answer.text);
    }
    // A budget that could not hold one largest body is refused at startup.
    let ran = common::run_bounded(
        &["serve", "--max-body-bytes", "2000000", "--body-memory-mib", "1"],
        common::RUN_BOUND,
    );
    assert!(ran.stderr.contains("body_memory_mib must be"), "{}", ran.stderr);
    // Unless it is asked for, the budget holds one body of the largest size.
    drop(Server::start_with(&["--max-body-bytes", "300000000"]));
}

/// A body that stops arriving is answered 408 once nothing of it has come
/// for `BODY_IDLE_TIMEOUT_MS` (10 s), on the document routes' direct path and
/// through the router alike, and nothing is written; a slow body that keeps
/// coming, for longer than that in all, is served.
#[test]
fn a_stalled_body_is_the_clients_timeout() {
    let server = Server::start();
    let addr = server.addr;
    let stalled = |method: &'static str, path: &'static str| {
        std::thread::spawn(move || {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\nConnection: close\r\n\r\n{{\"a\":"
            );
            let started = Instant::now();
            (send_raw(addr, head.as_bytes()), started.elapsed())
        })
    };
    let direct = stalled("PUT", "/v1/c/t/stalled");
    let routed = stalled("POST", "/v1/tx");
    // 13 bytes, one every 1.2 s: about 15 s in all, never 10 s without one.
    let slow = std::thread::spawn(move || {
        let body = br#"{"slow": true}"#;
        let head = format!(
            "PUT /v1/c/t/slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(head.as_bytes()).expect("headers");
        for byte in body {
            std::thread::sleep(Duration::from_millis(1200));
            stream.write_all(&[*byte]).expect("a byte of the body");
        }
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("a read timeout");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an answer");
        answer
    });
    for (what, client) in [("PUT of a document", direct), ("POST /v1/tx", routed)] {
        let (answer, took) = client.join().unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (408, Some("request_timeout")),
            "{what}: {}",
            answer.text
        );
        assert!(
            took >= Duration::from_millis(9_900) && took < Duration::from_secs(10) + SLACK,
            "{what}: answered after {took:?}"
        );
    }
    let slow = slow.join().unwrap();
    assert!(
        slow.starts_with("HTTP/1.1 201"),
        "a slow, steady body: {slow:.300}"
    );
    let absent = send_raw(addr, &get("/v1/c/t/stalled")).unwrap();
    assert_eq!(absent.status, 404, "{}", absent.text);
    assert_serving(addr, "after-stalled-bodies");
}

/// A body still arriving when the request timeout passes is the client's
/// doing too: 408, nothing written (it was 503 `timeout`, "a write may still
/// commit", and logged as the server's failure).
#[test]
fn a_body_slower_than_the_request_timeout_is_the_clients_timeout() {
    let server = Server::start_with(&["--request-timeout-ms", "1500"]);
    let addr = server.addr;
    // A byte every 300 ms, never 10 s without one, but 3 s in all.
    let body = br#"{"slow": 1}"#;
    let head = format!(
        "PUT /v1/c/t/trickled HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(head.as_bytes()).expect("headers");
    for byte in body {
        std::thread::sleep(Duration::from_millis(300));
        // The answer may come, and the connection close, before the last bytes.
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
    }
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("a read timeout");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:.400}");
    assert!(
        answer.contains("\"request_timeout\"") && answer.contains("had not all arrived after 1500 ms"),
        "{answer:.400}"
    );
    let absent = send_raw(addr, &get("/v1/c/t/trickled")).unwrap();
    assert_eq!(absent.status, 404, "{}", absent.text);
}

/// Raises this process's soft limit of open files to at least `wanted` (and
/// the hard limit too when privileged); returns the soft limit now in force.
fn raise_open_files_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_max < wanted {
            // Allowed as root (CI); elsewhere the hard limit stays as it is.
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    limit.rlim_cur
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_anyone_else() {
    const IDLE: usize = 10_000;
    let limit = raise_open_files_limit(IDLE as u64 + 1024);
    assert!(
        limit >= IDLE as u64 + 256,
        "the hard limit of open files ({limit}) does not allow {IDLE} connections"
    );
    let server = Server::start();
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let all_open = Instant::now();
    eprintln!("{IDLE} idle connections open in {:?}", all_open - started);
    assert_serving(server.addr, "crowded");
    // Idle connections are closed by the header read timeout, which gives their
    // files back. Each one's timeout starts when it is accepted, so the last
    // opened is the last due: wait from then, not from the first.
    std::thread::sleep((all_open + HEADER_READ_TIMEOUT + SLACK).saturating_duration_since(Instant::now()));
    let still_open = idle
        .iter()
        .step_by(100)
        .filter(|stream| !cut_off(stream, Duration::from_millis(100)))
        .count();
    assert_eq!(still_open, 0, "idle connections are closed by the server");
    assert_serving(server.addr, "after");
}

/// Sends `request` on `stream`, kept alive, and reads its answer: the status
/// and the body.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String) {
    stream.write_all(request).expect("send a request");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("set a read timeout");
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer).expect("read an answer");
        assert!(read > 0, "closed before the whole answer");
        raw.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")?
                        .trim()
                        .parse()
                        .ok()
                })
                .expect("a Content-Length");
            if body.len() >= length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
                return (status, body.to_string());
            }
        }
    }
}

/// A value of the server's `/metrics`, asked on `stream`, kept alive.
fn metric_on(stream: &mut TcpStream, name: &str) -> f64 {
    let (_, text) = exchange(stream, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    metric_in(&text, name)
}

/// Asks `watcher` for `truce_connections_open` until it is `open`.
fn wait_for_open(watcher: &mut TcpStream, open: f64) {
    let deadline = Instant::now() + PROMPT;
    while metric_on(watcher, "truce_connections_open") != open {
        assert!(Instant::now() < deadline, "never {open} connections open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_past_the_limit_are_closed_at_once() {
    let server = Server::start_with(&["--max-connections", "3"]);
    // The start's readiness probe connected too: once it is gone, the
    // watcher is the only one.
    let mut watcher = TcpStream::connect(server.addr).expect("connect");
    wait_for_open(&mut watcher, 1.0);
    // Two hold their places with a request begun and never finished.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .expect("begin a request");
            stream
        })
        .collect();
    wait_for_open(&mut watcher, 3.0);

    // A fourth is closed as soon as it is accepted, answered nothing.
    let mut fourth = TcpStream::connect(server.addr).expect("the kernel accepts it");
    let _ = fourth.write_all(&get("/healthz"));
    fourth.set_read_timeout(Some(PROMPT)).expect("set a read timeout");
    let mut answer = Vec::new();
    match fourth.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer)),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(metric_on(&mut watcher, "truce_connections_refused_total"), 1.0);
    assert_eq!(metric_on(&mut watcher, "truce_connections_open"), 3.0);

    // A place given back is taken again.
    drop(held);
    wait_for_open(&mut watcher, 1.0);
    let answer = send_raw(server.addr, &get("/healthz")).expect("served again");
    assert_eq!(answer.status, 200, "{}", answer.text);
}

/// Connections never take the files the storage needs: a crowd larger than
/// the open-files limit used to take them all, and the next memtable flush
/// failed with EMFILE, which stops every write until a restart (an audit of
/// 8f3cf1a: `ulimit -n 1024`, 1,100 connections). The limit is shared out
/// at startup; the connections past their share are closed at once.
#[cfg(target_os = "linux")]
#[test]
fn connections_leave_the_storage_its_files() {
    let data = tempfile::tempdir().expect("a data directory");
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let listen = addr.to_string();
    let args = [
        "serve",
        "--listen",
        &listen,
        "--data",
        data.path().to_str().unwrap(),
        "--memtable-mib",
        "1",
        "--http-threads",
        "2",
    ];
    let mut server = common::Spawned::start_with_files_limit(&args, 300);
    server.wait_listening(addr);
    let mut writer = TcpStream::connect(addr).expect("connect");
    let crowd: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .map(|mut stream| {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n");
            stream
        })
        .collect();
    assert!(crowd.len() > 300, "{} connected", crowd.len());
    // Enough documents to flush 1 MiB memtables over and over: each flush
    // writes a new table file.
    let blob = "x".repeat(100_000);
    for i in 0..60 {
        let body = format!(r#"{{"blob": "{blob}"}}"#);
        let request = format!(
            "PUT /v1/c/t/d{i} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = exchange(&mut writer, request.as_bytes());
        assert_eq!(status, 201, "write {i}: {answer:.300}");
    }
    let (status, health) = exchange(&mut writer, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200, "{health}");
    assert!(metric_on(&mut writer, "truce_connections_refused_total") > 0.0);
    // The planned share at 300 files: 300 − 2 × (37 + 64) − 64 − 2 × 2.
    let share = 300.0 - 2.0 * (37.0 + 64.0) - 64.0 - 2.0 * 2.0;
    assert!(metric_on(&mut writer, "truce_connections_open") <= share);
    drop(crowd);
}

/// `truce serve` on a fresh data directory and port, through `sh -c
/// "{prelude} exec truce …"` (so the PID is truce's), its standard error
/// piped; with the address it listens on, once it does.
#[cfg(unix)]
fn serve_via_shell(prelude: &str, data: &std::path::Path) -> (common::Spawned, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let listen = addr.to_string();
    let args = ["serve", "--listen", &listen, "--data", data.to_str().unwrap()];
    let mut command = common::Spawned::shell_command(prelude, &args);
    command
        .env_remove("TRUCE_LOG")
        .stderr(std::process::Stdio::piped());
    let mut server = common::Spawned::from_command(command);
    server.wait_listening(addr);
    (server, addr)
}

/// A log nobody reads any more (`truce serve 2>&1 | logger`, the logger
/// gone) is not a crash: the next log line — here the shutdown's — used to
/// panic on the broken pipe, and the server exited with 101 instead of
/// stopping cleanly.
#[cfg(unix)]
#[test]
fn a_log_nobody_reads_does_not_stop_the_server() {
    let data = tempfile::tempdir().expect("a data directory");
    let (mut server, addr) = serve_via_shell("", data.path());
    drop(server.take_stderr());
    assert_serving(addr, "unlogged");
    server.signal(libc::SIGTERM);
    let status = server.exit_within(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status}");
}

/// SIGHUP (a closing terminal or SSH session) stops the server as SIGTERM
/// does, cleanly; it used to kill it mid-request. Started to ignore it
/// (`nohup`, `trap '' HUP`), the server goes on ignoring it.
#[cfg(unix)]
#[test]
fn a_hangup_stops_the_server_cleanly_unless_it_is_ignored() {
    let data = tempfile::tempdir().expect("a data directory");
    let (mut server, _) = serve_via_shell("", data.path());
    server.signal(libc::SIGHUP);
    let status = server.exit_within(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status}");

    let data = tempfile::tempdir().expect("a data directory");
    let (mut ignoring, addr) = serve_via_shell("trap '' HUP;", data.path());
    ignoring.signal(libc::SIGHUP);
    assert!(
        ignoring.exit_within(Duration::from_millis(500)).is_none(),
        "nohup: goes on"
    );
    assert_serving(addr, "hung-up");
    ignoring.signal(libc::SIGTERM);
    assert!(
        ignoring
            .exit_within(Duration::from_secs(15))
            .expect("exits")
            .success()
    );
}

/// At a signal the server waits up to 10 s for the requests in flight (a
/// body still arriving may hold one that long); a second signal ends the
/// wait at once. The second used to be ignored.
#[cfg(unix)]
#[test]
fn a_second_signal_ends_the_grace_period() {
    let data = tempfile::tempdir().expect("a data directory");
    let (mut server, addr) = serve_via_shell("", data.path());
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(
        b"PUT /v1/c/slow/a HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"a\":",
    )
    .expect("a request whose body has not all come");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(
        server.exit_within(Duration::from_millis(700)).is_none(),
        "the first signal waits for the request in flight"
    );
    server.signal(libc::SIGTERM);
    let status = server
        .exit_within(Duration::from_secs(5))
        .expect("exits at the second");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// The readiness check every test relies on (`common::listening`) does not
/// take a socket connected to itself for a server: bound to a port and
/// connected to that same port, a socket on Linux opens a connection with no
/// listener at all, as a bare connect to a not yet listening port can.
#[test]
fn a_connection_to_itself_is_not_a_listening_server() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    let itself = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.1:0".parse().expect("an address"))?;
            let addr = socket.local_addr()?;
            socket.connect(addr).await
        })
        .expect("a self-connection")
        .into_std()
        .expect("a std stream");
    assert!(common::connected_to_itself(&itself));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let addr = listener.local_addr().expect("its address");
    let real = TcpStream::connect(addr).expect("a connection");
    assert!(!common::connected_to_itself(&real));
    assert!(common::listening(addr));
    // A port that is bound but not listened on: held by this socket, so no
    // other test's server can take it meanwhile (a port freed by closing a
    // listener could be handed to one, as the other tests here bind ports
    // all the time).
    let held = tokio::net::TcpSocket::new_v4().expect("a socket");
    held.bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a port");
    assert!(!common::listening(held.local_addr().expect("its address")));
    drop(listener);
}

/// A value of the server's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = common::http_get(&format!("http://{addr}/metrics"))
        .text()
        .expect("/metrics");
    metric_in(&text, name)
}

/// The value of metric `name` in `/metrics`' text.
fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until the server counts an answer being sent.
fn wait_until_held(addr: SocketAddr) {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while metric(addr, "truce_answer_held_bytes") == 0.0 {
        assert!(Instant::now() < deadline, "the unread answer is never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP/2 request for `path` from a client that grants no flow-control
/// credit (SETTINGS_INITIAL_WINDOW_SIZE 0): the server sends the answer's
/// headers and can send none of its body. The connection is kept (settings
/// acknowledged) until `until` is dropped.
fn http2_without_credit(addr: SocketAddr, path: &str, until: std::sync::mpsc::Receiver<()>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let frame = |kind: u8, flags: u8, stream_id: u32, payload: &[u8]| {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream_id.to_be_bytes());
        out.extend(payload);
        out
    };
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[0x00, 0x04, 0, 0, 0, 0]));
    // HPACK: :method GET, :scheme http (static table), :path and :authority
    // as literals with an indexed name.
    let mut headers = vec![0x82, 0x86, 0x44, path.len() as u8];
    headers.extend(path.as_bytes());
    headers.extend([0x41, 9]);
    headers.extend(b"localhost");
    hello.extend(frame(0x1, 0x5, 1, &headers));
    stream.write_all(&hello).expect("the request");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let mut pending = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    while let Err(std::sync::mpsc::TryRecvError::Empty) = until.try_recv() {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => pending.extend(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while pending.len() >= 9 {
            let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
            if pending.len() < 9 + len {
                break;
            }
            let (kind, flags) = (pending[3], pending[4]);
            let payload: Vec<u8> = pending[9..9 + len].to_vec();
            pending.drain(..9 + len);
            let reply = match (kind, flags & 1) {
                (0x4, 0) => frame(0x4, 1, 0, &[]),      // SETTINGS: acknowledged
                (0x6, 0) => frame(0x6, 1, 0, &payload), // PING: answered
                _ => continue,
            };
            stream.write_all(&reply).expect("a reply");
        }
    }
}

/// A server with 15 documents of 900 kB, and the request for them as one
/// page: 13.5 MB, past what the kernel's socket buffers take, and two of them
/// past 16 MiB.
fn serving_a_big_page(args: &[&str]) -> (Server, Vec<u8>) {
    let server = Server::start_with(args);
    let filler = "x".repeat(900_000);
    for i in 0..15 {
        let body = json!({ "filler": filler }).to_string();
        let answer = send_raw(server.addr, &put(&format!("/v1/c/big/d{i:02}"), body)).expect("a put");
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    (server, get("/v1/c/big?limit=15"))
}

/// The bytes of body in `answer` (an HTTP/1 answer as read off the wire),
/// and the length its `Content-Length` announced.
fn body_and_announced(answer: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(&answer[..answer.len().min(4096)]).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").expect("the answer's headers");
    let announced = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")?
                .parse()
                .ok()
        })
        .expect("a Content-Length");
    (answer.len() - head.len() - 4, announced)
}

/// Reads what `stream` gets of its answer and checks it was cut short: fewer
/// bytes than its `Content-Length`, then the end of the connection.
fn assert_cut_short(mut stream: TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("set a read timeout");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    let (body, announced) = body_and_announced(&got);
    assert!(
        body < announced,
        "{what} was sent whole ({body} of {announced} bytes)"
    );
}

/// Answers a client does not read hold memory only up to
/// `--answer-memory-mib`: past it, a read is answered 429 `overloaded` while
/// the unread answer is young, and once that answer has made no progress for
/// `--answer-stall-ms` it is dropped to make room and the read is served. An
/// HTTP/1 client that stops reading gets fewer bytes than announced; an
/// HTTP/2 client that grants no credit holds nothing once its answer is
/// dropped. (Without the bound, every such answer stayed whole in memory: 40
/// HTTP/1 connections that never read a 17.5 MB page held 1.2 GB.)
#[test]
fn answers_a_client_does_not_read_hold_memory_only_up_to_the_limit() {
    const STALL: Duration = Duration::from_secs(5);
    let (server, page) = serving_a_big_page(&["--answer-memory-mib", "16", "--answer-stall-ms", "5000"]);
    let addr = server.addr;
    let served = |what: &str| {
        let answer = send_raw(addr, &page).expect("an answer");
        assert_eq!(answer.status, 200, "{what}: {}", answer.text);
        assert_eq!(answer.body["docs"].as_array().map(Vec::len), Some(15), "{what}");
    };
    let refused = |what: &str| {
        let answer = send_raw(addr, &page).expect("an answer");
        assert_eq!(answer.status, 429, "{what}: {}", answer.text);
        assert_eq!(answer.body["error"], "overloaded", "{what}: {}", answer.text);
        assert!(answer.text.contains("retry-after: 1"), "{what}: {}", answer.text);
    };
    served("alone");

    // HTTP/1: a client that sends its request and reads nothing.
    let mut unread = TcpStream::connect(addr).expect("connect");
    unread.write_all(&page).expect("the request");
    wait_until_held(addr);
    refused("beside an HTTP/1 answer not read");
    std::thread::sleep(STALL + Duration::from_millis(500));
    served("once that answer stalled");
    assert_eq!(metric(addr, "truce_answers_refused_total"), 1.0);
    // Dropped to make room, or its connection closed by the write stall
    // (`a_connection_that_reads_nothing_is_closed_after_the_stall_time`),
    // whichever came first: the two times are the same.
    assert_cut_short(unread, "the unread answer");
    let dropped = metric(addr, "truce_answers_dropped_total");

    // HTTP/2: a client that grants no flow-control credit.
    let (keep, until) = std::sync::mpsc::channel();
    let creditless = std::thread::spawn(move || http2_without_credit(addr, "/v1/c/big?limit=15", until));
    wait_until_held(addr);
    refused("beside an HTTP/2 answer without credit");
    std::thread::sleep(STALL + Duration::from_millis(500));
    served("once that answer stalled");
    // An HTTP/2 connection's writes are not blocked: the client simply grants
    // no credit. Only the drop frees its answer.
    assert_eq!(metric(addr, "truce_answers_dropped_total"), dropped + 1.0);
    assert_eq!(
        metric(addr, "truce_answer_held_bytes"),
        0.0,
        "the dropped answer is freed"
    );
    drop(keep);
    creditless.join().expect("the HTTP/2 client");
    assert_serving(addr, "after");
}

/// A connection whose client reads nothing is closed once the server's
/// writes to it have been blocked for twice `--answer-stall-ms`, even with room to
/// spare under `--answer-memory-mib`: what it held (the answer, hyper's and
/// the socket's buffers) is freed, and nothing was dropped to make room.
#[test]
fn a_connection_that_reads_nothing_is_closed_after_the_stall_time() {
    let (server, page) = serving_a_big_page(&["--answer-stall-ms", "2000"]);
    let addr = server.addr;
    let mut unread = TcpStream::connect(addr).expect("connect");
    unread.write_all(&page).expect("the request");
    wait_until_held(addr);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while metric(addr, "truce_answer_held_bytes") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the answer to a connection that reads nothing is held for ever"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(addr, "truce_answers_dropped_total"), 0.0);
    assert_eq!(metric(addr, "truce_connections_write_stalled_total"), 1.0);
    assert_cut_short(unread, "the answer to a closed connection");
    assert_serving(addr, "after");
}

/// A body whose `Content-Length` is over the limit is refused before any of
/// it is read: a client that asks `Expect: 100-continue` gets the 413 at
/// once, not a 100 and then an upload cut off at the limit — on the document
/// routes' direct path, through the router, and under `/couch`.
#[test]
fn a_body_declared_over_the_limit_is_refused_before_it_is_sent() {
    let server = Server::start_with(&["--max-body-bytes", &BODY_LIMIT_BYTES.to_string()]);
    let over = BODY_LIMIT_BYTES + 1;
    for (method, path, code) in [
        ("PUT", "/v1/c/t/doc", "payload_too_large"),
        ("PATCH", "/v1/c/t/doc", "payload_too_large"),
        ("POST", "/v1/tx", "payload_too_large"),
        ("PUT", "/v1/c/t/_config", "payload_too_large"),
        ("POST", "/couch/t/_bulk_docs", "too_large"), // CouchDB's name
    ] {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("set a read timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {over}\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).expect("the headers");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 413 "),
            "{method} {path}: {:.300}",
            text
        );
        assert!(
            text.contains(&format!(r#""error":"{code}""#)) && text.contains("nothing was read"),
            "{method} {path}: {text:.600}"
        );
    }
    // Within the limit, the 100 comes and the body is read.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("set a read timeout");
    let body = br#"{"n": 1}"#;
    let head = format!(
        "PUT /v1/c/t/doc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("the headers");
    let mut continued = [0u8; 25];
    stream.read_exact(&mut continued).expect("the 100");
    assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body).expect("the body");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer:.300}");
}

/// A client that reads a large answer slowly but steadily keeps it, even
/// while the answers being sent are at the limit and others are refused:
/// each bit it reads shows as progress, as the socket holds at most
/// `UNSENT_BYTES_MAX` of unsent bytes. Before, the kernel took megabytes at
/// once and woke the server only once a third of them had drained, so a
/// reader of 128 KB/s went seconds without progress, and its connection was
/// closed as stalled, or its answer dropped to make room.
#[test]
#[cfg(target_os = "linux")] // TCP_NOTSENT_LOWAT
fn a_slow_steady_reader_keeps_its_answer_under_pressure() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const RATE_BYTES_PER_SEC: usize = 128 * 1024;
    let (server, page) = serving_a_big_page(&["--answer-memory-mib", "16", "--answer-stall-ms", "3000"]);
    let addr = server.addr;
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("set a read timeout");
    slow.write_all(&page).expect("the request");
    wait_until_held(addr);
    // Someone else asks for room all the while, and is refused.
    let done = Arc::new(AtomicBool::new(false));
    let pressing = {
        let (done, page) = (Arc::clone(&done), page.clone());
        std::thread::spawn(move || {
            let mut refused = 0;
            while !done.load(Ordering::Relaxed) {
                let answer = send_raw(addr, &page).expect("an answer");
                assert_eq!(answer.status, 429, "{}", answer.text);
                refused += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            refused
        })
    };
    let mut got = Vec::new();
    let mut buffer = vec![0u8; RATE_BYTES_PER_SEC / 10];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        // A tenth of a second's worth, then the rest of the tenth asleep.
        let tick = Instant::now();
        let mut want = buffer.len();
        while want > 0 {
            let n = slow.read(&mut buffer[..want]).expect("the slow read");
            assert!(
                n > 0,
                "the answer ended after {} bytes, {:?}",
                got.len(),
                started.elapsed()
            );
            got.extend_from_slice(&buffer[..n]);
            want -= n;
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
    }
    done.store(true, Ordering::Relaxed);
    let refused = pressing.join().expect("the other client was refused each time");
    assert!(refused >= 5, "only {refused} requests asked for room");
    assert_eq!(metric(addr, "truce_answers_dropped_total"), 0.0);
    let _ = slow.read_to_end(&mut got);
    let (body, announced) = body_and_announced(&got);
    assert_eq!(body, announced, "the answer came whole");
}
