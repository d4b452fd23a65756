//! Latents to pixels with FLUX's VAE decoder, as `models::load::vae` loads it.

mod conv;
mod decoder;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config;
use image::RgbImage;

use decoder::Decoder;

pub struct Vae {
    decoder: Decoder,
    scale_factor: f64,
    shift_factor: f64,
}

impl Vae {
    /// The decoder of `cfg` from `vb` (BFL names: `decoder.*`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            scale_factor: cfg.scale_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// Decodes unpacked latents (1, 16, H/8, W/8) to pixels (1, 3, H, W) in about [-1, 1].
    pub fn decode_pixels(&self, latents: &Tensor, dtype: DType) -> Result<Tensor> {
        let unscaled = ((latents.to_dtype(dtype)? / self.scale_factor)? + self.shift_factor)?;
        Ok(self.decoder.forward(&unscaled)?)
    }

    /// Decodes unpacked latents (1, 16, H/8, W/8) to an RGB image of H x W.
    pub fn decode(&self, latents: &Tensor, dtype: DType) -> Result<RgbImage> {
        to_rgb8(&self.decode_pixels(latents, dtype)?)
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
