//! The memory plan's accounting against what the CPU really holds: the weights of the tiny
//! models as loaded (repository and GGUF), a real bank against the predicted bound, the
//! renderer's forward counts; and `charaboard plan`'s table, choice and refusal.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use charaboard::consist::plan::{PlanModel, RenderRequest};
use charaboard::consist::session::{BankMode, RenderOptions, Renderer};
use charaboard::memory_plan::{MemoryPlan, ModelMemory, Storyboard, Weights};
use charaboard::models::source::ModelSource;
use charaboard::pipeline::FluxModels;
use charaboard::project::model::Project;
use charaboard::sampler::StepControl;
use common::{charaboard, knight_project, ok, tiny_models, CLEARING};

fn loaded(models: &FluxModels) -> Weights {
    let bytes = |name: &str| {
        models
            .component_bytes()
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1 as u64)
            .unwrap()
    };
    Weights {
        transformer: bytes("transformer"),
        vae: bytes("vae"),
        t5: bytes("t5"),
        clip: bytes("clip"),
    }
}

#[test]
fn predicted_weights_are_the_bytes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (path, models) = tiny_models(dir.path());
    let predicted =
        ModelMemory::of_files(&ModelSource::detect(&path).unwrap(), DType::F32).unwrap();
    assert_eq!(predicted.weights, loaded(&models));
    assert_eq!(predicted.dims.text_tokens, models.tokenizers.t5_len());

    let gguf = dir.path().join("gguf");
    charaboard::models::tiny_files::write_gguf_files(&gguf, 21, false, GgmlDType::Q8_0).unwrap();
    let model_file = gguf.join(charaboard::models::tiny_files::MODEL_FILE);
    let models = FluxModels::load(&model_file, DType::F32, &Device::Cpu).unwrap();
    let predicted =
        ModelMemory::of_files(&ModelSource::detect(&model_file).unwrap(), DType::F32).unwrap();
    assert_eq!(predicted.weights, loaded(&models));
}

/// Locked onto the identity, a free panel, and a locked scene of two panels (the second follows
/// the first's background), at 32x32 and 6 steps.
fn storyboard() -> Project {
    let mut p = knight_project(
        vec![
            (0, "kneeling"),
            (1, "running"),
            (2, "buying bread"),
            (2, "laughing"),
        ],
        vec![
            (CLEARING, true),
            ("by a grey harbour in the rain,", false),
            ("on a busy market street at noon,", true),
        ],
    );
    p.settings.width = 32;
    p.settings.height = 32;
    p.settings.steps = Some(6);
    p
}

#[test]
fn predicted_forwards_and_bank_match_the_renderer() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let p = storyboard();
    let plan = charaboard::project::plan(&p, &PlanModel::of(&models), None).unwrap();
    let board = Storyboard::of(&plan);
    let memory = ModelMemory {
        weights: loaded(&models),
        dims: charaboard::memory_plan::ModelDims::of(models.transformer.config()),
    };
    let budget = MemoryPlan::new(&memory, &board, DType::F32, false, u64::MAX, None, true);
    for (mode, batch) in [
        (BankMode::Device, 1),
        (BankMode::Recompute, 1),
        (BankMode::Recompute, 4),
    ] {
        let mut renderer = Renderer::default();
        let options = RenderOptions {
            bank: mode,
            batch,
            ..RenderOptions::default()
        };
        renderer
            .render(
                &mut models,
                &plan,
                RenderRequest::All,
                &options,
                &mut |_| StepControl::Continue,
            )
            .unwrap();
        assert_eq!(
            board.forwards(mode, batch),
            renderer.forwards(),
            "{mode:?} batch {batch}"
        );
        let way = budget
            .options
            .iter()
            .find(|w| w.mode == mode && w.batch == batch)
            .unwrap();
        assert!(
            renderer.bank_bytes() as u64 <= way.bank_device,
            "{mode:?}: bank {} over the predicted {}",
            renderer.bank_bytes(),
            way.bank_device
        );
        if mode == BankMode::Device {
            assert!(renderer.bank_bytes() > 0);
        }
    }
}

#[test]
fn plan_prints_the_table_and_refuses_a_budget_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 21, false).unwrap();
    let project = dir.path().join("board.ron");
    charaboard::project::save(&storyboard(), &project).unwrap();
    let (project, model) = (project.to_str().unwrap(), model.to_str().unwrap());

    let out = charaboard(&["plan", project, "--model", model, "--budget", "100GB"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for part in [
        "transformer",
        "t5",
        "clip",
        "vae",
        "device",
        "host",
        "recompute",
        "forwards",
    ] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    // Everything fits: the fewest forwards, the banked mode.
    assert!(text.contains("choice: --bank device --batch 1"), "{text}");

    let out = charaboard(&["plan", project, "--model", model, "--budget", "1MB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        "no bank mode fits",
        "1.00 MB",
        "quantisation",
        "--text-on-cpu",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    // render --bank auto refuses the same budget before loading anything.
    let out = charaboard(&["render", project, "--model", model, "--budget", "1MB"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no bank mode fits"));
}
