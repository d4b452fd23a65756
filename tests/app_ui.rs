//! The storyboard app through egui_kittest: widgets are found by their labels, as a user finds them.

mod common;

use charaboard::app_settings::AppSettings;
use charaboard::consist::plan::Target;
use charaboard::consist::recipe::Numerics;
use charaboard::memory_plan::BankChoice;
use charaboard::ui::app::{CharaboardApp, StartOptions};
use charaboard::ui::cells::CellState;
use charaboard::ui::dialogs::Dialogs;
use charaboard::ui::grid::{consistency, MIN_CELL_WIDTH};
use charaboard::ui::setup::ModelStatus;
use common::{charaboard, ok};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROJECT: &str = r#"(
    title: "UI test",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [
        (environment: "in an empty background,", lock_background: true),
        (environment: "on a rainy street at night,"),
    ],
    panels: [
        (scene: 0, action: "waving", caption: "Hello there"),
        (scene: 1, action: "running with a parcel"),
    ],
    settings: (width: 128, height: 128, steps: Some(4)),
)"#;

fn project_file(dir: &Path) -> PathBuf {
    let path = dir.join("story.ron");
    std::fs::write(&path, PROJECT).unwrap();
    path
}

fn app(
    project: Option<PathBuf>,
    model: Option<PathBuf>,
    answers: Vec<Option<PathBuf>>,
) -> CharaboardApp {
    CharaboardApp::new(
        None,
        StartOptions {
            project,
            model,
            render_on_start: false,
            dialogs: Dialogs::scripted(answers),
            settings: AppSettings::default(),
            persist: false,
            layout_report: None,
        },
    )
}

fn harness(app: CharaboardApp) -> Harness<'static, CharaboardApp> {
    Harness::builder()
        .with_size((1600.0, 2400.0))
        .build_ui_state(|ui, app: &mut CharaboardApp| app.show(ui), app)
}

/// Steps the UI until `done` holds, as the worker works in the background.
fn wait_until(h: &mut Harness<CharaboardApp>, what: &str, done: impl Fn(&CharaboardApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}; status {:?}",
            h.state().status
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    h.step();
}

#[test]
fn editing_reordering_locking_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(app(Some(project_file(dir.path())), None, vec![]));
    h.run_steps(2);

    let character = h.get_by_label("Character");
    character.focus();
    character.type_text(" with a scar");
    h.run_steps(2);
    assert!(h.state().doc.project.characters[0]
        .prompt
        .ends_with("with a scar"));

    h.get_by_label("Add panel").click();
    h.run_steps(2);
    assert_eq!(h.state().doc.project.panels.len(), 3);
    h.get_by_label("Panel 3 action").focus();
    h.get_by_label("Panel 3 action").type_text(" again");
    h.run_steps(2);
    h.get_by_label("Move panel 3 up").click();
    h.run_steps(2);
    let actions: Vec<String> = h
        .state()
        .doc
        .project
        .panels
        .iter()
        .map(|p| p.action.clone())
        .collect();
    assert_eq!(
        actions,
        vec!["waving", "a new action again", "running with a parcel"]
    );

    h.get_by_label("Lock background (scene 2)").click();
    h.run_steps(2);
    assert!(h.state().doc.project.scenes[1].lock_background);
    assert!(h.state().doc.is_dirty());

    // Undo takes back the lock, then the move; redo brings the lock back.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run_steps(2);
    assert!(!h.state().doc.project.scenes[1].lock_background);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().doc.project.panels[2].action, "a new action again");
    h.key_press_modifiers(
        egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
        egui::Key::Z,
    );
    h.run_steps(2);
    assert_eq!(h.state().doc.project.panels[1].action, "a new action again");

    // Token counts are live.
    assert!(
        h.query_all_by_label_contains("/ 511 tokens").count() >= 5,
        "a count beside every prompt"
    );
}

#[test]
fn a_broken_project_file_names_its_line_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = project_file(dir.path());
    let broken = dir.path().join("broken.ron");
    std::fs::write(
        &broken,
        PROJECT.replace(
            "(scene: 0, action: \"waving\"",
            "(scene: 0 action: \"waving\"",
        ),
    )
    .unwrap();
    let mut h = harness(app(Some(good), None, vec![Some(broken)]));
    h.run_steps(2);
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open project...").click();
    h.run_steps(3);
    let (message, is_error) = h.state().status.clone().unwrap();
    assert!(is_error && message.contains("broken.ron:10:"), "{message}");
    assert_eq!(h.state().doc.project.title, "UI test");
}

#[test]
fn a_refused_save_keeps_the_old_file_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = project_file(dir.path());
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let mut h = harness(app(
        Some(path.clone()),
        None,
        vec![Some(blocker.join("story.ron"))],
    ));
    h.run_steps(2);
    h.get_by_label("Title").focus();
    h.get_by_label("Title").type_text("!");
    h.run_steps(2);
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Save as...").click();
    h.run_steps(3);
    let (message, is_error) = h.state().status.clone().unwrap();
    assert!(
        is_error && message.contains("previous file is untouched"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), PROJECT);
    assert!(
        h.state().doc.is_dirty(),
        "unsaved changes are still unsaved"
    );
}

#[test]
fn render_on_a_tiny_model_then_overlays_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let export_dir = dir.path().join("export");
    let mut h = harness(app(
        Some(project_file(dir.path())),
        Some(model),
        vec![Some(export_dir.clone())],
    ));
    wait_until(&mut h, "the model", |a| {
        matches!(a.model, ModelStatus::Loaded { .. }) && !a.busy
    });
    // Beside the Render button: the memory plan's choice (Auto), then a named mode's numbers.
    h.run_steps(2);
    assert!(h
        .query_by_label_contains("memory plan: --bank device --batch 1")
        .is_some());
    h.state_mut().settings.bank = BankChoice::Recompute;
    h.state_mut().settings.batch = Some(2);
    h.run_steps(2);
    assert!(h
        .query_by_label_contains("memory plan: --bank recompute --batch 2")
        .is_some());
    h.state_mut().settings.bank = BankChoice::Auto;
    h.state_mut().settings.batch = None;

    h.get_by_label("Render all").click();
    h.step();
    wait_until(&mut h, "every cell", |a| !a.busy);
    for label in ["Identity: done", "Panel 1: done", "Panel 2: done"] {
        assert!(
            h.query_by_label(label).is_some(),
            "{label}; status {:?}",
            h.state().status
        );
    }
    assert!(matches!(
        h.state().cells.get(Target::Panel(1)).unwrap().state,
        CellState::Done
    ));
    // Images are saved beside the project, with what the overlays need.
    let images = dir.path().join("story.images");
    for f in [
        "identity-take-001.png",
        "panel-01-take-001.png",
        "panel-02-take-001.safetensors",
        "panel-02-take-001.key.ron",
    ] {
        assert!(images.join(f).is_file(), "{f}");
    }

    // Every rendered panel shows its consistency with the identity, and the grid can put the
    // most drifted first.
    let score =
        |a: &CharaboardApp, t: Target| consistency(&a.cells, &a.doc.project, t).map(|c| c.score());
    for (k, t) in [(1, Target::Panel(0)), (2, Target::Panel(1))] {
        let s = score(h.state(), t).expect("a rendered panel has a score");
        assert!((0.0..=1.0).contains(&s), "{s}");
        let label = format!("Panel {k} consistency {:.0}%", 100.0 * s);
        assert!(h.query_by_label(&label).is_some(), "{label}");
    }
    h.get_by_label("Most drifted first").click();
    h.run_steps(2);
    let order: Vec<Target> = h.state().layout.cells.iter().map(|c| c.0).collect();
    let mut sorted = [Target::Panel(0), Target::Panel(1)];
    sorted.sort_by(|a, b| {
        score(h.state(), *a)
            .unwrap()
            .total_cmp(&score(h.state(), *b).unwrap())
    });
    assert_eq!(order[0], Target::Identity);
    assert_eq!(order[1..], sorted[..]);

    // Select panel 2 and toggle the overlays.
    h.state_mut().selected = Some(Target::Panel(1));
    h.run_steps(2);
    h.get_by_label("Show point matches").click();
    h.get_by_label("Show identity mask").click();
    h.run_steps(2);
    let overlays = h.state().overlays;
    assert!(overlays.matches && overlays.identity_mask && overlays.mask);
    assert!(h.query_by_label_contains("matches (showing").is_some());
    h.get_by_label("Show foreground mask").click();
    h.run_steps(2);
    assert!(!h.state().overlays.mask);

    // Editing a prompt makes its cell stale.
    h.get_by_label("Panel 1 action").focus();
    h.get_by_label("Panel 1 action").type_text(" happily");
    h.run_steps(2);
    assert!(h.query_by_label("Panel 1: stale").is_some());

    // Export through the File menu (the folder dialog answers `export_dir`).
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Export...").click();
    wait_until(&mut h, "the export", |a| {
        a.status
            .as_ref()
            .is_some_and(|(m, _)| m.starts_with("exported"))
    });
    for f in ["sheet.png", "storyboard.pdf", "01.png", "02.png"] {
        assert!(export_dir.join(f).is_file(), "{f}");
    }
}

#[test]
fn a_storyboard_rendered_by_the_cli_opens_with_every_cell_done() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let project = project_file(dir.path());
    ok(&charaboard(&[
        "render",
        project.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]));
    let mut h = harness(app(Some(project), Some(model), vec![]));
    wait_until(&mut h, "the model and the saved images", |a| {
        matches!(a.model, ModelStatus::Loaded { .. })
            && !a.busy
            && a.cells
                .get(Target::Panel(1))
                .is_some_and(|c| c.image.is_some())
    });
    for label in ["Identity: done", "Panel 1: done", "Panel 2: done"] {
        assert!(
            h.query_by_label(label).is_some(),
            "{label}; status {:?}",
            h.state().status
        );
    }
    // A setting the CLI rendered with changes: every cell is stale, none is shown as done.
    h.state_mut().doc.project.settings.guidance = 4.0;
    h.run_steps(2);
    for label in ["Identity: stale", "Panel 1: stale", "Panel 2: stale"] {
        assert!(h.query_by_label(label).is_some(), "{label}");
    }
}

#[test]
fn the_render_settings_choose_reference_numerics() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(app(Some(project_file(dir.path())), None, vec![]));
    h.run_steps(2);
    h.get_by_label("Render settings").click();
    h.run_steps(2);
    h.get_by_label("Numerics").click();
    h.run_steps(2);
    h.get_by_label("Reference").click();
    h.run_steps(2);
    let numerics = |a: &CharaboardApp| a.doc.project.settings.recipe.numerics;
    assert_eq!(numerics(h.state()), Numerics::Reference);
    assert!(h.state().doc.is_dirty());
    assert_eq!(
        h.state().settings.defaults.recipe.numerics,
        Numerics::Reference,
        "remembered for new projects"
    );
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run_steps(2);
    assert_eq!(numerics(h.state()), Numerics::Exact);
}

/// Every cell lies inside the grid's rect (none cut off at the side), and the grid keeps at least
/// one whole cell.
fn assert_grid_fits(h: &Harness<CharaboardApp>, cells: usize, when: &str) {
    let layout = &h.state().layout;
    let grid = layout.grid;
    assert_eq!(layout.cells.len(), cells, "{when}: every cell is drawn");
    assert!(
        grid.width() >= MIN_CELL_WIDTH,
        "{when}: the grid is {} wide, less than a cell",
        grid.width()
    );
    let window = h.ctx.content_rect();
    assert!(
        window.x_range().contains(grid.min.x) && grid.max.x <= window.max.x,
        "{when}: grid {grid:?} in window {window:?}"
    );
    for &(target, rect) in &layout.cells {
        // Within a point: rects are rounded to pixels.
        assert!(
            grid.expand(1.0).contains_rect(rect),
            "{when}: {target:?} at {rect:?} outside {grid:?}"
        );
        assert!(
            rect.width() >= MIN_CELL_WIDTH - 0.5,
            "{when}: {target:?} is {rect:?}"
        );
    }
    if let Some(inspector) = h.state().inspector_rect {
        assert!(
            inspector.min.x >= grid.max.x,
            "{when}: the inspector {inspector:?} overlaps the grid {grid:?}"
        );
    }
}

#[test]
fn the_frame_grid_never_clips_at_laptop_and_desktop_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.ron");
    let panels: String = (0..9)
        .map(|i| format!("(scene: {}, action: \"pose {i}\"),", i % 2))
        .collect();
    let many = PROJECT.replace(
        r#"(scene: 0, action: "waving", caption: "Hello there"),"#,
        &panels,
    );
    std::fs::write(&path, many).unwrap();
    // The last window is too narrow for the editor, the inspector and two cells: the side
    // panels give way and the grid keeps one whole cell.
    for size in [(1280.0, 800.0), (1920.0, 1080.0), (820.0, 700.0)] {
        let when = |what: &str| format!("{}x{}, {what}", size.0, size.1);
        let mut h = Harness::builder().with_size(size).build_ui_state(
            |ui, app: &mut CharaboardApp| app.show(ui),
            app(Some(path.clone()), None, vec![]),
        );
        h.run_steps(3);
        assert_grid_fits(&h, 11, &when("no inspector"));
        let columns_alone = columns(&h);

        // Clicking a cell opens the inspector beside the grid.
        h.get_by_label("Identity: empty").click();
        h.run_steps(6);
        assert_eq!(h.state().selected, Some(Target::Identity));
        assert!(h.state().inspector_rect.is_some(), "the inspector is open");
        assert_grid_fits(&h, 11, &when("inspector open"));
        assert!(columns(&h) <= columns_alone);

        // Folded away from the menu bar, the grid takes the room back.
        h.get_by_label("Inspector").click();
        h.run_steps(6);
        assert!(h.state().inspector_rect.is_none());
        assert_grid_fits(&h, 11, &when("inspector folded"));
        assert_eq!(columns(&h), columns_alone);
    }
}

/// Cells in the first row of the grid.
fn columns(h: &Harness<CharaboardApp>) -> usize {
    let cells = &h.state().layout.cells;
    cells
        .iter()
        .filter(|(_, r)| r.min.y == cells[0].1.min.y)
        .count()
}

#[test]
fn the_animatic_player_advances_by_the_panels_durations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.ron");
    let timed = PROJECT
        .replace(
            r#"caption: "Hello there")"#,
            r#"caption: "Hello there", duration: 0.5)"#,
        )
        .replace(
            r#"action: "running with a parcel")"#,
            r#"action: "running with a parcel", duration: 1.0)"#,
        );
    std::fs::write(&path, timed).unwrap();
    let mut h = harness(app(Some(path), None, vec![]));
    h.run_steps(2);
    h.get_by_label("Animatic").click();
    h.run_steps(2);
    assert!(h.query_by_label("Animatic: panel 1 of 2").is_some());
    assert!(h
        .query_by_label_contains("00:00:00:00 / 00:00:01:12")
        .is_some());

    // Each frame moves the play head on by the frame's time (a quarter second in the harness).
    h.get_by_label("Play").click();
    let mut shown = Vec::new();
    for _ in 0..10 {
        h.step();
        let p = h.state().player.clone();
        let panel = (1..=2)
            .find(|k| {
                h.query_by_label(&format!("Animatic: panel {k} of 2"))
                    .is_some()
            })
            .unwrap();
        shown.push((p.position, panel, p.playing));
    }
    for &(t, panel, _) in &shown {
        assert_eq!(panel, if t < 0.5 { 1 } else { 2 }, "at {t} s: {shown:?}");
    }
    assert!(shown.iter().any(|s| s.1 == 1) && shown.iter().any(|s| s.1 == 2));
    let last = shown.last().unwrap();
    assert_eq!(
        (last.0, last.2),
        (1.5, false),
        "stops at the end: {shown:?}"
    );

    // Scrubbing (the slider's value) moves the play head back to the panel there.
    h.state_mut().player.position = 0.2;
    h.run_steps(1);
    assert!(h.query_by_label("Animatic: panel 1 of 2").is_some());
    assert!(h
        .query_by_label_contains("00:00:00:05 / 00:00:01:12")
        .is_some());
}

#[test]
fn takes_rerolled_switched_compared_undone_deleted_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let project_path = project_file(dir.path());
    let mut h = harness(app(Some(project_path.clone()), Some(model), vec![]));
    wait_until(&mut h, "the model", |a| {
        matches!(a.model, ModelStatus::Loaded { .. }) && !a.busy
    });
    h.get_by_label("Render all").click();
    h.step();
    wait_until(&mut h, "the first takes", |a| !a.busy);
    h.state_mut().selected = Some(Target::Panel(0));
    h.run_steps(2);
    assert!(h.query_by_label("Take 1 of 1").is_some());

    // A re-roll renders panel 1 from a new seed as its second take, which becomes active.
    h.get_by_label("Re-roll").click();
    h.step();
    wait_until(&mut h, "the re-roll", |a| !a.busy);
    h.run_steps(2);
    let takes = |a: &CharaboardApp| {
        let cell = a.cells.get(Target::Panel(0)).unwrap();
        (
            cell.takes.iter().map(|t| t.take).collect::<Vec<_>>(),
            cell.image.as_ref().map(|i| i.take),
        )
    };
    assert_eq!(takes(h.state()), (vec![1, 2], Some(2)));
    assert!(h.state().doc.project.panels[0].seed.is_some());
    assert!(h.query_by_label("Take 2 of 2").is_some());
    assert!(h.query_by_label("Panel 1: done").is_some());

    // Left arrow: take 1 is active again, with its seed, so it is current, not stale.
    h.key_press(egui::Key::ArrowLeft);
    h.run_steps(2);
    assert_eq!(takes(h.state()).1, Some(1));
    assert_eq!(h.state().doc.project.panels[0].seed, None);
    assert!(h.query_by_label("Panel 1: done").is_some());

    // Two takes side by side.
    h.get_by_label("Compare with").click();
    h.run_steps(2);
    h.get_by_label_contains("take 2 (final").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("active: take 1 (final").is_some());

    // Undo brings back take 2, redo take 1.
    h.state_mut().doc.undo();
    h.run_steps(2);
    assert_eq!(takes(h.state()).1, Some(2));
    h.state_mut().doc.redo();
    h.run_steps(2);
    assert_eq!(takes(h.state()).1, Some(1));

    // Saved with take 1 active, the export uses take 1.
    h.state_mut().save();
    h.run_steps(2);
    let saved = charaboard::project::load(&project_path).unwrap();
    let store = charaboard::project::ImagesStore::beside(&project_path);
    let out = dir.path().join("export");
    charaboard::export::storyboard::export_all(
        &saved,
        &store,
        &out,
        &Default::default(),
        &Default::default(),
        charaboard::export::storyboard::StalePanels::Refuse,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("01.png")).unwrap(),
        std::fs::read(store.png_path(Target::Panel(0), 1)).unwrap()
    );

    // Take 2 deleted: hidden at once, its files gone once the project is saved.
    h.key_press(egui::Key::ArrowRight);
    h.run_steps(2);
    h.get_by_label("Delete take").click();
    h.run_steps(2);
    assert!(h.query_by_label("Take 1 of 1").is_some());
    assert!(store.png_path(Target::Panel(0), 2).is_file());
    h.state_mut().save();
    h.run_steps(2);
    assert!(!store.png_path(Target::Panel(0), 2).exists());
    assert!(store.png_path(Target::Panel(0), 1).is_file());
}

/// A dropped file, as the window system hands it over.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// The identity from a picture: chosen in the file picker, replaced by a drop on the identity
/// cell (undoable), rendered; the cell then shows the picture, the difference and its PSNR.
#[test]
fn a_picture_identity_is_picked_dropped_rendered_and_compared() {
    use charaboard::project::IdentitySource;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let gradient = |path: &Path, shift: u32| {
        image::RgbImage::from_fn(160, 128, |x, y| {
            image::Rgb([(x + shift) as u8, y as u8, 90])
        })
        .save(path)
        .unwrap();
    };
    let (face, other) = (dir.path().join("face.png"), dir.path().join("other.png"));
    gradient(&face, 0);
    gradient(&other, 40);
    let mut h = harness(app(
        Some(project_file(dir.path())),
        Some(model),
        vec![Some(face.clone())],
    ));
    wait_until(&mut h, "the model", |a| {
        matches!(a.model, ModelStatus::Loaded { .. }) && !a.busy
    });
    let picture = |a: &CharaboardApp| match &a.doc.project.characters[0].identity.source {
        IdentitySource::Picture(p) => Some(p.path.clone()),
        IdentitySource::Generated => None,
    };
    h.get_by_label("Picture…").click();
    h.run_steps(3);
    assert_eq!(
        picture(h.state()),
        Some(PathBuf::from("face.png")),
        "relative to the project"
    );
    assert!(h.query_by_label("Fit").is_some() && h.query_by_label("Inverter").is_some());

    let (_, cell) = *h
        .state()
        .layout
        .cells
        .iter()
        .find(|(t, _)| *t == Target::Identity)
        .unwrap();
    h.hover_at(cell.center());
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(other.clone())));
    h.run_steps(2);
    assert_eq!(
        picture(h.state()),
        Some(PathBuf::from("other.png")),
        "dropped on the cell"
    );
    h.state_mut().doc.undo();
    h.run_steps(2);
    assert_eq!(
        picture(h.state()),
        Some(PathBuf::from("face.png")),
        "the drop undone"
    );

    h.get_by_label("Render all").click();
    h.step();
    wait_until(&mut h, "every cell", |a| !a.busy);
    assert!(
        h.query_by_label("Identity: done").is_some(),
        "status {:?}",
        h.state().status
    );
    assert!(h.query_by_label_contains("Reconstruction PSNR").is_some());
    let saved = dir
        .path()
        .join("story.images")
        .join("identity-take-001.key.ron");
    assert!(std::fs::read_to_string(saved)
        .unwrap()
        .contains("FixedPoint"));
}

/// Review first: Render runs only the pre-runs and each panel shows its look; Approve all,
/// then Skip panel 2, then Render approved: panel 1 gets a take equal to an uninterrupted
/// render's, panel 2 none.
#[test]
fn review_first_shows_looks_then_renders_only_the_approved_panels() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let project_path = project_file(dir.path());
    let mut h = harness(app(Some(project_path.clone()), Some(model.clone()), vec![]));
    wait_until(&mut h, "the model", |a| {
        matches!(a.model, ModelStatus::Loaded { .. }) && !a.busy
    });
    h.get_by_label("Render settings").click();
    h.run_steps(2);
    h.get_by_label("Review first").click();
    h.run_steps(2);
    assert!(h.state().doc.project.settings.review_first);
    h.get_by_label("Render all").click();
    h.step();
    wait_until(&mut h, "the looks", |a| !a.busy);
    h.run_steps(2);
    let store = charaboard::project::ImagesStore::beside(&project_path);
    for i in 0..2 {
        let cell = h.state().cells.get(Target::Panel(i)).unwrap();
        assert!(cell.look.is_some(), "panel {} has its look", i + 1);
        assert!(cell.takes.is_empty(), "panel {} has no take", i + 1);
        assert!(store.look_path(Target::Panel(i)).is_file());
    }
    assert!(h
        .query_by_label("Panel 1: look: approve, re-roll or skip")
        .is_some());
    assert!(!h
        .state()
        .cells
        .get(Target::Identity)
        .unwrap()
        .takes
        .is_empty());

    h.get_by_label("Approve all").click();
    h.run_steps(2);
    assert!(h.query_by_label("Panel 2: look approved").is_some());
    let skips: Vec<_> = h.get_all_by_label("Skip").collect();
    assert_eq!(skips.len(), 2, "one Skip per look");
    skips[1].click();
    h.run_steps(2);
    assert!(h.query_by_label("Panel 1: look approved").is_some());
    assert!(h.query_by_label("Panel 2: look skipped").is_some());

    h.get_by_label("Render approved").click();
    h.step();
    wait_until(&mut h, "the approved main runs", |a| !a.busy);
    h.run_steps(2);
    assert!(h.query_by_label("Panel 1: done").is_some());
    assert!(h.query_by_label("Panel 2: look skipped").is_some());
    let taken = |i| h.state().cells.get(Target::Panel(i)).unwrap().takes.len();
    assert_eq!((taken(0), taken(1)), (1, 0));
    assert!(
        !store.look_path(Target::Panel(0)).exists(),
        "the take replaced it"
    );
    assert!(!store.png_path(Target::Panel(1), 1).exists());

    // The same panel rendered in one go by the CLI: the same picture.
    let whole = dir.path().join("whole");
    ok(&common::render_cli(
        &project_path,
        &model,
        &whole,
        &["--panels", "1"],
    ));
    assert_eq!(
        std::fs::read(store.png_path(Target::Panel(0), 1)).unwrap(),
        std::fs::read(whole.join("panel-01-take-001.png")).unwrap()
    );

    // Opened again, panel 2's look is read back from its files and waits for a verdict.
    let mut h = harness(app(Some(project_path), Some(model), vec![]));
    wait_until(&mut h, "the look read back", |a| {
        matches!(a.model, ModelStatus::Loaded { .. })
            && a.cells
                .get(Target::Panel(1))
                .is_some_and(|c| c.look.is_some())
    });
    h.run_steps(2);
    assert!(h
        .query_by_label("Panel 2: look: approve, re-roll or skip")
        .is_some());
    assert!(h.query_by_label("Panel 1: done").is_some());
}

/// The identity's mask painted in the inspector: one stroke of the remove brush along the top
/// row is one undo step, written into the project (and so into every key: the cells go stale);
/// undo restores the project, redo the painting, and reset takes it away.
#[test]
fn the_identity_mask_is_painted_undone_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    charaboard::models::tiny::write_repo(&model, 0, false).unwrap();
    let mut h = harness(app(Some(project_file(dir.path())), Some(model), vec![]));
    wait_until(&mut h, "the model", |a| {
        matches!(a.model, ModelStatus::Loaded { .. }) && !a.busy
    });
    h.get_by_label("Render all").click();
    h.step();
    wait_until(&mut h, "every cell", |a| !a.busy);
    h.state_mut().selected = Some(Target::Identity);
    h.run_steps(2);
    h.get_by_label("Paint mask").click();
    h.run_steps(2);
    h.get_by_label("Remove").click();
    h.run_steps(2);
    let before = h.state().doc.project.clone();
    let computed = h
        .state()
        .cells
        .get(Target::Identity)
        .and_then(|c| c.image.as_ref())
        .map(|i| i.mask.clone())
        .unwrap();
    assert_eq!(computed.len(), 64, "128 x 128: an 8 x 8 grid");

    let rect = h.get_by_label("Identity mask painting").rect();
    let at = |c: usize| {
        egui::pos2(
            rect.min.x + (c as f32 + 0.5) * rect.width() / 8.0,
            rect.min.y + 0.5 * rect.height() / 8.0,
        )
    };
    let button = |pos, pressed| egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::default(),
    };
    h.event(egui::Event::PointerMoved(at(0)));
    h.event(button(at(0), true));
    h.step();
    for c in 1..8 {
        h.event(egui::Event::PointerMoved(at(c)));
        h.step();
    }
    assert_eq!(
        h.state().doc.project,
        before,
        "a stroke is written when it ends"
    );
    h.event(button(at(7), false));
    h.run_steps(2);
    let painted = h.state().doc.project.characters[0]
        .identity
        .painted_mask
        .clone()
        .expect("the stroke painted a mask");
    let mut expected = computed.clone();
    expected[..8].fill(false);
    assert_eq!(painted.tokens(), expected);
    for label in ["Identity: stale", "Panel 1: stale", "Panel 2: stale"] {
        assert!(h.query_by_label(label).is_some(), "{label}");
    }

    h.state_mut().doc.undo();
    h.run_steps(2);
    assert_eq!(h.state().doc.project, before, "one stroke, one undo step");
    assert!(h.query_by_label("Identity: done").is_some());
    h.state_mut().doc.redo();
    h.run_steps(2);
    assert_eq!(
        h.state().doc.project.characters[0].identity.painted_mask,
        Some(painted)
    );
    h.get_by_label("Reset to computed").click();
    h.run_steps(2);
    assert_eq!(
        h.state().doc.project.characters[0].identity.painted_mask,
        None
    );
    assert!(h.query_by_label("Identity: done").is_some());
}
