//! Every CharaConsist hyperparameter, with the reference's defaults (characonsist-spec.md §7).
//!
//! Step windows are fractions of the schedule: at 50 steps they resolve to exactly the
//! reference's step indices, and 28- or 4-step runs get proportionate windows.

use anyhow::{bail, Result};
use half::bf16;
use serde::{Deserialize, Serialize};

use crate::limits;

/// A half-open window of steps `[start, end)` as fractions of the step count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepWindow {
    pub start: f64,
    pub end: f64,
}

impl StepWindow {
    /// The window in steps: fractions times the step count, rounded; never step 0, which the
    /// reference always leaves unmodified to get a clean first mask.
    pub fn resolve(&self, steps: usize) -> (usize, usize) {
        let at = |f: f64| ((f * steps as f64).round() as usize).min(steps);
        (at(self.start).max(1), at(self.end).max(1))
    }
}

/// Where the foreground-mask maps, the merge weight and the similarities' normalisation are
/// rounded: in f32, or where the reference rounds them (characonsist-spec.md §3, §4, §6 and its
/// notes on what makes bit-level parity hard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Numerics {
    /// f32 maps and similarities, an unrounded merge weight: more exact than the reference.
    #[default]
    Exact,
    /// Rounded where the authors' code rounds, for runs comparable with the paper: fp16 mask
    /// maps, a bf16 merge weight, bf16 normalisation of the similarities in bf16 runs.
    Reference,
}

impl Numerics {
    /// Exact is left out of saved files, so the files of exact projects stay as they were.
    fn is_exact(&self) -> bool {
        *self == Self::Exact
    }
}

/// Unknown fields are refused, as everywhere in a project file: a misspelt `numerix` must not
/// silently leave the default in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Foreground sharing (point-tracking attention, token merging) in single blocks whose index
    /// is a multiple of this: 2 = the even blocks.
    pub fg_layer_every: usize,
    /// Background sharing in single blocks whose index is a multiple of this: 1 = all.
    pub bg_layer_every: usize,
    /// Steps with shared attention: 1..=40 of 50.
    pub share_steps: StepWindow,
    /// The step at which masks and point matches are taken (10 of 50), as a fraction.
    pub mask_step: f64,
    /// Matches with a layer-averaged cosine similarity at or below this are dropped.
    pub similarity_threshold: f64,
    /// Adaptive token merging.
    pub token_merge: bool,
    pub merge_weight: f64,
    /// Constant weight over `[start, decay)`, half-cosine decay over `[decay, end)`:
    /// steps 1..=10 and 11..=30 of 50.
    pub merge_steps: StepWindow,
    pub merge_decay_start: f64,
    /// Mask post-processing: erosion then dilation with square kernels of these sides.
    pub erode: usize,
    pub dilate: usize,
    /// `exact` (f32) or `reference` (the authors' rounding, for runs comparable with the paper).
    #[serde(skip_serializing_if = "Numerics::is_exact")]
    pub numerics: Numerics,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            fg_layer_every: 2,
            bg_layer_every: 1,
            share_steps: StepWindow {
                start: 1.0 / 50.0,
                end: 41.0 / 50.0,
            },
            mask_step: 10.0 / 50.0,
            similarity_threshold: 0.5,
            token_merge: true,
            merge_weight: 0.8,
            merge_steps: StepWindow {
                start: 1.0 / 50.0,
                end: 31.0 / 50.0,
            },
            merge_decay_start: 11.0 / 50.0,
            erode: 3,
            dilate: 5,
            numerics: Numerics::Exact,
        }
    }
}

/// A recipe resolved for one step count: plain step indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub steps: usize,
    pub fg_layer_every: usize,
    pub bg_layer_every: usize,
    pub share: (usize, usize),
    pub mask_step: usize,
    pub threshold: f32,
    /// `None` when token merging is off.
    pub merge: Option<MergeSchedule>,
    pub erode: usize,
    pub dilate: usize,
    pub numerics: Numerics,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MergeSchedule {
    pub weight: f64,
    pub start: usize,
    pub decay: usize,
    pub end: usize,
    pub numerics: Numerics,
}

impl MergeSchedule {
    /// The merge weight at `step` (characonsist-spec.md §6): constant, then half-cosine decay.
    pub fn alpha(&self, step: usize) -> f64 {
        let alpha = if step < self.start || step >= self.end {
            0.0
        } else if step < self.decay {
            self.weight
        } else {
            let k = (step - self.decay) as f64;
            let n = (self.end - self.decay) as f64;
            self.weight * 0.5 * (1.0 + (std::f64::consts::PI * k / n).cos())
        };
        match self.numerics {
            Numerics::Exact => alpha,
            // The reference's weight is `ones(bf16) * alpha`: alpha as an f32 scalar, the
            // product rounded to bf16 (0.8 becomes 0.80078125).
            Numerics::Reference => bf16::from_f32(alpha as f32).to_f64(),
        }
    }
}

impl Recipe {
    /// Checks every field, naming the one that is out of range.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &str, v: f64| -> Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!(
                    "recipe.{name} must be a fraction of the schedule between 0 and 1, found {v}"
                );
            }
            Ok(())
        };
        let window = |name: &str, w: &StepWindow| -> Result<()> {
            fraction(&format!("{name}.start"), w.start)?;
            fraction(&format!("{name}.end"), w.end)?;
            if w.end < w.start {
                bail!("recipe.{name}: end {} is before start {}", w.end, w.start);
            }
            Ok(())
        };
        window("share_steps", &self.share_steps)?;
        window("merge_steps", &self.merge_steps)?;
        fraction("mask_step", self.mask_step)?;
        fraction("merge_decay_start", self.merge_decay_start)?;
        if !(self.merge_steps.start..=self.merge_steps.end).contains(&self.merge_decay_start) {
            bail!(
                "recipe.merge_decay_start {} must lie within merge_steps",
                self.merge_decay_start
            );
        }
        if !(0.0..=1.0).contains(&self.similarity_threshold) {
            bail!(
                "recipe.similarity_threshold must be between 0 and 1, found {}",
                self.similarity_threshold
            );
        }
        if !(0.0..=1.0).contains(&self.merge_weight) {
            bail!(
                "recipe.merge_weight must be between 0 and 1, found {}",
                self.merge_weight
            );
        }
        limits::check(
            "recipe.fg_layer_every",
            self.fg_layer_every,
            &limits::LAYER_EVERY,
        )?;
        limits::check(
            "recipe.bg_layer_every",
            self.bg_layer_every,
            &limits::LAYER_EVERY,
        )?;
        for (name, k) in [("erode", self.erode), ("dilate", self.dilate)] {
            if k % 2 == 0 || !limits::KERNEL.contains(&k) {
                bail!(
                    "recipe.{name} must be an odd kernel side from {} to {} (1 = off), found {k}",
                    limits::KERNEL.start(),
                    limits::KERNEL.end()
                );
            }
        }
        Ok(())
    }

    pub fn schedule(&self, steps: usize) -> Schedule {
        let at = |f: f64| ((f * steps as f64).round() as usize).min(steps.saturating_sub(1));
        let (m_start, m_end) = self.merge_steps.resolve(steps);
        Schedule {
            steps,
            fg_layer_every: self.fg_layer_every,
            bg_layer_every: self.bg_layer_every,
            share: self.share_steps.resolve(steps),
            mask_step: at(self.mask_step),
            threshold: self.similarity_threshold as f32,
            merge: self.token_merge.then(|| MergeSchedule {
                weight: self.merge_weight,
                start: m_start,
                decay: at(self.merge_decay_start).clamp(m_start, m_end),
                end: m_end,
                numerics: self.numerics,
            }),
            erode: self.erode,
            dilate: self.dilate,
            numerics: self.numerics,
        }
    }
}

impl Schedule {
    pub fn shares(&self, step: usize) -> bool {
        (self.share.0..self.share.1).contains(&step)
    }

    pub fn is_fg_layer(&self, single_index: usize) -> bool {
        single_index.is_multiple_of(self.fg_layer_every)
    }

    pub fn is_bg_layer(&self, single_index: usize) -> bool {
        single_index.is_multiple_of(self.bg_layer_every)
    }

    /// The merge weight at `step`, 0 outside the merge window or with merging off.
    pub fn merge_alpha(&self, step: usize) -> f64 {
        self.merge.as_ref().map_or(0.0, |m| m.alpha(step))
    }
}
