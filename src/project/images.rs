//! The owner of a project's images folder, `NAME.images/` beside `NAME.ron`: what is written for
//! an image, how it is read back, and which images are stale against a plan.
//!
//! Every render of an image (`identity`, `panel-01`, ...) is a take, kept under its own names and
//! never overwritten: `{stem}-take-{NNN}.png`, `-mask.png`, for panels `-matches.png`,
//! `.safetensors` (latents, mask, matches) and `.key.ron` (the key of every input, the prompt, the
//! project it belongs to, its quality and when it was rendered). A folder written before takes
//! (`{stem}.png`, `{stem}.key.ron`) reads as one take numbered 0. The key file is written last
//! and removed first, so a take is only ever read back with the key it was rendered from. The CLI
//! and the app write and read through this module alone.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::model::Project;
use super::takes::{self, Active, TakeChoice};
use crate::atomic_file;
use crate::consist::mask::Grid;
use crate::consist::matching::Matches;
use crate::consist::plan::{
    ImageKey, NoiseKey, Plan, PlanModel, PlanSettings, PlannedImage, Quality, Target,
};
use crate::consist::recipe::Numerics;
use crate::consist::session::ImageOutput;
use crate::overlay::{cast_match_overlay, mask_overlay, match_overlay, TokenGrid};

mod looks;
pub use looks::{ShownLook, StoredLook};

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

/// The names of take `take` of `target`: `panel-01-take-002`; take 0 is the one image of a
/// folder written before takes, `panel-01`.
pub fn take_stem(target: Target, take: u32) -> String {
    match take {
        0 => stem(target),
        n => format!("{}-take-{n:03}", stem(target)),
    }
}

/// Seconds since 1970, for a take's time.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A finished image as the app shows it: fresh from a render, or read back from the folder.
#[derive(Clone)]
pub struct RenderedImage {
    pub target: Target,
    /// Which take of the target this is (0: written before takes).
    pub take: u32,
    pub quality: Quality,
    /// When it was rendered, in seconds since 1970 (`None` before takes kept it).
    pub rendered_at: Option<u64>,
    pub image: RgbImage,
    pub grid: Grid,
    pub mask: Vec<bool>,
    /// Each token's owner: 0 background, `k + 1` the image's `k`-th character.
    pub owners: Vec<u8>,
    pub matches: Option<Matches>,
    pub prompt: String,
    /// The key it was rendered from; `None` for an image written before keys were kept.
    pub key: Option<ImageKey>,
    /// The model's usual step count when it was rendered (a draft's steps derive from it).
    pub model_steps: Option<usize>,
    pub seconds: f64,
}

impl takes::Numbered for RenderedImage {
    fn take_number(&self) -> u32 {
        self.take
    }
}

impl RenderedImage {
    pub fn new(
        output: &ImageOutput,
        planned: &PlannedImage,
        settings: &PlanSettings,
        take: u32,
    ) -> Self {
        Self {
            target: output.target,
            take,
            quality: settings.quality,
            rendered_at: Some(now()),
            image: output.image.clone(),
            grid: output.grid,
            mask: output.mask.clone(),
            owners: output.owners_or_mask(),
            matches: output.matches.clone(),
            prompt: planned.shot.prompt.clone(),
            key: Some(planned.key.clone()),
            model_steps: Some(settings.model_steps),
            seconds: output.seconds,
        }
    }

    /// Rendered from exactly what `plan` asks for this image now.
    pub fn is_current(&self, plan: &Plan) -> bool {
        plan.image(self.target)
            .is_some_and(|p| self.key.as_ref() == Some(&p.key))
    }

    /// The seed it was rendered from, if it was not a noise file.
    pub fn seed(&self) -> Option<u64> {
        match self.key.as_ref()?.noise {
            NoiseKey::Seed(seed) => Some(seed),
            NoiseKey::File { .. } => None,
        }
    }
}

/// Which of `images` are not current for `project` as it is now, each judged for the model,
/// step count and quality (draft or final) it was rendered with (an export loads no model): one
/// plan per model and quality met. An image without a key, or one rendered from a noise file,
/// cannot be judged and is not current.
pub fn not_current(project: &Project, images: &[&RenderedImage]) -> Result<Vec<Target>> {
    let mut plans: Vec<((PlanModel, Quality), Plan)> = Vec::new();
    let mut stale = Vec::new();
    for image in images {
        let Some(key) = &image.key else {
            stale.push(image.target);
            continue;
        };
        let model = PlanModel {
            key: key.model.clone(),
            default_steps: image.model_steps.unwrap_or(key.steps),
        };
        let of = (model, image.quality);
        let plan = match plans.iter().position(|(m, _)| *m == of) {
            Some(k) => &plans[k].1,
            None => {
                let plan = super::plan::plan_at(project, &of.0, None, of.1)?;
                plans.push((of, plan));
                &plans[plans.len() - 1].1
            }
        };
        if !image.is_current(plan) {
            stale.push(image.target);
        }
    }
    Ok(stale)
}

/// `{take stem}.key.ron`. The fields after `key` came with takes; older files lack them.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    project: String,
    target: Target,
    prompt: String,
    seconds: f64,
    key: ImageKey,
    #[serde(default)]
    quality: Quality,
    #[serde(default)]
    rendered_at: Option<u64>,
    #[serde(default)]
    model_steps: Option<usize>,
}

/// What reading the folder found: every take, the takes whose files are there but cannot be
/// read (missing picture, damaged, another project's), and a note for each of those.
#[derive(Default)]
pub struct Found {
    pub images: Vec<RenderedImage>,
    pub broken: Vec<(Target, u32)>,
    pub notes: Vec<String>,
}

/// A project's images folder.
#[derive(Debug, Clone)]
pub struct ImagesStore {
    dir: PathBuf,
    project: String,
}

/// The take a file name belongs to: `panel-01-take-007-mask.png` -> 7 for `panel-01`.
fn take_of(file_name: &str, stem: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(stem)?.strip_prefix("-take-")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

    fn file(&self, target: Target, take: u32, suffix: &str) -> PathBuf {
        self.dir
            .join(format!("{}{suffix}", take_stem(target, take)))
    }

    /// The picture of take `take` of `target`.
    pub fn png_path(&self, target: Target, take: u32) -> PathBuf {
        self.file(target, take, ".png")
    }

    /// Every take number any file of `target` carries (key or not, so that a take left
    /// half-written is never numbered again), and 0 where a folder from before takes has it.
    fn take_numbers(&self, target: Target) -> Result<Vec<u32>> {
        let stem = stem(target);
        let mut found: Vec<u32> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| take_of(&e.file_name().to_string_lossy(), &stem))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.dir.display())),
        };
        if self.png_path(target, 0).is_file() || self.file(target, 0, ".key.ron").is_file() {
            found.push(0);
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Writes a finished image as a new take of its target; `identities` are the identity images
    /// its matches point into, one per character it shows (its `-matches.png` draws one
    /// character's in similarity colours, several in their characters' colours). No file of another take is touched, and all files are staged first,
    /// so a failure while writing leaves no partial take behind. With `reuse`, an image equal
    /// to a take already there (same key, same picture: the identity rendered again only to
    /// steer a panel) is not stored twice and that take is returned. Returns the take and the
    /// files written, picture first.
    pub fn write(
        &self,
        output: &ImageOutput,
        identities: &[&RgbImage],
        planned: &PlannedImage,
        settings: &PlanSettings,
        reuse: bool,
    ) -> Result<(u32, Vec<PathBuf>)> {
        ensure!(
            output.target == planned.target,
            "internal: {} written as {}",
            output.target.label(),
            planned.target.label()
        );
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let target = output.target;
        let png = atomic_file::png_bytes(&output.image)?;
        let numbers = self.take_numbers(target)?;
        if reuse {
            for &n in numbers.iter().rev() {
                let same_key =
                    read_key(&self.file(target, n, ".key.ron")).is_ok_and(|k| k.key == planned.key);
                if same_key && std::fs::read(self.png_path(target, n)).is_ok_and(|b| b == png) {
                    return Ok((n, vec![]));
                }
            }
        }
        let take = numbers.last().map_or(1, |&n| n + 1);
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
            quality: settings.quality,
            rendered_at: Some(now()),
            model_steps: Some(settings.model_steps),
        };
        let key_text = ron::ser::to_string_pretty(&key, ron::ser::PrettyConfig::default())
            .context("cannot write the image's key as RON")?;
        let characters: Vec<usize> = planned.shot.characters.iter().map(|c| c.index).collect();
        let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
            (self.png_path(target, take), png),
            (
                self.file(target, take, "-mask.png"),
                atomic_file::png_bytes(&mask_overlay(
                    &output.image,
                    &output.owners_or_mask(),
                    &characters,
                    grid,
                )?)?,
            ),
        ];
        if let Some(m) = &output.matches {
            let overlay = matches_picture(
                &output.image,
                identities,
                &output.owners_or_mask(),
                &characters,
                m,
            );
            files.push((
                self.file(target, take, "-matches.png"),
                atomic_file::png_bytes(&overlay)?,
            ));
        }
        files.push((
            self.file(target, take, ".safetensors"),
            dump_bytes(output, planned.key.recipe.numerics)?,
        ));
        files.push((self.file(target, take, ".key.ron"), key_text.into_bytes()));

        // The key file comes last: until it is there, the take does not exist for a reader.
        atomic_file::write_all_in_order(&files)
            .with_context(|| format!("writing {}", target.label()))?;
        Ok((take, files.into_iter().map(|(path, _)| path).collect()))
    }

    /// Removes every file of a take (its key first, so a failure halfway leaves no take that
    /// reads as whole).
    pub fn remove_take(&self, target: Target, take: u32) -> Result<()> {
        let suffixes = [
            ".key.ron",
            ".png",
            "-mask.png",
            "-matches.png",
            ".safetensors",
            ".prompt.txt",
        ];
        for suffix in suffixes {
            remove_if_present(&self.file(target, take, suffix))?;
        }
        Ok(())
    }

    /// Take `take` of `target`: `Ok(None)` if it has no files, an error saying why if the files
    /// are there but are not this project's take (missing picture, another project's, another
    /// version, truncated, of the wrong size).
    pub fn read_take(&self, target: Target, take: u32) -> Result<Option<RenderedImage>> {
        let png = self.png_path(target, take);
        let key_path = self.file(target, take, ".key.ron");
        let key = match key_path.is_file() {
            true => Some(read_key(&key_path)?),
            false => None,
        };
        if !png.is_file() {
            return match key {
                Some(_) => bail!("its picture {} is missing", png.display()),
                None => Ok(None),
            };
        }
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
        let tensors = self.file(target, take, ".safetensors");
        let (owners, matches) = match tensors.is_file() {
            true => read_dump(&tensors, grid)?,
            // Written before the tensors were kept with every image: the picture alone.
            false => (vec![0; grid.rows * grid.cols], None),
        };
        let mask = owners.iter().map(|&o| o != 0).collect();
        let prompt = match &key {
            Some(k) => k.prompt.clone(),
            None => {
                std::fs::read_to_string(self.file(target, take, ".prompt.txt")).unwrap_or_default()
            }
        };
        Ok(Some(RenderedImage {
            target,
            take,
            quality: key.as_ref().map_or(Quality::Final, |k| k.quality),
            rendered_at: key.as_ref().and_then(|k| k.rendered_at),
            image,
            grid,
            mask,
            owners,
            matches,
            prompt,
            seconds: key.as_ref().map_or(0.0, |k| k.seconds),
            model_steps: key.as_ref().and_then(|k| k.model_steps),
            key: key.map(|k| k.key),
        }))
    }

    /// Every take of `target`, oldest first, with what could not be read.
    pub fn read_takes(&self, target: Target) -> Found {
        let mut found = Found::default();
        let numbers = match self.take_numbers(target) {
            Ok(n) => n,
            Err(e) => {
                found.notes.push(format!("{e:#}"));
                return found;
            }
        };
        for take in numbers {
            match self.read_take(target, take) {
                Ok(Some(image)) => found.images.push(image),
                Ok(None) => {}
                Err(e) => {
                    found.broken.push((target, take));
                    found
                        .notes
                        .push(format!("ignored take {take} of {}: {e:#}", target.label()));
                }
            }
        }
        found
    }

    /// The active take of `target` as `choice` says: `Ok(None)` if nothing is rendered, an
    /// error if the chosen take (or the newest) is there but cannot be read, or is gone.
    pub fn read_active(
        &self,
        target: Target,
        choice: Option<&TakeChoice>,
    ) -> Result<Option<RenderedImage>> {
        let found = self.read_takes(target);
        let newest_broken = found
            .broken
            .iter()
            .map(|b| b.1)
            .filter(|n| choice.is_none_or(|c| !c.deleted.contains(n)))
            .max();
        let unreadable = || anyhow::anyhow!("{}", found.notes.join("; "));
        match takes::active(&found.images, choice) {
            // Without a choice the newest take is active, even one that cannot be read.
            Active::Take(t)
                if choice.and_then(|c| c.active).is_none()
                    && newest_broken.is_some_and(|b| b > t.take) =>
            {
                Err(unreadable())
            }
            Active::Take(t) => Ok(Some(t.clone())),
            Active::None => match newest_broken {
                None => Ok(None),
                Some(_) => Err(unreadable()),
            },
            Active::Missing(n) if found.broken.iter().any(|b| b.1 == n) => Err(unreadable()),
            Active::Missing(n) => bail!(
                "its active take {n} is missing from {}: choose another take",
                self.dir.display()
            ),
        }
    }

    /// Every take of the identity and `panels` panels; what cannot be read is left out with a
    /// note.
    pub fn read_all(&self, panels: usize) -> Found {
        let mut found = Found::default();
        let targets = (0..crate::limits::MAX_CHARACTERS)
            .map(Target::identity_of)
            .chain((0..panels).map(Target::Panel));
        for target in targets {
            let mut one = self.read_takes(target);
            found.images.append(&mut one.images);
            found.broken.append(&mut one.broken);
            found.notes.append(&mut one.notes);
        }
        found
    }

    /// The images of `plan` whose active take (as `choices` say) is not current, in plan
    /// order.
    pub fn stale(&self, plan: &Plan, choices: &BTreeMap<Target, TakeChoice>) -> Vec<Target> {
        plan.images()
            .iter()
            .map(|p| p.target)
            .filter(|&t| {
                let found = self.read_takes(t);
                takes::active(&found.images, choices.get(&t))
                    .take()
                    .is_none_or(|i| !i.is_current(plan))
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
    let mask = output.owners_or_mask();
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

/// The matches picture of `image`: one identity's lines coloured by similarity, several
/// characters' in each character's colour into its own identity.
pub(crate) fn matches_picture(
    image: &RgbImage,
    identities: &[&RgbImage],
    owners: &[u8],
    characters: &[usize],
    matches: &Matches,
) -> RgbImage {
    match identities {
        [identity] => match_overlay(image, identity, &matches.triples(), MAX_MATCH_LINES),
        _ => cast_match_overlay(
            image,
            identities,
            owners,
            characters,
            &matches.triples(),
            MAX_MATCH_LINES,
        ),
    }
}
