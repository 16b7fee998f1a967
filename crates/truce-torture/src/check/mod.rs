//! The checkers: pure functions from a history to the anomalies it shows.
//!
//! Each workload has one; they are tested on hand-written bad histories
//! (`tests/checkers.rs`), so a clean verdict on a real run means something.

use serde::Serialize;

pub mod counter;
pub mod feed;
pub mod list_append;
pub mod register;
pub mod replica;
pub mod set;

/// One thing the history shows that the database promised would not happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// The workload whose history shows it.
    pub workload: String,
    /// A stable name: adya's (`G0`, `G1a`, `G2-item`, `lost-update`, …) or one of
    /// [`kinds`].
    pub kind: String,
    /// Which operations, and what they saw.
    pub detail: String,
}

impl Anomaly {
    /// An anomaly of `kind` in `workload`.
    pub fn new(workload: &str, kind: &str, detail: String) -> Anomaly {
        Anomaly {
            workload: workload.to_string(),
            kind: kind.to_string(),
            detail,
        }
    }
}

/// The names of the anomalies the checkers other than adya report.
pub mod kinds {
    /// An acknowledged write is missing from a later read.
    pub const LOST_WRITE: &str = "lost-acknowledged-write";
    /// Two acknowledged writes created the same version of a register.
    pub const LOST_UPDATE: &str = "lost-update";
    /// A read missed a write acknowledged before it began, or saw a value from
    /// a write that had not begun: not linearizable.
    pub const NONLINEARIZABLE: &str = "nonlinearizable";
    /// A read saw a value no write (or only a failed write) produced.
    pub const ABORTED_READ: &str = "G1a";
    /// A value nobody wrote.
    pub const GARBAGE_READ: &str = "garbage-read";
    /// A counter above everything attempted: an increment applied twice.
    pub const DOUBLE_INCREMENT: &str = "double-applied-increment";
    /// A counter below everything acknowledged.
    pub const LOST_INCREMENT: &str = "lost-increment";
    /// An acknowledged commit the change feed never delivered.
    pub const FEED_GAP: &str = "feed-gap";
    /// A change delivered twice.
    pub const FEED_DUPLICATE: &str = "feed-duplicate";
    /// A change delivered after one with a higher sequence.
    pub const FEED_REORDER: &str = "feed-reorder";
    /// A change at another sequence than its write was acknowledged with.
    pub const FEED_WRONG_SEQ: &str = "feed-wrong-seq";
    /// A replica that caught up holds other documents than the server.
    pub const REPLICA_DIVERGED: &str = "replica-diverged";
    /// A write answered 2xx after the server reported a storage failure.
    pub const WRITE_AFTER_FAILURE: &str = "write-after-storage-failure";
    /// An answer the harness did not expect (a 400, a 422): a harness or server bug.
    pub const UNEXPECTED: &str = "unexpected-answer";
    /// The checker could not decide (adya's `unknown`): proves nothing.
    pub const UNKNOWN: &str = "checker-unknown";
}
