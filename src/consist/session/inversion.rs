//! A picture identity's first job: its picture through the VAE encoder, then back along the
//! flow ODE with the identity's prompt to the noise its identity run reconstructs it from.
//!
//! Only the identity starts from that noise. The panels start from the seed's noise as they do
//! beside a generated identity: inverted noise is not white (it carries the picture's layout
//! as low-frequency structure), so panels started from it would copy the picture's pose and
//! framing into every action, and a panel's seed would stop meaning what it means elsewhere.
//! The character reaches the panels the CharaConsist way, through the identity's bank.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::sampling::unpack;

use super::super::plan::PlannedPicture;
use crate::invert::{self, Inverted};
use crate::pipeline::FluxModels;
use crate::sampler::StepControl;

/// The unpacked noise (1, 16, H/8, W/8), f32 on the CPU, that `picture` inverts to under `prompt` on the
/// schedule of `steps`; `None` when `on_step(done, steps)` cancelled it.
pub fn invert_picture(
    models: &mut FluxModels,
    picture: &PlannedPicture,
    prompt: &str,
    steps: usize,
    guidance: f64,
    on_step: &mut dyn FnMut(usize, usize) -> Result<StepControl>,
) -> Result<Option<Tensor>> {
    let (width, height) = (
        picture.image.width() as usize,
        picture.image.height() as usize,
    );
    let latents = models.encode_picture(&picture.image)?;
    let (run, sigmas) = models.prepare_run_from(prompt, &latents, steps)?;
    let inverted = invert::invert(
        &models.transformer,
        &run,
        &sigmas,
        guidance,
        picture.key.inverter,
        on_step,
    )?;
    Ok(match inverted {
        Inverted::Done(packed) => Some(
            unpack(&packed, height, width)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?,
        ),
        Inverted::Cancelled(_) => None,
    })
}
