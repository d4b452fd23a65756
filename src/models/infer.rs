//! Model configs read off tensor shapes, for single-file checkpoints that come without a
//! config.json. Every size the models need is the size of some tensor; the few that are not
//! (RoPE axes, CLIP's head count, the VAE's latent scale) follow the rules documented below.

use anyhow::{bail, Context, Result};
use candle_transformers::models::flux::autoencoder::Config as AeConfig;
use candle_transformers::models::t5;
use std::path::{Path, PathBuf};

use super::configs::ClipJsonConfig;
use super::formats::FileKind;
use super::names::{transformer_source, Source, TransformerDims};
use super::store::TensorStore;
use crate::flux::config::{check_size, MAX_BLOCKS, MAX_HEADS, MAX_WIDTH};
use crate::flux::FluxConfig;

/// FLUX.1's VAE latent scale and shift (BFL's `ae.safetensors` carries no config).
pub const FLUX_VAE_SCALE: f64 = 0.3611;
pub const FLUX_VAE_SHIFT: f64 = 0.1159;

/// A tensor's dimensions by the model's name for it, `None` when the file lacks it.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<Vec<usize>> + 'a>;

/// Tensor shapes under the names the models ask for, whatever names the file uses.
pub struct Shapes<'a> {
    file: PathBuf,
    lookup: Lookup<'a>,
}

impl<'a> Shapes<'a> {
    /// The shapes of `store` (read from `file`) under the model's names, for a file of `kind`.
    pub fn new(file: &Path, store: &'a TensorStore, kind: &FileKind) -> Self {
        let get = move |n: &str| store.shape(n).ok().map(|s| s.dims().to_vec());
        let lookup: Lookup<'a> = match kind {
            FileKind::FluxBfl { prefix } => {
                let prefix = prefix.clone();
                Box::new(move |n| get(&format!("{prefix}{n}")))
            }
            FileKind::FluxDiffusers => {
                // The split sizes only matter for loading; shapes come from the stored parts.
                let dims = TransformerDims { hidden: 0, mlp: 0 };
                Box::new(move |n| match transformer_source(n, dims) {
                    Source::Same(s) | Source::SwappedHalves(s) => get(&s),
                    Source::Rows(parts) => {
                        let shapes: Option<Vec<Vec<usize>>> =
                            parts.iter().map(|(p, _)| get(p)).collect();
                        let shapes = shapes?;
                        let mut dims = shapes.first()?.clone();
                        dims[0] = shapes.iter().map(|s| s[0]).sum();
                        Some(dims)
                    }
                    Source::Squeezed(_) => None,
                })
            }
            _ => Box::new(get),
        };
        Self {
            file: file.to_path_buf(),
            lookup,
        }
    }

    /// Shapes served by `lookup` (model name -> dims), for files that are not safetensors
    /// (GGUF headers), so that every format goes through the same inference rules.
    pub fn from_fn(file: &Path, lookup: impl Fn(&str) -> Option<Vec<usize>> + 'a) -> Self {
        Self {
            file: file.to_path_buf(),
            lookup: Box::new(lookup),
        }
    }

    fn has(&self, name: &str) -> bool {
        (self.lookup)(name).is_some()
    }

    /// The shape of `name`, which must have `rank` dimensions.
    fn dims(&self, name: &str, rank: usize) -> Result<Vec<usize>> {
        let dims = (self.lookup)(name).with_context(|| {
            format!(
                "{}: tensor `{name}` is missing, so the config cannot be inferred; is the file complete?",
                self.file.display()
            )
        })?;
        if dims.len() != rank {
            bail!(
                "{}: tensor `{name}` has shape {dims:?}, expected {rank} dimensions",
                self.file.display()
            );
        }
        Ok(dims)
    }

    /// How many consecutive indices `i` from 0 have a tensor `name(i)`.
    fn count(&self, name: impl Fn(usize) -> String) -> usize {
        (0..).take_while(|&i| self.has(&name(i))).count()
    }

    fn fail<T>(&self, what: String) -> Result<T> {
        bail!("{}: {what}", self.file.display())
    }
}

/// RoPE axes for a head size: FLUX.1's [16, 56, 56] at 128, otherwise the same proportions
/// (1/4 for the index axis, 3/8 for each image axis), which gives the tiny model's [8, 12, 12].
pub fn axes_for_head_dim(head_dim: usize) -> Vec<usize> {
    match head_dim {
        128 => vec![16, 56, 56],
        d => vec![d / 4, 3 * d / 8, 3 * d / 8],
    }
}

/// The FLUX transformer config; dev vs schnell is whether the guidance embedder is present.
/// Every size must be from 1 to the bounds of [`crate::flux::config`], so that a damaged
/// header is refused here rather than allocated.
pub fn flux_config(s: &Shapes) -> Result<FluxConfig> {
    let img_in = s.dims("img_in.weight", 2)?;
    let (hidden, in_channels) = (img_in[0], img_in[1]);
    let head_dim = s.dims("double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0];
    if head_dim == 0 || hidden % head_dim != 0 {
        return s.fail(format!(
            "hidden size {hidden} (img_in.weight rows) is not a multiple of the head size {head_dim} (query_norm.scale length)"
        ));
    }
    let axes_dim = axes_for_head_dim(head_dim);
    // RoPE rotates pairs, so every axis must be even.
    if axes_dim.iter().sum::<usize>() != head_dim || axes_dim.iter().any(|a| a % 2 != 0) {
        return s.fail(format!(
            "head size {head_dim} is neither 128 nor a multiple of 16, so the RoPE axes cannot be inferred"
        ));
    }
    let mlp = s.dims("double_blocks.0.img_mlp.0.weight", 2)?[0];
    let vec_in_dim = s.dims("vector_in.in_layer.weight", 2)?[1];
    let context_in_dim = s.dims("txt_in.weight", 2)?[1];
    let depth = s.count(|i| format!("double_blocks.{i}.img_attn.qkv.weight"));
    let depth_single_blocks = s.count(|i| format!("single_blocks.{i}.linear1.weight"));
    for (what, value, max) in [
        ("the width (img_in.weight rows)", hidden, MAX_WIDTH),
        (
            "the input channels (img_in.weight columns)",
            in_channels,
            MAX_WIDTH,
        ),
        (
            "the head count (width / head size)",
            hidden / head_dim,
            MAX_HEADS,
        ),
        (
            "the MLP width (double_blocks.0.img_mlp.0.weight rows)",
            mlp,
            MAX_WIDTH,
        ),
        (
            "the pooled text width (vector_in.in_layer.weight columns)",
            vec_in_dim,
            MAX_WIDTH,
        ),
        (
            "the text width (txt_in.weight columns)",
            context_in_dim,
            MAX_WIDTH,
        ),
        (
            "the double block count (double_blocks.N.img_attn.qkv.weight)",
            depth,
            MAX_BLOCKS,
        ),
        (
            "the single block count (single_blocks.N.linear1.weight)",
            depth_single_blocks,
            MAX_BLOCKS,
        ),
    ] {
        check_size(&format!("{}: {what}", s.file.display()), value, max)?;
    }
    Ok(FluxConfig {
        in_channels,
        vec_in_dim,
        context_in_dim,
        hidden_size: hidden,
        mlp_ratio: mlp as f64 / hidden as f64,
        num_heads: hidden / head_dim,
        depth,
        depth_single_blocks,
        axes_dim,
        theta: 10_000,
        qkv_bias: s.has("double_blocks.0.img_attn.qkv.bias"),
        guidance_embed: s.has("guidance_in.in_layer.weight"),
    })
}

/// The split sizes a diffusers-named transformer file is fused by on load.
pub fn diffusers_transformer_dims(file: &Path, store: &TensorStore) -> Result<TransformerDims> {
    let rows = |name: &str| -> Result<usize> {
        Ok(store
            .shape(name)
            .with_context(|| {
                format!(
                    "cannot infer the transformer's sizes from {}",
                    file.display()
                )
            })?
            .dims()[0])
    };
    Ok(TransformerDims {
        hidden: rows("x_embedder.weight")?,
        mlp: rows("single_transformer_blocks.0.proj_mlp.weight")?,
    })
}

/// The BFL VAE config, with FLUX.1's latent scale and shift.
pub fn vae_config(s: &Shapes) -> Result<AeConfig> {
    let conv_in = s.dims("encoder.conv_in.weight", 4)?;
    let (ch, in_channels) = (conv_in[0], conv_in[1]);
    check_size(
        &format!(
            "{}: the VAE width (encoder.conv_in.weight rows)",
            s.file.display()
        ),
        ch,
        MAX_WIDTH,
    )?;
    let levels = s.count(|i| format!("encoder.down.{i}.block.0.conv1.weight"));
    let ch_mult = (0..levels)
        .map(|i| Ok(s.dims(&format!("encoder.down.{i}.block.0.conv1.weight"), 4)?[0] / ch))
        .collect::<Result<Vec<_>>>()?;
    if levels == 0 {
        return s.fail("no encoder.down.N blocks: not a VAE with FLUX's layout".into());
    }
    Ok(AeConfig {
        // Not read by the autoencoder; FLUX's training resolution.
        resolution: 1024,
        in_channels,
        ch,
        out_ch: s.dims("decoder.conv_out.weight", 4)?[0],
        ch_mult,
        num_res_blocks: s.count(|i| format!("encoder.down.0.block.{i}.conv1.weight")),
        z_channels: s.dims("decoder.conv_in.weight", 4)?[1],
        scale_factor: FLUX_VAE_SCALE,
        shift_factor: FLUX_VAE_SHIFT,
    })
}

/// A T5 encoder config: heads from the relative attention bias (buckets x heads), gated GELU
/// when `wi_0` exists (T5 v1.1, which FLUX uses), ReLU otherwise.
pub fn t5_config(s: &Shapes) -> Result<t5::Config> {
    let att = "encoder.block.0.layer.0.SelfAttention";
    let q = s.dims(&format!("{att}.q.weight"), 2)?;
    let (inner, d_model) = (q[0], q[1]);
    let bias = s.dims(&format!("{att}.relative_attention_bias.weight"), 2)?;
    let (buckets, heads) = (bias[0], bias[1]);
    if heads == 0 || inner % heads != 0 {
        return s.fail(format!(
            "attention width {inner} does not split into {heads} heads"
        ));
    }
    let vocab = match s.has("shared.weight") {
        true => s.dims("shared.weight", 2)?[0],
        false => s.dims("encoder.embed_tokens.weight", 2)?[0],
    };
    let ff = "encoder.block.0.layer.1.DenseReluDense";
    let gated = s.has(&format!("{ff}.wi_0.weight"));
    let d_ff = match gated {
        true => s.dims(&format!("{ff}.wi_0.weight"), 2)?[0],
        false => s.dims(&format!("{ff}.wi.weight"), 2)?[0],
    };
    let layers = s.count(|i| format!("encoder.block.{i}.layer.0.SelfAttention.q.weight"));
    let json = serde_json::json!({
        "d_ff": d_ff, "d_kv": inner / heads, "d_model": d_model, "decoder_start_token_id": 0,
        "dense_act_fn": if gated { "gelu_new" } else { "relu" }, "dropout_rate": 0.1,
        "eos_token_id": 1, "feed_forward_proj": if gated { "gated-gelu" } else { "relu" },
        "initializer_factor": 1.0, "is_encoder_decoder": true, "is_gated_act": gated,
        "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": layers,
        "num_heads": heads, "num_layers": layers, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": buckets,
        "tie_word_embeddings": false, "vocab_size": vocab
    });
    Ok(serde_json::from_value(json)?)
}

/// A CLIP text config. The head count is in no tensor shape: heads are 64 wide in every CLIP
/// text model FLUX is used with (CLIP-L: 768 = 12 x 64), so heads = hidden / 64, and 2 for
/// test models narrower than 64 (the tiny model has hidden 32 with 2 heads).
pub fn clip_config(s: &Shapes) -> Result<ClipJsonConfig> {
    let emb = "text_model.embeddings";
    let tokens = s.dims(&format!("{emb}.token_embedding.weight"), 2)?;
    let (vocab, hidden) = (tokens[0], tokens[1]);
    check_size(
        &format!(
            "{}: the CLIP width (token_embedding.weight columns)",
            s.file.display()
        ),
        hidden,
        MAX_WIDTH,
    )?;
    let heads = if hidden < 64 { 2 } else { hidden / 64 };
    if hidden % heads != 0 {
        return s.fail(format!(
            "CLIP width {hidden} does not split into {heads} heads of 64"
        ));
    }
    let projection_dim = match s.has("text_projection.weight") {
        true => s.dims("text_projection.weight", 2)?[0],
        false => hidden,
    };
    Ok(ClipJsonConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: s.dims("text_model.encoder.layers.0.mlp.fc1.weight", 2)?[0],
        num_hidden_layers: s.count(|i| format!("text_model.encoder.layers.{i}.mlp.fc1.weight")),
        num_attention_heads: heads,
        max_position_embeddings: s.dims(&format!("{emb}.position_embedding.weight"), 2)?[0],
        projection_dim,
        hidden_act: "quick_gelu".into(),
    })
}
