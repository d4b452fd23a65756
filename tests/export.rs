//! The storyboard export: text wrapping, the captioned panel sheet, the PDF and the files
//! `export_all` writes.

use std::fs;
use std::path::Path;

use charaboard::atomic_file::save_png;
use charaboard::export::board::BoardFields;
use charaboard::export::pdf::{storyboard_pdf, Orientation, Paper, PdfOptions};
use charaboard::export::storyboard::{
    export_all, export_animatic, panel_sheet, SheetOptions, StalePanels,
};
use charaboard::export::text::TextRenderer;
use charaboard::project::ImagesStore;
use charaboard::project::{
    CameraAngle, Character, IdentityShot, Panel, Project, RenderSettings, Scene, ShotSize,
};
use image::{Rgb, RgbImage};

const RED: Rgb<u8> = Rgb([220, 20, 30]);
const BLUE: Rgb<u8> = Rgb([20, 40, 210]);

const LONG_CAPTION: &str = "The keeper climbs the spiral stairs one last time, lamp in hand, \
    counting every step aloud while the storm batters the windows and the old radio crackles \
    with a voice nobody has heard in forty years, asking whether anyone is still listening.";

fn project(captions: &[&str]) -> Project {
    Project {
        title: "The Lighthouse Keeper".into(),
        characters: vec![Character::new(
            "an old lighthouse keeper with a grey beard",
            IdentityShot::new("in a white studio,", "standing"),
        )],
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
                caption: (*c).into(),
                ..Panel::new(0, "looking at the sea")
            })
            .collect(),
        takes: Default::default(),
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
    let opts = SheetOptions {
        fields: "caption".parse().unwrap(),
        ..SheetOptions::default()
    };
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
        ..SheetOptions::default()
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
    for ((columns, rows), paper, orientation, pages, media) in [
        (
            (3, 2),
            Paper::A4,
            Orientation::Landscape,
            2,
            "[0 0 842 595]",
        ),
        (
            (2, 2),
            Paper::Letter,
            Orientation::Landscape,
            2,
            "[0 0 792 612]",
        ),
        (
            (4, 2),
            Paper::A3,
            Orientation::Portrait,
            1,
            "[0 0 842 1191]",
        ),
        (
            (1, 1),
            Paper::Tabloid,
            Orientation::Landscape,
            7,
            "[0 0 1224 792]",
        ),
        ((2, 3), Paper::A4, Orientation::Portrait, 2, "[0 0 595 842]"),
    ] {
        let opts = PdfOptions {
            paper,
            orientation,
            columns,
            rows,
            ..PdfOptions::default()
        };
        let pdf = storyboard_pdf(&p, &images, &opts).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert_eq!(page_count(&pdf), pages, "{columns} x {rows} per page");
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains(&format!("(Page {pages} of {pages})")));
        let media = format!("/MediaBox {media}");
        assert_eq!(text.matches(&media).count(), pages, "{media}");
    }
    for (columns, rows) in [(0, 2), (3, 0), (13, 1)] {
        let opts = PdfOptions {
            columns,
            rows,
            ..PdfOptions::default()
        };
        let err = storyboard_pdf(&p, &images, &opts).unwrap_err().to_string();
        assert!(err.contains("from 1 to 12"), "{err}");
    }
}

#[test]
fn pdf_captions_are_never_cut_and_stay_win_ansi() {
    let captions = [
        LONG_CAPTION,
        "snow \u{2744} and \u{96ea},",
        "caf\u{e9} \u{2018}ok\u{2019}",
    ];
    let images = vec![None, Some(RgbImage::from_pixel(16, 16, BLUE)), None];
    let pdf = storyboard_pdf(&project(&captions), &images, &PdfOptions::default()).unwrap();
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
    let pdf = storyboard_pdf(
        &project(&["one"]),
        &[Some(img.clone())],
        &PdfOptions::default(),
    )
    .unwrap();
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
        err.contains("legal") && err.contains("a4, letter, a3 or tabloid"),
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
        &PdfOptions {
            paper: Paper::Letter,
            ..PdfOptions::default()
        },
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
        &PdfOptions::default(),
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
        &PdfOptions::default(),
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
        &PdfOptions::default(),
        StalePanels::Refuse,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("render"));
}

/// Every line of text a PDF shows, with where it starts: `(x, y, text)`. The content streams
/// are uncompressed; strings are `(literal)` or `<hex>` WinAnsi, each drawn by `x y Td (..) Tj`.
fn pdf_lines(pdf: &[u8]) -> Vec<(f32, f32, String)> {
    let text = String::from_utf8_lossy(pdf);
    let mut lines = Vec::new();
    let mut rest: &str = &text;
    while let Some(at) = rest.find(" Td") {
        let mut coords = rest[..at]
            .rsplit(char::is_whitespace)
            .take(2)
            .map(|n| n.parse::<f32>().unwrap());
        let (y, x) = (coords.next().unwrap(), coords.next().unwrap());
        let after = rest[at + 3..].trim_start();
        let end = after.find(" Tj").expect("a string follows its position");
        let shown = &after[..end];
        let decoded = match shown.strip_prefix('<') {
            Some(hex) => {
                let hex = hex.trim_end_matches('>');
                (0..hex.len() / 2)
                    .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).unwrap() as char)
                    .collect()
            }
            None => shown[1..shown.len() - 1]
                .replace("\\(", "(")
                .replace("\\)", ")")
                .replace("\\\\", "\\"),
        };
        lines.push((x, y, decoded));
        rest = &after[end..];
    }
    lines
}

fn board_project() -> Project {
    let mut p = project(&["The storm breaks.", "", "Silence."]);
    p.scenes.push(Scene {
        name: "The lamp room".into(),
        ..p.scenes[0].clone()
    });
    p.panels[0].shot = Some(ShotSize::ExtremeWide);
    p.panels[0].angle = Some(CameraAngle::Low);
    p.panels[0].duration = 3.5;
    p.panels[1].shot = Some(ShotSize::CloseUp);
    p.panels[1].camera_move = "slow push in".into();
    p.panels[1].dialogue = format!("Is anyone there? {LONG_CAPTION}");
    p.panels[1].notes = "hold on the eyes".into();
    p.panels[1].scene = 1;
    p.panels[2].scene = 1;
    p.panels[2].duration = 0.25;
    p
}

#[test]
fn the_pdf_carries_the_board_and_its_text_is_never_cut() {
    let p = board_project();
    let images = vec![Some(RgbImage::from_pixel(32, 32, RED)), None, None];
    for (columns, rows, orientation) in [
        (3, 1, Orientation::Landscape),
        (2, 4, Orientation::Portrait),
        (3, 3, Orientation::Landscape),
    ] {
        let opts = PdfOptions {
            columns,
            rows,
            orientation,
            ..PdfOptions::default()
        };
        let pdf = storyboard_pdf(&p, &images, &opts).unwrap();
        let lines = pdf_lines(&pdf);
        let all: String = lines
            .iter()
            .map(|l| l.2.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        for expected in [
            "SCENE 1",
            "SCENE 2: The lamp room",
            "Extreme wide (EWS) | Low angle | 3.5 s at 00:00:00:00",
            "Close-up (CU) | slow push in | 2 s at 00:00:03:12",
            "0.25 s at 00:00:05:12",
            "hold on the eyes",
            "The storm breaks.",
            "Silence.",
            "Running time 00:00:05:18 (5.75 s)",
            "Page 1 of 1",
        ] {
            assert!(
                all.contains(expected),
                "{columns}x{rows}: {expected:?} in {all}"
            );
        }
        for word in words(LONG_CAPTION) {
            assert!(
                all.contains(word),
                "{columns}x{rows}: dialogue word {word:?}"
            );
        }
        assert!(
            all.contains("\"Is anyone there?"),
            "dialogue is quoted: {all}"
        );
        assert_eq!(
            all.matches("SCENE").count(),
            2,
            "a header where each scene begins"
        );
        let (w, h) = opts.page_size();
        for (x, y, line) in &lines {
            assert!(
                (0.0..w).contains(x) && (0.0..h).contains(y),
                "{columns}x{rows}: {line:?} at ({x}, {y}) is off the {w}x{h} page"
            );
        }
    }

    // Fields left out are not printed.
    let opts = PdfOptions {
        fields: "dialogue,caption".parse().unwrap(),
        ..PdfOptions::default()
    };
    let all: String = pdf_lines(&storyboard_pdf(&p, &images, &opts).unwrap())
        .into_iter()
        .map(|l| l.2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(all.contains("Is anyone there?") && all.contains("Silence."));
    for absent in ["SCENE", "Close-up", "slow push", "hold on", "3.5 s at"] {
        assert!(!all.contains(absent), "{absent:?} was left out: {all}");
    }
    let err = "shot,colour"
        .parse::<BoardFields>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"colour\"") && err.contains("dialogue"),
        "{err}"
    );
}

#[test]
fn the_animatic_gif_holds_each_panel_for_its_duration() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("story.images");
    rendered_images(&images, &[0, 2]);
    let mut p = board_project();
    p.panels[1].duration = 1.234;
    let out = tmp.path().join("out");
    let written = export_animatic(&p, &store(&images), &out, 64, StalePanels::Mark)
        .unwrap()
        .files;

    let file = fs::File::open(out.join("animatic.gif")).unwrap();
    let decoder = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(file)).unwrap();
    let frames = image::AnimationDecoder::into_frames(decoder)
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 3, "one frame per panel");
    let delays_ms: Vec<f64> = frames
        .iter()
        .map(|f| {
            let (n, d) = f.delay().numer_denom_ms();
            f64::from(n) / f64::from(d)
        })
        .collect();
    // GIF keeps hundredths of a second: 1.234 s is held 1.23 s.
    assert_eq!(delays_ms, [3500.0, 1230.0, 250.0]);
    let (w, h) = frames[0].buffer().dimensions();
    assert_eq!(w, 64, "the long side");
    assert!(h > 64, "a caption bar under the 64x64 picture: {h}");
    // Panel 1 is rendered (its blue-ish colour), panel 2 is a grey card.
    let has = |k: usize, rgb: [u8; 3]| {
        frames[k]
            .buffer()
            .pixels()
            .any(|p| p.0[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 12))
    };
    assert!(has(0, [0, 100, 200]) && !has(1, [0, 100, 200]) && has(2, [60, 100, 200]));

    let concat = fs::read_to_string(out.join("animatic").join("animatic.ffconcat")).unwrap();
    assert_eq!(
        concat,
        "ffconcat version 1.0\nfile 0001.png\nduration 3.5\nfile 0002.png\nduration 1.234\n\
         file 0003.png\nduration 0.25\nfile 0003.png\n"
    );
    for k in 1..=3 {
        let png = image::open(out.join("animatic").join(format!("{k:04}.png"))).unwrap();
        assert_eq!(png.width(), 64);
    }
    assert_eq!(written.len(), 5, "{written:?}");
}

#[test]
fn an_animatic_that_cannot_be_written_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("story.images");
    rendered_images(&images, &[0]);
    let p = board_project();
    // A file where the output folder should be.
    let file = tmp.path().join("a-file");
    fs::write(&file, b"not a folder").unwrap();
    let err = export_animatic(
        &p,
        &store(&images),
        &file.join("out"),
        64,
        StalePanels::Mark,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("a-file"), "{err:#}");

    // A folder in the way of the third frame: no frame and no ffconcat file is written.
    let out = tmp.path().join("out");
    fs::create_dir_all(out.join("animatic").join("0003.png")).unwrap();
    let err = export_animatic(&p, &store(&images), &out, 64, StalePanels::Mark).unwrap_err();
    assert!(format!("{err:#}").contains("0003.png"), "{err:#}");
    let left: Vec<_> = fs::read_dir(out.join("animatic"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["0003.png"], "only the folder that was in the way");
}
