//! Tiny FLUX.1 checkpoints with seeded random weights, written in the Hugging Face repository
//! layout with the real tensor names and file formats, so that tests and first-time users load
//! them through exactly the code that loads the real 12B model.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::flux::autoencoder::{AutoEncoder, Config as AeConfig};
use candle_transformers::models::t5::{self, T5EncoderModel};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::configs::{self, ClipJsonConfig};
use super::names::{transformer_source, vae_source, Source, TransformerDims};
use crate::assets::{CLIP_TOKENIZER_JSON, T5_TOKENIZER_JSON};
use crate::flux::{Flux, FluxConfig};

/// The tiny transformer: hidden 64 (2 heads of 32), 2 double and 4 single blocks.
pub fn flux_config(schnell: bool) -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 32,
        context_in_dim: 32,
        hidden_size: 64,
        mlp_ratio: 4.0,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 4,
        axes_dim: vec![8, 12, 12],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: !schnell,
    }
}

/// The tiny transformer at FLUX.1's head size: hidden 256 in 2 heads of 128 (FLUX's RoPE axes).
pub fn head128_config(schnell: bool) -> FluxConfig {
    FluxConfig {
        hidden_size: 256,
        axes_dim: vec![16, 56, 56],
        ..flux_config(schnell)
    }
}

fn clip_config() -> ClipJsonConfig {
    ClipJsonConfig {
        vocab_size: 49408,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        max_position_embeddings: 77,
        projection_dim: 32,
        hidden_act: "quick_gelu".into(),
    }
}

fn t5_config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["T5EncoderModel"],
        "d_ff": 64, "d_kv": 8, "d_model": 32, "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": true,
        "is_gated_act": true, "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 2,
        "num_heads": 4, "num_layers": 2, "pad_token_id": 0, "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32, "tie_word_embeddings": false, "vocab_size": 32128
    })
}

/// A VAE with FLUX's 8x downsampling (4 levels) at the smallest width GroupNorm(32) allows.
pub fn vae_config() -> AeConfig {
    AeConfig {
        resolution: 256,
        in_channels: 3,
        ch: 32,
        out_ch: 3,
        ch_mult: vec![1, 1, 1, 1],
        num_res_blocks: 1,
        z_channels: 16,
        scale_factor: 0.3611,
        shift_factor: 0.1159,
    }
}

/// Each component's weights are drawn from the repository seed plus its own offset.
pub const CLIP_SEED_OFFSET: u64 = 1;
pub const T5_SEED_OFFSET: u64 = 2;
pub const VAE_SEED_OFFSET: u64 = 3;

/// FNV-1a, so that every tensor's values depend on the seed and its name only.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Deterministic weights for every variable: N(0, 1/fan_in) matrices, norm scales near 1,
/// small biases.
fn seeded_weights(varmap: &VarMap, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned VarMap"))?;
    let mut out = BTreeMap::new();
    for (name, var) in vars.iter() {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
        let mut normal = || -> f32 { StandardNormal.sample(&mut rng) };
        let is_norm = name.contains("norm") || name.ends_with(".scale");
        let values: Vec<f32> = if dims.len() >= 2 {
            let std = 1.0 / ((n / dims[0]) as f32).sqrt();
            (0..n).map(|_| normal() * std).collect()
        } else if is_norm && !name.ends_with("bias") {
            (0..n).map(|_| 1.0 + 0.1 * normal()).collect()
        } else {
            (0..n).map(|_| 0.05 * normal()).collect()
        };
        out.insert(name.clone(), Tensor::from_vec(values, dims, &Device::Cpu)?);
    }
    Ok(out)
}

/// Builds a model on a VarMap to learn its tensor names and shapes, then fills them with seeded values.
fn weights_of(
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<BTreeMap<String, Tensor>> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    seeded_weights(&varmap, seed)
}

/// Seeded random weights of the tiny transformer under BFL names.
pub fn transformer_weights(cfg: &FluxConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    weights_of(seed, |vb| Flux::new(cfg, vb).map(|_| ()))
}

/// Seeded random weights of a VAE under BFL names.
pub fn vae_weights(cfg: &AeConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    weights_of(seed, |vb| AutoEncoder::new(cfg, vb).map(|_| ()))
}

/// Seeded random weights of the tiny CLIP text model under Hugging Face names.
pub fn clip_weights(seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let cfg = clip_config().to_candle(Path::new("tiny CLIP"))?;
    weights_of(seed, |vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &cfg).map(|_| ())
    })
}

/// Seeded random weights of the tiny T5 encoder under Hugging Face names.
pub fn t5_weights(seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let cfg: t5::Config = serde_json::from_value(t5_config_json())?;
    weights_of(seed, |vb| {
        // The shared embedding is created first so that the encoder is built over `shared.weight`,
        // the name Hugging Face checkpoints use.
        vb.get_with_hints(
            (cfg.vocab_size, cfg.d_model),
            "shared.weight",
            candle_nn::Init::Const(0.),
        )?;
        T5EncoderModel::load(vb, &cfg).map(|_| ())
    })
}

/// Rewrites BFL-named tensors under the diffusers names that `rule` maps them from.
pub fn to_diffusers(
    bfl: &BTreeMap<String, Tensor>,
    rule: impl Fn(&str) -> Source,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in bfl {
        match rule(name) {
            Source::Same(n) => {
                out.insert(n, t.clone());
            }
            Source::Rows(parts) => {
                let mut start = 0;
                for (n, len) in parts {
                    out.insert(n, t.narrow(0, start, len)?);
                    start += len;
                }
            }
            Source::SwappedHalves(n) => {
                let half = t.dim(0)? / 2;
                out.insert(
                    n,
                    Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?,
                );
            }
            Source::Squeezed(n) => {
                let (a, b) = (t.dim(0)?, t.dim(1)?);
                out.insert(n, t.reshape((a, b))?);
            }
        }
    }
    Ok(out)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `tensors` as `stem.safetensors`, or as `shards` files `stem-0000i-of-0000n.safetensors`
/// with the `stem.safetensors.index.json` that Hugging Face repositories use.
fn write_weights(
    dir: &Path,
    stem: &str,
    tensors: &BTreeMap<String, Tensor>,
    shards: usize,
) -> Result<()> {
    if shards <= 1 {
        let all: HashMap<&String, Tensor> = tensors.iter().map(|(n, t)| (n, t.clone())).collect();
        candle_core::safetensors::save(&all, dir.join(format!("{stem}.safetensors")))?;
        return Ok(());
    }
    let names: Vec<&String> = tensors.keys().collect();
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per_shard).enumerate() {
        let file = format!("{stem}-{:05}-of-{:05}.safetensors", i + 1, shards);
        let part: HashMap<&String, Tensor> =
            chunk.iter().map(|n| (*n, tensors[*n].clone())).collect();
        candle_core::safetensors::save(&part, dir.join(&file))?;
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    write_json(&dir.join(format!("{stem}.safetensors.index.json")), &index)
}

/// The CLIP tokenizer's vocab.json and merges.txt, as the repository's `tokenizer/` holds them.
fn write_clip_tokenizer_files(dir: &Path) -> Result<()> {
    let json: serde_json::Value = serde_json::from_slice(CLIP_TOKENIZER_JSON)?;
    write_json(&dir.join("vocab.json"), &json["model"]["vocab"])?;
    let mut merges = String::from("#version: 0.2\n");
    for pair in json["model"]["merges"].as_array().context("CLIP merges")? {
        let a = pair[0].as_str().context("merge")?;
        let b = pair[1].as_str().context("merge")?;
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.join("merges.txt"), merges)?;
    Ok(())
}

/// Writes a complete tiny FLUX.1 repository (dev-style, or schnell-style without the guidance
/// embedder) to `out`.
pub fn write_repo(out: &Path, seed: u64, schnell: bool) -> Result<()> {
    write_repo_with(out, seed, &flux_config(schnell))
}

/// [`write_repo`] with another transformer (its text widths must be the tiny encoders' 32).
pub fn write_repo_with(out: &Path, seed: u64, cfg: &FluxConfig) -> Result<()> {
    let schnell = !cfg.guidance_embed;
    let dirs = [
        "transformer",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "vae",
        "scheduler",
    ];
    for d in dirs {
        std::fs::create_dir_all(out.join(d))
            .with_context(|| format!("cannot create {}", out.join(d).display()))?;
    }
    write_json(
        &out.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "FluxPipeline",
            "_diffusers_version": "0.32.2",
            "_charaboard_tiny_random_weights": true,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;

    let dims = TransformerDims {
        hidden: cfg.hidden_size,
        mlp: (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize,
    };
    let bfl = transformer_weights(cfg, seed)?;
    let diffusers = to_diffusers(&bfl, |n| transformer_source(n, dims))?;
    write_json(
        &out.join("transformer/config.json"),
        &crate::flux::config::to_diffusers_json(cfg),
    )?;
    write_weights(
        &out.join("transformer"),
        "diffusion_pytorch_model",
        &diffusers,
        2,
    )?;

    let clip = clip_config();
    let clip_weights = clip_weights(seed + CLIP_SEED_OFFSET)?;
    let mut clip_json = serde_json::to_value(&clip)?;
    clip_json["architectures"] = serde_json::json!(["CLIPTextModel"]);
    clip_json["model_type"] = "clip_text_model".into();
    write_json(&out.join("text_encoder/config.json"), &clip_json)?;
    write_weights(&out.join("text_encoder"), "model", &clip_weights, 1)?;

    let t5_json = t5_config_json();
    let t5_weights = t5_weights(seed + T5_SEED_OFFSET)?;
    write_json(&out.join("text_encoder_2/config.json"), &t5_json)?;
    write_weights(&out.join("text_encoder_2"), "model", &t5_weights, 2)?;

    write_clip_tokenizer_files(&out.join("tokenizer"))?;
    std::fs::write(out.join("tokenizer_2/tokenizer.json"), T5_TOKENIZER_JSON)?;
    // The lengths FLUX.1's repositories give their tokenizers, so that diffusers pads and
    // truncates as it does for the real model (charaboard itself reads neither file).
    write_json(
        &out.join("tokenizer/tokenizer_config.json"),
        &serde_json::json!({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}),
    )?;
    write_json(
        &out.join("tokenizer_2/tokenizer_config.json"),
        &serde_json::json!({"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 100}),
    )?;

    let ae = vae_config();
    let levels = ae.ch_mult.len();
    let ae_bfl = vae_weights(&ae, seed + VAE_SEED_OFFSET)?;
    write_json(&out.join("vae/config.json"), &configs::vae_to_json(&ae))?;
    write_weights(
        &out.join("vae"),
        "diffusion_pytorch_model",
        &to_diffusers(&ae_bfl, |n| vae_source(n, levels))?,
        1,
    )?;

    let sched = match schnell {
        true => {
            serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": false})
        }
        false => {
            serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": true})
        }
    };
    write_json(&out.join("scheduler/scheduler_config.json"), &sched)?;
    Ok(())
}
