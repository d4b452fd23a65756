//! Inversion: from a picture's latents back along the flow ODE to the noise the sampler would
//! have drawn it from, on the sampler's own schedule and forward ([`RunInputs::velocity`]).
//!
//! The reconstruction that follows is the sampler's Euler loop (it records the identity's bank
//! step for step as for a generated identity), so what an inverter must do well is land on the
//! noise from which *that* loop gives the picture back. Three inverters, chosen per identity:
//! - [`Inverter::Euler`]: each step reuses the velocity at its start where the sampler's step
//!   uses the velocity at its other end; the mismatch compounds and plain Euler inversion is
//!   known to drift on FLUX (RF-Solver, FireFlow and RF-Inversion all start from this).
//! - [`Inverter::FireFlow`] (Deng et al. 2024, arXiv:2412.07517): a midpoint step whose start
//!   velocity is the previous step's midpoint velocity, second order at one forward a step; it
//!   follows the continuous ODE closely, which is not quite the Euler sampler's path.
//! - [`Inverter::FixedPoint`] (the default): the Euler sampler's step solved backwards. The
//!   sampler takes `x_k -> x_k + (s_{k+1} - s_k) v(x_k, s_k)`; inverting it asks for the `x_k`
//!   with `x_k = x_{k+1} + (s_k - s_{k+1}) v(x_k, s_k)`, found by one fixed-point correction of
//!   a guess made with the previous step's velocity (FireFlow's reuse, put to the implicit
//!   step). At one forward a step it inverts the very loop that reconstructs, which is why it
//!   beats the others at equal forwards (tests/picture.rs measures all three).

use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::flux::Flux;
use crate::sampler::{check_finite, RunInputs, StepControl};

/// How a picture is inverted to noise.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum Inverter {
    /// Plain Euler inversion: one forward a step.
    Euler,
    /// FireFlow's midpoint step with the previous velocity reused: one forward a step, plus one.
    FireFlow,
    /// The Euler sampler's step solved by a fixed-point correction: one forward a step, plus one.
    #[default]
    FixedPoint,
}

impl Inverter {
    pub const ALL: [Inverter; 3] = [Inverter::Euler, Inverter::FireFlow, Inverter::FixedPoint];

    /// Transformer forwards an inversion of `steps` steps takes.
    pub fn forwards(self, steps: usize) -> usize {
        match self {
            Inverter::Euler => steps,
            Inverter::FireFlow | Inverter::FixedPoint => steps + 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Inverter::Euler => "Euler",
            Inverter::FireFlow => "FireFlow",
            Inverter::FixedPoint => "fixed point",
        }
    }
}

/// How an inversion ended.
pub enum Inverted {
    /// The packed noise at sigma 1.
    Done(Tensor),
    /// Cancelled after this many steps.
    Cancelled(usize),
}

/// Inverts `run.img` (a picture's packed clean latents) along `sigmas` (the sampler's schedule,
/// from 1 to 0) to packed noise, calling `on_step(done, steps)` after every step.
pub fn invert(
    model: &Flux,
    run: &RunInputs,
    sigmas: &[f64],
    guidance: f64,
    inverter: Inverter,
    on_step: &mut dyn FnMut(usize, usize) -> Result<StepControl>,
) -> Result<Inverted> {
    let steps = sigmas.len().saturating_sub(1);
    let guidance = Tensor::full(guidance as f32, 1, run.img.device())?;
    let velocity = |x: &Tensor, sigma: f64, k: usize| run.velocity(model, x, sigma, &guidance, k);
    let mut x = run.img.clone();
    // The velocity at the current `x` and noise level, where a step leaves one behind.
    let mut carried: Option<Tensor> = None;
    for (done, k) in (0..steps).rev().enumerate() {
        let (from, to) = (sigmas[k + 1], sigmas[k]);
        let dt = to - from;
        let start = match carried.take() {
            Some(v) => v,
            None => velocity(&x, from, k)?,
        };
        x = match inverter {
            Inverter::Euler => (&x + (start * dt)?)?,
            Inverter::FireFlow => {
                let mid = (&x + (start * (dt / 2.0))?)?;
                let v_mid = velocity(&mid, from + dt / 2.0, k)?;
                let next = (&x + (&v_mid * dt)?)?;
                carried = Some(v_mid);
                next
            }
            Inverter::FixedPoint => {
                let guess = (&x + (start * dt)?)?;
                let v_end = velocity(&guess, to, k)?;
                let next = (&x + (&v_end * dt)?)?;
                carried = Some(v_end);
                next
            }
        };
        check_finite(&x, done, steps)?;
        if on_step(done + 1, steps)? == StepControl::Cancel {
            return Ok(Inverted::Cancelled(done + 1));
        }
    }
    Ok(Inverted::Done(x))
}
