//! Executes a storyboard plan: the identity run, per locked scene a background reference, per
//! panel a pre-run and a main run (characonsist-spec.md §1, "Order of generation"). The renderer
//! keeps the identity's bank between jobs, so re-rolling one panel costs one panel. With several
//! characters there is one identity run and one bank per character, and a panel reads the banks
//! of the characters it shows.

use anyhow::{Context, Result};
use candle_core::Tensor;
use image::RgbImage;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use super::bank::{Bank, Record, RecordPlan, Recorder};
use super::bank_file::{self, Refused};
use super::look::Look;
use super::mask::{character_spans, Grid, TextSpans};
use super::matching::Matches;
use super::plan::{
    BackgroundMode, ImageKey, Phase, Plan, PlannedImage, PlannedPicture, RenderRequest, Target,
};
use super::recipe::Schedule;
use super::reference::{BackgroundRef, IdentityRef};
use super::steer::{ConsistHook, References, Role, RunObservations};
use crate::pipeline::{FluxModels, NoiseSource};
use crate::sampler::{self, Denoised, RunInputs, StepControl, StepReport};

/// A rendered image with what explains it.
#[derive(Clone)]
pub struct ImageOutput {
    pub target: Target,
    pub image: RgbImage,
    /// Final latents, unpacked (1, 16, H/8, W/8), f32, on the CPU.
    pub latents: Tensor,
    pub grid: Grid,
    /// Foreground mask at the mask step (of the main run, for panels).
    pub mask: Vec<bool>,
    /// Each token's owner at the mask step: 0 background, `k + 1` the image's `k`-th character
    /// in its prompt's order (with one character, the mask as 0 and 1).
    pub owners: Vec<u8>,
    /// The kept matches of the main run's mask step (panels only), each into the identity of
    /// the character that owns its panel token.
    pub matches: Option<Matches>,
    pub spans: TextSpans,
    pub seconds: f64,
}

impl ImageOutput {
    /// Each token's owner; the mask as 0 and 1 where the run recorded no owners.
    pub fn owners_or_mask(&self) -> Vec<u8> {
        match self.owners.len() == self.mask.len() {
            true => self.owners.clone(),
            false => self.mask.iter().map(|&m| u8::from(m)).collect(),
        }
    }
}

/// One finished denoising step of an image.
pub struct ImageStep {
    pub target: Target,
    pub phase: Phase,
    /// 0-based.
    pub step: usize,
    pub steps: usize,
    /// A decoded preview of the current estimate, when asked for.
    pub preview: Option<RgbImage>,
}

pub enum RenderEvent<'a> {
    /// An image's work begins (before its prompt is prepared).
    Started(Target),
    Step(ImageStep),
    /// An image is done; `identities` are the identity images of the characters it shows, in
    /// its prompt's order: a match of a token owned by its `k`-th character points into the
    /// `k`-th (an identity's is the image itself).
    Finished {
        output: &'a ImageOutput,
        identities: Vec<&'a RgbImage>,
    },
    /// A panel's pre-run reached its mask step (reported when [`RenderOptions::report_looks`]
    /// or [`RenderOptions::looks_only`] asks); `identities` as for `Finished`.
    Look {
        look: &'a Look,
        identities: Vec<&'a RgbImage>,
    },
}

/// Where the identity's (and a scene reference's) keys and values live between the runs they
/// steer.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum BankMode {
    /// A lean bank on the device, kept between jobs (a re-roll costs one panel).
    #[default]
    Device,
    /// The same bank in host memory, moved to the device one block's slice at a time.
    Host,
    /// No bank: the identity (and a locked scene's first panel) is computed again beside the
    /// panels it steers, in the same lockstep forward.
    Recompute,
}

#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Decode a preview every this many steps.
    pub preview_every: Option<usize>,
    pub bank: BankMode,
    /// In lockstep, the most panels computed beside the identity at once.
    pub batch: usize,
    /// The banked modes: where the identity's bank is read from when its key matches, and
    /// written to when it is computed.
    pub bank_file: Option<std::path::PathBuf>,
    /// Report each panel's look when its pre-run reaches the mask step (one VAE decode more).
    pub report_looks: bool,
    /// Review first: the requested panels stop after their pre-run, each reporting its look;
    /// what they depend on is still rendered whole.
    pub looks_only: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            preview_every: None,
            bank: BankMode::default(),
            batch: 4,
            bank_file: None,
            report_looks: false,
            looks_only: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Cancelled,
}

struct IdentityCache {
    key: ImageKey,
    /// The bank (banked modes), and whether it holds the background too (a locked panel on the
    /// identity's background). Lockstep keeps none.
    bank: Option<(Bank, bool)>,
    output: ImageOutput,
}

struct SceneReference {
    key: ImageKey,
    bank: Bank,
}

mod inversion;
mod lockstep;

pub use inversion::invert_picture;

type EventSink<'a> = dyn FnMut(RenderEvent) -> StepControl + 'a;

/// Renders storyboards, keeping the identity bank (and the current scene's background reference)
/// between jobs.
#[derive(Default)]
pub struct Renderer {
    /// Each character's identity, by character (lockstep keeps them without a bank).
    identities: BTreeMap<usize, IdentityCache>,
    scene_refs: BTreeMap<usize, SceneReference>,
    /// Lockstep: the scene references a later panel may recompute.
    replayed: BTreeMap<usize, lockstep::ReplayedReference>,
    /// Transformer forwards run so far (one per run and step).
    forwards: usize,
    /// What the caller should be told (a bank file refused), oldest first.
    notes: Vec<String>,
    /// Each picture identity's inverted noise, by character, for the identity key it was
    /// inverted for.
    inverted: BTreeMap<usize, (ImageKey, Tensor)>,
    /// Panels' looks not yet run on, by panel: a main run starts from its panel's look when
    /// the key still matches.
    looks: BTreeMap<usize, Look>,
}

/// Everything a run needs that does not change between its steps.
struct Shot<'a> {
    target: Target,
    prompt: &'a str,
    spans: TextSpans,
    /// The T5 spans of the characters it shows, in its prompt's order.
    characters: Vec<Range<usize>>,
    width: usize,
    height: usize,
    noise: &'a NoiseSource,
    picture: Option<&'a PlannedPicture>,
    /// An identity's painted foreground, at its token grid.
    painted_mask: Option<&'a [bool]>,
}

/// An image's shot with its token spans, checked.
fn shot_of<'a>(models: &FluxModels, image: &'a PlannedImage) -> Result<Shot<'a>> {
    let s = &image.shot;
    let spans = TextSpans::of(&models.tokenizers, &s.environment, &s.prompt)
        .with_context(|| format!("{} ({})", image.target.label(), s.environment_field))?;
    let prompts: Vec<&str> = s.characters.iter().map(|c| c.prompt.as_str()).collect();
    let characters = character_spans(&models.tokenizers, &s.environment, &prompts, spans)
        .with_context(|| format!("{} ({})", image.target.label(), s.characters_field))?;
    Ok(Shot {
        target: image.target,
        prompt: &s.prompt,
        spans,
        characters,
        width: s.width,
        height: s.height,
        noise: &s.noise,
        picture: s.picture.as_ref(),
        painted_mask: s.painted_mask.as_deref(),
    })
}

impl Renderer {
    /// Bytes held by the identities' banks and scene references now.
    pub fn bank_bytes(&self) -> usize {
        self.identities
            .values()
            .filter_map(|c| c.bank.as_ref())
            .map(|(bank, _)| bank.bytes)
            .sum::<usize>()
            + self
                .scene_refs
                .values()
                .map(|s| s.bank.bytes)
                .sum::<usize>()
    }

    /// The first character's identity bank's peak bytes during its recording run.
    pub fn identity_peak_bytes(&self) -> Option<usize> {
        self.identity_cache(0)
            .and_then(|c| c.bank.as_ref())
            .map(|(bank, _)| bank.peak_bytes)
    }

    /// The notes gathered since the last call (a bank file refused, and why).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Keeps `look` (read back from disk, say) so that its panel's main run starts from it
    /// while its key matches the plan's.
    pub fn offer_look(&mut self, look: Look) {
        if let Target::Panel(i) = look.target {
            self.looks.insert(i, look);
        }
    }

    /// Whether a look of panel `i` with `key` is at hand.
    pub fn has_look(&self, i: usize, key: &ImageKey) -> bool {
        self.looks.get(&i).is_some_and(|l| &l.key == key)
    }

    /// Transformer forwards run so far, one per run and step, recomputations included.
    pub fn forwards(&self) -> usize {
        self.forwards
    }

    /// Renders what `request` asks for, and whatever of its dependencies is not cached.
    pub fn render(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        request: RenderRequest,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let panels = plan.requested_panels(&request)?;
        if options.bank == BankMode::Recompute && options.looks_only {
            anyhow::bail!("review first needs the identity's bank between a panel's pre-run and its main run, and --bank recompute (lockstep) keeps none: its pre-runs and main runs share one recomputation of the identity. Use --bank device or --bank host");
        }
        // Every prompt is checked before anything is rendered, so a bad one costs no work,
        // and encoded once for the job (after which the encoders may be freed).
        let mut prompts = Vec::new();
        for image in plan.identities() {
            prompts.push(shot_of(models, image)?.prompt);
        }
        for &i in &panels {
            prompts.push(shot_of(models, &plan.panels()[i])?.prompt);
        }
        for image in plan
            .identities()
            .iter()
            .chain(panels.iter().map(|&i| &plan.panels()[i]))
        {
            models
                .check_fits(image.shot.width, image.shot.height)
                .with_context(|| image.target.label())?;
        }
        models.begin_job(&prompts)?;
        if options.bank == BankMode::Recompute {
            return self.render_lockstep(models, plan, &panels, options, on_event);
        }
        // Every forward of the banked modes reports one step.
        let mut steps = 0;
        let result = self.render_banked(models, plan, &panels, options, &mut |event| {
            // The inversion counts its own forwards (FireFlow's take one more than its steps).
            if let RenderEvent::Step(ImageStep { phase, .. }) = &event {
                if *phase != Phase::Inversion {
                    steps += 1;
                }
            }
            on_event(event)
        });
        self.forwards += steps;
        result
    }

    fn render_banked(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        panels: &[usize],
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let schedule = plan.settings.recipe.schedule(plan.settings.steps);
        self.identities.retain(|&k, _| k < plan.identities().len());
        for k in 0..plan.identities().len() {
            if self.ensure_identity(models, plan, k, &schedule, options, on_event)?
                == Outcome::Cancelled
            {
                return Ok(Outcome::Cancelled);
            }
        }
        for (n, &i) in panels.iter().enumerate() {
            // A scene reference is kept only while a later panel of this job still needs it.
            let needed: Vec<Option<usize>> = panels[n..]
                .iter()
                .map(|&j| plan.panels()[j].scene)
                .collect();
            self.scene_refs
                .retain(|scene, _| needed.contains(&Some(*scene)));
            if self.render_panel(
                models,
                plan,
                &schedule,
                i,
                options,
                options.looks_only,
                on_event,
            )? == Outcome::Cancelled
            {
                return Ok(Outcome::Cancelled);
            }
        }
        Ok(Outcome::Finished)
    }

    /// Character `k`'s identity with its bank: kept, read from its bank file, or rendered (and
    /// written to its bank file). Only the first character's records the background: a locked
    /// panel locks onto that one.
    fn ensure_identity(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        k: usize,
        schedule: &Schedule,
        options: &RenderOptions,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let planned = &plan.identities()[k];
        let with_background = k == 0 && plan.identity_background_needed();
        if self.identities.get(&k).is_some_and(|c| {
            c.key == planned.key && c.bank.as_ref().is_some_and(|b| b.1 || !with_background)
        }) {
            return Ok(Outcome::Finished);
        }
        self.identities.remove(&k);
        if k == 0 {
            self.scene_refs.clear();
            self.replayed.clear();
        }
        let bank_file = options
            .bank_file
            .as_deref()
            .map(|path| bank_file::path_of(path, k));
        if let Some(path) = &bank_file {
            let home = bank_home(models, options);
            match bank_file::read(path, &planned.key, with_background, &home) {
                Ok(stored) => {
                    let shot = shot_of(models, planned)?;
                    let output =
                        identity_output(&shot, stored.image, stored.latents, &stored.bank, 0.0);
                    self.identities.insert(
                        k,
                        IdentityCache {
                            key: planned.key.clone(),
                            bank: Some((stored.bank, stored.with_background)),
                            output,
                        },
                    );
                    return Ok(Outcome::Finished);
                }
                Err(Refused::Missing) => {}
                Err(Refused::Note(note)) => self.notes.push(note),
            }
        }
        if on_event(RenderEvent::Started(planned.target)) == StepControl::Cancel
            || self.ensure_inverted(models, plan, k, on_event)? == Outcome::Cancelled
        {
            return Ok(Outcome::Cancelled);
        }
        let shot = shot_of(models, planned)?;
        let record = RecordPlan {
            foreground: true,
            background: with_background,
            features: true,
        };
        let inverted = self.inverted_noise(&shot)?;
        let Some((bank, output)) = run_identity(
            models,
            inverted,
            plan.settings.guidance,
            schedule,
            &shot,
            record,
            options,
            on_event,
        )?
        else {
            return Ok(Outcome::Cancelled);
        };
        if let Some(path) = &bank_file {
            let (image, latents) = (&output.image, &output.latents);
            bank_file::write(path, &planned.key, with_background, &bank, image, latents)?;
        }
        self.identities.insert(
            k,
            IdentityCache {
                key: planned.key.clone(),
                bank: Some((bank, with_background)),
                output,
            },
        );
        Ok(Outcome::Finished)
    }

    /// Inverts character `k`'s picture identity's picture to the noise its identity run starts
    /// from, unless that inversion is at hand for the identity's key. The inversion's steps are
    /// reported as the identity's [`Phase::Inversion`] and may be cancelled.
    fn ensure_inverted(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        k: usize,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let planned = &plan.identities()[k];
        let Some(picture) = &planned.shot.picture else {
            return Ok(Outcome::Finished);
        };
        if self
            .inverted
            .get(&k)
            .is_some_and(|(key, _)| key == &planned.key)
        {
            return Ok(Outcome::Finished);
        }
        let shot = &planned.shot;
        let inverted = inversion::invert_picture(
            models,
            picture,
            &shot.prompt,
            plan.settings.steps,
            plan.settings.guidance,
            &mut |step, steps| {
                Ok(on_event(RenderEvent::Step(ImageStep {
                    target: planned.target,
                    phase: Phase::Inversion,
                    step: step - 1,
                    steps,
                    preview: None,
                })))
            },
        )?;
        self.forwards += picture.key.inverter.forwards(plan.settings.steps);
        match inverted {
            Some(noise) => {
                self.inverted.insert(k, (planned.key.clone(), noise));
                Ok(Outcome::Finished)
            }
            None => Ok(Outcome::Cancelled),
        }
    }

    /// The noise `shot` starts from where it is not its noise source's: a picture identity's
    /// inversion.
    fn inverted_noise(&self, shot: &Shot) -> Result<Option<&Tensor>> {
        if shot.picture.is_none() {
            return Ok(None);
        }
        let (_, noise) = shot
            .target
            .character()
            .and_then(|k| self.inverted.get(&k))
            .context("the identity's picture is inverted before its run")?;
        Ok(Some(noise))
    }

    /// The first character's identity image and its mask, once rendered.
    pub fn identity_output(&self) -> Option<&ImageOutput> {
        self.identity_cache(0).map(|c| &c.output)
    }

    /// Character `k`'s identity, once rendered.
    fn identity_cache(&self, k: usize) -> Option<&IdentityCache> {
        self.identities.get(&k)
    }

    /// The identity images of `characters`, in their order: what a panel's matches point into.
    fn identity_images(&self, characters: impl Iterator<Item = usize>) -> Result<Vec<&RgbImage>> {
        characters
            .map(|k| {
                let cache = self
                    .identity_cache(k)
                    .context("the identities are rendered first")?;
                Ok(&cache.output.image)
            })
            .collect()
    }

    /// Renders panel `i` (after its scene reference, when it locks onto one), from its look
    /// where one is at hand; with `look_only`, only as far as its look.
    #[allow(clippy::too_many_arguments)]
    fn render_panel(
        &mut self,
        models: &mut FluxModels,
        plan: &Plan,
        schedule: &Schedule,
        i: usize,
        options: &RenderOptions,
        look_only: bool,
        on_event: &mut EventSink,
    ) -> Result<Outcome> {
        let planned = &plan.panels()[i];
        // A look whose panel changed since is stale: dropped, never run on.
        self.looks
            .retain(|&j, l| plan.panels().get(j).is_some_and(|p| p.key == l.key));
        let look = self.looks.get(&i).filter(|l| l.key == planned.key).cloned();
        let scene = planned.scene.context("a panel has a scene")?;
        let mut recorder = None;
        match planned.background {
            BackgroundMode::SceneReference { first_panel } if first_panel == i => {
                let record = RecordPlan {
                    foreground: false,
                    background: true,
                    features: false,
                };
                recorder = Some(Recorder::new(
                    record,
                    schedule.clone(),
                    bank_home(models, options),
                ));
            }
            BackgroundMode::SceneReference { first_panel } => {
                let key = &plan.panels()[first_panel].key;
                if self.scene_refs.get(&scene).is_none_or(|r| &r.key != key)
                    && self.render_panel(
                        models,
                        plan,
                        schedule,
                        first_panel,
                        options,
                        false,
                        on_event,
                    )? == Outcome::Cancelled
                {
                    return Ok(Outcome::Cancelled);
                }
            }
            _ => {}
        }
        if on_event(RenderEvent::Started(planned.target)) == StepControl::Cancel {
            return Ok(Outcome::Cancelled);
        }
        let bank_of = |k: usize| -> Result<&Bank> {
            let identity = self
                .identity_cache(k)
                .context("the identities are rendered first")?;
            let (bank, _) = identity.bank.as_ref().context("the identity has a bank")?;
            Ok(bank)
        };
        let identities = planned
            .characters()
            .map(|k| Ok(IdentityRef::Bank(bank_of(k)?)))
            .collect::<Result<Vec<_>>>()?;
        let shown_identities = self.identity_images(planned.characters())?;
        let background = match planned.background {
            BackgroundMode::Free => None,
            BackgroundMode::Identity => bank_of(0)?.bg.as_ref().map(BackgroundRef::Bank),
            BackgroundMode::SceneReference { first_panel } if first_panel == i => None,
            BackgroundMode::SceneReference { .. } => self
                .scene_refs
                .get(&scene)
                .and_then(|r| r.bank.bg.as_ref())
                .map(BackgroundRef::Bank),
        };
        let refs = References {
            identities: &identities,
            background,
        };
        let shot = shot_of(models, planned)?;
        let start = Instant::now();
        // Review first shows a look at hand again; a new one is shown when asked for.
        let reported = look_only || options.report_looks;
        let (look, made) = match look {
            Some(look) => (look, false),
            None => {
                let made = pre_run(
                    models,
                    &planned.key,
                    plan.settings.guidance,
                    schedule,
                    &shot,
                    refs,
                    reported,
                    options,
                    on_event,
                )?;
                let Some(look) = made else {
                    return Ok(Outcome::Cancelled);
                };
                (look, true)
            }
        };
        if reported && (made || look_only) {
            on_event(RenderEvent::Look {
                look: &look,
                identities: shown_identities.clone(),
            });
        }
        if look_only {
            self.looks.insert(i, look);
            return Ok(Outcome::Finished);
        }
        let result = main_run(
            models,
            plan.settings.guidance,
            schedule,
            &shot,
            refs,
            &look,
            recorder.as_mut(),
            options,
            on_event,
        )?;
        let Some((image, latents, observations)) = result else {
            self.looks.insert(i, look);
            return Ok(Outcome::Cancelled);
        };
        let output = ImageOutput {
            target: shot.target,
            image,
            latents,
            grid: grid_of(&shot),
            mask: observations.mask.unwrap_or_default(),
            owners: observations.owners.unwrap_or_default(),
            matches: observations.matches,
            spans: shot.spans,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(RenderEvent::Finished {
            output: &output,
            identities: shown_identities,
        });
        self.looks.remove(&i);
        if let Some(recorder) = recorder {
            self.scene_refs.insert(
                scene,
                SceneReference {
                    key: planned.key.clone(),
                    bank: recorder.finish()?,
                },
            );
        }
        Ok(Outcome::Finished)
    }
}

/// An identity run's output: its image, and its mask as the bank recorded it.
fn identity_output(
    shot: &Shot,
    image: RgbImage,
    latents: Tensor,
    bank: &Bank,
    seconds: f64,
) -> ImageOutput {
    ImageOutput {
        target: shot.target,
        image,
        latents,
        grid: grid_of(shot),
        mask: bank.mask.clone(),
        owners: bank.mask.iter().map(|&m| u8::from(m)).collect(),
        matches: None,
        spans: shot.spans,
        seconds,
    }
}

fn grid_of(shot: &Shot) -> Grid {
    Grid::of_size(shot.width, shot.height)
}

struct Prepared {
    run: RunInputs,
    sigmas: Vec<f64>,
    heads: usize,
}

/// `inverted` replaces the shot's noise source (a picture identity's inversion).
fn prepare(
    models: &mut FluxModels,
    shot: &Shot,
    inverted: Option<&Tensor>,
    steps: usize,
) -> Result<Prepared> {
    let (run, sigmas) = match inverted {
        Some(noise) => models.prepare_run_from(shot.prompt, noise, steps)?,
        None => models.prepare_run(shot.prompt, shot.noise, shot.width, shot.height, steps)?,
    };
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
    Ok(on_event(RenderEvent::Step(ImageStep {
        target: shot.target,
        phase,
        step: r.step,
        steps: r.steps,
        preview,
    })))
}

/// The identity run: plain FLUX with a hook recording what `record` asks into a bank; for a
/// picture identity, from its inverted noise (the reconstruction). Announces the finished image;
/// `None` when cancelled.
#[allow(clippy::too_many_arguments)]
fn run_identity(
    models: &mut FluxModels,
    inverted: Option<&Tensor>,
    guidance: f64,
    schedule: &Schedule,
    shot: &Shot,
    record: RecordPlan,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<Option<(Bank, ImageOutput)>> {
    let mut recorder = Recorder::new(record, schedule.clone(), bank_home(models, options));
    let start = Instant::now();
    let p = prepare(models, shot, inverted, schedule.steps)?;
    let mut hook = ConsistHook::new(
        Role::Identity,
        schedule,
        shot.spans,
        p.run.layout,
        p.heads,
        models.dtype,
        None,
        Some(&mut recorder as &mut dyn Record),
    )
    .with_characters(shot.characters.clone())
    .with_painted_mask(shot.painted_mask);
    let models_ref: &FluxModels = models;
    let result = sampler::denoise(
        &models_ref.transformer,
        &p.run,
        &p.sigmas,
        guidance,
        Some(&mut hook),
        &mut |r| step_event(models_ref, shot, Phase::Identity, r, options, on_event),
    )?;
    let packed = match result {
        Denoised::Done(packed) => packed,
        Denoised::Cancelled(_) => return Ok(None),
    };
    let (image, latents) = models_ref.decode_packed(&packed, shot.width, shot.height)?;
    drop(hook);
    let bank = recorder.finish()?;
    let seconds = start.elapsed().as_secs_f64();
    let output = identity_output(shot, image, latents, &bank, seconds);
    on_event(RenderEvent::Finished {
        output: &output,
        identities: vec![&output.image],
    });
    Ok(Some((bank, output)))
}

/// A panel's pre-run (steps 0..=mask step): its look, under `key`. With `preview`, the
/// x0 estimate of the mask step is decoded for it (else the look's preview is empty).
#[allow(clippy::too_many_arguments)]
fn pre_run(
    models: &mut FluxModels,
    key: &ImageKey,
    guidance: f64,
    schedule: &Schedule,
    shot: &Shot,
    refs: References,
    preview: bool,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<Option<Look>> {
    let p = prepare(models, shot, None, schedule.steps)?;
    let models: &FluxModels = models;
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
    )
    .with_characters(shot.characters.clone());
    let mut after_step0 = None;
    let mut estimate = None;
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
            if preview && r.step == mask_step {
                let (image, _) =
                    models.decode_packed(&r.predicted_clean()?, shot.width, shot.height)?;
                estimate = Some(image);
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
    let after_step0 = after_step0.context("the pre-run took no step")?;
    let grid = grid_of(shot);
    Ok(Some(Look {
        target: shot.target,
        key: key.clone(),
        preview: estimate.unwrap_or_default(),
        grid,
        spans: shot.spans,
        after_step0: after_step0.to_device(&candle_core::Device::Cpu)?,
        observations: pre.observations(),
    }))
}

/// A panel's main run, from its look's step 0 (the pre-run's, which the two share exactly) and
/// with the look's mask and matches until its own mask step.
#[allow(clippy::too_many_arguments)]
fn main_run(
    models: &mut FluxModels,
    guidance: f64,
    schedule: &Schedule,
    shot: &Shot,
    refs: References,
    look: &Look,
    recorder: Option<&mut Recorder>,
    options: &RenderOptions,
    on_event: &mut EventSink,
) -> Result<Option<(RgbImage, Tensor, RunObservations)>> {
    let p = prepare(models, shot, None, schedule.steps)?;
    let models: &FluxModels = models;
    let dev = p.run.img.device().clone();
    let pre = &look.observations;
    let mut main = ConsistHook::new(
        Role::Main,
        schedule,
        shot.spans,
        p.run.layout,
        p.heads,
        models.dtype,
        Some(refs),
        recorder.map(|r| r as &mut dyn Record),
    )
    .with_characters(shot.characters.clone());
    main.resume_after_step0(pre, &dev)?;
    let result = sampler::denoise_from(
        &models.transformer,
        &p.run,
        &p.sigmas,
        1,
        look.after_step0.to_device(&dev)?,
        guidance,
        Some(&mut main),
        &mut |r| step_event(models, shot, Phase::Main, r, options, on_event),
    )?;
    let Denoised::Done(packed) = result else {
        return Ok(None);
    };
    let observations = panel_observations(main.observations(), pre);
    let (image, latents) = models.decode_packed(&packed, shot.width, shot.height)?;
    Ok(Some((image, latents, observations)))
}

/// Where a bank is held.
fn bank_home(models: &FluxModels, options: &RenderOptions) -> candle_core::Device {
    match options.bank {
        BankMode::Host => candle_core::Device::Cpu,
        BankMode::Device | BankMode::Recompute => models.device.clone(),
    }
}

/// A panel's mask and matches: its main run's, or with a mask step of 0 (the main run starts at
/// step 1) its pre-run's.
fn panel_observations(main: RunObservations, pre: &RunObservations) -> RunObservations {
    match main.mask {
        Some(_) => main,
        None => RunObservations {
            mask: pre.mask.clone(),
            owners: pre.owners.clone(),
            matches: main.matches.or_else(|| pre.matches.clone()),
            first_owners: main.first_owners,
        },
    }
}
