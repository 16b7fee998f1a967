//! `truce top`: a terminal view of a running server's conflicts, refreshed every
//! second — commit, conflict and retry rates from the totals of
//! `/v1/insights`, and the hot spots with their remedies.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::TopArgs;

/// Widest document or range shown; longer ones are cut with `…`.
const TARGET_CHARS_MAX: usize = 32;

/// How long a refresh waits for the server. The client's own timeout is
/// 30 s an attempt, retried, so a server that took the connection and never
/// answered (hung, or stopped by SIGSTOP) left the view frozen on its last
/// frame, or blank, for a minute and more.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until interrupted (or for `--iterations` refreshes).
pub fn run(args: &TopArgs) -> Result<(), String> {
    if !(args.interval > 0.0 && args.interval <= 3600.0) {
        return Err("--interval is more than 0 and at most 3600 seconds".into());
    }
    crate::remote::block_on(watch(args))
}

async fn watch(args: &TopArgs) -> Result<(), String> {
    let client = crate::remote::client(
        &args.url,
        args.key.as_deref(),
        &args.tls,
        truce_client::SOURCE_DEFAULT,
    )?;
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, Value)> = None;
    // Since when the server has not answered, once it had.
    let mut lost: Option<Instant> = None;
    let mut shown = 0u64;
    loop {
        let asked = client.insights(Duration::from_secs(args.window), args.limit);
        // The report, or why there is none: whether the failure may pass as
        // the server comes back, and what it was.
        let answer = match tokio::time::timeout(REFRESH_TIMEOUT, asked).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err((passing(&e), crate::remote::failure(&args.url, &e))),
            Err(_) => Err((
                true,
                format!("{}: no answer within {} s", args.url, REFRESH_TIMEOUT.as_secs()),
            )),
        };
        let frame = match answer {
            Ok(report) => {
                let now = Instant::now();
                let frame = render(
                    &args.url,
                    &report,
                    previous.as_ref().map(|(at, v)| (now - *at, v)),
                );
                previous = Some((now, report));
                lost = None;
                Some(frame)
            }
            // A server that answered before and is gone or failing now is
            // being restarted, or will be: watched through it, not left.
            // One that never answered, or refuses the key, is a mistake to
            // say at once.
            Err((true, cause)) if shown > 0 => {
                let first = lost.is_none();
                let since = *lost.get_or_insert_with(Instant::now);
                // Its totals start again from zero: no rates across it.
                previous = None;
                // Once, where frames scroll; redrawn on a terminal.
                (tty || first).then(|| {
                    format!(
                        "truce top — {url}: no answer for {:.0} s, still asking — {cause}",
                        since.elapsed().as_secs_f64(),
                        url = args.url,
                    )
                })
            }
            Err((_, cause)) => return Err(cause),
        };
        if let Some(frame) = frame {
            let mut out = std::io::stdout().lock();
            let written = if tty {
                // Clear the screen and go home, then draw the frame.
                write!(out, "\x1b[2J\x1b[H")
            } else if shown > 0 {
                writeln!(out, "---")
            } else {
                Ok(())
            }
            .and_then(|()| writeln!(out, "{frame}"))
            .and_then(|()| out.flush());
            match written {
                Ok(()) => {}
                // Whoever read the frames is gone (`truce top | head`): done,
                // rather than asking the server for frames no one sees.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(format!("cannot write to the terminal: {e}")),
            }
        }
        shown += 1;
        if args.iterations > 0 && shown >= args.iterations {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
    }
}

/// Whether `error` may pass as the server comes back: no answer at all, or
/// one that asks to come back later (429, 5xx).
fn passing(error: &truce_client::ClientError) -> bool {
    match error {
        truce_client::ClientError::Transport { .. } => true,
        _ => error.status().is_some_and(|s| s == 429 || s >= 500),
    }
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(chars - 1).collect();
        s.push('…');
        s
    }
}

/// One frame: the rates since the previous report (`None` on the first) and
/// the hot-spot table.
fn render(url: &str, report: &Value, previous: Option<(Duration, &Value)>) -> String {
    let rate = |path: &[&str]| match previous {
        Some((elapsed, before)) if elapsed.as_secs_f64() > 0.0 => {
            ((number(report, path) - number(before, path)) / elapsed.as_secs_f64()).max(0.0)
        }
        _ => 0.0,
    };
    let mut lines = vec![
        format!(
            "truce top — {url} — window {} s (hot spots over the last {:.0} s)",
            number(report, &["window_s"]),
            number(report, &["covered_s"])
        ),
        String::new(),
        format!(
            "commits/s {:>9.1}   conflicts/s {:>8.1}   retries/s {:>8.1}   permanent failures {:>6}",
            rate(&["totals", "commits"]),
            rate(&["totals", "conflicts"]),
            rate(&["totals", "retries"]),
            number(report, &["totals", "permanent_failures"])
        ),
        format!(
            "no-ops/s  {:>9.1}   skipped/s   {:>8.1}   overwrites  {:>8}   outbox {} entries, oldest {:.1} s",
            rate(&["totals", "noops"]),
            rate(&["totals", "skipped"]),
            number(report, &["totals", "overwrites"]),
            number(report, &["totals", "outbox", "entries"]),
            number(report, &["totals", "outbox", "oldest_age_ms"]) / 1000.0
        ),
        String::new(),
        format!(
            "{:<16} {:<33} {:>9} {:<20} {}",
            "COLLECTION", "DOCUMENT / RANGE", "EVENTS/S", "TOP SOURCE", "REMEDY"
        ),
    ];
    let spots = report
        .get("hot_spots")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if spots.is_empty() {
        lines.push("(no hot spots in this window)".into());
    }
    for spot in &spots {
        let text = |key: &str| spot.get(key).and_then(Value::as_str).unwrap_or("");
        let target = match spot.get("document").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => format!("range {}", text("range")),
        };
        let source = spot
            .get("sources")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .map(|s| {
                let name = s
                    .get("source")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or("(none)");
                format!(
                    "{} ({})",
                    name,
                    s.get("events").and_then(Value::as_u64).unwrap_or(0)
                )
            })
            .unwrap_or_default();
        lines.push(format!(
            "{:<16} {:<33} {:>9.1} {:<20} {}",
            cut(text("collection"), 16),
            cut(&target, TARGET_CHARS_MAX),
            number(spot, &["rate_per_s"]),
            cut(&source, 20),
            spot.pointer("/remedy/code").and_then(Value::as_str).unwrap_or("")
        ));
    }
    if let Some(top) = spots.first() {
        lines.push(String::new());
        lines.push(format!(
            "hottest: {}",
            top.pointer("/remedy/advice")
                .and_then(Value::as_str)
                .unwrap_or("")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_rates_and_hot_spots_with_remedies() {
        let before = serde_json::json!({"totals": {"commits": 100, "conflicts": 10}});
        let now = serde_json::json!({
            "window_s": 60, "covered_s": 42,
            "totals": {"commits": 300, "conflicts": 30, "permanent_failures": 2,
                       "outbox": {"entries": 0, "oldest_age_ms": null}},
            "hot_spots": [{"collection": "accounts", "document": "a-very-long-document-identifier-that-is-cut",
                           "rate_per_s": 2.5, "sources": [{"source": "billing", "events": 9}],
                           "remedy": {"code": "use_update_operators", "advice": "send $inc"}}]
        });
        let frame = render("http://x", &now, Some((Duration::from_secs(2), &before)));
        assert!(frame.contains("commits/s     100.0"), "{frame}");
        assert!(frame.contains("conflicts/s     10.0"), "{frame}");
        assert!(frame.contains("accounts"), "{frame}");
        assert!(frame.contains("a-very-long-document-identifier…"), "{frame}");
        assert!(frame.contains("billing (9)"), "{frame}");
        assert!(frame.contains("use_update_operators"), "{frame}");
        assert!(frame.contains("hottest: send $inc"), "{frame}");
        let empty = render("http://x", &serde_json::json!({"hot_spots": []}), None);
        assert!(empty.contains("(no hot spots in this window)"));
    }
}
