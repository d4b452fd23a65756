//! A picture identity: the VAE encoder's parity with candle-transformers, the inverters' known
//! answers on the tiny model, and the pictures the loader refuses.

mod common;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Encoder as CandleEncoder;
use candle_transformers::models::flux::sampling::unpack;
use charaboard::invert::{self, Inverted, Inverter};
use charaboard::models::layout::RepoLayout;
use charaboard::models::load;
use charaboard::models::source::ModelSource;
use charaboard::models::tiny;
use charaboard::picture::psnr;
use charaboard::pipeline::{FluxModels, GenerateParams, NoiseSource};
use charaboard::sampler::{self, Denoised, StepControl};
use common::max_abs_diff;

/// Our encoder, loaded from the diffusers names, computes what candle-transformers' encoder
/// computes from the BFL weights: the same arithmetic in f32 but for the swish's exp, ours
/// vectorised and within 2 ulp of libm's, which leaves the moments within 1e-5 (1.6e-6 seen);
/// `encode` takes the mean and scales it as candle's `AutoEncoder::encode` does (which draws
/// around the mean instead).
#[test]
fn vae_encoder_equals_candle_encoder_on_the_bfl_weights_it_was_written_from() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    tiny::write_repo(dir.path(), 5, false)?;
    let source = ModelSource::Repo(Box::new(RepoLayout::open(dir.path())?));
    let (ours, _) = load::vae::encoder(&source, DType::F32, &Device::Cpu)?;
    let cfg = tiny::vae_config();
    let bfl = tiny::vae_weights(&cfg, 5 + tiny::VAE_SEED_OFFSET)?;
    let vb = VarBuilder::from_tensors(bfl.into_iter().collect(), DType::F32, &Device::Cpu);
    let theirs = CandleEncoder::new(&cfg, vb.pp("encoder"))?;
    let pixels = Tensor::rand(-1f32, 1., (1, 3, 32, 48), &Device::Cpu)?;
    let moments = ours.moments(&pixels)?;
    assert_eq!(moments.dims(), &[1, 32, 4, 6]);
    let diff = max_abs_diff(&moments, &theirs.forward(&pixels)?);
    assert!(diff < 1e-5, "moments differ by {diff}");
    let mean = moments.chunk(2, 1)?.remove(0);
    let expected = ((mean - cfg.shift_factor)? * cfg.scale_factor)?;
    assert_eq!(
        max_abs_diff(&ours.encode(&pixels, DType::F32)?, &expected),
        0.0
    );
    Ok(())
}

const PROMPT: &str = "in a quiet forest clearing at dawn, a young knight standing";
const SIDE: usize = 32;

/// One inversion's measures.
struct Measured {
    /// RMS of (inverted - original noise) over the original's RMS.
    noise_error: f64,
    /// Of the reconstruction against the picture, in dB.
    psnr: f64,
    /// Seconds of the picture's generation and of its inversion.
    seconds: (f64, f64),
}

/// Generates a picture from seed 7 in `steps` steps, inverts its latents with `inverter` in
/// `inversion_steps` and reconstructs it from the inverted noise with the sampler.
///
/// The latents are inverted directly: the tiny VAE's random encoder is no inverse of its
/// random decoder, so a round trip through pixels would measure the VAE, not the inverter
/// (the encoder's part is proven by the parity test above, the pixel path end to end below).
fn measure(
    models: &mut FluxModels,
    steps: usize,
    inverter: Inverter,
    inversion_steps: usize,
) -> anyhow::Result<Measured> {
    let params = GenerateParams {
        prompt: PROMPT.into(),
        width: SIDE,
        height: SIDE,
        steps,
        guidance: 3.5,
        noise: NoiseSource::Seed(7),
    };
    let start = std::time::Instant::now();
    let picture =
        charaboard::pipeline::generate(models, &params, None, &mut |_| Ok(StepControl::Continue))?
            .expect("not cancelled");
    let generated = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let (run, sigmas) = models.prepare_run_from(PROMPT, &picture.latents, inversion_steps)?;
    let Inverted::Done(packed) = invert::invert(
        &models.transformer,
        &run,
        &sigmas,
        params.guidance,
        inverter,
        &mut |_, _| Ok(StepControl::Continue),
    )?
    else {
        panic!("not cancelled")
    };
    let noise = unpack(&packed, SIDE, SIDE)?;
    let inverted = start.elapsed().as_secs_f64();
    let original = sampler::seeded_noise(7, SIDE, SIDE)?;
    let rms = |t: &Tensor| -> anyhow::Result<f64> {
        Ok(f64::from(t.sqr()?.mean_all()?.to_scalar::<f32>()?).sqrt())
    };
    let noise_error = rms(&(&noise - &original)?)? / rms(&original)?;
    let (run, sigmas) = models.prepare_run_from(PROMPT, &noise, inversion_steps)?;
    let Denoised::Done(back) = sampler::denoise(
        &models.transformer,
        &run,
        &sigmas,
        params.guidance,
        None,
        &mut |_| Ok(StepControl::Continue),
    )?
    else {
        panic!("not cancelled")
    };
    let (image, _) = models.decode_packed(&back, SIDE, SIDE)?;
    Ok(Measured {
        noise_error,
        psnr: psnr(&picture.image, &image),
        seconds: (generated, inverted),
    })
}

/// Each inverter at 28 and 50 steps on a picture drawn in as many: the noise comes back close
/// to the original and closer with more steps, the reconstruction gives the picture back, and
/// at equal forwards (Euler gets the one forward more the others take) the fixed-point
/// inverter beats Euler.
#[test]
fn inverters_give_back_the_noise_and_the_picture() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, mut models) = common::tiny_models(dir.path());
    let mut table = Vec::new();
    for steps in [28, 50] {
        for inverter in Inverter::ALL {
            let m = measure(&mut models, steps, inverter, steps)?;
            println!(
                "{:<12} {steps} steps, {} forwards: noise error {:.5}, PSNR {:.2} dB; inversion {:.3} s against {:.3} s to generate",
                inverter.label(),
                inverter.forwards(steps),
                m.noise_error,
                m.psnr,
                m.seconds.1,
                m.seconds.0
            );
            table.push((steps, inverter, m));
        }
        let euler = measure(&mut models, steps, Inverter::Euler, steps + 1)?;
        println!(
            "Euler        {} steps, {} forwards (equal forwards): PSNR {:.2} dB",
            steps + 1,
            steps + 1,
            euler.psnr
        );
        let fixed = &table.last().expect("measured").2;
        assert!(
            fixed.psnr > euler.psnr,
            "fixed point {:.2} dB, Euler at equal forwards {:.2} dB",
            fixed.psnr,
            euler.psnr
        );
    }
    let at = |steps, inverter| {
        &table
            .iter()
            .find(|(s, i, _)| *s == steps && *i == inverter)
            .expect("measured")
            .2
    };
    // Measured (tiny model, 32x32, seed 7): noise error / PSNR at 28 and 50 steps
    // Euler 0.036 / 41.9 dB, 0.020 / 46.6 dB; FireFlow 0.126 / 32.5 dB, 0.056 / 38.7 dB;
    // fixed point 0.0015 / 60.5 dB, 0.0005 / 64.7 dB. FireFlow follows the continuous ODE, so
    // under the Euler reconstruction it does worse than Euler itself.
    for inverter in Inverter::ALL {
        let (m28, m50) = (at(28, inverter), at(50, inverter));
        assert!(m50.noise_error < m28.noise_error, "{}", inverter.label());
        assert!(m50.psnr > m28.psnr, "{}", inverter.label());
        assert!(
            m28.noise_error < 0.2,
            "{}: {}",
            inverter.label(),
            m28.noise_error
        );
        assert!(m28.psnr > 30.0, "{}: {:.2} dB", inverter.label(), m28.psnr);
    }
    let fixed = at(28, Inverter::FixedPoint);
    assert!(fixed.noise_error < 0.01 && fixed.psnr > 55.0);
    Ok(())
}

/// A PNG whose header claims `w` x `h` pixels and whose image data is empty (CRCs right).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        let crc = body.iter().fold(!0u32, |mut c, &b| {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
            }
            c
        });
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out.extend((!crc).to_be_bytes());
        out
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[]));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// Every picture the loader refuses is refused with the file's name and what to do.
#[test]
fn bad_pictures_are_named_with_what_to_do() -> anyhow::Result<()> {
    use charaboard::picture::{load, Fit};
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let load32 = |p: &std::path::Path| load(p, 32, 32, Fit::CentreCrop);

    std::fs::write(path("notes.png"), "not a picture")?;
    let e = common::error_of(load32(&path("notes.png")));
    common::assert_mentions(&e, &["notes.png", "not a PNG, JPEG or WebP"]);

    let mut good = Vec::new();
    image::RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 30])).write_to(
        &mut std::io::Cursor::new(&mut good),
        image::ImageFormat::Png,
    )?;
    std::fs::write(path("cut.png"), &good[..good.len() / 2])?;
    let e = common::error_of(load32(&path("cut.png")));
    common::assert_mentions(&e, &["cut.png", "truncated", "save it again"]);

    // 10000 x 7000 claimed by the header alone: refused before any pixel is read.
    std::fs::write(path("huge.png"), png_header(10_000, 7_000))?;
    let e = common::error_of(load32(&path("huge.png")));
    common::assert_mentions(&e, &["huge.png", "10000x7000", "64 MP", "scale it down"]);

    std::fs::write(path("small.png"), &good)?;
    let e = common::error_of(load(&path("small.png"), 64, 64, Fit::CentreCrop));
    common::assert_mentions(
        &e,
        &["small.png", "64x48", "smaller than the identity's 64x64"],
    );
    // A letterbox only needs one side to fill.
    let boxed = load(&path("small.png"), 64, 64, Fit::Letterbox)?;
    assert_eq!(boxed.dimensions(), (64, 64));
    assert_eq!(boxed.get_pixel(0, 0).0, [255, 255, 255], "white bars");
    assert_eq!(boxed.get_pixel(32, 32).0, [10, 200, 30]);

    let e = common::error_of(load32(&path("gone.png")));
    common::assert_mentions(&e, &["gone.png", "put the file back"]);
    Ok(())
}

/// 16-bit pictures with alpha land on white; a crop keeps the centre; JPEG and WebP load.
#[test]
fn pictures_are_flattened_fitted_and_read_in_every_format() -> anyhow::Result<()> {
    use charaboard::picture::{load, Fit};
    let dir = tempfile::tempdir()?;
    // Left half transparent, right half opaque red, 16 bits a channel.
    let wide = image::ImageBuffer::from_fn(96, 32, |x, _| match x < 48 {
        true => image::Rgba([0u16, 0, 0, 0]),
        false => image::Rgba([65535u16, 0, 0, 65535]),
    });
    let p = dir.path().join("wide.png");
    wide.save(&p)?;
    let crop = load(&p, 32, 32, Fit::CentreCrop)?;
    assert_eq!(crop.dimensions(), (32, 32));
    assert_eq!(
        crop.get_pixel(2, 16).0,
        [255, 255, 255],
        "transparent is white"
    );
    assert_eq!(crop.get_pixel(29, 16).0, [255, 0, 0]);
    let boxed = load(&p, 32, 32, Fit::Letterbox)?;
    assert_eq!(boxed.get_pixel(16, 2).0, [255, 255, 255], "bar above");
    for format in [image::ImageFormat::Jpeg, image::ImageFormat::WebP] {
        let p = dir
            .path()
            .join(format!("grey.{}", format.extensions_str()[0]));
        image::RgbImage::from_pixel(48, 48, image::Rgb([128, 128, 128]))
            .save_with_format(&p, format)?;
        let picture = load(&p, 32, 32, Fit::CentreCrop)?;
        let [r, g, b] = picture.get_pixel(16, 16).0;
        assert!(
            [r, g, b].iter().all(|c| c.abs_diff(128) <= 2),
            "{format:?}: {r} {g} {b}"
        );
    }
    Ok(())
}

/// A storyboard whose identity is a picture generated by charaboard: identity picture ->
/// encoder -> inversion -> reconstruction with the bank, then masks, matches and panels.
const PICTURE_PROJECT: &str = r#"(
    title: "Courier from a picture",
    character: "a courier with a green satchel,",
    identity: (
        environment: "on a quiet street,",
        action: "standing",
        source: Picture((path: "courier.png", fit: CentreCrop, inverter: FixedPoint)),
    ),
    scenes: [
        (environment: "on a quiet street,", lock_background: true),
        (environment: "in a market,"),
    ],
    panels: [
        (scene: 0, action: "waving"),
        (scene: 1, action: "buying bread"),
    ],
    settings: (width: 64, height: 64, steps: Some(4)),
)"#;

/// Renders [`PICTURE_PROJECT`] banked and in lockstep; both give every image, and the same.
#[test]
fn a_storyboard_with_a_picture_identity_renders_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model_cli(dir.path());
    let picture = dir.path().join("courier.png");
    common::ok(&common::generate(
        model.to_str().unwrap(),
        &picture,
        &["--width", "96", "--height", "80", "--steps", "4"],
    ));
    let project = dir.path().join("courier.ron");
    std::fs::write(&project, PICTURE_PROJECT).unwrap();
    let stems = [
        "identity-take-001",
        "panel-01-take-001",
        "panel-02-take-001",
    ];
    let mut renders = Vec::new();
    for (out, bank) in [("banked", "device"), ("lockstep", "recompute")] {
        let out = dir.path().join(out);
        let run = common::render_cli(&project, &model, &out, &["--bank", bank]);
        common::ok(&run);
        for stem in stems {
            for suffix in [".png", "-mask.png", ".safetensors", ".key.ron"] {
                assert!(
                    out.join(format!("{stem}{suffix}")).is_file(),
                    "{bank}: {stem}{suffix}"
                );
            }
        }
        assert!(out.join("panel-01-take-001-matches.png").is_file());
        renders.push(out);
    }
    for stem in stems {
        let png = |dir: &std::path::Path| image::open(dir.join(format!("{stem}.png"))).unwrap();
        assert_eq!(
            png(&renders[0]),
            png(&renders[1]),
            "{stem}: banked and lockstep agree"
        );
    }
    let key = std::fs::read_to_string(renders[0].join("identity-take-001.key.ron")).unwrap();
    assert!(
        key.contains("FixedPoint") && key.contains("CentreCrop"),
        "{key}"
    );

    // The same picture inverted on its own, to a noise file staged and renamed.
    let noise = dir.path().join("noise.safetensors");
    let run = common::charaboard(&[
        "invert",
        picture.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "on a quiet street, a courier with a green satchel, standing",
        "--out",
        noise.to_str().unwrap(),
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "4",
        "--inverter",
        "fire-flow",
    ]);
    common::ok(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("5 forwards"));
    let written = charaboard::sampler::load_noise(&noise, 64, 64).unwrap();
    assert_eq!(written.dims(), &[1, 16, 8, 8]);
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(leftovers, 0);

    // The picture gone: refused before the model loads, naming the file, rendering nothing.
    std::fs::remove_file(&picture).unwrap();
    let out = dir.path().join("after");
    let run = common::render_cli(&project, &model, &out, &[]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    common::assert_mentions(&stderr, &["courier.png", "put the file back"]);
    assert!(!stderr.contains("loading"), "{stderr}");
    assert!(!out.exists());
}

/// The identity's key holds the picture's digest, fit and inverter: changing any of them
/// re-renders the identity (and so every panel); a generated identity's key has no picture.
#[test]
fn the_identity_key_follows_the_picture() -> anyhow::Result<()> {
    use charaboard::consist::plan::{ModelKey, PlanModel, Target};
    use charaboard::picture::Fit;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("courier.ron");
    let picture = dir.path().join("courier.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9])).save(&picture)?;
    std::fs::write(&path, PICTURE_PROJECT)?;
    let project = charaboard::project::load(&path)?;
    let model = PlanModel {
        key: ModelKey {
            source: "test".into(),
            dtype: "f32".into(),
        },
        default_steps: 4,
    };
    let key = |p: &charaboard::project::Project| {
        charaboard::project::plan(p, &model, None)
            .unwrap()
            .image(Target::Panel(0))
            .unwrap()
            .key
            .clone()
    };
    let first = key(&project);
    // The sample project's shipped picture loads and fits its identity.
    let sample = charaboard::project::load(std::path::Path::new("projects/own-character.ron"))?;
    assert!(key(&sample).depends_on[0].picture.is_some());
    assert!(first.depends_on[0].picture.is_some());
    let mut boxed = project.clone();
    let charaboard::project::IdentitySource::Picture(p) = &mut boxed.characters[0].identity.source
    else {
        panic!("a picture identity")
    };
    p.fit = Fit::Letterbox;
    assert_ne!(key(&boxed), first, "fit");
    let mut euler = project.clone();
    if let charaboard::project::IdentitySource::Picture(p) =
        &mut euler.characters[0].identity.source
    {
        p.inverter = Inverter::Euler;
    }
    assert_ne!(key(&euler), first, "inverter");
    image::RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 10])).save(&picture)?;
    assert_ne!(key(&project), first, "the picture's content");
    // Saved and loaded again, the source survives; a generated identity writes no source.
    charaboard::project::save(&project, &path)?;
    assert_eq!(charaboard::project::load(&path)?, project);
    let mut generated = project.clone();
    generated.characters[0].identity.source = charaboard::project::IdentitySource::Generated;
    charaboard::project::save(&generated, &path)?;
    assert!(!std::fs::read_to_string(&path)?.contains("source"));
    assert!(key(&generated).depends_on[0].picture.is_none());
    Ok(())
}

/// A JPEG whose EXIF says "rotate 90 degrees clockwise" loads turned upright.
#[test]
fn exif_orientation_is_applied() -> anyhow::Result<()> {
    use image::ImageEncoder;
    // A TIFF header and one IFD entry: Orientation (0x0112), SHORT, 6 = rotate 90 clockwise.
    let mut exif = b"II\x2a\x00\x08\x00\x00\x00\x01\x00".to_vec();
    exif.extend([0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    // Wide: the left half dark, the right half bright.
    let wide = image::RgbImage::from_fn(64, 32, |x, _| match x < 32 {
        true => image::Rgb([20, 20, 20]),
        false => image::Rgb([235, 235, 235]),
    });
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
    encoder.set_exif_metadata(exif)?;
    encoder.write_image(wide.as_raw(), 64, 32, image::ExtendedColorType::Rgb8)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("turned.jpg");
    std::fs::write(&path, bytes)?;
    let upright = charaboard::picture::load(&path, 32, 64, charaboard::picture::Fit::CentreCrop)?;
    assert_eq!(upright.dimensions(), (32, 64));
    // Turned clockwise, the left half is on top.
    assert!(upright.get_pixel(16, 8).0[0] < 60 && upright.get_pixel(16, 56).0[0] > 200);
    Ok(())
}

/// Saved into another folder, a picture identity keeps its picture: the relative path is
/// rewritten against the new folder.
#[test]
fn saving_elsewhere_keeps_the_picture() -> anyhow::Result<()> {
    use charaboard::project::IdentitySource;
    use charaboard::ui::document::Document;
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b/deeper"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])).save(a.join("courier.png"))?;
    std::fs::write(a.join("courier.ron"), PICTURE_PROJECT)?;
    let mut doc = Document::open(&a.join("courier.ron"))?;
    doc.save_to(&b.join("moved.ron"))?;
    let moved = charaboard::project::load(&b.join("moved.ron"))?;
    let IdentitySource::Picture(p) = &moved.characters[0].identity.source else {
        panic!("a picture identity")
    };
    assert_eq!(
        std::fs::canonicalize(p.resolved())?,
        std::fs::canonicalize(a.join("courier.png"))?
    );
    charaboard::project::plan::check_picture(&moved)?;
    Ok(())
}

/// A draft identity is checked at the draft's size: a picture large enough for the draft but
/// smaller than the final size passes in draft mode and is refused, naming both sizes, in final.
#[test]
fn a_picture_is_checked_at_the_size_the_project_renders() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    image::RgbImage::from_pixel(64, 64, image::Rgb([9, 8, 7]))
        .save(dir.path().join("courier.png"))?;
    let at = |draft: bool| {
        let text = PICTURE_PROJECT.replace(
            "settings: (width: 64, height: 64, steps: Some(4)),",
            &format!("settings: (width: 128, height: 128, steps: Some(4), draft: {draft}, draft_long_side: 64),"),
        );
        std::fs::write(dir.path().join("courier.ron"), text)?;
        let project = charaboard::project::load(&dir.path().join("courier.ron"))?;
        charaboard::project::plan::check_picture(&project)
    };
    at(true)?;
    let refusal = format!("{:#}", at(false).unwrap_err());
    assert!(
        refusal.contains("64x64") && refusal.contains("128x128"),
        "{refusal}"
    );
    Ok(())
}
