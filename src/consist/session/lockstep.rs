//! Lockstep rendering (`--bank recompute`): no bank at all. The runs that steer a panel (the
//! identity, and a locked scene's first panel) are computed again beside it in the same
//! lockstep forward, and the panel's hook reads their keys, values and attention outputs of the
//! current block live (`reference::LiveRecord`).
//!
//! What must be known before a batch starts is only what a panel reads from step 1 on: a locked
//! background's mask (its reference's mask at the mask step). So a job runs in batches:
//! 1. the identity's steps up to the mask step, alone, when a panel locks onto the identity's
//!    background and the identity's mask is not known yet;
//! 2. per chunk of `batch` panels: the pre-runs beside the identity's first steps, then the
//!    main runs beside the identity from step 0 (the first chunk finishes the identity image);
//! 3. the panels that lock onto a scene's first panel, after it: the same two batches, with the
//!    scene's first panel's main run computed again beside them.
//!
//! Each run computes exactly what the banked mode computes, so the images are the same.

use anyhow::{Context, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::time::Instant;

use super::super::bank::{Record, RecordPlan};
use super::super::plan::{BackgroundMode, Phase, Plan, Target};
use super::super::recipe::Schedule;
use super::super::reference::{BackgroundRef, IdentityRef, LiveRecord, LiveRecorder};
use super::super::steer::{ConsistHook, References, Role, RunObservations};
use super::{
    grid_of, panel_observations, prepare, shot_of, step_event, EventSink, IdentityCache,
    ImageOutput, Outcome, Prepared, RenderEvent, RenderOptions, Renderer, Shot,
};
use crate::flux::AttentionHook;
use crate::pipeline::FluxModels;
use crate::sampler::{self, Lockstep, LockstepRun, StepControl};

/// A panel's pre-run result: the main run starts from it.
#[derive(Clone)]
pub(super) struct PreRunResult {
    after_step0: Tensor,
    observations: RunObservations,
}

/// A locked scene's first panel, kept between jobs so that a later panel of the scene can
/// recompute it: its key, its pre-run and its main run's mask.
pub(super) struct ReplayedReference {
    key: super::super::plan::ImageKey,
    pre: PreRunResult,
    mask: Vec<bool>,
}

/// Which run of which image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Identity,
    PreRun(usize),
    Main(usize),
}

/// One run of a batch.
struct RunSpec {
    kind: RunKind,
    /// Steps `first..end`.
    first: usize,
    end: usize,
    /// A target reports its steps and keeps its results; a recomputed helper does not.
    target: bool,
    /// The run (index in the batch) whose background this one locks onto.
    background: Option<usize>,
    /// What the later runs of the batch read from this one.
    record: Option<RecordPlan>,
    /// This run's mask at the mask step, when an earlier batch found it.
    known_mask: Option<Vec<bool>>,
}

struct RunResult {
    latents: Tensor,
    after_step0: Option<Tensor>,
    observations: RunObservations,
}

/// What a job learns as it goes, and the inputs of every image it runs.
struct Job<'p> {
    plan: &'p Plan,
    schedule: Schedule,
    shots: BTreeMap<Target, Shot<'p>>,
    prepared: BTreeMap<Target, Prepared>,
    identity_mask: Option<Vec<bool>>,
    pre: BTreeMap<usize, PreRunResult>,
    /// Main-run masks of scene reference panels.
    reference_masks: BTreeMap<usize, Vec<bool>>,
    /// When each target image's work began.
    started: BTreeMap<Target, Instant>,
}

/// Lockstep recomputes one identity beside the panels: a storyboard of several characters, or a
/// panel that shows none, is refused before any work.
pub(super) fn check_cast(plan: &Plan) -> Result<()> {
    let characters = plan.identities().len();
    if characters > 1 {
        anyhow::bail!(
            "--bank recompute (lockstep) keeps one character, and this storyboard has {characters}: render it with --bank device or --bank host (one bank per character)"
        );
    }
    if let Some(p) = plan.panels().iter().find(|p| p.characters().count() != 1) {
        anyhow::bail!(
            "--bank recompute (lockstep) needs the character in every panel, but {} shows none ({}): render it with --bank device or --bank host",
            p.target.label(),
            p.shot.characters_field
        );
    }
    Ok(())
}

impl Renderer {
    /// Renders `panels` (and, when not cached, the identity and the scene references they need)
    /// in lockstep.
    pub(super) fn render_lockstep(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        panels: &[usize],
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let identity_key = &plan.identity().key;
        let cached = self
            .identity
            .as_ref()
            .filter(|c| &c.key == identity_key)
            .map(|c| c.output.mask.clone());
        if cached.is_none() {
            self.identity = None;
            self.replayed.clear();
        }
        // The panels to render: the requested ones, after the scene references they need.
        let mut targets: Vec<usize> = Vec::new();
        for &i in panels {
            if let BackgroundMode::SceneReference { first_panel } = plan.panels()[i].background {
                let scene = plan.panels()[i].scene.context("a panel has a scene")?;
                let key = &plan.panels()[first_panel].key;
                let kept = self.replayed.get(&scene).is_some_and(|r| &r.key == key);
                if first_panel != i && !kept && !targets.contains(&first_panel) {
                    targets.push(first_panel);
                }
            }
            if !targets.contains(&i) {
                targets.push(i);
            }
        }
        let schedule = plan.settings.recipe.schedule(plan.settings.steps);
        let mut job = Job {
            plan,
            schedule,
            shots: BTreeMap::new(),
            prepared: BTreeMap::new(),
            identity_mask: cached,
            pre: BTreeMap::new(),
            reference_masks: BTreeMap::new(),
            started: BTreeMap::new(),
        };
        for (&scene, r) in &self.replayed {
            let first = plan
                .panels()
                .iter()
                .position(|p| p.scene == Some(scene) && p.key == r.key);
            if let Some(first) = first {
                job.pre.insert(first, r.pre.clone());
                job.reference_masks.insert(first, r.mask.clone());
            }
        }
        let identity_is_target = job.identity_mask.is_none();
        if identity_is_target {
            job.started.insert(Target::Identity, Instant::now());
            if on_event(RenderEvent::Started(Target::Identity)) == StepControl::Cancel {
                return Ok(Outcome::Cancelled);
            }
        }
        // The identity runs again beside every panel: from its picture's inversion, where it is
        // one (inverted once, kept while its key holds).
        if (identity_is_target || !targets.is_empty())
            && self.ensure_inverted(models, plan, on_event)? == Outcome::Cancelled
        {
            return Ok(Outcome::Cancelled);
        }
        if targets.is_empty() {
            if !identity_is_target {
                return Ok(Outcome::Finished);
            }
            let specs = vec![identity_spec(&job.schedule, true, None, job.schedule.steps)];
            let Some(results) = self.run_batch(models, &mut job, &specs, options, on_event)? else {
                return Ok(Outcome::Cancelled);
            };
            return self.finish_identity(models, &job, results, on_event);
        }
        let follows = |i: usize| match plan.panels()[i].background {
            BackgroundMode::SceneReference { first_panel } => {
                (first_panel != i).then_some(first_panel)
            }
            _ => None,
        };
        let locks_on_identity = targets
            .iter()
            .any(|&i| plan.panels()[i].background == BackgroundMode::Identity);
        if identity_is_target && locks_on_identity {
            let end = job.schedule.mask_step + 1;
            let specs = vec![identity_spec(&job.schedule, false, None, end)];
            let Some(results) = self.run_batch(models, &mut job, &specs, options, on_event)? else {
                return Ok(Outcome::Cancelled);
            };
            job.identity_mask = results[0].observations.mask.clone();
        }
        let (first_wave, second_wave): (Vec<usize>, Vec<usize>) =
            targets.iter().copied().partition(|&i| follows(i).is_none());
        let mut identity_pending = identity_is_target;
        for wave in [first_wave, second_wave] {
            for chunk in wave.chunks(options.batch.max(1)) {
                if self.render_chunk(
                    models,
                    &mut job,
                    chunk,
                    identity_pending,
                    options,
                    on_event,
                )? == Outcome::Cancelled
                {
                    return Ok(Outcome::Cancelled);
                }
                identity_pending = false;
            }
        }
        Ok(Outcome::Finished)
    }

    /// The pre-runs of `chunk`, then its main runs, each batch with the runs that steer them.
    fn render_chunk(
        &mut self,
        models: &mut FluxModels,
        job: &mut Job,
        chunk: &[usize],
        identity_is_target: bool,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let s = job.schedule.clone();
        let plan = job.plan;
        // Scene reference panels recomputed for the chunk's followers, in chunk order.
        let mut references: Vec<usize> = Vec::new();
        for &i in chunk {
            if let BackgroundMode::SceneReference { first_panel } = plan.panels()[i].background {
                if first_panel != i && !references.contains(&first_panel) {
                    references.push(first_panel);
                }
            }
        }
        for phase in [Phase::PreRun, Phase::Main] {
            let pre = phase == Phase::PreRun;
            let identity_end = match (pre, identity_is_target) {
                (true, _) => s.mask_step + 1,
                (false, true) => s.steps,
                (false, false) => s.share.1.max(s.mask_step + 1).min(s.steps),
            };
            let helper_end = match pre {
                true => s.mask_step + 1,
                false => s.share.1.min(s.steps).max(2),
            };
            let locks_on_identity = chunk
                .iter()
                .any(|&i| plan.panels()[i].background == BackgroundMode::Identity);
            let record = RecordPlan {
                foreground: !pre || !references.is_empty(),
                background: locks_on_identity,
                features: true,
            };
            let mut specs = vec![identity_spec(
                &s,
                identity_is_target && !pre,
                Some(record),
                identity_end,
            )];
            specs[0].known_mask = job.identity_mask.clone();
            let mut reference_index = BTreeMap::new();
            for &r in &references {
                reference_index.insert(r, specs.len());
                specs.push(RunSpec {
                    kind: RunKind::Main(r),
                    first: 1,
                    end: helper_end,
                    target: false,
                    background: None,
                    record: Some(RecordPlan {
                        foreground: false,
                        background: true,
                        features: false,
                    }),
                    known_mask: job.reference_masks.get(&r).cloned(),
                });
            }
            for &i in chunk {
                let background = match plan.panels()[i].background {
                    BackgroundMode::Free => None,
                    BackgroundMode::Identity => Some(0),
                    BackgroundMode::SceneReference { first_panel } => {
                        reference_index.get(&first_panel).copied()
                    }
                };
                specs.push(RunSpec {
                    kind: match pre {
                        true => RunKind::PreRun(i),
                        false => RunKind::Main(i),
                    },
                    first: usize::from(!pre),
                    end: match pre {
                        true => s.mask_step + 1,
                        false => s.steps,
                    },
                    target: true,
                    background,
                    record: None,
                    known_mask: None,
                });
            }
            let Some(results) = self.run_batch(models, job, &specs, options, on_event)? else {
                return Ok(Outcome::Cancelled);
            };
            if pre {
                for (spec, result) in specs.iter().zip(results) {
                    if let (RunKind::PreRun(i), Some(after_step0)) = (spec.kind, result.after_step0)
                    {
                        job.pre.insert(
                            i,
                            PreRunResult {
                                after_step0,
                                observations: result.observations,
                            },
                        );
                    }
                }
                continue;
            }
            let mut results = results.into_iter();
            let identity_result = results.next().context("the identity ran")?;
            if identity_is_target {
                job.identity_mask = identity_result.observations.mask.clone();
                if self.finish_identity(models, job, vec![identity_result], on_event)?
                    == Outcome::Cancelled
                {
                    return Ok(Outcome::Cancelled);
                }
            }
            for (spec, result) in specs
                .iter()
                .zip(std::iter::once(None).chain(results.map(Some)))
            {
                let (RunKind::Main(i), Some(result), true) = (spec.kind, result, spec.target)
                else {
                    continue;
                };
                let pre = job.pre.get(&i).context("the pre-run ran")?;
                let observations = panel_observations(result.observations, &pre.observations);
                let planned = &plan.panels()[i];
                if let BackgroundMode::SceneReference { first_panel } = planned.background {
                    if first_panel == i {
                        let mask = observations.mask.clone().unwrap_or_default();
                        job.reference_masks.insert(i, mask.clone());
                        self.replayed.insert(
                            planned.scene.context("a panel has a scene")?,
                            ReplayedReference {
                                key: planned.key.clone(),
                                pre: pre.clone(),
                                mask,
                            },
                        );
                    }
                }
                let shot = &job.shots[&planned.target];
                let (image, latents) =
                    models.decode_packed(&result.latents, shot.width, shot.height)?;
                let output = ImageOutput {
                    target: planned.target,
                    image,
                    latents,
                    grid: grid_of(shot),
                    mask: observations.mask.unwrap_or_default(),
                    owners: observations.owners.unwrap_or_default(),
                    matches: observations.matches,
                    spans: shot.spans,
                    seconds: seconds_since(&job.started, planned.target),
                };
                let identity = &self
                    .identity
                    .as_ref()
                    .context("the identity is rendered first")?
                    .output
                    .image;
                on_event(RenderEvent::Finished {
                    output: &output,
                    identity,
                });
            }
        }
        Ok(Outcome::Finished)
    }

    fn finish_identity(
        &mut self,
        models: &mut FluxModels,
        job: &Job,
        results: Vec<RunResult>,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let result = results.into_iter().next().context("the identity ran")?;
        let shot = &job.shots[&Target::Identity];
        let (image, latents) = models.decode_packed(&result.latents, shot.width, shot.height)?;
        let output = ImageOutput {
            target: Target::Identity,
            image,
            latents,
            grid: grid_of(shot),
            mask: result.observations.mask.unwrap_or_default(),
            owners: result.observations.owners.unwrap_or_default(),
            matches: None,
            spans: shot.spans,
            seconds: seconds_since(&job.started, Target::Identity),
        };
        on_event(RenderEvent::Finished {
            output: &output,
            identity: &output.image,
        });
        self.identity = Some(IdentityCache {
            key: job.plan.identity().key.clone(),
            bank: None,
            output,
        });
        Ok(Outcome::Finished)
    }

    /// Runs one lockstep batch; `None` when cancelled.
    fn run_batch(
        &mut self,
        models: &mut FluxModels,
        job: &mut Job,
        specs: &[RunSpec],
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Option<Vec<RunResult>>> {
        let plan = job.plan;
        let target_of = |kind: RunKind| match kind {
            RunKind::Identity => Target::Identity,
            RunKind::PreRun(i) | RunKind::Main(i) => Target::Panel(i),
        };
        for spec in specs {
            let target = target_of(spec.kind);
            if spec.target && !job.started.contains_key(&target) {
                job.started.insert(target, Instant::now());
                if on_event(RenderEvent::Started(target)) == StepControl::Cancel {
                    return Ok(None);
                }
            }
            if !job.prepared.contains_key(&target) {
                let planned = plan.image(target).context("a planned image")?;
                let shot = shot_of(models, planned)?;
                let inverted = self.inverted_noise(&shot)?.cloned();
                let prepared = prepare(models, &shot, inverted.as_ref(), job.schedule.steps)?;
                job.shots.insert(target, shot);
                job.prepared.insert(target, prepared);
            }
        }
        let models: &FluxModels = models;
        let schedule = &job.schedule;
        let records: Vec<LiveRecord> = specs
            .iter()
            .map(|s| LiveRecord::with_mask(s.known_mask.clone()))
            .collect();
        let mut recorders: Vec<Option<LiveRecorder>> = specs
            .iter()
            .zip(&records)
            .map(|(s, record)| {
                s.record.map(|plan| LiveRecorder {
                    plan,
                    schedule,
                    record,
                })
            })
            .collect();
        let identities = [IdentityRef::Live(&records[0])];
        let mut hooks = Vec::with_capacity(specs.len());
        for (spec, recorder) in specs.iter().zip(recorders.iter_mut()) {
            let target = target_of(spec.kind);
            let (shot, prepared) = (&job.shots[&target], &job.prepared[&target]);
            let role = match spec.kind {
                RunKind::Identity => Role::Identity,
                RunKind::PreRun(_) => Role::PreRun,
                RunKind::Main(_) => Role::Main,
            };
            let refs = (role != Role::Identity).then(|| References {
                identities: &identities,
                background: spec.background.map(|b| BackgroundRef::Live(&records[b])),
            });
            let mut hook = ConsistHook::new(
                role,
                schedule,
                shot.spans,
                prepared.run.layout,
                prepared.heads,
                models.dtype,
                refs,
                recorder.as_mut().map(|r| r as &mut dyn Record),
            )
            .with_painted_mask(shot.painted_mask);
            if let RunKind::Main(i) = spec.kind {
                let pre = job.pre.get(&i).context("the pre-run ran first")?;
                hook.resume_after_step0(&pre.observations, &models.device)?;
            }
            hooks.push(hook);
        }
        let mut after_step0: Vec<Option<Tensor>> = vec![None; specs.len()];
        let mut runs = Vec::with_capacity(specs.len());
        for (spec, hook) in specs.iter().zip(hooks.iter_mut()) {
            let target = target_of(spec.kind);
            let prepared = &job.prepared[&target];
            let img = match spec.kind {
                RunKind::Main(i) => job.pre[&i].after_step0.clone(),
                _ => prepared.run.img.clone(),
            };
            runs.push(LockstepRun {
                run: &prepared.run,
                sigmas: &prepared.sigmas,
                first: spec.first,
                end: spec.end,
                img,
                hook: Some(hook as &mut dyn AttentionHook),
            });
        }
        let forwards = &mut self.forwards;
        let shots = &job.shots;
        let ended = sampler::denoise_lockstep(
            &models.transformer,
            &mut runs,
            plan.settings.guidance,
            &mut |i, r| {
                *forwards += 1;
                let spec = &specs[i];
                if r.step == 0 {
                    after_step0[i] = Some(r.next.clone());
                }
                if !spec.target {
                    return Ok(StepControl::Continue);
                }
                let phase = match spec.kind {
                    RunKind::Identity => Phase::Identity,
                    RunKind::PreRun(_) => Phase::PreRun,
                    RunKind::Main(_) => Phase::Main,
                };
                let shot = &shots[&target_of(spec.kind)];
                step_event(models, shot, phase, r, options, on_event)
            },
        )?;
        if let Lockstep::Cancelled(_) = ended {
            return Ok(None);
        }
        let latents: Vec<Tensor> = runs.into_iter().map(|r| r.img).collect();
        Ok(Some(
            hooks
                .into_iter()
                .zip(latents)
                .zip(after_step0)
                .map(|((hook, latents), after_step0)| RunResult {
                    latents,
                    after_step0,
                    observations: hook.observations(),
                })
                .collect(),
        ))
    }
}

fn identity_spec(s: &Schedule, target: bool, record: Option<RecordPlan>, end: usize) -> RunSpec {
    RunSpec {
        kind: RunKind::Identity,
        first: 0,
        end: end.min(s.steps),
        target,
        background: None,
        record,
        known_mask: None,
    }
}

fn seconds_since(started: &BTreeMap<Target, Instant>, target: Target) -> f64 {
    started
        .get(&target)
        .map_or(0.0, |t| t.elapsed().as_secs_f64())
}
