//! The background thread that owns the models and the identity bank. The UI talks to it only
//! through channels: jobs in, events out; a panic in a job is caught and reported, so the window
//! and the project survive it.

use anyhow::{Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::consist::plan::{Plan, PlanModel, RenderRequest, Target};
use crate::consist::session::{ImageStep, RenderOptions, Renderer};
use crate::device::{parse_device, parse_dtype};
use crate::memory_plan::{Machine, ModelMemory};
use crate::models::source::ModelSource;
use crate::pipeline::FluxModels;
use crate::project::images::{ImagesStore, RenderedImage, ShownLook};
use crate::render::{self, Ended, Progress, RenderJob};
use crate::sampler::StepControl;

pub enum Job {
    LoadModel {
        dir: PathBuf,
        device: Option<String>,
        dtype: Option<String>,
    },
    /// Render what `request` asks of `plan` and, with a store, write every finished image
    /// there so that it is reloaded with the project.
    Render {
        plan: Box<Plan>,
        request: RenderRequest,
        store: Option<ImagesStore>,
        options: RenderOptions,
    },
    CreateTinyModel {
        dir: PathBuf,
    },
    /// Read the images saved for a project (off the UI thread: decoding PNGs takes a while).
    LoadImages {
        store: ImagesStore,
        panels: usize,
    },
}

pub enum Event {
    ModelLoading {
        dir: PathBuf,
    },
    ModelLoaded {
        dir: PathBuf,
        description: String,
        /// What a plan needs to know of the model.
        model: PlanModel,
        /// What a memory plan needs to know of the model and the device (read before the
        /// weights took the memory), or why it could not be read.
        machine: Result<Machine, String>,
    },
    TinyModelCreated {
        dir: PathBuf,
    },
    /// Work on an image begins.
    Started(Target),
    Step(ImageStep),
    /// A panel's pre-run reached its mask step.
    Look(Box<ShownLook>),
    ImageDone(Box<RenderedImage>),
    /// Saved images read back for `store`; `notes` says what was ignored and why.
    ImagesLoaded {
        store: ImagesStore,
        images: Vec<RenderedImage>,
        /// The panels' early looks as written (the UI tells the fresh ones).
        looks: Vec<ShownLook>,
        notes: Vec<String>,
    },
    /// The job failed; `target` is the image it failed in, if any. `message` keeps the
    /// whole cause chain.
    Failed {
        target: Option<Target>,
        message: String,
    },
    Cancelled,
    /// A job that makes the app busy is over (after its last event).
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
    pub fn spawn(notify: impl Fn() + Send + Sync + 'static) -> Self {
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
                    // Reading saved images does not make the app busy, so its end is no Idle.
                    let announces_idle = !matches!(job, Job::LoadImages { .. });
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        crate::compute_pool::install(|| state.run(job, &flag, &send))
                    }));
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
                    if announces_idle {
                        send(Event::Idle);
                    }
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
                let loaded = (|| -> Result<(FluxModels, String, Result<Machine, String>)> {
                    let device = parse_device(device.as_deref())?;
                    let dtype = parse_dtype(dtype.as_deref(), &device)?;
                    let machine = ModelSource::detect(&dir)
                        .and_then(|source| ModelMemory::of_files(&source, dtype))
                        .and_then(|memory| Machine::of(memory, dtype, false, &device, None))
                        .map_err(|e| format!("{e:#}"));
                    let models = FluxModels::load(&dir, dtype, &device)?;
                    let cfg = models.transformer.config();
                    let description = format!(
                        "FLUX.1-{} ({} + {} blocks, hidden {}), {dtype:?} on {device:?}",
                        if models.is_dev() { "dev" } else { "schnell" },
                        cfg.depth,
                        cfg.depth_single_blocks,
                        cfg.hidden_size
                    );
                    Ok((models, description, machine))
                })()
                .map_err(|e| (None, e))?;
                let model = PlanModel::of(&loaded.0);
                self.models = Some(loaded.0);
                send(Event::ModelLoaded {
                    dir,
                    description: loaded.1,
                    model,
                    machine: loaded.2,
                });
            }
            Job::CreateTinyModel { dir } => {
                crate::models::tiny::write_repo(&dir, 0, false).map_err(|e| (None, e))?;
                send(Event::TinyModelCreated { dir });
            }
            Job::LoadImages { store, panels } => {
                let mut found = store.read_all(panels);
                let (looks, mut notes) = store.read_shown_looks(panels);
                found.notes.append(&mut notes);
                send(Event::ImagesLoaded {
                    store,
                    images: found.images,
                    looks,
                    notes: found.notes,
                });
            }
            Job::Render {
                plan,
                request,
                store,
                options,
            } => {
                let models = self
                    .models
                    .as_mut()
                    .context("no model is loaded: choose a model folder first")
                    .map_err(|e| (None, e))?;
                let job = RenderJob {
                    plan: &plan,
                    request,
                    store: store.as_ref(),
                    options,
                };
                let ended = render::run(&mut self.renderer, models, &job, &mut |progress| {
                    send(match progress {
                        Progress::Started(target) => Event::Started(target),
                        Progress::Step(step) => Event::Step(step),
                        Progress::Look { look, .. } => Event::Look(look),
                        Progress::Finished { image, .. } => Event::ImageDone(image),
                    });
                    match cancel.load(Ordering::SeqCst) {
                        true => StepControl::Cancel,
                        false => StepControl::Continue,
                    }
                });
                match ended {
                    Ended::Finished => {}
                    Ended::Cancelled => send(Event::Cancelled),
                    Ended::Failed { target, error } => return Err((target, error)),
                }
            }
        }
        Ok(())
    }
}
