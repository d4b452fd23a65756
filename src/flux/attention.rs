//! Attention over `[text | image | extra]` with an optional additive mask, and the hook seam.

use candle_core::{DType, Result, Tensor, D};

use super::hook::{AttentionHook, AttentionRequest, BlockCtx, QkvView};
use super::rope::apply_rope;

/// softmax(q k^T / sqrt(d) + mask) v for (b, heads, seq, d) inputs, returned as (b, seq_q, heads*d).
/// Scaling q before the product costs seq_q*d multiplies instead of seq_q*seq_k.
pub fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let logits = (q * scale)?.matmul(&k.t()?)?;
    let logits = match mask {
        Some(mask) => logits.broadcast_add(mask)?,
        None => logits,
    };
    let out = candle_nn::ops::softmax_last_dim(&logits)?.matmul(v)?;
    out.transpose(1, 2)?.flatten_from(2)
}

/// Softmax of image queries over the first `n_text` keys with unscaled logits, in f32:
/// (b, heads, img_len, n_text). Inputs are after RoPE (which leaves text keys unrotated).
pub fn text_probs(q_img: &Tensor, k_text: &Tensor) -> Result<Tensor> {
    let q = q_img.to_dtype(DType::F32)?;
    let k = k_text.to_dtype(DType::F32)?;
    candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)
}

/// One block's attention. Without a hook this is candle's `attention(q, k, v, pe)`; with one, the
/// hook's request decides what else happens (see [`AttentionHook`]).
pub fn block_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pe: &Tensor,
    ctx: &BlockCtx,
    hook: Option<&mut dyn AttentionHook>,
) -> Result<Tensor> {
    let Some(hook) = hook else {
        let q = apply_rope(q, pe)?.contiguous()?;
        let k = apply_rope(k, pe)?.contiguous()?;
        return scaled_dot_product(&q, &k, v, None);
    };
    let AttentionRequest {
        extra,
        text_probs: probs_over,
        read_output,
    } = hook.before_attention(ctx, QkvView { q, k, v, pe })?;
    let q = apply_rope(q, pe)?.contiguous()?;
    let k = apply_rope(k, pe)?.contiguous()?;
    let (txt_len, img_len) = (ctx.txt_len, ctx.img_len());
    let probs = match probs_over {
        Some(n) => Some(text_probs(
            &q.narrow(2, txt_len, img_len)?,
            &k.narrow(2, 0, n)?,
        )?),
        None => None,
    };
    let out = match extra {
        None => scaled_dot_product(&q, &k, v, None)?,
        Some(extra) => {
            let k = Tensor::cat(&[&k, &extra.k], 2)?;
            let v = Tensor::cat(&[v, &extra.v], 2)?;
            scaled_dot_product(&q, &k, &v, extra.mask.as_ref())?
        }
    };
    if probs.is_none() && !read_output {
        return Ok(out);
    }
    let txt_out = out.narrow(1, 0, txt_len)?;
    let img_out = hook.after_attention(ctx, probs, out.narrow(1, txt_len, img_len)?)?;
    Tensor::cat(&[&txt_out, &img_out], 1)
}
