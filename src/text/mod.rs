//! Text as FLUX.1 reads it: prompts to tokens, tokens to embeddings, and where the encoders live
//! while a job runs.

mod encoders;
mod placement;
mod tokens;

pub use encoders::{PromptEmbedding, TextEncoders};
pub use placement::{PromptEncoder, TextOptions};
pub use tokens::{
    t5_len_for, PromptTokenizers, T5Ids, CLIP_MAX_TOKENS, T5_LEN_DEV, T5_LEN_SCHNELL,
};
