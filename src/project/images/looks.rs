//! Early looks on disk, beside the takes: `{stem}-look.png` (the x0 preview at the pre-run's
//! mask step), `-look-mask.png` and `-look-matches.png` (its overlays, as a take's),
//! `-look.safetensors` (what the main run starts from) and `-look.key.ron` (the key of the take
//! it would become). One look per panel, replaced when recomputed; the key is written last and
//! removed first, so a look is only read back with the key it was made for, and a look whose
//! key differs from the plan's is stale, never run on.

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{matches_picture, remove_if_present, stem, ImagesStore, VERSION};
use crate::atomic_file;
use crate::consist::look::Look;
use crate::consist::mask::{Grid, TextSpans};
use crate::consist::matching::Matches;
use crate::consist::plan::{ImageKey, PlannedImage, Target};
use crate::consist::steer::RunObservations;
use crate::overlay::{mask_overlay, TokenGrid};

/// A look as the app shows it: the preview and its overlays.
#[derive(Clone)]
pub struct ShownLook {
    pub target: Target,
    pub key: ImageKey,
    pub preview: RgbImage,
    /// The preview tinted by each token's owner, beside the mask alone.
    pub mask: RgbImage,
    /// The preview and the identity side by side with the kept matches (panels showing a
    /// character).
    pub matches: Option<RgbImage>,
    pub kept_matches: usize,
}

impl ShownLook {
    /// `identities` are the images of the panel's characters the look's matches point into.
    pub fn of(look: &Look, identities: &[&RgbImage], planned: &PlannedImage) -> Result<Self> {
        let characters: Vec<usize> = planned.shot.characters.iter().map(|c| c.index).collect();
        let grid = TokenGrid {
            rows: look.grid.rows,
            cols: look.grid.cols,
        };
        let matches = look.observations.matches.as_ref();
        Ok(Self {
            target: look.target,
            key: look.key.clone(),
            preview: look.preview.clone(),
            mask: mask_overlay(&look.preview, &look.owners(), &characters, grid)?,
            matches: matches.map(|m| {
                matches_picture(&look.preview, identities, &look.owners(), &characters, m)
            }),
            kept_matches: matches.map_or(0, Matches::len),
        })
    }
}

/// What the folder holds for a panel's look.
pub enum StoredLook {
    Missing,
    /// Made for other inputs than the plan's now (the named key is the plan's).
    Stale,
    Fresh(Box<Look>),
}

#[derive(Serialize, Deserialize)]
struct LookKeyFile {
    version: u32,
    project: String,
    target: Target,
    key: ImageKey,
}

impl ImagesStore {
    fn look_file(&self, target: Target, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}-look{suffix}", stem(target)))
    }

    /// The preview picture of `target`'s look.
    pub fn look_path(&self, target: Target) -> PathBuf {
        self.look_file(target, ".png")
    }

    /// Writes `look` (replacing the panel's earlier one), every file staged first so a failure
    /// leaves no partial look. Returns what the app shows and the files, preview first.
    pub fn write_look(
        &self,
        look: &Look,
        identities: &[&RgbImage],
        planned: &PlannedImage,
    ) -> Result<(ShownLook, Vec<PathBuf>)> {
        let target = look.target;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let shown = ShownLook::of(look, identities, planned)?;
        let key = LookKeyFile {
            version: VERSION,
            project: self.project.clone(),
            target,
            key: look.key.clone(),
        };
        let key_text = ron::ser::to_string_pretty(&key, ron::ser::PrettyConfig::default())
            .context("cannot write the look's key as RON")?;
        let mut files = vec![
            (
                self.look_path(target),
                atomic_file::png_bytes(&look.preview)?,
            ),
            (
                self.look_file(target, "-mask.png"),
                atomic_file::png_bytes(&shown.mask)?,
            ),
        ];
        if let Some(m) = &shown.matches {
            files.push((
                self.look_file(target, "-matches.png"),
                atomic_file::png_bytes(m)?,
            ));
        }
        files.push((self.look_file(target, ".safetensors"), look_bytes(look)?));
        files.push((self.look_file(target, ".key.ron"), key_text.into_bytes()));
        // The old look goes first (its key before the rest), so no reader ever pairs the new
        // tensors with the old key.
        self.remove_look(target)?;
        atomic_file::write_all_in_order(&files)
            .with_context(|| format!("writing the look of {}", target.label()))?;
        Ok((shown, files.into_iter().map(|(path, _)| path).collect()))
    }

    /// Removes `target`'s look, its key first.
    pub fn remove_look(&self, target: Target) -> Result<()> {
        for suffix in [
            ".key.ron",
            ".png",
            "-mask.png",
            "-matches.png",
            ".safetensors",
        ] {
            remove_if_present(&self.look_file(target, suffix))?;
        }
        Ok(())
    }

    /// `planned`'s look: missing, stale (made for other inputs), or fresh; an error naming the
    /// file when it is there but cannot be read.
    pub fn read_look(&self, planned: &PlannedImage) -> Result<StoredLook> {
        let target = planned.target;
        let Some(key) = self.read_look_key(target)? else {
            return Ok(StoredLook::Missing);
        };
        if key.key != planned.key {
            return Ok(StoredLook::Stale);
        }
        let png = self.look_path(target);
        let preview = image::open(&png)
            .with_context(|| format!("{} is not a readable PNG", png.display()))?
            .to_rgb8();
        let grid = Grid {
            rows: planned.shot.height / 16,
            cols: planned.shot.width / 16,
        };
        let tensors = self.look_file(target, ".safetensors");
        let look = read_look_tensors(&tensors, grid, target, key.key, preview)
            .with_context(|| format!("{} is damaged", tensors.display()))?;
        Ok(StoredLook::Fresh(Box::new(look)))
    }
}

impl ImagesStore {
    /// `target`'s look's key file, `None` where it has none.
    fn read_look_key(&self, target: Target) -> Result<Option<LookKeyFile>> {
        let key_path = self.look_file(target, ".key.ron");
        if !key_path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key: LookKeyFile = ron::Options::default()
            .from_str(&text)
            .with_context(|| format!("{} is not a look's key file", key_path.display()))?;
        ensure!(
            key.version == VERSION && key.project == self.project && key.target == target,
            "{} is not a look of {} of {}",
            key_path.display(),
            target.label(),
            self.project
        );
        Ok(Some(key))
    }

    /// The looks of the first `panels` panels as written (pictures and key; whether each is
    /// fresh is the reader's plan to say), with a note for each that cannot be read.
    pub fn read_shown_looks(&self, panels: usize) -> (Vec<ShownLook>, Vec<String>) {
        let (mut looks, mut notes) = (Vec::new(), Vec::new());
        for target in (0..panels).map(Target::Panel) {
            match self.read_shown_look(target) {
                Ok(Some(look)) => looks.push(look),
                Ok(None) => {}
                Err(e) => notes.push(format!("ignored the look of {}: {e:#}", target.label())),
            }
        }
        (looks, notes)
    }

    fn read_shown_look(&self, target: Target) -> Result<Option<ShownLook>> {
        let Some(key) = self.read_look_key(target)? else {
            return Ok(None);
        };
        let png = |suffix: &str| -> Result<RgbImage> {
            let path = self.look_file(target, suffix);
            Ok(image::open(&path)
                .with_context(|| format!("{} is not a readable PNG", path.display()))?
                .to_rgb8())
        };
        let matches = match self.look_file(target, "-matches.png").is_file() {
            true => Some(png("-matches.png")?),
            false => None,
        };
        let tensors = self.look_file(target, ".safetensors");
        let kept_matches = candle_core::safetensors::load(&tensors, &Device::Cpu)
            .with_context(|| format!("{} is damaged", tensors.display()))?
            .get("match_panel_idx")
            .map_or(0, |t| t.elem_count());
        Ok(Some(ShownLook {
            target,
            key: key.key,
            preview: png(".png")?,
            mask: png("-mask.png")?,
            matches,
            kept_matches,
        }))
    }
}

/// `after_step0` (packed, the run's dtype, so the main run continues bit for bit), `owners` and
/// `first_owners` (u8 per token: the mask-step and step-0 owners), `bg_len` and `real_len`
/// (i64), and where the panel shows a character the mask-step matches (`match_panel_idx`,
/// `match_identity_idx` u32, `match_sim` f32).
fn look_bytes(look: &Look) -> Result<Vec<u8>> {
    let cpu = Device::Cpu;
    let o = &look.observations;
    let spans = [look.spans.bg_len as i64, look.spans.real_len as i64];
    let mut tensors: HashMap<&str, Tensor> = HashMap::from([
        ("after_step0", look.after_step0.to_device(&cpu)?),
        ("spans", Tensor::new(&spans, &cpu)?),
    ]);
    for (name, owners) in [("owners", &o.owners), ("first_owners", &o.first_owners)] {
        if let Some(v) = owners {
            tensors.insert(name, Tensor::new(v.as_slice(), &cpu)?);
        }
    }
    if let Some(m) = &o.matches {
        tensors.insert(
            "match_panel_idx",
            Tensor::new(m.panel_idx.as_slice(), &cpu)?,
        );
        tensors.insert(
            "match_identity_idx",
            Tensor::new(m.identity_idx.as_slice(), &cpu)?,
        );
        tensors.insert("match_sim", Tensor::new(m.max_sim.as_slice(), &cpu)?);
    }
    safetensors::serialize(tensors, None).context("cannot serialize the look's tensors")
}

/// A look of `target` from its tensors, checked against the panel's token grid.
fn read_look_tensors(
    path: &Path,
    grid: Grid,
    target: Target,
    key: ImageKey,
    preview: RgbImage,
) -> Result<Look> {
    let dump = candle_core::safetensors::load(path, &Device::Cpu)?;
    let get = |name: &str| {
        dump.get(name)
            .with_context(|| format!("no `{name}`"))
            .cloned()
    };
    let tokens = grid.rows * grid.cols;
    let owners = |name: &str| -> Result<Option<Vec<u8>>> {
        let Some(t) = dump.get(name) else {
            return Ok(None);
        };
        let v = t.to_vec1::<u8>()?;
        ensure!(
            v.len() == tokens,
            "`{name}` has {} tokens, not {tokens}",
            v.len()
        );
        Ok(Some(v))
    };
    let after_step0 = get("after_step0")?;
    ensure!(
        after_step0.dims() == [1, tokens, 64],
        "`after_step0` is {:?}, not (1, {tokens}, 64)",
        after_step0.dims()
    );
    let spans = get("spans")?.to_vec1::<i64>()?;
    ensure!(
        spans.len() == 2,
        "`spans` holds {} values, not 2",
        spans.len()
    );
    let matches = match dump.contains_key("match_sim") {
        true => {
            let panel_idx = get("match_panel_idx")?.to_vec1::<u32>()?;
            ensure!(
                panel_idx.iter().all(|&i| (i as usize) < tokens),
                "`match_panel_idx` points outside the panel"
            );
            Some(Matches {
                panel_idx,
                identity_idx: get("match_identity_idx")?.to_vec1::<u32>()?,
                max_sim: get("match_sim")?.to_vec1::<f32>()?,
            })
        }
        false => None,
    };
    let owners_at_mask = owners("owners")?;
    Ok(Look {
        target,
        key,
        preview,
        grid,
        spans: TextSpans {
            bg_len: spans[0] as usize,
            real_len: spans[1] as usize,
        },
        after_step0,
        observations: RunObservations {
            mask: owners_at_mask
                .as_ref()
                .map(|o| o.iter().map(|&x| x != 0).collect()),
            owners: owners_at_mask,
            matches,
            first_owners: owners("first_owners")?,
        },
    })
}
