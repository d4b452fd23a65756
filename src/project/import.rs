//! Importing the reference implementation's prompt files (`examples/prompts-*.txt`).
//!
//! The format: one image per line, `background#character#action`; a blank line ends a group;
//! the first line of a group is the identity shot and the others are its panels. Each group
//! becomes one [`Project`]. Lines are numbered from 1 in errors so that they match an editor.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::model::{Character, IdentityShot, Panel, Project, RenderSettings, Scene};

/// One parsed prompt line.
struct Line<'a> {
    number: usize,
    background: &'a str,
    character: &'a str,
    action: &'a str,
}

fn parse_line(number: usize, text: &str) -> Result<Line<'_>> {
    let fields: Vec<&str> = text.split('#').map(str::trim).collect();
    let [background, character, action] = fields[..] else {
        bail!(
            "line {number}: expected `background#character#action` (3 fields separated by `#`), \
             found {} field{}",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        );
    };
    if background.is_empty() {
        bail!("line {number}: the background field is empty");
    }
    if character.is_empty() {
        bail!("line {number}: the character field is empty");
    }
    Ok(Line {
        number,
        background,
        character,
        action,
    })
}

/// Splits the text into groups of lines. Runs of blank lines count as one separator: the
/// reference turns a second blank line into an empty group and crashes on it.
fn groups(text: &str) -> Result<Vec<Vec<Line<'_>>>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    for (i, text) in text.lines().enumerate() {
        if text.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else {
            current.push(parse_line(i + 1, text)?);
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    Ok(groups)
}

fn group_project(k: usize, lines: &[Line], lock_background: bool) -> Result<Project> {
    let (id, frames) = lines.split_first().expect("groups are never empty");
    if frames.is_empty() {
        bail!(
            "line {}: this group has only an identity line; add at least one panel line after it",
            id.number
        );
    }
    let mut scenes: Vec<Scene> = Vec::new();
    let mut panels = Vec::with_capacity(frames.len());
    for line in frames {
        if line.character != id.character {
            bail!(
                "line {}: the character differs from the group's first line (line {}); \
                 a storyboard has one character",
                line.number,
                id.number
            );
        }
        if line.action.is_empty() {
            bail!("line {}: the action field is empty", line.number);
        }
        // Panels with the same background text share a scene, in order of first appearance.
        let scene = match scenes.iter().position(|s| s.environment == line.background) {
            Some(s) => s,
            None => {
                scenes.push(Scene {
                    name: format!("Scene {}", scenes.len() + 1),
                    environment: line.background.to_string(),
                    lock_background,
                    width: None,
                    height: None,
                });
                scenes.len() - 1
            }
        };
        panels.push(Panel::new(scene, line.action));
    }
    let project = Project {
        title: format!("Story {k}"),
        characters: vec![Character::new(
            id.character,
            IdentityShot::new(id.background, id.action),
        )],
        scenes,
        panels,
        takes: Default::default(),
        settings: RenderSettings::default(),
    };
    project
        .validate()
        .with_context(|| format!("the group starting at line {}", id.number))?;
    Ok(project)
}

/// One project per group of `text`, titled `Story 1`, `Story 2`, …; every scene gets
/// `lock_background` (the reference's global `--share_bg` flag).
pub fn import(text: &str, lock_background: bool) -> Result<Vec<Project>> {
    let groups = groups(super::io::without_bom(text))?;
    if groups.is_empty() {
        bail!("no prompt lines found: expected lines of `background#character#action`");
    }
    groups
        .iter()
        .enumerate()
        .map(|(k, lines)| group_project(k + 1, lines, lock_background))
        .collect()
}

/// [`import`] on a file, naming the file in errors.
pub fn import_file(path: &Path, lock_background: bool) -> Result<Vec<Project>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    import(&text, lock_background).with_context(|| format!("importing {}", path.display()))
}
