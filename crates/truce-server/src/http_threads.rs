//! The HTTP threads: one single-threaded tokio runtime per thread, each
//! accepted connection handed to one of them in turn for its whole life.
//!
//! tokio's multi-threaded runtime shares work between its workers: a worker
//! that finds a task to run while another is idle wakes that one to steal
//! (an eventfd write or a futex wake, and a switch on the other core). On a
//! server whose requests each wait for the committer those wake-ups buy
//! nothing: the work a request does on its HTTP thread is a few microseconds
//! either way.
//! Here nothing moves between the threads, so nothing wakes a sibling; a
//! thread is woken by its own sockets, its own timers and the committer's
//! answers only. Measured in `docs/benchmarks-log.md` ("What helped: one
//! runtime per HTTP thread").
//!
//! The cost is that no thread takes work off a busy one. A connection whose
//! request keeps its thread's CPU busy (a TLS handshake, a large answer to
//! encode) delays the other connections of that thread; every stream of
//! an HTTP/2 connection runs on its connection's thread, so one HTTP/2
//! client, or a proxy that funnels its clients through a few connections,
//! gets at most one thread's CPU (open more connections than threads); and
//! connections are dealt out in turn whatever they turn out to do, so long
//! change-feed streams may gather on one thread. The work that can take
//! long — queries, feed pages (those of long polls and streams too, when a
//! commit wakes them), counts, and the parsing of request bodies over 64 KiB
//! (as many at once as there are HTTP threads) — runs on the blocking pool
//! (`spawn_blocking`), of which each runtime has its own share.

use std::future::Future;
use std::time::Duration;

/// The HTTP threads' name, and their blocking-pool threads' (the bench splits
/// the server's CPU by thread name).
const HTTP_THREAD_NAME: &str = "truce-http";

/// Most HTTP threads `--http-threads` accepts.
pub const HTTP_THREADS_MAX: usize = 256;

/// Blocking-pool threads (queries, feed pages, large bodies' parsing) the HTTP threads may start
/// together: tokio's default for one runtime, split between them…
const BLOCKING_THREADS_MAX: usize = 512;

/// …but never fewer than this per thread: a connection's blocking work runs
/// in its own thread's share, and many threads must not leave each a
/// handful.
const BLOCKING_THREADS_PER_THREAD_MIN: usize = 64;

/// How long a stopping HTTP thread waits for its blocking work (a query, a
/// feed page) to end before it lets go of it; acknowledged writes are
/// durable either way.
const BLOCKING_WORK_GRACE_MS: u64 = 1000;

/// The running HTTP threads.
pub struct HttpThreads {
    threads: Vec<HttpThread>,
    /// The thread the next connection goes to.
    next: usize,
}

struct HttpThread {
    handle: tokio::runtime::Handle,
    /// Dropped (or sent) to stop the thread.
    stop: tokio::sync::oneshot::Sender<()>,
    joined: std::thread::JoinHandle<()>,
}

impl HttpThreads {
    /// Starts `count` threads (at least one; the settings bound it by
    /// [`HTTP_THREADS_MAX`]) named `truce-http`, each driving its own runtime
    /// until [`stop`](Self::stop).
    pub fn start(count: usize) -> std::io::Result<HttpThreads> {
        let count = count.max(1);
        let blocking = (BLOCKING_THREADS_MAX / count).max(BLOCKING_THREADS_PER_THREAD_MIN);
        let threads = (0..count)
            .map(|_| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(HTTP_THREAD_NAME)
                    .max_blocking_threads(blocking)
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let joined = std::thread::Builder::new()
                    .name(HTTP_THREAD_NAME.into())
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                        // Tasks still running are dropped, which closes their
                        // connections; blocking work gets a moment to end.
                        runtime.shutdown_timeout(Duration::from_millis(BLOCKING_WORK_GRACE_MS));
                    })?;
                Ok(HttpThread { handle, stop, joined })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(HttpThreads { threads, next: 0 })
    }

    /// Runs `task` on the next thread in turn.
    pub fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let thread = &self.threads[self.next];
        self.next = (self.next + 1) % self.threads.len();
        thread.handle.spawn(task);
    }

    /// Stops every thread, dropping the tasks it still runs, and waits for
    /// them to end.
    pub fn stop(self) {
        // All told first, so that their waits for blocking work overlap.
        let joined: Vec<_> = self
            .threads
            .into_iter()
            .map(|thread| {
                let _ = thread.stop.send(());
                thread.joined
            })
            .collect();
        for thread in joined {
            if thread.join().is_err() {
                tracing::error!("an HTTP thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread name and id each task ran on, in the order spawned.
    fn where_tasks_ran(threads: usize, tasks: usize) -> Vec<(String, std::thread::ThreadId)> {
        let mut http = HttpThreads::start(threads).expect("start");
        assert_eq!(http.threads.len(), threads);
        let (sent, received) = std::sync::mpsc::channel();
        for task in 0..tasks {
            let sent = sent.clone();
            http.spawn(async move {
                let me = std::thread::current();
                sent.send((task, me.name().unwrap_or("").to_string(), me.id()))
                    .expect("send");
            });
        }
        let mut ran: Vec<_> = (0..tasks)
            .map(|_| {
                received
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a task ran")
            })
            .collect();
        http.stop();
        ran.sort_by_key(|(task, _, _)| *task);
        ran.into_iter().map(|(_, name, id)| (name, id)).collect()
    }

    #[test]
    fn connections_are_dealt_to_the_threads_in_turn() {
        let ran = where_tasks_ran(3, 9);
        assert!(ran.iter().all(|(name, _)| name == HTTP_THREAD_NAME), "{ran:?}");
        let ids: std::collections::HashSet<_> = ran.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), 3, "three threads, each used: {ran:?}");
        // Task i went to thread i % 3.
        let by_turn = |turn: usize| -> std::collections::HashSet<_> {
            ran.iter().skip(turn).step_by(3).map(|(_, id)| *id).collect()
        };
        for turn in 0..3 {
            assert_eq!(by_turn(turn).len(), 1, "turn {turn}: {ran:?}");
        }
    }

    #[test]
    fn a_thread_count_is_bounded() {
        assert_eq!(where_tasks_ran(1, 2).len(), 2);
        let http = HttpThreads::start(0).expect("start");
        assert_eq!(http.threads.len(), 1, "0 means one, not none");
        http.stop();
    }

    #[test]
    fn stopping_drops_tasks_that_never_end() {
        let mut http = HttpThreads::start(2).expect("start");
        let (dropped, seen) = std::sync::mpsc::channel::<()>();
        for _ in 0..4 {
            let dropped = dropped.clone();
            http.spawn(async move {
                let _guard = dropped;
                std::future::pending::<()>().await;
            });
        }
        drop(dropped);
        http.stop();
        // Every sender was dropped with its task: the channel is closed.
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
