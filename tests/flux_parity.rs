//! The hookable transformer is FLUX: with no hook (or a hook that changes nothing) it computes what
//! candle-transformers' `flux::model::Flux` computes on the same weights.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::WithForward;
use charaboard::flux::rope::Rope;
use charaboard::flux::{
    rope, AttentionHook, AttentionRequest, BlockCtx, BlockKind, ExtraKv, Flux, FluxConfig, QkvView,
    StepInput, TokenLayout,
};
use charaboard::models::tiny;
use common::max_abs;

struct Fixture {
    ours: Flux,
    theirs: candle_transformers::models::flux::model::Flux,
    img: Tensor,
    txt: Tensor,
    pooled: Tensor,
    img_ids: Tensor,
    txt_ids: Tensor,
    rope: Rope,
    layout: TokenLayout,
}

const IMG_H: usize = 4;
const IMG_W: usize = 6;
const TXT: usize = 7;

fn fixture(cfg: &FluxConfig) -> anyhow::Result<Fixture> {
    let dev = Device::Cpu;
    let (ours, theirs) = transformers(cfg, DType::F32)?;
    let img = Tensor::randn(0f32, 1., (1, IMG_H * IMG_W, cfg.in_channels), &dev)?;
    let txt = Tensor::randn(0f32, 1., (1, TXT, cfg.context_in_dim), &dev)?;
    let pooled = Tensor::randn(0f32, 1., (1, cfg.vec_in_dim), &dev)?;
    let img_ids = rope::image_ids(IMG_H, IMG_W, DType::F32, &dev)?;
    let txt_ids = Tensor::zeros((1, TXT, 3), DType::F32, &dev)?;
    let rope = ours.rope_table(&txt_ids, &img_ids)?;
    let layout = TokenLayout {
        txt_len: TXT,
        img_h: IMG_H,
        img_w: IMG_W,
    };
    Ok(Fixture {
        ours,
        theirs,
        img,
        txt,
        pooled,
        img_ids,
        txt_ids,
        rope,
        layout,
    })
}

/// Ours and candle-transformers' FLUX on the same tiny weights, in `dtype`.
fn transformers(
    cfg: &FluxConfig,
    dtype: DType,
) -> anyhow::Result<(Flux, candle_transformers::models::flux::model::Flux)> {
    let weights = tiny::transformer_weights(cfg, 11)?;
    let vb = VarBuilder::from_tensors(weights.into_iter().collect(), dtype, &Device::Cpu);
    let ours = Flux::new(cfg, vb.clone())?;
    Ok((
        ours,
        candle_transformers::models::flux::model::Flux::new(cfg, vb)?,
    ))
}

impl Fixture {
    /// The same weights and inputs, rounded to `dtype`.
    fn in_dtype(&self, cfg: &FluxConfig, dtype: DType) -> anyhow::Result<Fixture> {
        let (ours, theirs) = transformers(cfg, dtype)?;
        let (img_ids, txt_ids) = (self.img_ids.to_dtype(dtype)?, self.txt_ids.to_dtype(dtype)?);
        Ok(Fixture {
            rope: ours.rope_table(&txt_ids, &img_ids)?,
            ours,
            theirs,
            img: self.img.to_dtype(dtype)?,
            txt: self.txt.to_dtype(dtype)?,
            pooled: self.pooled.to_dtype(dtype)?,
            img_ids,
            txt_ids,
            layout: self.layout,
        })
    }

    fn ours(&self, hook: Option<&mut dyn AttentionHook>) -> Result<Tensor> {
        let input = StepInput {
            img: &self.img,
            txt: &self.txt,
            pooled: &self.pooled,
            rope: &self.rope,
            layout: self.layout,
        };
        let t = Tensor::new(&[0.7f32], &Device::Cpu)?;
        let g = Tensor::new(&[3.5f32], &Device::Cpu)?;
        self.ours.forward(&input, &t, Some(&g), 3, hook)
    }

    fn theirs(&self) -> Result<Tensor> {
        let t = Tensor::new(&[0.7f32], &Device::Cpu)?;
        let g = Tensor::new(&[3.5f32], &Device::Cpu)?;
        self.theirs.forward(
            &self.img,
            &self.img_ids,
            &self.txt,
            &self.txt_ids,
            &t,
            &self.pooled,
            Some(&g),
        )
    }
}

/// Max |a - b| relative to max |b|, in f32.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap(),
        b.to_dtype(DType::F32).unwrap(),
    );
    max_abs(&(a - &b).unwrap()) / max_abs(&b)
}

#[test]
fn hooks_off_equals_candle_flux_dev_and_schnell() -> anyhow::Result<()> {
    for schnell in [false, true] {
        let f = fixture(&tiny::flux_config(schnell))?;
        let (ours, theirs) = (f.ours(None)?, f.theirs()?);
        assert_eq!(ours.dims(), &[1, IMG_H * IMG_W, 64]);
        let d = rel_diff(&ours, &theirs);
        assert!(d <= 1e-4, "schnell={schnell}: relative max difference {d}");
        assert!(max_abs(&theirs) > 0.1, "degenerate output");
    }
    Ok(())
}

/// bf16, as GPUs run it: both transformers on bf16 weights and inputs (the CPU's matrix products
/// widen each to f32 and round the result, as a GPU's bf16 GEMM accumulates in f32). They run
/// the same operations, so they differ only where the order of rounding does: a few bf16 ulps
/// (2^-8 = 0.4% each) relative to the output's scale. Against f32 the whole model's rounding
/// shows: bf16 moves the output by a few percent of its scale, no more.
#[test]
fn hooks_off_equals_candle_flux_in_bf16() -> anyhow::Result<()> {
    for schnell in [false, true] {
        let cfg = tiny::flux_config(schnell);
        let exact = fixture(&cfg)?;
        let bf16 = exact.in_dtype(&cfg, DType::BF16)?;
        let (ours, theirs) = (bf16.ours(None)?, bf16.theirs()?);
        assert_eq!(ours.dtype(), DType::BF16);
        let d = rel_diff(&ours, &theirs);
        let rounding = rel_diff(&ours, &exact.theirs()?);
        eprintln!("schnell={schnell}: ours vs candle in bf16 {d:.2e}, bf16 vs f32 {rounding:.2e}");
        assert!(d <= 2e-2, "schnell={schnell}: relative max difference {d}");
        assert!(
            rounding <= 3e-2,
            "schnell={schnell}: bf16 vs f32 {rounding}"
        );
        assert!(
            rounding > 0.0,
            "schnell={schnell}: bf16 computed exactly what f32 did"
        );
    }
    Ok(())
}

/// Appends random extra keys, fully masked out (or not), to every single block.
struct ExtraKeys {
    masked: bool,
    calls: usize,
}

impl AttentionHook for ExtraKeys {
    fn before_attention(&mut self, ctx: &BlockCtx, qkv: QkvView<'_>) -> Result<AttentionRequest> {
        if ctx.kind != BlockKind::Single {
            return Ok(AttentionRequest::default());
        }
        self.calls += 1;
        let (b, heads, seq, d) = qkv.k.dims4()?;
        let extra = 5;
        let k = Tensor::randn(0f32, 3., (b, heads, extra, d), qkv.k.device())?;
        let v = Tensor::randn(0f32, 3., (b, heads, extra, d), qkv.k.device())?;
        let fill = if self.masked { f32::NEG_INFINITY } else { 0.0 };
        let mask = Tensor::cat(
            &[
                Tensor::zeros((1, 1, seq, seq), DType::F32, qkv.k.device())?,
                Tensor::full(fill, (1, 1, seq, extra), qkv.k.device())?,
            ],
            3,
        )?;
        Ok(AttentionRequest {
            extra: Some(ExtraKv {
                k,
                v,
                mask: Some(mask),
            }),
            ..Default::default()
        })
    }

    fn after_attention(
        &mut self,
        _: &BlockCtx,
        _: Option<Tensor>,
        img_out: Tensor,
    ) -> Result<Tensor> {
        Ok(img_out)
    }
}

#[test]
fn fully_masked_extra_keys_change_nothing() -> anyhow::Result<()> {
    let f = fixture(&tiny::flux_config(false))?;
    let plain = f.ours(None)?;
    let mut masked = ExtraKeys {
        masked: true,
        calls: 0,
    };
    let with_masked = f.ours(Some(&mut masked))?;
    assert_eq!(masked.calls, 4, "one call per single block");
    assert!(rel_diff(&with_masked, &plain) <= 1e-6);
    let mut open = ExtraKeys {
        masked: false,
        calls: 0,
    };
    let with_open = f.ours(Some(&mut open))?;
    assert!(
        rel_diff(&with_open, &plain) > 1e-3,
        "visible extra keys must change the output"
    );
    Ok(())
}

/// Reads every block's output (and text probabilities); optionally scales the image output.
struct OutputHook {
    scale: f64,
    seen: Vec<(BlockKind, usize, usize)>,
    prob_sums_ok: bool,
}

impl AttentionHook for OutputHook {
    fn before_attention(&mut self, ctx: &BlockCtx, _: QkvView<'_>) -> Result<AttentionRequest> {
        Ok(AttentionRequest {
            text_probs: Some(ctx.txt_len - 2),
            read_output: true,
            ..Default::default()
        })
    }

    fn after_attention(
        &mut self,
        ctx: &BlockCtx,
        probs: Option<Tensor>,
        img_out: Tensor,
    ) -> Result<Tensor> {
        let probs = probs.expect("text probabilities were asked for");
        let (_, heads, img, n) = probs.dims4()?;
        assert_eq!((img, n), (ctx.img_len(), ctx.txt_len - 2));
        let sums = probs.sum(3)?.flatten_all()?.to_vec1::<f32>()?;
        self.prob_sums_ok &=
            sums.len() == heads * img && sums.iter().all(|s| (s - 1.0).abs() < 1e-5);
        self.seen.push((ctx.kind, ctx.index, ctx.step));
        img_out * self.scale
    }
}

#[test]
fn output_hook_that_returns_its_input_changes_nothing() -> anyhow::Result<()> {
    let f = fixture(&tiny::flux_config(false))?;
    let plain = f.ours(None)?;
    let mut same = OutputHook {
        scale: 1.0,
        seen: vec![],
        prob_sums_ok: true,
    };
    let out = f.ours(Some(&mut same))?;
    assert!(rel_diff(&out, &plain) <= 1e-6);
    assert!(
        same.prob_sums_ok,
        "text probabilities must be a softmax over the asked-for keys"
    );
    let expected: Vec<_> = (0..2)
        .map(|i| (BlockKind::Double, i, 3))
        .chain((0..4).map(|i| (BlockKind::Single, i, 3)))
        .collect();
    assert_eq!(same.seen, expected);
    let mut scaled = OutputHook {
        scale: 0.5,
        seen: vec![],
        prob_sums_ok: true,
    };
    assert!(
        rel_diff(&f.ours(Some(&mut scaled))?, &plain) > 1e-3,
        "a replaced output must matter"
    );
    Ok(())
}

#[test]
fn rope_at_gathered_positions_equals_rope_of_the_permuted_sequence() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let cfg = tiny::flux_config(false);
    let f = fixture(&cfg)?;
    let head_dim = cfg.hidden_size / cfg.num_heads;
    let x = Tensor::randn(0f32, 1., (1, 2, IMG_H * IMG_W, head_dim), &dev)?;
    let perm: Vec<u32> = (0..(IMG_H * IMG_W) as u32).rev().collect();
    let perm_t = Tensor::new(perm.as_slice(), &dev)?;
    let img_rope = f.rope.narrow(TXT, IMG_H * IMG_W)?;
    // Rotating the permuted rows at the gathered positions ...
    let a = rope::apply_rope(&x.index_select(&perm_t, 2)?, &img_rope.gather(&perm_t)?)?;
    // ... equals permuting the rows rotated at their own positions.
    let b = rope::apply_rope(&x, &img_rope)?.index_select(&perm_t, 2)?;
    assert!(rel_diff(&a, &b) < 1e-6);
    // And it is not the identity.
    assert!(rel_diff(&rope::apply_rope(&x, &img_rope)?, &x) > 1e-2);
    Ok(())
}
