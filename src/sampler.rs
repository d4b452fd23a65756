//! The flow-matching schedule, initial noise, and the Euler loop with a per-step callback.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Deserialize;
use std::path::Path;

use crate::compute_pool;
use crate::flux::hook::reborrow;
use crate::flux::rope::Rope;
use crate::flux::{AttentionHook, Flux, LockstepInput, StepInput, TokenLayout};

/// The shift parameters of diffusers' `FlowMatchEulerDiscreteScheduler` (scheduler_config.json).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SchedulerConfig {
    #[serde(default = "d_base_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "d_max_len")]
    pub max_image_seq_len: usize,
    #[serde(default = "d_base_shift")]
    pub base_shift: f64,
    #[serde(default = "d_max_shift")]
    pub max_shift: f64,
    #[serde(default = "d_shift")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
}

fn d_base_len() -> usize {
    256
}
fn d_max_len() -> usize {
    4096
}
fn d_base_shift() -> f64 {
    0.5
}
fn d_max_shift() -> f64 {
    1.15
}
fn d_shift() -> f64 {
    1.0
}

impl SchedulerConfig {
    pub fn from_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a scheduler config", path.display()))
    }

    /// FLUX.1-dev's scheduler: resolution-dependent shift from 0.5 (256 tokens) to 1.15 (4096).
    pub fn dev() -> Self {
        Self {
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            base_shift: 0.5,
            max_shift: 1.15,
            shift: 3.0,
            use_dynamic_shifting: true,
        }
    }

    /// FLUX.1-schnell's scheduler: no shift.
    pub fn schnell() -> Self {
        Self {
            shift: 1.0,
            use_dynamic_shifting: false,
            ..Self::dev()
        }
    }

    /// `steps + 1` sigmas from 1 to 0: `linspace(1, 0, steps + 1)` with the resolution shift
    /// `e^mu / (e^mu + 1/s - 1)` (as BFL, candle and diffusers), or the static shift.
    pub fn sigmas(&self, steps: usize, image_seq_len: usize) -> Vec<f64> {
        let linear = (0..=steps).rev().map(|i| i as f64 / steps as f64);
        if self.use_dynamic_shifting {
            let slope = (self.max_shift - self.base_shift)
                / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
            let mu =
                self.base_shift + slope * (image_seq_len as f64 - self.base_image_seq_len as f64);
            let e = mu.exp();
            linear
                .map(|s| {
                    if s == 0.0 {
                        0.0
                    } else {
                        e / (e + (1.0 / s - 1.0))
                    }
                })
                .collect()
        } else {
            let k = self.shift;
            linear.map(|s| k * s / (1.0 + (k - 1.0) * s)).collect()
        }
    }
}

/// The latent shape of an image: (1, 16, H/8, W/8).
pub fn latent_shape(width: usize, height: usize) -> (usize, usize, usize, usize) {
    (1, 16, height / 8, width / 8)
}

/// Standard normal noise in the unpacked latent layout, from a seeded ChaCha8 generator: the same
/// seed gives the same noise on every device and platform.
pub fn seeded_noise(seed: u64, width: usize, height: usize) -> Result<Tensor> {
    let shape = latent_shape(width, height);
    let n = shape.1 * shape.2 * shape.3;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Noise from a safetensors file holding a tensor `noise` of shape (1, 16, H/8, W/8).
pub fn load_noise(path: &Path, width: usize, height: usize) -> Result<Tensor> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read noise file {}", path.display()))?;
    // Noise for the largest image is 16 MiB; a device or a huge file is not a noise file.
    if !meta.is_file() || meta.len() > 1 << 30 {
        bail!(
            "{} is not a noise file: expected a safetensors file of at most 1 GiB",
            path.display()
        );
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read noise file {}", path.display()))?;
    let noise = tensors
        .get("noise")
        .with_context(|| format!("{} has no tensor `noise`", path.display()))?;
    if !noise.dtype().is_float() {
        bail!(
            "tensor `noise` in {} is {:?}; expected floating-point noise (F32, F16, BF16 or F64)",
            path.display(),
            noise.dtype()
        );
    }
    let expected = latent_shape(width, height);
    if noise.dims4().ok() != Some(expected) {
        bail!(
            "tensor `noise` in {} has shape {:?}, expected {:?} for {width}x{height}",
            path.display(),
            noise.dims(),
            [expected.0, expected.1, expected.2, expected.3]
        );
    }
    let noise = noise.to_dtype(DType::F32)?;
    let values = noise.flatten_all()?.to_vec1::<f32>()?;
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "tensor `noise` in {} holds {} at element {k}: noise must be finite",
            path.display(),
            values[k]
        );
    }
    Ok(noise)
}

/// Stops a run whose latents stopped being numbers, instead of decoding them into a black image.
/// One sum over the latents (small next to a transformer forward) tells: NaN and infinity spread
/// into any sum.
pub(crate) fn check_finite(latents: &Tensor, step: usize, steps: usize) -> Result<()> {
    let sum = latents
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if !sum.is_finite() {
        bail!(
            "the latents are no longer finite after step {} of {steps} ({sum}): the weights may hold NaN or infinity, or {:?} overflowed (try --dtype f32)",
            step + 1,
            latents.dtype()
        );
    }
    Ok(())
}

/// What the loop tells its caller after each step.
pub struct StepReport<'a> {
    /// 0-based index of the step just taken.
    pub step: usize,
    pub steps: usize,
    sigma: f64,
    /// Packed latents before this step's update.
    latents: &'a Tensor,
    velocity: &'a Tensor,
    /// Packed latents after this step's update.
    pub next: &'a Tensor,
}

impl StepReport<'_> {
    /// The model's current estimate of the clean packed latents, `x - sigma * v`, for previews.
    pub fn predicted_clean(&self) -> Result<Tensor> {
        Ok((self.latents - (self.velocity * self.sigma)?)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Cancel,
}

pub enum Denoised {
    Done(Tensor),
    /// Cancelled after this many steps.
    Cancelled(usize),
}

/// The fixed inputs of one image's run: text, pooled vector, RoPE table, initial latents.
pub struct RunInputs {
    pub img: Tensor,
    pub txt: Tensor,
    pub pooled: Tensor,
    pub rope: Rope,
    pub layout: TokenLayout,
}

impl RunInputs {
    /// Packs unpacked noise (1, 16, H/8, W/8) into 2x2 patches and builds the position table.
    pub fn new(
        model: &Flux,
        noise: &Tensor,
        txt: &Tensor,
        pooled: &Tensor,
        dtype: DType,
    ) -> Result<Self> {
        let dev = txt.device();
        let noise = noise.to_device(dev)?.to_dtype(dtype)?;
        let (_, _, h8, w8) = noise.dims4()?;
        let state = candle_transformers::models::flux::sampling::State::new(txt, pooled, &noise)?;
        let rope = model.rope_table(&state.txt_ids, &state.img_ids)?;
        Ok(Self {
            img: state.img,
            txt: state.txt,
            pooled: state.vec,
            rope,
            layout: TokenLayout {
                txt_len: txt.dim(1)?,
                img_h: h8 / 2,
                img_w: w8 / 2,
            },
        })
    }

    /// The model's velocity at packed latents `img` and noise level `sigma`, without a hook:
    /// one forward, as a step of [`denoise`] takes it.
    pub fn velocity(
        &self,
        model: &Flux,
        img: &Tensor,
        sigma: f64,
        guidance: &Tensor,
        step: usize,
    ) -> Result<Tensor> {
        let t = Tensor::full(sigma as f32, 1, img.device())?;
        Ok(model.forward(&self.step_input(img), &t, Some(guidance), step, None)?)
    }

    fn step_input<'a>(&'a self, img: &'a Tensor) -> StepInput<'a> {
        StepInput {
            img,
            txt: &self.txt,
            pooled: &self.pooled,
            rope: &self.rope,
            layout: self.layout,
        }
    }
}

/// Euler integration of the flow from sigma 1 to 0 over `sigmas`, calling `on_step` after every
/// step; the loop of candle's `sampling::denoise` with a hook, progress and cancel.
pub fn denoise(
    model: &Flux,
    run: &RunInputs,
    sigmas: &[f64],
    guidance: f64,
    hook: Option<&mut dyn AttentionHook>,
    on_step: &mut dyn FnMut(&StepReport) -> Result<StepControl>,
) -> Result<Denoised> {
    denoise_from(
        model,
        run,
        sigmas,
        0,
        run.img.clone(),
        guidance,
        hook,
        on_step,
    )
}

/// [`denoise`] starting at step `first` from latents `img` (the state after step `first - 1`).
#[allow(clippy::too_many_arguments)]
pub fn denoise_from(
    model: &Flux,
    run: &RunInputs,
    sigmas: &[f64],
    first: usize,
    img: Tensor,
    guidance: f64,
    mut hook: Option<&mut dyn AttentionHook>,
    on_step: &mut dyn FnMut(&StepReport) -> Result<StepControl>,
) -> Result<Denoised> {
    let mut runs = [LockstepRun {
        run,
        sigmas,
        first,
        end: sigmas.len().saturating_sub(1),
        img,
        hook: reborrow(&mut hook),
    }];
    match denoise_lockstep(model, &mut runs, guidance, &mut |_, r| on_step(r))? {
        Lockstep::Done => Ok(Denoised::Done(runs[0].img.clone())),
        Lockstep::Cancelled(steps) => Ok(Denoised::Cancelled(steps)),
    }
}

/// One run of a lockstep batch: it takes steps `first..end` of its schedule.
pub struct LockstepRun<'a> {
    pub run: &'a RunInputs,
    pub sigmas: &'a [f64],
    pub first: usize,
    pub end: usize,
    /// The latents before step `first`; after the loop, the latents after its last step.
    pub img: Tensor,
    pub hook: Option<&'a mut dyn AttentionHook>,
}

/// How a lockstep batch ended.
pub enum Lockstep {
    Done,
    /// Cancelled after this many steps (of the step index).
    Cancelled(usize),
}

/// Euler integration of several runs at once: at every step index each run whose window holds
/// it goes through one [`Flux::forward_lockstep`] with the others, in the order of `runs`, so
/// a run's hook can read what the hooks of earlier runs saw in the same block. Each run
/// computes what [`denoise_from`] computes for it alone. `on_step(i, report)` follows every
/// step of run `i`.
pub fn denoise_lockstep(
    model: &Flux,
    runs: &mut [LockstepRun],
    guidance: f64,
    on_step: &mut dyn FnMut(usize, &StepReport) -> Result<StepControl>,
) -> Result<Lockstep> {
    let Some(dev) = runs.first().map(|r| r.run.img.device().clone()) else {
        return Ok(Lockstep::Done);
    };
    let guidance = Tensor::full(guidance as f32, 1, &dev)?;
    let first = runs.iter().map(|r| r.first).min().unwrap_or(0);
    let end = runs.iter().map(|r| r.end).max().unwrap_or(0);
    for step in first..end {
        let active: Vec<usize> = (0..runs.len())
            .filter(|&i| (runs[i].first..runs[i].end).contains(&step))
            .collect();
        let times = active
            .iter()
            .map(|&i| Tensor::full(runs[i].sigmas[step] as f32, 1, &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let velocities = {
            let mut inputs: Vec<LockstepInput> = runs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| active.contains(i))
                .zip(&times)
                .map(|((_, r), t)| LockstepInput {
                    input: r.run.step_input(&r.img),
                    t,
                    step,
                    hook: reborrow(&mut r.hook),
                })
                .collect();
            let mut forward = || model.forward_lockstep(&mut inputs, Some(&guidance));
            // A CPU forward is a hundred parallel operations: the pool stays awake through them.
            // A GPU's runs on the device, where polling cores would only burn.
            match dev.is_cpu() {
                true => compute_pool::keep_awake(forward)?,
                false => forward()?,
            }
        };
        for (&i, velocity) in active.iter().zip(&velocities) {
            let r = &mut runs[i];
            let (t_curr, t_prev) = (r.sigmas[step], r.sigmas[step + 1]);
            let steps = r.sigmas.len().saturating_sub(1);
            let next = (&r.img + (velocity * (t_prev - t_curr))?)?;
            check_finite(&next, step, steps)?;
            let report = StepReport {
                step,
                steps,
                sigma: t_curr,
                latents: &r.img,
                velocity,
                next: &next,
            };
            let control = on_step(i, &report)?;
            r.img = next;
            if control == StepControl::Cancel {
                return Ok(Lockstep::Cancelled(step + 1));
            }
        }
    }
    Ok(Lockstep::Done)
}
