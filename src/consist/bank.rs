//! What a recording run keeps for later runs, and nothing more (DESIGN.md, "The identity bank,
//! lean"): keys and values only for the layers, steps and tokens that are read later.
//!
//! Tensors are stored token-major, (tokens, heads * head_dim), so that gathering the rows of
//! matched tokens is one `index_select`.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

use super::recipe::Schedule;

/// (step, single-block index).
pub type Slot = (usize, usize);

fn bytes_of(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// (1, heads, n, d) -> (n, heads * d).
pub fn to_rows(x: &Tensor) -> Result<Tensor> {
    let (_, heads, n, d) = x.dims4()?;
    Ok(x.squeeze(0)?.transpose(0, 1)?.reshape((n, heads * d))?)
}

/// (n, heads * d) -> (1, heads, n, d), contiguous.
pub fn from_rows(rows: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, hd) = rows.dims2()?;
    Ok(rows
        .reshape((n, heads, hd / heads))?
        .transpose(0, 1)?
        .contiguous()?
        .unsqueeze(0)?)
}

fn index_tensor(ids: &[u32], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::new(ids, dev)?)
}

/// Keys, values and attention outputs of a fixed subset of image tokens, per slot.
pub struct TokenSubset {
    /// The image tokens kept, ascending.
    tokens: Vec<u32>,
    /// For every image token its row in the stored tensors, or `u32::MAX`.
    row_of: Vec<u32>,
    kv: BTreeMap<Slot, (Tensor, Tensor)>,
    out: BTreeMap<Slot, Tensor>,
}

impl TokenSubset {
    fn new(member: &[bool]) -> Self {
        let tokens: Vec<u32> = (0..member.len() as u32)
            .filter(|&i| member[i as usize])
            .collect();
        let mut row_of = vec![u32::MAX; member.len()];
        for (row, &t) in tokens.iter().enumerate() {
            row_of[t as usize] = row as u32;
        }
        Self {
            tokens,
            row_of,
            kv: BTreeMap::new(),
            out: BTreeMap::new(),
        }
    }

    pub fn contains(&self, token: u32) -> bool {
        self.row_of
            .get(token as usize)
            .is_some_and(|&r| r != u32::MAX)
    }

    /// Membership of every image token.
    pub fn member_mask(&self) -> Vec<bool> {
        self.row_of.iter().map(|&r| r != u32::MAX).collect()
    }

    fn prune(&self, full: &Tensor) -> Result<Tensor> {
        Ok(full.index_select(&index_tensor(&self.tokens, full.device())?, 0)?)
    }

    fn rows(&self, tokens: &[u32], dev: &Device) -> Result<Tensor> {
        let rows: Vec<u32> = tokens
            .iter()
            .map(|&t| match self.row_of.get(t as usize) {
                Some(&r) if r != u32::MAX => Ok(r),
                _ => anyhow::bail!("image token {t} is not in the recorded subset"),
            })
            .collect::<Result<_>>()?;
        index_tensor(&rows, dev)
    }

    /// Keys and values (rows) of the given image tokens at a slot, if it was recorded.
    pub fn kv(&self, slot: Slot, tokens: &[u32]) -> Result<Option<(Tensor, Tensor)>> {
        let Some((k, v)) = self.kv.get(&slot) else {
            return Ok(None);
        };
        let idx = self.rows(tokens, k.device())?;
        Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?)))
    }

    /// Attention outputs (rows) of the given image tokens at a slot, if recorded.
    pub fn out(&self, slot: Slot, tokens: &[u32]) -> Result<Option<Tensor>> {
        let Some(o) = self.out.get(&slot) else {
            return Ok(None);
        };
        Ok(Some(o.index_select(&self.rows(tokens, o.device())?, 0)?))
    }

    pub fn bytes(&self) -> usize {
        let kv: usize = self
            .kv
            .values()
            .map(|(k, v)| bytes_of(k) + bytes_of(v))
            .sum();
        kv + self.out.values().map(bytes_of).sum::<usize>()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The kept tokens, keys and values, and attention outputs (for a bank file).
    #[allow(clippy::type_complexity)]
    pub fn parts(
        &self,
    ) -> (
        &[u32],
        &BTreeMap<Slot, (Tensor, Tensor)>,
        &BTreeMap<Slot, Tensor>,
    ) {
        (&self.tokens, &self.kv, &self.out)
    }

    /// A subset read back from a bank file: `tokens` ascending image tokens of `img_len`.
    pub fn from_parts(
        tokens: Vec<u32>,
        img_len: usize,
        kv: BTreeMap<Slot, (Tensor, Tensor)>,
        out: BTreeMap<Slot, Tensor>,
    ) -> Result<Self> {
        anyhow::ensure!(
            tokens.windows(2).all(|w| w[0] < w[1])
                && tokens.last().is_none_or(|&t| (t as usize) < img_len),
            "the kept tokens are not ascending image tokens"
        );
        let mut member = vec![false; img_len];
        for &t in &tokens {
            member[t as usize] = true;
        }
        Ok(Self {
            kv,
            out,
            ..Self::new(&member)
        })
    }
}

/// What a recording run keeps (decided by its role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPlan {
    /// Keys and values at foreground tokens of the foreground-sharing slots, and attention
    /// outputs at foreground tokens of the token-merging slots (the identity).
    pub foreground: bool,
    /// Keys and values at background tokens of the background-sharing slots (the identity when
    /// a scene locks onto its background, or a scene's reference panel).
    pub background: bool,
    /// Normalized attention outputs of every token at the mask step (point matching reads them).
    pub features: bool,
}

impl RecordPlan {
    fn fg_kv(&self, s: &Schedule, (step, layer): Slot) -> bool {
        self.foreground && s.shares(step) && s.is_fg_layer(layer)
    }

    fn fg_out(&self, s: &Schedule, (step, layer): Slot) -> bool {
        self.foreground && s.shares(step) && s.is_fg_layer(layer) && s.merge_alpha(step) > 0.0
    }

    fn bg_kv(&self, s: &Schedule, (step, layer): Slot) -> bool {
        self.background && s.shares(step) && s.is_bg_layer(layer)
    }

    pub fn wants_kv(&self, s: &Schedule, slot: Slot) -> bool {
        self.fg_kv(s, slot) || self.bg_kv(s, slot)
    }

    pub fn wants_out(&self, s: &Schedule, slot: Slot) -> bool {
        self.fg_out(s, slot)
    }

    pub fn wants_features(&self, s: &Schedule, step: usize) -> bool {
        self.features && step == s.mask_step
    }
}

/// Where a recording run's hook puts what later runs read: a [`Recorder`] (a bank kept across
/// runs) or a lockstep reference (one block's worth, read by the runs beside it).
pub trait Record {
    fn wants_kv(&self, slot: Slot) -> bool;
    fn wants_out(&self, slot: Slot) -> bool;
    fn wants_features(&self, step: usize) -> bool;
    /// Image keys (pre-RoPE) and values, as rows (img_len, hidden).
    fn record_kv(&mut self, slot: Slot, k: Tensor, v: Tensor) -> Result<()>;
    /// The image tokens' attention output (img_len, hidden).
    fn record_out(&mut self, slot: Slot, out: Tensor) -> Result<()>;
    /// Normalized attention outputs of every image token at the mask step.
    fn record_features(&mut self, slot: Slot, normalized: Tensor) -> Result<()>;
    /// The recorded image's foreground mask at the mask step.
    fn set_mask(&mut self, mask: Vec<bool>) -> Result<()>;
}

/// Full-size records of the steps before the mask is known.
#[derive(Default)]
struct Pending {
    kv: BTreeMap<Slot, (Tensor, Tensor)>,
    out: BTreeMap<Slot, Tensor>,
}

/// A recording in progress: full-size tensors until the mask is known, then only subsets.
pub struct Recorder {
    pub plan: RecordPlan,
    pub schedule: Schedule,
    pending: Pending,
    fg: Option<TokenSubset>,
    bg: Option<TokenSubset>,
    features: BTreeMap<usize, Tensor>,
    mask: Option<Vec<bool>>,
    peak_bytes: usize,
    /// Where the bank is held: the device, or host memory (`--bank host`), from where a run
    /// moves one block's slice at a time to the device.
    home: Device,
}

impl Recorder {
    pub fn new(plan: RecordPlan, schedule: Schedule, home: Device) -> Self {
        Self {
            home,
            plan,
            schedule,
            pending: Pending::default(),
            fg: None,
            bg: None,
            features: BTreeMap::new(),
            mask: None,
            peak_bytes: 0,
        }
    }

    fn store_kv(&mut self, slot: Slot, k: &Tensor, v: &Tensor) -> Result<()> {
        if self.plan.fg_kv(&self.schedule, slot) {
            let fg = self.fg.as_mut().context("foreground subset")?;
            let kept = (fg.prune(k)?, fg.prune(v)?);
            fg.kv.insert(slot, kept);
        }
        if self.plan.bg_kv(&self.schedule, slot) {
            let bg = self.bg.as_mut().context("background subset")?;
            let kept = (bg.prune(k)?, bg.prune(v)?);
            bg.kv.insert(slot, kept);
        }
        Ok(())
    }

    fn store_out(&mut self, slot: Slot, out: &Tensor) -> Result<()> {
        let fg = self.fg.as_mut().context("foreground subset")?;
        let kept = fg.prune(out)?;
        fg.out.insert(slot, kept);
        Ok(())
    }

    pub fn mask(&self) -> Option<&[bool]> {
        self.mask.as_deref()
    }

    fn bytes(&self) -> usize {
        let pending: usize = self
            .pending
            .kv
            .values()
            .map(|(k, v)| bytes_of(k) + bytes_of(v))
            .sum::<usize>()
            + self.pending.out.values().map(bytes_of).sum::<usize>();
        let subsets = self.fg.as_ref().map_or(0, TokenSubset::bytes)
            + self.bg.as_ref().map_or(0, TokenSubset::bytes);
        pending + subsets + self.features.values().map(bytes_of).sum::<usize>()
    }

    fn update_peak(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.bytes());
    }

    /// The finished bank; fails if the run never reached the mask step.
    pub fn finish(self) -> Result<Bank> {
        let mask = self
            .mask
            .context("the recording run stopped before its mask step")?;
        let bytes = {
            let fg = self.fg.as_ref().map_or(0, TokenSubset::bytes);
            fg + self.bg.as_ref().map_or(0, TokenSubset::bytes)
                + self.features.values().map(bytes_of).sum::<usize>()
        };
        Ok(Bank {
            mask,
            fg: self.fg,
            bg: self.bg,
            features: self.features,
            bytes,
            peak_bytes: self.peak_bytes,
        })
    }
}

impl Record for Recorder {
    fn wants_kv(&self, slot: Slot) -> bool {
        self.plan.wants_kv(&self.schedule, slot)
    }

    fn wants_out(&self, slot: Slot) -> bool {
        self.plan.wants_out(&self.schedule, slot)
    }

    fn wants_features(&self, step: usize) -> bool {
        self.plan.wants_features(&self.schedule, step)
    }

    fn record_kv(&mut self, slot: Slot, k: Tensor, v: Tensor) -> Result<()> {
        let (k, v) = (k.to_device(&self.home)?, v.to_device(&self.home)?);
        if self.mask.is_none() {
            self.pending.kv.insert(slot, (k, v));
        } else {
            self.store_kv(slot, &k, &v)?;
        }
        self.update_peak();
        Ok(())
    }

    fn record_out(&mut self, slot: Slot, out: Tensor) -> Result<()> {
        let out = out.to_device(&self.home)?;
        if self.mask.is_none() {
            self.pending.out.insert(slot, out);
        } else {
            self.store_out(slot, &out)?;
        }
        self.update_peak();
        Ok(())
    }

    fn record_features(&mut self, (_, layer): Slot, normalized: Tensor) -> Result<()> {
        self.features
            .insert(layer, normalized.to_device(&self.home)?);
        self.update_peak();
        Ok(())
    }

    /// The recorded image's foreground mask is known: prune everything held at full size.
    fn set_mask(&mut self, mask: Vec<bool>) -> Result<()> {
        let background: Vec<bool> = mask.iter().map(|&m| !m).collect();
        self.fg = Some(TokenSubset::new(&mask));
        self.bg = self.plan.background.then(|| TokenSubset::new(&background));
        self.mask = Some(mask);
        let pending = std::mem::take(&mut self.pending);
        for (slot, (k, v)) in pending.kv {
            self.store_kv(slot, &k, &v)?;
        }
        for (slot, out) in pending.out {
            self.store_out(slot, &out)?;
        }
        Ok(())
    }
}

/// A finished recording: the identity's (foreground, features and maybe background) or a scene
/// reference panel's (background only).
pub struct Bank {
    /// The recorded image's step-`mask_step` foreground mask.
    pub mask: Vec<bool>,
    pub fg: Option<TokenSubset>,
    pub bg: Option<TokenSubset>,
    /// Per single block: normalized attention outputs (img_len, hidden) at the mask step.
    pub features: BTreeMap<usize, Tensor>,
    /// Bytes held now.
    pub bytes: usize,
    /// The most bytes held at any moment of the recording run.
    pub peak_bytes: usize,
}

impl Bank {
    /// A bank read back from a bank file.
    pub fn restored(
        mask: Vec<bool>,
        fg: Option<TokenSubset>,
        bg: Option<TokenSubset>,
        features: BTreeMap<usize, Tensor>,
    ) -> Self {
        let bytes = fg.as_ref().map_or(0, TokenSubset::bytes)
            + bg.as_ref().map_or(0, TokenSubset::bytes)
            + features.values().map(bytes_of).sum::<usize>();
        Self {
            mask,
            fg,
            bg,
            features,
            bytes,
            peak_bytes: bytes,
        }
    }
}

/// The sizes that decide a bank's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankDims {
    pub single_blocks: usize,
    pub hidden: usize,
    pub img_tokens: usize,
    pub fg_tokens: usize,
    pub dtype_bytes: usize,
    pub locked_background: bool,
}

/// The bytes an identity bank holds after its run, by the same rules as [`Recorder`]: foreground
/// keys and values of the sharing slots and attention outputs of the merging slots at foreground
/// tokens, matching features of every token at the mask step, and with a locked background the
/// keys and values of the background-sharing slots at background tokens.
pub fn identity_bank_bytes(s: &Schedule, d: BankDims) -> usize {
    let layers =
        |f: fn(&Schedule, usize) -> bool| (0..d.single_blocks).filter(|&l| f(s, l)).count();
    let share_steps = s.share.1 - s.share.0;
    let merge_steps = (s.share.0..s.share.1)
        .filter(|&i| s.merge_alpha(i) > 0.0)
        .count();
    let fg_layers = layers(Schedule::is_fg_layer);
    let fg = fg_layers * (2 * share_steps + merge_steps) * d.fg_tokens;
    let features = d.single_blocks * d.img_tokens;
    let bg = match d.locked_background {
        true => layers(Schedule::is_bg_layer) * 2 * share_steps * (d.img_tokens - d.fg_tokens),
        false => 0,
    };
    (fg + features + bg) * d.hidden * d.dtype_bytes
}
