//! The short, seeded torture run (`docs/reliability.md`): the real `truce serve`
//! under every workload at once, SIGKILLs, pauses and each storage failpoint,
//! its history checked. Any anomaly fails the test; the history, server log and
//! report stay in `target/tmp/torture-short/` for a look.
//!
//! The binary under test is this package's `truce`, which test builds compile
//! with the `failpoints` feature (see Cargo.toml). Longer, randomized
//! campaigns: `scripts/soak`.

use std::path::Path;
use std::time::Duration;

use truce_torture::nemesis::{FAILPOINTS, NemesisKind};
use truce_torture::workloads::Workload;
use truce_torture::{Config, run};

/// The schedule's seed: fixed, so a failure here replays with
/// `truce-torture --seed 8 --duration 60s --fault-interval 3s..6s`.
const SEED: u64 = 8;

#[test]
fn short_seeded_torture_run_finds_no_anomaly() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("torture-short");
    let config = Config {
        seed: SEED,
        duration: Duration::from_secs(60),
        workloads: Workload::ALL.to_vec(),
        nemeses: vec![NemesisKind::Kill, NemesisKind::Pause, NemesisKind::Failpoint],
        fault_interval: (Duration::from_secs(3), Duration::from_secs(6)),
        server_bin: env!("CARGO_BIN_EXE_truce").into(),
        out: Some(out.clone()),
        clients: truce_torture::CLIENTS_DEFAULT,
        request_timeout: Duration::from_secs(2),
    };
    let report = run(&config).expect("the torture run");
    eprint!("{}", report.summary());
    assert!(
        report.passed(),
        "anomalies (history in {}):\n{}",
        out.display(),
        report.summary()
    );
    for failpoint in FAILPOINTS {
        assert!(
            report
                .nemesis
                .failpoints_fired
                .get(failpoint)
                .copied()
                .unwrap_or(0)
                >= 1,
            "failpoint {failpoint} never fired: is `truce` built with the failpoints feature?\n{}",
            report.summary()
        );
    }
    assert!(report.nemesis.kills >= 4, "{}", report.summary());
    assert!(report.nemesis.pauses >= 1, "{}", report.summary());
    // The replicas lag longer than their collection keeps tombstones, so the
    // purge's refusal (and the reset after it) must have been exercised.
    assert!(report.purge_refusals >= 1, "{}", report.summary());
    for (workload, counts) in &report.workloads {
        assert!(counts.ok >= 50, "{workload} did too little: {}", report.summary());
    }
}
