//! The loaders of FLUX.1's weights: each opens one component's files, checks what they hold,
//! and builds the model (ours for the transformer, candle-transformers' for the others) with
//! the bytes its weights take, counted as they load because candle's models do not expose them.

pub mod text;
pub mod transformer;
pub mod vae;
