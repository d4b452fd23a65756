//! The identity's bank on disk (`render --bank-file FILE`): the bank, the identity image, its
//! latents and mask in one safetensors file whose metadata holds the identity's key, so that
//! another process (tomorrow, or on another machine with the file on shared storage) reuses it
//! instead of rendering the identity again. A file is reused only when its key equals the
//! plan's; anything else is refused with a note that says why, and recomputed. With several
//! characters each one's bank has a file of its own beside FILE ([`path_of`]), judged by its
//! own identity's key.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::bank::{Bank, Slot, TokenSubset};
use super::plan::ImageKey;

/// The metadata entry that says what the file is, and its version.
const FORMAT: &str = "charaboard identity bank 1";

/// What a bank file restores: the bank and the identity image it belongs to.
pub struct StoredIdentity {
    pub bank: Bank,
    pub with_background: bool,
    pub image: RgbImage,
    /// Final latents, unpacked, f32, on the CPU.
    pub latents: Tensor,
}

/// Why a bank file was not used (the note the render reports before recomputing).
pub enum Refused {
    Missing,
    Note(String),
}

/// Character `k`'s bank file for `--bank-file path`: `path` itself for the first character (as
/// a one-character storyboard has always used it), `{stem}-{k + 1}.{extension}` beside it for
/// the others (`bank.safetensors`, `bank-2.safetensors`, ...), as their identity images are
/// named.
pub fn path_of(path: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or_else(|| "bank".to_string(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", k + 1, ext.to_string_lossy()),
        None => format!("{stem}-{}", k + 1),
    };
    path.with_file_name(name)
}

/// Writes the identity's bank to `path`, atomically.
pub fn write(
    path: &Path,
    key: &ImageKey,
    with_background: bool,
    bank: &Bank,
    image: &RgbImage,
    latents: &Tensor,
) -> Result<()> {
    let cpu = Device::Cpu;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mask: Vec<u8> = bank.mask.iter().map(|&m| u8::from(m)).collect();
    let n = mask.len();
    tensors.insert("mask".into(), Tensor::from_vec(mask, n, &cpu)?);
    let (w, h) = image.dimensions();
    tensors.insert(
        "image".into(),
        Tensor::from_vec(image.as_raw().clone(), (h as usize, w as usize, 3), &cpu)?,
    );
    tensors.insert("latents".into(), latents.to_device(&cpu)?);
    for (layer, f) in &bank.features {
        tensors.insert(format!("features.{layer}"), f.to_device(&cpu)?);
    }
    for (name, subset) in [("fg", &bank.fg), ("bg", &bank.bg)] {
        let Some(subset) = subset else { continue };
        let (tokens, kv, out) = subset.parts();
        tensors.insert(format!("{name}.tokens"), Tensor::new(tokens, &cpu)?);
        for ((step, layer), (k, v)) in kv {
            tensors.insert(format!("{name}.k.{step}.{layer}"), k.to_device(&cpu)?);
            tensors.insert(format!("{name}.v.{step}.{layer}"), v.to_device(&cpu)?);
        }
        for ((step, layer), o) in out {
            tensors.insert(format!("{name}.out.{step}.{layer}"), o.to_device(&cpu)?);
        }
    }
    let key_text = ron::ser::to_string(key).context("cannot write the identity's key")?;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("key".to_string(), key_text),
        ("with_background".to_string(), with_background.to_string()),
    ]);
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .context("cannot serialize the identity's bank")?;
    crate::atomic_file::write_atomic(path, &bytes)
        .with_context(|| format!("cannot write the bank file {}", path.display()))
}

/// The bank in `path` if it is the bank of `key` (with the background when `with_background`),
/// moved to `home`; otherwise why not.
pub fn read(
    path: &Path,
    key: &ImageKey,
    with_background: bool,
    home: &Device,
) -> std::result::Result<StoredIdentity, Refused> {
    if !path.exists() {
        return Err(Refused::Missing);
    }
    let damaged = |e: anyhow::Error| {
        Refused::Note(format!(
            "the bank file {} is damaged ({e:#}): ignored, the identity is computed again",
            path.display()
        ))
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(damaged)?;
    let (stored_key, stored_background) = read_key(&bytes).map_err(damaged)?;
    let differences = key_differences(&stored_key, key);
    if !differences.is_empty() {
        return Err(Refused::Note(format!(
            "the bank file {} belongs to another identity (other {}): ignored, the identity is computed again",
            path.display(),
            differences.join(", ")
        )));
    }
    if with_background && !stored_background {
        return Err(Refused::Note(format!(
            "the bank file {} has no background and a panel locks onto the identity's: the identity is computed again",
            path.display()
        )));
    }
    let mut stored = restore(&bytes, home).map_err(damaged)?;
    stored.with_background = stored_background;
    Ok(stored)
}

fn read_key(bytes: &[u8]) -> Result<(ImageKey, bool)> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .context("not a safetensors file, or cut short")?;
    let entries = meta.metadata().as_ref().context("no metadata")?;
    let entry = |name: &str| {
        entries
            .get(name)
            .with_context(|| format!("no `{name}` in the metadata"))
    };
    ensure!(
        entry("format")? == FORMAT,
        "not a charaboard identity bank of this version"
    );
    let key = ron::from_str(entry("key")?).context("the key is unreadable")?;
    let with_background = match entry("with_background")?.as_str() {
        "true" => true,
        "false" => false,
        other => bail!("`with_background` is `{other}`"),
    };
    Ok((key, with_background))
}

/// Which inputs of two identity keys differ, by name.
fn key_differences(stored: &ImageKey, wanted: &ImageKey) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut differ = |name, d: bool| {
        if d {
            names.push(name)
        }
    };
    differ("model", stored.model != wanted.model);
    differ("prompt", stored.prompt != wanted.prompt);
    differ("environment", stored.environment != wanted.environment);
    differ(
        "size",
        (stored.width, stored.height) != (wanted.width, wanted.height),
    );
    differ("noise", stored.noise != wanted.noise);
    differ("steps", stored.steps != wanted.steps);
    differ("guidance", stored.guidance != wanted.guidance);
    differ("recipe", stored.recipe != wanted.recipe);
    if names.is_empty() && stored != wanted {
        names.push("inputs");
    }
    names
}

fn restore(bytes: &[u8], home: &Device) -> Result<StoredIdentity> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let get = |name: &str| {
        tensors
            .get(name)
            .cloned()
            .with_context(|| format!("no tensor `{name}`"))
    };
    let mask: Vec<bool> = get("mask")?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|m| m != 0)
        .collect();
    let image_t = get("image")?;
    let (h, w, c) = image_t.dims3()?;
    ensure!(c == 3, "the image has {c} channels");
    let image = RgbImage::from_raw(w as u32, h as u32, image_t.flatten_all()?.to_vec1::<u8>()?)
        .context("the image's size and pixels disagree")?;
    let latents = get("latents")?.to_dtype(DType::F32)?;
    let slot_of = |rest: &str| -> Result<Slot> {
        let (step, layer) = rest.split_once('.').context("a slot name")?;
        Ok((step.parse()?, layer.parse()?))
    };
    let mut features = BTreeMap::new();
    for (name, t) in &tensors {
        if let Some(layer) = name.strip_prefix("features.") {
            ensure!(t.dim(0)? == mask.len(), "`{name}` has another token count");
            features.insert(layer.parse()?, t.to_device(home)?);
        }
    }
    let subset = |prefix: &str| -> Result<Option<TokenSubset>> {
        let Ok(tokens) = get(&format!("{prefix}.tokens")) else {
            return Ok(None);
        };
        let tokens = tokens.to_vec1::<u32>()?;
        let (mut kv, mut out) = (BTreeMap::new(), BTreeMap::new());
        for (name, t) in &tensors {
            let Some(rest) = name.strip_prefix(&format!("{prefix}.")) else {
                continue;
            };
            ensure!(
                rest == "tokens" || t.dim(0)? == tokens.len(),
                "`{name}` has another token count"
            );
            if let Some(slot) = rest.strip_prefix("k.") {
                let v = get(&format!("{prefix}.v.{slot}"))?;
                kv.insert(slot_of(slot)?, (t.to_device(home)?, v.to_device(home)?));
            } else if let Some(slot) = rest.strip_prefix("out.") {
                out.insert(slot_of(slot)?, t.to_device(home)?);
            }
        }
        Ok(Some(TokenSubset::from_parts(tokens, mask.len(), kv, out)?))
    };
    let (fg, bg) = (subset("fg")?, subset("bg")?);
    Ok(StoredIdentity {
        bank: Bank::restored(mask, fg, bg, features),
        with_background: false,
        image,
        latents,
    })
}
