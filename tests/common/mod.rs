//! Helpers shared by the integration tests. Each test binary uses a subset of them.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use charaboard::consist::plan::{PlanModel, RenderRequest};
use charaboard::consist::session::{
    BankMode, ImageOutput, Outcome, RenderEvent, RenderOptions, Renderer,
};
use charaboard::pipeline::{FluxModels, GenerateParams, NoiseSource};
use charaboard::project::model::{Character, IdentityShot, Panel, Project, RenderSettings, Scene};
use charaboard::sampler::StepControl;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `charaboard` binary built for these tests.
pub fn charaboard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charaboard"))
        .args(args)
        .output()
        .expect("runs")
}

/// `charaboard generate` of "a knight in a forest" with `model` into `out`, and `extra` flags.
pub fn generate(model: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "a knight in a forest",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    charaboard(&args)
}

/// `charaboard tiny-model --out DIR/model` (the dev-style model, seed 0); the model's folder.
pub fn tiny_model_cli(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    ok(&charaboard(&[
        "tiny-model",
        "--out",
        model.to_str().unwrap(),
    ]));
    model
}

/// `charaboard render PROJECT --model MODEL --out OUT EXTRA...`, not checked.
pub fn render_cli(project: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "render",
        project.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    charaboard(&args)
}

/// Asserts that a run succeeded, showing its stderr if not.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64x64, 4-step image of the model at `model` (any layout), from noise of `seed`.
pub fn draw(model: &Path, seed: u64) -> RgbImage {
    let mut models = FluxModels::load(model, DType::F32, &Device::Cpu).unwrap();
    let params = GenerateParams {
        prompt: "a knight in a forest".into(),
        width: 64,
        height: 64,
        steps: 4,
        guidance: 3.5,
        noise: NoiseSource::Seed(seed),
    };
    charaboard::pipeline::generate(&mut models, &params, None, &mut |_| {
        Ok(StepControl::Continue)
    })
    .unwrap()
    .unwrap()
    .image
}

/// Mean absolute difference per 8-bit channel.
pub fn mean_abs(a: &RgbImage, b: &RgbImage) -> f64 {
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    total as f64 / a.as_raw().len() as f64
}

/// A tiny dev-style model in the Hugging Face layout under `dir/model`, and the same loaded.
pub fn tiny_models(dir: &Path) -> (std::path::PathBuf, FluxModels) {
    let path = dir.join("model");
    charaboard::models::tiny::write_repo(&path, 21, false).unwrap();
    let models = FluxModels::load(&path, DType::F32, &Device::Cpu).unwrap();
    (path, models)
}

/// The message of the error `r` must be, with its whole cause chain.
pub fn error_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Asserts that `message` mentions each of `parts`.
pub fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

/// The largest absolute value of `t` (f32).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| (f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

pub const KNIGHT: &str = "a young knight in silver armour with a red cape,";
pub const CLEARING: &str = "in a quiet forest clearing at dawn,";

/// A knight's storyboard at 128x128 and 12 steps: the identity in the clearing, `scenes` as
/// (environment, background locked), `panels` as (scene, action).
pub fn knight_project(panels: Vec<(usize, &str)>, scenes: Vec<(&str, bool)>) -> Project {
    Project {
        title: "test".into(),
        characters: vec![Character::new(
            KNIGHT,
            IdentityShot::new(CLEARING, "standing, front view"),
        )],
        scenes: scenes
            .into_iter()
            .map(|(env, lock)| Scene {
                name: String::new(),
                environment: env.into(),
                lock_background: lock,
                width: None,
                height: None,
            })
            .collect(),
        panels: panels
            .into_iter()
            .map(|(scene, action)| Panel::new(scene, action))
            .collect(),
        takes: Default::default(),
        settings: RenderSettings {
            width: 128,
            height: 128,
            steps: Some(12),
            ..RenderSettings::default()
        },
    }
}

/// What a render keeps of each image, in the order they finished.
pub type Images = Vec<(charaboard::consist::plan::Target, ImageOutput)>;

/// Renders `request` of `p` in `bank` mode (lockstep batches of `batch`) to the end.
pub fn render_images(
    renderer: &mut Renderer,
    models: &mut FluxModels,
    p: &Project,
    request: RenderRequest,
    bank: BankMode,
    batch: usize,
) -> Images {
    let plan = charaboard::project::plan(p, &PlanModel::of(models), None).unwrap();
    let options = RenderOptions {
        bank,
        batch,
        ..RenderOptions::default()
    };
    let mut images = Vec::new();
    let outcome = renderer
        .render(models, &plan, request, &options, &mut |e| {
            if let RenderEvent::Finished { output, .. } = e {
                images.push((output.target, output.clone()));
            }
            StepControl::Continue
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    images
}

/// Final latents within 1e-4, masks and matches identical, image by image.
pub fn assert_same(banked: &Images, lockstep: &Images) {
    let lockstep: std::collections::BTreeMap<charaboard::consist::plan::Target, &ImageOutput> =
        lockstep.iter().map(|(t, o)| (*t, o)).collect();
    assert_eq!(banked.len(), lockstep.len(), "the same images");
    for (target, b) in banked {
        let l = lockstep[target];
        let diff = max_abs_diff(&b.latents, &l.latents);
        assert!(diff <= 1e-4, "{}: latents differ by {diff}", target.label());
        assert_eq!(b.mask, l.mask, "{}: mask", target.label());
        assert_eq!(b.matches, l.matches, "{}: matches", target.label());
    }
    // The comparison counts only where panels were steered: a mixed identity mask, matches.
    let identity = &banked[0].1;
    assert!(identity.mask.iter().any(|&m| m) && identity.mask.iter().any(|&m| !m));
    assert!(banked
        .iter()
        .any(|(_, o)| o.matches.as_ref().is_some_and(|m| !m.panel_idx.is_empty())));
}

/// `projects/two-friends.ron` at 64x64 and 6 steps (erosion off, so the tiny model's masks keep
/// tokens), with two more panels: Tom in the identities' studio, locked onto the first
/// identity's background, and nobody in a free scene. Every way a panel reads the identities:
/// one character, the other, both, a background of one under the other, none.
pub fn two_friends_every_mode() -> Project {
    let mut p = charaboard::project::load(Path::new("projects/two-friends.ron")).unwrap();
    let studio = p.characters[0].identity.environment.clone();
    for (environment, lock) in [(studio, true), ("on an empty beach,".to_string(), false)] {
        p.scenes.push(Scene {
            name: String::new(),
            environment,
            lock_background: lock,
            width: None,
            height: None,
        });
    }
    let mut tom = Panel::new(1, "waving goodbye");
    tom.characters = Some(vec!["Old Tom".into()]);
    let mut nobody = Panel::new(2, "waves rolling in");
    nobody.characters = Some(vec![]);
    p.panels.extend([tom, nobody]);
    (p.settings.width, p.settings.height, p.settings.steps) = (128, 128, Some(6));
    p.settings.recipe.erode = 1;
    p.settings.recipe.dilate = 1;
    p
}
