//! Read-modify-write with optimistic concurrency: read, compute the new body,
//! write it at exactly the revision read, and on a conflict redo from the
//! document the conflict answer carried.

use serde_json::Value;

use crate::answer::WriteAnswer;
use crate::client::Client;
use crate::document::Document;
use crate::error::ClientError;
use crate::precondition::{Precondition, WriteKind};

impl Client {
    /// Updates `coll/id` with `modify`, which gets the current document (`None`
    /// when absent) and returns the new full body (a JSON object of user fields).
    ///
    /// It GETs the document, calls `modify`, and PUTs the result at exactly the
    /// revision read (create-only when absent): the version and content, so
    /// that a document deleted, purged and made again at the same version
    /// is not taken for the one read. A conflict that a fresh read can
    /// fix (`version_mismatch`, `already_exists`, `not_found`) is redone from the
    /// document the conflict answer carried (the state that beat this write, or
    /// `None` when absent), so no second read is needed:
    ///
    /// - a write made from a fresh document (just read, or just carried by a
    ///   conflict) that loses backs off first, as the retry policy says, and
    ///   starts a new round;
    /// - the first write after a backoff is made from the document the last
    ///   conflict carried, which the wait may have made stale: if it loses, the
    ///   document its conflict carries is fresh, and it is redone at once
    ///   (this is the read the backoff would otherwise need).
    ///
    /// After the retry policy's attempts (rounds), or on a conflict a fresh read
    /// cannot fix (a unique violation), the error is
    /// [`ClientError::Conflicted`] carrying the last conflict.
    ///
    /// `modify` may run several times: keep it free of side effects.
    pub async fn update_with_retry<F>(
        &self,
        coll: &str,
        id: &str,
        mut modify: F,
    ) -> Result<WriteAnswer, ClientError>
    where
        F: FnMut(Option<&Document>) -> Value,
    {
        let attempts = self.policy.attempts();
        let mut round = 1;
        let mut current = self.get(coll, id).await?;
        let mut fresh = true;
        loop {
            let body = modify(current.as_ref());
            let precondition = current.as_ref().map_or(Precondition::Absent, Precondition::from);
            // Each write says which round it is, so the server counts the
            // rounds after a conflict as retries. Only a write made from a
            // fresh document says of how many: it is the one whose conflict in
            // the last round ends the call (a permanent failure); one made
            // after a backoff is redone at once if it loses.
            let call = self
                .write_call(WriteKind::Put, (coll, id), body, &precondition, None)?
                .attempt(round, fresh.then_some(attempts));
            let written = self.send_write(&call).await?;
            match written {
                Ok(written) => return Ok(written),
                Err(conflict) if conflict.reason.is_stale_read() && (!fresh || round < attempts) => {
                    current = conflict.current;
                    if fresh {
                        tokio::time::sleep(self.policy.delay(round, None)).await;
                        round += 1;
                    }
                    fresh = !fresh;
                }
                Err(conflict) => {
                    return Err(ClientError::Conflicted {
                        attempts: round,
                        last: Box::new(conflict),
                    });
                }
            }
        }
    }
}
