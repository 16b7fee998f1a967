//! Running fjall's background workers (memtable flushes, compactions) at a
//! lower CPU priority than the threads that serve requests.
//!
//! On a machine whose cores are all busy, a compaction burst takes CPU from
//! the committer and the request threads, and the server's capacity dips for
//! as long as it lasts; under a steady arrival rate those dips are part of
//! the latency tail (measured in `docs/benchmarks.md`, "What helped: the
//! workers at a lower CPU priority"; the rest is the workers holding
//! lsm-tree's version lock, which no priority changes). With the workers
//! `nice`r, the scheduler gives the serving threads the CPU first and the
//! background work the rest. It is not starved for good: the scheduler
//! still gives a niced thread a share, and when flushes fall behind fjall
//! slows writers down itself, which frees the CPU the workers need.
//!
//! fjall names its workers and starts them when the database opens, so they
//! are found by name among this process's threads right after the open.
//! Linux only; elsewhere nothing is changed.

/// The name fjall 3.1 gives its worker threads (`worker_pool.rs`; check it
/// again when fjall moves: a new name would leave them at normal priority,
/// which `tests/workers_nice.rs` catches).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const FJALL_WORKER_THREAD: &str = "fjall:worker";

/// The highest nice value Linux knows.
pub const FJALL_WORKERS_NICE_MAX: i32 = 19;

/// Sets every fjall worker thread of this process to the calling thread's
/// nice value plus `nice` (at most [`FJALL_WORKERS_NICE_MAX`]), and returns
/// how many there were. Setting rather than adding keeps it idempotent when
/// several databases are opened in one process: their workers all share the
/// one name.
#[cfg(target_os = "linux")]
pub(super) fn lower_workers(nice: i32) -> std::io::Result<usize> {
    let own = own_priority()?;
    let target = own.saturating_add(nice).min(FJALL_WORKERS_NICE_MAX);
    let mut lowered = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        // A thread that exits meanwhile leaves a directory that cannot be read.
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        if name.trim_end() == FJALL_WORKER_THREAD {
            // SAFETY: a plain system call on a thread id of this process.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lowered += 1;
        }
    }
    Ok(lowered)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn lower_workers(_nice: i32) -> std::io::Result<usize> {
    Ok(0)
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
