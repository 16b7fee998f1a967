//! The rows of the peers comparison: one per system, workload and pace; the
//! table with the ratios and the targets, and the JSON.

use std::fmt::Write as _;

use super::System;
use super::committer::Committer;
use crate::cpu;
use crate::stats::{Outcome, Recorder, json_float, json_object, per_second};

/// Truce's peak resident memory must stay under this in every workload (issue 7).
pub const TRUCE_MEMORY_KIB_MAX: u64 = 256 * 1024;

/// How a row's clients were paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Each client sends when its previous answer came back: the peak.
    Closed,
    /// A fixed arrival rate (50 % of the system's closed-loop peak).
    Open {
        /// The arrival rate asked for, per second.
        target_ops_s: f64,
    },
}

impl Mode {
    /// `closed` or `open`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
        }
    }
}

/// One system's run of one workload.
pub struct Row {
    /// The workload's name.
    pub workload: &'static str,
    /// The system measured.
    pub system: System,
    /// Closed or open loop.
    pub mode: Mode,
    /// Clients (connections or threads).
    pub clients: usize,
    /// Successful operations per second.
    pub ops_s: f64,
    /// Latency percentiles, µs (open loop: from the intended send time).
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Failed operations.
    pub errors: u64,
    /// Conflicts: retries of a read-modify-write, refused versioned writes.
    pub conflicts: u64,
    /// Successful operations that the dedup rule skipped (heartbeats).
    pub skipped: u64,
    /// The server's peak memory in KiB (None: in process, or unknown).
    pub peak_memory_kib: Option<u64>,
    /// What `peak_memory_kib` is.
    pub memory_kind: &'static str,
    /// Cores used during the run.
    pub usage: cpu::Usage,
    /// Truce's committer during the run (network rows of Truce only).
    pub committer: Option<Committer>,
    /// The post-run check.
    pub check: Result<String, String>,
    /// Operations finished in each second.
    pub per_second: Vec<u64>,
    /// The first error's text.
    pub first_error: Option<String>,
}

impl Row {
    /// A row from a run's figures; memory and check are filled in later.
    pub fn new(
        workload: &'static str,
        system: System,
        mode: Mode,
        clients: usize,
        totals: &Recorder,
        elapsed: std::time::Duration,
    ) -> Row {
        Row {
            workload,
            system,
            mode,
            clients,
            ops_s: per_second(totals.ok, elapsed),
            p50_us: totals.percentile_us(0.50),
            p99_us: totals.percentile_us(0.99),
            p999_us: totals.percentile_us(0.999),
            errors: totals.errors,
            conflicts: totals.conflicts,
            skipped: totals.skipped,
            peak_memory_kib: None,
            memory_kind: "",
            usage: cpu::Usage::default(),
            committer: None,
            check: Ok("no check".into()),
            per_second: Vec::new(),
            first_error: totals.first_error.clone(),
        }
    }

    /// A row from an embedded (in-process, threads) run.
    pub fn embedded(
        workload: &'static str,
        system: System,
        mode: Mode,
        threads: usize,
        outcome: &Outcome,
    ) -> Row {
        Row {
            check: outcome.check.clone(),
            memory_kind: "in process",
            ..Row::new(workload, system, mode, threads, &outcome.totals, outcome.elapsed)
        }
    }

    /// `closed` or `open`.
    pub fn mode_name(&self) -> &'static str {
        self.mode.name()
    }

    /// The row as one JSON object.
    pub fn json(&self, truce_over_this: Option<f64>) -> String {
        let target = match self.mode {
            Mode::Closed => serde_json::Value::Null,
            Mode::Open { target_ops_s } => json_float(target_ops_s, 0),
        };
        let cores = |v: Option<f64>| v.map_or(serde_json::Value::Null, |c| json_float(c, 2));
        let share = |v: Option<f64>| v.map_or(serde_json::Value::Null, |s| json_float(s, 3));
        let committer = |figure: fn(&Committer) -> serde_json::Value| {
            self.committer.as_ref().map_or(serde_json::Value::Null, figure)
        };
        json_object(&[
            ("bench", "peers".into()),
            ("workload", self.workload.into()),
            ("system", self.system.name().into()),
            ("mode", self.mode_name().into()),
            ("clients", self.clients.into()),
            ("ops_s", json_float(self.ops_s, 0)),
            ("target_ops_s", target),
            ("p50_us", self.p50_us.into()),
            ("p99_us", self.p99_us.into()),
            ("p999_us", self.p999_us.into()),
            ("errors", self.errors.into()),
            ("conflicts", self.conflicts.into()),
            ("skipped", self.skipped.into()),
            ("peak_memory_kib", self.peak_memory_kib.into()),
            ("memory_kind", self.memory_kind.into()),
            ("client_cpu_cores", cores(self.usage.own)),
            ("server_cpu_cores", cores(self.usage.watched)),
            ("other_cpu_cores", cores(self.usage.others)),
            ("client_kernel_share", share(self.usage.own_kernel_share())),
            ("server_kernel_share", share(self.usage.watched_kernel_share())),
            (
                "line_round_trip_ns",
                [self.usage.line_ns.0, self.usage.line_ns.1]
                    .map(|ns| ns.map(f64::round))
                    .as_slice()
                    .into(),
            ),
            (
                "server_thread_cpu_cores",
                self.usage
                    .threads
                    .iter()
                    .map(|(name, c)| (name.clone(), json_float(*c, 2)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            ),
            (
                "committer_groups_per_s",
                committer(|c| json_float(c.groups_per_s(), 0)),
            ),
            (
                "committer_group_size",
                committer(|c| json_float(c.group_size(), 2)),
            ),
            (
                "committer_store_share",
                committer(|c| json_float(c.store_share(), 3)),
            ),
            ("check_ok", self.check.is_ok().into()),
            ("per_second", self.per_second.clone().into()),
            (
                "ratio_truce_over_this",
                truce_over_this.map_or(serde_json::Value::Null, |r| json_float(r, 2)),
            ),
        ])
    }
}

/// The target of issue 7 for Truce over `peer` in `workload`, if it sets one.
pub fn target(workload: &str, peer: System) -> Option<f64> {
    match (workload, peer) {
        ("hot-counter", System::Postgres) => Some(25.0),
        ("hot-counter", System::Redis) => Some(1.0),
        ("versioned-writes", System::Postgres) => Some(3.0),
        ("contended-rmw", System::Postgres) => Some(4.0),
        ("heartbeats", System::Postgres) => Some(5.0),
        ("embedded-hot-counter" | "embedded-hot-counter-pipelined", System::Sqlite) => Some(50.0),
        _ => None,
    }
}

/// Truce's closed-loop ops/s over this row's, for a closed-loop peer row.
pub fn ratio(rows: &[Row], row: &Row) -> Option<f64> {
    if row.mode != Mode::Closed || row.system == System::Truce {
        return None;
    }
    let truce = rows
        .iter()
        .find(|r| r.workload == row.workload && r.system == System::Truce && r.mode == Mode::Closed)?;
    (row.ops_s > 0.0).then(|| truce.ops_s / row.ops_s)
}

/// The table: every row, the ratio Truce/peer and whether the target is met.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<21} {:<9} {:<6} {:>10} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>9} {:>12}",
        "workload",
        "system",
        "mode",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "errors",
        "conflicts",
        "skipped",
        "peak MiB",
        "truce/this"
    );
    for row in rows {
        let memory = row
            .peak_memory_kib
            .map_or_else(|| "-".to_string(), |kib| format!("{:.1}", kib as f64 / 1024.0));
        let ratio = match (ratio(rows, row), target(row.workload, row.system)) {
            (Some(r), Some(t)) => format!("{r:.2}× {}", if r >= t { "ok" } else { "MISS" }),
            (Some(r), None) => format!("{r:.2}×"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<21} {:<9} {:<6} {:>10.0} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>9} {:>12}",
            row.workload,
            row.system.name(),
            row.mode_name(),
            row.ops_s,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.errors,
            row.conflicts,
            row.skipped,
            memory,
            ratio
        );
    }
    for row in rows {
        if let Some(error) = &row.first_error {
            let _ = writeln!(out, "first error {} {}: {error}", row.workload, row.system.name());
        }
        if let Err(what) = &row.check {
            let _ = writeln!(
                out,
                "check {} {}: FAILED ({what})",
                row.workload,
                row.system.name()
            );
        }
        if row.system == System::Truce && row.peak_memory_kib.is_some_and(|kib| kib > TRUCE_MEMORY_KIB_MAX) {
            let _ = writeln!(
                out,
                "memory {}: truce's peak resident memory is over {} MiB",
                row.workload,
                TRUCE_MEMORY_KIB_MAX / 1024
            );
        }
    }
    let _ = writeln!(
        out,
        "targets (issue 7): hot-counter ≥ 25× postgres and ≥ 1.0× redis; versioned-writes ≥ 3× postgres; \
         contended-rmw ≥ 4× postgres, no failed operation; heartbeats ≥ 5× postgres; \
         embedded-hot-counter (synchronous and pipelined) ≥ 50× sqlite; truce peak RSS < {} MiB",
        TRUCE_MEMORY_KIB_MAX / 1024
    );
    out
}
