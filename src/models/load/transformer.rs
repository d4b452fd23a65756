//! The FLUX transformer from a repository folder, a single safetensors file or a GGUF.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

use crate::flux::{config, Flux};
use crate::models::formats::{classify_store, FileKind};
use crate::models::gguf;
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::{transformer_source, Source, TransformerDims};
use crate::models::store::{RemappedBackend, TensorStore};

/// The transformer of a repository folder (diffusers names, fused on load), and the bytes of
/// its weights.
pub fn from_repo(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<(Flux, usize)> {
    let cfg = config::from_diffusers_json(&layout.transformer.config)?;
    let dims = TransformerDims {
        hidden: cfg.hidden_size,
        mlp: (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize,
    };
    let store = TensorStore::open(&layout.transformer.weights)?;
    // Where the shapes do not tell a config (a tensor is missing), the loader below names
    // the missing tensor by its diffusers name.
    let dir = &layout.transformer.dir;
    if let Ok(found) = infer::flux_config(&Shapes::new(dir, &store, &FileKind::FluxDiffusers)) {
        config::check_against_weights(&cfg, &found, &layout.transformer.config)?;
    }
    let (vb, loaded) = RemappedBackend::new(store, move |n| transformer_source(n, dims))
        .into_var_builder(dtype, dev);
    let flux = Flux::new(&cfg, vb).with_context(|| {
        format!(
            "loading the transformer from {}",
            layout.transformer.dir.display()
        )
    })?;
    Ok((flux, loaded.get()))
}

/// A single-file transformer, BFL-named (with or without ComfyUI's prefix) or diffusers-named,
/// or a GGUF, with its config inferred from the tensor shapes; and the bytes of its weights.
pub fn from_file(path: &Path, dtype: DType, dev: &Device) -> Result<(Flux, usize)> {
    if gguf::is_gguf(path) {
        return gguf::load_transformer(path, dtype, dev);
    }
    let store = TensorStore::open(&[path.to_path_buf()])?;
    let kind = classify_store(path, &store)?;
    let cfg = infer::flux_config(&Shapes::new(path, &store, &kind))?;
    let (vb, loaded) = match kind {
        FileKind::FluxBfl { prefix } => {
            RemappedBackend::new(store, move |n| Source::Same(format!("{prefix}{n}")))
        }
        FileKind::FluxDiffusers => {
            let dims = infer::diffusers_transformer_dims(path, &store)?;
            RemappedBackend::new(store, move |n| transformer_source(n, dims))
        }
        other => bail!(
            "{} is a {} checkpoint, not a FLUX transformer",
            path.display(),
            other.role().name()
        ),
    }
    .into_var_builder(dtype, dev);
    let flux = Flux::new(&cfg, vb)
        .with_context(|| format!("loading the transformer from {}", path.display()))?;
    Ok((flux, loaded.get()))
}
