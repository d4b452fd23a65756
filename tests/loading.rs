//! Tiny checkpoints in the Hugging Face repository layout load through the real loading code, and
//! bad checkpoints fail with messages that name the file and the tensor.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::AutoEncoder;
use charaboard::flux::{rope, StepInput, TokenLayout};
use charaboard::models::{load, tiny, RepoLayout};
use common::max_abs_diff;
use std::collections::HashMap;
use std::path::Path;

fn tiny_repo(schnell: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), 5, schnell).unwrap();
    dir
}

#[test]
fn diffusers_transformer_loads_to_the_bfl_weights_it_was_written_from() -> anyhow::Result<()> {
    for schnell in [false, true] {
        let repo = tiny_repo(schnell);
        let layout = RepoLayout::open(repo.path())?;
        assert_eq!(
            layout.transformer.weights.len(),
            2,
            "the writer shards like the real repository"
        );
        let (loaded, _) = load::transformer::from_repo(&layout, DType::F32, &Device::Cpu)?;
        let cfg = tiny::flux_config(schnell);
        assert_eq!(loaded.config().guidance_embed, !schnell);
        // candle's own Flux on the BFL-named weights the repository was written from.
        let bfl = tiny::transformer_weights(&cfg, 5)?;
        let vb = VarBuilder::from_tensors(bfl.into_iter().collect(), DType::F32, &Device::Cpu);
        let reference = candle_transformers::models::flux::model::Flux::new(&cfg, vb)?;
        let dev = Device::Cpu;
        let img = Tensor::randn(0f32, 1., (1, 6, 64), &dev)?;
        let txt = Tensor::randn(0f32, 1., (1, 5, cfg.context_in_dim), &dev)?;
        let pooled = Tensor::randn(0f32, 1., (1, cfg.vec_in_dim), &dev)?;
        let img_ids = rope::image_ids(2, 3, DType::F32, &dev)?;
        let txt_ids = Tensor::zeros((1, 5, 3), DType::F32, &dev)?;
        let t = Tensor::new(&[0.4f32], &dev)?;
        let g = Tensor::new(&[3.5f32], &dev)?;
        let rope = loaded.rope_table(&txt_ids, &img_ids)?;
        let input = StepInput {
            img: &img,
            txt: &txt,
            pooled: &pooled,
            rope: &rope,
            layout: TokenLayout {
                txt_len: 5,
                img_h: 2,
                img_w: 3,
            },
        };
        let ours = loaded.forward(&input, &t, Some(&g), 0, None)?;
        use candle_transformers::models::flux::WithForward;
        let theirs = reference.forward(&img, &img_ids, &txt, &txt_ids, &t, &pooled, Some(&g))?;
        let scale = theirs.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(
            max_abs_diff(&ours, &theirs) <= 1e-4 * scale,
            "schnell={schnell}"
        );
    }
    Ok(())
}

/// candle-transformers' AutoEncoder on the BFL weights the tiny repository's VAE was written
/// from, and latents to decode.
fn bfl_autoencoder_and_latents() -> anyhow::Result<(AutoEncoder, Tensor)> {
    let cfg = tiny::vae_config();
    let bfl = tiny::vae_weights(&cfg, 5 + tiny::VAE_SEED_OFFSET)?;
    let vb = VarBuilder::from_tensors(bfl.into_iter().collect(), DType::F32, &Device::Cpu);
    let latents = Tensor::randn(0f32, 1., (1, 16, 4, 6), &Device::Cpu)?;
    Ok((AutoEncoder::new(&cfg, vb)?, latents))
}

/// Our decoder, loaded from the diffusers names, computes what candle-transformers' AutoEncoder
/// computes from the BFL weights: the same arithmetic in f32 but for the swish's exp, ours
/// vectorised and within 2 ulp of libm's, which leaves the pixels within 1e-5 (2.98e-6 seen) and
/// their 8-bit values at most one level apart.
#[test]
fn vae_decoder_equals_candle_autoencoder_on_the_bfl_weights_it_was_written_from(
) -> anyhow::Result<()> {
    let repo = tiny_repo(false);
    let layout = RepoLayout::open(repo.path())?;
    let (vae, _) = load::vae::from_repo(&layout, DType::F32, &Device::Cpu)?;
    let (reference, latents) = bfl_autoencoder_and_latents()?;
    let ours = vae.decode_pixels(&latents, DType::F32)?;
    let theirs = reference.decode(&latents)?;
    assert_eq!(ours.dims(), &[1, 3, 32, 48]);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff < 1e-5, "pixels differ by {diff}");
    let image = vae.decode(&latents, DType::F32)?;
    let reference = charaboard::vae::to_rgb8(&theirs)?;
    let levels = image.as_raw().iter().zip(reference.as_raw());
    assert!(levels.into_iter().all(|(a, b)| a.abs_diff(*b) <= 1));
    let distinct: std::collections::HashSet<_> = image.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 50, "the decoded image is not flat");
    Ok(())
}

/// bf16 on the CPU: weights and activations in bf16, each convolution's products summed in f32
/// (candle's CPU convolution has no bf16 kernel). It lands within bf16's rounding of the f32
/// decode (2^-8 per rounding, over some 30 layers), and is not the f32 decode.
#[test]
fn vae_decodes_in_bf16_within_its_rounding_of_f32() -> anyhow::Result<()> {
    let repo = tiny_repo(false);
    let layout = RepoLayout::open(repo.path())?;
    let (vae, bytes) = load::vae::from_repo(&layout, DType::BF16, &Device::Cpu)?;
    let (_, f32_bytes) = load::vae::from_repo(&layout, DType::F32, &Device::Cpu)?;
    assert_eq!(2 * bytes, f32_bytes, "the weights are held in bf16");
    let (reference, latents) = bfl_autoencoder_and_latents()?;
    let ours = vae.decode_pixels(&latents, DType::BF16)?;
    assert_eq!(ours.dtype(), DType::BF16);
    let theirs = reference.decode(&latents)?;
    let d = max_abs_diff(&ours.to_dtype(DType::F32)?, &theirs) / common::max_abs(&theirs);
    eprintln!("bf16 VAE vs f32: relative max difference {d:.2e}");
    assert!(d > 0.0 && d <= 5e-2, "relative max difference {d}");
    Ok(())
}

#[test]
fn vae_names_map_every_bfl_tensor_onto_a_stored_diffusers_tensor() -> anyhow::Result<()> {
    let repo = tiny_repo(false);
    let layout = RepoLayout::open(repo.path())?;
    let store = charaboard::models::TensorStore::open(&layout.vae.weights)?;
    let varmap = candle_nn::VarMap::new();
    AutoEncoder::new(
        &tiny::vae_config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let bfl_names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let mut used = std::collections::HashSet::new();
    for name in &bfl_names {
        let source = charaboard::models::names::vae_source(name, 4);
        for n in source.names() {
            assert!(store.contains(n), "{name} -> {n} missing");
            assert!(used.insert(n.to_string()), "{n} used twice");
        }
    }
    assert_eq!(
        used.len(),
        store.names().count(),
        "every stored tensor is used exactly once"
    );
    Ok(())
}

fn expect_error(result: anyhow::Result<impl Sized>, parts: &[&str]) {
    let message = match result {
        Ok(_) => panic!("expected an error mentioning {parts:?}"),
        Err(e) => format!("{e:#}"),
    };
    for p in parts {
        assert!(message.contains(p), "`{message}` does not mention `{p}`");
    }
}

fn load_all(dir: &Path) -> anyhow::Result<charaboard::pipeline::FluxModels> {
    charaboard::pipeline::FluxModels::load(dir, DType::F32, &Device::Cpu)
}

#[test]
fn missing_folder_and_components_are_named() {
    expect_error(
        load_all(Path::new("/nonexistent/flux")),
        &["/nonexistent/flux", "does not exist"],
    );
    let repo = tiny_repo(false);
    std::fs::remove_dir_all(repo.path().join("vae")).unwrap();
    expect_error(load_all(repo.path()), &["vae", "missing"]);
    let repo = tiny_repo(false);
    std::fs::remove_file(
        repo.path()
            .join("text_encoder_2/model-00002-of-00002.safetensors"),
    )
    .unwrap();
    expect_error(
        load_all(repo.path()),
        &["model-00002-of-00002.safetensors", "missing", "index.json"],
    );
    let repo = tiny_repo(false);
    std::fs::remove_file(repo.path().join("model_index.json")).unwrap();
    expect_error(load_all(repo.path()), &["model_index.json"]);
}

#[test]
fn truncated_shard_is_named() {
    let repo = tiny_repo(false);
    let shard = repo
        .path()
        .join("transformer/diffusion_pytorch_model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(
        load_all(repo.path()),
        &[
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "truncated or corrupt",
        ],
    );
}

/// Rewrites one tensor of a shard (or removes it when `replacement` is None).
fn rewrite_tensor(file: &Path, name: &str, replacement: Option<Tensor>) {
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    assert!(
        tensors.contains_key(name),
        "{name} is not in {}",
        file.display()
    );
    match replacement {
        Some(t) => tensors.insert(name.to_string(), t),
        None => tensors.remove(name),
    };
    candle_core::safetensors::save(&tensors, file).unwrap();
}

fn shard_with(repo: &Path, component: &str, name: &str) -> std::path::PathBuf {
    let layout = RepoLayout::open(repo).unwrap();
    let weights = match component {
        "transformer" => layout.transformer.weights,
        _ => layout.vae.weights,
    };
    let store = charaboard::models::TensorStore::open(&weights).unwrap();
    store.file_of(name).unwrap().to_path_buf()
}

#[test]
fn wrong_shape_names_tensor_file_expected_and_found() {
    let repo = tiny_repo(false);
    let name = "transformer_blocks.1.attn.to_k.weight";
    let file = shard_with(repo.path(), "transformer", name);
    rewrite_tensor(
        &file,
        name,
        Some(Tensor::zeros((64, 60), DType::F32, &Device::Cpu).unwrap()),
    );
    let file_name = file.file_name().unwrap().to_str().unwrap().to_string();
    expect_error(
        load_all(repo.path()),
        &[name, &file_name, "[64, 60]", "expected [64, 64]"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let repo = tiny_repo(false);
    let name = "single_transformer_blocks.2.proj_mlp.bias";
    let file = shard_with(repo.path(), "transformer", name);
    rewrite_tensor(&file, name, None);
    expect_error(
        load_all(repo.path()),
        &[name, "missing", "diffusion_pytorch_model-0000"],
    );
    let repo = tiny_repo(false);
    let name = "decoder.conv_norm_out.weight";
    let file = shard_with(repo.path(), "vae", name);
    rewrite_tensor(&file, name, None);
    expect_error(load_all(repo.path()), &[name, "missing", "vae"]);
}
