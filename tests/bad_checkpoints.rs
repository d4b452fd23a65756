//! Checkpoints and files that are not what they claim: a config.json that disagrees with its
//! weights or with itself, shapes that imply no FLUX config, integer weights, GGUF and
//! safetensors headers that claim more than the file holds, missing tokenizer folders, and a
//! byte-order mark before a prompt or project file. Each is an error that names the file and
//! the field or tensor, or (for the last two) simply works.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use charaboard::models::gguf::GgufHeader;
use charaboard::models::tiny_files::{self, FileDtypes, GGUF_TRANSFORMER_FILE, TRANSFORMER_FILE};
use charaboard::models::{tiny, RepoLayout, TensorStore};
use charaboard::pipeline::FluxModels;
use charaboard::project::{self, ProjectError};
use common::{assert_mentions, draw, error_of, mean_abs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn load(model: &Path) -> anyhow::Result<FluxModels> {
    FluxModels::load(model, DType::F32, &Device::Cpu)
}

/// A tiny dev repository whose transformer/config.json has `field` set to `value`.
fn repo_with_config(field: &str, value: serde_json::Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), 5, false).unwrap();
    let config = dir.path().join("transformer/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json[field] = value;
    std::fs::write(&config, json.to_string()).unwrap();
    (dir, config)
}

#[test]
fn config_json_that_disagrees_with_its_weights_names_the_field() {
    // The tiny transformer: 2 double and 4 single blocks, 2 heads of 32, guidance embedder.
    for (field, value, mentions) in [
        (
            "num_layers",
            serde_json::json!(1),
            &["num_layers is 1", "2 double blocks"][..],
        ),
        (
            "num_single_layers",
            serde_json::json!(9),
            &["num_single_layers is 9", "4 single blocks"],
        ),
        (
            "num_attention_heads",
            serde_json::json!(3),
            &[
                "num_attention_heads x attention_head_dim is 96",
                "64",
                "x_embedder.weight",
            ],
        ),
        (
            "guidance_embeds",
            serde_json::json!(false),
            &["guidance_embeds is false", "guidance_embedder"],
        ),
        (
            "joint_attention_dim",
            serde_json::json!(48),
            &["joint_attention_dim is 48", "32", "context_embedder.weight"],
        ),
    ] {
        let (dir, config) = repo_with_config(field, value);
        let message = error_of(load(dir.path()));
        assert_mentions(&message, &[&config.display().to_string()]);
        assert_mentions(&message, mentions);
    }
}

#[test]
fn config_json_that_disagrees_with_itself_names_the_field() {
    for (field, value, mentions) in [
        // Zero blocks used to render with the checkpoint's blocks silently unused.
        (
            "num_layers",
            serde_json::json!(0),
            &["num_layers is 0", "expected 1 to"][..],
        ),
        (
            "num_single_layers",
            serde_json::json!(0),
            &["num_single_layers is 0"],
        ),
        (
            "num_attention_heads",
            serde_json::json!(0),
            &["num_attention_heads is 0"],
        ),
        (
            "attention_head_dim",
            serde_json::json!(0),
            &["attention_head_dim is 0"],
        ),
        // Absurd counts, and a product that would wrap around.
        (
            "num_attention_heads",
            serde_json::json!(1u64 << 62),
            &[
                "num_attention_heads is 4611686018427387904",
                "expected 1 to 512",
            ],
        ),
        (
            "num_layers",
            serde_json::json!(1_000_000),
            &["num_layers is 1000000"],
        ),
        (
            "axes_dims_rope",
            serde_json::json!([8, 24]),
            &["axes_dims_rope [8, 24]", "three even sizes"],
        ),
        (
            "axes_dims_rope",
            serde_json::json!([7, 13, 12]),
            &["axes_dims_rope [7, 13, 12]"],
        ),
    ] {
        let (dir, config) = repo_with_config(field, value);
        let message = error_of(load(dir.path()));
        assert_mentions(&message, &[&config.display().to_string()]);
        assert_mentions(&message, mentions);
    }
}

/// Rewrites the tensors of a safetensors file through `edit`.
fn edit_file(file: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, file).unwrap();
}

fn single_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny_files::write_single_files(dir.path(), 5, false, FileDtypes::F32).unwrap();
    dir
}

#[test]
fn shapes_that_imply_no_config_are_refused() {
    // No single blocks: the config would have none, and the model would render without them.
    let dir = single_files();
    let file = dir.path().join(TRANSFORMER_FILE);
    edit_file(&file, |t| {
        t.retain(|name, _| !name.contains("single_blocks."))
    });
    assert_mentions(
        &error_of(load(dir.path())),
        &[TRANSFORMER_FILE, "the single block count", "is 0"],
    );

    // A head size of 8 divides the width but gives odd RoPE axes ([2, 3, 3]).
    let dir = single_files();
    let file = dir.path().join(TRANSFORMER_FILE);
    edit_file(&file, |t| {
        let name = "model.diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale";
        t.insert(
            name.into(),
            Tensor::ones(8, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_mentions(
        &error_of(load(dir.path())),
        &[TRANSFORMER_FILE, "head size 8", "RoPE axes"],
    );

    // A VAE of width 0, which the level widths used to be divided by.
    let dir = single_files();
    let vae = dir.path().join(tiny_files::VAE_FILE);
    edit_file(&vae, |t| {
        let empty = Tensor::zeros((0, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        t.insert("encoder.conv_in.weight".into(), empty);
    });
    assert_mentions(
        &error_of(load(dir.path())),
        &[tiny_files::VAE_FILE, "the VAE width", "is 0"],
    );
}

#[test]
fn integer_weights_name_the_tensor_file_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_repo(dir.path(), 5, false).unwrap();
    let layout = RepoLayout::open(dir.path()).unwrap();
    let name = "transformer_blocks.0.attn.to_q.weight";
    let store = TensorStore::open(&layout.transformer.weights).unwrap();
    let shard = store.file_of(name).unwrap().to_path_buf();
    drop(store);
    edit_file(&shard, |t| {
        let ints = Tensor::zeros((64, 64), DType::I64, &Device::Cpu).unwrap();
        t.insert(name.into(), ints);
    });
    let shard_name = shard.file_name().unwrap().to_str().unwrap();
    assert_mentions(
        &error_of(load(dir.path())),
        &[name, shard_name, "stored as I64", "F32, F16, BF16"],
    );

    // The same for a single file, in u8.
    let dir = single_files();
    let vae = dir.path().join(tiny_files::VAE_FILE);
    let name = "decoder.conv_in.weight";
    edit_file(&vae, |t| {
        let ints = t[name].to_dtype(DType::U8).unwrap();
        t.insert(name.into(), ints);
    });
    assert_mentions(
        &error_of(load(dir.path())),
        &[name, tiny_files::VAE_FILE, "stored as U8"],
    );
}

#[test]
fn headers_claiming_more_than_the_file_holds_are_refused_by_message() {
    let dir = tempfile::tempdir().unwrap();
    tiny_files::write_gguf_files(dir.path(), 5, false, GgmlDType::Q8_0).unwrap();

    // A GGUF header claiming 2^60 tensors (the count follows the magic and the version).
    let gguf = dir.path().join(GGUF_TRANSFORMER_FILE);
    let mut bytes = std::fs::read(&gguf).unwrap();
    bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let many = dir.path().join("many.gguf");
    std::fs::write(&many, &bytes).unwrap();
    assert_mentions(
        &error_of(GgufHeader::read(&many)),
        &[
            "many.gguf",
            "not a readable GGUF file",
            "1152921504606846976",
        ],
    );

    // A safetensors header claiming to be 1 TB long.
    let vae = dir.path().join(tiny_files::VAE_FILE);
    let mut bytes = std::fs::read(&vae).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let huge = dir.path().join("huge.safetensors");
    std::fs::write(&huge, &bytes).unwrap();
    assert_mentions(
        &error_of(TensorStore::open(&[huge])),
        &["huge.safetensors", "not a readable safetensors file"],
    );

    // A GGUF whose `general.alignment` is 0, which candle divides by.
    let tensor = QTensor::quantize(
        &Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let zero = dir.path().join("zero-alignment.gguf");
    let mut file = std::fs::File::create(&zero).unwrap();
    gguf_file::write(
        &mut file,
        &[("general.alignment", &gguf_file::Value::U32(0))],
        &[("img_in.weight", &tensor)],
    )
    .unwrap();
    drop(file);
    let read = std::panic::catch_unwind(|| GgufHeader::read(&zero).map(|_| ()));
    let read = read.expect("reading a GGUF with alignment 0 must not panic");
    assert_mentions(
        &error_of(read),
        &["zero-alignment.gguf", "general.alignment"],
    );
}

#[test]
fn missing_tokenizer_folders_fall_back_to_the_shipped_tokenizers() {
    let intact = tempfile::tempdir().unwrap();
    tiny::write_repo(intact.path(), 5, false).unwrap();
    let bare = tempfile::tempdir().unwrap();
    tiny::write_repo(bare.path(), 5, false).unwrap();
    std::fs::remove_dir_all(bare.path().join("tokenizer")).unwrap();
    std::fs::remove_dir_all(bare.path().join("tokenizer_2")).unwrap();
    // The tiny repository's tokenizers are the shipped ones, so the images are the same.
    assert_eq!(
        mean_abs(&draw(bare.path(), 3), &draw(intact.path(), 3)),
        0.0
    );
}

const BOM: &str = "\u{feff}";

#[test]
fn a_byte_order_mark_before_a_prompt_file_is_dropped() {
    let text = "in a gym,#a strong man,#lifting weights\nin a gym,#a strong man,#waving\n";
    let plain = project::import(text, false).unwrap();
    let marked = project::import(&format!("{BOM}{text}"), false).unwrap();
    assert_eq!(marked[0].characters[0].identity.environment, "in a gym,");
    assert_eq!(marked[0].scenes[0].environment, "in a gym,");
    assert_eq!(marked, plain);
}

fn parse_position(text: &str) -> (usize, usize) {
    match project::parse(text, Path::new("story.ron")) {
        Err(ProjectError::Parse { line, col, .. }) => (line, col),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn a_byte_order_mark_before_a_project_file_is_dropped() {
    let sample = include_str!("../projects/lighthouse-keeper.ron");
    let path = Path::new("story.ron");
    assert_eq!(
        project::parse(&format!("{BOM}{sample}"), path).unwrap(),
        project::parse(sample, path).unwrap()
    );
    // Later errors keep their line and column, on the first line and below.
    for broken in [
        "(title: 5)",
        "(\n    title: \"x\"\n    character: \"y\",\n)",
    ] {
        let position = parse_position(broken);
        assert_eq!(parse_position(&format!("{BOM}{broken}")), position);
    }
    assert_eq!(parse_position("(title: 5)"), (1, 8));
}
