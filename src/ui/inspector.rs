//! The selected image, large, with the session's foreground masks and point matches as overlays.

use egui::{Color32, Pos2, Rect, Sense, Stroke, Ui, Vec2};

use super::cells::Cells;
use super::grid::title;
use super::paint::{MaskEdit, PaintTool};
use super::token_grid::{token_at, token_rect};
use crate::consist::mask::Grid;
use crate::consist::plan::Target;
use crate::overlay::{owner_colour, similarity_color, subsample};
use crate::project::images::RenderedImage;
use crate::project::painted_mask::PaintedMask;
use crate::project::takes::{self, TakeChoice};
use image::Rgb;

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

/// Tints each character's tokens of `image` in the character's colour.
fn tint_mask(ui: &Ui, image: Rect, grid: Grid, owners: &[u8], characters: &[usize]) {
    for (t, &owner) in owners.iter().enumerate() {
        if let Some(Rgb([r, g, b])) = owner_colour(owner, characters) {
            let colour = Color32::from_rgba_unmultiplied(r, g, b, 90);
            ui.painter()
                .rect_filled(token_rect(image, grid, t), 0.0, colour);
        }
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

/// What the user asked of the selected image's takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeAction {
    /// Make this take the active one (left/right arrows step through them).
    Pick(u32),
    Delete(u32),
    /// Show this take beside the active one (`None`: stop comparing).
    Compare(Option<u32>),
    /// Render the image again from a new seed, as a new take.
    Reroll,
}

/// One line about a take: its number, quality, seed and when it was rendered.
pub fn take_summary(take: &RenderedImage) -> String {
    let seed = take
        .seed()
        .map_or_else(|| "noise file".to_string(), |s| format!("seed {s}"));
    let at = take.rendered_at.map_or_else(String::new, |t| {
        format!(
            ", {:02}:{:02}:{:02} UTC",
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60
        )
    });
    let size = take.key.as_ref().map_or_else(String::new, |k| {
        format!(", {}x{}, {} steps", k.width, k.height, k.steps)
    });
    format!(
        "take {} ({}, {seed}{size}{at})",
        take.take,
        take.quality.label()
    )
}

/// The take bar: step through the takes (buttons or left/right), compare, delete, re-roll.
fn takes_ui(
    ui: &mut Ui,
    cells: &Cells,
    selected: Target,
    choice: Option<&TakeChoice>,
    compare: Option<u32>,
) -> Option<TakeAction> {
    let cell = cells.get(selected)?;
    let shown = takes::visible(&cell.takes, choice);
    let active = cell.image.as_ref().map(|i| i.take);
    let at = shown.iter().position(|t| Some(t.take) == active);
    let mut action = None;
    let step = |d: isize| -> Option<TakeAction> {
        let k = at? as isize + d;
        let t = shown.get(usize::try_from(k).ok()?)?;
        Some(TakeAction::Pick(t.take))
    };
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(step(-1).is_some(), egui::Button::new("< Previous take"))
            .clicked()
        {
            action = step(-1);
        }
        ui.label(match at {
            Some(k) => format!("Take {} of {}", k + 1, shown.len()),
            None => format!("{} takes", shown.len()),
        });
        if ui
            .add_enabled(step(1).is_some(), egui::Button::new("Next take >"))
            .clicked()
        {
            action = step(1);
        }
        if !ui.ctx().egui_wants_keyboard_input() {
            let (left, right) = ui.input(|i| {
                (
                    i.key_pressed(egui::Key::ArrowLeft),
                    i.key_pressed(egui::Key::ArrowRight),
                )
            });
            if left {
                action = step(-1).or(action);
            }
            if right {
                action = step(1).or(action);
            }
        }
        let compared = compare.and_then(|c| shown.iter().find(|t| t.take == c));
        egui::ComboBox::from_label("Compare with")
            .selected_text(compared.map_or("none".into(), |t| format!("take {}", t.take)))
            .show_ui(ui, |ui| {
                if ui.selectable_label(compare.is_none(), "none").clicked() {
                    action = Some(TakeAction::Compare(None));
                }
                for t in shown.iter().filter(|t| Some(t.take) != active) {
                    if ui
                        .selectable_label(compare == Some(t.take), take_summary(t))
                        .clicked()
                    {
                        action = Some(TakeAction::Compare(Some(t.take)));
                    }
                }
            });
        if let Some(id) = active {
            if ui.button("Delete take").clicked() {
                action = Some(TakeAction::Delete(id));
            }
        }
        if ui
            .button("Re-roll")
            .on_hover_text("Render again from a new seed; the new picture is a new take.")
            .clicked()
        {
            action = Some(TakeAction::Reroll);
        }
    });
    if let Some(image) = &cell.image {
        ui.label(take_summary(image));
    }
    action
}

/// What the user asked in the inspector.
#[derive(Debug, Clone, PartialEq)]
pub enum InspectorAction {
    Take(TakeAction),
    /// Of the identity of the character.
    Mask(usize, MaskEdit),
}

/// The identities' painted masks and the brush that paints them.
pub struct Painting<'a> {
    pub tool: &'a mut PaintTool,
    /// Per character, its identity's painted mask.
    pub painted: Vec<Option<&'a PaintedMask>>,
    /// The identities' token grid at full size, where masks are painted.
    pub grid: Grid,
}

impl Painting<'_> {
    /// Character `k`'s identity mask as shown: the stroke in progress, else its painting.
    fn shown(&self, k: usize, editing: bool) -> Option<Vec<bool>> {
        match self.tool.stroke().filter(|_| editing) {
            Some(stroke) => Some(stroke.to_vec()),
            None => self
                .painted
                .get(k)
                .copied()
                .flatten()
                .map(PaintedMask::tokens),
        }
    }
}

/// The selected image with its overlays and its takes; `compare` is another take shown beside
/// it (its picture and texture); `scores` each of its characters' consistency line and what it
/// is made of.
#[allow(clippy::too_many_arguments)]
pub fn inspector_ui(
    ui: &mut Ui,
    cells: &Cells,
    selected: Target,
    overlays: &mut Overlays,
    choice: Option<&TakeChoice>,
    compare: Option<(&RenderedImage, &egui::TextureHandle)>,
    characters: &[usize],
    painting: Painting,
    scores: &[(String, String)],
) -> Option<InspectorAction> {
    let action = takes_ui(ui, cells, selected, choice, compare.map(|c| c.0.take));
    for (line, hover) in scores {
        ui.label(line).on_hover_text(hover);
    }
    let edit = inspect(ui, cells, selected, overlays, compare, characters, painting);
    action.map(InspectorAction::Take).or(edit)
}

/// `characters`: the storyboard's characters the selected image shows, in its prompt's order
/// (its mask's owners name them in that order).
fn inspect(
    ui: &mut Ui,
    cells: &Cells,
    selected: Target,
    overlays: &mut Overlays,
    compare: Option<(&RenderedImage, &egui::TextureHandle)>,
    characters: &[usize],
    painting: Painting,
) -> Option<InspectorAction> {
    ui.horizontal_wrapped(|ui| {
        ui.heading(title(selected));
        ui.checkbox(&mut overlays.mask, "Show foreground mask");
        ui.checkbox(&mut overlays.identity_mask, "Show identity mask");
        ui.add_enabled(
            matches!(selected, Target::Panel(_)),
            egui::Checkbox::new(&mut overlays.matches, "Show point matches"),
        );
    });
    let mut edit = None;
    // An identity (any character's) takes a painted mask.
    let painted_character = selected.character();
    if let Some(k) = painted_character {
        let painted = painting.painted.get(k).copied().flatten().is_some();
        edit = painting
            .tool
            .bar(ui, painted)
            .map(|e| InspectorAction::Mask(k, e));
    }
    let Some((cell, rendered)) = cells
        .get(selected)
        .and_then(|c| c.image.as_ref().map(|i| (c, i)))
    else {
        match cells.get(selected).and_then(|c| c.missing) {
            Some(n) => ui.label(format!(
                "Take {n} is missing: its files are gone. Choose another take or render again."
            )),
            None => ui.label("Not rendered yet."),
        };
        return edit;
    };
    let Some(texture) = &cell.texture else {
        return edit;
    };
    if let Some((other, other_tex)) = compare {
        let avail = ui.available_size();
        let size = Vec2::new(avail.x / 2.0 - 8.0, avail.y - 50.0);
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.label(format!("active: {}", take_summary(rendered)));
                show_image(ui, texture, size);
            });
            ui.vertical(|ui| {
                ui.label(take_summary(other));
                show_image(ui, other_tex, size);
            });
        });
        return edit;
    }
    // A panel's identities (those of its characters, in its order) stacked beside it; an
    // identity is its own.
    let identities: Vec<Option<(&egui::TextureHandle, &RenderedImage)>> = match selected {
        Target::Panel(_) => characters
            .iter()
            .map(|&k| {
                let cell = cells.get(Target::identity_of(k))?;
                Some((cell.texture.as_ref()?, cell.image.as_ref()?))
            })
            .collect(),
        _ => vec![],
    };
    let side_by_side =
        (overlays.matches || overlays.identity_mask) && identities.iter().any(Option::is_some);
    let avail = ui.available_size();
    let size = match side_by_side {
        true => Vec2::new(avail.x / 2.0 - 8.0, avail.y - 30.0),
        false => Vec2::new(avail.x, avail.y - 30.0),
    };
    let mut panel_rect = Rect::NOTHING;
    let mut identity_rects = vec![Rect::NOTHING; identities.len()];
    ui.horizontal_top(|ui| {
        panel_rect = show_image(ui, texture, size);
        if side_by_side {
            let each = Vec2::new(size.x, size.y / identities.len() as f32);
            ui.vertical(|ui| {
                for (rect, identity) in identity_rects.iter_mut().zip(&identities) {
                    if let Some((id_tex, _)) = identity {
                        *rect = show_image(ui, id_tex, each);
                    }
                }
            });
        }
    });
    if let Some(k) = painted_character.filter(|_| painting.tool.on) {
        // A stroke starts from the mask shown: the painting, else the computed mask at the
        // painting's grid.
        let start = painting.shown(k, false).unwrap_or_else(|| {
            PaintedMask::from_tokens(rendered.grid, &rendered.mask).at(painting.grid)
        });
        if let Some(stroke) = painting.tool.paint(ui, panel_rect, painting.grid, &start) {
            edit = Some(InspectorAction::Mask(k, stroke));
        }
    }
    let identity_shown = |k: usize| {
        painting
            .shown(k, painted_character == Some(k))
            .map(|mask| mask.into_iter().map(u8::from).collect::<Vec<u8>>())
    };
    if overlays.mask || painting.tool.on {
        match painted_character.and_then(identity_shown) {
            Some(owners) => tint_mask(ui, panel_rect, painting.grid, &owners, characters),
            None => tint_mask(ui, panel_rect, rendered.grid, &rendered.owners, characters),
        }
    }
    if overlays.identity_mask {
        if side_by_side {
            for (rect, identity) in identity_rects.iter().zip(&identities) {
                if let Some((_, id_img)) = identity {
                    let character = id_img.target.character().unwrap_or(0);
                    match identity_shown(character) {
                        Some(owners) => tint_mask(ui, *rect, painting.grid, &owners, &[character]),
                        None => tint_mask(ui, *rect, id_img.grid, &id_img.owners, &[character]),
                    }
                }
            }
        } else if let Some(k) = selected.character() {
            match identity_shown(k) {
                Some(owners) => tint_mask(ui, panel_rect, painting.grid, &owners, &[k]),
                None => tint_mask(ui, panel_rect, rendered.grid, &rendered.owners, characters),
            }
        }
    }
    if let (true, true, Some(m)) = (overlays.matches, side_by_side, &rendered.matches) {
        match_lines(
            ui,
            rendered,
            m.triples(),
            &identities,
            &identity_rects,
            panel_rect,
            characters,
        );
    }
    ui.label(format!("rendered in {:.1} s", rendered.seconds));
    edit
}

/// The panel's point matches as lines into its identities: a token's match goes into the
/// identity of the character that owns it, coloured by similarity with one character and in its
/// character's colour with several. Hovering a panel token highlights its own match.
fn match_lines(
    ui: &mut Ui,
    rendered: &RenderedImage,
    pairs: Vec<(usize, usize, f32)>,
    identities: &[Option<(&egui::TextureHandle, &RenderedImage)>],
    identity_rects: &[Rect],
    panel_rect: Rect,
    characters: &[usize],
) {
    // Where a match lands, and its colour.
    let end = |(c, j, sim): (usize, usize, f32)| -> Option<(Rect, Rect, Color32)> {
        let owner = rendered.owners.get(c).copied().unwrap_or(1);
        let k = usize::from(owner.max(1)) - 1;
        let (_, id_img) = identities.get(k)?.as_ref()?;
        let Rgb([r, g, b]) = match characters.len() {
            0 | 1 => similarity_color(sim),
            _ => owner_colour(owner, characters)?,
        };
        Some((
            token_rect(panel_rect, rendered.grid, c),
            token_rect(identity_rects[k], id_img.grid, j),
            Color32::from_rgb(r, g, b),
        ))
    };
    let hovered = ui
        .ctx()
        .pointer_hover_pos()
        .and_then(|p| token_at(panel_rect, rendered.grid, p));
    for &pair in &subsample(&pairs, MAX_LINES) {
        if let Some((a, b, colour)) = end(pair) {
            ui.painter()
                .line_segment([a.center(), b.center()], Stroke::new(1.0, colour));
        }
    }
    let highlighted = hovered.and_then(|h| pairs.iter().find(|p| p.0 == h));
    if let Some(&(c, j, sim)) = highlighted {
        if let Some((a, b, _)) = end((c, j, sim)) {
            for rect in [a, b] {
                ui.painter().rect_stroke(
                    rect,
                    0.0,
                    Stroke::new(2.0, Color32::WHITE),
                    egui::StrokeKind::Inside,
                );
            }
            ui.painter()
                .line_segment([a.center(), b.center()], Stroke::new(3.0, Color32::WHITE));
            ui.label(format!(
                "token {c} -> identity token {j}, similarity {sim:.2}"
            ));
        }
    }
    ui.label(format!(
        "{} matches (showing {})",
        pairs.len(),
        pairs.len().min(MAX_LINES)
    ));
}
