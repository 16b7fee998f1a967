//! The progress bar on stderr (indicatif): how far into its measured time a
//! run is and how many operations it has finished. Hidden when stderr is not a
//! terminal, so logs and tests get only the summary lines.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often indicatif may redraw: often enough to look alive, rarely enough
/// to cost the load generator nothing measurable.
const REDRAWS_PER_S: u8 = 4;

/// One run's bar: position = milliseconds measured so far.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for a run of `duration` labelled `label`.
    pub fn new(label: &str, duration: Duration) -> Progress {
        let bar = ProgressBar::with_draw_target(
            Some(duration.as_millis() as u64),
            ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_S),
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix:<28} [{bar:30}] {elapsed:>4} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress { bar }
    }

    /// Shows `done` operations after `elapsed`.
    pub fn update(&self, elapsed: Duration, done: u64) {
        self.bar.set_position(elapsed.as_millis() as u64);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        self.bar.set_message(format!("{done} ops, {rate:.0}/s"));
    }

    /// Removes the bar (the caller prints the summary).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
