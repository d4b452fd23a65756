//! What a steered run reads from the runs that steer it: a finished bank (the banked modes), or
//! a run recomputed beside it in the same lockstep forward (`--bank recompute`), whose keys,
//! values and attention outputs are held for the current block only and never across steps.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::cell::RefCell;

use super::bank::{Bank, Record, RecordPlan, Slot, TokenSubset};
use super::recipe::Schedule;

/// The identity a panel's foreground follows.
#[derive(Clone, Copy)]
pub enum IdentityRef<'a> {
    Bank(&'a Bank),
    Live(&'a LiveRecord),
}

/// The image a panel locks its background onto (the identity, or the scene's first panel).
#[derive(Clone, Copy)]
pub enum BackgroundRef<'a> {
    Bank(&'a TokenSubset),
    Live(&'a LiveRecord),
}

impl IdentityRef<'_> {
    /// The identity's foreground mask at the mask step.
    pub fn mask(&self) -> Result<Vec<bool>> {
        match self {
            IdentityRef::Bank(bank) => Ok(bank.mask.clone()),
            IdentityRef::Live(live) => live.mask(),
        }
    }

    /// The identity's normalized attention outputs of single block `layer` at the mask step.
    pub fn features(&self, slot: Slot, dev: &Device) -> Result<Tensor> {
        match self {
            IdentityRef::Bank(bank) => {
                let features = bank.features.get(&slot.1).with_context(|| {
                    format!(
                        "the identity bank has no features of single block {}",
                        slot.1
                    )
                })?;
                Ok(features.to_device(dev)?)
            }
            IdentityRef::Live(live) => live.features(slot),
        }
    }

    /// Keys and values (rows) of identity foreground tokens at a slot, on `dev`.
    pub fn kv(&self, slot: Slot, tokens: &[u32], dev: &Device) -> Result<Option<(Tensor, Tensor)>> {
        match self {
            IdentityRef::Bank(bank) => to_device_kv(
                bank.fg
                    .as_ref()
                    .context("the identity bank has no foreground")?
                    .kv(slot, tokens)?,
                dev,
            ),
            IdentityRef::Live(live) => live.kv(slot, tokens).map(Some),
        }
    }

    /// Attention outputs (rows) of identity foreground tokens at a slot, on `dev`.
    pub fn out(&self, slot: Slot, tokens: &[u32], dev: &Device) -> Result<Option<Tensor>> {
        match self {
            IdentityRef::Bank(bank) => match bank.fg.as_ref() {
                Some(fg) => Ok(fg
                    .out(slot, tokens)?
                    .map(|o| o.to_device(dev))
                    .transpose()?),
                None => Ok(None),
            },
            IdentityRef::Live(live) => live.out(slot, tokens).map(Some),
        }
    }
}

impl BackgroundRef<'_> {
    /// For every image token of the reference: whether it is background there.
    pub fn background(&self) -> Result<Vec<bool>> {
        match self {
            BackgroundRef::Bank(subset) => Ok(subset.member_mask()),
            BackgroundRef::Live(live) => Ok(live.mask()?.iter().map(|&m| !m).collect()),
        }
    }

    /// Keys and values (rows) of reference background tokens at a slot, on `dev`.
    pub fn kv(&self, slot: Slot, tokens: &[u32], dev: &Device) -> Result<Option<(Tensor, Tensor)>> {
        match self {
            BackgroundRef::Bank(subset) => to_device_kv(subset.kv(slot, tokens)?, dev),
            BackgroundRef::Live(live) => live.kv(slot, tokens).map(Some),
        }
    }
}

/// A bank's slice moved to the device a run computes on (a no-op for a bank on that device).
fn to_device_kv(kv: Option<(Tensor, Tensor)>, dev: &Device) -> Result<Option<(Tensor, Tensor)>> {
    Ok(match kv {
        Some((k, v)) => Some((k.to_device(dev)?, v.to_device(dev)?)),
        None => None,
    })
}

/// One block's worth of what a recomputed reference run saw: written by its hook, read by the
/// hooks of the runs after it in the same lockstep forward, overwritten at the next block.
#[derive(Default)]
pub struct LiveRecord {
    /// The run's foreground mask at the mask step: known before the batch where a later run
    /// needs it from step 1 (a locked background), or set when the run reaches the mask step.
    mask: RefCell<Option<Vec<bool>>>,
    /// Image keys (pre-RoPE) and values as rows (img_len, hidden).
    kv: RefCell<Option<(Slot, Tensor, Tensor)>>,
    /// Image attention output rows (img_len, hidden).
    out: RefCell<Option<(Slot, Tensor)>>,
    /// Normalized attention output rows at the mask step.
    features: RefCell<Option<(Slot, Tensor)>>,
}

impl LiveRecord {
    /// A record whose mask is already known from an earlier batch.
    pub fn with_mask(mask: Option<Vec<bool>>) -> Self {
        Self {
            mask: RefCell::new(mask),
            ..Self::default()
        }
    }

    fn mask(&self) -> Result<Vec<bool>> {
        self.mask
            .borrow()
            .clone()
            .context("internal: a lockstep reference was read before its mask was known")
    }

    fn current<T: Clone>(cell: &RefCell<Option<(Slot, T)>>, slot: Slot, what: &str) -> Result<T> {
        match &*cell.borrow() {
            Some((s, t)) if *s == slot => Ok(t.clone()),
            _ => bail!(
                "internal: the lockstep reference has no {what} at step {} of single block {}",
                slot.0,
                slot.1
            ),
        }
    }

    fn features(&self, slot: Slot) -> Result<Tensor> {
        Self::current(&self.features, slot, "features")
    }

    fn kv(&self, slot: Slot, tokens: &[u32]) -> Result<(Tensor, Tensor)> {
        let guard = self.kv.borrow();
        let Some((s, k, v)) = &*guard else {
            bail!(
                "internal: the lockstep reference has no keys at step {}",
                slot.0
            );
        };
        if *s != slot {
            bail!(
                "internal: the lockstep reference holds keys of step {} block {}, not step {} block {}",
                s.0,
                s.1,
                slot.0,
                slot.1
            );
        }
        let idx = Tensor::new(tokens, k.device())?;
        Ok((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))
    }

    fn out(&self, slot: Slot, tokens: &[u32]) -> Result<Tensor> {
        let out = Self::current(&self.out, slot, "attention output")?;
        Ok(out.index_select(&Tensor::new(tokens, out.device())?, 0)?)
    }
}

/// The hook side of a [`LiveRecord`]: records what `plan` says the later runs read.
pub struct LiveRecorder<'a> {
    pub plan: RecordPlan,
    pub schedule: &'a Schedule,
    pub record: &'a LiveRecord,
}

impl Record for LiveRecorder<'_> {
    fn wants_kv(&self, slot: Slot) -> bool {
        self.plan.wants_kv(self.schedule, slot)
    }

    fn wants_out(&self, slot: Slot) -> bool {
        self.plan.wants_out(self.schedule, slot)
    }

    fn wants_features(&self, step: usize) -> bool {
        self.plan.wants_features(self.schedule, step)
    }

    fn record_kv(&mut self, slot: Slot, k: Tensor, v: Tensor) -> Result<()> {
        *self.record.kv.borrow_mut() = Some((slot, k, v));
        Ok(())
    }

    fn record_out(&mut self, slot: Slot, out: Tensor) -> Result<()> {
        *self.record.out.borrow_mut() = Some((slot, out));
        Ok(())
    }

    fn record_features(&mut self, slot: Slot, normalized: Tensor) -> Result<()> {
        *self.record.features.borrow_mut() = Some((slot, normalized));
        Ok(())
    }

    /// A recomputation must reach the mask an earlier batch found; anything else would steer the
    /// later runs with another image than the one they were planned against.
    fn set_mask(&mut self, mask: Vec<bool>) -> Result<()> {
        let mut known = self.record.mask.borrow_mut();
        match &*known {
            Some(m) if *m != mask => {
                bail!("a recomputed reference image reached another mask than before (the device is not deterministic): render with --bank device")
            }
            _ => *known = Some(mask),
        }
        Ok(())
    }
}
