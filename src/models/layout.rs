//! The Hugging Face repository layout of `black-forest-labs/FLUX.1-dev` and `-schnell`:
//! model_index.json plus one folder per component.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One component folder: its config.json (where it has one) and its weight shards.
#[derive(Debug, Clone)]
pub struct Component {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
}

/// The files of a FLUX.1 repository folder, all checked to exist.
#[derive(Debug, Clone)]
pub struct RepoLayout {
    pub root: PathBuf,
    pub transformer: Component,
    /// CLIP-L text encoder.
    pub text_encoder: Component,
    /// T5-XXL encoder.
    pub text_encoder_2: Component,
    pub vae: Component,
    /// CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json). It may be missing:
    /// the shipped CLIP tokenizer, FLUX.1's own, stands in.
    pub tokenizer: PathBuf,
    /// T5 tokenizer folder (tokenizer.json); it may be missing, like `tokenizer`.
    pub tokenizer_2: PathBuf,
    pub scheduler_config: PathBuf,
}

impl RepoLayout {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!(
                "model folder {} does not exist or is not a folder",
                root.display()
            );
        }
        let index = root.join("model_index.json");
        let text = std::fs::read_to_string(&index).with_context(|| {
            format!(
                "{} has no model_index.json: expected the Hugging Face layout of black-forest-labs/FLUX.1-dev or -schnell",
                root.display()
            )
        })?;
        let _: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            transformer: component(root, "transformer")?,
            text_encoder: component(root, "text_encoder")?,
            text_encoder_2: component(root, "text_encoder_2")?,
            vae: component(root, "vae")?,
            tokenizer: root.join("tokenizer"),
            tokenizer_2: root.join("tokenizer_2"),
            scheduler_config: existing_file(
                &existing_dir(root, "scheduler")?,
                "scheduler_config.json",
            )?,
        })
    }
}

fn existing_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    if !dir.is_dir() {
        bail!("component folder {} is missing", dir.display());
    }
    Ok(dir)
}

fn existing_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!("{} is missing", path.display());
    }
    Ok(path)
}

fn component(root: &Path, name: &str) -> Result<Component> {
    let dir = existing_dir(root, name)?;
    Ok(Component {
        config: existing_file(&dir, "config.json")?,
        weights: weight_files(&dir)?,
        dir,
    })
}

/// The shards named by a `*.safetensors.index.json`, or else the folder's `*.safetensors` files.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let is = |p: &Path, suffix: &str| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix))
    };
    if let Some(index) = entries.iter().find(|p| is(p, ".safetensors.index.json")) {
        return shards_of_index(index);
    }
    let files: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| is(p, ".safetensors"))
        .collect();
    if files.is_empty() {
        bail!("no .safetensors weights in {}", dir.display());
    }
    Ok(files)
}

fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a safetensors index (no weight_map)",
            index.display()
        )
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
    shards
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            match path.is_file() {
                true => Ok(path),
                false => bail!(
                    "shard {} listed in {} is missing",
                    path.display(),
                    index.display()
                ),
            }
        })
        .collect()
}
