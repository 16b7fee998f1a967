//! Room left on the storage's filesystem. A write that fails in the storage
//! for want of space fails the whole engine until it is reopened, and so does
//! a flush or compaction of the storage's own, so the engine keeps a reserve:
//! [`Options::min_free_disk_bytes`](super::Options::min_free_disk_bytes) plus
//! room for the storage's compactions, which write their new tables before
//! they free the old ones — as much as the database takes on disk. (Measured
//! on filling disks, 2026-12-06: after the last write of bursts of 1 MB
//! documents, fjall's own work took 242 MiB more at 400 MB written, 633 MiB
//! at 992 MB, 1,433 MiB at 2 GB, 2,923 MiB at 3.5 GB: no constant covers
//! it.) While less is free, writes that add data
//! are refused with [`Error::InsufficientStorage`]: commits before they are
//! queued, and again in the committer (after an idempotent replay was
//! answered, and for those queued before the space ran short); a new index
//! in the committer (one declared again as it is writes nothing). Deletes,
//! checks, configuration changes (a TTL is how space is freed) and the
//! engine's own work (TTL sweeps, the counter outbox, counter backfills and
//! recounts, backfills of indexes declared earlier) go on inside the
//! reserve.
//!
//! The committer looks at the filesystem at start and on every background
//! tick ([`BACKGROUND_TICK_MS`](crate::limits::BACKGROUND_TICK_MS) while
//! writes come, [`COMMITTER_IDLE_MS`](crate::limits::COMMITTER_IDLE_MS) when
//! idle), so writes resume within a second of space being freed; between
//! looks it counts the bytes of every group it stores against the free space
//! it last saw, so a burst cannot run far past the reserve.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::WriteOp;
use super::tx::Commit;
use crate::error::{Error, Result};

/// What [`DiskSpace`]'s atomics hold while the backend cannot say.
const UNKNOWN: u64 = u64::MAX;

/// The reserve, the last look at the filesystem, the bytes stored since,
/// and whether writes are refused.
pub struct DiskSpace {
    min_free: u64,
    free: AtomicU64,
    reserve: AtomicU64,
    stored_since: AtomicU64,
    low: AtomicBool,
}

/// The free space as last seen, for health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// Bytes available to the engine on its storage's filesystem at the last
    /// look; `None` when the backend cannot say (in memory).
    pub free_bytes: Option<u64>,
    /// The space kept free: `min_free_disk_bytes` plus room for compactions
    /// (0: nothing is refused).
    pub reserve_bytes: u64,
    /// Whether writes that add data are being refused.
    pub refusing: bool,
}

impl DiskSpace {
    /// A reserve of `min_free` bytes plus room for compactions, as much as
    /// the database takes (0 refuses nothing), no space seen yet.
    pub fn new(min_free: u64) -> DiskSpace {
        DiskSpace {
            min_free,
            free: AtomicU64::new(UNKNOWN),
            reserve: AtomicU64::new(min_free),
            stored_since: AtomicU64::new(0),
            low: AtomicBool::new(false),
        }
    }

    /// Records what the backend reports: the bytes free on its filesystem
    /// and the bytes the database takes (whose compactions need room).
    pub fn observe(&self, free: Option<u64>, used: Option<u64>) {
        let reserve = match self.min_free {
            0 => 0,
            min_free => min_free.saturating_add(used.unwrap_or(0)),
        };
        self.reserve.store(reserve, Ordering::Relaxed);
        self.free.store(free.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.stored_since.store(0, Ordering::Relaxed);
        self.judge(free);
    }

    /// Counts `bytes` the committer has just stored against the free space
    /// last seen.
    pub fn stored(&self, bytes: u64) {
        let since = self.stored_since.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let free = self.free.load(Ordering::Relaxed);
        if free != UNKNOWN && !self.low.load(Ordering::Relaxed) {
            self.judge(Some(free.saturating_sub(since)));
        }
    }

    /// Refuses or accepts from now on by `free` against the reserve, logging
    /// each change.
    fn judge(&self, free: Option<u64>) {
        let reserve = self.reserve.load(Ordering::Relaxed);
        let low = free.is_some_and(|free| free < reserve);
        let was = self.low.swap(low, Ordering::Relaxed);
        let free = free.unwrap_or(0);
        if low && !was {
            tracing::warn!(
                free_bytes = free,
                reserve_bytes = reserve,
                "less than the reserve is free on the data directory's filesystem: writes that add data are \
                 refused until space is freed"
            );
        } else if was && !low {
            tracing::info!(
                free_bytes = free,
                reserve_bytes = reserve,
                "free space is back above the reserve: writes resume"
            );
        }
    }

    /// `Err(InsufficientStorage)` for a commit that would add data while
    /// space is short: one that puts or patches, and one whose idempotency
    /// record would hold the documents its checks read. One relaxed load
    /// otherwise.
    pub(crate) fn admit(&self, commit: &Commit) -> Result<()> {
        if !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A record keeps the documents its checks read.
        let keyed = commit.keeps_record();
        let adds = commit.ops.iter().any(|op| match op.write {
            Some(WriteOp::Put { .. } | WriteOp::Patch(_)) => true,
            Some(WriteOp::Delete) => false,
            None => keyed,
        });
        if adds { Err(self.refusal()) } else { Ok(()) }
    }

    /// `Err(InsufficientStorage)` while space is short, for a request that
    /// adds data whatever it holds (a new index).
    pub(crate) fn admit_any(&self) -> Result<()> {
        if self.low.load(Ordering::Relaxed) {
            return Err(self.refusal());
        }
        Ok(())
    }

    fn refusal(&self) -> Error {
        let status = self.status();
        Error::InsufficientStorage {
            free: status.free_bytes.unwrap_or(0),
            reserve: status.reserve_bytes,
        }
    }

    /// The free space as last seen.
    pub fn status(&self) -> DiskStatus {
        let free = self.free.load(Ordering::Relaxed);
        DiskStatus {
            free_bytes: (free != UNKNOWN).then_some(free),
            reserve_bytes: self.reserve.load(Ordering::Relaxed),
            refusing: self.low.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_refused_only_below_the_reserve_and_resume_above_it() {
        let disk = DiskSpace::new(100);
        assert_eq!(disk.status().free_bytes, None);
        disk.observe(Some(100), None);
        assert!(!disk.status().refusing, "exactly the reserve is enough");
        disk.observe(Some(99), None);
        assert!(disk.status().refusing);
        assert_eq!(disk.status().free_bytes, Some(99));
        disk.observe(None, None);
        assert!(
            !disk.status().refusing,
            "a backend that cannot say refuses nothing"
        );
        disk.observe(Some(5), None);
        disk.observe(Some(1_000), None);
        assert!(!disk.status().refusing);
        let off = DiskSpace::new(0);
        off.observe(Some(0), Some(1 << 40));
        assert!(!off.status().refusing, "a reserve of 0 refuses nothing");
        assert_eq!(off.status().reserve_bytes, 0);
    }

    #[test]
    fn the_reserve_grows_with_the_database() {
        let disk = DiskSpace::new(100);
        disk.observe(Some(1_000), Some(500));
        assert_eq!(disk.status().reserve_bytes, 600);
        assert!(!disk.status().refusing);
        disk.observe(Some(1_000), Some(950));
        assert!(disk.status().refusing, "1,050 must be free");
        disk.observe(Some(u64::MAX - 1), Some(u64::MAX));
        assert_eq!(disk.status().reserve_bytes, u64::MAX, "saturates");
        assert!(disk.status().refusing);
    }

    #[test]
    fn bytes_stored_between_looks_count_against_the_last_look() {
        let disk = DiskSpace::new(100);
        disk.observe(Some(1_000), None);
        disk.stored(850);
        assert!(!disk.status().refusing, "150 left");
        disk.stored(100);
        assert!(disk.status().refusing, "50 left");
        assert_eq!(disk.status().free_bytes, Some(1_000), "as last seen");
        disk.observe(Some(1_000), None);
        assert!(!disk.status().refusing, "a look starts the count again");
    }
}
