//! The frame grid: the identity first, then the panels, reflowing with the window.

use egui::{Color32, RichText, Sense, Ui, Vec2};

use super::cells::{CellState, Cells};
use crate::consist::plan::{Plan, Target};
use crate::project::model::Project;

const CELL_WIDTH: f32 = 200.0;

pub fn title(target: Target) -> String {
    match target {
        Target::Identity => "Identity".into(),
        Target::Panel(i) => format!("Panel {}", i + 1),
    }
}

/// `plan` is what the cells' images are compared with to tell which are stale.
pub fn grid_ui(
    ui: &mut Ui,
    project: &Project,
    plan: Option<&Plan>,
    cells: &Cells,
    selected: &mut Option<Target>,
) {
    let targets: Vec<Target> = std::iter::once(Target::Identity)
        .chain((0..project.panels.len()).map(Target::Panel))
        .collect();
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = Vec2::splat(10.0);
            for target in targets {
                cell_ui(ui, project, plan, cells, target, selected);
            }
        });
    });
}

fn cell_ui(
    ui: &mut Ui,
    project: &Project,
    plan: Option<&Plan>,
    cells: &Cells,
    target: Target,
    selected: &mut Option<Target>,
) {
    let cell = cells.get(target);
    let state = cell.map_or_else(|| "empty".to_string(), |c| c.label(plan));
    let (w, h) = match target {
        Target::Identity => (project.settings.width, project.settings.height),
        Target::Panel(i) => project.panel_size(i),
    };
    let image_size = Vec2::new(CELL_WIDTH, CELL_WIDTH * h as f32 / w as f32);
    let is_selected = *selected == Some(target);
    let frame = egui::Frame::group(ui.style()).stroke(match is_selected {
        true => egui::Stroke::new(2.0, ui.visuals().selection.stroke.color),
        false => ui.visuals().widgets.noninteractive.bg_stroke,
    });
    let response = frame
        .show(ui, |ui| {
            ui.set_width(CELL_WIDTH);
            ui.vertical(|ui| {
                ui.strong(title(target));
                let texture = cell.and_then(|c| c.preview.as_ref().or(c.texture.as_ref()));
                match texture {
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
                            .desired_width(CELL_WIDTH),
                    );
                }
                let color = match cell.map(|c| &c.state) {
                    Some(CellState::Failed(_)) => Color32::RED,
                    _ if state == "stale" => Color32::from_rgb(200, 140, 0),
                    _ => ui.visuals().weak_text_color(),
                };
                ui.label(
                    RichText::new(format!("{}: {state}", title(target)))
                        .small()
                        .color(color),
                );
            });
        })
        .response;
    if ui
        .interact(
            response.rect,
            egui::Id::unique(("cell", target)),
            Sense::click(),
        )
        .clicked()
    {
        *selected = Some(target);
    }
}
