//! FLUX's VAE decoder (and, for a picture identity, its encoder) from a diffusers `vae/` folder
//! or BFL's single-file `ae.safetensors`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config as AeConfig;
use std::path::Path;

use crate::models::configs;
use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::names::vae_source;
use crate::models::source::ModelSource;
use crate::models::store::{plain_var_builder, RemappedBackend, TensorStore};
use crate::vae::{Vae, VaeEncoder};

/// The VAE decoder of a repository folder (diffusers names), and the bytes of its weights.
pub fn from_repo(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<(Vae, usize)> {
    repo_part(layout, dtype, dev, Vae::new)
}

/// BFL's single-file `ae.safetensors`, its config inferred from the tensor shapes, and the
/// bytes of its weights.
pub fn from_file(path: &Path, dtype: DType, dev: &Device) -> Result<(Vae, usize)> {
    file_part(path, dtype, dev, Vae::new)
}

/// The VAE encoder of `source`, from the same files and names as its decoder, and the bytes of
/// its weights.
pub fn encoder(source: &ModelSource, dtype: DType, dev: &Device) -> Result<(VaeEncoder, usize)> {
    match source {
        ModelSource::Repo(layout) => repo_part(layout, dtype, dev, VaeEncoder::new),
        ModelSource::Files(files) => file_part(&files.vae, dtype, dev, VaeEncoder::new),
    }
}

type Build<T> = fn(&AeConfig, VarBuilder) -> candle_core::Result<T>;

fn repo_part<T>(
    layout: &RepoLayout,
    dtype: DType,
    dev: &Device,
    build: Build<T>,
) -> Result<(T, usize)> {
    let cfg = configs::vae_from_json(&layout.vae.config)?;
    let levels = cfg.ch_mult.len();
    let store = TensorStore::open(&layout.vae.weights)?;
    let (vb, loaded) = RemappedBackend::new(store, move |name| vae_source(name, levels))
        .into_var_builder(dtype, dev);
    let part = build(&cfg, vb)
        .with_context(|| format!("loading the VAE from {}", layout.vae.dir.display()))?;
    Ok((part, loaded.get()))
}

fn file_part<T>(path: &Path, dtype: DType, dev: &Device, build: Build<T>) -> Result<(T, usize)> {
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
    let part =
        build(&cfg, vb).with_context(|| format!("loading the VAE from {}", path.display()))?;
    Ok((part, loaded.get()))
}
