//! Conflicts: writes that did not apply, returned as values carrying the
//! current document, and the parsing of the server's error bodies into them
//! (or into [`ClientError::Http`]).

use std::fmt;

use serde_json::{Map, Value};

use crate::document::Document;
use crate::error::{ClientError, UNKNOWN_CODE};

/// How long a non-JSON error body may be before it is cut in a message.
const ERROR_TEXT_CHARS_MAX: usize = 200;

/// Why a write did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictReason {
    /// The document is not at the version or revision the write expected.
    VersionMismatch,
    /// A create-only write met a live document.
    AlreadyExists,
    /// The write needed a document that is absent (or deleted).
    NotFound,
    /// A PATCH's `$if` was false (with `$else: "conflict"`).
    ConditionFailed,
    /// Something a transaction read changed before it committed.
    ReadConflict,
    /// A unique index already holds the value for another document (`current`
    /// is that document). `index` names it when the server says which.
    UniqueViolation {
        /// The index's name, if the server gave it.
        index: Option<String>,
    },
    /// A reason this client does not know (a newer server).
    Unknown(String),
}

impl ConflictReason {
    /// Parses the server's `reason` code.
    pub fn from_code(code: &str) -> ConflictReason {
        match code {
            "version_mismatch" => ConflictReason::VersionMismatch,
            "already_exists" => ConflictReason::AlreadyExists,
            "not_found" => ConflictReason::NotFound,
            "condition_failed" => ConflictReason::ConditionFailed,
            "read_conflict" => ConflictReason::ReadConflict,
            "unique_violation" => ConflictReason::UniqueViolation { index: None },
            other => ConflictReason::Unknown(other.to_string()),
        }
    }

    /// The server's code for this reason.
    pub fn code(&self) -> &str {
        match self {
            ConflictReason::VersionMismatch => "version_mismatch",
            ConflictReason::AlreadyExists => "already_exists",
            ConflictReason::NotFound => "not_found",
            ConflictReason::ConditionFailed => "condition_failed",
            ConflictReason::ReadConflict => "read_conflict",
            ConflictReason::UniqueViolation { .. } => "unique_violation",
            ConflictReason::Unknown(code) => code,
        }
    }

    /// Whether reading the document again and redoing the write can succeed:
    /// true for a stale version, an unexpected presence or absence, a read conflict.
    pub fn is_stale_read(&self) -> bool {
        matches!(
            self,
            ConflictReason::VersionMismatch
                | ConflictReason::AlreadyExists
                | ConflictReason::NotFound
                | ConflictReason::ReadConflict
        )
    }
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictReason::UniqueViolation { index: Some(index) } => write!(f, "unique_violation ({index})"),
            other => f.write_str(other.code()),
        }
    }
}

/// A single-document write that did not apply: an answer, not a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Why it did not apply.
    pub reason: ConflictReason,
    /// The document as it is now (`None` when absent); for a unique violation,
    /// the document that holds the value.
    pub current: Option<Document>,
    /// The server's message.
    pub message: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        match &self.current {
            Some(doc) => write!(f, " (current: {} version {})", doc.id, doc.version),
            None => write!(f, " (current: none)"),
        }
    }
}

impl std::error::Error for Conflict {}

/// One operation of a transaction that did not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct OpConflict {
    /// Position of the op in the transaction (0-based).
    pub index: usize,
    /// Its collection.
    pub c: String,
    /// Its document id.
    pub id: String,
    /// Why it did not hold.
    pub reason: ConflictReason,
    /// The document as it is now, `None` when absent.
    pub current: Option<Document>,
}

/// A transaction that did not commit: nothing was written. Names every op that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TxConflict {
    /// Every op that did not hold, in op order.
    pub conflicts: Vec<OpConflict>,
    /// The server's message.
    pub message: String,
}

/// A JSON error body: `{"error": CODE, "message": TEXT, ...}`.
pub(crate) struct ErrorBody {
    pub code: String,
    pub message: String,
    pub fields: Map<String, Value>,
}

impl ErrorBody {
    /// Reads an error body; `None` when it is not a JSON object with a string `error`.
    pub fn parse(bytes: &[u8]) -> Option<ErrorBody> {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(bytes) else {
            return None;
        };
        let Some(Value::String(code)) = fields.remove("error") else {
            return None;
        };
        let message = match fields.remove("message") {
            Some(Value::String(message)) => message,
            _ => String::new(),
        };
        Some(ErrorBody {
            code,
            message,
            fields,
        })
    }

    /// Whether this is Truce's 404 for something that is not there (a
    /// document, an index, a backup), not for a route it does not have
    /// (`"no_route": true`: a wrong base URL, which must not read as absent
    /// data), nor another server's (`/couch`'s and CouchDB's carry a
    /// `reason`).
    pub fn is_missing(&self) -> bool {
        self.code == "not_found"
            && self.fields.get("no_route") != Some(&Value::Bool(true))
            && !self.fields.contains_key("reason")
    }

    fn current(&self) -> Result<Option<Document>, ClientError> {
        optional_document(self.fields.get("current"), "the current document of a conflict")
    }
}

fn optional_document(value: Option<&Value>, what: &str) -> Result<Option<Document>, ClientError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Document::from_json(value.clone())
            .map(Some)
            .map_err(|e| ClientError::decode(what, e)),
    }
}

/// Whether a 404's body is Truce's for something that is not there
/// ([`ErrorBody::is_missing`]).
pub(crate) fn missing(bytes: &[u8]) -> bool {
    ErrorBody::parse(bytes).is_some_and(|b| b.is_missing())
}

/// The error for an answer that is neither success nor conflict.
pub(crate) fn http_error(status: u16, bytes: &[u8]) -> ClientError {
    match ErrorBody::parse(bytes) {
        Some(body) => ClientError::Http {
            status,
            code: body.code,
            message: body.message,
            idempotency_key: None,
        },
        None => {
            let text: String = String::from_utf8_lossy(bytes)
                .chars()
                .take(ERROR_TEXT_CHARS_MAX)
                .collect();
            ClientError::Http {
                status,
                code: UNKNOWN_CODE.to_string(),
                message: text,
                idempotency_key: None,
            }
        }
    }
}

/// A single-document write's error answer: a [`Conflict`] for 409 `conflict` /
/// `unique_violation` and 404 `not_found`, else an error.
pub(crate) fn write_conflict(status: u16, bytes: &[u8]) -> Result<Conflict, ClientError> {
    let Some(body) = ErrorBody::parse(bytes) else {
        return Err(http_error(status, bytes));
    };
    let reason = match (status, body.code.as_str()) {
        (409, "conflict") => match body.fields.get("reason") {
            Some(Value::String(code)) => ConflictReason::from_code(code),
            _ => ConflictReason::Unknown(String::new()),
        },
        (409, "unique_violation") => ConflictReason::UniqueViolation {
            index: body
                .fields
                .get("index")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        (404, _) if body.is_missing() => ConflictReason::NotFound,
        _ => {
            return Err(ClientError::Http {
                status,
                code: body.code,
                message: body.message,
                idempotency_key: None,
            });
        }
    };
    let current = body.current()?;
    Ok(Conflict {
        reason,
        current,
        message: body.message,
    })
}

/// A transaction's 409 answer: `{"error":"conflict","conflicts":[…]}`.
pub(crate) fn tx_conflict(status: u16, bytes: &[u8]) -> Result<TxConflict, ClientError> {
    let body = match ErrorBody::parse(bytes) {
        Some(body) if status == 409 && body.fields.contains_key("conflicts") => body,
        _ => return Err(http_error(status, bytes)),
    };
    let what = "a transaction conflict";
    let Some(Value::Array(list)) = body.fields.get("conflicts") else {
        return Err(ClientError::decode(what, "`conflicts` is not a list"));
    };
    let conflicts = list
        .iter()
        .map(|item| op_conflict(item, what))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TxConflict {
        conflicts,
        message: body.message,
    })
}

fn op_conflict(item: &Value, what: &str) -> Result<OpConflict, ClientError> {
    let field = |key: &str| {
        item.get(key)
            .ok_or_else(|| ClientError::decode(what, format!("`{key}` is missing")))
    };
    let text = |key: &str| {
        field(key)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::decode(what, format!("`{key}` is not a string")))
    };
    let index = field("index")?
        .as_u64()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| ClientError::decode(what, "`index` is not an op position"))?;
    let reason = match ConflictReason::from_code(&text("reason")?) {
        ConflictReason::UniqueViolation { .. } => ConflictReason::UniqueViolation {
            index: item.get("index_name").and_then(Value::as_str).map(str::to_string),
        },
        reason => reason,
    };
    Ok(OpConflict {
        index,
        c: text("c")?,
        id: text("id")?,
        reason,
        current: optional_document(item.get("current"), what)?,
    })
}

#[cfg(test)]
#[path = "conflict_tests.rs"]
mod tests;
