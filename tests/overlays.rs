//! Known-answer tests for the inspection overlays and contact sheets.

use charaboard::export::sheet::contact_sheet;
use charaboard::overlay::{
    cast_match_overlay, mask_overlay, match_overlay, owner_colour, similarity_color, subsample,
    TokenGrid, CHARACTER_COLOURS,
};
use image::{Rgb, RgbImage};

const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const RED: Rgb<u8> = Rgb([255, 0, 0]);

/// Whether pixel (x, y) lies in token 4 of a 2x3 grid (row 1, column 1).
fn in_token_4(x: u32, y: u32) -> bool {
    (16..32).contains(&x) && (16..32).contains(&y)
}

#[test]
fn token_grid_of_image_and_center() {
    let img = RgbImage::new(48, 32);
    let grid = TokenGrid::of_image(&img);
    assert_eq!(grid, TokenGrid { rows: 2, cols: 3 });
    assert_eq!(grid.center(5, 48, 32), (40.0, 24.0));
    assert_eq!(grid.center(0, 48, 32), (8.0, 8.0));
}

#[test]
fn mask_overlay_tints_and_draws_mask() {
    let img = RgbImage::from_pixel(48, 32, Rgb([200, 100, 50]));
    let grid = TokenGrid::of_image(&img);
    let mut owners = vec![0u8; 6];
    owners[4] = 1;
    let out = mask_overlay(&img, &owners, &[0], grid).unwrap();
    assert_eq!(out.dimensions(), (96, 32));
    for y in 0..32 {
        for x in 0..48 {
            let (left, right) = (*out.get_pixel(x, y), *out.get_pixel(48 + x, y));
            if in_token_4(x, y) {
                assert_eq!(right, RED, "mask at ({x},{y})");
                assert_eq!(left, Rgb([228, 50, 25]), "tint at ({x},{y})");
            } else {
                assert_eq!(right, BLACK, "mask at ({x},{y})");
                assert_eq!(left, Rgb([100, 50, 25]), "dimmed at ({x},{y})");
            }
        }
    }
}

#[test]
fn mask_overlay_rejects_wrong_mask_length() {
    let img = RgbImage::new(48, 32);
    let grid = TokenGrid::of_image(&img);
    assert!(mask_overlay(&img, &[1; 5], &[0], grid).is_err());
    assert!(mask_overlay(&img, &[1; 7], &[0], grid).is_err());
}

#[test]
fn mask_overlay_draws_each_character_in_its_colour() {
    let img = RgbImage::from_pixel(48, 32, Rgb([200, 100, 50]));
    let grid = TokenGrid::of_image(&img);
    // Tokens 1 and 4 belong to the image's first and second characters, which are the
    // storyboard's characters 2 and 0: blue and red, whatever their order in the prompt.
    let owners = [0, 1, 0, 0, 2, 0];
    let out = mask_overlay(&img, &owners, &[2, 0], grid).unwrap();
    let right = |token: usize| {
        *out.get_pixel(
            48 + (token as u32 % 3) * 16 + 8,
            (token as u32 / 3) * 16 + 8,
        )
    };
    assert_eq!(right(1), Rgb(CHARACTER_COLOURS[2]));
    assert_eq!(right(4), Rgb(CHARACTER_COLOURS[0]));
    assert_eq!(right(0), BLACK);
    assert_ne!(CHARACTER_COLOURS[2], CHARACTER_COLOURS[0]);
    assert_eq!(owner_colour(0, &[2, 0]), None);
}

#[test]
fn similarity_color_is_ordered_and_clamped() {
    assert_eq!(similarity_color(0.2), similarity_color(0.5));
    assert_eq!(similarity_color(1.7), similarity_color(1.0));
    assert_ne!(similarity_color(0.5), similarity_color(1.0));
    // Brightness (sum of channels) rises monotonically along the scale.
    let brightness = |s: f32| {
        similarity_color(s)
            .0
            .iter()
            .map(|&c| u32::from(c))
            .sum::<u32>()
    };
    let samples: Vec<u32> = (0..=10)
        .map(|i| brightness(0.5 + i as f32 * 0.05))
        .collect();
    assert!(samples.windows(2).all(|w| w[0] < w[1]), "{samples:?}");
}

#[test]
fn match_overlay_draws_line_between_token_centres() {
    let panel = RgbImage::new(32, 32);
    let identity = RgbImage::new(48, 64);
    let sim = 0.8;
    let color = similarity_color(sim);
    assert_ne!(color, BLACK);
    let out = match_overlay(&panel, &identity, &[(0, 0, sim)], 10);
    assert_eq!(out.dimensions(), (80, 64));
    for x in 8..=40 {
        assert_eq!(*out.get_pixel(x, 8), color, "line at ({x},8)");
    }
    // Dots at both ends, nothing far from the line.
    assert_eq!(*out.get_pixel(8, 10), color);
    assert_eq!(*out.get_pixel(40, 6), color);
    assert_eq!(*out.get_pixel(20, 30), BLACK);
    assert_eq!(*out.get_pixel(60, 50), BLACK);
}

#[test]
fn match_overlay_limits_lines_and_pads_shorter_image() {
    let panel = RgbImage::from_pixel(32, 64, Rgb([9, 9, 9]));
    let identity = RgbImage::from_pixel(32, 32, Rgb([9, 9, 9]));
    // Two matches, only the first kept: token 0 -> 0 and token 7 -> 3.
    let out = match_overlay(&panel, &identity, &[(0, 0, 1.0), (7, 3, 1.0)], 1);
    assert_eq!(out.dimensions(), (64, 64));
    assert_eq!(*out.get_pixel(50, 50), BLACK, "padding below identity");
    assert_eq!(
        *out.get_pixel(24, 56),
        Rgb([9, 9, 9]),
        "second match skipped"
    );
}

#[test]
fn subsample_every_kth() {
    let items: Vec<usize> = (0..10).collect();
    let picked = subsample(&items, 3);
    assert_eq!(picked.len(), 3);
    assert_eq!(picked[0], 0);
    assert_eq!(picked, subsample(&items, 3));
    assert!(picked.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(subsample(&items, 10), items);
    assert_eq!(subsample(&items, 50), items);
    assert!(subsample(&items, 0).is_empty());
}

#[test]
fn contact_sheet_layout() {
    let a = RgbImage::from_pixel(64, 32, Rgb([255, 0, 0])); // 2:1 -> 32 tall
    let b = RgbImage::from_pixel(32, 64, Rgb([0, 255, 0])); // 1:2 -> 128 tall
    let c = RgbImage::from_pixel(64, 64, Rgb([0, 0, 255])); // 1:1 -> 64 tall
    let (cell, gap) = (64, 4);
    let sheet = contact_sheet(&[&a, &b, &c], 2, cell, gap).unwrap();
    assert_eq!(sheet.width(), 2 * cell + 3 * gap);
    assert_eq!(sheet.height(), 128 + 64 + 3 * gap);
    assert_eq!(*sheet.get_pixel(gap + cell / 2, gap + 16), Rgb([255, 0, 0]));
    assert_eq!(
        *sheet.get_pixel(2 * gap + cell + 32, gap + 64),
        Rgb([0, 255, 0])
    );
    assert_eq!(
        *sheet.get_pixel(gap + 32, 2 * gap + 128 + 32),
        Rgb([0, 0, 255])
    );
    // Below the short first cell is background.
    assert_eq!(
        *sheet.get_pixel(gap + 32, gap + 100),
        Rgb([0xf4, 0xf4, 0xf4])
    );
}

#[test]
fn contact_sheet_rejects_bad_input() {
    let a = RgbImage::new(16, 16);
    assert!(contact_sheet(&[&a], 0, 64, 4).is_err());
    assert!(contact_sheet(&[], 2, 64, 4).is_err());
}

#[test]
fn consistency_is_foreground_similarity_times_identity_coverage() {
    use charaboard::consist::matching::Matches;
    use charaboard::consist::score::Consistency;
    // Panel tokens 0..4 with foreground 1, 2, 3; identity tokens 0..4 with foreground 0, 1.
    let panel_mask = [false, true, true, true];
    let identity_mask = [true, true, false, false];
    let matches = Matches::filter(
        &[3, 0, 0, 1],
        vec![0.9, 0.8, 0.6, -0.2],
        &panel_mask,
        &identity_mask,
        0.5,
    );
    let c = Consistency::of(&panel_mask, &matches, &identity_mask).unwrap();
    // Foreground similarities 0.8, 0.6 and -0.2 (as 0); both kept matches land on identity
    // token 0, so half the identity's foreground is reached.
    assert!((c.similarity - 1.4 / 3.0).abs() < 1e-6, "{c:?}");
    assert_eq!(c.coverage, 0.5);
    assert!((c.score() - 0.7 / 3.0).abs() < 1e-6);

    let all = Matches::filter(
        &[3, 0, 1, 1],
        vec![0.9, 0.8, 0.9, 0.7],
        &panel_mask,
        &identity_mask,
        0.5,
    );
    let better = Consistency::of(&panel_mask, &all, &identity_mask).unwrap();
    assert_eq!(better.coverage, 1.0);
    assert!(better.score() > c.score());

    let lost = Consistency::of(&[false; 4], &matches, &identity_mask).unwrap();
    assert_eq!(lost.score(), 0.0, "no character found in the panel");
    assert_eq!(Consistency::of(&panel_mask, &matches, &[false; 4]), None);
    assert_eq!(
        Consistency::of(&panel_mask[..3], &matches, &identity_mask),
        None
    );
}

#[test]
fn a_cast_match_overlay_draws_each_match_into_its_characters_identity_in_its_colour() {
    // A 32x16 panel (2 tokens: Mia's, Tom's) beside Mia's and Tom's identities (16x16 each),
    // stacked: each panel token matches token 0 of its own character's identity.
    let panel = RgbImage::new(32, 16);
    let (mia, tom) = (RgbImage::new(16, 16), RgbImage::new(16, 16));
    let owners = [1u8, 2];
    // The panel shows storyboard characters 2 and 0, in that order.
    let characters = [2, 0];
    let matches = [(0, 0, 0.9), (1, 0, 0.6)];
    let out = cast_match_overlay(&panel, &[&mia, &tom], &owners, &characters, &matches, 10);
    assert_eq!(
        out.dimensions(),
        (48, 32),
        "identities stacked beside the panel"
    );
    let (first, second) = (
        owner_colour(1, &characters).unwrap(),
        owner_colour(2, &characters).unwrap(),
    );
    assert_eq!(first, Rgb(CHARACTER_COLOURS[2]));
    assert_eq!(second, Rgb(CHARACTER_COLOURS[0]));
    // Token 0 (centre 8,8) -> the first identity's token 0 (40,8), in the first's colour.
    assert_eq!(*out.get_pixel(16, 8), first);
    assert_eq!(*out.get_pixel(40, 10), first, "dot on the first identity");
    // Token 1 (24,8) -> the second identity's token 0, below the first (40,24).
    assert_eq!(*out.get_pixel(40, 26), second, "dot on the second identity");
    assert_ne!(*out.get_pixel(40, 24), first);
    // No similarity colour anywhere: the character says which is which.
    let sims = [similarity_color(0.9), similarity_color(0.6)];
    assert!(out.pixels().all(|p| !sims.contains(p)));
}

#[test]
fn each_character_is_scored_on_its_own_region_matches_and_identity() {
    use charaboard::consist::matching::Matches;
    use charaboard::consist::score::Consistency;
    // Four panel tokens: background, Mia, Mia, Tom. Mia's identity has foreground tokens 0 and
    // 1, Tom's token 2 only.
    let owners = [0u8, 1, 1, 2];
    let matches = Matches {
        panel_idx: vec![1, 2, 3],
        identity_idx: vec![0, 1, 2],
        max_sim: vec![0.1, 0.9, 0.7, 0.4],
    };
    let mia = [true, true, false, false];
    let tom = [false, false, true, false];
    let scores = Consistency::of_cast(&owners, &matches, &[Some(&mia), Some(&tom)]);
    let (m, t) = (scores[0].unwrap(), scores[1].unwrap());
    assert!(
        (m.similarity - 0.8).abs() < 1e-6 && m.coverage == 1.0,
        "{m:?}"
    );
    assert!(
        (t.similarity - 0.4).abs() < 1e-6 && t.coverage == 1.0,
        "{t:?}"
    );
    // Tom lost his match: his coverage falls, Mia's score is untouched.
    let fewer = Matches {
        panel_idx: vec![1, 2],
        identity_idx: vec![0, 1],
        ..matches.clone()
    };
    let scores = Consistency::of_cast(&owners, &fewer, &[Some(&mia), Some(&tom)]);
    assert_eq!(scores[0], Some(m));
    assert_eq!(scores[1].unwrap().coverage, 0.0);
    // An identity not rendered has no score; one character is the one-character score.
    assert_eq!(
        Consistency::of_cast(&owners, &matches, &[Some(&mia), None])[1],
        None
    );
    let one = [0u8, 1, 1, 1];
    let mask: Vec<bool> = one.iter().map(|&o| o == 1).collect();
    let both = [true, true, true, false];
    assert_eq!(
        Consistency::of_cast(&one, &matches, &[Some(&both)])[0],
        Consistency::of(&mask, &matches, &both)
    );
}
