//! Several characters in one storyboard (issue 13): the document, prompts and spans, a mask and
//! matches per character, and a two-character storyboard rendered end to end.

use charaboard::project::{self, Project, ProjectError};
use std::path::{Path, PathBuf};

fn parse(text: &str) -> Result<Project, ProjectError> {
    project::parse(text, Path::new("cast.ron"))
}

fn two_friends() -> Project {
    project::load(Path::new("projects/two-friends.ron")).unwrap()
}

fn invalid_message(p: &Project) -> String {
    format!("{:#}", p.validate().unwrap_err())
}

#[test]
fn a_one_character_file_loads_as_one_character_and_saves_in_the_new_form() {
    for sample in ["lighthouse-keeper.ron", "courier-journey.ron"] {
        let path = Path::new("projects").join(sample);
        let old = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("character:") && !old.contains("characters:"));
        let p = project::load(&path).unwrap();
        assert_eq!(p.characters.len(), 1, "{sample}");
        assert!(p.panels.iter().all(|panel| panel.characters.is_none()));
        assert!(old.contains(&p.characters[0].prompt));
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join(sample);
        project::save(&p, &saved).unwrap();
        let text = std::fs::read_to_string(&saved).unwrap();
        assert!(text.contains("characters:") && !text.contains("\n    character:"));
        assert_eq!(project::load(&saved).unwrap(), p, "{sample}");
    }
}

#[test]
fn the_two_character_sample_lists_who_appears_and_builds_prompts_in_that_order() {
    let p = two_friends();
    assert_eq!(p.characters.len(), 2);
    let (mia, tom) = (&p.characters[0].prompt, &p.characters[1].prompt);
    assert_eq!(p.panel_characters(0), [0]);
    assert_eq!(p.panel_characters(1), [1]);
    assert_eq!(p.panel_characters(2), [0, 1]);
    let env = p.panel_environment(2);
    assert_eq!(
        p.panel_prompt(2),
        format!("{env} {mia} {tom} {}", p.panels[2].action)
    );
    assert_eq!(
        p.panel_prompt(1),
        format!("{env} {tom} {}", p.panels[1].action)
    );
    let id = &p.characters[1].identity;
    assert_eq!(
        p.identity_prompt_of(1),
        format!("{} {tom} {}", id.environment, id.action)
    );
    // Saved and read back unchanged.
    let dir = tempfile::tempdir().unwrap();
    project::save(&p, &dir.path().join("x.ron")).unwrap();
    assert_eq!(project::load(&dir.path().join("x.ron")).unwrap(), p);
}

#[test]
fn bad_casts_are_refused_naming_the_field() {
    let ok = two_friends();
    let mut p = ok.clone();
    while p.characters.len() <= 4 {
        let mut c = p.characters[0].clone();
        c.name = format!("extra {}", p.characters.len());
        c.prompt = format!("a person number {}", p.characters.len());
        p.characters.push(c);
    }
    assert!(
        invalid_message(&p).starts_with("characters: 5 characters"),
        "{}",
        invalid_message(&p)
    );

    let mut p = ok.clone();
    p.panels[2].characters = Some(vec!["Mia".into(), "Tim".into()]);
    let m = invalid_message(&p);
    assert!(
        m.starts_with("panels[2].characters[1]: no character is called `Tim`"),
        "{m}"
    );

    let mut p = ok.clone();
    p.characters[1].prompt = p.characters[0].prompt.clone();
    let m = invalid_message(&p);
    assert!(
        m.starts_with("characters[1].prompt: the same prompt as characters[0]'s"),
        "{m}"
    );

    let mut p = ok.clone();
    p.characters[1].name = "Mia".into();
    assert!(invalid_message(&p).starts_with("characters[1].name:"));

    let mut p = ok.clone();
    p.panels[0].characters = Some(vec!["Mia".into(), "Mia".into()]);
    assert!(invalid_message(&p).starts_with("panels[0].characters[1]: `Mia` is listed twice"));

    // Both forms at once, or half of the old one, are refused while parsing.
    let both = r#"(title: "t", character: "a cat,", identity: (environment: "e,", action: "a"),
        characters: [], scenes: [(environment: "e,")], panels: [(scene: 0, action: "a")])"#;
    let e = parse(both).unwrap_err().to_string();
    assert!(
        e.contains("`characters` replaces `character` and `identity`"),
        "{e}"
    );
    let half = r#"(title: "t", character: "a cat,", scenes: [(environment: "e,")],
        panels: [(scene: 0, action: "a")])"#;
    assert!(parse(half)
        .unwrap_err()
        .to_string()
        .contains("missing field `identity`"));
}

#[test]
fn a_panel_without_characters_has_the_environment_and_the_action_only() {
    let mut p = two_friends();
    p.panels[0].characters = Some(vec![]);
    p.validate().unwrap();
    assert_eq!(
        p.panel_prompt(0),
        format!("{} {}", p.panel_environment(0), p.panels[0].action)
    );
}

mod common;

use candle_core::{DType, Device, Tensor};
use charaboard::consist::mask::{character_spans, Grid, MaskAccumulator, TextSpans};
use charaboard::consist::matching::{normalize_rows, MatchAccumulator, Matches};
use charaboard::consist::plan::{PlanModel, Target};
use charaboard::consist::recipe::Numerics;
use charaboard::consist::steer::borrowed_key_mask;
use charaboard::text::PromptTokenizers;

/// One layer of text attention (1, 1 head, tokens, text tokens) from rows of probabilities.
fn layer(rows: &[Vec<f32>]) -> Tensor {
    let (n, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (1, 1, n, t), &Device::Cpu).unwrap()
}

#[test]
fn each_token_goes_to_the_background_or_the_character_whose_span_it_attends_to() {
    // Text: 2 background tokens, A's 2, B's 2, 1 action token. A 2x4 grid: column 0
    // background, columns 1-2 attend to A, column 3 to B; the action pulls no token anywhere.
    let spans = TextSpans {
        bg_len: 2,
        real_len: 7,
    };
    let rows: Vec<Vec<f32>> = (0..8)
        .map(|t| match t % 4 {
            0 => vec![0.4, 0.4, 0.05, 0.05, 0.0, 0.0, 0.1],
            1 | 2 => vec![0.05, 0.05, 0.35, 0.35, 0.05, 0.05, 0.1],
            _ => vec![0.05, 0.05, 0.05, 0.05, 0.35, 0.35, 0.1],
        })
        .collect();
    let grid = Grid { rows: 2, cols: 4 };
    for numerics in [Numerics::Exact, Numerics::Reference] {
        let mut acc = MaskAccumulator::with_characters(spans, vec![2..4, 4..6], numerics);
        acc.add(&layer(&rows)).unwrap();
        assert_eq!(
            acc.finish_owners(grid, 1, 1).unwrap(),
            [0, 1, 1, 2, 0, 1, 1, 2]
        );
        // A 3x3 dilation grows each region alone; where both reach, the token goes to the one
        // it attends to most, and the background keeps nothing the characters reach.
        let mut acc = MaskAccumulator::with_characters(spans, vec![2..4, 4..6], numerics);
        acc.add(&layer(&rows)).unwrap();
        assert_eq!(
            acc.finish_owners(grid, 1, 3).unwrap(),
            [1, 1, 1, 2, 1, 1, 1, 2]
        );
        // No character: all background.
        let mut acc = MaskAccumulator::with_characters(spans, vec![], numerics);
        acc.add(&layer(&rows)).unwrap();
        assert!(acc
            .finish_owners(grid, 1, 1)
            .unwrap()
            .iter()
            .all(|&o| o == 0));
    }
}

#[test]
fn one_character_owns_exactly_todays_mask() {
    // Pseudo-random attention over 12 text tokens, 6x8 tokens, 5 layers, with erosion and
    // dilation: the one-character owners are the mask of the one-character accumulator.
    let spans = TextSpans {
        bg_len: 5,
        real_len: 12,
    };
    let grid = Grid { rows: 6, cols: 8 };
    let mut x = 7u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) % 1000) as f32 / 1000.0
    };
    let layers: Vec<Tensor> = (0..5)
        .map(|_| {
            layer(
                &(0..48)
                    .map(|_| (0..12).map(|_| next()).collect())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    for numerics in [Numerics::Exact, Numerics::Reference] {
        for (erode, dilate) in [(1, 1), (3, 1), (1, 3), (3, 3)] {
            let mut today = MaskAccumulator::new(spans, numerics);
            let mut one =
                MaskAccumulator::with_characters(spans, std::iter::once(5..9).collect(), numerics);
            for l in &layers {
                today.add(l).unwrap();
                one.add(l).unwrap();
            }
            let mask = today.finish(grid, erode, dilate).unwrap();
            let owners = one.finish_owners(grid, erode, dilate).unwrap();
            if (erode, dilate) == (1, 1) {
                assert!(mask.iter().any(|&m| m) && mask.iter().any(|&m| !m));
            }
            let expected: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
            assert_eq!(owners, expected);
        }
    }
}

/// `n` unit rows of `dim` features, pseudo-random from `seed`.
fn features(n: usize, dim: usize, seed: u64) -> Tensor {
    let mut x = seed;
    let v: Vec<f32> = (0..n * dim)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    normalize_rows(
        &Tensor::from_vec(v, (n, dim), &Device::Cpu).unwrap(),
        Numerics::Exact,
    )
    .unwrap()
}

#[test]
fn a_panel_of_two_shifted_identities_matches_each_half_into_its_own_identity() {
    // Identities of 4x4 tokens; B's features are A's plus noise, so that a right-half token
    // would find a close match in A too if it were allowed to look there.
    let a = features(16, 32, 1);
    let b = normalize_rows(
        &(&a + (features(16, 32, 2) * 0.6).unwrap()).unwrap(),
        Numerics::Exact,
    )
    .unwrap();
    // A 4x8 panel: its left half is A shifted down one row, its right half B shifted up one.
    let source = |t: usize| -> (u8, usize) {
        let (r, c) = (t / 8, t % 8);
        match c < 4 {
            true => (1, ((r + 3) % 4) * 4 + c),
            false => (2, ((r + 1) % 4) * 4 + (c - 4)),
        }
    };
    let rows: Vec<Tensor> = (0..32)
        .map(|t| match source(t) {
            (1, j) => a.get(j).unwrap(),
            (_, j) => b.get(j).unwrap(),
        })
        .collect();
    let panel = Tensor::stack(&rows, 0).unwrap().unsqueeze(0).unwrap();
    let owners: Vec<u8> = (0..32).map(|t| source(t).0).collect();
    let per_character: Vec<Matches> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(k, identity)| {
            let mut acc = MatchAccumulator::new(Numerics::Exact);
            acc.add(&panel, identity).unwrap();
            let region: Vec<bool> = owners.iter().map(|&o| o == k as u8 + 1).collect();
            acc.finish(&region, &[true; 16], 0.5).unwrap()
        })
        .collect();
    let merged = Matches::merge(per_character, &owners);
    assert_eq!(merged.panel_idx, (0..32).collect::<Vec<u32>>());
    for (c, j, sim) in merged.triples() {
        assert_eq!((owners[c], j), source(c), "panel token {c}");
        assert!((sim - 1.0).abs() < 1e-5);
    }
    // Each character's share holds its half only.
    for k in [1u8, 2] {
        let own = merged.of_owner(&owners, k);
        assert_eq!(own.len(), 16);
        assert!(own.panel_idx.iter().all(|&c| owners[c as usize] == k));
    }
    // The cross match would have been close: B's copy of a token is near A's.
    let cross = (a.get(0).unwrap() * b.get(0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(cross.to_scalar::<f32>().unwrap() > 0.8);
}

#[test]
fn a_query_in_a_region_sees_only_that_characters_borrowed_keys() {
    // Text 2 tokens, image 4 tokens (background, A, B, A); borrowed: 2 background, 3 A, 1 B.
    let owners = [0u8, 1, 2, 1];
    let counts = [2, 3, 1];
    let mask = borrowed_key_mask(&owners, 2, 4, &counts, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(mask.dims(), &[1, 1, 6, 12]);
    let m: Vec<Vec<f32>> = mask
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let class = [0, 0, 1, 1, 1, 2];
    for (q, row) in m.iter().enumerate() {
        assert!(
            row[..6].iter().all(|&v| v == 0.0),
            "the joint sequence is never masked"
        );
        for (k, &v) in row[6..].iter().enumerate() {
            let sees = q >= 2 && owners[q - 2] == class[k];
            assert_eq!(v == 0.0, sees, "query {q}, borrowed key {k}");
            assert!(sees || v == f32::NEG_INFINITY);
        }
    }
}

#[test]
fn each_character_has_its_identity_and_a_panel_without_b_depends_on_none_of_b() {
    let p = two_friends();
    let dir = tempfile::tempdir().unwrap();
    let (_, models) = common::tiny_models(dir.path());
    let plan = project::plan(&p, &PlanModel::of(&models), None).unwrap();
    let targets: Vec<Target> = plan.identities().iter().map(|i| i.target).collect();
    assert_eq!(targets, [Target::Identity, Target::IdentityOf(1)]);
    // The harbour is locked: panels 2 and 3 also follow panel 1's background.
    assert_eq!(plan.panels()[0].depends_on(), [Target::Identity]);
    assert_eq!(
        plan.panels()[1].depends_on(),
        [Target::Panel(0), Target::IdentityOf(1)]
    );
    assert_eq!(
        plan.panels()[2].depends_on(),
        [Target::Panel(0), Target::Identity, Target::IdentityOf(1)]
    );
    // Panel 1 locks onto its scene's reference (itself) and shows Mia alone: its key holds
    // Mia's identity only, and changing Tom changes nothing of it.
    let mut other = p.clone();
    other.characters[1].identity.action = "sitting".into();
    let replanned = project::plan(&other, &PlanModel::of(&models), None).unwrap();
    assert_eq!(replanned.panels()[0].key, plan.panels()[0].key);
    assert_ne!(replanned.panels()[1].key, plan.panels()[1].key);
    assert_eq!(plan.panels()[0].key.depends_on.len(), 1);
    assert_eq!(
        charaboard::project::images::stem(Target::IdentityOf(1)),
        "identity-2"
    );
}

#[test]
fn character_spans_follow_t5_where_words_split_into_pieces() {
    let tok = PromptTokenizers::shipped(512).unwrap();
    let env = "in a xylophonist's workshop,";
    let a = "an unbelievably tall Zyxwvut knight,";
    let b = "a snaggle-toothed gnome,";
    let action = "arguing";
    let prompt = format!("{env} {a} {b} {action}");
    let spans = TextSpans::of(&tok, env, &prompt).unwrap();
    let chars = character_spans(&tok, env, &[a, b], spans).unwrap();
    assert_eq!(chars[0].start, spans.bg_len);
    assert_eq!(chars[0].end, chars[1].start);
    assert!(chars[1].end <= spans.real_len);
    // The spans are the counts of the prefixes, as the background's is.
    assert_eq!(chars[0].end, tok.t5_count(&format!("{env} {a} ")).unwrap());
    // Each character's tokens are its words' pieces in the whole prompt: the tokens of the
    // prompt up to its span's end decode to the prompt up to and including its words.
    let ids = tok.t5_ids(&prompt).unwrap().ids;
    let alone = tok.t5_ids(&format!("{env} {a}")).unwrap().ids;
    let n = tok.t5_count(&format!("{env} {a}")).unwrap();
    assert_eq!(
        ids[..n],
        alone[..n],
        "A's words split as in the whole prompt"
    );
    assert!(n <= chars[0].end && chars[0].end <= n + 1);
    // The pieces split words: more tokens than words.
    assert!(chars[0].len() > a.split(' ').count());
    // Overflowing the limit names no room for the action.
    let long = vec!["a very long description"; 120].join(" ");
    let prompt = format!("{env} {long} {action}");
    let spans = TextSpans::of(&tok, env, &prompt).unwrap();
    let e = character_spans(&tok, env, &[&long], spans).unwrap_err();
    assert!(
        e.to_string().contains("leaving no room for the action"),
        "{e}"
    );
}

/// The tiny model and the two friends at 32x32 in 3 steps, saved in `dir`: (model, project
/// file, project).
fn friends_on_disk(dir: &Path) -> (PathBuf, PathBuf, Project) {
    let model = common::tiny_model_cli(dir);
    let mut p = two_friends();
    (p.settings.width, p.settings.height, p.settings.steps) = (32, 32, Some(3));
    let file = dir.join("friends.ron");
    project::save(&p, &file).unwrap();
    (model, file, p)
}

#[test]
fn a_two_character_storyboard_renders_end_to_end_in_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (model, file, _) = friends_on_disk(dir.path());
    let out = dir.path().join("out");
    let run = common::render_cli(&file, &model, &out, &["--bank", "device"]);
    common::ok(&run);
    for stem in ["identity", "identity-2", "panel-01", "panel-02", "panel-03"] {
        assert!(out.join(format!("{stem}-take-001.png")).is_file(), "{stem}");
    }
    let owners = |stem: &str| -> Vec<u8> {
        let dump = candle_core::safetensors::load(
            out.join(format!("{stem}-take-001.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        dump["fg_mask"].flatten_all().unwrap().to_vec1().unwrap()
    };
    assert!(owners("panel-01").iter().all(|&o| o <= 1));
    assert!(owners("panel-02").iter().all(|&o| o <= 1));
    assert!(owners("panel-03").iter().all(|&o| o <= 2));
    // Lockstep renders the same storyboard, every character's identity beside the panels.
    let lockstep = dir.path().join("lockstep");
    common::ok(&common::render_cli(
        &file,
        &model,
        &lockstep,
        &["--bank", "recompute", "--batch", "2"],
    ));
    for stem in ["identity", "identity-2", "panel-01", "panel-02", "panel-03"] {
        let picture = |dir: &Path| std::fs::read(dir.join(format!("{stem}-take-001.png"))).unwrap();
        assert_eq!(picture(&out), picture(&lockstep), "{stem}");
    }
}

#[test]
fn each_characters_bank_has_a_file_of_its_own_refused_by_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let (model, file, p) = friends_on_disk(dir.path());
    let bank = dir.path().join("friends.bank");
    let bank_arg = bank.to_str().unwrap();
    let render = |out: &str, panels: &str| {
        let out = dir.path().join(out);
        let run = common::render_cli(
            &file,
            &model,
            &out,
            &[
                "--bank",
                "device",
                "--bank-file",
                bank_arg,
                "--panels",
                panels,
            ],
        );
        common::ok(&run);
        (out, String::from_utf8_lossy(&run.stderr).to_string())
    };
    let rendered = |out: &Path, stem: &str| out.join(format!("{stem}-take-001.png")).is_file();
    // The first process renders both identities and writes both banks.
    let (a, _) = render("a", "1");
    assert!(rendered(&a, "identity") && rendered(&a, "identity-2"));
    let tom_bank = dir.path().join("friends-2.bank");
    assert!(bank.is_file() && tom_bank.is_file());
    // A second reads both: it renders no identity.
    let (b, note) = render("b", "2");
    assert!(
        !rendered(&b, "identity") && !rendered(&b, "identity-2"),
        "{note}"
    );
    assert!(
        rendered(&b, "panel-02") && !note.contains("note:"),
        "{note}"
    );
    // Tom changed: his bank is refused by its key and he is rendered again; Mia's is read.
    project::save(
        &{
            let mut q = p.clone();
            q.characters[1].prompt = "an old fisherman with a grey beard,".into();
            q
        },
        &file,
    )
    .unwrap();
    let (c, note) = render("c", "2");
    assert!(
        note.contains("friends-2.bank belongs to another identity (other prompt)"),
        "{note}"
    );
    assert!(!note.contains("friends.bank "), "{note}");
    assert!(rendered(&c, "identity-2") && !rendered(&c, "identity"));
}

#[test]
fn a_second_character_from_a_picture_renders_end_to_end() {
    use charaboard::project::{IdentitySource, PictureIdentity};
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let picture = dir.path().join("tom.png");
    common::ok(&common::generate(
        model.to_str().unwrap(),
        &picture,
        &["--width", "48", "--height", "32", "--steps", "3"],
    ));
    let mut p = two_friends();
    (p.settings.width, p.settings.height, p.settings.steps) = (32, 32, Some(3));
    p.characters[1].identity.source = IdentitySource::Picture(PictureIdentity {
        path: picture.clone(),
        fit: Default::default(),
        inverter: Default::default(),
        folder: None,
    });
    let file = dir.path().join("friends.ron");
    project::save(&p, &file).unwrap();
    let mut outs = Vec::new();
    for bank in ["device", "recompute"] {
        let out = dir.path().join(bank);
        let run = common::render_cli(&file, &model, &out, &["--bank", bank]);
        common::ok(&run);
        for stem in ["identity", "identity-2", "panel-01", "panel-02", "panel-03"] {
            assert!(
                out.join(format!("{stem}-take-001.png")).is_file(),
                "{bank}: {stem}"
            );
        }
        outs.push(out);
    }
    // Tom's identity is the picture's reconstruction, keyed by it; Mia's is generated.
    let key = |stem: &str| {
        std::fs::read_to_string(outs[0].join(format!("{stem}-take-001.key.ron"))).unwrap()
    };
    assert!(key("identity-2").contains("picture:") && !key("identity").contains("picture:"));
    for stem in ["identity", "identity-2", "panel-02", "panel-03"] {
        let png = |d: &Path| std::fs::read(d.join(format!("{stem}-take-001.png"))).unwrap();
        assert_eq!(
            png(&outs[0]),
            png(&outs[1]),
            "{stem}: banked and lockstep agree"
        );
    }
    // The reconstruction is the picture's, not the seed's: it differs from Tom generated.
    let mut generated = p.clone();
    generated.characters[1].identity.source = IdentitySource::Generated;
    let plain = dir.path().join("plain.ron");
    project::save(&generated, &plain).unwrap();
    let out = dir.path().join("plain");
    common::ok(&common::render_cli(
        &plain,
        &model,
        &out,
        &["--bank", "device", "--panels", "2"],
    ));
    let tom = |d: &Path| std::fs::read(d.join("identity-2-take-001.png")).unwrap();
    assert_ne!(tom(&out), tom(&outs[0]));
}
