//! The foreground mask from text-to-image attention (characonsist-spec.md §4).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::recipe::Numerics;
use crate::text::PromptTokenizers;

/// T5 token spans of a prompt `environment + " " + character + " " + action`: background tokens
/// are `[0, bg_len)`, character-and-action tokens `[bg_len, real_len)`; `</s>` and padding are
/// outside both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSpans {
    pub bg_len: usize,
    pub real_len: usize,
}

impl TextSpans {
    /// The reference's counts: `bg_len` is the token count of `environment + " "` alone (a count,
    /// not a word boundary: kept exactly as the reference computes it), `real_len` that of the
    /// whole prompt, both without `</s>`.
    pub fn of(tokenizers: &PromptTokenizers, environment: &str, prompt: &str) -> Result<Self> {
        let limit = tokenizers.t5_len() - 1;
        let bg_len = tokenizers.t5_count(&format!("{environment} "))?;
        let real_len = tokenizers.t5_count(prompt)?.min(limit);
        if bg_len == 0 {
            bail!("the environment prompt is empty");
        }
        if bg_len >= real_len {
            bail!(
                "the environment prompt takes {bg_len} of the {limit} T5 tokens, leaving no room for the character and action; shorten it"
            );
        }
        Ok(Self { bg_len, real_len })
    }
}

/// The reference's text attention (characonsist-spec.md §4), for `Numerics::Reference`: the
/// unscaled logits of the image queries over the valid text keys, both after RoPE, in the run's
/// dtype, cast to fp16, and their softmax rounded to fp16; (b, heads, img_len, n_text), as f32.
pub fn reference_text_probs(q_img: &Tensor, k_text: &Tensor) -> Result<Tensor> {
    let logits = q_img.contiguous()?.matmul(&k_text.contiguous()?.t()?)?;
    let logits = fp16(&logits.to_dtype(DType::F32)?)?;
    fp16(&candle_nn::ops::softmax_last_dim(&logits)?)
}

/// Rounds to fp16 and back. Each fp16 quantity is computed in f32 and rounded once, as torch's
/// fp16 kernels accumulate in f32.
fn fp16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// Sums, over the single blocks of one step, the head-summed text attention of every image token
/// averaged over the background span and over the foreground span.
pub struct MaskAccumulator {
    spans: TextSpans,
    numerics: Numerics,
    sums: Option<(Tensor, Tensor)>,
    layers: usize,
}

impl MaskAccumulator {
    pub fn new(spans: TextSpans, numerics: Numerics) -> Self {
        Self {
            spans,
            numerics,
            sums: None,
            layers: 0,
        }
    }

    /// Adds one layer's probabilities (1, heads, img_len, real_len): the transformer's f32 ones
    /// under `Numerics::Exact`, [`reference_text_probs`] under `Numerics::Reference`, which also
    /// rounds the head sum, the span means and the running sum over layers to fp16 as the
    /// reference does (characonsist-spec.md §4).
    pub fn add(&mut self, probs: &Tensor) -> Result<()> {
        let numerics = self.numerics;
        let round = |t: Tensor| match numerics {
            Numerics::Exact => Ok(t),
            Numerics::Reference => fp16(&t),
        };
        let p = round(probs.sum(1)?.squeeze(0)?)?;
        let TextSpans { bg_len, real_len } = self.spans;
        let bg = round(p.narrow(1, 0, bg_len)?.mean(1)?)?;
        let fg = round(p.narrow(1, bg_len, real_len - bg_len)?.mean(1)?)?;
        let sums = match self.sums.take() {
            None => (bg, fg),
            Some((b, f)) => (round((b + bg)?)?, round((f + fg)?)?),
        };
        self.sums = Some(sums);
        self.layers += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_none()
    }

    /// Foreground where its layer-averaged map is at least the background's (ties go to the
    /// foreground), then erosion and dilation on the token grid.
    pub fn finish(&mut self, grid: Grid, erode: usize, dilate: usize) -> Result<Vec<bool>> {
        let Some((bg, fg)) = self.sums.take() else {
            bail!("no attention maps were collected for the mask");
        };
        let layers = std::mem::take(&mut self.layers) as f64;
        let (bg, fg) = match self.numerics {
            // Sums compare as their averages do.
            Numerics::Exact => (bg, fg),
            // The reference divides its fp16 sums by the layer count, which can make ties.
            Numerics::Reference => (fp16(&(bg / layers)?)?, fp16(&(fg / layers)?)?),
        };
        let raw: Vec<bool> = bg
            .le(&fg)?
            .to_dtype(DType::U8)?
            .to_vec1::<u8>()?
            .into_iter()
            .map(|v| v != 0)
            .collect();
        Ok(dilate_mask(&erode_mask(&raw, grid, erode), grid, dilate))
    }
}

/// A token grid: `rows` x `cols`, token `r * cols + c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
}

impl Grid {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies a k x k window: `all` = erosion (every in-image neighbour set), else dilation (any
/// set). Pixels outside the image are ignored, which is OpenCV's default for both: erosion does
/// not eat in from the edge and dilation does not grow in from outside.
fn morph(mask: &[bool], grid: Grid, k: usize, all: bool) -> Vec<bool> {
    let r = (k / 2) as isize;
    let (rows, cols) = (grid.rows as isize, grid.cols as isize);
    (0..grid.len())
        .map(|i| {
            let (y, x) = ((i / grid.cols) as isize, (i % grid.cols) as isize);
            let mut window = (-r..=r).flat_map(|dy| (-r..=r).map(move |dx| (y + dy, x + dx)));
            let inside = |(yy, xx): (isize, isize)| -> Option<bool> {
                (yy >= 0 && yy < rows && xx >= 0 && xx < cols)
                    .then(|| mask[(yy * cols + xx) as usize])
            };
            match all {
                true => window.all(|p| inside(p).unwrap_or(true)),
                false => window.any(|p| inside(p).unwrap_or(false)),
            }
        })
        .collect()
}

pub fn erode_mask(mask: &[bool], grid: Grid, k: usize) -> Vec<bool> {
    morph(mask, grid, k, true)
}

pub fn dilate_mask(mask: &[bool], grid: Grid, k: usize) -> Vec<bool> {
    morph(mask, grid, k, false)
}
