//! Room left on the storage's filesystem. While less than
//! [`Options::min_free_disk_bytes`](super::Options::min_free_disk_bytes) is
//! free, writes that add data are refused with
//! [`Error::InsufficientStorage`] before they are queued, so that the disk
//! does not fill under the storage engine: a write that fails there fails the
//! whole engine until it is reopened. Deletes, checks, configuration changes
//! (a TTL is how space is freed) and the engine's own work (TTL sweeps, the
//! counter outbox, backfills of indexes declared earlier) go on inside the
//! reserve. The committer looks at the free space at start and on every
//! background tick ([`BACKGROUND_TICK_MS`](crate::limits::BACKGROUND_TICK_MS)
//! while writes come, [`COMMITTER_IDLE_MS`](crate::limits::COMMITTER_IDLE_MS)
//! when idle), so writes resume within a second of space being freed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::WriteOp;
use super::committer::Request;
use crate::error::{Error, Result};

/// What [`DiskSpace::free`] holds while the backend cannot say.
const UNKNOWN: u64 = u64::MAX;

/// The reserve, the last free space seen, and whether writes are refused.
pub struct DiskSpace {
    min_free: u64,
    free: AtomicU64,
    low: AtomicBool,
}

/// The free space as last seen, for health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// Bytes available to the engine on its storage's filesystem; `None`
    /// when the backend cannot say (in memory).
    pub free_bytes: Option<u64>,
    /// The reserve below which writes that add data are refused (0: never).
    pub min_free_bytes: u64,
    /// Whether such writes are being refused.
    pub refusing: bool,
}

impl DiskSpace {
    /// A reserve of `min_free` bytes (0 refuses nothing), no space seen yet.
    pub fn new(min_free: u64) -> DiskSpace {
        DiskSpace {
            min_free,
            free: AtomicU64::new(UNKNOWN),
            low: AtomicBool::new(false),
        }
    }

    /// Records the free space the backend reports, logging each change
    /// between refusing and accepting writes.
    pub fn observe(&self, free: Option<u64>) {
        self.free.store(free.unwrap_or(UNKNOWN), Ordering::Relaxed);
        let low = free.is_some_and(|free| free < self.min_free);
        let was = self.low.swap(low, Ordering::Relaxed);
        let (free, min_free) = (free.unwrap_or(0), self.min_free);
        if low && !was {
            tracing::warn!(
                free_bytes = free,
                min_free_bytes = min_free,
                "less than the reserve is free on the data directory's filesystem: writes that add data are \
                 refused until space is freed"
            );
        } else if was && !low {
            tracing::info!(
                free_bytes = free,
                min_free_bytes = min_free,
                "free space is back above the reserve: writes resume"
            );
        }
    }

    /// `Err(InsufficientStorage)` for a request that would add data while
    /// space is short; one relaxed load otherwise.
    pub(crate) fn admit(&self, request: &Request) -> Result<()> {
        if !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        let adds = match request {
            Request::Commit(commit, _) => commit
                .ops
                .iter()
                .any(|op| matches!(op.write, Some(WriteOp::Put { .. } | WriteOp::Patch(_)))),
            Request::DefineIndex(..) => true,
            _ => false,
        };
        if !adds {
            return Ok(());
        }
        Err(Error::InsufficientStorage {
            free: self.status().free_bytes.unwrap_or(0),
            min_free: self.min_free,
        })
    }

    /// The free space as last seen.
    pub fn status(&self) -> DiskStatus {
        let free = self.free.load(Ordering::Relaxed);
        DiskStatus {
            free_bytes: (free != UNKNOWN).then_some(free),
            min_free_bytes: self.min_free,
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
        disk.observe(Some(100));
        assert!(!disk.status().refusing, "exactly the reserve is enough");
        disk.observe(Some(99));
        assert!(disk.status().refusing);
        assert_eq!(disk.status().free_bytes, Some(99));
        disk.observe(None);
        assert!(
            !disk.status().refusing,
            "a backend that cannot say refuses nothing"
        );
        disk.observe(Some(5));
        disk.observe(Some(1_000));
        assert!(!disk.status().refusing);
        let off = DiskSpace::new(0);
        off.observe(Some(0));
        assert!(!off.status().refusing, "a reserve of 0 refuses nothing");
    }
}
