//! One test per bug the fuzz targets found, stated in terms of the engine and
//! server rather than of the fuzz entry points (whose inputs are kept as
//! `fuzz/corpus/<target>/regression-*` and replayed by `corpus.rs`).

use std::sync::Arc;

use truce::storage::MemoryStorage;
use truce::{Db, Expect, Options, doc};

/// `document`: serde_json parsed a 27-digit integer one ulp away from the
/// nearest f64, so the canonical bytes stored for a body read back as a
/// different number than the one written and answered.
#[test]
fn a_big_integer_reads_back_as_the_number_written() {
    let text = r#"{"big": 187440737095544073709525807, "small": 0.30000000000000004}"#;
    let body = doc::body_from_value(serde_json::from_str(text).unwrap()).unwrap();
    let canonical = doc::validate_body(&body).unwrap();
    let again: truce::Body = serde_json::from_slice(&canonical).unwrap();
    assert_eq!(again, body);

    let db = Db::open_with_storage(Arc::new(MemoryStorage::new()), Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    let written = c
        .put("n", serde_json::from_str(text).unwrap(), Expect::Absent)
        .unwrap()
        .unwrap();
    assert_eq!(c.get("n").unwrap().unwrap().body, written.doc.body);
    let same = c
        .put("n", serde_json::from_str(text).unwrap(), Expect::Any)
        .unwrap()
        .unwrap();
    assert_eq!(
        same.effect,
        truce::Effect::NoOp,
        "writing the same content again is a no-op"
    );
}

/// `recovery`: a stored document naming a commit beyond the recovered
/// `last_seq` made every read of it wait forever for that commit to become
/// durable. It is corrupt, and a read now says so.
#[test]
fn a_document_beyond_the_last_commit_is_corrupt_not_a_hang() {
    let store = store_with(1, 7, None);
    let db = Db::open_with_storage(store, Options::default()).unwrap();
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(db.collection("c").unwrap().get("x").map_err(|e| e.code()));
    });
    let answer = answer
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the read answers instead of waiting forever");
    assert_eq!(answer.unwrap_err(), "corrupt");
}

/// Stores one sealed document record for `c/x` (and `last_seq` when given).
fn store_with(version: u64, seq: u64, last_seq: Option<u64>) -> Arc<MemoryStorage> {
    use truce::storage::{Durability, Space, Storage, WriteBatch};
    let body = br#"{"a":1}"#;
    let meta = truce::Meta {
        rev: truce::Rev::compute(version, body, false),
        seq,
        ts_ms: 1,
        deleted: false,
    };
    let store = Arc::new(MemoryStorage::new());
    let mut batch = WriteBatch::new();
    batch.put(
        Space::Documents,
        b"c\0x".to_vec(),
        truce::record::encode_document(&meta, body),
    );
    if let Some(last) = last_seq {
        batch.put(
            Space::Meta,
            b"last_seq".to_vec(),
            truce::record::encode_counter(last),
        );
    }
    store.apply(batch, Durability::Immediate).unwrap();
    store
}

/// `recovery`: a stored document at version `u64::MAX` made the next write of it
/// overflow the version (a panic that killed the committer in debug builds, a
/// wrap to the invalid version 0 in release builds). It is corrupt.
#[test]
fn a_write_over_the_largest_version_is_refused_as_corrupt() {
    let db = Db::open_with_storage(store_with(u64::MAX, 1, Some(1)), Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    let error = c.put("x", serde_json::json!({"b": 2}), Expect::Any).unwrap_err();
    assert_eq!(error.code(), "corrupt");
    let other = c.put("y", serde_json::json!({}), Expect::Any).unwrap().unwrap();
    assert_eq!(
        other.doc.meta.seq, 2,
        "the engine keeps committing other documents"
    );
}

/// The same for the commit sequence: a stored `last_seq` near `u64::MAX` would
/// overflow the next commit's; recovery reports it corrupt instead.
#[test]
fn a_last_seq_beyond_the_maximum_is_corrupt() {
    let error = Db::open_with_storage(store_with(1, 1, Some(u64::MAX)), Options::default())
        .err()
        .expect("recovery refuses");
    assert_eq!(error.code(), "corrupt");
    assert!(
        Db::open_with_storage(
            store_with(1, 1, Some(truce::limits::COMMIT_SEQ_MAX)),
            Options::default()
        )
        .is_ok()
    );
}
