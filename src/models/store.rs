//! Memory-mapped safetensors shards with tensor-level error messages, and a VarBuilder backend
//! that serves the names a model asks for from differently named (or fused) checkpoint tensors.

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::names::Source;
use crate::flux::error::to_candle;
use crate::flux::weights::LoadedBytes;

/// The storage dtypes a weight may have; candle upcasts each to the run's dtype.
const WEIGHT_DTYPES: [safetensors::Dtype; 5] = [
    safetensors::Dtype::F32,
    safetensors::Dtype::F16,
    safetensors::Dtype::BF16,
    safetensors::Dtype::F8_E4M3,
    safetensors::Dtype::F64,
];

/// The tensors of one checkpoint component, spread over one or more safetensors files.
pub struct TensorStore {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl TensorStore {
    /// Maps every file and reads its header; a truncated or corrupt file is named in the error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            // SAFETY: the file is only read; candle validates the header and the data offsets.
            let st = unsafe { MmapedSafetensors::new(path) }.with_context(|| {
                format!(
                    "{} is not a readable safetensors file (truncated or corrupt?)",
                    path.display()
                )
            })?;
            for (name, _) in st.tensors() {
                index.insert(name, files.len());
            }
            files.push((path.clone(), st));
        }
        Ok(Self { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Every tensor's name and how many values it holds, from the headers (nothing is read).
    pub fn value_counts(&self) -> impl Iterator<Item = (String, usize)> + '_ {
        self.files
            .iter()
            .flat_map(|(_, st)| st.tensors())
            .map(|(name, view)| (name, view.shape().iter().product()))
    }

    /// The file that holds `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].0.as_path())
    }

    fn describe_files(&self) -> String {
        let names: Vec<_> = self
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        names.join(", ")
    }

    /// The storage dtypes of the tensors (`BF16`, `F8_E4M3`, ...) with how many values each
    /// holds, the most common first: the first is the checkpoint's dtype, the rest are the
    /// few tensors kept wider (norms, biases) in mixed files.
    pub fn stored_dtypes(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, st) in &self.files {
            for (_, view) in st.tensors() {
                let values: usize = view.shape().iter().product();
                *counts.entry(format!("{:?}", view.dtype())).or_default() += values;
            }
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    pub fn shape(&self, name: &str) -> Result<Shape> {
        let &i = self.index.get(name).with_context(|| {
            format!("tensor `{name}` is missing from {}", self.describe_files())
        })?;
        let view = self.files[i].1.get(name)?;
        Ok(Shape::from(view.shape()))
    }

    /// Loads `name` and converts it to `dtype` on `dev`: bf16, f16, f32 and fp8 (e4m3fn)
    /// checkpoints all load into the run's dtype, so a file's storage dtype never matters.
    /// Integer tensors are refused: candle would convert them to floats without a word.
    pub fn load(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let &i = self.index.get(name).with_context(|| {
            format!("tensor `{name}` is missing from {}", self.describe_files())
        })?;
        let (path, st) = &self.files[i];
        let stored = st.get(name)?.dtype();
        if !WEIGHT_DTYPES.contains(&stored) {
            bail!(
                "tensor `{name}` in {} is stored as {stored:?}, but weights must be F32, F16, BF16, \
                 F8_E4M3 or F64: the file holds something other than model weights, or was converted wrongly",
                path.display()
            );
        }
        let t = st
            .load(name, dev)
            .with_context(|| format!("cannot read tensor `{name}` from {}", path.display()))?;
        Ok(t.to_dtype(dtype)?)
    }

    /// Loads `name` and checks that it has `expected` shape.
    pub fn load_checked(
        &self,
        name: &str,
        expected: &Shape,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let found = self.shape(name)?;
        if &found != expected {
            bail!(
                "tensor `{name}` in {} has shape {:?}, expected {:?}",
                self.file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                found.dims(),
                expected.dims()
            );
        }
        self.load(name, dtype, dev)
    }
}

/// Serves each requested name through a [`Source`] rule over a [`TensorStore`].
pub struct RemappedBackend {
    store: TensorStore,
    rule: Box<dyn Fn(&str) -> Source + Send + Sync>,
    loaded: LoadedBytes,
}

impl RemappedBackend {
    pub fn new(store: TensorStore, rule: impl Fn(&str) -> Source + Send + Sync + 'static) -> Self {
        Self {
            store,
            rule: Box::new(rule),
            loaded: LoadedBytes::default(),
        }
    }

    /// A VarBuilder over this backend, and the count of the bytes it has loaded.
    pub fn into_var_builder(
        self,
        dtype: DType,
        dev: &Device,
    ) -> (VarBuilder<'static>, LoadedBytes) {
        let loaded = self.loaded.clone();
        (
            VarBuilder::from_backend(Box::new(self), dtype, dev.clone()),
            loaded,
        )
    }

    fn fetch(&self, wanted: &str, shape: &Shape, dtype: DType, dev: &Device) -> Result<Tensor> {
        let source = (self.rule)(wanted);
        let rows = |n: usize| -> Result<Shape> {
            let mut dims = shape.dims().to_vec();
            match dims.first_mut() {
                Some(d) if *d % n == 0 => *d /= n,
                _ => bail!(
                    "`{wanted}`: shape {:?} does not split into {n} parts",
                    shape.dims()
                ),
            }
            Ok(Shape::from(dims))
        };
        let t = match &source {
            Source::Same(name) => self.store.load_checked(name, shape, dtype, dev)?,
            Source::Rows(parts) => {
                let mut tensors = Vec::with_capacity(parts.len());
                let mut dims = shape.dims().to_vec();
                for (name, len) in parts {
                    dims[0] = *len;
                    tensors.push(self.store.load_checked(
                        name,
                        &Shape::from(dims.clone()),
                        dtype,
                        dev,
                    )?);
                }
                Tensor::cat(&tensors, 0)?
            }
            Source::SwappedHalves(name) => {
                let t = self.store.load_checked(name, shape, dtype, dev)?;
                let half = rows(2)?.dims()[0];
                Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?
            }
            Source::Squeezed(name) => {
                let matrix = Shape::from(&shape.dims()[..2]);
                let t = self.store.load_checked(name, &matrix, dtype, dev)?;
                t.reshape(shape)?
            }
        };
        Ok(t)
    }
}

impl SimpleBackend for RemappedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.fetch(name, &s, dtype, dev).map_err(to_candle)?;
        self.loaded.add_tensor(&t);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match (self.rule)(name) {
            Source::Same(n) => {
                let t = self.store.load(&n, dtype, dev).map_err(to_candle)?;
                self.loaded.add_tensor(&t);
                Ok(t)
            }
            _ => Err(candle_core::Error::Msg(format!(
                "`{name}` needs a known shape to load"
            ))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.rule)(name).names().all(|n| self.store.contains(n))
    }
}

/// A VarBuilder that serves every name as it is stored, and the count of the bytes it loaded.
pub fn plain_var_builder(
    store: TensorStore,
    dtype: DType,
    dev: &Device,
) -> (VarBuilder<'static>, LoadedBytes) {
    RemappedBackend::new(store, |name| Source::Same(name.to_string())).into_var_builder(dtype, dev)
}
