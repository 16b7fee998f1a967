//! Crash tests: a child process writes with immediate durability and reports every
//! acknowledged write; the parent SIGKILLs it (by its PID) at random moments,
//! reopens, and checks every acknowledged write is there and nothing is half-written.
//! Then the journal's tail is truncated and corrupted, and recovery must still succeed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use truce::{Db, Expect};

use crate::{open, update};

const CHILD_ENV: &str = "TRUCE_CRASH_CHILD_DIR";
const CYCLE_ENV: &str = "TRUCE_CRASH_CYCLE";
const CYCLES: usize = 20;
const COUNTERS: usize = 4;
const WRITER_THREADS: usize = 4;

/// The child's side: runs only when the parent starts this test binary with the
/// environment variable set; otherwise passes at once.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let cycle: usize = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    let db = open(Path::new(&dir));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|thread| {
            let c = db.collection("crash").unwrap();
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let inc = Arc::new(update(json!({"$inc": {"n": 1}, "$upsert": true})));
                for i in 0.. {
                    // Alternate counter increments and create-only inserts.
                    let (id, written) = if i % 2 == 0 {
                        let id = format!("counter-{}", (i / 2 + thread) % COUNTERS);
                        let w = c.patch(&id, Arc::clone(&inc), Expect::Any).unwrap().unwrap();
                        (id, w)
                    } else {
                        let id = format!("doc-{cycle}-{thread}-{i}");
                        let body =
                            json!({"cycle": cycle, "thread": thread, "i": i, "pad": "p".repeat(i % 300)});
                        (id.clone(), c.put(&id, body, Expect::Absent).unwrap().unwrap())
                    };
                    let line = format!("ack {id} {}\n", written.doc.version());
                    let mut out = out.lock().unwrap();
                    std::io::Write::write_all(&mut *out, line.as_bytes()).unwrap();
                    std::io::Write::flush(&mut *out).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

/// When `run_and_kill` starts the moment it waits before the kill.
#[derive(Clone, Copy)]
enum KillWindow {
    /// At the child's start, so a kill can also land while it opens and
    /// recovers the last cycle's data.
    FromSpawn,
    /// At the child's first acknowledged write, for a test that needs data
    /// written: on a machine busy with a build the child may take longer than
    /// the whole window to start.
    FromFirstAck,
}

/// Starts the child on `dir`, lets it write for a random moment, SIGKILLs it by
/// its PID, and returns every write it acknowledged (id → highest version).
fn run_and_kill(dir: &Path, cycle: usize, window: KillWindow) -> HashMap<String, u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(CYCLE_ENV, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (first_ack, acking) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut first_ack = Some(first_ack);
        let mut acked = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split(' ');
            if let (Some("ack"), Some(id), Some(version)) = (parts.next(), parts.next(), parts.next())
                && let Ok(version) = version.parse::<u64>()
            {
                let entry = acked.entry(id.to_string()).or_insert(0);
                *entry = (*entry).max(version);
                if let Some(first_ack) = first_ack.take() {
                    let _ = first_ack.send(());
                }
            }
        }
        acked
    });
    if let KillWindow::FromFirstAck = window {
        // A child that ends (or never acknowledges) within the minute is
        // killed anyway, and the caller's assertions say what it wrote.
        let _ = acking.recv_timeout(Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_millis(rand::rng().random_range(150..500)));
    child.kill().expect("SIGKILL the child"); // std sends SIGKILL to the child's PID.
    child.wait().expect("reap the child");
    reader.join().unwrap()
}

/// Checks that every document is whole: counters have `n == _version` (each
/// increment is one revision), inserted documents carry the content their id names.
fn check_consistent(db: &Db, ids: impl Iterator<Item = String>) -> usize {
    let c = db.collection("crash").unwrap();
    let mut present = 0;
    for id in ids {
        let Some(doc) = c.get(&id).unwrap() else { continue };
        present += 1;
        if id.starts_with("counter-") {
            assert_eq!(
                doc.body["n"].as_u64(),
                Some(doc.version()),
                "{id} is half-written"
            );
        } else {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(doc.body["cycle"].to_string(), parts[1], "{id}");
            assert_eq!(doc.body["thread"].to_string(), parts[2], "{id}");
            assert_eq!(doc.version(), 1, "{id}");
        }
    }
    present
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jnl") && entry.metadata().unwrap().len() > 0 {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut total_acks = 0;
    for cycle in 0..CYCLES {
        let this_cycle = run_and_kill(dir.path(), cycle, KillWindow::FromSpawn);
        total_acks += this_cycle.len();
        for (id, version) in this_cycle {
            let entry = acked.entry(id).or_insert(0);
            *entry = (*entry).max(version);
        }
        let db = open(dir.path());
        let c = db.collection("crash").unwrap();
        for (id, version) in &acked {
            let doc = c
                .get(id)
                .unwrap()
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {id} is gone"));
            assert!(
                doc.version() >= *version,
                "cycle {cycle}: {id} went back from {version} to {}",
                doc.version()
            );
        }
        check_consistent(&db, acked.keys().cloned());
    }
    assert!(
        total_acks > 100,
        "the child wrote too little to test anything ({total_acks} acks)"
    );

    // The tail of the journal is torn (truncated) or corrupted: recovery succeeds,
    // and whatever it recovers is whole. The damage may fall on batches that
    // were acknowledged (a crash cannot tear those: this is damage), which the
    // commit mark rightly refuses once it records them, so it is removed.
    for damage in ["truncate", "corrupt"] {
        run_and_kill(dir.path(), CYCLES, KillWindow::FromSpawn);
        let _ = std::fs::remove_file(dir.path().join(truce::engine::COMMIT_MARK_FILE));
        let journals = journal_files(dir.path());
        let newest = journals.last().expect("a journal file");
        let len = std::fs::metadata(newest).unwrap().len();
        let cut = rand::rng().random_range(1..=len.min(64));
        match damage {
            "truncate" => std::fs::File::options()
                .write(true)
                .open(newest)
                .unwrap()
                .set_len(len - cut)
                .unwrap(),
            _ => {
                corrupt_last_batch(newest, cut as usize);
            }
        }
        let db = Db::open(dir.path(), truce::Options::default())
            .unwrap_or_else(|e| panic!("recovery after {damage}: {e}"));
        let present = check_consistent(&db, acked.keys().cloned());
        assert!(present > 0);
    }
}

/// Flips a byte `back` bytes before the last batch's 13-byte end marker, inside
/// its items: a complete-looking batch that fails its checksum, as a torn write
/// leaves it. The journal's data ends where the zeroes after it start.
fn corrupt_last_batch(journal: &Path, back: usize) -> usize {
    let mut bytes = std::fs::read(journal).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[end - 13 - back] ^= 0xFF;
    std::fs::write(journal, &bytes).unwrap();
    end
}

/// The same damage in a journal no reopen has shrunk yet — a new data
/// directory's, or any journal fjall starts once the last one is full — which
/// is zeroes from its data's end to its preallocated 64 MiB. Recovery used to
/// fail there, at every start, until someone cut the file by hand.
#[test]
fn a_torn_last_batch_of_a_preallocated_journal_is_dropped() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let acked = run_and_kill(dir.path(), 0, KillWindow::FromFirstAck);
    assert!(!acked.is_empty(), "the child wrote nothing");
    let journals = journal_files(dir.path());
    let newest = journals.last().expect("a journal file");
    let end = corrupt_last_batch(newest, 1);
    // The batch damaged may have been acknowledged, and the mark record it.
    let _ = std::fs::remove_file(dir.path().join(truce::engine::COMMIT_MARK_FILE));
    let len = std::fs::metadata(newest).unwrap().len();
    assert!(
        len > end as u64 + 4096,
        "the journal is preallocated: {len} bytes, data to {end}"
    );
    let db = Db::open(dir.path(), truce::Options::default()).unwrap_or_else(|e| panic!("recovery: {e}"));
    assert!(check_consistent(&db, acked.keys().cloned()) > 0);
}
