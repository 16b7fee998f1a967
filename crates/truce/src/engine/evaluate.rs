//! One write evaluated against the current state of its document: precondition,
//! update operators, no-op detection. No I/O: the committer supplies the state
//! (read through [`Current`], which may decode it on first need), the sequence
//! number and the clock, and stores what comes out.

use std::sync::Arc;

use crate::doc::{self, Body, Document, Meta, Rev};
use crate::error::{Error, Result};
use crate::record::StoredDoc;
use crate::storage::StorageError;
use crate::update::{OnFalse, Update, Work};

use super::outcome::{Conflict, ConflictReason, Effect, Expect, WriteResult, Written};

/// What a write request asks for.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Replace the whole body; `canonical` is its canonical encoding, computed by
    /// the caller's thread to keep the committer's work small.
    Put {
        /// The new content.
        body: Body,
        /// `doc::canonical_bytes(&body)`.
        ///
        /// Both are moved into the new state by `evaluate::build`, which leaves them
        /// empty: an op is evaluated once.
        canonical: Vec<u8>,
    },
    /// Apply update operators to the latest state.
    Patch(Arc<Update>),
    /// Leave a tombstone.
    Delete,
}

/// A new document state to store, with its canonical body bytes.
pub struct NewState {
    /// The state, shared with the write's answer.
    pub doc: Arc<Document>,
    /// `doc::canonical_bytes(&doc.body)`, shared with the write's answer
    /// (`Written::canonical`).
    pub canonical: Arc<Vec<u8>>,
}

/// The commit context of one write: its sequence number if it writes, and the time.
pub struct CommitClock {
    /// The sequence number the write gets if it produces a new state.
    pub seq: u64,
    /// The commit time, ms since the epoch.
    pub ts_ms: u64,
}

fn conflict(reason: ConflictReason, current: Option<&Arc<Document>>) -> Decision {
    Decision::Settled(Err(Conflict::new(reason, current.cloned())))
}

fn unchanged(current: &Arc<Document>, effect: Effect) -> Decision {
    Decision::Settled(Ok(Written {
        doc: Arc::clone(current),
        effect,
        canonical: None,
    }))
}

/// Checks `expect` against the live document's metadata; `None` means it holds.
fn precondition_fails(expect: Expect, live: Option<&Meta>) -> Option<ConflictReason> {
    match (expect, live) {
        (Expect::Any, _) | (Expect::Absent, None) => None,
        (Expect::Absent, Some(_)) => Some(ConflictReason::AlreadyExists),
        (Expect::Version(_) | Expect::Rev(_) | Expect::Exists, None) => Some(ConflictReason::NotFound),
        (Expect::Version(v), Some(meta)) if meta.rev.version != v => Some(ConflictReason::VersionMismatch),
        (Expect::Rev(r), Some(meta)) if meta.rev != r => Some(ConflictReason::VersionMismatch),
        (Expect::Version(_) | Expect::Rev(_) | Expect::Exists, Some(_)) => None,
    }
}

/// The stored state a write meets (live, tombstone or absent): its metadata
/// at once, the decoded document only when asked, so that a put or a delete
/// never decodes the state it replaces (`group::Met`: a conflict carries
/// the stored record, and a put of the same content is told by its bytes,
/// both from [`stored`](Current::stored)). A state already decoded is one
/// too.
pub trait Current {
    /// The state's metadata; `None` when absent.
    fn meta(&self) -> Option<&Meta>;
    /// The state, decoded if it was not yet.
    fn doc(&mut self) -> Result<Option<&Arc<Document>>>;

    /// The document's id and its stored record while it is held undecoded;
    /// `None` once decoded, or when absent.
    fn stored(&self) -> Option<(&str, &StoredDoc)> {
        None
    }
}

impl Current for Option<&Arc<Document>> {
    fn meta(&self) -> Option<&Meta> {
        self.map(|d| &d.meta)
    }

    fn doc(&mut self) -> Result<Option<&Arc<Document>>> {
        Ok(*self)
    }
}

/// The live document of `current`, decoded; a tombstone or an absent
/// document is not decoded (`live`: its live metadata).
fn live_doc<'c>(
    current: &'c mut (impl Current + ?Sized),
    live: Option<&Meta>,
) -> Result<Option<&'c Arc<Document>>> {
    match live {
        Some(_) => Ok(current.doc()?.filter(|d| !d.is_deleted())),
        None => Ok(None),
    }
}

/// What a write does to its document, decided before its new state is built
/// ([`decide`]).
pub enum Decision {
    /// It writes nothing: a conflict, a no-op or a skip, answered as it is.
    Settled(WriteResult),
    /// It writes this ([`build`] makes the new state).
    Writes(Change),
    /// It writes nothing: a put of the live state's content (this is its
    /// metadata), found from the stored bytes without decoding them. Its
    /// answer is the put's own body and bytes ([`same_put`]).
    SamePut(Meta),
}

/// The content a write that writes leaves.
pub enum Change {
    /// The put's own body, whose content hash this is.
    Put(u128),
    /// A patch's new body and its canonical encoding.
    Patched(Body, Vec<u8>),
    /// A tombstone.
    Delete,
}

/// Evaluates one write on `current` (the stored state: live, tombstone or absent).
///
/// Returns the answer and, when the write changes something, the new state to
/// store. An `Err` is a bad request (an operator's type error, a result too
/// large, filters that ran out of `work`, which the request's writes share)
/// and changes nothing. A put that writes moves its body and canonical bytes
/// into the new state ([`build`]): an op is evaluated once.
pub fn evaluate(
    id: &str,
    op: &mut WriteOp,
    expect: Expect,
    current: &mut (impl Current + ?Sized),
    clock: &CommitClock,
    work: &mut Work,
) -> Result<(WriteResult, Option<NewState>)> {
    match decide(op, expect, current, clock, work)? {
        Decision::Settled(answer) => Ok((answer, None)),
        Decision::SamePut(meta) => Ok((Ok(same_put(id, op, meta)), None)),
        Decision::Writes(change) => {
            let (written, state) = build(id, op, change, current.meta(), clock)?;
            Ok((Ok(written), Some(state)))
        }
    }
}

/// Whether one write on `current` writes, and what: its precondition, its
/// update operators and no-op detection, without building the new state (a
/// caller that only needs to know, such as `settle_from_durable`, builds
/// nothing). Errors as for [`evaluate`].
pub fn decide(
    op: &WriteOp,
    expect: Expect,
    current: &mut (impl Current + ?Sized),
    clock: &CommitClock,
    work: &mut Work,
) -> Result<Decision> {
    let live = current.meta().filter(|m| !m.deleted).copied();
    if let Some(reason) = precondition_fails(expect, live.as_ref()) {
        // A record not decoded yet stays so: the conflict carries it.
        let conflict = match (current.stored(), live) {
            (Some((id, stored)), Some(_)) => Conflict::stored(reason, id, stored.clone())?,
            _ => Conflict::new(reason, live_doc(current, live.as_ref())?.cloned()),
        };
        return Ok(Decision::Settled(Err(conflict)));
    }
    Ok(Decision::Writes(match op {
        WriteOp::Put { body, canonical } => {
            let hash = doc::content_hash(canonical, false);
            // The stored revision's hash is of the stored canonical bytes: a
            // different hash is different bytes, found without decoding or
            // walking either (a million-value document took milliseconds to
            // compare), and an equal one is confirmed value by value. So a
            // put is a no-op when its canonical bytes are the stored ones: a
            // `-0.0` over a stored `0.0` writes (a patch's result is
            // compared by value, and `$set` of `-0.0` there does not).
            // A state not decoded yet is confirmed by its stored bytes, the
            // ones the hash is of, and stays undecoded.
            if let Some(meta) = live.filter(|m| m.rev.hash == hash) {
                if let Some((_, stored)) = current.stored() {
                    if stored.body_json() == canonical.as_slice() {
                        return Ok(Decision::SamePut(meta));
                    }
                } else if let Some(doc) = live_doc(current, live.as_ref())?
                    && &doc.body == body
                {
                    return Ok(unchanged(doc, Effect::NoOp));
                }
            }
            Change::Put(hash)
        }
        WriteOp::Patch(update) => {
            let body = match live_doc(current, live.as_ref())? {
                None if !update.upsert() => return Ok(conflict(ConflictReason::NotFound, None)),
                None => update.apply(None, clock.ts_ms, work)?,
                Some(doc) => {
                    if let Some(condition) = update.condition()
                        && !condition.matches(&doc.body, clock.ts_ms, work)?
                    {
                        return Ok(match update.on_false() {
                            OnFalse::Conflict => conflict(ConflictReason::ConditionFailed, Some(doc)),
                            OnFalse::Skip => unchanged(doc, Effect::Skipped),
                        });
                    }
                    let body = update.apply(Some(&doc.body), clock.ts_ms, work)?;
                    if body == doc.body {
                        return Ok(unchanged(doc, Effect::NoOp));
                    }
                    body
                }
            };
            let canonical = doc::canonical_bytes(&body);
            doc::check_size(canonical.len())?;
            Change::Patched(body, canonical)
        }
        WriteOp::Delete => match live {
            None => return Ok(conflict(ConflictReason::NotFound, None)),
            Some(_) => Change::Delete,
        },
    }))
}

/// The answer to a put [`decide`] found is of the live state's content
/// ([`Decision::SamePut`], `meta` its metadata): a no-op whose document is
/// the put's own body, moved out of `op` with its canonical bytes, so that
/// neither the stored state is decoded nor the answer encoded.
pub fn same_put(id: &str, op: &mut WriteOp, meta: Meta) -> Written {
    let WriteOp::Put { body, canonical } = op else {
        unreachable!("`decide` answers `SamePut` for puts only")
    };
    Written {
        doc: Arc::new(Document {
            id: id.to_string(),
            meta,
            body: std::mem::take(body),
        }),
        effect: Effect::NoOp,
        canonical: Some(Arc::new(std::mem::take(canonical))),
    }
}

/// The new state of a write [`decide`] found writes `change` on the state
/// of metadata `current`, and its answer. A put's body and canonical bytes are moved out of `op`
/// into the state, not copied: copying a large put cost the committer as
/// much again as decoding it.
pub fn build(
    id: &str,
    op: &mut WriteOp,
    change: Change,
    current: Option<&Meta>,
    clock: &CommitClock,
) -> Result<(Written, NewState)> {
    let (body, canonical, hash, deleted) = match change {
        Change::Put(hash) => match op {
            WriteOp::Put { body, canonical } => {
                debug_assert_eq!(
                    hash,
                    doc::content_hash(canonical, false),
                    "`decide` hashed this op"
                );
                (std::mem::take(body), std::mem::take(canonical), hash, false)
            }
            WriteOp::Patch(_) | WriteOp::Delete => {
                unreachable!("`decide` answers `Change::Put` for puts only")
            }
        },
        Change::Patched(body, canonical) => {
            let hash = doc::content_hash(&canonical, false);
            (body, canonical, hash, false)
        }
        Change::Delete => {
            let canonical = doc::canonical_bytes(&Body::new());
            let hash = doc::content_hash(&canonical, true);
            (Body::new(), canonical, hash, true)
        }
    };
    // A document created over a tombstone continues its version history, so a
    // revision string never names two different states.
    let version = current
        .map_or(0, |m| m.rev.version)
        .checked_add(1)
        .ok_or_else(|| {
            Error::Storage(StorageError::Corrupt(format!(
                "document {id:?}: version at its maximum"
            )))
        })?;
    let meta = Meta {
        rev: Rev { version, hash },
        seq: clock.seq,
        ts_ms: clock.ts_ms,
        deleted,
    };
    let doc = Arc::new(Document {
        id: id.to_string(),
        meta,
        body,
    });
    let effect = match (deleted, current.filter(|m| !m.deleted)) {
        (true, _) => Effect::Deleted,
        (false, None) => Effect::Created,
        (false, Some(_)) => Effect::Updated,
    };
    let canonical = Arc::new(canonical);
    Ok((
        Written {
            doc: Arc::clone(&doc),
            effect,
            canonical: Some(Arc::clone(&canonical)),
        },
        NewState { doc, canonical },
    ))
}

/// Rejects preconditions that cannot make sense for `op`, before it is queued.
pub fn check_precondition(op: &WriteOp, expect: Expect) -> Result<()> {
    if expect == Expect::Version(0) {
        // The wire's `_version: 0` is `Expect::Absent` (`Expect::from_version`);
        // as a version it could never match, and every write failed.
        return Err(Error::InvalidPrecondition(
            "version 0 never matches (versions start at 1); for create only, expect the document absent"
                .into(),
        ));
    }
    if matches!(op, WriteOp::Delete) && expect == Expect::Absent {
        return Err(Error::InvalidPrecondition(
            "a delete cannot expect the document to be absent; use version=-1 for any".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Evaluates `op` on `current`, expecting anything, at commit 7.
    fn run(op: &mut WriteOp, current: Option<&Arc<Document>>) -> (WriteResult, Option<NewState>) {
        let clock = CommitClock { seq: 7, ts_ms: 1_000 };
        evaluate("a", op, Expect::Any, &mut { current }, &clock, &mut Work::new()).expect("evaluated")
    }

    /// Evaluates the update `spec` on `current`.
    fn patch(spec: serde_json::Value, current: Option<&Arc<Document>>) -> (WriteResult, Option<NewState>) {
        run(
            &mut WriteOp::Patch(Arc::new(Update::parse(&spec).expect("a valid update"))),
            current,
        )
    }

    #[test]
    fn a_write_answers_with_the_state_it_stores_not_a_copy() {
        let (answer, state) = patch(json!({"$inc": {"n": 1}, "$upsert": true}), None);
        let (written, state) = (answer.expect("no conflict"), state.expect("a new state"));
        assert_eq!(written.effect, Effect::Created);
        assert_eq!(written.doc.body["n"], 1);
        assert!(Arc::ptr_eq(&written.doc, &state.doc));
    }

    /// Evaluates a put of `body` on `current`, returning the op as it is left.
    fn put(
        body: serde_json::Value,
        current: Option<&Arc<Document>>,
    ) -> (WriteResult, Option<NewState>, WriteOp) {
        let body = match body {
            serde_json::Value::Object(body) => body,
            other => panic!("not an object: {other}"),
        };
        let canonical = doc::canonical_bytes(&body);
        let mut op = WriteOp::Put { body, canonical };
        let (answer, state) = run(&mut op, current);
        (answer, state, op)
    }

    #[test]
    fn a_put_that_writes_moves_its_body_into_the_state_and_its_revision_is_of_that_body() {
        let (answer, state, op) = put(json!({"n": 1, "s": "x"}), None);
        let state = state.expect("a new state");
        let answer = answer.expect("no conflict");
        assert_eq!(answer.effect, Effect::Created);
        // The answer shares the state's bytes, not a copy of them.
        assert!(
            answer
                .canonical
                .is_some_and(|c| Arc::ptr_eq(&c, &state.canonical))
        );
        assert_eq!(
            serde_json::Value::Object(state.doc.body.clone()),
            json!({"n": 1, "s": "x"})
        );
        assert_eq!(*state.canonical, doc::canonical_bytes(&state.doc.body));
        assert_eq!(state.doc.meta.rev, Rev::compute(1, &state.canonical, false));
        match op {
            WriteOp::Put { body, canonical } => assert!(body.is_empty() && canonical.is_empty()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_put_of_the_stored_content_is_a_no_op_and_of_any_other_is_not() {
        let (_, created, _) = put(json!({"n": 1, "s": "x"}), None);
        let current = created.expect("a new state").doc;
        let (answer, state, _) = put(json!({"s": "x", "n": 1}), Some(&current));
        assert!(state.is_none());
        let answer = answer.expect("no conflict");
        assert_eq!(answer.effect, Effect::NoOp);
        assert!(answer.canonical.is_none(), "a no-op built no bytes");
        // Other canonical bytes are a write, even of values that compare
        // equal (`-0.0` and `0.0`).
        let (_, zero, _) = put(json!({"z": 0.0}), None);
        let (answer, _, _) = put(json!({"z": -0.0}), Some(&zero.expect("a new state").doc));
        assert_eq!(answer.expect("no conflict").effect, Effect::Updated);
        for other in [
            json!({"n": 1}),
            json!({"n": 1.5, "s": "x"}),
            json!({"n": 1, "s": "y"}),
            json!({}),
        ] {
            let (answer, state, _) = put(other.clone(), Some(&current));
            assert_eq!(answer.expect("no conflict").effect, Effect::Updated, "{other}");
            let state = state.expect("a new state");
            assert_eq!(state.doc.version(), 2);
            assert_eq!(serde_json::Value::Object(state.doc.body.clone()), other);
        }
        // Over a tombstone, the same content is a write again, not a no-op.
        let (_, tombstone) = run(&mut WriteOp::Delete, Some(&current));
        let tombstone = tombstone.expect("a tombstone").doc;
        let (answer, state, _) = put(json!({"n": 1, "s": "x"}), Some(&tombstone));
        assert_eq!(answer.expect("no conflict").effect, Effect::Created);
        assert_eq!(state.expect("a new state").doc.version(), 3);
    }

    #[test]
    fn a_write_that_changes_nothing_answers_with_the_current_state_itself() {
        let (_, created) = patch(json!({"$set": {"n": 1}, "$upsert": true}), None);
        let current = created.expect("a new state").doc;
        let (answer, state) = patch(json!({"$set": {"n": 1}}), Some(&current));
        let written = answer.expect("no conflict");
        assert!(state.is_none());
        assert_eq!(written.effect, Effect::NoOp);
        assert!(Arc::ptr_eq(&written.doc, &current));
    }
}
