//! Takes: every render of an image is kept (see [`super::images`]); the document says which one
//! is active and which the user deleted, so choosing and deleting are edits like any other
//! (saved with the project, undone by undo). A deleted take's files are removed when the project
//! is saved.

use serde::{Deserialize, Serialize};

use super::images::RenderedImage;

/// The user's choice among one image's takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeChoice {
    /// The take shown and exported; `None` is the newest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<u32>,
    /// Takes hidden by the user; their files go when the project is saved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<u32>,
}

impl TakeChoice {
    pub fn is_empty(&self) -> bool {
        self.active.is_none() && self.deleted.is_empty()
    }
}

/// Which take of an image is active.
#[derive(Clone, Copy)]
pub enum Active<'a> {
    /// Nothing rendered (or every take deleted).
    None,
    Take(&'a RenderedImage),
    /// The chosen take's files are gone (or cannot be read): shown as missing, never as empty.
    Missing(u32),
}

impl<'a> Active<'a> {
    pub fn take(self) -> Option<&'a RenderedImage> {
        match self {
            Active::Take(t) => Some(t),
            _ => None,
        }
    }
}

/// The takes a user sees, oldest first: those not deleted.
pub fn visible<'a>(
    takes: &'a [RenderedImage],
    choice: Option<&TakeChoice>,
) -> Vec<&'a RenderedImage> {
    let mut shown: Vec<&RenderedImage> = takes
        .iter()
        .filter(|t| choice.is_none_or(|c| !c.deleted.contains(&t.take)))
        .collect();
    shown.sort_by_key(|t| t.take);
    shown
}

/// The active take of an image whose takes on disk are `takes`.
pub fn active<'a>(takes: &'a [RenderedImage], choice: Option<&TakeChoice>) -> Active<'a> {
    let shown = visible(takes, choice);
    match choice.and_then(|c| c.active) {
        Some(id) => match shown.iter().find(|t| t.take == id) {
            Some(t) => Active::Take(t),
            None => Active::Missing(id),
        },
        None => shown.last().map_or(Active::None, |t| Active::Take(t)),
    }
}
