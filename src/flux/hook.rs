//! The one seam through which CharaConsist enters the transformer (DESIGN.md, "The seam").
//!
//! A hook sees every block's queries, keys before RoPE and values; it may append extra keys and
//! values with an additive mask, ask for text-attention probabilities of the image queries, and
//! read or replace the image tokens' attention output before the output projection. A block that
//! is asked for nothing computes exactly what candle-transformers' FLUX computes.

use candle_core::{Result, Tensor};

use super::rope::Rope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Double,
    Single,
}

/// Which block is running, at which denoising step, over which token layout.
#[derive(Debug, Clone, Copy)]
pub struct BlockCtx {
    pub kind: BlockKind,
    /// Index among the blocks of the same kind.
    pub index: usize,
    /// 0-based denoising step.
    pub step: usize,
    pub txt_len: usize,
    /// Image height and width in tokens; image token `r * img_w + c` follows the text.
    pub img_h: usize,
    pub img_w: usize,
}

impl BlockCtx {
    pub fn img_len(&self) -> usize {
        self.img_h * self.img_w
    }
}

/// The attention inputs of one block, in the joint order `[text | image]`.
pub struct QkvView<'a> {
    /// (b, heads, seq, head_dim), after the query RMSNorm, before RoPE.
    pub q: &'a Tensor,
    /// (b, heads, seq, head_dim), after the key RMSNorm, before RoPE.
    pub k: &'a Tensor,
    /// (b, heads, seq, head_dim).
    pub v: &'a Tensor,
    /// The RoPE table of the joint sequence.
    pub rope: &'a Rope,
}

/// Keys and values appended after `[text | image]`.
pub struct ExtraKv {
    /// (b, heads, extra, head_dim), already RoPE-encoded at positions the hook chose.
    pub k: Tensor,
    /// (b, heads, extra, head_dim).
    pub v: Tensor,
    /// Additive mask (1 or b, 1, seq, seq + extra) in the model's dtype; `None` lets every query see
    /// every key.
    pub mask: Option<Tensor>,
}

/// What a hook asks of one attention call. The default asks for nothing.
#[derive(Default)]
pub struct AttentionRequest {
    pub extra: Option<ExtraKv>,
    /// Softmax of the image queries over the first N text keys, unscaled logits (as the reference
    /// computes its foreground mask), returned to [`AttentionHook::after_attention`].
    pub text_probs: Option<usize>,
    /// Call [`AttentionHook::after_attention`] with the image tokens' attention output.
    pub read_output: bool,
}

pub trait AttentionHook {
    /// Sees the block's attention inputs and says what it wants from this attention call.
    fn before_attention(&mut self, ctx: &BlockCtx, qkv: QkvView<'_>) -> Result<AttentionRequest>;

    /// Called when the request asked for text probabilities or the output. `text_probs` is
    /// (b, heads, img_len, N) in f32; `img_out` is the image tokens' attention output
    /// (b, img_len, hidden) before the projection. Returns the output to use in its place.
    fn after_attention(
        &mut self,
        ctx: &BlockCtx,
        text_probs: Option<Tensor>,
        img_out: Tensor,
    ) -> Result<Tensor>;

    /// Called once the step's forward pass is complete (masks and matches of that step are
    /// final then).
    fn end_step(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
}

/// Lends an optional hook to one call; `Option::as_deref_mut` cannot shorten the trait object's
/// lifetime, this coercion can.
pub fn reborrow<'a>(
    hook: &'a mut Option<&mut dyn AttentionHook>,
) -> Option<&'a mut dyn AttentionHook> {
    match hook {
        Some(h) => Some(&mut **h),
        None => None,
    }
}
