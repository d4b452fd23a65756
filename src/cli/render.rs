//! `charaboard render`: a storyboard project's identity, panels, overlays and a contact sheet,
//! through the same render driver and images store as the app.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

use super::args::RunArgs;
use super::progress::step_bar;
use crate::atomic_file::save_png;
use crate::consist::plan::{PlanModel, RenderRequest};
use crate::consist::recipe::Numerics;
use crate::consist::session::Renderer;
use crate::export::sheet::contact_sheet;
use crate::limits::prompt_too_long;
use crate::project::images::{project_name, stem, ImagesStore};
use crate::render::{self, Ended, Progress, RenderJob};
use crate::sampler::StepControl;

#[derive(clap::Args)]
pub struct Render {
    project: PathBuf,
    /// A FLUX.1 repository folder, folder of single files, .ron model file or Hugging Face
    /// repository id (ORG/NAME) in the cache [default: the project's settings.model].
    #[arg(long)]
    model: Option<String>,
    /// Output folder [default: the images folder beside the project file, which the app reads].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Initial noise from a safetensors file (tensor `noise`) instead of the project's seed.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// exact (f32) or reference (rounded where the authors' code rounds, for comparisons with
    /// the paper) [default: the project's settings.recipe.numerics].
    #[arg(long, value_enum)]
    numerics: Option<Numerics>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: Render) -> Result<()> {
    let mut project = crate::project::io::load(&args.project)?;
    if let Some(numerics) = args.numerics {
        project.settings.recipe.numerics = numerics;
    }
    let model = args
        .model
        .clone()
        .or_else(|| project.settings.model.clone())
        .context("no model: pass --model DIR or set settings.model in the project")?;
    let store = match args.out {
        Some(dir) => ImagesStore::at(dir, project_name(&args.project)),
        None => ImagesStore::beside(&args.project),
    };
    let mut models = args.run.load(&model)?;
    let plan = crate::project::plan(&project, &PlanModel::of(&models), args.noise.as_deref())?;
    let limit = models.tokenizers.t5_len() - 1;
    for image in plan.images() {
        let dropped = models.tokenizers.t5_ids(&image.shot.prompt)?.dropped;
        if dropped > 0 {
            eprintln!(
                "warning: the prompt of {} is {}",
                image.target.label(),
                prompt_too_long(dropped, limit)
            );
        }
    }
    let mut renderer = Renderer::default();
    let bar = step_bar(1);
    let mut images = Vec::new();
    let job = RenderJob {
        plan: &plan,
        request: RenderRequest::All,
        store: Some(&store),
        preview_every: None,
    };
    let ended = render::run(&mut renderer, &mut models, &job, &mut |progress| {
        match progress {
            Progress::Started(target) => {
                bar.set_message(stem(target));
                bar.set_position(0);
            }
            Progress::Step(s) => {
                bar.set_length(s.steps as u64);
                bar.set_message(format!("{} {:?}", stem(s.target), s.phase));
                bar.set_position((s.step + 1) as u64);
            }
            Progress::Finished { image, files } => {
                bar.suspend(|| {
                    eprintln!(
                        "{} in {:.1} s: {}",
                        stem(image.target),
                        image.seconds,
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
                images.push((image.target, image.image));
            }
        }
        StepControl::Continue
    });
    bar.finish_and_clear();
    match ended {
        Ended::Finished => {}
        Ended::Cancelled => bail!("rendering was cancelled"),
        Ended::Failed {
            target: Some(target),
            error,
        } => return Err(error.context(format!("rendering {} failed", target.label()))),
        Ended::Failed {
            target: None,
            error,
        } => return Err(error),
    }
    images.sort_by_key(|(t, _)| *t);
    let panels: Vec<&image::RgbImage> = images.iter().map(|(_, i)| i).collect();
    let sheet = contact_sheet(&panels, 4, 256, 12)?;
    let sheet_path = store.dir().join("sheet.png");
    save_png(&sheet, &sheet_path)?;
    eprintln!(
        "wrote {} (identity bank {:.1} MB, peak {:.1} MB)",
        sheet_path.display(),
        renderer.bank_bytes() as f64 / 1e6,
        renderer.identity_peak_bytes().unwrap_or(0) as f64 / 1e6
    );
    Ok(())
}
