//! One render path: the CLI and the app render through the same driver into the same images
//! store, so what one renders the other shows; staleness is a comparison of keys; a failed write
//! leaves the old image whole and nothing partial.

mod common;

use charaboard::consist::plan::{
    ModelKey, PanelShot, Plan, PlanModel, Quality, RenderRequest, Target,
};
use charaboard::consist::session::{RenderOptions, Renderer};
use charaboard::export::storyboard::StalePanels;
use charaboard::pipeline::{FluxModels, NoiseSource};
use charaboard::project::images::ImagesStore;
use charaboard::project::takes::TakeChoice;
use charaboard::project::{self, Project};
use charaboard::render::{self, Ended, Progress, RenderJob};
use charaboard::sampler::StepControl;
use charaboard::worker::{Event, Job, Worker};
use common::{assert_mentions, charaboard, ok, tiny_models};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Identity background shared by scene 0 (locked onto the identity), scene 1 locked onto its
/// first panel, scene 2 free and of its own width; panel 4 has a seed of its own.
const PROJECT: &str = r#"(
    title: "Render path",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [
        (environment: "in an empty background,", lock_background: true),
        (environment: "on a rainy street at night,", lock_background: true),
        (environment: "in a sunny park,", width: Some(96)),
    ],
    panels: [
        (scene: 0, action: "waving"),
        (scene: 1, action: "running with a parcel"),
        (scene: 1, action: "knocking on a door"),
        (scene: 2, action: "eating an apple", seed: Some(5)),
    ],
    settings: (width: 64, height: 64, steps: Some(3)),
)"#;

fn write_project(dir: &Path) -> PathBuf {
    let path = dir.join("story.ron");
    std::fs::write(&path, PROJECT).unwrap();
    path
}

fn all_targets() -> Vec<Target> {
    std::iter::once(Target::Identity)
        .chain((0..4).map(Target::Panel))
        .collect()
}

/// Renders `request` of `plan` through the driver into `store`.
fn render_into(
    models: &mut FluxModels,
    renderer: &mut Renderer,
    plan: &Plan,
    request: RenderRequest,
    store: Option<&ImagesStore>,
) -> (Ended, Vec<Target>) {
    let mut finished = Vec::new();
    let job = RenderJob {
        plan,
        request,
        store,
        options: RenderOptions::default(),
    };
    let ended = render::run(renderer, models, &job, &mut |p| {
        if let Progress::Finished { image, .. } = p {
            finished.push(image.target);
        }
        StepControl::Continue
    });
    (ended, finished)
}

fn wait_for(worker: &Worker, what: &str, mut done: impl FnMut(&Event) -> bool) {
    loop {
        let event = worker
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|| panic!("timed out waiting for {what}"));
        if let Event::Failed { message, .. } = &event {
            panic!("{what}: {message}");
        }
        if done(&event) {
            return;
        }
    }
}

/// Loads `dir` in the worker and waits for the end of the job; returns the model as plans see it.
fn load_in(worker: &Worker, dir: &Path) -> PlanModel {
    worker.send(Job::LoadModel {
        dir: dir.to_path_buf(),
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
    });
    let mut loaded = None;
    wait_for(worker, "the model", |e| {
        if let Event::ModelLoaded { model, .. } = e {
            loaded = Some(model.clone());
        }
        matches!(e, Event::Idle)
    });
    loaded.expect("the model was loaded")
}

#[test]
fn cli_renders_open_as_current_in_the_app_state_and_app_renders_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (model, models) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    ok(&charaboard(&[
        "render",
        project_path.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]));

    // What the CLI wrote is read back, through the worker, as this project's current images.
    let plan_model = PlanModel::of(&models);
    let project = project::load(&project_path).unwrap();
    let plan = project::plan(&project, &plan_model, None).unwrap();
    let worker = Worker::spawn(|| {});
    worker.send(Job::LoadImages {
        store: ImagesStore::beside(&project_path),
        panels: 4,
    });
    let event = worker.recv_timeout(Duration::from_secs(60)).unwrap();
    let Event::ImagesLoaded { images, notes, .. } = event else {
        panic!("expected the saved images");
    };
    assert!(notes.is_empty(), "{notes:?}");
    let current: Vec<Target> = images
        .iter()
        .filter(|i| i.is_current(&plan))
        .map(|i| i.target)
        .collect();
    assert_eq!(current, all_targets());

    // The reverse: the app's worker renders into the same store, and the CLI's export and the
    // store's staleness read it.
    let other = dir.path().join("other.ron");
    std::fs::write(&other, PROJECT.replace("waving", "waving twice")).unwrap();
    let other_plan = project::plan(&project::load(&other).unwrap(), &plan_model, None).unwrap();
    let other_store = ImagesStore::beside(&other);
    assert_eq!(
        other_store.stale(&other_plan, &Default::default()),
        all_targets()
    );
    assert_eq!(load_in(&worker, &model), plan_model);
    worker.send(Job::Render {
        plan: Box::new(other_plan.clone()),
        request: RenderRequest::All,
        store: Some(other_store.clone()),
        options: RenderOptions::default(),
    });
    wait_for(&worker, "the render", |e| matches!(e, Event::Idle));
    let found = other_store.read_all(4);
    assert!(found.notes.is_empty(), "{:?}", found.notes);
    assert_eq!(found.images.len(), 5);
    assert_eq!(
        other_store.stale(&other_plan, &Default::default()),
        Vec::<Target>::new()
    );
    let out = dir.path().join("export");
    ok(&charaboard(&[
        "export",
        other.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(out.join("01.png")).unwrap(),
        std::fs::read(other_store.png_path(Target::Panel(0), 1)).unwrap()
    );
}

/// How many pixels of `region` (x0.., same height) equal `image`.
fn equal_pixels(canvas: &image::RgbImage, x0: u32, image: &image::RgbImage) -> usize {
    image
        .enumerate_pixels()
        .filter(|(x, y, p)| canvas.get_pixel(x0 + x, *y) == *p)
        .count()
}

#[test]
fn rerendering_one_panel_with_a_cached_identity_matches_it_against_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    let store = ImagesStore::beside(&project_path);
    let worker = Worker::spawn(|| {});
    let model = load_in(&worker, &model);
    let project = project::load(&project_path).unwrap();
    let plan = project::plan(&project, &model, None).unwrap();
    worker.send(Job::Render {
        plan: Box::new(plan.clone()),
        request: RenderRequest::All,
        store: Some(store.clone()),
        options: RenderOptions::default(),
    });
    wait_for(&worker, "the first render", |e| matches!(e, Event::Idle));
    assert!(store.dir().join("panel-04-take-001-matches.png").is_file());
    // The second render of panel 4 is its second take.
    let matches_png = store.dir().join("panel-04-take-002-matches.png");

    // The identity is cached in the worker: this job renders panel 4 alone.
    worker.send(Job::Render {
        plan: Box::new(plan),
        request: RenderRequest::Panel(3),
        store: Some(store.clone()),
        options: RenderOptions::default(),
    });
    let mut done = Vec::new();
    loop {
        match worker.recv_timeout(Duration::from_secs(300)).unwrap() {
            Event::ImageDone(image) => done.push(image.target),
            Event::Failed { message, .. } => panic!("{message}"),
            Event::Idle => break,
            _ => {}
        }
    }
    assert_eq!(done, vec![Target::Panel(3)]);
    let overlay = image::open(&matches_png).unwrap().to_rgb8();
    let panel = image::open(store.png_path(Target::Panel(3), 2))
        .unwrap()
        .to_rgb8();
    let identity = image::open(store.png_path(Target::Identity, 1))
        .unwrap()
        .to_rgb8();
    assert_eq!(overlay.width(), panel.width() + identity.width());
    let on_identity = equal_pixels(&overlay, panel.width(), &identity);
    let pixels = (identity.width() * identity.height()) as usize;
    assert!(
        on_identity > pixels * 3 / 4,
        "the right half is the identity ({on_identity} of {pixels} pixels; lines cover the rest)"
    );
}

/// The targets whose rendered image is not current for `project`.
fn stale(rendered: &ImagesStore, project: &Project, model: &PlanModel) -> BTreeSet<Target> {
    let plan = project::plan(project, model, None).unwrap();
    rendered
        .stale(&plan, &Default::default())
        .into_iter()
        .collect()
}

#[test]
fn exactly_the_affected_images_become_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    let base = project::load(&project_path).unwrap();
    let model = PlanModel::of(&models);
    let plan = project::plan(&base, &model, None).unwrap();
    let store = ImagesStore::beside(&project_path);
    let (ended, _) = render_into(
        &mut models,
        &mut Renderer::default(),
        &plan,
        RenderRequest::All,
        Some(&store),
    );
    assert!(matches!(ended, Ended::Finished));
    assert!(stale(&store, &base, &model).is_empty());

    let all: BTreeSet<Target> = all_targets().into_iter().collect();
    let panels =
        |ps: &[usize]| -> BTreeSet<Target> { ps.iter().map(|&i| Target::Panel(i)).collect() };
    type Edit = fn(&mut Project);
    let cases: Vec<(&str, Edit, BTreeSet<Target>)> = vec![
        ("the shared seed", |p| p.settings.seed = 7, all.clone()),
        // Panel 3 renders on panel 2's background, so it follows it.
        (
            "panel 2's seed",
            |p| p.panels[1].seed = Some(9),
            panels(&[1, 2]),
        ),
        (
            "panel 4's seed",
            |p| p.panels[3].seed = Some(6),
            panels(&[3]),
        ),
        ("the size", |p| p.settings.width = 80, all.clone()),
        (
            "scene 3's size",
            |p| p.scenes[2].width = Some(80),
            panels(&[3]),
        ),
        ("the steps", |p| p.settings.steps = Some(4), all.clone()),
        ("the guidance", |p| p.settings.guidance = 4.0, all.clone()),
        (
            "a recipe field",
            |p| p.settings.recipe.similarity_threshold = 0.6,
            all.clone(),
        ),
        (
            "the identity shot",
            |p| p.characters[0].identity.action = "sitting".into(),
            all.clone(),
        ),
        (
            "panel 3's action",
            |p| p.panels[2].action = "resting".into(),
            panels(&[2]),
        ),
        (
            "scene 2's environment",
            |p| p.scenes[1].environment = "on a dry street at noon,".into(),
            panels(&[1, 2]),
        ),
    ];
    for (what, edit, expected) in cases {
        let mut changed = base.clone();
        edit(&mut changed);
        assert_eq!(
            stale(&store, &changed, &model),
            expected,
            "after changing {what}"
        );
    }
    let other_model = PlanModel {
        key: ModelKey {
            source: "/elsewhere/FLUX.1-schnell".into(),
            ..model.key.clone()
        },
        ..model.clone()
    };
    assert_eq!(
        stale(&store, &base, &other_model),
        all,
        "after changing the model"
    );
    let other_dtype = PlanModel {
        key: ModelKey {
            dtype: "bf16".into(),
            ..model.key.clone()
        },
        ..model
    };
    assert_eq!(
        stale(&store, &base, &other_dtype),
        all,
        "after changing the dtype"
    );
}

/// Every file name in `dir`.
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every file of one take, with its bytes.
fn take_files(dir: &Path, take_stem: &str) -> BTreeMap<String, Vec<u8>> {
    listing(dir)
        .into_iter()
        .filter(|name| name.starts_with(take_stem))
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_re_render_adds_a_take_and_never_touches_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    let model = PlanModel::of(&models);
    let project = project::load(&project_path).unwrap();
    let plan = project::plan(&project, &model, None).unwrap();
    let store = ImagesStore::beside(&project_path);
    let mut renderer = Renderer::default();
    let (ended, _) = render_into(
        &mut models,
        &mut renderer,
        &plan,
        RenderRequest::All,
        Some(&store),
    );
    assert!(matches!(ended, Ended::Finished));
    let first = take_files(store.dir(), "panel-01-take-001");
    assert_eq!(first.len(), 5, "{:?}", first.keys());

    // Panel 1 re-rolled: a new seed makes a second take beside the first.
    let mut rerolled = project.clone();
    rerolled.panels[0].seed = Some(77);
    let new_plan = project::plan(&rerolled, &model, None).unwrap();
    let (ended, finished) = render_into(
        &mut models,
        &mut renderer,
        &new_plan,
        RenderRequest::Panel(0),
        Some(&store),
    );
    assert!(matches!(ended, Ended::Finished));
    assert_eq!(finished, vec![Target::Panel(0)]);
    assert_eq!(take_files(store.dir(), "panel-01-take-001"), first);
    let takes: Vec<u32> = store
        .read_takes(Target::Panel(0))
        .images
        .iter()
        .map(|t| t.take)
        .collect();
    assert_eq!(takes, vec![1, 2]);
    let (one, two) = (
        std::fs::read(store.png_path(Target::Panel(0), 1)).unwrap(),
        std::fs::read(store.png_path(Target::Panel(0), 2)).unwrap(),
    );
    assert_ne!(one, two, "another seed draws another picture");

    // Without a choice the newest take is active: current for the re-rolled project only.
    let none = BTreeMap::new();
    assert_eq!(store.stale(&new_plan, &none), Vec::<Target>::new());
    assert_eq!(store.stale(&plan, &none), vec![Target::Panel(0)]);
    // Take 1 chosen: the first project's panel is current again, and the export uses it.
    let mut chosen = project.clone();
    chosen.takes.insert(
        Target::Panel(0),
        TakeChoice {
            active: Some(1),
            deleted: vec![],
        },
    );
    assert_eq!(store.stale(&plan, &chosen.takes), Vec::<Target>::new());
    let export = |p: &project::Project, out: &Path| {
        charaboard::export::storyboard::export_all(
            p,
            &store,
            out,
            &Default::default(),
            &Default::default(),
            StalePanels::Refuse,
        )
        .unwrap();
        std::fs::read(out.join("01.png")).unwrap()
    };
    assert_eq!(export(&chosen, &dir.path().join("chosen")), one);
    assert_eq!(export(&rerolled, &dir.path().join("newest")), two);
    // The unchosen first project's newest take is stale: the export refuses it.
    let err = charaboard::export::storyboard::export_all(
        &project,
        &store,
        &dir.path().join("refused"),
        &Default::default(),
        &Default::default(),
        StalePanels::Refuse,
    )
    .unwrap_err();
    assert_mentions(&format!("{err:#}"), &["panel 1", "--allow-stale"]);

    // A chosen take whose files went missing is named, never shown as empty.
    chosen.takes.get_mut(&Target::Panel(0)).unwrap().active = Some(9);
    let Err(err) = store.read_active(Target::Panel(0), chosen.takes.get(&Target::Panel(0))) else {
        panic!("a missing take is an error");
    };
    assert_mentions(&format!("{err:#}"), &["take 9", "missing"]);

    // A folder from before takes (one image per target) reads as one take, numbered 0.
    for (name, _) in take_files(store.dir(), "panel-02-take-001") {
        let old = name.replace("-take-001", "");
        std::fs::rename(store.dir().join(&name), store.dir().join(old)).unwrap();
    }
    let found = store.read_takes(Target::Panel(1));
    assert!(found.notes.is_empty(), "{:?}", found.notes);
    assert_eq!(found.images.len(), 1);
    assert_eq!(found.images[0].take, 0);
    assert!(found.images[0].is_current(&plan));
}

#[test]
fn foreign_truncated_and_unknown_version_files_are_ignored_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    let model = PlanModel::of(&models);
    let plan = project::plan(&project::load(&project_path).unwrap(), &model, None).unwrap();
    let store = ImagesStore::beside(&project_path);
    render_into(
        &mut models,
        &mut Renderer::default(),
        &plan,
        RenderRequest::All,
        Some(&store),
    );
    let images = store.dir();
    let key = |stem: &str| images.join(format!("{stem}-take-001.key.ron"));

    // Panel 1 copied from another project's folder; panel 2's picture cut short; panel 3's key
    // from a future version.
    let text = std::fs::read_to_string(key("panel-01")).unwrap();
    std::fs::write(
        key("panel-01"),
        text.replace("\"story\"", "\"other-story\""),
    )
    .unwrap();
    let png = std::fs::read(images.join("panel-02-take-001.png")).unwrap();
    std::fs::write(images.join("panel-02-take-001.png"), &png[..png.len() / 2]).unwrap();
    let text = std::fs::read_to_string(key("panel-03")).unwrap();
    std::fs::write(key("panel-03"), text.replace("version: 1", "version: 99")).unwrap();

    let found = store.read_all(4);
    let read: Vec<Target> = found.images.iter().map(|i| i.target).collect();
    assert_eq!(read, vec![Target::Identity, Target::Panel(3)]);
    assert_eq!(found.notes.len(), 3, "{:?}", found.notes);
    for (note, why) in found
        .notes
        .iter()
        .zip(["another project", "PNG", "unknown version"])
    {
        assert!(note.contains(why), "{note}");
    }
    assert_eq!(
        store.stale(&plan, &Default::default()),
        vec![Target::Panel(0), Target::Panel(1), Target::Panel(2)]
    );
}

fn save_noise(path: &Path, width: usize, height: usize) {
    charaboard::sampler::seeded_noise(3, width, height)
        .unwrap()
        .save_safetensors("noise", path)
        .unwrap();
}

#[test]
fn a_noise_file_that_does_not_fit_a_later_scene_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (_, models) = tiny_models(dir.path());
    let mut project = project::load(&write_project(dir.path())).unwrap();
    // Noise for 64x64: the identity and panels 1-3 fit it, panel 4's scene is 96 wide.
    let noise = dir.path().join("noise.safetensors");
    save_noise(&noise, 64, 64);
    project.panels[3].seed = None;
    let err = project::plan(&project, &PlanModel::of(&models), Some(&noise)).unwrap_err();
    assert_mentions(
        &format!("{err:#}"),
        &["panel 4", "noise.safetensors", "96x64"],
    );
}

#[test]
fn a_failure_before_a_panels_first_step_names_that_panel() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let project = project::load(&write_project(dir.path())).unwrap();
    // Panel 4 (96x64) alone starts from a noise file; it is replaced by noise of the wrong size
    // after planning, so panel 4 fails while it is prepared, after panels 1-3 are done.
    let noise = dir.path().join("noise.safetensors");
    save_noise(&noise, 96, 64);
    let plan = project::plan(&project, &PlanModel::of(&models), None).unwrap();
    let mut shots: Vec<PanelShot> = (0..4)
        .map(|i| PanelShot {
            shot: plan.panels()[i].shot.clone(),
            scene: project.panels[i].scene,
            lock_background: project.scenes[project.panels[i].scene].lock_background,
        })
        .collect();
    shots[3].shot.noise = NoiseSource::File(noise.clone());
    let plan = Plan::new(plan.settings.clone(), plan.identity().shot.clone(), shots).unwrap();
    save_noise(&noise, 64, 64);
    let mut started = Vec::new();
    let mut finished = Vec::new();
    let job = RenderJob {
        plan: &plan,
        request: RenderRequest::All,
        store: None,
        options: RenderOptions::default(),
    };
    let ended = render::run(&mut Renderer::default(), &mut models, &job, &mut |p| {
        match p {
            Progress::Started(t) => started.push(t),
            Progress::Finished { image, .. } => finished.push(image.target),
            Progress::Step(_) | Progress::Look { .. } => {}
        }
        StepControl::Continue
    });
    let Ended::Failed { target, error } = ended else {
        panic!("panel 4's noise does not fit");
    };
    assert_eq!(target, Some(Target::Panel(3)), "{error:#}");
    assert_eq!(started.last(), Some(&Target::Panel(3)));
    assert_eq!(finished.last(), Some(&Target::Panel(2)));
}

#[test]
fn a_failed_atomic_write_leaves_the_old_file_and_nothing_partial() {
    use charaboard::atomic_file::{write_atomic, write_atomic_with};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sheet.png");
    write_atomic(&path, b"old").unwrap();
    // The writer fails halfway (as an encoder or a full disk would).
    let err = write_atomic_with(&path, |w| {
        w.write_all(b"half of the new")?;
        anyhow::bail!("no space left on device")
    })
    .unwrap_err();
    assert_mentions(&format!("{err:#}"), &["sheet.png", "no space left"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    // A folder in the way of the target.
    let blocked = dir.path().join("storyboard.pdf");
    std::fs::create_dir(&blocked).unwrap();
    let err = write_atomic(&blocked, b"new").unwrap_err();
    assert_mentions(&format!("{err:#}"), &["storyboard.pdf", "in the way"]);
    assert_eq!(
        listing(dir.path()),
        BTreeSet::from(["sheet.png".to_string(), "storyboard.pdf".to_string()])
    );
}

#[test]
fn a_draft_then_a_final_are_two_takes_each_current_at_its_quality() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let project_path = write_project(dir.path());
    let model = PlanModel::of(&models);
    let mut project = project::load(&project_path).unwrap();
    project.settings.draft = true;
    project.settings.draft_long_side = 32;
    let draft_plan = project::plan(&project, &model, None).unwrap();
    assert_eq!(
        (draft_plan.identity().shot.width, draft_plan.settings.steps),
        (32, 3)
    );
    let store = ImagesStore::beside(&project_path);
    let mut renderer = Renderer::default();
    let render = |plan, renderer: &mut Renderer, models: &mut FluxModels| {
        let (ended, _) = render_into(models, renderer, plan, RenderRequest::All, Some(&store));
        assert!(matches!(ended, Ended::Finished));
    };
    render(&draft_plan, &mut renderer, &mut models);
    project.settings.draft = false;
    let final_plan = project::plan(&project, &model, None).unwrap();
    render(&final_plan, &mut renderer, &mut models);

    let takes = store.read_takes(Target::Panel(0)).images;
    let seen: Vec<(u32, Quality, u32)> = takes
        .iter()
        .map(|t| (t.take, t.quality, t.image.width()))
        .collect();
    assert_eq!(seen, vec![(1, Quality::Draft, 32), (2, Quality::Final, 64)]);
    // Each is judged against the plan of its own quality: neither is stale.
    let all: Vec<&_> = takes.iter().collect();
    assert_eq!(
        charaboard::project::images::not_current(&project, &all).unwrap(),
        Vec::<Target>::new()
    );
    // Another draft size: only the draft is stale.
    let mut changed = project.clone();
    changed.settings.draft_long_side = 48;
    assert_eq!(
        charaboard::project::images::not_current(&changed, &all).unwrap(),
        vec![Target::Panel(0)]
    );
}
