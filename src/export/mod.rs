//! Pictures made from rendered panels: overlays for inspection and contact sheets.
