//! The range of every number a user can type, in one place, so that a project file, the command
//! line and the app refuse the same values with the same message, before any model loads.

use anyhow::{bail, Result};
use std::ops::RangeInclusive;

/// Image sides in pixels: FLUX packs 2x2 patches of the 8x downsampled latent, so sides are
/// multiples of 16; beyond 4096 (16.7 megapixels) FLUX.1 was never trained and attention alone
/// outgrows any card.
pub const SIDE: RangeInclusive<usize> = 16..=4096;
/// Denoising steps.
pub const STEPS: RangeInclusive<usize> = 1..=1000;
/// FLUX.1-dev's distilled guidance (3.5 in the reference).
pub const GUIDANCE: RangeInclusive<f64> = 0.0..=100.0;
/// Seconds a panel is on screen: at least one frame at 24 fps, at most ten minutes.
pub const DURATION: RangeInclusive<f64> = (1.0 / 24.0)..=600.0;
/// Panels per row on a sheet or a PDF page.
pub const COLUMNS: RangeInclusive<usize> = 1..=12;
/// Rows of panels on a PDF page.
pub const ROWS: RangeInclusive<usize> = 1..=12;
/// Side of a mask's erosion or dilation kernel (odd; 1 = off).
pub const KERNEL: RangeInclusive<usize> = 1..=31;
/// Characters a storyboard keeps consistent: each adds an identity run and its share of every
/// panel's borrowed keys.
pub const MAX_CHARACTERS: usize = 4;
/// "Every n-th single block" strides of the recipe; FLUX.1 has 38 single blocks.
pub const LAYER_EVERY: RangeInclusive<usize> = 1..=64;

fn range<T: std::fmt::Display>(r: &RangeInclusive<T>) -> String {
    format!("{} to {}", r.start(), r.end())
}

/// `field` must lie in `r`.
pub fn check<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    r: &RangeInclusive<T>,
) -> Result<()> {
    if !r.contains(&value) {
        bail!("{field} must be from {}, found {value}", range(r));
    }
    Ok(())
}

/// An image side: in [`SIDE`] and a multiple of 16.
pub fn check_side(field: &str, value: usize) -> Result<()> {
    if !SIDE.contains(&value) || !value.is_multiple_of(16) {
        bail!(
            "{field} must be a multiple of 16 from {}, found {value}",
            range(&SIDE)
        );
    }
    Ok(())
}

/// Guidance: finite and in [`GUIDANCE`] (NaN fails the range test too).
pub fn check_guidance(field: &str, value: f64) -> Result<()> {
    if !GUIDANCE.contains(&value) {
        bail!(
            "{field} must be a number from {}, found {value}",
            range(&GUIDANCE)
        );
    }
    Ok(())
}

/// A panel's duration in seconds: in [`DURATION`] (NaN and infinity fail the range test).
pub fn check_duration(field: &str, value: f64) -> Result<()> {
    if !DURATION.contains(&value) {
        bail!(
            "{field} must be a number of seconds from {:.3} to {}, found {value}",
            DURATION.start(),
            DURATION.end()
        );
    }
    Ok(())
}

/// What a user is told of a prompt longer than T5 reads (`limit` prompt tokens): the command
/// line prints it and the app shows it beside the prompt.
pub fn prompt_too_long(dropped: usize, limit: usize) -> String {
    format!("longer than the {limit} tokens T5 reads: the last {dropped} tokens are dropped")
}

/// The memory the operating system can still give this process (Linux's `MemAvailable`), in
/// bytes; `None` where that cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}
