//! fjall's background workers run at the nice value asked for, only the
//! workers of the database that asked do, and nothing else in the process
//! changes. Its own test binary: the engine tests open databases in
//! parallel, and every open starts workers of the same name.

#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use truce::storage::{FJALL_WORKERS_NICE_MAX, FjallOptions, FjallStorage};

/// The name fjall 3.1 gives its worker threads (`worker_pool.rs`): how this
/// test finds them. The nice value does not depend on it.
const FJALL_WORKER_THREAD: &str = "fjall:worker";

#[derive(Debug)]
struct Task {
    tid: u32,
    name: String,
    nice: i32,
}

/// Thread id, name and nice value from a `/proc/…/task/TID` directory.
fn task(dir: &std::path::Path) -> Option<Task> {
    let name = std::fs::read_to_string(dir.join("comm")).ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The first field is the id; after the name, state is field 3 and nice
    // is field 19.
    let tid = stat.split_whitespace().next()?.parse().ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(Task {
        tid,
        name: name.trim_end().to_string(),
        nice: fields.get(16)?.parse().ok()?,
    })
}

/// The calling thread's nice value.
fn own_nice() -> i32 {
    task(std::path::Path::new("/proc/thread-self"))
        .expect("this thread")
        .nice
}

/// Every thread of this process.
fn tasks() -> Vec<Task> {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
        .filter_map(|entry| task(&entry.path()))
        .collect()
}

fn ids(tasks: &[Task]) -> HashSet<u32> {
    tasks.iter().map(|t| t.tid).collect()
}

/// This process's threads once every thread that is not in `known` is a
/// named fjall worker: a thread that has not run yet still carries its
/// creator's name, and a thread that was joined may linger for a moment.
fn settled(known: &HashSet<u32>) -> Vec<Task> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = tasks();
        if now
            .iter()
            .filter(|t| !known.contains(&t.tid))
            .all(|t| t.name == FJALL_WORKER_THREAD)
        {
            return now;
        }
        assert!(Instant::now() < deadline, "threads never settled: {now:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The fjall workers in `now` that are not in `known`.
fn new_workers<'a>(now: &'a [Task], known: &HashSet<u32>) -> Vec<&'a Task> {
    let workers: Vec<&Task> = now.iter().filter(|t| !known.contains(&t.tid)).collect();
    assert!(
        !workers.is_empty(),
        "the open started no thread named {FJALL_WORKER_THREAD}: renamed? {now:?}"
    );
    workers
}

#[test]
fn fjall_workers_run_at_the_nice_asked_for_and_only_they_do() {
    let own = own_nice();
    let before = tasks();
    assert!(before.iter().all(|t| t.nice == own), "{before:?}");

    // Nice 0: the workers are left as they start.
    let plain = tempfile::tempdir().expect("tempdir");
    let first = FjallStorage::open_with(plain.path(), FjallOptions::default()).expect("open");
    let known = ids(&before);
    let started = settled(&known);
    let first_workers: HashSet<u32> = new_workers(&started, &known).iter().map(|t| t.tid).collect();
    assert!(started.iter().all(|t| t.nice == own), "{started:?}");

    // Nice 7: every worker of the second database, and no other thread:
    // not the first database's workers, not the thread that opened it.
    let niced = tempfile::tempdir().expect("tempdir");
    let options = FjallOptions {
        workers_nice: 7,
        ..FjallOptions::default()
    };
    let second = FjallStorage::open_with(niced.path(), options).expect("open");
    let known = ids(&started);
    let after = settled(&known);
    let want = (own + 7).min(FJALL_WORKERS_NICE_MAX);
    assert!(want > own, "this test runs at nice {own}; nothing to lower");
    for worker in new_workers(&after, &known) {
        assert_eq!(worker.nice, want, "{after:?}");
    }
    let unchanged: Vec<&Task> = after.iter().filter(|t| known.contains(&t.tid)).collect();
    assert!(
        unchanged.iter().any(|t| first_workers.contains(&t.tid)),
        "the first database's workers are gone: {after:?}"
    );
    assert!(
        unchanged.iter().all(|t| t.nice == own),
        "{after:?}, first database's workers {first_workers:?}"
    );
    assert_eq!(own_nice(), own, "the opening thread's priority is unchanged");

    // Opened again after a close: the new workers start niced as well.
    drop(second);
    let closed = ids(&settled(&ids(&after)));
    let _again = FjallStorage::open_with(niced.path(), options).expect("reopen");
    let reopened = settled(&closed);
    for worker in new_workers(&reopened, &closed) {
        assert_eq!(worker.nice, want, "{reopened:?}");
    }
    drop(first);
}
