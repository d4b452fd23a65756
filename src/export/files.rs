//! The files `charaboard render` writes for each image: the picture, its mask and match overlays,
//! and with `--dump` the tensors that explain it.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::overlay::{mask_overlay, match_overlay, TokenGrid};
use crate::consist::session::{ImageOutput, Target};

/// `identity` or `panel-01`, `panel-02`, ...
pub fn stem(target: Target) -> String {
    match target {
        Target::Identity => "identity".into(),
        Target::Panel(i) => format!("panel-{:02}", i + 1),
    }
}

/// Saves through a temporary file so that a failed write never leaves a partial image.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let tmp = path.with_extension("png.partial");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// How many match lines an overlay draws at most, to stay readable.
pub const MAX_MATCH_LINES: usize = 160;

/// Writes `{stem}.png`, `{stem}-mask.png` and, for panels, `{stem}-matches.png`; returns the
/// paths written.
pub fn write_image(dir: &Path, output: &ImageOutput, identity: &RgbImage) -> Result<Vec<PathBuf>> {
    let stem = stem(output.target);
    let mut written = Vec::new();
    let image_path = dir.join(format!("{stem}.png"));
    save_png(&output.image, &image_path)?;
    written.push(image_path);
    let grid = TokenGrid {
        rows: output.grid.rows,
        cols: output.grid.cols,
    };
    let mask_path = dir.join(format!("{stem}-mask.png"));
    save_png(
        &mask_overlay(&output.image, &output.mask, grid)?,
        &mask_path,
    )?;
    written.push(mask_path);
    if let Some(m) = &output.matches {
        let triples = m.triples();
        let path = dir.join(format!("{stem}-matches.png"));
        save_png(
            &match_overlay(&output.image, identity, &triples, MAX_MATCH_LINES),
            &path,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// `{stem}.safetensors`: `latents` (f32), `fg_mask` (u8, rows x cols), `bg_len` and `real_len`
/// (i64), and for panels `match_panel_idx`, `match_identity_idx` (i64) and `match_sim` (f32, the
/// best similarity of every panel token).
pub fn write_dump(dir: &Path, output: &ImageOutput) -> Result<PathBuf> {
    let cpu = Device::Cpu;
    let mask: Vec<u8> = output.mask.iter().map(|&m| u8::from(m)).collect();
    let mut tensors: HashMap<&str, Tensor> = HashMap::from([
        ("latents", output.latents.clone()),
        (
            "fg_mask",
            Tensor::from_vec(mask, (output.grid.rows, output.grid.cols), &cpu)?,
        ),
        ("bg_len", Tensor::new(&[output.spans.bg_len as i64], &cpu)?),
        (
            "real_len",
            Tensor::new(&[output.spans.real_len as i64], &cpu)?,
        ),
    ]);
    if let Some(m) = &output.matches {
        let as_i64 = |v: &[u32]| -> Vec<i64> { v.iter().map(|&x| x as i64).collect() };
        tensors.insert(
            "match_panel_idx",
            Tensor::new(as_i64(&m.panel_idx).as_slice(), &cpu)?,
        );
        tensors.insert(
            "match_identity_idx",
            Tensor::new(as_i64(&m.identity_idx).as_slice(), &cpu)?,
        );
        tensors.insert("match_sim", Tensor::new(m.max_sim.as_slice(), &cpu)?);
    }
    let path = dir.join(format!("{}.safetensors", stem(output.target)));
    candle_core::safetensors::save(&tensors, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
