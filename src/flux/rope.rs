//! Rotary position embeddings in candle's 2x2-rotation layout: consecutive pairs of a head's
//! features are rotated by per-position angles, whose cosines and sines are taken once per run
//! from the table candle's own `EmbedNd` builds from (b, seq, 3) ids.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu_slices::{contiguous_f32, written_in_full};
use crate::dispatch::dispatched;

/// The rotation of every position of a sequence: cosines and sines (1 or b, seq, head_dim/2),
/// contiguous, in the model's dtype.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// From `EmbedNd`'s table (b, 1, seq, head_dim/2, 2, 2), whose rotation matrices hold
    /// cos at [.., 0, 0] and sin at [.., 1, 0].
    pub fn from_table(pe: &Tensor) -> Result<Self> {
        let entry = |row: usize| -> Result<Tensor> {
            pe.get_on_dim(1, 0)?
                .narrow(D::Minus2, row, 1)?
                .narrow(D::Minus1, 0, 1)?
                .flatten_from(2)?
                .contiguous()
        };
        Ok(Self {
            cos: entry(0)?,
            sin: entry(1)?,
        })
    }

    /// Positions in the table.
    pub fn len(&self) -> usize {
        self.cos.dims()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> &Device {
        self.cos.device()
    }

    /// The `len` positions from `start`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(1, start, len)?.contiguous()?,
            sin: self.sin.narrow(1, start, len)?.contiguous()?,
        })
    }

    /// The rows of the given positions (u32 indices into the sequence), in their order: used to
    /// encode borrowed keys at the positions of the tokens that matched them.
    pub fn gather(&self, positions: &Tensor) -> Result<Self> {
        Ok(Self {
            cos: self.cos.index_select(positions, 1)?,
            sin: self.sin.index_select(positions, 1)?,
        })
    }
}

/// Rotates consecutive pairs of `x` (b, heads, seq, head_dim) by the angles of `rope`:
/// x0 cos - x1 sin, x0 sin + x1 cos, the arithmetic of `apply_rope` in candle-transformers'
/// flux/model.rs bit for bit. On the CPU in f32 one vectorised pass; elsewhere candle's
/// interleaved RoPE kernel.
pub fn apply_rope(x: &Tensor, rope: &Rope) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (b, _, seq, _) = x.dims4()?;
    if seq != rope.len() {
        bail!("RoPE over {seq} positions with a table of {}", rope.len());
    }
    if matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && rope.cos.dtype() == DType::F32
    {
        return x.apply_op3_no_bwd(&rope.cos, &rope.sin, &RotatePairs);
    }
    // candle's kernel takes (seq, d/2) for angles shared by the batch, (b, seq, d/2) otherwise.
    let shared = |t: &Tensor| match t.dim(0)? {
        1 if b > 1 => t.squeeze(0),
        _ => Ok(t.clone()),
    };
    candle_nn::rotary_emb::rope_i(&x, &shared(&rope.cos)?, &shared(&rope.sin)?)
}

/// [`apply_rope`] on the CPU: x (b, heads, seq, d), cos and sin (1 or b, seq, d/2).
struct RotatePairs;

impl CustomOp3 for RotatePairs {
    fn name(&self) -> &'static str {
        "rope-pairs"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        cos: &CpuStorage,
        cos_l: &Layout,
        sin: &CpuStorage,
        sin_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(x, x_l, "rope", "x")?;
        let cos = contiguous_f32(cos, cos_l, "rope", "cos")?;
        let sin = contiguous_f32(sin, sin_l, "rope", "sin")?;
        let (b, heads, seq, dim) = x_l.shape().dims4()?;
        let per_batch = seq * dim / 2;
        let angle_batches = cos.len() / per_batch.max(1);
        if dim % 2 != 0 || sin.len() != cos.len() || !(angle_batches == 1 || angle_batches == b) {
            bail!("rope: x {:?} against angles {:?}", x_l.dims(), cos_l.dims());
        }
        // SAFETY: one item per (batch, head) block, each rotated in full.
        let out = unsafe {
            written_in_full(src.len(), |out| {
                if per_batch == 0 {
                    return;
                }
                out.par_chunks_mut(seq * dim)
                    .zip(src.par_chunks(seq * dim))
                    .enumerate()
                    .for_each(|(bh, (dst, src))| {
                        let at = (bh / heads % angle_batches) * per_batch;
                        let angles = at..at + per_batch;
                        rotate_pairs(src, &cos[angles.clone()], &sin[angles], dst);
                    })
            })
        };
        Ok((CpuStorage::F32(out), x_l.shape().clone()))
    }
}

#[inline(always)]
fn rotate(src: &[f32], cos: &[f32], sin: &[f32], dst: &mut [MaybeUninit<f32>]) {
    assert!(dst.len() == src.len() && cos.len() * 2 == src.len() && sin.len() == cos.len());
    for (((d, s), &c), &sn) in dst
        .chunks_exact_mut(2)
        .zip(src.chunks_exact(2))
        .zip(cos)
        .zip(sin)
    {
        d[0].write(s[0] * c - s[1] * sn);
        d[1].write(s[0] * sn + s[1] * c);
    }
}

dispatched! {
    /// `dst` = the pairs of `src` rotated by the angles whose cosines and sines are given, one
    /// angle per pair; `dst` may start uninitialised and is written in full.
    pub fn rotate_pairs(src: &[f32], cos: &[f32], sin: &[f32], dst: &mut [MaybeUninit<f32>]) => rotate
}

/// Position ids (0, row, col) of an `h` x `w` token grid in row-major order, shape (1, h*w, 3).
pub fn image_ids(h: usize, w: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..h * w)
        .flat_map(|i| [0.0, (i / w) as f32, (i % w) as f32])
        .collect();
    Tensor::from_vec(ids, (1, h * w, 3), dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table for 2 runs, 5 positions, head_dim 6, with distinct angles per run.
    fn table(dev: &Device) -> Result<Tensor> {
        let mut ids = Vec::new();
        for run in 0..2 {
            for p in 0..5 {
                ids.extend([0f32, (p + run) as f32, (2 * p) as f32]);
            }
        }
        let ids = Tensor::from_vec(ids, (2, 5, 3), dev)?;
        ids.apply(&candle_transformers::models::flux::model::EmbedNd::new(
            6,
            10_000,
            vec![2, 2, 2],
        ))
    }

    /// candle-transformers' `apply_rope` (crate-private there): the rotation matrices of `pe`
    /// applied as two broadcast products.
    fn reference(x: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let (b, h, seq, d) = x.dims4()?;
        let x = x.reshape((b, h, seq, d / 2, 2))?;
        let (x0, x1) = (x.narrow(D::Minus1, 0, 1)?, x.narrow(D::Minus1, 1, 1)?);
        let (fr0, fr1) = (pe.get_on_dim(D::Minus1, 0)?, pe.get_on_dim(D::Minus1, 1)?);
        (fr0.broadcast_mul(&x0)? + fr1.broadcast_mul(&x1)?)?.reshape((b, h, seq, d))
    }

    #[test]
    fn the_cpu_kernel_equals_candle_transformers_rope_to_the_bit() -> Result<()> {
        let dev = Device::Cpu;
        let pe = table(&dev)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 6), &dev)?;
        let want = reference(&x, &pe)?;
        let got = apply_rope(&x, &Rope::from_table(&pe)?)?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // Angles shared by a batch: run 0's table for both items.
        let rope0 = Rope::from_table(&pe.narrow(0, 0, 1)?)?;
        let got = apply_rope(&x, &rope0)?;
        let want = reference(&x, &pe.narrow(0, 0, 1)?.repeat((2, 1, 1, 1, 1, 1))?)?;
        assert_eq!((got - want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn narrowed_and_gathered_tables_rotate_the_rows_they_name() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::from_table(&table(&dev)?.narrow(0, 0, 1)?)?;
        let x = Tensor::randn(0f32, 1., (1, 2, 5, 6), &dev)?;
        let whole = apply_rope(&x, &rope)?;
        let part = apply_rope(&x.narrow(2, 1, 3)?, &rope.narrow(1, 3)?)?;
        assert_eq!(
            (part - whole.narrow(2, 1, 3)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?,
            0.0
        );
        let order = Tensor::new(&[4u32, 0, 2], &dev)?;
        let gathered = apply_rope(&x.index_select(&order, 2)?, &rope.gather(&order)?)?;
        let want = whole.index_select(&order, 2)?;
        assert_eq!(
            (gathered - want)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0
        );
        Ok(())
    }

    #[test]
    fn a_table_of_another_length_is_refused() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::from_table(&table(&dev)?)?;
        let x = Tensor::zeros((2, 1, 4, 6), DType::F32, &dev)?;
        let err = apply_rope(&x, &rope).unwrap_err().to_string();
        assert!(
            err.contains("4 positions") && err.contains("table of 5"),
            "{err}"
        );
        Ok(())
    }
}
