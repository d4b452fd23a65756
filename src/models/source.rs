//! Where a model's components are: a Hugging Face repository folder, a folder of single files
//! (as ComfyUI users keep them), or a `.ron` model file that names each file.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::formats::{classify_store, FileKind, Role};
use super::gguf::{self, GgufHeader};
use super::layout::RepoLayout;
use super::store::TensorStore;

/// The four single files of a FLUX.1 model. They carry no tokenizers: those come from
/// assets/tokenizers (`PromptTokenizers::shipped`), which are FLUX.1's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFiles {
    pub transformer: PathBuf,
    pub vae: PathBuf,
    pub t5: PathBuf,
    pub clip: PathBuf,
}

impl ComponentFiles {
    pub fn path(&self, role: Role) -> &Path {
        match role {
            Role::Transformer => &self.transformer,
            Role::Vae => &self.vae,
            Role::T5 => &self.t5,
            Role::Clip => &self.clip,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Boxed: a repository's layout is several times the size of four paths.
    Repo(Box<RepoLayout>),
    Files(ComponentFiles),
}

/// A `.ron` model file: `(transformer: "flux1-dev.safetensors", vae: "ae.safetensors",
/// t5: "t5xxl_fp16.safetensors", clip: "clip_l.safetensors")`, paths relative to the file.
/// The transformer may be a `.gguf` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    transformer: PathBuf,
    vae: PathBuf,
    t5: PathBuf,
    clip: PathBuf,
}

/// What a `.ron` model file looks like, for error messages.
const MODEL_FILE_EXAMPLE: &str = "(transformer: \"flux1-dev.safetensors\", vae: \"ae.safetensors\", t5: \"t5xxl_fp16.safetensors\", clip: \"clip_l.safetensors\")";

impl ModelSource {
    /// A folder with model_index.json is a repository; another folder is read as single files,
    /// each classified by its tensor names; a `.ron` file names the four files.
    pub fn detect(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("model folder {} does not exist", path.display());
        }
        if path.is_file() {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("ron") => Ok(Self::Files(read_model_file(path)?)),
                Some("safetensors" | "gguf") => bail!(
                    "{} is one file, but FLUX.1 needs four (transformer, VAE, T5, CLIP): pass the folder that holds them, \
                     or a .ron model file naming them: {MODEL_FILE_EXAMPLE}",
                    path.display()
                ),
                _ => bail!(
                    "{} is neither a model folder nor a .ron model file ({MODEL_FILE_EXAMPLE})",
                    path.display()
                ),
            };
        }
        if path.join("model_index.json").is_file() {
            return Ok(Self::Repo(Box::new(RepoLayout::open(path)?)));
        }
        let files = checkpoints_in(path)?;
        if files.is_empty() {
            bail!(
                "{} has no model_index.json (the Hugging Face layout of black-forest-labs/FLUX.1-dev or -schnell) \
                 and no .safetensors or .gguf files (single files such as flux1-dev.safetensors or \
                 flux1-dev-Q4_0.gguf, ae.safetensors, t5xxl_fp16.safetensors and clip_l.safetensors)",
                path.display()
            );
        }
        Ok(Self::Files(files_of_folder(path, &files)?))
    }
}

/// Opens `path` and tells what it is: a `.gguf` file by its GGUF header, anything else as
/// safetensors.
pub fn classify(path: &Path) -> Result<FileKind> {
    if gguf::is_gguf(path) {
        return GgufHeader::read(path)?.classify();
    }
    let store = TensorStore::open(&[path.to_path_buf()])?;
    classify_store(path, &store)
}

/// Whether `path` is a `.safetensors` or `.gguf` file.
pub fn is_checkpoint(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e == "safetensors" || e == "gguf")
}

/// The `.safetensors` and `.gguf` files directly in `dir`, sorted.
pub fn checkpoints_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_checkpoint(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `path` is a `.ron` file with a model file's fields, whether or not the files it
/// names are there: storyboards and settings are RON too, and are not models.
pub fn is_model_file(path: &Path) -> bool {
    path.is_file()
        && path.extension().is_some_and(|e| e == "ron")
        && std::fs::read_to_string(path).is_ok_and(|text| ron::from_str::<ModelFile>(&text).is_ok())
}

/// One file per role out of a folder; files of no role are skipped (and listed if a role is
/// missing, in case the user expected one of them to be it).
fn files_of_folder(dir: &Path, files: &[PathBuf]) -> Result<ComponentFiles> {
    let mut by_role: BTreeMap<Role, Vec<&PathBuf>> = BTreeMap::new();
    let mut other = Vec::new();
    for file in files {
        match classify(file) {
            Ok(kind) => by_role.entry(kind.role()).or_default().push(file),
            Err(e) => other.push(format!("{e:#}")),
        }
    }
    let mut problems = Vec::new();
    for role in Role::ALL {
        match by_role.get(&role).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!(
                "no {} file: download {}",
                role.name(),
                role.download_hint()
            )),
            Some([_]) => {}
            Some(many) => problems.push(format!(
                "{} {} files ({}): keep one, or name the one to use in a .ron model file ({MODEL_FILE_EXAMPLE})",
                many.len(),
                role.name(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if !problems.is_empty() {
        let skipped: String = other.iter().map(|o| format!("\n  skipped: {o}")).collect();
        bail!(
            "{} is not a complete FLUX.1 model folder:\n  {}{skipped}",
            dir.display(),
            problems.join("\n  ")
        );
    }
    let one = |role: Role| by_role[&role][0].clone();
    Ok(ComponentFiles {
        transformer: one(Role::Transformer),
        vae: one(Role::Vae),
        t5: one(Role::T5),
        clip: one(Role::Clip),
    })
}

fn read_model_file(path: &Path) -> Result<ComponentFiles> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed: ModelFile = ron::from_str(&text).with_context(|| {
        format!(
            "{} is not a model file; expected {MODEL_FILE_EXAMPLE}",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let files = ComponentFiles {
        transformer: base.join(parsed.transformer),
        vae: base.join(parsed.vae),
        t5: base.join(parsed.t5),
        clip: base.join(parsed.clip),
    };
    for role in Role::ALL {
        let file = files.path(role);
        if !file.is_file() {
            bail!(
                "{} names {} as the {}, but it does not exist",
                path.display(),
                file.display(),
                role.name()
            );
        }
        let kind = classify(file)?;
        if kind.role() != role {
            bail!(
                "{} names {} as the {}, but its tensors are a {} checkpoint",
                path.display(),
                file.display(),
                role.name(),
                kind.role().name()
            );
        }
    }
    Ok(files)
}
