//! Truce's side: the embedded engine, opened durable (`Options::default()`:
//! every acknowledged write is fsynced, many writes share one fsync).

use std::collections::VecDeque;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use truce::{Collection, Db, Expect, Options, PendingWrite, Update};

use crate::cleanup::Scratch;
use crate::driver::{self, Config, Race};
use crate::stats::{Outcome, Recorder};
use crate::workload::{SPREAD_DOCS, doc_id, random_doc, spread_body};

/// Label in tables and progress lines.
const SYSTEM: &str = "truce";

/// Writes kept outstanding while preloading; under the engine's queue bound
/// (`COMMIT_QUEUE_REQUESTS_MAX`) so the load never sees `Overloaded`.
const PRELOAD_WINDOW: usize = 2048;

/// The one document of the hot-counter workload.
const HOT_ID: &str = "hot";

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Opens a fresh durable database in a temporary directory under `config.dir`.
fn open(config: &Config) -> BoxResult<(Scratch, Db, Collection)> {
    let dir = crate::cleanup::scratch_dir("truce-bench-", &config.dir)?;
    let db = Db::open(dir.path(), Options::default())?;
    let collection = db.collection("bench")?;
    Ok((dir, db, collection))
}

/// Tallies one write's answer.
fn tally(recorder: &mut Recorder, answer: truce::Result<truce::WriteResult>) {
    match answer {
        Ok(Ok(_)) => recorder.ok += 1,
        Ok(Err(_conflict)) => recorder.conflicts += 1,
        Err(e) => recorder.error(e),
    }
}

/// N threads `$inc` one document, each waiting for every answer
/// (`in_flight == 1`) or keeping up to `in_flight` patches outstanding.
pub fn hot_counter(config: &Config) -> BoxResult<Outcome> {
    hot_counter_observed(config).map(|(outcome, _)| outcome)
}

/// [`hot_counter`], and the engine's counters just before and just after the
/// run (its group commits: how many, how large, how long they took to store).
pub fn hot_counter_observed(config: &Config) -> BoxResult<(Outcome, [truce::Stats; 2])> {
    let (_dir, db, collection) = open(config)?;
    let before = db.stats();
    let update = Arc::new(Update::parse(&json!({"$inc": {"n": 1}, "$upsert": true}))?);
    let in_flight = config.in_flight.max(1);
    let (totals, elapsed) = driver::run(SYSTEM, config, |thread, race| {
        if in_flight == 1 {
            increment_synchronously(&collection, &update, race, thread)
        } else {
            increment_pipelined(&collection, &update, in_flight, race)
        }
    });
    let check = match collection.get(HOT_ID)? {
        Some(doc) if doc.body["n"].as_u64() == Some(totals.ok) => {
            Ok(format!("n = {} = acknowledged increments", totals.ok))
        }
        Some(doc) => Err(format!(
            "n = {}, but {} increments were acknowledged",
            doc.body["n"], totals.ok
        )),
        None if totals.ok == 0 => Ok("no increment acknowledged, no document".into()),
        None => Err(format!(
            "no document, but {} increments were acknowledged",
            totals.ok
        )),
    };
    Ok((
        Outcome {
            system: SYSTEM,
            elapsed,
            totals,
            check,
        },
        [before, db.stats()],
    ))
}

/// Each write waits for its answer; on the run's schedule in an open loop
/// (`Config::pace`).
fn increment_synchronously(
    collection: &Collection,
    update: &Arc<Update>,
    race: &Race,
    thread: usize,
) -> Recorder {
    let mut recorder = Recorder::default();
    let mut pacer = race.start_paced(thread);
    while let Some(t0) = pacer.next() {
        let answer = collection.patch(HOT_ID, Arc::clone(update), Expect::Any);
        recorder.latency(t0.elapsed());
        tally(&mut recorder, answer);
        race.tick();
    }
    recorder
}

/// Keeps a window of submitted patches; when it is full, waits for the oldest.
/// Latency is submit to answer. Outstanding writes are drained after the deadline.
fn increment_pipelined(
    collection: &Collection,
    update: &Arc<Update>,
    window: usize,
    race: &Race,
) -> Recorder {
    let mut recorder = Recorder::default();
    let mut outstanding: VecDeque<(Instant, PendingWrite)> = VecDeque::with_capacity(window);
    let finish_oldest = |outstanding: &mut VecDeque<(Instant, PendingWrite)>, recorder: &mut Recorder| {
        if let Some((t0, pending)) = outstanding.pop_front() {
            let answer = pending.wait();
            recorder.latency(t0.elapsed());
            tally(recorder, answer);
            race.tick();
        }
    };
    let deadline = race.start();
    while Instant::now() < deadline {
        if outstanding.len() >= window {
            finish_oldest(&mut outstanding, &mut recorder);
        }
        let t0 = Instant::now();
        match collection.submit_patch(HOT_ID, Arc::clone(update), Expect::Any) {
            Ok(pending) => outstanding.push_back((t0, pending)),
            Err(e) => {
                recorder.error(e);
                // Overloaded or stopped: let the committer catch up before retrying.
                finish_oldest(&mut outstanding, &mut recorder);
            }
        }
    }
    while !outstanding.is_empty() {
        finish_oldest(&mut outstanding, &mut recorder);
    }
    recorder
}

/// Versioned read-then-put over [`SPREAD_DOCS`] documents; a conflict is
/// counted, not retried.
pub fn spread_writes(config: &Config) -> BoxResult<Outcome> {
    let (_dir, _db, collection) = open(config)?;
    preload(&collection)?;
    let (totals, elapsed) = driver::run(SYSTEM, config, |_, race| {
        let mut recorder = Recorder::default();
        let mut rng = rand::rng();
        let deadline = race.start();
        while Instant::now() < deadline {
            let id = doc_id(random_doc(&mut rng));
            let t0 = Instant::now();
            let answer = collection.get(&id).and_then(|current| match current {
                Some(doc) => {
                    let version = doc.version();
                    collection.put(&id, spread_body(version), Expect::Version(version))
                }
                None => Err(truce::Error::Unavailable(format!(
                    "preloaded document {id} is missing"
                ))),
            });
            recorder.latency(t0.elapsed());
            tally(&mut recorder, answer);
            race.tick();
        }
        recorder
    });
    let check = check_versions(&collection, totals.ok)?;
    Ok(Outcome {
        system: SYSTEM,
        elapsed,
        totals,
        check,
    })
}

/// Creates every document at version 1, many writes in flight so they share fsyncs.
fn preload(collection: &Collection) -> BoxResult<()> {
    let started = Instant::now();
    let mut outstanding: VecDeque<PendingWrite> = VecDeque::with_capacity(PRELOAD_WINDOW);
    let finish = |pending: PendingWrite| -> BoxResult<()> {
        match pending.wait()? {
            Ok(_) => Ok(()),
            Err(conflict) => Err(format!("preload conflicted: {conflict}").into()),
        }
    };
    for n in 0..SPREAD_DOCS {
        if outstanding.len() >= PRELOAD_WINDOW
            && let Some(oldest) = outstanding.pop_front()
        {
            finish(oldest)?;
        }
        outstanding.push_back(collection.submit_put(&doc_id(n), spread_body(0), Expect::Absent)?);
    }
    outstanding.into_iter().try_for_each(finish)?;
    eprintln!(
        "{SYSTEM:<8} preloaded {SPREAD_DOCS} documents in {:?}",
        round_ms(started.elapsed())
    );
    Ok(())
}

/// Every document starts at version 1 and each successful write adds one.
fn check_versions(collection: &Collection, successes: u64) -> BoxResult<Result<String, String>> {
    let mut sum = 0u64;
    for n in 0..SPREAD_DOCS {
        match collection.get(&doc_id(n))? {
            Some(doc) => sum += doc.version() - 1,
            None => return Ok(Err(format!("document {} is missing", doc_id(n)))),
        }
    }
    Ok(if sum == successes {
        Ok(format!("sum of (version - 1) = {sum} = successful writes"))
    } else {
        Err(format!(
            "sum of (version - 1) = {sum}, but {successes} writes succeeded"
        ))
    })
}

/// A duration rounded to whole milliseconds, for log lines.
pub fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
