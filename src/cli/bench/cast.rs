//! `bench cast`: what a panel showing two characters costs against a panel showing one, at the
//! same size and steps on the medium random pipeline: the panel's forwards and CPU seconds
//! alone (the identities are rendered first, outside the measure), and the keys each character
//! borrows per shared block. Two characters share in the same forwards as one, each borrowing
//! the keys its own region matched: no second pass.

use anyhow::Result;
use candle_core::{DType, Device};

use super::lockstep::medium_models;
use super::{bench_project, cpu_seconds, medium_pipeline_config};
use crate::consist::plan::{PlanModel, RenderRequest, Target};
use crate::consist::session::{RenderEvent, RenderOptions, Renderer};
use crate::pipeline::FluxModels;
use crate::project::model::{Character, IdentityShot, Project};
use crate::sampler::StepControl;

/// One panel's cost: forwards, CPU seconds and each character's borrowed keys.
struct PanelCost {
    forwards: usize,
    cpu: f64,
    keys: Vec<usize>,
}

/// Renders `project`'s identities, then measures its first panel.
fn panel_cost(models: &mut FluxModels, project: &Project) -> Result<PanelCost> {
    let plan = crate::project::plan(project, &PlanModel::of(models), None)?;
    let options = RenderOptions::default();
    let mut renderer = Renderer::default();
    renderer.render(
        models,
        &plan,
        RenderRequest::Identity,
        &options,
        &mut |_| StepControl::Continue,
    )?;
    let (forwards, cpu) = (renderer.forwards(), cpu_seconds());
    let mut keys = vec![0; plan.panels()[0].characters().count()];
    renderer.render(models, &plan, RenderRequest::Panel(0), &options, &mut |e| {
        if let RenderEvent::Finished { output, .. } = e {
            if let (Target::Panel(_), Some(m)) = (output.target, &output.matches) {
                for &c in &m.panel_idx {
                    let owner = usize::from(output.owners.get(c as usize).copied().unwrap_or(1));
                    if let Some(k) = keys.get_mut(owner.max(1) - 1) {
                        *k += 1;
                    }
                }
            }
        }
        StepControl::Continue
    })?;
    Ok(PanelCost {
        forwards: renderer.forwards() - forwards,
        cpu: cpu_seconds() - cpu,
        keys,
    })
}

pub fn run(side: usize, steps: usize, dtype: DType, device: &Device) -> Result<()> {
    let cfg = medium_pipeline_config();
    let mut models = medium_models(&cfg, dtype, device)?;
    let one = bench_project(1, side, steps, false);
    let mut two = one.clone();
    let mut tom = Character::new(
        "an old fisherman with a white beard and a yellow raincoat,",
        IdentityShot::new(
            one.characters[0].identity.environment.clone(),
            "standing, front view",
        ),
    );
    tom.name = "Old Tom".into();
    two.characters.push(tom);
    println!(
        "cast: one panel, {side}x{side}, {steps} steps, medium pipeline (hidden {}), {dtype:?} on {device:?}:",
        cfg.hidden_size
    );
    let alone = panel_cost(&mut models, &one)?;
    let both = panel_cost(&mut models, &two)?;
    for (name, c) in [("one character ", &alone), ("two characters", &both)] {
        println!(
            "  {name}: {} forwards, {:.2} CPU s, keys borrowed per shared block {:?} (sum {})",
            c.forwards,
            c.cpu,
            c.keys,
            c.keys.iter().sum::<usize>()
        );
    }
    println!(
        "  two over one: {:.2}x the CPU seconds, {:.2}x the forwards",
        both.cpu / alone.cpu.max(1e-9),
        both.forwards as f64 / alone.forwards.max(1) as f64
    );
    Ok(())
}
