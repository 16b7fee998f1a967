//! An answer handed back by the committer later: wait for it on a thread or
//! `.await` it in a task (any executor).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, Result};

use super::outcome::WriteResult;
use super::tx::{TxFailure, TxOutcome};

/// The committer dropped the reply: it stopped (panicked or the database closed).
fn lost() -> Error {
    Error::Unavailable("the committer stopped before answering".into())
}

/// An answer of type `T`, available once its group commit is durable. The
/// committer sends an `A`; `convert` turns it into what the caller asked for.
#[must_use = "a write is only known to be durable once its answer arrives"]
pub struct Pending<A, T> {
    answer: oneshot::Receiver<Result<A>>,
    convert: fn(A) -> Result<T>,
}

/// A queued single-document write.
pub type PendingWrite = Pending<TxOutcome, WriteResult>;

/// A queued transaction.
pub type PendingTx = Pending<TxOutcome, TxOutcome>;

impl<A, T> Pending<A, T> {
    pub(crate) fn new(answer: oneshot::Receiver<Result<A>>, convert: fn(A) -> Result<T>) -> Pending<A, T> {
        Pending { answer, convert }
    }

    /// Blocks the thread until the answer arrives.
    pub fn wait(self) -> Result<T> {
        self.answer
            .recv()
            .unwrap_or_else(|_| Err(lost()))
            .and_then(self.convert)
    }
}

/// The answer to a transaction of one write, as that write's result.
pub(crate) fn single_write(outcome: TxOutcome) -> Result<WriteResult> {
    match outcome {
        Ok(mut committed) => match committed.results.pop().flatten() {
            Some(written) => Ok(Ok(written)),
            None => Err(Error::Unavailable("a write came back without a result".into())),
        },
        Err(TxFailure::Conflicts(conflicts)) if conflicts.len() == 1 => match <[_; 1]>::try_from(conflicts) {
            Ok([only]) => Ok(Err(only.conflict)),
            Err(_) => Err(Error::Unavailable(
                "a write came back with several conflicts".into(),
            )),
        },
        Err(other) => Err(Error::Unavailable(format!(
            "unexpected outcome of a single write: {other}"
        ))),
    }
}

impl<A, T> IntoFuture for Pending<A, T> {
    type Output = Result<T>;
    type IntoFuture = PendingFuture<A, T>;

    fn into_future(self) -> PendingFuture<A, T> {
        PendingFuture {
            answer: self.answer.into_future(),
            convert: self.convert,
        }
    }
}

/// `.await`ing a [`Pending`].
pub struct PendingFuture<A, T> {
    answer: oneshot::AsyncReceiver<Result<A>>,
    convert: fn(A) -> Result<T>,
}

impl<A, T> Future for PendingFuture<A, T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let convert = self.convert;
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(lost())).and_then(convert))
    }
}
