//! First run and settings: where the FLUX.1 weights are, a tiny test model for trying every
//! feature at once, and the render settings a user changes most.

use egui::{RichText, Ui};
use std::path::PathBuf;

use crate::app_settings::{size_presets, AppSettings};
use crate::consist::recipe::Numerics;
use crate::memory_plan::{BankChoice, DEFAULT_BATCH, LOCKSTEP_BATCH_MAX};
use crate::models::discovery::{self, CachedRepo};
use crate::project::model::Project;

pub enum SetupAction {
    PickFolder,
    Load(PathBuf),
    CreateTiny,
}

/// Where the model is.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    None,
    Loading(PathBuf),
    Loaded { dir: PathBuf, description: String },
    Failed(String),
}

/// The Hugging Face caches and the FLUX.1 repositories in them, scanned when the setup panel
/// is first shown and on "Look again", never every frame.
#[derive(Default)]
pub struct CacheScan {
    scanned: Option<(Vec<PathBuf>, Vec<CachedRepo>)>,
}

impl CacheScan {
    fn get(&mut self) -> &(Vec<PathBuf>, Vec<CachedRepo>) {
        self.scanned
            .get_or_insert_with(|| (discovery::cache_dirs(), discovery::find_all()))
    }
}

/// Where the app writes its tiny test model.
pub fn tiny_model_dir() -> PathBuf {
    crate::app_settings::config_path()
        .and_then(|p| p.parent().map(|d| d.join("tiny-model")))
        .unwrap_or_else(|| std::env::temp_dir().join("charaboard-tiny-model"))
}

pub fn setup_ui(ui: &mut Ui, model: &ModelStatus, scan: &mut CacheScan) -> Option<SetupAction> {
    let mut action = None;
    ui.heading("Model setup");
    match model {
        ModelStatus::Loading(dir) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("loading {} ...", dir.display()));
            });
            return None;
        }
        ModelStatus::Failed(message) => {
            ui.label(
                RichText::new(format!("The model could not be loaded: {message}"))
                    .color(egui::Color32::RED),
            );
        }
        _ => {}
    }
    ui.label(
        "charaboard draws with FLUX.1-dev (best, 50 steps) or FLUX.1-schnell (fast, 4 steps) in the Hugging Face \
         repository layout. Get one with `hf download black-forest-labs/FLUX.1-dev` (after accepting its licence on \
         huggingface.co) or `hf download black-forest-labs/FLUX.1-schnell`, then pick the folder.",
    );
    let (caches, repos) = scan.get();
    ui.label(match caches.is_empty() {
        true => {
            "No Hugging Face cache was found (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."
                .to_string()
        }
        false => format!(
            "Searched: {}",
            caches
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    for repo in repos {
        if ui.button(format!("Use {}", repo.id)).clicked() {
            action = Some(SetupAction::Load(repo.snapshot.clone()));
        }
    }
    if ui.button("Look again").clicked() {
        scan.scanned = None;
    }
    // Wrapped, so that a narrow grid column is not widened past its panel.
    ui.horizontal_wrapped(|ui| {
        if ui.button("Choose model folder...").clicked() {
            action = Some(SetupAction::PickFolder);
        }
        if ui
            .button("Create tiny test model")
            .on_hover_text("Random weights: abstract images, but every feature works at once.")
            .clicked()
        {
            action = Some(SetupAction::CreateTiny);
        }
    });
    action
}

/// The draft the tiny test model starts in: the sample storyboard (identity and 4 panels) in
/// about a minute on 2 CPU cores (measured: README, "Drafts").
pub const TINY_DRAFT_LONG_SIDE: usize = 384;
pub const TINY_DRAFT_STEPS: usize = 20;

/// Switches `project` to the tiny test model's draft.
pub fn tiny_draft(project: &mut Project) {
    let s = &mut project.settings;
    s.draft = true;
    s.draft_long_side = TINY_DRAFT_LONG_SIDE;
    s.draft_steps = Some(TINY_DRAFT_STEPS);
}

/// Size, steps, guidance, seed and the recipe's main switches of the open project; the app
/// remembers them as the defaults of new projects.
pub fn render_settings_ui(ui: &mut Ui, project: &mut Project, settings: &mut AppSettings) {
    ui.collapsing("Render settings", |ui| {
        let s = &mut project.settings;
        let current = format!("{} x {}", s.width, s.height);
        egui::ComboBox::from_label("Size")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for preset in size_presets() {
                    let label = format!("{} ({} x {})", preset.label, preset.width, preset.height);
                    if ui
                        .selectable_label(
                            s.width == preset.width && s.height == preset.height,
                            label,
                        )
                        .clicked()
                    {
                        s.width = preset.width;
                        s.height = preset.height;
                    }
                }
            });
        ui.horizontal(|ui| {
            let mut own_steps = s.steps.is_some();
            if ui.checkbox(&mut own_steps, "Steps").changed() {
                s.steps = own_steps.then_some(28);
            }
            match &mut s.steps {
                Some(steps) => {
                    ui.add(egui::DragValue::new(steps).range(1..=100));
                }
                None => {
                    ui.label("model default (50 dev, 4 schnell)");
                }
            }
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut s.draft, "Drafts").on_hover_text(
                "Render small and quick (long side and steps here); off renders finals at \
                     full size. Drafts and finals are takes of the same panel.",
            );
            ui.add_enabled(
                s.draft,
                egui::DragValue::new(&mut s.draft_long_side)
                    .range(16..=4096)
                    .speed(16.0)
                    .suffix(" px long side"),
            );
            let mut own_steps = s.draft_steps.is_some();
            if ui
                .add_enabled(s.draft, egui::Checkbox::new(&mut own_steps, "draft steps"))
                .changed()
            {
                s.draft_steps = own_steps.then_some(20);
            }
            if let Some(steps) = &mut s.draft_steps {
                ui.add_enabled(s.draft, egui::DragValue::new(steps).range(1..=100));
            }
        });
        ui.checkbox(&mut s.review_first, "Review first")
            .on_hover_text(
                "Render runs only each panel's pre-run (a fifth of its cost) and shows its early \
                 look: approve, re-roll or skip each, then \"Render approved\".",
            );
        // Sides are multiples of 16 (a drag may land between).
        s.draft_long_side = (s.draft_long_side / 16).max(1) * 16;
        ui.add(egui::Slider::new(&mut s.guidance, 0.0..=10.0).text("Guidance"));
        ui.horizontal(|ui| {
            ui.label("Seed");
            ui.add(egui::DragValue::new(&mut s.seed));
        });
        ui.checkbox(&mut s.recipe.token_merge, "Token merging");
        ui.add(
            egui::Slider::new(&mut s.recipe.similarity_threshold, 0.0..=1.0)
                .text("Similarity threshold"),
        );
        let numerics = &mut s.recipe.numerics;
        egui::ComboBox::from_label("Numerics")
            .selected_text(format!("{numerics:?}"))
            .show_ui(ui, |ui| {
                ui.selectable_value(numerics, Numerics::Exact, "Exact")
                    .on_hover_text("f32 masks and similarities: the most exact results.");
                ui.selectable_value(numerics, Numerics::Reference, "Reference")
                    .on_hover_text(
                        "Rounded where the authors' code rounds (fp16 masks, bf16 merge weight), \
                         for runs comparable with the paper's.",
                    );
            });
        bank_settings_ui(ui, settings);
        ui.horizontal(|ui| {
            ui.label("Sheet columns");
            ui.add(egui::DragValue::new(&mut settings.sheet_columns).range(1..=8));
        });
    });
}

/// The identity bank's mode and the lockstep batch; the plan beside the Render button shows
/// what they come to.
fn bank_settings_ui(ui: &mut Ui, settings: &mut AppSettings) {
    let bank = &mut settings.bank;
    egui::ComboBox::from_label("Identity bank")
        .selected_text(format!("{bank:?}"))
        .show_ui(ui, |ui| {
            ui.selectable_value(bank, BankChoice::Auto, "Auto")
                .on_hover_text(
                    "The fastest mode that fits the device's memory, by the memory plan shown \
                 beside the Render button.",
                );
            ui.selectable_value(bank, BankChoice::Device, "Device")
                .on_hover_text("Kept on the device between renders: a re-roll costs one panel.");
            ui.selectable_value(bank, BankChoice::Host, "Host")
                .on_hover_text("Kept in RAM, moved to the device one block at a time.");
            ui.selectable_value(bank, BankChoice::Recompute, "Recompute")
                .on_hover_text(
                    "No bank: the identity is computed again beside the panels (lockstep), \
                     for cards too small for a bank. Same images.",
                );
        });
    ui.horizontal(|ui| {
        let mut own_batch = settings.batch.is_some();
        if ui
            .checkbox(&mut own_batch, "Lockstep batch")
            .on_hover_text("Panels computed beside the identity in one forward (recompute).")
            .changed()
        {
            settings.batch = own_batch.then_some(DEFAULT_BATCH);
        }
        match &mut settings.batch {
            Some(batch) => {
                ui.add(egui::DragValue::new(batch).range(1..=LOCKSTEP_BATCH_MAX));
            }
            None => {
                ui.label(match settings.bank {
                    BankChoice::Auto => "the plan's".to_string(),
                    _ => format!("{DEFAULT_BATCH}"),
                });
            }
        }
    });
}
