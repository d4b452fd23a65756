//! `charaboard invert`: a picture to the noise FLUX would draw it from under a prompt, as a
//! noise file that `generate --noise` (and `render --noise`) start from.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::args::RunArgs;
use super::progress::step_bar;
use crate::consist::plan::{PictureKey, PlannedPicture};
use crate::consist::session::invert_picture;
use crate::invert::Inverter;
use crate::limits;
use crate::picture::{self, Fit};
use crate::sampler::StepControl;

#[derive(clap::Args)]
pub struct Invert {
    /// A PNG, JPEG or WebP picture.
    picture: PathBuf,
    /// A FLUX.1 repository folder, a folder of single files, a .ron model file, or a Hugging
    /// Face repository id (ORG/NAME) in the cache.
    #[arg(long)]
    model: String,
    /// The prompt that describes the picture (a storyboard's identity prompt).
    #[arg(long)]
    prompt: String,
    /// The safetensors file to write (tensor `noise`, shape (1,16,H/8,W/8)).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1024)]
    width: usize,
    #[arg(long, default_value_t = 1024)]
    height: usize,
    #[arg(long, value_enum, default_value_t = Fit::CentreCrop)]
    fit: Fit,
    /// Inversion steps, the same as the generation that reconstructs [default: the model's].
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, value_enum, default_value_t = Inverter::FixedPoint)]
    inverter: Inverter,
    #[arg(long, default_value_t = 3.5)]
    guidance: f64,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: Invert) -> Result<()> {
    limits::check_side("width", args.width)?;
    limits::check_side("height", args.height)?;
    if let Some(steps) = args.steps {
        limits::check("steps", steps, &limits::STEPS)?;
    }
    limits::check_guidance("guidance", args.guidance)?;
    // The picture is checked before the model loads.
    let image = picture::load(&args.picture, args.width, args.height, args.fit)?;
    let planned = PlannedPicture {
        key: PictureKey {
            fnv64: picture::digest(&args.picture)?,
            fit: args.fit,
            inverter: args.inverter,
        },
        path: args.picture.clone(),
        image,
    };
    let mut models = args.run.load(&args.model)?;
    let steps = args.steps.unwrap_or(models.default_steps());
    models.begin_job(&[&args.prompt])?;
    let bar = step_bar(steps);
    bar.set_message(format!("inverting ({})", args.inverter.label()));
    let start = Instant::now();
    let noise = invert_picture(
        &mut models,
        &planned,
        &args.prompt,
        steps,
        args.guidance,
        &mut |done, _| {
            bar.set_position(done as u64);
            Ok(StepControl::Continue)
        },
    )?
    .context("the inversion was cancelled")?;
    bar.finish();
    let bytes = safetensors::serialize(BTreeMap::from([("noise", noise)]), None)
        .context("cannot serialize the noise")?;
    crate::atomic_file::write_atomic(&args.out, &bytes)?;
    eprintln!(
        "wrote {} ({} forwards in {:.1} s)",
        args.out.display(),
        args.inverter.forwards(steps),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
