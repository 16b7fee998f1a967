//! Truce: a document database whose one job is to make concurrent writes safe,
//! fast and unsurprising.
//!
//! This crate is the embedded engine: the document model, conditional writes,
//! update operators evaluated at the serialization point, group commit, and the
//! storage trait with its fjall and in-memory backends.
//!
//! ```
//! use serde_json::json;
//! use truce::{Db, Expect, Options, Update};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path(), Options::default())?;
//! let counters = db.collection("counters")?;
//! counters.put("hits", json!({"n": 0}), Expect::Absent)?.expect("new document");
//! let inc = Update::parse(&json!({"$inc": {"n": 1}}))?;
//! let written = counters.patch("hits", inc, Expect::Any)?.expect("patches never conflict");
//! assert_eq!(written.doc.body["n"], 1);
//! assert_eq!(written.doc.version(), 2);
//! # Ok::<_, truce::Error>(())
//! ```

pub mod budget;
pub mod doc;
pub mod engine;
pub mod error;
pub mod failpoints;
pub mod index;
pub mod limits;
pub mod record;
pub mod storage;
pub mod update;
pub mod value_order;

pub use doc::{Body, Document, Meta, Rev};
pub use engine::config::{CollectionConfig, CounterMode};
pub use engine::insights::{
    CONFLICT_CODES, Family, HotCounts, HotSpot, InsightsReport, Origin, Remedy, Stats, Target,
};
pub use engine::outcome::{Conflict, ConflictReason, Effect, Expect, WriteResult, Written};
pub use engine::tx::{OpConflict, TxCommitted, TxFailure, TxOp, TxOutcome, validate_idempotency_key};
pub use engine::{
    Backup, BackupProgress, BackupReport, BackupStop, Change, ChangesPage, CheckProblem, CheckProgress,
    CheckReport, CheckpointPage, Collection, Db, DiskStatus, IndexProgress, Options, PendingTx, PendingWrite,
    RetryPolicy, Subscription, Transaction,
};
pub use error::{Error, Result};
pub use index::keys::KeyFormat;
pub use index::query::{Order, Query, QueryPage};
pub use index::{IndexDef, IndexSpec, IndexState};
pub use storage::Durability;
pub use update::{Filter, OnFalse, Update};

/// The README's code blocks, compiled as doc tests so the quick start keeps working.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
