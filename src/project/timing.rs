//! Panel timing: when each panel starts, the running time, and timecodes as HH:MM:SS:FF.

use super::model::Project;

/// Frames per second of the timecodes (the film rate storyboards are timed against).
pub const TIMECODE_FPS: u32 = 24;

/// The time each panel starts at, in seconds, and the running time after the last.
pub fn starts(project: &Project) -> (Vec<f64>, f64) {
    let mut at = 0.0;
    let starts = project
        .panels
        .iter()
        .map(|p| {
            let start = at;
            at += p.duration;
            start
        })
        .collect();
    (starts, at)
}

/// `seconds` as `HH:MM:SS:FF` at [`TIMECODE_FPS`], rounded to the nearest frame.
pub fn timecode(seconds: f64) -> String {
    let frames = (seconds.max(0.0) * TIMECODE_FPS as f64).round() as u64;
    let fps = TIMECODE_FPS as u64;
    let (s, ff) = (frames / fps, frames % fps);
    format!("{:02}:{:02}:{:02}:{ff:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A duration for people: `2 s`, `1.5 s`.
pub fn seconds_label(seconds: f64) -> String {
    format!("{} s", (seconds * 100.0).round() / 100.0)
}

/// The panel on screen at `t` seconds: the last whose start is not after `t` (0 before the
/// first, the last one after the end).
pub fn panel_at(starts: &[f64], t: f64) -> usize {
    starts.partition_point(|&s| s <= t).saturating_sub(1)
}
