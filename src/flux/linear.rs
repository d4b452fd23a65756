//! One linear layer type for dense and GGUF-quantized weights, so that the hookable transformer
//! is written once and runs either kind of checkpoint.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::cpu_linear::BiasedProduct;

/// A dense `candle_nn::Linear`, or a quantized one whose matmul runs on GGML blocks.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized(candle_transformers::quantized_nn::Linear),
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(l) => match l.bias() {
                Some(bias) if fused(xs, l.weight()) => {
                    xs.contiguous()?
                        .apply_op3_no_bwd(l.weight(), bias, &BiasedProduct)
                }
                _ => l.forward(xs),
            },
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

/// Whether the one-pass CPU product takes this layer: f32 on the CPU, the weight as loaded.
fn fused(xs: &Tensor, weight: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu)
        && xs.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.is_contiguous()
        && xs.rank() >= 2
}
