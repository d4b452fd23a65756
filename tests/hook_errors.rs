//! A hook's error reaches the caller of `generate` through the transformer with its cause chain:
//! every context, and the root error itself, not a flattened message.

use candle_core::{DType, Device, Result, Tensor};
use charaboard::flux::error::to_candle;
use charaboard::flux::{AttentionHook, AttentionRequest, BlockCtx, BlockKind, QkvView};
use charaboard::models::tiny;
use charaboard::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use charaboard::sampler::StepControl;
use std::fmt;

/// The root cause, a typed error the caller must be able to get back.
#[derive(Debug, PartialEq)]
struct NotInBank {
    step: usize,
    block: usize,
}

impl fmt::Display for NotInBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} of single block {} is not in the bank",
            self.step, self.block
        )
    }
}

impl std::error::Error for NotInBank {}

/// Fails at single block 1 of step 1, as `ConsistHook` fails: an anyhow error with context,
/// turned into a candle error by the same `to_candle`.
struct FailingHook;

impl AttentionHook for FailingHook {
    fn before_attention(&mut self, ctx: &BlockCtx, _: QkvView<'_>) -> Result<AttentionRequest> {
        if ctx.kind == BlockKind::Single && ctx.index == 1 && ctx.step == 1 {
            let root = NotInBank {
                step: ctx.step,
                block: ctx.index,
            };
            return Err(to_candle(
                anyhow::Error::new(root).context("reading the identity's keys"),
            ));
        }
        Ok(AttentionRequest::default())
    }

    fn after_attention(&mut self, _: &BlockCtx, _: Option<Tensor>, out: Tensor) -> Result<Tensor> {
        Ok(out)
    }
}

#[test]
fn hook_error_reaches_the_caller_with_its_context_and_root_cause() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), 3, false).unwrap();
    let mut models = FluxModels::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let params = GenerateParams {
        prompt: "a knight".into(),
        width: 64,
        height: 64,
        steps: 2,
        guidance: 3.5,
        noise: NoiseSource::Seed(1),
    };
    let err = match generate(&mut models, &params, Some(&mut FailingHook), &mut |_| {
        Ok(StepControl::Continue)
    }) {
        Ok(_) => panic!("the hook fails at step 1"),
        Err(e) => e,
    };
    let shown = format!("{err:#}");
    assert!(
        shown.contains("reading the identity's keys: step 1 of single block 1 is not in the bank"),
        "{shown}"
    );
    let causes: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    assert_eq!(
        causes.last().map(String::as_str),
        Some("step 1 of single block 1 is not in the bank"),
        "{causes:?}"
    );
    assert!(causes.len() > 1, "{causes:?}");
    assert_eq!(
        err.root_cause().downcast_ref::<NotInBank>(),
        Some(&NotInBank { step: 1, block: 1 })
    );
}
