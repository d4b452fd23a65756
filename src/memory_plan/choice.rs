//! How a render picks its bank mode: the user names one, or `auto` takes the fastest the memory
//! plan fits in the device's memory. The CLI (`render --bank`) and the app's render settings
//! choose through this one path, so both render a storyboard the same way on the same machine.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::{gb, mode_name, MemoryPlan, ModelMemory, Storyboard, Way};
use crate::consist::plan::Plan;
use crate::consist::session::BankMode;

/// `--bank` and the app's "Identity bank" setting. The names of the modes are those the app's
/// settings files already hold, so older files keep their choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum BankChoice {
    /// The fastest mode and batch that fit (`charaboard plan` shows why).
    #[default]
    Auto,
    Device,
    Host,
    Recompute,
}

impl BankChoice {
    /// The mode named, `None` for `Auto`.
    pub fn named(self) -> Option<BankMode> {
        match self {
            BankChoice::Auto => None,
            BankChoice::Device => Some(BankMode::Device),
            BankChoice::Host => Some(BankMode::Host),
            BankChoice::Recompute => Some(BankMode::Recompute),
        }
    }
}

/// The lockstep batch when the user names the recompute mode but no batch.
pub const DEFAULT_BATCH: usize = 4;

/// The largest lockstep batch a user may ask for (the plan tries up to this too).
pub const LOCKSTEP_BATCH_MAX: usize = 64;

/// What a memory plan is made for besides the storyboard: the model's bytes and sizes, the
/// dtype, where the text encoders run, and the memory there is.
#[derive(Debug, Clone)]
pub struct Machine {
    pub model: ModelMemory,
    pub dtype: DType,
    pub text_on_cpu: bool,
    /// Device memory to plan for.
    pub budget: u64,
    /// Host memory to plan for (`None`: not checked).
    pub host_budget: Option<u64>,
    /// The device is the host (the CPU): device and host bytes share `budget`.
    pub shared_memory: bool,
}

impl Machine {
    /// The machine `device` is, for `budget` bytes (default: the device's free memory, which
    /// must be read before the weights are loaded since the plan counts them).
    pub fn of(
        model: ModelMemory,
        dtype: DType,
        text_on_cpu: bool,
        device: &Device,
        budget: Option<u64>,
    ) -> Result<Self> {
        let budget = match budget {
            Some(b) => b,
            None => free_memory(device)?,
        };
        Ok(Self {
            model,
            dtype,
            text_on_cpu,
            budget,
            // On the CPU the device is the host and `budget` covers both.
            host_budget: match device.is_cpu() {
                true => None,
                false => crate::limits::available_memory(),
            },
            shared_memory: device.is_cpu(),
        })
    }

    pub fn plan(&self, plan: &Plan) -> MemoryPlan {
        MemoryPlan::new(
            &self.model,
            &Storyboard::of(plan),
            self.dtype,
            self.text_on_cpu,
            self.budget,
            self.host_budget,
            self.shared_memory,
        )
    }
}

/// What the device has free: the host's available memory for the CPU, the driver's figure for
/// CUDA.
fn free_memory(device: &Device) -> Result<u64> {
    let free = match device {
        Device::Cpu => crate::limits::available_memory(),
        d => crate::device::gpu_free_memory(d),
    };
    free.context("cannot tell this device's free memory: pass --budget (e.g. --budget 24GB)")
}

impl MemoryPlan {
    /// The fastest way that fits, with the lockstep batch `batch` where one is named, and a
    /// bank where one must be kept (a bank file is written or read).
    pub fn choose(&self, batch: Option<usize>, needs_bank: bool) -> Option<Way> {
        self.best(|w| {
            let keeps_bank = !needs_bank || w.mode != BankMode::Recompute;
            let batch = batch.is_none_or(|b| w.mode != BankMode::Recompute || w.batch == b);
            keeps_bank && batch
        })
    }

    /// One line for a way: its flags, its bytes and its forwards.
    pub fn summary(&self, way: &Way) -> String {
        format!(
            "--bank {} --batch {} ({} on the device, {} on the host, {} forwards)",
            mode_name(way.mode),
            way.batch,
            gb(self.device_bytes(way)),
            gb(self.host_bytes(way)),
            way.forwards
        )
    }
}

/// What a render takes: the bank mode and batch, and where a memory plan was made, its line.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenBank {
    pub mode: BankMode,
    pub batch: usize,
    pub plan: Option<PlannedBank>,
}

/// The memory plan's view of a chosen bank, for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBank {
    /// [`MemoryPlan::summary`] of the way.
    pub summary: String,
    pub fits: bool,
    /// [`MemoryPlan::report`]: every way and the budget.
    pub table: String,
}

impl BankChoice {
    /// The bank a render takes: the mode named (with `batch`, else [`DEFAULT_BATCH`]), or for
    /// `Auto` the fastest way `memory` fits, keeping a bank where `needs_bank`.
    pub fn resolve(
        self,
        batch: Option<usize>,
        needs_bank: bool,
        memory: Option<&MemoryPlan>,
    ) -> Result<ChosenBank, String> {
        let way = match (self.named(), memory) {
            (Some(mode), memory) => {
                let batch = batch.unwrap_or(DEFAULT_BATCH);
                let same =
                    |w: &&Way| w.mode == mode && (mode != BankMode::Recompute || w.batch == batch);
                match memory.and_then(|m| m.options.iter().find(same)) {
                    Some(way) => *way,
                    None => {
                        return Ok(ChosenBank {
                            mode,
                            batch,
                            plan: None,
                        })
                    }
                }
            }
            (None, Some(memory)) => memory
                .choose(batch, needs_bank)
                .ok_or_else(|| memory.too_small())?,
            (None, None) => return Err("bank Auto needs a memory plan".into()),
        };
        let memory = memory.expect("a way comes from a plan");
        Ok(ChosenBank {
            mode: way.mode,
            batch: way.batch,
            plan: Some(PlannedBank {
                summary: memory.summary(&way),
                fits: memory.fits(&way),
                table: memory.report(),
            }),
        })
    }
}
