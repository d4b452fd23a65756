//! The memory plan's accounting against what the CPU really holds: the weights of the tiny
//! models as loaded (repository and GGUF), a real bank against the predicted bound, the
//! renderer's forward counts; and `charaboard plan`'s table, choice and refusal.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use charaboard::consist::plan::{BackgroundMode, Plan, PlanModel, RenderRequest};
use charaboard::consist::session::{BankMode, RenderOptions, Renderer};
use charaboard::memory_plan::{
    BankChoice, MemoryPlan, ModelDims, ModelMemory, Storyboard, Weights,
};
use charaboard::models::source::ModelSource;
use charaboard::pipeline::FluxModels;
use charaboard::project::model::{IdentitySource, PictureIdentity, Project};
use charaboard::sampler::StepControl;
use common::{charaboard, knight_project, ok, tiny_models, CLEARING};

/// The bytes loaded, the VAE encoder's 0 until a picture loaded it.
fn loaded(models: &FluxModels) -> Weights {
    let bytes = |name: &str| {
        models
            .component_bytes()
            .iter()
            .find(|c| c.0 == name)
            .map_or(0, |c| c.1 as u64)
    };
    Weights {
        transformer: bytes("transformer"),
        vae: bytes("vae"),
        vae_encoder: bytes("vae encoder"),
        t5: bytes("t5"),
        clip: bytes("clip"),
    }
}

/// Loads the VAE encoder the way a picture identity does.
fn encode_a_picture(models: &mut FluxModels) {
    models
        .encode_picture(&image::RgbImage::new(32, 32))
        .unwrap();
}

#[test]
fn predicted_weights_are_the_bytes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (path, models) = tiny_models(dir.path());
    let predicted =
        ModelMemory::of_files(&ModelSource::detect(&path).unwrap(), DType::F32).unwrap();
    let mut models = models;
    encode_a_picture(&mut models);
    assert!(predicted.weights.vae_encoder > 0);
    assert_eq!(predicted.weights, loaded(&models));
    assert_eq!(predicted.dims.text_tokens, models.tokenizers.t5_len());

    let gguf = dir.path().join("gguf");
    charaboard::models::tiny_files::write_gguf_files(&gguf, 21, false, GgmlDType::Q8_0).unwrap();
    let model_file = gguf.join(charaboard::models::tiny_files::MODEL_FILE);
    let mut models = FluxModels::load(&model_file, DType::F32, &Device::Cpu).unwrap();
    encode_a_picture(&mut models);
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

/// [`storyboard`] with its identity drawn from a 32x32 picture written to `dir`.
fn picture_storyboard(dir: &std::path::Path) -> Project {
    let picture = dir.join("knight.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
    })
    .save(&picture)
    .unwrap();
    let mut p = storyboard();
    p.characters[0].identity.source = IdentitySource::Picture(PictureIdentity {
        path: picture,
        fit: Default::default(),
        inverter: Default::default(),
        folder: None,
    });
    p
}

#[test]
fn predicted_forwards_and_bank_match_the_renderer() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = tiny_models(dir.path());
    for p in [storyboard(), picture_storyboard(dir.path())] {
        // Fresh models: a picture's encoder is loaded by its render.
        let models = FluxModels::load(&path, DType::F32, &Device::Cpu).unwrap();
        forwards_and_bank_match(models, &p);
    }
}

/// Renders all of `plan` with a fresh renderer in `mode` at `batch`, checking that it ran the
/// forwards the storyboard predicts; the renderer is returned for its bank.
fn render_as_predicted(
    models: &mut FluxModels,
    plan: &Plan,
    board: &Storyboard,
    mode: BankMode,
    batch: usize,
) -> Renderer {
    let mut renderer = Renderer::default();
    let options = RenderOptions {
        bank: mode,
        batch,
        ..RenderOptions::default()
    };
    renderer
        .render(models, plan, RenderRequest::All, &options, &mut |_| {
            StepControl::Continue
        })
        .unwrap();
    assert_eq!(
        board.forwards(mode, batch),
        renderer.forwards(),
        "{mode:?} batch {batch}"
    );
    renderer
}

fn forwards_and_bank_match(mut models: FluxModels, p: &Project) {
    let plan = charaboard::project::plan(p, &PlanModel::of(&models), None).unwrap();
    let board = Storyboard::of(&plan);
    let picture = plan.identity().shot.picture.is_some();
    assert_eq!(board.inversion_forwards > 0, picture);
    let predicted = ModelMemory::of_files(&models.source, DType::F32).unwrap();
    let budget = MemoryPlan::new(&predicted, &board, DType::F32, false, u64::MAX, None, true);
    let encoder = budget.components.iter().find(|c| c.0 == "vae encoder");
    assert_eq!(encoder.is_some(), picture, "{:?}", budget.components);
    for (mode, batch) in [
        (BankMode::Device, 1),
        (BankMode::Recompute, 1),
        (BankMode::Recompute, 4),
    ] {
        let renderer = render_as_predicted(&mut models, &plan, &board, mode, batch);
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
    // What the plan holds on the device is what the renders loaded, the encoder included.
    assert_eq!(budget.weights_device(), {
        let w = loaded(&models);
        w.transformer + w.vae + w.vae_encoder + w.t5 + w.clip
    });
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

/// FLUX.1-dev's sizes with a Q8_0-sized transformer and 64 GB of RAM: a bank of tens of GB at
/// 1024x1024, so a 24 GB card fits only the lockstep mode and a 200 GB one the banked mode.
fn flux_dev_plan(card_gb: u64) -> MemoryPlan {
    const GB: u64 = 1_000_000_000;
    let model = ModelMemory {
        weights: Weights {
            transformer: 12_700_000_000,
            vae: 170_000_000,
            vae_encoder: 120_000_000,
            t5: 9_520_000_000,
            clip: 246_000_000,
        },
        dims: ModelDims {
            single_blocks: 38,
            hidden: 3072,
            heads: 24,
            text_tokens: 512,
            default_steps: 50,
        },
    };
    let board = Storyboard::one_character(
        charaboard::consist::recipe::Recipe::default().schedule(50),
        64 * 64,
        64 * 64,
        vec![BackgroundMode::Identity; 8],
    );
    MemoryPlan::new(
        &model,
        &board,
        DType::BF16,
        true,
        card_gb * GB,
        Some(64 * GB),
        false,
    )
}

#[test]
fn bank_choice_is_the_named_mode_or_the_plans() {
    let (small, large) = (flux_dev_plan(24), flux_dev_plan(200));

    // Auto: the plan's choice, the banked mode where it fits, else lockstep.
    let chosen = BankChoice::Auto.resolve(None, false, Some(&large)).unwrap();
    assert_eq!((chosen.mode, chosen.batch), (BankMode::Device, 1));
    let chosen = BankChoice::Auto.resolve(None, false, Some(&small)).unwrap();
    assert_eq!(chosen.mode, BankMode::Recompute);
    assert_eq!(Some(chosen.batch), small.chosen.map(|w| w.batch));
    let plan = chosen.plan.unwrap();
    assert!(plan.fits && plan.summary.starts_with("--bank recompute"));
    assert!(
        plan.table.contains("choice: --bank recompute"),
        "{}",
        plan.table
    );
    // A named batch is kept; a bank file needs a bank, which a 24 GB card does not hold.
    let chosen = BankChoice::Auto
        .resolve(Some(2), false, Some(&small))
        .unwrap();
    assert_eq!((chosen.mode, chosen.batch), (BankMode::Recompute, 2));
    let refused = BankChoice::Auto
        .resolve(None, true, Some(&small))
        .unwrap_err();
    assert!(refused.contains("no bank mode fits"), "{refused}");
    assert!(BankChoice::Auto.resolve(None, false, None).is_err());

    // A named mode is taken as named, with the plan's numbers where there is a plan, and
    // marked when it does not fit.
    let chosen = BankChoice::Device
        .resolve(None, false, Some(&small))
        .unwrap();
    assert_eq!(chosen.mode, BankMode::Device);
    assert!(!chosen.plan.unwrap().fits);
    let chosen = BankChoice::Recompute.resolve(None, false, None).unwrap();
    assert_eq!(
        (chosen.mode, chosen.batch, chosen.plan),
        (BankMode::Recompute, 4, None)
    );
}

#[test]
fn predicted_forwards_match_the_renderer_with_two_characters() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let mut p = common::two_friends_every_mode();
    (p.settings.width, p.settings.height) = (32, 32);
    let plan = charaboard::project::plan(&p, &PlanModel::of(&models), None).unwrap();
    let board = Storyboard::of(&plan);
    assert_eq!((board.characters, board.cast[2].clone()), (2, vec![0, 1]));
    let memory = ModelMemory {
        weights: loaded(&models),
        dims: ModelDims::of(models.transformer.config()),
    };
    let budget = MemoryPlan::new(&memory, &board, DType::F32, false, u64::MAX, None, true);
    for (mode, batch) in [
        (BankMode::Device, 1),
        (BankMode::Recompute, 1),
        (BankMode::Recompute, 2),
        (BankMode::Recompute, 4),
    ] {
        let renderer = render_as_predicted(&mut models, &plan, &board, mode, batch);
        // Both characters' banks, within the bound.
        let way = budget.options.iter().find(|w| w.mode == mode).unwrap();
        assert!(renderer.bank_bytes() as u64 <= way.bank_device);
    }
}
