//! Each character's identity picture in the app: the source choice (generated or a picture,
//! with its fit and inverter and a preview of the fitted picture) and, in the identity's cell,
//! the picture beside its reconstruction's difference and PSNR, so a poor inversion shows before
//! any panel is rendered.

use egui::{RichText, TextureHandle, Ui, Vec2};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::atomic_file::parent_dir;

use super::cells::{texture, Cells};
use crate::consist::plan::Target;
use crate::invert::Inverter;
use crate::picture::{self, Fit};
use crate::project::{IdentitySource, PictureIdentity, Project};

/// Each character's fitted picture and its comparison with the rendered identity, by
/// character, made again only when what they show changes.
#[derive(Default)]
pub struct PictureView {
    fitted: BTreeMap<usize, Fitted>,
    compared: BTreeMap<usize, Compared>,
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

/// Makes `path` character `k`'s identity picture, relative to the project's folder where it
/// lies in it.
pub fn set_picture(project: &mut Project, project_path: Option<&Path>, k: usize, path: &Path) {
    let Some(character) = project.characters.get_mut(k) else {
        return;
    };
    let (fit, inverter) = match &character.identity.source {
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
    character.identity.source = IdentitySource::Picture(picture);
}

/// A control's label: as it always was with one character, with the character's name beside
/// it with several (so that each control keeps a name of its own).
fn labelled(project: &Project, k: usize, label: &str) -> String {
    match project.characters.len() {
        1 => label.to_string(),
        _ => format!("{label} ({})", project.characters[k].name),
    }
}

impl PictureView {
    /// The source controls of every character's identity; the character whose picture the user
    /// asks to choose a file for.
    pub fn source_ui(&mut self, ui: &mut Ui, project: &mut Project) -> Option<usize> {
        let mut choose = None;
        self.fitted.retain(|&k, _| k < project.characters.len());
        for k in 0..project.characters.len() {
            if self.character_source_ui(ui, project, k) {
                choose = Some(k);
            }
        }
        choose
    }

    /// Character `k`'s source controls; true when the user asks to choose a file.
    fn character_source_ui(&mut self, ui: &mut Ui, project: &mut Project, k: usize) -> bool {
        let mut choose = false;
        let (width, height) = (project.settings.width, project.settings.height);
        let (from, pick) = (
            labelled(project, k, "Identity from"),
            labelled(project, k, "Picture…"),
        );
        let (fit_label, inverter_label) = (
            labelled(project, k, "Fit"),
            labelled(project, k, "Inverter"),
        );
        let source = &mut project.characters[k].identity.source;
        ui.horizontal(|ui| {
            ui.label(from);
            let generated = source.is_generated();
            if ui.selectable_label(generated, "Generated").clicked() && !generated {
                *source = IdentitySource::Generated;
            }
            if ui.selectable_label(!generated, pick).clicked() {
                choose = true;
            }
        });
        let IdentitySource::Picture(p) = source else {
            return choose;
        };
        ui.label(RichText::new(p.path.display().to_string()).small());
        ui.horizontal(|ui| {
            egui::ComboBox::from_label(fit_label)
                .selected_text(p.fit.label())
                .show_ui(ui, |ui| {
                    for fit in Fit::ALL {
                        ui.selectable_value(&mut p.fit, fit, fit.label());
                    }
                });
            egui::ComboBox::from_label(inverter_label)
                .selected_text(p.inverter.label())
                .show_ui(ui, |ui| {
                    for inverter in Inverter::ALL {
                        ui.selectable_value(&mut p.inverter, inverter, inverter.label());
                    }
                });
        });
        let made_for = (p.resolved(), p.fit, width, height);
        if self.fitted.get(&k).is_none_or(|f| f.made_for != made_for) {
            let image = picture::load(&made_for.0, width, height, p.fit)
                .map(|image| {
                    let t = texture(ui.ctx(), &format!("identity picture {k}"), &image);
                    (image, t)
                })
                .map_err(|e| format!("{e:#}"));
            self.fitted.insert(k, Fitted { made_for, image });
        }
        match self.fitted.get(&k).map(|f| &f.image) {
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

    /// Under an identity cell's reconstruction (`target` is an identity): the picture, the
    /// difference and its PSNR.
    pub fn cell_ui(&mut self, ui: &mut Ui, project: &Project, cells: &Cells, target: Target) {
        let Some(k) = target.character() else {
            return;
        };
        if project
            .characters
            .get(k)
            .is_none_or(|c| c.identity.source.is_generated())
        {
            return;
        }
        let Some(Ok((picture, picture_texture))) = self.fitted.get(&k).map(|f| &f.image) else {
            return;
        };
        let Some(rendered) = cells.get(target).and_then(|c| c.image.as_ref()) else {
            return;
        };
        let rendered = &rendered.image;
        if rendered.dimensions() != picture.dimensions() {
            return;
        }
        if self
            .compared
            .get(&k)
            .is_none_or(|c| &c.made_for != rendered)
        {
            let compared = Compared {
                made_for: rendered.clone(),
                difference: texture(
                    ui.ctx(),
                    &format!("identity difference {k}"),
                    &picture::difference(picture, rendered),
                ),
                psnr: picture::psnr(picture, rendered),
            };
            self.compared.insert(k, compared);
        }
        let Some(c) = self.compared.get(&k) else {
            return;
        };
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
