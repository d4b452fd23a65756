//! The attention heads of fused qkv projections: (b, len, 3 * hidden) rows split into q, k and v
//! of shape (b, heads, len, head_dim), q and k RMS-normalised, and a double block's two streams
//! joined along the sequence (text first). On the CPU in f32 one pass writes all three; elsewhere
//! candle's operations.

use std::mem::MaybeUninit;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor,
};
use candle_nn::{Module, RmsNorm};
use rayon::prelude::*;

use super::linear::Unbiased;
use super::row_sums::lane_sum;
use crate::cpu_slices::{biased_row, written_in_full};
use crate::dispatch::dispatched;

/// The RMSNorms of q and k of one stream's heads.
pub struct QkNorm {
    query: RmsNorm,
    key: RmsNorm,
    /// The scales as f32 when the weights are f32 on the CPU, for the one-pass split.
    cpu_scales: Option<(Vec<f32>, Vec<f32>)>,
}

/// candle's `RmsNorm` epsilon in FLUX's QK norms.
const EPS: f32 = 1e-6;

impl QkNorm {
    pub fn new(query: Tensor, key: Tensor) -> Result<Self> {
        let on_cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
        let cpu_scales = match on_cpu_f32(&query) && on_cpu_f32(&key) {
            true => Some((query.to_vec1()?, key.to_vec1()?)),
            false => None,
        };
        Ok(Self {
            query: RmsNorm::new(query, EPS.into()),
            key: RmsNorm::new(key, EPS.into()),
            cpu_scales,
        })
    }
}

/// q, k and v of the streams' projections `(qkv, norm)` joined along the sequence, each
/// (b, heads, total len, head_dim), contiguous, a projection's pending bias added first. A
/// projection may be a narrowed view of a wider row (a single block's `linear1`).
pub fn split_heads(
    streams: &[(&Unbiased, &QkNorm)],
    heads: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    // The CPU kernel joins one stream or two (a double block's text and image).
    let fast = streams.len() <= 2
        && streams.iter().all(|(x, n)| {
            let x = &x.product;
            n.cpu_scales.is_some() && matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
        });
    if fast {
        let split = SplitHeads {
            heads,
            scales: streams
                .iter()
                .filter_map(|(_, n)| n.cpu_scales.as_ref())
                .collect(),
            biases: streams
                .iter()
                .map(|(x, _)| x.bias_values())
                .collect::<Result<_>>()?,
        };
        let joint = match streams {
            [(x, _)] => Some(x.product.apply_op1_no_bwd(&split)?),
            [(a, _), (b, _)] => Some(a.product.apply_op2_no_bwd(&b.product, &split)?),
            _ => None,
        };
        if let Some(joint) = joint {
            return Ok((joint.get(0)?, joint.get(1)?, joint.get(2)?));
        }
    }
    let mut parts = (Vec::new(), Vec::new(), Vec::new());
    for (x, norm) in streams {
        let x = x.with_bias()?;
        let (b, l, _) = x.dims3()?;
        let qkv = x.reshape((b, l, 3, heads, ()))?;
        let part = |i: usize| qkv.get_on_dim(2, i)?.transpose(1, 2)?.contiguous();
        parts.0.push(norm.query.forward(&part(0)?)?);
        parts.1.push(norm.key.forward(&part(1)?)?);
        parts.2.push(part(2)?);
    }
    Ok((
        Tensor::cat(&parts.0, 2)?,
        Tensor::cat(&parts.1, 2)?,
        Tensor::cat(&parts.2, 2)?,
    ))
}

/// [`split_heads`] on the CPU: writes (3, b, heads, total len, head_dim).
struct SplitHeads<'a> {
    heads: usize,
    /// Per stream, the q and k scales.
    scales: Vec<&'a (Vec<f32>, Vec<f32>)>,
    /// Per stream, the projection's bias where it is left to the split (3 * hidden).
    biases: Vec<Option<Vec<f32>>>,
}

impl SplitHeads<'_> {
    /// The split of the streams, each its data (from its layout's start), (b, len) and row
    /// stride, rows of unit column stride.
    fn split(&self, streams: &[(&[f32], &Layout)]) -> Result<(CpuStorage, Shape)> {
        let heads = self.heads;
        let mut rows = Vec::new();
        for (data, layout) in streams {
            let (b, len, width) = layout.shape().dims3()?;
            let [sb, sl, sc] = <[usize; 3]>::try_from(layout.stride()).expect("three dims");
            if width % (3 * heads) != 0 || (width > 0 && sc != 1) {
                bail!(
                    "split heads: (b, len, 3 * hidden) rows of unit stride, got {:?}",
                    layout.dims()
                );
            }
            rows.push((&data[layout.start_offset()..], b, len, sb, sl, width / 3));
        }
        let (b, hidden) = (rows[0].1, rows[0].5);
        if rows.iter().any(|r| r.1 != b || r.5 != hidden)
            || self.scales.len() != rows.len()
            || self.biases.len() != rows.len()
            || self
                .biases
                .iter()
                .flatten()
                .any(|bias| bias.len() != 3 * hidden)
        {
            bail!("split heads: the streams' batches, widths or biases differ");
        }
        let dim = hidden / heads;
        let total: usize = rows.iter().map(|r| r.2).sum();
        // SAFETY: one item per (part, batch, head) block of (total, dim), and each block gets
        // every stream's rows, `total` in all, each written in full.
        let out = unsafe {
            written_in_full(3 * b * heads * total * dim, |out| {
                if out.is_empty() {
                    return;
                }
                // One item per (part, batch, head): a contiguous (total, dim) block of the output.
                out.par_chunks_mut(total * dim)
                    .enumerate()
                    .for_each(|(item, dst)| {
                        let (part, bi, h) = (item / (b * heads), item / heads % b, item % heads);
                        // A row with its bias added, in cache for the norm's passes.
                        let any_bias = self.biases.iter().any(Option::is_some);
                        let mut biased = vec![0f32; if any_bias { dim } else { 0 }];
                        let mut dst = &mut dst[..];
                        for (((data, _, len, sb, sl, _), (q_scale, k_scale)), bias) in
                            rows.iter().zip(&self.scales).zip(&self.biases)
                        {
                            let alpha = match part {
                                0 => Some(&q_scale[..]),
                                1 => Some(&k_scale[..]),
                                _ => None,
                            };
                            let col = part * hidden + h * dim;
                            let bias = bias.as_ref().map(|bias| &bias[col..][..dim]);
                            let (these, rest) = dst.split_at_mut(len * dim);
                            if *len > 0 {
                                let src = &data[bi * sb + col..][..(len - 1) * sl + dim];
                                let rows = StridedRows {
                                    src,
                                    stride: *sl,
                                    dim,
                                    bias,
                                    alpha,
                                };
                                split_rows(&rows, &mut biased, these);
                            }
                            dst = rest;
                        }
                    });
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((3, b, heads, total, dim))))
    }
}

/// Rows of one stream's part of one head: row r is `src[r * stride..][..dim]` (the
/// destination's row count tells how many).
pub struct StridedRows<'a> {
    src: &'a [f32],
    stride: usize,
    dim: usize,
    /// Added to each row first.
    bias: Option<&'a [f32]>,
    /// The RMSNorm's scale; without one the rows are copied (v).
    alpha: Option<&'a [f32]>,
}

/// The rows of `rows`, their bias added (in `biased`, one row long) and RMS-normalised as
/// candle's `rms_norm` does, their sums of squares in lanes ([`lane_sum`]), written one after
/// another to `dst`, which may start uninitialised and is written in full.
#[inline(always)]
fn split(rows: &StridedRows, biased: &mut [f32], dst: &mut [MaybeUninit<f32>]) {
    let dim = rows.dim;
    for (r, d) in dst.chunks_exact_mut(dim).enumerate() {
        let mut row = &rows.src[r * rows.stride..][..dim];
        if let Some(bias) = rows.bias {
            biased_row(biased, row, bias);
            row = biased;
        }
        match rows.alpha {
            Some(alpha) => {
                let m = (lane_sum(row, |v| v * v) / dim as f32 + EPS).sqrt();
                for ((d, &s), &a) in d.iter_mut().zip(row).zip(alpha) {
                    d.write(s / m * a);
                }
            }
            None => {
                d.write_copy_of_slice(row);
            }
        }
    }
}

dispatched! {
    /// See [`split`].
    pub fn split_rows(rows: &StridedRows, biased: &mut [f32], dst: &mut [MaybeUninit<f32>]) => split
}

fn f32_data<'s>(s: &'s CpuStorage, what: &str) -> Result<&'s [f32]> {
    match s {
        CpuStorage::F32(d) => Ok(d),
        _ => bail!("split heads: {what} must be f32"),
    }
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.split(&[(f32_data(s, "qkv")?, l)])
    }
}

impl CustomOp2 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.split(&[
            (f32_data(s1, "text qkv")?, l1),
            (f32_data(s2, "image qkv")?, l2),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(dim: usize, seed: f32) -> Result<QkNorm> {
        let dev = Device::Cpu;
        let w = |s: f32| Tensor::arange(0f32, dim as f32, &dev)?.affine(0.1, s as f64);
        QkNorm::new(w(seed)?, w(seed + 0.5)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar()
    }

    /// q and k within rounding of candle's RMSNorm (the sums of squares are added in lanes, in
    /// another order), v bit for bit.
    #[test]
    fn the_one_pass_split_is_candles_operations_within_rounding() -> Result<()> {
        let dev = Device::Cpu;
        // Heads of 40: two whole lanes of the sums and a remainder.
        let (heads, dim) = (3, 40);
        let hidden = heads * dim;
        // A single block's view: the first 3 * hidden columns of wider rows.
        let wide = Tensor::randn(0f32, 1., (2, 13, 3 * hidden + 7), &dev)?;
        let qkv = Unbiased::already_biased(wide.narrow(2, 0, 3 * hidden)?);
        let txt = Unbiased::already_biased(Tensor::randn(0f32, 1., (2, 4, 3 * hidden), &dev)?);
        let (fast_a, fast_b) = (norm(dim, 1.0)?, norm(dim, -2.0)?);
        // The same weights without their f32 copies take candle's operations.
        let slow = |n: &QkNorm| QkNorm {
            query: n.query.clone(),
            key: n.key.clone(),
            cpu_scales: None,
        };
        let (slow_a, slow_b) = (slow(&fast_a), slow(&fast_b));
        for streams in [
            (vec![(&qkv, &fast_a)], vec![(&qkv, &slow_a)]),
            (
                vec![(&txt, &fast_b), (&qkv, &fast_a)],
                vec![(&txt, &slow_b), (&qkv, &slow_a)],
            ),
        ] {
            let got = split_heads(&streams.0, heads)?;
            let want = split_heads(&streams.1, heads)?;
            for (g, w) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                assert_eq!(g.dims(), w.dims());
                assert!(g.is_contiguous());
            }
            // A mean of 40 squares is off by at most 40 half-ulps relatively, its square root
            // by half that, each output by that plus two roundings.
            for (g, w) in [(&got.0, &want.0), (&got.1, &want.1)] {
                let (diff, size) = (max_diff(g, w)?, w.abs()?.max_all()?.to_scalar::<f32>()?);
                assert!(diff <= 4e-6 * size, "{diff} on values up to {size}");
            }
            assert_eq!(max_diff(&got.2, &want.2)?, 0.0);
        }
        // And the norm is applied: q's rows are not the projection's.
        let (q, _, v) = split_heads(&[(&qkv, &fast_a)], heads)?;
        let qkv = &qkv.product;
        let plain_q = qkv
            .reshape((2, 13, 3, heads, dim))?
            .get_on_dim(2, 0)?
            .transpose(1, 2)?;
        assert!(max_diff(&q, &plain_q)? > 1e-2);
        let plain_v = qkv
            .reshape((2, 13, 3, heads, dim))?
            .get_on_dim(2, 2)?
            .transpose(1, 2)?;
        assert_eq!(max_diff(&v, &plain_v)?, 0.0);
        Ok(())
    }

    /// A projection's bias left to the split gives the split of the biased projection, bit for
    /// bit, in one stream and two.
    #[test]
    fn a_bias_added_in_the_split_is_the_biased_projections_split() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, dim) = (2, 8);
        let hidden = heads * dim;
        let wide = Tensor::randn(0f32, 1., (2, 11, 3 * hidden + 5), &dev)?;
        let bias = Tensor::randn(0f32, 1., 3 * hidden, &dev)?;
        let unbiased = Unbiased {
            product: wide.narrow(2, 0, 3 * hidden)?,
            bias: Some(bias.clone()),
        };
        let biased = Unbiased::already_biased(unbiased.with_bias()?);
        let txt = Unbiased::already_biased(Tensor::randn(0f32, 1., (2, 3, 3 * hidden), &dev)?);
        let norm = norm(dim, 0.5)?;
        for (got, want) in [
            (vec![(&unbiased, &norm)], vec![(&biased, &norm)]),
            (
                vec![(&txt, &norm), (&unbiased, &norm)],
                vec![(&txt, &norm), (&biased, &norm)],
            ),
        ] {
            let (got, want) = (split_heads(&got, heads)?, split_heads(&want, heads)?);
            for (g, w) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                assert_eq!(max_diff(g, w)?, 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn rows_that_do_not_split_into_the_heads_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let x = Unbiased::already_biased(Tensor::zeros((1, 2, 20), DType::F32, &dev)?);
        let err = split_heads(&[(&x, &norm(4, 1.0)?)], 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 * hidden"), "{err}");
        Ok(())
    }
}
