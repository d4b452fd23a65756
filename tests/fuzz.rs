//! Seeded mutation tests of every reader of files a user hands to charaboard: project RON,
//! prompt files, safetensors headers, GGUF headers and the GGUF loader, and `.ron` model files.
//! Valid files get bytes flipped, cut, spliced with another, inserted, deleted, repeated, or
//! overwritten with integers at the edges of what headers hold; every input must come back as
//! a value or as an error whose every cause has a message, and none may panic. A failure
//! names the reader, the seed, the input and its mutations; the input is rebuilt from those
//! alone (ChaCha8 stream `input` of [`SEED`]).
//!
//! Inputs per reader are sized so that the whole file runs in well under a minute in release
//! on 2 cores: in-memory readers get the most, readers that go through a file fewer.

mod common;

use anyhow::Result;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use charaboard::models::formats::{classify_store, FileKind, COMFY_PREFIX};
use charaboard::models::gguf::{self, GgufHeader};
use charaboard::models::infer::{self, Shapes};
use charaboard::models::source::{is_model_file, ModelSource};
use charaboard::models::tiny_files::{self, FileDtypes, GGUF_TRANSFORMER_FILE};
use charaboard::models::TensorStore;
use charaboard::project::{self, ProjectError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

const SEED: u64 = 0x5eed_c4a7;

/// RON and prompt syntax, a byte-order mark, multi-byte characters and numbers at and past
/// the limits, inserted into text files.
const TEXT_PIECES: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "#",
    "\n",
    "\n\n",
    "\r\n",
    "//",
    "/*",
    "Some(",
    "None",
    "\u{feff}",
    "é",
    "🦀",
    "-1",
    "0",
    "18446744073709551616",
    "1e400",
    "NaN",
    "inf",
    "true",
    "\\",
    "r#\"",
    "'",
    "((((((((",
    "scene: 99",
    "width: Some(0)",
];

/// Values that headers read as counts, lengths and offsets, written over 4 or 8 bytes.
const INTEGERS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    u32::MAX as u64,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 60,
    u64::MAX - 7,
    u64::MAX,
];

/// Valid files to mutate, and for each the length of its header: 9 in 10 mutations land there,
/// where a binary file's structure is (flipping tensor data proves nothing). Binary files get
/// text insertions half the time too, since a safetensors header is JSON.
struct Corpus {
    files: Vec<(Vec<u8>, usize)>,
    text: bool,
}

impl Corpus {
    fn text(files: &[&str]) -> Self {
        Self {
            files: files
                .iter()
                .map(|f| (f.as_bytes().to_vec(), f.len()))
                .collect(),
            text: true,
        }
    }
}

/// One mutated input and the mutations that made it.
fn mutate(rng: &mut ChaCha8Rng, corpus: &Corpus) -> (Vec<u8>, Vec<String>) {
    let k = rng.random_range(0..corpus.files.len());
    let (mut bytes, header) = corpus.files[k].clone();
    let mut steps = vec![format!("file {k}")];
    for _ in 0..rng.random_range(1..=3) {
        let len = bytes.len();
        let at = |rng: &mut ChaCha8Rng, end: usize| -> usize {
            match end {
                0 => 0,
                _ if header > 0 && rng.random_bool(0.9) => rng.random_range(0..header.min(end)),
                _ => rng.random_range(0..end),
            }
        };
        match rng.random_range(0..7) {
            0 => {
                for _ in 0..rng.random_range(1..=4) {
                    if len > 0 {
                        let p = at(rng, len);
                        let x: u8 = rng.random_range(1..=255);
                        bytes[p] ^= x;
                        steps.push(format!("flip {p} ^ {x:#04x}"));
                    }
                }
            }
            1 => {
                let p = rng.random_range(0..=len);
                bytes.truncate(p);
                steps.push(format!("truncate to {p}"));
            }
            2 => {
                let m = rng.random_range(0..corpus.files.len());
                let other = &corpus.files[m].0;
                let (p, q) = (at(rng, len), rng.random_range(0..=other.len()));
                bytes.truncate(p);
                bytes.extend_from_slice(&other[q..]);
                steps.push(format!("splice at {p} with file {m} from {q}"));
            }
            3 => {
                let p = at(rng, len);
                let piece: Vec<u8> = match corpus.text || rng.random_bool(0.5) {
                    true => TEXT_PIECES[rng.random_range(0..TEXT_PIECES.len())].into(),
                    false => (0..rng.random_range(1..=16))
                        .map(|_| rng.random())
                        .collect(),
                };
                steps.push(format!("insert {piece:?} at {p}"));
                bytes.splice(p..p, piece);
            }
            4 => {
                let value = INTEGERS[rng.random_range(0..INTEGERS.len())];
                let p = at(rng, len);
                match corpus.text || rng.random_bool(0.5) {
                    true => {
                        bytes.splice(p..p, value.to_string().into_bytes());
                    }
                    false => {
                        let width = if rng.random_bool(0.5) { 4 } else { 8 };
                        let end = (p + width).min(len);
                        bytes[p..end].copy_from_slice(&value.to_le_bytes()[..end - p]);
                    }
                }
                steps.push(format!("write {value} at {p}"));
            }
            5 => {
                let p = at(rng, len);
                let end = (p + rng.random_range(1..=64)).min(len);
                bytes.drain(p..end);
                steps.push(format!("delete {p}..{end}"));
            }
            _ => {
                let p = at(rng, len);
                let end = (p + rng.random_range(1..=8)).min(len);
                let times = rng.random_range(2..=200);
                let chunk = bytes[p..end].repeat(times);
                bytes.splice(p..p, chunk);
                steps.push(format!("repeat {p}..{end} {times} times"));
            }
        }
    }
    (bytes, steps)
}

/// A folder for the mutated files, in memory where Linux has a memory file system: thousands
/// of rewrites of one file on a disk measure the disk (and whatever else writes to it), not
/// the reader.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .unwrap()
}

/// Every cause of `e` says something.
fn require_message(e: &anyhow::Error) {
    for cause in e.chain() {
        assert!(
            !cause.to_string().trim().is_empty(),
            "an error without a message: {e:?}"
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}

/// Feeds `inputs` mutations of `corpus` to `read`, failing on the first panic.
fn fuzz(reader: &str, inputs: u64, corpus: &Corpus, read: impl Fn(&[u8]) -> Result<()>) {
    let start = Instant::now();
    let mut refused = 0;
    for input in 0..inputs {
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        rng.set_stream(input);
        let (bytes, steps) = mutate(&mut rng, corpus);
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Err(e) = read(&bytes) {
                require_message(&e);
                return false;
            }
            true
        }));
        match result {
            Ok(accepted) => refused += usize::from(!accepted),
            Err(panic) => panic!(
                "{reader}: seed {SEED:#x}, input {input} ({}) panicked: {}",
                steps.join(", "),
                panic_message(&*panic)
            ),
        }
    }
    eprintln!(
        "{reader}: {inputs} mutated inputs, {refused} refused with a message, none panicked, {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn project_reader_survives_mutations() {
    let knight = common::knight_project(
        vec![(0, "drawing his sword"), (1, "riding away")],
        vec![(common::CLEARING, true), ("on a castle bridge,", false)],
    );
    let knight = ron::ser::to_string_pretty(&knight, Default::default()).unwrap();
    let corpus = Corpus::text(&[
        include_str!("../projects/lighthouse-keeper.ron"),
        include_str!("../projects/courier-journey.ron"),
        &knight,
    ]);
    fuzz("project RON", 100_000, &corpus, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        match project::parse(&text, Path::new("fuzz.ron")) {
            Err(ProjectError::Parse { line, col, .. }) => {
                assert!(line >= 1 && col >= 1, "position {line}:{col}");
                assert!(line <= text.split('\n').count(), "line {line} past the end");
                anyhow::bail!("parse error")
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    });
}

const PROMPTS: &str = "\
in a gym,#a strong man,#lifting weights
in a gym,#a strong man,#drinking water
on a mountain top,#a strong man,#hiking up, front view


on a beach,#a girl in a red dress,#standing
on a beach,#a girl in a red dress,#running, side view
";

const PROMPTS_FG: &str = "\
in an empty background,#a white cat with blue eyes,#sitting, front view
in a kitchen,#a white cat with blue eyes,#drinking milk from a bowl
in a garden,#a white cat with blue eyes,#chasing a butterfly
";

#[test]
fn prompt_importer_survives_mutations() {
    let corpus = Corpus::text(&[PROMPTS, PROMPTS_FG]);
    fuzz("prompt import", 100_000, &corpus, |bytes| {
        project::import(&String::from_utf8_lossy(bytes), false).map(|_| ())
    });
}

/// The length of a safetensors file's header, as its first 8 bytes say.
fn safetensors_header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn safetensors_bytes(tensors: &[(&str, Tensor)]) -> Vec<u8> {
    let dir = scratch_dir();
    let path = dir.path().join("t.safetensors");
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn safetensors_reader_survives_mutations() {
    let dev = Device::Cpu;
    let t = |dims: &[usize], dtype: DType| {
        Tensor::arange(0f32, dims.iter().product::<usize>() as f32, &dev)
            .unwrap()
            .reshape(dims)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    // Every storage dtype, a scalar and an empty tensor.
    let mixed = safetensors_bytes(&[
        ("a", t(&[3, 4], DType::F32)),
        ("b", t(&[5], DType::F16)),
        ("c", t(&[2, 2, 2], DType::BF16)),
        ("d", t(&[4], DType::I64)),
        ("e", t(&[7], DType::U8)),
        ("f", t(&[], DType::F32)),
        ("g", t(&[0, 3], DType::F32)),
    ]);
    // A miniature BFL transformer (width 16, one head of 16, 2 double and 2 single blocks) with
    // just the tensors its config is read from, so that mutations reach config inference.
    let p = COMFY_PREFIX;
    let mini = safetensors_bytes(&[
        (&format!("{p}img_in.weight"), t(&[16, 16], DType::BF16)),
        (
            &format!("{p}double_blocks.0.img_attn.norm.query_norm.scale"),
            t(&[16], DType::BF16),
        ),
        (
            &format!("{p}double_blocks.0.img_mlp.0.weight"),
            t(&[64, 16], DType::BF16),
        ),
        (
            &format!("{p}double_blocks.0.img_attn.qkv.weight"),
            t(&[48, 16], DType::BF16),
        ),
        (
            &format!("{p}double_blocks.0.img_attn.qkv.bias"),
            t(&[48], DType::BF16),
        ),
        (
            &format!("{p}double_blocks.1.img_attn.qkv.weight"),
            t(&[48, 16], DType::BF16),
        ),
        (
            &format!("{p}single_blocks.0.linear1.weight"),
            t(&[112, 16], DType::BF16),
        ),
        (
            &format!("{p}single_blocks.1.linear1.weight"),
            t(&[112, 16], DType::BF16),
        ),
        (
            &format!("{p}vector_in.in_layer.weight"),
            t(&[16, 8], DType::F16),
        ),
        (&format!("{p}txt_in.weight"), t(&[16, 8], DType::F32)),
        (
            &format!("{p}guidance_in.in_layer.weight"),
            t(&[16, 4], DType::F32),
        ),
    ]);
    // And the tensors the VAE, T5 and CLIP configs are read from, likewise small.
    let vae = safetensors_bytes(&[
        ("encoder.conv_in.weight", t(&[4, 3, 3, 3], DType::F32)),
        (
            "encoder.down.0.block.0.conv1.weight",
            t(&[4, 4, 3, 3], DType::F32),
        ),
        (
            "encoder.down.0.block.1.conv1.weight",
            t(&[4, 4, 3, 3], DType::F32),
        ),
        (
            "encoder.down.1.block.0.conv1.weight",
            t(&[8, 4, 3, 3], DType::F32),
        ),
        ("decoder.conv_in.weight", t(&[8, 2, 3, 3], DType::F32)),
        ("decoder.conv_out.weight", t(&[3, 4, 3, 3], DType::F32)),
        (
            "decoder.up.0.block.0.conv1.weight",
            t(&[4, 4, 3, 3], DType::F32),
        ),
    ]);
    let attention = "encoder.block.0.layer.0.SelfAttention";
    let t5 = safetensors_bytes(&[
        (&format!("{attention}.q.weight"), t(&[8, 8], DType::F16)),
        (
            &format!("{attention}.relative_attention_bias.weight"),
            t(&[4, 2], DType::F16),
        ),
        ("shared.weight", t(&[10, 8], DType::F16)),
        (
            "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
            t(&[16, 8], DType::F16),
        ),
    ]);
    let clip = safetensors_bytes(&[
        (
            "text_model.embeddings.token_embedding.weight",
            t(&[10, 8], DType::F32),
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            t(&[6, 8], DType::F32),
        ),
        (
            "text_model.encoder.layers.0.mlp.fc1.weight",
            t(&[16, 8], DType::F32),
        ),
        (
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
            t(&[8, 8], DType::F32),
        ),
        ("text_projection.weight", t(&[8, 8], DType::F32)),
    ]);
    let corpus = Corpus {
        files: [mixed, mini, vae, t5, clip]
            .into_iter()
            .map(|b| {
                let header = safetensors_header_len(&b);
                (b, header)
            })
            .collect(),
        text: false,
    };
    let dir = scratch_dir();
    let path = dir.path().join("fuzz.safetensors");
    fuzz("safetensors header", 100_000, &corpus, |bytes| {
        std::fs::write(&path, bytes)?;
        let store = TensorStore::open(std::slice::from_ref(&path))?;
        store.stored_dtypes();
        let names: Vec<String> = store.names().map(String::from).collect();
        for name in &names {
            let loaded = store
                .shape(name)
                .and_then(|_| store.load(name, DType::F32, &dev));
            if let Err(e) = loaded {
                require_message(&e);
            }
        }
        let kind = classify_store(&path, &store)?;
        let shapes = Shapes::new(&path, &store, &kind);
        match kind {
            FileKind::VaeBfl => infer::vae_config(&shapes).map(|_| ()),
            FileKind::T5Encoder => infer::t5_config(&shapes).map(|_| ()),
            FileKind::ClipText => infer::clip_config(&shapes).map(|_| ()),
            _ => infer::flux_config(&shapes).map(|_| ()),
        }
    });
}

/// The tiny GGUF transformers (dev Q8_0, schnell Q4_0), and the length of each one's header.
fn tiny_ggufs(dir: &Path) -> Vec<(Vec<u8>, usize)> {
    [(false, GgmlDType::Q8_0), (true, GgmlDType::Q4_0)]
        .into_iter()
        .map(|(schnell, quant)| {
            let out = dir.join(format!("{quant:?}"));
            tiny_files::write_gguf_files(&out, 7, schnell, quant).unwrap();
            let path = out.join(GGUF_TRANSFORMER_FILE);
            let mut file = std::fs::File::open(&path).unwrap();
            let header = gguf_file::Content::read(&mut file)
                .unwrap()
                .tensor_data_offset;
            (std::fs::read(&path).unwrap(), header as usize)
        })
        .collect()
}

/// The same tensors again with metadata, as city96's files have, for mutations to reach the
/// metadata reader; only the header is kept.
fn gguf_header_with_metadata(file: &[u8], dir: &Path) -> (Vec<u8>, usize) {
    let source = dir.join("source.gguf");
    std::fs::write(&source, file).unwrap();
    let mut reader = std::fs::File::open(&source).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|n| {
            (
                n.clone(),
                content.tensor(&mut reader, n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let arch = gguf_file::Value::String("flux".into());
    let alignment = gguf_file::Value::U32(32);
    let list = gguf_file::Value::Array(vec![gguf_file::Value::I16(-1), gguf_file::Value::I16(2)]);
    let with = dir.join("with-metadata.gguf");
    let mut out = std::fs::File::create(&with).unwrap();
    gguf_file::write(
        &mut out,
        &[
            ("general.architecture", &arch),
            ("general.alignment", &alignment),
            ("charaboard.list", &list),
        ],
        &refs,
    )
    .unwrap();
    drop(out);
    let mut reader = std::fs::File::open(&with).unwrap();
    let header = gguf_file::Content::read(&mut reader)
        .unwrap()
        .tensor_data_offset as usize;
    let bytes = std::fs::read(&with).unwrap();
    (bytes[..header].to_vec(), header)
}

#[test]
fn gguf_header_reader_survives_mutations() {
    let dir = scratch_dir();
    let ggufs = tiny_ggufs(dir.path());
    let mut files: Vec<(Vec<u8>, usize)> = ggufs
        .iter()
        .map(|(bytes, header)| (bytes[..*header].to_vec(), *header))
        .collect();
    files.push(gguf_header_with_metadata(&ggufs[0].0, dir.path()));
    let corpus = Corpus { files, text: false };
    let path = dir.path().join("fuzz.gguf");
    fuzz("GGUF header", 50_000, &corpus, |bytes| {
        std::fs::write(&path, bytes)?;
        let header = GgufHeader::read(&path)?;
        header.stored_dtypes();
        let FileKind::FluxGguf { prefix } = header.classify()? else {
            anyhow::bail!("a GGUF is always classified as a GGUF transformer")
        };
        header.check_quantizations()?;
        header.flux_config(&prefix)?;
        Ok(())
    });
}

#[test]
fn gguf_loader_survives_mutations() {
    let dir = scratch_dir();
    let corpus = Corpus {
        files: tiny_ggufs(dir.path()),
        text: false,
    };
    let path = dir.path().join("fuzz.gguf");
    fuzz("GGUF loader", 5_000, &corpus, |bytes| {
        std::fs::write(&path, bytes)?;
        gguf::load_transformer(&path, DType::F32, &Device::Cpu).map(|_| ())
    });
}

#[test]
fn model_file_reader_survives_mutations() {
    let dir = scratch_dir();
    // Both write model.ron; the second, naming the safetensors transformer, stays.
    tiny_files::write_gguf_files(dir.path(), 7, false, GgmlDType::Q8_0).unwrap();
    tiny_files::write_single_files(dir.path(), 7, false, FileDtypes::F32).unwrap();
    let safetensors = std::fs::read_to_string(dir.path().join(tiny_files::MODEL_FILE)).unwrap();
    let with_gguf = safetensors.replace(tiny_files::TRANSFORMER_FILE, GGUF_TRANSFORMER_FILE);
    assert_ne!(safetensors, with_gguf);
    let pretty = safetensors.replace(", ", ",\n    // a comment\n    ");
    let corpus = Corpus::text(&[&safetensors, &with_gguf, &pretty]);
    let path = dir.path().join("fuzz.ron");
    fuzz("model file", 50_000, &corpus, |bytes| {
        std::fs::write(&path, bytes)?;
        is_model_file(&path);
        ModelSource::detect(&path).map(|_| ())
    });
}
