//! `truce backup`: asks a running server for an online backup into a new
//! directory on its machine (`POST /v1/_backup`) and shows its progress until
//! it is done (`GET /v1/_backup`). Ctrl-C (SIGINT) stops it in the server
//! (`DELETE /v1/_backup`) and waits until nothing of it is left: before, the
//! command died and the server went on copying.

use std::time::Duration;

use serde_json::Value;

use crate::config::BackupArgs;

/// How often the progress is asked for.
const POLL_MS: u64 = 500;

/// Starts the backup and waits for its end; `Err` if it failed.
pub fn run(args: &BackupArgs) -> Result<(), String> {
    crate::remote::block_on(follow(args))
}

fn mib(bytes: &Value) -> f64 {
    bytes.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
}

async fn follow(args: &BackupArgs) -> Result<(), String> {
    let client = crate::remote::client(&args.url, args.key.as_deref(), &args.tls, "truce-backup")?;
    let to = args.to.to_str().ok_or("--to is not UTF-8")?;
    // Listening from before the backup starts: a Ctrl-C at any moment after
    // stops it rather than leave it running without anyone watching.
    let mut interrupted = interrupts().map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?;
    let started = client
        .start_backup(to)
        .await
        .map_err(|e| crate::remote::failure(&args.url, &e))?;
    eprintln!("backup of {} into {to} started (Ctrl-C stops it)", args.url);
    let lost = |e: &truce_client::ClientError| {
        format!(
            "{}. If the server was killed meanwhile, {to}.partial may be left on its machine: \
             remove it before backing up there again",
            crate::remote::failure(&args.url, e)
        )
    };
    let mut shown = String::new();
    loop {
        let status = tokio::select! {
            _ = interrupted.recv() => return stop(&client, to, &lost).await,
            status = async {
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                client.backup_status().await
            } => status,
        };
        let status = status
            .map_err(|e| lost(&e))?
            .ok_or("the server has no backup any more (was it restarted?)")?;
        // The server shows its last backup: another one started after this
        // one ended would be shown instead.
        if (&status["path"], &status["seq"]) != (&started["path"], &started["seq"]) {
            return Err(format!(
                "the server now shows another backup ({} at {}); this one's end was not seen",
                status["path"], status["seq"]
            ));
        }
        let line = format!(
            "{} entries, {:.1} MiB copied{}",
            status["entries"],
            mib(&status["bytes"]),
            status["space"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|s| format!(" (now {s})"))
                .unwrap_or_default()
        );
        if line != shown {
            eprintln!("{line}");
            shown = line;
        }
        match status["state"].as_str() {
            Some("running") => continue,
            Some("done") => {
                eprintln!(
                    "done: {to} holds every commit up to {} ({} entries, {:.1} MiB); serve it with \
                     `truce serve --data {to}`",
                    status["seq"],
                    status["entries"],
                    mib(&status["bytes"])
                );
                println!("{status}");
                return Ok(());
            }
            Some("stopped") => {
                return Err(format!(
                    "the backup was stopped (the server is shutting down, or it was asked to stop \
                     it: DELETE /v1/_backup); nothing of it is left at {to}"
                ));
            }
            _ => {
                return Err(format!(
                    "the backup failed: {}",
                    status["error"]["message"].as_str().unwrap_or("no reason given")
                ));
            }
        }
    }
}

/// Ctrl-C: asks the server to stop the backup, and says what came of it.
async fn stop(
    client: &truce_client::Client,
    to: &str,
    lost: &dyn Fn(&truce_client::ClientError) -> String,
) -> Result<(), String> {
    eprintln!("interrupted: stopping the backup (the server removes what it wrote)...");
    let status = client.stop_backup().await.map_err(|e| {
        format!(
            "{}; the backup may go on in the server (GET /v1/_backup follows it, DELETE /v1/_backup \
             stops it)",
            lost(&e)
        )
    })?;
    match status.as_ref().and_then(|s| s["state"].as_str()) {
        Some("stopped") => Err(format!("the backup was stopped; nothing of it is left at {to}")),
        Some("done") => {
            eprintln!("it had finished first: {to} holds the backup");
            Ok(())
        }
        _ => Err(format!(
            "the backup was not stopped: the server answered {}",
            status.unwrap_or_default()
        )),
    }
}

/// SIGINT, from now on (a `ctrl_c()` future sees only signals that come
/// while it is being polled).
fn interrupts() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
}
