//! One linear layer type for dense and GGUF-quantized weights, so that the hookable transformer
//! is written once and runs either kind of checkpoint.

use candle_core::{DType, Module, Result, Tensor};

/// A dense `candle_nn::Linear`, or a quantized one whose matmul runs on GGML blocks.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized(candle_transformers::quantized_nn::Linear),
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(l) => l.forward(xs),
            Linear::Quantized(l) => {
                // Quantized matmuls read f32 (and contiguous) activations only; the result goes
                // back to the run's dtype so the rest of the model does not see the difference.
                let dtype = xs.dtype();
                let ys = l.forward(&xs.to_dtype(DType::F32)?.contiguous()?)?;
                ys.to_dtype(dtype)
            }
        }
    }
}
