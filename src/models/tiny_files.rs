//! The tiny FLUX.1 model as the single files ComfyUI users download: the transformer under BFL
//! names behind `model.diffusion_model.`, BFL's `ae.safetensors`, and the two text encoders
//! under Hugging Face names, plus a `.ron` model file naming them. The weights are those of
//! [`super::tiny::write_repo`] with the same seed, so both layouts draw the same images up to
//! the storage dtypes. A variant stores the transformer as a quantized GGUF instead.

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::formats::COMFY_PREFIX;
use super::gguf;
use super::tiny::{self, CLIP_SEED_OFFSET, T5_SEED_OFFSET, VAE_SEED_OFFSET};

/// The file names [`write_single_files`] uses.
pub const TRANSFORMER_FILE: &str = "flux1-tiny.safetensors";
/// The transformer's file name in [`write_gguf_files`].
pub const GGUF_TRANSFORMER_FILE: &str = "flux1-tiny.gguf";
pub const VAE_FILE: &str = "ae.safetensors";
pub const T5_FILE: &str = "t5xxl_tiny.safetensors";
pub const CLIP_FILE: &str = "clip_l_tiny.safetensors";
pub const MODEL_FILE: &str = "model.ron";

/// Storage dtypes of the transformer and the T5 encoder (the VAE and CLIP stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDtypes {
    pub transformer: DType,
    pub t5: DType,
}

impl FileDtypes {
    /// As the real downloads are stored: `flux1-dev.safetensors` in bf16, `t5xxl_fp16` in f16.
    pub const DOWNLOADS: Self = Self {
        transformer: DType::BF16,
        t5: DType::F16,
    };
    /// Everything f32, so that loading is lossless and images match the repository layout's.
    pub const F32: Self = Self {
        transformer: DType::F32,
        t5: DType::F32,
    };
}

fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, dtype: DType) -> Result<()> {
    let cast: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&cast, path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the tiny model's four single files and `model.ron` into `out`.
pub fn write_single_files(out: &Path, seed: u64, schnell: bool, dtypes: FileDtypes) -> Result<()> {
    write_components(
        out,
        seed,
        schnell,
        dtypes.t5,
        TRANSFORMER_FILE,
        |path, bfl| {
            let prefixed: BTreeMap<String, Tensor> = bfl
                .into_iter()
                .map(|(n, t)| (format!("{COMFY_PREFIX}{n}"), t))
                .collect();
            save(path, &prefixed, dtypes.transformer)
        },
    )
}

/// [`write_single_files`] with the transformer as a city96-style GGUF ([`GGUF_TRANSFORMER_FILE`]:
/// BFL names without a prefix, matrices in `quant`, the rest F32). The other files are f32, so
/// that images differ from the repository layout's by the quantization only.
pub fn write_gguf_files(out: &Path, seed: u64, schnell: bool, quant: GgmlDType) -> Result<()> {
    write_components(
        out,
        seed,
        schnell,
        DType::F32,
        GGUF_TRANSFORMER_FILE,
        |path, bfl| gguf::write(path, &bfl, gguf::city96_quant(quant)),
    )
}

/// Writes the VAE and encoders, the transformer through `write_transformer` (given its path and
/// its BFL-named tensors) and a `model.ron` naming all four.
fn write_components(
    out: &Path,
    seed: u64,
    schnell: bool,
    t5_dtype: DType,
    transformer_file: &str,
    write_transformer: impl FnOnce(&Path, BTreeMap<String, Tensor>) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cfg = tiny::flux_config(schnell);
    write_transformer(
        &out.join(transformer_file),
        tiny::transformer_weights(&cfg, seed)?,
    )?;
    let ae = tiny::vae_weights(&tiny::vae_config(), seed + VAE_SEED_OFFSET)?;
    save(&out.join(VAE_FILE), &ae, DType::F32)?;
    save(
        &out.join(T5_FILE),
        &tiny::t5_weights(seed + T5_SEED_OFFSET)?,
        t5_dtype,
    )?;
    save(
        &out.join(CLIP_FILE),
        &tiny::clip_weights(seed + CLIP_SEED_OFFSET)?,
        DType::F32,
    )?;
    let ron = format!(
        "(transformer: \"{transformer_file}\", vae: \"{VAE_FILE}\", t5: \"{T5_FILE}\", clip: \"{CLIP_FILE}\")\n"
    );
    let path = out.join(MODEL_FILE);
    std::fs::write(&path, ron).with_context(|| format!("cannot write {}", path.display()))
}
