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

/// Bounds on a config's sizes. FLUX.1 has 19 + 38 blocks and 24 heads of 128 (width 3072); a
/// config far past these is a corrupt or mistyped file, refused before anything is allocated.
pub const MAX_BLOCKS: usize = 512;
pub const MAX_HEADS: usize = 512;
pub const MAX_WIDTH: usize = 65_536;

/// `value` is a size from 1 to `max`; otherwise a message naming `what`.
pub fn check_size(what: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 || value > max {
        bail!("{what} is {value}, expected 1 to {max}");
    }
    Ok(())
}

/// Reads `transformer/config.json` of a diffusers FLUX repository, checking it against itself:
/// every size from 1 to its bound, three even RoPE axes that add up to the head size.
pub fn from_diffusers_json(path: &Path) -> Result<FluxConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read transformer config {}", path.display()))?;
    let c: DiffusersTransformerConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a FLUX transformer config", path.display()))?;
    let fix = "fix config.json or download the repository again";
    for (field, value, max) in [
        ("in_channels", c.in_channels, MAX_WIDTH),
        ("num_layers", c.num_layers, MAX_BLOCKS),
        ("num_single_layers", c.num_single_layers, MAX_BLOCKS),
        ("attention_head_dim", c.attention_head_dim, MAX_WIDTH),
        ("num_attention_heads", c.num_attention_heads, MAX_HEADS),
        ("joint_attention_dim", c.joint_attention_dim, MAX_WIDTH),
        ("pooled_projection_dim", c.pooled_projection_dim, MAX_WIDTH),
    ] {
        check_size(&format!("{}: {field}", path.display()), value, max)
            .with_context(|| fix.to_string())?;
    }
    let hidden = c.num_attention_heads * c.attention_head_dim;
    if hidden > MAX_WIDTH {
        bail!(
            "{}: num_attention_heads {} x attention_head_dim {} is a width of {hidden}, expected at most {MAX_WIDTH}; {fix}",
            path.display(),
            c.num_attention_heads,
            c.attention_head_dim
        );
    }
    if c.patch_size != 1 {
        bail!(
            "{}: patch_size {} is not supported (FLUX.1 uses 1)",
            path.display(),
            c.patch_size
        );
    }
    // RoPE rotates pairs over three position axes (index, row, column).
    let axes_ok = c.axes_dims_rope.len() == 3
        && c.axes_dims_rope
            .iter()
            .all(|&a| a % 2 == 0 && a <= MAX_WIDTH)
        && c.axes_dims_rope.iter().sum::<usize>() == c.attention_head_dim;
    if !axes_ok {
        bail!(
            "{}: axes_dims_rope {:?} must be three even sizes that add up to attention_head_dim {} (FLUX.1: [16, 56, 56] for 128); {fix}",
            path.display(),
            c.axes_dims_rope,
            c.attention_head_dim
        );
    }
    Ok(FluxConfig {
        in_channels: c.in_channels,
        vec_in_dim: c.pooled_projection_dim,
        context_in_dim: c.joint_attention_dim,
        hidden_size: hidden,
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

/// Fails where config.json at `path` (read into `json`) disagrees with `weights`, the config
/// the stored tensors imply, naming the config.json field and the tensor it disagrees with:
/// a config that is wrong for its weights must not load with blocks left unused.
pub fn check_against_weights(json: &FluxConfig, weights: &FluxConfig, path: &Path) -> Result<()> {
    let head = |c: &FluxConfig| c.hidden_size / c.num_heads;
    let sizes = [
        (
            "num_layers",
            json.depth,
            weights.depth,
            "double blocks (transformer_blocks.N)",
        ),
        (
            "num_single_layers",
            json.depth_single_blocks,
            weights.depth_single_blocks,
            "single blocks (single_transformer_blocks.N)",
        ),
        (
            "num_attention_heads x attention_head_dim",
            json.hidden_size,
            weights.hidden_size,
            "as the width (rows of x_embedder.weight)",
        ),
        (
            "attention_head_dim",
            head(json),
            head(weights),
            "as the head size (length of transformer_blocks.0.attn.norm_q.weight)",
        ),
        (
            "in_channels",
            json.in_channels,
            weights.in_channels,
            "(columns of x_embedder.weight)",
        ),
        (
            "joint_attention_dim",
            json.context_in_dim,
            weights.context_in_dim,
            "(columns of context_embedder.weight)",
        ),
        (
            "pooled_projection_dim",
            json.vec_in_dim,
            weights.vec_in_dim,
            "(columns of time_text_embed.text_embedder.linear_1.weight)",
        ),
    ];
    let fix = "fix config.json or use the weights it was written for";
    for (field, said, found, what) in sizes {
        if said != found {
            bail!(
                "{}: {field} is {said}, but the weights beside it have {found} {what}; {fix}",
                path.display()
            );
        }
    }
    if json.guidance_embed != weights.guidance_embed {
        bail!(
            "{}: guidance_embeds is {}, but the weights beside it {} a guidance embedder (time_text_embed.guidance_embedder); {fix}",
            path.display(),
            json.guidance_embed,
            if weights.guidance_embed { "have" } else { "have no" }
        );
    }
    Ok(())
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
