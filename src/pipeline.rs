//! Text to image with FLUX.1: the loaded models and one plain generation.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::{Path, PathBuf};

use crate::flux::{AttentionHook, Flux};
use crate::limits;
use crate::models::load;
use crate::models::source::ModelSource;
use crate::sampler::{self, Denoised, RunInputs, SchedulerConfig, StepControl, StepReport};
use crate::text::{t5_len_for, PromptEmbedding, PromptEncoder, PromptTokenizers, TextOptions};
use crate::vae::{self, Vae, VaeEncoder};

/// Every component of a FLUX.1 checkpoint, loaded.
pub struct FluxModels {
    pub source: ModelSource,
    pub transformer: Flux,
    pub text: PromptEncoder,
    pub tokenizers: PromptTokenizers,
    pub vae: Vae,
    /// Loaded on first use (only a picture identity needs it), with its weights' bytes.
    encoder: Option<(VaeEncoder, usize)>,
    pub scheduler: SchedulerConfig,
    pub dtype: DType,
    pub device: Device,
    transformer_bytes: usize,
    vae_bytes: usize,
}

impl FluxModels {
    /// Loads whatever [`ModelSource::detect`] finds at `path`: a repository folder, a folder of
    /// single files or a `.ron` model file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_source(&ModelSource::detect(path)?, dtype, device)
    }

    pub fn load_source(source: &ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_source_with(source, dtype, device, TextOptions::default())
    }

    /// [`Self::load`] with the text encoders placed and kept as `text` says.
    pub fn load_with(
        path: &Path,
        dtype: DType,
        device: &Device,
        text: TextOptions,
    ) -> Result<Self> {
        Self::load_source_with(&ModelSource::detect(path)?, dtype, device, text)
    }

    pub fn load_source_with(
        source: &ModelSource,
        dtype: DType,
        device: &Device,
        text: TextOptions,
    ) -> Result<Self> {
        let ((transformer, transformer_bytes), tokenizers, (vae, vae_bytes), scheduler) =
            match source {
                ModelSource::Repo(layout) => {
                    let transformer = load::transformer::from_repo(layout, dtype, device)?;
                    let t5_len = t5_len_for(transformer.0.config());
                    (
                        transformer,
                        PromptTokenizers::from_repo(layout, t5_len)?,
                        load::vae::from_repo(layout, dtype, device)?,
                        SchedulerConfig::from_json(&layout.scheduler_config)?,
                    )
                }
                ModelSource::Files(files) => {
                    let transformer =
                        load::transformer::from_file(&files.transformer, dtype, device)?;
                    let t5_len = t5_len_for(transformer.0.config());
                    let scheduler = match transformer.0.config().guidance_embed {
                        true => SchedulerConfig::dev(),
                        false => SchedulerConfig::schnell(),
                    };
                    (
                        transformer,
                        PromptTokenizers::shipped(t5_len)?,
                        load::vae::from_file(&files.vae, dtype, device)?,
                        scheduler,
                    )
                }
            };
        Ok(Self {
            source: source.clone(),
            transformer,
            text: PromptEncoder::load(source, dtype, device, text)?,
            tokenizers,
            vae,
            encoder: None,
            scheduler,
            dtype,
            device: device.clone(),
            transformer_bytes,
            vae_bytes,
        })
    }

    /// The bytes each component's weights take on the run's device, as loaded: the text
    /// encoders count zero while freed or kept on the CPU for a GPU run; the VAE encoder is
    /// listed once a picture loaded it.
    pub fn component_bytes(&self) -> Vec<(&'static str, usize)> {
        let (t5, clip) = self.text.bytes_on(&self.device);
        let mut bytes = vec![
            ("transformer", self.transformer_bytes),
            ("vae", self.vae_bytes),
            ("t5", t5),
            ("clip", clip),
        ];
        if let Some((_, encoder)) = &self.encoder {
            bytes.push(("vae encoder", *encoder));
        }
        bytes
    }

    /// Starts a job that will encode `prompts`: they are encoded now (once each), and the
    /// encoders freed afterwards if the text options say so.
    pub fn begin_job(&mut self, prompts: &[&str]) -> Result<()> {
        self.text.begin_job(&self.tokenizers, prompts)
    }

    /// The fixed inputs of one image's run (encoded prompt, packed noise, RoPE table) and its
    /// sigma schedule.
    pub fn prepare_run(
        &mut self,
        prompt: &str,
        noise: &NoiseSource,
        width: usize,
        height: usize,
        steps: usize,
    ) -> Result<(RunInputs, Vec<f64>)> {
        let noise = noise.noise(width, height)?;
        self.prepare_run_from(prompt, &noise, steps)
    }

    /// [`Self::prepare_run`] from unpacked noise (1, 16, H/8, W/8) already at hand (an inverted
    /// picture's).
    pub fn prepare_run_from(
        &mut self,
        prompt: &str,
        noise: &Tensor,
        steps: usize,
    ) -> Result<(RunInputs, Vec<f64>)> {
        let emb = self.encode(prompt)?;
        let run = RunInputs::new(&self.transformer, noise, &emb.t5, &emb.pooled, self.dtype)?;
        let sigmas = self
            .scheduler
            .sigmas(steps, run.layout.img_h * run.layout.img_w);
        Ok((run, sigmas))
    }

    /// A picture's unpacked latents (1, 16, H/8, W/8) in the run's dtype on the run's device,
    /// loading the VAE encoder the first time.
    pub fn encode_picture(&mut self, picture: &RgbImage) -> Result<Tensor> {
        if self.encoder.is_none() {
            self.encoder = Some(load::vae::encoder(&self.source, self.dtype, &self.device)?);
        }
        let (encoder, _) = self.encoder.as_ref().expect("loaded above");
        encoder.encode(&vae::from_rgb8(picture, &self.device)?, self.dtype)
    }

    /// Packed final latents to the image, and the unpacked latents (1, 16, H/8, W/8) in f32 on
    /// the CPU.
    pub fn decode_packed(
        &self,
        packed: &Tensor,
        width: usize,
        height: usize,
    ) -> Result<(RgbImage, Tensor)> {
        let latents = candle_transformers::models::flux::sampling::unpack(packed, height, width)?;
        let image = self.vae.decode(&latents, self.dtype)?;
        let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        Ok((image, latents))
    }

    /// FLUX.1-dev has the guidance embedder; schnell does not.
    pub fn is_dev(&self) -> bool {
        self.transformer.config().guidance_embed
    }

    /// Refuses an image size whose attention would not fit in the memory left on the CPU, before
    /// any work, instead of letting the allocator abort the process halfway. Attention holds the
    /// scores and their softmax of every head over the joint sequence; CharaConsist's shared
    /// keys add up to one image's worth of keys, hence the doubled key count.
    pub fn check_fits(&self, width: usize, height: usize) -> Result<()> {
        if !self.device.is_cpu() {
            return Ok(());
        }
        let Some(available) = crate::limits::available_memory() else {
            return Ok(());
        };
        let cfg = self.transformer.config();
        let image = (width / 16) * (height / 16);
        let queries = self.tokenizers.t5_len() + image;
        let keys = queries + image;
        let bytes = 2 * cfg.num_heads * queries * keys * self.dtype.size_in_bytes();
        if bytes as u64 > available {
            bail!(
                "{width}x{height} needs about {:.1} GB for attention, but {:.1} GB of memory is available: choose a smaller size",
                bytes as f64 / 1e9,
                available as f64 / 1e9
            );
        }
        Ok(())
    }

    /// The usual step count: 50 for dev (the CharaConsist reference), 4 for schnell.
    pub fn default_steps(&self) -> usize {
        default_steps_for(self.transformer.config())
    }

    pub fn encode(&mut self, prompt: &str) -> Result<PromptEmbedding> {
        let emb = self.text.encode(&self.tokenizers, prompt)?;
        let cfg = self.transformer.config();
        if emb.t5.dim(2)? != cfg.context_in_dim || emb.pooled.dim(1)? != cfg.vec_in_dim {
            bail!(
                "text encoders give T5 width {} and CLIP width {}, but the transformer expects {} and {}",
                emb.t5.dim(2)?,
                emb.pooled.dim(1)?,
                cfg.context_in_dim,
                cfg.vec_in_dim
            );
        }
        Ok(emb.into_run(self.dtype, &self.device)?)
    }
}

/// Where a run's initial noise comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseSource {
    Seed(u64),
    File(PathBuf),
}

impl NoiseSource {
    /// The unpacked noise (1, 16, H/8, W/8) in f32 on the CPU.
    pub fn noise(&self, width: usize, height: usize) -> Result<Tensor> {
        match self {
            NoiseSource::Seed(seed) => sampler::seeded_noise(*seed, width, height),
            NoiseSource::File(path) => sampler::load_noise(path, width, height),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub noise: NoiseSource,
}

impl GenerateParams {
    /// Rejects what cannot be generated before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        limits::check_side("width", self.width)?;
        limits::check_side("height", self.height)?;
        limits::check("steps", self.steps, &limits::STEPS)?;
        limits::check_guidance("guidance", self.guidance)?;
        if let NoiseSource::File(path) = &self.noise {
            sampler::load_noise(path, self.width, self.height)?;
        }
        Ok(())
    }
}

pub struct Generated {
    pub image: RgbImage,
    /// Final latents, unpacked (1, 16, H/8, W/8), f32.
    pub latents: Tensor,
}

/// One plain FLUX.1 image; `hook` may observe or steer attention. `None` when cancelled.
pub fn generate(
    models: &mut FluxModels,
    params: &GenerateParams,
    hook: Option<&mut dyn AttentionHook>,
    on_step: &mut dyn FnMut(&StepReport) -> Result<StepControl>,
) -> Result<Option<Generated>> {
    params.validate()?;
    models.check_fits(params.width, params.height)?;
    models.begin_job(&[&params.prompt])?;
    let (run, sigmas) = models.prepare_run(
        &params.prompt,
        &params.noise,
        params.width,
        params.height,
        params.steps,
    )?;
    let packed = match sampler::denoise(
        &models.transformer,
        &run,
        &sigmas,
        params.guidance,
        hook,
        on_step,
    )? {
        Denoised::Done(img) => img,
        Denoised::Cancelled(_) => return Ok(None),
    };
    let (image, latents) = models.decode_packed(&packed, params.width, params.height)?;
    Ok(Some(Generated { image, latents }))
}

/// The usual step count of a transformer: 50 for FLUX.1-dev (guidance-distilled), 4 for schnell.
pub fn default_steps_for(cfg: &crate::flux::FluxConfig) -> usize {
    match cfg.guidance_embed {
        true => 50,
        false => 4,
    }
}
