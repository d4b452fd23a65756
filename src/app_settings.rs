//! What the app remembers between runs: the model folder, device, recent projects and the
//! render settings new projects start from.
//!
//! Kept as RON in `{config_dir}/charaboard/settings.ron`. Every field has a default so that a
//! file written by an older version still loads, and a file that cannot be read at all is set
//! aside as `settings.ron.broken` rather than overwritten, so a hand edit gone wrong is not lost.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ron::extensions::Extensions;
use ron::ser::PrettyConfig;
use serde::{Deserialize, Serialize};

use crate::memory_plan::BankChoice;
use crate::project::model::RenderSettings;

/// Overrides the folder that holds `charaboard/settings.ron`, so tests (and portable installs)
/// never touch the user's real settings.
pub const CONFIG_DIR_ENV: &str = "CHARABOARD_CONFIG_DIR";

/// How many recent projects are remembered: enough for a menu, short enough to read.
pub const MAX_RECENT: usize = 10;

/// The app's remembered state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    /// The model folder last used.
    pub model_dir: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` or `metal`, as the command line spells it.
    pub device: Option<String>,
    /// `f32`, `bf16` or `f16`, as the command line spells it.
    pub dtype: Option<String>,
    /// Most recent first, at most [`MAX_RECENT`], no duplicates.
    pub recent_projects: Vec<PathBuf>,
    /// The settings a new project starts with.
    pub defaults: RenderSettings,
    /// Columns of the contact sheet.
    pub sheet_columns: usize,
    /// Where the identity's bank lives while rendering (the images are the same in every
    /// mode); `Auto` takes the memory plan's choice.
    pub bank: BankChoice,
    /// The lockstep batch (panels beside the identity in one forward); `None`: the memory
    /// plan's with `Auto`, else [`crate::memory_plan::DEFAULT_BATCH`].
    pub batch: Option<usize>,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            model_dir: None,
            device: None,
            dtype: None,
            recent_projects: Vec::new(),
            defaults: RenderSettings::default(),
            sheet_columns: 3,
            bank: BankChoice::Auto,
            batch: None,
        }
    }
}

/// `{config_dir}/charaboard/settings.ron`, where `config_dir` is `$CHARABOARD_CONFIG_DIR` if
/// set, else the platform's (`~/.config` on Linux). `None` only where neither exists.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os(CONFIG_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(dirs::config_dir)?;
    Some(base.join("charaboard").join("settings.ron"))
}

impl AppSettings {
    /// The saved settings, or the defaults where there are none or they cannot be read.
    ///
    /// Never fails: the app must start even with a damaged settings file. A file that exists
    /// but does not parse is renamed to `settings.ron.broken` (with a warning on stderr), so the
    /// next save does not destroy what the user may want to repair by hand.
    pub fn load() -> AppSettings {
        let Some(path) = config_path() else {
            return AppSettings::default();
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("warning: cannot read {}: {e}", path.display());
                }
                return AppSettings::default();
            }
        };
        match parse(&bytes) {
            Ok(settings) => settings,
            Err(e) => {
                let broken = path.with_file_name("settings.ron.broken");
                eprintln!(
                    "warning: {} is not valid ({e:#}); using default settings and keeping it as {}",
                    path.display(),
                    broken.display()
                );
                if let Err(e) = fs::rename(&path, &broken) {
                    eprintln!("warning: cannot rename it: {e}");
                }
                AppSettings::default()
            }
        }
    }

    /// Writes the settings to [`config_path`], creating its folder.
    ///
    /// Atomic ([`crate::atomic_file`]): a crash mid-save leaves either the old or the new settings.
    pub fn save(&self) -> Result<()> {
        let path = config_path().context(
            "no folder for settings: set CHARABOARD_CONFIG_DIR or a home folder's config dir",
        )?;
        let dir = path.parent().expect("config_path always has a parent");
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let text = ron::ser::to_string_pretty(self, PrettyConfig::default())
            .context("cannot write the settings as RON")?;
        crate::atomic_file::write_atomic(&path, text.as_bytes())
    }

    /// Puts `path` first in the recent projects, removing an older entry for it and dropping
    /// the oldest beyond [`MAX_RECENT`].
    ///
    /// The path is made absolute (without touching the disk) so that the entry still works
    /// when the app is next started from another folder, and so that `a.ron` and `./a.ron`
    /// are one entry.
    pub fn remember_project(&mut self, path: &Path) {
        let path = absolute(path);
        self.recent_projects.retain(|p| absolute(p) != path);
        self.recent_projects.insert(0, path);
        self.recent_projects.truncate(MAX_RECENT);
    }
}

/// `Some(…)` may be left out around optional values in a hand-edited file, as in projects.
fn parse(bytes: &[u8]) -> Result<AppSettings> {
    let text = std::str::from_utf8(bytes).context("not UTF-8")?;
    let options = ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME);
    Ok(options.from_str(text)?)
}

/// `std::path::absolute` also drops `.` components; where it fails (no current folder) the
/// path is kept as given.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An image size offered in the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizePreset {
    pub label: &'static str,
    pub width: usize,
    pub height: usize,
}

/// FLUX.1 is trained around one megapixel; sizes far from it lose detail or repeat subjects.
const PRESET_AREA: f64 = 1024.0 * 1024.0;

/// The usual aspect ratios at about one megapixel, both sides multiples of 16 (FLUX packs
/// 2x2 patches of the 8x downsampled latent). 1:1 is exactly 1024x1024.
pub fn size_presets() -> Vec<SizePreset> {
    const RATIOS: [(&str, f64); 6] = [
        ("1:1 square", 1.0),
        ("4:3", 4.0 / 3.0),
        ("3:2", 1.5),
        ("16:9 wide", 16.0 / 9.0),
        ("9:16 portrait", 9.0 / 16.0),
        ("2.39:1 cinema", 2.39),
    ];
    RATIOS
        .iter()
        .map(|&(label, ratio)| SizePreset {
            label,
            width: round16((PRESET_AREA * ratio).sqrt()),
            height: round16((PRESET_AREA / ratio).sqrt()),
        })
        .collect()
}

fn round16(x: f64) -> usize {
    ((x / 16.0).round() as usize).max(1) * 16
}
