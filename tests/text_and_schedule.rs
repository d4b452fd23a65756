//! Tokenization with the real vocabularies, and the sampling schedule.

use charaboard::models::{tiny, RepoLayout};
use charaboard::sampler::SchedulerConfig;
use charaboard::text::{PromptTokenizers, CLIP_MAX_TOKENS, T5_LEN_DEV, T5_LEN_SCHNELL};

#[test]
fn shipped_tokenizers_give_the_known_ids() -> anyhow::Result<()> {
    let tok = PromptTokenizers::shipped(T5_LEN_DEV)?;
    let t5 = tok.t5_ids("a photo of a cat")?;
    assert_eq!(&t5.ids[..8], &[3, 9, 1202, 13, 3, 9, 1712, 1]);
    assert!(t5.ids[8..].iter().all(|&i| i == 0));
    assert_eq!((t5.ids.len(), t5.dropped), (512, 0));
    assert_eq!(tok.t5_count("a photo of a cat")?, 7);
    assert_eq!(
        tok.clip_ids("a photo of a cat")?,
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
    let girl = tok.t5_ids("A girl with red hair, wearing a blue dress, in a forest.")?;
    assert_eq!(
        &girl.ids[..18],
        &[71, 3202, 28, 1131, 1268, 6, 5119, 3, 9, 1692, 3270, 6, 16, 3, 9, 5827, 5, 1]
    );
    Ok(())
}

#[test]
fn long_prompts_are_truncated_and_counted() -> anyhow::Result<()> {
    let tok = PromptTokenizers::shipped(T5_LEN_SCHNELL)?;
    let prompt = "cat ".repeat(300);
    let count = tok.t5_count(&prompt)?;
    let ids = tok.t5_ids(&prompt)?;
    assert_eq!(ids.ids.len(), 256);
    assert_eq!(ids.ids[255], 1, "</s> is kept at the end");
    assert_eq!(ids.dropped, count - 255);
    let clip = tok.clip_ids(&prompt)?;
    assert_eq!(clip.len(), CLIP_MAX_TOKENS);
    assert_eq!((clip[0], clip[76]), (49406, 49407));
    Ok(())
}

#[test]
fn clip_tokenizer_built_from_repository_vocab_and_merges_matches_the_shipped_one(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    tiny::write_repo(dir.path(), 0, false)?;
    let layout = RepoLayout::open(dir.path())?;
    assert!(
        !layout.tokenizer.join("tokenizer.json").exists(),
        "like the real repository"
    );
    let from_repo = PromptTokenizers::from_repo(&layout, T5_LEN_DEV)?;
    let shipped = PromptTokenizers::shipped(T5_LEN_DEV)?;
    for text in [
        "a photo of a cat",
        "In a deserted alleyway at night, a girl in a RED coat; 3 cats!",
    ] {
        assert_eq!(from_repo.clip_ids(text)?, shipped.clip_ids(text)?);
        assert_eq!(from_repo.t5_ids(text)?, shipped.t5_ids(text)?);
    }
    Ok(())
}

#[test]
fn a_repository_vocabulary_without_clip_special_tokens_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    tiny::write_repo(dir.path(), 0, false)?;
    let layout = RepoLayout::open(dir.path())?;
    let vocab_path = layout.tokenizer.join("vocab.json");
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&vocab_path)?)?;
    vocab.remove("<|startoftext|>");
    std::fs::write(&vocab_path, serde_json::to_vec(&vocab)?)?;
    let err = PromptTokenizers::from_repo(&layout, T5_LEN_DEV)
        .err()
        .expect("a vocabulary without the start token is refused");
    assert!(err.to_string().contains("<|startoftext|>"), "{err}");
    Ok(())
}

#[test]
fn dev_schedule_matches_the_reference_sigmas_at_1024() {
    let sigmas = SchedulerConfig::dev().sigmas(50, 4096);
    assert_eq!(sigmas.len(), 51);
    // characonsist-spec.md §1, sample sigmas at 1024².
    for (step, expected) in [
        (0, 1.0),
        (1, 0.9936),
        (10, 0.9266),
        (11, 0.918),
        (30, 0.678),
        (31, 0.6594),
        (40, 0.4412),
        (41, 0.4094),
        (49, 0.0606),
    ] {
        assert!(
            (sigmas[step] - expected).abs() < 6e-4,
            "step {step}: {} vs {expected}",
            sigmas[step]
        );
    }
    assert_eq!(sigmas[50], 0.0);
    // And it equals candle's own schedule.
    let candle =
        candle_transformers::models::flux::sampling::get_schedule(50, Some((4096, 0.5, 1.15)));
    for (a, b) in sigmas.iter().zip(&candle) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn schnell_schedule_is_linear() {
    assert_eq!(
        SchedulerConfig::schnell().sigmas(4, 4096),
        vec![1.0, 0.75, 0.5, 0.25, 0.0]
    );
}

#[test]
fn seeded_noise_is_reproducible_and_standard_normal() -> anyhow::Result<()> {
    let a = charaboard::sampler::seeded_noise(7, 256, 128)?;
    let b = charaboard::sampler::seeded_noise(7, 256, 128)?;
    let c = charaboard::sampler::seeded_noise(8, 256, 128)?;
    assert_eq!(a.dims(), &[1, 16, 16, 32]);
    let (va, vb, vc) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
        c.flatten_all()?.to_vec1::<f32>()?,
    );
    assert_eq!(va, vb);
    assert_ne!(va, vc);
    let mean = va.iter().sum::<f32>() / va.len() as f32;
    let var = va.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / va.len() as f32;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "mean {mean} var {var}"
    );
    Ok(())
}
