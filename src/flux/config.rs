//! FLUX transformer configuration: candle's own `Config`, read from a diffusers `config.json`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

pub use candle_transformers::models::flux::model::Config as FluxConfig;

/// The fields of a diffusers `FluxTransformer2DModel` config.json that define the architecture.
#[derive(Debug, Deserialize)]
struct DiffusersTransformerConfig {
    in_channels: usize,
    num_layers: usize,
    num_single_layers: usize,
    attention_head_dim: usize,
    num_attention_heads: usize,
    joint_attention_dim: usize,
    pooled_projection_dim: usize,
    guidance_embeds: bool,
    #[serde(default = "default_axes")]
    axes_dims_rope: Vec<usize>,
    #[serde(default = "default_patch")]
    patch_size: usize,
}

fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}
fn default_patch() -> usize {
    1
}

/// Reads `transformer/config.json` of a diffusers FLUX repository.
pub fn from_diffusers_json(path: &Path) -> Result<FluxConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read transformer config {}", path.display()))?;
    let c: DiffusersTransformerConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a FLUX transformer config", path.display()))?;
    if c.patch_size != 1 {
        bail!(
            "{}: patch_size {} is not supported (FLUX.1 uses 1)",
            path.display(),
            c.patch_size
        );
    }
    if c.axes_dims_rope.iter().sum::<usize>() != c.attention_head_dim {
        bail!(
            "{}: axes_dims_rope {:?} must add up to attention_head_dim {}",
            path.display(),
            c.axes_dims_rope,
            c.attention_head_dim
        );
    }
    Ok(FluxConfig {
        in_channels: c.in_channels,
        vec_in_dim: c.pooled_projection_dim,
        context_in_dim: c.joint_attention_dim,
        hidden_size: c.attention_head_dim * c.num_attention_heads,
        mlp_ratio: 4.0,
        num_heads: c.num_attention_heads,
        depth: c.num_layers,
        depth_single_blocks: c.num_single_layers,
        axes_dim: c.axes_dims_rope,
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: c.guidance_embeds,
    })
}

/// The diffusers config.json that [`from_diffusers_json`] reads back into `cfg`.
pub fn to_diffusers_json(cfg: &FluxConfig) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": "0.32.2",
        "attention_head_dim": cfg.hidden_size / cfg.num_heads,
        "axes_dims_rope": cfg.axes_dim,
        "guidance_embeds": cfg.guidance_embed,
        "in_channels": cfg.in_channels,
        "joint_attention_dim": cfg.context_in_dim,
        "num_attention_heads": cfg.num_heads,
        "num_layers": cfg.depth,
        "num_single_layers": cfg.depth_single_blocks,
        "patch_size": 1,
        "pooled_projection_dim": cfg.vec_in_dim,
    })
}
