//! Rotary position embeddings in candle's 2x2-rotation layout: `pe` has shape
//! (b, 1, seq, head_dim/2, 2, 2) and is built by candle's own `EmbedNd` from (b, seq, 3) ids.

use candle_core::{DType, Device, Result, Tensor, D};

/// Rotates consecutive pairs of `x` (b, heads, seq, head_dim) by the angles in `pe`.
/// Mirrors `apply_rope` of candle-transformers' flux/model.rs.
pub fn apply_rope(x: &Tensor, pe: &Tensor) -> Result<Tensor> {
    let (b, heads, seq, dim) = x.dims4()?;
    let x = x.reshape((b, heads, seq, dim / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let fr0 = pe.get_on_dim(D::Minus1, 0)?;
    let fr1 = pe.get_on_dim(D::Minus1, 1)?;
    (fr0.broadcast_mul(&x0)? + fr1.broadcast_mul(&x1)?)?.reshape((b, heads, seq, dim))
}

/// The rows of `pe` for the given token positions: `positions` index the joint sequence.
/// Used to encode borrowed keys at the positions of the tokens that matched them.
pub fn gather_positions(pe: &Tensor, positions: &Tensor) -> Result<Tensor> {
    pe.index_select(positions, 2)
}

/// Position ids (0, row, col) of an `h` x `w` token grid in row-major order, shape (1, h*w, 3).
pub fn image_ids(h: usize, w: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..h * w)
        .flat_map(|i| [0.0, (i / w) as f32, (i % w) as f32])
        .collect();
    Tensor::from_vec(ids, (1, h * w, 3), dev)?.to_dtype(dtype)
}
