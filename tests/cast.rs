//! Several characters in one storyboard (issue 13): the document, prompts and spans, a mask and
//! matches per character, and a two-character storyboard rendered end to end.

use charaboard::project::{self, Project, ProjectError};
use std::path::Path;

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
