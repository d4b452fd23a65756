//! App settings on disk and finding FLUX.1 repositories in the Hugging Face cache.
//!
//! Environment variables are process-global and tests run on threads, so each group of
//! assertions that sets one lives in a single test function, and no two functions set the same
//! variable.

use std::fs;
use std::path::{Path, PathBuf};

use charaboard::app_settings::{config_path, size_presets, AppSettings, MAX_RECENT};
use charaboard::models::discovery::{find_in, resolve};
use charaboard::models::tiny;

#[test]
fn settings_round_trip_recent_list_and_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("CHARABOARD_CONFIG_DIR", dir.path());
    let path = config_path().unwrap();
    assert_eq!(path, dir.path().join("charaboard").join("settings.ron"));

    // Nothing saved yet: defaults.
    assert_eq!(AppSettings::load(), AppSettings::default());
    assert_eq!(AppSettings::default().sheet_columns, 3);

    // Round trip, including a nested render setting and an optional value.
    let mut s = AppSettings {
        model_dir: Some(PathBuf::from("/models/FLUX.1-dev")),
        device: Some("cuda:0".into()),
        dtype: Some("bf16".into()),
        sheet_columns: 4,
        ..AppSettings::default()
    };
    s.defaults.width = 1360;
    s.defaults.height = 768;
    s.defaults.steps = Some(28);
    s.defaults.seed = 7;
    s.remember_project(Path::new("/stories/a.ron"));
    s.save().unwrap();
    assert!(path.is_file());
    assert_eq!(AppSettings::load(), s);
    let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["settings.ron"], "no temporary file is left");

    // Recent projects: most recent first, no duplicates, capped.
    let mut r = AppSettings::default();
    for name in ["a", "b", "c"] {
        r.remember_project(&PathBuf::from(format!("/p/{name}.ron")));
    }
    r.remember_project(Path::new("/p/a.ron"));
    let names = |r: &AppSettings| -> Vec<String> {
        r.recent_projects
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&r), ["a", "c", "b"]);
    r.remember_project(Path::new("/p/./b.ron"));
    assert_eq!(names(&r), ["b", "a", "c"]);
    for i in 0..20 {
        r.remember_project(&PathBuf::from(format!("/q/{i}.ron")));
    }
    assert_eq!(r.recent_projects.len(), MAX_RECENT);
    assert_eq!(r.recent_projects[0], Path::new("/q/19.ron"));
    assert_eq!(r.recent_projects[MAX_RECENT - 1], Path::new("/q/10.ron"));
    // Relative paths are stored absolute, so they survive a change of working folder.
    r.remember_project(Path::new("story.ron"));
    assert!(r.recent_projects[0].is_absolute());

    // An older file with fields missing loads, with defaults for the rest.
    fs::write(&path, "(sheet_columns: 5, model_dir: \"/m\")").unwrap();
    let old = AppSettings::load();
    assert_eq!(old.sheet_columns, 5);
    assert_eq!(old.model_dir, Some(PathBuf::from("/m")));
    assert_eq!(old.defaults, AppSettings::default().defaults);

    // A broken file: defaults, and the file is kept aside rather than lost.
    let broken_text = "(sheet_columns: \"three\"";
    fs::write(&path, broken_text).unwrap();
    assert_eq!(AppSettings::load(), AppSettings::default());
    assert!(!path.exists());
    let kept = path.with_file_name("settings.ron.broken");
    assert_eq!(fs::read_to_string(kept).unwrap(), broken_text);
    // Saving afterwards writes a fresh file.
    s.save().unwrap();
    assert_eq!(AppSettings::load(), s);

    std::env::remove_var("CHARABOARD_CONFIG_DIR");
}

#[test]
fn size_presets_are_multiples_of_16_near_one_megapixel() {
    let presets = size_presets();
    let ratios = [1.0, 4.0 / 3.0, 1.5, 16.0 / 9.0, 9.0 / 16.0, 2.39];
    assert_eq!(presets.len(), ratios.len());
    assert_eq!((presets[0].width, presets[0].height), (1024, 1024));
    for (p, want) in presets.iter().zip(ratios) {
        assert!(p.width % 16 == 0 && p.height % 16 == 0, "{p:?}");
        let ratio = p.width as f64 / p.height as f64;
        assert!((ratio / want - 1.0).abs() < 0.02, "{p:?}: ratio {ratio}");
        let mp = (p.width * p.height) as f64 / (1024.0 * 1024.0);
        assert!((0.95..=1.05).contains(&mp), "{p:?}: {mp} megapixels");
        assert!(!p.label.is_empty());
    }
}

/// `models--ORG--NAME/snapshots/HASH/` with a tiny FLUX repository, and `refs/main` = HASH.
fn cached_flux(cache: &Path, org: &str, name: &str, hash: &str) -> PathBuf {
    let repo = cache.join(format!("models--{org}--{name}"));
    let snapshot = repo.join("snapshots").join(hash);
    tiny::write_repo(&snapshot, 0, false).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs").join("main"), format!("{hash}\n")).unwrap();
    snapshot
}

#[test]
fn find_in_reads_refs_main_and_skips_non_flux_repos() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cached_flux(cache.path(), "black-forest-labs", "FLUX.1-dev", "abc123");
    // An older snapshot beside it is ignored: refs/main decides.
    let older = snapshot.with_file_name("0ld");
    tiny::write_repo(&older, 1, false).unwrap();

    // A text model: no model_index.json.
    let text = cache
        .path()
        .join("models--google--t5-v1_1-xxl/snapshots/def456");
    fs::create_dir_all(text.join("transformer")).unwrap();
    fs::write(text.join("transformer/config.json"), "{}").unwrap();
    // A half-finished download: no snapshot at all.
    fs::create_dir_all(cache.path().join("models--x--empty/refs")).unwrap();
    // Datasets are not models.
    fs::create_dir_all(cache.path().join("datasets--x--y/snapshots/1")).unwrap();

    let found = find_in(cache.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, "black-forest-labs/FLUX.1-dev");
    assert_eq!(found[0].snapshot, snapshot);

    // Without refs/main, the most recently modified snapshot is used.
    let repo = snapshot.parent().unwrap().parent().unwrap();
    fs::remove_file(repo.join("refs/main")).unwrap();
    let newest = snapshot.with_file_name("newest");
    std::thread::sleep(std::time::Duration::from_millis(20));
    tiny::write_repo(&newest, 2, false).unwrap();
    assert_eq!(find_in(cache.path())[0].snapshot, newest);

    assert!(find_in(&cache.path().join("missing")).is_empty());
}

#[test]
fn resolve_finds_cached_ids_through_hf_hub_cache() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cached_flux(cache.path(), "black-forest-labs", "FLUX.1-dev", "abc123");
    std::env::set_var("HF_HUB_CACHE", cache.path());

    assert_eq!(resolve("black-forest-labs/FLUX.1-dev").unwrap(), snapshot);
    // An existing folder is returned as is, even when it also looks like an id.
    let folder = cache.path().to_str().unwrap();
    assert_eq!(resolve(folder).unwrap(), cache.path());

    let err = format!(
        "{:#}",
        resolve("black-forest-labs/FLUX.1-schnell").unwrap_err()
    );
    assert!(err.contains(&cache.path().display().to_string()), "{err}");
    assert!(
        err.contains("hf download black-forest-labs/FLUX.1-schnell"),
        "{err}"
    );

    let err = format!("{:#}", resolve("/no/such/model/folder").unwrap_err());
    assert!(err.contains("does not exist"), "{err}");

    std::env::remove_var("HF_HUB_CACHE");
}
