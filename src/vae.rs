//! Latents to pixels with candle's FLUX `AutoEncoder`, as `models::load::vae` loads it.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_transformers::models::flux::autoencoder::AutoEncoder;
use image::RgbImage;

pub struct Vae {
    ae: AutoEncoder,
    bytes: usize,
}

impl Vae {
    /// `ae` as `models::load::vae` loads it, with the bytes of its weights.
    pub fn new(ae: AutoEncoder, bytes: usize) -> Self {
        Self { ae, bytes }
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
