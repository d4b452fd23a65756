//! Reading and writing project files.
//!
//! Loading reports RON mistakes with the file, line and column, because project files are
//! written by hand. Saving is atomic and keeps one backup, because a storyboard may hold hours
//! of prompt work and a crash or full disk mid-save must not cost the previous version.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ron::extensions::Extensions;
use ron::ser::PrettyConfig;
use thiserror::Error;

use super::model::Project;

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
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ProjectError + '_ {
    move |source| ProjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and validates a project file.
pub fn load(path: &Path) -> Result<Project, ProjectError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    parse(&text, path)
}

/// Parses and validates project text; `path` only names the source in errors.
///
/// `Some(…)` may be left out around optional values (`width: 768`), which is friendlier to
/// write by hand; saved files spell it out so that any RON reader accepts them.
pub fn parse(text: &str, path: &Path) -> Result<Project, ProjectError> {
    let options = ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME);
    let project: Project = options.from_str(text).map_err(|e| {
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
    project.validate().map_err(|e| ProjectError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    Ok(project)
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

/// Writes `project` to `path` atomically, keeping the previous version as `{name}.bak`.
///
/// The text goes to `.{name}.tmp` in the same folder (so the final rename cannot cross file
/// systems) and is synced; the old file is copied to the backup, and only then is the temporary
/// file renamed over the target. Until that rename the target is untouched, and a failure at any
/// step removes the temporary file. The project is not validated: saving a draft is allowed.
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
    let name = name.to_string_lossy();
    let dir = parent_dir(path);
    let tmp = dir.join(format!(".{name}.tmp"));
    let backup = dir.join(format!("{name}.bak"));

    let result = write_synced(&tmp, &text).and_then(|()| {
        if path.exists() {
            fs::copy(path, &backup).map_err(io_error(&backup))?;
        }
        fs::rename(&tmp, path).map_err(io_error(path))
    });
    if result.is_err() {
        // Best effort: the error that matters is the one already in hand.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable. Directories cannot be opened for syncing everywhere
    // (Windows), and the data is already safe, so a failure here is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(path: &Path, text: &str) -> Result<(), ProjectError> {
    let mut file = File::create(path).map_err(io_error(path))?;
    file.write_all(text.as_bytes()).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// `Path::parent` is `""` for a bare file name; that means the current folder.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The folder where a project's rendered images are kept: `{stem}.images/` beside
/// `{stem}.ron`, so that moving or copying both keeps them together.
pub fn images_dir(project_path: &Path) -> PathBuf {
    let stem = project_path
        .file_stem()
        .map_or_else(|| "project".into(), |s| s.to_string_lossy());
    project_path.with_file_name(format!("{stem}.images"))
}
