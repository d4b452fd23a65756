//! One storyboard: the identity run, per locked scene a background reference, per panel a pre-run
//! and a main run (characonsist-spec.md §1, "Order of generation"). The renderer keeps the
//! identity's bank between jobs, so re-rolling one panel costs one panel.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::bank::{Bank, RecordPlan, Recorder};
use super::mask::{Grid, TextSpans};
use super::matching::Matches;
use super::recipe::Schedule;
use super::steer::{ConsistHook, References, Role, RunObservations};
use crate::pipeline::{FluxModels, NoiseSource};
use crate::project::model::Project;
use crate::sampler::{self, Denoised, RunInputs, StepControl, StepReport};

/// An image of the storyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Identity,
    Panel(usize),
}

/// Which run of an image a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Identity,
    PreRun,
    Main,
}

/// A rendered image with what explains it.
pub struct ImageOutput {
    pub target: Target,
    pub image: RgbImage,
    /// Final latents, unpacked (1, 16, H/8, W/8), f32, on the CPU.
    pub latents: Tensor,
    pub grid: Grid,
    /// Foreground mask at the mask step (of the main run, for panels).
    pub mask: Vec<bool>,
    /// The kept matches of the main run's mask step (panels only).
    pub matches: Option<Matches>,
    pub spans: TextSpans,
    pub seconds: f64,
}

pub enum RenderEvent<'a> {
    Step {
        target: Target,
        phase: Phase,
        step: usize,
        steps: usize,
        /// A decoded preview of the current estimate, when asked for.
        preview: Option<RgbImage>,
    },
    Finished(&'a ImageOutput),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderRequest {
    All,
    Identity,
    Panel(usize),
}

#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Initial noise from this file instead of the project's seed (identity and every panel
    /// without a seed of its own).
    pub noise: Option<PathBuf>,
    /// Decode a preview every this many steps.
    pub preview_every: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Cancelled,
}

/// Where a panel's background comes from (characonsist-spec.md §1 and §7, `update_bg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundMode {
    /// Lock off: the background follows the panel's own prompt.
    Free,
    /// Locked onto the identity's background (same environment and size): `--share_bg`.
    Identity,
    /// Locked onto the scene's first panel, which is rendered first as the reference.
    SceneReference { first_panel: usize },
}

pub fn background_mode(project: &Project, panel: usize) -> BackgroundMode {
    let scene_index = project.panels[panel].scene;
    let scene = &project.scenes[scene_index];
    if !scene.lock_background {
        return BackgroundMode::Free;
    }
    let identity_size = (project.settings.width, project.settings.height);
    if scene.environment == project.identity.environment
        && project.panel_size(panel) == identity_size
    {
        return BackgroundMode::Identity;
    }
    let first_panel = project
        .panels
        .iter()
        .position(|p| p.scene == scene_index)
        .unwrap_or(panel);
    BackgroundMode::SceneReference { first_panel }
}

struct IdentityCache {
    key: String,
    bank: Bank,
    output: ImageOutput,
}

struct SceneReference {
    key: String,
    bank: Bank,
}

type EventSink<'a> = dyn FnMut(RenderEvent) -> StepControl + 'a;

/// Renders storyboards, keeping the identity bank (and the current scene's background reference)
/// between jobs.
#[derive(Default)]
pub struct Renderer {
    identity: Option<IdentityCache>,
    scene_refs: BTreeMap<usize, SceneReference>,
}

/// Everything a run needs that does not change between its steps.
struct Shot {
    target: Target,
    prompt: String,
    spans: TextSpans,
    width: usize,
    height: usize,
    noise: NoiseSource,
}

impl Renderer {
    /// Bytes held by the identity bank and scene references now.
    pub fn bank_bytes(&self) -> usize {
        self.identity.as_ref().map_or(0, |c| c.bank.bytes)
            + self
                .scene_refs
                .values()
                .map(|s| s.bank.bytes)
                .sum::<usize>()
    }

    /// The identity bank's peak bytes during its recording run.
    pub fn identity_peak_bytes(&self) -> Option<usize> {
        self.identity.as_ref().map(|c| c.bank.peak_bytes)
    }

    pub fn render(
        &mut self,
        models: &mut FluxModels,
        project: &Project,
        request: RenderRequest,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        project.validate()?;
        let steps = project
            .settings
            .steps
            .unwrap_or(if models.is_dev() { 50 } else { 4 });
        let schedule = project.settings.recipe.schedule(steps);
        let panels: Vec<usize> = match request {
            RenderRequest::Identity => vec![],
            RenderRequest::Panel(i) if i >= project.panels.len() => {
                bail!("panel {} does not exist", i + 1)
            }
            RenderRequest::Panel(i) => vec![i],
            RenderRequest::All => (0..project.panels.len()).collect(),
        };
        // Every prompt is checked before anything is rendered, so a bad one costs no work,
        // and encoded once for the job (after which the encoders may be freed).
        let mut prompts = vec![self.identity_shot(models, project, options)?.prompt];
        for &i in &panels {
            prompts.push(self.panel_shot(models, project, i, options)?.prompt);
        }
        models.begin_job(&prompts.iter().map(String::as_str).collect::<Vec<_>>())?;
        if self.ensure_identity(models, project, &schedule, options, on_event)?
            == Outcome::Cancelled
        {
            return Ok(Outcome::Cancelled);
        }
        for (n, &i) in panels.iter().enumerate() {
            // A scene reference is kept only while a later panel of this job still needs it.
            let needed: Vec<usize> = panels[n..]
                .iter()
                .map(|&j| project.panels[j].scene)
                .collect();
            self.scene_refs.retain(|scene, _| needed.contains(scene));
            if self.render_panel(models, project, &schedule, i, options, on_event)?
                == Outcome::Cancelled
            {
                return Ok(Outcome::Cancelled);
            }
        }
        Ok(Outcome::Finished)
    }

    fn noise_for(
        &self,
        project: &Project,
        panel: Option<usize>,
        options: &RenderOptions,
    ) -> NoiseSource {
        let own_seed = panel.and_then(|i| project.panels[i].seed);
        match (own_seed, &options.noise) {
            (Some(seed), _) => NoiseSource::Seed(seed),
            (None, Some(path)) => NoiseSource::File(path.clone()),
            (None, None) => NoiseSource::Seed(project.settings.seed),
        }
    }

    fn identity_shot(
        &self,
        models: &FluxModels,
        project: &Project,
        options: &RenderOptions,
    ) -> Result<Shot> {
        let prompt = project.identity_prompt();
        Ok(Shot {
            target: Target::Identity,
            spans: TextSpans::of(&models.tokenizers, &project.identity.environment, &prompt)
                .context("identity shot (identity.environment)")?,
            prompt,
            width: project.settings.width,
            height: project.settings.height,
            noise: self.noise_for(project, None, options),
        })
    }

    fn panel_shot(
        &self,
        models: &FluxModels,
        project: &Project,
        i: usize,
        options: &RenderOptions,
    ) -> Result<Shot> {
        let prompt = project.panel_prompt(i);
        let (width, height) = project.panel_size(i);
        Ok(Shot {
            target: Target::Panel(i),
            spans: TextSpans::of(&models.tokenizers, project.panel_environment(i), &prompt)
                .with_context(|| {
                    format!(
                        "panel {} (scenes[{}].environment)",
                        i + 1,
                        project.panels[i].scene
                    )
                })?,
            prompt,
            width,
            height,
            noise: self.noise_for(project, Some(i), options),
        })
    }

    fn identity_key(
        &self,
        project: &Project,
        steps: usize,
        options: &RenderOptions,
        with_bg: bool,
    ) -> String {
        let s = &project.settings;
        format!(
            "{:?}",
            (
                project.identity_prompt(),
                &project.identity.environment,
                s.width,
                s.height,
                steps,
                s.guidance.to_bits(),
                s.seed,
                &options.noise,
                &s.recipe,
                with_bg
            )
        )
    }

    fn ensure_identity(
        &mut self,
        models: &mut FluxModels,
        project: &Project,
        schedule: &Schedule,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let with_bg = (0..project.panels.len())
            .any(|i| background_mode(project, i) == BackgroundMode::Identity);
        let key = self.identity_key(project, schedule.steps, options, with_bg);
        if self.identity.as_ref().is_some_and(|c| c.key == key) {
            return Ok(Outcome::Finished);
        }
        self.identity = None;
        self.scene_refs.clear();
        let shot = self.identity_shot(models, project, options)?;
        let plan = RecordPlan {
            foreground: true,
            background: with_bg,
            features: true,
        };
        let mut recorder = Recorder::new(plan, schedule.clone());
        let start = Instant::now();
        let Some((image, latents)) = run_identity(
            models,
            project,
            schedule,
            &shot,
            &mut recorder,
            options,
            on_event,
        )?
        .finished() else {
            return Ok(Outcome::Cancelled);
        };
        let bank = recorder.finish()?;
        let output = ImageOutput {
            target: Target::Identity,
            image,
            latents,
            grid: grid_of(&shot),
            mask: bank.mask.clone(),
            matches: None,
            spans: shot.spans,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(RenderEvent::Finished(&output));
        self.identity = Some(IdentityCache { key, bank, output });
        Ok(Outcome::Finished)
    }

    /// The identity image and its mask, once rendered.
    pub fn identity_output(&self) -> Option<&ImageOutput> {
        self.identity.as_ref().map(|c| &c.output)
    }

    fn render_panel(
        &mut self,
        models: &mut FluxModels,
        project: &Project,
        schedule: &Schedule,
        i: usize,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let mode = background_mode(project, i);
        let scene = project.panels[i].scene;
        let mut recorder = None;
        match mode {
            BackgroundMode::SceneReference { first_panel } if first_panel == i => {
                let plan = RecordPlan {
                    foreground: false,
                    background: true,
                    features: false,
                };
                recorder = Some(Recorder::new(plan, schedule.clone()));
            }
            BackgroundMode::SceneReference { first_panel } => {
                let key = self.panel_key(project, first_panel, options);
                if self.scene_refs.get(&scene).is_none_or(|r| r.key != key)
                    && self.render_panel(
                        models,
                        project,
                        schedule,
                        first_panel,
                        options,
                        on_event,
                    )? == Outcome::Cancelled
                {
                    return Ok(Outcome::Cancelled);
                }
            }
            _ => {}
        }
        let identity = self
            .identity
            .as_ref()
            .context("the identity is rendered first")?;
        let background = match mode {
            BackgroundMode::Free => None,
            BackgroundMode::Identity => identity.bank.bg.as_ref(),
            BackgroundMode::SceneReference { first_panel } if first_panel == i => None,
            BackgroundMode::SceneReference { .. } => {
                self.scene_refs.get(&scene).and_then(|r| r.bank.bg.as_ref())
            }
        };
        let refs = References {
            identity: &identity.bank,
            background,
        };
        let shot = self.panel_shot(models, project, i, options)?;
        let start = Instant::now();
        let result = run_panel(
            models,
            project,
            schedule,
            &shot,
            refs,
            recorder.as_mut(),
            options,
            on_event,
        )?;
        let Some((image, latents, observations)) = result else {
            return Ok(Outcome::Cancelled);
        };
        let output = ImageOutput {
            target: shot.target,
            image,
            latents,
            grid: grid_of(&shot),
            mask: observations.mask.unwrap_or_default(),
            matches: observations.matches,
            spans: shot.spans,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(RenderEvent::Finished(&output));
        if let Some(recorder) = recorder {
            let key = self.panel_key(project, i, options);
            self.scene_refs.insert(
                scene,
                SceneReference {
                    key,
                    bank: recorder.finish()?,
                },
            );
        }
        Ok(Outcome::Finished)
    }

    fn panel_key(&self, project: &Project, i: usize, options: &RenderOptions) -> String {
        let identity = self.identity.as_ref().map(|c| c.key.as_str()).unwrap_or("");
        format!(
            "{identity}|{}|{:?}|{:?}",
            project.panel_prompt(i),
            project.panel_size(i),
            self.noise_for(project, Some(i), options)
        )
    }
}

fn grid_of(shot: &Shot) -> Grid {
    Grid {
        rows: shot.height / 16,
        cols: shot.width / 16,
    }
}

/// A run's end: finished latents, or stopped early (by the caller, or by design for pre-runs).
enum RunEnd {
    Finished(RgbImage, Tensor),
    Stopped,
}

impl RunEnd {
    fn finished(self) -> Option<(RgbImage, Tensor)> {
        match self {
            RunEnd::Finished(image, latents) => Some((image, latents)),
            RunEnd::Stopped => None,
        }
    }
}

struct Prepared {
    run: RunInputs,
    sigmas: Vec<f64>,
    heads: usize,
}

fn prepare(models: &mut FluxModels, shot: &Shot, steps: usize) -> Result<Prepared> {
    let (run, sigmas) =
        models.prepare_run(&shot.prompt, &shot.noise, shot.width, shot.height, steps)?;
    Ok(Prepared {
        sigmas,
        run,
        heads: models.transformer.config().num_heads,
    })
}

/// Forwards step events; decodes a preview when asked.
fn step_event(
    models: &FluxModels,
    shot: &Shot,
    phase: Phase,
    r: &StepReport,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<StepControl> {
    let preview = match options.preview_every {
        Some(n) if n > 0 && (r.step + 1).is_multiple_of(n) => {
            let latents = candle_transformers::models::flux::sampling::unpack(
                &r.predicted_clean()?,
                shot.height,
                shot.width,
            )?;
            Some(models.vae.decode(&latents, models.dtype)?)
        }
        _ => None,
    };
    Ok(on_event(RenderEvent::Step {
        target: shot.target,
        phase,
        step: r.step,
        steps: r.steps,
        preview,
    }))
}

/// The identity run: plain FLUX with a recording hook.
#[allow(clippy::too_many_arguments)]
fn run_identity(
    models: &mut FluxModels,
    project: &Project,
    schedule: &Schedule,
    shot: &Shot,
    recorder: &mut Recorder,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<RunEnd> {
    let p = prepare(models, shot, schedule.steps)?;
    let guidance = project.settings.guidance;
    let mut hook = ConsistHook::new(
        Role::Identity,
        schedule,
        shot.spans,
        p.run.layout,
        p.heads,
        models.dtype,
        None,
        Some(recorder),
    );
    let models_ref: &FluxModels = models;
    let result = sampler::denoise(
        &models_ref.transformer,
        &p.run,
        &p.sigmas,
        guidance,
        Some(&mut hook),
        &mut |r| step_event(models_ref, shot, Phase::Identity, r, options, on_event),
    )?;
    match result {
        Denoised::Done(packed) => {
            let (image, latents) = models_ref.decode_packed(&packed, shot.width, shot.height)?;
            Ok(RunEnd::Finished(image, latents))
        }
        Denoised::Cancelled(_) => Ok(RunEnd::Stopped),
    }
}

/// A panel: the pre-run (steps 0..=mask step), then the main run from the pre-run's step 0.
#[allow(clippy::too_many_arguments)]
fn run_panel(
    models: &mut FluxModels,
    project: &Project,
    schedule: &Schedule,
    shot: &Shot,
    refs: References,
    recorder: Option<&mut Recorder>,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<Option<(RgbImage, Tensor, RunObservations)>> {
    let p = prepare(models, shot, schedule.steps)?;
    let guidance = project.settings.guidance;
    let models: &FluxModels = models;
    let dev = p.run.img.device().clone();
    let mask_step = schedule.mask_step;

    let mut pre = ConsistHook::new(
        Role::PreRun,
        schedule,
        shot.spans,
        p.run.layout,
        p.heads,
        models.dtype,
        Some(refs),
        None,
    );
    let mut after_step0 = None;
    let mut cancelled = false;
    sampler::denoise(
        &models.transformer,
        &p.run,
        &p.sigmas,
        guidance,
        Some(&mut pre),
        &mut |r| {
            if r.step == 0 {
                after_step0 = Some(r.next.clone());
            }
            cancelled = step_event(models, shot, Phase::PreRun, r, options, on_event)?
                == StepControl::Cancel;
            Ok(match cancelled || r.step >= mask_step {
                true => StepControl::Cancel,
                false => StepControl::Continue,
            })
        },
    )?;
    if cancelled {
        return Ok(None);
    }
    let pre = pre.observations();
    let after_step0 = after_step0.context("the pre-run took no step")?;

    let mut main = ConsistHook::new(
        Role::Main,
        schedule,
        shot.spans,
        p.run.layout,
        p.heads,
        models.dtype,
        Some(refs),
        recorder,
    );
    main.resume_after_step0(&pre, &dev)?;
    let result = sampler::denoise_from(
        &models.transformer,
        &p.run,
        &p.sigmas,
        1,
        after_step0,
        guidance,
        Some(&mut main),
        &mut |r| step_event(models, shot, Phase::Main, r, options, on_event),
    )?;
    let Denoised::Done(packed) = result else {
        return Ok(None);
    };
    let mut observations = main.observations();
    // With a mask step of 0 the main run (which starts at step 1) takes its mask and matches
    // from the pre-run.
    if observations.mask.is_none() {
        observations.mask = pre.mask;
        observations.matches = observations.matches.or(pre.matches);
    }
    let (image, latents) = models.decode_packed(&packed, shot.width, shot.height)?;
    Ok(Some((image, latents, observations)))
}
