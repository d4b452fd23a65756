//! Benchmarks that report ratios measured in one run (never timed tests).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::WithForward;
use std::time::{Duration, Instant};

use crate::flux::{Flux, FluxConfig, StepInput, TokenLayout};

/// A mid-sized FLUX: hidden 512 (8 heads of 64), 4 double and 8 single blocks.
pub fn medium_config() -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 768,
        context_in_dim: 512,
        hidden_size: 512,
        mlp_ratio: 4.0,
        num_heads: 8,
        depth: 4,
        depth_single_blocks: 8,
        axes_dim: vec![8, 28, 28],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: true,
    }
}

pub struct TransformerTiming {
    pub ours: Duration,
    pub candle: Duration,
    pub max_abs_diff: f32,
}

impl TransformerTiming {
    pub fn ratio(&self) -> f64 {
        self.ours.as_secs_f64() / self.candle.as_secs_f64()
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Times the hooks-off transformer against candle-transformers' `Flux` on the same random weights
/// and inputs, alternating the two so that both see the same machine state; medians of `reps`.
pub fn transformer_vs_candle(
    cfg: &FluxConfig,
    img_side: usize,
    txt_len: usize,
    reps: usize,
    dtype: DType,
    dev: &Device,
) -> Result<TransformerTiming> {
    // Seeded weights with non-degenerate norms (a fresh VarMap zeroes the q/k norm scales).
    let weights = crate::models::tiny::transformer_weights(cfg, 0)?;
    let vb = VarBuilder::from_tensors(weights.into_iter().collect(), dtype, dev);
    let ours = Flux::new(cfg, vb.clone())?;
    let theirs = candle_transformers::models::flux::model::Flux::new(cfg, vb)?;
    let img =
        Tensor::randn(0f32, 1., (1, img_side * img_side, cfg.in_channels), dev)?.to_dtype(dtype)?;
    let txt = Tensor::randn(0f32, 1., (1, txt_len, cfg.context_in_dim), dev)?.to_dtype(dtype)?;
    let pooled = Tensor::randn(0f32, 1., (1, cfg.vec_in_dim), dev)?.to_dtype(dtype)?;
    let img_ids = crate::flux::rope::image_ids(img_side, img_side, dtype, dev)?;
    let txt_ids = Tensor::zeros((1, txt_len, 3), dtype, dev)?;
    let t = Tensor::full(0.7f32, 1, dev)?;
    let g = Tensor::full(3.5f32, 1, dev)?;
    let layout = TokenLayout {
        txt_len,
        img_h: img_side,
        img_w: img_side,
    };
    let run_ours = || -> Result<Tensor> {
        // The RoPE table is built once per image in a real run; timing it per step is fairer to candle.
        let pe = ours.rope_table(&txt_ids, &img_ids)?;
        let input = StepInput {
            img: &img,
            txt: &txt,
            pooled: &pooled,
            pe: &pe,
            layout,
        };
        Ok(ours.forward(&input, &t, Some(&g), 0, None)?)
    };
    let run_theirs = || -> Result<Tensor> {
        Ok(theirs.forward(&img, &img_ids, &txt, &txt_ids, &t, &pooled, Some(&g))?)
    };
    let a = run_ours()?;
    let b = run_theirs()?;
    let max_abs = |t: &Tensor| -> Result<f32> {
        Ok(t.abs()?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .max(0)?
            .to_scalar::<f32>()?)
    };
    let max_abs_diff = max_abs(&(&a - &b)?)?;
    let (mut ours_t, mut theirs_t) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let start = Instant::now();
        run_ours()?;
        dev.synchronize()?;
        ours_t.push(start.elapsed());
        let start = Instant::now();
        run_theirs()?;
        dev.synchronize()?;
        theirs_t.push(start.elapsed());
    }
    Ok(TransformerTiming {
        ours: median(ours_t),
        candle: median(theirs_t),
        max_abs_diff,
    })
}
