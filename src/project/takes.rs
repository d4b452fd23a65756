//! Takes: every render of an image is kept (see [`super::images`]); the document says which one
//! is active and which the user deleted, so choosing and deleting are edits like any other
//! (saved with the project, undone by undo). A deleted take's files are removed when the project
//! is saved.

use serde::{Deserialize, Serialize};

/// A take as the choice sees it: its number (the images store's `RenderedImage` is one).
pub trait Numbered {
    fn take_number(&self) -> u32;
}

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
pub enum Active<'a, T> {
    /// Nothing rendered (or every take deleted).
    None,
    Take(&'a T),
    /// The chosen take's files are gone (or cannot be read): shown as missing, never as empty.
    Missing(u32),
}

impl<'a, T> Active<'a, T> {
    pub fn take(self) -> Option<&'a T> {
        match self {
            Active::Take(t) => Some(t),
            _ => None,
        }
    }
}

/// The takes a user sees, oldest first: those not deleted.
pub fn visible<'a, T: Numbered>(takes: &'a [T], choice: Option<&TakeChoice>) -> Vec<&'a T> {
    let mut shown: Vec<&T> = takes
        .iter()
        .filter(|t| choice.is_none_or(|c| !c.deleted.contains(&t.take_number())))
        .collect();
    shown.sort_by_key(|t| t.take_number());
    shown
}

/// The active take of an image whose takes on disk are `takes`.
pub fn active<'a, T: Numbered>(takes: &'a [T], choice: Option<&TakeChoice>) -> Active<'a, T> {
    let shown = visible(takes, choice);
    match choice.and_then(|c| c.active) {
        Some(id) => match shown.iter().find(|t| t.take_number() == id) {
            Some(t) => Active::Take(t),
            None => Active::Missing(id),
        },
        None => shown.last().map_or(Active::None, |t| Active::Take(t)),
    }
}
