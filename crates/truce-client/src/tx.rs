//! Transactions (`POST /v1/tx`): checks and writes over several documents,
//! all or nothing, with every failed op named in the conflict.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::answer::WriteAnswer;
use crate::client::Client;
use crate::conflict::{TxConflict, tx_conflict};
use crate::documents::object;
use crate::error::ClientError;
use crate::precondition::{DeletePrecondition, Precondition};
use crate::transport::{Call, decode};

/// The outcome of a transaction: committed, or the ops that did not hold.
pub type TxResult = Result<TxAnswer, TxConflict>;

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxOp {
    /// Asserts a document's state without writing it. [`Precondition::Exists`]
    /// (must exist) is the default meaning of a check.
    Check {
        /// Collection.
        c: String,
        /// Document id.
        id: String,
        /// What must hold.
        precondition: Precondition,
    },
    /// Writes a document's full content, as `PUT`.
    Put {
        /// Collection.
        c: String,
        /// Document id.
        id: String,
        /// The new content (a JSON object).
        doc: Value,
        /// What must hold ([`Precondition::Exists`] is not expressible here).
        precondition: Precondition,
    },
    /// Applies update operators, as `PATCH`; an absent document without `$upsert`
    /// is a conflict with reason `not_found`.
    Patch {
        /// Collection.
        c: String,
        /// Document id.
        id: String,
        /// Operators and control keys (a JSON object).
        update: Value,
        /// What must hold ([`Precondition::Any`] sends none).
        precondition: Precondition,
    },
    /// Deletes a document.
    Delete {
        /// Collection.
        c: String,
        /// Document id.
        id: String,
        /// What must hold.
        precondition: DeletePrecondition,
    },
}

impl TxOp {
    /// The op's JSON, as `POST /v1/tx` takes it.
    pub(crate) fn to_json(&self) -> Result<Value, ClientError> {
        let (kind, c, id, field, content) = match self {
            TxOp::Check { c, id, precondition } => ("check", c, id, precondition.tx_field("check")?, None),
            TxOp::Put {
                c,
                id,
                doc,
                precondition,
            } => ("put", c, id, precondition.tx_field("put")?, Some(("doc", doc))),
            TxOp::Patch {
                c,
                id,
                update,
                precondition,
            } => (
                "patch",
                c,
                id,
                precondition.tx_field("patch")?,
                Some(("update", update)),
            ),
            TxOp::Delete { c, id, precondition } => ("delete", c, id, Some(precondition.tx_field()), None),
        };
        let mut op = Map::new();
        op.insert("op".into(), Value::from(kind));
        op.insert("c".into(), Value::from(c.as_str()));
        op.insert("id".into(), Value::from(id.as_str()));
        if let Some((name, content)) = content {
            let mut content = object(content.clone())?;
            // The op's own `version` / `rev` is the precondition.
            content.remove("_version");
            content.remove("_rev");
            op.insert(name.into(), Value::Object(content));
        }
        if let Some((name, value)) = field {
            op.insert(name.into(), value);
        }
        Ok(Value::Object(op))
    }
}

/// A transaction under construction: a list of ops, committed all or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    ops: Vec<TxOp>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Adds an op.
    pub fn op(mut self, op: TxOp) -> Transaction {
        self.ops.push(op);
        self
    }

    /// Adds a `check` of `c/id`.
    pub fn check(self, c: &str, id: &str, precondition: Precondition) -> Transaction {
        self.op(TxOp::Check {
            c: c.into(),
            id: id.into(),
            precondition,
        })
    }

    /// Adds a `put` of `doc` at `c/id`.
    pub fn put(self, c: &str, id: &str, doc: Value, precondition: Precondition) -> Transaction {
        self.op(TxOp::Put {
            c: c.into(),
            id: id.into(),
            doc,
            precondition,
        })
    }

    /// Adds a `patch` of `c/id` with `update`.
    pub fn patch(self, c: &str, id: &str, update: Value, precondition: Precondition) -> Transaction {
        self.op(TxOp::Patch {
            c: c.into(),
            id: id.into(),
            update,
            precondition,
        })
    }

    /// Adds a `delete` of `c/id`.
    pub fn delete(self, c: &str, id: &str, precondition: DeletePrecondition) -> Transaction {
        self.op(TxOp::Delete {
            c: c.into(),
            id: id.into(),
            precondition,
        })
    }

    /// The ops, in order.
    pub fn ops(&self) -> &[TxOp] {
        &self.ops
    }

    /// The request body, with `source` (the client's `Truce-Source` label).
    pub(crate) fn to_json(&self, source: &str) -> Result<Value, ClientError> {
        let ops = self
            .ops
            .iter()
            .map(TxOp::to_json)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({"source": source, "ops": ops}))
    }
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TxAnswer {
    /// The commit sequence of the transaction.
    pub seq: u64,
    /// One answer per op, in op order; `None` for a check that the document is absent.
    pub results: Vec<Option<WriteAnswer>>,
}

impl Client {
    /// Commits `tx` all or nothing. A conflict lists every op that did not hold,
    /// each with the current document. Retried safely under one idempotency key.
    pub async fn transaction(&self, tx: &Transaction) -> Result<TxResult, ClientError> {
        self.transaction_keyed(tx, None).await
    }

    /// [`transaction`](Self::transaction) under the caller's idempotency key,
    /// as [`put_with_key`](Self::put_with_key).
    pub async fn transaction_with_key(&self, tx: &Transaction, key: &str) -> Result<TxResult, ClientError> {
        self.transaction_keyed(tx, Some(key)).await
    }

    async fn transaction_keyed(&self, tx: &Transaction, key: Option<&str>) -> Result<TxResult, ClientError> {
        let body = tx.to_json(self.source())?;
        let call = Call::write(Method::POST, self.url(&["v1", "tx"]), Some(body), key)?;
        self.send_keyed(&call, |answer| match answer.status {
            200 | 201 => decode(&answer.body, "a transaction answer").map(Ok),
            status => tx_conflict(status, &answer.body).map(Err),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_encodes_as_written() {
        let tx = Transaction::new()
            .check("accounts", "a", Precondition::Version(3))
            .put(
                "accounts",
                "b",
                json!({"balance": 5, "_version": 9}),
                Precondition::Absent,
            )
            .patch(
                "accounts",
                "a",
                json!({"$inc": {"balance": -5}}),
                Precondition::Any,
            )
            .delete("accounts", "z", DeletePrecondition::Rev("4-f00".into()))
            .check("accounts", "c", Precondition::Exists);
        let body = tx.to_json("transferFunds").expect("encodes");
        assert_eq!(
            body,
            json!({"source": "transferFunds", "ops": [
                {"op": "check",  "c": "accounts", "id": "a", "version": 3},
                {"op": "put",    "c": "accounts", "id": "b", "doc": {"balance": 5}, "version": 0},
                {"op": "patch",  "c": "accounts", "id": "a", "update": {"$inc": {"balance": -5}}},
                {"op": "delete", "c": "accounts", "id": "z", "rev": "4-f00"},
                {"op": "check",  "c": "accounts", "id": "c"},
            ]})
        );
        assert_eq!(tx.ops().len(), 5);
    }

    #[test]
    fn inexpressible_ops_are_refused_before_sending() {
        let exists = Transaction::new().put("a", "b", json!({}), Precondition::Exists);
        assert!(matches!(
            exists.to_json("s"),
            Err(ClientError::InvalidArgument(_))
        ));
        let not_object = Transaction::new().patch("a", "b", json!([1]), Precondition::Any);
        assert!(matches!(
            not_object.to_json("s"),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[test]
    fn answers_decode_with_null_results_for_absent_checks() {
        let body = br#"{"seq": 42, "results": [null, {"id": "b", "rev": "1-x", "version": 1, "seq": 42, "created": true}]}"#;
        let answer: TxAnswer = decode(body, "tx").expect("decodes");
        assert_eq!(answer.seq, 42);
        assert!(answer.results[0].is_none());
        assert_eq!(answer.results[1].as_ref().map(|r| r.created), Some(true));
    }
}
