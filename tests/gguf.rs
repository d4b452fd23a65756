//! GGUF transformers (city96-style: BFL names, quantized matrices, F32 norms and biases) load
//! into the hookable model, draw close to the dense weights they were quantized from, run
//! CharaConsist, and are refused with a named error when they cannot run.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use charaboard::consist::plan::{PlanModel, RenderRequest};
use charaboard::consist::session::{RenderEvent, RenderOptions, Renderer};
use charaboard::flux::{rope, Flux, FluxConfig, StepInput, TokenLayout};
use charaboard::models::formats::FileKind;
use charaboard::models::gguf::{self, city96_quant, GgufHeader};
use charaboard::models::source::classify;
use charaboard::models::tiny_files::{self, GGUF_TRANSFORMER_FILE, MODEL_FILE};
use charaboard::models::{inventory, tiny, ModelSource};
use charaboard::pipeline::FluxModels;
use charaboard::sampler::StepControl;
use common::{assert_mentions, charaboard, draw, error_of, knight_project, mean_abs, ok};
use std::collections::BTreeMap;
use std::path::Path;

const SEED: u64 = 11;

/// Mean absolute difference per 8-bit channel allowed between a GGUF model's 64x64 image and
/// the dense (f32) repository's, same seed and noise, 4 steps. Measured on the tiny random
/// model: Q8_0 0.68 levels (dev) and 0.65 (schnell), Q4_0 7.7 and 7.1, another seed's weights
/// 65.8 and 65.1. Q8_0 stores 8 bits per weight and Q4_0 4 bits (a scale per 32 each), and
/// candle's CPU kernels also round the activations to 8 bits, so Q4_0 lands about 11x further
/// off. The bounds are about twice the measurements, and a wrong tensor (another seed) is still
/// more than 3x the Q4_0 bound and 40x the Q8_0 bound away.
const Q8_0_MEAN_ABS_TOLERANCE: f64 = 1.5;
const Q4_0_MEAN_ABS_TOLERANCE: f64 = 15.0;

/// Relative L2 error of one transformer forward, quantized vs dense weights on the same
/// inputs. Measured: Q8_0 0.0223, Q4_0 0.214, an all-F32 GGUF 0 (the same f32 arithmetic, so
/// the names, shapes and biases are right), Q8_0 in a bf16 run vs the dense bf16 run 0.0238.
/// The random model amplifies rounding through its 6 blocks more than a trained one would.
const Q8_0_FORWARD_REL_TOLERANCE: f64 = 0.05;
const Q4_0_FORWARD_REL_TOLERANCE: f64 = 0.4;
const F32_FORWARD_REL_TOLERANCE: f64 = 1e-6;
const BF16_FORWARD_REL_TOLERANCE: f64 = 0.05;

fn gguf_model(quant: GgmlDType, schnell: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny_files::write_gguf_files(dir.path(), SEED, schnell, quant).unwrap();
    dir
}

#[test]
fn quantized_models_draw_close_to_the_dense_image() {
    for schnell in [false, true] {
        let repo = tempfile::tempdir().unwrap();
        tiny::write_repo(repo.path(), SEED, schnell).unwrap();
        let dense = draw(repo.path(), 3);

        let q8 = gguf_model(GgmlDType::Q8_0, schnell);
        let q8_diff = mean_abs(&draw(&q8.path().join(MODEL_FILE), 3), &dense);
        let q4 = gguf_model(GgmlDType::Q4_0, schnell);
        let q4_diff = mean_abs(&draw(q4.path(), 3), &dense);
        let other_seed = mean_abs(&draw(repo.path(), 4), &dense);
        eprintln!(
            "schnell {schnell}: Q8_0 {q8_diff:.3}, Q4_0 {q4_diff:.3}, another seed {other_seed:.3} levels from the dense image"
        );
        assert!(
            q8_diff <= Q8_0_MEAN_ABS_TOLERANCE,
            "Q8_0 is {q8_diff:.3} levels off"
        );
        assert!(
            q4_diff <= Q4_0_MEAN_ABS_TOLERANCE,
            "Q4_0 is {q4_diff:.3} levels off"
        );
        assert!(
            4.0 * q8_diff < q4_diff,
            "Q8_0 ({q8_diff:.3}) must be much closer than Q4_0 ({q4_diff:.3})"
        );
        assert!(
            other_seed > 3.0 * Q4_0_MEAN_ABS_TOLERANCE,
            "another seed differs by only {other_seed:.3} levels"
        );
    }
}

const IMG_H: usize = 4;
const IMG_W: usize = 6;
const TXT: usize = 7;

/// One forward of `flux` on fixed random inputs in `dtype`, as f32.
fn forward(flux: &Flux, dtype: DType) -> Tensor {
    let dev = Device::Cpu;
    let cfg = flux.config();
    let randn = |shape: (usize, usize, usize)| {
        let n = shape.0 * shape.1 * shape.2;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        Tensor::from_vec(values, shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let img = randn((1, IMG_H * IMG_W, cfg.in_channels));
    let txt = randn((1, TXT, cfg.context_in_dim));
    let pooled = randn((1, 1, cfg.vec_in_dim)).squeeze(1).unwrap();
    let img_ids = rope::image_ids(IMG_H, IMG_W, dtype, &dev).unwrap();
    let txt_ids = Tensor::zeros((1, TXT, 3), dtype, &dev).unwrap();
    let rope = flux.rope_table(&txt_ids, &img_ids).unwrap();
    let input = StepInput {
        img: &img,
        txt: &txt,
        pooled: &pooled,
        rope: &rope,
        layout: TokenLayout {
            txt_len: TXT,
            img_h: IMG_H,
            img_w: IMG_W,
        },
    };
    let t = Tensor::new(&[0.7f32], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let g = Tensor::new(&[3.5f32], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let out = flux.forward(&input, &t, Some(&g), 0, None).unwrap();
    assert_eq!(out.dtype(), dtype);
    out.to_dtype(DType::F32).unwrap()
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| -> f64 {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    norm(&(a - b).unwrap()) / norm(b)
}

#[test]
fn quantized_forward_is_close_to_the_dense_forward() {
    let cfg: FluxConfig = tiny::flux_config(false);
    let weights = tiny::transformer_weights(&cfg, SEED).unwrap();
    let vb = VarBuilder::from_tensors(
        weights.clone().into_iter().collect(),
        DType::F32,
        &Device::Cpu,
    );
    let dense_flux = Flux::new(&cfg, vb.clone()).unwrap();
    let dense = forward(&dense_flux, DType::F32);
    let vb16 = VarBuilder::from_tensors(
        weights.clone().into_iter().collect(),
        DType::BF16,
        &Device::Cpu,
    );
    let dense_bf16 = forward(&Flux::new(&cfg, vb16).unwrap(), DType::BF16);
    let dir = tempfile::tempdir().unwrap();
    let mut bytes_of = Vec::new();
    for (quant, tolerance) in [
        (GgmlDType::F32, F32_FORWARD_REL_TOLERANCE),
        (GgmlDType::Q8_0, Q8_0_FORWARD_REL_TOLERANCE),
        (GgmlDType::Q4_0, Q4_0_FORWARD_REL_TOLERANCE),
    ] {
        let path = dir.path().join(format!("{quant:?}.gguf"));
        gguf::write(&path, &weights, city96_quant(quant)).unwrap();
        let (flux, bytes) = gguf::load_transformer(&path, DType::F32, &Device::Cpu).unwrap();
        bytes_of.push(bytes);
        assert_eq!(
            format!("{:?}", flux.config()),
            format!("{cfg:?}"),
            "config inferred from the GGUF header"
        );
        let err = relative_error(&forward(&flux, DType::F32), &dense);
        eprintln!("{quant:?}: relative error {err:.5}");
        assert!(err <= tolerance, "{quant:?}: relative error {err}");
    }
    // Matrices take 4 bytes a value in F32, 34/32 in Q8_0 and 18/32 in Q4_0; norms and biases
    // stay f32.
    let f32_bytes: usize = weights.values().map(|t| t.elem_count() * 4).sum();
    assert_eq!(bytes_of[0], f32_bytes);
    assert!(bytes_of[1] * 3 < f32_bytes, "Q8_0 {bytes_of:?}");
    assert!(bytes_of[2] < bytes_of[1] * 2 / 3, "Q4_0 {bytes_of:?}");
    // A quantized model inside a bf16 pipeline: inputs are cast for the quantized matmuls and
    // back, so the output is bf16 and near the dense model's run in bf16. (Not near the f32 run:
    // the tiny random model is 0.54 away from it in bf16, dense or quantized, mostly from the
    // timestep embedding of t*1000 in bf16.)
    let path = dir.path().join("Q8_0.gguf");
    let (flux, _) = gguf::load_transformer(&path, DType::BF16, &Device::Cpu).unwrap();
    let err = relative_error(&forward(&flux, DType::BF16), &dense_bf16);
    eprintln!("Q8_0 in bf16: relative error {err:.5} to dense bf16");
    assert!(
        err <= BF16_FORWARD_REL_TOLERANCE,
        "Q8_0 in bf16: relative error {err}"
    );
}

#[test]
fn every_matrix_is_quantized_and_the_rest_is_f32() {
    for quant in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let dir = gguf_model(quant, false);
        let path = dir.path().join(GGUF_TRANSFORMER_FILE);
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        assert!(!content.tensor_infos.is_empty());
        for (name, info) in &content.tensor_infos {
            let expected = match info.shape.rank() {
                2 => quant,
                _ => GgmlDType::F32,
            };
            assert_eq!(info.ggml_dtype, expected, "{name} {:?}", info.shape);
        }
        assert_eq!(
            classify(&path).unwrap(),
            FileKind::FluxGguf {
                prefix: String::new()
            }
        );
        let header = GgufHeader::read(&path).unwrap();
        assert_eq!(header.stored_dtypes()[0].0, format!("{quant:?}"));
    }
}

#[test]
fn gguf_folders_load_and_are_listed() {
    let dir = gguf_model(GgmlDType::Q8_0, false);
    match ModelSource::detect(dir.path()).unwrap() {
        ModelSource::Files(files) => {
            assert_eq!(files.transformer, dir.path().join(GGUF_TRANSFORMER_FILE))
        }
        other => panic!("expected single files, got {other:?}"),
    }
    let found = inventory::in_dir(dir.path()).unwrap().found;
    assert!(!found.is_empty());
    for model in &found {
        assert!(model.complete, "{}", model.name);
        let transformer = &model.components[0];
        assert_eq!(transformer.role.name(), "transformer");
        assert_eq!(transformer.format, "gguf");
        assert_eq!(transformer.dtype, "Q8_0+F32");
        assert_eq!(
            transformer.bytes,
            std::fs::metadata(dir.path().join(GGUF_TRANSFORMER_FILE))
                .unwrap()
                .len()
        );
    }
}

#[test]
fn tiny_model_command_writes_a_gguf_layout() {
    let dir = tempfile::tempdir().unwrap();
    ok(&charaboard(&[
        "tiny-model",
        "--layout",
        "gguf",
        "--quant",
        "q4_0",
        "--out",
        dir.path().to_str().unwrap(),
    ]));
    let header = GgufHeader::read(&dir.path().join(GGUF_TRANSFORMER_FILE)).unwrap();
    assert_eq!(header.stored_dtypes()[0].0, "Q4_0");
    assert!(ModelSource::detect(&dir.path().join(MODEL_FILE)).is_ok());
}

#[test]
fn characonsist_renders_on_a_gguf_model() {
    let dir = gguf_model(GgmlDType::Q8_0, false);
    let mut models = FluxModels::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let mut project = knight_project(
        vec![(0, "running")],
        vec![("on a stone bridge over a river,", false)],
    );
    project.settings.steps = Some(4);
    let mut finished = Vec::new();
    let plan = charaboard::project::plan(&project, &PlanModel::of(&models), None).unwrap();
    Renderer::default()
        .render(
            &mut models,
            &plan,
            RenderRequest::All,
            &RenderOptions::default(),
            &mut |e| {
                if let RenderEvent::Finished { output: out, .. } = e {
                    assert_eq!(out.image.dimensions(), (128, 128));
                    finished.push(out.target);
                }
                StepControl::Continue
            },
        )
        .unwrap();
    assert_eq!(
        finished.len(),
        2,
        "the identity and the panel: {finished:?}"
    );
}

/// Writes the tiny transformer as a Q8_0 GGUF after `edit` changed its tensors or `quant`.
fn edited_gguf(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>),
    quant: impl Fn(&str, &Tensor) -> GgmlDType,
) {
    let mut weights = tiny::transformer_weights(&tiny::flux_config(false), SEED).unwrap();
    edit(&mut weights);
    gguf::write(path, &weights, quant).unwrap();
}

#[test]
fn unusable_gguf_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let load = |path: &Path| gguf::load_transformer(path, DType::F32, &Device::Cpu);
    let file = |name: &str| dir.path().join(name);

    let q2k = "double_blocks.0.img_mlp.2.weight";
    edited_gguf(
        &file("q2k.gguf"),
        |_| {},
        |name, t| match name == q2k {
            true => GgmlDType::Q2K,
            false => city96_quant(GgmlDType::Q8_0)(name, t),
        },
    );
    assert_mentions(
        &error_of(load(&file("q2k.gguf"))),
        &[
            "GGUF quantization Q2K",
            q2k,
            "q2k.gguf",
            "not supported",
            "Q4_0",
        ],
    );

    let llama = file("llama.gguf");
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "token_embd.weight".to_string(),
        Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    gguf::write(&llama, &tensors, |_, _| GgmlDType::F32).unwrap();
    for message in [error_of(load(&llama)), error_of(classify(&llama))] {
        assert_mentions(
            &message,
            &[
                "llama.gguf",
                "not a FLUX.1 transformer",
                "token_embd.weight",
            ],
        );
    }

    let proj = "double_blocks.1.img_attn.proj.weight";
    edited_gguf(
        &file("shape.gguf"),
        |w| {
            let t = w[proj].narrow(1, 0, 32).unwrap();
            w.insert(proj.into(), t);
        },
        city96_quant(GgmlDType::Q8_0),
    );
    assert_mentions(
        &error_of(load(&file("shape.gguf"))),
        &[proj, "shape.gguf", "[64, 32]", "expected [64, 64]"],
    );

    let modulation = "single_blocks.3.modulation.lin.weight";
    edited_gguf(
        &file("missing.gguf"),
        |w| {
            w.remove(modulation);
        },
        city96_quant(GgmlDType::Q8_0),
    );
    assert_mentions(
        &error_of(load(&file("missing.gguf"))),
        &[modulation, "missing.gguf", "missing", "[192, 64]"],
    );
}
