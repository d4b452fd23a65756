//! The storyboard document: a RON file beside the images rendered for it.
//!
//! [`model`] is the document itself, [`io`] loads and saves it (with line and column in parse
//! errors, and atomic saves), and [`import`] reads the reference implementation's prompt files.

pub mod import;
pub mod io;
pub mod model;

pub use import::{import, import_file};
pub use io::{images_dir, load, parse, save, ProjectError};
pub use model::{IdentityShot, Panel, Project, RenderSettings, Scene};
