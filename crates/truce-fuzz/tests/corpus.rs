//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/seed-*` and
//! `regression-*`) through every target, so the normal test run checks that no
//! input that once crashed or hung does so again — without libFuzzer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// An input that takes longer than this hangs.
const INPUT_TIMEOUT_MS: u64 = 10_000;

static PANICKED: AtomicBool = AtomicBool::new(false);

#[test]
fn every_kept_input_runs_without_panic_or_hang() {
    // A panic on any thread (the committer's included) fails the test, as
    // libFuzzer's abort-on-panic would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut ran = 0;
    for (target, run) in truce_fuzz::TARGETS {
        let dir = corpus.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with("seed-") || name.starts_with("regression-")
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no seeds for {target}");
        for input in inputs {
            let data = std::fs::read(&input).expect("read an input");
            let (done, finished) = mpsc::channel();
            std::thread::spawn(move || {
                run(&data);
                let _ = done.send(());
            });
            finished
                .recv_timeout(Duration::from_millis(INPUT_TIMEOUT_MS))
                .unwrap_or_else(|_| panic!("{target}: {} panicked or hung", input.display()));
            assert!(
                !PANICKED.load(Ordering::SeqCst),
                "{target}: {} panicked",
                input.display()
            );
            ran += 1;
        }
    }
    assert!(ran >= truce_fuzz::TARGETS.len());
}
