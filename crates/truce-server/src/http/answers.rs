//! The memory of answers waiting for their clients to read them.
//!
//! An answer is built whole before it is sent, and it stays in memory until
//! the client has read it: an HTTP/1 client that stops reading, or an HTTP/2
//! client that grants no flow-control credit, would otherwise hold any number
//! of them (a 16 MiB query page each). Every answer larger than one frame
//! ([`ANSWER_FRAME_BYTES`]) is counted here until its last byte is handed to
//! the connection, and handed over a frame at a time, each one a copy: what
//! the connection holds of it is a frame or a few (HTTP/2 takes one before it
//! waits for credit; HTTP/1 queues a few), never the whole answer, and each
//! frame taken shows that the client reads.
//!
//! When a new answer would take the total past the limit
//! (`--answer-memory-mib`), the answers that made no progress for the stall
//! time (`--answer-stall-ms`) are dropped first — their memory freed at once,
//! their stream reset or HTTP/1 connection closed when the connection asks
//! for more. If it still does not fit, an answer that reports nothing done —
//! to a `GET` or `HEAD`, a 4xx, or one its handler marks [`Unwritten`] (a
//! `POST` that only reads) — is replaced by 429 `overloaded`; the answer to a
//! write is never refused, since the write is done and a 429 would say it
//! was not (it is dropped when it stalls, as any answer). The first answer
//! always fits, so an answer larger than the limit is sent when it is alone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::error::ApiError;

/// The frames a counted answer is handed over in; answers of at most this
/// are not counted, as a connection would hold them whole anyway (one unread
/// HTTP/1 answer, or one per HTTP/2 stream). Small, as HTTP/2 holds one
/// frame of each stream whose client grants no credit.
pub const ANSWER_FRAME_BYTES: usize = 16 * 1024;

/// The default limit on counted answers, MiB.
pub const DEFAULT_ANSWER_MEMORY_MIB: u64 = 64;

/// The default time a counted answer may make no progress before it may be
/// dropped to make room, ms.
pub const DEFAULT_ANSWER_STALL_MS: u64 = 30_000;

/// A response extension: the request wrote nothing (a `POST` that only
/// reads), so its answer may be refused when the answers being sent are at
/// the limit.
#[derive(Clone, Copy, Debug)]
pub struct Unwritten;

/// Marks a 4xx that reports something written (a push refused after some
/// of its rows were): never replaced by 429, which would say nothing was.
#[derive(Clone, Copy, Debug)]
pub struct PartlyWritten;

/// The answers being sent, and their bytes.
pub struct Answers {
    limit_bytes: usize,
    stall_ms: u64,
    epoch: Instant,
    ledger: Mutex<Ledger>,
    held_bytes: Gauge,
    refused: Counter,
    dropped: Counter,
    write_stalls: Counter,
}

/// Under [`Answers::ledger`]'s lock.
#[derive(Default)]
struct Ledger {
    /// Bytes of the answers not yet handed whole to their connection.
    bytes: usize,
    /// The counted answers (those sent, given up or dropped are pruned when
    /// the next one is counted).
    answers: Vec<Weak<Held>>,
}

/// One counted answer.
struct Held {
    /// What is left to hand over; `None` once sent whole, given up or dropped.
    rest: Mutex<Option<Bytes>>,
    /// Its size, as counted.
    len: usize,
    /// When the connection last took a frame, ms since [`Answers::epoch`].
    progressed_ms: AtomicU64,
    /// Dropped for lack of progress: the connection gets an error, not an end.
    dropped: AtomicBool,
}

impl Held {
    fn rest(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.rest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Answers {
    /// Counts answers up to `limit_bytes`, and drops those that made no
    /// progress for `stall` when one more does not fit.
    pub fn new(limit_bytes: usize, stall: Duration) -> Arc<Answers> {
        Arc::new(Answers {
            limit_bytes,
            stall_ms: u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            ledger: Mutex::new(Ledger::default()),
            held_bytes: Gauge::default(),
            refused: Counter::default(),
            dropped: Counter::default(),
            write_stalls: Counter::default(),
        })
    }

    /// Registers the gauge of held bytes and the counters of refused and
    /// dropped answers.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "answer_held_bytes",
            "Bytes of answers over 16 KiB not yet handed whole to their connection",
            self.held_bytes.clone(),
        );
        registry.register(
            "answers_refused",
            "Answers reporting nothing done, replaced by 429 overloaded: the answers held were at the limit",
            self.refused.clone(),
        );
        registry.register(
            "answers_dropped",
            "Answers dropped half-sent: no progress for the stall time while the held ones were at the limit",
            self.dropped.clone(),
        );
        registry.register(
            "connections_write_stalled",
            "Connections closed because their writes stayed blocked for twice the stall time",
            self.write_stalls.clone(),
        );
    }

    /// The counter of connections closed for writes blocked too long (the
    /// accepting side's `WriteStall` counts them).
    pub fn write_stalls(&self) -> Counter {
        self.write_stalls.clone()
    }

    /// `response`, counted and handed over in frames when it is larger than
    /// [`ANSWER_FRAME_BYTES`], or 429 `overloaded` in its place when it does
    /// not fit and reports nothing done (`read`: the request's method is a
    /// safe one; a 4xx; an [`Unwritten`] answer).
    pub async fn hold(self: &Arc<Self>, read: bool, response: Response) -> Response {
        let Some(len) = response.body().size_hint().exact() else {
            return response; // a stream: it builds its pages as they are read
        };
        if len <= ANSWER_FRAME_BYTES as u64 {
            return response;
        }
        let refusable = (read
            || response.status().is_client_error()
            || response.extensions().get::<Unwritten>().is_some())
            && response.extensions().get::<PartlyWritten>().is_none();
        let (parts, body) = response.into_parts();
        // Our answers are whole bytes already: this does not wait.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return ApiError::Engine(truce::Error::Unavailable(format!("cannot build the answer: {e}")))
                    .into_response();
            }
        };
        match self.admit(bytes, refusable) {
            Some(held) => {
                let body = HeldBody {
                    held,
                    answers: Arc::clone(self),
                };
                Response::from_parts(parts, Body::new(body))
            }
            None => {
                self.refused.inc();
                ApiError::AnswersUnread.into_response()
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `bytes`, dropping stalled answers first if they do not fit;
    /// `None` if they still do not and `refusable`.
    fn admit(&self, bytes: Bytes, refusable: bool) -> Option<Arc<Held>> {
        let len = bytes.len();
        let now = self.now_ms();
        let mut ledger = self.ledger();
        let fits =
            |ledger: &Ledger| ledger.bytes == 0 || ledger.bytes.saturating_add(len) <= self.limit_bytes;
        if !fits(&ledger) {
            self.drop_stalled(&mut ledger, now);
            if refusable && !fits(&ledger) {
                return None;
            }
        }
        // Those sent whole, given up or dropped are counted no more.
        ledger
            .answers
            .retain(|held| held.upgrade().is_some_and(|held| held.rest().is_some()));
        let held = Arc::new(Held {
            rest: Mutex::new(Some(bytes)),
            len,
            progressed_ms: AtomicU64::new(now),
            dropped: AtomicBool::new(false),
        });
        ledger.answers.push(Arc::downgrade(&held));
        ledger.bytes += len;
        self.held_bytes.set(gauge_value(ledger.bytes));
        Some(held)
    }

    /// Frees the answers that made no progress for the stall time.
    fn drop_stalled(&self, ledger: &mut Ledger, now: u64) {
        for held in ledger.answers.iter().filter_map(Weak::upgrade) {
            if now.saturating_sub(held.progressed_ms.load(Ordering::Relaxed)) < self.stall_ms {
                continue;
            }
            if held.rest().take().is_some() {
                held.dropped.store(true, Ordering::Relaxed);
                ledger.bytes -= held.len;
                self.dropped.inc();
            }
        }
        self.held_bytes.set(gauge_value(ledger.bytes));
    }

    /// An answer was handed whole to its connection, or given up.
    fn release(&self, len: usize) {
        let mut ledger = self.ledger();
        ledger.bytes -= len;
        self.held_bytes.set(gauge_value(ledger.bytes));
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A counted answer's body: its bytes in frames of [`ANSWER_FRAME_BYTES`].
struct HeldBody {
    held: Arc<Held>,
    answers: Arc<Answers>,
}

/// What a connection gets for an answer dropped half-sent.
#[derive(Debug, thiserror::Error)]
#[error("answer dropped: the client read none of it for the stall time")]
pub struct AnswerDropped;

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = AnswerDropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerDropped>>> {
        let this = self.get_mut();
        let mut rest = this.held.rest();
        let Some(bytes) = rest.as_mut() else {
            let dropped = this.held.dropped.load(Ordering::Relaxed);
            return Poll::Ready(dropped.then_some(Err(AnswerDropped)));
        };
        // A copy: a slice would keep the whole answer alive for as long as
        // the connection holds the frame, dropped or not.
        let frame = Bytes::copy_from_slice(&bytes[..bytes.len().min(ANSWER_FRAME_BYTES)]);
        let _ = bytes.split_to(frame.len());
        if bytes.is_empty() {
            *rest = None;
            drop(rest);
            this.answers.release(this.held.len);
        }
        this.held
            .progressed_ms
            .store(this.answers.now_ms(), Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.rest().is_none() && !self.held.dropped.load(Ordering::Relaxed)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.held.rest().as_ref().map_or(0, |bytes| bytes.len() as u64))
    }
}

impl Drop for HeldBody {
    /// The connection gave up on the answer (closed, reset): its bytes are free.
    fn drop(&mut self) {
        let given_up = self.held.rest().take();
        if given_up.is_some() {
            self.answers.release(self.held.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn answer(len: usize) -> Response {
        Body::from(vec![b'x'; len]).into_response()
    }

    async fn frames(response: Response) -> Vec<usize> {
        let mut body = response.into_body();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            sizes.push(frame.expect("a frame").into_data().expect("data").len());
        }
        sizes
    }

    async fn first_frame(body: &mut Body) -> Bytes {
        body.frame()
            .await
            .expect("a frame")
            .expect("data")
            .into_data()
            .expect("data")
    }

    fn held_bytes(answers: &Answers) -> usize {
        answers.ledger().bytes
    }

    #[tokio::test]
    async fn a_counted_answer_goes_in_copied_frames_and_is_freed_when_sent() {
        let answers = Answers::new(1 << 20, Duration::from_secs(30));
        let small = answers.hold(true, answer(ANSWER_FRAME_BYTES)).await;
        assert_eq!(held_bytes(&answers), 0, "an answer of one frame is not counted");
        assert_eq!(frames(small).await, [ANSWER_FRAME_BYTES]);
        let big = answers.hold(true, answer(40_000)).await;
        assert_eq!(big.body().size_hint().exact(), Some(40_000));
        assert_eq!(held_bytes(&answers), 40_000);
        assert_eq!(frames(big).await, [16_384, 16_384, 7_232]);
        assert_eq!(held_bytes(&answers), 0);
        // Given up half-sent (the connection closed): freed too.
        let mut big = answers.hold(true, answer(40_000)).await.into_body();
        first_frame(&mut big).await;
        drop(big);
        assert_eq!(held_bytes(&answers), 0);
        // Each frame is a copy: one the connection still holds does not keep
        // the answer's memory alive.
        let whole = Bytes::from(vec![b'y'; 40_000]);
        let answer_memory = whole.as_ptr() as usize..whole.as_ptr() as usize + whole.len();
        let mut big = answers
            .hold(true, Body::from(whole).into_response())
            .await
            .into_body();
        let frame = first_frame(&mut big).await;
        assert!(
            !answer_memory.contains(&(frame.as_ptr() as usize)),
            "a slice of the answer"
        );
    }

    #[tokio::test]
    async fn past_the_limit_reads_are_refused_and_stalled_answers_dropped() {
        let answers = Answers::new(100_000, Duration::from_millis(200));
        // The first answer fits whatever its size.
        let mut first = answers.hold(true, answer(150_000)).await.into_body();
        first_frame(&mut first).await;
        let refused = answers.hold(true, answer(20_000)).await;
        assert_eq!(refused.status(), 429);
        // So are a 4xx (nothing was done) and an answer its handler marks
        // as a read sent as a POST.
        let conflict = (StatusCode::CONFLICT, Body::from(vec![b'x'; 20_000])).into_response();
        assert_eq!(answers.hold(false, conflict).await.status(), 429);
        let mut unwritten = answer(20_000);
        unwritten.extensions_mut().insert(Unwritten);
        assert_eq!(answers.hold(false, unwritten).await.status(), 429);
        assert_eq!(answers.refused.get(), 3);
        // A write's answer is sent anyway: the write is done; and so is a
        // 4xx that reports something written (a push refused part-way).
        let write = answers.hold(false, answer(20_000)).await;
        assert_eq!(write.status(), 200);
        let mut partly = (StatusCode::CONFLICT, Body::from(vec![b'x'; 20_000])).into_response();
        partly.extensions_mut().insert(PartlyWritten);
        let partly = answers.hold(false, partly).await;
        assert_eq!(partly.status(), 409);
        drop(partly);
        assert_eq!(held_bytes(&answers), 170_000);
        std::thread::sleep(Duration::from_millis(300));
        // Now the first has made no progress for the stall time (the write's
        // answer neither): both are dropped to make room.
        let read = answers.hold(true, answer(20_000)).await;
        assert_eq!(read.status(), 200);
        assert_eq!(answers.dropped.get(), 2);
        assert_eq!(held_bytes(&answers), 20_000);
        assert_eq!(answers.ledger().answers.len(), 1, "the dropped ones are pruned");
        let end = first.frame().await.expect("an error, not an end");
        assert!(end.is_err(), "a dropped answer ends in an error");
        assert_eq!(frames(read).await, [16_384, 3_616]);
        drop(write);
        drop(first);
        assert_eq!(held_bytes(&answers), 0);
    }
}
