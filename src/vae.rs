//! Latents to pixels with candle's FLUX `AutoEncoder`, loaded from a diffusers `vae/` folder or
//! BFL's single-file `ae.safetensors`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::autoencoder::{AutoEncoder, Config as AeConfig};
use image::RgbImage;
use serde::Deserialize;
use std::path::Path;

use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::vae_source;
use crate::models::store::{plain_var_builder, RemappedBackend, TensorStore};

/// The fields of a diffusers `AutoencoderKL` config.json that FLUX's VAE uses.
#[derive(Debug, Deserialize)]
struct DiffusersVaeConfig {
    in_channels: usize,
    out_channels: usize,
    latent_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default)]
    sample_size: Option<usize>,
    #[serde(default)]
    use_quant_conv: Option<bool>,
    #[serde(default)]
    use_post_quant_conv: Option<bool>,
}

/// Reads `vae/config.json` into candle's autoencoder config.
pub fn config_from_json(path: &Path) -> Result<AeConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let c: DiffusersVaeConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a VAE config", path.display()))?;
    if c.use_quant_conv == Some(true) || c.use_post_quant_conv == Some(true) {
        bail!(
            "{}: a VAE with quant convolutions is not FLUX's VAE",
            path.display()
        );
    }
    let ch = *c
        .block_out_channels
        .first()
        .context("block_out_channels is empty")?;
    if c.block_out_channels
        .iter()
        .any(|b| b % ch != 0 || b % 32 != 0)
    {
        bail!(
            "{}: block_out_channels {:?} must be multiples of 32 and of the first entry",
            path.display(),
            c.block_out_channels
        );
    }
    Ok(AeConfig {
        resolution: c.sample_size.unwrap_or(1024),
        in_channels: c.in_channels,
        ch,
        out_ch: c.out_channels,
        ch_mult: c.block_out_channels.iter().map(|b| b / ch).collect(),
        num_res_blocks: c.layers_per_block,
        z_channels: c.latent_channels,
        scale_factor: c.scaling_factor,
        shift_factor: c.shift_factor.unwrap_or(0.0),
    })
}

/// The diffusers config.json that [`config_from_json`] reads back into `cfg`.
pub fn config_to_json(cfg: &AeConfig) -> serde_json::Value {
    let channels: Vec<usize> = cfg.ch_mult.iter().map(|m| m * cfg.ch).collect();
    serde_json::json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.32.2",
        "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; channels.len()],
        "up_block_types": vec!["UpDecoderBlock2D"; channels.len()],
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "latent_channels": cfg.z_channels,
        "layers_per_block": cfg.num_res_blocks,
        "norm_num_groups": 32,
        "sample_size": cfg.resolution,
        "scaling_factor": cfg.scale_factor,
        "shift_factor": cfg.shift_factor,
        "use_quant_conv": false,
        "use_post_quant_conv": false,
    })
}

pub struct Vae {
    ae: AutoEncoder,
    bytes: usize,
}

impl Vae {
    pub fn load(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<Self> {
        let cfg = config_from_json(&layout.vae.config)?;
        let levels = cfg.ch_mult.len();
        let store = TensorStore::open(&layout.vae.weights)?;
        let (vb, loaded) = RemappedBackend::new(store, move |name| vae_source(name, levels))
            .into_var_builder(dtype, dev);
        let ae = AutoEncoder::new(&cfg, vb)
            .with_context(|| format!("loading the VAE from {}", layout.vae.dir.display()))?;
        Ok(Self {
            ae,
            bytes: loaded.get(),
        })
    }

    /// Loads BFL's single-file `ae.safetensors`, its config inferred from the tensor shapes.
    pub fn load_file(path: &Path, dtype: DType, dev: &Device) -> Result<Self> {
        let store = TensorStore::open(&[path.to_path_buf()])?;
        let kind = classify_store(path, &store)?;
        if kind != FileKind::VaeBfl {
            bail!(
                "{} is a {} checkpoint, not FLUX's VAE (ae.safetensors)",
                path.display(),
                kind.role().name()
            );
        }
        let cfg = infer::vae_config(&Shapes::new(path, &store, &kind))?;
        let (vb, loaded) = plain_var_builder(store, dtype, dev);
        let ae = AutoEncoder::new(&cfg, vb)
            .with_context(|| format!("loading the VAE from {}", path.display()))?;
        Ok(Self {
            ae,
            bytes: loaded.get(),
        })
    }

    /// The bytes of the VAE's weights.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Decodes unpacked latents (1, 16, H/8, W/8) to an RGB image of H x W.
    pub fn decode(&self, latents: &Tensor, dtype: DType) -> Result<RgbImage> {
        let pixels = self.ae.decode(&latents.to_dtype(dtype)?)?;
        to_rgb8(&pixels)
    }
}

/// (1, 3, H, W) in [-1, 1] to an 8-bit RGB image.
pub fn to_rgb8(pixels: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = pixels.dims4()?;
    if c != 3 {
        bail!("the VAE decoded {c} channels, expected 3");
    }
    let rgb = ((pixels.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)?
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, rgb).context("decoded image has the wrong size")
}
