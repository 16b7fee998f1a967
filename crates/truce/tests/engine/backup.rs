//! Online backups: a copy of the whole database at one commit, taken while
//! transactions keep committing, that opens as a database of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::json;
use truce::{Db, Error, Expect, Query, TxOp};

use crate::{copy_dir, open_relaxed, update};

const ACCOUNTS: usize = 50;
const BALANCE: i64 = 100;

fn balances(db: &Db) -> Vec<truce::Document> {
    let page = db
        .collection("accounts")
        .unwrap()
        .query(&Query {
            limit: ACCOUNTS + 1,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.docs.len(), ACCOUNTS);
    page.docs
}

/// Transfers between accounts commit while the backup copies: the copy holds
/// every commit up to its `seq` and none after — the balances still add up
/// (no transaction in it by half), its last commit is `seq`, and every
/// document the original has not changed since is in it as it is there.
#[test]
fn a_backup_taken_under_writes_is_one_commit_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(&dir.path().join("live"));
    let accounts = db.collection("accounts").unwrap();
    for i in 0..ACCOUNTS {
        accounts
            .put(&format!("a{i:02}"), json!({"balance": BALANCE}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (from, to) = ((n * 7 + w) % ACCOUNTS, (n * 13 + w + 1) % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    let transfer = |id: usize, amount: i64| TxOp::Patch {
                        collection: "accounts".into(),
                        id: format!("a{id:02}"),
                        update: Arc::new(update(json!({"$inc": {"balance": amount}}))),
                        expect: Expect::Any,
                    };
                    db.batch(vec![transfer(from, -3), transfer(to, 3)], None)
                        .unwrap()
                        .unwrap();
                }
                n
            })
        })
        .collect();
    // Let the writers get going, then back up while they run.
    while db.durable_seq() < ACCOUNTS as u64 + 200 {
        thread::yield_now();
    }
    let target = dir.path().join("backup");
    let mut progress = Vec::new();
    // Mid-copy, at least 100 more commits land: the copy must not see them.
    let mut waited = false;
    let report = db
        .backup(&target, &[], &mut |p| {
            if !waited {
                let at = db.durable_seq();
                while db.durable_seq() < at + 100 {
                    thread::yield_now();
                }
                waited = true;
            }
            progress.push(p.clone())
        })
        .expect("backup");
    let seq_after = db.durable_seq();
    assert!(seq_after >= report.seq + 100, "commits landed while it copied");
    stop.store(true, Ordering::Relaxed);
    let transfers: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(transfers > 0);
    assert!(
        report.seq > ACCOUNTS as u64 && report.seq <= seq_after,
        "{report:?}"
    );
    assert!(report.entries > ACCOUNTS as u64, "{report:?}");
    assert_eq!(progress.last().map(|p| p.entries), Some(report.entries));
    assert!(progress.windows(2).all(|w| w[0].entries <= w[1].entries));
    assert!(!dir.path().join("backup.partial").exists());

    let copy = open_relaxed(&target);
    assert_eq!(copy.durable_seq(), report.seq, "its last commit is the backup's");
    let copied = balances(&copy);
    assert_eq!(copied.len(), ACCOUNTS);
    let total: i64 = copied.iter().map(|d| d.body["balance"].as_i64().unwrap()).sum();
    assert_eq!(total, ACCOUNTS as i64 * BALANCE, "no transfer is in it by half");
    assert!(copied.iter().all(|d| d.meta.seq <= report.seq));
    let live = balances(&db);
    for (now, then) in live.iter().zip(&copied) {
        assert_eq!(now.id, then.id);
        if now.meta.seq <= report.seq {
            assert_eq!(now, then, "unchanged since the backup: the same in it");
        } else {
            assert!(then.version() < now.version());
        }
    }
    // The copy is a database: its change feed and writes carry on from `seq`.
    let page = copy.changes(Some("accounts"), 0, 1000, false).unwrap();
    assert_eq!(page.last_seq, report.seq);
    let written = copy
        .collection("accounts")
        .unwrap()
        .patch("a00", update(json!({"$inc": {"balance": 1}})), Expect::Any)
        .unwrap()
        .unwrap();
    assert_eq!(written.seq(), report.seq + 1);
}

/// A backup goes into a new directory, beside nothing half-written, one at a
/// time; the files it is given go in with it.
/// A database's history epoch is its own: kept across reopens, and drawn
/// anew in a backup, whose history goes on apart from the original's from
/// its last commit (a replica of the original must not take the restored
/// one's sequence numbers for positions in the history it followed).
#[test]
fn a_backup_starts_a_history_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let db = crate::open(&live);
    db.collection("c")
        .unwrap()
        .put("x", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    let epoch = db.epoch();
    // Below 2^53: a JavaScript replica holds it exactly (one past that came
    // back rounded, and every pull was refused as from another history).
    assert!((1..1 << 53).contains(&epoch), "{epoch}");
    db.backup(&dir.path().join("copy"), &[], &mut |_| {}).unwrap();
    drop(db);
    assert_eq!(crate::open(&live).epoch(), epoch, "kept across a reopen");
    let copy = crate::open(&dir.path().join("copy"));
    assert!((1..1 << 53).contains(&copy.epoch()));
    assert_ne!(copy.epoch(), epoch, "a backup's history is its own");
    assert!(copy.collection("c").unwrap().get("x").unwrap().is_some());
}

#[test]
fn a_backup_refuses_what_it_cannot_do_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(&dir.path().join("live"));
    db.collection("c")
        .unwrap()
        .put("x", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    let invalid = |result: truce::Result<truce::BackupReport>, why: &str| match result {
        Err(Error::InvalidBackup(message)) => assert!(message.contains(why), "{message}"),
        other => panic!("expected invalid_backup ({why}), got {other:?}"),
    };
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    invalid(db.backup(&existing, &[], &mut |_| {}), "exists already");
    invalid(
        db.backup(&dir.path().join("no/such/parent"), &[], &mut |_| {}),
        "parent directory does not exist",
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    invalid(
        db.backup(&file.join("backup"), &[], &mut |_| {}),
        "its parent is not a directory",
    );
    #[cfg(unix)]
    {
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        invalid(db.backup(&dangling, &[], &mut |_| {}), "exists already");
    }
    invalid(
        db.backup(&dir.path().join("n".repeat(250)), &[], &mut |_| {}),
        "too long",
    );
    // A finished backup of that name would be taken for an unfinished one.
    invalid(
        db.backup(&dir.path().join("nightly.partial"), &[], &mut |_| {}),
        "may not end in",
    );
    std::fs::create_dir(dir.path().join("stale.partial")).unwrap();
    invalid(
        db.backup(&dir.path().join("stale"), &[], &mut |_| {}),
        "stale.partial",
    );

    // One at a time: a second backup while the first is started and not
    // done is refused; once it is done (or dropped) the next may go.
    let first = db.start_backup(&dir.path().join("first"), &[]).unwrap();
    let seq = first.seq();
    assert!(matches!(
        db.backup(&dir.path().join("second"), &[], &mut |_| {}),
        Err(Error::BackupRunning)
    ));
    assert!(!dir.path().join("second").exists() && !dir.path().join("second.partial").exists());
    // Writes after the start are not in it.
    db.collection("c")
        .unwrap()
        .put("y", json!({}), Expect::Absent)
        .unwrap()
        .unwrap();
    assert_eq!(first.run(&mut |_| {}).unwrap().seq, seq);
    let copy = open_relaxed(&dir.path().join("first"));
    assert!(copy.collection("c").unwrap().get("y").unwrap().is_none());
    drop(copy);
    let dropped = db.start_backup(&dir.path().join("dropped"), &[]).unwrap();
    drop(dropped);
    assert!(
        !dir.path().join("dropped.partial").exists(),
        "a backup not run writes nothing"
    );

    // Files given are copied in; one that cannot be read fails the backup,
    // which then leaves nothing behind.
    let keys = dir.path().join("api-keys.json");
    std::fs::write(&keys, b"[]").unwrap();
    db.backup(&dir.path().join("with-keys"), &[&keys], &mut |_| {})
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("with-keys/api-keys.json")).unwrap(),
        b"[]"
    );
    let missing = dir.path().join("missing.json");
    invalid(
        db.backup(&dir.path().join("failed"), &[&missing], &mut |_| {}),
        "missing.json",
    );
    assert!(!dir.path().join("failed").exists() && !dir.path().join("failed.partial").exists());
    // And the next backup goes ahead.
    db.backup(&dir.path().join("after"), &[], &mut |_| {}).unwrap();

    // A backup stopped half-way (here a panic in its progress callback, as
    // a crash would stop it) is never named as the directory it was for,
    // leaves nothing behind, and frees the slot.
    let stopped = dir.path().join("stopped");
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.backup(&stopped, &[], &mut |_| panic!("stopped mid-copy"))
    }));
    assert!(unwound.is_err());
    assert!(!stopped.exists() && !dir.path().join("stopped.partial").exists());
    db.backup(&stopped, &[], &mut |_| {})
        .expect("the slot is free again");

    // A directory made at the backup's path while it ran (by another
    // program) is not replaced, even an empty one, which a plain rename
    // would take over; the copy is removed.
    let raced = dir.path().join("raced");
    let job = db.start_backup(&raced, &[]).unwrap();
    std::fs::create_dir(&raced).unwrap();
    invalid(job.run(&mut |_| {}), "raced");
    assert!(
        raced.is_dir() && std::fs::read_dir(&raced).unwrap().next().is_none(),
        "left as it was made"
    );
    assert!(!dir.path().join("raced.partial").exists());

    // Stopped from another thread (a server shutting down): between two
    // chunks, with nothing left behind.
    let halted = dir.path().join("halted");
    let job = db.start_backup(&halted, &[]).unwrap();
    job.stopper().stop();
    match job.run(&mut |_| {}) {
        Err(Error::BackupStopped) => {}
        other => panic!("expected a stopped backup, got {other:?}"),
    }
    assert!(!halted.exists() && !dir.path().join("halted.partial").exists());
    assert!(
        open_relaxed(&stopped)
            .collection("c")
            .unwrap()
            .get("x")
            .unwrap()
            .is_some()
    );
}

/// A backup cut short (by a crash: a stop removes it) leaves `<dir>.partial`
/// holding part of the data. Opened as a database it would be served and take
/// writes as if whole: it is refused, by its marker wherever it is moved to,
/// and by its name.
#[test]
fn an_unfinished_backup_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_relaxed(&dir.path().join("live"));
    let c = db.collection("c").unwrap();
    for i in 0..10 {
        c.put(&format!("d{i}"), json!({"i": i}), Expect::Absent)
            .unwrap()
            .unwrap();
    }
    // What a crash in the middle of the copy would leave, copied aside.
    let (crashed, moved) = (dir.path().join("crashed.partial"), dir.path().join("moved"));
    let target = dir.path().join("backup");
    let mut copied = false;
    db.backup(&target, &[], &mut |_| {
        if !copied {
            copy_dir(&dir.path().join("backup.partial"), &crashed);
            copy_dir(&crashed, &moved);
            copied = true;
        }
    })
    .unwrap();
    // One by its name alone, one by its marker alone.
    std::fs::remove_file(crashed.join("UNFINISHED-BACKUP")).unwrap();
    for unfinished in [&crashed, &moved] {
        match Db::open(unfinished, truce::Options::default()) {
            Err(Error::InvalidBackup(message)) => assert!(message.contains("unfinished backup"), "{message}"),
            other => panic!(
                "{}: expected invalid_backup, got {:?}",
                unfinished.display(),
                other.map(|_| ())
            ),
        }
    }
    // The finished one opens, with no marker left in it.
    let finished = open_relaxed(&target);
    assert_eq!(
        finished.collection("c").unwrap().get("d9").unwrap().unwrap().body["i"],
        9
    );
}
