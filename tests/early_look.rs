//! Early look (`render --review-first`, `render --approved`): a panel stopped after its pre-run,
//! its look written beside its takes, and the approved main run started from the look.

mod common;

use charaboard::consist::recipe::Recipe;
use common::{assert_mentions, render_cli};
use std::path::Path;

const STEPS: usize = 6;

/// Panel 1 locked onto the identity's background, panel 2 free, panel 3 free with its own seed.
const PROJECT: &str = r#"(
    title: "Look test",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [
        (environment: "in an empty background,", lock_background: true),
        (environment: "in a sunny park,"),
    ],
    panels: [
        (scene: 0, action: "waving"),
        (scene: 1, action: "running with a parcel"),
        (scene: 1, action: "eating an apple", seed: Some(5)),
    ],
    settings: (width: 64, height: 64, steps: Some(6)),
)"#;

/// The transformer forwards `render` reports on its last line.
fn forwards(stderr: &str) -> usize {
    let tail = stderr
        .rsplit_once(" transformer forwards")
        .expect("a forwards count")
        .0;
    tail.rsplit(' ').next().unwrap().parse().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {text}");
    text
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn looks_then_approved_main_runs_equal_an_uninterrupted_render_at_the_main_runs_cost() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("look.ron");
    std::fs::write(&project, PROJECT).unwrap();
    let mask_step = Recipe::default().schedule(STEPS).mask_step;

    let whole = dir.path().join("whole");
    let uninterrupted = stderr(&render_cli(&project, &model, &whole, &[]));
    assert_eq!(forwards(&uninterrupted), STEPS + 3 * (STEPS + mask_step));

    // Review first: the identity whole, every panel as far as its look, no panel take.
    let out = dir.path().join("reviewed");
    let review = stderr(&render_cli(&project, &model, &out, &["--review-first"]));
    assert_eq!(forwards(&review), STEPS + 3 * (mask_step + 1));
    for n in 1..=3 {
        let look = out.join(format!("panel-0{n}-look.png"));
        assert_mentions(
            &review,
            &[&format!("panel-0{n} look"), &look.display().to_string()],
        );
        for suffix in ["-mask.png", ".safetensors", ".key.ron"] {
            assert!(
                out.join(format!("panel-0{n}-look{suffix}")).is_file(),
                "{n}{suffix}"
            );
        }
        assert!(!out.join(format!("panel-0{n}-take-001.png")).exists());
    }
    assert!(out.join("panel-01-look-matches.png").is_file());
    assert!(out.join("identity-take-001.png").is_file());
    assert!(!out.join("sheet.png").exists(), "looks make no sheet");

    // Approved: only the main runs (the identity is computed again in this new process).
    let approved = stderr(&render_cli(&project, &model, &out, &["--approved", "1-3"]));
    assert_eq!(forwards(&approved), STEPS + 3 * (STEPS - 1));
    for n in 1..=3 {
        // The main run continues from the look's own step-0 latents, stored in the run's
        // dtype, with the pre-run's mask and matches: the same computation as an
        // uninterrupted panel, so byte for byte the same picture and latents.
        for suffix in [".png", ".safetensors", "-mask.png", "-matches.png"] {
            let name = format!("panel-0{n}-take-001{suffix}");
            assert!(read(&out, &name) == read(&whole, &name), "{name} differs");
        }
        assert!(
            !out.join(format!("panel-0{n}-look.key.ron")).exists(),
            "the take replaces its look"
        );
    }
}

#[test]
fn a_stale_look_is_refused_then_made_again_and_a_fresh_one_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("look.ron");
    std::fs::write(&project, PROJECT).unwrap();
    let mask_step = Recipe::default().schedule(STEPS).mask_step;
    let out = dir.path().join("out");
    stderr(&render_cli(&project, &model, &out, &["--review-first"]));
    let old_key = read(&out, "panel-02-look.key.ron");
    let old_look = read(&out, "panel-02-look.safetensors");

    // Panel 2 re-rolled: its look was made for another seed.
    let edited = PROJECT.replace(
        r#"(scene: 1, action: "running with a parcel")"#,
        r#"(scene: 1, action: "running with a parcel", seed: Some(9))"#,
    );
    std::fs::write(&project, edited).unwrap();
    let refused = render_cli(&project, &model, &out, &["--approved", "2"]);
    assert!(!refused.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&refused.stderr),
        &["panel 2", "stale", "--review-first"],
    );
    assert!(!out.join("panel-02-take-001.png").exists());

    // Review first again: panel 2's look is made again, panels 1 and 3 keep theirs.
    let again = stderr(&render_cli(&project, &model, &out, &["--review-first"]));
    assert_eq!(forwards(&again), STEPS + (mask_step + 1));
    assert!(read(&out, "panel-02-look.key.ron") != old_key);
    assert!(read(&out, "panel-02-look.safetensors") != old_look);
    stderr(&render_cli(&project, &model, &out, &["--approved", "2"]));
    assert!(out.join("panel-02-take-001.png").is_file());
}

#[test]
fn a_panel_without_a_look_is_refused_and_lockstep_says_why_it_cannot_review() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("look.ron");
    std::fs::write(&project, PROJECT).unwrap();
    let out = dir.path().join("out");
    let refused = render_cli(&project, &model, &out, &["--approved", "1,3"]);
    assert!(!refused.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&refused.stderr),
        &["panel 1 has no look", "--review-first"],
    );
    assert!(!out.exists(), "nothing is written");

    let bad = render_cli(&project, &model, &out, &["--approved", "4"]);
    assert_mentions(
        &String::from_utf8_lossy(&bad.stderr),
        &["--approved 4", "panel 4 does not exist"],
    );
    let lockstep = render_cli(
        &project,
        &model,
        &out,
        &["--review-first", "--bank", "recompute"],
    );
    assert!(!lockstep.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&lockstep.stderr),
        &["--bank recompute", "--bank device"],
    );
}
