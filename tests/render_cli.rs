//! `charaboard render` and `charaboard import` end to end on a tiny model.

mod common;

use common::{charaboard, ok};

/// The files of the first take of every image of PROJECT (the identity and four panels).
const COURIER_TAKES: [&str; 5] = [
    "identity-take-001",
    "panel-01-take-001",
    "panel-02-take-001",
    "panel-03-take-001",
    "panel-04-take-001",
];

const PROJECT: &str = r#"(
    title: "Courier test",
    character: "a courier girl with short black hair and a green jacket,",
    identity: (environment: "in an empty background,", action: "standing, front view"),
    scenes: [
        (environment: "in an empty background,", lock_background: true),
        (environment: "on a rainy street at night,", lock_background: true, width: Some(96)),
        (environment: "in a sunny park,"),
    ],
    panels: [
        (scene: 0, action: "waving"),
        (scene: 1, action: "running with a parcel"),
        (scene: 1, action: "knocking on a door"),
        (scene: 2, action: "eating an apple", seed: Some(5)),
    ],
    settings: (width: 128, height: 128, steps: Some(6)),
)"#;

#[test]
fn render_writes_images_overlays_sheet_dumps_and_keys_beside_the_project() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("courier.ron");
    std::fs::write(&project, PROJECT).unwrap();
    ok(&charaboard(&[
        "render",
        project.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]));
    let images = dir.path().join("courier.images");
    for stem in COURIER_TAKES {
        for suffix in [".png", "-mask.png", ".safetensors", ".key.ron"] {
            assert!(
                images.join(format!("{stem}{suffix}")).is_file(),
                "{stem}{suffix}"
            );
        }
        let matches = images.join(format!("{stem}-matches.png"));
        assert_eq!(matches.is_file(), stem != "identity-take-001", "{stem}");
    }
    assert!(images.join("sheet.png").is_file());
    let panel2 = image::open(images.join("panel-02-take-001.png")).unwrap();
    assert_eq!(
        (panel2.width(), panel2.height()),
        (96, 128),
        "scene size override"
    );
    let mask = image::open(images.join("panel-02-take-001-mask.png")).unwrap();
    assert_eq!(
        (mask.width(), mask.height()),
        (192, 128),
        "image and mask side by side"
    );

    let dump = candle_core::safetensors::load(
        images.join("panel-02-take-001.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(dump["latents"].dims(), &[1, 16, 16, 12]);
    assert_eq!(dump["latents"].dtype(), candle_core::DType::F32);
    assert_eq!(dump["fg_mask"].dims(), &[8, 6]);
    assert_eq!(dump["fg_mask"].dtype(), candle_core::DType::U8);
    assert_eq!(dump["match_sim"].dims(), &[48]);
    let kept = dump["match_panel_idx"].dims()[0];
    assert_eq!(dump["match_identity_idx"].dims(), &[kept]);
    assert_eq!(dump["match_panel_idx"].dtype(), candle_core::DType::I64);
    let spans: Vec<i64> = ["bg_len", "real_len"]
        .iter()
        .map(|k| dump[*k].to_vec1::<i64>().unwrap()[0])
        .collect();
    assert!(0 < spans[0] && spans[0] < spans[1], "{spans:?}");
    // Every kept match is a foreground panel token with similarity above the threshold.
    let mask: Vec<u8> = dump["fg_mask"].flatten_all().unwrap().to_vec1().unwrap();
    let sims: Vec<f32> = dump["match_sim"].to_vec1().unwrap();
    for c in dump["match_panel_idx"].to_vec1::<i64>().unwrap() {
        assert!(mask[c as usize] == 1 && sims[c as usize] > 0.5);
    }
    let identity = candle_core::safetensors::load(
        images.join("identity-take-001.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(!identity.contains_key("match_sim"));
    assert_eq!(identity["fg_mask"].dims(), &[8, 8]);
}

#[test]
fn bad_projects_name_the_field_and_render_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let cases = [
        (
            PROJECT.replace(
                "(scene: 0, action: \"waving\"),",
                "(scene: 7, action: \"waving\"),",
            ),
            "panels[0].scene",
        ),
        (
            PROJECT.replace("width: 128,", "width: 100,"),
            "settings.width",
        ),
        (
            PROJECT.replace(
                "steps: Some(6))",
                "steps: Some(6), recipe: (similarity_threshold: 2.0))",
            ),
            "similarity_threshold",
        ),
        (
            PROJECT.replace(
                "in a sunny park,",
                &"a very long environment description, ".repeat(80),
            ),
            "environment",
        ),
    ];
    for (text, field) in cases {
        let project = dir.path().join("bad.ron");
        std::fs::write(&project, text).unwrap();
        let out = charaboard(&[
            "render",
            project.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
    let images = dir.path().join("bad.images");
    let written: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(!written
        .iter()
        .any(|e: &std::io::Result<std::fs::DirEntry>| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("panel"))
        }));
}

#[test]
fn import_turns_reference_prompt_files_into_projects() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts-bg_fg.txt");
    std::fs::write(
        &prompts,
        "In a modern gym,#a man with short hair in a grey hoodie,#standing, front view\n\
         In a modern gym,#a man with short hair in a grey hoodie,#lifting a barbell\n\
         On a city rooftop at night,#a man with short hair in a grey hoodie,#looking at the skyline\n\
         \n\n\
         In an empty background,#a small robot with round eyes,#waving\n\
         In a kitchen,#a small robot with round eyes,#cooking soup\n",
    )
    .unwrap();
    let out_dir = dir.path().join("projects");
    ok(&charaboard(&[
        "import",
        prompts.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--lock-background",
    ]));
    let first = charaboard::project::io::load(&out_dir.join("prompts-bg_fg-01.ron")).unwrap();
    assert_eq!(first.characters[0].identity.environment, "In a modern gym,");
    assert_eq!(first.panels.len(), 2);
    assert_eq!(first.scenes.len(), 2);
    assert!(first.scenes.iter().all(|s| s.lock_background));
    assert_eq!(
        first.panel_prompt(0),
        "In a modern gym, a man with short hair in a grey hoodie, lifting a barbell"
    );
    let second = charaboard::project::io::load(&out_dir.join("prompts-bg_fg-02.ron")).unwrap();
    assert_eq!(second.panels.len(), 1);
    assert!(!out_dir.join("prompts-bg_fg-03.ron").exists());
}

/// [`PROJECT`] at 64x64 and 4 steps: the CPU's bf16 path widens every product to f32, so it is
/// several times slower than f32.
fn small_project() -> String {
    PROJECT
        .replace("width: Some(96)", "width: Some(48)")
        .replace(
            "settings: (width: 128, height: 128, steps: Some(6))",
            "settings: (width: 64, height: 64, steps: Some(4))",
        )
}

/// The fraction of equal elements of two u8 or i64 tensors of one shape.
fn agreement(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let equal = a.eq(b).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    equal.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

/// Kept matches as panel token -> identity token.
fn matches(dump: &std::collections::HashMap<String, candle_core::Tensor>) -> Vec<(i64, i64)> {
    let panel = dump["match_panel_idx"].to_vec1::<i64>().unwrap();
    let identity = dump["match_identity_idx"].to_vec1::<i64>().unwrap();
    panel.into_iter().zip(identity).collect()
}

/// bf16 on the CPU renders a whole storyboard (the bank, masks, matching, token merge, overlays,
/// the sheet) and exports it; how far it moves each image's mask, matches and latents from the
/// f32 render is printed (README's dtype figures come from
/// `cargo test --release --test render_cli bf16 -- --nocapture`), the latents' bounded.
#[test]
fn bf16_renders_and_exports_a_storyboard_near_its_f32_render() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let render = |dtype: &str| {
        let project = dir.path().join(dtype).join("courier.ron");
        std::fs::create_dir_all(project.parent().unwrap()).unwrap();
        std::fs::write(&project, small_project()).unwrap();
        let (project, model) = (project.to_str().unwrap(), model.to_str().unwrap());
        ok(&charaboard(&[
            "render", project, "--model", model, "--dtype", dtype,
        ]));
        dir.path().join(dtype).join("courier.images")
    };
    let (exact, bf16) = (render("f32"), render("bf16"));
    let dump = |images: &std::path::Path, stem: &str| {
        candle_core::safetensors::load(
            images.join(format!("{stem}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    for stem in COURIER_TAKES {
        let (a, b) = (dump(&exact, stem), dump(&bf16, stem));
        let mask = agreement(&a["fg_mask"], &b["fg_mask"]);
        let (la, lb) = (&a["latents"], &b["latents"]);
        let scale = common::max_abs(la);
        let latents_max = common::max_abs_diff(la, lb) / scale;
        let mean_abs = |t: &candle_core::Tensor| {
            t.abs()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let latents_mean = mean_abs(&(la - lb).unwrap()) / mean_abs(la);
        let mut line = format!(
            "{stem}: mask {:.1}% of tokens alike; latents max |diff| {:.1}% of max |f32|, \
             mean {:.1}% of mean",
            100.0 * mask,
            100.0 * latents_max,
            100.0 * latents_mean
        );
        if stem != "identity-take-001" {
            let (ma, mb) = (matches(&a), matches(&b));
            let alike = ma.iter().filter(|m| mb.contains(m)).count();
            line += &format!(
                "; matches: f32 keeps {}, bf16 {}, {alike} alike",
                ma.len(),
                mb.len()
            );
            assert!(
                bf16.join(format!("{stem}-matches.png")).is_file(),
                "{stem} overlay"
            );
        }
        println!("{line}");
        assert!(bf16.join(format!("{stem}-mask.png")).is_file(), "{stem}");
        // The random tiny model's masks and matches hang on attention that barely prefers a
        // span, so bf16 may flip them (README, "Dtypes"); its latents move by about a fifth.
        assert_eq!(a["fg_mask"].dims(), b["fg_mask"].dims(), "{stem}");
        assert!(
            latents_mean > 0.0,
            "{stem}: bf16 computed exactly what f32 did"
        );
        assert!(latents_mean <= 0.35, "{stem}: latents moved {latents_mean}");
    }
    assert!(bf16.join("sheet.png").is_file());
    let out = dir.path().join("export");
    let project = dir.path().join("bf16").join("courier.ron");
    let exported = charaboard(&[
        "export",
        project.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    ok(&exported);
    let listed = String::from_utf8_lossy(&exported.stdout);
    assert!(listed.lines().any(|l| l.ends_with(".pdf")), "{listed}");
}

/// PNG bytes of `stem` in an images folder.
fn png(images: &std::path::Path, stem: &str) -> Vec<u8> {
    std::fs::read(images.join(format!("{stem}.png"))).unwrap()
}

#[test]
fn slices_rendered_by_two_processes_from_one_bank_file_equal_one_render_of_all() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let project = dir.path().join("courier.ron");
    let small = PROJECT
        .replace("width: 128, height: 128", "width: 32, height: 32")
        .replace("width: Some(96)", "width: Some(48)");
    std::fs::write(&project, &small).unwrap();
    let bank = dir.path().join("shared").join("courier.bank");
    std::fs::create_dir_all(bank.parent().unwrap()).unwrap();
    let render = |out: &str, extra: &[&str]| {
        let out_dir = dir.path().join(out);
        let run = common::render_cli(&project, &model, &out_dir, extra);
        ok(&run);
        (out_dir, String::from_utf8_lossy(&run.stderr).to_string())
    };
    let bank_arg = bank.to_str().unwrap();
    let (all, _) = render("all", &[]);
    // Process A computes the identity and writes the bank; panel 3 follows panel 2's background,
    // so A renders panel 2 too.
    let (a, _) = render("a", &["--panels", "1,3", "--bank-file", bank_arg]);
    assert!(bank.is_file() && a.join("identity-take-001.png").is_file());
    // Process B reuses the bank: it renders no identity.
    let (b, note) = render("b", &["--panels", "2-2,4", "--bank-file", bank_arg]);
    assert!(!b.join("identity-take-001.png").exists(), "{note}");
    assert!(!b.join("panel-01-take-001.png").exists() && !b.join("panel-03-take-001.png").exists());
    for (slice, stem) in [
        (&a, "panel-01-take-001"),
        (&a, "panel-03-take-001"),
        (&b, "panel-02-take-001"),
        (&b, "panel-04-take-001"),
    ] {
        assert!(png(slice, stem) == png(&all, stem), "{stem}");
    }
    assert!(png(&a, "identity-take-001") == png(&all, "identity-take-001"));

    // A cut-short bank file is named, ignored, computed again and written whole.
    let bytes = std::fs::read(&bank).unwrap();
    std::fs::write(&bank, &bytes[..bytes.len() / 2]).unwrap();
    let (c, note) = render("c", &["--panels", "4", "--bank-file", bank_arg]);
    assert!(
        note.contains("is damaged") && note.contains("courier.bank"),
        "{note}"
    );
    assert!(
        c.join("identity-take-001.png").is_file()
            && png(&c, "panel-04-take-001") == png(&all, "panel-04-take-001")
    );
    assert_eq!(
        std::fs::read(&bank).unwrap().len(),
        bytes.len(),
        "rewritten whole"
    );

    // A bank of another identity is refused by its key, with what differs.
    std::fs::write(&project, small.replace("short black hair", "long red hair")).unwrap();
    let (d, note) = render("d", &["--panels", "1", "--bank-file", bank_arg]);
    assert!(note.contains("another identity (other prompt)"), "{note}");
    assert!(d.join("identity-take-001.png").is_file());
}

#[test]
fn bad_panel_lists_are_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("courier.ron");
    std::fs::write(&project, PROJECT).unwrap();
    for (list, says) in [
        ("0", "panel 0 does not exist"),
        ("5", "panel 5 does not exist (the storyboard has 4 panels"),
        ("3-1", "the range `3-1` runs backwards"),
        ("1,,2", "`` is not a panel number"),
        ("two", "`two` is not a panel number"),
    ] {
        let out = charaboard(&[
            "render",
            project.to_str().unwrap(),
            "--model",
            "/no/such/model",
            "--panels",
            list,
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{list}: {err}");
    }
    let recompute = charaboard(&[
        "render",
        project.to_str().unwrap(),
        "--bank",
        "recompute",
        "--bank-file",
        "x.bank",
    ]);
    assert!(String::from_utf8_lossy(&recompute.stderr).contains("--bank-file needs a bank"));
}
