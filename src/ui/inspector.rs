//! The selected image, large, with the session's foreground masks and point matches as overlays.

use egui::{Color32, Pos2, Rect, Sense, Stroke, Ui, Vec2};

use super::cells::Cells;
use super::grid::title;
use crate::consist::mask::Grid;
use crate::consist::plan::Target;
use crate::overlay::{similarity_color, subsample};

/// Which overlays are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlays {
    pub mask: bool,
    pub identity_mask: bool,
    pub matches: bool,
}

impl Default for Overlays {
    fn default() -> Self {
        Self {
            mask: true,
            identity_mask: false,
            matches: false,
        }
    }
}

/// Match lines drawn at most, to stay readable.
const MAX_LINES: usize = 160;

fn token_rect(image: Rect, grid: Grid, token: usize) -> Rect {
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

fn token_at(image: Rect, grid: Grid, pos: Pos2) -> Option<usize> {
    if !image.contains(pos) {
        return None;
    }
    let c = ((pos.x - image.min.x) / image.width() * grid.cols as f32) as usize;
    let r = ((pos.y - image.min.y) / image.height() * grid.rows as f32) as usize;
    Some(r.min(grid.rows - 1) * grid.cols + c.min(grid.cols - 1))
}

fn tint_mask(ui: &Ui, image: Rect, grid: Grid, mask: &[bool]) {
    let red = Color32::from_rgba_unmultiplied(255, 0, 0, 90);
    for (t, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        ui.painter()
            .rect_filled(token_rect(image, grid, t), 0.0, red);
    }
}

/// Draws a texture fitted into `size`, returning where it went.
fn show_image(ui: &mut Ui, texture: &egui::TextureHandle, size: Vec2) -> Rect {
    let t = texture.size_vec2();
    let scale = (size.x / t.x).min(size.y / t.y);
    let (rect, _) = ui.allocate_exact_size(t * scale, Sense::hover());
    ui.painter().image(
        texture.id(),
        rect,
        Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
        Color32::WHITE,
    );
    rect
}

pub fn inspector_ui(ui: &mut Ui, cells: &Cells, selected: Target, overlays: &mut Overlays) {
    ui.horizontal_wrapped(|ui| {
        ui.heading(title(selected));
        ui.checkbox(&mut overlays.mask, "Show foreground mask");
        ui.checkbox(&mut overlays.identity_mask, "Show identity mask");
        ui.add_enabled(
            selected != Target::Identity,
            egui::Checkbox::new(&mut overlays.matches, "Show point matches"),
        );
    });
    let Some((cell, rendered)) = cells
        .get(selected)
        .and_then(|c| c.image.as_ref().map(|i| (c, i)))
    else {
        ui.label("Not rendered yet.");
        return;
    };
    let Some(texture) = &cell.texture else {
        return;
    };
    let identity = cells
        .get(Target::Identity)
        .and_then(|c| Some((c.texture.as_ref()?, c.image.as_ref()?)));
    let side_by_side = selected != Target::Identity
        && (overlays.matches || overlays.identity_mask)
        && identity.is_some();
    let avail = ui.available_size();
    let size = match side_by_side {
        true => Vec2::new(avail.x / 2.0 - 8.0, avail.y - 30.0),
        false => Vec2::new(avail.x, avail.y - 30.0),
    };
    let mut panel_rect = Rect::NOTHING;
    let mut identity_rect = Rect::NOTHING;
    ui.horizontal_top(|ui| {
        panel_rect = show_image(ui, texture, size);
        if side_by_side {
            if let Some((id_tex, _)) = identity {
                identity_rect = show_image(ui, id_tex, size);
            }
        }
    });
    if overlays.mask {
        tint_mask(ui, panel_rect, rendered.grid, &rendered.mask);
    }
    if let Some((_, id_img)) = identity {
        if overlays.identity_mask {
            let rect = if side_by_side {
                identity_rect
            } else {
                panel_rect
            };
            if side_by_side || selected == Target::Identity {
                tint_mask(ui, rect, id_img.grid, &id_img.mask);
            }
        }
        if overlays.matches && side_by_side {
            if let Some(m) = &rendered.matches {
                let pairs = m.triples();
                let hovered = ui
                    .ctx()
                    .pointer_hover_pos()
                    .and_then(|p| token_at(panel_rect, rendered.grid, p));
                for &(c, j, sim) in &subsample(&pairs, MAX_LINES) {
                    let a = token_rect(panel_rect, rendered.grid, c).center();
                    let b = token_rect(identity_rect, id_img.grid, j).center();
                    let rgb = similarity_color(sim);
                    ui.painter().line_segment(
                        [a, b],
                        Stroke::new(1.0, Color32::from_rgb(rgb[0], rgb[1], rgb[2])),
                    );
                }
                // Hovering a panel token highlights its own match, sampled or not.
                if let Some(&(c, j, sim)) = hovered.and_then(|h| pairs.iter().find(|p| p.0 == h)) {
                    let a = token_rect(panel_rect, rendered.grid, c);
                    let b = token_rect(identity_rect, id_img.grid, j);
                    ui.painter().rect_stroke(
                        a,
                        0.0,
                        Stroke::new(2.0, Color32::WHITE),
                        egui::StrokeKind::Inside,
                    );
                    ui.painter().rect_stroke(
                        b,
                        0.0,
                        Stroke::new(2.0, Color32::WHITE),
                        egui::StrokeKind::Inside,
                    );
                    ui.painter()
                        .line_segment([a.center(), b.center()], Stroke::new(3.0, Color32::WHITE));
                    ui.label(format!(
                        "token {c} -> identity token {j}, similarity {sim:.2}"
                    ));
                }
                ui.label(format!(
                    "{} matches (showing {})",
                    pairs.len(),
                    pairs.len().min(MAX_LINES)
                ));
            }
        }
    }
    ui.label(format!("rendered in {:.1} s", rendered.seconds));
}
