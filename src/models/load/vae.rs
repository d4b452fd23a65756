//! FLUX's VAE decoder from a diffusers `vae/` folder or BFL's single-file `ae.safetensors`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

use crate::models::configs;
use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::vae_source;
use crate::models::store::{plain_var_builder, RemappedBackend, TensorStore};
use crate::vae::Vae;

/// The VAE decoder of a repository folder (diffusers names), and the bytes of its weights.
pub fn from_repo(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<(Vae, usize)> {
    let cfg = configs::vae_from_json(&layout.vae.config)?;
    let levels = cfg.ch_mult.len();
    let store = TensorStore::open(&layout.vae.weights)?;
    let (vb, loaded) = RemappedBackend::new(store, move |name| vae_source(name, levels))
        .into_var_builder(dtype, dev);
    let vae = Vae::new(&cfg, vb)
        .with_context(|| format!("loading the VAE from {}", layout.vae.dir.display()))?;
    Ok((vae, loaded.get()))
}

/// BFL's single-file `ae.safetensors`, its config inferred from the tensor shapes, and the
/// bytes of its weights.
pub fn from_file(path: &Path, dtype: DType, dev: &Device) -> Result<(Vae, usize)> {
    let store = TensorStore::open(&[path.to_path_buf()])?;
    let kind = classify_store(path, &store)?;
    if kind != FileKind::VaeBfl {
        bail!(
            "{} is a {} checkpoint, not FLUX's VAE (ae.safetensors)",
            path.display(),
            kind.role().name()
        );
    }
    let cfg = infer::vae_config(&Shapes::new(path, &store, &kind))?;
    let (vb, loaded) = plain_var_builder(store, dtype, dev);
    let vae =
        Vae::new(&cfg, vb).with_context(|| format!("loading the VAE from {}", path.display()))?;
    Ok((vae, loaded.get()))
}
