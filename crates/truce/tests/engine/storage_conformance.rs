//! The storage conformance suite against every backend, plus what only a disk can show.

use truce::storage::{
    CrashStorage, Direction, Durability, FjallStorage, MemoryStorage, Space, Storage, StorageRead,
    WriteBatch, conformance,
};

#[test]
fn memory_storage_conforms() {
    conformance::run_all(MemoryStorage::new);
}

#[test]
fn crash_storage_conforms() {
    conformance::run_all(CrashStorage::new);
}

#[test]
fn fjall_storage_conforms() {
    let mut dirs = Vec::new();
    conformance::run_all(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStorage::open(dir.path()).expect("open fjall");
        dirs.push(dir);
        store
    });
}

#[test]
fn fjall_keeps_batches_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FjallStorage::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Space::Documents, b"a".to_vec(), b"1".to_vec());
        batch.put(Space::Meta, b"m".to_vec(), b"2".to_vec());
        store.apply(batch, Durability::Immediate).unwrap();
    }
    let store = FjallStorage::open(dir.path()).unwrap();
    assert_eq!(
        store.get(Space::Documents, b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(store.get(Space::Meta, b"m").unwrap().as_deref(), Some(&b"2"[..]));
    let all = store.scan(
        Space::Documents,
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        Direction::Forward,
        9,
    );
    assert_eq!(all.unwrap().len(), 1);
}

#[test]
fn memory_crash_image_keeps_only_synced_batches() {
    let store = MemoryStorage::new();
    let mut synced = WriteBatch::new();
    synced.put(Space::Documents, b"kept".to_vec(), b"1".to_vec());
    store.apply(synced, Durability::Immediate).unwrap();
    let mut relaxed = WriteBatch::new();
    relaxed.put(Space::Documents, b"lost".to_vec(), b"2".to_vec());
    store.apply(relaxed, Durability::Relaxed).unwrap();
    assert!(
        store.get(Space::Documents, b"lost").unwrap().is_some(),
        "visible before the crash"
    );
    let image = store.crash_image();
    assert!(image.get(Space::Documents, b"kept").unwrap().is_some());
    assert!(image.get(Space::Documents, b"lost").unwrap().is_none());
}
