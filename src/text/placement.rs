//! The text encoders as a job uses them: optionally kept on the CPU (T5-XXL is 9.5 GB in bf16,
//! more than the GPU can spare next to the transformer), optionally dropped once a job's prompts
//! are encoded and reloaded only when a later job brings a prompt not seen before.

use anyhow::Result;
use candle_core::{DType, Device};
use std::collections::HashMap;

use super::encoders::{PromptEmbedding, TextEncoders};
use super::tokens::PromptTokenizers;
use crate::models::load;
use crate::models::source::ModelSource;

/// Where the text encoders live and whether they stay loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// Keep T5 and CLIP on the CPU; their outputs are moved to the run's device.
    pub on_cpu: bool,
    /// Drop T5 and CLIP after a job's prompts are encoded; reload them when a prompt that is
    /// not cached needs them.
    pub free_after_encoding: bool,
}

/// T5 and CLIP, loaded or not, with the prompt embeddings of the current job.
pub struct PromptEncoder {
    source: ModelSource,
    dtype: DType,
    device: Device,
    options: TextOptions,
    encoders: Option<TextEncoders>,
    /// The current job's embeddings, on the encoders' device and in their dtype.
    cache: HashMap<String, PromptEmbedding>,
    loads: usize,
}

impl PromptEncoder {
    /// Loads the encoders of `source` now, so that a broken file fails at load time even when
    /// they are freed later. T5 overflows in f16, so an f16 run encodes in bf16.
    pub fn load(
        source: &ModelSource,
        run_dtype: DType,
        run_device: &Device,
        options: TextOptions,
    ) -> Result<Self> {
        let mut encoder = Self {
            source: source.clone(),
            dtype: match run_dtype {
                DType::F16 => DType::BF16,
                d => d,
            },
            device: match options.on_cpu {
                true => Device::Cpu,
                false => run_device.clone(),
            },
            options,
            encoders: None,
            cache: HashMap::new(),
            loads: 0,
        };
        encoder.loaded()?;
        Ok(encoder)
    }

    fn loaded(&mut self) -> Result<&mut TextEncoders> {
        if self.encoders.is_none() {
            let models = match &self.source {
                ModelSource::Repo(layout) => {
                    load::text::from_repo(layout, self.dtype, &self.device)?
                }
                ModelSource::Files(files) => {
                    load::text::from_files(&files.t5, &files.clip, self.dtype, &self.device)?
                }
            };
            self.loads += 1;
            self.encoders = Some(TextEncoders::new(models, self.dtype, &self.device));
        }
        Ok(self.encoders.as_mut().expect("loaded above"))
    }

    /// Starts a job: keeps the cached embeddings of `prompts`, encodes the others, then frees
    /// the encoders if so configured.
    pub fn begin_job(&mut self, tokenizers: &PromptTokenizers, prompts: &[&str]) -> Result<()> {
        self.cache.retain(|p, _| prompts.contains(&p.as_str()));
        for prompt in prompts {
            self.encode(tokenizers, prompt)?;
        }
        if self.options.free_after_encoding {
            self.encoders = None;
        }
        Ok(())
    }

    /// The embedding of `prompt`, from this job's cache or encoded now (reloading the encoders
    /// if they were freed; they are not freed again before the next job starts).
    pub fn encode(
        &mut self,
        tokenizers: &PromptTokenizers,
        prompt: &str,
    ) -> Result<PromptEmbedding> {
        if let Some(emb) = self.cache.get(prompt) {
            return Ok(emb.clone());
        }
        let emb = self.loaded()?.encode(tokenizers, prompt)?;
        self.cache.insert(prompt.to_string(), emb.clone());
        Ok(emb)
    }

    /// The encoders, when loaded.
    pub fn encoders(&self) -> Option<&TextEncoders> {
        self.encoders.as_ref()
    }

    /// How many times the encoders were loaded.
    pub fn loads(&self) -> usize {
        self.loads
    }

    /// The bytes of T5's and CLIP's weights on `device`: zero while freed or kept elsewhere.
    pub fn bytes_on(&self, device: &Device) -> (usize, usize) {
        match &self.encoders {
            Some(e) if e.device().same_device(device) => e.bytes(),
            _ => (0, 0),
        }
    }
}
