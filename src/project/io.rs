//! Reading and writing project files.
//!
//! Loading reports RON mistakes with the file, line and column, because project files are
//! written by hand. Saving is atomic and keeps one backup, because a storyboard may hold hours
//! of prompt work and a crash or full disk mid-save must not cost the previous version.

use std::fs;
use std::path::{Path, PathBuf};

use ron::extensions::Extensions;
use ron::ser::PrettyConfig;
use thiserror::Error;

use super::model::{IdentitySource, Project};
use crate::atomic_file::{self, parent_dir};

/// Why a project could not be loaded or saved. Structured so that a UI can jump to
/// `line`/`col` of a parse error.
#[derive(Debug, Error)]
pub enum ProjectError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// RON syntax or a field of the wrong type, missing or unknown. `line` and `col` are
    /// 1-based, where the parser stopped.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    /// Well-formed RON that fails [`Project::validate`].
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: could not write the project as RON: {message}", path.display())]
    Serialize { path: PathBuf, message: String },
    /// The new file could not be written; the previous one is untouched.
    #[error("{message}")]
    Write { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ProjectError + '_ {
    move |source| ProjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Project files are hand-sized text; anything larger is not one (and `/dev/zero` would be read
/// forever).
pub const MAX_PROJECT_BYTES: u64 = 16 << 20;

/// Reads and validates a project file.
pub fn load(path: &Path) -> Result<Project, ProjectError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let refuse = |message: String| ProjectError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file: a project is a .ron file".into(),
        ));
    }
    if meta.len() > MAX_PROJECT_BYTES {
        return Err(refuse(format!(
            "{} bytes is too large for a project file (at most {MAX_PROJECT_BYTES})",
            meta.len()
        )));
    }
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    parse(&text, path)
}

/// Parses and validates project text; `path` only names the source in errors.
///
/// `Some(…)` may be left out around optional values (`width: 768`), which is friendlier to
/// write by hand; saved files spell it out so that any RON reader accepts them.
pub fn parse(text: &str, path: &Path) -> Result<Project, ProjectError> {
    // Editors count columns after a byte-order mark, so positions stay right without it.
    let text = without_bom(text);
    let options = ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME);
    let mut project: Project = options.from_str(text).map_err(|e| {
        let at = (e.span.start.line, e.span.start.col);
        let (line, col) = if e.code == ron::Error::ExpectedComma {
            after_previous_token(text, at)
        } else {
            at
        };
        ProjectError::Parse {
            path: path.to_path_buf(),
            line,
            col,
            message: e.code.to_string(),
        }
    })?;
    // A picture's relative path is the project folder's.
    if let IdentitySource::Picture(picture) = &mut project.identity.source {
        picture.folder = Some(parent_dir(path));
    }
    project.validate().map_err(|e| ProjectError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    Ok(project)
}

/// `text` without the UTF-8 byte-order mark some Windows editors put at its start.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// RON notices a missing comma only at the next token, often on the next line; the comma is
/// missing right after the previous token, so point there. Blank and comment-only lines are
/// skipped; positions are 1-based, columns count characters as RON's do.
fn after_previous_token(text: &str, (line, col): (usize, usize)) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let Some(current) = lines.get(line.wrapping_sub(1)) else {
        return (line, col);
    };
    let before: String = current.chars().take(col.saturating_sub(1)).collect();
    if !before.trim().is_empty() {
        return (line, before.trim_end().chars().count() + 1);
    }
    (1..line)
        .rev()
        .map(|n| (n, lines[n - 1].trim_end()))
        .find(|(_, l)| !l.trim_start().is_empty() && !l.trim_start().starts_with("//"))
        .map_or((line, col), |(n, l)| (n, l.chars().count() + 1))
}

/// The built-in storyboard for the app's first run: `projects/lighthouse-keeper.ron`, compiled
/// in so that the app and the sample file can never disagree.
pub fn sample() -> Project {
    parse(
        include_str!("../../projects/lighthouse-keeper.ron"),
        Path::new("projects/lighthouse-keeper.ron"),
    )
    .expect("the built-in sample project is valid")
}

/// Writes `project` to `path` atomically, keeping the previous version as `{name}.bak`.
///
/// The text is staged beside the target ([`atomic_file`]); the old file is copied to the backup,
/// and only then is the staged file renamed over the target. Until that rename the target is
/// untouched, and a failure at any step removes the staged file. The project is not validated:
/// saving a draft is allowed.
pub fn save(project: &Project, path: &Path) -> Result<(), ProjectError> {
    let text = ron::ser::to_string_pretty(project, PrettyConfig::default()).map_err(|e| {
        ProjectError::Serialize {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let name = path.file_name().ok_or_else(|| ProjectError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let backup = parent_dir(path).join(format!("{}.bak", name.to_string_lossy()));
    let failed = |e: anyhow::Error| ProjectError::Write {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    };
    let tmp = atomic_file::stage(path, |w| Ok(w.write_all(text.as_bytes())?)).map_err(failed)?;
    if path.exists() {
        if let Err(e) = fs::copy(path, &backup) {
            atomic_file::discard(&[tmp]);
            return Err(io_error(&backup)(e));
        }
    }
    atomic_file::commit(&tmp, path).map_err(failed)
}
