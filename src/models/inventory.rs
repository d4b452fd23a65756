//! What models are on this machine, for `charaboard models`: the FLUX.1 repositories in the
//! Hugging Face caches and, in folders the user names, repositories, `.ron` model files and
//! single-file checkpoints, each component with its format, storage dtype and size.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::discovery;
use super::formats::{classify_store, Role};
use super::gguf::{self, GgufHeader};
use super::source::{is_checkpoint, is_model_file, ModelSource};
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

/// A model or checkpoint file that was found but could not be read, and why.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub why: String,
}

/// What a search found: every model it could read, and the rest with the reason, so that one
/// broken file neither hides the others nor goes unmentioned.
#[derive(Debug, Default)]
pub struct Listing {
    pub found: Vec<Found>,
    pub unreadable: Vec<Unreadable>,
}

impl Listing {
    pub fn extend(&mut self, other: Listing) {
        self.found.extend(other.found);
        self.unreadable.extend(other.unreadable);
    }

    fn unreadable(&mut self, path: &Path, e: anyhow::Error) {
        self.unreadable.push(Unreadable {
            path: path.to_path_buf(),
            why: format!("{e:#}"),
        });
    }

    fn add(&mut self, path: &Path, found: Result<Found>) {
        match found {
            Ok(found) => self.found.push(found),
            Err(e) => self.unreadable(path, e),
        }
    }
}

fn describe_store(
    role: Role,
    format: String,
    store: &TensorStore,
    files: &[PathBuf],
    path: &Path,
) -> Result<ComponentInfo> {
    Ok(ComponentInfo {
        role,
        format,
        dtype: join_dtypes(store.stored_dtypes()),
        bytes: total_bytes(files)?,
        path: path.to_path_buf(),
    })
}

fn describe_files(
    role: Role,
    format: String,
    files: &[PathBuf],
    path: &Path,
) -> Result<ComponentInfo> {
    describe_store(role, format, &TensorStore::open(files)?, files, path)
}

/// A GGUF transformer, its dtype the quantizations (`Q4_0+F32`: matmul weights, then norms);
/// `None` for a readable GGUF that is not one.
fn describe_gguf(file: &Path) -> Result<Option<ComponentInfo>> {
    let header = GgufHeader::read(file)?;
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

/// One single file; `None` when it is readable but no FLUX.1 component (a LoRA, another
/// model), an error when it cannot be read.
fn describe_file(file: &Path) -> Result<Option<ComponentInfo>> {
    if gguf::is_gguf(file) {
        return describe_gguf(file);
    }
    let files = [file.to_path_buf()];
    let store = TensorStore::open(&files)?;
    let Ok(kind) = classify_store(file, &store) else {
        return Ok(None);
    };
    describe_store(kind.role(), kind.describe().into(), &store, &files, file).map(Some)
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
pub fn in_caches() -> Listing {
    let mut listing = Listing::default();
    for repo in discovery::find_all() {
        let components = ModelSource::detect(&repo.snapshot).and_then(|s| components(&s));
        let found = components.map(|components| Found {
            name: repo.id.clone(),
            path: repo.snapshot.clone(),
            complete: true,
            components,
        });
        listing.add(&repo.snapshot, found);
    }
    listing
}

/// Repositories, `.ron` model files and folders of single files at or below `dir`.
pub fn in_dir(dir: &Path) -> Result<Listing> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a folder", dir.display());
    }
    let mut listing = Listing::default();
    walk(dir, 0, &mut listing);
    Ok(listing)
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

fn walk(dir: &Path, depth: usize, listing: &mut Listing) {
    if dir.join("model_index.json").is_file() {
        listing.add(dir, ModelSource::detect(dir).and_then(|s| entry(dir, &s)));
        return;
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()));
    let mut entries: Vec<PathBuf> = match entries {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return listing.unreadable(dir, e),
    };
    entries.sort();
    // Other `.ron` files (storyboards, settings) are not models and go unmentioned.
    for ron in entries.iter().filter(|p| is_model_file(p)) {
        listing.add(ron, ModelSource::detect(ron).and_then(|s| entry(ron, &s)));
    }
    let mut loose = Vec::new();
    for file in entries.iter().filter(|p| is_checkpoint(p)) {
        match describe_file(file) {
            Ok(Some(component)) => loose.push(component),
            Ok(None) => {}
            Err(e) => listing.unreadable(file, e),
        }
    }
    loose.sort_by_key(|c| c.role);
    if !loose.is_empty() {
        listing.found.push(Found {
            name: "single files".into(),
            path: dir.to_path_buf(),
            complete: ModelSource::detect(dir).is_ok(),
            components: loose,
        });
    }
    if depth < MAX_DEPTH {
        for sub in entries.iter().filter(|p| p.is_dir()) {
            walk(sub, depth + 1, listing);
        }
    }
}
