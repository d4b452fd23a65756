//! A panel's early look: its pre-run stopped at the mask step. It holds what the user reviews
//! (the x0 estimate decoded, the foreground owners, the point matches) and what the main run
//! needs to start without running the pre-run again (the latents after step 0, which the two
//! runs share exactly, and the pre-run's observations). It carries the key of the take it
//! would become, so a changed prompt, seed or setting makes it stale.

use candle_core::Tensor;
use image::RgbImage;

use super::mask::{Grid, TextSpans};
use super::plan::{ImageKey, Target};
use super::steer::RunObservations;

#[derive(Clone)]
pub struct Look {
    pub target: Target,
    pub key: ImageKey,
    /// The x0 estimate at the mask step, decoded by the VAE.
    pub preview: RgbImage,
    pub grid: Grid,
    pub spans: TextSpans,
    /// Packed latents after step 0, in the run's dtype, on the CPU.
    pub after_step0: Tensor,
    pub observations: RunObservations,
}

impl Look {
    /// Each token's owner at the mask step (0 background, `k + 1` the panel's `k`-th
    /// character); all background where the pre-run found no mask.
    pub fn owners(&self) -> Vec<u8> {
        self.observations
            .owners
            .clone()
            .unwrap_or_else(|| vec![0; self.grid.rows * self.grid.cols])
    }
}
