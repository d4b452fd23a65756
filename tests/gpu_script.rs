//! scripts/gpu-run.sh, the prepared GPU run, end to end on the CPU at tiny size with the flags
//! the GPU machine gets (`--size full --device cuda` there): every phase runs and the JSON holds
//! its figures.

use std::process::Command;

#[test]
fn gpu_run_script_writes_every_figure_at_tiny_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu-run.json");
    // Gzipped, as the binary travels to the GPU machine.
    let packed = dir.path().join("charaboard.gz");
    let gzip = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -1 -c '{}' > '{}'",
            env!("CARGO_BIN_EXE_charaboard"),
            packed.display()
        ))
        .status()
        .unwrap();
    assert!(gzip.success());
    let run = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-run.sh"))
        .arg(&packed)
        .arg(&out)
        .args(["--size", "tiny", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    assert_eq!(figures["skipped"], serde_json::json!([]));
    assert_eq!(figures["text_tokens"], 512);
    for name in ["transformer_dense", "transformer_q8_0", "transformer_q4_0"] {
        let t = &figures[name];
        assert!(t["charaboard_ms"].as_f64().unwrap() > 0.0, "{name}: {t}");
        assert!(t["candle_ms"].as_f64().unwrap() > 0.0, "{name}: {t}");
    }
    // The same weights and inputs through both models: f32 parity, and the quantized pair close.
    assert!(
        figures["transformer_dense"]["max_abs_diff"]
            .as_f64()
            .unwrap()
            < 1e-4
    );
    for name in ["transformer_q8_0", "transformer_q4_0"] {
        assert!(
            figures[name]["max_abs_diff"].as_f64().unwrap() < 0.5,
            "{name}"
        );
        assert!(figures[name]["file_bytes"].as_u64().unwrap() > 0);
    }
    // On the CPU the "device" is the CPU: the tiny storyboard must come out the same twice.
    let parity = &figures["tiny_parity"];
    assert_eq!(parity["storyboard_as_cpu"], true, "{parity}");
    assert_eq!(parity["storyboard_images"].as_array().unwrap().len(), 3);
    assert!(parity["transformer_f32_max_abs_diff"].as_f64().unwrap() < 1e-4);

    let attention = &figures["attention"];
    assert_eq!(attention["tokens"], 16 + 512);
    assert!(attention["block_with_shared_keys_ms"].as_f64().unwrap() > 0.0);

    let device_bank = &figures["storyboard"]["bank_modes"]["device"];
    let images: Vec<&str> = device_bank["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        ["the identity", "panel 1", "panel 2", "panel 3", "panel 4"]
    );
    assert!(device_bank["bank_bytes"].as_u64().unwrap() > 0);

    // No CUDA device on the CPU: the field is there, empty, with the reason.
    assert!(figures["gpu_memory"]["peak_in_use_bytes"].is_null());
    assert_eq!(figures["gpu_memory"]["note"], "not a CUDA device");
}
