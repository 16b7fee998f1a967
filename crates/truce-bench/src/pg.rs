//! PostgreSQL for `seed003`: a throwaway server started by the benchmark on
//! loopback (system `initdb`/`pg_ctl`, default settings, so
//! `synchronous_commit = on` and `fsync = on`), and the counter_culture
//! workload against it.
//!
//! Finding the server: `pg_ctl` on the PATH, else the newest
//! `/usr/lib/postgresql/*/bin`. When neither exists and this runs as root,
//! Debian's `postgresql` package is installed (`apt-get install -y
//! postgresql`); otherwise PostgreSQL is skipped with a message. `initdb`
//! refuses to run as root, so as root every server command runs as the
//! `postgres` system user (`runuser -u postgres --`), which is created if
//! missing. The server is stopped with `pg_ctl stop -m fast`, then killed by
//! its process id if it is still there — also when the bench is interrupted
//! ([`crate::cleanup`]): the postmaster is not the bench's child and would
//! outlive it.

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use rand::Rng;

use crate::cleanup::{self, Registered, Scratch};
use crate::driver::{self, Config};
use crate::install::{self, is_root};
use crate::seed003::{CAMPAIGN, Counters, Mix, Op, PgRuns, check_counters, subscribers};
use crate::server::{free_loopback_port, proc_stat};
use crate::stats::{Outcome, Recorder};

type BoxError = Box<dyn Error + Send + Sync>;

/// How long `pg_ctl start` may take (`-t`).
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `campaign_metrics` row of each counter: campaign × 10 + counter.
const CONFIRMED_ROW: i64 = CAMPAIGN as i64 * 10;
const UNCONFIRMED_ROW: i64 = CAMPAIGN as i64 * 10 + 1;
const OPENS_ROW: i64 = CAMPAIGN as i64 * 10 + 2;
const _: () = assert!(CONFIRMED_ROW == 10_010 && OPENS_ROW == 10_012);

/// Why there are no PostgreSQL figures.
#[derive(Debug)]
pub enum PgError {
    /// PostgreSQL is not available here: the run goes on without it.
    Skipped(String),
    /// It is available but failed: the run fails.
    Failed(BoxError),
}

impl<E: Into<BoxError>> From<E> for PgError {
    fn from(e: E) -> PgError {
        PgError::Failed(e.into())
    }
}

/// One PostgreSQL run.
pub struct PgRun {
    /// `ok` = committed operations; `errors` = failed operations (deadlocks included).
    pub outcome: Outcome,
    /// Operations aborted by the deadlock detector.
    pub deadlocks: u64,
}

/// How the counters are updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// In the source write's transaction, the two rows of a confirmation in a
    /// random order: counter_culture's default, and the seed's deadlocks.
    InTransaction,
    /// After the source write committed, each counter row in its own
    /// autocommit statement: what the seed asks counter_culture for.
    AfterCommit,
}

/// Starts a server, runs both ways, stops the server.
pub fn run(config: &Config) -> Result<PgRuns, PgError> {
    let bin = find_or_install()?;
    let server = PgServer::start(&bin, config)?;
    let mut client = server.connect()?;
    let version: String = client.query_one("SELECT version()", &[])?.get(0);
    println!(
        "postgresql: {version}; pid {}, 127.0.0.1:{}, data in {}, default settings (synchronous_commit = on)",
        server.pid,
        server.port,
        server.data.display()
    );
    drop(client);
    let in_tx = workload(&server, config, Way::InTransaction)?;
    let after = workload(&server, config, Way::AfterCommit)?;
    drop(server);
    Ok(PgRuns {
        in_tx,
        after,
        version,
    })
}

/// The directory holding `pg_ctl`, `initdb` and `postgres`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["pg_ctl", "initdb", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // /usr/local/bin/pg_ctl is often a link into /usr/lib/postgresql/N/bin.
            if let Ok(real) = dir.join("pg_ctl").canonicalize()
                && let Some(parent) = real.parent()
                && complete(parent)
            {
                return Some(parent.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Finds the binaries, installing Debian's package as root if they are missing.
pub fn find_or_install() -> Result<PathBuf, PgError> {
    if let Some(dir) = find_bin_dir() {
        return Ok(dir);
    }
    install::debian_package(
        "postgresql (pg_ctl, PATH or /usr/lib/postgresql/*/bin)",
        "postgresql",
    )
    .map_err(PgError::Skipped)?;
    find_bin_dir().ok_or_else(|| PgError::Skipped("postgresql installed, but no pg_ctl found".into()))
}

/// Uid and gid of `user` from /etc/passwd.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_entry(&passwd, user)
}

/// Uid and gid of `user` in the text of a passwd file.
pub fn passwd_entry(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == user)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

/// The server: its data directory (in a temporary directory), port and pid.
/// Dropping it stops it.
pub struct PgServer {
    bin: PathBuf,
    /// Stops it if the bench is interrupted first (declared before the
    /// directory, which goes after it).
    registered: Registered,
    /// Holds the data directory; removed when the server is dropped (after it stopped).
    _scratch: Scratch,
    /// The data directory.
    pub data: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    /// The postmaster's process id.
    pub pid: u32,
    /// Run server commands as `postgres` (when this process is root).
    as_postgres: bool,
}

impl PgServer {
    /// A command for binary `name`, as the `postgres` user when we are root.
    fn command(bin: &Path, name: &str, as_postgres: bool) -> Command {
        if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(bin.join(name));
            command
        } else {
            Command::new(bin.join(name))
        }
    }

    /// initdb into a temporary directory under `config.dir` and `pg_ctl start`.
    pub fn start(bin: &Path, config: &Config) -> Result<PgServer, PgError> {
        let as_postgres = is_root();
        let scratch = cleanup::scratch_dir("pg-bench-", &config.dir)?;
        if as_postgres {
            if lookup_user("postgres").is_none() {
                let created = Command::new("useradd")
                    .args([
                        "--system",
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                        "postgres",
                    ])
                    .status()?;
                if !created.success() {
                    return Err(PgError::Skipped("no postgres user, and useradd failed".into()));
                }
            }
            let (uid, gid) = lookup_user("postgres").ok_or("the postgres user has no passwd entry")?;
            if let Some((dir, mode)) = closed_ancestor(scratch.path(), uid, gid) {
                return Err(format!(
                    "PostgreSQL runs as the postgres user when the bench runs as root, and that user \
                     cannot enter {} (mode {mode:o}) to reach its data directory under --dir; pass a \
                     --dir every user can reach (e.g. under /var/tmp), or --skip postgres",
                    dir.display()
                )
                .into());
            }
            std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid))?;
        }
        let data = scratch.path().join("data");
        let log = scratch.path().join("server.log");
        let initdb = Self::command(bin, "initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"])
            .stdout(Stdio::null())
            .output()?;
        if !initdb.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)).into());
        }
        let port = free_loopback_port()?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={}",
            scratch.path().display()
        );
        // Registered before it starts: `pg_ctl start -w` may take seconds, and
        // the postmaster (in a session of its own) would finish starting after
        // the bench is gone. Until `pg_ctl start` has returned, the undo first
        // waits for the postmaster to write its pid.
        let start_returned = Arc::new(AtomicBool::new(false));
        let registered = {
            let (bin, data, start_returned) = (bin.to_path_buf(), data.clone(), Arc::clone(&start_returned));
            cleanup::register(format!("postgresql ({})", data.display()), move || {
                let deadline = Instant::now() + PG_START_TIMEOUT;
                while postmaster_pid(&data) == 0
                    && !start_returned.load(Ordering::SeqCst)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                match postmaster_pid(&data) {
                    0 => "not started".into(),
                    pid => stop_postmaster(&bin, &data, as_postgres, pid),
                }
            })
        };
        let started = Instant::now();
        let start = Self::command(bin, "pg_ctl", as_postgres)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args([
                "-w",
                "-t",
                &PG_START_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ])
            .stdout(Stdio::null())
            .output();
        start_returned.store(true, Ordering::SeqCst);
        let start = start?;
        // From here on the server may be running: build the guard first.
        let pid = postmaster_pid(&data);
        let server = PgServer {
            bin: bin.to_path_buf(),
            registered,
            _scratch: scratch,
            data,
            port,
            pid,
            as_postgres,
        };
        if !start.status.success() || pid == 0 {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&start.stderr),
                tail.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            )
            .into());
        }
        eprintln!("postgresql: started (pid {pid}) in {:?}", started.elapsed());
        Ok(server)
    }

    /// The connection string (user postgres, trust authentication).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres application_name=truce-bench",
            self.port
        )
    }

    fn connect(&self) -> Result<Client, postgres::Error> {
        Client::connect(&self.conninfo(), NoTls)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The signal thread waits for this stop if one comes meanwhile.
        let _in_flight = self.registered.release();
        let how = stop_postmaster(&self.bin, &self.data, self.as_postgres, self.pid);
        println!("postgresql (pid {}) {how}", self.pid);
    }
}

/// The first directory above `path` (the scratch directory, which is handed to
/// the user itself) that user `uid` of group `gid` may not enter, with its
/// mode; `None` when every one lets it through. Reads only the permission
/// bits: enough for the usual culprit, a home or `mktemp -d` directory that
/// only root can enter.
fn closed_ancestor(path: &Path, uid: u32, gid: u32) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.mode() & 0o7777;
        let search = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        (mode & search == 0).then(|| (dir.to_path_buf(), mode))
    })
}

/// The postmaster's id from `data/postmaster.pid`; 0 if there is none.
fn postmaster_pid(data: &Path) -> u32 {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// `pg_ctl stop -m fast` on `data`, then SIGKILL to `pid` if it is still a
/// live postgres after 5 s; says how it went.
fn stop_postmaster(bin: &Path, data: &Path, as_postgres: bool, pid: u32) -> String {
    let stop = PgServer::command(bin, "pg_ctl", as_postgres)
        .arg("-D")
        .arg(data)
        .args(["-m", "fast", "-w", "-t", "30", "stop"])
        .stdout(Stdio::null())
        .output();
    let how = match &stop {
        Ok(out) if out.status.success() => "stopped (pg_ctl stop -m fast)".to_string(),
        Ok(out) => format!(
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("pg_ctl stop did not run: {e}"),
    };
    // The postmaster is not our child (pg_ctl detached it): wait until it is
    // gone (or a zombie waiting for init), then kill it by id if it is not.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid > 0 && postgres_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid > 0 && postgres_alive(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions. (The id was
        // checked just now to be a live process named postgres.)
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        format!("{how}; still running after 5 s: killed")
    } else {
        how
    }
}

/// Whether `pid` is a running (not zombie) process named `postgres`.
fn postgres_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.comm == "postgres" && stat.live())
}

/// An error's text: PostgreSQL's own code and message when it sent one.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The statements each connection prepares once.
struct Statements {
    confirm: Statement,
    open: Statement,
    delete: Statement,
    counter: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            confirm: client.prepare(
                "UPDATE subscribers SET status = 'confirmed', confirmed_at = now() \
                 WHERE id = $1 AND status = 'unconfirmed'",
            )?,
            open: client.prepare("INSERT INTO opens (id, campaign_id, subscriber_id) VALUES ($1, $2, $3)")?,
            delete: client.prepare("DELETE FROM subscribers WHERE id = $1 RETURNING status")?,
            counter: client.prepare("UPDATE campaign_metrics SET n = n + $2 WHERE id = $1")?,
        })
    }
}

/// A fresh data set: every subscriber unconfirmed, the counters to match.
fn setup(client: &mut Client, count: u64) -> Result<(), postgres::Error> {
    let started = Instant::now();
    client.batch_execute(&format!(
        "DROP TABLE IF EXISTS subscribers, opens, campaign_metrics;
         CREATE TABLE subscribers (id bigint PRIMARY KEY, campaign_id bigint NOT NULL,
                                   email text NOT NULL, status text NOT NULL, confirmed_at timestamptz);
         CREATE TABLE opens (id text PRIMARY KEY, campaign_id bigint NOT NULL, subscriber_id bigint NOT NULL);
         CREATE TABLE campaign_metrics (id bigint PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO subscribers SELECT g, {CAMPAIGN}, 'user' || g || '@example.com', 'unconfirmed'
           FROM generate_series(0, {last}) g;
         INSERT INTO campaign_metrics VALUES ({CONFIRMED_ROW}, 0), ({UNCONFIRMED_ROW}, {count}), ({OPENS_ROW}, 0);",
        last = count - 1
    ))?;
    client.batch_execute("VACUUM ANALYZE")?;
    client.batch_execute("CHECKPOINT")?;
    eprintln!(
        "postgresql preloaded {count} subscribers in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// One operation, counters inside the source transaction.
fn in_transaction(
    client: &mut Client,
    s: &Statements,
    op: &Op,
    rng: &mut impl Rng,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    match op {
        Op::Confirm(n) => {
            if tx.execute(&s.confirm, &[&(*n as i64)])? == 1 {
                let mut rows = [(CONFIRMED_ROW, 1i64), (UNCONFIRMED_ROW, -1i64)];
                if rng.random::<bool>() {
                    rows.swap(0, 1);
                }
                for (row, delta) in rows {
                    tx.execute(&s.counter, &[&row, &delta])?;
                }
            }
        }
        Op::Open { id, subscriber } => {
            tx.execute(&s.open, &[id, &(CAMPAIGN as i64), &(*subscriber as i64)])?;
            tx.execute(&s.counter, &[&OPENS_ROW, &1i64])?;
        }
        Op::Delete(n) => {
            if let Some(row) = tx.query_opt(&s.delete, &[&(*n as i64)])? {
                let status: String = row.get(0);
                let target = if status == "confirmed" {
                    CONFIRMED_ROW
                } else {
                    UNCONFIRMED_ROW
                };
                tx.execute(&s.counter, &[&target, &-1i64])?;
            }
        }
    }
    tx.commit()
}

/// One operation, counters after the source write committed, one row per statement.
fn after_commit(client: &mut Client, s: &Statements, op: &Op) -> Result<(), postgres::Error> {
    match op {
        Op::Confirm(n) => {
            if client.execute(&s.confirm, &[&(*n as i64)])? == 1 {
                client.execute(&s.counter, &[&CONFIRMED_ROW, &1i64])?;
                client.execute(&s.counter, &[&UNCONFIRMED_ROW, &-1i64])?;
            }
        }
        Op::Open { id, subscriber } => {
            client.execute(&s.open, &[id, &(CAMPAIGN as i64), &(*subscriber as i64)])?;
            client.execute(&s.counter, &[&OPENS_ROW, &1i64])?;
        }
        Op::Delete(n) => {
            if let Some(row) = client.query_opt(&s.delete, &[&(*n as i64)])? {
                let status: String = row.get(0);
                let target = if status == "confirmed" {
                    CONFIRMED_ROW
                } else {
                    UNCONFIRMED_ROW
                };
                client.execute(&s.counter, &[&target, &-1i64])?;
            }
        }
    }
    Ok(())
}

impl fmt::Display for Way {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Way::InTransaction => {
                "counters in the source transaction (counter_culture), two rows in random order"
            }
            Way::AfterCommit => "counters after the source commit, one autocommit statement per row",
        })
    }
}

fn workload(server: &PgServer, config: &Config, way: Way) -> Result<PgRun, PgError> {
    let system: &'static str = match way {
        Way::InTransaction => "pg-in-tx",
        Way::AfterCommit => "pg-after",
    };
    let count = subscribers(config.threads);
    setup(&mut server.connect()?, count)?;
    println!("postgresql: {way}");
    let (totals, elapsed) = driver::run(system, config, |worker, race| {
        let mut recorder = Recorder::default();
        let mut mix = Mix::new(worker);
        let mut rng = rand::rng();
        let prepared = server
            .connect()
            .and_then(|mut client| Statements::prepare(&mut client).map(|s| (client, s)));
        let deadline = race.start();
        let (mut client, statements) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                recorder.error(describe(&e));
                return recorder;
            }
        };
        while Instant::now() < deadline {
            let op = mix.next(&mut rng);
            let t0 = Instant::now();
            let result = match way {
                Way::InTransaction => in_transaction(&mut client, &statements, &op, &mut rng),
                Way::AfterCommit => after_commit(&mut client, &statements, &op),
            };
            recorder.latency(t0.elapsed());
            match result {
                Ok(()) => recorder.ok += 1,
                Err(e) => {
                    // Deadlocks are counted in `conflicts` as well as in `errors`.
                    if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) {
                        recorder.conflicts += 1;
                    }
                    recorder.error(describe(&e));
                }
            }
            race.tick();
        }
        recorder
    });
    let check = check(&mut server.connect()?)?;
    let deadlocks = totals.conflicts;
    Ok(PgRun {
        outcome: Outcome {
            system,
            elapsed,
            totals,
            check,
        },
        deadlocks,
    })
}

/// The counter rows against counts of the tables themselves.
fn check(client: &mut Client) -> Result<Result<String, String>, postgres::Error> {
    let row = client.query_one(
        "SELECT count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status <> 'confirmed') \
         FROM subscribers",
        &[],
    )?;
    let email_opens: i64 = client.query_one("SELECT count(*) FROM opens", &[])?.get(0);
    let truth = Counters {
        confirmed: row.get(0),
        unconfirmed: row.get(1),
        email_opens,
    };
    let mut counters = Counters::default();
    for row in client.query("SELECT id, n FROM campaign_metrics", &[])? {
        let (id, n): (i64, i64) = (row.get(0), row.get(1));
        match id {
            CONFIRMED_ROW => counters.confirmed = n,
            UNCONFIRMED_ROW => counters.unconfirmed = n,
            OPENS_ROW => counters.email_opens = n,
            _ => {}
        }
    }
    Ok(check_counters(counters, truth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_the_postgres_user_cannot_enter_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let closed = top.path().join("closed");
        let inner = closed.join("scratch");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A user that owns none of it, in no group of it.
        let (nobody, nogroup) = (4_000_000_001, 4_000_000_001);
        let found = closed_ancestor(&inner, nobody, nogroup);
        assert_eq!(found, Some((closed.clone(), 0o700)));
        // Above the test's own directories the machine decides (a temp dir
        // under a home only its owner enters): look at ours only.
        let ours = |found: Option<(PathBuf, u32)>| found.filter(|(dir, _)| dir.starts_with(top.path()));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(ours(closed_ancestor(&inner, nobody, nogroup)), None);
        // Its owner may enter it whatever the others' bits say.
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&closed).unwrap());
        assert_eq!(ours(closed_ancestor(&inner, owner, nogroup)), None);
    }

    #[test]
    fn finds_users_in_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_entry(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_entry(passwd, "post"), None);
        assert_eq!(passwd_entry("broken:x\n", "broken"), None);
    }
}
