//! The storyboard editor: application state apart from the views that show it (editor, grid,
//! inspector, setup). The UI thread never runs a model; it sends jobs to the worker and drains
//! its events every frame.

use crossbeam_channel::{unbounded, Receiver, Sender};
use egui::{Key, KeyboardShortcut, Modifiers, Rect, RichText, Ui};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::animatic::Player;
use super::cells::{CellState, Cells, Verdict};
use super::dialogs::{Dialogs, Purpose};
use super::document::Document;
use super::editor::{editor_ui, TokenCounter};
use super::grid::{consistency_lines, grid_ui, GridLayout, LookAction, MIN_GRID_WIDTH};
use super::inspector::{inspector_ui, InspectorAction, Overlays, Painting, TakeAction};
use super::layout_report::LayoutReport;
use super::paint::{MaskEdit, PaintTool};
use super::picture::PictureView;
use super::setup::{self, CacheScan, ModelStatus};
use crate::app_settings::AppSettings;
use crate::consist::plan::{Plan, PlanModel, Quality, RenderRequest, Target};
use crate::consist::session::RenderOptions;
use crate::export::storyboard::{panel_list, Exported, StalePanels};
use crate::memory_plan::{mode_name, BankChoice, ChosenBank, Machine, LOCKSTEP_BATCH_MAX};
use crate::project::images::RenderedImage;
use crate::text::{PromptTokenizers, T5_LEN_DEV};
use crate::worker::{Event, Job, Worker};

const SAVE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::S);
const UNDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Z);
const REDO: KeyboardShortcut =
    KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::Z);
const RENDER: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
const RECOVERY_EVERY: Duration = Duration::from_secs(20);
/// Long side of the exported animatic's frames, in pixels.
const ANIMATIC_SIDE: u32 = 512;

/// What an export wrote, or why it failed.
type ExportResult = Result<Exported, String>;

/// How the app starts.
pub struct StartOptions {
    pub project: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub render_on_start: bool,
    pub dialogs: Dialogs,
    pub settings: AppSettings,
    /// Write settings and recovery copies to disk (off in tests).
    pub persist: bool,
    /// Where to write the layout report for the end-to-end run, if anywhere.
    pub layout_report: Option<PathBuf>,
}

pub struct CharaboardApp {
    pub doc: Document,
    pub cells: Cells,
    pub selected: Option<Target>,
    /// The inspector shows the selected cell; the user may fold it away (menu or drag).
    pub inspector_open: bool,
    pub player: Player,
    /// Orders the grid's panels by rising consistency, to find those that drifted.
    pub most_drifted_first: bool,
    pub overlays: Overlays,
    /// The brush that paints an identity's mask in the inspector.
    pub paint: PaintTool,
    /// A take shown beside the selected image's active one in the inspector.
    compare: Option<(Target, RenderedImage, egui::TextureHandle)>,
    /// Where the grid and its cells were drawn in the last frame, and the inspector if shown.
    pub layout: GridLayout,
    pub inspector_rect: Option<Rect>,
    layout_report: Option<LayoutReport>,
    pub model: ModelStatus,
    /// The loaded model as plans see it.
    plan_model: Option<PlanModel>,
    /// The loaded model and device as memory plans see them, or why they could not be read.
    machine: Option<Result<Machine, String>>,
    /// The plan of the project as it is now, for the loaded model; recomputed when either
    /// changes (`planned` is the document revision it was made at).
    plan: Option<Plan>,
    /// The same at the other quality (finals while drafting, drafts otherwise): the takes of
    /// that quality are judged against it.
    other_plan: Option<Plan>,
    planned: Option<u64>,
    cache_scan: CacheScan,
    pub status: Option<(String, bool)>,
    pub busy: bool,
    pub settings: AppSettings,
    worker: Worker,
    tokens: TokenCounter,
    dialogs: Dialogs,
    persist: bool,
    render_when_loaded: bool,
    asking_to_close: bool,
    closing: bool,
    window_title: String,
    reload_images: bool,
    recovery_offer: Option<PathBuf>,
    last_recovery: Instant,
    exports: (Sender<ExportResult>, Receiver<ExportResult>),
    /// The identity's picture, fitted, and its comparison with the reconstruction.
    picture: PictureView,
}

impl CharaboardApp {
    /// `ctx` is repainted by the worker after each of its events.
    pub fn new(ctx: Option<egui::Context>, start: StartOptions) -> Self {
        let worker = Worker::spawn(move || {
            if let Some(ctx) = &ctx {
                ctx.request_repaint();
            }
        });
        let tokenizers =
            PromptTokenizers::shipped(T5_LEN_DEV).expect("the shipped tokenizers are valid");
        let mut app = Self {
            doc: Document::new(crate::project::io::sample(), None),
            cells: Cells::default(),
            selected: None,
            inspector_open: true,
            player: Player::default(),
            most_drifted_first: false,
            overlays: Overlays::default(),
            paint: PaintTool::default(),
            compare: None,
            layout: GridLayout::default(),
            inspector_rect: None,
            layout_report: start.layout_report.map(LayoutReport::new),
            model: ModelStatus::None,
            plan_model: None,
            machine: None,
            plan: None,
            other_plan: None,
            planned: None,
            cache_scan: CacheScan::default(),
            status: None,
            busy: false,
            settings: start.settings,
            worker,
            tokens: TokenCounter::new(tokenizers),
            dialogs: start.dialogs,
            persist: start.persist,
            render_when_loaded: start.render_on_start,
            asking_to_close: false,
            closing: false,
            window_title: String::new(),
            reload_images: false,
            recovery_offer: None,
            last_recovery: Instant::now(),
            exports: unbounded(),
            picture: PictureView::default(),
        };
        app.doc.project.settings = app.settings.defaults.clone();
        if let Some(path) = start.project {
            app.open_project(&path);
        }
        if let Some(dir) = start.model.or_else(|| app.settings.model_dir.clone()) {
            app.load_model(dir);
        }
        app
    }

    fn info(&mut self, message: impl Into<String>) {
        self.status = Some((message.into(), false));
    }

    fn error(&mut self, message: impl Into<String>) {
        self.status = Some((message.into(), true));
    }

    pub fn load_model(&mut self, dir: PathBuf) {
        self.model = ModelStatus::Loading(dir.clone());
        self.plan_model = None;
        self.planned = None;
        self.busy = true;
        self.worker.send(Job::LoadModel {
            dir,
            device: self.settings.device.clone(),
            dtype: self.settings.dtype.clone(),
        });
    }

    pub fn create_tiny_model(&mut self, dir: PathBuf) {
        self.busy = true;
        self.info(format!("writing a tiny test model to {}", dir.display()));
        self.worker.send(Job::CreateTinyModel { dir });
    }

    /// Opens a project; a broken file is reported with its line and column and the current
    /// project stays open.
    pub fn open_project(&mut self, path: &Path) {
        match Document::open(path) {
            Ok(doc) => {
                self.doc = doc;
                self.planned = None;
                self.cells.clear();
                self.selected = None;
                self.reload_images = true;
                self.settings.remember_project(path);
                self.save_settings();
                let recovery = self.doc.recovery_path().filter(|r| is_newer(r, path));
                self.recovery_offer = recovery;
                self.info(format!("opened {}", path.display()));
            }
            Err(e) => self.error(format!("could not open the project: {e}")),
        }
    }

    /// Asks the worker to read the images rendered for this project earlier (saved beside it).
    fn load_saved_images(&mut self) {
        if let Some(store) = self.doc.images_store() {
            self.worker.send(Job::LoadImages {
                store,
                panels: self.doc.project.panels.len(),
            });
        }
    }

    /// The plan of the project for the loaded model, brought up to date with the document.
    pub fn plan(&mut self) -> Option<&Plan> {
        if self.planned != Some(self.doc.revision()) {
            self.planned = Some(self.doc.revision());
            self.plan = self
                .plan_model
                .as_ref()
                .and_then(|m| crate::project::plan(&self.doc.project, m, None).ok());
            let other = match self.doc.project.settings.quality() {
                Quality::Draft => Quality::Final,
                Quality::Final => Quality::Draft,
            };
            self.other_plan = self.plan_model.as_ref().and_then(|m| {
                crate::project::plan::plan_at(&self.doc.project, m, None, other).ok()
            });
        }
        self.plan.as_ref()
    }

    /// The bank mode and batch the next render takes, as the settings and the memory plan
    /// say (`None` until a model is loaded); an error where `Auto` finds nothing that fits.
    pub fn bank_choice(&mut self) -> Option<Result<ChosenBank, String>> {
        let batch = self.settings.batch.map(|b| b.clamp(1, LOCKSTEP_BATCH_MAX));
        let choice = self.settings.bank;
        self.plan()?;
        let (plan, machine) = (self.plan.as_ref()?, self.machine.as_ref()?);
        Some(match (machine, choice) {
            (Err(e), BankChoice::Auto) => Err(format!("no memory plan: {e}")),
            (machine, _) => {
                let memory = machine.as_ref().ok().map(|m| m.plan(plan));
                choice.resolve(batch, false, memory.as_ref())
            }
        })
    }

    pub fn save(&mut self) {
        match self.doc.path.clone() {
            Some(path) => self.save_to(&path),
            None => self.dialogs.ask(Purpose::SaveProjectAs, "storyboard.ron"),
        }
    }

    fn save_to(&mut self, path: &Path) {
        match self.doc.save_to(path) {
            Ok(()) => {
                self.doc.remove_recovery();
                self.remove_deleted_takes();
                self.settings.remember_project(path);
                self.save_settings();
                self.info(format!("saved {}", path.display()));
            }
            Err(e) => self.error(format!(
                "could not save; the previous file is untouched: {e}"
            )),
        }
    }

    /// Once the project that deletes them is saved, deleted takes' files go.
    fn remove_deleted_takes(&mut self) {
        let Some(store) = self.doc.images_store() else {
            return;
        };
        for (&target, choice) in &self.doc.project.takes {
            for &take in &choice.deleted {
                if let Err(e) = store.remove_take(target, take) {
                    self.status = Some((format!("could not remove a deleted take: {e:#}"), true));
                }
            }
        }
    }

    /// Applies the inspector's take action to the selected image.
    fn take_action(&mut self, ctx: &egui::Context, target: Target, action: TakeAction) {
        let project = &mut self.doc.project;
        match action {
            TakeAction::Pick(take) => {
                let seed = self
                    .cells
                    .get(target)
                    .and_then(|c| c.takes.iter().find(|t| t.take == take))
                    .and_then(RenderedImage::seed);
                project.takes.entry(target).or_default().active = Some(take);
                // The take's seed becomes the image's: the active take is current again.
                if let Some(seed) = seed {
                    set_seed(project, target, seed);
                }
            }
            TakeAction::Delete(take) => {
                let choice = project.takes.entry(target).or_default();
                choice.deleted.push(take);
                if choice.active == Some(take) {
                    choice.active = None;
                }
                if self.compare.as_ref().is_some_and(|c| c.1.take == take) {
                    self.compare = None;
                }
            }
            TakeAction::Compare(None) => self.compare = None,
            TakeAction::Compare(Some(take)) => {
                self.compare = self
                    .cells
                    .get(target)
                    .and_then(|c| c.takes.iter().find(|t| t.take == take))
                    .map(|t| {
                        let tex = super::cells::texture(ctx, "compare", &t.image);
                        (target, t.clone(), tex)
                    });
            }
            TakeAction::Reroll => self.reroll(target),
        }
    }

    /// A new seed for `target` (an undoable edit), rendered at once: as a new take, or with
    /// "Review first" as a new look.
    fn reroll(&mut self, target: Target) {
        set_seed(&mut self.doc.project, target, rand::random::<u32>() as u64);
        self.doc.record_edits();
        self.doc.seal();
        self.render(match target {
            Target::Identity | Target::IdentityOf(_) => RenderRequest::Identity,
            Target::Panel(i) => RenderRequest::Panel(i),
        });
    }

    fn save_settings(&mut self) {
        if self.persist {
            if let Err(e) = self.settings.save() {
                self.error(format!("could not save settings: {e:#}"));
            }
        }
    }

    /// Renders `request`; with the project's "Review first", only as far as each panel's look.
    pub fn render(&mut self, request: RenderRequest) {
        let looks_only = self.doc.project.settings.review_first;
        self.render_job(request, looks_only);
    }

    /// The main runs of the panels whose fresh look is approved, from their looks.
    pub fn render_approved(&mut self) {
        self.plan();
        let plans: Vec<&Plan> = self.plan.iter().chain(&self.other_plan).collect();
        let approved = self.cells.looks_with(&plans, Verdict::Approved);
        if approved.is_empty() {
            self.error("no look is approved: approve a panel's look first");
            return;
        }
        self.render_job(RenderRequest::Panels(approved), false);
    }

    /// What a look's buttons ask.
    fn look_action(&mut self, target: Target, action: LookAction) {
        let Some(look) = self.cells.entry(target).look.as_mut() else {
            return;
        };
        match action {
            LookAction::Approve => look.verdict = Verdict::Approved,
            LookAction::Skip => look.verdict = Verdict::Skipped,
            LookAction::Reroll => self.reroll(target),
        }
    }

    fn render_job(&mut self, request: RenderRequest, looks_only: bool) {
        if self.busy {
            return;
        }
        let Some(model) = self.plan_model.clone() else {
            self.error("load a model first (see the setup panel)");
            return;
        };
        let planned = crate::project::plan(&self.doc.project, &model, None)
            .and_then(|plan| Ok((plan.requested_targets(&request)?, plan)));
        let (targets, plan) = match planned {
            Ok(planned) => planned,
            Err(e) => {
                self.error(format!("cannot render: {e:#}"));
                return;
            }
        };
        let bank = match self.bank_choice() {
            Some(Ok(bank)) => bank,
            Some(Err(e)) => {
                self.error(format!("cannot render: {e}"));
                return;
            }
            None => {
                self.error("load a model first (see the setup panel)");
                return;
            }
        };
        for t in targets {
            self.cells.entry(t).state = CellState::Queued;
        }
        self.busy = true;
        self.status = None;
        self.worker.send(Job::Render {
            plan: Box::new(plan),
            request,
            store: self.doc.images_store(),
            options: RenderOptions {
                preview_every: Some(5),
                bank: bank.mode,
                batch: bank.batch,
                report_looks: true,
                looks_only,
                ..RenderOptions::default()
            },
        });
    }

    /// Paints (or resets) character `k`'s identity mask: one undo step; the identity and the
    /// panels that show the character become stale, as their keys hold the mask.
    pub fn edit_mask(&mut self, k: usize, edit: MaskEdit) {
        let Some(character) = self.doc.project.characters.get_mut(k) else {
            return;
        };
        character.identity.painted_mask = match edit {
            MaskEdit::Paint(mask) => Some(mask),
            MaskEdit::Reset => None,
        };
        self.doc.seal();
        self.doc.record_edits();
        self.doc.seal();
    }

    /// Makes `path` character `k`'s identity picture (an undoable edit).
    pub fn set_identity_picture(&mut self, k: usize, path: &Path) {
        super::picture::set_picture(&mut self.doc.project, self.doc.path.as_deref(), k, path);
        self.doc.record_edits();
        self.doc.seal();
        self.info(format!(
            "{} is now {}",
            Target::identity_of(k).label(),
            path.display()
        ));
    }

    /// A picture dropped on an identity's cell becomes that character's identity picture.
    fn take_dropped_picture(&mut self, ctx: &egui::Context) {
        let (files, pointer) = ctx.input(|i| (i.raw.dropped_files.clone(), i.pointer.latest_pos()));
        let Some(path) = files
            .into_iter()
            .map(|f| f.path().to_path_buf())
            .find(|p| super::picture::is_picture(p))
        else {
            return;
        };
        let on_identity = self.layout.cells.iter().find_map(|(t, rect)| {
            t.character()
                .filter(|_| pointer.is_some_and(|p| rect.contains(p)))
        });
        match on_identity {
            Some(k) => self.set_identity_picture(k, &path),
            None => self.info("drop a picture on an identity's cell to make it that identity"),
        }
    }

    pub fn cancel(&mut self) {
        self.worker.cancel();
    }

    /// Drains the worker's events, dialog answers and export results.
    pub fn poll(&mut self, ctx: &egui::Context) {
        if std::mem::take(&mut self.reload_images) {
            self.load_saved_images();
        }
        let events: Vec<Event> = self.worker.events().collect();
        for event in events {
            self.handle(ctx, event);
        }
        for (purpose, path) in self.dialogs.answers() {
            match purpose {
                Purpose::OpenProject => self.open_project(&path),
                Purpose::SaveProjectAs => self.save_to(&path),
                Purpose::ModelFolder => self.load_model(path),
                Purpose::ExportFolder => self.export_to(path),
                Purpose::IdentityPicture(k) => self.set_identity_picture(k, &path),
            }
        }
        let results: Vec<_> = self.exports.1.try_iter().collect();
        for result in results {
            match result {
                Ok(e) if e.stale.is_empty() => {
                    self.info(format!("exported {} files", e.files.len()))
                }
                Ok(e) => self.info(format!(
                    "exported {} files; {} marked (stale): render again for current images",
                    e.files.len(),
                    panel_list(&e.stale)
                )),
                Err(e) => self.error(format!("export failed: {e}")),
            }
        }
    }

    fn handle(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::ModelLoading { dir } => self.model = ModelStatus::Loading(dir),
            Event::ModelLoaded {
                dir,
                description,
                model,
                machine,
            } => {
                self.settings.model_dir = Some(dir.clone());
                self.save_settings();
                self.model = ModelStatus::Loaded { dir, description };
                self.plan_model = Some(model);
                self.machine = Some(machine);
                self.planned = None;
            }
            Event::TinyModelCreated { dir } => {
                self.busy = false;
                // Random weights draw abstract pictures: start quick.
                setup::tiny_draft(&mut self.doc.project);
                self.load_model(dir);
            }
            Event::Started(target) => self.cells.entry(target).state = CellState::Preparing,
            Event::Step(s) => {
                let cell = self.cells.entry(s.target);
                cell.state = CellState::Rendering {
                    phase: s.phase,
                    step: s.step,
                    steps: s.steps,
                };
                if let Some(p) = s.preview {
                    cell.preview = Some(super::cells::texture(ctx, "preview", &p));
                }
            }
            Event::Look(look) => self.cells.set_look(ctx, *look),
            Event::ImageDone(mut image) => {
                let target = image.target;
                let taken = self.cells.get(target).map_or(vec![], |c| {
                    c.takes.iter().map(|t| t.take).collect::<Vec<_>>()
                });
                // Unsaved, takes live in memory only: number them here.
                if self.doc.images_store().is_none() {
                    image.take = taken.iter().max().map_or(1, |n| n + 1);
                }
                let newest = taken.iter().all(|&n| n < image.take);
                let take = image.take;
                self.cells.add_take(*image);
                // The take just rendered becomes the active one.
                if let Some(choice) = self.doc.project.takes.get_mut(&target) {
                    choice.active = (!newest).then_some(take);
                    if choice.is_empty() {
                        self.doc.project.takes.remove(&target);
                    }
                } else if !newest {
                    self.doc.project.takes.entry(target).or_default().active = Some(take);
                }
            }
            Event::ImagesLoaded {
                store,
                images,
                looks,
                notes,
            } => {
                // The project may have changed while the images were read.
                if self
                    .doc
                    .images_store()
                    .is_some_and(|s| s.dir() == store.dir())
                {
                    for image in images {
                        self.cells.add_take(image);
                    }
                    for look in looks {
                        self.cells.set_look(ctx, look);
                    }
                    if !notes.is_empty() {
                        self.info(notes.join("; "));
                    }
                }
            }
            Event::Failed { target, message } => {
                if let ModelStatus::Loading(_) = self.model {
                    self.model = ModelStatus::Failed(message.clone());
                }
                if let Some(t) = target {
                    self.cells.entry(t).state = CellState::Failed(message.clone());
                }
                self.cells.settle(None);
                self.error(message);
            }
            Event::Cancelled => {
                self.cells.settle(None);
                self.info("cancelled; finished images are kept");
            }
            Event::Idle => {
                self.busy = false;
                // Images the job found cached were never started: they are as they were.
                self.cells.settle(None);
                if self.render_when_loaded && matches!(self.model, ModelStatus::Loaded { .. }) {
                    self.render_when_loaded = false;
                    self.render(RenderRequest::All);
                }
            }
        }
    }

    fn export_to(&mut self, out: PathBuf) {
        let Some(store) = self.doc.images_store() else {
            self.error("save the project first: exports read the images rendered beside it");
            return;
        };
        let project = self.doc.project.clone();
        let options = crate::export::storyboard::SheetOptions {
            columns: self.settings.sheet_columns.max(1),
            ..Default::default()
        };
        let tx = self.exports.0.clone();
        std::thread::spawn(move || {
            let result = crate::export::storyboard::export_all(
                &project,
                &store,
                &out,
                &options,
                &crate::export::pdf::PdfOptions::default(),
                // The artist sees which panels are stale in the grid; the export says so too.
                StalePanels::Mark,
            )
            .and_then(|mut board| {
                let animatic = crate::export::storyboard::export_animatic(
                    &project,
                    &store,
                    &out,
                    ANIMATIC_SIDE,
                    StalePanels::Mark,
                )?;
                board.files.extend(animatic.files);
                Ok(board)
            });
            let _ = tx.send(result.map_err(|e| format!("{e:#}")));
        });
        self.info("exporting...");
    }

    fn shortcuts(&mut self, ui: &mut Ui) {
        let (save, undo, redo, render, escape) = ui.input_mut(|i| {
            // Redo first: egui lets Ctrl+Z match Ctrl+Shift+Z as well.
            let redo = i.consume_shortcut(&REDO);
            let undo = !redo && i.consume_shortcut(&UNDO);
            (
                i.consume_shortcut(&SAVE),
                undo,
                redo,
                i.consume_shortcut(&RENDER),
                i.consume_key(Modifiers::NONE, Key::Escape),
            )
        });
        if save {
            self.save();
        }
        if redo {
            self.doc.redo();
        }
        if undo {
            self.doc.undo();
        }
        if render {
            self.render(RenderRequest::All);
        }
        if escape && self.busy {
            self.cancel();
        }
    }

    fn menu_bar(&mut self, ui: &mut Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("New project").clicked() {
                    self.new_project();
                }
                if ui.button("Open project...").clicked() {
                    self.dialogs.ask(Purpose::OpenProject, "");
                }
                if ui.button("Save").clicked() {
                    self.save();
                }
                if ui.button("Save as...").clicked() {
                    self.dialogs.ask(Purpose::SaveProjectAs, "storyboard.ron");
                }
                ui.menu_button("Recent projects", |ui| {
                    for path in self.settings.recent_projects.clone() {
                        if ui.button(path.display().to_string()).clicked() {
                            self.open_project(&path);
                        }
                    }
                });
                if ui.button("Export...").clicked() {
                    self.dialogs.ask(Purpose::ExportFolder, "");
                }
            });
            ui.menu_button("Edit", |ui| {
                if ui
                    .add_enabled(self.doc.can_undo(), egui::Button::new("Undo"))
                    .clicked()
                {
                    self.doc.undo();
                }
                if ui
                    .add_enabled(self.doc.can_redo(), egui::Button::new("Redo"))
                    .clicked()
                {
                    self.doc.redo();
                }
            });
            ui.separator();
            if ui
                .add_enabled(!self.busy, egui::Button::new("Render all"))
                .clicked()
            {
                self.render(RenderRequest::All);
            }
            let selected_panel = match self.selected {
                Some(Target::Panel(i)) => Some(RenderRequest::Panel(i)),
                Some(Target::Identity | Target::IdentityOf(_)) => Some(RenderRequest::Identity),
                None => None,
            };
            if ui
                .add_enabled(
                    !self.busy && selected_panel.is_some(),
                    egui::Button::new("Re-render selected"),
                )
                .clicked()
            {
                if let Some(r) = selected_panel {
                    self.render(r);
                }
            }
            if self.doc.project.settings.review_first {
                if ui
                    .add_enabled(!self.busy, egui::Button::new("Approve all"))
                    .on_hover_text("Approve every look still waiting for a verdict.")
                    .clicked()
                {
                    self.plan();
                    let plans: Vec<&Plan> = self.plan.iter().chain(&self.other_plan).collect();
                    self.cells.judge_pending(&plans, Verdict::Approved);
                }
                if ui
                    .add_enabled(!self.busy, egui::Button::new("Render approved"))
                    .on_hover_text("Run the main runs of the approved panels, from their looks.")
                    .clicked()
                {
                    self.render_approved();
                }
            }
            if ui
                .add_enabled(self.busy, egui::Button::new("Cancel"))
                .clicked()
            {
                self.cancel();
            }
            self.memory_plan_label(ui);
            ui.separator();
            ui.checkbox(&mut self.inspector_open, "Inspector");
            ui.checkbox(&mut self.player.open, "Animatic");
            ui.separator();
            ui.label(match &self.model {
                ModelStatus::None => "no model".to_string(),
                ModelStatus::Loading(d) => format!("loading {}...", d.display()),
                ModelStatus::Loaded { description, .. } => description.clone(),
                ModelStatus::Failed(_) => "model failed to load".to_string(),
            });
        });
    }

    /// What the next render will hold and cost, beside the Render button; the whole plan on
    /// hover.
    fn memory_plan_label(&mut self, ui: &mut Ui) {
        let Some(choice) = self.bank_choice() else {
            return;
        };
        ui.separator();
        let (text, color, table) = match choice {
            Ok(ChosenBank {
                plan: Some(plan), ..
            }) => {
                let text = match plan.fits {
                    true => format!("memory plan: {}", plan.summary),
                    false => format!("memory plan: {}; does not fit (try Auto)", plan.summary),
                };
                (
                    text,
                    (!plan.fits).then_some(egui::Color32::RED),
                    Some(plan.table),
                )
            }
            Ok(ChosenBank { mode, batch, .. }) => (
                format!("bank {} (batch {batch}), no memory plan", mode_name(mode)),
                None,
                None,
            ),
            Err(e) => (e, Some(egui::Color32::RED), None),
        };
        let mut label = RichText::new(text).small();
        if let Some(color) = color {
            label = label.color(color);
        }
        let response = ui.label(label);
        if let Some(table) = table {
            response.on_hover_text(RichText::new(table).monospace());
        }
    }

    fn new_project(&mut self) {
        if self.doc.is_dirty() {
            self.error("save or undo your changes before starting a new project");
            return;
        }
        let mut project = crate::project::io::sample();
        project.settings = self.settings.defaults.clone();
        self.doc = Document::new(project, None);
        self.planned = None;
        self.cells.clear();
        self.selected = None;
    }

    /// Everything inside the window; `eframe::App::ui` and the UI tests call this.
    pub fn show(&mut self, ui: &mut Ui) {
        self.poll(ui.ctx());
        self.cells.sync(ui.ctx(), &self.doc.project.takes);
        self.shortcuts(ui);
        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| match &self.status {
                Some((message, true)) => {
                    ui.label(RichText::new(message).color(egui::Color32::RED));
                }
                Some((message, false)) => {
                    ui.label(message);
                }
                None => {
                    ui.label(if self.busy { "working..." } else { "ready" });
                }
            });
        });
        // Side panels never take the grid's last whole cell (see MIN_GRID_WIDTH).
        let editor_max = (ui.available_width() - MIN_GRID_WIDTH).max(0.0);
        egui::Panel::left("editor")
            .resizable(true)
            .default_size(380.0)
            .max_size(editor_max)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let old_len = self.doc.project.panels.len();
                    let edit = editor_ui(ui, &mut self.doc.project, &mut self.tokens);
                    if let Some(k) = self.picture.source_ui(ui, &mut self.doc.project) {
                        self.dialogs.ask(Purpose::IdentityPicture(k), "");
                    }
                    ui.separator();
                    setup::render_settings_ui(ui, &mut self.doc.project, &mut self.settings);
                    if let Some(e) = edit {
                        self.cells.reorder(&e.order(old_len));
                        self.doc.seal();
                    }
                    // Typing coalesces into one undo step; clicks are steps of their own.
                    if !ui.ctx().egui_wants_keyboard_input() {
                        self.doc.seal();
                    }
                    if self.doc.record_edits() {
                        self.settings.defaults = self.doc.project.settings.clone();
                    }
                    if edit.is_some() {
                        self.doc.seal();
                    }
                });
            });
        self.inspector_panel(ui);
        if self.player.open {
            egui::Panel::bottom("animatic")
                .resizable(true)
                .default_size(320.0)
                .show(ui, |ui| self.player.ui(ui, &self.doc.project, &self.cells));
        }
        egui::CentralPanel::default().show(ui, |ui| {
            if !matches!(self.model, ModelStatus::Loaded { .. }) {
                match setup::setup_ui(ui, &self.model, &mut self.cache_scan) {
                    Some(setup::SetupAction::PickFolder) => {
                        self.dialogs.ask(Purpose::ModelFolder, "")
                    }
                    Some(setup::SetupAction::Load(dir)) => self.load_model(dir),
                    Some(setup::SetupAction::CreateTiny) => {
                        let dir = setup::tiny_model_dir();
                        self.create_tiny_model(dir);
                    }
                    None => {}
                }
                ui.separator();
            }
            self.plan();
            ui.checkbox(&mut self.most_drifted_first, "Most drifted first")
                .on_hover_text("Order the panels by rising consistency with the identity.");
            let plans: Vec<&Plan> = self.plan.iter().chain(&self.other_plan).collect();
            let mut look_action = None;
            self.layout = grid_ui(
                ui,
                &self.doc.project,
                &plans,
                &self.cells,
                &mut self.selected,
                self.most_drifted_first,
                &mut self.picture,
                (!self.busy).then_some(&mut look_action),
            );
            if let Some((target, action)) = look_action {
                self.look_action(target, action);
            }
        });
        self.take_dropped_picture(ui.ctx());
        self.recovery_modal(ui);
        if let Some(report) = &mut self.layout_report {
            let (window, ppp) = (ui.ctx().content_rect(), ui.ctx().pixels_per_point());
            if let Err(e) = report.update(window, &self.layout, self.inspector_rect, ppp) {
                self.status = Some((format!("could not write the layout report: {e:#}"), true));
            }
        }
        if self.persist && self.last_recovery.elapsed() > RECOVERY_EVERY {
            self.last_recovery = Instant::now();
            if let Err(e) = self.doc.write_recovery() {
                self.error(format!("could not write the recovery copy: {e}"));
            }
        }
    }

    /// The inspector: a resizable side panel that folds away, never wider than leaves the grid
    /// one whole cell.
    fn inspector_panel(&mut self, ui: &mut Ui) {
        let max = (ui.available_width() - MIN_GRID_WIDTH).max(0.0);
        let mut expanded = self.inspector_open && self.selected.is_some();
        let was_expanded = expanded;
        let panel = egui::Panel::right("inspector")
            .resizable(true)
            .default_size(520.0)
            .min_size(160.0)
            .max_size(max)
            .show_collapsible(ui, &mut expanded, |ui| match self.selected {
                Some(target) => {
                    let compare = self
                        .compare
                        .as_ref()
                        .filter(|c| c.0 == target)
                        .map(|c| (&c.1, &c.2));
                    let project = &self.doc.project;
                    let choice = project.takes.get(&target);
                    let characters = match target {
                        Target::Panel(i) if i < project.panels.len() => project.panel_characters(i),
                        t => t.character().into_iter().collect(),
                    };
                    let (width, height) = project.settings.identity_size(Quality::Final);
                    let painting = Painting {
                        tool: &mut self.paint,
                        painted: project
                            .characters
                            .iter()
                            .map(|c| c.identity.painted_mask.as_ref())
                            .collect(),
                        grid: crate::consist::mask::Grid::of_size(width, height),
                    };
                    let scores = consistency_lines(&self.cells, project, target);
                    inspector_ui(
                        ui,
                        &self.cells,
                        target,
                        &mut self.overlays,
                        choice,
                        compare,
                        &characters,
                        painting,
                        &scores,
                    )
                    .map(|a| (target, a))
                }
                None => {
                    ui.label("Click a cell to inspect it.");
                    None
                }
            });
        let (action, rect) = match panel {
            Some(r) => (r.inner, Some(r.response.rect)),
            None => (None, None),
        };
        self.inspector_rect = rect;
        match action {
            Some((target, InspectorAction::Take(action))) => {
                self.take_action(ui.ctx(), target, action)
            }
            Some((_, InspectorAction::Mask(k, edit))) => self.edit_mask(k, edit),
            None => {}
        }
        // Dragged shut (or open) by the user; a deselected cell leaves the choice as it was.
        if expanded != was_expanded {
            self.inspector_open = expanded;
        }
    }

    fn recovery_modal(&mut self, ui: &mut Ui) {
        let Some(path) = self.recovery_offer.clone() else {
            return;
        };
        egui::Modal::new(egui::Id::unique("recovery")).show(ui.ctx(), |ui| {
            ui.label(format!(
                "Unsaved changes of this project were recovered ({}).",
                path.display()
            ));
            ui.horizontal(|ui| {
                if ui.button("Restore them").clicked() {
                    match crate::project::io::load(&path) {
                        Ok(p) => {
                            self.doc.project = p;
                            self.doc.seal();
                            self.doc.record_edits();
                        }
                        Err(e) => self.error(format!("the recovery copy is damaged: {e}")),
                    }
                    self.recovery_offer = None;
                }
                if ui.button("Discard them").clicked() {
                    self.doc.remove_recovery();
                    self.recovery_offer = None;
                }
            });
        });
    }

    /// Asks before closing with unsaved changes.
    fn confirm_close(&mut self, ui: &mut Ui) {
        let requested = ui.ctx().input(|i| i.viewport().close_requested());
        if requested && self.doc.is_dirty() && !self.closing {
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.asking_to_close = true;
        }
        if self.asking_to_close {
            egui::Modal::new(egui::Id::unique("close")).show(ui.ctx(), |ui| {
                ui.label("This storyboard has unsaved changes.");
                ui.horizontal(|ui| {
                    if ui.button("Save and close").clicked() {
                        self.save();
                        if !self.doc.is_dirty() {
                            self.close(ui);
                        }
                    }
                    if ui.button("Close without saving").clicked() {
                        self.doc.remove_recovery();
                        self.close(ui);
                    }
                    if ui.button("Keep editing").clicked() {
                        self.asking_to_close = false;
                    }
                });
            });
        }
    }

    fn close(&mut self, ui: &Ui) {
        self.closing = true;
        self.asking_to_close = false;
        ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

/// Makes `seed` the one `target` is rendered from (no override where it is the shared seed).
fn set_seed(project: &mut crate::project::Project, target: Target, seed: u64) {
    let own = (seed != project.settings.seed).then_some(seed);
    match target {
        Target::Identity => project.characters[0].identity.seed = own,
        Target::IdentityOf(k) => {
            if let Some(c) = project.characters.get_mut(k) {
                c.identity.seed = own;
            }
        }
        Target::Panel(i) => {
            if let Some(p) = project.panels.get_mut(i) {
                p.seed = own;
            }
        }
    }
}

fn is_newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(x), Some(y)) if x > y)
}

impl eframe::App for CharaboardApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        let title = self.doc.title();
        if title != self.window_title {
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.window_title = title;
        }
        self.show(ui);
        self.confirm_close(ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.save_settings();
    }
}
