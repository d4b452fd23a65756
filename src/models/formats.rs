//! What a single safetensors file holds, told by its tensor names rather than its file name:
//! ComfyUI and other tools keep FLUX.1's components as loose files under names users change
//! (`flux1-dev-fp8.safetensors`, `t5xxl_fp16.safetensors`, `clip_l.safetensors`, `ae.safetensors`).

use anyhow::{bail, Result};
use std::path::Path;

use super::store::TensorStore;

/// The prefix ComfyUI and the original BFL training code put before every transformer tensor.
pub const COMFY_PREFIX: &str = "model.diffusion_model.";

/// Which part of FLUX.1 a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Transformer,
    Vae,
    T5,
    Clip,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Transformer, Role::Vae, Role::T5, Role::Clip];

    pub fn name(self) -> &'static str {
        match self {
            Role::Transformer => "transformer",
            Role::Vae => "vae",
            Role::T5 => "t5",
            Role::Clip => "clip",
        }
    }

    /// Where to get this component, for errors about a missing one.
    pub fn download_hint(self) -> &'static str {
        match self {
            Role::Transformer => {
                "the FLUX.1 transformer (flux1-dev.safetensors or flux1-schnell.safetensors from black-forest-labs)"
            }
            Role::Vae => "the FLUX.1 VAE (ae.safetensors from black-forest-labs/FLUX.1-schnell)",
            Role::T5 => "the T5-XXL encoder (t5xxl_fp16.safetensors from comfyanonymous/flux_text_encoders)",
            Role::Clip => "the CLIP-L text encoder (clip_l.safetensors from comfyanonymous/flux_text_encoders)",
        }
    }
}

/// The format of one single-file checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// FLUX transformer under BFL names, each behind `prefix` (empty, or [`COMFY_PREFIX`]).
    FluxBfl { prefix: String },
    /// FLUX transformer under diffusers names (`transformer_blocks.0.attn.to_q.weight`).
    FluxDiffusers,
    /// FLUX transformer in a GGUF file (quantized), BFL names behind `prefix`.
    FluxGguf { prefix: String },
    /// BFL's `ae.safetensors` (`decoder.up.0.block.0.conv1.weight`).
    VaeBfl,
    /// A Hugging Face T5 encoder (`encoder.block.0.layer.0.SelfAttention.q.weight`).
    T5Encoder,
    /// A Hugging Face CLIP text model (`text_model.encoder.layers.0...`).
    ClipText,
}

impl FileKind {
    pub fn role(&self) -> Role {
        match self {
            FileKind::FluxBfl { .. } | FileKind::FluxDiffusers | FileKind::FluxGguf { .. } => {
                Role::Transformer
            }
            FileKind::VaeBfl => Role::Vae,
            FileKind::T5Encoder => Role::T5,
            FileKind::ClipText => Role::Clip,
        }
    }

    /// How `charaboard models` names the format.
    pub fn describe(&self) -> &'static str {
        match self {
            FileKind::FluxBfl { .. } => "single-file BFL",
            FileKind::FluxDiffusers => "single-file diffusers",
            FileKind::FluxGguf { .. } => "gguf",
            FileKind::VaeBfl => "single-file BFL",
            FileKind::T5Encoder | FileKind::ClipText => "single-file transformers",
        }
    }
}

/// The kind of a checkpoint whose tensor names are `names`, or `None` for anything else.
pub fn classify_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<FileKind> {
    let names: Vec<&str> = names.into_iter().collect();
    let has = |n: &str| names.contains(&n);
    const BFL_PROBE: &str = "double_blocks.0.img_attn.qkv.weight";
    if has(BFL_PROBE) {
        return Some(FileKind::FluxBfl {
            prefix: String::new(),
        });
    }
    if has(&format!("{COMFY_PREFIX}{BFL_PROBE}")) {
        return Some(FileKind::FluxBfl {
            prefix: COMFY_PREFIX.into(),
        });
    }
    if has("transformer_blocks.0.attn.to_q.weight") && has("x_embedder.weight") {
        return Some(FileKind::FluxDiffusers);
    }
    if has("decoder.conv_in.weight") && has("decoder.up.0.block.0.conv1.weight") {
        return Some(FileKind::VaeBfl);
    }
    if has("encoder.block.0.layer.0.SelfAttention.q.weight") {
        return Some(FileKind::T5Encoder);
    }
    if has("text_model.encoder.layers.0.self_attn.q_proj.weight") {
        return Some(FileKind::ClipText);
    }
    None
}

/// The kind of the already opened `store` read from `path`; other files are an error that
/// shows some of their tensor names, so that the user sees what the file is instead.
pub fn classify_store(path: &Path, store: &TensorStore) -> Result<FileKind> {
    if let Some(kind) = classify_names(store.names()) {
        return Ok(kind);
    }
    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    let shown: Vec<&str> = names.iter().take(5).copied().collect();
    bail!(
        "{} is not a FLUX.1, VAE, T5 or CLIP checkpoint: its {} tensors include {}{} \
         (expected names such as double_blocks.0.img_attn.qkv.weight, decoder.up.0.block.0.conv1.weight, \
         encoder.block.0.layer.0.SelfAttention.q.weight or text_model.encoder.layers.0.self_attn.q_proj.weight)",
        path.display(),
        names.len(),
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        },
        if names.len() > shown.len() { ", ..." } else { "" }
    )
}
