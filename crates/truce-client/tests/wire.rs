//! The client's behaviour on the wire, against a scripted server: attempt and
//! source headers, idempotency keys reused across retries, Retry-After, which
//! answers are retried and which are returned, preconditions as sent.

mod mock;

use std::time::{Duration, Instant};

use mock::{Reply, doc, serve, written};
use serde_json::json;
use truce_client::{
    ChangesOptions, Client, ClientError, ConflictReason, DeletePrecondition, Fetched, Precondition,
    RetryPolicy, Transaction,
};

fn client(base: &str, attempts: u32) -> Client {
    Client::builder(base)
        .source("wireTest")
        .api_key("k-1")
        .retry_policy(RetryPolicy::new(
            attempts,
            Duration::from_millis(1),
            Duration::from_millis(20),
        ))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_write_is_retried_on_503_429_and_408_under_one_idempotency_key() {
    let (base, log) = serve(vec![
        Reply::Json(
            503,
            vec![("retry-after", "0")],
            json!({"error": "index_building", "message": "m"}),
        ),
        Reply::Json(
            429,
            vec![("retry-after", "0")],
            json!({"error": "overloaded", "message": "m"}),
        ),
        Reply::Json(408, vec![], json!({"error": "request_timeout", "message": "m"})),
        Reply::Json(201, vec![], written("a", 1, true, json!({"n": 1}))),
    ])
    .await;
    let answer = client(&base, 4)
        .put("users", "a", json!({"n": 1}), Precondition::Absent)
        .await;
    let written = answer.expect("no error").expect("no conflict");
    assert!(written.created);

    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 4);
    let attempts: Vec<_> = log
        .iter()
        .map(|r| r.header("truce-attempt").unwrap_or(""))
        .collect();
    // Delivering the same request again is not a new attempt of the caller's
    // write: the server would count a retry after a conflict there was not.
    assert_eq!(attempts, ["1", "1", "1", "1"]);
    let key = log[0].header("idempotency-key").expect("a key");
    assert_eq!(key.len(), 32);
    assert!(
        log.iter().all(|r| r.header("idempotency-key") == Some(key)),
        "one key for every attempt"
    );
    for request in &log {
        assert_eq!(
            (request.method.as_str(), request.target.as_str()),
            ("PUT", "/v1/c/users/a")
        );
        assert_eq!(request.header("truce-source"), Some("wireTest"));
        assert_eq!(request.header("authorization"), Some("Bearer k-1"));
        assert_eq!(request.json(), json!({"n": 1, "_version": 0}));
    }
}

#[tokio::test]
async fn each_logical_write_gets_its_own_key() {
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], written("a", 2, false, json!({}))),
        Reply::Json(200, vec![], written("a", 3, false, json!({}))),
    ])
    .await;
    let client = client(&base, 3);
    for _ in 0..2 {
        client
            .patch("c", "a", json!({"$inc": {"n": 1}}), Precondition::Any)
            .await
            .expect("ok")
            .expect("written");
    }
    let log = log.lock().expect("log").clone();
    assert_ne!(log[0].header("idempotency-key"), log[1].header("idempotency-key"));
    assert_eq!(
        log[0].json(),
        json!({"$inc": {"n": 1}}),
        "PATCH with Any sends no precondition"
    );
    assert_eq!(log[0].header("if-match"), None);
}

/// `list_collections` asks for pages until one has no `next`, each after
/// the last.
#[tokio::test]
async fn collections_are_listed_page_after_page() {
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], json!({"collections": ["a", "b"], "next": "b"})),
        Reply::Json(200, vec![], json!({"collections": ["c"], "next": null})),
    ])
    .await;
    assert_eq!(
        client(&base, 1).list_collections().await.expect("ok"),
        ["a", "b", "c"]
    );
    let log = log.lock().unwrap();
    let targets: Vec<&str> = log.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/v1/c", "/v1/c?after=b"]);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_max_delay() {
    let (base, _log) = serve(vec![
        Reply::Json(
            503,
            vec![("retry-after", "1")],
            json!({"error": "index_building", "message": "m"}),
        ),
        Reply::Json(200, vec![], json!({"collections": ["a", "b"]})),
    ])
    .await;
    let patient = Client::builder(&base)
        .retry_policy(RetryPolicy::new(
            2,
            Duration::from_millis(1),
            Duration::from_secs(5),
        ))
        .build()
        .expect("client");
    let started = Instant::now();
    assert_eq!(patient.list_collections().await.expect("ok"), ["a", "b"]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );

    let (base, _log) = serve(vec![
        Reply::Json(
            503,
            vec![("retry-after", "30")],
            json!({"error": "index_building", "message": "m"}),
        ),
        Reply::Json(200, vec![], json!({"collections": []})),
    ])
    .await;
    let started = Instant::now();
    client(&base, 2).list_collections().await.expect("ok");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "max_delay caps Retry-After: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_reads_carry_no_key() {
    let (base, log) = serve(vec![
        Reply::Drop,
        Reply::Json(200, vec![], doc("a b/c", 4, json!({"x": 1}))),
    ])
    .await;
    let found = client(&base, 4)
        .get("users", "a b/c")
        .await
        .expect("ok")
        .expect("found");
    assert_eq!(
        (found.id.as_str(), found.version, found.get("x")),
        ("a b/c", 4, Some(&json!(1)))
    );
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].target, "/v1/c/users/a%20b%2Fc");
    assert_eq!(log[0].header("truce-attempt"), Some("1"));
    assert_eq!(log[1].header("truce-attempt"), Some("1"));
    assert!(log.iter().all(|r| r.header("idempotency-key").is_none()));
}

#[tokio::test]
async fn a_conflict_is_an_answer_and_is_not_retried() {
    let (base, log) = serve(vec![Reply::Json(
        409,
        vec![],
        json!({"error": "conflict", "reason": "version_mismatch", "message": "m", "current": doc("a", 2, json!({}))}),
    )])
    .await;
    let outcome = client(&base, 5)
        .put("c", "a", json!({"n": 1}), Precondition::Version(1))
        .await
        .expect("no error");
    let conflict = outcome.expect_err("a conflict");
    assert_eq!(conflict.reason, ConflictReason::VersionMismatch);
    assert_eq!(conflict.current.map(|d| d.version), Some(2));
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].json(), json!({"n": 1, "_version": 1}));
}

#[tokio::test]
async fn giving_up_on_503_returns_the_servers_error() {
    let building = || {
        Reply::Json(
            503,
            vec![("retry-after", "0")],
            json!({"error": "index_building", "message": "m"}),
        )
    };
    let (base, log) = serve(vec![building(), building(), building()]).await;
    let error = client(&base, 3).get("c", "a").await.expect_err("an error");
    assert_eq!((error.status(), error.code()), (Some(503), "index_building"));
    assert_eq!(log.lock().expect("log").len(), 3);
}

/// 503 `unavailable` is Truce's storage failure, which lasts until the
/// server restarts: answered at once, not retried (a 503 another server — a
/// proxy — sends without Truce's code still is).
#[tokio::test]
async fn a_storage_failure_is_not_retried() {
    let (base, log) = serve(vec![
        Reply::Json(
            503,
            vec![],
            json!({"error": "unavailable", "message": "storage failed"}),
        ),
        Reply::Json(200, vec![], doc("a", 1, json!({}))),
    ])
    .await;
    let error = client(&base, 3).get("c", "a").await.expect_err("an error");
    assert_eq!((error.status(), error.code()), (Some(503), "unavailable"));
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test]
async fn refused_connections_fail_after_every_attempt() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    match client(&base, 2).get("c", "a").await {
        Err(ClientError::Transport { attempts, .. }) => assert_eq!(attempts, 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn preconditions_travel_in_headers_and_query_parameters() {
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], written("a", 3, false, json!({}))),
        Reply::Json(200, vec![], written("a", 4, false, json!({}))),
        Reply::Json(
            404,
            vec![],
            json!({"error": "not_found", "message": "no such document", "current": null}),
        ),
        Reply::Empty(304),
        Reply::Json(
            404,
            vec![],
            json!({"error": "not_found", "message": "no such document"}),
        ),
        Reply::Json(
            428,
            vec![],
            json!({"error": "precondition_required", "message": "m"}),
        ),
    ])
    .await;
    let client = client(&base, 1);
    client
        .put("c", "a", json!({"n": 1, "_rev": "x"}), Precondition::Exists)
        .await
        .expect("ok")
        .expect("written");
    client
        .delete("c", "a", DeletePrecondition::Rev("3-a+b".into()))
        .await
        .expect("ok")
        .expect("deleted");
    let missing = client
        .delete("c", "a", DeletePrecondition::Any)
        .await
        .expect("ok")
        .expect_err("absent");
    assert_eq!(missing.reason, ConflictReason::NotFound);
    assert_eq!(
        client.get_if_none_match("c", "a", "3-abc").await.expect("ok"),
        Fetched::NotModified
    );
    assert_eq!(client.get("c", "a").await.expect("ok"), None);
    let error = client
        .delete("c", "a", DeletePrecondition::Version(1))
        .await
        .expect_err("an error");
    assert_eq!(error.code(), "precondition_required");

    let log = log.lock().expect("log").clone();
    assert_eq!(log[0].header("if-match"), Some("*"));
    assert_eq!(
        log[0].json(),
        json!({"n": 1}),
        "the typed precondition replaces a body's _rev"
    );
    assert_eq!(
        (log[1].method.as_str(), log[1].target.as_str()),
        ("DELETE", "/v1/c/c/a?rev=3-a%2Bb")
    );
    assert_eq!(log[2].target, "/v1/c/c/a?version=-1");
    assert!(log[1].header("idempotency-key").is_some());
    assert_eq!(log[3].header("if-none-match"), Some("\"3-abc\""));
}

#[tokio::test]
async fn update_with_retry_redoes_from_the_conflicts_document_at_its_exact_revision() {
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], doc("a", 1, json!({"n": 10}))),
        Reply::Json(
            409,
            vec![],
            json!({"error": "conflict", "reason": "version_mismatch", "message": "m", "current": doc("a", 2, json!({"n": 20}))}),
        ),
        Reply::Json(200, vec![], written("a", 3, false, json!({"n": 21}))),
    ])
    .await;
    let mut seen = Vec::new();
    let answer = client(&base, 3)
        .update_with_retry("c", "a", |current| {
            let n = current
                .and_then(|d| d.get("n"))
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            seen.push(n);
            json!({"n": n + 1})
        })
        .await
        .expect("written");
    assert_eq!(answer.version, 3);
    assert_eq!(seen, [10, 20]);
    let log = log.lock().expect("log").clone();
    let methods: Vec<_> = log.iter().map(|r| r.method.as_str()).collect();
    // The 409 carried revision 2-abc: the retry writes at it without
    // reading again.
    assert_eq!(methods, ["GET", "PUT", "PUT"]);
    assert_eq!(log[1].json(), json!({"n": 11, "_rev": "1-abc"}));
    assert_eq!(log[2].json(), json!({"n": 21, "_rev": "2-abc"}));
}

#[tokio::test]
async fn update_with_retry_gives_up_with_the_last_conflict() {
    let stale = |v: u64| {
        Reply::Json(
            409,
            vec![],
            json!({"error": "conflict", "reason": "already_exists", "message": "m", "current": doc("a", v, json!({}))}),
        )
    };
    let absent = || Reply::Json(404, vec![], json!({"error": "not_found", "message": "m"}));
    let (base, log) = serve(vec![absent(), stale(1), stale(2), stale(3)]).await;
    let error = client(&base, 2)
        .update_with_retry("c", "a", |_| json!({"n": 1}))
        .await
        .expect_err("gives up");
    match error {
        ClientError::Conflicted { attempts, last } => {
            assert_eq!(attempts, 2);
            assert_eq!(last.reason, ConflictReason::AlreadyExists);
            assert_eq!(last.current.map(|d| d.version), Some(3));
        }
        other => panic!("{other:?}"),
    }
    let log = log.lock().expect("log").clone();
    assert_eq!(
        log[1].json(),
        json!({"n": 1, "_version": 0}),
        "absent: create only"
    );
    assert_eq!(
        log[2].json(),
        json!({"n": 1, "_rev": "1-abc"}),
        "after the backoff, the write is made at the revision the conflict carried"
    );
    assert_eq!(
        log[3].json(),
        json!({"n": 1, "_rev": "2-abc"}),
        "that write lost to a change made during the backoff: redone at once from its conflict's document"
    );
    assert_eq!(
        log.len(),
        4,
        "no read between the rounds; the second round's fresh write lost and it gave up"
    );
    // Each write names its round: the server counts the second round's as
    // retries. Only the writes made from a fresh document say of how many:
    // the last round's, whose conflict ends the call, is the one permanent
    // failure; the write after the backoff was redone, not given up on.
    let attempts: Vec<_> = log
        .iter()
        .map(|r| r.header("truce-attempt").unwrap_or(""))
        .collect();
    assert_eq!(attempts, ["1", "1/2", "2", "2/2"]);
}

#[tokio::test]
async fn a_transaction_conflict_lists_the_failed_ops() {
    let (base, log) = serve(vec![Reply::Json(
        409,
        vec![],
        json!({"error": "conflict", "message": "1 operation(s) did not hold", "conflicts": [
            {"index": 0, "c": "accounts", "id": "a", "reason": "version_mismatch", "current": doc("a", 4, json!({}))}]}),
    )])
    .await;
    let tx = Transaction::new()
        .check("accounts", "a", Precondition::Version(3))
        .patch(
            "accounts",
            "a",
            json!({"$inc": {"balance": -5}}),
            Precondition::Any,
        );
    let failed = client(&base, 3).with_source("transferFunds").expect("label");
    let conflict = failed
        .transaction(&tx)
        .await
        .expect("no error")
        .expect_err("a conflict");
    assert_eq!(conflict.conflicts.len(), 1);
    assert_eq!(
        (
            conflict.conflicts[0].index,
            conflict.conflicts[0].current.as_ref().map(|d| d.version)
        ),
        (0, Some(4))
    );
    let log = log.lock().expect("log").clone();
    assert_eq!(
        (log[0].method.as_str(), log[0].target.as_str()),
        ("POST", "/v1/tx")
    );
    assert_eq!(log[0].header("truce-source"), Some("transferFunds"));
    assert_eq!(log[0].json()["source"], json!("transferFunds"));
    assert!(log[0].header("idempotency-key").is_some());
}

#[tokio::test]
async fn a_long_poll_asks_the_server_to_wait() {
    let (base, log) = serve(vec![Reply::Json(
        200,
        vec![],
        json!({"results": [], "last_seq": 9}),
    )])
    .await;
    let options = ChangesOptions::new()
        .since(9)
        .longpoll(Duration::from_millis(1500));
    let page = client(&base, 1).changes("events", &options).await.expect("ok");
    assert_eq!((page.results.len(), page.last_seq), (0, 9));
    let log = log.lock().expect("log").clone();
    assert_eq!(
        log[0].target,
        "/v1/c/events/_changes?since=9&feed=longpoll&timeout=1500"
    );
}

/// A reader passes back where its history began, as the server said.
#[tokio::test]
async fn a_page_says_where_the_readers_history_began_and_it_is_sent_back() {
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], json!({"results": [], "last_seq": 9, "from": 7})),
        Reply::Json(200, vec![], json!({"results": [], "last_seq": 9})),
    ])
    .await;
    let client = client(&base, 1);
    let page = client
        .changes("events", &ChangesOptions::new().limit(1))
        .await
        .expect("ok");
    assert_eq!(page.from, Some(7));
    let next = ChangesOptions::new().since(page.last_seq).from(page.from);
    let page = client.changes("events", &next).await.expect("ok");
    assert_eq!(page.from, None, "an answer without it");
    let log = log.lock().expect("log").clone();
    assert_eq!(log[1].target, "/v1/c/events/_changes?since=9&from=7");
}

/// An id (or collection) a URL cannot carry as a segment is refused before
/// anything is sent: `.` and `..` would be resolved as path steps (a `GET` of
/// `..` reached the list of collections and failed to decode), and an empty
/// one would name another route.
#[tokio::test]
async fn ids_a_url_cannot_carry_are_refused_before_sending() {
    let (base, log) = serve(vec![]).await;
    let client = client(&base, 1);
    for id in ["", ".", ".."] {
        let refused = |result: Result<(), ClientError>| match result {
            Err(ClientError::InvalidArgument(message)) => assert!(message.contains("URL"), "{message}"),
            other => panic!("{id:?}: {other:?}"),
        };
        refused(client.get("c", id).await.map(drop));
        refused(client.put("c", id, json!({}), Precondition::Any).await.map(drop));
        refused(
            client
                .patch("c", id, json!({"$inc": {"n": 1}}), Precondition::Any)
                .await
                .map(drop),
        );
        refused(client.delete("c", id, DeletePrecondition::Any).await.map(drop));
        refused(client.get(id, "x").await.map(drop));
    }
    assert!(log.lock().expect("log").is_empty(), "nothing was sent");
}

/// A write whose every attempt went unanswered may have committed: the error
/// gives the key it was sent under, and sending it again under that key
/// carries it unchanged (the server answers a committed one as it did).
#[tokio::test]
async fn a_write_without_an_answer_says_its_key_and_can_be_sent_again_under_it() {
    let (base, log) = serve(vec![
        Reply::Drop,
        Reply::Drop,
        Reply::Json(200, vec![], written("a", 2, false, json!({"n": 2}))),
    ])
    .await;
    let c = client(&base, 2);
    let error = c
        .put("users", "a", json!({"n": 2}), Precondition::Version(1))
        .await
        .expect_err("no answer");
    assert!(
        matches!(error, ClientError::Transport { attempts: 2, .. }),
        "{error:?}"
    );
    let key = error.idempotency_key().expect("the write's key").to_string();
    let again = c
        .put_with_key("users", "a", json!({"n": 2}), Precondition::Version(1), &key)
        .await
        .expect("an answer")
        .expect("no conflict");
    assert_eq!(again.version, 2);
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|r| r.header("idempotency-key") == Some(key.as_str()))
    );

    // Every kind of write takes the caller's key.
    let (base, log) = serve(vec![
        Reply::Json(200, vec![], written("a", 3, false, json!({"n": 3}))),
        Reply::Json(200, vec![], written("a", 4, false, json!({}))),
        Reply::Json(200, vec![], json!({"seq": 9, "results": [null]})),
    ])
    .await;
    let c = client(&base, 1);
    c.patch_with_key(
        "users",
        "a",
        json!({"$inc": {"n": 1}}),
        Precondition::Any,
        "k-patch",
    )
    .await
    .expect("ok")
    .expect("no conflict");
    c.delete_with_key("users", "a", DeletePrecondition::Any, "k-delete")
        .await
        .expect("ok")
        .expect("no conflict");
    let tx = Transaction::new().check("users", "b", Precondition::Absent);
    c.transaction_with_key(&tx, "k-tx")
        .await
        .expect("ok")
        .expect("committed");
    let keys: Vec<_> = log
        .lock()
        .expect("log")
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_string))
        .collect();
    assert_eq!(
        keys,
        [
            Some("k-patch".into()),
            Some("k-delete".into()),
            Some("k-tx".into())
        ]
    );
}

/// A configuration or index change carries no idempotency key: one that may
/// have applied is not sent again (another admin's change in between would be
/// undone), one that certainly did not (429, 503 `index_dropping`) is.
/// A call's deadline bounds it whole: a retry whose wait would end past it
/// is not waited for (the call ends with its last answer, at once), and an
/// attempt gets only what is left. Without one, five attempts of up to 30 s
/// each, and the waits between them, could take minutes.
#[tokio::test]
async fn a_deadline_ends_the_call_with_its_last_answer() {
    let later = Reply::Json(
        503,
        vec![("retry-after", "2")],
        json!({"error": "overloaded", "message": "m"}),
    );
    let (base, log) = serve(vec![later, Reply::Json(200, vec![], doc("a", 1, json!({})))]).await;
    let c = Client::builder(&base)
        .retry_policy(RetryPolicy::new(
            4,
            Duration::from_millis(1),
            Duration::from_secs(5),
        ))
        .deadline(Duration::from_millis(500))
        .build()
        .expect("a client");
    let started = std::time::Instant::now();
    let error = c
        .get("users", "a")
        .await
        .expect_err("no retry within the deadline");
    assert_eq!((error.status(), error.code()), (Some(503), "overloaded"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(log.lock().expect("log").len(), 1);
    assert!(
        Client::builder(&base).deadline(Duration::ZERO).build().is_err(),
        "a zero deadline is refused"
    );
    // One no `Instant` can hold is none (it panicked, added to one).
    let (base, _log) = serve(vec![Reply::Json(200, vec![], doc("a", 1, json!({})))]).await;
    let found = Client::builder(&base)
        .deadline(Duration::MAX)
        .build()
        .expect("a client")
        .get("users", "a")
        .await
        .expect("no deadline");
    assert!(found.is_some());

    // A server that never answers: the attempt is given what is left of the
    // deadline, not the 30 s of the client's timeout.
    let (base, log) = serve(vec![Reply::Silent(Duration::from_secs(5))]).await;
    let c = Client::builder(&base)
        .deadline(Duration::from_millis(300))
        .build()
        .expect("a client");
    let started = std::time::Instant::now();
    let error = c
        .put("users", "a", json!({}), Precondition::Any)
        .await
        .expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, ClientError::Transport { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(error.idempotency_key().is_some(), "its outcome is unknown");
    assert_eq!(log.lock().expect("log").len(), 1);
}

/// A proxy's 502 or 504 (the server behind it restarting) is sent again for a
/// read and for a write under its key; a change without a key, which may
/// have got there, is not. Before, none was sent again: a read failed at
/// the first gateway error.
#[tokio::test]
async fn a_gateway_error_is_retried_where_a_repeat_is_safe() {
    let gateway = |status| {
        Reply::Json(
            status,
            vec![],
            json!({"error": "bad_gateway", "message": "proxy"}),
        )
    };
    let (base, log) = serve(vec![
        gateway(502),
        gateway(504),
        Reply::Json(200, vec![], doc("a", 1, json!({}))),
    ])
    .await;
    let found = client(&base, 4).get("users", "a").await.expect("ok");
    assert!(found.is_some());
    assert_eq!(log.lock().expect("log").len(), 3);

    let (base, log) = serve(vec![
        gateway(502),
        Reply::Json(200, vec![], written("a", 2, false, json!({}))),
    ])
    .await;
    client(&base, 4)
        .put("users", "a", json!({}), Precondition::Any)
        .await
        .expect("sent again under its key")
        .expect("no conflict");
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].header("idempotency-key"), log[1].header("idempotency-key"));

    let (base, log) = serve(vec![gateway(504), Reply::Json(200, vec![], json!({"ttl": null}))]).await;
    let error = client(&base, 4)
        .set_config("c", &json!({"ttl": null}))
        .await
        .expect_err("not sent again");
    assert_eq!(error.status(), Some(504));
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test]
async fn a_change_is_sent_again_only_when_it_certainly_did_nothing() {
    let (base, log) = serve(vec![Reply::Drop, Reply::Json(200, vec![], json!({"ttl": null}))]).await;
    let error = client(&base, 4)
        .set_config("c", &json!({"ttl": null}))
        .await
        .expect_err("the lost answer is the caller's to judge");
    assert!(
        matches!(
            error,
            ClientError::Transport {
                attempts: 1,
                idempotency_key: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(log.lock().expect("log").len(), 1);

    let timeout = Reply::Json(503, vec![], json!({"error": "timeout", "message": "m"}));
    let (base, log) = serve(vec![timeout, Reply::Json(202, vec![], json!({}))]).await;
    let error = client(&base, 4)
        .drop_index("c", "by_n")
        .await
        .expect_err("503 timeout");
    assert_eq!((error.status(), error.code()), (Some(503), "timeout"));
    assert_eq!(log.lock().expect("log").len(), 1);

    let (base, log) = serve(vec![
        Reply::Json(
            429,
            vec![("retry-after", "0")],
            json!({"error": "overloaded", "message": "m"}),
        ),
        Reply::Json(
            503,
            vec![("retry-after", "0")],
            json!({"error": "index_dropping", "message": "m"}),
        ),
        Reply::Json(
            200,
            vec![],
            json!({"name": "by_n", "fields": ["n"], "unique": false, "state": "ready"}),
        ),
    ])
    .await;
    client(&base, 4)
        .create_index(
            "c",
            "by_n",
            &truce_client::IndexSpec {
                fields: vec!["n".into()],
                unique: false,
            },
        )
        .await
        .expect("created on the third attempt");
    assert_eq!(log.lock().expect("log").len(), 3);
}

/// A base URL with a path the server does not serve is answered 404 "no
/// route": an error, not a missing document, index or backup (empty data).
#[tokio::test]
async fn a_route_the_server_does_not_have_is_an_error_not_absent_data() {
    let no_route = || {
        Reply::Json(
            404,
            vec![],
            json!({"error": "not_found", "no_route": true, "message": "no such route"}),
        )
    };
    let (base, _log) = serve(vec![no_route(), no_route(), no_route(), no_route()]).await;
    let c = client(&format!("{base}/api"), 1);
    let error = c.get("users", "a").await.expect_err("not a missing document");
    assert_eq!((error.status(), error.code()), (Some(404), "not_found"));
    let error = c
        .put("users", "a", json!({}), Precondition::Exists)
        .await
        .expect_err("not a not_found conflict");
    assert_eq!(error.status(), Some(404));
    assert!(
        c.drop_index("users", "by_n").await.is_err(),
        "not an index that was not there"
    );
    assert!(c.backup_status().await.is_err(), "not a server without backups");

    // A 404 in CouchDB's shape (a base URL ending in /couch, say) neither.
    let couch = Reply::Json(404, vec![], json!({"error": "not_found", "reason": "missing"}));
    let (base, _log) = serve(vec![couch]).await;
    let error = client(&base, 1)
        .get("users", "a")
        .await
        .expect_err("not Truce's missing document");
    assert_eq!(error.status(), Some(404));
}

/// A write answered 5xx to its last attempt (a 503 `timeout`: it may yet
/// commit; a proxy's 502) has an unknown outcome too: the error names its
/// key. A 4xx does not: nothing was written.
#[tokio::test]
async fn a_write_answered_5xx_says_its_key() {
    let (base, log) = serve(vec![
        Reply::Json(503, vec![], json!({"error": "timeout", "message": "m"})),
        Reply::Json(502, vec![], json!({"error": "bad_gateway", "message": "proxy"})),
        Reply::Json(400, vec![], json!({"error": "invalid_document", "message": "m"})),
        Reply::Json(
            507,
            vec![],
            json!({"error": "insufficient_storage", "message": "m"}),
        ),
    ])
    .await;
    let c = client(&base, 1);
    let error = c
        .patch("c", "a", json!({"$inc": {"n": 1}}), Precondition::Any)
        .await
        .expect_err("503");
    assert_eq!((error.status(), error.code()), (Some(503), "timeout"));
    let sent = log.lock().expect("log")[0]
        .header("idempotency-key")
        .map(str::to_string);
    assert_eq!(error.idempotency_key(), sent.as_deref());
    assert!(sent.is_some());

    let tx = Transaction::new().check("c", "a", Precondition::Absent);
    let error = c.transaction_with_key(&tx, "tx-1").await.expect_err("502");
    assert_eq!(
        (error.status(), error.idempotency_key()),
        (Some(502), Some("tx-1"))
    );

    let error = c
        .put("c", "a", json!({}), Precondition::Any)
        .await
        .expect_err("400");
    assert_eq!((error.status(), error.idempotency_key()), (Some(400), None));
    // Nothing was written, and the key not taken.
    let error = c
        .put("c", "a", json!({}), Precondition::Any)
        .await
        .expect_err("507");
    assert_eq!((error.status(), error.idempotency_key()), (Some(507), None));
}

/// A write whose first attempt got no answer, or a 503 `timeout`, may have
/// committed; when its last attempt is then refused (429 `overloaded`, 408),
/// its outcome is still unknown, and the error names its key: read as
/// "nothing was done", a new call under a new key would apply it twice.
/// Refusals alone leave nothing unknown, and no key.
#[tokio::test]
async fn a_write_refused_after_an_unanswered_attempt_says_its_key() {
    let overloaded = || Reply::Json(429, vec![], json!({"error": "overloaded", "message": "m"}));
    let timeout = Reply::Json(503, vec![], json!({"error": "timeout", "message": "m"}));
    let (base, log) = serve(vec![
        Reply::Drop,
        overloaded(),
        timeout,
        overloaded(),
        overloaded(),
        overloaded(),
    ])
    .await;
    let c = client(&base, 2);
    let error = c
        .patch("c", "a", json!({"$inc": {"n": 1}}), Precondition::Any)
        .await
        .expect_err("429");
    assert_eq!((error.status(), error.code()), (Some(429), "overloaded"));
    let sent = log.lock().expect("log")[0]
        .header("idempotency-key")
        .map(str::to_string);
    assert!(sent.is_some());
    assert_eq!(error.idempotency_key(), sent.as_deref());
    let tx = Transaction::new().check("c", "a", Precondition::Absent);
    let error = c.transaction_with_key(&tx, "tx-1").await.expect_err("429");
    assert_eq!(
        (error.status(), error.idempotency_key()),
        (Some(429), Some("tx-1"))
    );
    let error = c
        .patch("c", "a", json!({"$inc": {"n": 1}}), Precondition::Any)
        .await
        .expect_err("429");
    assert_eq!((error.status(), error.idempotency_key()), (Some(429), None));
}

/// A recount's groups it could not fix come through: a caller that looks
/// only at `fixed` would take a still-wrong counter for a right one.
#[tokio::test]
async fn a_recount_says_what_it_could_not_fix() {
    let (base, _log) = serve(vec![Reply::Json(
        200,
        vec![],
        json!({"checked": 2, "fixed": [], "unfixable": [{"group": "c1", "holds": "oops"}], "seq": 9}),
    )])
    .await;
    let recount = client(&base, 1).recount("c", "n").await.expect("answer");
    assert!(recount.fixed.is_empty());
    assert_eq!(recount.unfixable.len(), 1);
    assert_eq!(
        (recount.unfixable[0].group.as_str(), &recount.unfixable[0].holds),
        ("c1", &json!("oops"))
    );
}
