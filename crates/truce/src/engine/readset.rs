//! What a transaction read: point keys (present or absent) and key ranges, and the
//! committer's log of what recent commits wrote, to validate one against the other.
//!
//! Serializability: a transaction's reads all come from one snapshot at sequence
//! S. At commit, if no commit after S wrote any key the transaction read (or any
//! key inside a range it read), then running the whole transaction at the commit
//! point would have read exactly the same values — so it is equivalent to a serial
//! execution in commit order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foldhash::HashSet;

use crate::error::{Error, Result};
use crate::index::query::KeyRange;
use crate::limits::{RECENT_WRITES_BYTES_MAX, RECENT_WRITES_RETAIN_MS, TX_READ_SET_ENTRIES_MAX};
use crate::storage::Space;

use super::tx::TxFailure;

/// The reads of one transaction.
#[derive(Clone, Debug, Default)]
pub struct ReadSet {
    points: HashSet<(Space, Vec<u8>)>,
    ranges: Vec<(Space, KeyRange)>,
}

impl ReadSet {
    fn check_size(&self) -> Result<()> {
        if self.points.len() + self.ranges.len() >= TX_READ_SET_ENTRIES_MAX {
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
        self.points.insert((space, key));
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
        if self.points.contains(&(space, key.to_vec())) {
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

struct RecentCommit {
    seq: u64,
    at: Instant,
    keys: Vec<(Space, Vec<u8>)>,
    bytes: usize,
}

/// The keys written by recent commits, bounded by age and bytes.
pub struct RecentWrites {
    commits: VecDeque<RecentCommit>,
    bytes: usize,
    /// Every commit up to this sequence has been forgotten.
    forgotten_through: u64,
}

impl RecentWrites {
    /// An empty log; nothing up to `last_seq` (before this process) is known.
    pub fn new(last_seq: u64) -> RecentWrites {
        RecentWrites {
            commits: VecDeque::new(),
            bytes: 0,
            forgotten_through: last_seq,
        }
    }

    /// Remembers what commit `seq` wrote.
    pub fn record(&mut self, seq: u64, keys: Vec<(Space, Vec<u8>)>) {
        let bytes = keys.iter().map(|(_, k)| k.len() + 16).sum::<usize>() + 48;
        self.bytes += bytes;
        self.commits.push_back(RecentCommit {
            seq,
            at: Instant::now(),
            keys,
            bytes,
        });
    }

    /// Forgets commits older than the window or beyond the byte bound.
    pub fn trim(&mut self) {
        let window = Duration::from_millis(RECENT_WRITES_RETAIN_MS);
        // One clock read per trim, not one per commit it looks at.
        let now = Instant::now();
        while let Some(oldest) = self.commits.front() {
            if now.saturating_duration_since(oldest.at) <= window && self.bytes <= RECENT_WRITES_BYTES_MAX {
                break;
            }
            self.bytes -= oldest.bytes;
            self.forgotten_through = oldest.seq;
            self.commits.pop_front();
        }
    }

    /// Checks that no commit after `snapshot_seq` wrote anything `reads` saw.
    pub fn validate(&self, reads: &ReadSet, snapshot_seq: u64) -> std::result::Result<(), TxFailure> {
        if snapshot_seq < self.forgotten_through {
            return Err(TxFailure::SnapshotTooOld {
                snapshot_seq,
                forgotten_through: self.forgotten_through,
            });
        }
        for commit in self.commits.iter().rev().take_while(|c| c.seq > snapshot_seq) {
            for (space, key) in &commit.keys {
                if let Some(range) = reads.touches(*space, key) {
                    let (collection, what) = describe(*space, key, range);
                    return Err(TxFailure::ReadConflict {
                        collection,
                        what,
                        seq: commit.seq,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether no commit after `seq` wrote `key` in `space` — so a read of it
    /// made once every commit up to `seq` was applied is still current. `false`
    /// when that cannot be told cheaply: commits after `seq` forgotten, or more
    /// than [`UNTOUCHED_SCAN_COMMITS_MAX`] of them to look through.
    pub fn untouched_since(&self, space: Space, key: &[u8], seq: u64) -> bool {
        if seq < self.forgotten_through {
            return false;
        }
        let mut later = self.commits.iter().rev().take_while(|c| c.seq > seq);
        let mut scanned = 0;
        later.all(|commit| {
            scanned += 1;
            scanned <= UNTOUCHED_SCAN_COMMITS_MAX && !commit.keys.iter().any(|(s, k)| *s == space && k == key)
        })
    }
}

/// Most recent commits [`RecentWrites::untouched_since`] looks through before
/// it answers "cannot tell" (the caller then reads storage, which costs a few
/// microseconds: about as much as scanning this many commits).
const UNTOUCHED_SCAN_COMMITS_MAX: usize = 512;

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
    fn what_is_forgotten_or_too_long_to_scan_cannot_be_vouched_for() {
        // Nothing before this process (or before a trim) is known.
        let recent = RecentWrites::new(10);
        assert!(!recent.untouched_since(Space::Documents, &doc_key("a"), 9));
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 10));

        let mut recent = RecentWrites::new(0);
        let later = UNTOUCHED_SCAN_COMMITS_MAX as u64;
        for seq in 1..=later + 1 {
            recent.record(seq, vec![(Space::Documents, doc_key("other"))]);
        }
        assert!(recent.untouched_since(Space::Documents, &doc_key("a"), 1));
        assert!(!recent.untouched_since(Space::Documents, &doc_key("a"), 0));
    }
}
