//! Benchmarks that report ratios measured in one run (never timed tests).

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::flux::WithForward;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::args::DeviceArgs;

mod cast;
mod lockstep;
use crate::consist::bank::{identity_bank_bytes, BankDims};
use crate::consist::plan::{Phase, Plan, PlanModel, RenderRequest, Target};
use crate::consist::recipe::Recipe;
use crate::consist::session::{RenderEvent, RenderOptions, Renderer};
use crate::flux::attention::scaled_dot_product;
use crate::flux::{Flux, FluxConfig, StepInput, TokenLayout};
use crate::memory_plan::{mode_name, MemoryPlan, ModelMemory, Storage, Storyboard};
use crate::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use crate::project::model::{Character, IdentityShot, Panel, Project, RenderSettings, Scene};
use crate::sampler::StepControl;

/// A mid-sized FLUX: hidden 512 (8 heads of 64), 4 double and 8 single blocks.
pub fn medium_config() -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 768,
        context_in_dim: 512,
        hidden_size: 512,
        mlp_ratio: 4.0,
        num_heads: 8,
        depth: 4,
        depth_single_blocks: 8,
        axes_dim: vec![8, 28, 28],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: true,
    }
}

pub struct TransformerTiming {
    pub ours: Duration,
    pub candle: Duration,
    pub max_abs_diff: f32,
}

impl TransformerTiming {
    pub fn ratio(&self) -> f64 {
        self.ours.as_secs_f64() / self.candle.as_secs_f64()
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Times the hooks-off transformer against candle-transformers' `Flux` on the same random weights
/// and inputs, alternating the two so that both see the same machine state; medians of `reps`.
pub fn transformer_vs_candle(
    cfg: &FluxConfig,
    img_side: usize,
    txt_len: usize,
    reps: usize,
    dtype: DType,
    dev: &Device,
) -> Result<TransformerTiming> {
    // Seeded weights with non-degenerate norms (a fresh VarMap zeroes the q/k norm scales).
    let weights = crate::models::tiny::transformer_weights(cfg, 0)?;
    let vb = VarBuilder::from_tensors(weights.into_iter().collect(), dtype, dev);
    let ours = Flux::new(cfg, vb.clone())?;
    let theirs = candle_transformers::models::flux::model::Flux::new(cfg, vb)?;
    time_against(&ours, &theirs, img_side, txt_len, reps, dtype, dev)
}

/// Times `ours` against `theirs` (a candle-transformers FLUX on the same weights) on the same
/// random inputs in `dtype`, alternating the two; medians of `reps`, after one untimed pass each
/// whose outputs give the largest difference.
pub fn time_against(
    ours: &Flux,
    theirs: &impl WithForward,
    img_side: usize,
    txt_len: usize,
    reps: usize,
    dtype: DType,
    dev: &Device,
) -> Result<TransformerTiming> {
    let cfg = ours.config();
    let img =
        Tensor::randn(0f32, 1., (1, img_side * img_side, cfg.in_channels), dev)?.to_dtype(dtype)?;
    let txt = Tensor::randn(0f32, 1., (1, txt_len, cfg.context_in_dim), dev)?.to_dtype(dtype)?;
    let pooled = Tensor::randn(0f32, 1., (1, cfg.vec_in_dim), dev)?.to_dtype(dtype)?;
    let img_ids = crate::flux::rope::image_ids(img_side, img_side, dtype, dev)?;
    let txt_ids = Tensor::zeros((1, txt_len, 3), dtype, dev)?;
    let t = Tensor::full(0.7f32, 1, dev)?;
    let g = Tensor::full(3.5f32, 1, dev)?;
    let layout = TokenLayout {
        txt_len,
        img_h: img_side,
        img_w: img_side,
    };
    let run_ours = || -> Result<Tensor> {
        // The RoPE table is built once per image in a real run; timing it per step is fairer to candle.
        let rope = ours.rope_table(&txt_ids, &img_ids)?;
        let input = StepInput {
            img: &img,
            txt: &txt,
            pooled: &pooled,
            rope: &rope,
            layout,
        };
        Ok(ours.forward(&input, &t, Some(&g), 0, None)?)
    };
    let run_theirs = || -> Result<Tensor> {
        Ok(theirs.forward(&img, &img_ids, &txt, &txt_ids, &t, &pooled, Some(&g))?)
    };
    let a = run_ours()?;
    let b = run_theirs()?;
    let max_abs = |t: &Tensor| -> Result<f32> {
        Ok(t.abs()?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .max(0)?
            .to_scalar::<f32>()?)
    };
    let max_abs_diff = max_abs(&(&a - &b)?)?;
    let (mut ours_t, mut theirs_t) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let start = Instant::now();
        run_ours()?;
        dev.synchronize()?;
        ours_t.push(start.elapsed());
        let start = Instant::now();
        run_theirs()?;
        dev.synchronize()?;
        theirs_t.push(start.elapsed());
    }
    Ok(TransformerTiming {
        ours: median(ours_t),
        candle: median(theirs_t),
        max_abs_diff,
    })
}

/// FLOPs of one transformer forward over `tokens` joint tokens: per block, 24 h^2 a token for the
/// linear layers (a double block's qkv 3h^2, output h^2 and MLP 8h^2 multiply-adds on each
/// stream; a single block's fused 7h^2 in and 5h^2 out) and 4 N^2 h for attention (q k^T and
/// the weighted sum of v). Modulation and the embedders are left out: under 1 %.
pub fn forward_flops(cfg: &FluxConfig, tokens: usize) -> f64 {
    let (h, n) = (cfg.hidden_size as f64, tokens as f64);
    let blocks = (cfg.depth + cfg.depth_single_blocks) as f64;
    blocks * (24.0 * h * h * n + 4.0 * n * n * h)
}

/// GFLOP/s of an `n` x `n` by `n` x `n` matrix product in `dtype` on `dev`, median of `reps`:
/// what this machine's matrix kernels reach, the ceiling a forward is measured against.
pub fn matmul_gflops(n: usize, reps: usize, dtype: DType, dev: &Device) -> Result<f64> {
    let a = Tensor::randn(0f32, 1., (n, n), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1., (n, n), dev)?.to_dtype(dtype)?;
    a.matmul(&b)?;
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        a.matmul(&b)?;
        dev.synchronize()?;
        times.push(start.elapsed());
    }
    Ok(2.0 * (n as f64).powi(3) / median(times).as_secs_f64() / 1e9)
}

/// The medium transformer with the tiny text encoders' widths, for whole-pipeline benchmarks.
pub fn medium_pipeline_config() -> FluxConfig {
    FluxConfig {
        context_in_dim: 32,
        vec_in_dim: 32,
        ..medium_config()
    }
}

/// Peak and current resident memory of this process, in bytes (Linux; 0 elsewhere).
pub fn resident_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds this process has used, all threads, user and system (Linux; 0 elsewhere). Other
/// processes on the machine move it far less than wall time, so its ratios hold on a busy one.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses, maybe with spaces) the fields run from the 3rd;
    // utime and stime are the 14th and 15th, in USER_HZ ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |r| r.1)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    (ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0)) / 100.0
}

/// A one-scene storyboard of `panels` panels at `side` x `side` pixels.
pub fn bench_project(panels: usize, side: usize, steps: usize, lock_background: bool) -> Project {
    let environment = "in a quiet forest clearing at dawn, mist between the trees,";
    Project {
        title: "benchmark".into(),
        characters: vec![Character::new(
            "a young knight in silver armour with a red cape,",
            IdentityShot::new(environment, "standing, front view"),
        )],
        scenes: vec![Scene {
            name: "clearing".into(),
            environment: environment.into(),
            lock_background,
            width: None,
            height: None,
        }],
        panels: (0..panels)
            .map(|i| Panel::new(0, format!("walking, step {i}")))
            .collect(),
        takes: Default::default(),
        settings: RenderSettings {
            width: side,
            height: side,
            steps: Some(steps),
            ..RenderSettings::default()
        },
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let out = f()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

fn keep_going(_: RenderEvent) -> StepControl {
    StepControl::Continue
}

pub struct ConsistTiming {
    pub vanilla: f64,
    pub identity: f64,
    pub panel: f64,
}

/// Seconds of a vanilla image, the identity run and one consistent panel (pre-run + main run),
/// all from the same noise and settings, in one process. The vanilla image is timed before and
/// after the others and averaged, so that a drift of the machine's speed shows in neither ratio.
pub fn consist_vs_vanilla(
    models: &mut FluxModels,
    project: &Project,
    lock: bool,
) -> Result<ConsistTiming> {
    let mut p = project.clone();
    p.scenes[0].lock_background = lock;
    let params = GenerateParams {
        prompt: p.identity_prompt(),
        width: p.settings.width,
        height: p.settings.height,
        steps: p.settings.steps.unwrap_or(50),
        guidance: p.settings.guidance,
        noise: NoiseSource::Seed(p.settings.seed),
    };
    let mut vanilla = || {
        timed(|| generate(models, &params, None, &mut |_| Ok(StepControl::Continue)))
            .map(|(_, t)| t)
    };
    let before = vanilla()?;
    let plan = crate::project::plan(&p, &PlanModel::of(models), None)?;
    let mut renderer = Renderer::default();
    let options = RenderOptions::default();
    let (_, identity) = timed(|| {
        renderer.render(
            models,
            &plan,
            RenderRequest::Identity,
            &options,
            &mut keep_going,
        )
    })?;
    let (_, panel) = timed(|| {
        renderer.render(
            models,
            &plan,
            RenderRequest::Panel(0),
            &options,
            &mut keep_going,
        )
    })?;
    let after = timed(|| generate(models, &params, None, &mut |_| Ok(StepControl::Continue)))?.1;
    Ok(ConsistTiming {
        vanilla: (before + after) / 2.0,
        identity,
        panel,
    })
}

pub struct StoryboardTiming {
    /// Seconds of the whole render.
    pub total: f64,
    /// Seconds and steps of each phase; a step's time runs from the event before it, so the text
    /// encoding before an image's first step counts there and the final decode does not.
    pub phases: [(Phase, f64, usize); 3],
}

impl StoryboardTiming {
    /// Seconds per forward and forwards of `phase`.
    pub fn per_forward(&self, phase: Phase) -> (f64, usize) {
        let (_, s, n) = self
            .phases
            .iter()
            .find(|p| p.0 == phase)
            .copied()
            .unwrap_or((phase, 0.0, 0));
        (s / n.max(1) as f64, n)
    }
}

/// Renders every image of `project`'s plan and times its steps by phase.
pub fn storyboard_phases(models: &mut FluxModels, project: &Project) -> Result<StoryboardTiming> {
    let plan = crate::project::plan(project, &PlanModel::of(models), None)?;
    let mut phases = [Phase::Identity, Phase::PreRun, Phase::Main].map(|p| (p, 0.0, 0));
    let start = Instant::now();
    let mut last = start;
    let mut on_event = |e: RenderEvent| {
        let now = Instant::now();
        if let RenderEvent::Step(step) = e {
            if let Some(entry) = phases.iter_mut().find(|p| p.0 == step.phase) {
                entry.1 += (now - last).as_secs_f64();
                entry.2 += 1;
            }
        }
        last = now;
        StepControl::Continue
    };
    Renderer::default().render(
        models,
        &plan,
        RenderRequest::All,
        &RenderOptions::default(),
        &mut on_event,
    )?;
    Ok(StoryboardTiming {
        total: start.elapsed().as_secs_f64(),
        phases,
    })
}

/// (panels rendered, bank bytes, peak resident bytes, current resident bytes) after each panel.
pub fn memory_by_panel(
    models: &mut FluxModels,
    plan: &Plan,
) -> Result<Vec<(usize, usize, u64, u64)>> {
    let mut renderer = Renderer::default();
    let mut rows = Vec::new();
    let mut done = 0;
    let mut on_event = |e: RenderEvent| {
        if let RenderEvent::Finished { output, .. } = e {
            if matches!(output.target, Target::Panel(_)) {
                done += 1;
                let (peak, now) = resident_memory();
                rows.push((done, peak, now));
            }
        }
        StepControl::Continue
    };
    renderer.render(
        models,
        plan,
        RenderRequest::All,
        &RenderOptions::default(),
        &mut on_event,
    )?;
    let bank = renderer.bank_bytes();
    Ok(rows
        .into_iter()
        .map(|(n, peak, now)| (n, bank, peak, now))
        .collect())
}

/// FLUX.1-dev's bank at `side` x `side` in bf16 with foreground fraction `fg`, by the bank's
/// own accounting rules (checked against real banks in tests/consist.rs).
pub fn flux_dev_bank_bytes(side: usize, fg: f64, locked_background: bool) -> usize {
    let img_tokens = (side / 16) * (side / 16);
    let dims = BankDims {
        single_blocks: 38,
        hidden: 3072,
        img_tokens,
        fg_tokens: (img_tokens as f64 * fg).round() as usize,
        dtype_bytes: 2,
        locked_background,
    };
    identity_bank_bytes(&Recipe::default().schedule(50), dims)
}

/// The reference's bank at `side` x `side` (characonsist-spec.md §2): keys and values of all 38
/// single blocks for steps 1..=40, attention outputs of 19 layers for steps 1..=30 and of the 19
/// others at step 10, bf16, whatever the foreground.
pub fn reference_bank_bytes(side: usize) -> usize {
    let per_tensor = (side / 16) * (side / 16) * 3072 * 2;
    per_tensor * (38 * 40 * 2 + 19 * 30 + 19)
}

#[derive(clap::Subcommand)]
pub enum Bench {
    /// The hooks-off transformer against candle-transformers' FLUX on the same weights.
    Transformer {
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Image side in tokens (32 = 1024 image tokens).
        #[arg(long, default_value_t = 32)]
        img_side: usize,
        #[arg(long, default_value_t = 512)]
        txt_len: usize,
        #[command(flatten)]
        run: DeviceArgs,
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
        #[command(flatten)]
        run: DeviceArgs,
    },
    /// A storyboard (the identity and three panels of one scene) on the tiny and on the medium
    /// random pipeline: seconds in all and per forward in each phase.
    Storyboard {
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        side: usize,
        /// Lock the scene's background onto the identity.
        #[arg(long)]
        lock_background: bool,
        #[command(flatten)]
        run: DeviceArgs,
    },
    /// Lockstep rendering (no bank) on the medium random pipeline: its peak heap over a vanilla
    /// image's for batches 1, 2, 4, 8 (and at twice the steps and blocks), and its time over
    /// the banked mode's for one scene locked onto the identity and for mixed scenes.
    Lockstep {
        /// Steps of the timed storyboards.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Steps of the memory runs (and twice as many for the row that doubles them).
        #[arg(long, default_value_t = 8)]
        memory_steps: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        side: usize,
        /// Panels of the timed storyboard (and its lockstep batch).
        #[arg(long, default_value_t = 4)]
        panels: usize,
        #[command(flatten)]
        run: DeviceArgs,
    },
    /// A panel showing two characters against one showing one, on the medium random pipeline:
    /// forwards, CPU seconds and the keys each character borrows.
    Cast {
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        side: usize,
        #[command(flatten)]
        run: DeviceArgs,
    },
    /// The identity bank's bytes for FLUX.1-dev at 1024x1024, next to the reference's.
    Bank,
    /// `charaboard plan` for FLUX.1-dev at 1024x1024 (identity + 8 panels locked onto the
    /// identity's background, text encoders on the CPU) with Q8_0, Q4_0 and bf16 transformers on
    /// 12, 16, 24 and 80 GB cards, from the architecture's tensor shapes.
    Plan,
    /// The prepared GPU run (scripts/gpu-run.sh): FLUX.1-dev-shaped random weights made on the
    /// device, steps timed against candle-transformers' Flux in the run's dtype and as Q8_0 and
    /// Q4_0, attention alone, a CharaConsist storyboard and peak GPU memory, as one JSON file.
    GpuRun {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "full")]
        size: RunSize,
        #[arg(long, default_value_t = 28)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds after which the phases not yet begun are skipped (and listed as skipped).
        #[arg(long, default_value_t = 420)]
        budget_s: u64,
        /// Scratch folder for the tiny encoders and VAE and the GGUF files [default: a temporary one].
        #[arg(long)]
        work: Option<PathBuf>,
        #[command(flatten)]
        run: DeviceArgs,
    },
}

fn gb(bytes: usize) -> f64 {
    bytes as f64 / 1e9
}

/// Runs one benchmark and prints its figures.
pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Transformer {
            reps,
            img_side,
            txt_len,
            run,
        } => {
            let (device, dtype) = run.device_and_dtype()?;
            let cfg = medium_config();
            let t = transformer_vs_candle(&cfg, img_side, txt_len, reps, dtype, &device)?;
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
            let flops = forward_flops(&cfg, img_side * img_side + txt_len);
            let forward = flops / t.ours.as_secs_f64() / 1e9;
            let peak = matmul_gflops(2048, reps, dtype, &device)?;
            println!(
                "  forward {:.1} GFLOP in {:.1} GFLOP/s; a 2048^3 matrix product {:.1} GFLOP/s; forward at {:.1} % of it",
                flops / 1e9,
                forward,
                peak,
                100.0 * forward / peak
            );
        }
        Bench::Consist {
            steps,
            side,
            memory_steps,
            run,
        } => {
            let (device, dtype) = run.device_and_dtype()?;
            let dir = std::env::temp_dir().join(format!("charaboard-bench-{}", std::process::id()));
            let cfg = medium_pipeline_config();
            crate::models::tiny::write_repo_with(&dir, 0, &cfg)?;
            let mut models = FluxModels::load(&dir, dtype, &device)?;
            println!(
                "CharaConsist on a random medium transformer (hidden {}, {}+{} blocks), {side}x{side}, {steps} steps, {dtype:?} on {device:?}:",
                cfg.hidden_size, cfg.depth, cfg.depth_single_blocks
            );
            for lock in [false, true] {
                let project = bench_project(1, side, steps, lock);
                let t = consist_vs_vanilla(&mut models, &project, lock)?;
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
            let project = bench_project(8, side, memory_steps, true);
            let plan = crate::project::plan(&project, &PlanModel::of(&models), None)?;
            for (n, bank, peak, now) in memory_by_panel(&mut models, &plan)? {
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
        Bench::GpuRun {
            out,
            size,
            steps,
            reps,
            budget_s,
            work,
            run,
        } => {
            let (device, dtype) = run.device_and_dtype()?;
            let scratch =
                std::env::temp_dir().join(format!("charaboard-gpu-run-{}", std::process::id()));
            let opts = GpuRunOptions {
                out,
                size,
                steps,
                reps,
                budget: Duration::from_secs(budget_s),
                work: work.unwrap_or_else(|| scratch.clone()),
            };
            let result = gpu_run(&opts, &device, dtype);
            std::fs::remove_dir_all(&scratch).ok();
            result?;
            println!("gpu-run: figures in {}", opts.out.display());
        }
        Bench::Storyboard {
            steps,
            side,
            lock_background,
            run,
        } => {
            let (device, dtype) = run.device_and_dtype()?;
            let project = bench_project(3, side, steps, lock_background);
            println!(
                "storyboard: identity + 3 panels, {side}x{side}, {steps} steps, background {}, {dtype:?} on {device:?}:",
                if lock_background { "locked" } else { "switched" }
            );
            let pipelines = [
                ("tiny", crate::models::tiny::flux_config(false)),
                ("medium", medium_pipeline_config()),
            ];
            for (name, cfg) in pipelines {
                let dir =
                    std::env::temp_dir().join(format!("charaboard-bench-{}", std::process::id()));
                crate::models::tiny::write_repo_with(&dir, 0, &cfg)?;
                let mut models = FluxModels::load(&dir, dtype, &device)?;
                let t = storyboard_phases(&mut models, &project)?;
                std::fs::remove_dir_all(&dir).ok();
                let per_forward = |p: Phase| {
                    let (s, n) = t.per_forward(p);
                    format!("{:.1} ms ({n})", 1e3 * s)
                };
                println!(
                    "  {name} (hidden {}, {}+{} blocks): {:.2} s; per forward: identity {}, pre-runs {}, main runs {}",
                    cfg.hidden_size,
                    cfg.depth,
                    cfg.depth_single_blocks,
                    t.total,
                    per_forward(Phase::Identity),
                    per_forward(Phase::PreRun),
                    per_forward(Phase::Main),
                );
            }
        }
        Bench::Plan => flux_dev_plans()?,
        Bench::Cast { steps, side, run } => {
            let (device, dtype) = run.device_and_dtype()?;
            cast::run(side, steps, dtype, &device)?;
        }
        Bench::Lockstep {
            steps,
            memory_steps,
            side,
            panels,
            run,
        } => {
            let (device, dtype) = run.device_and_dtype()?;
            lockstep::run(side, steps, memory_steps, panels, dtype, &device)?;
        }
        Bench::Bank => {
            let reference = reference_bank_bytes(1024);
            println!("identity bank, FLUX.1-dev at 1024x1024, bf16, default recipe (reference: {:.1} GB whatever the foreground):", gb(reference));
            for fg in [0.1, 0.3, 0.5] {
                let switched = flux_dev_bank_bytes(1024, fg, false);
                let locked = flux_dev_bank_bytes(1024, fg, true);
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

/// The sizes `bench gpu-run` runs at: FLUX.1-dev's at 1024x1024, or the tiny model's at 64x64,
/// the same work at a size a CPU test runs in seconds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunSize {
    Full,
    Tiny,
}

impl RunSize {
    fn config(self) -> FluxConfig {
        match self {
            RunSize::Full => FluxConfig::dev(),
            RunSize::Tiny => crate::models::tiny::flux_config(false),
        }
    }

    /// Image side in pixels.
    fn side(self) -> usize {
        match self {
            RunSize::Full => 1024,
            RunSize::Tiny => 64,
        }
    }
}

/// Random weights made on the device as a model asks for them (N(0, 1/fan_in) matrices, norm
/// scales 1, small biases), kept by name so that a second model with the same names shares them:
/// a full-size FLUX needs no file and no host memory.
#[derive(Clone, Default)]
struct RandomWeights(Arc<Mutex<BTreeMap<String, Tensor>>>);

impl RandomWeights {
    fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, dev.clone())
    }

    fn made(&self) -> candle_core::Result<MutexGuard<'_, BTreeMap<String, Tensor>>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned weights".into()))
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut made = self.made()?;
        if let Some(t) = made.get(name) {
            return t.to_dtype(dtype);
        }
        let t = match shape.dims() {
            [rows, ..] if shape.rank() >= 2 => {
                let fan_in = shape.elem_count() / rows;
                (Tensor::randn(0f32, 1., shape, dev)? / (fan_in as f64).sqrt())?
            }
            _ if name.contains("norm") || name.ends_with(".scale") => {
                Tensor::ones(shape, DType::F32, dev)?
            }
            _ => Tensor::randn(0f32, 0.05, shape, dev)?,
        }
        .to_dtype(dtype)?;
        made.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        match self.made()?.get(name) {
            Some(t) => t.to_dtype(dtype),
            None => candle_core::bail!("no random tensor `{name}` was made"),
        }
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Milliseconds of one block's attention over `tokens` queries and keys, alone and with `extra`
/// shared keys appended under an additive mask (as CharaConsist appends the identity's); medians
/// of `reps` after one untimed pass.
fn attention_ms(
    cfg: &FluxConfig,
    tokens: usize,
    extra: usize,
    reps: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(f64, f64)> {
    let heads = cfg.num_heads;
    let head_dim = cfg.hidden_size / heads;
    let randn = |n: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1., (1, heads, n, head_dim), dev)?.to_dtype(dtype)?)
    };
    let (q, k, v) = (randn(tokens)?, randn(tokens)?, randn(tokens)?);
    let k_ext = Tensor::cat(&[&k, &randn(extra)?], 2)?;
    let v_ext = Tensor::cat(&[&v, &randn(extra)?], 2)?;
    let mask = Tensor::zeros((tokens, tokens + extra), dtype, dev)?;
    let time = |k: &Tensor, v: &Tensor, mask: Option<&Tensor>| -> Result<f64> {
        scaled_dot_product(&q, k, v, mask)?;
        dev.synchronize()?;
        let mut times = Vec::new();
        for _ in 0..reps {
            let start = Instant::now();
            scaled_dot_product(&q, k, v, mask)?;
            dev.synchronize()?;
            times.push(start.elapsed());
        }
        Ok(median(times).as_secs_f64() * 1e3)
    };
    Ok((time(&k, &v, None)?, time(&k_ext, &v_ext, Some(&mask))?))
}

/// What `bench gpu-run` does and where it writes; see [`Bench::GpuRun`].
pub struct GpuRunOptions {
    pub out: PathBuf,
    pub size: RunSize,
    pub steps: usize,
    pub reps: usize,
    pub budget: Duration,
    pub work: PathBuf,
}

/// The largest device memory in use seen so far (the whole card, from the driver), sampled
/// after every step and phase: a lower bound of the true peak.
#[derive(Default)]
struct MemoryPeak(Option<u64>);

impl MemoryPeak {
    fn sample(&mut self, dev: &Device) {
        if let Some(used) = crate::device::gpu_memory_in_use(dev) {
            self.0 = Some(self.0.map_or(used, |p| p.max(used)));
        }
    }
}

fn timing_json(t: &TransformerTiming, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "charaboard_ms": t.ours.as_secs_f64() * 1e3,
        "candle_ms": t.candle.as_secs_f64() * 1e3,
        "ratio": t.ratio(),
        "max_abs_diff": t.max_abs_diff,
    });
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// The prepared device run of `scripts/gpu-run.sh`: each phase's figures go into one JSON
/// object, rewritten after every phase so that a run cut short keeps what it measured.
pub fn gpu_run(opts: &GpuRunOptions, dev: &Device, dtype: DType) -> Result<()> {
    let start = Instant::now();
    let cfg = opts.size.config();
    let side = opts.size.side();
    let img_side = side / 16;
    let txt_len = crate::text::t5_len_for(&cfg);
    let mut peak = MemoryPeak::default();
    let mut figures = serde_json::json!({
        "size": format!("{:?}", opts.size).to_lowercase(),
        "device": format!("{dev:?}"),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "transformer_config": {
            "hidden": cfg.hidden_size, "heads": cfg.num_heads, "double_blocks": cfg.depth,
            "single_blocks": cfg.depth_single_blocks,
        },
        "image": [side, side],
        "image_tokens": img_side * img_side,
        "text_tokens": txt_len,
        "steps": opts.steps,
        "reps": opts.reps,
        "phases_s": {},
        "skipped": [],
    });
    std::fs::create_dir_all(&opts.work)
        .with_context(|| format!("cannot create {}", opts.work.display()))?;
    type Phase<'a> = (
        &'static str,
        Box<dyn FnOnce(&mut MemoryPeak) -> Result<serde_json::Value> + 'a>,
    );
    let phases: Vec<Phase> = vec![
        ("tiny_parity", Box::new(|peak| tiny_parity(opts, dev, peak))),
        (
            "transformer_dense",
            Box::new(|peak| {
                let weights = RandomWeights::default();
                let ours = Flux::new(&cfg, weights.var_builder(dtype, dev))?;
                let theirs = candle_transformers::models::flux::model::Flux::new(
                    &cfg,
                    weights.var_builder(dtype, dev),
                )?;
                peak.sample(dev);
                let t = time_against(&ours, &theirs, img_side, txt_len, opts.reps, dtype, dev)?;
                peak.sample(dev);
                Ok(timing_json(&t, serde_json::json!({})))
            }),
        ),
        (
            "attention",
            Box::new(|peak| {
                let tokens = img_side * img_side + txt_len;
                let extra = img_side * img_side;
                let (plain, shared) = attention_ms(&cfg, tokens, extra, opts.reps, dtype, dev)?;
                peak.sample(dev);
                let blocks = cfg.depth + cfg.depth_single_blocks;
                Ok(serde_json::json!({
                    "tokens": tokens, "heads": cfg.num_heads, "shared_keys": extra,
                    "block_ms": plain, "block_with_shared_keys_ms": shared,
                    "step_ms": plain * blocks as f64,
                    "step_with_shared_keys_ms": shared * blocks as f64,
                }))
            }),
        ),
        (
            "storyboard",
            Box::new(|peak| storyboard(opts, &cfg, dtype, dev, peak)),
        ),
        (
            "transformer_q8_0",
            Box::new(|peak| quantized(opts, &cfg, GgmlDType::Q8_0, dev, peak)),
        ),
        (
            "transformer_q4_0",
            Box::new(|peak| quantized(opts, &cfg, GgmlDType::Q4_0, dev, peak)),
        ),
    ];
    let mut skipped = Vec::new();
    for (name, phase) in phases {
        if start.elapsed() > opts.budget {
            skipped.push(name);
            figures["skipped"] = skipped.clone().into();
        } else {
            let phase_start = Instant::now();
            eprintln!("gpu-run: {name}");
            // A phase that fails (an op missing on this device, say) is reported, and the
            // others still run.
            figures[name] = phase(&mut peak).unwrap_or_else(|e| {
                eprintln!("gpu-run: {name} failed: {e:#}");
                serde_json::json!({ "error": format!("{e:#}") })
            });
            figures["phases_s"][name] = phase_start.elapsed().as_secs_f64().into();
        }
        figures["gpu_memory"] = match peak.0 {
            Some(bytes) => serde_json::json!({"peak_in_use_bytes": bytes,
                "note": "total minus free from the driver, sampled after every step and phase"}),
            None => serde_json::json!({"peak_in_use_bytes": null, "note": "not a CUDA device"}),
        };
        figures["host_peak_resident_bytes"] = resident_memory().0.into();
        figures["elapsed_s"] = start.elapsed().as_secs_f64().into();
        std::fs::write(&opts.out, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", opts.out.display()))?;
    }
    Ok(())
}

/// What one image of a storyboard decided: its foreground mask and its kept matches.
type Decisions = (Vec<bool>, Option<(Vec<u32>, Vec<u32>)>);

/// The tiny model on `dev` against the CPU, both in f32: the transformer against candle's Flux,
/// and a storyboard (identity + 2 panels, locked background, 8 steps) whose masks and matches
/// should be the CPU's.
fn tiny_parity(
    opts: &GpuRunOptions,
    dev: &Device,
    peak: &mut MemoryPeak,
) -> Result<serde_json::Value> {
    let t = transformer_vs_candle(
        &crate::models::tiny::flux_config(false),
        8,
        64,
        1,
        DType::F32,
        dev,
    )?;
    let dir = opts.work.join("tiny-parity");
    crate::models::tiny::write_repo(&dir, 0, false)?;
    let project = bench_project(2, 64, 8, true);
    let mut render_on = |device: &Device| -> Result<Vec<Decisions>> {
        let mut models = FluxModels::load(&dir, DType::F32, device)?;
        let plan = crate::project::plan(&project, &PlanModel::of(&models), None)?;
        let mut decisions = Vec::new();
        let mut on_event = |e: RenderEvent| {
            peak.sample(dev);
            if let RenderEvent::Finished { output, .. } = e {
                let matches = output
                    .matches
                    .as_ref()
                    .map(|m| (m.panel_idx.clone(), m.identity_idx.clone()));
                decisions.push((output.mask.clone(), matches));
            }
            StepControl::Continue
        };
        Renderer::default().render(
            &mut models,
            &plan,
            RenderRequest::All,
            &RenderOptions::default(),
            &mut on_event,
        )?;
        Ok(decisions)
    };
    let here = render_on(dev)?;
    let cpu = render_on(&Device::Cpu)?;
    let images: Vec<serde_json::Value> = here
        .iter()
        .zip(&cpu)
        .map(|((mask, matches), (cpu_mask, cpu_matches))| {
            let agree = mask.iter().zip(cpu_mask).filter(|(a, b)| a == b).count();
            serde_json::json!({
                "mask_tokens": mask.len(),
                "mask_tokens_as_cpu": agree,
                "matches_as_cpu": matches == cpu_matches,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "transformer_f32_max_abs_diff": t.max_abs_diff,
        "storyboard_images": images,
        "storyboard_as_cpu": here == cpu,
    }))
}

/// The identity and 4 panels of one locked scene, on the tiny text encoders and VAE with a
/// random transformer of `cfg`'s size (its text widths the tiny encoders'), with the bank on the
/// device, the one bank mode there is.
fn storyboard(
    opts: &GpuRunOptions,
    cfg: &FluxConfig,
    dtype: DType,
    dev: &Device,
    peak: &mut MemoryPeak,
) -> Result<serde_json::Value> {
    let dir = opts.work.join("tiny-model");
    crate::models::tiny::write_repo(&dir, 0, !cfg.guidance_embed)?;
    let mut models = FluxModels::load(&dir, dtype, dev)?;
    let story_cfg = FluxConfig {
        context_in_dim: models.transformer.config().context_in_dim,
        vec_in_dim: models.transformer.config().vec_in_dim,
        ..cfg.clone()
    };
    models.transformer = Flux::new(&story_cfg, RandomWeights::default().var_builder(dtype, dev))?;
    let project = bench_project(4, opts.size.side(), opts.steps, true);
    let plan = crate::project::plan(&project, &PlanModel::of(&models), None)?;
    let mut renderer = Renderer::default();
    let start = Instant::now();
    let mut finished = Vec::new();
    let mut on_event = |e: RenderEvent| {
        peak.sample(dev);
        if let RenderEvent::Finished { output, .. } = e {
            finished.push((output.target.label(), start.elapsed().as_secs_f64()));
        }
        StepControl::Continue
    };
    renderer.render(
        &mut models,
        &plan,
        RenderRequest::All,
        &RenderOptions::default(),
        &mut on_event,
    )?;
    let images: Vec<serde_json::Value> = finished
        .iter()
        .map(|(target, at)| serde_json::json!({"image": target, "done_at_s": at}))
        .collect();
    Ok(serde_json::json!({
        "bank_modes": {
            "device": {
                "images": images,
                "total_s": start.elapsed().as_secs_f64(),
                "bank_bytes": renderer.bank_bytes(),
            },
        },
        "panels": project.panels.len(),
        "locked_background": true,
    }))
}

/// The transformer stored as `quant` in a GGUF (written from random weights, then loaded the
/// way a user's file is), timed in f32 activations against candle-transformers' quantized Flux
/// reading the same file (one timed pass each).
fn quantized(
    opts: &GpuRunOptions,
    cfg: &FluxConfig,
    quant: GgmlDType,
    dev: &Device,
    peak: &mut MemoryPeak,
) -> Result<serde_json::Value> {
    let path = opts
        .work
        .join(format!("flux-{quant:?}.gguf").to_lowercase());
    let write_start = Instant::now();
    {
        let weights = RandomWeights::default();
        Flux::new(cfg, weights.var_builder(DType::F32, dev))?;
        peak.sample(dev);
        let tensors = weights.made()?.clone();
        crate::models::gguf::write(&path, &tensors, crate::models::gguf::city96_quant(quant))?;
    }
    let write_s = write_start.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&path)?.len();
    let (ours, _) = crate::models::gguf::load_transformer(&path, DType::F32, dev)?;
    let qvb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&path, dev)?;
    let theirs = candle_transformers::models::flux::quantized_model::Flux::new(cfg, qvb)?;
    std::fs::remove_file(&path).ok();
    peak.sample(dev);
    let img_side = opts.size.side() / 16;
    let txt_len = crate::text::t5_len_for(cfg);
    // One timed pass each: a full-size quantized step in f32 activations takes seconds.
    let t = time_against(&ours, &theirs, img_side, txt_len, 1, DType::F32, dev)?;
    peak.sample(dev);
    Ok(timing_json(
        &t,
        serde_json::json!({"file_bytes": file_bytes, "write_s": write_s, "reps": 1}),
    ))
}

/// FLUX.1-dev's encoders and VAE as their configs name them: T5-XXL v1.1 and CLIP-L.
fn flux_dev_memory(storage: Storage) -> Result<ModelMemory> {
    let t5: candle_transformers::models::t5::Config = serde_json::from_value(serde_json::json!({
        "d_ff": 10240, "d_kv": 64, "d_model": 4096, "num_heads": 64, "num_layers": 24,
        "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "is_gated_act": true,
        "dense_act_fn": "gelu_new", "layer_norm_epsilon": 1e-06, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "tie_word_embeddings": false,
        "dropout_rate": 0.1, "initializer_factor": 1.0, "is_encoder_decoder": true,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0
    }))?;
    let clip = crate::models::configs::ClipJsonConfig {
        vocab_size: 49408,
        hidden_size: 768,
        intermediate_size: 3072,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        max_position_embeddings: 77,
        projection_dim: 768,
        hidden_act: "quick_gelu".into(),
    }
    .to_candle(std::path::Path::new("CLIP-L"))?;
    ModelMemory::of_architecture(
        &FluxConfig::dev(),
        &t5,
        &clip,
        &candle_transformers::models::flux::autoencoder::Config::dev(),
        storage,
        DType::BF16,
    )
}

fn flux_dev_plans() -> Result<()> {
    const GB: u64 = 1_000_000_000;
    // What most FLUX users have beside a 12-24 GB card.
    const HOST_RAM: u64 = 64 * GB;
    let board = Storyboard::one_character(
        Recipe::default().schedule(50),
        64 * 64,
        64 * 64,
        vec![crate::consist::plan::BackgroundMode::Identity; 8],
    );
    println!("FLUX.1-dev at 1024x1024, identity + 8 panels locked onto the identity's background, bf16, text encoders on the CPU, 64 GB of host memory");
    println!("| transformer | card | mode | batch | device | host | forwards |");
    println!("|---|---|---|---|---|---|---|");
    for (name, storage) in [
        ("Q8_0 GGUF", Storage::Gguf(GgmlDType::Q8_0)),
        ("Q4_0 GGUF", Storage::Gguf(GgmlDType::Q4_0)),
        ("bf16 safetensors", Storage::Dense),
    ] {
        let model = flux_dev_memory(storage)?;
        for card in [12u64, 16, 24, 80] {
            let plan = MemoryPlan::new(
                &model,
                &board,
                DType::BF16,
                true,
                card * GB,
                Some(HOST_RAM),
                false,
            );
            match plan.chosen {
                Some(w) => println!(
                    "| {name} | {card} GB | {} | {} | {:.1} GB | {:.1} GB | {} |",
                    mode_name(w.mode),
                    w.batch,
                    gb(plan.device_bytes(&w) as usize),
                    gb(plan.host_bytes(&w) as usize),
                    w.forwards
                ),
                None => {
                    let least = plan
                        .options
                        .iter()
                        .map(|w| plan.device_bytes(w))
                        .min()
                        .unwrap_or(0);
                    println!(
                        "| {name} | {card} GB | none fits (needs {:.1} GB) | | | | |",
                        gb(least as usize)
                    )
                }
            }
        }
    }
    Ok(())
}
