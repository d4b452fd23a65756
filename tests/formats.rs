//! Single-file checkpoints (as ComfyUI keeps them) are told apart by their tensor names, their
//! configs are inferred from tensor shapes, and they draw the same images as the repository layout.

mod common;

use candle_core::{DType, Device, Tensor};
use charaboard::flux::config::from_diffusers_json;
use charaboard::models::configs::{self, ClipJsonConfig};
use charaboard::models::formats::{FileKind, COMFY_PREFIX};
use charaboard::models::infer::{self, Shapes};
use charaboard::models::source::classify;
use charaboard::models::tiny_files::{self, FileDtypes};
use charaboard::models::{tiny, ModelSource, RepoLayout, TensorStore};
use charaboard::pipeline::FluxModels;
use common::{assert_mentions, draw, error_of, mean_abs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SEED: u64 = 11;

/// Mean absolute difference per 8-bit channel allowed between the repository layout (all f32)
/// and the download-style single files (transformer bf16, T5 f16). These round every weight to
/// 8 or 11 mantissa bits (relative error up to 2^-9 and 2^-12); through 4 steps of the tiny
/// random model and its VAE that moved the 64x64 images by 0.17 levels on average when measured
/// (dev and schnell). One level leaves room for other platforms' rounding while staying far
/// below what a wrong tensor does: the test checks that another seed's weights differ by more
/// than ten times the tolerance.
const DOWNLOADS_MEAN_ABS_TOLERANCE: f64 = 1.0;

fn f32_single_files(out: &Path, schnell: bool) {
    tiny_files::write_single_files(out, SEED, schnell, FileDtypes::F32).unwrap();
}

#[test]
fn single_files_draw_the_repository_image() {
    for schnell in [false, true] {
        let repo = tempfile::tempdir().unwrap();
        tiny::write_repo(repo.path(), SEED, schnell).unwrap();
        let expected = draw(repo.path(), 3);

        let exact = tempfile::tempdir().unwrap();
        f32_single_files(exact.path(), schnell);
        assert!(
            draw(exact.path(), 3) == expected,
            "f32 single files must give the repository's image byte for byte"
        );
        assert!(draw(&exact.path().join(tiny_files::MODEL_FILE), 3) == expected);

        let downloads = tempfile::tempdir().unwrap();
        tiny_files::write_single_files(downloads.path(), SEED, schnell, FileDtypes::DOWNLOADS)
            .unwrap();
        let image = draw(&downloads.path().join(tiny_files::MODEL_FILE), 3);
        let diff = mean_abs(&image, &expected);
        assert!(
            diff <= DOWNLOADS_MEAN_ABS_TOLERANCE,
            "bf16/f16 single files differ from the repository image by {diff:.3} levels on average"
        );
        let other = tempfile::tempdir().unwrap();
        tiny::write_repo(other.path(), SEED + 1, schnell).unwrap();
        let other_diff = mean_abs(&draw(other.path(), 3), &expected);
        assert!(
            other_diff > 10.0 * DOWNLOADS_MEAN_ABS_TOLERANCE,
            "another seed's weights differ by only {other_diff:.3} levels"
        );
        eprintln!("schnell {schnell}: bf16/f16 files {diff:.3} levels from the repository image, another seed {other_diff:.3}");
    }
}

#[test]
fn fp8_transformer_is_upcast_on_load() {
    let dir = tempfile::tempdir().unwrap();
    f32_single_files(dir.path(), false);
    let file = dir.path().join(tiny_files::TRANSFORMER_FILE);
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F8E4M3).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let name = format!("{COMFY_PREFIX}img_in.weight");
    let store = TensorStore::open(std::slice::from_ref(&file)).unwrap();
    let loaded = store.load(&name, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.dtype(), DType::F32);
    let direct = tensors[&name].to_dtype(DType::F32).unwrap();
    let same = loaded
        .eq(&direct)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(same, 1.0, "fp8 values are exact in f32");
    let image = draw(dir.path(), 3);
    assert_eq!(image.dimensions(), (64, 64));
}

#[test]
fn files_are_recognised_by_tensor_names_not_file_names() {
    let dir = tempfile::tempdir().unwrap();
    f32_single_files(dir.path(), true);
    std::fs::remove_file(dir.path().join(tiny_files::MODEL_FILE)).unwrap();
    // Names that say nothing, in an order that is not the roles' order.
    let renames = [
        (tiny_files::CLIP_FILE, "a.safetensors"),
        (tiny_files::VAE_FILE, "b.safetensors"),
        (tiny_files::TRANSFORMER_FILE, "c.safetensors"),
        (tiny_files::T5_FILE, "d.safetensors"),
    ];
    for (from, to) in renames {
        std::fs::rename(dir.path().join(from), dir.path().join(to)).unwrap();
    }
    let p = |n: &str| dir.path().join(n);
    assert_eq!(classify(&p("a.safetensors")).unwrap(), FileKind::ClipText);
    assert_eq!(classify(&p("b.safetensors")).unwrap(), FileKind::VaeBfl);
    assert_eq!(
        classify(&p("c.safetensors")).unwrap(),
        FileKind::FluxBfl {
            prefix: COMFY_PREFIX.into()
        }
    );
    assert_eq!(classify(&p("d.safetensors")).unwrap(), FileKind::T5Encoder);
    match ModelSource::detect(dir.path()).unwrap() {
        ModelSource::Files(files) => {
            assert_eq!(files.clip, p("a.safetensors"));
            assert_eq!(files.vae, p("b.safetensors"));
            assert_eq!(files.transformer, p("c.safetensors"));
            assert_eq!(files.t5, p("d.safetensors"));
        }
        ModelSource::Repo(_) => panic!("a folder of single files is not a repository"),
    }
    // A diffusers transformer shard is recognised as such.
    let repo = tempfile::tempdir().unwrap();
    tiny::write_repo(repo.path(), SEED, true).unwrap();
    let layout = RepoLayout::open(repo.path()).unwrap();
    let kinds: Vec<FileKind> = layout
        .transformer
        .weights
        .iter()
        .filter_map(|f| classify(f).ok())
        .collect();
    assert!(kinds.contains(&FileKind::FluxDiffusers), "{kinds:?}");
}

#[test]
fn other_files_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("lora.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = [
        ("lora_unet_down.alpha".to_string(), t.clone()),
        ("lora_unet_up.weight".to_string(), t),
    ]
    .into();
    candle_core::safetensors::save(&tensors, &junk).unwrap();
    assert_mentions(
        &error_of(classify(&junk)),
        &[
            "lora.safetensors",
            "not a FLUX.1, VAE, T5 or CLIP checkpoint",
            "lora_unet_down.alpha",
        ],
    );
    // Another model's file: the diffusers VAE (not BFL's ae.safetensors).
    let repo = tempfile::tempdir().unwrap();
    tiny::write_repo(repo.path(), SEED, true).unwrap();
    let vae = RepoLayout::open(repo.path()).unwrap().vae.weights[0].clone();
    assert_mentions(
        &error_of(classify(&vae)),
        &[
            "diffusion_pytorch_model.safetensors",
            "not a FLUX.1, VAE, T5 or CLIP checkpoint",
            "decoder.",
        ],
    );
    // A folder with the junk file and no model names every missing role and what to download.
    let message = error_of(FluxModels::load(dir.path(), DType::F32, &Device::Cpu));
    assert_mentions(
        &message,
        &[
            "no transformer file",
            "flux1-dev.safetensors",
            "no vae file",
            "ae.safetensors",
            "no t5 file",
            "no clip file",
            "skipped",
            "lora.safetensors",
        ],
    );
    // A model file that names a component as another role.
    let files = tempfile::tempdir().unwrap();
    f32_single_files(files.path(), true);
    let ron = files.path().join("swapped.ron");
    std::fs::write(
        &ron,
        format!(
            "(transformer: \"{}\", vae: \"{}\", t5: \"{}\", clip: \"{}\")",
            tiny_files::TRANSFORMER_FILE,
            tiny_files::VAE_FILE,
            tiny_files::CLIP_FILE,
            tiny_files::T5_FILE
        ),
    )
    .unwrap();
    assert_mentions(
        &error_of(ModelSource::detect(&ron)),
        &["swapped.ron", tiny_files::CLIP_FILE, "as the t5", "clip"],
    );
    // One file on its own is not a model.
    assert_mentions(
        &error_of(ModelSource::detect(
            &files.path().join(tiny_files::TRANSFORMER_FILE),
        )),
        &["needs four", ".ron"],
    );
}

#[test]
fn inferred_configs_equal_the_repository_configs() {
    for schnell in [false, true] {
        let repo = tempfile::tempdir().unwrap();
        tiny::write_repo(repo.path(), SEED, schnell).unwrap();
        let layout = RepoLayout::open(repo.path()).unwrap();
        let files = tempfile::tempdir().unwrap();
        f32_single_files(files.path(), schnell);
        let open = |name: &str| -> (PathBuf, TensorStore) {
            let path = files.path().join(name);
            let store = TensorStore::open(std::slice::from_ref(&path)).unwrap();
            (path, store)
        };

        let expected = format!(
            "{:?}",
            from_diffusers_json(&layout.transformer.config).unwrap()
        );
        let (path, store) = open(tiny_files::TRANSFORMER_FILE);
        let kind = classify(&path).unwrap();
        let inferred = infer::flux_config(&Shapes::new(&path, &store, &kind)).unwrap();
        assert_eq!(format!("{inferred:?}"), expected);
        assert_eq!(inferred.guidance_embed, !schnell);
        assert_eq!(inferred.axes_dim, vec![8, 12, 12]);
        let shards = TensorStore::open(&layout.transformer.weights).unwrap();
        let from_diffusers = infer::flux_config(&Shapes::new(
            &layout.transformer.dir,
            &shards,
            &FileKind::FluxDiffusers,
        ))
        .unwrap();
        assert_eq!(format!("{from_diffusers:?}"), expected);

        let mut vae_expected = configs::vae_from_json(&layout.vae.config).unwrap();
        let (path, store) = open(tiny_files::VAE_FILE);
        let vae = infer::vae_config(&Shapes::new(&path, &store, &FileKind::VaeBfl)).unwrap();
        // The resolution is in no tensor and unused by the decoder; the rest must match.
        vae_expected.resolution = vae.resolution;
        assert_eq!(format!("{vae:?}"), format!("{vae_expected:?}"));

        let t5_text = std::fs::read_to_string(&layout.text_encoder_2.config).unwrap();
        let t5_expected: candle_transformers::models::t5::Config =
            serde_json::from_str(&t5_text).unwrap();
        let (path, store) = open(tiny_files::T5_FILE);
        let t5 = infer::t5_config(&Shapes::new(&path, &store, &FileKind::T5Encoder)).unwrap();
        assert_eq!(t5, t5_expected);

        let clip_text = std::fs::read_to_string(&layout.text_encoder.config).unwrap();
        let clip_expected: ClipJsonConfig = serde_json::from_str(&clip_text).unwrap();
        let (path, store) = open(tiny_files::CLIP_FILE);
        let clip = infer::clip_config(&Shapes::new(&path, &store, &FileKind::ClipText)).unwrap();
        assert_eq!(format!("{clip:?}"), format!("{clip_expected:?}"));
    }
}

#[test]
fn rope_axes_rule_gives_flux_and_tiny_axes() {
    assert_eq!(infer::axes_for_head_dim(128), vec![16, 56, 56]);
    assert_eq!(infer::axes_for_head_dim(32), vec![8, 12, 12]);
}

#[test]
fn diffusers_named_single_file_transformer_draws_the_repository_image() {
    let repo = tempfile::tempdir().unwrap();
    tiny::write_repo(repo.path(), SEED, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    f32_single_files(dir.path(), false);
    std::fs::remove_file(dir.path().join(tiny_files::MODEL_FILE)).unwrap();
    std::fs::remove_file(dir.path().join(tiny_files::TRANSFORMER_FILE)).unwrap();
    // The repository's two diffusers shards merged into one file, as some tools export it.
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for shard in RepoLayout::open(repo.path()).unwrap().transformer.weights {
        merged.extend(candle_core::safetensors::load(&shard, &Device::Cpu).unwrap());
    }
    let file = dir.path().join("flux-diffusers.safetensors");
    candle_core::safetensors::save(&merged, &file).unwrap();
    assert_eq!(classify(&file).unwrap(), FileKind::FluxDiffusers);
    assert!(draw(dir.path(), 3) == draw(repo.path(), 3));
}
