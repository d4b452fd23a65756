//! The frame grid: the identity first, then the panels, in rows as wide as the grid has room
//! for. Cells shrink to a minimum width before the grid wraps to fewer columns, so a cell is
//! never cut off at the side; rows that do not fit the height scroll.

use egui::{Color32, Rect, RichText, Sense, Ui, Vec2};

use super::cells::{CellState, Cells, Verdict};
use super::picture::PictureView;
use crate::consist::plan::{Plan, Target};
use crate::consist::score::Consistency;
use crate::project::model::Project;

/// Cells shrink to this outer width before the grid wraps to fewer columns.
pub const MIN_CELL_WIDTH: f32 = 150.0;
/// ...and grow to this at most, so a wide window shows more cells rather than huge ones.
const MAX_CELL_WIDTH: f32 = 260.0;
const GAP: f32 = 10.0;
/// The narrowest the grid's panel may be made: one whole cell plus the panel's margins and the
/// scroll bar. The side panels are capped so the grid always keeps this much.
pub const MIN_GRID_WIDTH: f32 = MIN_CELL_WIDTH + 40.0;
/// One width for selected and other cells' borders, so selecting a cell moves nothing.
const BORDER: f32 = 2.0;

/// Where the grid and its cells were drawn in the last frame, in points: for the layout tests
/// and the end-to-end run's report.
#[derive(Debug, Clone, PartialEq)]
pub struct GridLayout {
    /// What of the grid is visible.
    pub viewport: Rect,
    /// The whole grid: the viewport's width, as tall as its rows (reached by scrolling).
    pub grid: Rect,
    pub cells: Vec<(Target, Rect)>,
}

impl Default for GridLayout {
    /// Nothing drawn yet.
    fn default() -> Self {
        Self {
            viewport: Rect::NOTHING,
            grid: Rect::NOTHING,
            cells: Vec::new(),
        }
    }
}

/// What a look's buttons ask of its panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookAction {
    Approve,
    /// A new seed, and a new look.
    Reroll,
    Skip,
}

/// `(columns, outer cell width)` for a grid `available` points wide: as many columns as fit at
/// the minimum width, each widened to share the room (up to the maximum). Narrower than one
/// minimum cell, the one column takes what there is.
pub fn fit(available: f32) -> (usize, f32) {
    let columns = (((available + GAP) / (MIN_CELL_WIDTH + GAP)).floor() as usize).max(1);
    let width = (available - GAP * (columns - 1) as f32) / columns as f32;
    (columns, width.clamp(1.0, MAX_CELL_WIDTH))
}

pub fn title(target: Target) -> String {
    match target {
        Target::Identity => "Identity".into(),
        Target::IdentityOf(k) => format!("Identity {}", k + 1),
        Target::Panel(i) => format!("Panel {}", i + 1),
    }
}

/// How closely each character of a rendered panel follows its identity, in the panel's order
/// (see [`Consistency::of_cast`]): empty for an identity or a panel not rendered.
pub fn consistencies(cells: &Cells, project: &Project, target: Target) -> Vec<Option<Consistency>> {
    let Target::Panel(i) = target else {
        return vec![];
    };
    let Some(image) = cells.get(target).and_then(|c| c.image.as_ref()) else {
        return vec![];
    };
    let Some(matches) = image.matches.as_ref() else {
        return vec![];
    };
    let characters = match i < project.panels.len() {
        true => project.panel_characters(i),
        false => vec![],
    };
    let identity_masks: Vec<Option<&[bool]>> = characters
        .iter()
        .map(|&k| {
            let identity = cells.get(Target::identity_of(k))?.image.as_ref()?;
            Some(identity.mask.as_slice())
        })
        .collect();
    Consistency::of_cast(&image.owners, matches, &identity_masks)
}

/// The panel's most drifted character's consistency: what "Most drifted first" sorts by.
pub fn consistency(cells: &Cells, project: &Project, target: Target) -> Option<Consistency> {
    consistencies(cells, project, target)
        .into_iter()
        .flatten()
        .min_by(|a, b| a.score().total_cmp(&b.score()))
}

/// The line under a cell (and in the inspector) for each character's consistency: one
/// character's as it always read, several each with its name.
pub fn consistency_lines(
    cells: &Cells,
    project: &Project,
    target: Target,
) -> Vec<(String, String)> {
    let Target::Panel(i) = target else {
        return vec![];
    };
    let scores = consistencies(cells, project, target);
    if scores.is_empty() {
        return vec![];
    }
    let characters = project.panel_characters(i);
    scores
        .iter()
        .zip(&characters)
        .filter_map(|(c, &k)| {
            let c = c.as_ref()?;
            let who = match scores.len() {
                1 => String::new(),
                _ => format!(" {}", project.characters[k].name),
            };
            Some((
                format!(
                    "{}{who} consistency {:.0}%",
                    title(target),
                    100.0 * c.score()
                ),
                format!(
                    "foreground similarity {:.2} x identity matched {:.0}%",
                    c.similarity,
                    100.0 * c.coverage
                ),
            ))
        })
        .collect()
}

/// `plans` (the project's drafts and finals) are what the cells' takes are compared with to
/// tell which are stale, each take with the plan of its quality. With
/// `most_drifted_first`, the panels come in rising order of consistency (unscored last).
/// A look's buttons are shown where `look_action` is given (not while rendering), and say
/// there what was clicked.
#[allow(clippy::too_many_arguments)]
pub fn grid_ui(
    ui: &mut Ui,
    project: &Project,
    plans: &[&Plan],
    cells: &Cells,
    selected: &mut Option<Target>,
    most_drifted_first: bool,
    picture: &mut PictureView,
    mut look_action: Option<&mut Option<(Target, LookAction)>>,
) -> GridLayout {
    let mut panels: Vec<Target> = (0..project.panels.len()).map(Target::Panel).collect();
    if most_drifted_first {
        let score =
            |t: &Target| consistency(cells, project, *t).map_or(f32::INFINITY, |c| c.score());
        panels.sort_by(|a, b| score(a).total_cmp(&score(b)));
    }
    let targets: Vec<Target> = (0..project.characters.len())
        .map(Target::identity_of)
        .chain(panels)
        .collect();
    let mut rects = Vec::with_capacity(targets.len());
    let output = egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            let (columns, width) = fit(ui.available_width());
            ui.spacing_mut().item_spacing = Vec2::splat(GAP);
            for row in targets.chunks(columns) {
                ui.horizontal_top(|ui| {
                    for &target in row {
                        let rect = cell_ui(
                            ui,
                            project,
                            plans,
                            cells,
                            target,
                            selected,
                            width,
                            picture,
                            look_action.as_deref_mut(),
                        );
                        rects.push((target, rect));
                    }
                });
            }
        });
    let viewport = output.inner_rect;
    let top = viewport.min.y - output.state.clamped_offset().y;
    let height = output.content_size.y.max(viewport.height());
    GridLayout {
        viewport,
        grid: Rect::from_x_y_ranges(viewport.x_range(), top..=top + height),
        cells: rects,
    }
}

/// One cell, `width` points wide with its border; returns where it was drawn.
#[allow(clippy::too_many_arguments)]
fn cell_ui(
    ui: &mut Ui,
    project: &Project,
    plans: &[&Plan],
    cells: &Cells,
    target: Target,
    selected: &mut Option<Target>,
    width: f32,
    picture: &mut PictureView,
    look_action: Option<&mut Option<(Target, LookAction)>>,
) -> Rect {
    let cell = cells.get(target);
    let state = cell.map_or_else(|| "empty".to_string(), |c| c.label(plans));
    let (w, h) = match target {
        Target::Identity | Target::IdentityOf(_) => {
            (project.settings.width, project.settings.height)
        }
        Target::Panel(i) => project.panel_size(i),
    };
    let is_selected = *selected == Some(target);
    let frame = egui::Frame::group(ui.style()).stroke(egui::Stroke::new(
        BORDER,
        match is_selected {
            true => ui.visuals().selection.stroke.color,
            false => ui.visuals().widgets.noninteractive.bg_stroke.color,
        },
    ));
    let inner_width = (width - frame.total_margin().sum().x).max(1.0);
    let image_size = Vec2::new(inner_width, inner_width * h as f32 / w as f32);
    // Where a look's buttons begin: the cell's own click stops above them, so they get theirs.
    let mut buttons_top = None;
    let response = frame
        .show(ui, |ui| {
            ui.set_width(inner_width);
            ui.vertical(|ui| {
                ui.strong(title(target));
                // A live preview first, then a look waiting for its main run, then the take.
                let look = cell.and_then(|c| c.fresh_look(plans));
                let texture = cell.and_then(|c| {
                    c.preview
                        .as_ref()
                        .or(look.map(|l| &l.texture))
                        .or(c.texture.as_ref())
                });
                match texture {
                    // The look's picture is the preview beside its mask: twice as wide.
                    Some(t) if cell.is_some_and(|c| c.preview.is_none()) && look.is_some() => {
                        ui.add(egui::Image::new((
                            t.id(),
                            Vec2::new(image_size.x, image_size.y / 2.0),
                        )));
                    }
                    Some(t) => {
                        ui.add(egui::Image::new((t.id(), image_size)));
                    }
                    None => {
                        let (rect, _) = ui.allocate_exact_size(image_size, Sense::hover());
                        ui.painter()
                            .rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
                    }
                }
                if let Some(CellState::Rendering { step, steps, .. }) = cell.map(|c| &c.state) {
                    ui.add(
                        egui::ProgressBar::new((*step + 1) as f32 / *steps as f32)
                            .desired_width(inner_width),
                    );
                }
                let color = match cell.map(|c| &c.state) {
                    Some(CellState::Failed(_)) => Color32::RED,
                    _ if state == "stale" => Color32::from_rgb(200, 140, 0),
                    _ => ui.visuals().weak_text_color(),
                };
                ui.add(
                    egui::Label::new(
                        RichText::new(format!("{}: {state}", title(target)))
                            .small()
                            .color(color),
                    )
                    .wrap(),
                );
                if let Some(l) = look {
                    buttons_top = look_ui(ui, target, l, look_action);
                }
                picture.cell_ui(ui, project, cells, target);
                for (line, hover) in consistency_lines(cells, project, target) {
                    ui.label(RichText::new(line).small()).on_hover_text(hover);
                }
            });
        })
        .response;
    let mut clickable = response.rect;
    if let Some(top) = buttons_top {
        clickable.max.y = top;
    }
    if ui
        .interact(
            clickable,
            egui::Id::unique(("cell", target)),
            Sense::click(),
        )
        .clicked()
    {
        *selected = Some(target);
    }
    response.rect
}

/// A look's matches and its buttons: Approve, Re-roll (a new seed; edit the action first to
/// re-roll with a tweaked one), Skip. Returns where the buttons begin, when shown.
fn look_ui(
    ui: &mut Ui,
    target: Target,
    look: &super::cells::CellLook,
    action: Option<&mut Option<(Target, LookAction)>>,
) -> Option<f32> {
    if let Some(m) = &look.matches {
        let size = m.size_vec2();
        let width = ui.available_width();
        ui.add(egui::Image::new((
            m.id(),
            Vec2::new(width, width * size.y / size.x),
        )))
        .on_hover_text(format!("{} kept matches", look.shown.kept_matches));
    }
    let action = action?;
    let top = ui.cursor().min.y;
    ui.horizontal_wrapped(|ui| {
        let buttons = [
            ("Approve", LookAction::Approve, Verdict::Approved),
            ("Re-roll", LookAction::Reroll, Verdict::Pending),
            ("Skip", LookAction::Skip, Verdict::Skipped),
        ];
        for (label, what, verdict) in buttons {
            let chosen = what != LookAction::Reroll && look.verdict == verdict;
            if ui
                .selectable_label(chosen, label)
                .on_hover_text(format!("{label} {}", title(target)))
                .clicked()
            {
                *action = Some((target, what));
            }
        }
    });
    Some(top)
}
