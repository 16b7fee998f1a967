//! The Rust client (`truce-client`) against a real `truce serve`: create-only
//! → 409 carrying the current document → versioned write → `$inc` → delete →
//! 404 → transaction → index query and drop → change feed (normal and long
//! poll).
//!
//! Each test starts its own server on loopback. `TRUCE_TEST_URL` points them
//! at another one instead, e.g.
//! `TRUCE_TEST_URL=http://127.0.0.1:7070 cargo test -p truce-server --test client`;
//! `TRUCE_TEST_KEY` is then sent as the API key when set.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Server;
use serde_json::json;
use truce_client::{
    ChangesOptions, Client, ConflictReason, DeletePrecondition, IndexSpec, Precondition, Query, Transaction,
};

/// A client of the server named by `TRUCE_TEST_URL`, or else of a server of
/// its own, which lives as long as the returned guard.
fn server() -> (Client, Option<Server>) {
    if let Some(url) = std::env::var("TRUCE_TEST_URL").ok().filter(|u| !u.is_empty()) {
        let mut builder = Client::builder(&url).source("clientIntegrationTest");
        if let Ok(key) = std::env::var("TRUCE_TEST_KEY") {
            builder = builder.api_key(&key);
        }
        return (builder.build().expect("TRUCE_TEST_URL is a valid base URL"), None);
    }
    let own = Server::start();
    let client = Client::builder(&own.url())
        .source("clientIntegrationTest")
        .build()
        .expect("the server's URL");
    (client, Some(own))
}

/// A collection of its own for each run, so runs do not see each other.
fn fresh_collection(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{nanos}")
}

#[tokio::test]
async fn single_document_writes_tell_their_story() {
    let (client, _server) = server();
    let coll = fresh_collection("clientDocs");

    // Create only.
    let created = client
        .put(&coll, "doc-1", json!({"n": 1}), Precondition::Absent)
        .await
        .expect("ok")
        .expect("new");
    assert!(created.created);
    assert_eq!(created.version, 1);

    // Create only, again: a conflict carrying what is there.
    let conflict = client
        .put(&coll, "doc-1", json!({"n": 9}), Precondition::Absent)
        .await
        .expect("ok")
        .expect_err("exists");
    assert_eq!(conflict.reason, ConflictReason::AlreadyExists);
    assert_eq!(
        conflict
            .current
            .as_ref()
            .map(|d| (d.version, d.get("n").cloned())),
        Some((1, Some(json!(1))))
    );

    // A write at exactly the version read.
    let v2 = client
        .put(&coll, "doc-1", json!({"n": 2}), Precondition::Version(1))
        .await
        .expect("ok")
        .expect("v1");
    assert_eq!((v2.version, v2.created), (2, false));

    // The same version again is stale now, and the conflict says what is current.
    let stale = client
        .put(&coll, "doc-1", json!({"n": 3}), Precondition::Version(1))
        .await
        .expect("ok")
        .expect_err("stale");
    assert_eq!(stale.reason, ConflictReason::VersionMismatch);
    assert_eq!(stale.current.as_ref().map(|d| d.version), Some(2));

    // Operators apply to whatever is there.
    let inc = client
        .patch(&coll, "doc-1", json!({"$inc": {"n": 5}}), Precondition::Any)
        .await
        .expect("ok")
        .expect("inc");
    assert_eq!(inc.version, 3);
    assert_eq!(inc.doc.as_ref().and_then(|d| d.get("n")), Some(&json!(7)));

    // Conditional read.
    let rev = inc.rev.clone();
    assert_eq!(
        client.get_if_none_match(&coll, "doc-1", &rev).await.expect("ok"),
        truce_client::Fetched::NotModified
    );

    // Delete at the exact version; then it is gone.
    let deleted = client
        .delete(&coll, "doc-1", DeletePrecondition::Version(3))
        .await
        .expect("ok")
        .expect("deleted");
    assert!(deleted.doc.as_ref().is_some_and(|d| d.deleted));
    assert_eq!(client.get(&coll, "doc-1").await.expect("ok"), None);
    let again = client
        .delete(&coll, "doc-1", DeletePrecondition::Any)
        .await
        .expect("ok")
        .expect_err("absent");
    assert_eq!(again.reason, ConflictReason::NotFound);

    // A PATCH of an absent document without $upsert.
    let missing = client
        .patch(&coll, "nobody", json!({"$set": {"a": 1}}), Precondition::Any)
        .await
        .expect("ok");
    assert_eq!(missing.map_err(|c| c.reason), Err(ConflictReason::NotFound));

    assert!(client.list_collections().await.expect("ok").contains(&coll));
}

#[tokio::test]
async fn transactions_queries_and_the_change_feed() {
    let (client, _server) = server();
    let coll = fresh_collection("clientTx");

    let open = Transaction::new()
        .put(
            &coll,
            "a",
            json!({"kind": "acct", "balance": 10}),
            Precondition::Absent,
        )
        .put(
            &coll,
            "b",
            json!({"kind": "acct", "balance": 0}),
            Precondition::Absent,
        )
        .put(&coll, "rates", json!({"fee": 0}), Precondition::Absent);
    let committed = client.transaction(&open).await.expect("ok").expect("committed");
    assert_eq!(committed.results.len(), 3);
    assert!(
        committed
            .results
            .iter()
            .all(|r| r.as_ref().is_some_and(|w| w.created))
    );

    // (The server accepts each document once per transaction, so the check is on
    // another document than the writes.)
    let transfer = Transaction::new()
        .check(&coll, "rates", Precondition::Version(1))
        .patch(
            &coll,
            "a",
            json!({"$inc": {"balance": -5}}),
            Precondition::Version(1),
        )
        .patch(&coll, "b", json!({"$inc": {"balance": 5}}), Precondition::Any);
    let moved = client
        .transaction(&transfer)
        .await
        .expect("ok")
        .expect("committed");
    assert!(moved.seq > committed.seq);
    assert_eq!(moved.results.len(), 3);

    // The same transfer is stale now: nothing is written, and the conflict names op 1.
    let conflict = client
        .transaction(&transfer)
        .await
        .expect("ok")
        .expect_err("stale");
    assert_eq!(conflict.conflicts.len(), 1, "{conflict:?}");
    let op = &conflict.conflicts[0];
    assert_eq!(
        (op.index, op.id.as_str(), &op.reason),
        (1, "a", &ConflictReason::VersionMismatch)
    );
    assert_eq!(op.current.as_ref().map(|d| d.version), Some(2));
    let b = client.get(&coll, "b").await.expect("ok").expect("b");
    assert_eq!(
        b.get("balance"),
        Some(&json!(5)),
        "the failed transaction wrote nothing"
    );

    // A check-only transaction answers whether what was read is still current.
    let still = Transaction::new()
        .check(&coll, "rates", Precondition::Version(1))
        .check(&coll, "x", Precondition::Absent);
    let checked = client
        .transaction(&still)
        .await
        .expect("ok")
        .expect("still current");
    assert_eq!(checked.results.len(), 2);
    assert!(checked.results[1].is_none(), "an absent document checks as null");

    // An index and a query on it (a building index answers 503, which is retried).
    let spec = IndexSpec {
        fields: vec!["kind".into()],
        unique: false,
    };
    client.create_index(&coll, "by_kind", &spec).await.expect("index");
    let page = client
        .query(&coll, &Query::new().index("by_kind").eq(json!("acct")).limit(10))
        .await
        .expect("query");
    let mut ids: Vec<&str> = page.docs.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b"], "rates has no kind");
    assert!(
        client
            .list_indexes(&coll)
            .await
            .expect("ok")
            .iter()
            .any(|i| i.name == "by_kind")
    );
    // Dropped: answered as it was, then gone (a second drop finds nothing);
    // the same name declared right away is retried (503 index_dropping)
    // until its entries are deleted.
    let dropped = client.drop_index(&coll, "by_kind").await.expect("drop");
    let dropped = dropped.expect("there was an index to drop");
    assert_eq!(
        (dropped.name.as_str(), dropped.state.as_str()),
        ("by_kind", "dropping")
    );
    assert!(client.list_indexes(&coll).await.expect("ok").is_empty());
    let again = client.drop_index(&coll, "by_kind").await.expect("no error");
    assert!(again.is_none(), "dropped once: {again:?}");
    client
        .create_index(&coll, "by_kind", &spec)
        .await
        .expect("declared again");

    // The feed: commit order, each document once at its latest change.
    let feed = client
        .changes(&coll, &ChangesOptions::new().include_docs(true))
        .await
        .expect("changes");
    let seqs: Vec<u64> = feed.results.iter().map(|c| c.seq).collect();
    // Non-decreasing: the writes of one transaction share its seq.
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "in commit order: {seqs:?}");
    let latest: Vec<(&str, Option<u64>)> = feed
        .results
        .iter()
        .map(|c| (c.id.as_str(), c.doc.as_ref().map(|d| d.version)))
        .collect();
    assert_eq!(
        latest,
        [("rates", Some(1)), ("a", Some(2)), ("b", Some(2))],
        "each at its latest change"
    );
    // The server may answer a later seq (writes to other collections): continue from there.
    assert!(feed.last_seq >= moved.seq);

    // A long poll wakes up for a write made while it waits.
    let writer = client.clone();
    let writer_coll = coll.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .put(&writer_coll, "c", json!({"kind": "late"}), Precondition::Absent)
            .await
    });
    let options = ChangesOptions::new()
        .since(feed.last_seq)
        .longpoll(Duration::from_secs(10));
    let woken = client.changes(&coll, &options).await.expect("long poll");
    assert_eq!(
        woken.results.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    write.await.expect("writer task").expect("ok").expect("created");
}

#[tokio::test]
async fn update_with_retry_survives_concurrent_writers() {
    let (client, _server) = server();
    let coll = fresh_collection("clientUpdate");
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let client = client.clone();
            let coll = coll.clone();
            tokio::spawn(async move {
                client
                    .update_with_retry(&coll, "counter", |current| {
                        let n = current
                            .and_then(|d| d.get("n"))
                            .and_then(|v| v.as_u64())
                            .unwrap_or(0);
                        json!({"n": n + 1})
                    })
                    .await
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => written += 1,
            Err(truce_client::ClientError::Conflicted { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    let counter = client.get(&coll, "counter").await.expect("ok").expect("exists");
    assert_eq!(counter.get("n"), Some(&json!(written)), "no lost update");
    assert!(written >= 1);
    assert!(client.healthz().await.is_ok());
}

/// What the client says in `Truce-Attempt` is what the server's conflict
/// insights count: a plain write's conflict, which the caller gets as a value,
/// is neither a retry nor a permanent failure, whatever the retry policy;
/// `update_with_retry`'s later rounds are retries, and its giving up is a
/// permanent failure. (The header used to count deliveries of the request:
/// `1/1` under `RetryPolicy::none()` made every conflict permanent, and every
/// round of `update_with_retry` said `1/n`.) A server of its own: the totals
/// are the whole server's.
#[tokio::test]
async fn conflict_insights_count_what_the_client_did() {
    let server = Server::start();
    let totals = |client: Client| async move {
        client
            .insights(Duration::from_secs(60), 10)
            .await
            .expect("insights")["totals"]
            .clone()
    };
    let one_shot = Client::builder(&server.url())
        .source("oneShot")
        .retry_policy(truce_client::RetryPolicy::none())
        .build()
        .unwrap();
    one_shot
        .put("ins", "a", json!({}), Precondition::Absent)
        .await
        .unwrap()
        .unwrap();
    let conflict = one_shot
        .put("ins", "a", json!({}), Precondition::Absent)
        .await
        .unwrap();
    assert!(conflict.is_err(), "a conflict, as a value");
    let after_one = totals(one_shot.clone()).await;
    assert_eq!(after_one["conflicts_by_source"]["oneShot"], 1, "{after_one}");
    assert_eq!(after_one["permanent_failures"], 0, "{after_one}");
    assert_eq!(after_one["retries"], 0, "{after_one}");

    // Every round of update_with_retry loses to a write made while it computes.
    let rmw = Client::builder(&server.url())
        .source("rmw")
        .retry_policy(truce_client::RetryPolicy::new(
            2,
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .build()
        .unwrap();
    let url = format!("{}/v1/c/ins/a", server.url());
    let failed = rmw
        .update_with_retry("ins", "a", |_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let bump = common::http_client()
                    .build()
                    .expect("an HTTP client")
                    .patch(url)
                    .header("content-type", "application/json")
                    .body(r#"{"$inc": {"n": 1}}"#)
                    .send()
                    .expect("a competing write");
                assert_eq!(bump.status().as_u16(), 200);
            })
            .join()
            .unwrap();
            json!({"n": 0})
        })
        .await;
    assert!(
        matches!(
            failed,
            Err(truce_client::ClientError::Conflicted { attempts: 2, .. })
        ),
        "{failed:?}"
    );
    let after = totals(rmw).await;
    assert_eq!(
        after["retries_by_source"]["rmw"], 2,
        "the second round's writes: {after}"
    );
    assert_eq!(after["permanent_failures"], 1, "it gave up, once: {after}");
}

/// A write sent again under the caller's idempotency key is answered as the
/// first time, not written twice (a create-only put would conflict); the same
/// key with another request is refused.
#[tokio::test]
async fn a_write_sent_again_under_its_key_is_answered_once() {
    let (client, _server) = server();
    let coll = fresh_collection("clientKeys");
    let key = format!("order {} / create", fresh_collection(""));
    let first = client
        .put_with_key(&coll, "o-1", json!({"n": 1}), Precondition::Absent, &key)
        .await
        .expect("ok")
        .expect("created");
    let again = client
        .put_with_key(&coll, "o-1", json!({"n": 1}), Precondition::Absent, &key)
        .await
        .expect("ok")
        .expect("the first answer, not a conflict");
    assert_eq!(again, first);
    assert!(again.created);

    let tx = Transaction::new().patch(&coll, "o-1", json!({"$inc": {"n": 1}}), Precondition::Any);
    let tx_key = format!("{key} / tx");
    let committed = client
        .transaction_with_key(&tx, &tx_key)
        .await
        .expect("ok")
        .expect("committed");
    let repeated = client
        .transaction_with_key(&tx, &tx_key)
        .await
        .expect("ok")
        .expect("committed");
    assert_eq!(repeated, committed);
    let doc = client.get(&coll, "o-1").await.expect("ok").expect("found");
    assert_eq!(doc.get("n"), Some(&json!(2)), "the $inc applied once");

    let reused = client
        .put_with_key(&coll, "o-1", json!({"n": 5}), Precondition::Any, &key)
        .await
        .expect_err("another request under the same key");
    assert_eq!(
        (reused.status(), reused.code()),
        (Some(422), "idempotency_key_reused")
    );
}

/// A write made with the precondition of a document read earlier holds only
/// against that document: one deleted, its tombstone purged
/// (`tombstones.keep_seconds`) and made again restarts at version 1, and a
/// stale write "at version 1" went over the new document as if it were the
/// one read. `Precondition::from` now sends the revision read.
#[tokio::test]
async fn a_read_documents_precondition_does_not_match_one_made_again() {
    let (client, _server) = server();
    let coll = fresh_collection("clientPurged");
    client
        .set_config(&coll, &json!({"tombstones": {"keep_seconds": 1}}))
        .await
        .expect("config");
    client
        .put(&coll, "a", json!({"owner": "ann"}), Precondition::Absent)
        .await
        .expect("ok")
        .expect("created");
    let read = client.get(&coll, "a").await.expect("ok").expect("exists");
    let seen = client
        .changes(&coll, &ChangesOptions::new())
        .await
        .expect("a feed");
    client
        .delete(&coll, "a", DeletePrecondition::from(&read))
        .await
        .expect("ok")
        .expect("deleted");
    // Purged once a reader that stood before the delete is refused (410).
    let behind = ChangesOptions::new().since(seen.last_seq).from(seen.from);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.changes(&coll, &behind).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the tombstone was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = client
        .put(&coll, "a", json!({"owner": "bob"}), Precondition::Absent)
        .await
        .expect("ok")
        .expect("created again");
    assert_eq!(again.version, read.version, "made again at the version read");
    let mut stale = read.body.clone();
    stale.insert("note".into(), json!("written from ann's document"));
    let conflict = client
        .put(&coll, "a", json!(stale), Precondition::from(&read))
        .await
        .expect("ok")
        .expect_err("a stale write of another document");
    assert_eq!(conflict.reason, ConflictReason::VersionMismatch);
    let now = client.get(&coll, "a").await.expect("ok").expect("exists");
    assert_eq!(now.get("owner"), Some(&json!("bob")));
}
