//! Preconditions of writes and how each travels on the wire: a `_version` /
//! `_rev` field in the body, an `If-Match` header, a query parameter, or the
//! `version` / `rev` field of a transaction op.

use serde_json::{Map, Value};

use crate::document::Document;
use crate::error::ClientError;

/// What a PUT or PATCH expects of the stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// It must not exist: create only (`VERSION_FIRST`, `_version: 0`).
    Absent,
    /// It must be exactly this version (`_version: N`).
    Version(u64),
    /// It must be exactly this revision (`_rev`).
    Rev(String),
    /// It must exist, at any version (`If-Match: *`).
    Exists,
    /// Anything: create or overwrite (`VERSION_LATEST`, last writer wins).
    Any,
}

impl From<&Document> for Precondition {
    /// Exactly the revision that was read (its version and content): after
    /// a delete whose tombstone was purged (`tombstones.keep_seconds`), a
    /// document made again restarts at version 1, so a version alone could
    /// match a different document than the one read.
    fn from(doc: &Document) -> Precondition {
        Precondition::Rev(doc.rev.clone())
    }
}

/// What a DELETE expects of the stored document; the server requires one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletePrecondition {
    /// It must be exactly this version (`?version=N`).
    Version(u64),
    /// It must be exactly this revision (`?rev=R`).
    Rev(String),
    /// Whatever is there (`?version=-1`); an absent document is still a miss.
    Any,
}

impl From<&Document> for DeletePrecondition {
    /// Exactly the revision that was read, as [`Precondition`]'s.
    fn from(doc: &Document) -> DeletePrecondition {
        DeletePrecondition::Rev(doc.rev.clone())
    }
}

/// The single-document write a precondition is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    Put,
    Patch,
}

/// How one precondition travels with a PUT or a PATCH.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireForm {
    /// A top-level field of the JSON body.
    BodyField(&'static str, Value),
    /// A request header and its value.
    Header(&'static str, &'static str),
    /// Nothing: the request's default is what was asked for.
    Nothing,
}

impl Precondition {
    /// The wire form for a PUT or PATCH (docs/http.md "Preconditions"): version
    /// numbers and revisions go in the body; "must exist" has only a header form;
    /// "anything" is `_version: -1` for a PUT and the default (nothing) for a PATCH.
    pub(crate) fn wire_form(&self, kind: WriteKind) -> WireForm {
        match (self, kind) {
            (Precondition::Absent, _) => WireForm::BodyField("_version", Value::from(0)),
            (Precondition::Version(n), _) => WireForm::BodyField("_version", Value::from(*n)),
            (Precondition::Rev(rev), _) => WireForm::BodyField("_rev", Value::from(rev.as_str())),
            (Precondition::Exists, _) => WireForm::Header("If-Match", "*"),
            (Precondition::Any, WriteKind::Put) => WireForm::BodyField("_version", Value::from(-1)),
            (Precondition::Any, WriteKind::Patch) => WireForm::Nothing,
        }
    }

    /// Puts the precondition into `body` (dropping any `_version` / `_rev` it
    /// carried, since two preconditions are a 400) and returns the header to send, if any.
    pub(crate) fn apply(
        &self,
        kind: WriteKind,
        body: &mut Map<String, Value>,
    ) -> Option<(&'static str, &'static str)> {
        body.remove("_version");
        body.remove("_rev");
        match self.wire_form(kind) {
            WireForm::BodyField(name, value) => {
                body.insert(name.to_string(), value);
                None
            }
            WireForm::Header(name, value) => Some((name, value)),
            WireForm::Nothing => None,
        }
    }

    /// The `version` / `rev` field of a transaction op (`op` is `check`, `put` or
    /// `patch`). A tx op has no header, so "must exist, any version" is expressible
    /// only for `check`, where it is the default.
    pub(crate) fn tx_field(&self, op: &str) -> Result<Option<(&'static str, Value)>, ClientError> {
        Ok(match (self, op) {
            (Precondition::Absent, _) => Some(("version", Value::from(0))),
            (Precondition::Version(n), _) => Some(("version", Value::from(*n))),
            (Precondition::Rev(rev), _) => Some(("rev", Value::from(rev.as_str()))),
            (Precondition::Exists, "check") => None,
            (Precondition::Exists, _) => {
                return Err(ClientError::InvalidArgument(format!(
                    "a transaction `{op}` cannot say \"must exist, any version\"; read the document and give its version"
                )));
            }
            (Precondition::Any, "patch") => None,
            (Precondition::Any, _) => Some(("version", Value::from(-1))),
        })
    }
}

impl DeletePrecondition {
    /// The query parameter of a DELETE.
    pub(crate) fn query_pair(&self) -> (&'static str, String) {
        match self {
            DeletePrecondition::Version(n) => ("version", n.to_string()),
            DeletePrecondition::Rev(rev) => ("rev", rev.clone()),
            DeletePrecondition::Any => ("version", "-1".to_string()),
        }
    }

    /// The `version` / `rev` field of a transaction `delete` op.
    pub(crate) fn tx_field(&self) -> (&'static str, Value) {
        match self {
            DeletePrecondition::Version(n) => ("version", Value::from(*n)),
            DeletePrecondition::Rev(rev) => ("rev", Value::from(rev.as_str())),
            DeletePrecondition::Any => ("version", Value::from(-1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_preconditions_map_as_the_http_doc_says() {
        use WireForm::*;
        let put = |p: Precondition| p.wire_form(WriteKind::Put);
        assert_eq!(put(Precondition::Absent), BodyField("_version", json!(0)));
        assert_eq!(put(Precondition::Version(7)), BodyField("_version", json!(7)));
        assert_eq!(
            put(Precondition::Rev("7-ab".into())),
            BodyField("_rev", json!("7-ab"))
        );
        assert_eq!(put(Precondition::Exists), Header("If-Match", "*"));
        assert_eq!(put(Precondition::Any), BodyField("_version", json!(-1)));
    }

    #[test]
    fn patch_preconditions_map_as_the_http_doc_says() {
        use WireForm::*;
        let patch = |p: Precondition| p.wire_form(WriteKind::Patch);
        assert_eq!(patch(Precondition::Absent), BodyField("_version", json!(0)));
        assert_eq!(patch(Precondition::Version(3)), BodyField("_version", json!(3)));
        assert_eq!(
            patch(Precondition::Rev("3-cd".into())),
            BodyField("_rev", json!("3-cd"))
        );
        assert_eq!(patch(Precondition::Exists), Header("If-Match", "*"));
        assert_eq!(
            patch(Precondition::Any),
            Nothing,
            "a PATCH without precondition applies to whatever is there"
        );
    }

    #[test]
    fn apply_replaces_preconditions_already_in_the_body() {
        let mut body = json!({"name": "x", "_version": 5, "_rev": "5-zz"})
            .as_object()
            .cloned()
            .expect("object");
        assert_eq!(Precondition::Version(2).apply(WriteKind::Put, &mut body), None);
        assert_eq!(Value::Object(body.clone()), json!({"name": "x", "_version": 2}));

        assert_eq!(
            Precondition::Exists.apply(WriteKind::Put, &mut body),
            Some(("If-Match", "*"))
        );
        assert_eq!(Value::Object(body.clone()), json!({"name": "x"}));

        assert_eq!(Precondition::Any.apply(WriteKind::Patch, &mut body), None);
        assert_eq!(Value::Object(body), json!({"name": "x"}));
    }

    #[test]
    fn delete_preconditions_are_query_parameters() {
        assert_eq!(
            DeletePrecondition::Version(4).query_pair(),
            ("version", "4".to_string())
        );
        assert_eq!(
            DeletePrecondition::Rev("4-ef".into()).query_pair(),
            ("rev", "4-ef".to_string())
        );
        assert_eq!(
            DeletePrecondition::Any.query_pair(),
            ("version", "-1".to_string())
        );
    }

    #[test]
    fn transaction_ops_carry_version_or_rev() {
        let field = |p: Precondition, op: &str| p.tx_field(op).expect("expressible");
        assert_eq!(field(Precondition::Absent, "put"), Some(("version", json!(0))));
        assert_eq!(
            field(Precondition::Version(3), "check"),
            Some(("version", json!(3)))
        );
        assert_eq!(
            field(Precondition::Rev("3-a".into()), "patch"),
            Some(("rev", json!("3-a")))
        );
        assert_eq!(
            field(Precondition::Exists, "check"),
            None,
            "a check without either means must exist"
        );
        assert_eq!(field(Precondition::Any, "put"), Some(("version", json!(-1))));
        assert_eq!(field(Precondition::Any, "check"), Some(("version", json!(-1))));
        assert_eq!(field(Precondition::Any, "patch"), None);
        for op in ["put", "patch"] {
            assert!(
                matches!(
                    Precondition::Exists.tx_field(op),
                    Err(ClientError::InvalidArgument(_))
                ),
                "{op}"
            );
        }

        assert_eq!(DeletePrecondition::Version(2).tx_field(), ("version", json!(2)));
        assert_eq!(
            DeletePrecondition::Rev("2-b".into()).tx_field(),
            ("rev", json!("2-b"))
        );
        assert_eq!(DeletePrecondition::Any.tx_field(), ("version", json!(-1)));
    }

    #[test]
    fn a_read_document_gives_its_exact_revision() {
        let doc = Document::from_json(json!({"_id": "a", "_rev": "9-f", "_version": 9, "_seq": 1, "_ts": 1}))
            .expect("valid");
        assert_eq!(Precondition::from(&doc), Precondition::Rev("9-f".into()));
        assert_eq!(
            DeletePrecondition::from(&doc),
            DeletePrecondition::Rev("9-f".into())
        );
    }
}
