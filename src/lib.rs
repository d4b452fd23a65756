//! charaboard: consistent-character storyboards with FLUX.1 and CharaConsist.
//!
//! Data flows one way: prompts -> tokens (text) -> latents under a steered transformer (flux,
//! sampler, consist) -> pixels (vae) -> panels (render, project::images) -> sheets (export).

pub mod app_settings;
pub mod assets;
pub mod atomic_file;
pub mod cli;
pub mod compute_pool;
pub mod consist;
pub mod cpu_slices;
pub mod device;
pub mod digest;
pub(crate) mod dispatch;
pub mod export;
pub mod flux;
pub mod heap_meter;
pub mod heap_policy;
pub mod invert;
pub mod limits;
pub mod memory_plan;
pub mod models;
pub mod overlay;
pub mod picture;
pub mod pipeline;
pub mod project;
pub mod render;
pub mod sampler;
pub mod text;
pub mod ui;
pub mod vae;
pub mod worker;
