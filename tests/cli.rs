//! The `charaboard` binary end to end on tiny checkpoints.

use std::path::Path;
mod common;

use common::{charaboard, generate, ok};

fn tiny_model(dir: &Path, schnell: bool) -> String {
    let model = dir.join(if schnell { "schnell" } else { "dev" });
    let mut args = vec![
        "tiny-model",
        "--out",
        model.to_str().unwrap(),
        "--seed",
        "3",
    ];
    if schnell {
        args.push("--schnell");
    }
    ok(&charaboard(&args));
    model.to_str().unwrap().to_string()
}

#[test]
fn tiny_model_then_generate_writes_a_png_of_the_requested_size_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    for schnell in [false, true] {
        let model = tiny_model(dir.path(), schnell);
        let a = dir.path().join(format!("a-{schnell}.png"));
        let b = dir.path().join(format!("b-{schnell}.png"));
        let size = [
            "--width", "96", "--height", "64", "--steps", "3", "--seed", "9",
        ];
        ok(&generate(&model, &a, &size));
        ok(&generate(&model, &b, &size));
        let img = image::open(&a).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64));
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "same seed, same bytes"
        );
        let c = dir.path().join(format!("c-{schnell}.png"));
        ok(&generate(
            &model,
            &c,
            &[
                "--width", "96", "--height", "64", "--steps", "3", "--seed", "10",
            ],
        ));
        assert_ne!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&c).unwrap(),
            "another seed, another image"
        );
    }
}

#[test]
fn noise_file_replaces_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), false);
    let noise = charaboard::sampler::seeded_noise(9, 64, 64).unwrap();
    let noise_file = dir.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise", noise)]),
        &noise_file,
    )
    .unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    ok(&generate(
        &model,
        &a,
        &[
            "--width", "64", "--height", "64", "--steps", "2", "--seed", "9",
        ],
    ));
    ok(&generate(
        &model,
        &b,
        &[
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--noise",
            noise_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // A noise file of the wrong shape is refused and named.
    let out = generate(
        &model,
        &b,
        &[
            "--width",
            "128",
            "--height",
            "64",
            "--steps",
            "2",
            "--noise",
            noise_file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("noise.safetensors") && err.contains("[1, 16, 8, 16]"),
        "{err}"
    );
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), false);
    let out_file = dir.path().join("never.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--width", "100", "--height", "64"],
            "width must be a multiple of 16 from 16 to 4096, found 100",
        ),
        (
            vec!["--width", "64", "--height", "0"],
            "height must be a multiple of 16 from 16 to 4096, found 0",
        ),
        (
            vec!["--width", "64", "--height", "64", "--steps", "0"],
            "steps must be from 1 to 1000, found 0",
        ),
    ];
    for (args, message) in cases {
        let out = generate(&model, &out_file, &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{err}");
        assert!(!out_file.exists());
    }
    let missing = dir.path().join("no-such-model");
    let out = generate(
        missing.to_str().unwrap(),
        &out_file,
        &["--width", "64", "--height", "64"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));
    assert!(!out_file.exists());
}
