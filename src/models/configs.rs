//! The config.json files of a repository's components (CLIP's and the VAE's; the transformer's
//! is read by `flux::config`), read into candle's configs and written for the tiny repositories.

use anyhow::{bail, Context, Result};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::flux::autoencoder::Config as AeConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Reads the `what` config at `path` into `T` (for T5, candle's own `t5::Config`).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a {what} config", path.display()))
}

/// The fields of a Hugging Face `CLIPTextModel` config.json that define the architecture.
#[derive(Debug, Deserialize, Serialize)]
pub struct ClipJsonConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub projection_dim: usize,
    pub hidden_act: String,
}

impl ClipJsonConfig {
    pub fn to_candle(&self, path: &Path) -> Result<ClipTextConfig> {
        if self.hidden_act != "quick_gelu" {
            bail!(
                "{}: hidden_act `{}` is not supported (CLIP-L uses quick_gelu)",
                path.display(),
                self.hidden_act
            );
        }
        Ok(ClipTextConfig {
            vocab_size: self.vocab_size,
            embed_dim: self.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
        })
    }
}

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
pub fn vae_from_json(path: &Path) -> Result<AeConfig> {
    let c: DiffusersVaeConfig = read_json(path, "VAE")?;
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

/// The diffusers config.json that [`vae_from_json`] reads back into `cfg`.
pub fn vae_to_json(cfg: &AeConfig) -> serde_json::Value {
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
