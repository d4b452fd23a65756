//! The storyboard plan: every image a storyboard needs (each character's identity, then the
//! panels), with its
//! prompt, size, noise, background mode, what it depends on, and a key over all of its inputs.
//!
//! The plan is what a render executes and what staleness compares: an image on disk is current
//! exactly when its stored key equals the plan's. The engine never sees the document; the
//! document is turned into a plan once (`project::plan`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::mask::Grid;
use super::recipe::Recipe;
use crate::invert::Inverter;
use crate::models::source::ModelSource;
use crate::picture::Fit;
use crate::pipeline::{FluxModels, NoiseSource};
use std::path::Path;

/// An image of the storyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// The first character's identity (the only one of a one-character storyboard).
    Identity,
    Panel(usize),
    /// The identity of character `k` for `k >= 1` (see [`Target::identity_of`]).
    IdentityOf(usize),
}

impl Target {
    /// The identity image of character `k`: the first one keeps the one-character name.
    pub fn identity_of(k: usize) -> Self {
        match k {
            0 => Target::Identity,
            k => Target::IdentityOf(k),
        }
    }

    /// The character whose identity this is; `None` for a panel.
    pub fn character(self) -> Option<usize> {
        match self {
            Target::Identity => Some(0),
            Target::IdentityOf(k) => Some(k),
            Target::Panel(_) => None,
        }
    }

    /// How messages name the image: "the identity", "panel 3", "the identity of character 2".
    pub fn label(self) -> String {
        match self {
            Target::Identity => "the identity".into(),
            Target::IdentityOf(k) => format!("the identity of character {}", k + 1),
            Target::Panel(i) => format!("panel {}", i + 1),
        }
    }
}

/// Which run of an image a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A picture identity's inversion to noise, before its identity run.
    Inversion,
    Identity,
    PreRun,
    Main,
}

/// Where a panel's background comes from (characonsist-spec.md §1 and §7, `update_bg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackgroundMode {
    /// Lock off: the background follows the panel's own prompt.
    Free,
    /// Locked onto the identity's background (same environment and size): `--share_bg`.
    Identity,
    /// Locked onto the scene's first panel, which is rendered first as the reference.
    SceneReference { first_panel: usize },
}

/// The model that draws: where its weights came from and the dtype it computes in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelKey {
    pub source: String,
    pub dtype: String,
}

impl ModelKey {
    /// The loaded models' key: their files (as absolute paths) and dtype.
    pub fn of(models: &FluxModels) -> Self {
        let absolute = |p: &Path| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let source = match &models.source {
            ModelSource::Repo(layout) => absolute(&layout.root),
            ModelSource::Files(f) => [&f.transformer, &f.vae, &f.t5, &f.clip]
                .map(|p| absolute(p))
                .join(" + "),
        };
        Self {
            source,
            dtype: format!("{:?}", models.dtype).to_lowercase(),
        }
    }
}

/// What a plan needs to know of the model: its key and its usual step count.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanModel {
    pub key: ModelKey,
    /// 50 for FLUX.1-dev, 4 for schnell: used where the document sets no step count.
    pub default_steps: usize,
}

impl PlanModel {
    pub fn of(models: &FluxModels) -> Self {
        Self {
            key: ModelKey::of(models),
            default_steps: models.default_steps(),
        }
    }
}

/// The initial noise as a key: a seed, or the values of a noise file (not its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoiseKey {
    Seed(u64),
    File { fnv64: u64 },
}

impl NoiseKey {
    /// The key of `shot`'s noise. A noise file is read once here, checked against the shot's
    /// size (so one that does not fit a later scene fails before any image is rendered) and
    /// keyed by its values.
    fn of(shot: &Shot) -> Result<Self> {
        Ok(match &shot.noise {
            NoiseSource::Seed(seed) => NoiseKey::Seed(*seed),
            NoiseSource::File(path) => {
                let noise = crate::sampler::load_noise(path, shot.width, shot.height)?;
                let values = noise.flatten_all()?.to_vec1::<f32>()?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                NoiseKey::File {
                    fnv64: crate::digest::fnv64(&bytes),
                }
            }
        })
    }
}

/// Every input of one image, and the keys of the images it depends on. Two images with equal
/// keys are the same image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageKey {
    pub model: ModelKey,
    pub prompt: String,
    /// The prompt's prefix that marks the background tokens (the mask depends on it).
    pub environment: String,
    pub width: usize,
    pub height: usize,
    pub noise: NoiseKey,
    pub steps: usize,
    pub guidance: f64,
    pub recipe: Recipe,
    pub background: BackgroundMode,
    /// The prompts that split the foreground into characters, where the image does not show
    /// exactly one (one character's span is the whole foreground, so its keys stay as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub characters: Option<Vec<String>>,
    /// The keys of the identities it follows, then the scene reference's, where the image
    /// depends on them.
    pub depends_on: Vec<ImageKey>,
    /// A picture identity's picture and how it is inverted (absent in older keys: generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<PictureKey>,
    /// FNV-1a of an identity's painted foreground mask at the image's token grid (absent: the
    /// computed mask, and every older key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub painted_mask: Option<u64>,
}

/// What an identity drawn from a picture depends on beyond a generated one's inputs (the
/// inversion takes the key's steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PictureKey {
    /// FNV-1a of the picture file's bytes: a new picture under the same name renders again.
    pub fnv64: u64,
    pub fit: Fit,
    pub inverter: Inverter,
}

/// A picture identity, read and fitted when the plan is made (so a bad or missing picture
/// fails before any work), and how it is inverted.
#[derive(Debug, Clone)]
pub struct PlannedPicture {
    pub path: std::path::PathBuf,
    /// Fitted to the identity's size.
    pub image: image::RgbImage,
    pub key: PictureKey,
}

/// A character an image shows: which one (its index in the storyboard) and its prompt, whose
/// tokens are its span of the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotCharacter {
    pub index: usize,
    pub prompt: String,
}

/// What the document says about one image.
#[derive(Debug, Clone)]
pub struct Shot {
    pub prompt: String,
    pub environment: String,
    /// Where the environment is written in the document (`scenes[1].environment`), for errors.
    pub environment_field: String,
    /// The characters it shows, in the prompt's order, after the environment.
    pub characters: Vec<ShotCharacter>,
    /// Where the list of characters is written (`panels[2].characters`), for errors.
    pub characters_field: String,
    pub width: usize,
    pub height: usize,
    /// The noise the image starts from; a picture identity's comes from its inversion instead.
    pub noise: NoiseSource,
    /// The identity's picture, where it is one.
    pub picture: Option<PlannedPicture>,
    /// An identity's painted foreground mask at the image's token grid, used instead of the
    /// one its attention gives (the image itself does not change).
    pub painted_mask: Option<Vec<bool>>,
}

/// A panel's shot and its scene.
#[derive(Debug, Clone)]
pub struct PanelShot {
    pub shot: Shot,
    pub scene: usize,
    pub lock_background: bool,
}

/// Whether a plan draws quick drafts (small, fewer steps) or finals at full size; a take keeps
/// which it is, and is judged against the plan of its own quality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quality {
    Draft,
    #[default]
    Final,
}

impl Quality {
    pub fn label(self) -> &'static str {
        match self {
            Quality::Draft => "draft",
            Quality::Final => "final",
        }
    }
}

/// What every image of a plan shares.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    pub model: ModelKey,
    /// The model's usual step count the plan was made for (a take's key file keeps it, so a
    /// draft can be judged again without the model).
    pub model_steps: usize,
    pub quality: Quality,
    pub steps: usize,
    pub guidance: f64,
    pub recipe: Recipe,
}

/// One image of the plan.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub target: Target,
    pub shot: Shot,
    /// The panel's scene (the identity has none).
    pub scene: Option<usize>,
    pub background: BackgroundMode,
    pub key: ImageKey,
}

impl PlannedImage {
    /// The images this one needs rendered first, nearest first: its scene reference, then the
    /// identities it follows.
    pub fn depends_on(&self) -> Vec<Target> {
        let (identities, scene) = self.dependencies();
        scene.into_iter().chain(identities).collect()
    }

    /// The identities it follows (those of the characters it shows, and the first one's where
    /// it locks onto that background), and its scene reference (another panel).
    fn dependencies(&self) -> (Vec<Target>, Option<Target>) {
        let Target::Panel(i) = self.target else {
            return (vec![], None);
        };
        let mut identities: Vec<Target> = self.characters().map(Target::identity_of).collect();
        if self.background == BackgroundMode::Identity && !identities.contains(&Target::Identity) {
            identities.push(Target::Identity);
        }
        let scene = match self.background {
            BackgroundMode::SceneReference { first_panel } if first_panel != i => {
                Some(Target::Panel(first_panel))
            }
            _ => None,
        };
        (identities, scene)
    }

    /// The characters it shows, as indices into the storyboard's characters.
    pub fn characters(&self) -> impl Iterator<Item = usize> + '_ {
        self.shot.characters.iter().map(|c| c.index)
    }
}

/// Which images a render is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderRequest {
    All,
    Identity,
    Panel(usize),
    /// A subset of the panels (`render --panels 2,5-7`), ascending.
    Panels(Vec<usize>),
}

/// Every image of a storyboard, the identities first (one per character), then the panels in
/// order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub settings: PlanSettings,
    images: Vec<PlannedImage>,
    /// How many of `images` are identities.
    characters: usize,
}

impl Plan {
    /// Plans a one-character storyboard: see [`Plan::with_identities`].
    pub fn new(settings: PlanSettings, identity: Shot, panels: Vec<PanelShot>) -> Result<Self> {
        Self::with_identities(settings, vec![identity], panels)
    }

    /// Plans the identities (character `k`'s at `identities[k]`) and the panels: background
    /// modes, dependencies and keys. A noise file is checked against every image that takes it,
    /// so that one that does not fit a later scene's size fails before the first image is
    /// rendered.
    pub fn with_identities(
        settings: PlanSettings,
        identities: Vec<Shot>,
        panels: Vec<PanelShot>,
    ) -> Result<Self> {
        let key_of = |target: Target, shot: &Shot, background, depends_on| -> Result<ImageKey> {
            let noise =
                NoiseKey::of(shot).with_context(|| format!("the noise of {}", target.label()))?;
            let grid = Grid::of_size(shot.width, shot.height);
            if let Some(painted) = shot.painted_mask.as_ref().filter(|m| m.len() != grid.len()) {
                bail!(
                    "the painted mask of {} has {} tokens, but its {} x {} token grid has {}",
                    target.label(),
                    painted.len(),
                    grid.cols,
                    grid.rows,
                    grid.len()
                );
            }
            Ok(ImageKey {
                model: settings.model.clone(),
                prompt: shot.prompt.clone(),
                environment: shot.environment.clone(),
                width: shot.width,
                height: shot.height,
                noise,
                steps: settings.steps,
                guidance: settings.guidance,
                recipe: settings.recipe.clone(),
                background,
                characters: (shot.characters.len() != 1)
                    .then(|| shot.characters.iter().map(|c| c.prompt.clone()).collect()),
                depends_on,
                picture: shot.picture.as_ref().map(|p| p.key.clone()),
                painted_mask: shot.painted_mask.as_ref().map(|m| {
                    let bytes: Vec<u8> = m.iter().map(|&t| u8::from(t)).collect();
                    crate::digest::fnv64(&bytes)
                }),
            })
        };
        let first = identities.first().context("a storyboard has a character")?;
        let modes: Vec<BackgroundMode> = panels
            .iter()
            .enumerate()
            .map(|(i, p)| background_mode(first, &panels, i, p))
            .collect();
        let characters = identities.len();
        let mut images = Vec::with_capacity(characters + panels.len());
        for (k, shot) in identities.into_iter().enumerate() {
            let target = Target::identity_of(k);
            images.push(PlannedImage {
                key: key_of(target, &shot, BackgroundMode::Free, vec![])?,
                target,
                shot,
                scene: None,
                background: BackgroundMode::Free,
            });
        }
        // A scene's first panel comes before the others, so its key is known when they need it.
        for (i, (panel, background)) in panels.into_iter().zip(modes).enumerate() {
            let mut planned = PlannedImage {
                target: Target::Panel(i),
                shot: panel.shot,
                scene: Some(panel.scene),
                background,
                key: images[0].key.clone(),
            };
            // The key lists the identities first, then the scene reference.
            let (identities, scene) = planned.dependencies();
            let depends_on = identities
                .into_iter()
                .chain(scene)
                .map(|t| match t {
                    Target::Panel(j) => images[characters + j].key.clone(),
                    t => images[t.character().unwrap_or(0)].key.clone(),
                })
                .collect();
            planned.key = key_of(planned.target, &planned.shot, background, depends_on)?;
            images.push(planned);
        }
        Ok(Self {
            settings,
            images,
            characters,
        })
    }

    /// The first character's identity.
    pub fn identity(&self) -> &PlannedImage {
        &self.images[0]
    }

    /// Every character's identity, in the storyboard's order.
    pub fn identities(&self) -> &[PlannedImage] {
        &self.images[..self.characters]
    }

    pub fn panels(&self) -> &[PlannedImage] {
        &self.images[self.characters..]
    }

    /// Every image, identities first.
    pub fn images(&self) -> &[PlannedImage] {
        &self.images
    }

    pub fn image(&self, target: Target) -> Option<&PlannedImage> {
        match target {
            Target::Panel(i) => self.panels().get(i),
            t => self.identities().get(t.character()?),
        }
    }

    /// Whether any panel locks onto the identity's background (so the identity records it).
    pub fn identity_background_needed(&self) -> bool {
        self.panels()
            .iter()
            .any(|p| p.background == BackgroundMode::Identity)
    }

    /// The panels `request` asks for, checked against the plan.
    pub fn requested_panels(&self, request: &RenderRequest) -> Result<Vec<usize>> {
        let exists = |i: usize| match i < self.panels().len() {
            true => Ok(i),
            false => Err(anyhow::anyhow!(
                "panel {} does not exist (the storyboard has {})",
                i + 1,
                self.panels().len()
            )),
        };
        Ok(match request {
            RenderRequest::Identity => vec![],
            RenderRequest::Panel(i) => vec![exists(*i)?],
            RenderRequest::Panels(panels) => {
                panels.iter().map(|&i| exists(i)).collect::<Result<_>>()?
            }
            RenderRequest::All => (0..self.panels().len()).collect(),
        })
    }

    /// The images a render of `request` produces when nothing is cached, in render order.
    pub fn requested_targets(&self, request: &RenderRequest) -> Result<Vec<Target>> {
        let panels = self.requested_panels(request)?;
        Ok((0..self.characters)
            .map(Target::identity_of)
            .chain(panels.into_iter().map(Target::Panel))
            .collect())
    }
}

fn background_mode(
    identity: &Shot,
    panels: &[PanelShot],
    i: usize,
    p: &PanelShot,
) -> BackgroundMode {
    if !p.lock_background {
        return BackgroundMode::Free;
    }
    if p.shot.environment == identity.environment
        && (p.shot.width, p.shot.height) == (identity.width, identity.height)
    {
        return BackgroundMode::Identity;
    }
    let first_panel = panels.iter().position(|q| q.scene == p.scene).unwrap_or(i);
    BackgroundMode::SceneReference { first_panel }
}
