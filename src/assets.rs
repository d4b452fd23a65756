//! The files of assets/ built into the library: FLUX.1's tokenizers (assets/tokenizers, see its
//! README), which the text module falls back to and the tiny repositories are written with.

pub(crate) const T5_TOKENIZER_JSON: &[u8] =
    include_bytes!("../assets/tokenizers/t5-v1_1-xxl/tokenizer.json");
pub(crate) const CLIP_TOKENIZER_JSON: &[u8] =
    include_bytes!("../assets/tokenizers/clip-vit-large-patch14/tokenizer.json");
