//! The CharaConsist attention hook: one per run, following the per-step control table of
//! characonsist-spec.md §7. The identity run only reads (it stays plain FLUX); a panel's pre-run
//! shares the locked background; its main run adds point-tracking attention on the identity's
//! foreground and adaptive token merging. With several characters each one's region is matched
//! against its own identity only, borrows only from it, and merges only towards it.

use anyhow::Context;
use candle_core::{DType, Result, Tensor};
use std::ops::Range;

use super::bank::{from_rows, to_rows, Record};
use super::mask::{reference_text_probs, Grid, MaskAccumulator, TextSpans};
use super::matching::{normalize_rows, MatchAccumulator, Matches};
use super::recipe::{Numerics, Schedule};
use super::reference::{BackgroundRef, IdentityRef};
use crate::flux::error::to_candle;
use crate::flux::rope::{apply_rope, Rope};
use crate::flux::{
    AttentionHook, AttentionRequest, BlockCtx, BlockKind, ExtraKv, QkvView, TokenLayout,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Plain FLUX, recording into the bank.
    Identity,
    /// Steps 0..=mask step of a panel: layout, mask and matches before foreground sharing.
    PreRun,
    /// The panel itself.
    Main,
}

/// What a panel run reads from earlier runs.
#[derive(Clone, Copy)]
pub struct References<'a> {
    /// The identity of each character the panel shows, in its prompt's order.
    pub identities: &'a [IdentityRef<'a>],
    /// Keys and values to lock the background onto (the identity's or the scene reference's).
    pub background: Option<BackgroundRef<'a>>,
}

/// The matches driving foreground sharing, with their index tensors built once.
struct ActiveMatches {
    matches: Matches,
    panel_idx: Tensor,
    /// Joint-sequence positions of the matched panel tokens, for RoPE.
    positions: Tensor,
    /// Similarity of each kept match, (M, 1).
    sims: Tensor,
}

impl ActiveMatches {
    fn new(
        matches: Matches,
        txt_len: usize,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let positions: Vec<u32> = matches
            .panel_idx
            .iter()
            .map(|&c| c + txt_len as u32)
            .collect();
        let sims = matches.kept_sims();
        let m = sims.len();
        Ok(Self {
            panel_idx: Tensor::new(matches.panel_idx.as_slice(), dev)?,
            positions: Tensor::new(positions.as_slice(), dev)?,
            sims: Tensor::from_vec(sims, (m, 1), dev)?.to_dtype(dtype)?,
            matches,
        })
    }
}

pub struct ConsistHook<'a> {
    role: Role,
    schedule: &'a Schedule,
    spans: TextSpans,
    layout: TokenLayout,
    grid: Grid,
    heads: usize,
    dtype: DType,
    refs: Option<References<'a>>,
    recorder: Option<&'a mut dyn Record>,
    mask_acc: MaskAccumulator,
    /// The identity's painted foreground: its mask at the mask step instead of the computed one.
    painted: Option<&'a [bool]>,
    /// One per character of `refs.identities`.
    match_accs: Vec<MatchAccumulator>,
    /// Each image token's owner (0 background, `k + 1` the prompt's character `k`) from its
    /// latest finished step up to the mask step.
    owners: Option<Vec<u8>>,
    /// Per character, the matches driving its foreground.
    active: Vec<ActiveMatches>,
    /// Per step: background tokens shared (reference background and not current foreground).
    bg_tokens: Option<Vec<u32>>,
    /// The owners the masks were made for, and their attention masks by borrowed key counts
    /// (background, then each character): kept from step to step while the owners stay.
    extra_masks: (Vec<u8>, Vec<(Vec<usize>, Tensor)>),
    /// Outputs: the owners after step 0, and the mask, owners and matches of the mask step.
    first_owners: Option<Vec<u8>>,
    mask_at_match_step: Option<Vec<bool>>,
    owners_at_match_step: Option<Vec<u8>>,
    /// The device the run computes on (seen in its first block).
    device: Option<candle_core::Device>,
    matches: Option<Matches>,
}

/// The result of a run's hook: its mask-step mask and owners and, for panels, its mask-step
/// matches (every character's, see [`Matches::merge`]).
#[derive(Clone)]
pub struct RunObservations {
    pub mask: Option<Vec<bool>>,
    pub owners: Option<Vec<u8>>,
    pub matches: Option<Matches>,
    /// The owners after step 0: a main run that starts from its pre-run's step 0 continues with
    /// them.
    pub first_owners: Option<Vec<u8>>,
}

impl<'a> ConsistHook<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        role: Role,
        schedule: &'a Schedule,
        spans: TextSpans,
        layout: TokenLayout,
        heads: usize,
        dtype: DType,
        refs: Option<References<'a>>,
        recorder: Option<&'a mut dyn Record>,
    ) -> Self {
        Self {
            role,
            schedule,
            spans,
            layout,
            grid: Grid {
                rows: layout.img_h,
                cols: layout.img_w,
            },
            heads,
            dtype,
            refs,
            recorder,
            mask_acc: MaskAccumulator::new(spans, schedule.numerics),
            painted: None,
            match_accs: (0..refs.map_or(0, |r| r.identities.len()))
                .map(|_| MatchAccumulator::new(schedule.numerics))
                .collect(),
            owners: None,
            active: Vec::new(),
            bg_tokens: None,
            extra_masks: (Vec::new(), Vec::new()),
            first_owners: None,
            mask_at_match_step: None,
            owners_at_match_step: None,
            matches: None,
            device: None,
        }
    }

    /// The characters of the prompt by their T5 spans, in its order: see
    /// [`MaskAccumulator::with_characters`]. Without this call the run has one character.
    pub fn with_characters(mut self, characters: Vec<Range<usize>>) -> Self {
        self.mask_acc =
            MaskAccumulator::with_characters(self.spans, characters, self.schedule.numerics);
        self
    }

    /// An identity run whose foreground is `painted` (one flag per image token) where the user
    /// painted one: the bank is pruned to it, and panels match, borrow and merge within it.
    pub fn with_painted_mask(mut self, painted: Option<&'a [bool]>) -> Self {
        if self.role == Role::Identity {
            self.painted = painted;
        }
        self
    }

    /// Starts a main run after its pre-run's step 0 (the two are identical up to there): the
    /// pre-run's step-0 owners are the current ones, and its matches drive each character's
    /// foreground until the main run's own mask step.
    pub fn resume_after_step0(
        &mut self,
        pre: &RunObservations,
        dev: &candle_core::Device,
    ) -> anyhow::Result<()> {
        self.owners = pre.first_owners.clone();
        if let (Some(m), Some(owners)) = (&pre.matches, &pre.owners) {
            self.active = self.activate(m, owners, dev)?;
        }
        Ok(())
    }

    /// Each character's share of `matches`, ready to drive its foreground.
    fn activate(
        &self,
        matches: &Matches,
        owners: &[u8],
        dev: &candle_core::Device,
    ) -> Result<Vec<ActiveMatches>> {
        (0..self.match_accs.len())
            .map(|k| {
                let own = match self.match_accs.len() {
                    1 => matches.clone(),
                    _ => matches.of_owner(owners, k as u8 + 1),
                };
                ActiveMatches::new(own, self.layout.txt_len, self.dtype, dev)
            })
            .collect()
    }

    pub fn observations(self) -> RunObservations {
        RunObservations {
            mask: self.mask_at_match_step,
            owners: self.owners_at_match_step,
            matches: self.matches,
            first_owners: self.first_owners,
        }
    }

    fn identities(&self) -> Result<&'a [IdentityRef<'a>]> {
        Ok(self
            .refs
            .context("panel runs read the identity")
            .map_err(to_candle)?
            .identities)
    }

    fn wants_mask(&self, step: usize) -> bool {
        match self.role {
            // A painted mask needs no attention maps.
            Role::Identity => step == self.schedule.mask_step && self.painted.is_none(),
            Role::PreRun | Role::Main => step <= self.schedule.mask_step,
        }
    }

    fn wants_match_features(&self, step: usize) -> bool {
        self.refs.is_some() && step == self.schedule.mask_step
    }

    fn fg_active(&self, ctx: &BlockCtx) -> bool {
        self.role == Role::Main
            && self.schedule.shares(ctx.step)
            && self.schedule.is_fg_layer(ctx.index)
            && self.active.iter().any(|a| !a.matches.is_empty())
    }

    fn bg_active(&self, ctx: &BlockCtx) -> bool {
        self.role != Role::Identity
            && self.schedule.shares(ctx.step)
            && self.schedule.is_bg_layer(ctx.index)
            && self.refs.is_some_and(|r| r.background.is_some())
    }

    fn merges(&self, ctx: &BlockCtx) -> bool {
        self.fg_active(ctx) && self.schedule.merge_alpha(ctx.step) > 0.0
    }

    /// Background tokens shared at this step: in the reference background and not in the
    /// panel's current foreground.
    fn shared_bg_tokens(&mut self, background: BackgroundRef) -> Result<Vec<u32>> {
        if self.bg_tokens.is_none() {
            let reference = background.background().map_err(to_candle)?;
            let owners = self.owners.as_deref().unwrap_or(&[]);
            let tokens = (0..self.grid.len() as u32)
                .filter(|&t| {
                    reference.get(t as usize).copied().unwrap_or(false)
                        && owners.get(t as usize).copied().unwrap_or(0) == 0
                })
                .collect();
            self.bg_tokens = Some(tokens);
        }
        Ok(self.bg_tokens.clone().unwrap_or_default())
    }

    /// The additive mask over `[text | image | bg keys | each character's keys]` for `counts`
    /// borrowed keys (background first, then each character's): text queries see no borrowed
    /// key; a query in character `k`'s region sees only `k`'s keys, a background query only
    /// background keys.
    fn extra_mask(
        &mut self,
        ctx: &BlockCtx,
        counts: &[usize],
        dev: &candle_core::Device,
    ) -> Result<Tensor> {
        let owners = self.owners.as_deref().unwrap_or(&[]);
        let (made_for, masks) = &mut self.extra_masks;
        if made_for != owners {
            *made_for = owners.to_vec();
            masks.clear();
        }
        if let Some((_, m)) = masks.iter().find(|(k, _)| k == counts) {
            return Ok(m.clone());
        }
        let mask = borrowed_key_mask(owners, ctx.txt_len, ctx.img_len(), counts, self.dtype, dev)?;
        self.extra_masks.1.push((counts.to_vec(), mask.clone()));
        Ok(mask)
    }

    /// Borrowed keys (RoPE-encoded at the panel positions they serve) and values.
    fn extras(&mut self, ctx: &BlockCtx, rope: &Rope) -> Result<Option<ExtraKv>> {
        let slot = (ctx.step, ctx.index);
        let dev = rope.device().clone();
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let mut counts = vec![0; 1 + self.active.len()];
        let refs = self.refs;
        if let Some(background) = refs
            .and_then(|r| r.background)
            .filter(|_| self.bg_active(ctx))
        {
            let tokens = self.shared_bg_tokens(background)?;
            if !tokens.is_empty() {
                if let Some((k, v)) = background.kv(slot, &tokens, &dev).map_err(to_candle)? {
                    let positions: Vec<u32> =
                        tokens.iter().map(|&t| t + ctx.txt_len as u32).collect();
                    let rope_bg = rope.gather(&Tensor::new(positions.as_slice(), &dev)?)?;
                    ks.push(apply_rope(
                        &from_rows(&k, self.heads).map_err(to_candle)?,
                        &rope_bg,
                    )?);
                    vs.push(from_rows(&v, self.heads).map_err(to_candle)?);
                    counts[0] = tokens.len();
                }
            }
        }
        if self.fg_active(ctx) {
            // Each character borrows from its own identity only; one absent from the panel has
            // no identity here, so none of its keys are appended.
            let identities = self.identities()?;
            for (c, (identity, active)) in identities.iter().zip(&self.active).enumerate() {
                if active.matches.is_empty() {
                    continue;
                }
                if let Some((k, v)) = identity
                    .kv(slot, &active.matches.identity_idx, &dev)
                    .map_err(to_candle)?
                {
                    let rope_fg = rope.gather(&active.positions)?;
                    ks.push(apply_rope(
                        &from_rows(&k, self.heads).map_err(to_candle)?,
                        &rope_fg,
                    )?);
                    vs.push(from_rows(&v, self.heads).map_err(to_candle)?);
                    counts[c + 1] = active.matches.len();
                }
            }
        }
        if counts.iter().sum::<usize>() == 0 {
            return Ok(None);
        }
        let mask = self.extra_mask(ctx, &counts, &dev)?;
        Ok(Some(ExtraKv {
            k: Tensor::cat(&ks, 2)?,
            v: Tensor::cat(&vs, 2)?,
            mask: Some(mask),
        }))
    }

    /// Adaptive token merging (characonsist-spec.md §6): each matched panel token moves towards
    /// its identity token's attention output by merge weight times match similarity; each
    /// character's tokens towards their own identity's.
    fn merge(&self, ctx: &BlockCtx, img_out: Tensor) -> Result<Tensor> {
        let Some(refs) = self.refs else {
            return Ok(img_out);
        };
        let mut rows = img_out.squeeze(0)?;
        for (identity, active) in refs.identities.iter().zip(&self.active) {
            if active.matches.is_empty() {
                continue;
            }
            let Some(id_out) = identity
                .out(
                    (ctx.step, ctx.index),
                    &active.matches.identity_idx,
                    img_out.device(),
                )
                .map_err(to_candle)?
            else {
                continue;
            };
            let current = rows.index_select(&active.panel_idx, 0)?;
            let weight = (&active.sims * self.schedule.merge_alpha(ctx.step))?;
            let delta = (id_out.to_dtype(current.dtype())? - &current)?.broadcast_mul(&weight)?;
            rows = rows.index_add(&active.panel_idx, &delta, 0)?;
        }
        rows.unsqueeze(0)
    }
}

/// The additive attention mask (1, 1, L, L + borrowed) over `[text | image | borrowed keys]`,
/// the borrowed keys being `counts[0]` background ones then `counts[k + 1]` of character `k`'s
/// identity: 0 where a query may look, -inf where not. Text queries see no borrowed key; image
/// token `i` (owner `owners[i]`: 0 background, `k + 1` character `k`) sees only its own class.
pub fn borrowed_key_mask(
    owners: &[u8],
    txt_len: usize,
    img_len: usize,
    counts: &[usize],
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let k_class: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(class, &n)| std::iter::repeat_n(class, n))
        .collect();
    let lq = txt_len + img_len;
    let width = lq + k_class.len();
    let q_class: Vec<usize> = (0..lq)
        .map(|q| match q.checked_sub(txt_len) {
            Some(i) => owners.get(i).map_or(0, |&o| usize::from(o)),
            None => usize::MAX,
        })
        .collect();
    // Written key by key in one pass (the joint keys open, the borrowed ones to their class
    // only), so that key j's entries for consecutive queries lie side by side: the CPU kernel's
    // score tiles read them so, in place. Other devices take it query-major.
    let mut by_key = vec![0f32; width * lq];
    for (column, &k) in by_key[lq * lq..].chunks_exact_mut(lq).zip(&k_class) {
        for (m, &class) in column.iter_mut().zip(&q_class) {
            if class != k {
                *m = f32::NEG_INFINITY;
            }
        }
    }
    let mask = Tensor::from_vec(by_key, (1, 1, width, lq), dev)?
        .to_dtype(dtype)?
        .transpose(2, 3)?;
    match dev {
        candle_core::Device::Cpu => Ok(mask),
        _ => mask.contiguous(),
    }
}

impl ConsistHook<'_> {
    /// Each token's owner after `step`: the current ones, and at the mask step the run's mask
    /// (which prunes its bank).
    fn found_owners(&mut self, step: usize, owners: Vec<u8>) -> Result<()> {
        if step == self.schedule.mask_step {
            let mask: Vec<bool> = owners.iter().map(|&o| o != 0).collect();
            if let Some(recorder) = self.recorder.as_deref_mut() {
                recorder.set_mask(mask.clone()).map_err(to_candle)?;
            }
            self.mask_at_match_step = Some(mask);
            self.owners_at_match_step = Some(owners.clone());
        }
        if step == 0 {
            self.first_owners = Some(owners.clone());
        }
        self.owners = Some(owners);
        Ok(())
    }
}

impl AttentionHook for ConsistHook<'_> {
    fn before_attention(&mut self, ctx: &BlockCtx, qkv: QkvView<'_>) -> Result<AttentionRequest> {
        let mut request = AttentionRequest::default();
        if self.device.is_none() {
            self.device = Some(qkv.q.device().clone());
        }
        if ctx.kind != BlockKind::Single {
            return Ok(request);
        }
        let slot = (ctx.step, ctx.index);
        if self.wants_mask(ctx.step) {
            let n = self.spans.real_len;
            match self.schedule.numerics {
                Numerics::Exact => request.text_probs = Some(n),
                // The reference rounds the logits to fp16 before the softmax (characonsist-spec.md
                // §4), so the f32 probabilities the transformer offers cannot be used.
                Numerics::Reference => {
                    let (txt, img) = (ctx.txt_len, ctx.img_len());
                    let q = apply_rope(&qkv.q.narrow(2, txt, img)?, &qkv.rope.narrow(txt, img)?)?;
                    let k = apply_rope(&qkv.k.narrow(2, 0, n)?, &qkv.rope.narrow(0, n)?)?;
                    let probs = reference_text_probs(&q, &k).map_err(to_candle)?;
                    self.mask_acc.add(&probs).map_err(to_candle)?;
                }
            }
        }
        request.read_output = self.wants_match_features(ctx.step) || self.merges(ctx);
        if let Some(recorder) = self.recorder.as_deref_mut() {
            if recorder.wants_kv(slot) {
                let k =
                    to_rows(&qkv.k.narrow(2, ctx.txt_len, ctx.img_len())?).map_err(to_candle)?;
                let v =
                    to_rows(&qkv.v.narrow(2, ctx.txt_len, ctx.img_len())?).map_err(to_candle)?;
                recorder.record_kv(slot, k, v).map_err(to_candle)?;
            }
            request.read_output |= recorder.wants_out(slot) || recorder.wants_features(ctx.step);
        }
        if self.owners.is_some() {
            request.extra = self.extras(ctx, qkv.rope)?;
        }
        Ok(request)
    }

    fn after_attention(
        &mut self,
        ctx: &BlockCtx,
        text_probs: Option<Tensor>,
        img_out: Tensor,
    ) -> Result<Tensor> {
        let slot = (ctx.step, ctx.index);
        if let Some(probs) = text_probs {
            self.mask_acc.add(&probs).map_err(to_candle)?;
        }
        if self.wants_match_features(ctx.step) {
            for (identity, acc) in self.identities()?.iter().zip(&mut self.match_accs) {
                let features = identity
                    .features(slot, img_out.device())
                    .map_err(to_candle)?;
                acc.add(&img_out, &features).map_err(to_candle)?;
            }
        }
        let dtype = self.dtype;
        if let Some(recorder) = self.recorder.as_deref_mut() {
            if recorder.wants_features(ctx.step) {
                let normalized = normalize_rows(&img_out.squeeze(0)?, self.schedule.numerics)
                    .map_err(to_candle)?
                    .to_dtype(dtype)?;
                recorder
                    .record_features(slot, normalized)
                    .map_err(to_candle)?;
            }
            if recorder.wants_out(slot) {
                recorder
                    .record_out(slot, img_out.squeeze(0)?)
                    .map_err(to_candle)?;
            }
        }
        match self.merges(ctx) {
            true => self.merge(ctx, img_out),
            false => Ok(img_out),
        }
    }

    fn end_step(&mut self, step: usize) -> Result<()> {
        self.bg_tokens = None;
        let s = self.schedule;
        let painted = self.painted.filter(|_| step == s.mask_step);
        if let Some(painted) = painted {
            if painted.len() != self.grid.len() {
                return Err(to_candle(anyhow::anyhow!(
                    "the painted mask has {} tokens, but the image has {}",
                    painted.len(),
                    self.grid.len()
                )));
            }
            self.found_owners(step, painted.iter().map(|&m| u8::from(m)).collect())?;
        } else if !self.mask_acc.is_empty() {
            let owners = self
                .mask_acc
                .finish_owners(self.grid, s.erode, s.dilate)
                .map_err(to_candle)?;
            self.found_owners(step, owners)?;
        }
        if self.match_accs.iter().any(|a| !a.is_empty()) {
            let owners = self.owners.clone().unwrap_or_default();
            let identities = self.identities()?;
            let threshold = self.schedule.threshold;
            let per_character = identities
                .iter()
                .zip(&mut self.match_accs)
                .enumerate()
                .map(|(k, (identity, acc))| {
                    let identity_mask = identity.mask()?;
                    let region: Vec<bool> = owners.iter().map(|&o| o == k as u8 + 1).collect();
                    acc.finish(&region, &identity_mask, threshold)
                })
                .collect::<anyhow::Result<Vec<Matches>>>()
                .map_err(to_candle)?;
            let matches = Matches::merge(per_character, &owners);
            if self.role == Role::Main {
                let dev = self
                    .device
                    .clone()
                    .context("a step ran before matches")
                    .map_err(to_candle)?;
                self.active = self.activate(&matches, &owners, &dev)?;
            }
            self.matches = Some(matches);
        }
        Ok(())
    }
}
