//! One linear layer type for dense and GGUF-quantized weights, so that the hookable transformer
//! is written once and runs either kind of checkpoint.

use candle_core::{bail, DType, Device, Module, Result, Storage, Tensor, D};

use super::cpu_linear::{BiasedProduct, Product};
use crate::cpu_slices::{contiguous_f32, transposed};

/// A dense `candle_nn::Linear`, a dense f32 layer on the CPU with its weight stored transposed,
/// or a quantized one whose matmul runs on GGML blocks.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Cpu(CpuLinear),
    Quantized(candle_transformers::quantized_nn::Linear),
}

/// A dense f32 layer on the CPU whose weight is kept as `W^T` (in, out), row-major. `gemm`
/// copies a layer's weight into panels for its kernels at every product; from `W` (out, in)
/// that copy gathers one element per row and took 6 % of a head-128 storyboard, from `W^T` it
/// copies contiguous runs. The sums, and so the outputs, are the same.
#[derive(Debug, Clone)]
pub struct CpuLinear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl CpuLinear {
    /// The layer `x W^T + b` from `weight` (out, in) and `bias` (out), on the CPU in f32.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let weight_t = {
            let (storage, layout) = weight.storage_and_layout();
            let data = match &*storage {
                Storage::Cpu(cpu) => contiguous_f32(cpu, layout, "linear", "weight")?,
                _ => bail!("linear: a transposed layer's weight must be on the CPU"),
            };
            transposed(data, out_dim, in_dim)
        };
        Ok(Self {
            weight_t: Tensor::from_vec(weight_t, (in_dim, out_dim), weight.device())?,
            bias,
        })
    }

    /// The layer of outputs `start..start + len`.
    fn columns(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            weight_t: self.weight_t.narrow(1, start, len)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.narrow(0, start, len))
                .transpose()?,
        })
    }
}

impl Module for CpuLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if fused(xs) => {
                xs.contiguous()?
                    .apply_op3_no_bwd(&self.weight_t, bias, &BiasedProduct)
            }
            bias => {
                let ys = xs.broadcast_matmul(&self.weight_t)?;
                match bias {
                    Some(bias) => ys.broadcast_add(bias),
                    None => Ok(ys),
                }
            }
        }
    }
}

/// A layer's outputs whose bias is still to be added, by the pass that reads them next (the
/// heads' split, the GELU): the product then skips the pass that wrote the bias rows it
/// accumulated into (3.1 % of a head-128 storyboard). Added there, the bias meets the product's
/// sum as it met it in the output: the same numbers. `bias` is None where it is already in.
#[derive(Debug, Clone)]
pub struct Unbiased {
    pub product: Tensor,
    pub bias: Option<Tensor>,
}

impl Unbiased {
    /// Outputs whose bias is already added.
    pub fn already_biased(product: Tensor) -> Self {
        Self {
            product,
            bias: None,
        }
    }

    /// Outputs `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            product: self.product.narrow(D::Minus1, start, len)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.narrow(0, start, len))
                .transpose()?,
        })
    }

    /// The outputs with their bias, as the layer's `forward` gives them.
    pub fn with_bias(&self) -> Result<Tensor> {
        match &self.bias {
            Some(bias) => self.product.broadcast_add(bias),
            None => Ok(self.product.clone()),
        }
    }

    /// The bias's values, for a CPU kernel that adds them.
    pub fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()
    }
}

impl Linear {
    /// The layer's outputs with the bias left to their consumer ([`Unbiased`]).
    pub fn forward_unbiased(&self, xs: &Tensor) -> Result<Unbiased> {
        self.unbiased(xs, None)
    }

    /// Outputs `start..start + len` of the layer, the bias left to their consumer: on the CPU
    /// only those are computed (their sums are the same as in the whole product's).
    pub fn forward_unbiased_columns(
        &self,
        xs: &Tensor,
        start: usize,
        len: usize,
    ) -> Result<Unbiased> {
        self.unbiased(xs, Some((start, len)))
    }

    fn unbiased(&self, xs: &Tensor, columns: Option<(usize, usize)>) -> Result<Unbiased> {
        match self {
            Linear::Cpu(l) if fused(xs) => {
                let l = match columns {
                    Some((start, len)) => l.columns(start, len)?,
                    None => l.clone(),
                };
                Ok(Unbiased {
                    product: xs.contiguous()?.apply_op2_no_bwd(&l.weight_t, &Product)?,
                    bias: l.bias,
                })
            }
            _ => {
                let ys = self.forward(xs)?;
                Ok(Unbiased::already_biased(match columns {
                    Some((start, len)) => ys.narrow(D::Minus1, start, len)?,
                    None => ys,
                }))
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(l) => l.forward(xs),
            Linear::Cpu(l) => l.forward(xs),
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

/// Whether the one-pass CPU product takes these activations.
fn fused(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && xs.rank() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(k: usize, n: usize) -> Result<(candle_nn::Linear, CpuLinear, Tensor)> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let bias = Tensor::randn(0f32, 1., n, &dev)?;
        let xs = Tensor::randn(0f32, 1., (2, 300, k), &dev)?;
        let cpu = CpuLinear::new(&weight, Some(bias.clone()))?;
        Ok((candle_nn::Linear::new(weight, Some(bias)), cpu, xs))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// With the weight transposed the products are candle's to the bit (hundreds of rows, so
    /// gemm copies the weight into panels, where before it read it in place).
    #[test]
    fn the_transposed_layer_is_candles_linear() -> Result<()> {
        let (candle, cpu, xs) = layer(256, 192)?;
        assert_eq!(max_diff(&cpu.forward(&xs)?, &candle.forward(&xs)?)?, 0.0);
        Ok(())
    }

    /// Some outputs alone, and the outputs with their bias added afterwards, are the same numbers
    /// as the whole layer's, with a bias or without.
    #[test]
    fn some_columns_are_the_whole_layers_columns() -> Result<()> {
        let (candle, cpu, xs) = layer(64, 96)?;
        let unbiased = CpuLinear::new(candle.weight(), None)?;
        let candle_unbiased = candle_nn::Linear::new(candle.weight().clone(), None);
        for (layer, whole) in [
            (cpu.clone(), cpu.forward(&xs)?),
            (unbiased, candle_unbiased.forward(&xs)?),
        ] {
            let layer = Linear::Cpu(layer);
            assert_eq!(max_diff(&layer.forward(&xs)?, &whole)?, 0.0);
            let unbiased = layer.forward_unbiased(&xs)?;
            assert_eq!(max_diff(&unbiased.with_bias()?, &whole)?, 0.0);
            for (start, len) in [(0, 96), (0, 48), (17, 30), (95, 1)] {
                let want = whole.narrow(D::Minus1, start, len)?;
                let part = layer.forward_unbiased_columns(&xs, start, len)?;
                assert_eq!(max_diff(&part.with_bias()?, &want)?, 0.0);
                let narrowed = unbiased.narrow(start, len)?;
                assert_eq!(max_diff(&narrowed.with_bias()?, &want)?, 0.0);
            }
        }
        Ok(())
    }
}
