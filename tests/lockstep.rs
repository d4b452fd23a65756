//! Lockstep rendering (`--bank recompute`) gives the banked mode's images: every scene mode,
//! panels of another size than the identity, dev and schnell, a re-roll of one panel; and so
//! does the bank in host memory (`--bank host`).

mod common;

use charaboard::consist::plan::{RenderRequest, Target};
use charaboard::consist::session::{BankMode, Renderer};
use charaboard::pipeline::FluxModels;
use charaboard::project::model::Project;
use common::{
    assert_same, knight_project, max_abs_diff, render_images as render, tiny_models, Images,
    CLEARING,
};

const MARKET: &str = "on a busy market street at noon,";
const HARBOUR: &str = "by a grey harbour in the rain,";

/// Every scene mode in one storyboard: a panel locked onto the identity's background, one with
/// its own background, and a locked scene of another size (its first panel is the others'
/// background reference).
fn every_mode(steps: Option<usize>) -> Project {
    let mut p = knight_project(
        vec![
            (0, "drawing a sword"),
            (1, "running"),
            (2, "buying bread"),
            (2, "laughing"),
        ],
        vec![(CLEARING, true), (HARBOUR, false), (MARKET, true)],
    );
    p.settings.width = 64;
    p.settings.height = 64;
    p.settings.steps = steps;
    // On so few tokens, erosion would leave the tiny model's masks empty.
    p.settings.recipe.erode = 1;
    p.settings.recipe.dilate = 1;
    p.scenes[2].width = Some(48);
    p.scenes[2].height = Some(80);
    p
}

/// `p` rendered whole banked on the device and in lockstep at batch 2, each by a fresh renderer.
fn banked_and_lockstep(
    models: &mut FluxModels,
    p: &Project,
) -> ((Renderer, Images), (Renderer, Images)) {
    let mut banked = Renderer::default();
    let reference = render(
        &mut banked,
        models,
        p,
        RenderRequest::All,
        BankMode::Device,
        1,
    );
    let mut lockstep = Renderer::default();
    let recomputed = render(
        &mut lockstep,
        models,
        p,
        RenderRequest::All,
        BankMode::Recompute,
        2,
    );
    ((banked, reference), (lockstep, recomputed))
}

#[test]
fn lockstep_gives_the_banked_images_in_every_scene_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let p = every_mode(Some(6));
    let ((banked, reference), (mut lockstep, recomputed)) = banked_and_lockstep(&mut models, &p);
    assert_same(&reference, &recomputed);
    assert_eq!(lockstep.bank_bytes(), 0, "lockstep keeps no bank");

    // 6 steps, mask step 1, sharing until step 5. Banked: the identity, then per panel a
    // pre-run (2 steps) and a main run (5).
    assert_eq!(banked.forwards(), 6 + 4 * (2 + 5));
    // Lockstep: the identity's first 2 steps alone (panel 1 locks onto its background); panels
    // 1-2 beside it (pre-runs with 2 identity steps, main runs with all 6: the identity image);
    // panel 3 with 2 and 5 identity steps; panel 4 (following panel 3's background) with 2 and
    // 5 identity steps and panel 3's main run again (1 and 4 steps).
    let expected = 2 + (2 + 2 * 2 + 6 + 2 * 5) + (2 + 2 + 5 + 5) + (2 + 1 + 2 + 5 + 4 + 5);
    assert_eq!(lockstep.forwards(), expected);

    // Re-rolling the last panel is one batch of the identity, its scene's first panel and
    // itself, and gives the same image.
    let before = lockstep.forwards();
    let again = render(
        &mut lockstep,
        &mut models,
        &p,
        RenderRequest::Panel(3),
        BankMode::Recompute,
        2,
    );
    assert_eq!(again.len(), 1);
    assert_eq!(lockstep.forwards() - before, (2 + 1 + 2) + (5 + 4 + 5));
    let last = &reference
        .iter()
        .find(|(t, _)| *t == Target::Panel(3))
        .unwrap()
        .1;
    assert!(max_abs_diff(&again[0].1.latents, &last.latents) <= 1e-4);
}

#[test]
fn lockstep_gives_the_banked_images_with_schnell() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schnell");
    charaboard::models::tiny::write_repo(&path, 21, true).unwrap();
    let mut models =
        FluxModels::load(&path, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    // The model's own 4 steps; a locked panel on the identity and a panel of another size.
    let mut p = knight_project(
        vec![(0, "kneeling"), (1, "buying bread")],
        vec![(CLEARING, true), (MARKET, false)],
    );
    p.settings.width = 64;
    p.settings.height = 64;
    p.settings.steps = None;
    p.scenes[1].width = Some(80);
    let banked = render(
        &mut Renderer::default(),
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Device,
        1,
    );
    let lockstep = render(
        &mut Renderer::default(),
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Recompute,
        4,
    );
    assert_same(&banked, &lockstep);
    // The bank in host memory gives the same images too (on the CPU host and device are one).
    let host = render(
        &mut Renderer::default(),
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Host,
        1,
    );
    assert_same(&banked, &host);
}

#[test]
fn lockstep_gives_the_banked_images_with_two_characters() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let p = common::two_friends_every_mode();
    let ((banked, reference), (mut lockstep, recomputed)) = banked_and_lockstep(&mut models, &p);
    assert_same(&reference, &recomputed);
    let owners = |images: &Images, t: Target| {
        let o = &images.iter().find(|(x, _)| *x == t).unwrap().1;
        (o.owners.clone(), o.matches.clone())
    };
    for i in 0..5 {
        let t = Target::Panel(i);
        assert_eq!(
            owners(&reference, t),
            owners(&recomputed, t),
            "panel {}",
            i + 1
        );
    }
    // Both identities are images of the job, and the panel of both has tokens of each (the
    // tiny random model's similarities keep matches in Tom's panels only).
    assert!(recomputed.iter().any(|(t, _)| *t == Target::IdentityOf(1)));
    let (both, _) = owners(&reference, Target::Panel(2));
    assert!(both.contains(&1) && both.contains(&2));

    // 6 steps, mask step 1, sharing until step 5. Banked: two identities, then per panel a
    // pre-run (2 steps) and a main run (5).
    assert_eq!(banked.forwards(), 2 * 6 + 5 * (2 + 5));
    // Lockstep, batch 2: Mia's identity's first 2 steps alone (panel 4 locks onto its
    // background); panels 1 and 4 beside both identities (Mia's for panel 1 and panel 4's
    // background, Tom's for panel 4), rendering both whole; panel 5 (nobody) beside no
    // identity; panels 2-3 (following panel 1's background) beside both identities and panel
    // 1's main run again (1 and 4 steps).
    let expected =
        2 + (2 * 2 + 2 * 2 + 2 * 6 + 2 * 5) + (2 + 5) + (2 * 2 + 1 + 2 * 2 + 2 * 5 + 4 + 2 * 5);
    assert_eq!(lockstep.forwards(), expected);
    assert_eq!(lockstep.bank_bytes(), 0, "lockstep keeps no bank");

    // Re-rolling the panel of nobody computes no identity row: its pre-run and main run alone.
    let before = lockstep.forwards();
    let again = render(
        &mut lockstep,
        &mut models,
        &p,
        RenderRequest::Panel(4),
        BankMode::Recompute,
        2,
    );
    assert_eq!(again.len(), 1);
    assert_eq!(lockstep.forwards() - before, 2 + 5);
    let (_, first) = reference
        .iter()
        .find(|(t, _)| *t == Target::Panel(4))
        .unwrap();
    assert!(max_abs_diff(&again[0].1.latents, &first.latents) <= 1e-4);
}
