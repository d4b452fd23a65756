//! `charaboard generate`: one image with plain FLUX.1.

use anyhow::{Context, Result};
use std::path::PathBuf;

use super::args::RunArgs;
use super::progress::step_bar;
use crate::atomic_file::save_png;
use crate::limits::prompt_too_long;
use crate::pipeline::{generate, GenerateParams, NoiseSource};
use crate::sampler::StepControl;

#[derive(clap::Args)]
pub struct Generate {
    /// A FLUX.1 repository folder, a folder of single files, a .ron model file, or a Hugging
    /// Face repository id (ORG/NAME) in the cache.
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 1024)]
    width: usize,
    #[arg(long, default_value_t = 1024)]
    height: usize,
    /// Denoising steps [default: 50 for dev, 4 for schnell].
    #[arg(long)]
    steps: Option<usize>,
    /// Distilled guidance (dev only; schnell ignores it).
    #[arg(long, default_value_t = 3.5)]
    guidance: f64,
    #[arg(long, default_value_t = 2025)]
    seed: u64,
    /// Initial noise from a safetensors file (tensor `noise`, shape (1,16,H/8,W/8)) instead of the seed.
    #[arg(long)]
    noise: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: Generate) -> Result<()> {
    let noise = match args.noise {
        Some(path) => NoiseSource::File(path),
        None => NoiseSource::Seed(args.seed),
    };
    let mut params = GenerateParams {
        prompt: args.prompt,
        width: args.width,
        height: args.height,
        steps: args.steps.unwrap_or(1),
        guidance: args.guidance,
        noise,
    };
    params.validate()?;
    let mut models = args.run.load(&args.model)?;
    params.steps = args.steps.unwrap_or(models.default_steps());
    let dropped = models.tokenizers.t5_ids(&params.prompt)?.dropped;
    if dropped > 0 {
        let limit = models.tokenizers.t5_len() - 1;
        eprintln!("warning: the prompt is {}", prompt_too_long(dropped, limit));
    }
    let bar = step_bar(params.steps);
    bar.set_message("denoising");
    let result = generate(&mut models, &params, None, &mut |r| {
        bar.set_position((r.step + 1) as u64);
        Ok(StepControl::Continue)
    })?;
    bar.finish();
    let generated = result.context("generation was cancelled")?;
    save_png(&generated.image, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
