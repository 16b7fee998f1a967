//! What a transaction read: point keys (present or absent) and key ranges, and the
//! committer's log of what recent commits wrote, to validate one against the other.
//!
//! Serializability: a transaction's reads all come from one snapshot at sequence
//! S. At commit, if no commit after S wrote any key the transaction read (or any
//! key inside a range it read), then running the whole transaction at the commit
//! point would have read exactly the same values — so it is equivalent to a serial
//! execution in commit order.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashSet};
use hashlink::LinkedHashMap;

use crate::error::{Error, Result};
use crate::index::query::KeyRange;
use crate::limits::{RECENT_WRITES_BYTES_MAX, RECENT_WRITES_RETAIN_MS, TX_READ_SET_ENTRIES_MAX};
use crate::storage::Space;

use super::tx::TxFailure;

/// The reads of one transaction.
#[derive(Clone, Debug, Default)]
pub struct ReadSet {
    /// Point reads, a set per space: validation looks a written key up by
    /// reference, without copying it.
    points: HashMap<Space, HashSet<Vec<u8>>>,
    ranges: Vec<(Space, KeyRange)>,
}

impl ReadSet {
    fn check_size(&self) -> Result<()> {
        let points: usize = self.points.values().map(HashSet::len).sum();
        if points + self.ranges.len() >= TX_READ_SET_ENTRIES_MAX {
            return Err(Error::LimitExceeded {
                what: "TX_READ_SET_ENTRIES_MAX",
                limit: TX_READ_SET_ENTRIES_MAX as u64,
            });
        }
        Ok(())
    }

    /// Records a point read of `key` (whether or not something was there).
    pub fn add_point(&mut self, space: Space, key: Vec<u8>) -> Result<()> {
        self.check_size()?;
        self.points.entry(space).or_default().insert(key);
        Ok(())
    }

    /// Records a range read.
    pub fn add_range(&mut self, space: Space, range: KeyRange) -> Result<()> {
        self.check_size()?;
        self.ranges.push((space, range));
        Ok(())
    }

    /// Whether a write of `key` in `space` touches something this set read.
    fn touches(&self, space: Space, key: &[u8]) -> Option<Option<&KeyRange>> {
        if self.points.get(&space).is_some_and(|keys| keys.contains(key)) {
            return Some(None);
        }
        self.ranges
            .iter()
            .find(|(s, r)| *s == space && r.contains(key))
            .map(|(_, r)| Some(r))
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.ranges.is_empty()
    }
}

/// A written key: the space and the key's bytes.
type WrittenKey = (Space, Vec<u8>);

/// When a key was last written: the commit's sequence and when it was recorded.
#[derive(Clone, Copy)]
struct LastWrite {
    seq: u64,
    at: Instant,
}

/// Bytes [`RecentWrites`] charges a key for besides its own: the list node
/// (space and key `Vec`, sequence, instant, two links: 72, ~80 as allocated),
/// the key's own heap block's rounding, and its hash-table slot at the table's
/// load (~10–20).
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Every key written recently, with its latest write only, oldest first:
/// bounded by age and bytes.
///
/// One entry per *key*, not per commit: a document written a million times in
/// the window is one entry, moved to the back on each write. So a hot key
/// costs the same few bytes however hot it is (a log of commits held ~110
/// bytes per commit: ~45 MB at the embedded hot counter's rate, streamed
/// through the committer's cache), and "was this key written after S?" is one
/// lookup. Nothing is lost by keeping only the latest write: every question
/// asked of the log is "was K written after S?", and a key written after S has
/// its latest write after S.
pub struct RecentWrites {
    /// Keys in the order of their latest write; sequences rise from front to back.
    keys: LinkedHashMap<WrittenKey, LastWrite, foldhash::fast::RandomState>,
    bytes: usize,
    /// Writes up to this sequence may have been forgotten.
    forgotten_through: u64,
}

impl RecentWrites {
    /// An empty log; nothing up to `last_seq` (before this process) is known.
    pub fn new(last_seq: u64) -> RecentWrites {
        RecentWrites {
            keys: LinkedHashMap::default(),
            bytes: 0,
            forgotten_through: last_seq,
        }
    }

    /// Remembers what commit `seq` wrote. Sequences must rise from call to call.
    pub fn record(&mut self, seq: u64, keys: Vec<WrittenKey>) {
        debug_assert!(
            self.keys.back().is_none_or(|(_, last)| last.seq <= seq),
            "recent writes recorded out of order: {seq}"
        );
        let write = LastWrite {
            seq,
            at: Instant::now(),
        };
        for (space, key) in keys {
            let bytes = key.len() + ENTRY_OVERHEAD_BYTES;
            // A key already held moves to the back with its new write (and
            // keeps its own bytes; these are dropped).
            if self.keys.insert((space, key), write).is_none() {
                self.bytes += bytes;
            }
        }
    }

    /// Forgets keys whose latest write is older than the window, and the
    /// oldest ones beyond the byte bound.
    pub fn trim(&mut self) {
        // One clock read per trim, not one per key it looks at.
        self.trim_to(
            RECENT_WRITES_BYTES_MAX,
            Duration::from_millis(RECENT_WRITES_RETAIN_MS),
            Instant::now(),
        );
    }

    /// [`trim`](Self::trim) with its bounds given (the tests' small ones).
    fn trim_to(&mut self, bytes_max: usize, window: Duration, now: Instant) {
        while let Some((_, oldest)) = self.keys.front() {
            if now.saturating_duration_since(oldest.at) <= window && self.bytes <= bytes_max {
                break;
            }
            let ((_, key), oldest) = self.keys.pop_front().expect("the front entry just seen");
            self.bytes -= key.len() + ENTRY_OVERHEAD_BYTES;
            self.forgotten_through = self.forgotten_through.max(oldest.seq);
        }
    }

    /// Treats every write up to `seq` as forgotten: a transaction whose
    /// snapshot is older fails as too old, whatever it read (an index drop:
    /// later writes into a range of the index no longer show here).
    pub fn forget_through(&mut self, seq: u64) {
        self.forgotten_through = self.forgotten_through.max(seq);
    }

    /// Checks that no commit after `snapshot_seq` wrote anything `reads` saw.
    pub fn validate(&self, reads: &ReadSet, snapshot_seq: u64) -> std::result::Result<(), TxFailure> {
        if snapshot_seq < self.forgotten_through {
            return Err(TxFailure::SnapshotTooOld {
                snapshot_seq,
                forgotten_through: self.forgotten_through,
            });
        }
        let later = self
            .keys
            .iter()
            .rev()
            .take_while(|(_, last)| last.seq > snapshot_seq);
        for ((space, key), last) in later {
            if let Some(range) = reads.touches(*space, key) {
                let (collection, what) = describe(*space, key, range);
                return Err(TxFailure::ReadConflict {
                    collection,
                    what,
                    seq: last.seq,
                });
            }
        }
        Ok(())
    }

    /// Whether no commit after `seq` wrote `key` in `space` — so a read of it
    /// made once every commit up to `seq` was applied is still current. `false`
    /// when that cannot be told: writes after `seq` may have been forgotten.
    pub fn untouched_since(&self, space: Space, key: &[u8], seq: u64) -> bool {
        if seq < self.forgotten_through {
            return false;
        }
        let hash = self.keys.hasher().hash_one((space, key));
        self.keys
            .raw_entry()
            .from_hash(hash, |(s, k)| *s == space && k == key)
            .is_none_or(|(_, last)| last.seq <= seq)
    }
}

/// A human description of a conflicting key: collection, and document or range.
fn describe(space: Space, key: &[u8], range: Option<&KeyRange>) -> (String, String) {
    let mut parts = key.splitn(3, |&b| b == 0);
    let collection = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let rest = parts.next().unwrap_or_default();
    let what = match (space, range) {
        (Space::Index, _) => format!("index {} range", String::from_utf8_lossy(rest)),
        (_, Some(_)) => format!("id range (document {} changed)", String::from_utf8_lossy(rest)),
        _ => format!("document {}", String::from_utf8_lossy(rest)),
    };
    (collection, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_key(id: &str) -> Vec<u8> {
        [b"c\0".as_slice(), id.as_bytes()].concat()
    }

    #[test]
    fn a_read_stays_current_until_a_later_commit_writes_its_key() {
        let mut recent = RecentWrites::new(10);
        recent.record(11, vec![(Space::Documents, doc_key("a"))]);
        recent.record(
            12,
            vec![(Space::Index, doc_key("b")), (Space::Documents, doc_key("c"))],
        );
        // Written at 11: a read as of 10 is stale, one as of 11 or later is not.
        assert!(!recent.untouched_since(Space::Documents, &doc_key("a"), 10));
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 11));
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 12));
        // The same bytes in another space are another key.
        assert!(recent.untouched_since(Space::Documents, &doc_key("b"), 10));
        assert!(!recent.untouched_since(Space::Index, &doc_key("b"), 10));
        assert!(!recent.untouched_since(Space::Documents, &doc_key("c"), 11));
        assert!(recent.untouched_since(Space::Documents, &doc_key("z"), 10));
    }

    #[test]
    fn what_is_forgotten_cannot_be_vouched_for_and_what_is_kept_always_can() {
        // Nothing before this process (or before a trim) is known.
        let recent = RecentWrites::new(10);
        assert!(!recent.untouched_since(Space::Documents, &doc_key("a"), 9));
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 10));

        // However many commits came after, a kept key's answer is one lookup.
        let mut recent = RecentWrites::new(0);
        for seq in 1..=10_000 {
            recent.record(seq, vec![(Space::Documents, doc_key("other"))]);
        }
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 0));
        assert!(!recent.untouched_since(Space::Documents, &doc_key("other"), 9_999));
        assert!(recent.untouched_since(Space::Documents, &doc_key("other"), 10_000));
    }

    #[test]
    fn a_key_written_again_and_again_is_held_once() {
        let mut recent = RecentWrites::new(0);
        recent.record(1, vec![(Space::Documents, doc_key("hot"))]);
        let one_key = recent.bytes;
        assert_eq!(one_key, doc_key("hot").len() + ENTRY_OVERHEAD_BYTES);
        for seq in 2..=100_000 {
            recent.record(seq, vec![(Space::Documents, doc_key("hot"))]);
        }
        assert_eq!((recent.keys.len(), recent.bytes), (1, one_key));
        // Its latest write is what it answers with.
        assert!(!recent.untouched_since(Space::Documents, &doc_key("hot"), 99_999));
        assert!(recent.untouched_since(Space::Documents, &doc_key("hot"), 100_000));
    }

    #[test]
    fn past_the_byte_bound_the_keys_written_longest_ago_are_forgotten_first() {
        let per_key = doc_key("k0000000").len() + ENTRY_OVERHEAD_BYTES;
        let fit = RECENT_WRITES_BYTES_MAX / per_key;
        let mut recent = RecentWrites::new(0);
        // Key 0 first, then every other key, then key 0 again: key 1 is now
        // the one written longest ago.
        let key = |i: usize| doc_key(&format!("k{i:07}"));
        for i in 0..=fit {
            recent.record(i as u64 + 1, vec![(Space::Documents, key(i))]);
        }
        let last = fit as u64 + 2;
        recent.record(last, vec![(Space::Documents, key(0))]);
        recent.trim();
        assert!(recent.bytes <= RECENT_WRITES_BYTES_MAX);
        assert_eq!(recent.keys.len(), fit);
        // Key 1 (seq 2) went: nothing at or before seq 2 can be vouched for.
        assert_eq!(recent.forgotten_through, 2);
        assert!(!recent.untouched_since(Space::Documents, &key(1), 1));
        assert!(recent.untouched_since(Space::Documents, &key(1), 2));
        // Key 0 was written again last and is still known, as is key 2.
        assert!(!recent.untouched_since(Space::Documents, &key(0), last - 1));
        assert!(!recent.untouched_since(Space::Documents, &key(2), 2));
        assert!(recent.untouched_since(Space::Documents, &key(2), 3));
        // A snapshot older than what was forgotten cannot be validated.
        let reads = ReadSet::default();
        assert!(matches!(
            recent.validate(&reads, 1),
            Err(TxFailure::SnapshotTooOld {
                forgotten_through: 2,
                ..
            })
        ));
        assert!(recent.validate(&reads, 2).is_ok());
    }

    #[test]
    fn a_read_set_holds_at_most_its_bound_of_points_and_ranges_over_every_space() {
        let mut reads = ReadSet::default();
        let bound = TX_READ_SET_ENTRIES_MAX;
        for i in 0..bound / 2 {
            reads
                .add_point(Space::Documents, doc_key(&format!("d{i}")))
                .unwrap();
        }
        for i in 0..bound / 4 {
            reads.add_point(Space::Index, doc_key(&format!("i{i}"))).unwrap();
        }
        for i in 0..bound - bound / 2 - bound / 4 {
            let range = KeyRange {
                start: doc_key(&format!("r{i}")),
                end: None,
            };
            reads.add_range(Space::Documents, range).unwrap();
        }
        let full = |result: Result<()>| {
            matches!(
                result,
                Err(Error::LimitExceeded {
                    what: "TX_READ_SET_ENTRIES_MAX",
                    ..
                })
            )
        };
        assert!(full(reads.add_point(Space::Meta, doc_key("one more"))));
        assert!(full(reads.add_range(
            Space::Index,
            KeyRange {
                start: Vec::new(),
                end: None
            }
        )));
        // What it holds is found, in its own space only.
        assert!(reads.touches(Space::Index, &doc_key("i7")).is_some());
        assert!(reads.touches(Space::Meta, &doc_key("i7")).is_none());
    }

    #[test]
    fn a_read_conflicts_with_the_latest_later_write_of_its_key_or_range() {
        let mut recent = RecentWrites::new(0);
        recent.record(1, vec![(Space::Documents, doc_key("a"))]);
        recent.record(2, vec![(Space::Documents, doc_key("b"))]);
        recent.record(3, vec![(Space::Documents, doc_key("a"))]);
        let mut point = ReadSet::default();
        point.add_point(Space::Documents, doc_key("a")).unwrap();
        assert!(recent.validate(&point, 3).is_ok());
        for snapshot in [0, 1, 2] {
            assert!(matches!(
                recent.validate(&point, snapshot),
                Err(TxFailure::ReadConflict { seq: 3, .. })
            ));
        }
        let mut range = ReadSet::default();
        range
            .add_range(
                Space::Documents,
                KeyRange {
                    start: doc_key("b"),
                    end: Some(doc_key("c")),
                },
            )
            .unwrap();
        assert!(matches!(
            recent.validate(&range, 1),
            Err(TxFailure::ReadConflict { seq: 2, .. })
        ));
        assert!(recent.validate(&range, 2).is_ok());
    }

    mod model {
        use proptest::prelude::*;

        use super::*;

        /// A key from a small alphabet, so that keys repeat across commits.
        fn arb_key() -> impl Strategy<Value = (Space, Vec<u8>)> {
            (prop_oneof![Just(Space::Documents), Just(Space::Index)], 0u8..6)
                .prop_map(|(space, k)| (space, doc_key(&format!("k{k}"))))
        }

        /// A read set of up to three point reads and one id range.
        fn arb_reads() -> impl Strategy<Value = ReadSet> {
            (
                prop::collection::vec(arb_key(), 0..4),
                prop::option::of((0u8..6, 0u8..6)),
            )
                .prop_map(|(points, range)| {
                    let mut reads = ReadSet::default();
                    for (space, key) in points {
                        reads.add_point(space, key).unwrap();
                    }
                    if let Some((a, b)) = range {
                        let (start, end) = (a.min(b), a.max(b));
                        let range = KeyRange {
                            start: doc_key(&format!("k{start}")),
                            end: Some(doc_key(&format!("k{end}"))),
                        };
                        reads.add_range(Space::Documents, range).unwrap();
                    }
                    reads
                })
        }

        /// After a commit: no trim, or a trim to a byte bound of a few keys'
        /// worth, or one long after every write (the age bound).
        fn arb_trim() -> impl Strategy<Value = Option<(usize, bool)>> {
            prop::option::of((0usize..6, any::<bool>()))
                .prop_map(|t| t.map(|(keys, aged)| (keys * (10 + ENTRY_OVERHEAD_BYTES), aged)))
        }

        proptest! {
            /// Against the simplest log there is — every write of every
            /// commit, kept — one entry per key answers every question the
            /// same: whether a key was written after a sequence, and which is
            /// the latest write after a snapshot that a read set saw. Trimmed,
            /// it answers the same for every sequence it still vouches for
            /// (from `forgotten_through` on), and "cannot tell" before.
            #[test]
            fn keeping_only_the_latest_write_of_each_key_answers_as_keeping_all(
                // Commits, each writing up to three keys (none: a commit that
                // wrote nothing the log keeps), each maybe followed by a trim.
                commits in prop::collection::vec(
                    (prop::collection::vec(arb_key(), 0..4), arb_trim()),
                    0..40,
                ),
                probes in prop::collection::vec((arb_key(), 0u64..45), 1..10),
                reads in prop::collection::vec((arb_reads(), 0u64..45), 1..5),
            ) {
                let mut recent = RecentWrites::new(0);
                let mut all = Vec::new();
                for (i, (keys, trim)) in commits.into_iter().enumerate() {
                    let seq = i as u64 + 1;
                    all.extend(keys.iter().map(|k| (seq, k.clone())));
                    recent.record(seq, keys);
                    if let Some((bytes_max, aged)) = trim {
                        let later = Instant::now() + Duration::from_secs(u64::from(aged));
                        recent.trim_to(bytes_max, Duration::from_millis(500), later);
                        prop_assert!(recent.bytes <= bytes_max);
                    }
                }
                let forgotten = recent.forgotten_through;
                for ((space, key), seq) in probes {
                    let written_after = all
                        .iter()
                        .any(|(at, (s, k))| *at > seq && *s == space && *k == key);
                    let vouched = recent.untouched_since(space, &key, seq);
                    if seq < forgotten {
                        prop_assert!(!vouched);
                    } else {
                        prop_assert_eq!(vouched, !written_after);
                    }
                }
                for (reads, snapshot) in reads {
                    let latest_conflict = all
                        .iter()
                        .filter(|(at, (s, k))| *at > snapshot && reads.touches(*s, k).is_some())
                        .map(|(at, _)| *at)
                        .max();
                    match (recent.validate(&reads, snapshot), latest_conflict) {
                        (Err(TxFailure::SnapshotTooOld { forgotten_through, .. }), _)
                            if snapshot < forgotten && forgotten_through == forgotten => {}
                        (Ok(()), None) if snapshot >= forgotten => {}
                        (Err(TxFailure::ReadConflict { seq, .. }), Some(latest))
                            if snapshot >= forgotten => prop_assert_eq!(seq, latest),
                        (got, want) => prop_assert!(false, "{:?} against {:?}", got, want),
                    }
                }
            }
        }
    }
}
