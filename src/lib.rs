//! charaboard: consistent-character storyboards with FLUX.1 and CharaConsist.

pub mod app_settings;
pub mod assets;
pub mod bench;
pub mod consist;
pub mod device;
pub mod export;
pub mod flux;
pub mod models;
pub mod pipeline;
pub mod project;
pub mod prompts;
pub mod sampler;
pub mod text;
pub mod ui;
pub mod vae;
pub mod worker;
