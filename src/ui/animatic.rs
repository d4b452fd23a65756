//! The animatic player: the panels' images in order, each held for its duration, with its
//! caption or dialogue; play/pause, a scrub bar and the timecode.

use egui::{RichText, Ui, Vec2};

use super::cells::Cells;
use crate::consist::plan::Target;
use crate::project::model::Project;
use crate::project::timing::{panel_at, starts, timecode};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Player {
    pub open: bool,
    pub playing: bool,
    /// Seconds from the start of the first panel.
    pub position: f64,
}

impl Player {
    /// Moves the play head on by `dt` seconds while playing; stops at the end.
    pub fn advance(&mut self, dt: f64, total: f64) {
        if self.playing {
            self.position += dt;
            if self.position >= total {
                self.position = total;
                self.playing = false;
            }
        }
    }

    pub fn ui(&mut self, ui: &mut Ui, project: &Project, cells: &Cells) {
        let (at, total) = starts(project);
        self.advance(f64::from(ui.input(|i| i.stable_dt)), total);
        if self.playing {
            ui.ctx().request_repaint();
        }
        self.position = self.position.clamp(0.0, total);
        let panel = panel_at(&at, self.position);
        ui.horizontal_wrapped(|ui| {
            let label = if self.playing { "Pause" } else { "Play" };
            if ui.button(label).clicked() {
                if !self.playing && self.position >= total {
                    self.position = 0.0;
                }
                self.playing = !self.playing;
            }
            let l = ui.label("Animatic position");
            ui.add(
                egui::Slider::new(&mut self.position, 0.0..=total)
                    .show_value(false)
                    .clamping(egui::SliderClamping::Always),
            )
            .labelled_by(l.id);
            ui.monospace(format!("{} / {}", timecode(self.position), timecode(total)));
            ui.label(format!(
                "Animatic: panel {} of {}",
                panel + 1,
                project.panels.len()
            ));
        });
        let p = &project.panels[panel];
        let height = (ui.available_height() - 24.0).max(32.0);
        match cells
            .get(Target::Panel(panel))
            .and_then(|c| c.texture.as_ref())
        {
            Some(t) => {
                let size = t.size_vec2();
                let scale = (height / size.y).min(ui.available_width() / size.x);
                ui.add(egui::Image::new((t.id(), size * scale)));
            }
            None => {
                let size = Vec2::new(height, height);
                let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
                ui.painter()
                    .rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
            }
        }
        let words = match p.dialogue.trim().is_empty() {
            true => p.caption.trim(),
            false => p.dialogue.trim(),
        };
        if !words.is_empty() {
            ui.label(RichText::new(words).italics());
        }
    }
}
