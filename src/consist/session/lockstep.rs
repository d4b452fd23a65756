//! Lockstep rendering (`--bank recompute`): no bank at all. The runs that steer a panel (the
//! identity, and a locked scene's first panel) are computed again beside it in the same
//! lockstep forward, and the panel's hook reads their keys, values and attention outputs of the
//! current block live (`reference::LiveRecord`).
//!
//! What must be known before a batch starts is only what a panel reads from step 1 on: a locked
//! background's mask (its reference's mask at the mask step). So a job runs in batches:
//! 1. the first character's identity's steps up to the mask step, alone, when a panel locks onto
//!    its background and its mask is not known yet;
//! 2. per chunk of `batch` panels: the pre-runs beside the identities' first steps, then the
//!    main runs beside the identities from step 0 (the first chunk finishes every identity
//!    image not rendered yet);
//! 3. the panels that lock onto a scene's first panel, after it: the same two batches, with the
//!    scene's first panel's main run computed again beside them.
//!
//! With several characters a batch has one identity row per character that its panels (or the
//! scene panels recomputed for them) show, and each panel reads the live record of each of its
//! characters' rows: a chunk of Mia's panels computes no step of Tom's identity.
//!
//! Each run computes exactly what the banked mode computes, so the images are the same.

use anyhow::{Context, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Character `k`'s identity.
    Identity(usize),
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
    /// Each character's identity mask at the mask step, once known (kept from an earlier job,
    /// or found in this one).
    identity_masks: Vec<Option<Vec<bool>>>,
    pre: BTreeMap<usize, PreRunResult>,
    /// Main-run masks of scene reference panels.
    reference_masks: BTreeMap<usize, Vec<bool>>,
    /// When each target image's work began.
    started: BTreeMap<Target, Instant>,
}

impl Renderer {
    /// Renders `panels` (and, when not cached, the identities and the scene references they
    /// need) in lockstep.
    pub(super) fn render_lockstep(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        panels: &[usize],
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let characters = plan.identities().len();
        self.identities.retain(|&k, _| k < characters);
        let mut identity_masks = Vec::with_capacity(characters);
        for (k, planned) in plan.identities().iter().enumerate() {
            let cached = self
                .identities
                .get(&k)
                .filter(|c| c.key == planned.key)
                .map(|c| c.output.mask.clone());
            if cached.is_none() {
                self.identities.remove(&k);
                if k == 0 {
                    self.replayed.clear();
                }
            }
            identity_masks.push(cached);
        }
        // The identities this job renders as images (not kept from an earlier one).
        let pending: Vec<usize> = (0..characters)
            .filter(|&k| identity_masks[k].is_none())
            .collect();
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
            identity_masks,
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
        for &k in &pending {
            let target = Target::identity_of(k);
            job.started.insert(target, Instant::now());
            if on_event(RenderEvent::Started(target)) == StepControl::Cancel {
                return Ok(Outcome::Cancelled);
            }
        }
        // The identities run again beside every panel: from their pictures' inversions, where
        // they are pictures (inverted once, kept while their keys hold).
        if !pending.is_empty() || !targets.is_empty() {
            for k in 0..characters {
                if self.ensure_inverted(models, plan, k, on_event)? == Outcome::Cancelled {
                    return Ok(Outcome::Cancelled);
                }
            }
        }
        if targets.is_empty() {
            if pending.is_empty() {
                return Ok(Outcome::Finished);
            }
            let steps = job.schedule.steps;
            let specs: Vec<RunSpec> = pending
                .iter()
                .map(|&k| identity_spec(k, &job.schedule, true, None, steps))
                .collect();
            let Some(results) = self.run_batch(models, &mut job, &specs, options, on_event)? else {
                return Ok(Outcome::Cancelled);
            };
            for (&k, result) in pending.iter().zip(results) {
                self.finish_identity(models, &job, k, result, on_event)?;
            }
            return Ok(Outcome::Finished);
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
        if job.identity_masks[0].is_none() && locks_on_identity {
            let end = job.schedule.mask_step + 1;
            let specs = vec![identity_spec(0, &job.schedule, false, None, end)];
            let Some(results) = self.run_batch(models, &mut job, &specs, options, on_event)? else {
                return Ok(Outcome::Cancelled);
            };
            job.identity_masks[0] = results[0].observations.mask.clone();
        }
        let (first_wave, second_wave): (Vec<usize>, Vec<usize>) =
            targets.iter().copied().partition(|&i| follows(i).is_none());
        let mut pending = pending;
        for wave in [first_wave, second_wave] {
            for chunk in wave.chunks(options.batch.max(1)) {
                if self.render_chunk(models, &mut job, chunk, &pending, options, on_event)?
                    == Outcome::Cancelled
                {
                    return Ok(Outcome::Cancelled);
                }
                pending.clear();
            }
        }
        Ok(Outcome::Finished)
    }

    /// The pre-runs of `chunk`, then its main runs, each batch with the runs that steer them;
    /// the identities of `pending` are rendered whole beside the main runs.
    fn render_chunk(
        &mut self,
        models: &mut FluxModels,
        job: &mut Job,
        chunk: &[usize],
        pending: &[usize],
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
        let locks_on_identity = chunk
            .iter()
            .any(|&i| plan.panels()[i].background == BackgroundMode::Identity);
        let read = identities_read(plan, chunk, &references, locks_on_identity);
        for phase in [Phase::PreRun, Phase::Main] {
            let pre = phase == Phase::PreRun;
            let helper_end = match pre {
                true => s.mask_step + 1,
                false => s.share.1.min(s.steps).max(2),
            };
            let record = |k: usize| RecordPlan {
                foreground: !pre || !references.is_empty(),
                background: k == 0 && locks_on_identity,
                features: true,
            };
            // One row per identity read, and per identity rendered whole in the main runs.
            let rows: Vec<usize> = (0..plan.identities().len())
                .filter(|k| read.contains(k) || (!pre && pending.contains(k)))
                .collect();
            let mut specs: Vec<RunSpec> = rows
                .iter()
                .map(|&k| {
                    let whole = !pre && pending.contains(&k);
                    let end = match (pre, whole) {
                        (true, _) => s.mask_step + 1,
                        (false, true) => s.steps,
                        (false, false) => s.share.1.max(s.mask_step + 1).min(s.steps),
                    };
                    let mut spec = identity_spec(k, &s, whole, Some(record(k)), end);
                    spec.known_mask = job.identity_masks[k].clone();
                    spec
                })
                .collect();
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
                    BackgroundMode::Identity => rows.iter().position(|&k| k == 0),
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
            let mut results: Vec<Option<RunResult>> = results.into_iter().map(Some).collect();
            // The identities first: a panel's matches are shown against them.
            for (spec, result) in specs.iter().zip(results.iter_mut()) {
                if let (RunKind::Identity(k), true) = (spec.kind, spec.target) {
                    let result = result.take().context("the identity ran")?;
                    job.identity_masks[k] = result.observations.mask.clone();
                    self.finish_identity(models, job, k, result, on_event)?;
                }
            }
            for (spec, result) in specs.iter().zip(results) {
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
                let identities = self.identity_images(planned.characters())?;
                on_event(RenderEvent::Finished {
                    output: &output,
                    identities,
                });
            }
        }
        Ok(Outcome::Finished)
    }

    /// Character `k`'s identity image from its whole run, announced and kept (without a bank).
    fn finish_identity(
        &mut self,
        models: &mut FluxModels,
        job: &Job,
        k: usize,
        result: RunResult,
        on_event: &mut EventSink,
    ) -> Result<()> {
        let target = Target::identity_of(k);
        let shot = &job.shots[&target];
        let (image, latents) = models.decode_packed(&result.latents, shot.width, shot.height)?;
        let output = ImageOutput {
            target,
            image,
            latents,
            grid: grid_of(shot),
            mask: result.observations.mask.unwrap_or_default(),
            owners: result.observations.owners.unwrap_or_default(),
            matches: None,
            spans: shot.spans,
            seconds: seconds_since(&job.started, target),
        };
        on_event(RenderEvent::Finished {
            output: &output,
            identities: vec![&output.image],
        });
        self.identities.insert(
            k,
            IdentityCache {
                key: job.plan.identities()[k].key.clone(),
                bank: None,
                output,
            },
        );
        Ok(())
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
            RunKind::Identity(k) => Target::identity_of(k),
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
        // Each panel run reads the rows of its characters' identities, in its prompt's order.
        let row_of: BTreeMap<usize, usize> = specs
            .iter()
            .enumerate()
            .filter_map(|(n, s)| match s.kind {
                RunKind::Identity(k) => Some((k, n)),
                _ => None,
            })
            .collect();
        let identities: Vec<Vec<IdentityRef>> = specs
            .iter()
            .map(|spec| match spec.kind {
                RunKind::Identity(_) => Ok(vec![]),
                RunKind::PreRun(i) | RunKind::Main(i) => plan.panels()[i]
                    .characters()
                    .map(|k| {
                        let row = row_of
                            .get(&k)
                            .context("internal: a panel's identity runs beside it")?;
                        Ok(IdentityRef::Live(&records[*row]))
                    })
                    .collect(),
            })
            .collect::<Result<_>>()?;
        let mut hooks = Vec::with_capacity(specs.len());
        for ((spec, recorder), identities) in
            specs.iter().zip(recorders.iter_mut()).zip(&identities)
        {
            let target = target_of(spec.kind);
            let (shot, prepared) = (&job.shots[&target], &job.prepared[&target]);
            let role = match spec.kind {
                RunKind::Identity(_) => Role::Identity,
                RunKind::PreRun(_) => Role::PreRun,
                RunKind::Main(_) => Role::Main,
            };
            let refs = (role != Role::Identity).then(|| References {
                identities,
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
            .with_painted_mask(shot.painted_mask)
            .with_characters(shot.characters.clone());
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
                    RunKind::Identity(_) => Phase::Identity,
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

/// Character `k`'s identity run, steps `0..end`.
fn identity_spec(
    k: usize,
    s: &Schedule,
    target: bool,
    record: Option<RecordPlan>,
    end: usize,
) -> RunSpec {
    RunSpec {
        kind: RunKind::Identity(k),
        first: 0,
        end: end.min(s.steps),
        target,
        background: None,
        record,
        known_mask: None,
    }
}

/// The identities a chunk's runs read: those of the characters its panels and the scene panels
/// recomputed for them show, and the first character's where a panel locks onto its background.
fn identities_read(
    plan: &Plan,
    chunk: &[usize],
    references: &[usize],
    locks_on_identity: bool,
) -> BTreeSet<usize> {
    let mut read: BTreeSet<usize> = chunk
        .iter()
        .chain(references)
        .flat_map(|&i| plan.panels()[i].characters())
        .collect();
    if locks_on_identity {
        read.insert(0);
    }
    read
}

fn seconds_since(started: &BTreeMap<Target, Instant>, target: Target) -> f64 {
    started
        .get(&target)
        .map_or(0.0, |t| t.elapsed().as_secs_f64())
}
