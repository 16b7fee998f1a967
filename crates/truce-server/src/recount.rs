//! `truce recount`: recompute a counter cache directly on a data directory, for
//! when the server is stopped (a running server holds the directory's lock; then
//! its HTTP endpoint does the same).

use truce::{Db, Options};

use crate::config::RecountArgs;
use crate::http::config::recount_json;

/// Opens the database, recounts, prints the report as JSON.
pub fn run(args: &RecountArgs) -> Result<(), String> {
    let data = args.data.dir()?;
    if !data.is_dir() {
        return Err(format!("no data directory at {}", data.display()));
    }
    // Opening would make a database of any directory (a typo's, say).
    if !truce::storage::FjallStorage::holds_database(&data) {
        return Err(format!(
            "{} holds no Truce database: name the server's data directory with --data (or TRUCE_DATA, or its \
             --config file)",
            data.display()
        ));
    }
    let endpoint = format!(
        "curl -X POST http://127.0.0.1:7070/v1/c/{}/_counters/{}/recount",
        args.collection, args.counter
    );
    let db = Db::open(&data, Options::default()).map_err(|e| {
        if let truce::Error::Storage(truce::storage::StorageError::InUse(_)) = e {
            format!(
                "{} is in use by a running server (it holds the directory's lock). Recount through the \
                 server instead: {endpoint} (with the server's address, and an admin key if it has keys)",
                data.display()
            )
        } else {
            format!("cannot open {}: {e}", data.display())
        }
    })?;
    let collection = db.collection(&args.collection).map_err(|e| e.to_string())?;
    let report = collection.recount(&args.counter).map_err(|e| {
        if e.code() == "not_found" {
            let names: Vec<String> = collection.config().counters.into_iter().map(|c| c.name).collect();
            let known = if names.is_empty() {
                "it has none".to_string()
            } else {
                format!("its counters: {}", names.join(", "))
            };
            format!(
                "collection {} has no counter {} ({known})",
                args.collection, args.counter
            )
        } else {
            format!("recount failed: {e}")
        }
    })?;
    let text = serde_json::to_string_pretty(&recount_json(&report)).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}
