//! The memory of answers waiting for their clients to read them.
//!
//! An answer is built whole before it is sent, and it stays in memory until
//! the client has read it: an HTTP/1 client that stops reading, or an HTTP/2
//! client that grants no flow-control credit, would otherwise hold any number
//! of them (a 16 MiB query page each). Every answer of
//! [`HELD_ANSWER_BYTES_MIN`] or more is counted here until its last byte is
//! handed to the connection, and sent in frames of [`ANSWER_FRAME_BYTES`], so
//! that each frame the connection takes shows that the client reads.
//!
//! When a new answer would take the total past the limit
//! (`--answer-memory-mib`), the answers that made no progress for the stall
//! time (`--answer-stall-ms`) are dropped first — their stream is reset, their
//! HTTP/1 connection closed, their memory freed. If it still does not fit, the
//! answer to a read (`GET`, `HEAD`: nothing was done) is replaced by 429
//! `overloaded`; the answer to a write is always sent, since the write is done
//! and a 429 would say it was not. The first answer always fits, so an answer
//! larger than the limit is sent when it is alone.

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

/// Answers smaller than this are not counted: a connection holds at most one
/// unread HTTP/1 answer, or one per HTTP/2 stream, and most answers are a
/// document or less.
pub const HELD_ANSWER_BYTES_MIN: usize = 16 * 1024;

/// The frames a counted answer is sent in.
pub const ANSWER_FRAME_BYTES: usize = 64 * 1024;

/// The default limit on counted answers, MiB.
pub const DEFAULT_ANSWER_MEMORY_MIB: u64 = 64;

/// The default time a counted answer may make no progress before it may be
/// dropped to make room, ms.
pub const DEFAULT_ANSWER_STALL_MS: u64 = 30_000;

/// The answers being sent, and their bytes.
pub struct Answers {
    limit_bytes: usize,
    stall_ms: u64,
    epoch: Instant,
    ledger: Mutex<Ledger>,
    held_bytes: Gauge,
    refused: Counter,
    dropped: Counter,
}

/// Under [`Answers::ledger`]'s lock.
#[derive(Default)]
struct Ledger {
    /// Bytes of the answers not yet handed whole to their connection.
    bytes: usize,
    /// Every counted answer that may still be held (dead entries are pruned
    /// when the next one is counted).
    answers: Vec<Weak<Held>>,
}

/// One counted answer.
struct Held {
    /// What is left to send; `None` once sent whole, given up or dropped.
    rest: Mutex<Option<Bytes>>,
    /// Its size, as counted.
    len: usize,
    /// When the connection last took a frame, ms since [`Answers::epoch`].
    progressed_ms: AtomicU64,
    /// Dropped for lack of progress: the connection gets an error, not an end.
    dropped: AtomicBool,
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
        })
    }

    /// Registers the gauge of held bytes and the counters of refused and
    /// dropped answers.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "answer_held_bytes",
            "Bytes of answers of 16 KiB or more not yet handed whole to their connection",
            self.held_bytes.clone(),
        );
        registry.register(
            "answers_refused",
            "Answers to reads replaced by 429 overloaded: the answers held were at the limit",
            self.refused.clone(),
        );
        registry.register(
            "answers_dropped",
            "Answers dropped half-sent: no progress for the stall time while the held ones were at the limit",
            self.dropped.clone(),
        );
    }

    /// `response`, counted and sent in frames when it is
    /// [`HELD_ANSWER_BYTES_MIN`] or more, or 429 `overloaded` in its place
    /// when it does not fit and `refusable` (the request was a read).
    pub async fn hold(self: &Arc<Self>, refusable: bool, response: Response) -> Response {
        let Some(len) = response.body().size_hint().exact() else {
            return response; // a stream: it builds its pages as they are read
        };
        if len < HELD_ANSWER_BYTES_MIN as u64 {
            return response;
        }
        let (parts, body) = response.into_parts();
        // Our answers are whole bytes already: this does not wait.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return ApiError::Engine(truce::Error::Unavailable(format!("cannot build the answer: {e}")))
                    .into_response();
            }
        };
        match self.admit(bytes.len(), refusable) {
            Some(held) => {
                *held.rest.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
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

    /// Counts `len` more bytes, dropping stalled answers first if they do not
    /// fit; `None` if they still do not and `refusable`.
    fn admit(&self, len: usize, refusable: bool) -> Option<Arc<Held>> {
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
        ledger.answers.retain(|held| held.strong_count() > 0);
        let held = Arc::new(Held {
            rest: Mutex::new(None),
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
            if held
                .rest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .is_some()
            {
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
#[derive(Debug)]
pub struct AnswerDropped;

impl std::fmt::Display for AnswerDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped: the client read none of it for the stall time")
    }
}

impl std::error::Error for AnswerDropped {}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = AnswerDropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerDropped>>> {
        let this = self.get_mut();
        let mut rest = this.held.rest.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bytes) = rest.as_mut() else {
            let dropped = this.held.dropped.load(Ordering::Relaxed);
            return Poll::Ready(dropped.then_some(Err(AnswerDropped)));
        };
        let frame = if bytes.len() > ANSWER_FRAME_BYTES {
            bytes.split_to(ANSWER_FRAME_BYTES)
        } else {
            let last = std::mem::take(bytes);
            *rest = None;
            drop(rest);
            this.answers.release(this.held.len);
            last
        };
        this.held
            .progressed_ms
            .store(this.answers.now_ms(), Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.rest.lock().unwrap_or_else(|e| e.into_inner()).is_none()
            && !self.held.dropped.load(Ordering::Relaxed)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.held.rest.lock().unwrap_or_else(|e| e.into_inner());
        SizeHint::with_exact(rest.as_ref().map_or(0, |bytes| bytes.len() as u64))
    }
}

impl Drop for HeldBody {
    /// The connection gave up on the answer (closed, reset): its bytes are free.
    fn drop(&mut self) {
        let given_up = self.held.rest.lock().unwrap_or_else(|e| e.into_inner()).take();
        if given_up.is_some() {
            self.answers.release(self.held.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn held_bytes(answers: &Answers) -> usize {
        answers.ledger().bytes
    }

    #[tokio::test]
    async fn a_counted_answer_goes_in_frames_and_is_freed_when_sent() {
        let answers = Answers::new(1 << 20, Duration::from_secs(30));
        let small = answers.hold(true, answer(100)).await;
        assert_eq!(held_bytes(&answers), 0, "small answers are not counted");
        assert_eq!(frames(small).await, [100]);
        let big = answers.hold(true, answer(150_000)).await;
        assert_eq!(big.body().size_hint().exact(), Some(150_000));
        assert_eq!(held_bytes(&answers), 150_000);
        assert_eq!(frames(big).await, [65_536, 65_536, 18_928]);
        assert_eq!(held_bytes(&answers), 0);
        // Given up half-sent (the connection closed): freed too.
        let mut big = answers.hold(true, answer(150_000)).await.into_body();
        body_frame(&mut big).await;
        drop(big);
        assert_eq!(held_bytes(&answers), 0);
    }

    async fn body_frame(body: &mut Body) {
        body.frame().await.expect("a frame").expect("data");
    }

    #[tokio::test]
    async fn past_the_limit_reads_are_refused_and_stalled_answers_dropped() {
        let answers = Answers::new(100_000, Duration::from_millis(200));
        // The first answer fits whatever its size.
        let mut first = answers.hold(true, answer(150_000)).await.into_body();
        body_frame(&mut first).await;
        let refused = answers.hold(true, answer(20_000)).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(answers.refused.get(), 1);
        // A write's answer is sent anyway: the write is done.
        let write = answers.hold(false, answer(20_000)).await;
        assert_eq!(write.status(), 200);
        assert_eq!(held_bytes(&answers), 170_000);
        std::thread::sleep(Duration::from_millis(300));
        // Now the first has made no progress for the stall time (the write's
        // answer neither): both are dropped to make room.
        let read = answers.hold(true, answer(20_000)).await;
        assert_eq!(read.status(), 200);
        assert_eq!(answers.dropped.get(), 2);
        assert_eq!(held_bytes(&answers), 20_000);
        let end = first.frame().await.expect("an error, not an end");
        assert!(end.is_err(), "a dropped answer ends in an error");
        assert_eq!(frames(read).await, [20_000]);
        drop(write);
        drop(first);
        assert_eq!(held_bytes(&answers), 0);
    }
}
