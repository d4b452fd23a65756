//! Text encoders kept on the CPU or freed between jobs draw the same images, and every
//! component reports the bytes its weights take.

use candle_core::{DType, Device};
use charaboard::models::tiny;
use charaboard::pipeline::{generate, FluxModels, GenerateParams, NoiseSource};
use charaboard::sampler::StepControl;
use charaboard::text::TextOptions;
use image::RgbImage;

const SEED: u64 = 5;

fn draw(models: &mut FluxModels, prompt: &str) -> RgbImage {
    let params = GenerateParams {
        prompt: prompt.into(),
        width: 64,
        height: 64,
        steps: 2,
        guidance: 3.5,
        noise: NoiseSource::Seed(1),
    };
    generate(models, &params, None, &mut |_| Ok(StepControl::Continue))
        .unwrap()
        .unwrap()
        .image
}

#[test]
fn text_on_cpu_and_freed_encoders_draw_the_default_image() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), SEED, false).unwrap();
    let mut default = FluxModels::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let expected = draw(&mut default, "a knight");
    assert_eq!(default.text.loads(), 1);
    assert!(default.text.encoders().is_some(), "kept by default");

    let options = TextOptions {
        on_cpu: true,
        free_after_encoding: true,
    };
    let mut models = FluxModels::load_with(dir.path(), DType::F32, &Device::Cpu, options).unwrap();
    let encoders = models.text.encoders().expect("loaded up front");
    assert!(encoders.device().is_cpu());
    assert!(draw(&mut models, "a knight") == expected);
    assert!(
        models.text.encoders().is_none(),
        "freed after the job's prompts"
    );
    assert_eq!(models.text.loads(), 1);

    // The same prompt again needs no encoder; a new one reloads them.
    assert!(draw(&mut models, "a knight") == expected);
    assert_eq!(models.text.loads(), 1);
    let other = draw(&mut models, "a dragon");
    assert_eq!(models.text.loads(), 2);
    assert!(other == draw(&mut default, "a dragon"));
}

#[test]
fn component_bytes_are_the_loaded_weights() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), SEED, false).unwrap();
    let models = FluxModels::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let bytes = models.component_bytes();
    let names: Vec<&str> = bytes.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["transformer", "vae", "t5", "clip"]);
    for (name, b) in &bytes {
        assert!(*b > 0, "{name} has no bytes");
    }
    let cfg = tiny::flux_config(false);
    let transformer: usize = tiny::transformer_weights(&cfg, SEED)
        .unwrap()
        .values()
        .map(|t| t.elem_count() * 4)
        .sum();
    assert_eq!(
        bytes[0].1, transformer,
        "every f32 transformer weight, once"
    );
    let t5: usize = tiny::t5_weights(0)
        .unwrap()
        .values()
        .map(|t| t.elem_count() * 4)
        .sum();
    // T5's encoder reads every stored tensor but the unused `encoder.embed_tokens` copy, if any.
    assert!(
        bytes[2].1 <= t5 && bytes[2].1 * 2 > t5,
        "t5 {} of {t5}",
        bytes[2].1
    );
    eprintln!("{bytes:?}");

    let freed = FluxModels::load_with(
        dir.path(),
        DType::F32,
        &Device::Cpu,
        TextOptions {
            on_cpu: true,
            free_after_encoding: true,
        },
    )
    .unwrap();
    assert_eq!(
        freed.component_bytes(),
        bytes,
        "on the CPU, the CPU is the device"
    );
}
