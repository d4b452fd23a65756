//! FLUX's VAE encoder (BFL's `encoder.*` weights), built like the decoder on [`Conv`] so that it
//! runs in the run's dtype on every device. Its arithmetic is candle-transformers'
//! `flux::autoencoder::Encoder`'s, op for op (tested equal in f32 by tests/picture.rs).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config;

use super::conv::Conv;
use super::decoder::{Residual, SelfAttention};
use super::group_norm::Norm;

/// Pixels (1, 3, H, W) in [-1, 1] to the latent distribution's moments (1, 2z, H/8, W/8): the
/// mean, then the log-variance.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv,
    /// From the highest resolution down.
    levels: Vec<Level>,
    mid: [Residual; 2],
    mid_attention: SelfAttention,
    /// With its swish.
    norm_out: Norm,
    conv_out: Conv,
}

#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<Residual>,
    downsample: Option<Conv>,
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let conv_in = Conv::new(cfg.in_channels, cfg.ch, 3, 1, vb.pp("conv_in"))?;
        let mut levels = Vec::with_capacity(cfg.ch_mult.len());
        let mut width = cfg.ch;
        for (index, mult) in cfg.ch_mult.iter().enumerate() {
            let vb = vb.pp("down").pp(index);
            let out = cfg.ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for block in 0..cfg.num_res_blocks {
                blocks.push(Residual::new(width, out, vb.pp("block").pp(block))?);
                width = out;
            }
            // Every level but the lowest halves the resolution.
            let downsample = match index + 1 == cfg.ch_mult.len() {
                true => None,
                false => Some(Conv::strided(
                    width,
                    width,
                    3,
                    0,
                    2,
                    vb.pp("downsample.conv"),
                )?),
            };
            levels.push(Level { blocks, downsample });
        }
        Ok(Self {
            conv_in,
            levels,
            mid: [
                Residual::new(width, width, vb.pp("mid.block_1"))?,
                Residual::new(width, width, vb.pp("mid.block_2"))?,
            ],
            mid_attention: SelfAttention::new(width, vb.pp("mid.attn_1"))?,
            norm_out: Norm::new(width, true, vb.pp("norm_out"))?,
            conv_out: Conv::new(width, 2 * cfg.z_channels, 3, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs.apply(&self.conv_in)?;
        for level in &self.levels {
            for block in &level.blocks {
                h = h.apply(block)?;
            }
            if let Some(conv) = &level.downsample {
                // BFL pads one pixel on the right and bottom only, then convolves with stride 2.
                h = h
                    .pad_with_zeros(D::Minus1, 0, 1)?
                    .pad_with_zeros(D::Minus2, 0, 1)?
                    .apply(conv)?;
            }
        }
        h.apply(&self.mid[0])?
            .apply(&self.mid_attention)?
            .apply(&self.mid[1])?
            .apply(&self.norm_out)?
            .apply(&self.conv_out)
    }
}
