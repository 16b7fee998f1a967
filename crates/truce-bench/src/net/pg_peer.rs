//! PostgreSQL's side of the network workloads: the server `pg.rs` starts
//! (default settings, `synchronous_commit = on`), driven through
//! tokio-postgres connections on the load generator's one thread, each with
//! its statements prepared once — the native protocol at its cheapest.

use rand::rngs::SmallRng;
use tokio_postgres::types::Type;
use tokio_postgres::{Client as PgConn, NoTls, Statement};

use super::Workload;
use super::load::{Answer, Client};
use super::workloads::{HEARTBEAT_DEDUP_MS, Slice, Tabs, backoff, client_rng};
use crate::workload::PAYLOAD;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One connection with its prepared statement(s) and the workload's state.
pub enum PgClient {
    /// `UPDATE counters SET n = n + 1 WHERE id = 1`.
    HotCounter(PgConn, Statement),
    /// `UPDATE docs … WHERE id = $1 AND version = $2` over the client's slice.
    Versioned(PgConn, Statement, Slice),
    /// `SELECT n, version`, then the conditional `UPDATE`; retried with backoff.
    Rmw(PgConn, [Statement; 2], SmallRng),
    /// `INSERT … ON CONFLICT … DO UPDATE … WHERE` with the dedup rule.
    Heartbeat(PgConn, Statement, Tabs),
}

impl Client for PgClient {
    async fn op(&mut self) -> Answer {
        let answer = match self {
            PgClient::HotCounter(conn, update) => conn.execute(update, &[]).await.map(|rows| match rows {
                1 => Answer::Done { retries: 0 },
                _ => Answer::Error("the counter row is missing".into()),
            }),
            PgClient::Versioned(conn, update, slice) => {
                let (id, version) = slice.pick();
                let body = format!("{{{}}}", slice.body_fields());
                conn.execute(update, &[&(id as i64), &(version as i64), &body])
                    .await
                    .map(|rows| {
                        if rows == 1 {
                            slice.written();
                            Answer::Done { retries: 0 }
                        } else {
                            Answer::Conflict
                        }
                    })
            }
            PgClient::Rmw(conn, [select, update], rng) => rmw(conn, select, update, rng).await,
            PgClient::Heartbeat(conn, upsert, tabs) => {
                let (session, path) = tabs.next();
                conn.execute(upsert, &[&format!("s{session}"), &path])
                    .await
                    .map(|rows| match rows {
                        1 => Answer::Done { retries: 0 },
                        _ => Answer::Skipped,
                    })
            }
        };
        answer.unwrap_or_else(|e| Answer::Error(describe(&e)))
    }
}

/// Read the version, write at it, retry on a lost race: PostgreSQL's
/// optimistic read-modify-write, with the same backoff as Truce's client.
async fn rmw(
    conn: &PgConn,
    select: &Statement,
    update: &Statement,
    rng: &mut SmallRng,
) -> Result<Answer, tokio_postgres::Error> {
    let mut failed = 0;
    loop {
        let row = conn.query_one(select, &[]).await?;
        let (n, version): (i64, i64) = (row.get(0), row.get(1));
        if conn.execute(update, &[&(n + 1), &version]).await? == 1 {
            return Ok(Answer::Done { retries: failed });
        }
        failed += 1;
        tokio::time::sleep(backoff(rng, failed)).await;
    }
}

/// PostgreSQL's own code and message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Opens one connection, driven by a task on the current runtime.
async fn connect(conninfo: &str) -> BoxResult<PgConn> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Fresh tables for `workload`, then `clients` connections with their
/// statements; returns them and the ids of the server's processes meanwhile.
pub async fn clients(
    conninfo: &str,
    workload: Workload,
    clients: usize,
    docs: u64,
) -> BoxResult<Vec<PgClient>> {
    let setup = connect(conninfo).await?;
    let schema = match workload {
        Workload::HotCounter => "DROP TABLE IF EXISTS counters;
             CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters VALUES (1, 0);"
            .to_string(),
        Workload::VersionedWrites => format!(
            "DROP TABLE IF EXISTS docs;
             CREATE TABLE docs (id bigint PRIMARY KEY, version bigint NOT NULL, body jsonb NOT NULL);
             INSERT INTO docs SELECT g, 1, jsonb_build_object('v', 0, 'payload', '{PAYLOAD}')
               FROM generate_series(0, {last}) g;",
            last = docs.max(1) - 1
        ),
        Workload::ContendedRmw => "DROP TABLE IF EXISTS rmw;
             CREATE TABLE rmw (id int PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL);
             INSERT INTO rmw VALUES (1, 0, 1);"
            .to_string(),
        Workload::Heartbeats => "DROP TABLE IF EXISTS active_sessions;
             CREATE TABLE active_sessions (id text PRIMARY KEY, current_path text NOT NULL,
                                           last_seen timestamptz NOT NULL);"
            .to_string(),
    };
    // VACUUM cannot run in the implicit transaction of a multi-statement query.
    for sql in [schema.as_str(), "VACUUM ANALYZE", "CHECKPOINT"] {
        setup.batch_execute(sql).await.map_err(|e| describe(&e))?;
    }
    let mut all = Vec::with_capacity(clients);
    for i in 0..clients {
        let conn = connect(conninfo).await?;
        all.push(match workload {
            Workload::HotCounter => {
                let update = conn.prepare("UPDATE counters SET n = n + 1 WHERE id = 1").await?;
                PgClient::HotCounter(conn, update)
            }
            Workload::VersionedWrites => {
                let update = conn
                    .prepare_typed(
                        "UPDATE docs SET body = $3::jsonb, version = version + 1 WHERE id = $1 AND version = $2",
                        &[Type::INT8, Type::INT8, Type::TEXT],
                    )
                    .await?;
                PgClient::Versioned(conn, update, Slice::new(i, clients, docs))
            }
            Workload::ContendedRmw => {
                let select = conn.prepare("SELECT n, version FROM rmw WHERE id = 1").await?;
                let update = conn
                    .prepare_typed(
                        "UPDATE rmw SET n = $1, version = version + 1 WHERE id = 1 AND version = $2",
                        &[Type::INT8, Type::INT8],
                    )
                    .await?;
                PgClient::Rmw(conn, [select, update], client_rng(i))
            }
            Workload::Heartbeats => {
                let upsert = conn
                    .prepare_typed(
                        &format!(
                            "INSERT INTO active_sessions (id, current_path, last_seen) VALUES ($1, $2, now())
                             ON CONFLICT (id) DO UPDATE SET current_path = EXCLUDED.current_path,
                                                            last_seen = EXCLUDED.last_seen
                             WHERE active_sessions.current_path <> EXCLUDED.current_path
                                OR active_sessions.last_seen < now() - interval '{HEARTBEAT_DEDUP_MS} milliseconds'"
                        ),
                        &[Type::TEXT, Type::TEXT],
                    )
                    .await?;
                PgClient::Heartbeat(conn, upsert, Tabs::new(i, clients))
            }
        });
    }
    Ok(all)
}

/// The post-run check: the counter equals the successful operations; for
/// versioned writes, Σ (version − 1) equals the successful writes.
pub async fn check(conninfo: &str, workload: Workload, successes: u64) -> Result<String, String> {
    let conn = connect(conninfo).await.map_err(|e| e.to_string())?;
    let (what, sql) = match workload {
        Workload::HotCounter => ("n", "SELECT n FROM counters WHERE id = 1"),
        Workload::ContendedRmw => ("n", "SELECT n FROM rmw WHERE id = 1"),
        Workload::VersionedWrites => (
            "sum of (version - 1)",
            "SELECT sum(version - 1)::bigint FROM docs",
        ),
        Workload::Heartbeats => return Ok("no check".into()),
    };
    let found: i64 = conn.query_one(sql, &[]).await.map_err(|e| describe(&e))?.get(0);
    if u64::try_from(found) == Ok(successes) {
        Ok(format!("{what} = {found} = successful operations"))
    } else {
        Err(format!("{what} = {found}, but {successes} operations succeeded"))
    }
}
