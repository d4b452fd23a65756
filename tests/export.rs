//! The storyboard export: text wrapping, the captioned panel sheet, the PDF and the files
//! `export_all` writes.

use std::fs;
use std::path::Path;

use charaboard::atomic_file::save_png;
use charaboard::export::pdf::{storyboard_pdf, Paper};
use charaboard::export::storyboard::{export_all, panel_sheet, SheetOptions, StalePanels};
use charaboard::export::text::TextRenderer;
use charaboard::project::ImagesStore;
use charaboard::project::{IdentityShot, Panel, Project, RenderSettings, Scene};
use image::{Rgb, RgbImage};

const RED: Rgb<u8> = Rgb([220, 20, 30]);
const BLUE: Rgb<u8> = Rgb([20, 40, 210]);

const LONG_CAPTION: &str = "The keeper climbs the spiral stairs one last time, lamp in hand, \
    counting every step aloud while the storm batters the windows and the old radio crackles \
    with a voice nobody has heard in forty years, asking whether anyone is still listening.";

fn project(captions: &[&str]) -> Project {
    Project {
        title: "The Lighthouse Keeper".into(),
        character: "an old lighthouse keeper with a grey beard".into(),
        identity: IdentityShot {
            environment: "in a white studio,".into(),
            action: "standing".into(),
        },
        scenes: vec![Scene {
            name: String::new(),
            environment: "on a rocky coast,".into(),
            lock_background: false,
            width: None,
            height: None,
        }],
        panels: captions
            .iter()
            .map(|c| Panel {
                scene: 0,
                action: "looking at the sea".into(),
                caption: (*c).into(),
                seed: None,
            })
            .collect(),
        settings: RenderSettings::default(),
    }
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

#[test]
fn wrapped_lines_fit_and_keep_every_word() {
    let text = TextRenderer::new().unwrap();
    for max_width in [60.0, 120.0, 300.0] {
        let lines = text.wrap(LONG_CAPTION, 15.0, max_width);
        assert!(lines.len() > 1, "a long caption wraps at {max_width}");
        for line in &lines {
            let w = text.measure(line, 15.0);
            assert!(w <= max_width, "{line:?} is {w} px wide, over {max_width}");
        }
        let joined = lines.join(" ");
        assert_eq!(words(&joined), words(LONG_CAPTION));
    }
    assert!(text.wrap("", 15.0, 100.0).is_empty());
    assert!(text.line_height(20.0) > text.line_height(10.0));
}

#[test]
fn a_word_longer_than_the_line_is_split_not_cut() {
    let text = TextRenderer::new().unwrap();
    let word = "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch";
    let lines = text.wrap(&format!("at {word} station"), 16.0, 80.0);
    assert!(lines.len() >= 4, "{lines:?}");
    for line in &lines {
        assert!(text.measure(line, 16.0) <= 80.0, "{line:?} overflows");
    }
    assert_eq!(lines.concat().replace(' ', ""), format!("at{word}station"));
}

#[test]
fn drawn_text_blends_into_the_image() {
    let text = TextRenderer::new().unwrap();
    let mut img = RgbImage::from_pixel(120, 40, Rgb([255, 255, 255]));
    text.draw(&mut img, "Panel", 4.0, 4.0, 24.0, Rgb([0, 0, 0]));
    let dark = img.pixels().filter(|p| p.0[0] < 64).count();
    let grey = img.pixels().filter(|p| (64..192).contains(&p.0[0])).count();
    assert!(dark > 20, "solid glyph pixels: {dark}");
    assert!(grey > 0, "antialiased edges are blended");
    // Text that starts outside the image is clipped, not a panic.
    text.draw(&mut img, "clip", -10.0, 30.0, 24.0, Rgb([0, 0, 0]));
}

#[test]
fn rows_grow_to_show_a_long_caption() {
    let images = vec![Some(RgbImage::from_pixel(64, 64, RED)), None];
    let opts = SheetOptions::default();
    let short = panel_sheet(&project(&["Dawn.", "Dusk."]), &images, None, &opts).unwrap();
    let long = panel_sheet(&project(&["Dawn.", LONG_CAPTION]), &images, None, &opts).unwrap();
    assert_eq!(short.width(), long.width());
    let text = TextRenderer::new().unwrap();
    let extra_lines = text.wrap(LONG_CAPTION, 15.0, 320.0).len() - 1;
    assert!(
        long.height() >= short.height() + (extra_lines as f32 * text.line_height(15.0)) as u32,
        "{} vs {} for {extra_lines} extra lines",
        long.height(),
        short.height()
    );
}

#[test]
fn panels_are_drawn_in_reading_order() {
    let images = vec![
        Some(RgbImage::from_pixel(64, 64, RED)),
        Some(RgbImage::from_pixel(64, 32, BLUE)),
        None,
    ];
    let opts = SheetOptions {
        columns: 2,
        cell_width: 100,
        include_identity: false,
    };
    let sheet = panel_sheet(&project(&["one", "two", "three"]), &images, None, &opts).unwrap();
    let half = sheet.width() / 2;
    let count = |colour: Rgb<u8>, left: bool| {
        sheet
            .enumerate_pixels()
            .filter(|(x, _, p)| (*x < half) == left && **p == colour)
            .count()
    };
    // The 100×100 red cell is on the left, the 100×50 blue one on the right; the badges cover
    // a corner of each.
    assert!(
        count(RED, true) > 8000,
        "red on the left: {}",
        count(RED, true)
    );
    assert_eq!(count(RED, false), 0);
    assert!(
        count(BLUE, false) > 4000,
        "blue on the right: {}",
        count(BLUE, false)
    );
    assert_eq!(count(BLUE, true), 0);
    // The third panel is not rendered: a grey placeholder, square like the render settings,
    // on the second row, left. (Antialiased text has a few pixels of the same grey.)
    let grey = Rgb([0xe0, 0xe0, 0xe0]);
    let red_bottom = sheet
        .enumerate_pixels()
        .filter(|(_, _, p)| **p == RED)
        .map(|(_, y, _)| y)
        .max()
        .unwrap();
    let grey_left = |below: bool| {
        sheet
            .enumerate_pixels()
            .filter(|(x, y, p)| *x < half && (*y > red_bottom) == below && **p == grey)
            .count()
    };
    assert!(grey_left(true) > 8000, "placeholder: {}", grey_left(true));
    assert!(grey_left(false) < 100, "row 1: {}", grey_left(false));
}

#[test]
fn the_identity_cell_comes_first_when_asked() {
    let images = vec![Some(RgbImage::from_pixel(64, 64, RED))];
    let identity = RgbImage::from_pixel(64, 64, BLUE);
    let opts = SheetOptions {
        include_identity: true,
        cell_width: 100,
        ..SheetOptions::default()
    };
    let sheet = panel_sheet(&project(&["one"]), &images, Some(&identity), &opts).unwrap();
    let first_blue = sheet.enumerate_pixels().find(|(_, _, p)| **p == BLUE);
    let first_red = sheet.enumerate_pixels().find(|(_, _, p)| **p == RED);
    let (bx, _, _) = first_blue.expect("the identity is drawn");
    let (rx, _, _) = first_red.expect("the panel is drawn");
    assert!(bx < rx, "identity left of panel 1");

    let wrong = panel_sheet(&project(&["one", "two"]), &images, None, &opts);
    assert!(format!("{:#}", wrong.unwrap_err()).contains("2 panels but 1 images"));
}

/// Number of page objects (`/Type /Page`, not the `/Pages` tree).
fn page_count(pdf: &[u8]) -> usize {
    let needle = b"/Type /Page";
    pdf.windows(needle.len() + 1)
        .filter(|w| &w[..needle.len()] == needle && w[needle.len()] != b's')
        .count()
}

#[test]
fn pdf_pages_follow_panels_per_page() {
    let captions = ["a", "b", "c", "d", "e", "f", "g"];
    let images: Vec<Option<RgbImage>> = (0..7)
        .map(|i| (i % 2 == 0).then(|| RgbImage::from_pixel(32, 32, RED)))
        .collect();
    let p = project(&captions);
    for (per_page, paper, pages) in [
        (6, Paper::A4, 2),
        (4, Paper::Letter, 2),
        (7, Paper::A4, 1),
        (1, Paper::Letter, 7),
    ] {
        let pdf = storyboard_pdf(&p, &images, paper, per_page).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert_eq!(page_count(&pdf), pages, "{per_page} per page");
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains(&format!("(Page {pages} of {pages})")));
        let media = match paper {
            Paper::A4 => "/MediaBox [0 0 842 595]",
            Paper::Letter => "/MediaBox [0 0 792 612]",
        };
        assert_eq!(text.matches(media).count(), pages);
    }
    assert!(storyboard_pdf(&p, &images, Paper::A4, 0).is_err());
}

#[test]
fn pdf_captions_are_never_cut_and_stay_win_ansi() {
    let captions = [
        LONG_CAPTION,
        "snow \u{2744} and \u{96ea},",
        "caf\u{e9} \u{2018}ok\u{2019}",
    ];
    let images = vec![None, Some(RgbImage::from_pixel(16, 16, BLUE)), None];
    let pdf = storyboard_pdf(&project(&captions), &images, Paper::A4, 6).unwrap();
    let text = String::from_utf8_lossy(&pdf);
    for word in words(LONG_CAPTION) {
        assert!(text.contains(word), "{word:?} is missing from the PDF");
    }
    assert!(
        text.contains("(snow ? and ?,"),
        "unsupported characters become '?'"
    );
    // é and the curly quotes are WinAnsi bytes, which pdf-writer writes as a hex string.
    assert!(
        text.contains("<636166E920916F6B92>"),
        "café ‘ok’ in WinAnsi"
    );
    assert!(text.contains("/Encoding /WinAnsiEncoding"));
    assert!(text.contains("/BaseFont /Helvetica"));
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The dictionary and stream bytes of the first image XObject. Byte offsets, not a lossy
/// string: the PDF header holds non-UTF-8 bytes on purpose.
fn first_image_stream(pdf: &[u8]) -> (String, &[u8]) {
    let at = find(pdf, b"/Subtype /Image").expect("an image is embedded");
    let dict_start = at - pdf[..at].iter().rev().position(|&b| b == b'<').unwrap() - 2;
    let stream_at = at + find(&pdf[at..], b"stream\n").unwrap() + b"stream\n".len();
    let dict = String::from_utf8_lossy(&pdf[dict_start..stream_at]).into_owned();
    let length: usize = dict
        .split("/Length ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("the stream has a length");
    (dict, &pdf[stream_at..stream_at + length])
}

#[test]
fn pdf_images_decode_to_the_exact_pixels() {
    let img = RgbImage::from_fn(37, 23, |x, y| {
        Rgb([(x * 7) as u8, (y * 11) as u8, ((x * y) % 256) as u8])
    });
    let pdf = storyboard_pdf(&project(&["one"]), &[Some(img.clone())], Paper::A4, 6).unwrap();
    let (dict, stream) = first_image_stream(&pdf);
    assert!(
        dict.contains("/Width 37") && dict.contains("/Height 23"),
        "{dict}"
    );
    assert!(dict.contains("/Filter /FlateDecode") && dict.contains("/Predictor 15"));
    let filtered = miniz_oxide::inflate::decompress_to_vec_zlib(stream).unwrap();

    // Undo the PNG predictors row by row, as a PDF reader does.
    let stride = 37 * 3;
    assert_eq!(filtered.len(), 23 * (stride + 1));
    let mut pixels: Vec<u8> = Vec::new();
    for (r, row) in filtered.chunks(stride + 1).enumerate() {
        let (kind, row) = (row[0], &row[1..]);
        for x in 0..stride {
            let a = if x >= 3 {
                pixels[r * stride + x - 3]
            } else {
                0
            };
            let b = if r > 0 {
                pixels[(r - 1) * stride + x]
            } else {
                0
            };
            let c = if x >= 3 && r > 0 {
                pixels[(r - 1) * stride + x - 3]
            } else {
                0
            };
            let predicted = match kind {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                k => panic!("unknown PNG filter {k}"),
            };
            pixels.push(row[x].wrapping_add(predicted));
        }
    }
    assert_eq!(pixels, img.into_raw());
}

#[test]
fn paper_names_parse() {
    assert_eq!("a4".parse::<Paper>().unwrap(), Paper::A4);
    assert_eq!("Letter".parse::<Paper>().unwrap(), Paper::Letter);
    let err = "legal".parse::<Paper>().unwrap_err().to_string();
    assert!(
        err.contains("legal") && err.contains("a4 or letter"),
        "{err}"
    );
}

fn store(dir: &Path) -> ImagesStore {
    ImagesStore::at(dir.to_path_buf(), "story".into())
}

/// An images folder as `charaboard render` leaves it, with only the panels in `rendered`.
fn rendered_images(dir: &Path, rendered: &[usize]) {
    fs::create_dir_all(dir).unwrap();
    save_png(
        &RgbImage::from_pixel(32, 32, BLUE),
        &dir.join("identity.png"),
    )
    .unwrap();
    for &i in rendered {
        let shade = (i * 30) as u8;
        let img = RgbImage::from_pixel(48, 32, Rgb([shade, 100, 200]));
        save_png(&img, &dir.join(format!("panel-{:02}.png", i + 1))).unwrap();
    }
}

#[test]
fn export_all_writes_the_sheet_pdf_and_rendered_panels() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("story.images");
    rendered_images(&images, &[0, 1, 3, 4, 5, 6]);
    let out = tmp.path().join("export").join("nested");
    let p = project(&["a", "b", "c", "d", "e", "f", "g"]);
    let opts = SheetOptions {
        include_identity: true,
        ..SheetOptions::default()
    };
    let written = export_all(
        &p,
        &store(&images),
        &out,
        &opts,
        Paper::Letter,
        StalePanels::Mark,
    )
    .unwrap()
    .files;

    let names: Vec<String> = written
        .iter()
        .map(|w| {
            assert_eq!(w.parent().unwrap(), out);
            w.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "sheet.png",
            "storyboard.pdf",
            "01.png",
            "02.png",
            "04.png",
            "05.png",
            "06.png",
            "07.png"
        ]
    );
    assert!(!out.join("03.png").exists(), "panel 3 was never rendered");
    for path in &written {
        assert!(path.exists(), "{} was written", path.display());
    }
    let mut left: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), names.len(), "no temporary files left: {left:?}");

    assert_eq!(
        fs::read(out.join("04.png")).unwrap(),
        fs::read(images.join("panel-04.png")).unwrap(),
        "numbered panels are copies of the renders"
    );
    let sheet = image::open(out.join("sheet.png")).unwrap().to_rgb8();
    assert!(
        sheet.pixels().any(|p| *p == BLUE),
        "the identity is on the sheet"
    );
    let pdf = fs::read(out.join("storyboard.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    assert_eq!(page_count(&pdf), 2, "7 panels at 6 a page");
    assert_eq!(
        String::from_utf8_lossy(&pdf)
            .matches("/Subtype /Image")
            .count(),
        6
    );
}

#[test]
fn export_all_names_an_output_folder_it_cannot_create() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("story.images");
    rendered_images(&images, &[0]);
    let file = tmp.path().join("a-file");
    fs::write(&file, b"not a folder").unwrap();
    let out = file.join("out");
    let err = export_all(
        &project(&["a"]),
        &store(&images),
        &out,
        &SheetOptions::default(),
        Paper::A4,
        StalePanels::Mark,
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&out.display().to_string()), "{message}");
}

#[test]
fn export_all_asks_for_a_render_first() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("story.images");
    rendered_images(&images, &[]);
    let out = tmp.path().join("out");
    let err = export_all(
        &project(&["a", "b"]),
        &store(&images),
        &out,
        &SheetOptions::default(),
        Paper::A4,
        StalePanels::Refuse,
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("render"), "{message}");
    assert!(message.contains(&images.display().to_string()), "{message}");
    assert!(!out.exists(), "nothing is written");

    // A folder that does not exist at all is the same situation.
    let missing = tmp.path().join("never-rendered.images");
    let err = export_all(
        &project(&["a"]),
        &store(&missing),
        &out,
        &SheetOptions::default(),
        Paper::A4,
        StalePanels::Refuse,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("render"));
}
