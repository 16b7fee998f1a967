//! `seed003` (issue 6): the counter_culture story of seed 003. Subscribers of a
//! campaign confirm their address, open emails and get deleted, and per-campaign
//! counters (`confirmed`, `unconfirmed`, `email_opens`) must stay exact.
//!
//! Truce (embedded API): collection `subscribers` with counters `confirmed`
//! (where `status = confirmed`) and `unconfirmed` (otherwise) into
//! `campaign_metrics/{campaign_id}`, and `opens` with counter `email_opens`;
//! every operation is one plain write (`patch $set`, `put`, `delete`) and the
//! engine maintains the counters, once with mode `in_commit` and once with
//! `after_commit`. PostgreSQL (see [`crate::pg`]) does it the counter_culture
//! way: the source write and `UPDATE campaign_metrics SET n = n ± 1` in one
//! transaction, the two counter rows of a confirmation in random order.
//!
//! Every worker owns a slice of the subscribers: confirmations walk it from the
//! front, deletions from the back, so no operation is a no-op and both systems
//! do the same logical work.

use std::error::Error;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{Value, json};
use truce::{Collection, CollectionConfig, Db, Expect, Options, PendingWrite, Update};

use crate::driver::{self, Config};
use crate::pg::{self, PgRun};
use crate::stats::{Outcome, Recorder, Report, json_float, json_object};

/// The campaign whose summary row is hot: every subscriber belongs to it, as in
/// the seed's transactions (campaign 1001).
pub const CAMPAIGN: u64 = 1001;

/// Subscribers each worker owns (and confirms or deletes at most once each).
pub const SUBSCRIBERS_PER_WORKER: u64 = 10_000;

/// The operation mix, in percent: confirm, open; the rest deletes.
pub const CONFIRM_PCT: u32 = 45;
/// See [`CONFIRM_PCT`].
pub const OPEN_PCT: u32 = 45;

/// How often the outbox is sampled during an `after_commit` run.
const OUTBOX_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long the outbox may take to drain after a run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes kept outstanding while preloading.
const PRELOAD_WINDOW: usize = 2048;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// One logical operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set subscriber `n`'s status to `confirmed` (it was `unconfirmed`).
    Confirm(u64),
    /// Record an open of an email by subscriber `n`, under a new id.
    Open {
        /// The new open's id, unique across workers.
        id: String,
        /// The subscriber who opened it.
        subscriber: u64,
    },
    /// Delete subscriber `n` (confirmed or not).
    Delete(u64),
}

impl Op {
    /// Counter deltas this operation implies: a confirmation moves one
    /// subscriber between two counters (two deltas), the others touch one.
    pub fn deltas(&self) -> u64 {
        match self {
            Op::Confirm(_) => 2,
            Op::Open { .. } | Op::Delete(_) => 1,
        }
    }
}

/// One worker's operations over its slice `[first, end)` of the subscribers.
pub struct Mix {
    worker: usize,
    /// The next subscriber to confirm.
    confirm_next: u64,
    /// One past the next subscriber to delete.
    delete_end: u64,
    first: u64,
    opens: u64,
}

impl Mix {
    /// Worker `worker`'s share of the data set.
    pub fn new(worker: usize) -> Mix {
        let first = worker as u64 * SUBSCRIBERS_PER_WORKER;
        Mix {
            worker,
            confirm_next: first,
            delete_end: first + SUBSCRIBERS_PER_WORKER,
            first,
            opens: 0,
        }
    }

    /// Whether confirmations and deletions have used up the slice (then only
    /// opens are left: the data set was too small for the run).
    pub fn exhausted(&self) -> bool {
        self.confirm_next >= self.delete_end
    }

    /// The next operation.
    pub fn next(&mut self, rng: &mut impl Rng) -> Op {
        let roll = rng.random_range(0..100);
        if !self.exhausted() && roll < CONFIRM_PCT {
            self.confirm_next += 1;
            return Op::Confirm(self.confirm_next - 1);
        }
        if !self.exhausted() && roll >= CONFIRM_PCT + OPEN_PCT {
            self.delete_end -= 1;
            return Op::Delete(self.delete_end);
        }
        self.opens += 1;
        Op::Open {
            id: format!("o{}-{}", self.worker, self.opens),
            subscriber: self.first + rng.random_range(0..SUBSCRIBERS_PER_WORKER),
        }
    }
}

/// Subscribers in the data set for `workers` workers.
pub fn subscribers(workers: usize) -> u64 {
    workers as u64 * SUBSCRIBERS_PER_WORKER
}

/// The Truce id of subscriber `n`.
pub fn subscriber_id(n: u64) -> String {
    format!("s{n}")
}

/// The three counters of the campaign, read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Live subscribers with status `confirmed`.
    pub confirmed: i64,
    /// Live subscribers with another status.
    pub unconfirmed: i64,
    /// Opens recorded.
    pub email_opens: i64,
}

/// Compares the counters with the ground truth recomputed from the data.
pub fn check_counters(counters: Counters, truth: Counters) -> Result<String, String> {
    if counters == truth {
        Ok(format!(
            "confirmed {} / unconfirmed {} / email_opens {} = ground truth recomputed from the data",
            truth.confirmed, truth.unconfirmed, truth.email_opens
        ))
    } else {
        Err(format!("counters {counters:?}, but the data says {truth:?}"))
    }
}

/// Per-worker tallies beyond the recorder: deltas implied and exhausted slices.
#[derive(Default)]
struct Extra {
    deltas: u64,
    exhausted: u64,
}

/// One Truce run (one counter mode).
pub struct TruceRun {
    /// The mode's wire name.
    pub mode: &'static str,
    /// Source commits: `ok` = acknowledged writes.
    pub outcome: Outcome,
    /// Counter deltas the acknowledged writes implied.
    pub deltas: u64,
    /// Writes of the campaign's counter document during the run and the drain.
    pub target_writes: u64,
    /// Outbox lag samples (age of the oldest entry, ms), `after_commit` only.
    pub lag_ms: Option<Histogram<u64>>,
    /// Most outbox entries seen at once.
    pub outbox_max_entries: u64,
    /// From the end of the run until the outbox was empty.
    pub drain: Duration,
    /// Workers that ran out of subscribers to confirm or delete.
    pub exhausted_workers: u64,
}

impl TruceRun {
    /// Counter-document writes per 1,000 counter deltas: 1,000 when every delta
    /// is its own write, lower when they are coalesced.
    pub fn writes_per_1000_deltas(&self) -> f64 {
        if self.deltas == 0 {
            0.0
        } else {
            1000.0 * self.target_writes as f64 / self.deltas as f64
        }
    }

    fn lag_ms_at(&self, q: f64) -> Option<u64> {
        self.lag_ms
            .as_ref()
            .map(|h| if h.is_empty() { 0 } else { h.value_at_quantile(q) })
    }
}

/// The whole comparison.
pub struct Seed003Report {
    workers: usize,
    in_commit: TruceRun,
    after_commit: TruceRun,
    /// PostgreSQL, or why it was skipped.
    pg: Result<PgRuns, String>,
}

/// PostgreSQL's two runs.
pub struct PgRuns {
    /// Counter updates inside the source transaction (counter_culture's default).
    pub in_tx: PgRun,
    /// Counter updates after the source transaction committed, each on its own.
    pub after: PgRun,
    /// The server's version line.
    pub version: String,
}

impl Seed003Report {
    fn ratio(truce: &TruceRun, pg: &PgRun) -> f64 {
        let pg_ops = pg.outcome.ops_per_s();
        if pg_ops > 0.0 {
            truce.outcome.ops_per_s() / pg_ops
        } else {
            f64::INFINITY
        }
    }

    /// The table, checks and ratios.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>13} {:>16}",
            "system",
            "commits/s",
            "p50 µs",
            "p99 µs",
            "p999 µs",
            "deadlocks",
            "failures",
            "writes/1k Δ",
            "lag p50/p99 ms"
        );
        for run in [&self.in_commit, &self.after_commit] {
            let t = &run.outcome.totals;
            let lag = match (run.lag_ms_at(0.5), run.lag_ms_at(0.99)) {
                (Some(p50), Some(p99)) => format!("{p50}/{p99}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<28} {:>10.1} {:>8} {:>8} {:>9} {:>9} {:>8} {:>13.1} {:>16}",
                format!("truce {}", run.mode),
                run.outcome.ops_per_s(),
                t.percentile_us(0.50),
                t.percentile_us(0.99),
                t.percentile_us(0.999),
                0,
                t.errors + t.conflicts,
                run.writes_per_1000_deltas(),
                lag
            );
        }
        match &self.pg {
            Ok(pg) => {
                for (label, run) in [
                    ("pg counters in tx", &pg.in_tx),
                    ("pg counters after commit", &pg.after),
                ] {
                    let t = &run.outcome.totals;
                    let _ = writeln!(
                        out,
                        "{label:<28} {:>10.1} {:>8} {:>8} {:>9} {:>9} {:>8} {:>13} {:>16}",
                        run.outcome.ops_per_s(),
                        t.percentile_us(0.50),
                        t.percentile_us(0.99),
                        t.percentile_us(0.999),
                        run.deadlocks,
                        t.errors,
                        "1000.0",
                        "-"
                    );
                }
            }
            Err(why) => {
                let _ = writeln!(out, "postgresql: skipped ({why})");
            }
        }
        let _ = writeln!(
            out,
            "truce after_commit: outbox peak {} entries, drained {:?} after the run",
            self.after_commit.outbox_max_entries, self.after_commit.drain
        );
        for run in [&self.in_commit, &self.after_commit] {
            if run.exhausted_workers > 0 {
                let _ = writeln!(
                    out,
                    "note: {} truce {} workers ran out of subscribers and only opened emails after that",
                    run.exhausted_workers, run.mode
                );
            }
        }
        let mut outcomes = vec![
            (format!("truce {}", self.in_commit.mode), &self.in_commit.outcome),
            (
                format!("truce {}", self.after_commit.mode),
                &self.after_commit.outcome,
            ),
        ];
        if let Ok(pg) = &self.pg {
            outcomes.push(("pg counters in tx".into(), &pg.in_tx.outcome));
            outcomes.push(("pg counters after commit".into(), &pg.after.outcome));
        }
        for (label, outcome) in &outcomes {
            if let Some(error) = &outcome.totals.first_error {
                let _ = writeln!(out, "first error {label}: {error}");
            }
        }
        for (label, outcome) in &outcomes {
            let _ = match &outcome.check {
                Ok(what) => writeln!(out, "check {label}: ok ({what})"),
                Err(what) => writeln!(out, "check {label}: FAILED ({what})"),
            };
        }
        if let Ok(pg) = &self.pg {
            let _ = writeln!(
                out,
                "ratio truce in_commit / pg counters in tx (counter_culture) = {:.1}×; \
                 truce after_commit / pg counters after commit = {:.1}×; \
                 truce in_commit / pg counters after commit = {:.1}×",
                Self::ratio(&self.in_commit, &pg.in_tx),
                Self::ratio(&self.after_commit, &pg.after),
                Self::ratio(&self.in_commit, &pg.after)
            );
        }
        out
    }
}

impl Report for Seed003Report {
    fn json_line(&self) -> String {
        let run_fields = |prefix: &str, run: &TruceRun| {
            let t = &run.outcome.totals;
            vec![
                (
                    format!("{prefix}_commits_s"),
                    Value::from(run.outcome.ops_per_s().round() as u64),
                ),
                (format!("{prefix}_p50_us"), t.percentile_us(0.50).into()),
                (format!("{prefix}_p99_us"), t.percentile_us(0.99).into()),
                (format!("{prefix}_failures"), (t.errors + t.conflicts).into()),
                (
                    format!("{prefix}_writes_per_1000_deltas"),
                    json_float(run.writes_per_1000_deltas(), 1),
                ),
            ]
        };
        let mut fields: Vec<(String, Value)> = vec![
            ("bench".into(), "seed003".into()),
            ("workers".into(), self.workers.into()),
            ("api".into(), "embedded".into()),
        ];
        fields.extend(run_fields("truce_in_commit", &self.in_commit));
        fields.extend(run_fields("truce_after_commit", &self.after_commit));
        fields.push((
            "truce_outbox_lag_p99_ms".into(),
            self.after_commit.lag_ms_at(0.99).into(),
        ));
        fields.push((
            "truce_outbox_drain_ms".into(),
            (self.after_commit.drain.as_millis() as u64).into(),
        ));
        match &self.pg {
            Ok(pg) => {
                let short: Vec<&str> = pg.version.split_whitespace().take(2).collect();
                fields.push(("pg_version".into(), short.join(" ").into()));
                for (prefix, run) in [("pg_in_tx", &pg.in_tx), ("pg_after_commit", &pg.after)] {
                    let t = &run.outcome.totals;
                    fields.push((
                        format!("{prefix}_commits_s"),
                        json_float(run.outcome.ops_per_s(), 1),
                    ));
                    fields.push((format!("{prefix}_p50_us"), t.percentile_us(0.50).into()));
                    fields.push((format!("{prefix}_p99_us"), t.percentile_us(0.99).into()));
                    fields.push((format!("{prefix}_deadlocks"), run.deadlocks.into()));
                    fields.push((format!("{prefix}_failures"), t.errors.into()));
                }
                fields.push((
                    "ratio_in_commit".into(),
                    json_float(Self::ratio(&self.in_commit, &pg.in_tx), 1),
                ));
                fields.push((
                    "ratio_after_commit".into(),
                    json_float(Self::ratio(&self.after_commit, &pg.after), 1),
                ));
                fields.push((
                    "ratio_in_commit_vs_pg_after_commit".into(),
                    json_float(Self::ratio(&self.in_commit, &pg.after), 1),
                ));
            }
            Err(_) => fields.push(("pg".into(), Value::Null)),
        }
        let borrowed: Vec<(&str, Value)> = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        json_object(&borrowed)
    }

    fn checks_passed(&self) -> bool {
        let pg_ok = match &self.pg {
            Ok(pg) => pg.in_tx.outcome.check.is_ok() && pg.after.outcome.check.is_ok(),
            Err(_) => true,
        };
        self.in_commit.outcome.check.is_ok() && self.after_commit.outcome.check.is_ok() && pg_ok
    }
}

/// Runs Truce in both modes, then PostgreSQL in both ways.
pub fn run(config: &Config) -> BoxResult<Seed003Report> {
    println!(
        "seed003: {} workers, {:?} per run, campaign {CAMPAIGN} ({} subscribers, all unconfirmed at the start); \
         mix {CONFIRM_PCT}% confirm / {OPEN_PCT}% open / {}% delete; truce through the embedded API, \
         every operation one durable write",
        config.threads,
        config.duration,
        subscribers(config.threads),
        100 - CONFIRM_PCT - OPEN_PCT
    );
    let in_commit = truce(config, "in_commit")?;
    let after_commit = truce(config, "after_commit")?;
    let pg = match pg::run(config) {
        Ok(runs) => Ok(runs),
        Err(pg::PgError::Skipped(why)) => {
            println!("postgresql: skipped: {why}");
            Err(why)
        }
        Err(pg::PgError::Failed(e)) => return Err(e),
    };
    let report = Seed003Report {
        workers: config.threads,
        in_commit,
        after_commit,
        pg,
    };
    println!("{}", report.table());
    Ok(report)
}

/// The counter configuration of both source collections in `mode`.
fn configs(mode: &str) -> BoxResult<(CollectionConfig, CollectionConfig)> {
    let counter = |name: &str, filter: Value| {
        json!({"name": name, "group_by": "campaign_id", "where": filter,
               "target": {"c": "campaign_metrics", "field": name}, "mode": mode})
    };
    let subscribers = CollectionConfig::from_json(&json!({"counters": [
        counter("confirmed", json!({"status": "confirmed"})),
        counter("unconfirmed", json!({"status": {"$ne": "confirmed"}})),
    ]}))?;
    let opens = CollectionConfig::from_json(&json!({"counters": [counter("email_opens", Value::Null)]}))?;
    Ok((subscribers, opens))
}

fn truce(config: &Config, mode: &'static str) -> BoxResult<TruceRun> {
    let system: &'static str = if mode == "in_commit" {
        "truce-in-commit"
    } else {
        "truce-after-commit"
    };
    let dir = crate::cleanup::scratch_dir("truce-bench-", &config.dir)?;
    let db = Db::open(dir.path(), Options::default())?;
    let subscribers = db.collection("subscribers")?;
    let opens = db.collection("opens")?;
    let metrics = db.collection("campaign_metrics")?;
    // Load first, then configure the counters (a recount backfills them from a
    // snapshot): loading 320k subscribers through an after_commit outbox
    // would leave 320k outbox tombstones for every later drain to step over.
    preload(&subscribers, subscribers_count(config))?;
    let (subscribers_config, opens_config) = configs(mode)?;
    let started = Instant::now();
    subscribers.set_config(subscribers_config)?;
    opens.set_config(opens_config)?;
    wait_for_outbox(&db)?;
    eprintln!(
        "truce    counters configured and recounted in {:?}",
        started.elapsed()
    );
    let version_before = metrics.get(&CAMPAIGN.to_string())?.map_or(0, |d| d.version());

    let confirm = Arc::new(Update::parse(&json!({"$set": {"status": "confirmed"}}))?);
    let sampling = AtomicBool::new(mode == "after_commit");
    let extras = std::sync::Mutex::new(Extra::default());
    let ((totals, elapsed), (lag, outbox_max_entries), drained) = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_outbox(&db, &sampling));
        let result = driver::run(system, config, |worker, race| {
            let mut recorder = Recorder::default();
            let mut mix = Mix::new(worker);
            let mut deltas = 0;
            let mut rng = rand::rng();
            let deadline = race.start();
            while Instant::now() < deadline {
                let op = mix.next(&mut rng);
                let t0 = Instant::now();
                let answer = match &op {
                    Op::Confirm(n) => {
                        subscribers.patch(&subscriber_id(*n), Arc::clone(&confirm), Expect::Any)
                    }
                    Op::Open { id, subscriber } => opens.put(
                        id,
                        json!({"campaign_id": CAMPAIGN, "subscriber_id": subscriber_id(*subscriber)}),
                        Expect::Absent,
                    ),
                    Op::Delete(n) => subscribers.delete(&subscriber_id(*n), Expect::Any),
                };
                recorder.latency(t0.elapsed());
                match answer {
                    Ok(Ok(_)) => {
                        recorder.ok += 1;
                        deltas += op.deltas();
                    }
                    Ok(Err(conflict)) => {
                        recorder.conflicts += 1;
                        if recorder.first_error.is_none() {
                            recorder.first_error = Some(format!("conflict: {conflict}"));
                        }
                    }
                    Err(e) => recorder.error(e),
                }
                race.tick();
            }
            let mut extra = extras.lock().unwrap_or_else(|p| p.into_inner());
            extra.deltas += deltas;
            extra.exhausted += u64::from(mix.exhausted());
            recorder
        });
        let drain_started = Instant::now();
        let drained = wait_for_outbox(&db).map(|()| drain_started.elapsed());
        sampling.store(false, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (result, samples, drained)
    });
    let drain = drained?;
    let extra = extras.into_inner().unwrap_or_else(|p| p.into_inner());
    let target = metrics.get(&CAMPAIGN.to_string())?;
    let target_writes = target.as_ref().map_or(0, |d| d.version()) - version_before;
    let counters = target.map_or_else(Counters::default, |d| Counters {
        confirmed: d.body.get("confirmed").and_then(Value::as_i64).unwrap_or(0),
        unconfirmed: d.body.get("unconfirmed").and_then(Value::as_i64).unwrap_or(0),
        email_opens: d.body.get("email_opens").and_then(Value::as_i64).unwrap_or(0),
    });
    let truth = ground_truth(&subscribers, &opens, subscribers_count(config))?;
    let mut check = check_counters(counters, truth);
    if check.is_ok() && (totals.errors > 0 || totals.conflicts > 0) {
        check = Err(format!(
            "{} errors and {} conflicts: Truce's side must have none",
            totals.errors, totals.conflicts
        ));
    }
    Ok(TruceRun {
        mode,
        outcome: Outcome {
            system,
            elapsed,
            totals,
            check,
        },
        deltas: extra.deltas,
        target_writes,
        lag_ms: (mode == "after_commit").then_some(lag),
        outbox_max_entries,
        drain,
        exhausted_workers: extra.exhausted,
    })
}

fn subscribers_count(config: &Config) -> u64 {
    subscribers(config.threads)
}

/// Creates every subscriber, unconfirmed, many writes in flight.
fn preload(subscribers: &Collection, count: u64) -> BoxResult<()> {
    let started = Instant::now();
    let mut outstanding: std::collections::VecDeque<PendingWrite> = std::collections::VecDeque::new();
    let finish = |pending: PendingWrite| -> BoxResult<()> {
        match pending.wait()? {
            Ok(_) => Ok(()),
            Err(conflict) => Err(format!("preload conflicted: {conflict}").into()),
        }
    };
    for n in 0..count {
        if outstanding.len() >= PRELOAD_WINDOW
            && let Some(oldest) = outstanding.pop_front()
        {
            finish(oldest)?;
        }
        outstanding.push_back(subscribers.submit_put(
            &subscriber_id(n),
            json!({"campaign_id": CAMPAIGN, "email": format!("user{n}@example.com"), "status": "unconfirmed"}),
            Expect::Absent,
        )?);
    }
    outstanding.into_iter().try_for_each(finish)?;
    eprintln!(
        "truce    preloaded {count} subscribers in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Waits until the counter outbox is empty.
fn wait_for_outbox(db: &Db) -> BoxResult<()> {
    let started = Instant::now();
    while db.outbox_status().0 > 0 {
        if started.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "the counter outbox still holds {} entries after {DRAIN_TIMEOUT:?}",
                db.outbox_status().0
            )
            .into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Samples `db.outbox_status()` every [`OUTBOX_SAMPLE_EVERY`] while `sampling`:
/// the age of the oldest entry (0 when empty), and the most entries seen.
fn sample_outbox(db: &Db, sampling: &AtomicBool) -> (Histogram<u64>, u64) {
    let mut lag = Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid histogram bounds");
    let mut max_entries = 0;
    while sampling.load(Ordering::Relaxed) {
        let (entries, oldest_ms) = db.outbox_status();
        max_entries = max_entries.max(entries);
        lag.saturating_record(oldest_ms.unwrap_or(0));
        thread::sleep(OUTBOX_SAMPLE_EVERY);
    }
    (lag, max_entries)
}

/// The counters recomputed from the documents themselves.
fn ground_truth(subscribers: &Collection, opens: &Collection, count: u64) -> BoxResult<Counters> {
    let mut truth = Counters::default();
    for n in 0..count {
        if let Some(doc) = subscribers.get(&subscriber_id(n))? {
            if doc.body.get("status").and_then(Value::as_str) == Some("confirmed") {
                truth.confirmed += 1;
            } else {
                truth.unconfirmed += 1;
            }
        }
    }
    truth.email_opens = opens.count()?.0 as i64;
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_mix_has_its_proportions_and_never_repeats_a_subscriber() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut mix = Mix::new(2);
        let (mut confirms, mut opens, mut deletes) = (0, 0, 0);
        let mut touched = std::collections::HashSet::new();
        for _ in 0..10_000 {
            match mix.next(&mut rng) {
                Op::Confirm(n) | Op::Delete(n) => {
                    assert!((20_000..30_000).contains(&n), "outside worker 2's slice: {n}");
                    assert!(touched.insert(n), "subscriber {n} used twice");
                    if n < 25_000 { confirms += 1 } else { deletes += 1 }
                }
                Op::Open { subscriber, .. } => {
                    assert!((20_000..30_000).contains(&subscriber));
                    opens += 1;
                }
            }
        }
        assert!((4_200..4_800).contains(&confirms), "{confirms}");
        assert!((4_200..4_800).contains(&opens), "{opens}");
        assert!((800..1_200).contains(&deletes), "{deletes}");
        assert!(!mix.exhausted());
    }

    #[test]
    fn an_exhausted_slice_only_opens() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut mix = Mix::new(0);
        let mut used = 0;
        for _ in 0..100_000 {
            if matches!(mix.next(&mut rng), Op::Confirm(_) | Op::Delete(_)) {
                used += 1;
            }
        }
        assert_eq!(used, SUBSCRIBERS_PER_WORKER);
        assert!(mix.exhausted());
        assert!(matches!(mix.next(&mut rng), Op::Open { .. }));
        assert_eq!(Op::Confirm(1).deltas() + Op::Delete(1).deltas(), 3);
    }

    #[test]
    fn counters_against_the_truth() {
        let truth = Counters {
            confirmed: 3,
            unconfirmed: 5,
            email_opens: 7,
        };
        assert!(check_counters(truth, truth).is_ok());
        let off = Counters {
            confirmed: 4,
            ..truth
        };
        assert!(check_counters(off, truth).is_err());
    }

    fn truce_run(mode: &'static str, commits: u64, deltas: u64, target_writes: u64) -> TruceRun {
        let mut totals = Recorder::default();
        totals.ok = commits;
        totals.latency(Duration::from_micros(900));
        let mut lag = Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds");
        for ms in [0, 10, 20, 30, 40] {
            lag.saturating_record(ms);
        }
        TruceRun {
            mode,
            outcome: Outcome {
                system: "truce",
                elapsed: Duration::from_secs(10),
                totals,
                check: Ok("fine".into()),
            },
            deltas,
            target_writes,
            lag_ms: (mode == "after_commit").then_some(lag),
            outbox_max_entries: 7,
            drain: Duration::from_millis(12),
            exhausted_workers: 0,
        }
    }

    fn pg_run(commits: u64, deadlocks: u64) -> PgRun {
        let mut totals = Recorder::default();
        totals.ok = commits;
        totals.errors = deadlocks;
        totals.conflicts = deadlocks;
        PgRun {
            outcome: Outcome {
                system: "pg",
                elapsed: Duration::from_secs(10),
                totals,
                check: Ok("fine".into()),
            },
            deadlocks,
        }
    }

    #[test]
    fn report_ratios_coalescing_and_json() {
        let report = Seed003Report {
            workers: 32,
            in_commit: truce_run("in_commit", 200_000, 300_000, 200_000),
            after_commit: truce_run("after_commit", 50_000, 75_000, 150),
            pg: Ok(PgRuns {
                in_tx: pg_run(40, 30),
                after: pg_run(20_000, 0),
                version: "PostgreSQL 15.18 (Debian) on x86_64".into(),
            }),
        };
        assert!((report.in_commit.writes_per_1000_deltas() - 666.666).abs() < 0.01);
        assert!((report.after_commit.writes_per_1000_deltas() - 2.0).abs() < 1e-9);
        let value: serde_json::Value = serde_json::from_str(&report.json_line()).expect("valid JSON");
        assert_eq!(value["bench"], "seed003");
        assert_eq!(value["truce_in_commit_commits_s"], 20_000);
        assert_eq!(value["truce_after_commit_writes_per_1000_deltas"], 2.0);
        assert_eq!(value["truce_outbox_lag_p99_ms"], 40);
        assert_eq!(value["pg_version"], "PostgreSQL 15.18");
        assert_eq!(value["pg_in_tx_deadlocks"], 30);
        assert_eq!(value["ratio_in_commit"], 5000.0);
        assert_eq!(value["ratio_in_commit_vs_pg_after_commit"], 10.0);
        assert!(report.checks_passed());
        assert!(report.table().contains("= 5000.0×"));

        let skipped = Seed003Report {
            pg: Err("no pg_ctl".into()),
            ..report
        };
        let value: serde_json::Value = serde_json::from_str(&skipped.json_line()).expect("valid JSON");
        assert!(value["pg"].is_null());
        assert!(skipped.table().contains("postgresql: skipped (no pg_ctl)"));
    }

    #[test]
    fn configs_parse_in_both_modes() {
        for mode in ["in_commit", "after_commit"] {
            let (subscribers, opens) = configs(mode).expect("valid");
            assert_eq!(subscribers.counters.len(), 2);
            assert_eq!(opens.counters[0].mode.name(), mode);
        }
    }
}
