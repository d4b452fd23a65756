//! Text to image with FLUX.1: the loaded models and one plain generation.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::{Path, PathBuf};

use crate::flux::{AttentionHook, Flux};
use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::{transformer_source, Source, TransformerDims};
use crate::models::source::ModelSource;
use crate::models::store::{RemappedBackend, TensorStore};
use crate::sampler::{self, Denoised, RunInputs, SchedulerConfig, StepControl, StepReport};
use crate::text::{PromptEmbedding, PromptTokenizers, TextEncoders, T5_LEN_DEV, T5_LEN_SCHNELL};
use crate::vae::Vae;

/// Every component of a FLUX.1 checkpoint, loaded.
pub struct FluxModels {
    pub source: ModelSource,
    pub transformer: Flux,
    pub text: TextEncoders,
    pub tokenizers: PromptTokenizers,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    pub dtype: DType,
    pub device: Device,
}

/// Loads the transformer of a repository folder (diffusers names, fused on load).
pub fn load_transformer(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<Flux> {
    let cfg = crate::flux::config::from_diffusers_json(&layout.transformer.config)?;
    let dims = TransformerDims {
        hidden: cfg.hidden_size,
        mlp: (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize,
    };
    let store = TensorStore::open(&layout.transformer.weights)?;
    let vb = RemappedBackend::new(store, move |n| transformer_source(n, dims))
        .into_var_builder(dtype, dev);
    Flux::new(&cfg, vb).with_context(|| {
        format!(
            "loading the transformer from {}",
            layout.transformer.dir.display()
        )
    })
}

/// Loads a single-file transformer, BFL-named (with or without ComfyUI's prefix) or
/// diffusers-named, with its config inferred from the tensor shapes.
pub fn load_transformer_file(path: &Path, dtype: DType, dev: &Device) -> Result<Flux> {
    let store = TensorStore::open(&[path.to_path_buf()])?;
    let kind = classify_store(path, &store)?;
    let cfg = infer::flux_config(&Shapes::new(path, &store, &kind))?;
    let vb = match kind {
        FileKind::FluxBfl { prefix } => {
            RemappedBackend::new(store, move |n| Source::Same(format!("{prefix}{n}")))
        }
        FileKind::FluxDiffusers => {
            let dims = infer::diffusers_transformer_dims(path, &store)?;
            RemappedBackend::new(store, move |n| transformer_source(n, dims))
        }
        other => bail!(
            "{} is a {} checkpoint, not a FLUX transformer",
            path.display(),
            other.role().name()
        ),
    }
    .into_var_builder(dtype, dev);
    Flux::new(&cfg, vb).with_context(|| format!("loading the transformer from {}", path.display()))
}

/// T5's padding length: 512 for dev (the guidance embedder's presence), 256 for schnell.
fn t5_len_for(transformer: &Flux) -> usize {
    match transformer.config().guidance_embed {
        true => T5_LEN_DEV,
        false => T5_LEN_SCHNELL,
    }
}

impl FluxModels {
    /// Loads whatever [`ModelSource::detect`] finds at `path`: a repository folder, a folder of
    /// single files or a `.ron` model file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_source(&ModelSource::detect(path)?, dtype, device)
    }

    pub fn load_source(source: &ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        // T5 overflows in f16; it runs in bf16 then.
        let text_dtype = if dtype == DType::F16 {
            DType::BF16
        } else {
            dtype
        };
        let (transformer, text, tokenizers, vae, scheduler) = match source {
            ModelSource::Repo(layout) => {
                let transformer = load_transformer(layout, dtype, device)?;
                let t5_len = t5_len_for(&transformer);
                (
                    transformer,
                    TextEncoders::load(layout, text_dtype, device)?,
                    PromptTokenizers::from_repo(layout, t5_len)?,
                    Vae::load(layout, dtype, device)?,
                    SchedulerConfig::from_json(&layout.scheduler_config)?,
                )
            }
            ModelSource::Files(files) => {
                let transformer = load_transformer_file(&files.transformer, dtype, device)?;
                let t5_len = t5_len_for(&transformer);
                let scheduler = match transformer.config().guidance_embed {
                    true => SchedulerConfig::dev(),
                    false => SchedulerConfig::schnell(),
                };
                (
                    transformer,
                    TextEncoders::load_files(&files.t5, &files.clip, text_dtype, device)?,
                    PromptTokenizers::shipped(t5_len)?,
                    Vae::load_file(&files.vae, dtype, device)?,
                    scheduler,
                )
            }
        };
        let models = Self {
            source: source.clone(),
            transformer,
            text,
            tokenizers,
            vae,
            scheduler,
            dtype,
            device: device.clone(),
        };
        Ok(models)
    }

    /// FLUX.1-dev has the guidance embedder; schnell does not.
    pub fn is_dev(&self) -> bool {
        self.transformer.config().guidance_embed
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
        Ok(emb.into_dtype(self.dtype)?)
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
        sampler::check_size(self.width, self.height)?;
        if self.steps == 0 {
            bail!("steps must be at least 1");
        }
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
    let emb = models.encode(&params.prompt)?;
    let noise = params.noise.noise(params.width, params.height)?;
    let run = RunInputs::new(
        &models.transformer,
        &noise,
        &emb.t5,
        &emb.pooled,
        models.dtype,
    )?;
    let sigmas = models
        .scheduler
        .sigmas(params.steps, run.layout.img_h * run.layout.img_w);
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
    let latents =
        candle_transformers::models::flux::sampling::unpack(&packed, params.height, params.width)?;
    let image = models.vae.decode(&latents, models.dtype)?;
    Ok(Some(Generated {
        image,
        latents: latents.to_dtype(DType::F32)?,
    }))
}
