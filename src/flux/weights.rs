//! Where the transformer's weights come from: a dense `VarBuilder` (safetensors, or a VarMap
//! when the tiny model is made) or the quantized tensors of a GGUF file. The model asks both
//! for the same BFL names.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::quantized_var_builder;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::linear::{CpuLinear, Linear};

/// The bytes of the tensors a loader has handed to a model, counted as they are loaded: candle's
/// models do not expose their tensors, so this is how a component's memory is known.
#[derive(Debug, Clone, Default)]
pub struct LoadedBytes(Arc<AtomicUsize>);

impl LoadedBytes {
    pub fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_tensor(&self, t: &Tensor) {
        self.add(t.elem_count() * t.dtype().size_in_bytes());
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The quantized tensors of one GGUF file, under a name prefix (like `VarBuilder::pp`), with the
/// file kept for errors and the run's dtype for the tensors that are not matmul weights.
#[derive(Clone)]
pub struct GgufWeights {
    qvb: quantized_var_builder::VarBuilder,
    file: Arc<PathBuf>,
    prefix: String,
    dtype: DType,
    loaded: LoadedBytes,
}

impl GgufWeights {
    /// `qvb` as read from `file` (at its root: pass the file's name prefix as `prefix`);
    /// norm scales and biases are dequantized to `dtype`.
    pub fn new(
        qvb: quantized_var_builder::VarBuilder,
        file: &Path,
        prefix: &str,
        dtype: DType,
    ) -> Self {
        Self {
            qvb,
            file: Arc::new(file.to_path_buf()),
            prefix: prefix.to_string(),
            dtype,
            loaded: LoadedBytes::default(),
        }
    }

    /// The bytes of the weights built from this file so far (quantized matrices at their
    /// stored size; F32/F16/BF16 matrices as the f32 candle multiplies them in).
    pub fn loaded(&self) -> LoadedBytes {
        self.loaded.clone()
    }

    fn pp(&self, name: &str) -> Self {
        Self {
            prefix: format!("{}{name}.", self.prefix),
            ..self.clone()
        }
    }

    /// The tensor `name` under this prefix, checked against `dims`. candle's own lookup names
    /// neither the file nor the full tensor name, so the checks are made here.
    fn qtensor(&self, dims: &[usize], name: &str) -> Result<Arc<QTensor>> {
        let full = format!("{}{name}", self.prefix);
        if !self.qvb.contains_key(&full) {
            candle_core::bail!(
                "tensor `{full}` is missing from {}, expected shape {dims:?}; \
                 is it a complete FLUX.1 transformer under BFL names?",
                self.file.display()
            );
        }
        let t = self.qvb.get_no_shape(&full)?;
        if t.shape().dims() != dims {
            candle_core::bail!(
                "tensor `{full}` in {} has shape {:?}, expected {dims:?}; \
                 the file does not match the architecture inferred from its other tensors",
                self.file.display(),
                t.shape().dims()
            );
        }
        Ok(t)
    }

    /// `name` dequantized to `dtype`.
    fn dequantized(&self, dims: &[usize], name: &str, dtype: DType) -> Result<Tensor> {
        let t = self
            .qtensor(dims, name)?
            .dequantize(self.qvb.device())?
            .to_dtype(dtype)?;
        self.loaded.add_tensor(&t);
        Ok(t)
    }
}

/// The source of a model's weights; see the module docs.
#[derive(Clone)]
pub enum Weights<'a> {
    Dense(VarBuilder<'a>),
    Gguf(GgufWeights),
}

impl Weights<'_> {
    pub fn pp(&self, name: impl ToString) -> Self {
        match self {
            Weights::Dense(vb) => Weights::Dense(vb.pp(name)),
            Weights::Gguf(g) => Weights::Gguf(g.pp(&name.to_string())),
        }
    }

    /// The dtype activations run in.
    pub fn dtype(&self) -> DType {
        match self {
            Weights::Dense(vb) => vb.dtype(),
            Weights::Gguf(g) => g.dtype,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Weights::Dense(vb) => vb.device(),
            Weights::Gguf(g) => g.qvb.device(),
        }
    }

    /// The linear layer `name` (`name.weight` of shape (out, in), `name.bias` if `bias`) applied
    /// to the tokens. GGUF biases are kept in f32: the quantized matmul adds them before casting
    /// back.
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool, name: &str) -> Result<Linear> {
        self.layer(in_dim, out_dim, bias, name, true)
    }

    /// A linear layer applied to one vector per image (the modulations, the embedders of the
    /// timestep, guidance and pooled text). Its weight stays as stored, (out, in), so gemm's
    /// matrix-vector kernel adds in candle's order, where the transposed weight of a token
    /// layer would take its column-major kernel, which adds in another.
    pub fn vector_linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        name: &str,
    ) -> Result<Linear> {
        self.layer(in_dim, out_dim, bias, name, false)
    }

    fn layer(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        name: &str,
        tokens: bool,
    ) -> Result<Linear> {
        match self {
            Weights::Dense(vb) => {
                let layer = candle_nn::linear_b(in_dim, out_dim, bias, vb.pp(name))?;
                match tokens && vb.device().is_cpu() && vb.dtype() == DType::F32 {
                    true => CpuLinear::new(layer.weight(), layer.bias().cloned()).map(Linear::Cpu),
                    false => Ok(Linear::Dense(layer)),
                }
            }
            Weights::Gguf(g) => {
                let g = g.pp(name);
                let weight = g.qtensor(&[out_dim, in_dim], "weight")?;
                g.loaded.add(match weight.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        weight.shape().elem_count() * DType::F32.size_in_bytes()
                    }
                    _ => weight.storage_size_in_bytes(),
                });
                let bias = match bias {
                    true => Some(g.dequantized(&[out_dim], "bias", DType::F32)?),
                    false => None,
                };
                candle_transformers::quantized_nn::Linear::from_arc(weight, bias)
                    .map(Linear::Quantized)
            }
        }
    }

    /// A 1-D tensor such as a norm scale, in the run's dtype.
    pub fn get(&self, dim: usize, name: &str) -> Result<Tensor> {
        match self {
            Weights::Dense(vb) => vb.get(dim, name),
            Weights::Gguf(g) => g.dequantized(&[dim], name, g.dtype),
        }
    }
}
