//! The identity's picture in the app: the source choice (generated or a picture, with its fit
//! and inverter and a preview of the fitted picture) and, in the identity cell, the picture
//! beside its reconstruction's difference and PSNR, so a poor inversion shows before any
//! panel is rendered.

use egui::{RichText, TextureHandle, Ui, Vec2};
use std::path::{Path, PathBuf};

use crate::atomic_file::parent_dir;

use super::cells::{texture, Cells};
use crate::consist::plan::Target;
use crate::invert::Inverter;
use crate::picture::{self, Fit};
use crate::project::{IdentitySource, PictureIdentity, Project};

/// The fitted picture and its comparison with the rendered identity, made again only when
/// what they show changes.
#[derive(Default)]
pub struct PictureView {
    fitted: Option<Fitted>,
    compared: Option<Compared>,
}

struct Fitted {
    /// The path, fit and size it was made for.
    made_for: (PathBuf, Fit, usize, usize),
    image: Result<(image::RgbImage, TextureHandle), String>,
}

struct Compared {
    /// The rendered identity it compares with.
    made_for: image::RgbImage,
    difference: TextureHandle,
    psnr: f64,
}

const THUMB: f32 = 96.0;

/// Whether `path` names a picture by its extension (for dropped files).
pub fn is_picture(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp"))
}

/// Makes `path` the identity's picture, relative to the project's folder where it lies in it.
pub fn set_picture(project: &mut Project, project_path: Option<&Path>, path: &Path) {
    let (fit, inverter) = match &project.identity.source {
        IdentitySource::Picture(p) => (p.fit, p.inverter),
        IdentitySource::Generated => (Fit::default(), Inverter::default()),
    };
    let mut picture = PictureIdentity {
        path: path.to_path_buf(),
        fit,
        inverter,
        folder: None,
    };
    if let Some(project_path) = project_path {
        picture.rebase(&parent_dir(project_path));
    }
    project.identity.source = IdentitySource::Picture(picture);
}

impl PictureView {
    /// The source controls under the identity shot; true when the user asks to choose a file.
    pub fn source_ui(&mut self, ui: &mut Ui, project: &mut Project) -> bool {
        let mut choose = false;
        let (width, height) = (project.settings.width, project.settings.height);
        ui.horizontal(|ui| {
            ui.label("Identity from");
            let generated = project.identity.source.is_generated();
            if ui.selectable_label(generated, "Generated").clicked() && !generated {
                project.identity.source = IdentitySource::Generated;
            }
            if ui.selectable_label(!generated, "Picture…").clicked() {
                choose = true;
            }
        });
        let IdentitySource::Picture(p) = &mut project.identity.source else {
            return choose;
        };
        ui.label(RichText::new(p.path.display().to_string()).small());
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("Fit")
                .selected_text(p.fit.label())
                .show_ui(ui, |ui| {
                    for fit in Fit::ALL {
                        ui.selectable_value(&mut p.fit, fit, fit.label());
                    }
                });
            egui::ComboBox::from_label("Inverter")
                .selected_text(p.inverter.label())
                .show_ui(ui, |ui| {
                    for inverter in Inverter::ALL {
                        ui.selectable_value(&mut p.inverter, inverter, inverter.label());
                    }
                });
        });
        let made_for = (p.resolved(), p.fit, width, height);
        if self.fitted.as_ref().is_none_or(|f| f.made_for != made_for) {
            let image = picture::load(&made_for.0, width, height, p.fit)
                .map(|image| {
                    let t = texture(ui.ctx(), "identity picture", &image);
                    (image, t)
                })
                .map_err(|e| format!("{e:#}"));
            self.fitted = Some(Fitted { made_for, image });
        }
        match self.fitted.as_ref().map(|f| &f.image) {
            Some(Ok((_, t))) => {
                ui.add(egui::Image::new((t.id(), thumb(width, height))))
                    .on_hover_text("The picture as the identity takes it (fitted)");
            }
            Some(Err(e)) => {
                ui.colored_label(egui::Color32::RED, e);
            }
            None => {}
        }
        choose
    }

    /// Under the identity cell's reconstruction: the picture, the difference and its PSNR.
    pub fn cell_ui(&mut self, ui: &mut Ui, project: &Project, cells: &Cells) {
        if project.identity.source.is_generated() {
            return;
        }
        let Some(Ok((picture, picture_texture))) = self.fitted.as_ref().map(|f| &f.image) else {
            return;
        };
        let Some(rendered) = cells.get(Target::Identity).and_then(|c| c.image.as_ref()) else {
            return;
        };
        let rendered = &rendered.image;
        if rendered.dimensions() != picture.dimensions() {
            return;
        }
        if self
            .compared
            .as_ref()
            .is_none_or(|c| &c.made_for != rendered)
        {
            self.compared = Some(Compared {
                made_for: rendered.clone(),
                difference: texture(
                    ui.ctx(),
                    "identity difference",
                    &picture::difference(picture, rendered),
                ),
                psnr: picture::psnr(picture, rendered),
            });
        }
        let Some(c) = &self.compared else { return };
        let size = thumb(project.settings.width, project.settings.height) * 0.5;
        ui.horizontal(|ui| {
            ui.add(egui::Image::new((picture_texture.id(), size)))
                .on_hover_text("The picture");
            ui.add(egui::Image::new((c.difference.id(), size)))
                .on_hover_text("Difference from the reconstruction, brightened 4x");
        });
        ui.label(RichText::new(format!("Reconstruction PSNR {:.1} dB", c.psnr)).small());
    }
}

fn thumb(width: usize, height: usize) -> Vec2 {
    Vec2::new(THUMB, THUMB * height as f32 / width as f32)
}
