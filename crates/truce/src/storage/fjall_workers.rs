//! Running fjall's background workers (memtable flushes, compactions) at a
//! lower CPU priority than the threads that serve requests.
//!
//! On a machine whose cores are all busy, a compaction burst takes CPU from
//! the committer and the request threads, and the server's capacity dips for
//! as long as it lasts; under a steady arrival rate those dips are part of
//! the latency tail (measured in `docs/benchmarks-log.md`, "What helped: the
//! workers at a lower CPU priority"; the rest is the workers holding
//! lsm-tree's version lock, which no priority changes). With the workers
//! `nice`r, the scheduler gives the serving threads the CPU first and the
//! background work the rest. It is not starved for good: the scheduler
//! still gives a niced thread a share, and when flushes fall behind fjall
//! slows writers down itself, which frees the CPU the workers need.
//!
//! fjall 3.1 starts its workers on the thread that opens the database, and
//! only there (`Database::open` → `WorkerPool::start`), and on Linux a new
//! thread inherits its creator's nice value. So the database is opened on a
//! short-lived thread that has first lowered its own priority: every worker
//! is born at the asked-for nice, only this database's workers are, and
//! nothing has to find them afterwards. (Finding them by name among the
//! process's threads, as this module once did, raced with their start: a
//! worker not yet running still carries its creator's name and was missed,
//! which CI caught once in `tests/workers_nice.rs`.)
//! Linux only; elsewhere the open runs on the calling thread, unchanged.

/// The highest nice value Linux knows.
pub const FJALL_WORKERS_NICE_MAX: i32 = 19;

/// Runs `open` on a new thread whose nice value is the calling thread's plus
/// `nice` (at most [`FJALL_WORKERS_NICE_MAX`]), so that the threads it starts
/// inherit that value; with `nice` 0 or less, on the calling thread. Failing
/// to lower the priority costs latency under load, never data: it is logged
/// and the open goes on. Errs only when no thread can be started. (The open's
/// own work — recovering the journal — runs at that priority too.)
#[cfg(target_os = "linux")]
pub(super) fn open_nicer<T: Send>(nice: i32, open: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if nice <= 0 {
        return Ok(open());
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("truce-open".to_string())
            .spawn_scoped(scope, || {
                match own_priority()
                    .and_then(|own| set_own_priority(own.saturating_add(nice).min(FJALL_WORKERS_NICE_MAX)))
                {
                    Ok(()) => tracing::debug!(nice, "storage workers start niced"),
                    Err(e) => tracing::warn!("cannot lower the storage workers' CPU priority: {e}"),
                }
                open()
            })
            .map(|opening| {
                opening
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
    })
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open_nicer<T: Send>(_nice: i32, open: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    Ok(open())
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn own_priority() -> std::io::Result<i32> {
    // SAFETY: plain system calls; `getpriority` may rightly return -1, so
    // errno is cleared first and read after. Who 0 is the calling thread.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let e = std::io::Error::last_os_error();
        if nice == -1 && e.raw_os_error().is_some_and(|code| code != 0) {
            return Err(e);
        }
        Ok(nice)
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
#[cfg(target_os = "linux")]
fn set_own_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: a plain system call; who 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
