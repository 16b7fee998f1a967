//! Read-modify-write with optimistic concurrency: read, compute the new body,
//! write it at exactly the version read, and on a conflict redo from the
//! document the conflict answer carried.

use serde_json::Value;

use crate::answer::WriteAnswer;
use crate::client::Client;
use crate::document::Document;
use crate::error::ClientError;
use crate::precondition::Precondition;

impl Client {
    /// Updates `coll/id` with `modify`, which gets the current document (`None`
    /// when absent) and returns the new full body (a JSON object of user fields).
    ///
    /// The first round GETs the document, calls `modify`, and PUTs the result at
    /// exactly the version read (create-only when absent). A conflict that a fresh
    /// read can fix (`version_mismatch`, `already_exists`, `not_found`) starts a new
    /// round after a backoff, up to the retry policy's attempts; that round starts
    /// from the document the conflict answer carried (the state that beat this
    /// write, or `None` when absent), so a retry costs one round trip, not two.
    /// When it gives up, or meets a conflict a fresh read cannot fix (a unique
    /// violation), the error is [`ClientError::Conflicted`] carrying the last conflict.
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
        loop {
            let body = modify(current.as_ref());
            let precondition = current.as_ref().map_or(Precondition::Absent, Precondition::from);
            match self.put(coll, id, body, precondition).await? {
                Ok(written) => return Ok(written),
                Err(conflict) if conflict.reason.is_stale_read() && round < attempts => {
                    tokio::time::sleep(self.policy.delay(round, None)).await;
                    round += 1;
                    current = conflict.current;
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
