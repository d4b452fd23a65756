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

/// Parses `f32`, `bf16` or `f16`, refusing one the device cannot run (see [`refusal`]); `None`
/// gives bf16 on GPUs that run it and f32 elsewhere (the CPU's bf16 matmuls widen to f32 each
/// product, so they are slower, and lose precision).
pub fn parse_dtype(spec: Option<&str>, device: &Device) -> Result<DType> {
    let cuda = cuda_compute_capability(device);
    let dtype = match spec {
        None if device.is_cpu() || refusal(DType::BF16, cuda).is_some() => DType::F32,
        None => DType::BF16,
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(other) => bail!("unknown dtype `{other}`: expected f32, bf16 or f16"),
    };
    match refusal(dtype, cuda) {
        Some(why) => bail!("{why}"),
        None => Ok(dtype),
    }
}

/// Why `dtype` cannot run on a device whose CUDA compute capability is `cuda`, with what to use
/// instead. `None` for the CPU, which runs all three, and for Metal, whose bf16 kernels need
/// macOS 14 (Metal 3.1), which this check cannot see.
pub fn refusal(dtype: DType, cuda: Option<(i32, i32)>) -> Option<String> {
    match (dtype, cuda) {
        // candle-kernels compiles its bf16 kernels for compute capability 8.0 (Ampere) and up.
        (DType::BF16, Some((major, minor))) if major < 8 => Some(format!(
            "bf16 needs a CUDA GPU of compute capability 8.0 or newer, and this one is \
             {major}.{minor}: use --dtype f32, or --dtype f16 with --text-on-cpu (an f16 run \
             encodes text in bf16, as T5 overflows in f16)"
        )),
        _ => None,
    }
}

fn cuda_compute_capability(device: &Device) -> Option<(i32, i32)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda.cuda_stream().context().compute_capability().ok();
    }
    let _ = device;
    None
}

/// Whether `device` has a convolution kernel for `dtype`. candle's CPU convolution multiplies
/// through a gemm without bf16, so the VAE widens bf16 products to f32 there (`vae::conv`).
pub fn has_native_conv(device: &Device, dtype: DType) -> bool {
    !(device.is_cpu() && dtype == DType::BF16)
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

/// Bytes of device memory free on the whole card, as the driver reports them, for a CUDA
/// device; `None` elsewhere.
pub fn gpu_free_memory(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, _) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some(free as u64);
    }
    let _ = device;
    None
}
