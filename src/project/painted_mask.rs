//! A foreground mask the user painted over an identity, used instead of the one its attention
//! gives (the ComfyUI port's users found segmentation masks better on some models).
//!
//! It is kept at the identity's token grid at full size (one token per 16x16 pixels of
//! `settings.width` x `settings.height`), readable in the RON file: one string per token row,
//! `#` foreground and `.` background. A draft's smaller grid takes it resampled nearest-neighbour
//! ([`PaintedMask::at`]), so one painting serves drafts and finals. A painting whose grid is not
//! the identity's (the size changed since) is refused by [`PaintedMask::check`].

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::consist::mask::Grid;

const FOREGROUND: char = '#';
const BACKGROUND: char = '.';

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaintedMask {
    /// Token columns.
    pub width: usize,
    /// Token rows.
    pub height: usize,
    /// `height` strings of `width` characters, `#` foreground, `.` background.
    pub rows: Vec<String>,
}

impl PaintedMask {
    /// The mask `mask` (token `r * cols + c`) over `grid`.
    pub fn from_tokens(grid: Grid, mask: &[bool]) -> Self {
        let rows = mask
            .chunks(grid.cols.max(1))
            .map(|row| {
                row.iter()
                    .map(|&m| if m { FOREGROUND } else { BACKGROUND })
                    .collect()
            })
            .collect();
        Self {
            width: grid.cols,
            height: grid.rows,
            rows,
        }
    }

    pub fn grid(&self) -> Grid {
        Grid {
            rows: self.height,
            cols: self.width,
        }
    }

    /// Checks that the painting is well formed and painted over `grid`, the token grid of the
    /// identity at `size` pixels; `field` is where the file writes it.
    pub fn check(&self, field: &str, grid: Grid, (width, height): (usize, usize)) -> Result<()> {
        if self.grid() != grid {
            bail!(
                "{field} is painted over a {} x {} token grid, but the identity at {width} x {height} pixels (settings.width x settings.height) has a {} x {} grid: reset it and paint it again",
                self.width,
                self.height,
                grid.cols,
                grid.rows,
            );
        }
        if self.rows.len() != self.height {
            bail!(
                "{field}.rows has {} rows, but height is {}",
                self.rows.len(),
                self.height
            );
        }
        for (r, row) in self.rows.iter().enumerate() {
            if row.chars().count() != self.width {
                bail!(
                    "{field}.rows[{r}] has {} tokens, but width is {}",
                    row.chars().count(),
                    self.width
                );
            }
            if let Some(c) = row.chars().find(|&c| c != FOREGROUND && c != BACKGROUND) {
                bail!("{field}.rows[{r}]: `{c}` is neither `{FOREGROUND}` (foreground) nor `{BACKGROUND}` (background)");
            }
        }
        Ok(())
    }

    /// Every token of its own grid, row after row: foreground or not.
    pub fn tokens(&self) -> Vec<bool> {
        self.rows
            .iter()
            .flat_map(|row| row.chars().map(|c| c == FOREGROUND))
            .collect()
    }

    /// The mask over `grid` (a draft's, or its own): each token takes the painted token under
    /// its centre.
    pub fn at(&self, grid: Grid) -> Vec<bool> {
        let tokens = self.tokens();
        let source = |i: usize, to: usize, from: usize| (2 * i + 1) * from / (2 * to.max(1));
        (0..grid.len())
            .map(|t| {
                let r = source(t / grid.cols, grid.rows, self.height);
                let c = source(t % grid.cols, grid.cols, self.width);
                tokens
                    .get(r.min(self.height.saturating_sub(1)) * self.width + c)
                    .copied()
                    .unwrap_or(false)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_to_its_own_grid_is_the_painting() {
        let grid = Grid { rows: 3, cols: 4 };
        let mask = vec![
            true, false, false, true, false, true, true, false, true, true, false, false,
        ];
        let painted = PaintedMask::from_tokens(grid, &mask);
        assert_eq!(painted.rows, ["#..#", ".##.", "##.."]);
        assert_eq!(painted.at(grid), mask);
        // Half the size: each token takes the painted token under its centre.
        let half = painted.at(Grid { rows: 2, cols: 2 });
        assert_eq!(half, [false, true, true, false]);
    }
}
