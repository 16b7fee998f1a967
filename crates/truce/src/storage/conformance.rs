//! The storage contract as executable checks, written once and run against every
//! backend: `conformance::run_all(|| MyStorage::open(..))`.
//!
//! Each check panics with a message naming the broken promise.

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use super::{Direction, Durability, Space, Storage, WriteBatch};

/// One write of a test batch: space, key, value (`None` removes).
type TestWrite<'a> = (Space, &'a [u8], Option<&'a [u8]>);
/// A named check of the contract.
type Check = (&'static str, fn(&dyn Storage));

/// Runs every check, each on a fresh store made by `make`.
pub fn run_all<S: Storage>(mut make: impl FnMut() -> S) {
    let checks: [Check; 8] = [
        ("missing keys read as None", missing_keys),
        ("puts, overwrites and removes", put_overwrite_remove),
        ("a batch applies in order, later writes win", batch_order),
        ("spaces are separate", spaces_are_separate),
        ("scans honour bounds, direction and limit", scans),
        ("keys order as unsigned bytes", byte_order),
        ("large values round-trip", large_values),
        ("snapshots see whole batches and never change", snapshots),
    ];
    for (name, check) in checks {
        let store = make();
        eprintln!("storage conformance: {name}");
        check(&store);
    }
}

fn batch(writes: &[TestWrite<'_>]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for (space, key, value) in writes {
        match value {
            Some(v) => batch.put(*space, key.to_vec(), v.to_vec()),
            None => batch.remove(*space, key.to_vec()),
        }
    }
    batch
}

fn apply(store: &dyn Storage, writes: &[TestWrite<'_>]) {
    store.apply(batch(writes), Durability::Immediate).expect("apply");
}

fn get(store: &dyn Storage, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    store.get(space, key).expect("get")
}

fn keys(
    store: &dyn Storage,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    dir: Direction,
    limit: usize,
) -> Vec<Vec<u8>> {
    let entries = store
        .scan(Space::Documents, start, end, dir, limit)
        .expect("scan");
    entries.into_iter().map(|(k, _)| k).collect()
}

fn missing_keys(store: &dyn Storage) {
    assert_eq!(get(store, Space::Documents, b"nope"), None);
    assert!(keys(store, Unbounded, Unbounded, Direction::Forward, 10).is_empty());
    store
        .apply(WriteBatch::new(), Durability::Immediate)
        .expect("an empty batch is fine");
}

fn put_overwrite_remove(store: &dyn Storage) {
    apply(store, &[(Space::Documents, b"k", Some(b"1"))]);
    assert_eq!(get(store, Space::Documents, b"k").as_deref(), Some(&b"1"[..]));
    apply(store, &[(Space::Documents, b"k", Some(b"2"))]);
    assert_eq!(get(store, Space::Documents, b"k").as_deref(), Some(&b"2"[..]));
    apply(store, &[(Space::Documents, b"k", None)]);
    assert_eq!(get(store, Space::Documents, b"k"), None);
    apply(store, &[(Space::Documents, b"never-there", None)]);
}

fn batch_order(store: &dyn Storage) {
    apply(
        store,
        &[
            (Space::Documents, b"a", Some(b"1")),
            (Space::Meta, b"seq", Some(b"9")),
            (Space::Documents, b"a", Some(b"2")),
            (Space::Documents, b"b", Some(b"x")),
            (Space::Documents, b"b", None),
        ],
    );
    assert_eq!(get(store, Space::Documents, b"a").as_deref(), Some(&b"2"[..]));
    assert_eq!(get(store, Space::Documents, b"b"), None);
    assert_eq!(get(store, Space::Meta, b"seq").as_deref(), Some(&b"9"[..]));
}

fn spaces_are_separate(store: &dyn Storage) {
    apply(
        store,
        &[
            (Space::Documents, b"k", Some(b"doc")),
            (Space::Meta, b"k", Some(b"meta")),
        ],
    );
    assert_eq!(get(store, Space::Documents, b"k").as_deref(), Some(&b"doc"[..]));
    assert_eq!(get(store, Space::Meta, b"k").as_deref(), Some(&b"meta"[..]));
    let meta = store
        .scan(Space::Meta, Unbounded, Unbounded, Direction::Forward, 10)
        .expect("scan");
    assert_eq!(meta, vec![(b"k".to_vec(), b"meta".to_vec())]);
}

fn scans(store: &dyn Storage) {
    let all: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e"];
    let writes: Vec<_> = all
        .iter()
        .map(|k| (Space::Documents, *k, Some(&b"v"[..])))
        .collect();
    apply(store, &writes);
    let fwd = Direction::Forward;
    let rev = Direction::Reverse;
    let k = |v: &[&[u8]]| v.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    assert_eq!(keys(store, Unbounded, Unbounded, fwd, 100), k(&all));
    assert_eq!(
        keys(store, Included(b"b"), Excluded(b"d"), fwd, 100),
        k(&[b"b", b"c"])
    );
    assert_eq!(
        keys(store, Excluded(b"b"), Included(b"d"), fwd, 100),
        k(&[b"c", b"d"])
    );
    assert_eq!(keys(store, Included(b"b"), Unbounded, fwd, 2), k(&[b"b", b"c"]));
    assert_eq!(keys(store, Unbounded, Excluded(b"d"), rev, 2), k(&[b"c", b"b"]));
    assert_eq!(
        keys(store, Excluded(b"a"), Excluded(b"e"), rev, 100),
        k(&[b"d", b"c", b"b"])
    );
    assert_eq!(keys(store, Unbounded, Unbounded, fwd, 0), Vec::<Vec<u8>>::new());
    assert_eq!(
        keys(store, Included(b"d"), Excluded(b"b"), fwd, 10),
        Vec::<Vec<u8>>::new(),
        "inverted range"
    );
    assert_eq!(
        keys(store, Excluded(b"c"), Excluded(b"c"), fwd, 10),
        Vec::<Vec<u8>>::new(),
        "empty range"
    );
}

fn byte_order(store: &dyn Storage) {
    let ordered: Vec<&[u8]> = vec![
        b"a", b"a\x00", b"a\x00b", b"a\x01", b"a\x7f", b"a\x80", b"a\xff", b"b",
    ];
    let writes: Vec<_> = ordered
        .iter()
        .rev()
        .map(|k| (Space::Documents, *k, Some(&b"v"[..])))
        .collect();
    apply(store, &writes);
    let got = keys(store, Unbounded, Unbounded, Direction::Forward, 100);
    assert_eq!(got, ordered.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
}

fn large_values(store: &dyn Storage) {
    let big: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    apply(store, &[(Space::Documents, b"big", Some(&big))]);
    assert_eq!(get(store, Space::Documents, b"big").as_deref(), Some(&big[..]));
}

fn snapshots(store: &dyn Storage) {
    apply(
        store,
        &[
            (Space::Documents, b"a", Some(b"1")),
            (Space::Meta, b"seq", Some(b"1")),
        ],
    );
    let before = store.snapshot().expect("snapshot");
    apply(
        store,
        &[
            (Space::Documents, b"a", Some(b"2")),
            (Space::Documents, b"b", Some(b"2")),
            (Space::Meta, b"seq", Some(b"2")),
        ],
    );
    apply(store, &[(Space::Documents, b"a", None)]);
    assert_eq!(
        before.get(Space::Documents, b"a").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(before.get(Space::Documents, b"b").expect("get"), None);
    assert_eq!(
        before.get(Space::Meta, b"seq").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    let keys = before
        .scan(Space::Documents, Unbounded, Unbounded, Direction::Forward, 10)
        .expect("scan");
    assert_eq!(keys, vec![(b"a".to_vec(), b"1".to_vec())]);
    let after = store.snapshot().expect("snapshot");
    assert_eq!(after.get(Space::Documents, b"a").expect("get"), None);
    assert_eq!(
        after.get(Space::Documents, b"b").expect("get").as_deref(),
        Some(&b"2"[..])
    );
    let rev = after
        .scan(Space::Documents, Unbounded, Unbounded, Direction::Reverse, 10)
        .expect("scan");
    assert_eq!(rev, vec![(b"b".to_vec(), b"2".to_vec())]);
}
