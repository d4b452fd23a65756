//! The memory plan (`charaboard plan`, `render --bank auto`): the device and host bytes of every
//! component, of the identity's bank in each bank mode and of a forward's activations, the
//! forwards each mode costs, and the fastest mode and batch that fit a budget. Everything is
//! read from the files' headers before any weight is loaded, so a plan that does not fit is
//! refused before any work.

use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::consist::bank::{identity_bank_bytes, BankDims};
use crate::consist::plan::{BackgroundMode, Plan};
use crate::consist::recipe::Schedule;
use crate::consist::session::BankMode;
use crate::flux::attention::SCORE_CHUNK_BYTES;
use crate::flux::FluxConfig;
use crate::models::gguf::{self, GgufHeader};
use crate::models::infer::{self, Shapes};
use crate::models::source::ModelSource;
use crate::models::store::TensorStore;
use crate::models::{formats::classify_store, formats::Role};

mod choice;
pub use choice::{BankChoice, ChosenBank, Machine, PlannedBank, DEFAULT_BATCH, LOCKSTEP_BATCH_MAX};

/// The lockstep batches a plan tries: panels beside the identity in one forward.
const BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, LOCKSTEP_BATCH_MAX];

/// How a transformer's weights are stored: dense (loaded into the run's dtype) or quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Dense,
    Gguf(GgmlDType),
}

/// The bytes each component's weights take once loaded in the run's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub transformer: u64,
    pub vae: u64,
    /// Loaded only for a picture identity.
    pub vae_encoder: u64,
    pub t5: u64,
    pub clip: u64,
}

/// The transformer's sizes that decide banks and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    pub single_blocks: usize,
    pub hidden: usize,
    pub heads: usize,
    pub text_tokens: usize,
    /// The model's usual step count, for documents that set none.
    pub default_steps: usize,
}

impl ModelDims {
    pub fn of(cfg: &FluxConfig) -> Self {
        Self {
            single_blocks: cfg.depth_single_blocks,
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            text_tokens: crate::text::t5_len_for(cfg),
            default_steps: crate::pipeline::default_steps_for(cfg),
        }
    }
}

/// A model as the plan sees it: its weights' bytes and its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelMemory {
    pub weights: Weights,
    pub dims: ModelDims,
}

/// The bytes a GGUF tensor takes once loaded, as `flux::weights` counts them: quantized
/// matrices stay quantized, unquantized matrices and biases are kept in f32, the rest (norm
/// scales) runs in `dtype`.
fn gguf_tensor_bytes(name: &str, dims: &[usize], quant: GgmlDType, dtype: DType) -> u64 {
    let values: usize = dims.iter().product();
    let bytes = match quant {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => match dims.len() {
            2 => values * 4,
            _ if name.ends_with("bias") => values * 4,
            _ => values * dtype.size_in_bytes(),
        },
        q => values / q.block_size() * q.type_size(),
    };
    bytes as u64
}

fn dense_bytes(store: &TensorStore, dtype: DType) -> u64 {
    let values: usize = store.value_counts().map(|(_, n)| n).sum();
    (values * dtype.size_in_bytes()) as u64
}

/// The loaded bytes of the VAE's `part` ("decoder" or "encoder"): each is loaded on its own
/// (`vae::`), whatever else the file holds.
fn part_bytes<'a>(values: impl Iterator<Item = (&'a str, usize)>, part: &str, dtype: DType) -> u64 {
    let (top, nested) = (format!("{part}."), format!(".{part}."));
    let values: usize = values
        .filter(|(name, _)| name.starts_with(&top) || name.contains(&nested))
        .map(|(_, n)| n)
        .sum();
    (values * dtype.size_in_bytes()) as u64
}

/// The VAE decoder's and encoder's loaded bytes.
fn vae_bytes(store: &TensorStore, dtype: DType) -> (u64, u64) {
    let counts: Vec<(String, usize)> = store.value_counts().collect();
    let part = |name| part_bytes(counts.iter().map(|(k, n)| (k.as_str(), *n)), name, dtype);
    (part("decoder"), part("encoder"))
}

/// The text encoders' dtype: the run's, with f16 widened to bf16 (`text::placement`).
fn text_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 => DType::BF16,
        d => d,
    }
}

impl ModelMemory {
    /// A model on disk, from its files' headers: every stored tensor at the run's dtype (the
    /// GGUF transformer at its quantization).
    pub fn of_files(source: &ModelSource, dtype: DType) -> Result<Self> {
        let text = text_dtype(dtype);
        match source {
            ModelSource::Repo(layout) => {
                let store = |c: &crate::models::layout::Component| TensorStore::open(&c.weights);
                let cfg = crate::flux::config::from_diffusers_json(&layout.transformer.config)?;
                let (vae, vae_encoder) = vae_bytes(&store(&layout.vae)?, dtype);
                Ok(Self {
                    weights: Weights {
                        transformer: dense_bytes(&store(&layout.transformer)?, dtype),
                        vae,
                        vae_encoder,
                        t5: dense_bytes(&store(&layout.text_encoder_2)?, text),
                        clip: dense_bytes(&store(&layout.text_encoder)?, text),
                    },
                    dims: ModelDims::of(&cfg),
                })
            }
            ModelSource::Files(files) => {
                let file = |role| TensorStore::open(&[files.path(role).to_path_buf()]);
                let (transformer, cfg) = transformer_of_file(files.path(Role::Transformer), dtype)?;
                let (vae, vae_encoder) = vae_bytes(&file(Role::Vae)?, dtype);
                Ok(Self {
                    weights: Weights {
                        transformer,
                        vae,
                        vae_encoder,
                        t5: dense_bytes(&file(Role::T5)?, text),
                        clip: dense_bytes(&file(Role::Clip)?, text),
                    },
                    dims: ModelDims::of(&cfg),
                })
            }
        }
    }

    /// FLUX.1-dev (or any config) from its architecture alone: the tensors its four models ask
    /// for when built, with the transformer stored as `storage`. For figures about weights
    /// nobody has here.
    pub fn of_architecture(
        cfg: &FluxConfig,
        t5: &candle_transformers::models::t5::Config,
        clip: &candle_transformers::models::clip::text_model::ClipTextConfig,
        vae: &candle_transformers::models::flux::autoencoder::Config,
        storage: Storage,
        dtype: DType,
    ) -> Result<Self> {
        let text = text_dtype(dtype);
        let flux = shapes_of(|vb| crate::flux::Flux::new(cfg, vb).map(|_| ()))?;
        let transformer = match storage {
            Storage::Dense => values(&flux) * dtype.size_in_bytes() as u64,
            Storage::Gguf(q) => flux
                .iter()
                .map(|(name, dims)| {
                    let quant = match dims.as_slice() {
                        [_, inner] if inner % q.block_size() == 0 => q,
                        _ => GgmlDType::F32,
                    };
                    gguf_tensor_bytes(name, dims, quant, dtype)
                })
                .sum(),
        };
        let t5 = shapes_of(|vb| {
            candle_transformers::models::t5::T5EncoderModel::load(vb, t5).map(|_| ())
        })?;
        let clip = shapes_of(|vb| {
            candle_transformers::models::clip::text_model::ClipTextTransformer::new(
                vb.pp("text_model"),
                clip,
            )
            .map(|_| ())
        })?;
        let vae = shapes_of(|vb| {
            candle_transformers::models::flux::autoencoder::AutoEncoder::new(vae, vb).map(|_| ())
        })?;
        let vae_part = |part| {
            part_bytes(
                vae.iter().map(|(k, d)| (k.as_str(), d.iter().product())),
                part,
                dtype,
            )
        };
        Ok(Self {
            weights: Weights {
                transformer,
                vae: vae_part("decoder"),
                vae_encoder: vae_part("encoder"),
                t5: values(&t5) * text.size_in_bytes() as u64,
                clip: values(&clip) * text.size_in_bytes() as u64,
            },
            dims: ModelDims::of(cfg),
        })
    }
}

fn values(shapes: &BTreeMap<String, Vec<usize>>) -> u64 {
    shapes
        .values()
        .map(|d| d.iter().product::<usize>() as u64)
        .sum()
}

/// A single-file transformer's loaded bytes and config, from its header.
fn transformer_of_file(path: &Path, dtype: DType) -> Result<(u64, FluxConfig)> {
    if gguf::is_gguf(path) {
        let header = GgufHeader::read(path)?;
        let crate::models::formats::FileKind::FluxGguf { prefix } = header.classify()? else {
            bail!("{} is not a FLUX.1 transformer", path.display());
        };
        let bytes = header
            .tensors()
            .map(|(name, dims, quant)| gguf_tensor_bytes(name, dims, quant, dtype))
            .sum();
        return Ok((bytes, header.flux_config(&prefix)?));
    }
    let store = TensorStore::open(&[path.to_path_buf()])?;
    let kind = classify_store(path, &store)?;
    let cfg = infer::flux_config(&Shapes::new(path, &store, &kind))?;
    Ok((dense_bytes(&store, dtype), cfg))
}

/// A VarBuilder backend that records the name and shape of every tensor a model asks for and
/// hands out broadcast zeros, so that a 12B model's tensors are counted without allocating them.
#[derive(Clone, Default)]
struct ShapeRecorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut shapes) = self.0.lock() {
            shapes.insert(name.to_string(), s.dims().to_vec());
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the shape recorder needs a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The names and shapes of the tensors `build` asks for.
fn shapes_of(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let recorder = ShapeRecorder::default();
    build(VarBuilder::from_backend(
        Box::new(recorder.clone()),
        DType::F32,
        Device::Cpu,
    ))?;
    let shapes = recorder
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned shape recorder"))?
        .clone();
    Ok(shapes)
}

/// What of a storyboard decides its memory and forwards.
#[derive(Debug, Clone)]
pub struct Storyboard {
    pub schedule: Schedule,
    /// Image tokens of the identity (the bank's size) and of the largest image.
    pub identity_tokens: usize,
    pub largest_tokens: usize,
    /// Each panel's background, in plan order.
    pub backgrounds: Vec<BackgroundMode>,
    /// The forwards of the picture identities' inversions (0: every identity is generated); where
    /// there is one, the VAE encoder's weights are held too.
    pub inversion_forwards: usize,
    /// How many characters (identities) the storyboard has.
    pub characters: usize,
    /// The characters each panel shows, in plan order.
    pub cast: Vec<Vec<usize>>,
}

fn tokens(width: usize, height: usize) -> usize {
    (width / 16) * (height / 16)
}

impl Storyboard {
    pub fn of(plan: &Plan) -> Self {
        let identity = &plan.identity().shot;
        Self {
            schedule: plan.settings.recipe.schedule(plan.settings.steps),
            identity_tokens: tokens(identity.width, identity.height),
            largest_tokens: plan
                .images()
                .iter()
                .map(|i| tokens(i.shot.width, i.shot.height))
                .max()
                .unwrap_or(0),
            backgrounds: plan.panels().iter().map(|p| p.background).collect(),
            inversion_forwards: plan
                .identities()
                .iter()
                .filter_map(|i| i.shot.picture.as_ref())
                .map(|p| p.key.inverter.forwards(plan.settings.steps))
                .sum(),
            characters: plan.identities().len(),
            cast: plan
                .panels()
                .iter()
                .map(|p| p.characters().collect())
                .collect(),
        }
    }

    /// One character shown by every panel of `backgrounds`.
    pub fn one_character(
        schedule: Schedule,
        identity_tokens: usize,
        largest_tokens: usize,
        backgrounds: Vec<BackgroundMode>,
    ) -> Self {
        Self {
            schedule,
            identity_tokens,
            largest_tokens,
            cast: vec![vec![0]; backgrounds.len()],
            backgrounds,
            characters: 1,
            inversion_forwards: 0,
        }
    }

    fn follows(&self, i: usize) -> bool {
        matches!(self.backgrounds[i], BackgroundMode::SceneReference { first_panel } if first_panel != i)
    }

    fn scene_references(&self) -> usize {
        (0..self.backgrounds.len())
            .filter(|&i| matches!(self.backgrounds[i], BackgroundMode::SceneReference { first_panel } if first_panel == i))
            .count()
    }

    /// Transformer forwards (one per run and step) a whole render costs, by the renderer's
    /// rules: a picture identity's inversion once, then the banked modes run each character's
    /// identity once and each panel's pre-run and main run; lockstep runs the batches of
    /// `session::lockstep`, one identity row per character a chunk reads (checked against
    /// `Renderer::forwards` in tests/memory_plan.rs).
    pub fn forwards(&self, mode: BankMode, batch: usize) -> usize {
        self.inversion_forwards + self.render_forwards(mode, batch)
    }

    fn render_forwards(&self, mode: BankMode, batch: usize) -> usize {
        let s = &self.schedule;
        let panels = self.backgrounds.len();
        if mode != BankMode::Recompute {
            return self.characters * s.steps + panels * (s.mask_step + 1 + s.steps - 1);
        }
        if panels == 0 {
            return self.characters * s.steps;
        }
        let locks_on_identity = self.backgrounds.contains(&BackgroundMode::Identity);
        let mut forwards = match locks_on_identity {
            true => s.mask_step + 1,
            false => 0,
        };
        let pre = s.mask_step + 1;
        let (first_wave, second_wave): (Vec<usize>, Vec<usize>) =
            (0..panels).partition(|&i| !self.follows(i));
        let mut identity_pending = true;
        for wave in [first_wave, second_wave] {
            for chunk in wave.chunks(batch.max(1)) {
                let mut references: Vec<usize> = Vec::new();
                for &i in chunk {
                    if let BackgroundMode::SceneReference { first_panel } = self.backgrounds[i] {
                        if first_panel != i && !references.contains(&first_panel) {
                            references.push(first_panel);
                        }
                    }
                }
                // The identities the chunk reads: its panels' and its references' characters,
                // and the first where a panel locks onto its background.
                let mut read: Vec<usize> = chunk
                    .iter()
                    .chain(&references)
                    .flat_map(|&i| self.cast[i].iter().copied())
                    .chain(
                        chunk
                            .iter()
                            .any(|&i| self.backgrounds[i] == BackgroundMode::Identity)
                            .then_some(0),
                    )
                    .collect();
                read.sort_unstable();
                read.dedup();
                // The first chunk renders every identity whole.
                let identity_main = match identity_pending {
                    true => self.characters * s.steps,
                    false => read.len() * s.share.1.max(pre).min(s.steps),
                };
                let helper_main = s.share.1.min(s.steps).max(2) - 1;
                forwards += read.len() * pre.min(s.steps) + identity_main;
                forwards += references.len() * (pre - 1 + helper_main);
                forwards += chunk.len() * (pre + s.steps - 1);
                identity_pending = false;
            }
        }
        forwards
    }
}

/// One way to render: where the bank lives, how many panels run beside the identity, and what
/// it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Way {
    pub mode: BankMode,
    pub batch: usize,
    pub bank_device: u64,
    pub bank_host: u64,
    pub activations: u64,
    pub forwards: usize,
}

/// A plan: the components' placement, every option's bytes, and the choice for a budget.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// (component, device bytes, host bytes).
    pub components: Vec<(&'static str, u64, u64)>,
    pub options: Vec<Way>,
    pub budget: u64,
    /// Host memory to plan for (`None`: unknown, not checked).
    pub host_budget: Option<u64>,
    /// The device is the host (the CPU): device and host bytes share one budget.
    pub shared_memory: bool,
    pub chosen: Option<Way>,
}

impl MemoryPlan {
    pub fn new(
        model: &ModelMemory,
        board: &Storyboard,
        dtype: DType,
        text_on_cpu: bool,
        budget: u64,
        host_budget: Option<u64>,
        shared_memory: bool,
    ) -> Self {
        let w = model.weights;
        let text = |bytes| match text_on_cpu {
            true => (0, bytes),
            false => (bytes, 0),
        };
        let (t5_dev, t5_host) = text(w.t5);
        let (clip_dev, clip_host) = text(w.clip);
        let mut components = vec![
            ("transformer", w.transformer, 0),
            ("vae", w.vae, 0),
            ("t5", t5_dev, t5_host),
            ("clip", clip_dev, clip_host),
        ];
        // Loaded for the inversion and kept with the models (`FluxModels::encode_picture`).
        if board.inversion_forwards > 0 {
            components.push(("vae encoder", w.vae_encoder, 0));
        }
        let bank = bank_bound(model.dims, board, dtype);
        let slice = block_slice(model.dims, board, dtype);
        let one_run = activation_bytes(model.dims, board, dtype, 1, 0);
        let mut options = vec![
            Way {
                mode: BankMode::Device,
                batch: 1,
                bank_device: bank,
                bank_host: 0,
                activations: one_run,
                forwards: board.forwards(BankMode::Device, 1),
            },
            Way {
                mode: BankMode::Host,
                batch: 1,
                bank_device: slice,
                bank_host: bank,
                activations: one_run,
                forwards: board.forwards(BankMode::Host, 1),
            },
        ];
        let panels = board.backgrounds.len().max(1);
        let helpers = board.characters + usize::from(board.scene_references() > 0);
        for batch in BATCHES.into_iter().filter(|&b| b == 1 || b / 2 < panels) {
            let batch = batch.min(panels);
            options.push(Way {
                mode: BankMode::Recompute,
                batch,
                bank_device: 0,
                bank_host: 0,
                activations: activation_bytes(model.dims, board, dtype, helpers + batch, helpers),
                forwards: board.forwards(BankMode::Recompute, batch),
            });
        }
        let mut plan = Self {
            components,
            options,
            budget,
            host_budget,
            shared_memory,
            chosen: None,
        };
        plan.chosen = plan.best(|_| true);
        plan
    }

    /// The fastest way among those `allowed` that fits: the fewest forwards, then the bank
    /// nearest the compute (device, host, none), then the fewest device bytes.
    pub fn best(&self, allowed: impl Fn(&Way) -> bool) -> Option<Way> {
        self.options
            .iter()
            .filter(|o| allowed(o) && self.fits(o))
            .min_by_key(|o| (o.forwards, mode_rank(o.mode), self.device_bytes(o)))
            .copied()
    }

    pub fn weights_device(&self) -> u64 {
        self.components.iter().map(|c| c.1).sum()
    }

    pub fn weights_host(&self) -> u64 {
        self.components.iter().map(|c| c.2).sum()
    }

    pub fn device_bytes(&self, o: &Way) -> u64 {
        self.weights_device() + o.bank_device + o.activations
    }

    pub fn host_bytes(&self, o: &Way) -> u64 {
        self.weights_host() + o.bank_host
    }

    /// Whether `o` fits the budget (and the host's, where it is checked).
    pub fn fits(&self, o: &Way) -> bool {
        let used = match self.shared_memory {
            true => self.device_bytes(o) + self.host_bytes(o),
            false => self.device_bytes(o),
        };
        used <= self.budget && self.host_budget.is_none_or(|h| self.host_bytes(o) <= h)
    }

    /// The table and the choice, as `charaboard plan` prints them.
    pub fn report(&self) -> String {
        let mut out = String::from("component      device      host\n");
        for (name, dev, host) in &self.components {
            out += &format!("{name:<12} {:>8} {:>9}\n", gb(*dev), gb(*host));
        }
        out += "\nmode       batch  bank dev  bank host  activations  device total  host total  forwards\n";
        for o in &self.options {
            out += &format!(
                "{:<10} {:>5} {:>9} {:>10} {:>12} {:>13} {:>11} {:>9}{}\n",
                mode_name(o.mode),
                o.batch,
                gb(o.bank_device),
                gb(o.bank_host),
                gb(o.activations),
                gb(self.device_bytes(o)),
                gb(self.host_bytes(o)),
                o.forwards,
                match self.fits(o) {
                    true => "",
                    false => "  (does not fit)",
                }
            );
        }
        out += &format!("\nbudget {}", gb(self.budget));
        if let Some(host) = self.host_budget {
            out += &format!(", host {}", gb(host));
        }
        if self.shared_memory {
            out += " (the device is the host: device and host bytes share it)";
        }
        out += "\n";
        match self.chosen {
            Some(o) => out += &format!("choice: {}\n", self.summary(&o)),
            None => out += "choice: none fits\n",
        }
        out
    }

    /// Why nothing fits, with the plan's numbers and what to change.
    pub fn too_small(&self) -> String {
        let least = self.options.iter().min_by_key(|o| self.device_bytes(o));
        let parts: Vec<String> = self
            .components
            .iter()
            .filter(|c| c.1 > 0)
            .map(|c| format!("{} {}", c.0, gb(c.1)))
            .collect();
        let smallest = least.map_or(String::new(), |o| {
            format!(
                " the smallest (--bank {} --batch {}) needs {} on the device and {} on the host \
                 ({}, plus its bank and activations).",
                mode_name(o.mode),
                o.batch,
                gb(self.device_bytes(o)),
                gb(self.host_bytes(o)),
                parts.join(", ")
            )
        });
        format!(
            "no bank mode fits the budget of {}:{smallest} Use a smaller quantisation of the \
             transformer (a Q8_0 or Q4_0 GGUF), a smaller image size, or keep the text encoders \
             on the CPU (--text-on-cpu)",
            gb(self.budget),
        )
    }
}

fn mode_rank(mode: BankMode) -> u8 {
    match mode {
        BankMode::Device => 0,
        BankMode::Host => 1,
        BankMode::Recompute => 2,
    }
}

pub fn mode_name(mode: BankMode) -> &'static str {
    match mode {
        BankMode::Device => "device",
        BankMode::Host => "host",
        BankMode::Recompute => "recompute",
    }
}

fn gb(bytes: u64) -> String {
    match bytes {
        0..1_000_000_000 => format!("{:.2} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// The identities' banks' bytes at their worst foreground fraction (the mask is found while
/// they render; only the first character's holds a locked background), plus one
/// locked-background bank per scene reference (`bank::identity_bank_bytes`).
fn bank_bound(d: ModelDims, board: &Storyboard, dtype: DType) -> u64 {
    let locked = board.backgrounds.contains(&BackgroundMode::Identity);
    let bank = |tokens: usize, locked: bool| {
        [0, tokens]
            .into_iter()
            .map(|fg_tokens| {
                identity_bank_bytes(
                    &board.schedule,
                    BankDims {
                        single_blocks: d.single_blocks,
                        hidden: d.hidden,
                        img_tokens: tokens,
                        fg_tokens,
                        dtype_bytes: dtype.size_in_bytes(),
                        locked_background: locked,
                    },
                )
            })
            .max()
            .unwrap_or(0) as u64
    };
    bank(board.identity_tokens, locked)
        + board.characters.saturating_sub(1) as u64 * bank(board.identity_tokens, false)
        + board.scene_references() as u64 * bank(board.largest_tokens, true)
}

/// The most `--bank host` moves to the device at once: one block's keys, values and attention
/// outputs at every image token.
fn block_slice(d: ModelDims, board: &Storyboard, dtype: DType) -> u64 {
    (3 * board.largest_tokens * d.hidden * dtype.size_in_bytes()) as u64
}

/// The activations of one forward of `runs` runs, `helpers` of them recomputed references (an
/// estimate): every run's hidden state and RoPE table for the whole forward (the runs of a batch
/// go through the blocks one after the other), one block's live record per helper, and the
/// transient work of one block of the largest run: attention scores and softmax over
/// `[text | image | shared keys]` (query chunks whose scores stay under
/// [`SCORE_CHUNK_BYTES`], as `flux::attention` runs them off the CPU; the CPU's fused kernel holds
/// less), the f32 text
/// probabilities and the MLP.
fn activation_bytes(
    d: ModelDims,
    board: &Storyboard,
    dtype: DType,
    runs: usize,
    helpers: usize,
) -> u64 {
    let b = dtype.size_in_bytes();
    let img = board.largest_tokens;
    let seq = d.text_tokens + img;
    let head_dim = d.hidden / d.heads.max(1);
    let state = seq * d.hidden * b * 2 + seq * head_dim * 2 * 4;
    let live = 3 * img * d.hidden * b;
    let keys = seq + board.identity_tokens;
    let rows = (SCORE_CHUNK_BYTES / (d.heads * keys * b).max(1)).clamp(1, seq);
    let scores = 2 * d.heads * rows * keys * b;
    let text_probs = d.heads * img * d.text_tokens * 4;
    let mlp = seq * (3 * d.hidden + 8 * d.hidden) * b;
    (runs * state + helpers * live + scores + text_probs + mlp) as u64
}
