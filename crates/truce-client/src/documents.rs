//! Single-document calls: `GET`, `PUT`, `PATCH` and `DELETE` of
//! `/v1/c/{coll}/{id}`.

use reqwest::Method;
use serde_json::{Map, Value};

use crate::answer::{WriteResult, write_outcome};
use crate::client::Client;
use crate::conflict::{http_error, missing};
use crate::document::Document;
use crate::error::ClientError;
use crate::precondition::{DeletePrecondition, Precondition, WriteKind};
use crate::transport::{Answer, Call, decode};

/// The answer to a conditional read ([`Client::get_if_none_match`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// The document, at a revision other than the one given.
    Found(Document),
    /// The document is still at the revision given (304).
    NotModified,
    /// No such document, or it is deleted (404).
    NotFound,
}

impl Client {
    /// Reads a document; `None` when it is absent or deleted.
    pub async fn get(&self, coll: &str, id: &str) -> Result<Option<Document>, ClientError> {
        match self.fetch(coll, id, None).await? {
            Fetched::Found(doc) => Ok(Some(doc)),
            Fetched::NotFound => Ok(None),
            Fetched::NotModified => Err(ClientError::decode("a GET", "304 without If-None-Match")),
        }
    }

    /// Reads a document unless it is still at revision `rev` (`If-None-Match`).
    pub async fn get_if_none_match(&self, coll: &str, id: &str, rev: &str) -> Result<Fetched, ClientError> {
        self.fetch(coll, id, Some(rev)).await
    }

    async fn fetch(&self, coll: &str, id: &str, if_none_match: Option<&str>) -> Result<Fetched, ClientError> {
        let mut call = Call::get(self.doc_url(coll, id)?);
        if let Some(rev) = if_none_match {
            call = call.header("If-None-Match", format!("\"{rev}\""));
        }
        let answer = self.execute(&call).await?;
        match answer.status {
            200 => decode(&answer.body, "a document").map(Fetched::Found),
            304 => Ok(Fetched::NotModified),
            404 if missing(&answer.body) => Ok(Fetched::NotFound),
            status => Err(http_error(status, &answer.body)),
        }
    }

    /// Writes the full content of a document (`PUT`), if `precondition` holds.
    ///
    /// `body` must be a JSON object of user fields; a `_version` / `_rev` in it is
    /// replaced by `precondition`.
    pub async fn put(
        &self,
        coll: &str,
        id: &str,
        body: Value,
        precondition: Precondition,
    ) -> Result<WriteResult, ClientError> {
        self.write_doc(WriteKind::Put, (coll, id), body, &precondition, None)
            .await
    }

    /// [`put`](Self::put) under the caller's idempotency key (1–255 visible
    /// ASCII characters or spaces): sent again with the same key and request,
    /// after an answer that was lost, it is answered as it was the first time
    /// (within 24 h), and never written twice. With another request, the key
    /// is refused (422 `idempotency_key_reused`).
    pub async fn put_with_key(
        &self,
        coll: &str,
        id: &str,
        body: Value,
        precondition: Precondition,
        key: &str,
    ) -> Result<WriteResult, ClientError> {
        self.write_doc(WriteKind::Put, (coll, id), body, &precondition, Some(key))
            .await
    }

    /// Applies update operators to a document (`PATCH`), if `precondition` holds.
    ///
    /// `update` holds operators (`$set`, `$inc`, …) and control keys (`$upsert`,
    /// `$if`, `$else`). [`Precondition::Any`] sends none: operators apply to whatever
    /// is there. A skipped update answers `Ok(Ok(answer))` with `answer.skipped`.
    pub async fn patch(
        &self,
        coll: &str,
        id: &str,
        update: Value,
        precondition: Precondition,
    ) -> Result<WriteResult, ClientError> {
        self.write_doc(WriteKind::Patch, (coll, id), update, &precondition, None)
            .await
    }

    /// [`patch`](Self::patch) under the caller's idempotency key, as
    /// [`put_with_key`](Self::put_with_key).
    pub async fn patch_with_key(
        &self,
        coll: &str,
        id: &str,
        update: Value,
        precondition: Precondition,
        key: &str,
    ) -> Result<WriteResult, ClientError> {
        self.write_doc(WriteKind::Patch, (coll, id), update, &precondition, Some(key))
            .await
    }

    /// A `PUT` or `PATCH` of a document, sent.
    async fn write_doc(
        &self,
        kind: WriteKind,
        (coll, id): (&str, &str),
        body: Value,
        precondition: &Precondition,
        key: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        let call = self.write_call(kind, (coll, id), body, precondition, key)?;
        self.send_write(&call).await
    }

    /// The call of a document write (a first attempt: `Call::attempt` says
    /// another), under `key` or else a fresh idempotency key.
    pub(crate) fn write_call(
        &self,
        kind: WriteKind,
        (coll, id): (&str, &str),
        body: Value,
        precondition: &Precondition,
        key: Option<&str>,
    ) -> Result<Call, ClientError> {
        let method = match kind {
            WriteKind::Put => Method::PUT,
            WriteKind::Patch => Method::PATCH,
        };
        let mut body = object(body)?;
        let header = precondition.apply(kind, &mut body);
        let mut call = Call::write(method, self.doc_url(coll, id)?, Some(Value::Object(body)), key)?;
        if let Some((name, value)) = header {
            call = call.header(name, value);
        }
        Ok(call)
    }

    /// Sends a document write; its answer as a write's.
    pub(crate) async fn send_write(&self, call: &Call) -> Result<WriteResult, ClientError> {
        self.send_keyed(call, write_outcome).await
    }

    /// Sends a write and reads its answer with `interpret`; an error that
    /// leaves its outcome unknown names its key ([`ClientError::of_write`]).
    pub(crate) async fn send_keyed<T>(
        &self,
        call: &Call,
        interpret: impl FnOnce(&Answer) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let answer = self.execute(call).await?;
        interpret(&answer).map_err(|e| e.of_write(call.idempotency_key(), answer.earlier_unknown))
    }

    /// Deletes a document if `precondition` holds; the answer's `doc` is the
    /// tombstone. An absent document is a conflict with reason `not_found`.
    pub async fn delete(
        &self,
        coll: &str,
        id: &str,
        precondition: DeletePrecondition,
    ) -> Result<WriteResult, ClientError> {
        self.delete_keyed(coll, id, precondition, None).await
    }

    /// [`delete`](Self::delete) under the caller's idempotency key, as
    /// [`put_with_key`](Self::put_with_key).
    pub async fn delete_with_key(
        &self,
        coll: &str,
        id: &str,
        precondition: DeletePrecondition,
        key: &str,
    ) -> Result<WriteResult, ClientError> {
        self.delete_keyed(coll, id, precondition, Some(key)).await
    }

    async fn delete_keyed(
        &self,
        coll: &str,
        id: &str,
        precondition: DeletePrecondition,
        key: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        let mut url = self.doc_url(coll, id)?;
        let (name, value) = precondition.query_pair();
        url.query_pairs_mut().append_pair(name, &value);
        self.send_write(&Call::write(Method::DELETE, url, None, key)?)
            .await
    }
}

/// The body as a JSON object, or an argument error.
pub(crate) fn object(value: Value) -> Result<Map<String, Value>, ClientError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ClientError::InvalidArgument(format!(
            "a document or update is a JSON object, not {other}"
        ))),
    }
}
