//! A text report of where the grid, its cells and the inspector are on screen, written for the
//! end-to-end run (`--layout-report FILE`), which clicks a cell by it and checks the screenshot
//! against it. One line per rectangle, in physical pixels of the window: `NAME x0 y0 x1 y1`.

use egui::Rect;
use std::path::PathBuf;

use super::grid::{title, GridLayout};

pub struct LayoutReport {
    path: PathBuf,
    written: String,
}

impl LayoutReport {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            written: String::new(),
        }
    }

    /// Writes the report when it differs from the last one written.
    pub fn update(
        &mut self,
        window: Rect,
        layout: &GridLayout,
        inspector: Option<Rect>,
        pixels_per_point: f32,
    ) -> anyhow::Result<()> {
        let report = describe(window, layout, inspector, pixels_per_point);
        if report != self.written {
            crate::atomic_file::write_atomic(&self.path, report.as_bytes())?;
            self.written = report;
        }
        Ok(())
    }
}

fn describe(window: Rect, layout: &GridLayout, inspector: Option<Rect>, ppp: f32) -> String {
    let line = |name: &str, r: Rect| {
        let px = |v: f32| (v * ppp).round() as i64;
        format!(
            "{name} {} {} {} {}\n",
            px(r.min.x),
            px(r.min.y),
            px(r.max.x),
            px(r.max.y)
        )
    };
    let mut report = line("window", window) + &line("viewport", layout.viewport);
    if let Some(r) = inspector {
        report += &line("inspector", r);
    }
    for &(target, rect) in &layout.cells {
        report += &line(&title(target).to_lowercase().replace(' ', "-"), rect);
    }
    report
}
