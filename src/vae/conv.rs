//! The VAE's convolution, run in the weights' dtype on every device.
//!
//! candle's CPU convolution has no bf16 kernel (it multiplies through a gemm that lacks one),
//! so where [`device::has_native_conv`] says the device cannot convolve a dtype, the operands
//! are widened to f32 for the product and the result narrowed back: what candle's CPU matmul
//! does for bf16, and what a GPU's bf16 convolution (cuDNN's pseudo-bf16: bf16 data, f32
//! accumulation) computes. Weights and activations stay in the run's dtype either way.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::cpu_conv;
use crate::device;

/// A 2-D convolution with bias, loaded from `weight` and `bias` under its prefix.
#[derive(Debug, Clone)]
pub struct Conv {
    inner: candle_nn::Conv2d,
}

impl Conv {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::strided(in_channels, out_channels, kernel, padding, 1, vb)
    }

    /// [`Self::new`] moving `stride` pixels at a time (the encoder's downsampling).
    pub fn strided(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let inner = candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?;
        Ok(Self { inner })
    }
}

impl Module for Conv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let weight = self.inner.weight();
        let cfg = self.inner.config();
        if cpu_conv::takes(xs, weight, cfg.groups) {
            // f32 on the CPU: the bias goes in with the product.
            return cpu_conv::conv2d(xs, weight, self.inner.bias(), geometry(cfg));
        }
        if device::has_native_conv(xs.device(), xs.dtype()) {
            return self.inner.forward(xs);
        }
        let (wide, weight) = (xs.to_dtype(DType::F32)?, weight.to_dtype(DType::F32)?);
        let ys = match cpu_conv::takes(&wide, &weight, cfg.groups) {
            true => cpu_conv::conv2d(&wide, &weight, None, geometry(cfg))?,
            false => wide.conv2d(&weight, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?,
        }
        .to_dtype(xs.dtype())?;
        // Added in the run's dtype, as candle's convolution module adds it.
        match self.inner.bias() {
            None => Ok(ys),
            Some(bias) => ys.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
        }
    }
}

fn geometry(cfg: &Conv2dConfig) -> cpu_conv::Geometry {
    cpu_conv::Geometry {
        padding: cfg.padding,
        stride: cfg.stride,
        dilation: cfg.dilation,
    }
}
