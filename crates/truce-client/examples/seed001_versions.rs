//! The story of seed 001 (optimistic locking with versions): users A and B
//! both read version 1; A writes version 2; B's write at version 1 gets a 409
//! that carries version 2; B redoes its change on version 2. Then
//! `update_with_retry` does the same for five concurrent writers, automatically.
//!
//! Run against a server: `cargo run -p truce-client --example seed001_versions -- http://127.0.0.1:7070`.
//! Exits non-zero when anything turns out other than the story says.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use truce_client::{Client, ConflictReason, Precondition, RetryPolicy};

const COLLECTION: &str = "cats";
/// Concurrent writers of the automatic part.
const WRITERS: u32 = 5;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    match run(&url).await {
        Ok(()) => {
            println!("\nOK: every step went as the story says.");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("\nFAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one step of the story: what was done, and what came of it.
fn step(done: impl std::fmt::Display, outcome: impl std::fmt::Display) {
    println!("{:<40} → {outcome}", done.to_string());
}

fn ensure(condition: bool, what: &str) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what.to_string()) }
}

async fn run(url: &str) -> Result<(), String> {
    let err = |e: truce_client::ClientError| e.to_string();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("cat-001-{nanos}");
    let admin = Client::builder(url).source("createCat").build().map_err(err)?;
    let user_a = admin.with_source("userA:updateCat").map_err(err)?;
    let user_b = admin.with_source("userB:updateCat").map_err(err)?;

    println!("== Version conflict, by hand ({COLLECTION}/{id})");
    let created = admin
        .put(
            COLLECTION,
            &id,
            json!({"name": "Tama", "color": "grey"}),
            Precondition::Absent,
        )
        .await
        .map_err(err)?
        .map_err(|c| format!("create-only write conflicted: {c}"))?;
    step(
        "created with VERSION_FIRST (create only)",
        format!("version {}", created.version),
    );
    ensure(
        created.created && created.version == 1,
        "the new item should be version 1",
    )?;

    let read_a = user_a
        .get(COLLECTION, &id)
        .await
        .map_err(err)?
        .ok_or("A could not read the item")?;
    let read_b = user_b
        .get(COLLECTION, &id)
        .await
        .map_err(err)?
        .ok_or("B could not read the item")?;
    step("user A reads", format!("version {}", read_a.version));
    step("user B reads", format!("version {}", read_b.version));

    let mut body_a = read_a.body.clone();
    body_a.insert("name".into(), json!("Tama the Great"));
    let written_a = user_a
        .put(
            COLLECTION,
            &id,
            Value::Object(body_a),
            Precondition::from(&read_a),
        )
        .await
        .map_err(err)?
        .map_err(|c| format!("A's write should succeed, got {c}"))?;
    step(
        format!("user A writes name at version {}", read_a.version),
        format!("version {} (success)", written_a.version),
    );
    ensure(written_a.version == 2, "A's write should make version 2")?;

    let mut body_b = read_b.body.clone();
    body_b.insert("color".into(), json!("black"));
    let conflict = match user_b
        .put(
            COLLECTION,
            &id,
            Value::Object(body_b),
            Precondition::from(&read_b),
        )
        .await
    {
        Ok(Ok(written)) => {
            return Err(format!(
                "B's stale write was accepted as version {}",
                written.version
            ));
        }
        Ok(Err(conflict)) => conflict,
        Err(e) => return Err(e.to_string()),
    };
    let current = conflict
        .current
        .clone()
        .ok_or("the 409 should carry the current document")?;
    step(
        format!("user B writes color at version {}", read_b.version),
        format!(
            "409 {} carrying version {} (name {})",
            conflict.reason, current.version, current.body["name"]
        ),
    );
    ensure(
        conflict.reason == ConflictReason::VersionMismatch,
        "B should get version_mismatch",
    )?;
    ensure(current.version == 2, "the conflict should carry version 2")?;

    // B redoes its change on the version the conflict handed back: no extra read.
    let mut retry_b = current.body.clone();
    retry_b.insert("color".into(), json!("black"));
    let written_b = user_b
        .put(
            COLLECTION,
            &id,
            Value::Object(retry_b),
            Precondition::from(&current),
        )
        .await
        .map_err(err)?
        .map_err(|c| format!("B's retry on version 2 should succeed, got {c}"))?;
    let merged = written_b
        .doc
        .clone()
        .ok_or("the write answer should carry the document")?;
    step(
        format!("user B redoes its change at version {}", current.version),
        format!(
            "version {} (name {}, color {})",
            written_b.version, merged.body["name"], merged.body["color"]
        ),
    );
    ensure(
        merged.body["name"] == "Tama the Great" && merged.body["color"] == "black",
        "both changes kept",
    )?;

    println!("\n== The same, automatically: {WRITERS} concurrent writers with update_with_retry");
    let patient = admin.with_retry_policy(RetryPolicy::new(
        WRITERS + 3,
        Duration::from_millis(20),
        Duration::from_secs(1),
    ));
    let tasks: Vec<_> = (1..=WRITERS)
        .map(|writer| {
            let client = patient.with_source(&format!("user{writer}:addView")).map_err(err);
            let id = id.clone();
            tokio::spawn(async move {
                let client = client?;
                let mut rounds = 0;
                let answer = client
                    .update_with_retry(COLLECTION, &id, |current| {
                        rounds += 1;
                        let mut body = current.map(|d| d.body.clone()).unwrap_or_default();
                        let views = body.get("views").and_then(Value::as_u64).unwrap_or(0);
                        body.insert("views".into(), json!(views + 1));
                        Value::Object(body)
                    })
                    .await
                    .map_err(err)?;
                Ok::<_, String>((writer, rounds, answer.version))
            })
        })
        .collect();
    for task in tasks {
        let (writer, rounds, version) = task.await.map_err(|e| e.to_string())??;
        println!("writer {writer}: wrote version {version} after {rounds} round(s)");
    }
    let last = admin
        .get(COLLECTION, &id)
        .await
        .map_err(err)?
        .ok_or("the item disappeared")?;
    println!("final: version {}, views {}", last.version, last.body["views"]);
    ensure(
        last.body["views"] == json!(WRITERS),
        "every writer's view should be counted: no lost update",
    )?;
    ensure(last.version == 3 + u64::from(WRITERS), "one version per write")
}
