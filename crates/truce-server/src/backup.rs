//! `truce backup`: asks a running server for an online backup into a new
//! directory on its machine (`POST /v1/_backup`) and shows its progress until
//! it is done (`GET /v1/_backup`).

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
    let started = client
        .start_backup(to)
        .await
        .map_err(|e| crate::remote::failure(&args.url, &e))?;
    eprintln!("backup of {} into {to} started", args.url);
    let mut shown = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        let status = client
            .backup_status()
            .await
            .map_err(|e| crate::remote::failure(&args.url, &e))?
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
            _ => {
                return Err(format!(
                    "the backup failed: {}",
                    status["error"]["message"].as_str().unwrap_or("no reason given")
                ));
            }
        }
    }
}
