//! A dense layer's `x W^T + b` on the CPU in one pass: the output starts as the bias rows and
//! the product is accumulated into it by the same `gemm` call candle's matmul makes, where
//! candle zeroes a fresh output, multiplies into it, then adds the bias into another fresh
//! tensor. With the products summed in one block (inputs of up to a few hundred features) the
//! result is candle's to the bit: both round the product's sum, then its sum with the bias.
//! Wider inputs are summed in blocks whose partial sums meet the bias one block earlier, a
//! rounding-level difference. `x W^T` alone is for a consumer that adds the bias in its own
//! pass ([`super::linear::Unbiased`]): gemm then writes the output without reading it back.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use gemm::{gemm, Parallelism};

use crate::cpu_slices::{contiguous_f32, written_in_full};

/// `x (.., k) W^T + b` for f32 `x` contiguous, `W^T` (k, n) with contiguous rows (a narrowed
/// view of wider rows takes some of a layer's outputs) and `b` (n) contiguous.
pub struct BiasedProduct;

/// The elements of `W^T` (k, n) whose rows are contiguous, and their row stride.
fn weight_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize)> {
    let (k, n) = layout.shape().dims2()?;
    match (storage, layout.stride()) {
        (CpuStorage::F32(data), &[row_stride, 1]) if row_stride >= n => {
            let start = layout.start_offset();
            let len = k.checked_sub(1).map_or(0, |last| last * row_stride + n);
            Ok((&data[start..start + len], row_stride))
        }
        _ => bail!("linear: the transposed weight must be an f32 tensor with contiguous rows"),
    }
}

impl CustomOp3 for BiasedProduct {
    fn name(&self) -> &'static str {
        "biased-product"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        weight_t: &CpuStorage,
        weight_t_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = contiguous_f32(bias, bias_l, "linear", "bias")?;
        dense_product(xs, xs_l, weight_t, weight_t_l, Some(bias))
    }
}

/// `x (.., k) W^T` alone, for a consumer that adds the bias in its own pass: gemm writes the
/// product without reading a bias-filled output back.
pub struct Product;

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "product"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        weight_t: &CpuStorage,
        weight_t_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dense_product(xs, xs_l, weight_t, weight_t_l, None)
    }
}

fn dense_product(
    xs: &CpuStorage,
    xs_l: &Layout,
    weight_t: &CpuStorage,
    weight_t_l: &Layout,
    bias: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let xs = contiguous_f32(xs, xs_l, "linear", "x")?;
    let (weight_t, row_stride) = weight_rows(weight_t, weight_t_l)?;
    let (k, n) = weight_t_l.shape().dims2()?;
    let dims = xs_l.dims();
    if dims.last() != Some(&k) || bias.is_some_and(|b| b.len() != n) {
        bail!(
            "linear: input {dims:?}, transposed weight {:?}, bias {:?}",
            weight_t_l.dims(),
            bias.map(<[f32]>::len)
        );
    }
    let m = xs.len() / k.max(1);
    // SAFETY (both calls): out is m x n (row stride n), xs m x k (row stride k) and W^T k x n
    // (row stride row_stride >= n): all inside the slices above.
    let multiply = |out: *mut f32, read_out: bool| unsafe {
        multiply(m, n, k, out, read_out, xs, (weight_t, row_stride))
    };
    let out = match bias {
        Some(bias) => {
            let mut out = Vec::with_capacity(m * n);
            for _ in 0..m {
                out.extend_from_slice(bias);
            }
            multiply(out.as_mut_ptr(), true);
            out
        }
        None if m * n > 0 && k == 0 => vec![0.0; m * n],
        // SAFETY: without reading its output gemm writes every element of it (k > 0).
        None => unsafe { written_in_full(m * n, |out| multiply(out.as_mut_ptr().cast(), false)) },
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("checked above") = n;
    Ok((CpuStorage::F32(out), Shape::from(shape)))
}

/// `out (m, n) = x W^T`, or `out += x W^T` when `read_out`, on the compute pool's threads.
///
/// # Safety
/// `out` holds m x n elements (row stride n), `xs` m x k (row stride k), and the weight k rows
/// of n at `row_stride`.
unsafe fn multiply(
    m: usize,
    n: usize,
    k: usize,
    out: *mut f32,
    read_out: bool,
    xs: &[f32],
    (weight_t, row_stride): (&[f32], usize),
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = match threads > 1 {
        true => Parallelism::Rayon(threads),
        false => Parallelism::None,
    };
    // SAFETY: the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            read_out,
            xs.as_ptr(),
            1,
            k as isize,
            weight_t.as_ptr(),
            1,
            row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};

    fn layer_and_input(k: usize, n: usize) -> Result<(candle_nn::Linear, Tensor)> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let bias = Tensor::randn(0f32, 1., n, &dev)?;
        let xs = Tensor::randn(0f32, 1., (2, 37, k), &dev)?;
        Ok((candle_nn::Linear::new(weight, Some(bias)), xs))
    }

    fn fused(layer: &candle_nn::Linear, xs: &Tensor) -> Result<Tensor> {
        let bias = layer.bias().expect("a biased layer");
        xs.apply_op3_no_bwd(&layer.weight().t()?.contiguous()?, bias, &BiasedProduct)
    }

    /// At the tiny and test models' widths the products are summed in one block: candle's bits.
    #[test]
    fn equals_candles_linear_to_the_bit_on_narrow_inputs() -> Result<()> {
        for (k, n) in [(64, 192), (320, 64), (17, 5)] {
            let (layer, xs) = layer_and_input(k, n)?;
            let (ours, theirs) = (fused(&layer, &xs)?, layer.forward(&xs)?);
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "k {k}, n {n}");
        }
        Ok(())
    }

    /// FLUX's widths (3072 features in, 15360 in the single blocks' second layer) sum in
    /// blocks: within f32 rounding of candle's, relative to the outputs' size.
    #[test]
    fn is_within_rounding_of_candles_linear_on_wide_inputs() -> Result<()> {
        let (layer, xs) = layer_and_input(3072, 24)?;
        let (ours, theirs) = (fused(&layer, &xs)?, layer.forward(&xs)?);
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let size = theirs.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= 1e-5 * size,
            "max difference {diff} on outputs up to {size}"
        );
        Ok(())
    }
}
