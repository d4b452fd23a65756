//! The owner of a project's images folder, `NAME.images/` beside `NAME.ron`: what is written for
//! an image, how it is read back, and which images are stale against a plan.
//!
//! For each image (`identity`, `panel-01`, ...): `{stem}.png`, `{stem}-mask.png`, for panels
//! `{stem}-matches.png`, `{stem}.safetensors` (latents, mask, matches) and `{stem}.key.ron` (the
//! key of every input, the prompt, the project it belongs to). The key file is written last and
//! removed first, so an image is only ever read back with the key it was rendered from. The CLI
//! and the app write and read through this module alone.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::model::Project;
use crate::atomic_file;
use crate::consist::mask::Grid;
use crate::consist::matching::Matches;
use crate::consist::plan::{ImageKey, Plan, PlanModel, PlannedImage, Target};
use crate::consist::recipe::Numerics;
use crate::consist::session::ImageOutput;
use crate::overlay::{mask_overlay, match_overlay, TokenGrid};

/// The key file's format version; files of another version are not read.
pub const VERSION: u32 = 1;

/// How many match lines an overlay draws at most, to stay readable.
pub const MAX_MATCH_LINES: usize = 160;

/// The folder where a project's rendered images are kept: `{stem}.images/` beside
/// `{stem}.ron`, so that moving or copying both keeps them together.
pub fn images_dir(project_path: &Path) -> PathBuf {
    project_path.with_file_name(format!("{}.images", project_name(project_path)))
}

/// The name a project's images record as their owner: the project file's stem.
pub fn project_name(project_path: &Path) -> String {
    project_path
        .file_stem()
        .map_or_else(|| "project".into(), |s| s.to_string_lossy().into_owned())
}

/// `identity` (the first character's), `identity-2`, ..., or `panel-01`, `panel-02`, ...
pub fn stem(target: Target) -> String {
    match target {
        Target::Identity => "identity".into(),
        Target::IdentityOf(k) => format!("identity-{}", k + 1),
        Target::Panel(i) => format!("panel-{:02}", i + 1),
    }
}

/// A finished image as the app shows it: fresh from a render, or read back from the folder.
#[derive(Clone)]
pub struct RenderedImage {
    pub target: Target,
    pub image: RgbImage,
    pub grid: Grid,
    pub mask: Vec<bool>,
    /// Each token's owner: 0 background, `k + 1` the image's `k`-th character.
    pub owners: Vec<u8>,
    pub matches: Option<Matches>,
    pub prompt: String,
    /// The key it was rendered from; `None` for an image written before keys were kept.
    pub key: Option<ImageKey>,
    pub seconds: f64,
}

impl RenderedImage {
    pub fn new(output: &ImageOutput, planned: &PlannedImage) -> Self {
        Self {
            target: output.target,
            image: output.image.clone(),
            grid: output.grid,
            mask: output.mask.clone(),
            owners: output.owners.clone(),
            matches: output.matches.clone(),
            prompt: planned.shot.prompt.clone(),
            key: Some(planned.key.clone()),
            seconds: output.seconds,
        }
    }

    /// Rendered from exactly what `plan` asks for this image now.
    pub fn is_current(&self, plan: &Plan) -> bool {
        plan.image(self.target)
            .is_some_and(|p| self.key.as_ref() == Some(&p.key))
    }
}

/// Which of `images` are not current for `project` as it is now, each judged for the model and
/// step count it was rendered with (an export loads no model): one plan per model met. An image
/// without a key, or one rendered from a noise file, cannot be judged and is not current.
pub fn not_current(project: &Project, images: &[&RenderedImage]) -> Result<Vec<Target>> {
    let mut plans: Vec<(PlanModel, Plan)> = Vec::new();
    let mut stale = Vec::new();
    for image in images {
        let Some(key) = &image.key else {
            stale.push(image.target);
            continue;
        };
        let model = PlanModel {
            key: key.model.clone(),
            default_steps: key.steps,
        };
        let plan = match plans.iter().position(|(m, _)| *m == model) {
            Some(k) => &plans[k].1,
            None => {
                let plan = super::plan::plan(project, &model, None)?;
                plans.push((model, plan));
                &plans[plans.len() - 1].1
            }
        };
        if !image.is_current(plan) {
            stale.push(image.target);
        }
    }
    Ok(stale)
}

/// `{stem}.key.ron`.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    project: String,
    target: Target,
    prompt: String,
    seconds: f64,
    key: ImageKey,
}

/// What reading the folder found: the images, and a note for every file it had to ignore.
#[derive(Default)]
pub struct Found {
    pub images: Vec<RenderedImage>,
    pub notes: Vec<String>,
}

/// A project's images folder.
#[derive(Debug, Clone)]
pub struct ImagesStore {
    dir: PathBuf,
    project: String,
}

impl ImagesStore {
    /// The folder beside a project file.
    pub fn beside(project_path: &Path) -> Self {
        Self::at(images_dir(project_path), project_name(project_path))
    }

    /// Any folder, holding the images of the project named `project`.
    pub fn at(dir: PathBuf, project: String) -> Self {
        Self { dir, project }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, target: Target, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", stem(target)))
    }

    /// The rendered picture of `target`.
    pub fn png_path(&self, target: Target) -> PathBuf {
        self.file(target, ".png")
    }

    /// Writes every file of a finished image; `identity` is the identity image its matches
    /// point into. All files are staged first, so a failure while writing leaves the previous
    /// image whole and no partial file behind. Returns the files written, picture first.
    pub fn write(
        &self,
        output: &ImageOutput,
        identity: &RgbImage,
        planned: &PlannedImage,
    ) -> Result<Vec<PathBuf>> {
        ensure!(
            output.target == planned.target,
            "internal: {} written as {}",
            output.target.label(),
            planned.target.label()
        );
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let target = output.target;
        let grid = TokenGrid {
            rows: output.grid.rows,
            cols: output.grid.cols,
        };
        let key = KeyFile {
            version: VERSION,
            project: self.project.clone(),
            target,
            prompt: planned.shot.prompt.clone(),
            seconds: output.seconds,
            key: planned.key.clone(),
        };
        let key_text = ron::ser::to_string_pretty(&key, ron::ser::PrettyConfig::default())
            .context("cannot write the image's key as RON")?;
        let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
            (
                self.png_path(target),
                atomic_file::png_bytes(&output.image)?,
            ),
            (
                self.file(target, "-mask.png"),
                atomic_file::png_bytes(&mask_overlay(&output.image, &output.mask, grid)?)?,
            ),
        ];
        if let Some(m) = &output.matches {
            let overlay = match_overlay(&output.image, identity, &m.triples(), MAX_MATCH_LINES);
            files.push((
                self.file(target, "-matches.png"),
                atomic_file::png_bytes(&overlay)?,
            ));
        }
        files.push((
            self.file(target, ".safetensors"),
            dump_bytes(output, planned.key.recipe.numerics)?,
        ));
        let key_path = self.file(target, ".key.ron");
        files.push((key_path.clone(), key_text.into_bytes()));

        let mut staged = Vec::new();
        let prepared = files.iter().try_for_each(|(path, bytes)| {
            atomic_file::check_replaceable(path)?;
            staged.push(atomic_file::stage(path, |w| Ok(w.write_all(bytes)?))?);
            Ok::<_, anyhow::Error>(())
        });
        if let Err(e) = prepared {
            atomic_file::discard(&staged);
            return Err(e.context(format!("writing {}", target.label())));
        }
        // From here the old image is given up: without its key file it is never read back as
        // current, whatever happens to the renames.
        remove_if_present(&key_path)?;
        if output.matches.is_none() {
            remove_if_present(&self.file(target, "-matches.png"))?;
        }
        remove_if_present(&self.file(target, ".prompt.txt"))?;
        for (k, (tmp, (path, _))) in staged.iter().zip(&files).enumerate() {
            if let Err(e) = atomic_file::commit(tmp, path) {
                atomic_file::discard(&staged[k + 1..]);
                return Err(e.context(format!("writing {}", target.label())));
            }
        }
        Ok(files.into_iter().map(|(path, _)| path).collect())
    }

    /// The image saved for `target`: `Ok(None)` if there is none, an error saying why if the
    /// files are there but are not this project's image (another project's, another version,
    /// truncated, of the wrong size).
    pub fn read(&self, target: Target) -> Result<Option<RenderedImage>> {
        let png = self.png_path(target);
        if !png.is_file() {
            return Ok(None);
        }
        let key_path = self.file(target, ".key.ron");
        let key = match key_path.is_file() {
            true => Some(read_key(&key_path)?),
            false => None,
        };
        if let Some(k) = &key {
            ensure!(
                k.project == self.project,
                "{} belongs to another project ({:?}, not {:?})",
                key_path.display(),
                k.project,
                self.project
            );
            ensure!(
                k.target == target,
                "{} is the key of {}, not of {}",
                key_path.display(),
                k.target.label(),
                target.label()
            );
        }
        let image = image::open(&png)
            .with_context(|| format!("{} is not a readable PNG", png.display()))?
            .to_rgb8();
        let (width, height) = (image.width() as usize, image.height() as usize);
        if let Some(k) = &key {
            ensure!(
                (k.key.width, k.key.height) == (width, height),
                "{} is {width}x{height} but its key says {}x{}",
                png.display(),
                k.key.width,
                k.key.height
            );
        }
        let grid = Grid {
            rows: height / 16,
            cols: width / 16,
        };
        let tensors = self.file(target, ".safetensors");
        let (owners, matches) = match tensors.is_file() {
            true => read_dump(&tensors, grid)?,
            // Written before the tensors were kept with every image: the picture alone.
            false => (vec![0; grid.rows * grid.cols], None),
        };
        let mask = owners.iter().map(|&o| o != 0).collect();
        let prompt = match &key {
            Some(k) => k.prompt.clone(),
            None => std::fs::read_to_string(self.file(target, ".prompt.txt")).unwrap_or_default(),
        };
        Ok(Some(RenderedImage {
            target,
            image,
            grid,
            mask,
            owners,
            matches,
            prompt,
            seconds: key.as_ref().map_or(0.0, |k| k.seconds),
            key: key.map(|k| k.key),
        }))
    }

    /// Every image saved for the identities and `panels` panels; what cannot be read is left
    /// out with a note.
    pub fn read_all(&self, panels: usize) -> Found {
        let mut found = Found::default();
        let targets = (0..crate::limits::MAX_CHARACTERS)
            .map(Target::identity_of)
            .chain((0..panels).map(Target::Panel));
        for target in targets {
            match self.read(target) {
                Ok(Some(image)) => found.images.push(image),
                Ok(None) => {}
                Err(e) => found.notes.push(format!(
                    "ignored the saved image of {}: {e:#}",
                    target.label()
                )),
            }
        }
        found
    }

    /// The images of `plan` that have no current image in the folder, in plan order.
    pub fn stale(&self, plan: &Plan) -> Vec<Target> {
        let found = self.read_all(plan.panels().len());
        plan.images()
            .iter()
            .map(|p| p.target)
            .filter(|&t| {
                !found
                    .images
                    .iter()
                    .any(|i| i.target == t && i.is_current(plan))
            })
            .collect()
    }
}

/// Held while a render writes into an images folder: a second render of the same project (in
/// this process or another) is refused instead of mixing its images with the first's. The
/// lock file holds the writer's process id; a lock left by a process that no longer runs is
/// taken over.
pub struct StoreLock {
    path: PathBuf,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const LOCK_FILE: &str = ".render.lock";

impl ImagesStore {
    /// Takes the folder for one render.
    pub fn lock(&self) -> Result<StoreLock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    write!(file, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(StoreLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    if holder_is_running(holder.trim()) {
                        bail!(
                            "another render of {} is writing {} (process {}): wait for it to finish",
                            self.project,
                            self.dir.display(),
                            holder.trim()
                        );
                    }
                    remove_if_present(&path)?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!("cannot take {}: it keeps reappearing", path.display())
    }
}

/// Whether the process named in a lock file still runs. Where that cannot be told (no /proc),
/// it is taken to run: refusing is safe, mixing two renders is not.
fn holder_is_running(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<u32>() else {
        // A lock that names no process was never finished by its writer.
        return false;
    };
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn read_key(path: &Path) -> Result<KeyFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The version is checked before the rest, so a newer file says so instead of failing on a
    // field it added.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let options = ron::Options::default();
    let version: Version = options
        .from_str(&text)
        .with_context(|| format!("{} is not an image key file", path.display()))?;
    if version.version != VERSION {
        bail!(
            "{} is of an unknown version ({}; this charaboard reads version {VERSION})",
            path.display(),
            version.version
        );
    }
    options
        .from_str(&text)
        .with_context(|| format!("{} is damaged", path.display()))
}

/// `latents` (f32), `fg_mask` (u8, rows x cols: each token's owner, 0 background and `k + 1` the
/// image's `k`-th character, so 0 and 1 with one character), `bg_len` and `real_len` (i64), and
/// for panels
/// `match_panel_idx`, `match_identity_idx` (i64) and `match_sim` (f32, the best similarity of
/// every panel token). An image rendered with the reference's rounding says so in the file's
/// metadata, `numerics: reference`; a file without the entry was rendered exact, as every file
/// written before the entry existed was, and stays byte for byte what it was.
fn dump_bytes(output: &ImageOutput, numerics: Numerics) -> Result<Vec<u8>> {
    let cpu = Device::Cpu;
    let mask: Vec<u8> = match output.owners.len() == output.mask.len() {
        true => output.owners.clone(),
        false => output.mask.iter().map(|&m| u8::from(m)).collect(),
    };
    let mut tensors: HashMap<&str, Tensor> = HashMap::from([
        ("latents", output.latents.clone()),
        (
            "fg_mask",
            Tensor::from_vec(mask, (output.grid.rows, output.grid.cols), &cpu)?,
        ),
        ("bg_len", Tensor::new(&[output.spans.bg_len as i64], &cpu)?),
        (
            "real_len",
            Tensor::new(&[output.spans.real_len as i64], &cpu)?,
        ),
    ]);
    if let Some(m) = &output.matches {
        let as_i64 = |v: &[u32]| -> Vec<i64> { v.iter().map(|&x| x as i64).collect() };
        tensors.insert(
            "match_panel_idx",
            Tensor::new(as_i64(&m.panel_idx).as_slice(), &cpu)?,
        );
        tensors.insert(
            "match_identity_idx",
            Tensor::new(as_i64(&m.identity_idx).as_slice(), &cpu)?,
        );
        tensors.insert("match_sim", Tensor::new(m.max_sim.as_slice(), &cpu)?);
    }
    let metadata = match numerics {
        Numerics::Exact => None,
        Numerics::Reference => Some(HashMap::from([("numerics".into(), "reference".into())])),
    };
    safetensors::serialize(tensors, metadata).context("cannot serialize the image's tensors")
}

/// The owners and matches of a `{stem}.safetensors`, checked against the image's token grid.
fn read_dump(path: &Path, grid: Grid) -> Result<(Vec<u8>, Option<Matches>)> {
    let dump = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    let get = |name: &str| {
        dump.get(name)
            .with_context(|| format!("{} has no `{name}`", path.display()))
    };
    let mask_t = get("fg_mask")?;
    ensure!(
        mask_t.dims() == [grid.rows, grid.cols],
        "{}: the mask is {:?}, not the image's {}x{} tokens",
        path.display(),
        mask_t.dims(),
        grid.rows,
        grid.cols
    );
    let mask = mask_t.flatten_all()?.to_vec1::<u8>()?;
    ensure!(
        mask.iter()
            .all(|&o| usize::from(o) <= crate::limits::MAX_CHARACTERS),
        "{}: the mask names a character beyond the {}",
        path.display(),
        crate::limits::MAX_CHARACTERS
    );
    // Panel indices point into this image; identity indices into the identity, whose size
    // may differ (a scene of its own size), so they are only checked for sign.
    let indices = |name: &str, tokens: usize| -> Result<Vec<u32>> {
        let v = get(name)?.to_vec1::<i64>()?;
        ensure!(
            v.iter().all(|&i| (0..tokens as i64).contains(&i)),
            "{}: `{name}` points outside the image",
            path.display()
        );
        Ok(v.into_iter().map(|i| i as u32).collect())
    };
    let matches = match dump.contains_key("match_sim") {
        true => Some(Matches {
            panel_idx: indices("match_panel_idx", grid.rows * grid.cols)?,
            identity_idx: indices("match_identity_idx", u32::MAX as usize)?,
            max_sim: get("match_sim")?.to_vec1::<f32>()?,
        }),
        false => None,
    };
    Ok((mask, matches))
}
