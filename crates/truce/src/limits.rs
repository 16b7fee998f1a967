//! Every bound the engine enforces, as a named constant with its unit last.
//!
//! Each number says why it is what it is. A limit that is hit becomes a typed
//! [`Error`](crate::Error) with a stable code, never a panic or an unbounded queue.

/// Largest document, measured as its canonical JSON encoding. Same order as
/// Firestore (1 MiB) and well under MongoDB (16 MiB): big enough for real records,
/// small enough that one document never dominates a commit batch.
pub const DOC_SIZE_BYTES_MAX: usize = 1024 * 1024;

/// Deepest nesting of objects and arrays in a document. Firestore allows 20,
/// MongoDB 100; 32 keeps recursive code (hashing, operators, filters) far from
/// stack exhaustion while allowing realistic nesting.
pub const DOC_DEPTH_MAX: usize = 32;

/// Longest document id, in bytes of UTF-8 (API.md).
pub const ID_BYTES_MAX: usize = 512;

/// Longest collection name, in bytes (API.md: `^[A-Za-z][A-Za-z0-9_-]{0,63}$`).
pub const COLLECTION_NAME_BYTES_MAX: usize = 64;

/// Most field paths one update may touch, over all its operators. An update is a
/// description of a change, not a bulk load; 256 paths is far beyond any
/// hand-written update and bounds the committer's work per request.
pub const UPDATE_PATHS_MAX: usize = 256;

/// Most nodes (operators, fields, list elements) in one filter. Filters run on
/// the committer for every `$if`, so their cost must be bounded.
pub const FILTER_NODES_MAX: usize = 256;

/// Most segments in a dotted path; a path cannot be deeper than a document.
pub const PATH_SEGMENTS_MAX: usize = DOC_DEPTH_MAX;

/// Most write requests the committer takes into one group commit. Bounds the
/// latency the first request of a batch waits for the last one to be evaluated
/// (about 2 µs each, so a full batch is a few ms).
pub const COMMIT_BATCH_REQUESTS_MAX: usize = 4096;

/// Most bytes of encoded records in one group commit. A batch closes early once it
/// passes this, so one fsync never carries more than a few ms of sequential write
/// (the disk writes about 1.3 GB/s).
pub const COMMIT_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most write requests waiting for the committer. Past this a write fails at once
/// with [`Error::Overloaded`](crate::Error::Overloaded) (HTTP 429) instead of
/// queueing without bound; two full batches keep the committer busy while
/// clients back off.
pub const COMMIT_QUEUE_REQUESTS_MAX: usize = 2 * COMMIT_BATCH_REQUESTS_MAX;
