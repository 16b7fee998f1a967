//! What a write expects, and what it can come back with: the write's effect, or a
//! conflict carrying the current document. Conflicts are values, not errors.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::doc::{self, Document, Meta, Rev};
use crate::error::{Error, Result};
use crate::record::StoredDoc;

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
#[derive(Clone)]
pub struct Conflict {
    /// Why.
    pub reason: ConflictReason,
    /// The current live document, `None` if there is none.
    current: Option<Current>,
}

/// A conflict's current document: shared with the committer's view of it
/// (a conflict copies no document), or the stored record a refused
/// precondition met undecoded, decoded only if something asks for the
/// document ([`Conflict::current`]). An answer writes a record's JSON from
/// its bytes ([`Conflict::write_current_json`]): decoding a large document
/// of many small values to refuse a stale write took an HTTP thread
/// milliseconds.
#[derive(Clone)]
enum Current {
    Doc(Arc<Document>),
    Stored(Arc<Stored>),
}

/// A body as a conflict holds it ([`Conflict::current_body`]).
pub(crate) enum BodyForm<'a> {
    /// Its values.
    Decoded(&'a doc::Body),
    /// Its canonical JSON (`doc::canonical_bytes`).
    Canonical(&'a [u8]),
}

struct Stored {
    id: String,
    /// Its body an object's canonical JSON (`doc::is_object_json`).
    doc: StoredDoc,
    decoded: OnceLock<Arc<Document>>,
}

impl Conflict {
    /// A conflict carrying `current`, the live document (`None`: there is none).
    pub fn new(reason: ConflictReason, current: Option<Arc<Document>>) -> Conflict {
        Conflict {
            reason,
            current: current.map(Current::Doc),
        }
    }

    /// A conflict carrying live document `id`'s stored record, verified but
    /// not decoded (`group::Held::Record`). A body that is not an object's
    /// JSON is refused as corrupt here (`StoredDoc::object_json`).
    pub(crate) fn stored(reason: ConflictReason, id: &str, doc: StoredDoc) -> Result<Conflict> {
        doc.object_json(id)?;
        let stored = Stored {
            id: id.to_string(),
            doc,
            decoded: OnceLock::new(),
        };
        Ok(Conflict {
            reason,
            current: Some(Current::Stored(Arc::new(stored))),
        })
    }

    /// The current live document, or `None` if there is none: decoded now
    /// if the conflict carries its stored record (an `Err` only for a record
    /// whose verified bytes do not decode).
    pub fn current(&self) -> Result<Option<&Arc<Document>>> {
        match &self.current {
            None => Ok(None),
            Some(Current::Doc(doc)) => Ok(Some(doc)),
            Some(Current::Stored(stored)) => {
                if stored.decoded.get().is_none() {
                    let doc = stored.doc.decode(&stored.id)?;
                    // Another thread may have decoded it meanwhile: either is it.
                    let _ = stored.decoded.set(Arc::new(doc));
                }
                Ok(stored.decoded.get())
            }
        }
    }

    /// Whether the document that refused the write was already as it is at
    /// `seq` (so a writer that had read the state at `seq` saw it): a retry
    /// on a state at least that new meets the same refusal. `false` where
    /// there is none (a `not_found`: it may have been deleted since).
    pub fn met_at_or_before(&self, seq: u64) -> bool {
        self.current_meta().is_some_and(|(_, meta)| meta.seq <= seq)
    }

    /// The current live document's id and metadata, without decoding it.
    pub fn current_meta(&self) -> Option<(&str, &Meta)> {
        match &self.current {
            None => None,
            Some(Current::Doc(doc)) => Some((&doc.id, &doc.meta)),
            Some(Current::Stored(stored)) => Some((&stored.id, stored.doc.meta())),
        }
    }

    /// Writes the current live document's JSON with its metadata
    /// ([`Document::write_json`]'s bytes), or `null`: a stored record
    /// from its bytes, without decoding it ([`doc::write_stored_json`]).
    pub fn write_current_json(&self, out: &mut Vec<u8>) {
        match &self.current {
            None => out.extend_from_slice(b"null"),
            // A document's keys are strings: writing it cannot fail.
            Some(Current::Doc(doc)) => drop(doc.write_json(out)),
            // From the bytes even once decoded: copying them is cheaper.
            // Its braces were checked (`stored`): writing it cannot fail.
            Some(Current::Stored(stored)) => drop(stored.doc.write_json(&stored.id, out)),
        }
    }

    /// The current live document's body as the conflict holds it: its
    /// record's canonical JSON, or decoded.
    pub(crate) fn current_body(&self) -> Option<BodyForm<'_>> {
        match &self.current {
            None => None,
            Some(Current::Doc(doc)) => Some(BodyForm::Decoded(&doc.body)),
            Some(Current::Stored(stored)) => Some(BodyForm::Canonical(stored.doc.body_json())),
        }
    }
}

impl PartialEq for Conflict {
    /// The same reason and the same current document (decoding either if
    /// need be; one that does not decode equals nothing).
    fn eq(&self, other: &Conflict) -> bool {
        self.reason == other.reason
            && match (self.current(), other.current()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

impl fmt::Debug for Conflict {
    /// The reason and the current document, a stored record by its id and
    /// revision (not decoded to be printed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Conflict");
        out.field("reason", &self.reason);
        match &self.current {
            None => out.field("current", &None::<Document>),
            Some(Current::Doc(doc)) => out.field("current", &Some(doc)),
            Some(Current::Stored(stored)) => out.field(
                "current",
                &Some(format_args!(
                    "stored {:?} at {} ({} bytes)",
                    stored.id,
                    stored.doc.meta().rev,
                    stored.doc.body_json().len()
                )),
            ),
        };
        out.finish()
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.current_meta() {
            Some((id, meta)) => write!(f, "{} (current: {} at {})", self.reason.code(), id, meta.rev),
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
    /// HTTP threads milliseconds. A put of the stored content answers with
    /// its own (`evaluate::same_put`). `None` for other no-ops, a skip, a check and
    /// an answer read back from an idempotency record. Not compared by `==`:
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::{Conflict, ConflictReason, Current};
    use crate::{Db, Expect, Options, TxFailure, TxOp};

    /// Whether `conflict` carries a stored record not decoded yet.
    fn undecoded(conflict: &Conflict) -> bool {
        matches!(&conflict.current, Some(Current::Stored(s)) if s.decoded.get().is_none())
    }

    /// A write refused by its precondition carries its document's stored
    /// record undecoded, whether refused from durable state (a single write)
    /// or in the committer's group (a batch): its answer's JSON is the
    /// decoded document's, byte for byte, written without decoding it, and
    /// `current` decodes it once.
    #[test]
    fn a_refused_write_carries_its_document_undecoded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        let body = json!({"A": 1, "b": [{"_x": "\"_"}], "": null, "~": "é", "Z\"": {}});
        c.put("d", body, Expect::Absent).unwrap().unwrap();
        let single = c.put("d", json!({}), Expect::Version(7)).unwrap().unwrap_err();
        let failure = db
            .batch(
                vec![TxOp::Put {
                    collection: "c".into(),
                    id: "d".into(),
                    body: json!({}),
                    expect: Expect::Absent,
                }],
                None,
            )
            .unwrap()
            .unwrap_err();
        let TxFailure::Conflicts(mut batch) = failure else {
            panic!("expected a conflict, got {failure:?}")
        };
        let stored = c.get("d").unwrap().unwrap();
        let mut expected = Vec::new();
        stored.write_json(&mut expected).unwrap();
        for (conflict, reason) in [
            (single, ConflictReason::VersionMismatch),
            (batch.remove(0).conflict, ConflictReason::AlreadyExists),
        ] {
            assert_eq!(conflict.reason, reason);
            assert!(undecoded(&conflict), "{conflict:?}");
            assert_eq!(conflict.current_meta(), Some(("d", &stored.meta)));
            let mut json = Vec::new();
            conflict.write_current_json(&mut json);
            assert_eq!(
                String::from_utf8(json).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
            assert!(undecoded(&conflict), "writing its JSON decodes nothing");
            let shared = conflict.clone();
            let decoded = Arc::clone(conflict.current().unwrap().unwrap());
            assert_eq!(*decoded, stored);
            assert!(
                Arc::ptr_eq(shared.current().unwrap().unwrap(), &decoded),
                "decoded once"
            );
            assert_eq!(conflict, Conflict::new(reason, Some(Arc::new(stored.clone()))));
        }
        // A missing document is no record.
        let missing = c.put("none", json!({}), Expect::Version(1)).unwrap().unwrap_err();
        assert_eq!(missing.current().unwrap(), None);
        let mut json = Vec::new();
        missing.write_current_json(&mut json);
        assert_eq!(json, b"null");
    }
}
