//! The storyboard plan: every image a storyboard needs (the identity, then the panels), with its
//! prompt, size, noise, background mode, what it depends on, and a key over all of its inputs.
//!
//! The plan is what a render executes and what staleness compares: an image on disk is current
//! exactly when its stored key equals the plan's. The engine never sees the document; the
//! document is turned into a plan once (`project::plan`).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::recipe::Recipe;
use crate::invert::Inverter;
use crate::models::source::ModelSource;
use crate::picture::Fit;
use crate::pipeline::{FluxModels, NoiseSource};
use std::path::Path;

/// An image of the storyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    Identity,
    Panel(usize),
}

impl Target {
    /// How messages name the image: "the identity", "panel 3".
    pub fn label(self) -> String {
        match self {
            Target::Identity => "the identity".into(),
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
                    fnv64: fnv64(&bytes),
                }
            }
        })
    }
}

/// FNV-1a: a stable digest (unlike `std`'s hashers, the same in every build and version).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    /// The identity's key, then the scene reference's, where the image depends on them.
    pub depends_on: Vec<ImageKey>,
    /// A picture identity's picture and how it is inverted (absent in older keys: generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<PictureKey>,
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

/// What the document says about one image.
#[derive(Debug, Clone)]
pub struct Shot {
    pub prompt: String,
    pub environment: String,
    /// Where the environment is written in the document (`scenes[1].environment`), for errors.
    pub environment_field: String,
    pub width: usize,
    pub height: usize,
    /// The noise the image starts from; a picture identity's comes from its inversion instead.
    pub noise: NoiseSource,
    /// The identity's picture, where it is one.
    pub picture: Option<PlannedPicture>,
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
    /// The images this one needs rendered first, nearest first.
    pub fn depends_on(&self) -> Vec<Target> {
        match (self.target, self.background) {
            (Target::Identity, _) => vec![],
            (Target::Panel(i), BackgroundMode::SceneReference { first_panel })
                if first_panel != i =>
            {
                vec![Target::Panel(first_panel), Target::Identity]
            }
            _ => vec![Target::Identity],
        }
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

/// Every image of a storyboard, identity first, then the panels in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub settings: PlanSettings,
    images: Vec<PlannedImage>,
}

impl Plan {
    /// Plans the identity and the panels: background modes, dependencies and keys. A noise file
    /// is checked against every image that takes it, so that one that does not fit a later
    /// scene's size fails before the first image is rendered.
    pub fn new(settings: PlanSettings, identity: Shot, panels: Vec<PanelShot>) -> Result<Self> {
        let key_of = |target: Target, shot: &Shot, background, depends_on| -> Result<ImageKey> {
            let noise =
                NoiseKey::of(shot).with_context(|| format!("the noise of {}", target.label()))?;
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
                depends_on,
                picture: shot.picture.as_ref().map(|p| p.key.clone()),
            })
        };
        let identity_key = key_of(Target::Identity, &identity, BackgroundMode::Free, vec![])?;
        let modes: Vec<BackgroundMode> = panels
            .iter()
            .enumerate()
            .map(|(i, p)| background_mode(&identity, &panels, i, p))
            .collect();
        let mut images = vec![PlannedImage {
            target: Target::Identity,
            shot: identity,
            scene: None,
            background: BackgroundMode::Free,
            key: identity_key.clone(),
        }];
        // A scene's first panel comes before the others, so its key is known when they need it.
        for (i, (panel, background)) in panels.into_iter().zip(modes).enumerate() {
            let mut depends_on = vec![identity_key.clone()];
            if let BackgroundMode::SceneReference { first_panel } = background {
                if first_panel != i {
                    depends_on.push(images[first_panel + 1].key.clone());
                }
            }
            let key = key_of(Target::Panel(i), &panel.shot, background, depends_on)?;
            images.push(PlannedImage {
                target: Target::Panel(i),
                shot: panel.shot,
                scene: Some(panel.scene),
                background,
                key,
            });
        }
        Ok(Self { settings, images })
    }

    pub fn identity(&self) -> &PlannedImage {
        &self.images[0]
    }

    pub fn panels(&self) -> &[PlannedImage] {
        &self.images[1..]
    }

    /// Every image, identity first.
    pub fn images(&self) -> &[PlannedImage] {
        &self.images
    }

    pub fn image(&self, target: Target) -> Option<&PlannedImage> {
        match target {
            Target::Identity => Some(self.identity()),
            Target::Panel(i) => self.panels().get(i),
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
        Ok(std::iter::once(Target::Identity)
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
