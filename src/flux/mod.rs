//! The FLUX.1 transformer, re-typed from candle-transformers' `flux::model` with one addition:
//! an [`AttentionHook`] seam in every block through which CharaConsist observes and steers attention.
//! Its layers are built through [`Weights`], so the same model runs dense and GGUF-quantized weights.

pub mod attention;
pub mod config;
pub mod cpu_attention;
mod cpu_linear;
pub mod error;
pub mod gelu;
pub mod heads;
pub mod hook;
pub mod linear;
pub mod model;
pub mod modulate;
pub mod rope;
mod row_sums;
pub mod vexp;
pub mod weights;

pub use config::FluxConfig;
pub use hook::{AttentionHook, AttentionRequest, BlockCtx, BlockKind, ExtraKv, QkvView};
pub use model::{Flux, LockstepInput, StepInput, TokenLayout};
pub use weights::{GgufWeights, Weights};
