//! The flags every command that loads a model shares: where it runs and how the text encoders
//! are kept.

use anyhow::Result;
use candle_core::{DType, Device};

use crate::device::{parse_device, parse_dtype};
use crate::models::discovery;
use crate::pipeline::FluxModels;
use crate::text::TextOptions;

/// Where a command computes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or metal [default: the best this build supports].
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16 or f16 [default: f32 on CPU, bf16 on GPUs].
    #[arg(long)]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    /// The device and dtype these flags name, checked.
    pub fn device_and_dtype(&self) -> Result<(Device, DType)> {
        let device = parse_device(self.device.as_deref())?;
        let dtype = parse_dtype(self.dtype.as_deref(), &device)?;
        Ok((device, dtype))
    }
}

/// Where a command that loads a FLUX.1 model computes, and how it keeps the text encoders.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Keep the text encoders on the CPU (their outputs move to the device).
    #[arg(long)]
    pub text_on_cpu: bool,
    /// Free the text encoders once the prompts are encoded; reload them for new prompts.
    #[arg(long)]
    pub free_text_encoders: bool,
}

impl RunArgs {
    /// Loads the model `spec` names (a folder, a .ron model file or a Hugging Face repository
    /// id in the cache) as these flags say, and reports what it takes on the device.
    pub fn load(&self, spec: &str) -> Result<FluxModels> {
        let path = discovery::resolve(spec)?;
        let (device, dtype) = self.device.device_and_dtype()?;
        eprintln!("loading {} ({dtype:?} on {device:?})", path.display());
        let text = TextOptions {
            on_cpu: self.text_on_cpu,
            free_after_encoding: self.free_text_encoders,
        };
        let models = FluxModels::load_with(&path, dtype, &device, text)?;
        let parts: Vec<String> = models
            .component_bytes()
            .iter()
            .map(|(name, bytes)| format!("{name} {:.1} MB", *bytes as f64 / 1e6))
            .collect();
        eprintln!("on the device: {}", parts.join(", "));
        Ok(models)
    }
}
