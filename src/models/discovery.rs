//! Finding FLUX.1 repositories in the Hugging Face cache that `hf download` fills, so that a
//! model can be named by its id (`black-forest-labs/FLUX.1-dev`) instead of a folder.
//!
//! The cache keeps each repository as `models--ORG--NAME/` with `refs/main` (the commit that
//! `main` pointed to at download time) and one folder per downloaded commit under `snapshots/`;
//! a snapshot folder has the repository's layout, which is what [`super::RepoLayout`] opens.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Result};

/// A FLUX.1 repository found in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRepo {
    /// The repository id, e.g. `black-forest-labs/FLUX.1-dev`.
    pub id: String,
    /// The snapshot folder to load from.
    pub snapshot: PathBuf,
}

/// The hub caches that exist, in the order `huggingface_hub` itself picks them: `$HF_HUB_CACHE`,
/// `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`. All are
/// searched (not only the first) because a download made under other variables is still
/// worth finding; the same folder reached twice is listed once.
pub fn cache_dirs() -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates = [
        var("HF_HUB_CACHE"),
        var("HF_HOME").map(|h| h.join("hub")),
        var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")),
        dirs::home_dir().map(|h| h.join(".cache").join("huggingface").join("hub")),
    ];
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .flatten()
        .filter(|dir| dir.is_dir())
        .filter(|dir| seen.insert(fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())))
        .collect()
}

/// The FLUX.1 repositories in one cache folder, sorted by id. A repository counts when its
/// snapshot has `model_index.json` and `transformer/config.json`; other models in the cache
/// (text models, half-finished downloads) are skipped.
pub fn find_in(cache: &Path) -> Vec<CachedRepo> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut repos: Vec<CachedRepo> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let id = repo_id(name.to_str()?)?;
            let snapshot = snapshot_of(&entry.path())?;
            is_flux_repo(&snapshot).then_some(CachedRepo { id, snapshot })
        })
        .collect();
    repos.sort_by(|a, b| a.id.cmp(&b.id));
    repos
}

/// The FLUX.1 repositories in every cache of [`cache_dirs`]; where two caches hold the same
/// id, the one from the cache listed first wins.
pub fn find_all() -> Vec<CachedRepo> {
    let mut seen = HashSet::new();
    cache_dirs()
        .iter()
        .flat_map(|dir| find_in(dir))
        .filter(|repo| seen.insert(repo.id.clone()))
        .collect()
}

/// The model that `spec` names: an existing folder or `.ron` model file as is, otherwise a
/// repository id (`org/name`) looked up in the caches.
///
/// The error says where it looked and how to fill the cache, since a missing model is the
/// first thing a new user meets.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        bail!("model folder {spec} does not exist or is not a folder");
    }
    let repos = find_all();
    // Hub ids are case-insensitive, but the cache keeps the casing of the download command.
    let found = repos
        .iter()
        .find(|r| r.id == spec)
        .or_else(|| repos.iter().find(|r| r.id.eq_ignore_ascii_case(spec)));
    if let Some(repo) = found {
        return Ok(repo.snapshot.clone());
    }
    let searched = cache_dirs();
    let searched = if searched.is_empty() {
        " none exists (set HF_HUB_CACHE or HF_HOME, or use the default ~/.cache/huggingface/hub)"
            .to_string()
    } else {
        searched
            .iter()
            .map(|d| format!("\n  {}", d.display()))
            .collect()
    };
    bail!(
        "{spec} is not a folder, and no Hugging Face cache holds a FLUX.1 repository with that id \
         (one with model_index.json and transformer/config.json).\nCaches searched:{searched}\n\
         Download it with: hf download {spec}"
    )
}

/// `models--ORG--NAME` -> `ORG/NAME`. Hub names cannot contain `--`, so the first `--` after
/// the prefix is the slash; ids without an organisation (`models--gpt2`) stay as they are.
fn repo_id(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    if rest.is_empty() {
        return None;
    }
    Some(match rest.split_once("--") {
        Some((org, name)) => format!("{org}/{name}"),
        None => rest.to_string(),
    })
}

/// The snapshot `refs/main` points to; without one (a download of another revision, or a
/// missing ref), the most recently modified snapshot, which is the latest download.
fn snapshot_of(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(hash) = fs::read_to_string(repo.join("refs").join("main")) {
        let hash = hash.trim();
        if !hash.is_empty() && snapshots.join(hash).is_dir() {
            return Some(snapshots.join(hash));
        }
    }
    fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .max_by_key(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .map(|e| e.path())
}

fn is_flux_repo(snapshot: &Path) -> bool {
    snapshot.join("model_index.json").is_file()
        && snapshot.join("transformer").join("config.json").is_file()
}

/// Whether `spec` has the shape of a hub id, `org/name`: exactly one slash, both sides
/// non-empty and made of the characters the hub allows. Paths such as `models/tiny/`, `../x`
/// or `/abs/dir` are then reported as missing folders rather than with a download hint.
fn looks_like_repo_id(spec: &str) -> bool {
    let allowed = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(spec.split_once('/'), Some((org, name)) if allowed(org) && allowed(name))
}
