//! A foreground mask painted over the identity (issue 12 part 5): it replaces the computed mask
//! in every panel's matching and in the bank's pruning, banked and lockstep alike, without
//! changing the identity image; it is part of the keys; it is saved in the RON file and read
//! back; and one painted over another grid is refused naming the field and both grids.

mod common;

use charaboard::consist::bank::{identity_bank_bytes, BankDims};
use charaboard::consist::mask::Grid;
use charaboard::consist::plan::{PlanModel, Quality, RenderRequest, Target};
use charaboard::consist::session::{BankMode, Renderer};
use charaboard::project::model::Project;
use charaboard::project::painted_mask::PaintedMask;
use common::{assert_mentions, assert_same, knight_project, render_images, tiny_models, Images};
use common::{error_of, CLEARING};

const HARBOUR: &str = "by a grey harbour in the rain,";

/// A panel locked onto the identity's background and two with their own, at 64x64 and 6
/// steps: a 4 x 4 token grid.
fn storyboard() -> Project {
    let mut p = knight_project(
        vec![(0, "drawing a sword"), (1, "running"), (1, "laughing")],
        vec![(CLEARING, true), (HARBOUR, false)],
    );
    p.settings.width = 64;
    p.settings.height = 64;
    p.settings.steps = Some(6);
    // On so few tokens, erosion would leave the tiny model's masks empty.
    p.settings.recipe.erode = 1;
    p.settings.recipe.dilate = 1;
    p
}

const GRID: Grid = Grid { rows: 4, cols: 4 };

fn painted(mut p: Project, mask: &[bool]) -> Project {
    p.characters[0].identity.painted_mask = Some(PaintedMask::from_tokens(GRID, mask));
    p
}

fn identity(images: &Images) -> &charaboard::consist::session::ImageOutput {
    &images
        .iter()
        .find(|(t, _)| *t == Target::Identity)
        .unwrap()
        .1
}

/// Every identity token some panel token matched, with repeats.
fn matched(images: &Images) -> Vec<u32> {
    images
        .iter()
        .filter_map(|(_, o)| o.matches.as_ref())
        .flat_map(|m| m.identity_idx.iter().copied())
        .collect()
}

/// The identity bank's bytes for `fg_tokens` foreground tokens of this storyboard.
fn bank_bytes(models: &charaboard::pipeline::FluxModels, p: &Project, fg_tokens: usize) -> usize {
    let cfg = models.transformer.config();
    let steps = p.settings.steps.unwrap();
    identity_bank_bytes(
        &p.settings.recipe.schedule(steps),
        BankDims {
            single_blocks: cfg.depth_single_blocks,
            hidden: cfg.hidden_size,
            img_tokens: GRID.len(),
            fg_tokens,
            dtype_bytes: 4,
            locked_background: true,
        },
    )
}

/// The most matched identity token is taken out of the foreground and every computed background
/// token put in: no panel matches (and so borrows or merges from) the token taken out, some
/// match a token put in, the bank holds exactly the painted tokens, the identity image is the
/// same, and lockstep gives the banked mode's images.
#[test]
fn a_painted_mask_replaces_the_computed_one_banked_and_lockstep() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut models) = tiny_models(dir.path());
    let p = storyboard();
    let mut plain = Renderer::default();
    let computed = render_images(
        &mut plain,
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Device,
        1,
    );
    let mask = identity(&computed).mask.clone();
    let foreground = mask.iter().filter(|&&m| m).count();
    assert!(
        foreground > 1 && foreground < GRID.len(),
        "a mixed mask: {mask:?}"
    );
    assert_eq!(plain.bank_bytes(), bank_bytes(&models, &p, foreground));
    let before = matched(&computed);
    assert!(before.iter().all(|&j| mask[j as usize]));
    let most = (0..GRID.len() as u32)
        .max_by_key(|&j| before.iter().filter(|&&k| k == j).count())
        .unwrap();
    assert!(before.contains(&most), "panels matched the identity");

    let mut paint: Vec<bool> = vec![true; GRID.len()];
    paint[most as usize] = false;
    let p = painted(p, &paint);
    let mut renderer = Renderer::default();
    let banked = render_images(
        &mut renderer,
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Device,
        1,
    );
    let id = identity(&banked);
    assert_eq!(id.mask, paint, "the identity's mask is the painted one");
    assert_eq!(
        id.image,
        identity(&computed).image,
        "the image is unchanged"
    );
    assert_eq!(
        renderer.bank_bytes(),
        bank_bytes(&models, &p, GRID.len() - 1)
    );
    let after = matched(&banked);
    assert!(
        !after.contains(&most),
        "a token painted out is never matched"
    );
    assert!(
        after.iter().any(|&j| !mask[j as usize]),
        "a token painted in is matched: {after:?}"
    );

    let mut lockstep = Renderer::default();
    let recomputed = render_images(
        &mut lockstep,
        &mut models,
        &p,
        RenderRequest::All,
        BankMode::Recompute,
        2,
    );
    assert_same(&banked, &recomputed);
}

/// The painting is in the identity's key and so in every panel's; a draft takes it resampled to
/// its own grid; the computed mask's keys come back when it is reset.
#[test]
fn painting_changes_the_keys_and_drafts_take_it_resampled() {
    let dir = tempfile::tempdir().unwrap();
    let (_, models) = tiny_models(dir.path());
    let model = PlanModel::of(&models);
    let mut p = storyboard();
    p.settings.width = 128;
    p.settings.height = 128;
    let plan = |p: &Project, q| charaboard::project::plan::plan_at(p, &model, None, q).unwrap();
    let before = plan(&p, Quality::Final);
    let grid = Grid { rows: 8, cols: 8 };
    // The left half painted.
    let paint: Vec<bool> = (0..grid.len()).map(|t| t % 8 < 4).collect();
    let mut q = p.clone();
    q.characters[0].identity.painted_mask = Some(PaintedMask::from_tokens(grid, &paint));
    let after = plan(&q, Quality::Final);
    for (b, a) in before.images().iter().zip(after.images()) {
        assert_ne!(b.key, a.key, "{}", b.target.label());
    }
    assert_eq!(
        after.identity().shot.painted_mask.as_deref(),
        Some(&paint[..])
    );

    q.settings.draft_long_side = 64;
    let draft = plan(&q, Quality::Draft);
    let expected: Vec<bool> = (0..16).map(|t| t % 4 < 2).collect();
    assert_eq!(
        draft.identity().shot.painted_mask.as_deref(),
        Some(&expected[..])
    );

    q.characters[0].identity.painted_mask = None;
    let reset = plan(&q, Quality::Final);
    for (b, r) in before.images().iter().zip(reset.images()) {
        assert_eq!(b.key, r.key, "{}", b.target.label());
    }
}

#[test]
fn a_painted_mask_is_saved_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut paint = vec![false; GRID.len()];
    paint[5] = true;
    paint[6] = true;
    let p = painted(storyboard(), &paint);
    let path = dir.path().join("board.ron");
    charaboard::project::save(&p, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_mentions(&text, &["painted_mask", "\".##.\"", "\"....\""]);
    let loaded = charaboard::project::load(&path).unwrap();
    assert_eq!(loaded, p);
    assert_eq!(
        loaded.characters[0]
            .identity
            .painted_mask
            .as_ref()
            .unwrap()
            .tokens(),
        paint
    );
    // A file without one has none, and writes none.
    let plain = dir.path().join("plain.ron");
    charaboard::project::save(&storyboard(), &plain).unwrap();
    assert!(!std::fs::read_to_string(&plain)
        .unwrap()
        .contains("painted_mask"));
    assert_eq!(
        charaboard::project::load(&plain).unwrap().characters[0]
            .identity
            .painted_mask,
        None
    );
}

/// Painted over another grid than the identity's (the size changed since), or written by hand
/// wrongly: refused naming the field and what it should be, by the CLI before any model loads.
#[test]
fn a_painted_mask_of_another_grid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = painted(storyboard(), &[true; 16]);
    p.settings.width = 96;
    let e = error_of(p.validate());
    assert_mentions(
        &e,
        &[
            "characters[0].identity.painted_mask",
            "4 x 4 token grid",
            "96 x 64 pixels",
            "6 x 4 grid",
        ],
    );
    let path = dir.path().join("board.ron");
    charaboard::project::save(&p, &path).unwrap();
    let out = common::render_cli(&path, dir.path(), &dir.path().join("out"), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(
        &stderr,
        &["characters[0].identity.painted_mask", "6 x 4 grid"],
    );
    assert!(!stderr.contains("loading"), "{stderr}");

    let mut p = painted(storyboard(), &[true; 16]);
    let mask = p.characters[0].identity.painted_mask.as_mut().unwrap();
    mask.rows[2] = "#x##".into();
    assert_mentions(
        &error_of(p.validate()),
        &["characters[0].identity.painted_mask.rows[2]", "`x`"],
    );
    mask_rows(&mut p).pop();
    assert_mentions(
        &error_of(p.validate()),
        &["painted_mask.rows has 3 rows, but height is 4"],
    );
}

fn mask_rows(p: &mut Project) -> &mut Vec<String> {
    &mut p.characters[0].identity.painted_mask.as_mut().unwrap().rows
}
