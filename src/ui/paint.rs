//! Painting an identity's foreground mask in the inspector: an add or a remove brush over the
//! identity's full-size token grid, drawn on its picture, and a reset to the computed mask.
//!
//! A stroke paints into a working copy, shown as it grows, and is handed to the app when the
//! pointer is released: each stroke is one undo step, and the plan is not made again on every
//! frame of it.

use egui::{Color32, Rect, Sense, Stroke, Ui};

use super::token_grid::{token_at, token_rect};
use crate::consist::mask::Grid;
use crate::project::painted_mask::PaintedMask;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brush {
    Add,
    Remove,
}

/// What a finished stroke or the reset button asks of the identity's painted mask.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskEdit {
    Paint(PaintedMask),
    Reset,
}

/// Largest brush side, in tokens.
const MAX_SIZE: usize = 9;

/// The brush and the stroke in progress.
pub struct PaintTool {
    /// Paint mode: the identity's picture takes strokes instead of showing matches.
    pub on: bool,
    pub brush: Brush,
    /// Side of the square brush, in tokens.
    pub size: usize,
    stroke: Option<Vec<bool>>,
}

impl Default for PaintTool {
    fn default() -> Self {
        Self {
            on: false,
            brush: Brush::Add,
            size: 1,
            stroke: None,
        }
    }
}

impl PaintTool {
    /// The tool bar; `painted`: the identity has a painted mask (which reset takes away).
    pub fn bar(&mut self, ui: &mut Ui, painted: bool) -> Option<MaskEdit> {
        let mut edit = None;
        ui.horizontal_wrapped(|ui| {
            ui.checkbox(&mut self.on, "Paint mask").on_hover_text(
                "Paint the identity's foreground over its tokens; every panel matches and borrows within it.",
            );
            if self.on {
                ui.radio_value(&mut self.brush, Brush::Add, "Add");
                ui.radio_value(&mut self.brush, Brush::Remove, "Remove");
                ui.add(egui::Slider::new(&mut self.size, 1..=MAX_SIZE).text("Brush size"));
            }
            if ui
                .add_enabled(painted, egui::Button::new("Reset to computed"))
                .on_hover_text("Use the mask the identity's attention gives again.")
                .clicked()
            {
                edit = Some(MaskEdit::Reset);
            }
        });
        if !self.on {
            self.stroke = None;
        }
        edit
    }

    /// The mask to show while a stroke is in progress.
    pub fn stroke(&self) -> Option<&[bool]> {
        self.stroke.as_deref()
    }

    /// Takes strokes over `rect`, where the identity is shown under `grid`, painting onto
    /// `start` (its mask now); the finished stroke once the pointer is released.
    pub fn paint(
        &mut self,
        ui: &mut Ui,
        rect: Rect,
        grid: Grid,
        start: &[bool],
    ) -> Option<MaskEdit> {
        let response = ui
            .interact(
                rect,
                ui.scope_id().with("paint mask"),
                Sense::click_and_drag(),
            )
            .on_hover_cursor(egui::CursorIcon::Crosshair);
        response.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::Canvas, true, "Identity mask painting")
        });
        let pointer = response.hover_pos().or(response.interact_pointer_pos());
        let centre = pointer.and_then(|p| token_at(rect, grid, p));
        if let Some(t) = centre {
            let outline = brush_rect(rect, grid, t, self.size);
            ui.painter().rect_stroke(
                outline,
                0.0,
                Stroke::new(1.5, Color32::WHITE),
                egui::StrokeKind::Inside,
            );
        }
        if response.is_pointer_button_down_on() {
            if let Some(t) = centre {
                let mask = self.stroke.get_or_insert_with(|| start.to_vec());
                let value = self.brush == Brush::Add;
                for token in brush_tokens(grid, t, self.size) {
                    mask[token] = value;
                }
            }
            return None;
        }
        let stroke = self.stroke.take()?;
        Some(MaskEdit::Paint(PaintedMask::from_tokens(grid, &stroke)))
    }
}

/// The tokens of a `size` x `size` square brush around `centre`, inside the grid.
fn brush_tokens(grid: Grid, centre: usize, size: usize) -> impl Iterator<Item = usize> {
    let (r0, c0) = (centre / grid.cols, centre % grid.cols);
    let span = |x: usize, len: usize| {
        let start = x as isize - ((size.max(1) - 1) / 2) as isize;
        let end = (start + size as isize).min(len as isize);
        (start.max(0) as usize)..(end.max(0) as usize)
    };
    let cols = span(c0, grid.cols);
    span(r0, grid.rows).flat_map(move |r| cols.clone().map(move |c| r * grid.cols + c))
}

/// Where the brush around `centre` covers `rect`.
fn brush_rect(rect: Rect, grid: Grid, centre: usize, size: usize) -> Rect {
    brush_tokens(grid, centre, size)
        .map(|t| token_rect(rect, grid, t))
        .fold(Rect::NOTHING, |a, b| a.union(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brush_is_a_square_clipped_at_the_edges() {
        let grid = Grid { rows: 4, cols: 5 };
        let mut three: Vec<usize> = brush_tokens(grid, 6, 3).collect();
        three.sort();
        assert_eq!(three, [0, 1, 2, 5, 6, 7, 10, 11, 12]);
        let corner: Vec<usize> = brush_tokens(grid, 0, 3).collect();
        assert_eq!(corner, [0, 1, 5, 6]);
        assert_eq!(brush_tokens(grid, 19, 1).collect::<Vec<_>>(), [19]);
    }
}
