//! An in-memory backend that can be told to fail, and that remembers which
//! batches were synced so a test can ask what a crash would leave.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{Direction, Durability, Entry, Space, Storage, StorageError, StorageRead, WriteBatch};

type Maps = BTreeMap<Space, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A failure to inject into the next calls of [`MemoryStorage::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `apply` fails before writing anything, as a write error would.
    FailWrite,
    /// `apply` makes the batch visible, then fails as an fsync error would; the
    /// batch is not in the crash image.
    FailSync,
    /// `apply` sleeps this long first, as a slow disk would, then proceeds.
    Delay(std::time::Duration),
    /// `apply` panics before writing anything, as a bug in a storage engine
    /// would (lsm-tree panics on a sequence number it cannot go past).
    Panic,
}

#[derive(Default)]
struct State {
    /// What reads see.
    visible: Maps,
    /// What survives a crash: the state after the last synced batch.
    synced: Maps,
    /// Relaxed batches applied since the last sync, oldest first.
    unsynced: Vec<WriteBatch>,
    faults: Vec<Fault>,
    /// What `free_bytes` reports (`set_free_bytes`).
    free_bytes: Option<u64>,
    /// What `failed` reports (`fail_background`).
    failed: Option<String>,
}

/// A [`Storage`] kept in memory. Thread-safe; every call takes one lock.
#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

fn apply_to(maps: &mut Maps, batch: &WriteBatch) {
    for write in batch.writes() {
        let space = maps.entry(write.space).or_default();
        match &write.value {
            Some(value) => space.insert(write.key.clone(), value.clone()),
            None => space.remove(&write.key),
        };
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next `apply` calls fail, one fault per call, in order.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Makes [`free_bytes`](Storage::free_bytes) report `free` from now on, as
    /// a filesystem filling up or freed would (`None`, the default: unknown).
    pub fn set_free_bytes(&self, free: Option<u64>) {
        self.lock().free_bytes = free;
    }

    /// Makes [`failed`](Storage::failed) report `why` from now on, as a
    /// storage whose own flush or compaction failed would.
    pub fn fail_background(&self, why: &str) {
        self.lock().failed = Some(why.to_string());
    }

    /// A new store holding exactly what a machine crash now would leave: every
    /// synced batch, none of the batches applied without a sync since.
    pub fn crash_image(&self) -> MemoryStorage {
        let state = self.lock();
        let image = State {
            visible: state.synced.clone(),
            synced: state.synced.clone(),
            ..State::default()
        };
        MemoryStorage {
            state: Mutex::new(image),
        }
    }
}

/// Up to `limit` entries of `map` within `(start, end)`, in `direction`.
fn scan_map(
    map: Option<&BTreeMap<Vec<u8>, Vec<u8>>>,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    direction: Direction,
    limit: usize,
) -> Vec<Entry> {
    let Some(map) = map else { return Vec::new() };
    // BTreeMap::range panics on an inverted or empty-exclusive range; an empty answer is right.
    let inverted = match (start, end) {
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
            s > e || (s == e && !(matches!(start, Bound::Included(_)) && matches!(end, Bound::Included(_))))
        }
        _ => false,
    };
    if inverted {
        return Vec::new();
    }
    let range = map
        .range::<[u8], _>((start, end))
        .map(|(k, v)| (k.clone(), v.clone()));
    match direction {
        Direction::Forward => range.take(limit).collect(),
        Direction::Reverse => range.rev().take(limit).collect(),
    }
}

impl StorageRead for MemoryStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().visible.get(&space).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(scan_map(
            self.lock().visible.get(&space),
            start,
            end,
            direction,
            limit,
        ))
    }
}

/// A copy of the visible maps: simple and obviously consistent, fine for tests.
struct MemorySnapshot(Maps);

impl StorageRead for MemorySnapshot {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.get(&space).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(scan_map(self.0.get(&space), start, end, direction, limit))
    }
}

impl Storage for MemoryStorage {
    fn free_bytes(&self) -> Option<u64> {
        self.lock().free_bytes
    }

    fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn snapshot(&self) -> Result<Box<dyn StorageRead>, StorageError> {
        Ok(Box::new(MemorySnapshot(self.lock().visible.clone())))
    }

    fn apply(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let mut state = self.lock();
        let fault = if state.faults.is_empty() {
            None
        } else {
            Some(state.faults.remove(0))
        };
        if let Some(Fault::Delay(pause)) = fault {
            drop(state);
            std::thread::sleep(pause);
            state = self.lock();
        }
        if fault == Some(Fault::FailWrite) {
            return Err(StorageError::Backend("injected write failure".into()));
        }
        if fault == Some(Fault::Panic) {
            drop(state);
            panic!("injected panic in the storage");
        }
        apply_to(&mut state.visible, &batch);
        if fault == Some(Fault::FailSync) {
            state.unsynced.push(batch);
            return Err(StorageError::Backend("injected fsync failure".into()));
        }
        match durability {
            Durability::Relaxed => state.unsynced.push(batch),
            Durability::Immediate => {
                let state = &mut *state;
                for earlier in state.unsynced.drain(..) {
                    apply_to(&mut state.synced, &earlier);
                }
                apply_to(&mut state.synced, &batch);
            }
        }
        Ok(())
    }
}
