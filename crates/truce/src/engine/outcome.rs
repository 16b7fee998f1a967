//! What a write expects, and what it can come back with: the write's effect, or a
//! conflict carrying the current document. Conflicts are values, not errors.

use std::fmt;
use std::sync::Arc;

use crate::doc::{Document, Rev};
use crate::error::{Error, Result};

/// The precondition of a write: what the writer believes the document is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The document must not exist (VERSION_FIRST, `_version: 0`). Also what a PUT
    /// without any precondition means: create only.
    Absent,
    /// The document must exist at exactly this version.
    Version(u64),
    /// The document must exist at exactly this revision.
    Rev(Rev),
    /// The document must exist, at any version (`If-Match: *`).
    Exists,
    /// Anything: create or overwrite (VERSION_LATEST, `_version: -1`, last writer wins).
    Any,
}

impl Expect {
    /// The wire form of a version precondition: `0` = absent, `-1` = any, `N ≥ 1` = exactly N.
    pub fn from_version(version: i64) -> Result<Expect> {
        match version {
            0 => Ok(Expect::Absent),
            -1 => Ok(Expect::Any),
            n if n >= 1 => Ok(Expect::Version(n as u64)),
            n => Err(Error::InvalidPrecondition(format!(
                "version {n}: use 0 (must not exist), -1 (any) or an exact version >= 1"
            ))),
        }
    }
}

/// Why a write did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictReason {
    /// The document exists at another version or revision than expected.
    VersionMismatch,
    /// The write expected the document to be absent and it exists.
    AlreadyExists,
    /// The write expected the document to exist and it does not.
    NotFound,
    /// The update's `$if` did not match the current document (and `$else` is `conflict`).
    ConditionFailed,
    /// A unique index already holds the value for another document (the `current`).
    UniqueViolation,
}

impl ConflictReason {
    /// The stable code, as in API.md's conflict body.
    pub fn code(self) -> &'static str {
        match self {
            ConflictReason::VersionMismatch => "version_mismatch",
            ConflictReason::AlreadyExists => "already_exists",
            ConflictReason::NotFound => "not_found",
            ConflictReason::ConditionFailed => "condition_failed",
            ConflictReason::UniqueViolation => "unique_violation",
        }
    }
}

/// A write that did not apply because the document is not what the writer
/// expected. Carries the current document so the caller can decide what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// Why.
    pub reason: ConflictReason,
    /// The current live document, or `None` if there is none (shared with
    /// the committer's view of it: a conflict copies no document).
    pub current: Option<Arc<Document>>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.current {
            Some(doc) => write!(f, "{} (current: {} at {})", self.reason.code(), doc.id, doc.rev()),
            None => write!(f, "{} (no current document)", self.reason.code()),
        }
    }
}

/// What a write that did not conflict did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A new live document (possibly over a tombstone).
    Created,
    /// A new revision of a live document.
    Updated,
    /// A tombstone replaced a live document.
    Deleted,
    /// The result equalled the current content: no revision, no change.
    NoOp,
    /// `$if` did not match and `$else` was `skip`: nothing written.
    Skipped,
    /// A transaction's `check` held: nothing written.
    Checked,
}

/// The stable name of an effect.
pub fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Created => "created",
        Effect::Updated => "updated",
        Effect::Deleted => "deleted",
        Effect::NoOp => "noop",
        Effect::Skipped => "skipped",
        Effect::Checked => "checked",
    }
}

/// The effect of a stable name.
pub fn effect_from_name(name: &str) -> Option<Effect> {
    [
        Effect::Created,
        Effect::Updated,
        Effect::Deleted,
        Effect::NoOp,
        Effect::Skipped,
        Effect::Checked,
    ]
    .into_iter()
    .find(|e| effect_name(*e) == name)
}

/// The answer to a write that did not conflict.
#[derive(Clone, Debug)]
pub struct Written {
    /// The document after the write (for a delete, the tombstone; for a no-op or
    /// a skip, the unchanged current document). Usually shared with the
    /// committer's own view of the document, so an answer costs no copy of it.
    pub doc: Arc<Document>,
    /// What happened.
    pub effect: Effect,
    /// `doc::canonical_bytes(&doc.body)`, shared with the state the write
    /// stores, when the write built one: an answer copies them around the
    /// metadata (`doc::write_stored_json`) instead of encoding the body's
    /// values again, which for a large document of small values took the
    /// HTTP threads milliseconds. `None` for a no-op, a skip, a check and an
    /// answer read back from an idempotency record. Not compared by `==`:
    /// it is the encoding of `doc`.
    pub canonical: Option<Arc<Vec<u8>>>,
}

impl PartialEq for Written {
    fn eq(&self, other: &Written) -> bool {
        self.doc == other.doc && self.effect == other.effect
    }
}

impl Written {
    /// Whether a new live document was created.
    pub fn created(&self) -> bool {
        self.effect == Effect::Created
    }

    /// Whether nothing changed because the content was already equal.
    pub fn noop(&self) -> bool {
        self.effect == Effect::NoOp
    }

    /// Whether the write was skipped by `$else: "skip"`.
    pub fn skipped(&self) -> bool {
        self.effect == Effect::Skipped
    }

    /// The commit sequence of the document's current state.
    pub fn seq(&self) -> u64 {
        self.doc.meta.seq
    }
}

/// The result of one write: an expected outcome either way.
pub type WriteResult = std::result::Result<Written, Conflict>;
