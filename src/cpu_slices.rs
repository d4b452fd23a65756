//! What candle's custom ops read on the CPU: a tensor's elements as one contiguous f32 slice.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, Layout, Result};

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
