//! `charaboard plan`: the memory plan of a storyboard on a model, from the files' headers,
//! before any work; and the plan `render --bank auto` renders with.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::args::RunArgs;
use crate::consist::plan::{ModelKey, PlanModel};
use crate::memory_plan::{Machine, MemoryPlan, ModelMemory};
use crate::models::{discovery, source::ModelSource};
use crate::project::Project;

#[derive(clap::Args)]
pub struct PlanArgs {
    project: PathBuf,
    /// A FLUX.1 repository folder, folder of single files, .ron model file or Hugging Face
    /// repository id (ORG/NAME) in the cache [default: the project's settings.model].
    #[arg(long)]
    model: Option<String>,
    /// Device memory to plan for, e.g. 24GB or 16000MB [default: the device's free memory].
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<u64>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: PlanArgs) -> Result<()> {
    let project = crate::project::io::load(&args.project)?;
    let model = model_spec(args.model.as_deref(), &project)?;
    let plan = memory_plan(&project, &model, &args.run, args.budget, None)?;
    print!("{}", plan.report());
    match plan.chosen {
        Some(_) => Ok(()),
        None => bail!("{}", plan.too_small()),
    }
}

/// `--model`, else the project's model.
pub fn model_spec(given: Option<&str>, project: &Project) -> Result<String> {
    given
        .map(str::to_string)
        .or_else(|| project.settings.model.clone())
        .context("no model: pass --model DIR or set settings.model in the project")
}

/// The memory plan of `project` on the model `spec` names, as `run` would load it, for `budget`
/// bytes (default: the device's free memory). Reads headers only.
pub fn memory_plan(
    project: &Project,
    spec: &str,
    run: &RunArgs,
    budget: Option<u64>,
    noise: Option<&Path>,
) -> Result<MemoryPlan> {
    let (device, dtype) = run.device.device_and_dtype()?;
    let source = ModelSource::detect(&discovery::resolve(spec)?)?;
    let model = ModelMemory::of_files(&source, dtype)?;
    let plan_model = PlanModel {
        key: ModelKey {
            source: spec.to_string(),
            dtype: format!("{dtype:?}").to_lowercase(),
        },
        default_steps: model.dims.default_steps,
    };
    let plan = crate::project::plan(project, &plan_model, noise)?;
    let machine = Machine::of(model, dtype, run.text_on_cpu, &device, budget)?;
    Ok(machine.plan(&plan))
}

/// `24GB`, `16000MB`, `1.5TB` or a plain byte count, between 1 MB and 1 PB.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "TB" | "T" => 1e12,
        _ => bail!("`{text}`: expected a size such as 24GB, 16000MB or 1TB"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .with_context(|| format!("`{text}`: expected a size such as 24GB, 16000MB or 1TB"))?;
    let bytes = value * scale;
    if !(1e6..=1e15).contains(&bytes) {
        bail!("`{text}`: a budget is between 1MB and 1000TB");
    }
    Ok(bytes as u64)
}
