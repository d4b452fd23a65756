//! The `charaboard` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

use charaboard::device::{parse_device, parse_dtype};
use charaboard::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use charaboard::sampler::StepControl;

#[derive(Parser)]
#[command(
    name = "charaboard",
    version,
    about = "Consistent-character storyboards with FLUX.1"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one image with plain FLUX.1.
    Generate {
        /// A FLUX.1 folder in the Hugging Face repository layout.
        #[arg(long)]
        model: PathBuf,
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
        /// cpu, cuda, cuda:N or metal [default: the best this build supports].
        #[arg(long)]
        device: Option<String>,
        /// f32, bf16 or f16 [default: f32 on CPU, bf16 on GPUs].
        #[arg(long)]
        dtype: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a tiny FLUX.1 model with random weights (abstract images) for tests and trying the app.
    TinyModel {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Without the guidance embedder, like FLUX.1-schnell.
        #[arg(long)]
        schnell: bool,
    },
    /// Time the hooks-off transformer against candle-transformers' FLUX on the same weights.
    Bench {
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Image side in tokens (32 = 1024 image tokens).
        #[arg(long, default_value_t = 32)]
        img_side: usize,
        #[arg(long, default_value_t = 512)]
        txt_len: usize,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn step_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] step {pos}/{len} {elapsed_precise} ({per_sec})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Writes the PNG next to its destination first, so that a failure never leaves a partial file.
fn save_png(image: &image::RgbImage, out: &Path) -> Result<()> {
    let tmp = out.with_extension("png.partial");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            model,
            prompt,
            width,
            height,
            steps,
            guidance,
            seed,
            noise,
            device,
            dtype,
            out,
        } => {
            let noise = match noise {
                Some(path) => NoiseSource::File(path),
                None => NoiseSource::Seed(seed),
            };
            let mut params = GenerateParams {
                prompt,
                width,
                height,
                steps: steps.unwrap_or(1),
                guidance,
                noise,
            };
            params.validate()?;
            let device = parse_device(device.as_deref())?;
            let dtype = parse_dtype(dtype.as_deref(), &device)?;
            eprintln!("loading {} ({dtype:?} on {device:?})", model.display());
            let mut models = FluxModels::load(&model, dtype, &device)?;
            params.steps = steps.unwrap_or(if models.is_dev() { 50 } else { 4 });
            let dropped = models.tokenizers.t5_ids(&params.prompt)?.dropped;
            if dropped > 0 {
                eprintln!(
                    "warning: the prompt is longer than {} T5 tokens; the last {dropped} tokens were dropped",
                    models.tokenizers.t5_len()
                );
            }
            let bar = step_bar(params.steps);
            bar.set_message("denoising");
            let result = generate(&mut models, &params, None, &mut |r| {
                bar.set_position((r.step + 1) as u64);
                Ok(StepControl::Continue)
            })?;
            bar.finish();
            let generated = result.context("generation was cancelled")?;
            save_png(&generated.image, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::TinyModel { out, seed, schnell } => {
            charaboard::models::tiny::write_repo(&out, seed, schnell)?;
            eprintln!(
                "wrote a tiny {} model with random weights to {}",
                if schnell {
                    "schnell-style"
                } else {
                    "dev-style"
                },
                out.display()
            );
            Ok(())
        }
        Command::Bench {
            reps,
            img_side,
            txt_len,
            device,
            dtype,
        } => {
            let device = parse_device(device.as_deref())?;
            let dtype = parse_dtype(dtype.as_deref(), &device)?;
            let cfg = charaboard::bench::medium_config();
            let t = charaboard::bench::transformer_vs_candle(
                &cfg, img_side, txt_len, reps, dtype, &device,
            )?;
            println!(
                "transformer, hooks off vs candle-transformers Flux (hidden {}, {}+{} blocks, {} image + {} text tokens, {dtype:?}, {device:?}, median of {reps}):",
                cfg.hidden_size,
                cfg.depth,
                cfg.depth_single_blocks,
                img_side * img_side,
                txt_len
            );
            println!(
                "  charaboard {:.1} ms, candle {:.1} ms, ratio {:.3} (max |diff| {:.2e})",
                t.ours.as_secs_f64() * 1e3,
                t.candle.as_secs_f64() * 1e3,
                t.ratio(),
                t.max_abs_diff
            );
            Ok(())
        }
    }
}
