//! Tokens to embeddings: T5-XXL hidden states and the CLIP-L pooled output, as FLUX.1 consumes
//! them, from the encoders `models::load::text` loads.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::Module;

use super::tokens::PromptTokenizers;
use crate::models::load::text::Encoders;

/// The two text encoders of FLUX.1.
pub struct TextEncoders {
    models: Encoders,
    dtype: DType,
    device: Device,
}

/// A prompt as the transformer reads it.
#[derive(Clone)]
pub struct PromptEmbedding {
    /// T5 hidden states (1, t5_len, d_model).
    pub t5: Tensor,
    /// CLIP pooled output (1, embed_dim).
    pub pooled: Tensor,
    /// Prompt tokens that did not fit into the T5 length.
    pub dropped_tokens: usize,
}

impl PromptEmbedding {
    /// The embedding in the run's dtype on the run's device (the encoders may be elsewhere).
    pub fn into_run(self, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            t5: self.t5.to_device(device)?.to_dtype(dtype)?,
            pooled: self.pooled.to_device(device)?.to_dtype(dtype)?,
            dropped_tokens: self.dropped_tokens,
        })
    }
}

impl TextEncoders {
    /// `models` as loaded in `dtype` onto `device`.
    pub fn new(models: Encoders, dtype: DType, device: &Device) -> Self {
        Self {
            models,
            dtype,
            device: device.clone(),
        }
    }

    /// The bytes of T5's and CLIP's weights.
    pub fn bytes(&self) -> (usize, usize) {
        (self.models.t5_bytes, self.models.clip_bytes)
    }

    /// Where the encoders' weights are.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn encode(
        &mut self,
        tokenizers: &PromptTokenizers,
        prompt: &str,
    ) -> Result<PromptEmbedding> {
        let t5_ids = tokenizers.t5_ids(prompt)?;
        let ids = Tensor::new(t5_ids.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let t5 = self.models.t5.forward(&ids)?.to_dtype(self.dtype)?;
        let clip_ids = tokenizers.clip_ids(prompt)?;
        let ids = Tensor::new(clip_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let pooled = self.models.clip.forward(&ids)?.to_dtype(self.dtype)?;
        Ok(PromptEmbedding {
            t5,
            pooled,
            dropped_tokens: t5_ids.dropped,
        })
    }
}
