//! Pictures made from rendered panels: overlays for inspection and contact sheets.

pub mod files;
pub mod overlay;
pub mod sheet;
