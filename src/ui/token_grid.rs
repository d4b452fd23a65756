//! Where an image's tokens lie on the screen: the inspector's overlays and the mask brush
//! share this geometry.

use egui::{Pos2, Rect, Vec2};

use crate::consist::mask::Grid;

/// The screen rectangle of `token` of `grid` over `image`.
pub(super) fn token_rect(image: Rect, grid: Grid, token: usize) -> Rect {
    let (r, c) = (token / grid.cols, token % grid.cols);
    let size = Vec2::new(
        image.width() / grid.cols as f32,
        image.height() / grid.rows as f32,
    );
    Rect::from_min_size(
        image.min + Vec2::new(c as f32 * size.x, r as f32 * size.y),
        size,
    )
}

/// The token of `grid` under `pos` over `image`, if `pos` is on it.
pub(super) fn token_at(image: Rect, grid: Grid, pos: Pos2) -> Option<usize> {
    if !image.contains(pos) {
        return None;
    }
    let c = ((pos.x - image.min.x) / image.width() * grid.cols as f32) as usize;
    let r = ((pos.y - image.min.y) / image.height() * grid.rows as f32) as usize;
    Some(r.min(grid.rows - 1) * grid.cols + c.min(grid.cols - 1))
}
