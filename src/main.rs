//! The `charaboard` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

use charaboard::consist::session::{
    Outcome, RenderEvent, RenderOptions, RenderRequest, Renderer, Target,
};
use charaboard::device::{parse_device, parse_dtype};
use charaboard::export::files::{save_png, stem, write_dump, write_image};
use charaboard::export::sheet::contact_sheet;
use charaboard::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use charaboard::prompts::TextOptions;
use charaboard::sampler::StepControl;

#[derive(Parser)]
#[command(
    name = "charaboard",
    version,
    about = "Consistent-character storyboards with FLUX.1"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: open the app, on this project if given.
    project: Option<PathBuf>,
    /// The app's model folder (or a Hugging Face repository id found in the cache).
    #[arg(long)]
    model: Option<String>,
    /// Render every panel as soon as the model is loaded.
    #[arg(long)]
    render_on_start: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one image with plain FLUX.1.
    Generate {
        /// A FLUX.1 repository folder, a folder of single files, or a .ron model file.
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
        /// Keep the text encoders on the CPU (their outputs move to the device).
        #[arg(long)]
        text_on_cpu: bool,
        /// Free the text encoders once the prompts are encoded; reload them for new prompts.
        #[arg(long)]
        free_text_encoders: bool,
    },
    /// Render a storyboard project: the identity, every panel, overlays and a contact sheet.
    Render {
        project: PathBuf,
        /// A FLUX.1 repository folder, folder of single files or .ron model file [default: the project's settings.model].
        #[arg(long)]
        model: Option<PathBuf>,
        /// Output folder [default: the images folder beside the project file].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Initial noise from a safetensors file (tensor `noise`) instead of the project's seed.
        #[arg(long)]
        noise: Option<PathBuf>,
        /// Also write each image's latents, mask and matches as safetensors.
        #[arg(long)]
        dump: bool,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
        /// Keep the text encoders on the CPU (their outputs move to the device).
        #[arg(long)]
        text_on_cpu: bool,
        /// Free the text encoders once the prompts are encoded; reload them for new prompts.
        #[arg(long)]
        free_text_encoders: bool,
    },
    /// Export a rendered storyboard: a captioned panel sheet, a PDF and the numbered panels.
    Export {
        project: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Panels per row on the sheet.
        #[arg(long, default_value_t = 3)]
        columns: usize,
        /// a4 or letter (landscape).
        #[arg(long, default_value = "a4")]
        paper: charaboard::export::pdf::Paper,
    },
    /// Turn the reference implementation's prompt file (`background#character#action` lines,
    /// groups separated by blank lines) into one project per group.
    Import {
        prompts: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Lock every scene's background (the reference's --share_bg).
        #[arg(long)]
        lock_background: bool,
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
        /// repo: the Hugging Face layout; single-file: ComfyUI-style files and a model.ron;
        /// gguf: the same, with the transformer as a quantized GGUF.
        #[arg(long, value_enum, default_value_t = TinyLayout::Repo)]
        layout: TinyLayout,
        /// The GGUF's quantization of matrices (with --layout gguf).
        #[arg(long, value_enum, default_value_t = TinyQuant::Q8_0)]
        quant: TinyQuant,
    },
    /// List the FLUX.1 models in the Hugging Face caches and in the given folders, with each
    /// component's format, storage dtype and size.
    Models {
        /// Also look in this folder (and up to 3 levels below); repeatable.
        #[arg(long = "in")]
        dirs: Vec<PathBuf>,
    },
    /// Benchmarks that report ratios measured in one run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TinyLayout {
    Repo,
    SingleFile,
    Gguf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TinyQuant {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl TinyQuant {
    fn ggml(self) -> candle_core::quantized::GgmlDType {
        match self {
            TinyQuant::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
            TinyQuant::Q4_0 => candle_core::quantized::GgmlDType::Q4_0,
        }
    }
}

#[derive(Subcommand)]
enum Bench {
    /// The hooks-off transformer against candle-transformers' FLUX on the same weights.
    Transformer {
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
    /// A consistent panel and the identity run against a vanilla image, and memory over panels,
    /// on the medium transformer with random weights.
    Consist {
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        side: usize,
        /// Steps for the memory-over-panels run (2, 4 and 8 panels).
        #[arg(long, default_value_t = 10)]
        memory_steps: usize,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
    },
    /// The identity bank's bytes for FLUX.1-dev at 1024x1024, next to the reference's.
    Bank,
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

#[allow(clippy::too_many_arguments)]
fn render(
    project_path: &Path,
    model: Option<PathBuf>,
    out: Option<PathBuf>,
    noise: Option<PathBuf>,
    dump: bool,
    device: Option<String>,
    dtype: Option<String>,
    text: TextOptions,
) -> Result<()> {
    let project = charaboard::project::io::load(project_path)?;
    let model = model
        .or_else(|| project.settings.model.as_ref().map(PathBuf::from))
        .context("no model: pass --model DIR or set settings.model in the project")?;
    let out = out.unwrap_or_else(|| charaboard::project::io::images_dir(project_path));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let device = parse_device(device.as_deref())?;
    let dtype = parse_dtype(dtype.as_deref(), &device)?;
    eprintln!("loading {} ({dtype:?} on {device:?})", model.display());
    let mut models = FluxModels::load_with(&model, dtype, &device, text)?;
    report_bytes(&models);
    let options = RenderOptions {
        noise,
        preview_every: None,
    };
    let mut renderer = Renderer::default();
    let bar = step_bar(1);
    let mut images: Vec<(Target, image::RgbImage)> = Vec::new();
    let mut identity: Option<image::RgbImage> = None;
    let mut failure: Option<anyhow::Error> = None;
    let outcome = renderer.render(
        &mut models,
        &project,
        RenderRequest::All,
        &options,
        &mut |event| {
            match event {
                RenderEvent::Step {
                    target,
                    phase,
                    step,
                    steps,
                    ..
                } => {
                    bar.set_length(steps as u64);
                    bar.set_message(format!("{} {phase:?}", stem(target)));
                    bar.set_position((step + 1) as u64);
                }
                RenderEvent::Finished(output) => {
                    let reference = identity.clone().unwrap_or_else(|| output.image.clone());
                    let written = write_image(&out, output, &reference).and_then(|mut files| {
                        if dump {
                            files.push(write_dump(&out, output)?);
                        }
                        Ok(files)
                    });
                    match written {
                        Ok(files) => bar.suspend(|| {
                            eprintln!(
                                "{} in {:.1} s: {}",
                                stem(output.target),
                                output.seconds,
                                files
                                    .iter()
                                    .map(|f| f.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }),
                        Err(e) => failure = Some(e),
                    }
                    if output.target == Target::Identity {
                        identity = Some(output.image.clone());
                    }
                    images.retain(|(t, _)| *t != output.target);
                    images.push((output.target, output.image.clone()));
                }
            }
            match failure {
                Some(_) => StepControl::Cancel,
                None => StepControl::Continue,
            }
        },
    )?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    if outcome == Outcome::Cancelled {
        anyhow::bail!("rendering was cancelled");
    }
    images.sort_by_key(|(t, _)| *t);
    let refs: Vec<&image::RgbImage> = images.iter().map(|(_, i)| i).collect();
    let sheet = contact_sheet(&refs, 4, 256, 12)?;
    let sheet_path = out.join("sheet.png");
    save_png(&sheet, &sheet_path)?;
    eprintln!(
        "wrote {} (identity bank {:.1} MB, peak {:.1} MB)",
        sheet_path.display(),
        renderer.bank_bytes() as f64 / 1e6,
        renderer.identity_peak_bytes().unwrap_or(0) as f64 / 1e6
    );
    Ok(())
}

/// What each component's weights take on the device, printed after loading.
fn report_bytes(models: &FluxModels) {
    let parts: Vec<String> = models
        .component_bytes()
        .iter()
        .map(|(name, bytes)| format!("{name} {:.1} MB", *bytes as f64 / 1e6))
        .collect();
    eprintln!("on the device: {}", parts.join(", "));
}

fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        let model = cli
            .model
            .map(|m| charaboard::models::discovery::resolve(&m))
            .transpose()?;
        return charaboard::ui::run(cli.project, model, cli.render_on_start);
    };
    match command {
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
            text_on_cpu,
            free_text_encoders,
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
            let text = TextOptions {
                on_cpu: text_on_cpu,
                free_after_encoding: free_text_encoders,
            };
            let mut models = FluxModels::load_with(&model, dtype, &device, text)?;
            report_bytes(&models);
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
        Command::Render {
            project,
            model,
            out,
            noise,
            dump,
            device,
            dtype,
            text_on_cpu,
            free_text_encoders,
        } => render(
            &project,
            model,
            out,
            noise,
            dump,
            device,
            dtype,
            TextOptions {
                on_cpu: text_on_cpu,
                free_after_encoding: free_text_encoders,
            },
        ),
        Command::Export {
            project,
            out,
            columns,
            paper,
        } => {
            let loaded = charaboard::project::io::load(&project)?;
            let images = charaboard::project::io::images_dir(&project);
            let options = charaboard::export::storyboard::SheetOptions {
                columns,
                ..Default::default()
            };
            for file in
                charaboard::export::storyboard::export_all(&loaded, &images, &out, &options, paper)?
            {
                println!("{}", file.display());
            }
            Ok(())
        }
        Command::Import {
            prompts,
            out,
            lock_background,
        } => {
            let projects = charaboard::project::import::import_file(&prompts, lock_background)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let stem = prompts
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("story");
            for (k, project) in projects.iter().enumerate() {
                let path = out.join(format!("{stem}-{:02}.ron", k + 1));
                charaboard::project::io::save(project, &path)?;
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::TinyModel {
            out,
            seed,
            schnell,
            layout,
            quant,
        } => {
            match layout {
                TinyLayout::Repo => charaboard::models::tiny::write_repo(&out, seed, schnell)?,
                TinyLayout::SingleFile => charaboard::models::tiny_files::write_single_files(
                    &out,
                    seed,
                    schnell,
                    charaboard::models::tiny_files::FileDtypes::DOWNLOADS,
                )?,
                TinyLayout::Gguf => charaboard::models::tiny_files::write_gguf_files(
                    &out,
                    seed,
                    schnell,
                    quant.ggml(),
                )?,
            }
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
        Command::Models { dirs } => list_models(&dirs),
        Command::Bench(bench) => run_bench(bench),
    }
}

fn list_models(dirs: &[PathBuf]) -> Result<()> {
    use charaboard::models::{discovery, inventory};
    let caches = discovery::cache_dirs();
    println!(
        "Hugging Face caches: {}",
        match caches.is_empty() {
            true => "none".to_string(),
            false => caches
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    );
    let mut found = inventory::in_caches()?;
    for dir in dirs {
        found.extend(inventory::in_dir(dir)?);
    }
    if found.is_empty() {
        println!("no FLUX.1 models found");
    }
    for model in &found {
        let status = match model.complete {
            true => "",
            false => "  (incomplete: not every component is here)",
        };
        println!("{}  {}{status}", model.name, model.path.display());
        for c in &model.components {
            println!(
                "  {:<12} {:<25} {:<10} {:>14} bytes  {}",
                c.role.name(),
                c.format,
                c.dtype,
                c.bytes,
                c.path.display()
            );
        }
    }
    Ok(())
}

fn gb(bytes: usize) -> f64 {
    bytes as f64 / 1e9
}

fn run_bench(bench: Bench) -> Result<()> {
    use charaboard::bench;
    match bench {
        Bench::Transformer {
            reps,
            img_side,
            txt_len,
            device,
            dtype,
        } => {
            let device = parse_device(device.as_deref())?;
            let dtype = parse_dtype(dtype.as_deref(), &device)?;
            let cfg = bench::medium_config();
            let t = bench::transformer_vs_candle(&cfg, img_side, txt_len, reps, dtype, &device)?;
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
        }
        Bench::Consist {
            steps,
            side,
            memory_steps,
            device,
            dtype,
        } => {
            let device = parse_device(device.as_deref())?;
            let dtype = parse_dtype(dtype.as_deref(), &device)?;
            let dir = std::env::temp_dir().join(format!("charaboard-bench-{}", std::process::id()));
            let cfg = bench::medium_pipeline_config();
            charaboard::models::tiny::write_repo_with(&dir, 0, &cfg)?;
            let mut models = FluxModels::load(&dir, dtype, &device)?;
            println!(
                "CharaConsist on a random medium transformer (hidden {}, {}+{} blocks), {side}x{side}, {steps} steps, {dtype:?} on {device:?}:",
                cfg.hidden_size, cfg.depth, cfg.depth_single_blocks
            );
            for lock in [false, true] {
                let project = bench::bench_project(1, side, steps, lock);
                let t = bench::consist_vs_vanilla(&mut models, &project, lock)?;
                println!(
                    "  background {}: vanilla {:.2} s, identity run {:.2} s ({:.3}x), consistent panel {:.2} s ({:.3}x)",
                    if lock { "locked  " } else { "switched" },
                    t.vanilla,
                    t.identity,
                    t.identity / t.vanilla,
                    t.panel,
                    t.panel / t.vanilla
                );
            }
            println!(
                "  memory while rendering 8 panels ({memory_steps} steps, background locked):"
            );
            let project = bench::bench_project(8, side, memory_steps, true);
            for (n, bank, peak, now) in bench::memory_by_panel(&mut models, &project)? {
                if [2, 4, 8].contains(&n) {
                    println!(
                        "    after {n} panels: bank {:.1} MB, resident {:.1} MB, peak resident {:.1} MB",
                        bank as f64 / 1e6,
                        now as f64 / 1e6,
                        peak as f64 / 1e6
                    );
                }
            }
            std::fs::remove_dir_all(&dir).ok();
        }
        Bench::Bank => {
            let reference = bench::reference_bank_bytes(1024);
            println!("identity bank, FLUX.1-dev at 1024x1024, bf16, default recipe (reference: {:.1} GB whatever the foreground):", gb(reference));
            for fg in [0.1, 0.3, 0.5] {
                let switched = bench::flux_dev_bank_bytes(1024, fg, false);
                let locked = bench::flux_dev_bank_bytes(1024, fg, true);
                println!(
                    "  foreground {:.0}%: background switched {:.1} GB ({:.1}% of the reference), locked {:.1} GB ({:.1}%)",
                    fg * 100.0,
                    gb(switched),
                    100.0 * switched as f64 / reference as f64,
                    gb(locked),
                    100.0 * locked as f64 / reference as f64
                );
            }
        }
    }
    Ok(())
}
