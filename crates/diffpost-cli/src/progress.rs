//! Terminal progress bars: sample-steps of a run, training steps.

use diffpost::run::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over a run's sample-steps.
pub struct Bar(pub ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, delta: u64) {
        self.0.inc(delta);
    }
}

/// The bar of a run of sampler `name`.
pub fn bar(name: &str) -> Bar {
    let b = ProgressBar::new(1);
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {percent}% eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(name.to_string());
    Bar(b)
}

/// The bar of a training run to `steps`, at `step` now; its message is the smoothed loss.
pub fn train_bar(steps: u64, step: u64) -> ProgressBar {
    let b = ProgressBar::new(steps);
    b.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} loss {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_position(step);
    b
}
