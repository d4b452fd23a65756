//! The VAE's k x k convolutions on the CPU in f32: candle's tiled im2col product, the same tiles
//! of 512 output pixels and the same `gemm` call on the same matrices, so the sums are candle's
//! bit for bit. What differs is the memory traffic around the product: candle first copies the
//! whole input to NHWC one scalar at a time on one thread, gathers each patch value with bounds
//! checks and scatters the product back pixel by pixel; here each im2col row is a run of
//! contiguous copies from the NCHW input and the product is written straight into the output
//! (a fifth of a tiny storyboard's CPU time went to candle's copies). The bias is added to each
//! output tile while it is still in cache (the same f32 additions as candle's `broadcast_add`
//! after the convolution, without a second pass over the output and a second output buffer).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::cpu_slices::written_in_full;

/// Output pixels per product: candle's `TILE_SIZE`, which fixes the products' shapes and so
/// their rounding.
const TILE: usize = 512;

/// Padding, stride and dilation of a convolution (groups of 1).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
}

struct TiledConv {
    geometry: Geometry,
    /// One value per output channel, added to its outputs.
    bias: Option<Vec<f32>>,
}

thread_local! {
    /// Each thread's im2col tile, kept from one tile and one convolution to the next.
    static IM2COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output pointer shared by the tiles, which write disjoint pixel ranges.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: each tile writes only its own columns of the output (see `cpu_fwd`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The pointer `offset` values on (a method, so closures capture the whole `Dst`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp2 for TiledConv {
    fn name(&self) -> &'static str {
        "vae-conv2d"
    }

    fn cpu_fwd(
        &self,
        inp: &CpuStorage,
        inp_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(inp), CpuStorage::F32(k)) = (inp, k) else {
            bail!("vae-conv2d: f32 operands only");
        };
        let Some((start, _)) = inp_l.contiguous_offsets() else {
            bail!("vae-conv2d: the input must be contiguous");
        };
        let inp = &inp[start..];
        let (b, c_in, i_h, i_w) = inp_l.shape().dims4()?;
        let (c_out, k_c, k_h, k_w) = k_l.shape().dims4()?;
        if k_c != c_in {
            bail!("vae-conv2d: a kernel over {k_c} channels for an input of {c_in}");
        }
        let Geometry {
            padding,
            stride,
            dilation,
        } = self.geometry;
        if self.bias.as_ref().is_some_and(|b| b.len() != c_out) {
            bail!("vae-conv2d: a bias of the wrong length for {c_out} output channels");
        }
        let span = |i: usize, k: usize| (i + 2 * padding).checked_sub(dilation * (k - 1) + 1);
        let (Some(h_span), Some(w_span)) = (span(i_h, k_h), span(i_w, k_w)) else {
            bail!("vae-conv2d: a {k_h}x{k_w} kernel larger than the padded {i_h}x{i_w} input");
        };
        let (o_h, o_w) = (h_span / stride + 1, w_span / stride + 1);
        let pixels = o_h * o_w;
        // The kernel as (c_out, k_h, k_w, c_in) rows: candle's flattening.
        let ks = k_l.stride();
        let k = &k[k_l.start_offset()..];
        let mut k_flat = Vec::with_capacity(c_out * k_h * k_w * c_in);
        for o in 0..c_out {
            for y in 0..k_h {
                for x in 0..k_w {
                    k_flat.extend(
                        (0..c_in).map(|c| k[o * ks[0] + c * ks[1] + y * ks[2] + x * ks[3]]),
                    );
                }
            }
        }
        let k_size = c_in * k_h * k_w;
        let tiles = pixels.div_ceil(TILE);
        let tile = |dst: Dst, item: usize, col: &mut Vec<f32>| {
            let (bi, first) = (item / tiles, (item % tiles) * TILE);
            let len = TILE.min(pixels - first);
            let image = &inp[bi * c_in * i_h * i_w..][..c_in * i_h * i_w];
            if col.len() < k_size * len {
                col.resize(k_size * len, 0.0);
            }
            let col = &mut col[..k_size * len];
            for (r, row) in col.chunks_exact_mut(len).enumerate() {
                let (c, ky, kx) = (r % c_in, r / c_in / k_w, r / c_in % k_w);
                let plane = &image[c * i_h * i_w..][..i_h * i_w];
                im2col_row(row, plane, (i_h, i_w), o_w, first, (ky, kx), self.geometry);
            }
            // SAFETY: `out` holds b * c_out * pixels values; this tile writes rows 0..c_out of
            // columns first..first+len of image bi, with row stride `pixels`, and no other tile
            // writes those. k_flat is c_out x k_size and col k_size x len, both row-major.
            unsafe {
                gemm(
                    c_out,
                    len,
                    k_size,
                    dst.at(bi * c_out * pixels + first),
                    1,
                    pixels as isize,
                    false,
                    k_flat.as_ptr(),
                    1,
                    k_size as isize,
                    col.as_ptr(),
                    1,
                    len as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
            if let Some(bias) = &self.bias {
                for (o, &b) in bias.iter().enumerate() {
                    // SAFETY: row o of this tile's columns, written by the product above and by
                    // no other tile.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.at(bi * c_out * pixels + o * pixels + first),
                            len,
                        )
                    };
                    row.iter_mut().for_each(|y| *y += b);
                }
            }
        };
        // SAFETY: the tiles' products write every pixel of every output channel of every image
        // (gemm does not read a destination it is not told to accumulate into).
        let out = unsafe {
            written_in_full(b * c_out * pixels, |out| {
                let dst = Dst(out.as_mut_ptr().cast());
                (0..b * tiles)
                    .into_par_iter()
                    .for_each(|item| IM2COL.with_borrow_mut(|col| tile(dst, item, col)))
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, o_h, o_w))))
    }
}

/// One im2col row: the input value under kernel tap (ky, kx) of channel `plane` for each output
/// pixel `first..first + row.len()` (row-major over an `o_w`-wide output), zero in the padding.
/// Every element is written: the row comes from a buffer kept from tile to tile.
fn im2col_row(
    row: &mut [f32],
    plane: &[f32],
    (i_h, i_w): (usize, usize),
    o_w: usize,
    first: usize,
    (ky, kx): (usize, usize),
    g: Geometry,
) {
    let mut j = 0;
    while j < row.len() {
        let (oy, ox0) = ((first + j) / o_w, (first + j) % o_w);
        let n = (o_w - ox0).min(row.len() - j);
        let seg = &mut row[j..j + n];
        j += n;
        let Some(iy) = (oy * g.stride + ky * g.dilation)
            .checked_sub(g.padding)
            .filter(|&y| y < i_h)
        else {
            seg.fill(0.0);
            continue;
        };
        let line = &plane[iy * i_w..][..i_w];
        // Input column of output column ox: ox * stride + shift, inside the line or padding.
        let shift = (kx * g.dilation) as isize - g.padding as isize;
        if g.stride == 1 {
            // The output columns whose tap lands inside the line are one run of the line.
            let lo = (-shift).max(ox0 as isize);
            let hi = (i_w as isize - shift).min((ox0 + n) as isize);
            // Columns ox0..lo fall in the left padding, lo..hi inside the line, hi.. right.
            let lo = lo.min((ox0 + n) as isize) as usize;
            let hi = (hi.max(lo as isize)) as usize;
            let (left, rest) = seg.split_at_mut(lo - ox0);
            let (inside, right) = rest.split_at_mut(hi - lo);
            left.fill(0.0);
            right.fill(0.0);
            if !inside.is_empty() {
                let x0 = (lo as isize + shift) as usize;
                inside.copy_from_slice(&line[x0..x0 + (hi - lo)]);
            }
            continue;
        }
        for (t, v) in seg.iter_mut().enumerate() {
            let x = ((ox0 + t) * g.stride) as isize + shift;
            *v = match (0..i_w as isize).contains(&x) {
                true => line[x as usize],
                false => 0.0,
            };
        }
    }
}

/// Whether [`conv2d`] computes this convolution (and so candle's tiled product): f32 on the CPU,
/// one group and a kernel larger than 1x1 (candle multiplies 1x1 kernels another way).
pub fn takes(xs: &Tensor, kernel: &Tensor, groups: usize) -> bool {
    let (_, _, k_h, k_w) = kernel.dims4().unwrap_or((0, 0, 1, 1));
    xs.device().is_cpu()
        && xs.dtype() == candle_core::DType::F32
        && kernel.dtype() == candle_core::DType::F32
        && groups == 1
        && k_h * k_w > 1
        && xs.elem_count() > 0
}

/// `xs.conv2d(kernel, padding, stride, dilation, 1)`, plus `bias` (c_out) broadcast over the
/// pixels, for what [`takes`] accepts.
pub fn conv2d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    geometry: Geometry,
) -> Result<Tensor> {
    let bias = bias
        .map(|b| b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    xs.contiguous()?
        .apply_op2_no_bwd(kernel, &TiledConv { geometry, bias })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Bit for bit candle's convolution (and its bias added after it), over tiles that end inside
    /// an output row, a last tile shorter than the others, a batch of two, strides, dilation and
    /// padding wider than the tap, and a product long enough to be summed in blocks.
    #[test]
    fn equals_candles_convolution_to_the_bit() -> Result<()> {
        let dev = Device::Cpu;
        // The kept im2col tiles start as NaN: a padding entry left unwritten would show.
        rayon::broadcast(|_| IM2COL.with_borrow_mut(|col| *col = vec![f32::NAN; 1 << 16]));
        for (c_in, c_out, (h, w), k, g) in [
            (5, 7, (23, 37), 3, (1, 1, 1)),
            (3, 4, (19, 30), 3, (0, 2, 1)),
            (4, 6, (17, 29), 3, (2, 1, 2)),
            (2, 3, (9, 11), 5, (3, 2, 1)),
            (96, 8, (12, 13), 3, (1, 1, 1)),
        ] {
            let (padding, stride, dilation) = g;
            let xs = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev)?;
            let kernel = Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev)?;
            assert!(takes(&xs, &kernel, 1));
            let geometry = Geometry {
                padding,
                stride,
                dilation,
            };
            for bias in [None, Some(Tensor::randn(0f32, 1., c_out, &dev)?)] {
                let ours = conv2d(&xs, &kernel, bias.as_ref(), geometry)?;
                let mut theirs = xs.conv2d(&kernel, padding, stride, dilation, 1)?;
                if let Some(bias) = &bias {
                    theirs = theirs.broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
                }
                assert_eq!(ours.dims(), theirs.dims());
                let ours = ours.flatten_all()?.to_vec1::<f32>()?;
                let theirs = theirs.flatten_all()?.to_vec1::<f32>()?;
                let equal = ours
                    .iter()
                    .zip(&theirs)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    equal,
                    "{c_in}->{c_out} {h}x{w} k{k} {g:?}, bias {}",
                    bias.is_some()
                );
            }
        }
        Ok(())
    }
}
