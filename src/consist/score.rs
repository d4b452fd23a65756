//! How closely a panel's character follows the identity, from what its render already has: the
//! point matches' similarities over the panel's foreground, and the share of the identity's
//! foreground that the matches reach. The frame grid shows it so that a user sees which panels
//! drifted and re-rolls only those. With several characters each one is scored on its own: its
//! region, its matches, its identity.

use super::matching::Matches;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Consistency {
    /// Mean best similarity of the panel's foreground tokens to the identity's (negative
    /// similarities count as 0), from 0 to 1.
    pub similarity: f32,
    /// Share of the identity's foreground tokens that a kept match lands on, from 0 to 1.
    pub coverage: f32,
}

impl Consistency {
    /// `similarity x coverage`, from 0 to 1: high only when the panel's character looks like the
    /// identity and all of the identity is found in it.
    pub fn score(&self) -> f32 {
        self.similarity * self.coverage
    }

    /// A panel where no foreground was found scores 0: its character is lost. `None` where
    /// there is nothing to judge against: no foreground in the identity, or matches of another
    /// token count than the panel's mask.
    pub fn of(panel_mask: &[bool], matches: &Matches, identity_mask: &[bool]) -> Option<Self> {
        let foreground: Vec<usize> = (0..panel_mask.len()).filter(|&c| panel_mask[c]).collect();
        let identity_foreground = identity_mask.iter().filter(|&&m| m).count();
        if identity_foreground == 0 || matches.max_sim.len() != panel_mask.len() {
            return None;
        }
        let similarity = foreground
            .iter()
            .map(|&c| matches.max_sim[c].clamp(0.0, 1.0))
            .sum::<f32>()
            / foreground.len().max(1) as f32;
        let mut reached = vec![false; identity_mask.len()];
        for &j in &matches.identity_idx {
            if let Some(r) = reached.get_mut(j as usize) {
                *r = true;
            }
        }
        let covered = reached
            .iter()
            .zip(identity_mask)
            .filter(|&(&r, &m)| r && m)
            .count();
        Some(Self {
            similarity,
            coverage: covered as f32 / identity_foreground as f32,
        })
    }

    /// Each character's consistency in a panel, in its prompt's order: character `k`'s region
    /// (the tokens `owners` gives `k + 1`) and its matches, against its own identity's mask
    /// (`identity_masks[k]`, `None` where that identity is not rendered). With one character
    /// this is [`Consistency::of`] of the panel's mask.
    pub fn of_cast(
        owners: &[u8],
        matches: &Matches,
        identity_masks: &[Option<&[bool]>],
    ) -> Vec<Option<Self>> {
        identity_masks
            .iter()
            .enumerate()
            .map(|(k, identity_mask)| {
                let owner = k as u8 + 1;
                let region: Vec<bool> = owners.iter().map(|&o| o == owner).collect();
                Self::of(&region, &matches.of_owner(owners, owner), (*identity_mask)?)
            })
            .collect()
    }
}
