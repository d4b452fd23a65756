//! The tanh-approximated GELU of the MLPs: on the CPU in f32 one vectorised pass (candle's runs
//! libm's `tanhf` per element, a tenth of a CPU forward); elsewhere candle's own.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vexp::gelu_tanh;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("the fused GELU reads f32 only");
        };
        let Some((start, row_stride, width)) = rows(layout) else {
            bail!("the fused GELU reads rows of contiguous elements");
        };
        let len = layout.shape().elem_count();
        let mut out = vec![0f32; len];
        match row_stride == width {
            true => out
                .par_chunks_mut(CHUNK)
                .zip(data[start..start + len].par_chunks(CHUNK))
                .for_each(|(o, x)| gelu_tanh(x, o)),
            false => out
                .par_chunks_mut(width)
                .enumerate()
                .for_each(|(i, o)| gelu_tanh(&data[start + i * row_stride..][..width], o)),
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
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

/// GELU, tanh approximation (candle's `Tensor::gelu`), of a tensor in any layout; contiguous out.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    match (xs.device(), xs.dtype()) {
        (Device::Cpu, DType::F32) if xs.elem_count() > 0 => match rows(xs.layout()) {
            Some(_) => xs.apply_op1_no_bwd(&Gelu),
            None => xs.contiguous()?.apply_op1_no_bwd(&Gelu),
        },
        _ => xs.gelu(),
    }
}
