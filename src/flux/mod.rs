//! The FLUX.1 transformer, re-typed from candle-transformers' `flux::model` with one addition:
//! an [`AttentionHook`] seam in every block through which CharaConsist observes and steers attention.

pub mod attention;
pub mod config;
pub mod hook;
pub mod model;
pub mod rope;

pub use config::FluxConfig;
pub use hook::{AttentionHook, AttentionRequest, BlockCtx, BlockKind, ExtraKv, QkvView};
pub use model::{Flux, StepInput, TokenLayout};
