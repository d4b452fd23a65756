//! The storyboard document: RON round trips, error positions, validation, atomic saves and
//! the import of the reference's prompt files.

use std::fs;
use std::path::{Path, PathBuf};

use charaboard::consist::plan::{ModelKey, PlanModel, Target};
use charaboard::project::timing::{starts, timecode};
use charaboard::project::{self, CameraAngle, Project, ProjectError, ShotSize};

fn sample_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("projects")
        .join(name)
}

/// A project that exercises every optional field.
fn full_project() -> Project {
    let mut p = project::sample();
    p.title = "Round trip".into();
    p.scenes.push(project::Scene {
        name: String::new(),
        environment: "on a beach at noon,".into(),
        lock_background: false,
        width: Some(768),
        height: Some(1280),
    });
    p.panels.push(project::Panel {
        seed: Some(u64::MAX),
        shot: Some(ShotSize::CloseUp),
        angle: Some(CameraAngle::OverTheShoulder),
        camera_move: "slow push in".into(),
        dialogue: "\"Who's there?\"\nA second line.".into(),
        notes: "hold on the eyes".into(),
        duration: 3.25,
        ..project::Panel::new(1, "waving, \"quoted\" and #hashed")
    });
    p.settings.shot_in_prompt = true;
    p.settings.model = Some("models/FLUX.1-schnell".into());
    p.settings.steps = Some(4);
    p.settings.guidance = 0.0;
    p.settings.recipe.token_merge = false;
    p
}

#[track_caller]
fn invalid_message(p: &Project) -> String {
    format!("{:#}", p.validate().expect_err("should be invalid"))
}

#[test]
fn save_then_load_is_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.ron");
    let p = full_project();
    project::save(&p, &path).unwrap();
    assert_eq!(project::load(&path).unwrap(), p);
    // No temporary file is left behind, and there was nothing to back up.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["story.ron"]);
}

#[test]
fn sample_projects_load_and_validate() {
    let lighthouse = project::load(&sample_path("lighthouse-keeper.ron")).unwrap();
    assert_eq!(lighthouse, project::sample());
    assert_eq!(lighthouse.scenes.len(), 1);
    assert!(lighthouse.scenes[0].lock_background);
    assert_eq!(lighthouse.panels.len(), 4);

    let courier = project::load(&sample_path("courier-journey.ron")).unwrap();
    assert_eq!(courier.scenes.len(), 3);
    assert_eq!(courier.panels.len(), 6);
    let envs: Vec<_> = (0..6).map(|i| courier.panel_environment(i)).collect();
    assert_eq!(envs[0], envs[1]);
    assert_ne!(envs[1], envs[2]);
    assert_ne!(envs[3], envs[4]);
    let locks: Vec<_> = courier.scenes.iter().map(|s| s.lock_background).collect();
    assert!(locks.contains(&true) && locks.contains(&false));
}

#[test]
fn prompts_and_per_panel_values() {
    let p = project::load(&sample_path("courier-journey.ron")).unwrap();
    assert_eq!(
        p.identity_prompt(),
        format!(
            "{} {} {}",
            p.characters[0].identity.environment,
            p.characters[0].prompt,
            p.characters[0].identity.action
        )
    );
    assert_eq!(
        p.panel_prompt(4),
        format!(
            "{} {} {}",
            p.scenes[2].environment, p.characters[0].prompt, p.panels[4].action
        )
    );
    assert_eq!(p.panel_size(0), (1024, 1024));
    assert_eq!(p.panel_size(4), (768, 1024));
    assert_eq!(p.panel_seed(0), 2025);
    assert_eq!(p.panel_seed(3), 7);
}

#[test]
fn minimal_file_gets_defaults_and_bare_options() {
    let text = r#"(
        title: "t",
        character: "a cat,",
        identity: (environment: "in a room,", action: "sitting"),
        scenes: [(environment: "on a roof,", width: 512)],
        panels: [(scene: 0, action: "jumping", seed: 9)],
    )"#;
    let p = project::parse(text, Path::new("min.ron")).unwrap();
    assert_eq!(p.settings, project::RenderSettings::default());
    assert_eq!(p.settings.width, 1024);
    assert_eq!(p.settings.steps, None);
    assert_eq!(p.settings.guidance, 3.5);
    assert_eq!(p.settings.seed, 2025);
    assert_eq!(p.panel_size(0), (512, 1024));
    assert_eq!(p.panel_seed(0), 9);
    assert!(!p.scenes[0].lock_background);
}

/// Breaks line `line` (1-based) of the lighthouse sample with `edit` and returns the error.
fn break_sample(edit: impl Fn(&str) -> String, line: usize) -> ProjectError {
    let text = fs::read_to_string(sample_path("lighthouse-keeper.ron")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[line - 1] = edit(&lines[line - 1]);
    project::parse(&lines.join("\n"), Path::new("projects/x.ron")).unwrap_err()
}

fn line_of(needle: &str) -> usize {
    let text = fs::read_to_string(sample_path("lighthouse-keeper.ron")).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn missing_comma_names_its_line() {
    let n = line_of("title:");
    let err = break_sample(|l| l.trim_end_matches(',').to_string(), n);
    let ProjectError::Parse { line, col, .. } = &err else {
        panic!("expected a parse error, got {err}");
    };
    assert_eq!(*line, n, "{err}");
    let title_line = r#"    title: "The Lighthouse Keeper""#;
    assert_eq!(*col, title_line.chars().count() + 1, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("projects/x.ron:{n}:{col}: ")),
        "{err}"
    );
}

#[test]
fn unknown_field_names_its_line() {
    let n = line_of("lock_background");
    let err = break_sample(|l| l.replace("lock_background", "lock_backgound"), n);
    let ProjectError::Parse {
        line, col, message, ..
    } = &err
    else {
        panic!("expected a parse error, got {err}");
    };
    assert_eq!((*line, *col), (n, 13), "{err}");
    assert!(message.contains("lock_backgound"), "{err}");
}

#[test]
fn wrong_type_names_its_line() {
    let n = line_of("scene: 0");
    let err = break_sample(|l| l.replace('0', "\"zero\""), n);
    assert!(
        matches!(err, ProjectError::Parse { line, .. } if line == n),
        "{err}"
    );
}

#[test]
fn invalid_file_is_reported_with_its_path() {
    let n = line_of("width: 1024");
    let err = break_sample(|l| l.replace("1024", "1000"), n);
    assert!(matches!(err, ProjectError::Invalid { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "projects/x.ron: settings.width must be a multiple of 16 from 16 to 4096, found 1000"
    );
}

#[test]
fn load_of_missing_file_is_an_io_error() {
    let err = project::load(Path::new("/nonexistent/story.ron")).unwrap_err();
    assert!(
        matches!(err, ProjectError::Io { .. } | ProjectError::Write { .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("/nonexistent/story.ron: "));
}

#[test]
fn validation_names_the_field() {
    let ok = project::sample();
    ok.validate().unwrap();

    let mut p = ok.clone();
    p.panels.clear();
    assert_eq!(
        invalid_message(&p),
        "panels: a storyboard needs at least one panel"
    );

    let mut p = ok.clone();
    p.characters[0].prompt = "  ".into();
    assert!(invalid_message(&p).starts_with("characters[0].prompt:"));

    let mut p = ok.clone();
    p.characters[0].identity.environment.clear();
    assert!(invalid_message(&p).starts_with("characters[0].identity.environment:"));

    let mut p = ok.clone();
    for _ in 0..3 {
        p.scenes.push(ok.scenes[0].clone());
    }
    p.scenes[2].environment.clear();
    assert!(invalid_message(&p).starts_with("scenes[2].environment:"));

    let mut p = ok.clone();
    p.panels[3].action.clear();
    assert!(invalid_message(&p).starts_with("panels[3].action:"));

    let mut p = ok.clone();
    p.panels[3].scene = 1;
    let msg = invalid_message(&p);
    assert!(msg.starts_with("panels[3].scene is 1"), "{msg}");
    assert!(msg.contains("only 1 scene"), "{msg}");
    p.scenes.push(ok.scenes[0].clone());
    p.panels[3].scene = 5;
    assert!(invalid_message(&p).contains("only 2 scenes"));

    let mut p = ok.clone();
    p.settings.width = 1000;
    assert_eq!(
        invalid_message(&p),
        "settings.width must be a multiple of 16 from 16 to 4096, found 1000"
    );
    let mut p = ok.clone();
    p.settings.height = 0;
    assert!(
        invalid_message(&p).starts_with("settings.height must be a multiple of 16 from 16 to 4096")
    );

    let mut p = ok.clone();
    p.scenes[0].height = Some(700);
    assert_eq!(
        invalid_message(&p),
        "scenes[0].height must be a multiple of 16 from 16 to 4096, found 700"
    );
    p.scenes[0].height = Some(1280);
    p.validate().unwrap();

    let mut p = ok.clone();
    p.settings.steps = Some(0);
    assert!(invalid_message(&p).starts_with("settings.steps"));

    let mut p = ok.clone();
    p.settings.guidance = f64::NAN;
    assert!(invalid_message(&p).starts_with("settings.guidance"));

    let mut p = ok.clone();
    p.settings.recipe.merge_weight = 2.0;
    assert!(invalid_message(&p).starts_with("settings.recipe.merge_weight"));

    for bad in [0.0, -1.0, 601.0, f64::NAN, f64::INFINITY] {
        let mut p = ok.clone();
        p.panels[2].duration = bad;
        assert_eq!(
            invalid_message(&p),
            format!(
                "panels[2].duration must be a number of seconds from 0.042 to 600, found {bad}"
            )
        );
    }
}

#[test]
fn shots_and_timing_load_with_defaults_and_join_the_prompt_when_asked() {
    // A file written before shots existed loads with no shot fields and 2 s panels.
    let mut p = project::load(&sample_path("courier-journey.ron")).unwrap();
    assert!(p
        .panels
        .iter()
        .all(|x| x.shot.is_none() && x.dialogue.is_empty()));
    assert!(p.panels.iter().all(|x| x.duration == 2.0));
    let (at, total) = starts(&p);
    assert_eq!(at[..3], [0.0, 2.0, 4.0]);
    assert_eq!(total, 12.0);
    assert_eq!(timecode(total), "00:00:12:00");
    assert_eq!(timecode(3725.5), "01:02:05:12");
    assert_eq!(timecode(1.0 / 24.0), "00:00:00:01");

    let model = PlanModel {
        key: ModelKey {
            source: "test".into(),
            dtype: "f32".into(),
        },
        default_steps: 4,
    };
    let key = |p: &Project, i: usize| {
        let plan = project::plan(p, &model, None).unwrap();
        plan.image(Target::Panel(i)).unwrap().key.clone()
    };
    let before = (key(&p, 0), key(&p, 1));
    p.panels[0].shot = Some(ShotSize::ExtremeWide);
    p.panels[0].angle = Some(CameraAngle::BirdsEye);
    p.panels[0].duration = 0.5;
    // Shot fields and timing are for the board until the switch is on.
    assert_eq!((key(&p, 0), key(&p, 1)), before);
    p.settings.shot_in_prompt = true;
    let (shot, other) = (key(&p, 0), key(&p, 1));
    assert_eq!(
        shot.prompt,
        format!(
            "{} {} {}, extreme wide shot, bird's-eye view",
            p.panel_environment(0),
            p.characters[0].prompt,
            p.panels[0].action
        )
    );
    assert_ne!(shot, before.0, "the panel's key follows its prompt");
    assert_eq!(
        other.prompt, before.1.prompt,
        "a panel without a shot is as it was"
    );
}

#[test]
fn second_save_keeps_the_first_as_backup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.ron");
    let first = project::sample();
    let mut second = first.clone();
    second.title = "Second".into();
    project::save(&first, &path).unwrap();
    let first_text = fs::read_to_string(&path).unwrap();
    project::save(&second, &path).unwrap();

    let backup = dir.path().join("story.ron.bak");
    assert_eq!(fs::read_to_string(&backup).unwrap(), first_text);
    assert_eq!(project::load(&backup).unwrap(), first);
    assert_eq!(project::load(&path).unwrap(), second);
    assert!(!dir.path().join(".story.ron.partial").exists());
}

/// Lists a folder as (name, contents) pairs, recursing into nothing: enough to see that a
/// failed save changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = fs::read(e.path()).ok();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn failed_save_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The parent of the target is a file, so not even the temporary file can be created.
    let blocker = dir.path().join("not-a-folder");
    fs::write(&blocker, "keep me").unwrap();
    let before = snapshot(dir.path());
    let err = project::save(&project::sample(), &blocker.join("story.ron")).unwrap_err();
    assert!(
        matches!(err, ProjectError::Io { .. } | ProjectError::Write { .. }),
        "{err}"
    );
    assert_eq!(snapshot(dir.path()), before);

    // The target is a folder: the temporary file is written, the backup copy fails, and the
    // temporary file must be cleaned up with the target left as it was.
    let target = dir.path().join("story.ron");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), "untouched").unwrap();
    let before = snapshot(dir.path());
    let err = project::save(&project::sample(), &target).unwrap_err();
    assert!(
        matches!(err, ProjectError::Io { .. } | ProjectError::Write { .. }),
        "{err}"
    );
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(
        fs::read_to_string(target.join("inside")).unwrap(),
        "untouched"
    );
}

#[test]
fn images_live_beside_the_project() {
    assert_eq!(
        project::images_dir(Path::new("projects/lighthouse-keeper.ron")),
        Path::new("projects/lighthouse-keeper.images")
    );
    assert_eq!(
        project::images_dir(Path::new("story.ron")),
        Path::new("story.images")
    );
}

const TWO_GROUPS: &str = "\
in a gym,#a strong man,#lifting weights
in a gym,#a strong man,#drinking water
on a mountain top,#a strong man,#hiking up, front view
in a gym,# a strong man, #  waving  


on a beach,#a girl in a red dress,#standing
on a beach,#a girl in a red dress,#running, side view
in a cafe,#a girl in a red dress,#reading a book
";

#[test]
fn import_builds_one_project_per_group() {
    let projects = project::import(TWO_GROUPS, true).unwrap();
    assert_eq!(projects.len(), 2);

    let a = &projects[0];
    assert_eq!(a.title, "Story 1");
    assert_eq!(a.characters[0].prompt, "a strong man,");
    assert_eq!(a.characters[0].identity.environment, "in a gym,");
    assert_eq!(a.characters[0].identity.action, "lifting weights");
    let envs: Vec<_> = a.scenes.iter().map(|s| s.environment.as_str()).collect();
    assert_eq!(envs, ["in a gym,", "on a mountain top,"]);
    assert!(a.scenes.iter().all(|s| s.lock_background));
    let panels: Vec<_> = a
        .panels
        .iter()
        .map(|p| (p.scene, p.action.as_str()))
        .collect();
    assert_eq!(
        panels,
        [
            (0, "drinking water"),
            (1, "hiking up, front view"),
            (0, "waving")
        ]
    );
    assert_eq!(
        a.panel_prompt(1),
        "on a mountain top, a strong man, hiking up, front view"
    );

    let b = &projects[1];
    assert_eq!(b.title, "Story 2");
    assert_eq!(b.panels.len(), 2);
    assert_eq!(b.scenes.len(), 2);

    let unlocked = project::import(TWO_GROUPS, false).unwrap();
    assert!(unlocked
        .iter()
        .flat_map(|p| &p.scenes)
        .all(|s| !s.lock_background));
}

fn import_error(text: &str) -> String {
    format!("{:#}", project::import(text, true).unwrap_err())
}

#[test]
fn import_names_bad_lines() {
    let msg = import_error("a#b#c\na#b#d\n\na#b\n");
    assert!(
        msg.starts_with("line 4:") && msg.contains("found 2 fields"),
        "{msg}"
    );

    let msg = import_error("a#b#c\na#b#d#e\n");
    assert!(
        msg.starts_with("line 2:") && msg.contains("found 4 fields"),
        "{msg}"
    );

    let msg = import_error("a#b#c\na#someone else#d\n");
    assert!(
        msg.starts_with("line 2:") && msg.contains("character"),
        "{msg}"
    );

    let msg = import_error("a#b#c\na#b#d\n\n\na#b#lonely\n\na#b#c\na#b#d\n");
    assert!(
        msg.starts_with("line 5:") && msg.contains("only an identity line"),
        "{msg}"
    );

    let msg = import_error("a#b#c\na#b# \n");
    assert!(
        msg.starts_with("line 2:") && msg.contains("action"),
        "{msg}"
    );

    assert!(import_error("\n\n").contains("no prompt lines"));
}

#[test]
fn import_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.txt");
    fs::write(&path, TWO_GROUPS).unwrap();
    assert_eq!(project::import_file(&path, false).unwrap().len(), 2);

    fs::write(&path, "just one field\n").unwrap();
    let msg = format!("{:#}", project::import_file(&path, false).unwrap_err());
    assert!(
        msg.contains("prompts.txt") && msg.contains("line 1:"),
        "{msg}"
    );
}
