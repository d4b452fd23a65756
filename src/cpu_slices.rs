//! What candle's custom ops read on the CPU (a tensor's elements as one contiguous f32 slice),
//! and the f32 buffers they write.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, Layout, Result};

use crate::dispatch::dispatched;

/// The contiguous f32 elements of a tensor; `op` and `what` name the operation and the operand
/// in the error.
pub fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => bail!("{op}: {what} must be a contiguous f32 tensor"),
    }
}

/// A vector of `len` f32 that `fill` writes in full, without zeroing it first: a zeroed
/// allocation of recycled heap is a memset pass over the whole output, which the kernels then
/// overwrite (3-4 % of a tiny storyboard's CPU time).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub unsafe fn written_in_full(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's contract: every one of the first `len` elements was written.
    unsafe { out.set_len(len) };
    out
}

/// [`add_bias`] for kernels compiled per target, which inline it.
#[inline(always)]
pub fn biased_row(dst: &mut [f32], xs: &[f32], bias: &[f32]) {
    assert!(dst.len() == xs.len() && xs.len() == bias.len());
    for ((d, &x), &b) in dst.iter_mut().zip(xs).zip(bias) {
        *d = x + b;
    }
}

dispatched! {
    /// `dst = xs + bias`, element by element: a layer's output row with the bias its product was
    /// made without ([`crate::flux::linear::Unbiased`]), for the pass that reads it next.
    pub fn add_bias(dst: &mut [f32], xs: &[f32], bias: &[f32]) => biased_row
}

/// Rows of the output a work item of [`transposed`] writes, and the side of the square tiles it
/// turns in a local buffer.
const TRANSPOSE_TILE: usize = 32;

/// The row-major (rows, cols) `matrix` as a row-major (cols, rows) one. Each 32 x 32 tile is
/// read row by row into a local buffer and written out row by row, so both sides run along
/// cache lines; writing the output in place at a stride of a few kilobytes lands every line in
/// the same cache set. Candle's copy of a transposed view gathers element by element: 15 ns an
/// element, minutes for FLUX.1's weights.
pub fn transposed(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(matrix.len(), rows * cols, "a {rows} x {cols} matrix");
    // SAFETY: each item owns output rows c0..c0 + width (input columns 32 at a time) and, tile
    // by tile down the input rows, writes all `rows` elements of each.
    unsafe {
        written_in_full(rows * cols, |out| {
            if out.is_empty() {
                return;
            }
            out.par_chunks_mut(TRANSPOSE_TILE * rows)
                .enumerate()
                .for_each(|(item, dst)| {
                    let (c0, width) = (item * TRANSPOSE_TILE, dst.len() / rows);
                    let mut tile = [[0f32; TRANSPOSE_TILE]; TRANSPOSE_TILE];
                    for r0 in (0..rows).step_by(TRANSPOSE_TILE) {
                        let height = TRANSPOSE_TILE.min(rows - r0);
                        for (i, line) in tile.iter_mut().enumerate().take(height) {
                            line[..width].copy_from_slice(&matrix[(r0 + i) * cols + c0..][..width]);
                        }
                        for j in 0..width {
                            let row = &mut dst[j * rows + r0..][..height];
                            for (i, d) in row.iter_mut().enumerate() {
                                d.write(tile[i][j]);
                            }
                        }
                    }
                });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_is_the_transpose() {
        for (rows, cols) in [(37, 70), (64, 32), (1, 5), (5, 1), (33, 31), (0, 3), (3, 0)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transposed(&m, rows, cols);
            assert_eq!(t.len(), m.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        m[r * cols + c],
                        "{rows} x {cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
