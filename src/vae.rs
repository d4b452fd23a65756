//! Latents to pixels with candle's FLUX `AutoEncoder`, loaded from a diffusers `vae/` folder or
//! BFL's single-file `ae.safetensors`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::autoencoder::AutoEncoder;
use image::RgbImage;
use std::path::Path;

use crate::models::configs;
use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::vae_source;
use crate::models::store::{plain_var_builder, RemappedBackend, TensorStore};

pub struct Vae {
    ae: AutoEncoder,
    bytes: usize,
}

impl Vae {
    pub fn load(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<Self> {
        let cfg = configs::vae_from_json(&layout.vae.config)?;
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
