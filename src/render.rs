//! The one render driver, used by `charaboard render` and by the app's worker alike: it runs a
//! plan (or part of it), reports what happens, writes every finished image through the images
//! store and says how the job ended, naming the image a failure happened in.

use anyhow::Error;
use std::path::PathBuf;

use crate::consist::plan::{Plan, RenderRequest, Target};
use crate::consist::session::{ImageStep, Outcome, RenderEvent, RenderOptions, Renderer};
use crate::pipeline::FluxModels;
use crate::project::images::{ImagesStore, RenderedImage, ShownLook, StoredLook};
use crate::sampler::StepControl;

/// What to render, and where finished images go.
pub struct RenderJob<'a> {
    pub plan: &'a Plan,
    pub request: RenderRequest,
    /// `None` keeps the images in memory only.
    pub store: Option<&'a ImagesStore>,
    /// Previews, the bank mode and the lockstep batch.
    pub options: RenderOptions,
}

/// What a running job reports.
pub enum Progress {
    /// Work on an image begins.
    Started(Target),
    Step(ImageStep),
    /// A panel's pre-run reached its mask step: its look, and with a store the files it was
    /// written to (preview first).
    Look {
        look: Box<ShownLook>,
        files: Vec<PathBuf>,
    },
    /// An image is done and, with a store, written as a take (`files`, picture first; none
    /// where an equal take was already there).
    Finished {
        image: Box<RenderedImage>,
        files: Vec<PathBuf>,
    },
}

/// How a job ended.
pub enum Ended {
    Finished,
    Cancelled,
    /// `target` is the image the failure happened in (`None`: before any image began).
    Failed {
        target: Option<Target>,
        error: Error,
    },
}

/// Runs `job`; `on_progress` may cancel at every report.
pub fn run(
    renderer: &mut Renderer,
    models: &mut FluxModels,
    job: &RenderJob,
    on_progress: &mut dyn FnMut(Progress) -> StepControl,
) -> Ended {
    let options = &job.options;
    let _lock = match job.store.map(ImagesStore::lock).transpose() {
        Ok(lock) => lock,
        Err(error) => {
            return Ended::Failed {
                target: None,
                error,
            }
        }
    };
    // Images the job was asked for become new takes; the identity or a scene reference rendered
    // again only to steer them is not stored twice.
    let asked = match job.plan.requested_panels(&job.request) {
        Ok(panels) => panels,
        Err(error) => {
            return Ended::Failed {
                target: None,
                error,
            }
        }
    };
    let identity_asked = matches!(job.request, RenderRequest::All | RenderRequest::Identity);
    // A fresh look on disk spares its panel's pre-run (a stale or unreadable one is made again).
    if let Some(store) = job.store {
        for &i in &asked {
            let planned = &job.plan.panels()[i];
            if !renderer.has_look(i, &planned.key) {
                if let Ok(StoredLook::Fresh(look)) = store.read_look(planned) {
                    renderer.offer_look(*look);
                }
            }
        }
    }
    let mut current: Option<Target> = None;
    let mut write_failure: Option<(Target, Error)> = None;
    let outcome = renderer.render(
        models,
        job.plan,
        job.request.clone(),
        options,
        &mut |event| {
            let report = match event {
                RenderEvent::Started(target) => {
                    current = Some(target);
                    Progress::Started(target)
                }
                RenderEvent::Step(step) => Progress::Step(step),
                RenderEvent::Look { look, identities } => {
                    let Some(planned) = job.plan.image(look.target) else {
                        return StepControl::Cancel;
                    };
                    let shown = match job.store {
                        Some(store) => store.write_look(look, &identities, planned),
                        None => ShownLook::of(look, &identities, planned).map(|s| (s, vec![])),
                    };
                    match shown {
                        Ok((shown, files)) => Progress::Look {
                            look: Box::new(shown),
                            files,
                        },
                        Err(e) => {
                            write_failure = Some((look.target, e));
                            return StepControl::Cancel;
                        }
                    }
                }
                RenderEvent::Finished { output, identities } => {
                    current = None;
                    let Some(planned) = job.plan.image(output.target) else {
                        write_failure = Some((
                            output.target,
                            anyhow::anyhow!("internal: an image the plan does not have"),
                        ));
                        return StepControl::Cancel;
                    };
                    let reuse = match output.target {
                        Target::Identity | Target::IdentityOf(_) => !identity_asked,
                        Target::Panel(i) => !asked.contains(&i),
                    };
                    let settings = &job.plan.settings;
                    let (take, files) = match job.store {
                        Some(store) => {
                            match store.write(output, &identities, planned, settings, reuse) {
                                Ok(written) => written,
                                Err(e) => {
                                    write_failure = Some((output.target, e));
                                    return StepControl::Cancel;
                                }
                            }
                        }
                        None => (1, vec![]),
                    };
                    // The take made from a look replaces it.
                    if let (Some(store), Target::Panel(_)) = (job.store, output.target) {
                        if let Err(e) = store.remove_look(output.target) {
                            write_failure = Some((output.target, e));
                            return StepControl::Cancel;
                        }
                    }
                    Progress::Finished {
                        image: Box::new(RenderedImage::new(output, planned, settings, take)),
                        files,
                    }
                }
            };
            on_progress(report)
        },
    );
    if let Some((target, error)) = write_failure {
        return Ended::Failed {
            target: Some(target),
            error,
        };
    }
    match outcome {
        Ok(Outcome::Finished) => Ended::Finished,
        Ok(Outcome::Cancelled) => Ended::Cancelled,
        Err(error) => Ended::Failed {
            target: current,
            error,
        },
    }
}
