//! One write evaluated against the current state of its document: precondition,
//! update operators, no-op detection. Pure: the committer supplies the state, the
//! sequence number and the clock, and stores what comes out.

use std::sync::Arc;

use crate::doc::{self, Body, Document, Meta, Rev};
use crate::error::{Error, Result};
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
    /// `doc::canonical_bytes(&doc.body)`.
    pub canonical: Vec<u8>,
}

/// The commit context of one write: its sequence number if it writes, and the time.
pub struct CommitClock {
    /// The sequence number the write gets if it produces a new state.
    pub seq: u64,
    /// The commit time, ms since the epoch.
    pub ts_ms: u64,
}

fn conflict(reason: ConflictReason, current: Option<&Document>) -> Result<(WriteResult, Option<NewState>)> {
    Ok((
        Err(Conflict {
            reason,
            current: current.cloned(),
        }),
        None,
    ))
}

fn unchanged(current: &Arc<Document>, effect: Effect) -> Result<(WriteResult, Option<NewState>)> {
    Ok((
        Ok(Written {
            doc: Arc::clone(current),
            effect,
        }),
        None,
    ))
}

/// Checks `expect` against the live document; `None` means it holds.
fn precondition_fails(expect: Expect, live: Option<&Document>) -> Option<ConflictReason> {
    match (expect, live) {
        (Expect::Any, _) | (Expect::Absent, None) => None,
        (Expect::Absent, Some(_)) => Some(ConflictReason::AlreadyExists),
        (Expect::Version(_) | Expect::Rev(_) | Expect::Exists, None) => Some(ConflictReason::NotFound),
        (Expect::Version(v), Some(doc)) if doc.version() != v => Some(ConflictReason::VersionMismatch),
        (Expect::Rev(r), Some(doc)) if doc.rev() != r => Some(ConflictReason::VersionMismatch),
        (Expect::Version(_) | Expect::Rev(_) | Expect::Exists, Some(_)) => None,
    }
}

/// Evaluates one write on `current` (the stored state: live, tombstone or absent).
///
/// Returns the answer and, when the write changes something, the new state to
/// store. An `Err` is a bad request (an operator's type error, a result too
/// large, filters that ran out of `work`, which the request's writes share)
/// and changes nothing.
pub fn evaluate(
    id: &str,
    op: &WriteOp,
    expect: Expect,
    current: Option<&Arc<Document>>,
    clock: &CommitClock,
    work: &mut Work,
) -> Result<(WriteResult, Option<NewState>)> {
    let live = current.filter(|d| !d.is_deleted());
    if let Some(reason) = precondition_fails(expect, live.map(|d| &**d)) {
        return conflict(reason, live.map(|d| &**d));
    }
    let (body, canonical, deleted) = match op {
        WriteOp::Put { body, canonical } => {
            if let Some(doc) = live
                && &doc.body == body
            {
                return unchanged(doc, Effect::NoOp);
            }
            (body.clone(), canonical.clone(), false)
        }
        WriteOp::Patch(update) => {
            let body = match live {
                None if !update.upsert() => return conflict(ConflictReason::NotFound, None),
                None => update.apply(None, clock.ts_ms, work)?,
                Some(doc) => {
                    if let Some(condition) = update.condition()
                        && !condition.matches(&doc.body, clock.ts_ms, work)?
                    {
                        return match update.on_false() {
                            OnFalse::Conflict => conflict(ConflictReason::ConditionFailed, Some(doc)),
                            OnFalse::Skip => unchanged(doc, Effect::Skipped),
                        };
                    }
                    let body = update.apply(Some(&doc.body), clock.ts_ms, work)?;
                    if body == doc.body {
                        return unchanged(doc, Effect::NoOp);
                    }
                    body
                }
            };
            let canonical = doc::canonical_bytes(&body);
            doc::check_size(canonical.len())?;
            (body, canonical, false)
        }
        WriteOp::Delete => match live {
            None => return conflict(ConflictReason::NotFound, None),
            Some(_) => (Body::new(), doc::canonical_bytes(&Body::new()), true),
        },
    };
    // A document created over a tombstone continues its version history, so a
    // revision string never names two different states.
    let version = current.map_or(0, |d| d.version()).checked_add(1).ok_or_else(|| {
        Error::Storage(StorageError::Corrupt(format!(
            "document {id:?}: version at its maximum"
        )))
    })?;
    let meta = Meta {
        rev: Rev::compute(version, &canonical, deleted),
        seq: clock.seq,
        ts_ms: clock.ts_ms,
        deleted,
    };
    let doc = Arc::new(Document {
        id: id.to_string(),
        meta,
        body,
    });
    let effect = match (deleted, live) {
        (true, _) => Effect::Deleted,
        (false, None) => Effect::Created,
        (false, Some(_)) => Effect::Updated,
    };
    Ok((
        Ok(Written {
            doc: Arc::clone(&doc),
            effect,
        }),
        Some(NewState { doc, canonical }),
    ))
}

/// Rejects preconditions that cannot make sense for `op`, before it is queued.
pub fn check_precondition(op: &WriteOp, expect: Expect) -> Result<()> {
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

    /// Evaluates the update `spec` on `current` at a fixed commit clock.
    fn patch(spec: serde_json::Value, current: Option<&Arc<Document>>) -> (WriteResult, Option<NewState>) {
        let op = WriteOp::Patch(Arc::new(Update::parse(&spec).expect("a valid update")));
        let clock = CommitClock { seq: 7, ts_ms: 1_000 };
        evaluate("a", &op, Expect::Any, current, &clock, &mut Work::new()).expect("evaluated")
    }

    #[test]
    fn a_write_answers_with_the_state_it_stores_not_a_copy() {
        let (answer, state) = patch(json!({"$inc": {"n": 1}, "$upsert": true}), None);
        let (written, state) = (answer.expect("no conflict"), state.expect("a new state"));
        assert_eq!(written.effect, Effect::Created);
        assert_eq!(written.doc.body["n"], 1);
        assert!(Arc::ptr_eq(&written.doc, &state.doc));
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
