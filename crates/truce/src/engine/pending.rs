//! A write handed to the committer and not yet answered: wait for it on a thread
//! or `.await` it in a task (any executor).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, Result};

use super::outcome::WriteResult;

/// The answer to a queued write, available once its group commit is durable.
#[must_use = "a write is only known to be durable once its answer arrives"]
pub struct PendingWrite {
    answer: oneshot::Receiver<Result<WriteResult>>,
}

/// The committer dropped the reply: it stopped (panicked or the database closed).
fn lost() -> Error {
    Error::Unavailable("the committer stopped before answering".into())
}

impl PendingWrite {
    pub(crate) fn new(answer: oneshot::Receiver<Result<WriteResult>>) -> PendingWrite {
        PendingWrite { answer }
    }

    /// Blocks the thread until the write is answered.
    pub fn wait(self) -> Result<WriteResult> {
        self.answer.recv().unwrap_or_else(|_| Err(lost()))
    }
}

impl IntoFuture for PendingWrite {
    type Output = Result<WriteResult>;
    type IntoFuture = PendingWriteFuture;

    fn into_future(self) -> PendingWriteFuture {
        PendingWriteFuture {
            answer: self.answer.into_future(),
        }
    }
}

/// `.await`ing a [`PendingWrite`].
pub struct PendingWriteFuture {
    answer: oneshot::AsyncReceiver<Result<WriteResult>>,
}

impl Future for PendingWriteFuture {
    type Output = Result<WriteResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(lost())))
    }
}
