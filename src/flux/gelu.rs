//! The tanh-approximated GELU of the MLPs: on the CPU in f32 one vectorised pass (candle's runs
//! libm's `tanhf` per element, a tenth of a CPU forward); elsewhere candle's own. The single
//! blocks' `[attention | GELU(mlp)]` is made in the same pass, without a concatenation's copy.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use super::linear::Unbiased;
use super::vexp::gelu_tanh;
use crate::cpu_slices::{add_bias, written_in_full};

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// Rows of contiguous f32 elements at one stride, read through a layout.
struct Rows<'a> {
    data: &'a [f32],
    stride: usize,
    width: usize,
}

impl<'a> Rows<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            bail!("{what}: the fused GELU reads f32 only");
        };
        let Some((start, stride, width)) = rows(layout) else {
            bail!("{what}: the fused GELU reads rows of contiguous elements");
        };
        Ok(Self {
            data: &data[start..],
            stride,
            width,
        })
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..][..self.width]
    }
}

/// GELU of `xs + bias` (the bias along the rows), or of `xs`.
struct Gelu {
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = Rows::new(storage, layout, "GELU")?;
        let row_count = layout.shape().elem_count() / xs.width;
        let out = gelu_rows(None, &xs, self.bias.as_deref(), row_count)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `[prefix | GELU(xs + bias)]` along the last dimension, row by row.
struct GeluAfter {
    bias: Option<Vec<f32>>,
}

impl CustomOp2 for GeluAfter {
    fn name(&self) -> &'static str {
        "gelu-tanh-after"
    }

    fn cpu_fwd(
        &self,
        prefix: &CpuStorage,
        prefix_l: &Layout,
        xs: &CpuStorage,
        xs_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (prefix, xs) = (
            Rows::new(prefix, prefix_l, "GELU's prefix")?,
            Rows::new(xs, xs_l, "GELU")?,
        );
        let (mut dims, row_count) = (xs_l.dims().to_vec(), xs_l.shape().elem_count() / xs.width);
        if prefix_l.dims().split_last().map(|d| d.1) != dims.split_last().map(|d| d.1) {
            bail!(
                "GELU's prefix {:?} and input {:?} differ in their rows",
                prefix_l.dims(),
                dims
            );
        }
        *dims.last_mut().expect("rows have a last dimension") = prefix.width + xs.width;
        let out = gelu_rows(Some(&prefix), &xs, self.bias.as_deref(), row_count)?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `[prefix | GELU(xs + bias)]` (or without the prefix, or the bias) for `row_count` rows,
/// contiguous.
fn gelu_rows(
    prefix: Option<&Rows>,
    xs: &Rows,
    bias: Option<&[f32]>,
    row_count: usize,
) -> Result<Vec<f32>> {
    if bias.is_some_and(|b| b.len() != xs.width) {
        bail!(
            "GELU: a bias of {:?} for rows of {}",
            bias.map(<[f32]>::len),
            xs.width
        );
    }
    let prefix_width = prefix.map_or(0, |p| p.width);
    let width = prefix_width + xs.width;
    let len = row_count * width;
    if prefix.is_none() && bias.is_none() && xs.stride == xs.width {
        // Rows end to end: the input and output are one run each.
        // SAFETY: the chunks cover the output and gelu_tanh writes each in full.
        return Ok(unsafe {
            written_in_full(len, |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(xs.data[..len].par_chunks(CHUNK))
                    .for_each(|(o, x)| gelu_tanh(x, o))
            })
        });
    }
    // Work items of whole rows, about CHUNK elements each.
    let rows_per_item = (CHUNK / width).max(1);
    // SAFETY: the items cover the output's rows, and each row is written in full: the prefix's
    // part by the copy, the rest by gelu_tanh.
    Ok(unsafe {
        written_in_full(len, |out| {
            out.par_chunks_mut(rows_per_item * width)
                .enumerate()
                .for_each(|(item, o)| {
                    // A row with its bias added, in cache for the GELU's pass.
                    let mut biased = vec![0f32; bias.map_or(0, <[f32]>::len)];
                    for (r, o) in o.chunks_exact_mut(width).enumerate() {
                        let i = item * rows_per_item + r;
                        let (head, tail) = o.split_at_mut(prefix_width);
                        if let Some(prefix) = prefix {
                            head.write_copy_of_slice(prefix.row(i));
                        }
                        let row = match bias {
                            Some(bias) => {
                                add_bias(&mut biased, xs.row(i), bias);
                                &biased[..]
                            }
                            None => xs.row(i),
                        };
                        gelu_tanh(row, tail);
                    }
                })
        })
    })
}

/// (start, row stride, row length) when `layout` is rows of contiguous elements at one stride, as
/// a contiguous tensor or a narrowed last dimension is.
fn rows(layout: &Layout) -> Option<(usize, usize, usize)> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let n = dims.len();
    if n == 0 || strides[n - 1] != 1 {
        return None;
    }
    let row_stride = if n > 1 { strides[n - 2] } else { dims[0] };
    let uniform = (0..n.saturating_sub(2)).all(|i| strides[i] == strides[i + 1] * dims[i + 1]);
    uniform.then_some((layout.start_offset(), row_stride, dims[n - 1]))
}

/// The tensor itself where the fused kernels can read it, else a contiguous copy.
fn readable(xs: &Tensor) -> Result<Tensor> {
    match rows(xs.layout()) {
        Some(_) => Ok(xs.clone()),
        None => xs.contiguous(),
    }
}

fn fused(xs: &Tensor) -> bool {
    matches!((xs.device(), xs.dtype()), (Device::Cpu, DType::F32)) && xs.elem_count() > 0
}

/// GELU, tanh approximation (candle's `Tensor::gelu`), of a layer's outputs in any layout, its
/// bias added in the same pass; contiguous out.
pub fn gelu(xs: &Unbiased) -> Result<Tensor> {
    match fused(&xs.product) {
        true => readable(&xs.product)?.apply_op1_no_bwd(&Gelu {
            bias: xs.bias_values()?,
        }),
        false => xs.with_bias()?.gelu(),
    }
}

/// `Tensor::cat(&[prefix, &gelu(xs)?], D::Minus1)` (the same values) in one pass where the GELU
/// is fused; contiguous out.
pub fn gelu_after(prefix: &Tensor, xs: &Unbiased) -> Result<Tensor> {
    match fused(&xs.product) && fused(prefix) {
        true => readable(prefix)?.apply_op2_no_bwd(
            &readable(&xs.product)?,
            &GeluAfter {
                bias: xs.bias_values()?,
            },
        ),
        false => Tensor::cat(&[prefix, &gelu(xs)?], D::Minus1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_after_a_prefix_is_the_concatenation() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 37, 60), &dev)?;
        let prefix = Tensor::randn(0f32, 1.0, (2, 37, 12), &dev)?;
        // The input narrowed as the single blocks narrow theirs: rows at a stride.
        let xs = x.narrow(2, 20, 40)?;
        let unbiased = Unbiased::already_biased(xs.clone());
        let want = Tensor::cat(&[&prefix, &gelu(&unbiased)?], 2)?;
        let got = gelu_after(&prefix, &unbiased)?;
        assert_eq!(got.dims(), &[2, 37, 52]);
        let (got, want) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(got, want);
        // And against candle's GELU, to its rounding.
        let theirs = Tensor::cat(&[&prefix, &xs.gelu()?], 2)?;
        let diff = (theirs.flatten_all()?.to_vec1::<f32>()?.iter())
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    /// A bias left to the GELU gives the GELU of the biased outputs, bit for bit, alone and
    /// after a prefix.
    #[test]
    fn a_bias_added_in_the_gelu_pass_is_the_biased_gelu() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 37, 60), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 40, &dev)?;
        let prefix = Tensor::randn(0f32, 1.0, (2, 37, 12), &dev)?;
        let xs = x.narrow(2, 20, 40)?;
        let unbiased = Unbiased {
            product: xs.clone(),
            bias: Some(bias.clone()),
        };
        let biased = Unbiased::already_biased(xs.broadcast_add(&bias)?);
        let values = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
        assert_eq!(values(gelu(&unbiased)?)?, values(gelu(&biased)?)?);
        assert_eq!(
            values(gelu_after(&prefix, &unbiased)?)?,
            values(gelu_after(&prefix, &biased)?)?
        );
        Ok(())
    }
}
