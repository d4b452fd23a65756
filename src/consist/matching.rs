//! Point matching between a panel and the identity (characonsist-spec.md §3): layer-averaged
//! cosine similarity of attention outputs, argmax over identity tokens, then the foreground and
//! threshold filter.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use super::recipe::Numerics;

/// Rows scaled to unit L2 norm, (n, features), as f32. Under `Numerics::Reference` a bf16 input
/// is normalised in bf16 as the reference does it (characonsist-spec.md §3): the norm and the
/// quotient are each rounded to bf16.
pub fn normalize_rows(x: &Tensor, numerics: Numerics) -> Result<Tensor> {
    let in_bf16 = numerics == Numerics::Reference && x.dtype() == DType::BF16;
    let round = |t: Tensor| -> Result<Tensor> {
        match in_bf16 {
            true => Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?),
            false => Ok(t),
        }
    };
    let x = x.to_dtype(DType::F32)?;
    let norm = round(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?.clamp(1e-12, f64::MAX)?;
    round(x.broadcast_div(&norm)?)
}

/// Sums per-layer cosine-similarity matrices (panel tokens x identity tokens).
#[derive(Default)]
pub struct MatchAccumulator {
    sum: Option<Tensor>,
    layers: usize,
    numerics: Numerics,
}

impl MatchAccumulator {
    pub fn new(numerics: Numerics) -> Self {
        Self {
            numerics,
            ..Self::default()
        }
    }

    /// Adds one layer: the panel's attention output (1, n_panel, hidden) against the identity's
    /// normalized features (n_identity, hidden) of the same layer and step.
    pub fn add(&mut self, panel_out: &Tensor, identity_features: &Tensor) -> Result<()> {
        let p = normalize_rows(&panel_out.squeeze(0)?, self.numerics)?;
        let s = p.matmul(&identity_features.to_dtype(DType::F32)?.t()?)?;
        self.sum = Some(match self.sum.take() {
            None => s,
            Some(acc) => (acc + s)?,
        });
        self.layers += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.layers == 0
    }

    /// The matches: for every panel token its best identity token; kept where the panel token is
    /// foreground, its match is identity foreground, and the mean similarity exceeds `threshold`.
    pub fn finish(
        &mut self,
        panel_mask: &[bool],
        identity_mask: &[bool],
        threshold: f32,
    ) -> Result<Matches> {
        let Some(sum) = self.sum.take() else {
            bail!("no attention outputs were collected for matching");
        };
        let mean = (sum / self.layers as f64)?;
        self.layers = 0;
        let best = mean.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let max_sim = mean.max(D::Minus1)?.to_vec1::<f32>()?;
        Ok(Matches::filter(
            &best,
            max_sim,
            panel_mask,
            identity_mask,
            threshold,
        ))
    }
}

/// Kept correspondences, in ascending panel-token order, plus the best similarity of every panel
/// token (read by token merging).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matches {
    pub panel_idx: Vec<u32>,
    /// The identity token each kept panel token matched; may repeat.
    pub identity_idx: Vec<u32>,
    pub max_sim: Vec<f32>,
}

impl Matches {
    pub fn filter(
        best: &[u32],
        max_sim: Vec<f32>,
        panel_mask: &[bool],
        identity_mask: &[bool],
        threshold: f32,
    ) -> Self {
        let (panel_idx, identity_idx) = best
            .iter()
            .enumerate()
            .filter(|&(c, &j)| panel_mask[c] && identity_mask[j as usize] && max_sim[c] > threshold)
            .map(|(c, &j)| (c as u32, j))
            .unzip();
        Self {
            panel_idx,
            identity_idx,
            max_sim,
        }
    }

    pub fn len(&self) -> usize {
        self.panel_idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.panel_idx.is_empty()
    }

    /// Each kept match as (panel token, identity token, similarity), as the overlays draw them.
    pub fn triples(&self) -> Vec<(usize, usize, f32)> {
        self.panel_idx
            .iter()
            .zip(&self.identity_idx)
            .map(|(&c, &j)| (c as usize, j as usize, self.max_sim[c as usize]))
            .collect()
    }

    /// Several characters' matches as one: every kept match in ascending panel-token order (the
    /// characters' regions are disjoint), and each panel token's best similarity against the
    /// identity of the character that owns it (`owners`: 0 background, `k + 1` character `k`;
    /// background tokens keep the first character's). One character's come back unchanged.
    pub fn merge(mut per_character: Vec<Matches>, owners: &[u8]) -> Matches {
        if per_character.len() == 1 {
            return per_character.remove(0);
        }
        let mut kept: Vec<(u32, u32)> = per_character
            .iter()
            .flat_map(|m| {
                m.panel_idx
                    .iter()
                    .copied()
                    .zip(m.identity_idx.iter().copied())
            })
            .collect();
        kept.sort_unstable();
        let max_sim = match per_character.first() {
            None => vec![0.0; owners.len()],
            Some(first) => (0..first.max_sim.len())
                .map(|c| {
                    let k = usize::from(owners.get(c).copied().unwrap_or(0)).saturating_sub(1);
                    per_character[k.min(per_character.len() - 1)].max_sim[c]
                })
                .collect(),
        };
        let (panel_idx, identity_idx) = kept.into_iter().unzip();
        Matches {
            panel_idx,
            identity_idx,
            max_sim,
        }
    }

    /// The matches of the character with owner label `owner` (`k + 1` for character `k`).
    pub fn of_owner(&self, owners: &[u8], owner: u8) -> Matches {
        let (panel_idx, identity_idx) = self
            .panel_idx
            .iter()
            .zip(&self.identity_idx)
            .filter(|&(&c, _)| owners.get(c as usize) == Some(&owner))
            .map(|(&c, &j)| (c, j))
            .unzip();
        Matches {
            panel_idx,
            identity_idx,
            max_sim: self.max_sim.clone(),
        }
    }

    /// The similarity of each kept match.
    pub fn kept_sims(&self) -> Vec<f32> {
        self.panel_idx
            .iter()
            .map(|&c| self.max_sim[c as usize])
            .collect()
    }
}
