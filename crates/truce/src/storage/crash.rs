//! A backend that records every write and every sync, so a test can rebuild what
//! a machine crash at any one of them would leave on disk.
//!
//! The model, and why it matches fjall (`storage/fjall_store.rs`):
//!
//! - `apply` with [`Durability::Immediate`] is two events: the batch is *written*
//!   (fjall appends it to its journal, one `Start … End(checksum)` entry), then
//!   *synced* (fdatasync). With [`Durability::Relaxed`] it is a write only.
//! - A crash keeps every batch written before the last completed sync. Of the
//!   batches written since (the unsynced tail, oldest first) it keeps a prefix:
//!   none ([`Tail::Drop`]), all ([`Tail::Keep`]) or the first `n`
//!   ([`Tail::Torn`]). A journal is appended in order, so whatever reached the
//!   disk of an unsynced tail is a prefix of it, possibly ending inside a batch.
//! - A batch is never torn *inside*: fjall discards a last batch without its
//!   `End` entry, and one whose checksum fails is cut by
//!   [`fjall_repair`](super::fjall_repair). Either way a batch torn in the middle
//!   recovers as if it were dropped, which [`Tail::Drop`] (or a shorter
//!   [`Tail::Torn`]) already covers.
//!
//! Reads and snapshots see every batch applied so far, as on a live fjall.

use std::ops::Bound;
use std::sync::Mutex;

use super::{
    Direction, Durability, Entry, MemoryStorage, Space, Storage, StorageError, StorageRead, WriteBatch,
};

/// One thing that happened to the disk.
#[derive(Clone, Debug)]
enum Event {
    /// A batch reached the OS (the journal append).
    Write(WriteBatch),
    /// Every write before it is now on stable storage.
    Sync,
}

/// Which part of the unsynced tail a crash keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// None of the batches written since the last sync.
    Drop,
    /// The first `n` of them (`0 < n <` their number): the journal was cut
    /// between two batches, or inside batch `n + 1`.
    Torn(usize),
    /// All of them: the OS happened to write everything back before the crash.
    Keep,
}

/// A [`Storage`] kept in memory that remembers the order of writes and syncs.
/// Thread-safe; `apply` calls are serialized.
#[derive(Default)]
pub struct CrashStorage {
    live: MemoryStorage,
    events: Mutex<Vec<Event>>,
    split: bool,
}

impl CrashStorage {
    /// An empty store with an empty history.
    pub fn new() -> CrashStorage {
        CrashStorage::default()
    }

    /// A deliberately broken store that breaks the atomicity of `apply`: it
    /// writes (and syncs) each batch as two, so a crash can fall between the
    /// halves. For proving that a crash checker catches partial commits.
    pub fn splitting_batches() -> CrashStorage {
        CrashStorage {
            split: true,
            ..CrashStorage::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A panic while holding this lock is a test failure already; keep going.
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many writes and syncs have happened. A crash *point* is a number in
    /// `0..=events()`: the crash happens after that many events.
    pub fn events(&self) -> usize {
        self.lock().len()
    }

    /// The tails a crash after `point` events can leave, each once: `Drop`, every
    /// `Torn(n)`, and `Keep` when anything is unsynced.
    pub fn tails(&self, point: usize) -> Vec<Tail> {
        let unsynced = unsynced_tail(&self.lock()[..point]).len();
        let mut tails = vec![Tail::Drop];
        tails.extend((1..unsynced).map(Tail::Torn));
        if unsynced > 0 {
            tails.push(Tail::Keep);
        }
        tails
    }

    /// A new store holding what a crash after `point` events leaves, keeping
    /// `tail` of the unsynced batches. Panics if `point > events()` or the tail
    /// names more batches than are unsynced.
    pub fn image(&self, point: usize, tail: Tail) -> MemoryStorage {
        let events = self.lock();
        let before = &events[..point];
        let unsynced = unsynced_tail(before);
        let keep = match tail {
            Tail::Drop => 0,
            Tail::Torn(n) => {
                assert!(
                    n < unsynced.len(),
                    "a torn tail keeps fewer batches than are unsynced"
                );
                n
            }
            Tail::Keep => unsynced.len(),
        };
        let synced_end = before.len() - trailing_writes(before);
        let image = MemoryStorage::new();
        let survivors = before[..synced_end].iter().chain(&before[synced_end..][..keep]);
        for event in survivors {
            if let Event::Write(batch) = event {
                image
                    .apply(batch.clone(), Durability::Immediate)
                    .expect("a memory store without faults applies every batch");
            }
        }
        image
    }
}

/// How many events at the end of `events` are writes not followed by a sync.
fn trailing_writes(events: &[Event]) -> usize {
    events
        .iter()
        .rev()
        .take_while(|e| matches!(e, Event::Write(_)))
        .count()
}

/// The batches of `events` written after the last sync, oldest first.
fn unsynced_tail(events: &[Event]) -> &[Event] {
    &events[events.len() - trailing_writes(events)..]
}

fn batch_of(writes: Vec<super::BatchWrite>) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for write in writes {
        match write.value {
            Some(value) => batch.put(write.space, write.key, value),
            None => batch.remove(write.space, write.key),
        }
    }
    batch
}

impl StorageRead for CrashStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.live.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.live.scan(space, start, end, direction, limit)
    }
}

impl Storage for CrashStorage {
    fn snapshot(&self) -> Result<Box<dyn StorageRead>, StorageError> {
        self.live.snapshot()
    }

    fn apply(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        // Held across the live apply so the history has the order reads saw.
        let mut events = self.lock();
        if batch.is_empty() {
            return Ok(()); // As fjall: an empty batch writes nothing and syncs nothing.
        }
        let parts = if self.split {
            let mut writes = batch.into_writes();
            let second = writes.split_off(writes.len() / 2);
            vec![batch_of(writes), batch_of(second)]
        } else {
            vec![batch]
        };
        for part in parts {
            events.push(Event::Write(part.clone()));
            self.live.apply(part, durability)?;
            if durability == Durability::Immediate {
                events.push(Event::Sync);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &CrashStorage, key: &str, durability: Durability) {
        let mut batch = WriteBatch::new();
        batch.put(Space::Documents, key.as_bytes().to_vec(), b"v".to_vec());
        store.apply(batch, durability).unwrap();
    }

    fn keys(image: &MemoryStorage) -> Vec<String> {
        image
            .scan(
                Space::Documents,
                Bound::Unbounded,
                Bound::Unbounded,
                Direction::Forward,
                99,
            )
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn a_crash_keeps_the_synced_batches_and_a_prefix_of_the_rest() {
        let store = CrashStorage::new();
        put(&store, "a", Durability::Immediate); // events 0 (write), 1 (sync)
        put(&store, "b", Durability::Relaxed); // 2
        put(&store, "c", Durability::Relaxed); // 3
        assert_eq!(store.events(), 4);
        assert_eq!(store.tails(0), [Tail::Drop]);
        assert_eq!(store.tails(1), [Tail::Drop, Tail::Keep], "written, not synced");
        assert_eq!(keys(&store.image(1, Tail::Drop)), Vec::<String>::new());
        assert_eq!(keys(&store.image(1, Tail::Keep)), ["a"]);
        assert_eq!(keys(&store.image(2, Tail::Drop)), ["a"]);
        assert_eq!(store.tails(4), [Tail::Drop, Tail::Torn(1), Tail::Keep]);
        assert_eq!(keys(&store.image(4, Tail::Drop)), ["a"]);
        assert_eq!(keys(&store.image(4, Tail::Torn(1))), ["a", "b"]);
        assert_eq!(keys(&store.image(4, Tail::Keep)), ["a", "b", "c"]);
        put(&store, "d", Durability::Immediate); // 4, 5: syncs b, c and d
        assert_eq!(keys(&store.image(6, Tail::Drop)), ["a", "b", "c", "d"]);
        assert_eq!(store.tails(6), [Tail::Drop]);
    }
}
