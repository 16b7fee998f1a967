//! `truce recount`: recompute a counter cache directly on a data directory, for
//! when the server is stopped (a running server holds the directory's lock; then
//! its HTTP endpoint does the same).

use std::path::{Path, PathBuf};

use truce::{Db, Options};

use crate::config::{DataArgs, RecountArgs};
use crate::http::config::recount_json;

/// The data directory `data` names, if it holds a database: opening would make
/// one of any directory (a typo's, say). `truce check` reads it the same way.
pub fn database_dir(data: &DataArgs) -> Result<PathBuf, String> {
    let data = data.dir()?;
    if !data.is_dir() {
        return Err(format!("no data directory at {}", data.display()));
    }
    if let Some(why) = truce::engine::unfinished_backup(&data) {
        return Err(why);
    }
    if !truce::storage::FjallStorage::holds_database(&data) {
        return Err(format!(
            "{} holds no Truce database: name the server's data directory with --data (or TRUCE_DATA, or its \
             --config file)",
            data.display()
        ));
    }
    Ok(data)
}

/// Why `data` could not be opened; `instead` is what to do while a server
/// holds it.
pub fn open_error(data: &Path, e: &truce::Error, instead: &str) -> String {
    if let truce::Error::Storage(truce::storage::StorageError::InUse(_)) = e {
        format!(
            "{} is in use by a running server (it holds the directory's lock). {instead}",
            data.display()
        )
    } else {
        format!("cannot open {}: {e}", data.display())
    }
}

/// Opens the database, recounts, prints the report as JSON; an error (exit 1)
/// when groups are left unfixable.
pub fn run(args: &RecountArgs) -> Result<(), String> {
    let data = database_dir(&args.data)?;
    let endpoint = format!(
        "curl -X POST http://127.0.0.1:7070/v1/c/{}/_counters/{}/recount",
        args.collection, args.counter
    );
    let db = Db::open(&data, Options::default()).map_err(|e| {
        open_error(
            &data,
            &e,
            &format!(
                "Recount through the server instead: {endpoint} (with the server's address, and an admin key if it \
                 has keys)"
            ),
        )
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
    // The counter is not exact yet: a script must not take it for repaired.
    if !report.unfixable.is_empty() {
        return Err(format!(
            "{} group(s) of counter {} could not be fixed (\"unfixable\" above, with what each target holds): \
             a target field that holds no number (put a number back), a sum past the largest number JSON \
             holds, or a target document the correction would take past 1 MiB (make room in it); then \
             recount again (docs/counters.md, \"Recount\")",
            report.unfixable.len(),
            args.counter
        ));
    }
    Ok(())
}
