//! Latents to pixels with FLUX's VAE decoder, and pixels to latents with its encoder, as
//! `models::load::vae` loads them (the encoder only for a picture identity).

mod conv;
mod cpu_conv;
mod decoder;
mod encoder;
mod group_norm;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config;
use image::RgbImage;

use decoder::Decoder;
use encoder::Encoder;

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
/// The VAE's encoder: what turns a picture into the latents FLUX denoises to.
pub struct VaeEncoder {
    encoder: Encoder,
    scale_factor: f64,
    shift_factor: f64,
}

impl VaeEncoder {
    /// The encoder of `cfg` from `vb` (BFL names: `encoder.*`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            scale_factor: cfg.scale_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// Pixels (1, 3, H, W) in [-1, 1] to unpacked latents (1, 16, H/8, W/8) in `dtype`, scaled
    /// and shifted as candle's `AutoEncoder::encode` does. It takes the distribution's mean
    /// where candle samples around it: an inversion wants the picture's latents, not a draw.
    pub fn encode(&self, pixels: &Tensor, dtype: DType) -> Result<Tensor> {
        let moments = self.encoder.forward(&pixels.to_dtype(dtype)?)?;
        let mean = moments.chunk(2, 1)?.remove(0);
        Ok(((mean - self.shift_factor)? * self.scale_factor)?)
    }

    /// The distribution's moments (1, 2 x 16, H/8, W/8) before scaling, for parity tests.
    pub fn moments(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.encoder.forward(pixels)?)
    }
}

/// An 8-bit RGB image to pixels (1, 3, H, W) in [-1, 1], f32 on `device`.
pub fn from_rgb8(image: &RgbImage, device: &candle_core::Device) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let pixels = Tensor::from_vec(image.as_raw().clone(), (h, w, 3), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?
        .unsqueeze(0)?;
    Ok(((pixels / 127.5)? - 1.0)?)
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
