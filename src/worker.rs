//! The background thread that owns the models and the identity bank. The UI talks to it only
//! through channels: jobs in, events out; a panic in a job is caught and reported, so the window
//! and the project survive it.

use anyhow::{Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};
use image::RgbImage;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::consist::mask::Grid;
use crate::consist::matching::Matches;
use crate::consist::session::{
    ImageOutput, Outcome, Phase, RenderEvent, RenderOptions, RenderRequest, Renderer, Target,
};
use crate::device::{parse_device, parse_dtype};
use crate::export::files::{write_dump, write_image};
use crate::pipeline::FluxModels;
use crate::project::model::Project;
use crate::sampler::StepControl;

pub enum Job {
    LoadModel {
        dir: PathBuf,
        device: Option<String>,
        dtype: Option<String>,
    },
    /// Render and, when `save_dir` is set, write every finished image there (with its overlays
    /// and tensors) so that it is reloaded with the project.
    Render {
        project: Box<Project>,
        request: RenderRequest,
        save_dir: Option<PathBuf>,
        preview_every: Option<usize>,
    },
    CreateTinyModel {
        dir: PathBuf,
    },
}

/// A finished image as the UI shows it.
#[derive(Clone)]
pub struct RenderedImage {
    pub target: Target,
    pub image: RgbImage,
    pub grid: Grid,
    pub mask: Vec<bool>,
    pub matches: Option<Matches>,
    pub prompt: String,
    pub seconds: f64,
}

pub enum Event {
    ModelLoading {
        dir: PathBuf,
    },
    ModelLoaded {
        dir: PathBuf,
        description: String,
    },
    TinyModelCreated {
        dir: PathBuf,
    },
    Step {
        target: Target,
        phase: Phase,
        step: usize,
        steps: usize,
        preview: Option<RgbImage>,
    },
    ImageDone(Box<RenderedImage>),
    /// The job failed; `target` is the image being rendered, if any.
    Failed {
        target: Option<Target>,
        message: String,
    },
    Cancelled,
    /// The current job is over (after its last event).
    Idle,
}

pub struct Worker {
    jobs: Option<Sender<Job>>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread; `notify` is called after every event (the UI passes its repaint request).
    pub fn spawn(notify: impl Fn() + Send + 'static) -> Self {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (event_tx, event_rx) = unbounded::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("charaboard-worker".into())
            .spawn(move || {
                let mut state = State::default();
                let send = |e: Event| {
                    let _ = event_tx.send(e);
                    notify();
                };
                for job in job_rx {
                    flag.store(false, Ordering::SeqCst);
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(|| state.run(job, &flag, &send)));
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err((target, e))) => send(Event::Failed {
                            target,
                            message: format!("{e:#}"),
                        }),
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            // The renderer may hold a half-made bank: start it afresh.
                            state.renderer = Renderer::default();
                            send(Event::Failed {
                                target: None,
                                message: format!("the worker panicked: {what}"),
                            });
                        }
                    }
                    send(Event::Idle);
                }
            })
            .expect("spawning the worker thread");
        Self {
            jobs: Some(job_tx),
            events: event_rx,
            cancel,
            thread: Some(thread),
        }
    }

    pub fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Stops the running job at its next step; what it finished stays finished.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.try_iter()
    }

    /// Waits for the next event (tests and scripts; the UI polls with [`Worker::events`]).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Default)]
struct State {
    models: Option<FluxModels>,
    renderer: Renderer,
}

type JobError = (Option<Target>, anyhow::Error);

impl State {
    fn run(&mut self, job: Job, cancel: &AtomicBool, send: &dyn Fn(Event)) -> Result<(), JobError> {
        match job {
            Job::LoadModel { dir, device, dtype } => {
                send(Event::ModelLoading { dir: dir.clone() });
                self.models = None;
                self.renderer = Renderer::default();
                let loaded = (|| -> Result<(FluxModels, String)> {
                    let device = parse_device(device.as_deref())?;
                    let dtype = parse_dtype(dtype.as_deref(), &device)?;
                    let models = FluxModels::load(&dir, dtype, &device)?;
                    let cfg = models.transformer.config();
                    let description = format!(
                        "FLUX.1-{} ({} + {} blocks, hidden {}), {dtype:?} on {device:?}",
                        if models.is_dev() { "dev" } else { "schnell" },
                        cfg.depth,
                        cfg.depth_single_blocks,
                        cfg.hidden_size
                    );
                    Ok((models, description))
                })()
                .map_err(|e| (None, e))?;
                self.models = Some(loaded.0);
                send(Event::ModelLoaded {
                    dir,
                    description: loaded.1,
                });
            }
            Job::CreateTinyModel { dir } => {
                crate::models::tiny::write_repo(&dir, 0, false).map_err(|e| (None, e))?;
                send(Event::TinyModelCreated { dir });
            }
            Job::Render {
                project,
                request,
                save_dir,
                preview_every,
            } => {
                let models = self
                    .models
                    .as_mut()
                    .context("no model is loaded: choose a model folder first")
                    .map_err(|e| (None, e))?;
                if let Some(dir) = &save_dir {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))
                        .map_err(|e| (None, e))?;
                }
                let options = RenderOptions {
                    noise: None,
                    preview_every,
                };
                let mut current = None;
                let mut failure: Option<JobError> = None;
                let mut identity_image: Option<RgbImage> = None;
                let outcome =
                    self.renderer
                        .render(models, &project, request, &options, &mut |event| {
                            match event {
                                RenderEvent::Step {
                                    target,
                                    phase,
                                    step,
                                    steps,
                                    preview,
                                } => {
                                    current = Some(target);
                                    send(Event::Step {
                                        target,
                                        phase,
                                        step,
                                        steps,
                                        preview,
                                    });
                                }
                                RenderEvent::Finished(out) => {
                                    if out.target == Target::Identity {
                                        identity_image = Some(out.image.clone());
                                    }
                                    if let Some(dir) = &save_dir {
                                        let reference =
                                            identity_image.as_ref().unwrap_or(&out.image);
                                        if let Err(e) = save(dir, out, reference, &project) {
                                            failure = Some((Some(out.target), e));
                                        }
                                    }
                                    send(Event::ImageDone(Box::new(rendered(out, &project))));
                                }
                            }
                            match failure.is_some() || cancel.load(Ordering::SeqCst) {
                                true => StepControl::Cancel,
                                false => StepControl::Continue,
                            }
                        });
                if let Some(f) = failure {
                    return Err(f);
                }
                match outcome.map_err(|e| (current, e))? {
                    Outcome::Cancelled => send(Event::Cancelled),
                    Outcome::Finished => {}
                }
            }
        }
        Ok(())
    }
}

fn prompt_of(project: &Project, target: Target) -> String {
    match target {
        Target::Identity => project.identity_prompt(),
        Target::Panel(i) => project.panel_prompt(i),
    }
}

fn rendered(out: &ImageOutput, project: &Project) -> RenderedImage {
    RenderedImage {
        target: out.target,
        image: out.image.clone(),
        grid: out.grid,
        mask: out.mask.clone(),
        matches: out.matches.clone(),
        prompt: prompt_of(project, out.target),
        seconds: out.seconds,
    }
}

/// The image, its overlays and tensors, and the prompt it was rendered from.
fn save(
    dir: &std::path::Path,
    out: &ImageOutput,
    identity: &RgbImage,
    project: &Project,
) -> Result<()> {
    write_image(dir, out, identity)?;
    write_dump(dir, out)?;
    let stem = crate::export::files::stem(out.target);
    let prompt_path = dir.join(format!("{stem}.prompt.txt"));
    std::fs::write(&prompt_path, prompt_of(project, out.target))
        .with_context(|| format!("cannot write {}", prompt_path.display()))
}

impl RenderedImage {
    /// An image saved by an earlier render (`{stem}.png`, `.safetensors`, `.prompt.txt`), or
    /// `None` if there is none.
    pub fn load(dir: &std::path::Path, target: Target) -> Result<Option<Self>> {
        let stem = crate::export::files::stem(target);
        let png = dir.join(format!("{stem}.png"));
        let tensors = dir.join(format!("{stem}.safetensors"));
        if !png.is_file() || !tensors.is_file() {
            return Ok(None);
        }
        let image = image::open(&png)
            .with_context(|| format!("cannot read {}", png.display()))?
            .to_rgb8();
        let dump = candle_core::safetensors::load(&tensors, &candle_core::Device::Cpu)
            .with_context(|| format!("cannot read {}", tensors.display()))?;
        let get = |name: &str| {
            dump.get(name)
                .with_context(|| format!("{} has no `{name}`", tensors.display()))
        };
        let mask_t = get("fg_mask")?;
        let (rows, cols) = mask_t.dims2()?;
        let mask = mask_t
            .flatten_all()?
            .to_vec1::<u8>()?
            .into_iter()
            .map(|m| m != 0)
            .collect();
        let indices = |name: &str| -> Result<Vec<u32>> {
            Ok(get(name)?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|v| v as u32)
                .collect())
        };
        let matches = match dump.contains_key("match_sim") {
            true => Some(Matches {
                panel_idx: indices("match_panel_idx")?,
                identity_idx: indices("match_identity_idx")?,
                max_sim: get("match_sim")?.to_vec1::<f32>()?,
            }),
            false => None,
        };
        let prompt =
            std::fs::read_to_string(dir.join(format!("{stem}.prompt.txt"))).unwrap_or_default();
        Ok(Some(Self {
            target,
            image,
            grid: Grid { rows, cols },
            mask,
            matches,
            prompt,
            seconds: 0.0,
        }))
    }
}
