//! `recipe.numerics`: `exact` (f32) and `reference` (rounded where the authors' code rounds,
//! characonsist-spec.md §3, §4, §6), with known answers, and the record of it in every image's
//! files.

mod common;

use candle_core::{DType, Device, Tensor};
use charaboard::consist::mask::{reference_text_probs, Grid, MaskAccumulator, TextSpans};
use charaboard::consist::matching::normalize_rows;
use charaboard::consist::recipe::{Numerics, Recipe};
use charaboard::flux::attention::text_probs;
use common::ok;
use half::{bf16, f16};
use std::path::Path;

const TOKENS: usize = 8;
const LAYERS: usize = 5;

/// Per token, per head, the probabilities over four text tokens: the background span is the
/// first two, the foreground span the last two.
type Layer = [[[f32; 4]; 2]; TOKENS];

/// Hand-made maps of five layers over a 2 x 4 grid. Each token after the first two is a tie in
/// fp16 that f32 resolves towards the background (or a tie in both), made at a different
/// rounding point of the reference. Every input value is an fp16 number.
fn tie_layers() -> Vec<Layer> {
    let s = 2.9921875; // 3 - 2^-7: s/5 and (s + 2^-9)/5 round to the same fp16 number
    let mut first: Layer = [[[0.0; 4]; 2]; TOKENS];
    // 0: clearly foreground; 1: clearly background.
    first[0][0] = [0.125, 0.125, 0.375, 0.375];
    first[1][0] = [0.375, 0.375, 0.125, 0.125];
    // 2: the head sum 0.25 + 2^-14 rounds to 0.25.
    first[2] = [[0.25; 4], [2f32.powi(-14), 2f32.powi(-14), 0.0, 0.0]];
    // 3: a tie in f32 as well.
    first[3][0] = [0.25; 4];
    // 4: the running sum over layers, 1 + 2^-12 (added four times below), stays 1.
    first[4][0] = [1.0; 4];
    // 5: the sums differ by one fp16 step, their averages over 5 layers do not.
    first[5][0] = [s + 2f32.powi(-9), s + 2f32.powi(-9), s, s];
    // 6: the background span mean (0.5 + 2^-13) / 2 rounds to 0.25.
    first[6][0] = [0.5, 2f32.powi(-13), 0.25, 0.25];
    // 7: clearly foreground.
    first[7][0] = [0.0, 0.0, 0.5, 0.5];
    let mut later: Layer = [[[0.0; 4]; 2]; TOKENS];
    later[4][0] = [2f32.powi(-12), 2f32.powi(-12), 0.0, 0.0];
    std::iter::once(first)
        .chain(std::iter::repeat_n(later, LAYERS - 1))
        .collect()
}

/// One layer as the accumulator takes it: (1, heads, tokens, text tokens).
fn probs(layer: &Layer) -> Tensor {
    let mut v = Vec::new();
    for head in 0..2 {
        for token in layer {
            v.extend_from_slice(&token[head]);
        }
    }
    Tensor::from_vec(v, (1, 2, TOKENS, 4), &Device::Cpu).unwrap()
}

fn raw_mask(numerics: Numerics) -> Vec<bool> {
    let spans = TextSpans {
        bg_len: 2,
        real_len: 4,
    };
    let mut acc = MaskAccumulator::new(spans, numerics);
    for layer in tie_layers() {
        acc.add(&probs(&layer)).unwrap();
    }
    // Kernel side 1: the mask before erosion and dilation.
    acc.finish(Grid { rows: 2, cols: 4 }, 1, 1).unwrap()
}

#[test]
fn fp16_ties_go_to_the_foreground_under_reference_and_f32_decides_under_exact() {
    let (f, b) = (true, false);
    assert_eq!(raw_mask(Numerics::Exact), [f, b, b, f, b, b, b, f]);
    assert_eq!(raw_mask(Numerics::Reference), [f, b, f, f, f, f, f, f]);
}

#[test]
fn reference_probabilities_round_the_unscaled_logits_and_the_softmax_to_fp16() {
    let dev = Device::Cpu;
    // One image query against three text keys, head size 4: logits 2, 2 + 2^-11 and 0, unscaled.
    let q = Tensor::new(&[[[[2f32, 0.0, 0.0, 0.0]]]], &dev).unwrap();
    let k = Tensor::new(
        &[[[
            [1f32, 0.0, 0.0, 0.0],
            [1.0 + 2f32.powi(-12), 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]]],
        &dev,
    )
    .unwrap();
    let reference: Vec<f32> = reference_text_probs(&q, &k)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // 2 + 2^-11 is a quarter of an fp16 step above 2: both logits become 2. (Scaled by
    // 1/sqrt(4), they would be 1, 1 and 0.)
    let sum = 2.0 + (-2f32).exp();
    let expected = [1.0 / sum, 1.0 / sum, (-2f32).exp() / sum];
    for (r, e) in reference.iter().zip(expected) {
        assert_eq!(*r, f16::from_f32(e).to_f32());
    }
    let exact: Vec<f32> = text_probs(&q, &k)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(exact[1] > exact[0], "f32 keeps the two logits apart");
    // On random inputs the two agree to fp16 precision.
    let q = Tensor::randn(0f32, 0.3, (1, 3, 16, 8), &dev).unwrap();
    let k = Tensor::randn(0f32, 0.3, (1, 3, 5, 8), &dev).unwrap();
    let gap = (reference_text_probs(&q, &k).unwrap() - text_probs(&q, &k).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(gap < 2e-3, "{gap}");
}

#[test]
fn merge_weights_are_bf16_rounded_under_reference() {
    let reference = Recipe {
        numerics: Numerics::Reference,
        ..Recipe::default()
    }
    .schedule(50);
    let exact = Recipe::default().schedule(50);
    // bf16 of the spec's table (characonsist-spec.md §6), steps 11..=30.
    let table = [
        0.80078125,
        0.796875,
        0.78125,
        0.7578125,
        0.72265625,
        0.68359375,
        0.63671875,
        0.58203125,
        0.5234375,
        0.462890625,
        0.400390625,
        0.337890625,
        0.27734375,
        0.21875,
        0.1650390625,
        0.1171875,
        0.076171875,
        0.043701171875,
        0.01953125,
        0.004913330078125,
    ];
    for (step, alpha) in (11..=30).zip(table) {
        assert_eq!(reference.merge_alpha(step), alpha, "step {step}");
        let today = exact.merge_alpha(step);
        assert_ne!(today, alpha, "exact is unrounded at step {step}");
        assert_eq!(bf16::from_f32(today as f32).to_f64(), alpha);
    }
    for step in 1..=10 {
        assert_eq!(reference.merge_alpha(step), 0.80078125);
        assert_eq!(exact.merge_alpha(step), 0.8);
    }
    for step in [0, 31, 49] {
        assert_eq!(reference.merge_alpha(step), 0.0);
    }
}

#[test]
fn similarities_are_normalised_in_bf16_only_in_bf16_reference_runs() {
    let dev = Device::Cpu;
    let row = |dtype| {
        Tensor::new(&[[1f32, 1.0]], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let first = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    // |(1, 1)| = 1.41421356 becomes 1.4140625 in bf16, and 1 / 1.4140625 = 0.70718 becomes
    // 0.70703125.
    assert_eq!(
        first(normalize_rows(&row(DType::BF16), Numerics::Reference).unwrap()),
        0.70703125
    );
    let f32_quotient = std::f32::consts::FRAC_1_SQRT_2;
    for (dtype, numerics) in [
        (DType::BF16, Numerics::Exact),
        (DType::F32, Numerics::Reference),
        (DType::F32, Numerics::Exact),
    ] {
        let v = first(normalize_rows(&row(dtype), numerics).unwrap());
        assert!(
            (v - f32_quotient).abs() < 1e-7,
            "{dtype:?} {numerics:?}: {v}"
        );
    }
}

#[test]
fn exact_is_left_out_of_saved_files_and_reference_round_trips() {
    let sample = charaboard::project::sample();
    assert_eq!(sample.settings.recipe.numerics, Numerics::Exact);
    let saved = ron::to_string(&sample).unwrap();
    assert!(!saved.contains("numerics"), "{saved}");
    let reference = Recipe {
        numerics: Numerics::Reference,
        ..Recipe::default()
    };
    let text = ron::to_string(&reference).unwrap();
    assert!(text.contains("numerics:reference"), "{text}");
    assert_eq!(ron::from_str::<Recipe>(&text).unwrap(), reference);
    assert_eq!(
        ron::from_str::<Recipe>("(numerics: exact)").unwrap(),
        Recipe::default()
    );
}

const PROJECT: &str = r#"(
    title: "Numerics test",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [(environment: "on a rainy street at night,")],
    panels: [(scene: 0, action: "running with a parcel")],
    settings: (width: 128, height: 128, steps: Some(6), recipe: (erode: 1, dilate: 1)),
)"#;

/// The `numerics` entry of a dump's safetensors metadata.
fn dump_numerics(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    metadata.metadata().as_ref()?.get("numerics").cloned()
}

#[test]
fn render_numerics_override_the_project_and_are_recorded_in_keys_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("story.ron");
    std::fs::write(&project, PROJECT).unwrap();
    let render = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        ok(&common::render_cli(&project, &model, &out, extra));
        out
    };
    let exact = render("exact", &[]);
    let reference = render("reference", &["--numerics", "reference"]);
    assert_eq!(std::fs::read_to_string(&project).unwrap(), PROJECT);
    for stem in ["identity-take-001", "panel-01-take-001"] {
        let key =
            |dir: &Path| std::fs::read_to_string(dir.join(format!("{stem}.key.ron"))).unwrap();
        let dump = |dir: &Path| dump_numerics(&dir.join(format!("{stem}.safetensors")));
        assert!(!key(&exact).contains("numerics"), "{stem}");
        assert_eq!(dump(&exact), None, "{stem}: exact dumps are as before");
        assert!(key(&reference).contains("numerics: reference"), "{stem}");
        assert_eq!(dump(&reference).as_deref(), Some("reference"), "{stem}");
    }
    // The same algorithm: on this model no map is near a tie, so both roundings find the same
    // raw masks (no erosion or dilation here), mixed ones; the identity is plain FLUX either way.
    let dump = |dir: &Path, stem: &str| {
        candle_core::safetensors::load(dir.join(format!("{stem}.safetensors")), &Device::Cpu)
            .unwrap()
    };
    for stem in ["identity-take-001", "panel-01-take-001"] {
        let (e, r) = (dump(&exact, stem), dump(&reference, stem));
        let mask = |d: &std::collections::HashMap<String, Tensor>| -> Vec<u8> {
            d["fg_mask"].flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(mask(&e), mask(&r), "{stem}");
        let foreground = mask(&e).iter().filter(|&&m| m == 1).count();
        assert!(
            0 < foreground && foreground < 64,
            "{stem}: {foreground} of 64"
        );
    }
    let latents = |dir: &Path| -> Vec<f32> {
        dump(dir, "identity-take-001")["latents"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(latents(&exact), latents(&reference));
}
