//! The answer of a successful write, and how a write's HTTP answer becomes
//! `Ok(answer)`, `Err(conflict)` or a [`ClientError`].

use serde::Deserialize;

use crate::conflict::{Conflict, write_conflict};
use crate::document::Document;
use crate::error::ClientError;
use crate::transport::{Answer, decode};

/// The outcome of a single-document write: written, or a conflict carrying the
/// current document.
pub type WriteResult = Result<WriteAnswer, Conflict>;

/// What the server answers to a successful write (201 when created, else 200).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WriteAnswer {
    /// The document id.
    pub id: String,
    /// The revision after the write.
    pub rev: String,
    /// The version after the write.
    pub version: u64,
    /// The commit sequence of the write (of the last write, for a no-op or skip).
    pub seq: u64,
    /// Whether the write created the document.
    #[serde(default)]
    pub created: bool,
    /// Whether the content was already what was written: nothing changed.
    #[serde(default)]
    pub noop: bool,
    /// Whether a PATCH's `$if` was false with `$else: "skip"`: nothing changed.
    #[serde(default)]
    pub skipped: bool,
    /// The document after the write (a tombstone after a delete).
    #[serde(default)]
    pub doc: Option<Document>,
}

impl WriteAnswer {
    /// Whether the write changed the stored document (not a no-op, not skipped).
    pub fn changed(&self) -> bool {
        !self.noop && !self.skipped
    }
}

/// Interprets a single-document write's answer.
pub(crate) fn write_outcome(answer: &Answer) -> Result<WriteResult, ClientError> {
    match answer.status {
        200 | 201 => decode(&answer.body, "a write answer").map(Ok),
        409 | 404 => write_conflict(answer.status, &answer.body).map(Err),
        status => Err(crate::conflict::http_error(status, &answer.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConflictReason;
    use serde_json::{Value, json};

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: serde_json::to_vec(&body).expect("encodes"),
            earlier_unknown: false,
        }
    }

    #[test]
    fn a_created_answer_decodes_with_its_document() {
        let body = json!({"id": "a", "rev": "1-x", "version": 1, "seq": 5, "created": true, "noop": false,
                          "skipped": false, "doc": {"_id": "a", "_rev": "1-x", "_version": 1, "_seq": 5, "_ts": 9, "n": 1}});
        let written = write_outcome(&answer(201, body)).expect("ok").expect("written");
        assert!(written.created && written.changed());
        assert_eq!(written.doc.as_ref().and_then(|d| d.get("n")), Some(&json!(1)));
    }

    #[test]
    fn skipped_and_noop_answers_did_not_change_anything() {
        let body = json!({"id": "s", "rev": "3-x", "version": 3, "seq": 8, "skipped": true});
        let written = write_outcome(&answer(200, body)).expect("ok").expect("answer");
        assert!(written.skipped && !written.changed() && written.doc.is_none());
        let body = json!({"id": "s", "rev": "3-x", "version": 3, "seq": 8, "noop": true});
        assert!(
            !write_outcome(&answer(200, body))
                .expect("ok")
                .expect("answer")
                .changed()
        );
    }

    #[test]
    fn conflicts_and_errors_are_told_apart() {
        let conflict =
            json!({"error": "conflict", "reason": "already_exists", "message": "m", "current": null});
        let outcome = write_outcome(&answer(409, conflict)).expect("not an error");
        assert_eq!(outcome.map_err(|c| c.reason), Err(ConflictReason::AlreadyExists));

        let missing = json!({"error": "not_found", "message": "no such document", "current": null});
        let outcome = write_outcome(&answer(404, missing)).expect("not an error");
        assert_eq!(outcome.map_err(|c| c.reason), Err(ConflictReason::NotFound));

        let invalid = json!({"error": "invalid_operator", "message": "$foo"});
        let error = write_outcome(&answer(400, invalid)).expect_err("an error");
        assert_eq!((error.status(), error.code()), (Some(400), "invalid_operator"));

        let garbled = json!({"id": "a"});
        assert!(matches!(
            write_outcome(&answer(200, garbled)),
            Err(ClientError::Decode { .. })
        ));
    }
}
