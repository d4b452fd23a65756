//! FLUX.1's text encoders, T5 and CLIP, from a repository's `text_encoder_2/` and
//! `text_encoder/` folders or from single files under Hugging Face names.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_transformers::models::clip::text_model::{ClipTextConfig, ClipTextTransformer};
use candle_transformers::models::t5::{self, T5EncoderModel};
use std::path::Path;

use crate::models::configs::{read_json, ClipJsonConfig};
use crate::models::formats::{classify_store, FileKind};
use crate::models::infer::{self, Shapes};
use crate::models::layout::RepoLayout;
use crate::models::store::{plain_var_builder, TensorStore};

/// T5 and CLIP as loaded, with the bytes of each one's weights.
pub struct Encoders {
    pub t5: T5EncoderModel,
    pub clip: ClipTextTransformer,
    pub t5_bytes: usize,
    pub clip_bytes: usize,
}

/// One encoder's tensors and the file or folder they came from (for errors).
struct Part<'a> {
    store: TensorStore,
    from: &'a Path,
}

/// The encoders of a repository folder, configured by their config.json files.
pub fn from_repo(layout: &RepoLayout, dtype: DType, dev: &Device) -> Result<Encoders> {
    let clip_json: ClipJsonConfig = read_json(&layout.text_encoder.config, "CLIP text")?;
    let clip_cfg = clip_json.to_candle(&layout.text_encoder.config)?;
    let t5_cfg: t5::Config = read_json(&layout.text_encoder_2.config, "T5")?;
    build(
        Part {
            store: TensorStore::open(&layout.text_encoder_2.weights)?,
            from: &layout.text_encoder_2.dir,
        },
        &t5_cfg,
        Part {
            store: TensorStore::open(&layout.text_encoder.weights)?,
            from: &layout.text_encoder.dir,
        },
        &clip_cfg,
        dtype,
        dev,
    )
}

/// Single-file encoders (Hugging Face names, as ComfyUI's `t5xxl_fp16.safetensors` and
/// `clip_l.safetensors`), their configs inferred from the tensor shapes.
pub fn from_files(t5: &Path, clip: &Path, dtype: DType, dev: &Device) -> Result<Encoders> {
    let open = |path: &Path, want: FileKind| -> Result<TensorStore> {
        let store = TensorStore::open(&[path.to_path_buf()])?;
        let kind = classify_store(path, &store)?;
        if kind != want {
            bail!(
                "{} is a {} checkpoint, not the {} encoder",
                path.display(),
                kind.role().name(),
                want.role().name()
            );
        }
        Ok(store)
    };
    let t5_store = open(t5, FileKind::T5Encoder)?;
    let t5_cfg = infer::t5_config(&Shapes::new(t5, &t5_store, &FileKind::T5Encoder))?;
    let clip_store = open(clip, FileKind::ClipText)?;
    let clip_cfg = infer::clip_config(&Shapes::new(clip, &clip_store, &FileKind::ClipText))?
        .to_candle(clip)?;
    build(
        Part {
            store: t5_store,
            from: t5,
        },
        &t5_cfg,
        Part {
            store: clip_store,
            from: clip,
        },
        &clip_cfg,
        dtype,
        dev,
    )
}

fn build(
    t5: Part,
    t5_cfg: &t5::Config,
    clip: Part,
    clip_cfg: &ClipTextConfig,
    dtype: DType,
    dev: &Device,
) -> Result<Encoders> {
    let (clip_vb, clip_bytes) = plain_var_builder(clip.store, dtype, dev);
    let clip_model = ClipTextTransformer::new(clip_vb.pp("text_model"), clip_cfg)
        .with_context(|| format!("loading the CLIP text encoder from {}", clip.from.display()))?;
    let (t5_vb, t5_bytes) = plain_var_builder(t5.store, dtype, dev);
    let t5_model = T5EncoderModel::load(t5_vb, t5_cfg)
        .with_context(|| format!("loading the T5 encoder from {}", t5.from.display()))?;
    Ok(Encoders {
        t5: t5_model,
        clip: clip_model,
        t5_bytes: t5_bytes.get(),
        clip_bytes: clip_bytes.get(),
    })
}
