//! Embedders, double and single stream blocks and the final layer of FLUX.1, in the structure and
//! with the tensor names of candle-transformers' `flux/model.rs` (BFL names), plus the hook seam.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::model::EmbedNd;

use super::attention::{block_attention, Queries};
use super::gelu::{gelu, gelu_after};
use super::heads::{split_heads, QkNorm};
use super::hook::{reborrow, AttentionHook, BlockCtx, BlockKind};
use super::linear::{Linear, Unbiased};
use super::modulate::{gated_residual, norm_modulate};
use super::rope::Rope;
use super::weights::Weights;
use super::FluxConfig;

/// Sinusoidal embedding of t in [0, 1] (times 1000), `[cos | sin]`; the same arithmetic as
/// candle's `timestep_embedding`, which is crate-private there.
pub fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    const TIME_FACTOR: f64 = 1000.;
    const MAX_PERIOD: f64 = 10000.;
    let half = dim / 2;
    let t = (t * TIME_FACTOR)?;
    let arange = Tensor::arange(0, half as u32, t.device())?.to_dtype(DType::F32)?;
    let freqs = (arange * (-MAX_PERIOD.ln() / half as f64))?.exp()?;
    let args = t
        .unsqueeze(1)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(dtype)
}

struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    fn new(in_sz: usize, h_sz: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            in_layer: vb.vector_linear(in_sz, h_sz, true, "in_layer")?,
            out_layer: vb.vector_linear(h_sz, h_sz, true, "out_layer")?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

/// The q and k RMSNorms of a block's heads (`query_norm.scale`, `key_norm.scale`).
fn qk_norm(dim: usize, vb: Weights) -> Result<QkNorm> {
    QkNorm::new(
        vb.get(dim, "query_norm.scale")?,
        vb.get(dim, "key_norm.scale")?,
    )
}

/// Shift, scale and gate of one adaLN modulation.
struct Modulation {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Modulation {
    /// The affine-free LayerNorm of `xs`, scaled and shifted.
    fn norm_scale_shift(&self, xs: &Tensor) -> Result<Tensor> {
        norm_modulate(xs, &self.scale, &self.shift)
    }

    /// `residual + gate * xs`.
    fn gated_add(&self, residual: &Tensor, xs: &Tensor) -> Result<Tensor> {
        gated_residual(residual, &self.gate, xs)
    }
}

/// `lin(silu(vec))` split into `n` modulations of (shift, scale, gate).
fn modulations(lin: &Linear, vec_: &Tensor, n: usize) -> Result<Vec<Modulation>> {
    let ys = vec_
        .silu()?
        .apply(lin)?
        .unsqueeze(1)?
        .chunk(3 * n, D::Minus1)?;
    Ok(ys
        .chunks(3)
        .map(|c| Modulation {
            shift: c[0].clone(),
            scale: c[1].clone(),
            gate: c[2].clone(),
        })
        .collect())
}

struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    fn new(in_sz: usize, mlp_sz: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            lin1: vb.linear(in_sz, mlp_sz, true, "0")?,
            lin2: vb.linear(mlp_sz, in_sz, true, "2")?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        gelu(&self.lin1.forward_unbiased(xs)?)?.apply(&self.lin2)
    }
}

/// The image or text half of a double block.
struct Stream {
    modulation: Linear,
    qkv: Linear,
    qk_norm: QkNorm,
    proj: Linear,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &FluxConfig, vb: &Weights, name: &str) -> Result<Self> {
        let h = cfg.hidden_size;
        let mlp_sz = (h as f64 * cfg.mlp_ratio) as usize;
        let attn = vb.pp(format!("{name}_attn"));
        Ok(Self {
            modulation: vb.vector_linear(h, 6 * h, true, &format!("{name}_mod.lin"))?,
            qkv: attn.linear(h, 3 * h, cfg.qkv_bias, "qkv")?,
            qk_norm: qk_norm(h / cfg.num_heads, attn.pp("norm"))?,
            proj: attn.linear(h, h, true, "proj")?,
            mlp: Mlp::new(h, mlp_sz, vb.pp(format!("{name}_mlp")))?,
        })
    }

    /// Modulations and the fused qkv projection (b, l, 3 * hidden) of this stream's tokens.
    fn pre_attention(&self, xs: &Tensor, vec_: &Tensor) -> Result<(Vec<Modulation>, Unbiased)> {
        let mods = modulations(&self.modulation, vec_, 2)?;
        let qkv = self.qkv.forward_unbiased(&mods[0].norm_scale_shift(xs)?)?;
        Ok((mods, qkv))
    }

    fn post_attention(&self, xs: &Tensor, attn: &Tensor, mods: &[Modulation]) -> Result<Tensor> {
        let xs = mods[0].gated_add(xs, &attn.apply(&self.proj)?)?;
        let mlp = self.mlp.forward(&mods[1].norm_scale_shift(&xs)?)?;
        mods[1].gated_add(&xs, &mlp)
    }
}

struct DoubleStreamBlock {
    img: Stream,
    txt: Stream,
    heads: usize,
}

impl DoubleStreamBlock {
    fn new(cfg: &FluxConfig, vb: Weights) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, &vb, "img")?,
            txt: Stream::new(cfg, &vb, "txt")?,
            heads: cfg.num_heads,
        })
    }

    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec_: &Tensor,
        rope: &Rope,
        ctx: &BlockCtx,
        hook: Option<&mut dyn AttentionHook>,
    ) -> Result<(Tensor, Tensor)> {
        let (img_mods, img_qkv) = self.img.pre_attention(img, vec_)?;
        let (txt_mods, txt_qkv) = self.txt.pre_attention(txt, vec_)?;
        let (q, k, v) = split_heads(
            &[(&txt_qkv, &self.txt.qk_norm), (&img_qkv, &self.img.qk_norm)],
            self.heads,
        )?;
        let attn = block_attention(&q, &k, &v, rope, ctx, Queries::Joint, hook)?;
        let txt_len = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, txt_len)?;
        let img_attn = attn.narrow(1, txt_len, attn.dim(1)? - txt_len)?;
        Ok((
            self.img.post_attention(img, &img_attn, &img_mods)?,
            self.txt.post_attention(txt, &txt_attn, &txt_mods)?,
        ))
    }
}

struct SingleStreamBlock {
    linear1: Linear,
    linear2: Linear,
    qk_norm: QkNorm,
    modulation: Linear,
    hidden: usize,
    heads: usize,
}

impl SingleStreamBlock {
    fn new(cfg: &FluxConfig, vb: Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let mlp_sz = (h as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            linear1: vb.linear(h, 3 * h + mlp_sz, true, "linear1")?,
            linear2: vb.linear(h + mlp_sz, h, true, "linear2")?,
            qk_norm: qk_norm(h / cfg.num_heads, vb.pp("norm"))?,
            modulation: vb.vector_linear(h, 3 * h, true, "modulation.lin")?,
            hidden: h,
            heads: cfg.num_heads,
        })
    }

    /// The block over the joint sequence `xs`; with [`Queries::Image`] only the image tokens'
    /// outputs are made and returned.
    fn forward(
        &self,
        xs: &Tensor,
        vec_: &Tensor,
        rope: &Rope,
        ctx: &BlockCtx,
        queries: Queries,
        hook: Option<&mut dyn AttentionHook>,
    ) -> Result<Tensor> {
        let m = modulations(&self.modulation, vec_, 1)?.remove(0);
        let normed = m.norm_scale_shift(xs)?;
        let qkv_width = 3 * self.hidden;
        // `linear1` of the rows whose outputs are made (all, or the image tokens after the
        // text), and q, k, v of every row.
        let (x, (q, k, v)) = match queries {
            Queries::Joint => {
                let x = self.linear1.forward_unbiased(&normed)?;
                let qkv = x.narrow(0, qkv_width)?;
                (x, split_heads(&[(&qkv, &self.qk_norm)], self.heads)?)
            }
            // The text tokens are only keys and values here: their MLP inputs, 4/7 of the
            // layer's outputs, are not made.
            Queries::Image => {
                let txt = normed.narrow(1, 0, ctx.txt_len)?;
                let txt_qkv = self.linear1.forward_unbiased_columns(&txt, 0, qkv_width)?;
                let img = normed.narrow(1, ctx.txt_len, ctx.img_len())?;
                let x = self.linear1.forward_unbiased(&img)?;
                let img_qkv = x.narrow(0, qkv_width)?;
                let streams = [(&txt_qkv, &self.qk_norm), (&img_qkv, &self.qk_norm)];
                (x, split_heads(&streams, self.heads)?)
            }
        };
        let attn = block_attention(&q, &k, &v, rope, ctx, queries, hook)?;
        let mlp = x.narrow(qkv_width, x.product.dim(D::Minus1)? - qkv_width)?;
        let out = gelu_after(&attn, &mlp)?.apply(&self.linear2)?;
        let residual = match queries {
            Queries::Joint => xs.clone(),
            Queries::Image => xs.narrow(1, ctx.txt_len, ctx.img_len())?,
        };
        m.gated_add(&residual, &out)
    }
}

struct LastLayer {
    linear: Linear,
    ada_ln_modulation: Linear,
}

impl LastLayer {
    fn new(cfg: &FluxConfig, vb: Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            linear: vb.linear(h, cfg.in_channels, true, "linear")?,
            ada_ln_modulation: vb.vector_linear(h, 2 * h, true, "adaLN_modulation.1")?,
        })
    }

    fn forward(&self, xs: &Tensor, vec_: &Tensor) -> Result<Tensor> {
        // BFL order: shift first, then scale.
        let chunks = vec_.silu()?.apply(&self.ada_ln_modulation)?.chunk(2, 1)?;
        let (shift, scale) = (&chunks[0], &chunks[1]);
        norm_modulate(xs, &scale.unsqueeze(1)?, &shift.unsqueeze(1)?)?.apply(&self.linear)
    }
}

/// Text length and image grid of one run; fixed for all its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    pub txt_len: usize,
    pub img_h: usize,
    pub img_w: usize,
}

/// Everything the transformer reads at one step, apart from the timestep.
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// Packed latents (b, img_h*img_w, in_channels).
    pub img: &'a Tensor,
    /// T5 hidden states (b, txt_len, context_in_dim).
    pub txt: &'a Tensor,
    /// CLIP pooled output (b, vec_in_dim).
    pub pooled: &'a Tensor,
    /// RoPE table from [`Flux::rope_table`]; built once per run.
    pub rope: &'a Rope,
    pub layout: TokenLayout,
}

/// The hookable FLUX.1 transformer.
pub struct Flux {
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    pe_embedder: EmbedNd,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
    config: FluxConfig,
}

impl Flux {
    /// The transformer over dense weights (safetensors, or a VarMap).
    pub fn new(cfg: &FluxConfig, vb: VarBuilder) -> Result<Self> {
        Self::from_weights(cfg, Weights::Dense(vb))
    }

    /// The transformer over dense or GGUF-quantized weights; the model is the same either way.
    pub fn from_weights(cfg: &FluxConfig, vb: Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let double_blocks = (0..cfg.depth)
            .map(|i| DoubleStreamBlock::new(cfg, vb.pp("double_blocks").pp(i)))
            .collect::<Result<_>>()?;
        let single_blocks = (0..cfg.depth_single_blocks)
            .map(|i| SingleStreamBlock::new(cfg, vb.pp("single_blocks").pp(i)))
            .collect::<Result<_>>()?;
        let guidance_in = match cfg.guidance_embed {
            true => Some(MlpEmbedder::new(256, h, vb.pp("guidance_in"))?),
            false => None,
        };
        Ok(Self {
            img_in: vb.linear(cfg.in_channels, h, true, "img_in")?,
            txt_in: vb.linear(cfg.context_in_dim, h, true, "txt_in")?,
            time_in: MlpEmbedder::new(256, h, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, h, vb.pp("vector_in"))?,
            guidance_in,
            pe_embedder: EmbedNd::new(h / cfg.num_heads, cfg.theta, cfg.axes_dim.clone()),
            double_blocks,
            single_blocks,
            final_layer: LastLayer::new(cfg, vb.pp("final_layer"))?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The RoPE table of `[text | image]` for the given position ids, each (b, len, 3).
    pub fn rope_table(&self, txt_ids: &Tensor, img_ids: &Tensor) -> Result<Rope> {
        Rope::from_table(&Tensor::cat(&[txt_ids, img_ids], 1)?.apply(&self.pe_embedder)?)
    }

    /// One velocity prediction (b, img_len, in_channels) at timestep `t` (b,) in [0, 1].
    pub fn forward(
        &self,
        input: &StepInput,
        t: &Tensor,
        guidance: Option<&Tensor>,
        step: usize,
        mut hook: Option<&mut dyn AttentionHook>,
    ) -> Result<Tensor> {
        let mut runs = [LockstepInput {
            input: *input,
            t,
            step,
            hook: reborrow(&mut hook),
        }];
        Ok(self.forward_lockstep(&mut runs, guidance)?.remove(0))
    }

    /// One velocity prediction for each of several runs, advanced block by block: every run
    /// passes block `i` before any run enters block `i + 1`, and runs earlier in `runs` pass it
    /// first. A hook can so read what an earlier run's hook saw in the same block of the same
    /// step (lockstep rendering); each run computes exactly what [`Self::forward`] computes for
    /// it alone. Hooks end their steps in the order of `runs`.
    pub fn forward_lockstep(
        &self,
        runs: &mut [LockstepInput],
        guidance: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        struct State {
            txt: Tensor,
            img: Tensor,
            vec_: Tensor,
        }
        let mut states = Vec::with_capacity(runs.len());
        for run in runs.iter() {
            let input = &run.input;
            let dtype = input.img.dtype();
            let txt = input.txt.apply(&self.txt_in)?;
            let img = input.img.apply(&self.img_in)?;
            let mut vec_ = self
                .time_in
                .forward(&timestep_embedding(run.t, 256, dtype)?)?;
            if let (Some(g_in), Some(g)) = (&self.guidance_in, guidance) {
                vec_ = (vec_ + g_in.forward(&timestep_embedding(g, 256, dtype)?)?)?;
            }
            let vec_ = (vec_ + self.vector_in.forward(input.pooled)?)?;
            states.push(State { txt, img, vec_ });
        }
        let ctx = |run: &LockstepInput, kind, index| BlockCtx {
            kind,
            index,
            step: run.step,
            txt_len: run.input.layout.txt_len,
            img_h: run.input.layout.img_h,
            img_w: run.input.layout.img_w,
        };
        for (i, block) in self.double_blocks.iter().enumerate() {
            for (run, s) in runs.iter_mut().zip(states.iter_mut()) {
                let c = ctx(&*run, BlockKind::Double, i);
                (s.img, s.txt) = block.forward(
                    &s.img,
                    &s.txt,
                    &s.vec_,
                    run.input.rope,
                    &c,
                    reborrow(&mut run.hook),
                )?;
            }
        }
        let mut joint = states
            .iter()
            .map(|s| Tensor::cat(&[&s.txt, &s.img], 1))
            .collect::<Result<Vec<_>>>()?;
        // The final layer reads the image tokens only, so the last single block makes only
        // theirs; after it `joint` holds the image tokens.
        let last = self.single_blocks.len().saturating_sub(1);
        for (i, block) in self.single_blocks.iter().enumerate() {
            let queries = if i == last {
                Queries::Image
            } else {
                Queries::Joint
            };
            for ((run, s), xs) in runs.iter_mut().zip(&states).zip(joint.iter_mut()) {
                let c = ctx(&*run, BlockKind::Single, i);
                *xs = block.forward(
                    xs,
                    &s.vec_,
                    run.input.rope,
                    &c,
                    queries,
                    reborrow(&mut run.hook),
                )?;
            }
        }
        let mut out = Vec::with_capacity(runs.len());
        for ((run, s), xs) in runs.iter().zip(&states).zip(&joint) {
            let img = match self.single_blocks.is_empty() {
                true => {
                    let txt_len = run.input.layout.txt_len;
                    xs.narrow(1, txt_len, xs.dim(1)? - txt_len)?
                }
                false => xs.clone(),
            };
            out.push(self.final_layer.forward(&img, &s.vec_)?);
        }
        for run in runs.iter_mut() {
            if let Some(hook) = run.hook.as_deref_mut() {
                hook.end_step(run.step)?;
            }
        }
        Ok(out)
    }
}

/// One run of a lockstep forward: its inputs, timestep, step index and hook.
pub struct LockstepInput<'a> {
    pub input: StepInput<'a>,
    pub t: &'a Tensor,
    pub step: usize,
    pub hook: Option<&'a mut dyn AttentionHook>,
}
