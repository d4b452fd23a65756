//! The storyboard document: a RON file beside the images rendered for it.
//!
//! [`model`] is the document itself, [`io`] loads and saves it (with line and column in parse
//! errors, and atomic saves), [`import`] reads the reference implementation's prompt files,
//! [`painted_mask`] is a foreground the user painted over an identity, [`plan`] turns the document into the storyboard plan a render executes, and [`images`] owns
//! the folder of rendered images.

pub mod images;
pub mod import;
pub mod io;
pub mod model;
pub mod painted_mask;
pub mod plan;
pub mod shot;
pub mod takes;
pub mod timing;

pub use images::{images_dir, ImagesStore, RenderedImage};
pub use import::{import, import_file};
pub use io::{load, parse, sample, save, ProjectError};
pub use model::{
    Character, IdentityShot, IdentitySource, Panel, PictureIdentity, Project, RenderSettings, Scene,
};
pub use plan::plan;
pub use shot::{CameraAngle, ShotSize};
