//! `transfers` (issue 3): money moves between 1,000 accounts chosen with a Zipf
//! skew, each transfer an optimistic transaction on Truce (`Db::transaction`:
//! read both balances, write both with `Expect::Any`; the read set is what
//! makes that safe) and, for reference, a `BEGIN IMMEDIATE` transaction on
//! SQLite. Every committed transfer is logged per thread, and at the end every
//! account's balance must equal its opening balance plus what the log says it
//! received minus what it sent (so the total is conserved too).

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use rusqlite::{Connection, params};
use serde_json::json;
use truce::{Db, Expect, Options, RetryPolicy, Transaction};

use crate::driver::{self, Config};
use crate::sqlite_side;
use crate::stats::{Outcome, Recorder, Report, json_float, json_object};
use crate::zipf::Zipf;

/// Accounts in the data set.
pub const ACCOUNTS: usize = 1_000;

/// The Zipf exponent of the account choice: account 0 is in ~13 % of draws.
pub const ZIPF_S: f64 = 1.0;

/// Every account's balance before the run.
pub const OPENING_BALANCE: i64 = 1_000_000;

/// Transfers move 1 to this much. Balances may go negative: the workload
/// measures contention, not business rules.
const AMOUNT_MAX: i64 = 100;

/// Truce's retry policy here: the default backoff (full jitter, 1 ms doubling
/// to 100 ms) with so many attempts that no transfer gives up in a 10 s run.
/// A give-up would be counted as an error.
pub const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 10_000,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(100),
};

const COLLECTION: &str = "accounts";

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The Truce id of account `n`.
fn account_id(n: usize) -> String {
    format!("a{n}")
}

/// Per-account net change implied by the committed transfers, merged from
/// every thread's log.
struct Ledger(Mutex<Vec<i64>>);

impl Ledger {
    fn new() -> Ledger {
        Ledger(Mutex::new(vec![0; ACCOUNTS]))
    }

    fn add(&self, deltas: &[i64]) {
        let mut total = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (t, d) in total.iter_mut().zip(deltas) {
            *t += d;
        }
    }

    /// Compares the balances read back with the ledger: `Ok(summary)` or the
    /// first few accounts that differ.
    fn check(&self, balances: &[i64], commits: u64) -> Result<String, String> {
        let deltas = self.0.lock().unwrap_or_else(|p| p.into_inner());
        check_balances(balances, &deltas, commits)
    }
}

/// Every balance must be the opening balance plus its net delta; the total is
/// then conserved as well (the deltas of a transfer cancel out).
pub fn check_balances(balances: &[i64], deltas: &[i64], commits: u64) -> Result<String, String> {
    if balances.len() != deltas.len() {
        return Err(format!(
            "{} accounts read back, {} expected",
            balances.len(),
            deltas.len()
        ));
    }
    let wrong: Vec<String> = balances
        .iter()
        .zip(deltas)
        .enumerate()
        .filter(|(_, (b, d))| **b != OPENING_BALANCE + **d)
        .take(5)
        .map(|(n, (b, d))| format!("account {n}: {b}, log says {}", OPENING_BALANCE + d))
        .collect();
    let total: i64 = balances.iter().sum();
    let expected_total = OPENING_BALANCE * balances.len() as i64;
    if !wrong.is_empty() {
        return Err(format!(
            "balances differ from the transfer log: {}",
            wrong.join("; ")
        ));
    }
    if total != expected_total {
        return Err(format!("total {total}, expected {expected_total}"));
    }
    Ok(format!(
        "all {} balances = opening + the log of {commits} committed transfers; total {total} conserved",
        balances.len()
    ))
}

/// One system's run at one thread count.
pub struct TransferRun {
    /// The merged figures: `ok` = committed transfers, `conflicts` = attempts
    /// that failed validation, `attempts` = attempts in all.
    pub outcome: Outcome,
}

impl TransferRun {
    /// Attempts that failed validation over all attempts.
    pub fn conflict_rate(&self) -> f64 {
        let t = &self.outcome.totals;
        if t.attempts == 0 {
            0.0
        } else {
            t.conflicts as f64 / t.attempts as f64
        }
    }

    /// Failed attempts per committed transfer.
    pub fn retries_per_commit(&self) -> f64 {
        let t = &self.outcome.totals;
        if t.ok == 0 {
            0.0
        } else {
            t.conflicts as f64 / t.ok as f64
        }
    }
}

/// Truce and SQLite at one thread count.
pub struct TransfersReport {
    threads: usize,
    truce: TransferRun,
    peer: TransferRun,
}

impl TransfersReport {
    /// Truce's committed transfers per second over SQLite's.
    pub fn ratio(&self) -> f64 {
        let peer = self.peer.outcome.ops_per_s();
        if peer > 0.0 {
            self.truce.outcome.ops_per_s() / peer
        } else {
            f64::INFINITY
        }
    }

    /// The table, the checks and the ratio.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "system", "threads", "commits/s", "conflict", "retries", "p50 µs", "p99 µs", "p999 µs", "errors"
        );
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "", "", "", "rate", "/commit", "", "", "", ""
        );
        for run in [&self.truce, &self.peer] {
            let t = &run.outcome.totals;
            let _ = writeln!(
                out,
                "{:<8} {:>7} {:>10.1} {:>8.1}% {:>9.3} {:>9} {:>9} {:>9} {:>7}",
                run.outcome.system,
                self.threads,
                run.outcome.ops_per_s(),
                100.0 * run.conflict_rate(),
                run.retries_per_commit(),
                t.percentile_us(0.50),
                t.percentile_us(0.99),
                t.percentile_us(0.999),
                t.errors
            );
        }
        for run in [&self.truce, &self.peer] {
            if let Some(error) = &run.outcome.totals.first_error {
                let _ = writeln!(out, "first error {}: {error}", run.outcome.system);
            }
        }
        for run in [&self.truce, &self.peer] {
            let _ = match &run.outcome.check {
                Ok(what) => writeln!(out, "check {}: ok ({what})", run.outcome.system),
                Err(what) => writeln!(out, "check {}: FAILED ({what})", run.outcome.system),
            };
        }
        let _ = writeln!(out, "ratio truce/sqlite = {:.1}×", self.ratio());
        out
    }
}

impl Report for TransfersReport {
    fn json_line(&self) -> String {
        let side = |run: &TransferRun| {
            let t = &run.outcome.totals;
            (
                run.outcome.ops_per_s().round() as u64,
                json_float(run.conflict_rate(), 4),
                json_float(run.retries_per_commit(), 4),
                t.percentile_us(0.50),
                t.percentile_us(0.99),
                t.errors,
            )
        };
        let (t_ops, t_rate, t_retries, t_p50, t_p99, t_err) = side(&self.truce);
        let ratio = self.ratio();
        let (p_ops, _, _, p_p50, p_p99, p_err) = side(&self.peer);
        json_object(&[
            ("bench", "transfers".into()),
            ("threads", self.threads.into()),
            ("accounts", ACCOUNTS.into()),
            ("zipf_s", json_float(ZIPF_S, 2)),
            ("truce_commits_s", t_ops.into()),
            ("truce_conflict_rate", t_rate),
            ("truce_retries_per_commit", t_retries),
            ("truce_p50_us", t_p50.into()),
            ("truce_p99_us", t_p99.into()),
            ("truce_errors", t_err.into()),
            ("peer", "sqlite".into()),
            ("peer_commits_s", p_ops.into()),
            ("peer_p50_us", p_p50.into()),
            ("peer_p99_us", p_p99.into()),
            ("peer_errors", p_err.into()),
            ("ratio", json_float(ratio, 2)),
        ])
    }

    fn checks_passed(&self) -> bool {
        self.truce.outcome.check.is_ok() && self.peer.outcome.check.is_ok()
    }
}

/// Runs Truce, then SQLite, at `config.threads` threads and prints the table.
pub fn run(config: &Config) -> BoxResult<TransfersReport> {
    let zipf = Zipf::new(ACCOUNTS, ZIPF_S);
    println!(
        "transfers: {} threads, {:?} per system, {ACCOUNTS} accounts chosen with Zipf s = {ZIPF_S} \
         (the hottest in {:.1}% of draws), amounts 1..={AMOUNT_MAX}; truce: Db::transaction (optimistic, read set validated at commit, \
         retried up to {} attempts, backoff {:?} doubling to {:?}); sqlite: BEGIN IMMEDIATE (one writer at a time)",
        config.threads,
        config.duration,
        100.0 * zipf.probability(0),
        RETRY.max_attempts,
        RETRY.base_delay,
        RETRY.max_delay
    );
    let report = TransfersReport {
        threads: config.threads,
        truce: truce(config, &zipf)?,
        peer: sqlite(config, &zipf)?,
    };
    println!("{}", report.table());
    Ok(report)
}

/// The transfer itself, as one attempt of a Truce transaction.
fn transfer(tx: &mut Transaction, from: usize, to: usize, amount: i64) -> truce::Result<()> {
    let (from_id, to_id) = (account_id(from), account_id(to));
    let balance = |tx: &mut Transaction, id: &str| -> truce::Result<i64> {
        tx.get(COLLECTION, id)?
            .and_then(|doc| doc.body.get("balance").and_then(serde_json::Value::as_i64))
            .ok_or_else(|| truce::Error::Unavailable(format!("account {id} is missing")))
    };
    let from_balance = balance(tx, &from_id)?;
    let to_balance = balance(tx, &to_id)?;
    tx.put(
        COLLECTION,
        &from_id,
        json!({"balance": from_balance - amount}),
        Expect::Any,
    )?;
    tx.put(
        COLLECTION,
        &to_id,
        json!({"balance": to_balance + amount}),
        Expect::Any,
    )?;
    Ok(())
}

fn truce(config: &Config, zipf: &Zipf) -> BoxResult<TransferRun> {
    const SYSTEM: &str = "truce";
    let dir = crate::cleanup::scratch_dir("truce-bench-", &config.dir)?;
    let options = Options {
        retry: RETRY,
        ..Options::default()
    };
    let db = Db::open(dir.path(), options)?;
    let accounts = db.collection(COLLECTION)?;
    let pending = (0..ACCOUNTS)
        .map(|n| {
            accounts.submit_put(
                &account_id(n),
                json!({"balance": OPENING_BALANCE}),
                Expect::Absent,
            )
        })
        .collect::<truce::Result<Vec<_>>>()?;
    for write in pending {
        if let Err(conflict) = write.wait()? {
            return Err(format!("preload conflicted: {conflict}").into());
        }
    }
    let ledger = Ledger::new();
    let (totals, elapsed) = driver::run(SYSTEM, config, |_, race| {
        let mut recorder = Recorder::default();
        let mut deltas = vec![0i64; ACCOUNTS];
        let mut rng = rand::rng();
        let deadline = race.start();
        while Instant::now() < deadline {
            let (from, to) = zipf.sample_pair(&mut rng);
            let amount = rng.random_range(1..=AMOUNT_MAX);
            let mut calls = 0u64;
            let t0 = Instant::now();
            let result = db.transaction(|tx| {
                calls += 1;
                transfer(tx, from, to, amount)
            });
            recorder.attempts += calls;
            match result {
                Ok(()) => {
                    recorder.latency(t0.elapsed());
                    recorder.ok += 1;
                    recorder.conflicts += calls - 1;
                    deltas[from] -= amount;
                    deltas[to] += amount;
                }
                // Every attempt conflicted: a give-up, counted as an error.
                Err(e @ truce::Error::TransactionFailed { .. }) => {
                    recorder.error(format!("gave up: {e}"));
                    recorder.conflicts += calls;
                }
                Err(e) => {
                    recorder.error(e);
                    recorder.conflicts += calls.saturating_sub(1);
                }
            }
            race.tick();
        }
        ledger.add(&deltas);
        recorder
    });
    let mut balances = Vec::with_capacity(ACCOUNTS);
    for n in 0..ACCOUNTS {
        let doc = accounts
            .get(&account_id(n))?
            .ok_or_else(|| format!("account {n} is missing after the run"))?;
        balances.push(
            doc.body["balance"]
                .as_i64()
                .ok_or("a balance is not an integer")?,
        );
    }
    let check = ledger.check(&balances, totals.ok);
    Ok(TransferRun {
        outcome: Outcome {
            system: SYSTEM,
            elapsed,
            totals,
            check,
        },
    })
}

/// One transfer in a `BEGIN IMMEDIATE` transaction: SQLite takes the write lock
/// up front, so transfers never conflict; they queue (busy_timeout 10 s).
fn sqlite_transfer(conn: &Connection, from: usize, to: usize, amount: i64) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let mut select = conn.prepare_cached("SELECT balance FROM accounts WHERE id = ?1")?;
        let from_balance: i64 = select.query_row([from as i64], |row| row.get(0))?;
        let to_balance: i64 = select.query_row([to as i64], |row| row.get(0))?;
        let mut update = conn.prepare_cached("UPDATE accounts SET balance = ?1 WHERE id = ?2")?;
        update.execute(params![from_balance - amount, from as i64])?;
        update.execute(params![to_balance + amount, to as i64])?;
        conn.execute_batch("COMMIT")
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn sqlite(config: &Config, zipf: &Zipf) -> BoxResult<TransferRun> {
    const SYSTEM: &str = "sqlite";
    let (_dir, path) = sqlite_side::create(
        config,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);",
    )?;
    {
        let mut conn = sqlite_side::connect(&path)?;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare("INSERT INTO accounts (id, balance) VALUES (?1, ?2)")?;
            for n in 0..ACCOUNTS {
                insert.execute(params![n as i64, OPENING_BALANCE])?;
            }
        }
        tx.commit()?;
    }
    let ledger = Ledger::new();
    let (totals, elapsed) = driver::run(SYSTEM, config, |_, race| {
        let mut recorder = Recorder::default();
        let mut deltas = vec![0i64; ACCOUNTS];
        let mut rng = rand::rng();
        let conn = sqlite_side::connect(&path);
        let deadline = race.start();
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                recorder.error(e);
                return recorder;
            }
        };
        while Instant::now() < deadline {
            let (from, to) = zipf.sample_pair(&mut rng);
            let amount = rng.random_range(1..=AMOUNT_MAX);
            let t0 = Instant::now();
            recorder.attempts += 1;
            match sqlite_transfer(&conn, from, to, amount) {
                Ok(()) => {
                    recorder.latency(t0.elapsed());
                    recorder.ok += 1;
                    deltas[from] -= amount;
                    deltas[to] += amount;
                }
                Err(e) => recorder.error(e),
            }
            race.tick();
        }
        ledger.add(&deltas);
        recorder
    });
    let check = ledger.check(&read_sqlite_balances(&path)?, totals.ok);
    Ok(TransferRun {
        outcome: Outcome {
            system: SYSTEM,
            elapsed,
            totals,
            check,
        },
    })
}

fn read_sqlite_balances(path: &Path) -> BoxResult<Vec<i64>> {
    let conn = sqlite_side::connect(path)?;
    let mut select = conn.prepare("SELECT balance FROM accounts ORDER BY id")?;
    let balances = select
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(balances)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(ok: u64, conflicts: u64, attempts: u64) -> TransferRun {
        let mut totals = Recorder::default();
        (totals.ok, totals.conflicts, totals.attempts) = (ok, conflicts, attempts);
        TransferRun {
            outcome: Outcome {
                system: "truce",
                elapsed: Duration::from_secs(10),
                totals,
                check: Ok("fine".into()),
            },
        }
    }

    #[test]
    fn conflict_rate_and_retries() {
        // 100 commits took 160 attempts: 60 failed validation.
        let run = run_with(100, 60, 160);
        assert!((run.conflict_rate() - 0.375).abs() < 1e-12);
        assert!((run.retries_per_commit() - 0.6).abs() < 1e-12);
        let idle = run_with(0, 0, 0);
        assert_eq!((idle.conflict_rate(), idle.retries_per_commit()), (0.0, 0.0));
    }

    #[test]
    fn balances_against_the_log() {
        let deltas = [-5, 5, 0];
        let good = [OPENING_BALANCE - 5, OPENING_BALANCE + 5, OPENING_BALANCE];
        assert!(check_balances(&good, &deltas, 1).is_ok());
        // Conserved in total, but not what the log says (a lost update plus a double apply).
        let shifted = [OPENING_BALANCE, OPENING_BALANCE, OPENING_BALANCE];
        let err = check_balances(&shifted, &deltas, 1).unwrap_err();
        assert!(err.contains("account 0"), "{err}");
        assert!(check_balances(&good[..2], &deltas, 1).is_err());
    }

    #[test]
    fn report_json_and_table() {
        let report = TransfersReport {
            threads: 8,
            truce: run_with(2_000, 500, 2_500),
            peer: run_with(1_000, 0, 1_000),
        };
        assert_eq!(report.ratio(), 2.0);
        let line = report.json_line();
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["bench"], "transfers");
        assert_eq!(value["truce_commits_s"], 200);
        assert_eq!(value["truce_conflict_rate"], 0.2);
        assert_eq!(value["truce_retries_per_commit"], 0.25);
        assert_eq!(value["ratio"], 2.0);
        assert!(line.find("\"bench\"") < line.find("\"threads\""));
        assert!(report.table().contains("ratio truce/sqlite = 2.0×"));
        assert!(report.checks_passed());
    }
}
