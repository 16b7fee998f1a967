//! The server's log: which lines (`TRUCE_LOG`), in which format
//! (`--log-format`), and [`Throttle`] for a warning that every request or
//! accept would repeat while a fault lasts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::LogFormat;

/// Lines of one warning logged at most once per this many ms.
pub const THROTTLE_MS: u64 = 1000;

/// One warning that a fault repeats for every request or accept (a failed
/// storage answers every write 503; with no files left every accept fails):
/// logged once per [`THROTTLE_MS`] at most, each line saying how many were
/// left out before it, so that the log says what happened and how often
/// without thousands of lines a second burying the rest. `/metrics`
/// counts every 5xx answer (failed accepts only in these lines).
pub struct Throttle {
    started: Instant,
    /// Milliseconds since `started` before which no line is logged.
    next_ms: AtomicU64,
    left_out: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// `Some(n)`: log this one, saying `n` were left out since the last;
    /// `None`: leave it out (counted for the next).
    pub fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + THROTTLE_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The log filter: `TRUCE_LOG` (tracing's directives: `warn`,
/// `info,truce::http=debug`, …), `info` when it is unset or empty. One that
/// does not parse is refused rather than ignored, and so is a bare word that
/// is not a level (`verbose`, `warning`): tracing reads it as a module name,
/// leaving every other line out. An operator who asked for more lines to
/// find a fault would otherwise look at a quiet log and conclude there were
/// none.
fn log_filter(value: Option<std::ffi::OsString>) -> Result<tracing_subscriber::EnvFilter, String> {
    // The binary's crate is `truce`, as the engine's is: `truce::http` is
    // the request lines' module, `truce=debug` would add the engine's.
    const HINT: &str = "give a level (off, error, warn, info, debug, trace), optionally with levels per module, \
                        e.g. TRUCE_LOG=info,truce::http=debug for a line per request";
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(tracing_subscriber::EnvFilter::new("info"));
    };
    let text = value
        .to_str()
        .ok_or_else(|| format!("TRUCE_LOG={value:?} is not UTF-8: {HINT}"))?;
    let bare_word = text.split(',').map(str::trim).find(|directive| {
        !directive.contains(['=', '['])
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
    });
    if let Some(word) = bare_word {
        return Err(format!(
            "TRUCE_LOG={text:?}: {word:?} is not a level ({HINT}; for every line of one module, MODULE=trace)"
        ));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("TRUCE_LOG={text:?} is not a log filter ({e}): {HINT}"))
}

/// Logs to standard error, in `format`, what `TRUCE_LOG` asks for. A
/// `TRUCE_LOG` that means nothing is the error, returned once the log is set
/// up with the default filter, so that the reason the server stops can be
/// logged in `format` like any other.
pub fn init(format: LogFormat) -> Result<(), String> {
    let (filter, refused) = match log_filter(std::env::var_os("TRUCE_LOG")) {
        Ok(filter) => (filter, None),
        Err(why) => (tracing_subscriber::EnvFilter::new("info"), Some(why)),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log line that cannot be written (its reader gone: `truce serve 2>&1
    // | logger` after the logger exits) is dropped: reporting it would panic
    // on the same stream, and a log line must never stop the server.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    refused.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_once_a_period_and_counts_the_rest() {
        let throttle = Throttle::default();
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(THROTTLE_MS + 10));
        assert_eq!(throttle.admit(), Some(5));
        assert_eq!(throttle.admit(), None);
    }

    #[test]
    fn log_filters_are_levels_or_directives() {
        let filter = |v: &str| log_filter(Some(v.into()));
        for good in [
            "warn",
            "WARN",
            "info,truce::http=debug",
            "info,truce_server=debug",
            "off",
            "3",
            "[span]=debug",
        ] {
            assert!(filter(good).is_ok(), "{good}");
        }
        assert!(
            log_filter(None).is_ok() && filter("").is_ok(),
            "unset or empty: the default"
        );
        for bad in ["verbose", "info,warning", "truce=loud", "info,["] {
            let why = filter(bad).err().unwrap_or_else(|| panic!("{bad} taken"));
            assert!(why.contains("TRUCE_LOG=info,truce::http=debug"), "{why}");
        }
    }
}
