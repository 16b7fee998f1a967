//! Counting and reporting: per-thread recorders, one system's outcome, and the
//! side-by-side comparison printed as a table and as one JSON line.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histograms track, in µs (one minute); slower operations
/// are clamped to it rather than dropped.
const LATENCY_MAX_US: u64 = 60_000_000;

/// What one worker thread saw: a latency histogram (µs) and its tallies.
pub struct Recorder {
    latency_us: Histogram<u64>,
    /// Operations that did what was asked (acknowledged increments, successful
    /// versioned writes).
    pub ok: u64,
    /// Operations that failed with an error.
    pub errors: u64,
    /// Versioned writes refused because another writer got there first; for
    /// retried transactions, attempts that failed validation.
    pub conflicts: u64,
    /// Attempts in all, where an operation may take several (retried
    /// transactions); 0 where every operation is one attempt.
    pub attempts: u64,
    /// Successful operations that a dedup rule skipped (heartbeats): counted
    /// in `ok` too.
    pub skipped: u64,
    /// The first error seen, to say what the errors were.
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            conflicts: 0,
            attempts: 0,
            skipped: 0,
            first_error: None,
        }
    }
}

impl Recorder {
    /// Records the latency of one finished operation (whatever its result).
    pub fn latency(&mut self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        self.latency_us.saturating_record(us);
    }

    /// Adds another thread's figures to these.
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        self.attempts += other.attempts;
        self.skipped += other.skipped;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Counts one failed operation and remembers the first error's text.
    pub fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// The latency at quantile `q` (0.5 = median), in µs; 0 when nothing was recorded.
    pub fn percentile_us(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_quantile(q)
        }
    }
}

/// One system's run of one workload.
pub struct Outcome {
    /// `truce` or `sqlite`.
    pub system: &'static str,
    /// From the moment every worker was ready until the last one finished
    /// (pipelined runs include draining their outstanding writes).
    pub elapsed: Duration,
    /// Every thread's figures merged.
    pub totals: Recorder,
    /// The post-run sanity check: `Ok(what was verified)` or `Err(what is wrong)`.
    pub check: Result<String, String>,
}

impl Outcome {
    /// Successful operations per second.
    pub fn ops_per_s(&self) -> f64 {
        per_second(self.totals.ok, self.elapsed)
    }
}

/// `count` per second over `elapsed`; 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// What every workload's result offers `main`: a summary line and its verdict.
pub trait Report {
    /// The machine-readable summary: one JSON object on one line.
    fn json_line(&self) -> String;
    /// Whether every sanity check passed.
    fn checks_passed(&self) -> bool;
}

/// One JSON object on one line with the keys in the order given (serde_json's
/// own maps sort them).
pub fn json_object(fields: &[(&str, serde_json::Value)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(*key)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A float rounded to `digits` decimals as a JSON number (`null` if not finite).
pub fn json_float(value: f64, digits: i32) -> serde_json::Value {
    let scale = 10f64.powi(digits);
    serde_json::Number::from_f64((value * scale).round() / scale).map_or(serde_json::Value::Null, Into::into)
}

/// Truce against its peer on one workload.
pub struct Comparison {
    /// The workload's name, e.g. `hot-counter`.
    pub bench: &'static str,
    /// Worker threads on each side.
    pub threads: usize,
    /// Writes each Truce thread kept outstanding (1 = synchronous).
    pub in_flight: usize,
    /// Truce's run.
    pub truce: Outcome,
    /// SQLite's run.
    pub peer: Outcome,
}

impl Comparison {
    /// Truce's throughput over the peer's; infinite if the peer did nothing.
    pub fn ratio(&self) -> f64 {
        let peer = self.peer.ops_per_s();
        if peer > 0.0 {
            self.truce.ops_per_s() / peer
        } else {
            f64::INFINITY
        }
    }

    /// The human-readable table, the sanity checks and the ratio line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>9} {:>9} {:>9} {:>8} {:>10}",
            "system", "ops/s", "p50 µs", "p99 µs", "p999 µs", "errors", "conflicts"
        );
        for outcome in [&self.truce, &self.peer] {
            let t = &outcome.totals;
            let _ = writeln!(
                out,
                "{:<8} {:>12.1} {:>9} {:>9} {:>9} {:>8} {:>10}",
                outcome.system,
                outcome.ops_per_s(),
                t.percentile_us(0.50),
                t.percentile_us(0.99),
                t.percentile_us(0.999),
                t.errors,
                t.conflicts
            );
        }
        for outcome in [&self.truce, &self.peer] {
            if let Some(error) = &outcome.totals.first_error {
                let _ = writeln!(out, "first error {}: {error}", outcome.system);
            }
        }
        for outcome in [&self.truce, &self.peer] {
            let _ = match &outcome.check {
                Ok(what) => writeln!(out, "check {}: ok ({what})", outcome.system),
                Err(what) => writeln!(out, "check {}: FAILED ({what})", outcome.system),
            };
        }
        let _ = writeln!(out, "ratio truce/{} = {:.1}×", self.peer.system, self.ratio());
        out
    }
}

impl Report for Comparison {
    fn checks_passed(&self) -> bool {
        self.truce.check.is_ok() && self.peer.check.is_ok()
    }

    /// Keys in a fixed order (docs/benchmarks.md lists them).
    fn json_line(&self) -> String {
        let ratio = self.ratio();
        let ratio = if ratio.is_finite() {
            format!("{ratio:.2}")
        } else {
            "null".into()
        };
        format!(
            concat!(
                r#"{{"bench":"{}","truce_ops_s":{:.0},"peer":"{}","peer_ops_s":{:.0},"ratio":{},"#,
                r#""threads":{},"in_flight":{},"truce_p50_us":{},"truce_p99_us":{},"#,
                r#""peer_p50_us":{},"peer_p99_us":{}}}"#
            ),
            self.bench,
            self.truce.ops_per_s(),
            self.peer.system,
            self.peer.ops_per_s(),
            ratio,
            self.threads,
            self.in_flight,
            self.truce.totals.percentile_us(0.50),
            self.truce.totals.percentile_us(0.99),
            self.peer.totals.percentile_us(0.50),
            self.peer.totals.percentile_us(0.99),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(system: &'static str, ok: u64, secs: u64, latencies_us: &[u64]) -> Outcome {
        let mut totals = Recorder {
            ok,
            ..Recorder::default()
        };
        for &us in latencies_us {
            totals.latency(Duration::from_micros(us));
        }
        Outcome {
            system,
            elapsed: Duration::from_secs(secs),
            totals,
            check: Ok("fine".into()),
        }
    }

    fn comparison() -> Comparison {
        Comparison {
            bench: "hot-counter",
            threads: 8,
            in_flight: 1,
            truce: outcome("truce", 50_000, 10, &[100, 200, 300]),
            peer: outcome("sqlite", 2_000, 4, &[1_000, 2_000, 3_000, 4_000]),
        }
    }

    #[test]
    fn throughput_and_ratio() {
        let c = comparison();
        assert_eq!(c.truce.ops_per_s(), 5_000.0);
        assert_eq!(c.peer.ops_per_s(), 500.0);
        assert_eq!(c.ratio(), 10.0);
        assert!(c.table().contains("ratio truce/sqlite = 10.0×"));
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn merged_percentiles() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for us in 1..=50 {
            a.latency(Duration::from_micros(us));
        }
        for us in 51..=100 {
            b.latency(Duration::from_micros(us));
        }
        b.error("busy");
        b.error("later");
        a.merge(&b);
        assert_eq!(a.percentile_us(0.5), 50);
        assert_eq!(a.percentile_us(0.99), 99);
        assert_eq!(a.errors, 2);
        assert_eq!(a.first_error.as_deref(), Some("busy"));
        assert_eq!(Recorder::default().percentile_us(0.5), 0);
    }

    #[test]
    fn json_line_has_the_required_keys_in_order() {
        let line = comparison().json_line();
        assert!(!line.contains('\n'));
        let keys = [
            "bench",
            "truce_ops_s",
            "peer",
            "peer_ops_s",
            "ratio",
            "threads",
            "in_flight",
            "truce_p50_us",
            "truce_p99_us",
            "peer_p50_us",
            "peer_p99_us",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                line.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("no {k} in {line}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "keys out of order: {line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value.as_object().map(|m| m.len()), Some(keys.len()));
        assert_eq!(value["bench"], "hot-counter");
        assert_eq!(value["peer"], "sqlite");
        assert_eq!(value["truce_ops_s"], 5000);
        assert_eq!(value["ratio"], 10.0);
        assert_eq!(value["threads"], 8);
        assert_eq!(value["truce_p50_us"], 200);
    }

    #[test]
    fn json_objects_keep_their_order() {
        let line = json_object(&[
            ("z", 1.into()),
            ("a", "x".into()),
            ("rate", json_float(0.123_456, 3)),
            ("inf", json_float(f64::INFINITY, 2)),
        ]);
        assert_eq!(line, r#"{"z":1,"a":"x","rate":0.123,"inf":null}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
    }

    #[test]
    fn failed_check_shows_in_the_table() {
        let mut c = comparison();
        c.peer.check = Err("n = 3, acknowledged 4".into());
        assert!(c.truce.check.is_ok());
        assert!(!c.checks_passed());
        assert!(c.table().contains("check sqlite: FAILED (n = 3, acknowledged 4)"));
    }
}
