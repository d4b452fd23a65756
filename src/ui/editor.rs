//! The prompt editor: characters and their identity shots, scenes and panels, with live token
//! counts.

use egui::{Color32, RichText, TextEdit, Ui};
use std::collections::HashMap;

use crate::limits::prompt_too_long;
use crate::limits::MAX_CHARACTERS;
use crate::project::model::{Character, IdentityShot, Panel, Project, Scene};
use crate::project::shot::{CameraAngle, ShotSize};
use crate::project::timing::{seconds_label, starts, timecode};
use crate::text::PromptTokenizers;

/// A change to the panel list that the frame grid must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelEdit {
    Added,
    Duplicated(usize),
    Deleted(usize),
    Moved { from: usize, to: usize },
}

impl PanelEdit {
    /// For each new panel index, the old index it came from (None for a new panel).
    pub fn order(&self, old_len: usize) -> Vec<Option<usize>> {
        let mut order: Vec<Option<usize>> = (0..old_len).map(Some).collect();
        match *self {
            PanelEdit::Added => order.push(None),
            PanelEdit::Duplicated(i) => order.insert(i + 1, None),
            PanelEdit::Deleted(i) => {
                order.remove(i);
            }
            PanelEdit::Moved { from, to } => {
                let moved = order.remove(from);
                order.insert(to, moved);
            }
        }
        order
    }

    pub fn apply(&self, panels: &mut Vec<Panel>) {
        match *self {
            PanelEdit::Added => {
                let scene = panels.last().map_or(0, |p| p.scene);
                panels.push(Panel::new(scene, "a new action"));
            }
            PanelEdit::Duplicated(i) => {
                let copy = panels[i].clone();
                panels.insert(i + 1, copy);
            }
            PanelEdit::Deleted(i) => {
                panels.remove(i);
            }
            PanelEdit::Moved { from, to } => {
                let p = panels.remove(from);
                panels.insert(to, p);
            }
        }
    }
}

/// Token counts of prompts, cached by text.
pub struct TokenCounter {
    tokenizers: PromptTokenizers,
    cache: HashMap<String, usize>,
}

impl TokenCounter {
    pub fn new(tokenizers: PromptTokenizers) -> Self {
        Self {
            tokenizers,
            cache: HashMap::new(),
        }
    }

    pub fn count(&mut self, text: &str) -> usize {
        if let Some(&n) = self.cache.get(text) {
            return n;
        }
        if self.cache.len() > 4096 {
            self.cache.clear();
        }
        let n = self.tokenizers.t5_count(text).unwrap_or(0);
        self.cache.insert(text.to_string(), n);
        n
    }

    /// The most prompt tokens T5 reads (its length minus `</s>`).
    pub fn limit(&self) -> usize {
        self.tokenizers.t5_len() - 1
    }

    /// "n / limit tokens"; over the limit, in red, with what is dropped.
    fn badge(&mut self, ui: &mut Ui, text: &str) {
        let (n, limit) = (self.count(text), self.limit());
        ui.label(match n > limit {
            true => RichText::new(format!(
                "{n} / {limit} tokens: {}",
                prompt_too_long(n - limit, limit)
            ))
            .small()
            .color(Color32::RED),
            false => RichText::new(format!("{n} / {limit} tokens"))
                .small()
                .weak(),
        });
    }
}

fn labelled_text(ui: &mut Ui, label: &str, text: &mut String, multiline: bool) {
    let l = ui.label(label);
    let edit = match multiline {
        true => TextEdit::multiline(text).desired_rows(2),
        false => TextEdit::singleline(text),
    };
    ui.add(edit.desired_width(f32::INFINITY)).labelled_by(l.id);
}

/// A panel's shot list entry: size, angle, camera move, dialogue, notes and duration.
fn shot_ui(ui: &mut Ui, i: usize, panel: &mut Panel) {
    let n = i + 1;
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_label(format!("shot size of panel {n}"))
            .selected_text(panel.shot.map_or("no shot size", ShotSize::label))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut panel.shot, None, "none");
                for size in ShotSize::ALL {
                    ui.selectable_value(&mut panel.shot, Some(size), size.label());
                }
            });
        egui::ComboBox::from_label(format!("angle of panel {n}"))
            .selected_text(panel.angle.map_or("no angle", CameraAngle::label))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut panel.angle, None, "none");
                for angle in CameraAngle::ALL {
                    ui.selectable_value(&mut panel.angle, Some(angle), angle.label());
                }
            });
        let l = ui.label(format!("Panel {n} duration"));
        ui.add(
            egui::DragValue::new(&mut panel.duration)
                .range(crate::limits::DURATION)
                .speed(0.05)
                .suffix(" s"),
        )
        .labelled_by(l.id);
    });
    labelled_text(
        ui,
        &format!("Panel {n} camera move"),
        &mut panel.camera_move,
        false,
    );
    labelled_text(
        ui,
        &format!("Panel {n} dialogue"),
        &mut panel.dialogue,
        true,
    );
    labelled_text(ui, &format!("Panel {n} notes"), &mut panel.notes, true);
}

/// Draws the editor; returns the panel-list edit the user made this frame, if any.
pub fn editor_ui(
    ui: &mut Ui,
    project: &mut Project,
    tokens: &mut TokenCounter,
) -> Option<PanelEdit> {
    labelled_text(ui, "Title", &mut project.title, false);
    ui.add_space(6.0);
    characters_ui(ui, project, tokens);
    ui.separator();
    scenes_ui(ui, project, tokens);
    ui.separator();
    panels_ui(ui, project, tokens)
}

/// How the editor names character `k`'s fields: the first keeps the one-character labels.
fn character_label(k: usize, field: &str) -> String {
    match k {
        0 => field.to_string(),
        k => format!("Character {} {}", k + 1, field.to_lowercase()),
    }
}

fn characters_ui(ui: &mut Ui, project: &mut Project, tokens: &mut TokenCounter) {
    let n = project.characters.len();
    let mut delete = None;
    for k in 0..n {
        let identity_prompt = project.identity_prompt_of(k);
        let old_name = project.characters[k].name.clone();
        let c = &mut project.characters[k];
        ui.push_id(("character", k), |ui| {
            ui.horizontal(|ui| {
                let l = ui.label(character_label(k, "Name"));
                ui.add(TextEdit::singleline(&mut c.name).desired_width(140.0))
                    .labelled_by(l.id);
                if n > 1 && ui.button(format!("Delete character {}", k + 1)).clicked() {
                    delete = Some(k);
                }
            });
            let prompt_label = match k {
                0 => "Character".to_string(),
                k => format!("Character {}", k + 1),
            };
            labelled_text(ui, &prompt_label, &mut c.prompt, true);
            tokens.badge(ui, &c.prompt);
            ui.label(RichText::new(character_label(k, "Identity shot")).strong());
            labelled_text(
                ui,
                &character_label(k, "Identity environment"),
                &mut c.identity.environment,
                true,
            );
            labelled_text(
                ui,
                &character_label(k, "Identity action"),
                &mut c.identity.action,
                false,
            );
            tokens.badge(ui, &identity_prompt);
        });
        // Panels name characters: a rename follows into their lists.
        let new_name = project.characters[k].name.clone();
        if new_name != old_name {
            for names in project
                .panels
                .iter_mut()
                .filter_map(|p| p.characters.as_mut())
            {
                for name in names.iter_mut().filter(|name| **name == old_name) {
                    *name = new_name.clone();
                }
            }
        }
    }
    if let Some(k) = delete {
        let removed = project.characters.remove(k);
        for names in project
            .panels
            .iter_mut()
            .filter_map(|p| p.characters.as_mut())
        {
            names.retain(|name| *name != removed.name);
        }
    }
    if n < MAX_CHARACTERS && ui.button("Add character").clicked() {
        let identity = project.characters[0].identity.clone();
        let name = (n + 1..)
            .map(|i| format!("character {i}"))
            .find(|name| project.characters.iter().all(|c| &c.name != name))
            .unwrap_or_default();
        // Panels that showed every character keep showing the ones they did.
        let before: Vec<String> = project.characters.iter().map(|c| c.name.clone()).collect();
        for panel in &mut project.panels {
            panel.characters.get_or_insert_with(|| before.clone());
        }
        project.characters.push(Character {
            name,
            prompt: format!("a new character ({})", n + 1),
            // A painting fits the character it was painted over only.
            identity: IdentityShot {
                painted_mask: None,
                ..identity
            },
        });
    }
}

/// Which characters panel `i` shows: a checkbox per character (in the storyboard's order; a
/// ticked one joins the end of the panel's order).
fn panel_characters_ui(ui: &mut Ui, i: usize, names: &[String], panel: &mut Panel) {
    if names.len() < 2 {
        return;
    }
    ui.horizontal(|ui| {
        ui.label("shows");
        let mut shown = panel.characters.clone().unwrap_or_else(|| names.to_vec());
        for name in names {
            let mut on = shown.contains(name);
            if ui
                .checkbox(&mut on, name)
                .on_hover_text(format!("Whether panel {} shows {name}", i + 1))
                .changed()
            {
                match on {
                    true => shown.push(name.clone()),
                    false => shown.retain(|n| n != name),
                }
                panel.characters = Some(shown.clone());
            }
        }
    });
}

fn scenes_ui(ui: &mut Ui, project: &mut Project, tokens: &mut TokenCounter) {
    ui.heading("Scenes");
    let mut delete = None;
    let n_scenes = project.scenes.len();
    for (s, scene) in project.scenes.iter_mut().enumerate() {
        ui.push_id(("scene", s), |ui| {
            ui.horizontal(|ui| {
                ui.strong(format!("Scene {}", s + 1));
                let l = ui.label("name");
                ui.add(TextEdit::singleline(&mut scene.name).desired_width(140.0)).labelled_by(l.id);
            });
            labelled_text(ui, &format!("Scene {} environment", s + 1), &mut scene.environment, true);
            tokens.badge(ui, &scene.environment);
            ui.horizontal(|ui| {
                ui.checkbox(&mut scene.lock_background, format!("Lock background (scene {})", s + 1))
                    .on_hover_text("Panels of this scene share one background: the identity's when the environment is the identity's, else the scene's first panel's.");
                if n_scenes > 1 && ui.button(format!("Delete scene {}", s + 1)).clicked() {
                    delete = Some(s);
                }
            });
        });
    }
    if let Some(s) = delete {
        project.scenes.remove(s);
        // The deleted scene's panels move to the first remaining scene.
        for p in &mut project.panels {
            if p.scene == s {
                p.scene = 0;
            } else if p.scene > s {
                p.scene -= 1;
            }
        }
    }
    if ui.button("Add scene").clicked() {
        let environment = project.scenes.last().map_or_else(
            || project.characters[0].identity.environment.clone(),
            |s| s.environment.clone(),
        );
        project.scenes.push(Scene {
            name: String::new(),
            environment,
            lock_background: false,
            width: None,
            height: None,
        });
    }
}

fn panels_ui(ui: &mut Ui, project: &mut Project, tokens: &mut TokenCounter) -> Option<PanelEdit> {
    ui.heading("Panels");
    let (_, running_time) = starts(project);
    ui.label(format!(
        "{} panels, running time {} ({})",
        project.panels.len(),
        timecode(running_time),
        seconds_label(running_time)
    ));
    ui.checkbox(
        &mut project.settings.shot_in_prompt,
        "Shot size and angle in prompts",
    )
    .on_hover_text("Adds each panel's shot size and camera angle to its action prompt.");
    let mut edit = None;
    let n = project.panels.len();
    let scene_names: Vec<String> = project
        .scenes
        .iter()
        .enumerate()
        .map(|(s, sc)| {
            if sc.name.is_empty() {
                format!("Scene {}", s + 1)
            } else {
                format!("{}: {}", s + 1, sc.name)
            }
        })
        .collect();
    let names: Vec<String> = project.characters.iter().map(|c| c.name.clone()).collect();
    for i in 0..n {
        let prompt = project.panel_prompt(i);
        let panel = &mut project.panels[i];
        ui.push_id(("panel", i), |ui| {
            let frame = egui::Frame::group(ui.style());
            let response = frame
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.dnd_drag_source(egui::Id::unique(("drag panel", i)), i, |ui| {
                            ui.label(RichText::new("::").monospace())
                                .on_hover_text("Drag to reorder");
                        });
                        ui.strong(format!("Panel {}", i + 1));
                        egui::ComboBox::from_label(format!("scene of panel {}", i + 1))
                            .selected_text(
                                scene_names.get(panel.scene).cloned().unwrap_or_default(),
                            )
                            .show_ui(ui, |ui| {
                                for (s, name) in scene_names.iter().enumerate() {
                                    ui.selectable_value(&mut panel.scene, s, name);
                                }
                            });
                    });
                    panel_characters_ui(ui, i, &names, panel);
                    labelled_text(
                        ui,
                        &format!("Panel {} action", i + 1),
                        &mut panel.action,
                        true,
                    );
                    tokens.badge(ui, &prompt);
                    labelled_text(
                        ui,
                        &format!("Panel {} caption", i + 1),
                        &mut panel.caption,
                        true,
                    );
                    shot_ui(ui, i, panel);
                    ui.horizontal(|ui| {
                        let mut own = panel.seed.is_some();
                        if ui
                            .checkbox(&mut own, format!("Own seed (panel {})", i + 1))
                            .changed()
                        {
                            panel.seed = own.then_some(0);
                        }
                        if let Some(seed) = &mut panel.seed {
                            ui.add(egui::DragValue::new(seed));
                        }
                    });
                    ui.horizontal(|ui| {
                        if ui
                            .add_enabled(
                                i > 0,
                                egui::Button::new(format!("Move panel {} up", i + 1)),
                            )
                            .clicked()
                        {
                            edit = Some(PanelEdit::Moved { from: i, to: i - 1 });
                        }
                        if ui
                            .add_enabled(
                                i + 1 < n,
                                egui::Button::new(format!("Move panel {} down", i + 1)),
                            )
                            .clicked()
                        {
                            edit = Some(PanelEdit::Moved { from: i, to: i + 1 });
                        }
                        if ui.button(format!("Duplicate panel {}", i + 1)).clicked() {
                            edit = Some(PanelEdit::Duplicated(i));
                        }
                        if ui
                            .add_enabled(
                                n > 1,
                                egui::Button::new(format!("Delete panel {}", i + 1)),
                            )
                            .clicked()
                        {
                            edit = Some(PanelEdit::Deleted(i));
                        }
                    });
                })
                .response;
            if let Some(from) = response.dnd_release_payload::<usize>() {
                if *from != i {
                    edit = Some(PanelEdit::Moved { from: *from, to: i });
                }
            }
        });
    }
    if ui.button("Add panel").clicked() {
        edit = Some(PanelEdit::Added);
    }
    if let Some(e) = edit {
        e.apply(&mut project.panels);
    }
    edit
}
