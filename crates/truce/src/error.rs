//! The engine's one error type: every failure a caller can meet, each with a stable code.
//!
//! Expected outcomes (a version mismatch, a failed `$if`) are *not* errors: they are
//! [`Conflict`] values. What lands here is bad input, an exceeded
//! limit, an overloaded or broken engine.

use crate::Conflict;
use crate::storage::StorageError;

/// Everything that can go wrong in the engine.
///
/// Each variant has a stable [`code`](Error::code) that the HTTP layer turns into a
/// status and an error body, in exactly one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A document body is not a JSON object, or is nested too deeply.
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// A document id is empty, too long, has control characters or starts with `_`.
    #[error("invalid document id: {0}")]
    InvalidId(String),
    /// A collection name does not match `^[A-Za-z][A-Za-z0-9_-]{{0,63}}$`.
    #[error("invalid collection name: {0}")]
    InvalidCollection(String),
    /// A body carries a top-level `_` field, which is server metadata.
    #[error("reserved field: {0}")]
    ReservedField(String),
    /// An update is malformed, or an operator met a value of the wrong type.
    #[error("invalid update: {0}")]
    InvalidOperator(String),
    /// A filter is malformed.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A precondition makes no sense for the operation (e.g. "must be absent" on a delete).
    #[error("invalid precondition: {0}")]
    InvalidPrecondition(String),
    /// A document (after an update, too) is larger than [`DOC_SIZE_BYTES_MAX`](crate::limits::DOC_SIZE_BYTES_MAX).
    #[error("document of {size} bytes exceeds the limit of {limit} bytes")]
    DocumentTooLarge {
        /// The size of the canonical JSON encoding.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Some other named limit was exceeded.
    #[error("limit exceeded: {what} (limit {limit})")]
    LimitExceeded {
        /// Which limit, by the name of its constant.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// A write would make a collection when the database already holds
    /// [`Options::collections_max`](crate::Options::collections_max) of them.
    /// Nothing was written.
    #[error(
        "collection {collection} does not exist, and the database already holds {limit} collections, its \
         limit (`truce serve --max-collections`, or `max_collections` in its settings file; \
         `Options::collections_max` embedded); nothing was written"
    )]
    TooManyCollections {
        /// The first collection the write would have made.
        collection: String,
        /// The limit.
        limit: usize,
    },
    /// The commit queue is full. Retry after a short pause.
    #[error("the commit queue is full; retry later")]
    Overloaded,
    /// The pages being read hold all the memory kept for them
    /// ([`Options::page_memory_bytes`](crate::Options::page_memory_bytes)):
    /// nothing was read. Retry after a short pause.
    #[error(
        "the pages being read hold all the memory kept for them (page_memory_bytes); nothing was read; \
         retry after a short pause"
    )]
    PagesOverBudget,
    /// Less than the reserve ([`Options::min_free_disk_bytes`](crate::Options::min_free_disk_bytes)
    /// plus room for the storage's compactions) is free on the storage's
    /// filesystem: writes that add data are refused until space is freed
    /// (deletes go on). Nothing was written.
    #[error(
        "insufficient storage: {free} bytes free on the data directory's filesystem, below the reserve of \
         {reserve} bytes (the minimum kept free and room for compactions); writes that add data are refused \
         until space is freed (deletes go on); nothing was written"
    )]
    InsufficientStorage {
        /// Bytes free when last looked at.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// The engine cannot take writes: a storage write or fsync failed earlier
    /// (it refuses writes until reopened), or its committer has stopped or
    /// could not start. The message says which.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The storage layer failed or returned bytes that do not decode.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A collection configuration (TTL, counters) is malformed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An index definition is malformed.
    #[error("invalid index: {0}")]
    InvalidIndex(String),
    /// A query is malformed (bounds, limit, cursor).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A change-feed position that does not reach the last tombstone purged
    /// (`tombstones.keep_seconds`) of a delete made after the reader began:
    /// the reader may have missed it, so it must read the feed again from 0.
    #[error(
        "position {since} does not reach the last tombstone purged (in commit {purged}; the collection's \
         tombstones.keep_seconds), of deletes made after this reader began: it may have missed them; \
         read the feed again from 0 (replicas: drop the local copy and pull it anew)"
    )]
    HistoryPurged {
        /// The position asked for.
        since: u64,
        /// The commit of the last tombstone purged.
        purged: u64,
    },
    /// A transaction is malformed (e.g. the same document twice, too many operations).
    #[error("invalid transaction: {0}")]
    InvalidTransaction(String),
    /// Something named does not exist (an index).
    #[error("not found: {0}")]
    NotFound(String),
    /// The index is still being built; retry when it is ready.
    #[error("index {name} is still being built ({backfilled} documents so far)")]
    IndexBuilding {
        /// The index.
        name: String,
        /// Documents added so far.
        backfilled: u64,
    },
    /// An index of this name is being dropped; it can be declared again once
    /// its entries are gone.
    #[error("index {0} is being dropped; declare it again once it is gone")]
    IndexDropping(String),
    /// A backup's target directory cannot be used (it exists, its parent does
    /// not, a file could not be written there).
    #[error("invalid backup: {0}")]
    InvalidBackup(String),
    /// Another backup of this database is running.
    #[error("a backup of this database is running; one runs at a time")]
    BackupRunning,
    /// A backup was stopped before it finished (see
    /// [`BackupStop`](crate::BackupStop)); nothing of it is
    /// left.
    #[error("the backup was stopped before it finished; nothing of it is left")]
    BackupStopped,
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {0:?} was used with a different request")]
    IdempotencyKeyReused(String),
    /// A transaction closure kept conflicting; carries the last failure.
    #[error("transaction failed after {attempts} attempts: {failure}")]
    TransactionFailed {
        /// How many attempts were made.
        attempts: u32,
        /// What made the last attempt fail.
        failure: Box<crate::engine::tx::TxFailure>,
    },
    /// A retried operation gave up; carries the last conflict it met.
    #[error("gave up after {attempts} attempts; last conflict: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The conflict met by the last attempt.
        last: Box<Conflict>,
    },
}

impl Error {
    /// `wrap(self)`, unless this is a limit: a limit keeps its code
    /// (`limit_exceeded`) wherever it is met, in a document or in a
    /// declaration (an index's field, a configuration's).
    pub fn unless_limit(self, wrap: impl FnOnce(Error) -> Error) -> Error {
        match self {
            Error::LimitExceeded { .. } | Error::TooManyCollections { .. } => self,
            other => wrap(other),
        }
    }

    /// This error with its message naming op `index` of a transaction, so
    /// that the caller of a long one knows which op to look at. Errors whose
    /// message is not text of their own (limits, sizes) are left as they are.
    pub fn in_op(self, index: usize) -> Error {
        self.at(&format!("op {index}"))
    }

    /// This error with its message starting with `place` (`"row 3"`), as
    /// [`in_op`](Self::in_op) does for a transaction's ops.
    pub fn at(self, place: &str) -> Error {
        let at = |message: String| format!("{place}: {message}");
        match self {
            Error::InvalidDocument(m) => Error::InvalidDocument(at(m)),
            Error::InvalidId(m) => Error::InvalidId(at(m)),
            Error::InvalidCollection(m) => Error::InvalidCollection(at(m)),
            Error::ReservedField(m) => Error::ReservedField(at(m)),
            Error::InvalidOperator(m) => Error::InvalidOperator(at(m)),
            Error::InvalidFilter(m) => Error::InvalidFilter(at(m)),
            Error::InvalidPrecondition(m) => Error::InvalidPrecondition(at(m)),
            other => other,
        }
    }

    /// Every code [`Error::code`] can return; tests check each is produced somewhere.
    pub const ALL_CODES: &'static [&'static str] = &[
        "invalid_document",
        "invalid_id",
        "invalid_collection",
        "reserved_field",
        "invalid_operator",
        "invalid_filter",
        "invalid_precondition",
        "payload_too_large",
        "limit_exceeded",
        "overloaded",
        "unavailable",
        "storage_error",
        "corrupt",
        "retries_exhausted",
        "invalid_index",
        "invalid_config",
        "invalid_query",
        "history_purged",
        "invalid_transaction",
        "not_found",
        "index_building",
        "index_dropping",
        "idempotency_key_reused",
        "transaction_failed",
        "insufficient_storage",
        "invalid_backup",
        "backup_running",
        "backup_stopped",
    ];

    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidDocument(_) => "invalid_document",
            Error::InvalidId(_) => "invalid_id",
            Error::InvalidCollection(_) => "invalid_collection",
            Error::ReservedField(_) => "reserved_field",
            Error::InvalidOperator(_) => "invalid_operator",
            Error::InvalidFilter(_) => "invalid_filter",
            Error::InvalidPrecondition(_) => "invalid_precondition",
            Error::DocumentTooLarge { .. } => "payload_too_large",
            Error::LimitExceeded { .. } | Error::TooManyCollections { .. } => "limit_exceeded",
            Error::Overloaded | Error::PagesOverBudget => "overloaded",
            Error::Unavailable(_) => "unavailable",
            Error::InsufficientStorage { .. } => "insufficient_storage",
            Error::Storage(StorageError::Corrupt(_)) => "corrupt",
            Error::Storage(_) => "storage_error",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::InvalidIndex(_) => "invalid_index",
            Error::InvalidConfig(_) => "invalid_config",
            Error::InvalidQuery(_) => "invalid_query",
            Error::HistoryPurged { .. } => "history_purged",
            Error::InvalidTransaction(_) => "invalid_transaction",
            Error::NotFound(_) => "not_found",
            Error::IndexBuilding { .. } => "index_building",
            Error::IndexDropping(_) => "index_dropping",
            Error::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Error::InvalidBackup(_) => "invalid_backup",
            Error::BackupRunning => "backup_running",
            Error::BackupStopped => "backup_stopped",
            Error::TransactionFailed { .. } => "transaction_failed",
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Overloaded
                | Error::PagesOverBudget
                | Error::RetriesExhausted { .. }
                | Error::IndexBuilding { .. }
                | Error::IndexDropping(_)
                | Error::TransactionFailed { .. }
                | Error::BackupRunning
                | Error::InsufficientStorage { .. }
        )
    }
}

/// Shorthand for the engine's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
