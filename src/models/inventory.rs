//! What models are on this machine, for `charaboard models`: the FLUX.1 repositories in the
//! Hugging Face caches and, in folders the user names, repositories, `.ron` model files and
//! single-file checkpoints, each component with its format, storage dtype and size.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::discovery;
use super::formats::{classify_store, Role};
use super::gguf::{self, GgufHeader};
use super::source::{checkpoints_in, ModelSource};
use super::store::TensorStore;

/// How deep `charaboard models --in DIR` looks below DIR (ComfyUI keeps `models/unet/...`).
const MAX_DEPTH: usize = 3;

/// One component as stored.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub role: Role,
    /// `repo-diffusers`, `single-file BFL`, ...
    pub format: String,
    /// Storage dtypes, the most common first (`BF16`, or `BF16+F32` for mixed files).
    pub dtype: String,
    pub bytes: u64,
    /// The file, or the component folder of a repository.
    pub path: PathBuf,
}

/// A model (or a folder of loose files) found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// The repository id for cache entries, otherwise what it is (`repository`, `model file`,
    /// `single files`).
    pub name: String,
    pub path: PathBuf,
    /// Whether `--model PATH` can load it as it is (all four components present).
    pub complete: bool,
    pub components: Vec<ComponentInfo>,
}

/// `BF16+F32`: the stored dtypes, the most common first.
fn join_dtypes(counts: Vec<(String, usize)>) -> String {
    counts
        .into_iter()
        .map(|(d, _)| d)
        .collect::<Vec<_>>()
        .join("+")
}

fn total_bytes(files: &[PathBuf]) -> Result<u64> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .with_context(|| format!("cannot read the size of {}", f.display()))
        })
        .sum::<Result<u64>>()
}

fn describe_files(
    role: Role,
    format: String,
    files: &[PathBuf],
    path: &Path,
) -> Result<ComponentInfo> {
    let store = TensorStore::open(files)?;
    Ok(ComponentInfo {
        role,
        format,
        dtype: join_dtypes(store.stored_dtypes()),
        bytes: total_bytes(files)?,
        path: path.to_path_buf(),
    })
}

/// A GGUF transformer, its dtype the quantizations (`Q4_0+F32`: matmul weights, then norms).
fn describe_gguf(file: &Path) -> Result<Option<ComponentInfo>> {
    let Ok(header) = GgufHeader::read(file) else {
        return Ok(None);
    };
    let Ok(kind) = header.classify() else {
        return Ok(None);
    };
    Ok(Some(ComponentInfo {
        role: kind.role(),
        format: kind.describe().into(),
        dtype: join_dtypes(header.stored_dtypes()),
        bytes: total_bytes(&[file.to_path_buf()])?,
        path: file.to_path_buf(),
    }))
}

/// One single file; `None` when it is no FLUX.1 component (or no readable safetensors or
/// GGUF file).
fn describe_file(file: &Path) -> Result<Option<ComponentInfo>> {
    if gguf::is_gguf(file) {
        return describe_gguf(file);
    }
    let Ok(store) = TensorStore::open(&[file.to_path_buf()]) else {
        return Ok(None);
    };
    let Ok(kind) = classify_store(file, &store) else {
        return Ok(None);
    };
    describe_files(
        kind.role(),
        kind.describe().into(),
        &[file.to_path_buf()],
        file,
    )
    .map(Some)
}

/// The components of a model source.
pub fn components(source: &ModelSource) -> Result<Vec<ComponentInfo>> {
    match source {
        ModelSource::Repo(layout) => [
            (Role::Transformer, &layout.transformer),
            (Role::Vae, &layout.vae),
            (Role::T5, &layout.text_encoder_2),
            (Role::Clip, &layout.text_encoder),
        ]
        .into_iter()
        .map(|(role, c)| describe_files(role, "repo-diffusers".into(), &c.weights, &c.dir))
        .collect(),
        ModelSource::Files(files) => Role::ALL
            .into_iter()
            .map(|role| {
                describe_file(files.path(role))?.with_context(|| {
                    format!(
                        "{} is no longer a {} checkpoint",
                        files.path(role).display(),
                        role.name()
                    )
                })
            })
            .collect(),
    }
}

/// The FLUX.1 repositories in the Hugging Face caches.
pub fn in_caches() -> Result<Vec<Found>> {
    discovery::find_all()
        .into_iter()
        .map(|repo| {
            let source = ModelSource::detect(&repo.snapshot)?;
            Ok(Found {
                name: repo.id,
                path: repo.snapshot,
                complete: true,
                components: components(&source)?,
            })
        })
        .collect()
}

/// Repositories, `.ron` model files and folders of single files at or below `dir`.
pub fn in_dir(dir: &Path) -> Result<Vec<Found>> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a folder", dir.display());
    }
    let mut found = Vec::new();
    walk(dir, 0, &mut found)?;
    Ok(found)
}

fn entry(path: &Path, source: &ModelSource) -> Result<Found> {
    let name = match source {
        ModelSource::Repo(_) => "repository",
        ModelSource::Files(_) => "model file",
    };
    Ok(Found {
        name: name.into(),
        path: path.to_path_buf(),
        complete: true,
        components: components(source)?,
    })
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<Found>) -> Result<()> {
    if dir.join("model_index.json").is_file() {
        // A broken repository is still worth listing: the error says what is missing.
        if let Ok(source) = ModelSource::detect(dir) {
            found.push(entry(dir, &source)?);
        }
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for ron in entries
        .iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "ron"))
    {
        if let Ok(source) = ModelSource::detect(ron) {
            found.push(entry(ron, &source)?);
        }
    }
    let mut loose: Vec<ComponentInfo> = checkpoints_in(dir)?
        .iter()
        .filter_map(|f| describe_file(f).transpose())
        .collect::<Result<_>>()?;
    loose.sort_by_key(|c| c.role);
    if !loose.is_empty() {
        found.push(Found {
            name: "single files".into(),
            path: dir.to_path_buf(),
            complete: ModelSource::detect(dir).is_ok(),
            components: loose,
        });
    }
    if depth < MAX_DEPTH {
        for sub in entries.iter().filter(|p| p.is_dir()) {
            walk(sub, depth + 1, found)?;
        }
    }
    Ok(())
}
