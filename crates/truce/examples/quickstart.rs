//! The embedded quick start: conditional writes, a conflict that carries the
//! current document, update operators that never conflict, a heartbeat that is
//! skipped when nothing changed, and a read-modify-write with retries.
//!
//! Run it: `cargo run -p truce --example quickstart [DATA_DIR]`

use serde_json::json;
use truce::{Db, Expect, Options, Update};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from);
    let scratch = tempfile::tempdir()?;
    let path = dir.unwrap_or_else(|| scratch.path().to_path_buf());
    let db = Db::open(&path, Options::default())?;

    // Create only (VERSION_FIRST): a second create is a conflict, not an overwrite.
    let items = db.collection("items")?;
    let created = items.put("item-1", json!({"name": "Kettle", "stock": 3}), Expect::Absent)?;
    let v1 = created.map_err(|c| format!("unexpected conflict: {c}"))?;
    println!(
        "created item-1 at {} (version {})",
        v1.doc.rev(),
        v1.doc.version()
    );

    // Seed 001: two writers read version 1; the second write conflicts and
    // carries the current document, so the caller can decide what to do.
    items
        .put(
            "item-1",
            json!({"name": "Kettle", "stock": 2}),
            Expect::Version(1),
        )?
        .ok();
    match items.put(
        "item-1",
        json!({"name": "Kettle (blue)", "stock": 3}),
        Expect::Version(1),
    )? {
        Ok(_) => println!("unexpected: the stale write applied"),
        Err(conflict) => println!(
            "stale write refused: {} — current is version {}",
            conflict.reason.code(),
            conflict.current()?.map_or(0, |d| d.version())
        ),
    }

    // Update operators run at the serialization point: concurrent $inc never conflict.
    let inc = Update::parse(&json!({"$inc": {"stock": 10}}))?;
    let after = items
        .patch("item-1", inc, Expect::Any)?
        .map_err(|c| c.to_string())?;
    println!("stock after $inc: {}", after.doc.body["stock"]);

    // Seed 000: a heartbeat that writes only when the path changed or the last
    // write is older than 10 s; duplicates are skipped, not conflicts.
    let sessions = db.collection("activeSessions")?;
    let heartbeat = Update::parse(&json!({
        "$set": {"currentPath": "/blog"}, "$currentDate": {"lastSeen": true},
        "$upsert": true, "$else": "skip",
        "$if": {"$or": [{"currentPath": {"$ne": "/blog"}}, {"lastSeen": {"$lt": {"$ago": 10000}}}]}
    }))?;
    for tab in 1..=3 {
        let beat = sessions
            .patch("s-123", heartbeat.clone(), Expect::Any)?
            .map_err(|c| c.to_string())?;
        println!("heartbeat from tab {tab}: {:?}", beat.effect);
    }

    // Read-modify-write on the exact version, retried with backoff and jitter.
    let renamed = items.atomic_update("item-1", |current| {
        let mut body = current.cloned().unwrap_or_default();
        body.insert("name".into(), json!("Kettle (steel)"));
        serde_json::Value::Object(body)
    })?;
    println!(
        "renamed: {} at version {}",
        renamed.doc.body["name"],
        renamed.doc.version()
    );
    Ok(())
}
