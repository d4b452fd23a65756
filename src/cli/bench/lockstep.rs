//! `bench lockstep`: what rendering without a bank costs. Memory: the heap a lockstep render of
//! the identity and `b` panels holds at its peak, over what a single vanilla image holds, for
//! batches 1, 2, 4 and 8, and at twice the steps and twice the blocks (it must grow with the
//! batch only). Time: the same storyboard banked and in lockstep, alternated in one run, for a
//! scene locked onto the identity and for mixed scenes (a second scene locked onto its first
//! panel, whose reference the lockstep mode computes again).

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::time::Instant;

use super::{bench_project, cpu_seconds, medium_pipeline_config};
use crate::consist::plan::{PlanModel, RenderRequest};
use crate::consist::session::{BankMode, RenderOptions, Renderer};
use crate::flux::FluxConfig;
use crate::heap_meter;
use crate::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use crate::project::model::{Panel, Project, Scene};
use crate::sampler::StepControl;

/// The random medium pipeline with `cfg`'s blocks, loaded from a scratch folder.
pub(super) fn medium_models(cfg: &FluxConfig, dtype: DType, device: &Device) -> Result<FluxModels> {
    let dir = std::env::temp_dir().join(format!(
        "charaboard-bench-lockstep-{}-{}",
        std::process::id(),
        cfg.depth_single_blocks
    ));
    crate::models::tiny::write_repo_with(&dir, 0, cfg)?;
    let models = FluxModels::load(&dir, dtype, device);
    std::fs::remove_dir_all(&dir).ok();
    models
}

/// Heap bytes held at the peak of `f` over those held before it.
fn peak_over<T>(f: impl FnOnce() -> Result<T>) -> Result<usize> {
    let before = heap_meter::held();
    heap_meter::reset_peak();
    f()?;
    Ok(heap_meter::peak().saturating_sub(before))
}

fn vanilla_peak(models: &mut FluxModels, project: &Project) -> Result<usize> {
    let params = GenerateParams {
        prompt: project.identity_prompt(),
        width: project.settings.width,
        height: project.settings.height,
        steps: project.settings.steps.unwrap_or(50),
        guidance: project.settings.guidance,
        noise: NoiseSource::Seed(project.settings.seed),
    };
    peak_over(|| generate(models, &params, None, &mut |_| Ok(StepControl::Continue)))
}

/// What a render took: wall and CPU seconds, and forwards.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
    forwards: usize,
}

impl Cost {
    fn min(self, other: Cost) -> Cost {
        Cost {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
            forwards: other.forwards,
        }
    }
}

/// Renders all of `project` with a fresh renderer in `mode` (lockstep `batch`).
fn render(
    models: &mut FluxModels,
    project: &Project,
    mode: BankMode,
    batch: usize,
) -> Result<Cost> {
    let plan = crate::project::plan(project, &PlanModel::of(models), None)?;
    let options = RenderOptions {
        bank: mode,
        batch,
        ..RenderOptions::default()
    };
    let mut renderer = Renderer::default();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    renderer.render(models, &plan, RenderRequest::All, &options, &mut |_| {
        StepControl::Continue
    })?;
    Ok(Cost {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu,
        forwards: renderer.forwards(),
    })
}

/// One memory measurement: peaks in heap bytes over what the weights hold.
struct MemoryRow {
    blocks: String,
    steps: usize,
    batch: usize,
    vanilla: usize,
    lockstep: usize,
}

fn memory_rows(side: usize, steps: usize, dtype: DType, device: &Device) -> Result<Vec<MemoryRow>> {
    let medium = medium_pipeline_config();
    let deeper = FluxConfig {
        depth: medium.depth * 2,
        depth_single_blocks: medium.depth_single_blocks * 2,
        ..medium.clone()
    };
    let mut rows = Vec::new();
    for (cfg, runs) in [
        (
            &medium,
            vec![
                (steps, 1),
                (steps, 2),
                (steps, 4),
                (steps, 8),
                (2 * steps, 4),
            ],
        ),
        (&deeper, vec![(steps, 4)]),
    ] {
        let mut models = medium_models(cfg, dtype, device)?;
        let blocks = format!("{}+{}", cfg.depth, cfg.depth_single_blocks);
        // Once, unmeasured: the first image of a process peaks higher than later ones (37.8 against
        // 30.9 MB measured) with what is allocated once on first use.
        vanilla_peak(&mut models, &bench_project(1, side, 1, true))?;
        for (steps, batch) in runs {
            let project = bench_project(batch, side, steps, true);
            let vanilla = vanilla_peak(&mut models, &project)?;
            let lockstep = peak_over(|| render(&mut models, &project, BankMode::Recompute, batch))?;
            rows.push(MemoryRow {
                blocks: blocks.clone(),
                steps,
                batch,
                vanilla,
                lockstep,
            });
        }
    }
    Ok(rows)
}

/// Identity + `panels` panels: all in one scene locked onto the identity, or (mixed) half of
/// them in a second place locked onto its own first panel.
fn timing_project(panels: usize, side: usize, steps: usize, mixed: bool) -> Project {
    let mut p = bench_project(panels, side, steps, true);
    if mixed {
        p.scenes.push(Scene {
            name: "harbour".into(),
            environment: "by a grey harbour in the rain, boats at the quay,".into(),
            lock_background: true,
            width: None,
            height: None,
        });
        for (i, panel) in p.panels.iter_mut().enumerate().skip(panels / 2) {
            *panel = Panel::new(1, format!("looking at the boats, moment {i}"));
        }
    }
    p
}

pub fn run(
    side: usize,
    steps: usize,
    memory_steps: usize,
    panels: usize,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    if !heap_meter::is_counting() {
        bail!("this binary does not count its heap (install heap_meter::CountingAllocator)");
    }
    println!(
        "lockstep (--bank recompute) on the random medium pipeline, {side}x{side}, {dtype:?} on {device:?}"
    );
    println!("peak heap over what the weights hold: a vanilla image against identity + b panels in lockstep (batch b, background locked)");
    println!("| blocks | steps | batch | vanilla image | lockstep | ratio |");
    println!("|---|---|---|---|---|---|");
    for r in memory_rows(side, memory_steps, dtype, device)? {
        println!(
            "| {} | {} | {} | {:.1} MB | {:.1} MB | {:.2}x |",
            r.blocks,
            r.steps,
            r.batch,
            r.vanilla as f64 / 1e6,
            r.lockstep as f64 / 1e6,
            r.lockstep as f64 / r.vanilla as f64
        );
    }

    let mut models = medium_models(&medium_pipeline_config(), dtype, device)?;
    println!("time: identity + {panels} panels, banked (--bank device) and lockstep (--bank recompute --batch {panels}), alternated, the least of 2 each; CPU seconds of this process (all threads), wall seconds in brackets");
    println!(
        "| scenes | banked | lockstep | ratio | forwards banked | forwards lockstep | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mixed in [false, true] {
        let project = timing_project(panels, side, steps, mixed);
        let mut banked = render(&mut models, &project, BankMode::Device, 1)?;
        let mut lockstep = render(&mut models, &project, BankMode::Recompute, panels)?;
        banked = banked.min(render(&mut models, &project, BankMode::Device, 1)?);
        lockstep = lockstep.min(render(&mut models, &project, BankMode::Recompute, panels)?);
        println!(
            "| {} | {:.2} s ({:.2} s) | {:.2} s ({:.2} s) | {:.3}x ({:.3}x) | {} | {} | {:.3}x |",
            match mixed {
                false => "one, locked on the identity",
                true => "mixed: the identity's, and a second locked on its first panel",
            },
            banked.cpu,
            banked.wall,
            lockstep.cpu,
            lockstep.wall,
            lockstep.cpu / banked.cpu,
            lockstep.wall / banked.wall,
            banked.forwards,
            lockstep.forwards,
            lockstep.forwards as f64 / banked.forwards as f64
        );
    }
    Ok(())
}
