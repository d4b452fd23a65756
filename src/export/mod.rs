//! Pictures made from rendered panels: overlays for inspection, contact sheets, and the
//! storyboard export (captioned sheet, PDF and numbered panels).

pub mod files;
pub mod overlay;
pub mod pdf;
pub mod sheet;
pub mod storyboard;
pub mod text;
