//! Pictures made from rendered panels: contact sheets and the
//! storyboard export (captioned sheet, PDF and numbered panels).

pub mod animatic;
pub mod board;
pub mod pdf;
pub mod sheet;
pub mod storyboard;
pub mod text;

use anyhow::{ensure, Result};
use image::RgbImage;

use crate::project::model::Project;

/// Every export takes one image (or a placeholder's `None`) per panel, in the panels' order.
fn check_one_image_a_panel(project: &Project, images: &[Option<RgbImage>]) -> Result<()> {
    ensure!(
        images.len() == project.panels.len(),
        "the project has {} panels but {} images were given",
        project.panels.len(),
        images.len()
    );
    Ok(())
}

/// `(width, height)` a panel is rendered at, without panicking on an unvalidated scene index,
/// so that a placeholder has the shape the image will have.
fn panel_shape(project: &Project, i: usize) -> (u32, u32) {
    let scene = project
        .panels
        .get(i)
        .and_then(|p| project.scenes.get(p.scene));
    let w = scene
        .and_then(|s| s.width)
        .unwrap_or(project.settings.width);
    let h = scene
        .and_then(|s| s.height)
        .unwrap_or(project.settings.height);
    (w.max(1) as u32, h.max(1) as u32)
}
