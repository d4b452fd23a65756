//! The adaLN modulation of FLUX's blocks: the affine-free LayerNorm followed by
//! `norm(x) * (1 + scale) + shift`, and the gated residual `x + gate * y`. On the CPU in f32 each
//! is one pass over its rows (candle runs them as nine and two tensor operations, each a pass over
//! memory), in candle's order of operations but for the norm's sums, added in lanes
//! ([`super::row_sums`]); elsewhere candle's operations.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use candle_nn::{LayerNorm, Module};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::row_sums::lane_sum;
use crate::cpu_slices::{contiguous_f32, written_in_full};
use crate::dispatch::dispatched;

const EPS: f64 = 1e-6;

struct NormModulate;

/// The contiguous f32 elements of one of these operations' operands.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    contiguous_f32(s, l, "norm-modulate / gated-residual", what)
}

impl CustomOp3 for NormModulate {
    fn name(&self) -> &'static str {
        "norm-modulate"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        scale1: &CpuStorage,
        scale1_l: &Layout,
        shift: &CpuStorage,
        shift_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x_data = contiguous(x, x_l, "x")?;
        let scale1 = contiguous(scale1, scale1_l, "scale")?;
        let shift = contiguous(shift, shift_l, "shift")?;
        let (b, len, hidden) = x_l.shape().dims3()?;
        if scale1.len() != b * hidden || shift.len() != b * hidden {
            bail!(
                "norm-modulate: modulation of {} values for a batch of {b} x {hidden}",
                scale1.len()
            );
        }
        // SAFETY: the groups cover the output, every row written in full.
        let out = unsafe {
            written_in_full(x_data.len(), |out| {
                for_row_groups(out, (len, hidden), |bi, at, ys| {
                    let m = bi * hidden..(bi + 1) * hidden;
                    modulate_rows(&x_data[at], &scale1[m.clone()], &shift[m], ys)
                })
            })
        };
        Ok((CpuStorage::F32(out), x_l.shape().clone()))
    }
}

/// Rows per work item of the row-wise operations: enough to spread the kernels' calls.
const GROUP_ROWS: usize = 8;

/// Runs `f(batch entry, elements, out)` in parallel over groups of up to [`GROUP_ROWS`] rows of
/// `out` (`len` rows of `hidden` per batch entry; a group never spans two entries), `elements`
/// the group's range in `out` and in the inputs of its shape.
fn for_row_groups(
    out: &mut [MaybeUninit<f32>],
    (len, hidden): (usize, usize),
    f: impl Fn(usize, std::ops::Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
) {
    let (entry, group) = ((len * hidden).max(1), (GROUP_ROWS * hidden).max(1));
    out.par_chunks_mut(entry).enumerate().for_each(|(bi, out)| {
        out.par_chunks_mut(group).enumerate().for_each(|(g, out)| {
            let first = bi * entry + g * group;
            f(bi, first..first + out.len(), out)
        })
    });
}

/// The two-pass variance of candle's LayerNorm (its sums in lanes, [`lane_sum`]), then
/// `(x - mean) / std * scale1 + shift` in candle's order of operations, for each row of `xs`
/// (rows of `scale1.len()`). `ys` may start uninitialised and is written in full.
#[inline(always)]
fn modulate(xs: &[f32], scale1: &[f32], shift: &[f32], ys: &mut [MaybeUninit<f32>]) {
    let hidden = scale1.len();
    assert!(xs.len() == ys.len() && shift.len() == hidden && xs.len().is_multiple_of(hidden));
    let n = hidden as f32;
    for (x, y) in xs.chunks_exact(hidden).zip(ys.chunks_exact_mut(hidden)) {
        let mean = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - mean) * (v - mean));
        let std = (var / n + EPS as f32).sqrt();
        for (((y, &x), &s), &t) in y.iter_mut().zip(x).zip(scale1).zip(shift) {
            y.write((x - mean) / std * s + t);
        }
    }
}

dispatched! {
    /// Rows of [`NormModulate`]: see [`modulate`].
    pub fn modulate_rows(
        xs: &[f32],
        scale1: &[f32],
        shift: &[f32],
        ys: &mut [MaybeUninit<f32>]
    ) => modulate
}

/// `out = x + gate * y` for each row x of `xs` and y of `ys` (rows of `gate.len()`), a product
/// then a sum as candle's two operations round them; `out` may start uninitialised and is
/// written in full.
#[inline(always)]
fn gated(xs: &[f32], gate: &[f32], ys: &[f32], out: &mut [MaybeUninit<f32>]) {
    let hidden = gate.len();
    assert!(xs.len() == out.len() && ys.len() == xs.len() && xs.len().is_multiple_of(hidden));
    let rows = xs.chunks_exact(hidden).zip(ys.chunks_exact(hidden));
    for ((x, y), o) in rows.zip(out.chunks_exact_mut(hidden)) {
        for (((o, &x), &y), &g) in o.iter_mut().zip(x).zip(y).zip(gate) {
            o.write(x + g * y);
        }
    }
}

dispatched! {
    /// Rows of [`GatedResidual`]: see [`gated`].
    pub fn gated_rows(xs: &[f32], gate: &[f32], ys: &[f32], out: &mut [MaybeUninit<f32>]) => gated
}

/// LayerNorm (no weight, no bias, eps 1e-6) of `xs` (b, len, hidden), times `1 + scale` plus
/// `shift`, both (b, 1, hidden).
pub fn norm_modulate(xs: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let scale1 = (scale + 1.0)?;
    if matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && xs.elem_count() > 0 {
        return xs.contiguous()?.apply_op3_no_bwd(
            &scale1.contiguous()?,
            &shift.contiguous()?,
            &NormModulate,
        );
    }
    let hidden = xs.dim(candle_core::D::Minus1)?;
    let ones = Tensor::ones(hidden, xs.dtype(), xs.device())?;
    LayerNorm::new_no_bias(ones, EPS)
        .forward(xs)?
        .broadcast_mul(&scale1)?
        .broadcast_add(shift)
}

struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        gate: &CpuStorage,
        gate_l: &Layout,
        y: &CpuStorage,
        y_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_data, y) = (contiguous(x, x_l, "x")?, contiguous(y, y_l, "y")?);
        let gate = contiguous(gate, gate_l, "gate")?;
        let (b, len, hidden) = x_l.shape().dims3()?;
        if y.len() != x_data.len() || gate.len() != b * hidden {
            bail!("gated-residual: shapes differ");
        }
        // SAFETY: the groups cover the output, every row written in full.
        let out = unsafe {
            written_in_full(x_data.len(), |out| {
                for_row_groups(out, (len, hidden), |bi, at, o| {
                    let gate = &gate[bi * hidden..][..hidden];
                    gated_rows(&x_data[at.clone()], gate, &y[at], o)
                })
            })
        };
        Ok((CpuStorage::F32(out), x_l.shape().clone()))
    }
}

/// `xs + gate * ys` for `xs`, `ys` (b, len, hidden) and `gate` (b, 1, hidden).
pub fn gated_residual(xs: &Tensor, gate: &Tensor, ys: &Tensor) -> Result<Tensor> {
    if matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && xs.elem_count() > 0 {
        return xs.contiguous()?.apply_op3_no_bwd(
            &gate.contiguous()?,
            &ys.contiguous()?,
            &GatedResidual,
        );
    }
    xs + gate.broadcast_mul(ys)?
}
