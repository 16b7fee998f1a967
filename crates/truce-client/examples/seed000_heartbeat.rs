//! The heartbeat of seed 000 as one PATCH (the example of API.md): `$set` the
//! path, `$currentDate` lastSeen, `$upsert`, and `$if` the path changed or the
//! last write is older than 10 s (`$ago`), `$else: "skip"`. Three tabs of one
//! session send it twice each: one write, five skips, no conflicts. Then a
//! tab navigates, and that heartbeat is written.
//!
//! Run against a server: `cargo run -p truce-client --example seed000_heartbeat -- http://127.0.0.1:7070`.
//! Exits non-zero when anything turns out other than the story says.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use truce_client::{Client, Precondition, WriteAnswer};

const COLLECTION: &str = "activeSessions";
/// The dedup window of the seed: skip a same-path heartbeat younger than this.
const HEARTBEAT_DEDUP_MS: u64 = 10_000;
const TABS: usize = 3;
const HEARTBEATS_PER_TAB: usize = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    match run(&url).await {
        Ok(()) => {
            println!("\nOK: one write per change of path, everything else skipped, no conflicts.");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("\nFAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The whole heartbeat mutation, decided on the server at the serialization point.
fn heartbeat_update(session_id: &str, path: &str) -> Value {
    json!({
        "$set": {"currentPath": path},
        "$currentDate": {"lastSeen": true},
        "$setOnInsert": {"sessionId": session_id},
        "$upsert": true,
        "$else": "skip",
        "$if": {"$or": [
            {"currentPath": {"$ne": path}},
            {"lastSeen": {"$lt": {"$ago": HEARTBEAT_DEDUP_MS}}}
        ]}
    })
}

async fn heartbeat(client: &Client, session_id: &str, path: &str) -> Result<WriteAnswer, String> {
    match client
        .patch(
            COLLECTION,
            session_id,
            heartbeat_update(session_id, path),
            Precondition::Any,
        )
        .await
    {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(conflict)) => Err(format!(
            "a heartbeat conflicted ({conflict}); PATCHes should never conflict"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn describe(answer: &WriteAnswer) -> String {
    if answer.skipped {
        format!("skipped  (stays version {})", answer.version)
    } else if answer.created {
        format!("written  (created, version {})", answer.version)
    } else {
        format!("written  (version {})", answer.version)
    }
}

async fn run(url: &str) -> Result<(), String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let session_id = format!("s-{nanos}");
    // Every tab is its own client, named after the function that sends heartbeats.
    let tabs: Vec<Client> = (0..TABS)
        .map(|_| {
            Client::builder(url)
                .source("stats:heartbeat")
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    println!("== {TABS} tabs of session {session_id} on /blog, all tabs at once, {HEARTBEATS_PER_TAB} times");
    let mut written = 0;
    let mut skipped = 0;
    for round in 1..=HEARTBEATS_PER_TAB {
        // All tabs at once: each heartbeat on its own task.
        let sends: Vec<_> = tabs
            .iter()
            .map(|tab| {
                let (tab, session_id) = (tab.clone(), session_id.clone());
                tokio::spawn(async move { heartbeat(&tab, &session_id, "/blog").await })
            })
            .collect();
        for (tab, send) in sends.into_iter().enumerate() {
            let answer = send.await.map_err(|e| e.to_string())??;
            println!(
                "tab {} heartbeat {round} /blog   → {}",
                tab + 1,
                describe(&answer)
            );
            if answer.skipped {
                skipped += 1
            } else {
                written += 1
            }
        }
    }
    println!("written {written}, skipped {skipped}");
    if written != 1 || skipped != TABS * HEARTBEATS_PER_TAB - 1 {
        return Err(format!(
            "expected 1 write and {} skips",
            TABS * HEARTBEATS_PER_TAB - 1
        ));
    }

    println!("\n== tab 2 navigates to /about");
    let moved = heartbeat(&tabs[1], &session_id, "/about").await?;
    println!("tab 2 heartbeat   /about  → {}", describe(&moved));
    if moved.skipped || moved.version != 2 {
        return Err("a change of path should be written as version 2".into());
    }
    let again = heartbeat(&tabs[0], &session_id, "/about").await?;
    println!("tab 1 heartbeat   /about  → {}", describe(&again));
    if !again.skipped {
        return Err("a same-path heartbeat inside the window should be skipped".into());
    }

    let session = tabs[0]
        .get(COLLECTION, &session_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("session missing")?;
    println!("\nstored: {}", Value::Object(session.body.clone()));
    if session.body.get("currentPath") != Some(&json!("/about")) || session.body.get("sessionId").is_none() {
        return Err("the stored session should be on /about with its sessionId".into());
    }
    Ok(())
}
