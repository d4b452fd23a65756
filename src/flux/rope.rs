//! Rotary position embeddings in candle's 2x2-rotation layout: `pe` has shape
//! (b, 1, seq, head_dim/2, 2, 2) and is built by candle's own `EmbedNd` from (b, seq, 3) ids.

use candle_core::{DType, Device, Result, Tensor, D};

/// Rotates consecutive pairs of `x` (b, heads, seq, head_dim) by the angles in `pe`: the
/// arithmetic of `apply_rope` in candle-transformers' flux/model.rs (x0 cos - x1 sin,
/// x0 sin + x1 cos, bit for bit), in one pass through candle's interleaved RoPE kernel.
pub fn apply_rope(x: &Tensor, pe: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let angles = |row: usize| -> Result<Tensor> {
        let t = pe
            .get_on_dim(1, 0)?
            .narrow(D::Minus2, row, 1)?
            .narrow(D::Minus1, 0, 1)?;
        let t = t.flatten_from(2)?;
        match t.dim(0)? {
            1 if b > 1 => t.squeeze(0)?.contiguous(),
            _ => t.contiguous(),
        }
    };
    // pe[.., 0, 0] = cos and pe[.., 1, 0] = sin (EmbedNd's rotation matrices).
    candle_nn::rotary_emb::rope_i(&x.contiguous()?, &angles(0)?, &angles(1)?)
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
