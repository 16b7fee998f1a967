//! `truce check`: the engine's consistency check (`truce::engine::check`) on a
//! stopped server's data directory, or on a backup (`truce backup` takes one
//! of a running server: checking it checks the database as of that commit).
//! Reads only; opening recovers the journal as `truce serve` would.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use truce::CheckReport;
use truce::engine::MarkCheck;
use truce::storage::{FjallStorage, Storage, StorageError};

use crate::config::CheckArgs;
use crate::recount::{database_dir, open_error};

/// How often the progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The report as `truce check` prints it.
fn report_json(report: &CheckReport) -> Value {
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|p| json!({"kind": p.kind, "space": p.space, "detail": p.detail}))
        .collect();
    json!({
        "seq": report.seq,
        "clean": report.is_clean(),
        "checked": {
            "documents": report.documents,
            "changes": report.changes,
            "index_entries": report.index_entries,
            "idempotency": report.idempotency,
            "outbox": report.outbox,
            "counter_groups": report.counter_groups,
        },
        "counters_skipped": report
            .counters_skipped
            .iter()
            .map(|s| json!({"counter": s.counter, "kind": s.kind, "detail": s.detail}))
            .collect::<Vec<_>>(),
        "problems_total": report.problems_total,
        "problems": problems,
    })
}

/// Damage the storage itself reports, which stops the check where it is
/// (a table or the journal that fails its checksum, a manifest that does not
/// decode: `storage_damaged`; fewer commits than the commit mark records:
/// `commits_lost`): a report with that one problem, and exit 1: damage
/// found, not a check that could not look.
fn storage_damaged(data: &std::path::Path, kind: &str, why: &str) -> Result<bool, String> {
    let report = json!({
        "seq": null,
        "clean": false,
        "problems_total": 1,
        "problems": [{"kind": kind, "space": null, "detail": why}],
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    let restore = match kind {
        "commits_lost" => "", // the reason says what to do
        _ => ". Restore it from a backup",
    };
    eprintln!(
        "truce: {} is damaged, and the check stopped there: {why}{restore}",
        data.display()
    );
    Ok(false)
}

/// Opens the directory, checks it, prints the report; whether nothing was
/// wrong (exit 0, else 1), or why it could not check (exit 2: a monitoring
/// script tells "damaged" from "could not look").
pub fn run(args: &CheckArgs) -> Result<bool, String> {
    let data = database_dir(&args.data)?;
    let storage = match FjallStorage::open(&data) {
        Ok(storage) => storage,
        Err(StorageError::Corrupt(why)) => return storage_damaged(&data, "storage_damaged", &why),
        Err(e) => {
            return Err(open_error(
                &data,
                &truce::Error::Storage(e),
                "Stop it, or check a backup of it: truce backup --to DIR, then truce check --data DIR",
            ));
        }
    };
    if let Some(copy) = storage.torn_tail_dropped() {
        eprintln!(
            "truce: opening {} cut the journal's last batch, which was not whole (after a crash, a write \
             torn before it was acknowledged; after a clean stop, damage); the journal as it was is \
             kept at {}",
            data.display(),
            copy.display()
        );
    }
    match truce::engine::lost_commits(&data, &storage) {
        Ok(MarkCheck::Held) => {}
        Ok(MarkCheck::Unreadable) => eprintln!(
            "truce: the commit mark {} is not whole, so whether commits were lost was not checked (the \
             server writes it anew at its next start)",
            data.join(truce::engine::COMMIT_MARK_FILE).display()
        ),
        Ok(MarkCheck::Lost(why)) => return storage_damaged(&data, "commits_lost", &why),
        Err(truce::Error::Storage(StorageError::Corrupt(why))) => {
            return storage_damaged(&data, "storage_damaged", &why);
        }
        Err(e) => return Err(format!("the check could not read {}: {e}", data.display())),
    }
    let view = storage
        .snapshot()
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let started = Instant::now();
    let mut shown = Instant::now();
    let checked = truce::engine::check(&*view, &mut |progress| {
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            eprintln!("checking {}: {} entries so far", progress.space, progress.entries);
        }
    });
    let report = match checked {
        Ok(report) => report,
        Err(truce::Error::Storage(StorageError::Corrupt(why))) => {
            return storage_damaged(&data, "storage_damaged", &why);
        }
        Err(e) => return Err(format!("the check could not read {}: {e}", data.display())),
    };
    let text = serde_json::to_string_pretty(&report_json(&report)).map_err(|e| e.to_string())?;
    println!("{text}");
    let entries =
        report.documents + report.changes + report.index_entries + report.idempotency + report.outbox;
    if report.is_clean() {
        eprintln!(
            "{} holds no damage: {entries} entries and {} counter groups checked in {:.1} s, up to seq {}",
            data.display(),
            report.counter_groups,
            started.elapsed().as_secs_f64(),
            report.seq
        );
        Ok(true)
    } else {
        let listed = if report.problems.len() as u64 == report.problems_total {
            "the report above lists them".to_string()
        } else {
            format!("the report above lists the first {}", report.problems.len())
        };
        let found = match report.problems_total {
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        eprintln!("truce: {found} found in {} ({listed})", data.display());
        Ok(false)
    }
}
