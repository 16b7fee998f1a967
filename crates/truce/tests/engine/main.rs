//! Integration tests of the embedded engine, in one binary to keep builds short.

mod backup;
mod changes;
mod check;
mod concurrency;
mod counters;
mod crash;
mod crash_states;
mod errors;
mod history;
mod idempotency;
mod indexes;
mod insights;
mod model;
mod purge;
mod storage_conformance;
mod transactions;

use serde_json::Value;
use truce::{Db, Durability, Options, Update};

/// Opens a database in `dir` with immediate durability (the default).
pub fn open(dir: &std::path::Path) -> Db {
    Db::open(dir, Options::default()).expect("open")
}

/// Opens a database in `dir` without fsync, for tests where durability is not the point.
pub fn open_relaxed(dir: &std::path::Path) -> Db {
    Db::open(
        dir,
        Options {
            durability: Durability::Relaxed,
            ..Options::default()
        },
    )
    .expect("open")
}

/// [`open_relaxed`], with `bytes` of memory for the pages being read
/// (`Options::page_memory_bytes`).
pub fn open_with_page_memory(dir: &std::path::Path, bytes: usize) -> Db {
    Db::open(
        dir,
        Options {
            durability: Durability::Relaxed,
            page_memory_bytes: bytes,
            ..Options::default()
        },
    )
    .expect("open")
}

/// Copies directory `from` and everything in it to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Parses an update, panicking on a malformed one.
pub fn update(spec: Value) -> Update {
    Update::parse(&spec).expect("valid update")
}
