//! Prompts to tokens with the real T5 and CLIP vocabularies, as FLUX.1 reads them: a
//! repository's own tokenizers, or the shipped ones, so that token counts work without a model.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::assets::{CLIP_TOKENIZER_JSON, T5_TOKENIZER_JSON};
use crate::flux::FluxConfig;
use crate::models::layout::RepoLayout;

/// CLIP's context length; prompts are truncated to it (start and end tokens included).
pub const CLIP_MAX_TOKENS: usize = 77;
/// T5 padding length of FLUX.1-dev, as the reference uses.
pub const T5_LEN_DEV: usize = 512;
/// T5 padding length commonly used with FLUX.1-schnell.
pub const T5_LEN_SCHNELL: usize = 256;
const T5_EOS: u32 = 1;

/// T5's padding length for a transformer: 512 for dev (the guidance embedder's presence), 256
/// for schnell.
pub fn t5_len_for(cfg: &FluxConfig) -> usize {
    match cfg.guidance_embed {
        true => T5_LEN_DEV,
        false => T5_LEN_SCHNELL,
    }
}

/// T5 ids padded with 0 to the model's text length, and how many prompt tokens did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Ids {
    pub ids: Vec<u32>,
    pub dropped: usize,
}

pub struct PromptTokenizers {
    t5: Tokenizer,
    clip: Tokenizer,
    t5_len: usize,
}

fn tokenizer_from_bytes(bytes: &[u8], what: &str) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} tokenizer: {e}"))
}

impl PromptTokenizers {
    /// The tokenizers shipped in assets/, padding T5 to `t5_len`.
    pub fn shipped(t5_len: usize) -> Result<Self> {
        Ok(Self {
            t5: tokenizer_from_bytes(T5_TOKENIZER_JSON, "T5")?,
            clip: tokenizer_from_bytes(CLIP_TOKENIZER_JSON, "CLIP")?,
            t5_len,
        })
    }

    /// The tokenizers of a repository folder: `tokenizer_2/tokenizer.json` for T5 and
    /// `tokenizer/` for CLIP (its vocab.json + merges.txt inside the shipped tokenizer's pipeline,
    /// or a tokenizer.json); a folder that is missing or lacks them falls back to the shipped ones.
    pub fn from_repo(layout: &RepoLayout, t5_len: usize) -> Result<Self> {
        // The shipped tokenizers are parsed only where the folder lacks its own: the T5 one
        // takes a quarter of a second.
        let t5_json = layout.tokenizer_2.join("tokenizer.json");
        let t5 = match t5_json.is_file() {
            true => Tokenizer::from_file(&t5_json)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", t5_json.display()))?,
            false => tokenizer_from_bytes(T5_TOKENIZER_JSON, "T5")?,
        };
        let clip = match clip_from_folder(&layout.tokenizer)? {
            Some(clip) => clip,
            None => tokenizer_from_bytes(CLIP_TOKENIZER_JSON, "CLIP")?,
        };
        Ok(Self { t5, clip, t5_len })
    }

    pub fn t5_len(&self) -> usize {
        self.t5_len
    }

    /// T5 tokens of `text` without the closing `</s>`: the reference's token count.
    pub fn t5_count(&self, text: &str) -> Result<usize> {
        let enc = self
            .t5
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("T5 tokenizer: {e}"))?;
        Ok(enc.get_ids().iter().filter(|&&id| id != T5_EOS).count())
    }

    /// T5 ids as FLUX.1 sees them: truncated to the text length (keeping `</s>`), padded with 0.
    pub fn t5_ids(&self, text: &str) -> Result<T5Ids> {
        let enc = self
            .t5
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("T5 tokenizer: {e}"))?;
        let mut ids: Vec<u32> = enc
            .get_ids()
            .iter()
            .copied()
            .filter(|&id| id != T5_EOS)
            .collect();
        let room = self.t5_len - 1;
        let dropped = ids.len().saturating_sub(room);
        ids.truncate(room);
        ids.push(T5_EOS);
        ids.resize(self.t5_len, 0);
        Ok(T5Ids { ids, dropped })
    }

    /// CLIP ids, truncated to 77 with the start and end tokens kept; not padded (the pooled
    /// output is read at the end token, which a causal encoder computes before any padding).
    pub fn clip_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .clip
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("CLIP tokenizer: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > CLIP_MAX_TOKENS {
            let end = *ids.last().unwrap_or(&0);
            ids.truncate(CLIP_MAX_TOKENS - 1);
            ids.push(end);
        }
        Ok(ids)
    }
}

/// What the shipped CLIP tokenizer.json holds besides its vocabulary and merges (serde skips those).
#[derive(Deserialize)]
struct ClipPipeline {
    added_tokens: Vec<AddedToken>,
    normalizer: NormalizerWrapper,
    pre_tokenizer: PreTokenizerWrapper,
    post_processor: PostProcessorWrapper,
    decoder: DecoderWrapper,
    model: BpeOptions,
}

#[derive(Deserialize)]
struct BpeOptions {
    unk_token: Option<String>,
    continuing_subword_prefix: String,
    end_of_word_suffix: String,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not a UTF-8 path", path.display()))
}

/// A CLIP tokenizer from a repository's `tokenizer/` folder, or `None` if it holds no vocabulary.
fn clip_from_folder(dir: &Path) -> Result<Option<Tokenizer>> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        let t = Tokenizer::from_file(&json)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", json.display()))?;
        return Ok(Some(t));
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !vocab.is_file() || !merges.is_file() {
        return Ok(None);
    }
    // The BPE model comes from the folder; normalizer, pre-tokenizer, post-processor, decoder,
    // special tokens and the BPE's options from the shipped CLIP tokenizer, which is the same
    // CLIP-L pipeline. Its own vocabulary is skipped, not parsed: building the tokenizer through
    // one JSON document took three passes over 5 MB of JSON (a quarter of a second).
    let pipeline: ClipPipeline = serde_json::from_slice(CLIP_TOKENIZER_JSON)?;
    let options = pipeline.model;
    let mut bpe = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
        .continuing_subword_prefix(options.continuing_subword_prefix)
        .end_of_word_suffix(options.end_of_word_suffix)
        .fuse_unk(options.fuse_unk)
        .byte_fallback(options.byte_fallback)
        .ignore_merges(options.ignore_merges);
    if let Some(unk) = options.unk_token {
        bpe = bpe.unk_token(unk);
    }
    let bpe = bpe.build().map_err(|e| {
        anyhow::anyhow!("cannot build a CLIP tokenizer from {}: {e}", dir.display())
    })?;
    let mut t = Tokenizer::new(bpe);
    t.with_normalizer(Some(pipeline.normalizer))
        .map_err(|e| anyhow::anyhow!("CLIP normalizer: {e}"))?;
    t.with_pre_tokenizer(Some(pipeline.pre_tokenizer))
        .with_post_processor(Some(pipeline.post_processor))
        .with_decoder(Some(pipeline.decoder));
    for token in &pipeline.added_tokens {
        if t.token_to_id(&token.content).is_none() {
            bail!(
                "{} lacks CLIP's special token {}",
                vocab.display(),
                token.content
            );
        }
    }
    t.add_special_tokens(pipeline.added_tokens)
        .map_err(|e| anyhow::anyhow!("CLIP special tokens: {e}"))?;
    Ok(Some(t))
}
