//! The open storyboard: the project, where it is saved, and its undo history.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::project::images::ImagesStore;
use crate::project::io::{self, ProjectError};
use crate::project::model::{IdentitySource, Project};

/// Edits closer together than this (typing a word) undo as one.
const COALESCE: Duration = Duration::from_millis(800);

pub struct Document {
    pub project: Project,
    pub path: Option<PathBuf>,
    saved: Project,
    /// The project as of the last recorded edit: what the next edit is compared with.
    recorded: Project,
    undo: Vec<Project>,
    redo: Vec<Project>,
    last_edit: Option<Instant>,
    /// Counts recorded changes, so that what is derived from the project (the plan) is
    /// recomputed only when it changed.
    revision: u64,
}

impl Document {
    pub fn new(project: Project, path: Option<PathBuf>) -> Self {
        Self {
            saved: project.clone(),
            recorded: project.clone(),
            project,
            path,
            undo: Vec::new(),
            redo: Vec::new(),
            last_edit: None,
            revision: 0,
        }
    }

    pub fn open(path: &Path) -> Result<Self, ProjectError> {
        Ok(Self::new(io::load(path)?, Some(path.to_path_buf())))
    }

    pub fn is_dirty(&self) -> bool {
        self.project != self.saved
    }

    pub fn title(&self) -> String {
        let name = self.path.as_ref().and_then(|p| p.file_name()).map_or_else(
            || "untitled".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        format!(
            "{}{} - charaboard",
            if self.is_dirty() { "*" } else { "" },
            name
        )
    }

    /// Records the edits made to `project` since the last call (the UI calls it every frame;
    /// comparing allocates nothing, and only a change is copied). Quick successive edits form
    /// one undo step. Returns whether anything changed.
    pub fn record_edits(&mut self) -> bool {
        if self.project == self.recorded {
            return false;
        }
        let before = std::mem::replace(&mut self.recorded, self.project.clone());
        let coalesce =
            self.last_edit.is_some_and(|t| t.elapsed() < COALESCE) && !self.undo.is_empty();
        if !coalesce {
            self.undo.push(before);
        }
        self.redo.clear();
        self.last_edit = Some(Instant::now());
        self.revision += 1;
        true
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Ends the current edit group, so that the next edit is undone on its own.
    pub fn seal(&mut self) {
        self.last_edit = None;
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub fn undo(&mut self) {
        if let Some(previous) = self.undo.pop() {
            self.redo
                .push(std::mem::replace(&mut self.project, previous));
            self.restored();
        }
    }

    pub fn redo(&mut self) {
        if let Some(next) = self.redo.pop() {
            self.undo.push(std::mem::replace(&mut self.project, next));
            self.restored();
        }
    }

    /// After undo or redo: the restored project is the new base, and a change.
    fn restored(&mut self) {
        self.recorded = self.project.clone();
        self.revision += 1;
        self.seal();
    }

    /// Saves atomically (the previous file is kept as a backup); on failure nothing changes.
    pub fn save_to(&mut self, path: &Path) -> Result<(), ProjectError> {
        // A picture identity's relative path follows the project into its new folder.
        if let IdentitySource::Picture(picture) = &mut self.project.identity.source {
            picture.rebase(&crate::atomic_file::parent_dir(path));
        }
        io::save(&self.project, path)?;
        self.path = Some(path.to_path_buf());
        self.saved = self.project.clone();
        Ok(())
    }

    /// Where unsaved changes are kept in case the app dies: beside the project, or in the
    /// config folder for an untitled one.
    pub fn recovery_path(&self) -> Option<PathBuf> {
        match &self.path {
            Some(p) => Some(p.with_extension("recovery.ron")),
            None => crate::app_settings::config_path()?
                .parent()
                .map(|d| d.join("untitled.recovery.ron")),
        }
    }

    pub fn write_recovery(&self) -> Result<(), ProjectError> {
        match self.recovery_path() {
            Some(path) if self.is_dirty() => io::save(&self.project, &path),
            _ => Ok(()),
        }
    }

    pub fn remove_recovery(&self) {
        if let Some(path) = self.recovery_path() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The store of this project's images (beside the file), once it is saved.
    pub fn images_store(&self) -> Option<ImagesStore> {
        self.path.as_deref().map(ImagesStore::beside)
    }
}
