//! The client's one error type: failures, as opposed to conflicts (which are
//! values, see [`Conflict`](crate::Conflict)).

use crate::conflict::Conflict;

/// The `code` of an HTTP error whose body did not carry one (a proxy's page,
/// an empty body).
pub const UNKNOWN_CODE: &str = "unknown";

/// Everything that can make a call fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status. `code` is its stable error code
    /// (`invalid_document`, `precondition_required`, `overloaded`, …), or
    /// [`UNKNOWN_CODE`] when the body did not carry one.
    #[error("HTTP {status} {code}: {message}")]
    #[non_exhaustive]
    Http {
        /// The HTTP status.
        status: u16,
        /// The server's stable error code.
        code: String,
        /// The server's human-readable message.
        message: String,
        /// For a write whose outcome is unknown, the idempotency key it was
        /// sent under, as for [`ClientError::Transport`]: one answered 5xx (a
        /// 503 `timeout`, say, or a proxy's 502 or 504), or one whose
        /// earlier attempt got no answer or such a 503 before its last was
        /// refused (a 429 `overloaded` after a timeout: the first attempt
        /// may have committed).
        idempotency_key: Option<String>,
    },
    /// The request did not get an answer: connection refused or reset, timeout.
    /// A write's outcome is then unknown: it may have committed. Sending it
    /// again under the same `idempotency_key` (the `*_with_key` calls, such
    /// as [`Client::put_with_key`](crate::Client::put_with_key)) is safe: if it
    /// did commit, the server answers what it answered then.
    #[error("no answer after {attempts} attempt(s): {source}")]
    #[non_exhaustive]
    Transport {
        /// How many attempts were made.
        attempts: u32,
        /// The last transport failure.
        #[source]
        source: reqwest::Error,
        /// The idempotency key every attempt of a write carried; `None` for
        /// calls that carry none.
        idempotency_key: Option<String>,
    },
    /// The server's answer did not have the expected shape.
    #[error("unexpected answer to {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Why it did not decode.
        message: String,
    },
    /// An argument cannot be sent (bad URL, a header value that is not text, a
    /// precondition a transaction op cannot express, a body that is not an object).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`Client::update_with_retry`](crate::Client::update_with_retry) gave up: the
    /// write kept conflicting (or met a conflict a fresh read cannot fix).
    #[error("gave up after {attempts} attempt(s), last conflict: {last}")]
    Conflicted {
        /// How many read-modify-write rounds were made.
        attempts: u32,
        /// The last conflict, with the document as it was then.
        last: Box<Conflict>,
    },
}

impl ClientError {
    /// A stable code for every error: the server's code for [`ClientError::Http`],
    /// else `transport`, `decode`, `invalid_argument` or `conflict`.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Http { code, .. } => code,
            ClientError::Transport { .. } => "transport",
            ClientError::Decode { .. } => "decode",
            ClientError::InvalidArgument(_) => "invalid_argument",
            ClientError::Conflicted { .. } => "conflict",
        }
    }

    /// The idempotency key of a write whose outcome is unknown: it got no
    /// answer ([`ClientError::Transport`]), or a 5xx, or an earlier attempt
    /// of it may have applied ([`ClientError::Http`]). Sent again under it,
    /// it is written at most once.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            ClientError::Transport { idempotency_key, .. } | ClientError::Http { idempotency_key, .. } => {
                idempotency_key.as_deref()
            }
            _ => None,
        }
    }

    /// This error, naming `key` if it leaves a write's outcome unknown: a
    /// 5xx, but for 507 `insufficient_storage` (nothing was written, and the
    /// key was not taken); or any answer, when an earlier attempt may have
    /// applied the write (`earlier_unknown`).
    pub(crate) fn of_write(mut self, key: Option<&str>, earlier_unknown: bool) -> ClientError {
        if let ClientError::Http {
            status,
            idempotency_key,
            ..
        } = &mut self
            && (earlier_unknown || (*status >= 500 && *status != 507))
        {
            *idempotency_key = key.map(str::to_string);
        }
        self
    }

    /// The HTTP status, for errors the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            ClientError::Conflicted { .. } => Some(409),
            _ => None,
        }
    }

    pub(crate) fn decode(what: impl Into<String>, message: impl std::fmt::Display) -> ClientError {
        ClientError::Decode {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConflictReason;

    #[test]
    fn every_variant_has_a_code_and_a_message() {
        let http = ClientError::Http {
            status: 428,
            code: "precondition_required".into(),
            message: "m".into(),
            idempotency_key: None,
        };
        assert_eq!(http.code(), "precondition_required");
        assert_eq!(http.status(), Some(428));
        assert_eq!(http.to_string(), "HTTP 428 precondition_required: m");

        let decode = ClientError::decode("a write answer", "missing field `rev`");
        assert_eq!(decode.code(), "decode");
        assert!(decode.to_string().contains("a write answer"));

        assert_eq!(
            ClientError::InvalidArgument("x".into()).code(),
            "invalid_argument"
        );

        let conflicted = ClientError::Conflicted {
            attempts: 3,
            last: Box::new(Conflict {
                reason: ConflictReason::VersionMismatch,
                current: None,
                message: "stale".into(),
            }),
        };
        assert_eq!(conflicted.code(), "conflict");
        assert_eq!(conflicted.status(), Some(409));
        assert!(
            conflicted.to_string().contains("version_mismatch"),
            "{conflicted}"
        );
    }
}
