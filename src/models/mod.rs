//! Finding checkpoints on disk and loading their tensors under the names our models ask for.

pub mod configs;
pub mod discovery;
pub mod formats;
pub mod gguf;
pub mod infer;
pub mod inventory;
pub mod layout;
pub mod load;
pub mod names;
pub mod source;
pub mod store;
pub mod tiny;
pub mod tiny_files;

pub use layout::RepoLayout;
pub use source::{ComponentFiles, ModelSource};
pub use store::{RemappedBackend, TensorStore};
