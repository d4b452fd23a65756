//! FLUX.1 transformers stored as GGUF (city96's `flux1-dev-Q4_0.gguf` and the like): BFL tensor
//! names, matmul weights in GGML quantizations, norms and biases in F32/F16. The header tells
//! what the file is, its config (through the same shape rules as safetensors) and whether every
//! quantization can run; only then are the tensors read.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::quantized_var_builder;
use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use super::formats::{classify_names, FileKind};
use super::infer::{self, Shapes};
use crate::flux::{Flux, FluxConfig, GgufWeights, Weights};

/// The quantizations the transformer runs: those of the FLUX.1 GGUFs people download, all of
/// which candle multiplies on CPU, CUDA and Metal.
pub const SUPPORTED: [GgmlDType; 10] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q6K,
    GgmlDType::Q5K,
    GgmlDType::Q4K,
    GgmlDType::Q5_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
];

const SUPPORTED_HINT: &str =
    "use a Q8_0, Q6_K, Q5_K, Q4_K, Q5_0, Q4_1 or Q4_0 file (or F16/BF16/F32), as city96's FLUX.1 GGUFs come";

/// Whether `path` is named like a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The header of a GGUF file: tensor names, shapes and quantizations, no data.
pub struct GgufHeader {
    path: PathBuf,
    content: gguf_file::Content,
}

impl GgufHeader {
    pub fn read(path: &Path) -> Result<Self> {
        // Buffered: candle reads the header a few bytes at a time.
        let mut file = BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        let unreadable = || {
            format!(
                "{} is not a readable GGUF file (truncated, corrupt, or a quantization candle cannot read; {SUPPORTED_HINT})",
                path.display()
            )
        };
        // candle 0.11 divides by the header's `general.alignment` unchecked, so a file that
        // sets it to 0 panics the reader; that panic is this file's error, not the app's.
        let content =
            std::panic::catch_unwind(AssertUnwindSafe(|| gguf_file::Content::read(&mut file)))
                .map_err(|_| {
                    anyhow!("the GGUF reader failed on its header (general.alignment is 0?)")
                })
                .with_context(unreadable)?
                .with_context(unreadable)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// Every tensor's name, dims and quantization, from the header.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[usize], GgmlDType)> {
        self.content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.as_str(), info.shape.dims(), info.ggml_dtype))
    }

    /// The file's kind: a FLUX transformer under BFL names (the only GGUF this app loads).
    pub fn classify(&self) -> Result<FileKind> {
        self.flux_prefix()
            .map(|prefix| FileKind::FluxGguf { prefix })
    }

    /// The prefix before the BFL names of a FLUX transformer; other files are an error that
    /// shows some of their tensor names.
    fn flux_prefix(&self) -> Result<String> {
        if let Some(FileKind::FluxBfl { prefix }) = classify_names(self.names()) {
            return Ok(prefix);
        }
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        let shown: Vec<&str> = names.iter().take(5).copied().collect();
        bail!(
            "{} is a GGUF file but not a FLUX.1 transformer: its {} tensors include {}{} \
             (expected BFL names such as double_blocks.0.img_attn.qkv.weight; GGUF text encoders \
             and VAEs are not supported, use their safetensors files)",
            self.path.display(),
            names.len(),
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            },
            if names.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )
    }

    /// Fails on the first tensor (by name) whose quantization is not in [`SUPPORTED`].
    pub fn check_quantizations(&self) -> Result<()> {
        let mut bad: Vec<(&String, GgmlDType)> = self
            .content
            .tensor_infos
            .iter()
            .filter(|(_, info)| !SUPPORTED.contains(&info.ggml_dtype))
            .map(|(name, info)| (name, info.ggml_dtype))
            .collect();
        bad.sort_by(|a, b| a.0.cmp(b.0));
        if let Some((name, dtype)) = bad.first() {
            bail!(
                "GGUF quantization {dtype:?} of tensor `{name}` in {} is not supported{}; {SUPPORTED_HINT}",
                self.path.display(),
                match bad.len() {
                    1 => String::new(),
                    n => format!(" ({} more tensors are like it)", n - 1),
                }
            );
        }
        Ok(())
    }

    /// The transformer config, inferred from the tensor shapes as for safetensors files.
    pub fn flux_config(&self, prefix: &str) -> Result<FluxConfig> {
        let infos = &self.content.tensor_infos;
        infer::flux_config(&Shapes::from_fn(&self.path, |n| {
            infos
                .get(&format!("{prefix}{n}"))
                .map(|i| i.shape.dims().to_vec())
        }))
    }

    /// The quantizations (`Q8_0`, `F32`, ...) with how many values each holds, the most
    /// common first, as [`super::store::TensorStore::stored_dtypes`] reports safetensors.
    pub fn stored_dtypes(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += info.shape.elem_count();
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }
}

/// Loads a GGUF FLUX transformer onto `dev`; matmul weights stay quantized, everything else
/// runs in `dtype`. Also returns the bytes its weights take on `dev`.
pub fn load_transformer(path: &Path, dtype: DType, dev: &Device) -> Result<(Flux, usize)> {
    let header = GgufHeader::read(path)?;
    let prefix = header.flux_prefix()?;
    header.check_quantizations()?;
    let cfg = header.flux_config(&prefix)?;
    let qvb = quantized_var_builder::VarBuilder::from_gguf(path, dev)
        .with_context(|| format!("cannot read the tensors of {}", path.display()))?;
    let weights = GgufWeights::new(qvb, path, &prefix, dtype);
    let loaded = weights.loaded();
    let flux = Flux::from_weights(&cfg, Weights::Gguf(weights))
        .with_context(|| format!("loading the transformer from {}", path.display()))?;
    Ok((flux, loaded.get()))
}

/// Writes `tensors` as a GGUF file, each in the quantization `quant` picks for it (which must
/// fit the tensor: quantized types need the last dimension to be a multiple of their block).
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    quant: impl Fn(&str, &Tensor) -> GgmlDType,
) -> Result<()> {
    let quantized: Vec<(&str, QTensor)> = tensors
        .iter()
        .map(|(name, t)| {
            let q = quant(name, t);
            let qt = QTensor::quantize(&t.to_dtype(DType::F32)?, q)
                .with_context(|| format!("cannot store `{name}` {:?} as {q:?}", t.dims()))?;
            Ok((name.as_str(), qt))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (*n, q)).collect();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    gguf_file::write(&mut file, &[], &refs)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The quantization city96-style files use for a tensor: `quant` for matrices whose rows split
/// into whole blocks, F32 for the rest (norm scales, biases).
pub fn city96_quant(quant: GgmlDType) -> impl Fn(&str, &Tensor) -> GgmlDType {
    move |_, t| match t.dims() {
        [_, inner] if inner % quant.block_size() == 0 => quant,
        _ => GgmlDType::F32,
    }
}
