//! FLUX's VAE decoder (BFL's `decoder.*` weights), built on [`Conv`] so that it runs in the
//! run's dtype on every device. The encoder ([`super::encoder`]) is loaded apart, only for a
//! picture identity.
//! Its arithmetic is candle-transformers' `flux::autoencoder` decoder's, op for op (tested
//! equal in f32 by tests/loading.rs).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config;

use super::conv::Conv;
use super::group_norm::Norm;

/// Unscaled latents (1, z, h, w) to pixels (1, 3, 8h, 8w) for a VAE of three upsamplings.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv,
    mid: [Residual; 2],
    mid_attention: SelfAttention,
    /// From the lowest resolution up.
    levels: Vec<Level>,
    /// With its swish.
    norm_out: Norm,
    conv_out: Conv,
}

#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<Residual>,
    upsample: Option<Conv>,
}

impl Decoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let widest = cfg.ch * cfg.ch_mult.last().copied().unwrap_or(1);
        let conv_in = Conv::new(cfg.z_channels, widest, 3, 1, vb.pp("conv_in"))?;
        let mid = [
            Residual::new(widest, widest, vb.pp("mid.block_1"))?,
            Residual::new(widest, widest, vb.pp("mid.block_2"))?,
        ];
        let mid_attention = SelfAttention::new(widest, vb.pp("mid.attn_1"))?;
        // BFL numbers the levels from the highest resolution (`up.0`) down; they run from the
        // lowest up, each but `up.0` ending in an upsampling.
        let mut levels = Vec::with_capacity(cfg.ch_mult.len());
        let mut width = widest;
        for (index, mult) in cfg.ch_mult.iter().enumerate().rev() {
            let vb = vb.pp("up").pp(index);
            let out = cfg.ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            for block in 0..=cfg.num_res_blocks {
                blocks.push(Residual::new(width, out, vb.pp("block").pp(block))?);
                width = out;
            }
            let upsample = match index {
                0 => None,
                _ => Some(Conv::new(width, width, 3, 1, vb.pp("upsample.conv"))?),
            };
            levels.push(Level { blocks, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            mid_attention,
            levels,
            norm_out: Norm::new(width, true, vb.pp("norm_out"))?,
            conv_out: Conv::new(width, cfg.out_ch, 3, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs
            .apply(&self.conv_in)?
            .apply(&self.mid[0])?
            .apply(&self.mid_attention)?
            .apply(&self.mid[1])?;
        for level in &self.levels {
            for block in &level.blocks {
                h = h.apply(block)?;
            }
            if let Some(conv) = &level.upsample {
                let (_, _, height, width) = h.dims4()?;
                h = h.upsample_nearest2d(2 * height, 2 * width)?.apply(conv)?;
            }
        }
        h.apply(&self.norm_out)?.apply(&self.conv_out)
    }
}

/// norm, swish, conv twice, added to the input (through a 1x1 conv where the width changes).
#[derive(Debug, Clone)]
pub(super) struct Residual {
    /// Both with their swish.
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl Residual {
    pub(super) fn new(input: usize, output: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = match input == output {
            true => None,
            false => Some(Conv::new(input, output, 1, 0, vb.pp("nin_shortcut"))?),
        };
        Ok(Self {
            norm1: Norm::new(input, true, vb.pp("norm1"))?,
            conv1: Conv::new(input, output, 3, 1, vb.pp("conv1"))?,
            norm2: Norm::new(output, true, vb.pp("norm2"))?,
            conv2: Conv::new(output, output, 3, 1, vb.pp("conv2"))?,
            shortcut,
        })
    }
}

impl Module for Residual {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = xs
            .apply(&self.norm1)?
            .apply(&self.conv1)?
            .apply(&self.norm2)?
            .apply(&self.conv2)?;
        match &self.shortcut {
            None => xs + h,
            Some(conv) => xs.apply(conv)? + h,
        }
    }
}

/// Single-head attention over the pixels, 1x1 convs for q, k, v and the output, residual.
#[derive(Debug, Clone)]
pub(super) struct SelfAttention {
    norm: Norm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
}

impl SelfAttention {
    pub(super) fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(width, false, vb.pp("norm"))?,
            q: Conv::new(width, width, 1, 0, vb.pp("q"))?,
            k: Conv::new(width, width, 1, 0, vb.pp("k"))?,
            v: Conv::new(width, width, 1, 0, vb.pp("v"))?,
            proj_out: Conv::new(width, width, 1, 0, vb.pp("proj_out"))?,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let normed = xs.apply(&self.norm)?;
        let (b, c, h, w) = normed.dims4()?;
        // (b, c, h, w) -> (b, 1, h*w, c): one head whose tokens are the pixels.
        let tokens = |conv: &Conv| normed.apply(conv)?.flatten_from(2)?.t()?.unsqueeze(1);
        let (q, k, v) = (tokens(&self.q)?, tokens(&self.k)?, tokens(&self.v)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (c as f64).sqrt()))?;
        let mixed = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let mixed = mixed.squeeze(1)?.t()?.reshape((b, c, h, w))?;
        mixed.apply(&self.proj_out)? + xs
    }
}
