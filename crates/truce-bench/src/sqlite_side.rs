//! SQLite's side, durable: a file database in WAL mode with `synchronous=FULL`,
//! one connection per thread, autocommit statements. SQLite has one writer at
//! a time and no way to pipeline, so it always runs synchronously.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::cleanup::Scratch;
use crate::driver::{self, Config, Race};
use crate::stats::{Outcome, Recorder};
use crate::truce_side::round_ms;
use crate::workload::{SPREAD_DOCS, random_doc, spread_body};

/// Label in tables and progress lines.
const SYSTEM: &str = "sqlite";

/// How long a statement waits for the write lock before failing with
/// `SQLITE_BUSY`: long enough that contention shows as latency, not errors.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an operation answered `SQLITE_BUSY` is tried again (see
/// `retry_busy`) before the answer counts as an error.
const BUSY_RETRIES_MAX: u32 = 1000;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Opens a connection with the durable settings every connection here uses.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A fresh database file in a temporary directory under `config.dir`.
pub fn create(config: &Config, schema: &str) -> BoxResult<(Scratch, std::path::PathBuf)> {
    let dir = crate::cleanup::scratch_dir("sqlite-bench-", &config.dir)?;
    let path = dir.path().join("bench.db");
    connect(&path)?.execute_batch(schema)?;
    Ok((dir, path))
}

/// `attempt` again while SQLite answers `SQLITE_BUSY` despite the busy timeout
/// (as WAL mode does when a connection's snapshot went stale before it could
/// take the write lock, or while another connection opens the database), as
/// an application would: a busy database is a wait, not a failed write. At
/// most [`BUSY_RETRIES_MAX`] more attempts; the last answer stands.
fn retry_busy<T>(mut attempt: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut retries = 0;
    loop {
        match attempt() {
            Err(e)
                if retries < BUSY_RETRIES_MAX
                    && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
            {
                retries += 1;
                std::thread::yield_now();
            }
            answer => return answer,
        }
    }
}

/// Runs `op` in a loop on its own connection until the deadline; `op` answers
/// `Ok(true)` for success, `Ok(false)` for a conflict.
fn run_loop<Op>(config: &Config, path: &Path, op: Op) -> (Recorder, Duration)
where
    Op: Fn(&Connection) -> rusqlite::Result<bool> + Sync,
{
    driver::run(SYSTEM, config, |thread, race: &Race| {
        let mut recorder = Recorder::default();
        let conn = retry_busy(|| connect(path));
        let mut pacer = race.start_paced(thread);
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                recorder.error(e);
                return recorder;
            }
        };
        while let Some(t0) = pacer.next() {
            let answer = retry_busy(|| op(&conn));
            recorder.latency(t0.elapsed());
            match answer {
                Ok(true) => recorder.ok += 1,
                Ok(false) => recorder.conflicts += 1,
                Err(e) => recorder.error(e),
            }
            race.tick();
        }
        recorder
    })
}

/// N threads run `UPDATE counters SET n = n + 1 WHERE id = 1`, each in autocommit.
pub fn hot_counter(config: &Config) -> BoxResult<Outcome> {
    let (_dir, path) = create(
        config,
        "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         INSERT INTO counters (id, n) VALUES (1, 0);",
    )?;
    let (totals, elapsed) = run_loop(config, &path, |conn| {
        let changed = conn
            .prepare_cached("UPDATE counters SET n = n + 1 WHERE id = 1")?
            .execute([])?;
        // The row always exists: no change would be a broken database, not a conflict.
        if changed == 1 {
            Ok(true)
        } else {
            Err(rusqlite::Error::QueryReturnedNoRows)
        }
    });
    let n: i64 = connect(&path)?.query_row("SELECT n FROM counters WHERE id = 1", [], |row| row.get(0))?;
    let check = if u64::try_from(n) == Ok(totals.ok) {
        Ok(format!("n = {n} = acknowledged increments"))
    } else {
        Err(format!("n = {n}, but {} increments were acknowledged", totals.ok))
    };
    Ok(Outcome {
        system: SYSTEM,
        elapsed,
        totals,
        check,
    })
}

/// Versioned read-then-update over [`SPREAD_DOCS`] rows: the update applies only
/// if the version is still the one read; otherwise it counts as a conflict.
pub fn spread_writes(config: &Config) -> BoxResult<Outcome> {
    let (_dir, path) = create(
        config,
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL);",
    )?;
    preload(&path)?;
    let (totals, elapsed) = run_loop(config, &path, |conn| {
        let id = random_doc(&mut rand::rng()) as i64;
        let (version, _body): (i64, String) = conn
            .prepare_cached("SELECT version, body FROM docs WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let body = spread_body(version as u64).to_string();
        let changed = conn
            .prepare_cached(
                "UPDATE docs SET body = ?1, version = version + 1 WHERE id = ?2 AND version = ?3",
            )?
            .execute(params![body, id, version])?;
        Ok(changed == 1)
    });
    let sum: i64 = connect(&path)?.query_row("SELECT SUM(version - 1) FROM docs", [], |row| row.get(0))?;
    let check = if u64::try_from(sum) == Ok(totals.ok) {
        Ok(format!("sum of (version - 1) = {sum} = successful writes"))
    } else {
        Err(format!(
            "sum of (version - 1) = {sum}, but {} writes succeeded",
            totals.ok
        ))
    };
    Ok(Outcome {
        system: SYSTEM,
        elapsed,
        totals,
        check,
    })
}

/// Inserts every row at version 1 in one transaction.
fn preload(path: &Path) -> BoxResult<()> {
    let started = Instant::now();
    let mut conn = connect(path)?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO docs (id, version, body) VALUES (?1, 1, ?2)")?;
        let body = spread_body(0).to_string();
        for n in 0..SPREAD_DOCS {
            insert.execute(params![n as i64, body])?;
        }
    }
    tx.commit()?;
    eprintln!(
        "{SYSTEM:<8} preloaded {SPREAD_DOCS} rows in {:?}",
        round_ms(started.elapsed())
    );
    Ok(())
}
