//! The durable watermark: the highest commit sequence known to be on disk, and a
//! way for readers to wait until a state they observed is durable.
//!
//! A read may see a commit whose fsync has not returned yet (storage may expose a
//! batch before it is synced). Answering with it would reveal state a crash could
//! take back, so such a read waits here until the watermark passes its `_seq`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a waiting reader sleeps between checks of the poisoned flag; a
/// fsync normally lands long before this.
const WATERMARK_POLL_MS: u64 = 50;

/// Highest durable sequence number, plus the engine's sticky failure.
#[derive(Default)]
pub struct Watermark {
    seq: AtomicU64,
    failure: Mutex<Option<String>>,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Watermark {
    /// The highest durable sequence.
    pub fn durable_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Records that every commit up to `seq` is durable and wakes waiting readers.
    pub fn advance(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::AcqRel);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Marks the engine failed: no more writes, and readers stop waiting.
    pub fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(why);
        drop(failure);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// `Err(Unavailable)` once the engine has failed.
    pub fn check(&self) -> Result<()> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    /// Blocks until `seq` is durable, or the engine failed.
    pub fn wait_for(&self, seq: u64) -> Result<()> {
        if self.durable_seq() >= seq {
            return Ok(());
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.durable_seq() < seq {
            self.check()?;
            guard = self
                .changed
                .wait_timeout(guard, Duration::from_millis(WATERMARK_POLL_MS))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}
