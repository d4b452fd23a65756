//! `charaboard render`: a storyboard project's identity, panels, overlays and a contact sheet,
//! through the same render driver and images store as the app.

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;

use super::args::RunArgs;
use super::progress::step_bar;
use crate::atomic_file::save_png;
use crate::consist::plan::{PlanModel, RenderRequest};
use crate::consist::recipe::Numerics;
use crate::consist::session::{BankMode, RenderOptions, Renderer};
use crate::export::sheet::contact_sheet;
use crate::limits::prompt_too_long;
use crate::memory_plan::{BankChoice, LOCKSTEP_BATCH_MAX};
use crate::project::images::{project_name, stem, ImagesStore, StoredLook};
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
    /// auto: the fastest of the others that fits --budget (`charaboard plan` shows why);
    /// device: the identity's lean bank on the device; host: the same bank in host memory,
    /// moved to the device one block's slice at a time; recompute: no bank, the identity
    /// computed again beside the panels it steers (lockstep).
    #[arg(long, value_enum, default_value_t = BankChoice::Auto)]
    bank: BankChoice,
    /// With --bank auto: device memory to plan for, e.g. 24GB [default: the device's free
    /// memory].
    #[arg(long, value_parser = super::plan::parse_bytes)]
    budget: Option<u64>,
    /// The identity's bank on disk: reused when it holds this identity's bank (same model,
    /// prompt, size, noise, steps, guidance and recipe), written when the identity is computed.
    /// With several characters the others' banks go beside it, FILE's stem with `-2`, `-3`, ...
    /// With --panels, processes that share one bank file render disjoint slices of a storyboard.
    #[arg(long)]
    bank_file: Option<PathBuf>,
    /// Render only these panels (and what they depend on, when not rendered in this process):
    /// 1-based numbers and ranges, e.g. 2,5-7.
    #[arg(long, conflicts_with = "approved")]
    panels: Option<String>,
    /// Early look: run only the panels' pre-runs (11 of 61 forwards at 50 steps) and write each
    /// panel's look (x0 preview, mask, matches) beside its takes, for review.
    #[arg(long, conflicts_with = "approved")]
    review_first: bool,
    /// The main runs of these panels (1-based numbers and ranges, as --panels) from their
    /// looks: a panel without a fresh look is refused.
    #[arg(long)]
    approved: Option<String>,
    /// With --bank recompute: the most panels computed beside the identity at once [default: 4,
    /// or the plan's choice with --bank auto].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=LOCKSTEP_BATCH_MAX as i64))]
    batch: Option<u16>,
    #[command(flatten)]
    run: RunArgs,
}

/// The bank mode and batch to render with: the one named, or the fastest the memory plan fits
/// in the budget (refused before any weight is loaded when nothing fits).
fn bank_and_batch(
    args: &Render,
    project: &crate::project::Project,
    model: &str,
) -> Result<(BankMode, usize)> {
    let memory = match args.bank {
        BankChoice::Auto => Some(super::plan::memory_plan(
            project,
            model,
            &args.run,
            args.budget,
            args.noise.as_deref(),
        )?),
        _ => None,
    };
    let chosen = args
        .bank
        .resolve(
            args.batch.map(usize::from),
            args.bank_file.is_some(),
            memory.as_ref(),
        )
        .map_err(|e| anyhow!(e))?;
    if let Some(plan) = chosen.plan {
        eprintln!("memory plan: {}", plan.summary);
    }
    Ok((chosen.mode, chosen.batch))
}

pub fn run(args: Render) -> Result<()> {
    let mut project = crate::project::io::load(&args.project)?;
    if let Some(numerics) = args.numerics {
        project.settings.recipe.numerics = numerics;
    }
    if args.bank_file.is_some() && args.bank == BankChoice::Recompute {
        bail!("--bank-file needs a bank: use --bank device or --bank host (recompute keeps none)");
    }
    let approved = args
        .approved
        .as_deref()
        .map(|list| parse_panels("--approved", list, project.panels.len()))
        .transpose()?;
    let request = match (&args.panels, &approved) {
        (_, Some(panels)) => RenderRequest::Panels(panels.clone()),
        (Some(list), None) => {
            RenderRequest::Panels(parse_panels("--panels", list, project.panels.len())?)
        }
        (None, None) => RenderRequest::All,
    };
    let slice = args.panels.is_some() || args.review_first || approved.is_some();
    crate::project::plan::check_picture(&project)?;
    let model = super::plan::model_spec(args.model.as_deref(), &project)?;
    let (bank, batch) = bank_and_batch(&args, &project, &model)?;
    if (args.review_first || approved.is_some()) && bank == BankMode::Recompute {
        bail!("--review-first and --approved keep the identity's bank between a panel's pre-run and its main run, and --bank recompute (lockstep) keeps none: use --bank device or --bank host");
    }
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
    for &i in approved.iter().flatten() {
        let planned = &plan.panels()[i];
        match store.read_look(planned)? {
            StoredLook::Fresh(_) => {}
            StoredLook::Missing => bail!(
                "--approved: {} has no look in {}: run `charaboard render {} --review-first` first",
                planned.target.label(),
                store.dir().display(),
                args.project.display()
            ),
            StoredLook::Stale => bail!(
                "--approved: the look of {} is stale (its prompt, seed or settings changed since it was made): run --review-first again",
                planned.target.label()
            ),
        }
    }
    let mut renderer = Renderer::default();
    let bar = step_bar(1);
    let mut images = Vec::new();
    let job = RenderJob {
        plan: &plan,
        request,
        store: Some(&store),
        options: RenderOptions {
            bank,
            batch,
            bank_file: args.bank_file.clone(),
            looks_only: args.review_first,
            ..RenderOptions::default()
        },
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
            Progress::Look { look, files } => {
                bar.suspend(|| {
                    eprintln!(
                        "{} look ({} matches): {}",
                        stem(look.target),
                        look.kept_matches,
                        files
                            .first()
                            .map_or_else(String::new, |f| f.display().to_string())
                    )
                });
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
    for note in renderer.take_notes() {
        eprintln!("note: {note}");
    }
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
    // A slice of the storyboard makes no sheet: `export` makes it once every slice is done.
    let sheet_path = store.dir().join("sheet.png");
    if !slice {
        images.sort_by_key(|(t, _)| *t);
        let panels: Vec<&image::RgbImage> = images.iter().map(|(_, i)| i).collect();
        save_png(&contact_sheet(&panels, 4, 256, 12)?, &sheet_path)?;
    }
    eprintln!(
        "{} (identity bank {:.1} MB, peak {:.1} MB; {} transformer forwards)",
        match (slice, args.review_first) {
            (false, _) => format!("wrote {}", sheet_path.display()),
            (true, false) => "rendered the slice".into(),
            (true, true) =>
                "wrote the looks (render the chosen panels with --approved LIST)".into(),
        },
        renderer.bank_bytes() as f64 / 1e6,
        renderer.identity_peak_bytes().unwrap_or(0) as f64 / 1e6,
        renderer.forwards()
    );
    Ok(())
}

/// `--panels 2,5-7`: 1-based panel numbers and inclusive ranges, checked against the storyboard
/// before any model loads; the result is 0-based and ascending.
fn parse_panels(flag: &str, list: &str, count: usize) -> Result<Vec<usize>> {
    let number = |s: &str| -> Result<usize> {
        let n: usize = s
            .trim()
            .parse()
            .with_context(|| format!("{flag} {list}: `{}` is not a panel number", s.trim()))?;
        if n == 0 || n > count {
            bail!("{flag} {list}: panel {n} does not exist (the storyboard has {count} panels, numbered from 1)");
        }
        Ok(n - 1)
    };
    let mut panels = std::collections::BTreeSet::new();
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            bail!("{flag} {list}: the range `{}` runs backwards", part.trim());
        }
        panels.extend(first..=last);
    }
    Ok(panels.into_iter().collect())
}
