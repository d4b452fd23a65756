//! What candle's custom ops read on the CPU: a tensor's elements as one contiguous f32 slice.

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
