//! The terminal's progress bar for denoising steps.

use indicatif::{ProgressBar, ProgressStyle};

pub fn step_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] step {pos}/{len} {elapsed_precise} ({per_sec})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
