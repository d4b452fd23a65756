//! Finding checkpoints on disk and loading their tensors under the names our models ask for.

pub mod discovery;
pub mod layout;
pub mod names;
pub mod store;
pub mod tiny;

pub use layout::RepoLayout;
pub use store::{RemappedBackend, TensorStore};
