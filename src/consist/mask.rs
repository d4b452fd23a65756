//! The foreground mask from text-to-image attention (characonsist-spec.md §4), and with several
//! characters which of them owns each foreground token.
//!
//! A token is foreground exactly as with one character: its mean attention over everything after
//! the environment (the characters' prompts and the action) is at least its mean over the
//! environment. The action counts towards the foreground because it describes what the
//! characters do and hold, but towards no character in particular, because it may name any or
//! all of them. Among several characters, a foreground token belongs to the one whose own span it
//! attends to most on average; each character's tokens are then eroded and dilated on their
//! own, and a token that several dilated regions reach goes to the one it attends to most.
//! With one character its region is the foreground mask, byte for byte as before.

use std::ops::Range;

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

/// The T5 spans of the characters of a prompt `environment + " " + c1 + " " + c2 + ... + " " +
/// action`, by the background span's rule extended: character `k` ends where the token count of
/// `environment + " " + c1 + ... + ck + " "` ends (a count, like `bg_len`: where the trailing
/// space is a token of its own the span takes the next word's first token, and the action's
/// span may be empty, which costs nothing since the action counts for no character). Prompts
/// that leave no room before the T5 limit are refused. Errors name no field; the caller does.
pub fn character_spans(
    tokenizers: &PromptTokenizers,
    environment: &str,
    characters: &[&str],
    spans: TextSpans,
) -> Result<Vec<Range<usize>>> {
    let mut prefix = format!("{environment} ");
    let mut start = spans.bg_len;
    let mut out = Vec::with_capacity(characters.len());
    for (k, c) in characters.iter().enumerate() {
        prefix = format!("{prefix}{c} ");
        let end = tokenizers.t5_count(&prefix)?;
        let limit = tokenizers.t5_len() - 1;
        if end >= limit {
            bail!(
                "the environment and the prompts of the characters up to the {} take {end} of the {limit} T5 tokens, leaving no room for the action; shorten them",
                ordinal(k + 1),
            );
        }
        let end = end.min(spans.real_len);
        if end <= start {
            bail!(
                "the prompt of the {} character has no tokens",
                ordinal(k + 1)
            );
        }
        out.push(start..end);
        start = end;
    }
    Ok(out)
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "first".into(),
        2 => "second".into(),
        3 => "third".into(),
        n => format!("{n}th"),
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
/// averaged over the background span and over the foreground span (and, with several
/// characters, over each character's span).
pub struct MaskAccumulator {
    spans: TextSpans,
    /// The characters' spans where there are several; one character owns the whole foreground.
    characters: Vec<Range<usize>>,
    /// No character: every token is background.
    empty: bool,
    numerics: Numerics,
    sums: Option<(Tensor, Tensor)>,
    character_sums: Vec<Tensor>,
    layers: usize,
}

impl MaskAccumulator {
    /// One character: the foreground is its region.
    pub fn new(spans: TextSpans, numerics: Numerics) -> Self {
        Self {
            spans,
            characters: Vec::new(),
            empty: false,
            numerics,
            sums: None,
            character_sums: Vec::new(),
            layers: 0,
        }
    }

    /// The characters of a prompt by their spans, in the prompt's order: none (the image is all
    /// background), one (as [`MaskAccumulator::new`]) or several.
    pub fn with_characters(
        spans: TextSpans,
        characters: Vec<Range<usize>>,
        numerics: Numerics,
    ) -> Self {
        let mut acc = Self::new(spans, numerics);
        acc.empty = characters.is_empty();
        if characters.len() > 1 {
            acc.characters = characters;
        }
        acc
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
        for (k, span) in self.characters.iter().enumerate() {
            let mean = round(p.narrow(1, span.start, span.len())?.mean(1)?)?;
            match self.character_sums.get_mut(k) {
                None => self.character_sums.push(mean),
                Some(sum) => *sum = round((&*sum + mean)?)?,
            }
        }
        self.layers += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_none()
    }

    /// Foreground where its layer-averaged map is at least the background's (ties go to the
    /// foreground), then erosion and dilation on the token grid.
    pub fn finish(&mut self, grid: Grid, erode: usize, dilate: usize) -> Result<Vec<bool>> {
        Ok(self
            .finish_owners(grid, erode, dilate)?
            .into_iter()
            .map(|o| o != 0)
            .collect())
    }

    /// Every token's owner: 0 for the background, `k + 1` for the prompt's `k`-th character
    /// (see the module's comment for the rule).
    pub fn finish_owners(&mut self, grid: Grid, erode: usize, dilate: usize) -> Result<Vec<u8>> {
        let Some((bg, fg)) = self.sums.take() else {
            bail!("no attention maps were collected for the mask");
        };
        let layers = std::mem::take(&mut self.layers) as f64;
        let average = |t: Tensor| -> Result<Tensor> {
            match self.numerics {
                // Sums compare as their averages do.
                Numerics::Exact => Ok(t),
                // The reference divides its fp16 sums by the layer count, which can make ties.
                Numerics::Reference => fp16(&(t / layers)?),
            }
        };
        let (bg, fg) = (average(bg)?, average(fg)?);
        let raw: Vec<bool> = bg
            .le(&fg)?
            .to_dtype(DType::U8)?
            .to_vec1::<u8>()?
            .into_iter()
            .map(|v| v != 0)
            .collect();
        if self.empty {
            return Ok(vec![0; raw.len()]);
        }
        if self.characters.is_empty() {
            let mask = dilate_mask(&erode_mask(&raw, grid, erode), grid, dilate);
            return Ok(mask.into_iter().map(u8::from).collect());
        }
        let scores: Vec<Vec<f32>> = std::mem::take(&mut self.character_sums)
            .into_iter()
            .map(|s| Ok(average(s)?.to_vec1::<f32>()?))
            .collect::<Result<_>>()?;
        Ok(owners(&raw, &scores, grid, erode, dilate))
    }
}

/// Several characters' regions from the foreground `raw` and each character's mean attention
/// over its own span (`scores[k][token]`): each foreground token to its best character (ties to
/// the earlier one), each region eroded and dilated alone, a token several reach to the best of
/// those that reach it.
fn owners(raw: &[bool], scores: &[Vec<f32>], grid: Grid, erode: usize, dilate: usize) -> Vec<u8> {
    let best_of = |t: usize, among: &mut dyn Iterator<Item = usize>| -> Option<usize> {
        among.fold(None, |best: Option<usize>, k| match best {
            Some(b) if scores[b][t] >= scores[k][t] => Some(b),
            _ => Some(k),
        })
    };
    let regions: Vec<Vec<bool>> = (0..scores.len())
        .map(|k| {
            let own: Vec<bool> = (0..raw.len())
                .map(|t| raw[t] && best_of(t, &mut (0..scores.len())) == Some(k))
                .collect();
            dilate_mask(&erode_mask(&own, grid, erode), grid, dilate)
        })
        .collect();
    (0..raw.len())
        .map(|t| {
            let mut claimants = (0..scores.len()).filter(|&k| regions[k][t]);
            best_of(t, &mut claimants).map_or(0, |k| k as u8 + 1)
        })
        .collect()
}

/// A token grid: `rows` x `cols`, token `r * cols + c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
}

impl Grid {
    /// The transformer's grid over an image of `width` x `height` pixels: one token per 16x16.
    pub fn of_size(width: usize, height: usize) -> Self {
        Self {
            rows: height / 16,
            cols: width / 16,
        }
    }

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
