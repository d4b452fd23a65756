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
    draw_32(home.path(), loose.join("model.ron").to_str().unwrap(), &png);
    assert!(png.is_file());
}

/// `charaboard generate` of a 32x32, 2-step knight from `model` into `png`, with `home`'s caches.
fn draw_32(home: &Path, model: &str, png: &Path) {
    charaboard(
        home,
        &[
            "generate",
            "--model",
            model,
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
}

/// A tiny repository in `home`'s fake cache as `acme/FLUX.1-tiny`.
fn cached_tiny(home: &Path) -> std::path::PathBuf {
    let repo = home.join("hub/models--acme--FLUX.1-tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    charaboard::models::tiny::write_repo(&snapshot, 1, false).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    snapshot
}

#[test]
fn generate_and_render_take_a_repository_id_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    cached_tiny(home.path());
    let png = home.path().join("out.png");
    draw_32(home.path(), "acme/FLUX.1-tiny", &png);
    assert!(png.is_file());

    // The id from --model, and the same id as the project's settings.model.
    let project = home.path().join("story.ron");
    let text = r#"(
        title: "id test",
        character: "a courier girl with a green jacket,",
        identity: (environment: "in an empty background,", action: "standing"),
        scenes: [(environment: "in an empty background,", lock_background: true)],
        panels: [(scene: 0, action: "waving")],
        settings: (model: Some("acme/FLUX.1-tiny"), width: 64, height: 64, steps: Some(4)),
    )"#;
    std::fs::write(&project, text).unwrap();
    for extra in [&["--model", "acme/FLUX.1-tiny"][..], &[]] {
        let out = home.path().join(format!("images-{}", extra.len()));
        let mut args = vec![
            "render",
            project.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        charaboard(home.path(), &args);
        assert!(out.join("panel-01-take-001.png").is_file());
    }
}

#[test]
fn models_lists_every_readable_model_and_says_why_the_others_are_not() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("models");
    // A repository whose transformer shard is cut in half, before good models (by name).
    let broken = root.join("a-broken-repo");
    charaboard::models::tiny::write_repo(&broken, 1, false).unwrap();
    let shard = broken.join("transformer/diffusion_pytorch_model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let good = root.join("b-good-repo");
    charaboard::models::tiny::write_repo(&good, 1, false).unwrap();
    let loose = root.join("c-loose");
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
    // A corrupt checkpoint among the loose files, a model file naming a missing file, and a
    // storyboard, which is RON but no model file and goes unmentioned.
    std::fs::write(loose.join("junk.safetensors"), b"not a safetensors file").unwrap();
    std::fs::write(
        loose.join("missing.ron"),
        "(transformer: \"gone.safetensors\", vae: \"ae.safetensors\", t5: \"t5xxl_tiny.safetensors\", clip: \"clip_l_tiny.safetensors\")",
    )
    .unwrap();
    std::fs::write(loose.join("story.ron"), "(title: \"a storyboard\")").unwrap();

    let out = charaboard(home.path(), &["models", "--in", root.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let line_of = |needle: &str| -> &str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{text}"))
    };
    assert!(line_of(&good.join("transformer").display().to_string()).contains("repo-diffusers"));
    assert!(line_of("flux1-tiny.safetensors").contains("single-file BFL"));
    line_of(&loose.join("model.ron").display().to_string());

    let unreadable: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("unreadable"))
        .collect();
    assert_eq!(unreadable.len(), 3, "{text}");
    let why = |path: &Path, because: &str| {
        let line = line_of(&format!("unreadable  {}:", path.display()));
        assert!(line.contains(because), "{line}");
    };
    why(&broken, "truncated or corrupt");
    why(
        &loose.join("junk.safetensors"),
        "not a readable safetensors file",
    );
    why(&loose.join("missing.ron"), "does not exist");
    assert!(!text.contains("story.ron"), "{text}");
}
