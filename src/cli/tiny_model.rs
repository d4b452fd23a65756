//! `charaboard tiny-model`: a tiny FLUX.1 with random weights, in any supported layout.

use anyhow::Result;
use candle_core::quantized::GgmlDType;
use std::path::PathBuf;

use crate::models::{tiny, tiny_files};

#[derive(clap::Args)]
pub struct TinyModel {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Without the guidance embedder, like FLUX.1-schnell.
    #[arg(long)]
    schnell: bool,
    /// repo: the Hugging Face layout; single-file: ComfyUI-style files and a model.ron;
    /// gguf: the same, with the transformer as a quantized GGUF.
    #[arg(long, value_enum, default_value_t = Layout::Repo)]
    layout: Layout,
    /// The GGUF's quantization of matrices (with --layout gguf).
    #[arg(long, value_enum, default_value_t = Quant::Q8_0)]
    quant: Quant,
    /// tiny: hidden 64 (2 heads of 32); head128: hidden 256 in 2 heads of FLUX's size 128, for
    /// benchmarks at FLUX's head size (with --layout repo only).
    #[arg(long, value_enum, default_value_t = Transformer::Tiny)]
    transformer: Transformer,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transformer {
    Tiny,
    Head128,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Layout {
    Repo,
    SingleFile,
    Gguf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Quant {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl Quant {
    fn ggml(self) -> GgmlDType {
        match self {
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

pub fn run(args: TinyModel) -> Result<()> {
    let (out, seed, schnell) = (&args.out, args.seed, args.schnell);
    if args.transformer == Transformer::Head128 && !matches!(args.layout, Layout::Repo) {
        anyhow::bail!("--transformer head128 is written in --layout repo only");
    }
    match args.layout {
        Layout::Repo => match args.transformer {
            Transformer::Tiny => tiny::write_repo(out, seed, schnell)?,
            Transformer::Head128 => {
                tiny::write_repo_with(out, seed, &tiny::head128_config(schnell))?
            }
        },
        Layout::SingleFile => {
            tiny_files::write_single_files(out, seed, schnell, tiny_files::FileDtypes::DOWNLOADS)?
        }
        Layout::Gguf => tiny_files::write_gguf_files(out, seed, schnell, args.quant.ggml())?,
    }
    eprintln!(
        "wrote a tiny {} model with random weights to {}",
        if schnell {
            "schnell-style"
        } else {
            "dev-style"
        },
        out.display()
    );
    Ok(())
}
