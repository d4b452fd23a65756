//! What a board prints under each panel: its scene's header where a scene begins, the shot
//! line (size, angle, camera move, start and duration) and the dialogue, caption and notes,
//! each only where the panel has it and the export asks for it. The sheet and the PDF print
//! the same text, wrapped by the same rules, so neither ever cuts it.

use anyhow::{bail, Result};
use std::str::FromStr;

use crate::project::model::Project;
use crate::project::shot::{CameraAngle, ShotSize};
use crate::project::timing::{seconds_label, starts, timecode};

/// The fields an export prints under each panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardFields {
    pub shot: bool,
    pub angle: bool,
    pub camera_move: bool,
    pub duration: bool,
    pub dialogue: bool,
    pub caption: bool,
    pub notes: bool,
    pub scene_headers: bool,
}

impl BoardFields {
    pub const NAMES: [&'static str; 8] = [
        "shot", "angle", "move", "duration", "dialogue", "caption", "notes", "scenes",
    ];

    pub fn all() -> Self {
        Self {
            shot: true,
            angle: true,
            camera_move: true,
            duration: true,
            dialogue: true,
            caption: true,
            notes: true,
            scene_headers: true,
        }
    }

    pub fn none() -> Self {
        Self {
            shot: false,
            angle: false,
            camera_move: false,
            duration: false,
            dialogue: false,
            caption: false,
            notes: false,
            scene_headers: false,
        }
    }

    fn field(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "shot" => &mut self.shot,
            "angle" => &mut self.angle,
            "move" => &mut self.camera_move,
            "duration" => &mut self.duration,
            "dialogue" => &mut self.dialogue,
            "caption" => &mut self.caption,
            "notes" => &mut self.notes,
            "scenes" => &mut self.scene_headers,
            _ => return None,
        })
    }
}

impl Default for BoardFields {
    fn default() -> Self {
        Self::all()
    }
}

impl FromStr for BoardFields {
    type Err = anyhow::Error;

    /// A comma-separated list of [`BoardFields::NAMES`], `all` or `none`, as typed on a
    /// command line.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => return Ok(Self::all()),
            "none" => return Ok(Self::none()),
            _ => {}
        }
        let mut fields = Self::none();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match fields.field(name) {
                Some(f) => *f = true,
                None => bail!(
                    "unknown board field {name:?}: use all, none or a list of {}",
                    Self::NAMES.join(", ")
                ),
            }
        }
        Ok(fields)
    }
}

/// The header of panel `i`'s scene where the panel opens it (the first panel, or one whose
/// scene differs from the panel before).
pub fn scene_header(project: &Project, i: usize) -> Option<String> {
    let scene = project.panels.get(i)?.scene;
    if i > 0 && project.panels[i - 1].scene == scene {
        return None;
    }
    let name = project.scenes.get(scene).map_or("", |s| s.name.as_str());
    Some(match name.is_empty() {
        true => format!("SCENE {}", scene + 1),
        false => format!("SCENE {}: {}", scene + 1, name),
    })
}

/// The text printed under panel `i`, one paragraph per line (see the module comment).
pub fn panel_text(project: &Project, i: usize, fields: &BoardFields) -> String {
    let panel = &project.panels[i];
    let mut lines = Vec::new();
    if fields.scene_headers {
        lines.extend(scene_header(project, i));
    }
    let mut shot_line = Vec::new();
    if fields.shot {
        shot_line.extend(panel.shot.map(|s| ShotSize::label(s).to_string()));
    }
    if fields.angle {
        shot_line.extend(panel.angle.map(|a| CameraAngle::label(a).to_string()));
    }
    if fields.camera_move && !panel.camera_move.trim().is_empty() {
        shot_line.push(panel.camera_move.trim().to_string());
    }
    if fields.duration {
        let (at, _) = starts(project);
        shot_line.push(format!(
            "{} at {}",
            seconds_label(panel.duration),
            timecode(at[i])
        ));
    }
    if !shot_line.is_empty() {
        lines.push(shot_line.join(" | "));
    }
    let mut text_field = |on: bool, text: &str, quote: bool| {
        if on && !text.trim().is_empty() {
            lines.push(match quote {
                true => format!("\"{}\"", text.trim()),
                false => text.trim().to_string(),
            });
        }
    };
    text_field(fields.dialogue, &panel.dialogue, true);
    text_field(fields.caption, &panel.caption, false);
    text_field(fields.notes, &panel.notes, false);
    lines.join("\n")
}

/// "Running time 00:00:12:00 (12 s)", for page headers.
pub fn running_time_label(project: &Project) -> String {
    let (_, total) = starts(project);
    format!(
        "Running time {} ({})",
        timecode(total),
        seconds_label(total)
    )
}
