//! Bad input refused before any work, with the range or the reason; non-finite numbers never
//! become a black image; two renders never share an images folder; stale panels are not
//! exported as current; a panic in the worker leaves it working.

mod common;

use candle_core::{DType, Device, Tensor};
use charaboard::consist::plan::{PlanModel, RenderRequest};
use charaboard::consist::session::RenderOptions;
use charaboard::export::pdf::PdfOptions;
use charaboard::export::storyboard::{export_all, SheetOptions, StalePanels};
use charaboard::project::{self, ImagesStore};
use charaboard::worker::{Event, Job, Worker};
use common::{assert_mentions, charaboard, generate, ok, tiny_models};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PROJECT: &str = r#"(
    title: "Bad input",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [(environment: "on a rainy street at night,")],
    panels: [(scene: 0, action: "running with a parcel"), (scene: 0, action: "knocking")],
    settings: (width: 64, height: 64, steps: Some(2)),
)"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The stderr of a `generate` that must fail.
fn generate_fails(model: &str, out: &Path, extra: &[&str]) -> String {
    let run = generate(model, out, extra);
    assert!(!run.status.success(), "{extra:?} succeeded");
    String::from_utf8_lossy(&run.stderr).into_owned()
}

/// Runs the binary and returns its stderr, asserting that it failed.
fn fails(args: &[&str]) -> String {
    let out = charaboard(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_number_has_a_range_checked_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    // No model at this path: every refusal below comes before loading one.
    let model = dir.path().join("no-model");
    let model = model.to_str().unwrap();
    let png = dir.path().join("out.png");
    for (extra, message) in [
        (
            &["--width", "100000"][..],
            "width must be a multiple of 16 from 16 to 4096, found 100000",
        ),
        (
            &["--height", "18446744073709551600"],
            "height must be a multiple of 16 from 16 to 4096",
        ),
        (
            &["--steps", "18446744073709551615"],
            "steps must be from 1 to 1000, found 18446744073709551615",
        ),
        (
            &["--guidance=-5"],
            "guidance must be a number from 0 to 100, found -5",
        ),
        (
            &["--guidance", "NaN"],
            "guidance must be a number from 0 to 100, found NaN",
        ),
        (
            &["--guidance", "inf"],
            "guidance must be a number from 0 to 100, found inf",
        ),
    ] {
        let err = generate_fails(model, &png, extra);
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!err.contains("no-model"), "refused before loading: {err}");
    }
    assert!(!png.exists());

    // The same ranges in a project file, and the recipe's.
    for (from, to, message) in [
        (
            "width: 64,",
            "width: 100000,",
            "settings.width must be a multiple of 16 from 16 to 4096",
        ),
        (
            "steps: Some(2)",
            "steps: Some(5000)",
            "settings.steps (or left out for the model's default) must be from 1 to 1000",
        ),
        (
            "steps: Some(2))",
            "steps: Some(2), guidance: 1e300)",
            "settings.guidance must be a number from 0 to 100",
        ),
        (
            "steps: Some(2))",
            "steps: Some(2), recipe: (erode: 18446744073709551615))",
            "settings.recipe.erode must be an odd kernel side from 1 to 31",
        ),
        (
            "steps: Some(2))",
            "steps: Some(2), recipe: (numerix: reference))",
            "numerix",
        ),
        (
            "steps: Some(2))",
            "steps: Some(2), recipe: (fg_layer_every: 1000000))",
            "settings.recipe.fg_layer_every must be from 1 to 64",
        ),
    ] {
        assert!(PROJECT.contains(from), "{from}");
        let path = write(dir.path(), "bad.ron", &PROJECT.replace(from, to));
        let err = fails(&["render", path.to_str().unwrap(), "--model", model]);
        assert!(err.contains(message), "{to}: {err}");
        assert!(!dir.path().join("bad.images").exists(), "nothing written");
    }

    // Export columns.
    let path = write(dir.path(), "story.ron", PROJECT);
    let out = dir.path().join("export");
    let err = fails(&[
        "export",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--columns",
        "1000",
    ]);
    assert!(
        err.contains("columns must be from 1 to 12, found 1000"),
        "{err}"
    );
}

/// A dtype the device cannot run is refused when the flags are read, with what to use instead:
/// bf16 below CUDA compute capability 8.0 (no GPU here, so the rule is checked on its own), and
/// no dtype on the CPU, where bf16 runs (and is tested in tests/render_cli.rs).
#[test]
fn a_dtype_the_device_cannot_run_is_refused_with_what_to_use_instead() {
    use charaboard::device::{parse_dtype, refusal};
    let turing = refusal(DType::BF16, Some((7, 5))).expect("bf16 on compute capability 7.5");
    assert_mentions(&turing, &["compute capability 8.0", "7.5", "--dtype f32"]);
    assert_eq!(refusal(DType::BF16, Some((8, 0))), None);
    assert_eq!(refusal(DType::F16, Some((7, 5))), None);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        assert_eq!(refusal(dtype, None), None, "{dtype:?} on the CPU");
    }
    assert_eq!(
        parse_dtype(Some("bf16"), &Device::Cpu).unwrap(),
        DType::BF16
    );
    assert_eq!(parse_dtype(None, &Device::Cpu).unwrap(), DType::F32);
}

#[test]
fn files_that_are_not_what_they_claim_are_refused_by_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["render", "/dev/zero", "--model", "none"]);
    assert!(err.contains("not a regular file"), "{err}");

    let (model, _) = tiny_models(dir.path());
    let model = model.to_str().unwrap();
    let png = dir.path().join("out.png");
    let generate = |noise: &Path| {
        let size = ["--width", "64", "--height", "64", "--steps", "2", "--noise"];
        let noise = noise.to_str().unwrap();
        generate_fails(model, &png, &[&size[..], &[noise]].concat())
    };
    let err = generate(Path::new("/dev/zero"));
    assert!(err.contains("is not a noise file"), "{err}");

    let noise = dir.path().join("noise.safetensors");
    let mut values = vec![0.5f32; 16 * 8 * 8];
    values[17] = f32::NAN;
    Tensor::from_vec(values, (1, 16, 8, 8), &Device::Cpu)
        .unwrap()
        .save_safetensors("noise", &noise)
        .unwrap();
    let err = generate(&noise);
    assert!(
        err.contains("NaN at element 17") && err.contains("finite"),
        "{err}"
    );

    Tensor::zeros((1, 16, 8, 8), DType::I64, &Device::Cpu)
        .unwrap()
        .save_safetensors("noise", &noise)
        .unwrap();
    let err = generate(&noise);
    assert!(
        err.contains("I64") && err.contains("floating-point"),
        "{err}"
    );
    assert!(!png.exists());
}

#[test]
fn a_size_whose_attention_would_not_fit_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_models(dir.path());
    let png = dir.path().join("out.png");
    // 4096x4096 is in range, but its attention (65,536 image tokens) outgrows this machine.
    let err = generate_fails(
        model.to_str().unwrap(),
        &png,
        &["--width", "4096", "--height", "4096", "--steps", "1"],
    );
    assert!(
        err.contains("4096x4096 needs about") && err.contains("GB of memory is available"),
        "{err}"
    );
    assert!(!png.exists());
}

#[test]
fn nan_weights_stop_the_run_at_the_first_step_instead_of_writing_black() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_models(dir.path());
    // Poison one weight of the transformer's first shard.
    let shard = model
        .join("transformer")
        .join("diffusion_pytorch_model-00001-of-00002.safetensors");
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    let name = tensors
        .keys()
        .find(|k| k.ends_with("weight"))
        .unwrap()
        .clone();
    let poisoned = (tensors[&name].ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert(name, poisoned);
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    let png = dir.path().join("out.png");
    let err = generate_fails(
        model.to_str().unwrap(),
        &png,
        &["--width", "64", "--height", "64", "--steps", "3"],
    );
    assert!(
        err.contains("no longer finite after step 1 of 3") && err.contains("weights"),
        "{err}"
    );
    assert!(!png.exists(), "no black image is written");
}

#[test]
fn a_second_render_of_one_project_is_refused_while_the_first_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_models(dir.path());
    let path = write(dir.path(), "story.ron", PROJECT);
    let store = ImagesStore::beside(&path);
    let render = || {
        charaboard(&[
            "render",
            path.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
    };
    let lock = store.lock().unwrap();
    let out = render();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another render of story is writing"), "{err}");
    assert!(!store
        .png_path(charaboard::consist::plan::Target::Identity, 1)
        .exists());
    drop(lock);
    // A lock left by a process that no longer runs is taken over.
    std::fs::write(store.dir().join(".render.lock"), "4000000000").unwrap();
    ok(&render());
    assert!(
        !store.dir().join(".render.lock").exists(),
        "released after the render"
    );
}

#[test]
fn stale_panels_are_refused_by_export_or_marked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_models(dir.path());
    // Panel 2's action is longer than T5 reads: the render says so.
    let long = "knocking on the door again and again, ".repeat(70);
    let path = write(
        dir.path(),
        "story.ron",
        &PROJECT.replace("\"knocking\"", &format!("{long:?}")),
    );
    let out = charaboard(&[
        "render",
        path.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the prompt of panel 2 is longer than the 511 tokens T5 reads"),
        "{err}"
    );
    let export = dir.path().join("export");
    let export_args = |extra: &[&'static str]| {
        let mut args = vec![
            "export".to_string(),
            path.display().to_string(),
            "--out".into(),
            export.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        charaboard(&refs)
    };
    ok(&run(export_args(&[])));

    // Panel 1's action changes after the render.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("running with a parcel", "walking home")).unwrap();
    std::fs::remove_dir_all(&export).unwrap();
    let out = run(export_args(&[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("panel 1 of Bad input was rendered from other prompts")
            && err.contains("--allow-stale"),
        "{err}"
    );
    assert!(!export.exists(), "nothing is written");
    let out = run(export_args(&["--allow-stale"]));
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("panel 1 exported marked (stale)"));
    let exported = export_all(
        &project::load(&path).unwrap(),
        &ImagesStore::beside(&path),
        &export,
        &SheetOptions::default(),
        &PdfOptions::default(),
        StalePanels::Mark,
    )
    .unwrap();
    assert_eq!(exported.stale, vec![0]);
}

#[test]
fn a_panic_inside_a_render_is_reported_and_the_worker_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (model, models) = tiny_models(dir.path());
    let path = write(dir.path(), "story.ron", PROJECT);
    let before = std::fs::read(&path).unwrap();
    let plan = project::plan(
        &project::load(&path).unwrap(),
        &PlanModel::of(&models),
        None,
    )
    .unwrap();
    // The worker calls `notify` after every event, inside the job: panicking there is a panic in
    // the middle of a render.
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    let worker = Worker::spawn(move || {
        if trigger.swap(false, Ordering::SeqCst) {
            panic!("a bug in the middle of a render");
        }
    });
    let next = || {
        worker
            .recv_timeout(Duration::from_secs(120))
            .expect("an event")
    };
    worker.send(Job::LoadModel {
        dir: model,
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
    });
    while !matches!(next(), Event::Idle) {}
    let render = || Job::Render {
        plan: Box::new(plan.clone()),
        request: RenderRequest::All,
        store: Some(ImagesStore::beside(&path)),
        options: RenderOptions::default(),
    };
    armed.store(true, Ordering::SeqCst);
    worker.send(render());
    let mut failure = None;
    loop {
        match next() {
            Event::Failed { message, .. } => failure = Some(message),
            Event::Idle => break,
            _ => {}
        }
    }
    let message = failure.expect("the panic is reported");
    assert!(
        message.contains("the worker panicked: a bug in the middle of a render"),
        "{message}"
    );
    // The worker is still there, renders the whole storyboard, and the project is untouched.
    worker.send(render());
    let mut done = 0;
    loop {
        match next() {
            Event::ImageDone(_) => done += 1,
            Event::Failed { message, .. } => panic!("{message}"),
            Event::Idle => break,
            _ => {}
        }
    }
    assert_eq!(done, 3);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
