//! Choosing the compute device and the dtype the models run in.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`; `None` picks the best device this build supports.
pub fn parse_device(spec: Option<&str>) -> Result<Device> {
    match spec {
        None => best_device(),
        Some("cpu") => Ok(Device::Cpu),
        Some("metal") => Ok(Device::new_metal(0)?),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("bad CUDA device `{s}`: expected cuda:N"))?,
                None => 0,
            };
            Ok(Device::new_cuda(ordinal)?)
        }
        Some(other) => bail!("unknown device `{other}`: expected cpu, cuda, cuda:N or metal"),
    }
}

fn best_device() -> Result<Device> {
    if candle_core::utils::cuda_is_available() {
        return Ok(Device::new_cuda(0)?);
    }
    if candle_core::utils::metal_is_available() {
        return Ok(Device::new_metal(0)?);
    }
    Ok(Device::Cpu)
}

/// Parses `f32`, `bf16` or `f16`; `None` gives bf16 on GPUs and f32 on the CPU (whose bf16
/// matmuls are no faster and lose precision).
pub fn parse_dtype(spec: Option<&str>, device: &Device) -> Result<DType> {
    match spec {
        None if device.is_cpu() => Ok(DType::F32),
        None => Ok(DType::BF16),
        Some("f32") => Ok(DType::F32),
        Some("bf16") => Ok(DType::BF16),
        Some("f16") => Ok(DType::F16),
        Some(other) => bail!("unknown dtype `{other}`: expected f32, bf16 or f16"),
    }
}

/// Bytes of device memory in use on the whole card (total minus free, as the driver reports
/// them) for a CUDA device; `None` elsewhere.
pub fn gpu_memory_in_use(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = device;
    None
}
