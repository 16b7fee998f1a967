//! fjall's background workers run at the nice value asked for, and nothing
//! else in the process changes. Its own test binary: the engine tests open
//! databases in parallel, and every open starts workers of the same name.

#![cfg(target_os = "linux")]

use truce::storage::{FJALL_WORKER_THREAD, FJALL_WORKERS_NICE_MAX, FjallOptions, FjallStorage};

/// The nice value of every thread of this process, by thread name.
fn nice_by_thread() -> Vec<(String, i32)> {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the name: state is field 3, nice is field 19.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            Some((name.trim_end().to_string(), fields.get(16)?.parse().ok()?))
        })
        .collect()
}

fn workers(threads: &[(String, i32)]) -> Vec<i32> {
    threads
        .iter()
        .filter(|(name, _)| name == FJALL_WORKER_THREAD)
        .map(|(_, nice)| *nice)
        .collect()
}

#[test]
fn fjall_workers_run_at_the_nice_asked_for_and_only_they_do() {
    let before = nice_by_thread();
    let own = before
        .iter()
        .map(|(_, nice)| *nice)
        .min()
        .expect("this thread at least");

    // Nice 0: the workers are left as they start.
    let plain = tempfile::tempdir().expect("tempdir");
    let first = FjallStorage::open_with(plain.path(), FjallOptions::default()).expect("open");
    let started = workers(&nice_by_thread());
    assert!(
        !started.is_empty(),
        "fjall started no thread named {FJALL_WORKER_THREAD}: renamed?"
    );
    assert!(started.iter().all(|&n| n == own), "{started:?}");

    // Nice 7: every worker (both databases' share the name), and no other thread.
    let niced = tempfile::tempdir().expect("tempdir");
    let options = FjallOptions {
        workers_nice: 7,
        ..FjallOptions::default()
    };
    let second = FjallStorage::open_with(niced.path(), options).expect("open");
    let after = nice_by_thread();
    let want = (own + 7).min(FJALL_WORKERS_NICE_MAX);
    let lowered = workers(&after);
    assert!(
        lowered.len() > started.len(),
        "the second database's workers: {after:?}"
    );
    assert!(lowered.iter().all(|&n| n == want), "{after:?}, want {want}");
    assert!(
        after
            .iter()
            .filter(|(name, _)| name != FJALL_WORKER_THREAD)
            .all(|(_, nice)| *nice == own),
        "{after:?}"
    );

    // Set, not added: opening again with the same value changes nothing.
    drop(second);
    let _again = FjallStorage::open_with(niced.path(), options).expect("reopen");
    assert!(workers(&nice_by_thread()).iter().all(|&n| n == want));
    drop(first);
}
