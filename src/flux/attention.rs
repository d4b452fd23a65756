//! Attention over `[text | image | extra]` with an optional additive mask, and the hook seam.

use candle_core::{DType, Device, Result, Tensor, D};

use super::cpu_attention::{self, FusedAttention, FusedTextProbs};
use super::hook::{AttentionHook, AttentionRequest, BlockCtx, QkvView};
use super::rope::{apply_rope, Rope};

/// The most bytes of scores one query chunk of [`attention_in_query_chunks`] may hold.
pub const SCORE_CHUNK_BYTES: usize = 256 << 20;

/// softmax(q k^T / sqrt(d) + mask) v for (b, heads, seq, d) inputs, returned as (b, seq_q, heads*d).
/// `mask` is additive, (1 or b, 1, seq_q, seq_k) or (seq_q, seq_k). On the CPU a fused kernel that never holds the
/// scores (bf16 and f16 inputs are computed in f32); elsewhere query chunks whose scores stay
/// under [`SCORE_CHUNK_BYTES`], so a block's transient memory is bounded at every size and batch.
pub fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, heads, _, _) = q.dims4()?;
    let keys = k.dim(2)?;
    let mask = mask.map(|m| batched_mask(m, q, keys)).transpose()?;
    let mask = mask.as_ref();
    let empty = q.elem_count() == 0 || keys == 0;
    if matches!(q.device(), Device::Cpu) && cpu_attention::supports(q.dtype()) && !empty {
        return fused_attention(q, k, v, mask);
    }
    let row_bytes = heads * keys * q.dtype().size_in_bytes();
    let rows = (SCORE_CHUNK_BYTES / row_bytes.max(1)).max(1);
    attention_in_query_chunks(q, k, v, mask, rows)
}

/// The mask as (1 or b, 1, seq_q, seq_k); a (seq_q, seq_k) one is taken for every image and head.
fn batched_mask(mask: &Tensor, q: &Tensor, keys: usize) -> Result<Tensor> {
    let (b, _, seq, _) = q.dims4()?;
    match *mask.dims() {
        [mq, mk] if mq == seq && mk == keys => mask.reshape((1, 1, mq, mk)),
        [mb, 1, mq, mk] if (mb == 1 || mb == b) && mq == seq && mk == keys => Ok(mask.clone()),
        ref dims => candle_core::bail!(
            "attention mask {dims:?} does not fit {seq} queries over {keys} keys in a batch of {b}"
        ),
    }
}

/// The CPU kernel behind [`scaled_dot_product`]: tiles of scores with an online softmax.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let op = FusedAttention {
        scale: 1.0 / (q.dim(D::Minus1)? as f32).sqrt(),
        mask: mask
            .map(|m| match cpu_attention::mask_is_readable(m) {
                true => Ok(m.clone()),
                false => m.contiguous(),
            })
            .transpose()?,
    };
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    f32(q)?
        .apply_op3_no_bwd(&f32(k)?, &f32(v)?, &op)?
        .to_dtype(dtype)
}

/// [`scaled_dot_product`] with candle's operations, `rows` queries of one image at a time; with
/// `rows` >= seq_q and a batch of 1 it is the plain computation.
/// Scaling q before the product costs seq_q*d multiplies instead of seq_q*seq_k.
pub fn attention_in_query_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    rows: usize,
) -> Result<Tensor> {
    let (b, _, seq, d) = q.dims4()?;
    let rows = rows.max(1);
    let scale = 1.0 / (d as f64).sqrt();
    let mut images = Vec::with_capacity(b);
    for i in 0..b {
        let (q, k, v) = (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
        let mask = match mask {
            Some(m) if m.dim(0)? > 1 => Some(m.narrow(0, i, 1)?),
            m => m.cloned(),
        };
        let mut chunks = Vec::new();
        for start in (0..seq).step_by(rows) {
            let len = rows.min(seq - start);
            let logits = (q.narrow(2, start, len)? * scale)?.matmul(&k.t()?)?;
            let logits = match &mask {
                Some(mask) => logits.broadcast_add(&mask.narrow(2, start, len)?)?,
                None => logits,
            };
            let out = candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v)?;
            chunks.push(out.transpose(1, 2)?.flatten_from(2)?);
        }
        images.push(Tensor::cat(&chunks, 1)?);
    }
    Tensor::cat(&images, 0)
}

/// Softmax of image queries over the first `n_text` keys with unscaled logits, in f32:
/// (b, heads, img_len, n_text). Inputs are after RoPE (which leaves text keys unrotated).
pub fn text_probs(q_img: &Tensor, k_text: &Tensor) -> Result<Tensor> {
    let q = q_img.to_dtype(DType::F32)?;
    let k = k_text.to_dtype(DType::F32)?;
    if matches!(q.device(), Device::Cpu) && q.elem_count() > 0 && k.dim(2)? > 0 {
        return q.apply_op2_no_bwd(&k, &FusedTextProbs);
    }
    candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)
}

/// The queries whose attention output a block needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queries {
    /// `[text | image]`: every block but the last.
    Joint,
    /// The image tokens only: the last block, whose text tokens the final layer never reads.
    /// Each query's output is computed exactly as in [`Queries::Joint`]; the text queries'
    /// are not computed at all.
    Image,
}

/// One block's attention, (b, queries, hidden). Without a hook this is candle's
/// `attention(q, k, v, pe)`; with one, the hook's request decides what else happens (see
/// [`AttentionHook`]). The keys are always all of `[text | image]` (and the hook's extra ones).
pub fn block_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &Rope,
    ctx: &BlockCtx,
    queries: Queries,
    hook: Option<&mut dyn AttentionHook>,
) -> Result<Tensor> {
    let (txt_len, img_len) = (ctx.txt_len, ctx.img_len());
    let rope_q = |q: &Tensor| match queries {
        Queries::Joint => apply_rope(q, rope),
        Queries::Image => apply_rope(
            &q.narrow(2, txt_len, img_len)?,
            &rope.narrow(txt_len, img_len)?,
        ),
    };
    let Some(hook) = hook else {
        let k = apply_rope(k, rope)?;
        return scaled_dot_product(&rope_q(q)?, &k, v, None);
    };
    let AttentionRequest {
        extra,
        text_probs: probs_over,
        read_output,
    } = hook.before_attention(ctx, QkvView { q, k, v, rope })?;
    let q = rope_q(q)?;
    let k = apply_rope(k, rope)?;
    let img_q = match queries {
        Queries::Joint => q.narrow(2, txt_len, img_len)?,
        Queries::Image => q.clone(),
    };
    let probs = match probs_over {
        Some(n) => Some(text_probs(&img_q, &k.narrow(2, 0, n)?)?),
        None => None,
    };
    let out = match extra {
        None => scaled_dot_product(&q, &k, v, None)?,
        Some(extra) => {
            let k = Tensor::cat(&[&k, &extra.k], 2)?;
            let v = Tensor::cat(&[v, &extra.v], 2)?;
            let mask = match (queries, extra.mask) {
                (Queries::Image, Some(mask)) => Some(mask.narrow(2, txt_len, img_len)?),
                (_, mask) => mask,
            };
            scaled_dot_product(&q, &k, &v, mask.as_ref())?
        }
    };
    if probs.is_none() && !read_output {
        return Ok(out);
    }
    match queries {
        Queries::Joint => {
            let txt_out = out.narrow(1, 0, txt_len)?;
            let img_out = hook.after_attention(ctx, probs, out.narrow(1, txt_len, img_len)?)?;
            Tensor::cat(&[&txt_out, &img_out], 1)
        }
        Queries::Image => hook.after_attention(ctx, probs, out),
    }
}
