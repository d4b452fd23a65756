//! The desktop app (egui/eframe): state in `app`, one small view per module.

pub mod animatic;
pub mod app;
pub mod cells;
pub mod dialogs;
pub mod document;
pub mod editor;
pub mod grid;
pub mod inspector;
pub mod layout_report;
pub mod paint;
pub mod picture;
pub mod setup;
mod token_grid;

use std::path::PathBuf;

/// Opens the window (and `project`, if given); returns when it closes.
pub fn run(
    project: Option<PathBuf>,
    model: Option<PathBuf>,
    render_on_start: bool,
    layout_report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_title("charaboard"),
        ..Default::default()
    };
    eframe::run_native(
        "charaboard",
        options,
        Box::new(move |cc| {
            let start = app::StartOptions {
                project,
                model,
                render_on_start,
                dialogs: dialogs::Dialogs::native(),
                settings: crate::app_settings::AppSettings::load(),
                persist: true,
                layout_report,
            };
            Ok(Box::new(app::CharaboardApp::new(
                Some(cc.egui_ctx.clone()),
                start,
            )))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}
