//! The smoke run of `truce-bench peers`: every workload of issue 7 for about a
//! second per system with 4 clients, through the built binaries, so the
//! harness cannot rot. PostgreSQL and Redis are run when they are installed
//! and must then appear in the results; when they are missing the bench skips
//! them (or, as root, installs them). The figures are not judged, only that
//! every system did work, without errors, and passed its post-run check.

use std::process::Command;

mod common;
use common::{postgres_installed, runs, server_binary};

#[test]
fn every_workload_runs_against_every_available_peer() {
    let out = common::scratch_dir();
    let (postgres, redis) = (postgres_installed(), runs("redis-server"));
    let output = Command::new(env!("CARGO_BIN_EXE_truce-bench"))
        .args([
            "peers",
            "--json",
            "--duration",
            "1s",
            "--clients",
            "4",
            "--docs",
            "2000",
        ])
        .arg("--server-bin")
        .arg(server_binary())
        .arg("--out")
        .arg(out.path())
        .arg("--dir")
        .arg(out.path())
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the bench failed\n{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("machine: "),
        "no machine line first:\n{stdout}"
    );
    // Both fsync probes ran and measured something.
    let machine = stdout.lines().next().unwrap_or_default();
    let rates: Vec<f64> = machine
        .split(" syncs/s")
        .filter_map(|before| before.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        rates.len() == 2 && rates.iter().all(|rate| *rate > 0.0) && machine.contains("into a sparse one"),
        "two fsync probes in the machine line: {machine}"
    );
    // The wake-up probe ran: a round trip takes time, its p99 no less.
    let wake: Vec<f64> = ["round trip p50 ", ", p99 "]
        .iter()
        .filter_map(|label| machine.split(label).nth(1)?.split(" µs").next()?.parse().ok())
        .collect();
    assert!(
        wake.len() == 2 && wake[0] > 0.0 && wake[0] <= wake[1] && machine.contains(" cores ("),
        "the CPU and the wake-up probe in the machine line: {machine}"
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("valid JSON"))
        .collect();
    let row = |workload: &str, system: &str, mode: &str| {
        rows.iter()
            .find(|r| r["workload"] == workload && r["system"] == system && r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {workload} {system} {mode} row in\n{stdout}"))
    };
    // Truce's versioned writes are read back and summed, as PostgreSQL's are
    // (they used to have no check at all).
    assert!(
        stdout.contains("truce versioned-writes: check ok (sum of (_version - 1) over "),
        "{stdout}"
    );
    let mut expected = Vec::new();
    for workload in ["hot-counter", "versioned-writes", "contended-rmw", "heartbeats"] {
        for mode in ["closed", "open"] {
            expected.push((workload, "truce", mode));
            if postgres {
                expected.push((workload, "postgres", mode));
            }
        }
    }
    if redis {
        for workload in ["hot-counter", "contended-rmw"] {
            expected.extend([(workload, "redis", "closed"), (workload, "redis", "open")]);
        }
    }
    expected.extend([
        ("embedded-hot-counter", "truce", "closed"),
        ("embedded-hot-counter", "sqlite", "closed"),
        ("embedded-hot-counter-pipelined", "truce", "closed"),
        ("embedded-hot-counter-pipelined", "sqlite", "closed"),
        // Latency under load for the synchronous embedded row too.
        ("embedded-hot-counter", "truce", "open"),
        ("embedded-hot-counter", "sqlite", "open"),
    ]);
    for (workload, system, mode) in expected {
        let r = row(workload, system, mode);
        assert!(
            r["ops_s"].as_f64().is_some_and(|ops| ops > 0.0),
            "no operations: {r}"
        );
        assert_eq!(r["errors"], 0, "errors: {r}");
        assert_eq!(r["check_ok"], true, "check failed: {r}");
        if mode == "open" {
            // Held to its schedule: half the peak, never more than asked.
            let target = r["target_ops_s"].as_f64().expect("an open loop's rate");
            let ops = r["ops_s"].as_f64().unwrap_or_default();
            assert!(ops <= target * 1.05 + 1.0, "{ops} ops/s at {target}/s: {r}");
        }
        if system != "truce" && mode == "closed" {
            assert!(r["ratio_truce_over_this"].as_f64().is_some(), "no ratio: {r}");
        }
        if !workload.starts_with("embedded-hot-counter") && system != "postgres" {
            assert!(r["peak_memory_kib"].as_u64().is_some(), "no peak memory: {r}");
        }
        if !workload.starts_with("embedded-hot-counter") {
            // The cache-line probe before and after the run: a figure each, or
            // null where it was not measured (one core, or a busy machine).
            let line = r["line_round_trip_ns"]
                .as_array()
                .expect("line_round_trip_ns pair");
            assert!(
                line.len() == 2
                    && line
                        .iter()
                        .all(|ns| ns.is_null() || ns.as_f64().is_some_and(|ns| ns > 0.0)),
                "{r}"
            );
            // How much of the load generator's and the server's CPU was the
            // kernel's: a share where the CPU was measured at all.
            for (cores, share) in [
                ("client_cpu_cores", "client_kernel_share"),
                ("server_cpu_cores", "server_kernel_share"),
            ] {
                let measured = r[cores].as_f64().is_some_and(|c| c > 0.0);
                let share = r[share].as_f64();
                assert!(
                    !measured || share.is_some_and(|s| (0.0..=1.0).contains(&s)),
                    "{r}"
                );
            }
        }
        if !workload.starts_with("embedded-hot-counter") && system == "truce" {
            // What bounds a figure: the server's CPU by thread, and its committer.
            let threads = r["server_thread_cpu_cores"].as_object().expect("thread split");
            for name in ["truce-http", "truce-committer"] {
                assert!(
                    threads.get(name).is_some_and(|c| c.is_f64()),
                    "no {name} CPU: {r}"
                );
            }
        }
        if system == "truce" {
            // Its committer, read from the server's `/metrics` or, in process,
            // from the engine's counters.
            assert!(
                r["committer_groups_per_s"].as_f64().is_some_and(|g| g > 0.0),
                "no committer figures: {r}"
            );
            let size = r["committer_group_size"].as_f64().expect("group size");
            let share = r["committer_store_share"].as_f64().expect("store share");
            assert!(size >= 1.0 && (0.0..=1.0).contains(&share), "{r}");
        } else {
            assert!(
                r["committer_groups_per_s"].is_null(),
                "a committer outside Truce's server: {r}"
            );
        }
    }
    assert!(stdout.contains("truce/this"), "no table:\n{stdout}");
    let results = std::fs::read_to_string(out.path().join("results.json")).expect("results.json written");
    assert_eq!(results.lines().count(), rows.len());
    // The machine the results came from, beside them, as the machine line has it.
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("machine.json")).expect("machine.json written"),
    )
    .expect("machine.json is JSON");
    assert!(
        written["cpu"]
            .as_str()
            .is_some_and(|cpu| machine.contains(&format!("cores ({cpu})")))
            && written["wake_round_trip_p50_us"].as_f64() == Some(wake[0])
            && written["syncs_per_s"].as_f64() == Some(rates[0]),
        "machine.json {written} against the machine line {machine}"
    );
    // The same figure, rounded once each way (half away from zero in the JSON,
    // half to even in the line).
    let line_ns = &written["line_round_trip_ns"];
    let shown = machine
        .split_once("cache line) round trip ")
        .map(|(_, rest)| rest.split(' ').next().unwrap_or_default());
    assert!(
        match (line_ns.as_f64(), shown) {
            (Some(ns), Some(shown)) => shown.parse::<f64>().is_ok_and(|s| (s - ns).abs() <= 1.0),
            (None, Some(shown)) => line_ns.is_null() && shown == "not",
            (_, None) => false,
        },
        "machine.json {written} against the machine line {machine}"
    );
    if stdout.contains("charts: ") {
        for workload in [
            "hot-counter",
            "versioned-writes",
            "contended-rmw",
            "heartbeats",
            "embedded-hot-counter",
            "embedded-hot-counter-pipelined",
        ] {
            let png = std::fs::read(out.path().join(format!("{workload}.png"))).expect("a chart");
            assert!(png.starts_with(b"\x89PNG"), "{workload}.png is not a PNG");
        }
    } else {
        assert!(stdout.contains("charts not drawn: no TTF font"), "{stdout}");
    }
}
