//! `charaboard tiny-model --layout single-file` and `charaboard models` end to end, on a fake
//! Hugging Face cache that only the child process sees.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with every cache variable pointing into `home`, so that the machine's real
/// caches are never listed.
fn charaboard(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_charaboard"))
        .args(args)
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("HF_HOME", home.join("hf-home"))
        .env("XDG_CACHE_HOME", home.join("xdg"))
        .env("HOME", home)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "charaboard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn file_size(path: &Path) -> String {
    std::fs::metadata(path).unwrap().len().to_string()
}

#[test]
fn models_lists_cached_repositories_and_single_files() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--acme--FLUX.1-tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    charaboard(
        home.path(),
        &[
            "tiny-model",
            "--out",
            snapshot.to_str().unwrap(),
            "--seed",
            "1",
        ],
    );
    let loose = home.path().join("comfy/models");
    charaboard(
        home.path(),
        &[
            "tiny-model",
            "--out",
            loose.to_str().unwrap(),
            "--layout",
            "single-file",
        ],
    );
    for file in [
        "flux1-tiny.safetensors",
        "ae.safetensors",
        "t5xxl_tiny.safetensors",
        "clip_l_tiny.safetensors",
        "model.ron",
    ] {
        assert!(loose.join(file).is_file(), "{file} was not written");
    }

    let out = charaboard(
        home.path(),
        &[
            "models",
            "--in",
            home.path().join("comfy").to_str().unwrap(),
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line_of = |needle: &str| -> &str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{text}"))
    };
    assert!(line_of("acme/FLUX.1-tiny").contains("0123abcd"));
    let repo_transformer = line_of(&format!("{}", snapshot.join("transformer").display()));
    assert!(repo_transformer.contains("repo-diffusers"), "{text}");
    assert!(repo_transformer.contains("F32"), "{text}");
    let shards: u64 = charaboard::models::layout::weight_files(&snapshot.join("transformer"))
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        repo_transformer.contains(&format!(" {shards} bytes")),
        "{text}"
    );

    // The model file and the folder of loose files, each component with format and dtype.
    line_of(&format!("{}", loose.join("model.ron").display()));
    let transformer = line_of("flux1-tiny.safetensors");
    assert!(transformer.contains("single-file BFL"), "{text}");
    assert!(transformer.contains("BF16"), "{text}");
    let size = file_size(&loose.join("flux1-tiny.safetensors"));
    assert!(transformer.contains(&format!(" {size} bytes")), "{text}");
    assert!(line_of("t5xxl_tiny.safetensors").contains("F16"), "{text}");
    assert!(line_of("ae.safetensors").contains("F32"), "{text}");
    assert!(line_of("clip_l_tiny.safetensors").contains("single-file transformers"));
    assert!(!text.contains("incomplete"), "{text}");

    // The listed single files load and draw.
    let png = home.path().join("out.png");
    charaboard(
        home.path(),
        &[
            "generate",
            "--model",
            loose.join("model.ron").to_str().unwrap(),
            "--prompt",
            "a knight",
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "2",
            "--out",
            png.to_str().unwrap(),
        ],
    );
    assert!(png.is_file());
}
