//! The VAE's GroupNorm, with the swish (x * sigmoid(x)) that follows most of them, in three
//! passes over an f32 tensor on the CPU where candle's `GroupNorm` and `Activation::Swish` make
//! ten, each into a fresh allocation. The norm is candle's to the bit: the two sums are candle's
//! own reductions, the per-group statistics candle's own operations on (b, groups, 1) tensors,
//! and each element's normalisation and affine the same IEEE operations in the same order. The
//! swish takes the vectorised exp of `flux::vexp` (within 2 ulp of libm's scalar one, which kept
//! the pass from vectorising), so it differs from candle's at rounding level. Other dtypes and
//! devices run candle's layers themselves.

use std::mem::MaybeUninit;

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor, D,
};
use candle_nn::{Activation, GroupNorm, VarBuilder};
use rayon::prelude::*;

use crate::cpu_slices::{contiguous_f32, written_in_full};
use crate::dispatch::dispatched;
use crate::flux::vexp::exp;

/// The groups and epsilon of every GroupNorm in FLUX's VAE.
const GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

/// GroupNorm over `GROUPS` groups with a learnt per-channel affine, then swish if asked.
#[derive(Debug, Clone)]
pub(super) struct Norm {
    candle: GroupNorm,
    /// (2, channels): the weight, then the bias.
    affine: Tensor,
    channels: usize,
    swish: bool,
}

impl Norm {
    /// The norm of `channels` channels from `vb` (`weight`, `bias`), followed by swish or not.
    pub(super) fn new(channels: usize, swish: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let affine = Tensor::stack(&[&weight, &bias], 0)?.to_dtype(DType::F32)?;
        Ok(Self {
            candle: GroupNorm::new(weight, bias, channels, GROUPS, NORM_EPS)?,
            affine,
            channels,
            swish,
        })
    }

    /// Candle's layers, for the dtypes and devices the fused passes do not cover.
    fn candle_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let normed = xs.apply(&self.candle)?;
        match self.swish {
            true => normed.apply(&Activation::Swish),
            false => Ok(normed),
        }
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let fused = matches!(xs.device(), Device::Cpu)
            && xs.dtype() == DType::F32
            && xs.rank() >= 3
            && xs.dim(1)? == self.channels
            && xs.elem_count() > 0;
        if !fused {
            return self.candle_forward(xs);
        }
        let xs = xs.contiguous()?;
        let b = xs.dim(0)?;
        let n = xs.elem_count() / (b * GROUPS);
        // The statistics exactly as candle's GroupNorm computes them.
        let grouped = xs.reshape((b, GROUPS, n))?;
        let mean = (grouped.sum_keepdim(2)? / n as f64)?;
        let squares = grouped.apply_op2_no_bwd(&mean, &SquaredDeviations)?;
        let var = (squares.sum_keepdim(2)? / n as f64)?;
        let std = (var + NORM_EPS)?.sqrt()?;
        let stats = Tensor::cat(&[&mean, &std], D::Minus1)?;
        xs.apply_op3_no_bwd(
            &stats,
            &self.affine,
            &Normalize {
                swish: self.swish,
                groups: GROUPS,
            },
        )
    }
}

/// (x - mean)^2 of every element of a (b, groups, n) tensor, its group's mean (b, groups, 1).
struct SquaredDeviations;

impl CustomOp2 for SquaredDeviations {
    fn name(&self) -> &'static str {
        "group-norm-squared-deviations"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        mean: &CpuStorage,
        mean_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, mean) = (
            contiguous_f32(xs, xs_l, "group norm", "x")?,
            contiguous_f32(mean, mean_l, "group norm", "mean")?,
        );
        let n = xs.len() / mean.len().max(1);
        if n * mean.len() != xs.len() || n == 0 {
            bail!("group norm: {} means for {} values", mean.len(), xs.len());
        }
        // SAFETY: one chunk of n values per mean, covering the output, each written in full.
        let out = unsafe {
            written_in_full(xs.len(), |out| {
                out.par_chunks_mut(n)
                    .zip(xs.par_chunks(n))
                    .zip(mean.par_iter())
                    .for_each(|((out, xs), &m)| {
                        for (o, &x) in out.iter_mut().zip(xs) {
                            let d = x - m;
                            o.write(d * d);
                        }
                    })
            })
        };
        Ok((CpuStorage::F32(out), xs_l.shape().clone()))
    }
}

/// ((x - mean) / std) * weight + bias, then x * (1 / (e^-x + 1)) if `swish`: candle's
/// broadcast_sub, broadcast_div, broadcast_mul, broadcast_add and sigmoid, element by element,
/// with the vectorised exp of `flux::vexp` in place of libm's (within 2 ulp of it).
/// Inputs: x (b, channels, ...), stats (b, groups, 2) of mean and std, affine (2, channels).
struct Normalize {
    swish: bool,
    groups: usize,
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "group-norm-normalize"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        stats: &CpuStorage,
        stats_l: &Layout,
        affine: &CpuStorage,
        affine_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs_data = contiguous_f32(xs, xs_l, "group norm", "x")?;
        let stats = contiguous_f32(stats, stats_l, "group norm", "stats")?;
        let affine = contiguous_f32(affine, affine_l, "group norm", "affine")?;
        let dims = xs_l.dims();
        let (b, channels) = (dims[0], dims[1]);
        let plane = xs_data.len() / (b * channels).max(1);
        let per_group = channels / self.groups;
        if stats.len() != 2 * b * self.groups || affine.len() != 2 * channels {
            bail!("group norm: stats or affine do not fit {dims:?}");
        }
        let (weight, bias) = affine.split_at(channels);
        // SAFETY: one item per (image, channel) plane, covering the output (b * channels
        // planes of `plane` values), each normalised in full.
        let out = unsafe {
            written_in_full(xs_data.len(), |out| {
                if plane == 0 {
                    return;
                }
                out.par_chunks_mut(plane)
                    .zip(xs_data.par_chunks(plane))
                    .enumerate()
                    .for_each(|(bc, (out, xs))| {
                        let (bi, c) = (bc / channels, bc % channels);
                        let g = bi * self.groups + c / per_group;
                        let (mean, std) = (stats[2 * g], stats[2 * g + 1]);
                        normalize_plane(xs, out, [mean, std, weight[c], bias[c]], self.swish);
                    })
            })
        };
        Ok((CpuStorage::F32(out), xs_l.shape().clone()))
    }
}

#[inline(always)]
fn normalize(
    xs: &[f32],
    out: &mut [MaybeUninit<f32>],
    [mean, std, w, bias]: [f32; 4],
    swish: bool,
) {
    assert_eq!(xs.len(), out.len());
    for (o, &x) in out.iter_mut().zip(xs) {
        let y = (x - mean) / std * w + bias;
        o.write(match swish {
            true => y * (exp(-y) + 1.0).recip(),
            false => y,
        });
    }
}

dispatched! {
    /// One channel's plane normalised by its group's (mean, std) and its (weight, bias), then
    /// swished if asked; `out` may start uninitialised and is written in full.
    pub fn normalize_plane(
        xs: &[f32],
        out: &mut [MaybeUninit<f32>],
        stats: [f32; 4],
        swish: bool
    ) => normalize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused passes give candle's GroupNorm bit for bit, and its swish within 1e-6 of each
    /// value (the exp's 2 ulp, carried through the sigmoid), on a batch of two.
    #[test]
    fn equals_candles_group_norm_and_swish_to_the_bit() -> Result<()> {
        let dev = Device::Cpu;
        let channels = 64;
        let weight = (Tensor::randn(0f32, 1., channels, &dev)? + 1.0)?;
        let bias = Tensor::randn(0f32, 1., channels, &dev)?;
        let tensors = [("weight".to_string(), weight), ("bias".to_string(), bias)];
        let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &dev);
        // Not a multiple of 8 per group, so the reductions' tails are exercised.
        let xs = (Tensor::randn(0f32, 3., (2, channels, 13, 11), &dev)? + 0.7)?;
        for swish in [false, true] {
            let norm = Norm::new(channels, swish, vb.clone())?;
            let fused = norm.forward(&xs)?;
            let reference = norm.candle_forward(&xs)?;
            let diff = (&fused - &reference)?.abs()?;
            let relative = (diff.clone() / (reference.abs()? + 1e-30)?)?;
            let relative = relative.max_all()?.to_scalar::<f32>()?;
            match swish {
                false => assert_eq!(diff.max_all()?.to_scalar::<f32>()?, 0.0),
                true => assert!(relative < 1e-6, "swish: relative difference {relative}"),
            }
        }
        Ok(())
    }
}
