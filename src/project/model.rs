//! What a storyboard is: one to four characters, each with its identity shot, scenes and the
//! panels set in them.
//!
//! Every type here is plain serde data so that the RON file is the whole document: nothing about
//! a storyboard lives outside it except the rendered images (see [`super::images`]).
//! Optional fields carry serde defaults so that a hand-written file only needs `title`,
//! `characters`, `scenes` and `panels`; unknown fields are rejected so that a typo such as
//! `lock_backgound` is reported instead of silently ignored. Files written before several
//! characters (one `character` prompt and one `identity`) load as one character.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::painted_mask::PaintedMask;
use super::shot::{CameraAngle, ShotSize};
use super::takes::TakeChoice;
use crate::consist::mask::Grid;
use crate::consist::plan::{Quality, Target};
use crate::consist::recipe::Recipe;
use crate::invert::Inverter;
use crate::limits::{self, check_side};
use crate::picture::Fit;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A storyboard document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProjectFile")]
pub struct Project {
    pub title: String,
    /// 1 to [`limits::MAX_CHARACTERS`] characters; a panel names the ones it shows.
    pub characters: Vec<Character>,
    pub scenes: Vec<Scene>,
    pub panels: Vec<Panel>,
    pub settings: RenderSettings,
    /// Per image, which of its takes is active and which the user deleted (see
    /// [`super::takes`]); images without an entry show their newest take.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub takes: BTreeMap<Target, TakeChoice>,
}

/// A project as a file may write it: today's `characters`, or the single `character` and
/// `identity` of files written before there could be several.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    title: String,
    #[serde(default)]
    characters: Option<Vec<Character>>,
    #[serde(default)]
    character: Option<String>,
    #[serde(default)]
    identity: Option<IdentityShot>,
    scenes: Vec<Scene>,
    panels: Vec<Panel>,
    #[serde(default)]
    settings: RenderSettings,
    #[serde(default)]
    takes: BTreeMap<Target, TakeChoice>,
}

impl TryFrom<ProjectFile> for Project {
    type Error = String;

    fn try_from(f: ProjectFile) -> std::result::Result<Self, String> {
        let characters = match (f.characters, f.character, f.identity) {
            (Some(characters), None, None) => characters,
            (None, Some(prompt), Some(identity)) => vec![Character::new(prompt, identity)],
            (Some(_), _, _) => {
                return Err(
                    "`characters` replaces `character` and `identity`: keep only `characters`"
                        .into(),
                )
            }
            (None, Some(_), None) => return Err("missing field `identity`".into()),
            (None, None, Some(_)) => return Err("missing field `character`".into()),
            (None, None, None) => return Err("missing field `characters`".into()),
        };
        Ok(Self {
            title: f.title,
            characters,
            scenes: f.scenes,
            panels: f.panels,
            settings: f.settings,
            takes: f.takes,
        })
    }
}

/// Someone who appears in the storyboard, kept the same across the panels that show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Character {
    /// How panels name the character (`panels[2].characters`), and how the app labels it.
    pub name: String,
    /// The character prompt, the same words in every image the character appears in.
    pub prompt: String,
    /// Rendered first with plain FLUX; the character's foreground in every panel follows it.
    pub identity: IdentityShot,
}

impl Character {
    /// The one character of a file written before there could be several is called this.
    pub const DEFAULT_NAME: &'static str = "character";

    /// A character called [`Character::DEFAULT_NAME`].
    pub fn new(prompt: impl Into<String>, identity: IdentityShot) -> Self {
        Self {
            name: Self::DEFAULT_NAME.into(),
            prompt: prompt.into(),
            identity,
        }
    }
}

/// The image that defines a character's look. It is never shown as a panel, but every
/// panel borrows its foreground from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityShot {
    pub environment: String,
    pub action: String,
    /// Overrides [`RenderSettings::seed`] for the identity only (a re-roll of the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Where the identity comes from: drawn by FLUX (the default, and every older file), or a
    /// picture the user brings. The prompts describe it either way: they drive the masks.
    #[serde(default, skip_serializing_if = "IdentitySource::is_generated")]
    pub source: IdentitySource,
    /// The foreground the user painted, used instead of the computed mask by every panel's
    /// matching and sharing (absent: the computed mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub painted_mask: Option<PaintedMask>,
}

impl IdentityShot {
    /// A generated identity shot.
    pub fn new(environment: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            environment: environment.into(),
            action: action.into(),
            source: IdentitySource::Generated,
            seed: None,
            painted_mask: None,
        }
    }
}

/// Where the identity image comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum IdentitySource {
    /// Drawn by FLUX from the seed's noise.
    #[default]
    Generated,
    /// The user's picture, inverted to noise and reconstructed (src/invert.rs).
    Picture(PictureIdentity),
}

impl IdentitySource {
    pub fn is_generated(&self) -> bool {
        *self == IdentitySource::Generated
    }
}

/// A picture identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PictureIdentity {
    /// Relative to the project file's folder (or absolute).
    pub path: PathBuf,
    #[serde(default)]
    pub fit: Fit,
    #[serde(default)]
    pub inverter: Inverter,
    /// The folder of the project file it was read from, against which a relative path is
    /// taken (set by `io::parse`; not written).
    #[serde(skip)]
    pub folder: Option<PathBuf>,
}

impl PictureIdentity {
    /// The picture's path as the file system finds it.
    pub fn resolved(&self) -> PathBuf {
        match &self.folder {
            Some(folder) if self.path.is_relative() => folder.join(&self.path),
            _ => self.path.clone(),
        }
    }

    /// Keeps the same picture when the project is saved into `folder`: its path becomes
    /// relative to that folder where the picture lies inside it, else absolute.
    pub fn rebase(&mut self, folder: &Path) {
        if self.folder.as_deref() == Some(folder) {
            return;
        }
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let picture = absolute(&self.resolved());
        self.path = picture
            .strip_prefix(absolute(folder))
            .map_or_else(|_| picture.clone(), Path::to_path_buf);
        self.folder = Some(folder.to_path_buf());
    }
}

/// A place. Panels in the same scene share its environment prompt, and with
/// `lock_background` they also share one rendered background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub environment: String,
    #[serde(default)]
    pub lock_background: bool,
    /// Per-scene size overrides, e.g. a portrait scene in a square storyboard; the reference's
    /// "mix" mode changes resolution per scene the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
}

/// One frame of the storyboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    /// Index into [`Project::scenes`].
    pub scene: usize,
    /// The characters it shows, by name, in the order the prompt describes them; left out, every
    /// character in the storyboard's order (so a one-character file needs no list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub characters: Option<Vec<String>>,
    pub action: String,
    /// Text shown under the panel on contact sheets; not part of the prompt.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub caption: String,
    /// Overrides [`RenderSettings::seed`] for this panel only, to re-roll one panel. The
    /// reference uses one seed for everything, which is what keeps layouts close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The shot list: how the panel is framed and seen, and how the camera moves (free text,
    /// e.g. "slow push in"). Shot size and angle join the prompt where
    /// [`RenderSettings::shot_in_prompt`] says so; the rest is for the board only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shot: Option<ShotSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle: Option<CameraAngle>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub camera_move: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dialogue: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// Seconds on screen in the animatic and the running time (see [`limits::DURATION`]).
    #[serde(
        default = "default_duration",
        skip_serializing_if = "is_default_duration"
    )]
    pub duration: f64,
}

fn default_duration() -> f64 {
    2.0
}

fn is_default_duration(d: &f64) -> bool {
    *d == default_duration()
}

impl Panel {
    /// A panel of `scene` doing `action`, with nothing else set.
    pub fn new(scene: usize, action: impl Into<String>) -> Self {
        Self {
            scene,
            characters: None,
            action: action.into(),
            caption: String::new(),
            seed: None,
            shot: None,
            angle: None,
            camera_move: String::new(),
            dialogue: String::new(),
            notes: String::new(),
            duration: default_duration(),
        }
    }

    /// The action as the prompt takes it: with the shot size and angle after it when asked.
    pub fn prompt_action(&self, shot_in_prompt: bool) -> String {
        let mut action = self.action.clone();
        if shot_in_prompt {
            let words = [
                self.shot.map(ShotSize::prompt_words),
                self.angle.map(CameraAngle::prompt_words),
            ];
            for w in words.into_iter().flatten() {
                action = format!("{action}, {w}");
            }
        }
        action
    }
}

/// How images are rendered. Every field has a default, so the whole block may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSettings {
    /// The model folder; `None` leaves the choice to the app (command line or preferences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default = "default_side")]
    pub width: usize,
    #[serde(default = "default_side")]
    pub height: usize,
    /// `None` picks the model's usual count: 50 for FLUX.1-dev, 4 for schnell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// FLUX-dev's guidance embedding (the reference uses 3.5); schnell ignores it.
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    /// The one seed every image starts from, as in the reference (2025).
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub recipe: Recipe,
    /// Adds each panel's shot size and camera angle to its action prompt, so the picture
    /// follows the shot list (a change re-renders the panels that have them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shot_in_prompt: bool,
    /// Renders drafts: every image scaled to `draft_long_side` on its long side (never up), with
    /// `draft_steps` steps; the recipe's step windows are fractions, so they scale with them.
    /// Off renders finals at full size. Drafts and finals are takes of the same image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft: bool,
    #[serde(
        default = "default_draft_long_side",
        skip_serializing_if = "is_default_draft_long_side"
    )]
    pub draft_long_side: usize,
    /// `None`: two fifths of the final step count (at least 4, or the final count if fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_steps: Option<usize>,
    /// Review first (the app): Render runs only the panels' pre-runs and shows each one's early
    /// look to approve, re-roll or skip; "Render approved" then runs the approved main runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review_first: bool,
}

fn default_draft_long_side() -> usize {
    512
}

fn is_default_draft_long_side(side: &usize) -> bool {
    *side == default_draft_long_side()
}

impl RenderSettings {
    /// The quality the switch asks for.
    pub fn quality(&self) -> Quality {
        match self.draft {
            true => Quality::Draft,
            false => Quality::Final,
        }
    }

    /// `(width, height)` of an image of full size `(width, height)` at `quality`: a draft's
    /// long side is at most `draft_long_side`, both sides multiples of 16, the aspect kept.
    pub fn sized(&self, quality: Quality, (width, height): (usize, usize)) -> (usize, usize) {
        let long = width.max(height);
        if quality == Quality::Final || long <= self.draft_long_side {
            return (width, height);
        }
        let scale = self.draft_long_side as f64 / long as f64;
        let side = |s: usize| (((s as f64 * scale) / 16.0).round() as usize).max(1) * 16;
        (side(width), side(height))
    }

    /// `(width, height)` of every identity shot at `quality`.
    pub fn identity_size(&self, quality: Quality) -> (usize, usize) {
        self.sized(quality, (self.width, self.height))
    }

    /// The step count at `quality`, given the final count.
    pub fn steps_at(&self, quality: Quality, final_steps: usize) -> usize {
        match quality {
            Quality::Final => final_steps,
            Quality::Draft => self
                .draft_steps
                .unwrap_or_else(|| (final_steps * 2).div_ceil(5).max(final_steps.min(4))),
        }
    }
}

fn default_side() -> usize {
    1024
}

fn default_guidance() -> f64 {
    3.5
}

fn default_seed() -> u64 {
    2025
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            model: None,
            width: default_side(),
            height: default_side(),
            steps: None,
            guidance: default_guidance(),
            seed: default_seed(),
            recipe: Recipe::default(),
            shot_in_prompt: false,
            draft: false,
            draft_long_side: default_draft_long_side(),
            draft_steps: None,
            review_first: false,
        }
    }
}

impl Project {
    /// The full prompt for an image: environment, each character's prompt and the action joined
    /// by single spaces, as the reference builds it for one character (`bg + " " + fg + " " +
    /// act`). The environment comes first because CharaConsist finds the background tokens as
    /// the prompt's prefix; each character's tokens follow in `characters`' order.
    pub fn prompt(&self, environment: &str, characters: &[usize], action: &str) -> String {
        let mut prompt = environment.to_string();
        for &c in characters {
            prompt = format!("{prompt} {}", self.characters[c].prompt);
        }
        format!("{prompt} {action}")
    }

    /// The identity prompt of character `c`: its identity shot, with the character alone.
    pub fn identity_prompt_of(&self, c: usize) -> String {
        let identity = &self.characters[c].identity;
        self.prompt(&identity.environment, &[c], &identity.action)
    }

    /// The first character's identity prompt (the only one of a one-character storyboard).
    pub fn identity_prompt(&self) -> String {
        self.identity_prompt_of(0)
    }

    /// The characters panel `i` shows, as indices into [`Project::characters`], in its order.
    /// A name that does not exist is left out; [`Project::validate`] refuses it.
    pub fn panel_characters(&self, i: usize) -> Vec<usize> {
        match &self.panels[i].characters {
            None => (0..self.characters.len()).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.characters.iter().position(|c| &c.name == n))
                .collect(),
        }
    }

    /// Panics if `i` or the panel's scene is out of range; [`Project::validate`] rules that out.
    pub fn panel_prompt(&self, i: usize) -> String {
        let action = self.panels[i].prompt_action(self.settings.shot_in_prompt);
        self.prompt(
            self.panel_environment(i),
            &self.panel_characters(i),
            &action,
        )
    }

    /// The environment of panel `i`'s scene: the prefix that marks its background tokens.
    pub fn panel_environment(&self, i: usize) -> &str {
        &self.scenes[self.panels[i].scene].environment
    }

    /// `(width, height)` of panel `i`: its scene's override where set, else the settings.
    pub fn panel_size(&self, i: usize) -> (usize, usize) {
        let scene = &self.scenes[self.panels[i].scene];
        (
            scene.width.unwrap_or(self.settings.width),
            scene.height.unwrap_or(self.settings.height),
        )
    }

    /// The seed panel `i` starts from: its own override, else the shared seed.
    pub fn panel_seed(&self, i: usize) -> u64 {
        self.panels[i].seed.unwrap_or(self.settings.seed)
    }

    /// Checks everything a render relies on, naming the offending field the way it is written
    /// in the file (`panels[3].scene`), so that a message points straight at the line to fix.
    pub fn validate(&self) -> Result<()> {
        if self.panels.is_empty() {
            bail!("panels: a storyboard needs at least one panel");
        }
        self.validate_characters()?;
        for (i, scene) in self.scenes.iter().enumerate() {
            if scene.environment.trim().is_empty() {
                bail!("scenes[{i}].environment: the environment prompt is empty");
            }
            if let Some(w) = scene.width {
                check_side(&format!("scenes[{i}].width"), w)?;
            }
            if let Some(h) = scene.height {
                check_side(&format!("scenes[{i}].height"), h)?;
            }
        }
        for (i, panel) in self.panels.iter().enumerate() {
            if panel.action.trim().is_empty() {
                bail!("panels[{i}].action: the action prompt is empty");
            }
            limits::check_duration(&format!("panels[{i}].duration"), panel.duration)?;
            self.validate_panel_characters(i)?;
            if panel.scene >= self.scenes.len() {
                bail!(
                    "panels[{i}].scene is {} but there {} (indices start at 0)",
                    panel.scene,
                    match self.scenes.len() {
                        0 => "are no scenes".to_string(),
                        1 => "is only 1 scene".to_string(),
                        n => format!("are only {n} scenes"),
                    }
                );
            }
        }
        let s = &self.settings;
        check_side("settings.width", s.width)?;
        check_side("settings.height", s.height)?;
        // Painted at the identity's full-size grid, after the size itself is known good.
        let size = s.identity_size(Quality::Final);
        for (k, c) in self.characters.iter().enumerate() {
            if let Some(painted) = &c.identity.painted_mask {
                let field = format!("characters[{k}].identity.painted_mask");
                painted.check(&field, Grid::of_size(size.0, size.1), size)?;
            }
        }
        if let Some(steps) = s.steps {
            limits::check(
                "settings.steps (or left out for the model's default)",
                steps,
                &limits::STEPS,
            )?;
        }
        limits::check_guidance("settings.guidance", s.guidance)?;
        check_side("settings.draft_long_side", s.draft_long_side)?;
        if let Some(steps) = s.draft_steps {
            limits::check("settings.draft_steps", steps, &limits::STEPS)?;
        }
        // The recipe names its fields `recipe.…`; prefixing makes them the path in this file.
        s.recipe.validate().map_err(|e| anyhow!("settings.{e:#}"))?;
        Ok(())
    }

    fn validate_characters(&self) -> Result<()> {
        let n = self.characters.len();
        if n == 0 {
            bail!("characters: a storyboard needs at least one character");
        }
        if n > limits::MAX_CHARACTERS {
            bail!(
                "characters: {n} characters, but a storyboard keeps at most {} consistent",
                limits::MAX_CHARACTERS
            );
        }
        for (k, c) in self.characters.iter().enumerate() {
            if c.name.trim().is_empty() {
                bail!("characters[{k}].name: the character needs a name");
            }
            if c.prompt.trim().is_empty() {
                bail!("characters[{k}].prompt: the character prompt is empty");
            }
            if c.identity.environment.trim().is_empty() {
                bail!(
                    "characters[{k}].identity.environment: the identity shot needs an environment"
                );
            }
            if let IdentitySource::Picture(p) = &c.identity.source {
                if p.path.as_os_str().is_empty() {
                    bail!("characters[{k}].identity.source: the picture's path is empty");
                }
            }
            if let Some(j) = self.characters[..k].iter().position(|o| o.name == c.name) {
                bail!(
                    "characters[{k}].name: `{}` is also characters[{j}]'s name",
                    c.name
                );
            }
            // The mask tells characters apart by their words; the same words cannot be.
            if let Some(j) = self.characters[..k]
                .iter()
                .position(|o| o.prompt.trim() == c.prompt.trim())
            {
                bail!("characters[{k}].prompt: the same prompt as characters[{j}]'s; each character needs its own words");
            }
        }
        Ok(())
    }

    fn validate_panel_characters(&self, i: usize) -> Result<()> {
        let Some(names) = &self.panels[i].characters else {
            return Ok(());
        };
        for (n, name) in names.iter().enumerate() {
            if !self.characters.iter().any(|c| &c.name == name) {
                let known: Vec<&str> = self.characters.iter().map(|c| c.name.as_str()).collect();
                bail!(
                    "panels[{i}].characters[{n}]: no character is called `{name}` (the storyboard has {})",
                    known.join(", ")
                );
            }
            if names[..n].contains(name) {
                bail!("panels[{i}].characters[{n}]: `{name}` is listed twice");
            }
        }
        Ok(())
    }
}
