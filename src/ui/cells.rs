//! What the frame grid knows about each image: its render state and its textures.

use egui::{ColorImage, Context, TextureHandle, TextureOptions};
use std::collections::BTreeMap;

use crate::consist::plan::{Phase, Plan, Quality, Target};
use crate::project::images::{RenderedImage, ShownLook};
use crate::project::takes::{self, Active, TakeChoice};

#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    Empty,
    Queued,
    /// Its work has begun; no step has finished yet.
    Preparing,
    Rendering {
        phase: Phase,
        step: usize,
        steps: usize,
    },
    Done,
    Failed(String),
}

/// What the user decided about a panel's early look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Approved,
    Skipped,
}

/// A panel's early look as its cell shows it.
pub struct CellLook {
    pub shown: ShownLook,
    /// The preview tinted by the mask, beside the mask.
    pub texture: TextureHandle,
    /// The preview and the identity with the kept matches.
    pub matches: Option<TextureHandle>,
    pub verdict: Verdict,
}

pub struct Cell {
    pub state: CellState,
    /// The active take, shown in the grid and the inspector and played in the animatic.
    pub image: Option<RenderedImage>,
    pub texture: Option<TextureHandle>,
    pub preview: Option<TextureHandle>,
    /// Every take read back or rendered, deleted ones included (the document hides them).
    pub takes: Vec<RenderedImage>,
    /// The chosen take, when its files are gone.
    pub missing: Option<u32>,
    /// The newest early look of a panel not yet rendered from it.
    pub look: Option<CellLook>,
}

impl Cell {
    fn empty() -> Self {
        Self {
            state: CellState::Empty,
            image: None,
            texture: None,
            preview: None,
            takes: Vec::new(),
            missing: None,
            look: None,
        }
    }

    /// Its look, when made for exactly what one of `plans` asks now.
    pub fn fresh_look(&self, plans: &[&Plan]) -> Option<&CellLook> {
        self.look.as_ref().filter(|l| {
            plans.iter().any(|p| {
                p.image(l.shown.target)
                    .is_some_and(|i| i.key == l.shown.key)
            })
        })
    }

    /// Rendered from other inputs than the plan of its quality (draft or final, among
    /// `plans`) asks for now. Without that plan (no model loaded, or a project that cannot be
    /// planned) nothing is known to be stale.
    pub fn is_stale(&self, plans: &[&Plan]) -> bool {
        let Some(image) = &self.image else {
            return false;
        };
        plans
            .iter()
            .find(|p| p.settings.quality == image.quality)
            .is_some_and(|plan| !image.is_current(plan))
    }

    /// A short label of the state for the grid and for tests.
    pub fn label(&self, plans: &[&Plan]) -> String {
        match &self.state {
            CellState::Empty | CellState::Done if self.missing.is_some() => {
                format!("missing: take {} is gone", self.missing.unwrap_or_default())
            }
            CellState::Empty | CellState::Done if self.fresh_look(plans).is_some() => {
                match self.fresh_look(plans).map(|l| l.verdict) {
                    Some(Verdict::Approved) => "look approved".into(),
                    Some(Verdict::Skipped) => "look skipped".into(),
                    _ => "look: approve, re-roll or skip".into(),
                }
            }
            CellState::Empty | CellState::Done if self.image.is_some() => {
                let state = match self.is_stale(plans) {
                    true => "stale",
                    false => "done",
                };
                match self.image.as_ref().map(|i| i.quality) {
                    Some(Quality::Draft) => format!("{state} (draft)"),
                    _ => state.into(),
                }
            }
            CellState::Empty | CellState::Done => "empty".into(),
            CellState::Queued => "queued".into(),
            CellState::Preparing => "preparing".into(),
            CellState::Rendering { phase, step, steps } => {
                format!(
                    "rendering {} step {} of {steps}",
                    phase_name(*phase),
                    step + 1
                )
            }
            CellState::Failed(why) => format!("failed: {why}"),
        }
    }
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Inversion => "inversion",
        Phase::Identity => "identity",
        Phase::PreRun => "pre-run",
        Phase::Main => "main run",
    }
}

pub fn texture(ctx: &Context, name: &str, image: &image::RgbImage) -> TextureHandle {
    let size = [image.width() as usize, image.height() as usize];
    ctx.load_texture(
        name,
        ColorImage::from_rgb(size, image.as_raw()),
        TextureOptions::LINEAR,
    )
}

/// All cells, keyed by target; targets of panels that no longer exist are dropped.
#[derive(Default)]
pub struct Cells {
    cells: BTreeMap<Target, Cell>,
}

impl Cells {
    pub fn get(&self, target: Target) -> Option<&Cell> {
        self.cells.get(&target)
    }

    pub fn entry(&mut self, target: Target) -> &mut Cell {
        self.cells.entry(target).or_insert_with(Cell::empty)
    }

    /// Keeps `image` as a take of its cell (replacing one of the same number); which take is
    /// shown is [`Cells::sync`]'s to say.
    pub fn add_take(&mut self, image: RenderedImage) {
        let cell = self.entry(image.target);
        // The take made from a look replaces it.
        if cell
            .look
            .as_ref()
            .is_some_and(|l| image.key.as_ref() == Some(&l.shown.key))
        {
            cell.look = None;
        }
        cell.takes.retain(|t| t.take != image.take);
        cell.takes.push(image);
        cell.takes.sort_by_key(|t| t.take);
        cell.preview = None;
        cell.state = CellState::Done;
    }

    /// Keeps `shown` as its panel's look; the verdict stays when it is the look already shown.
    /// It replaces the running preview until the next one comes.
    pub fn set_look(&mut self, ctx: &Context, shown: ShownLook) {
        let name = format!("look {:?}", shown.target);
        let cell = self.entry(shown.target);
        cell.preview = None;
        let verdict = match &cell.look {
            Some(l) if l.shown.key == shown.key => l.verdict,
            _ => Verdict::Pending,
        };
        cell.look = Some(CellLook {
            texture: texture(ctx, &name, &shown.mask),
            matches: shown
                .matches
                .as_ref()
                .map(|m| texture(ctx, &format!("{name} matches"), m)),
            shown,
            verdict,
        });
    }

    /// The panels whose fresh look (against `plans`) has `verdict`, in order.
    pub fn looks_with(&self, plans: &[&Plan], verdict: Verdict) -> Vec<usize> {
        self.cells
            .iter()
            .filter_map(|(t, c)| match (t, c.fresh_look(plans)) {
                (Target::Panel(i), Some(l)) if l.verdict == verdict => Some(*i),
                _ => None,
            })
            .collect()
    }

    /// Gives every fresh look of `plans` that still waits the verdict `verdict`.
    pub fn judge_pending(&mut self, plans: &[&Plan], verdict: Verdict) {
        for cell in self.cells.values_mut() {
            let fresh = cell.fresh_look(plans).is_some();
            if let Some(look) = cell
                .look
                .as_mut()
                .filter(|l| fresh && l.verdict == Verdict::Pending)
            {
                look.verdict = verdict;
            }
        }
    }

    /// Shows each cell's active take as `choices` say (after a pick, a delete, an undo); a
    /// texture is made only when the shown take changes.
    pub fn sync(
        &mut self,
        ctx: &Context,
        choices: &std::collections::BTreeMap<Target, TakeChoice>,
    ) {
        for (target, cell) in &mut self.cells {
            let (shown, missing) = match takes::active(&cell.takes, choices.get(target)) {
                Active::Take(t) => (Some(t), None),
                Active::None => (None, None),
                Active::Missing(n) => (None, Some(n)),
            };
            cell.missing = missing;
            if shown.map(|t| t.take) == cell.image.as_ref().map(|i| i.take) {
                continue;
            }
            cell.texture = shown.map(|t| texture(ctx, &format!("{target:?}"), &t.image));
            cell.image = shown.cloned();
        }
    }

    /// Cells still waiting or running become failed (with `why`), or empty when `why` is None.
    pub fn settle(&mut self, why: Option<&str>) {
        for cell in self.cells.values_mut() {
            if matches!(
                cell.state,
                CellState::Queued | CellState::Preparing | CellState::Rendering { .. }
            ) {
                cell.preview = None;
                cell.state = match why {
                    Some(w) => CellState::Failed(w.to_string()),
                    None if cell.image.is_some() => CellState::Done,
                    None => CellState::Empty,
                };
            }
        }
    }

    pub fn clear(&mut self) {
        self.cells.clear();
    }

    /// Keeps panel cells in step with a panel list edit: `order[k]` is the old index of new panel k
    /// (None for a new panel).
    pub fn reorder(&mut self, order: &[Option<usize>]) {
        let mut old = std::mem::take(&mut self.cells);
        if let Some(identity) = old.remove(&Target::Identity) {
            self.cells.insert(Target::Identity, identity);
        }
        for (k, source) in order.iter().enumerate() {
            if let Some(cell) = source.and_then(|i| old.remove(&Target::Panel(i))) {
                self.cells.insert(Target::Panel(k), cell);
            }
        }
    }
}
