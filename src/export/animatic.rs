//! The animatic as files: the panels' images in order, each held for its duration, with its
//! number, start timecode and dialogue (or caption) on a bar underneath. Written as an animated
//! GIF and as a numbered PNG sequence with an ffconcat file (`ffmpeg -f concat -i
//! animatic.ffconcat animatic.mp4` makes a video of it). There is no MP4 here: no well-kept
//! pure-Rust H.264 encoder builds on these machines without network access at run time.

use anyhow::{ensure, Context, Result};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{imageops, imageops::FilterType, Delay, Frame, Rgb, RgbImage};
use std::fs;
use std::path::{Path, PathBuf};

use super::panel_shape;
use super::text::TextRenderer;
use crate::atomic_file::{png_bytes, write_all_in_order, write_atomic_with};
use crate::project::model::Project;
use crate::project::timing::{starts, timecode};

const BACKGROUND: Rgb<u8> = Rgb([0x10, 0x10, 0x10]);
const PLACEHOLDER: Rgb<u8> = Rgb([0x40, 0x40, 0x40]);
const INK: Rgb<u8> = Rgb([0xf0, 0xf0, 0xf0]);
const CAPTION_PX: f32 = 14.0;
const PAD: u32 = 8;
/// GIF encoder speed (1 = best colours, 30 = fastest); 10 is the encoder's own balance.
const GIF_SPEED: i32 = 10;

/// One still of the animatic and how long it is held.
pub struct AnimaticFrame {
    pub image: RgbImage,
    pub seconds: f64,
}

/// The animatic's frames, one per panel, all of one size: the project's image size scaled so
/// its long side is `long_side` pixels, every panel fitted into it (a grey card where
/// `images[i]` is `None`), above a caption bar as tall as the longest caption needs.
pub fn frames(
    project: &Project,
    images: &[Option<RgbImage>],
    long_side: u32,
) -> Result<Vec<AnimaticFrame>> {
    super::check_one_image_a_panel(project, images)?;
    ensure!(
        long_side >= 16,
        "an animatic needs frames of 16 pixels or more"
    );
    let (w, h) = (
        project.settings.width.max(1) as f64,
        project.settings.height.max(1) as f64,
    );
    let scale = f64::from(long_side) / w.max(h);
    let (fw, fh) = (
        ((w * scale).round() as u32).max(1),
        ((h * scale).round() as u32).max(1),
    );
    let text = TextRenderer::new()?;
    let (at, _) = starts(project);
    let captions: Vec<Vec<String>> = project
        .panels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let words = match p.dialogue.trim().is_empty() {
                true => p.caption.trim(),
                false => p.dialogue.trim(),
            };
            let line = format!("{}  {}  {words}", i + 1, timecode(at[i]));
            text.wrap(line.trim_end(), CAPTION_PX, (fw - 2 * PAD) as f32)
        })
        .collect();
    let lines = captions.iter().map(Vec::len).max().unwrap_or(1);
    let line_height = text.line_height(CAPTION_PX);
    let bar = (lines as f32 * line_height).ceil() as u32 + 2 * PAD;
    let mut out = Vec::with_capacity(images.len());
    for (i, (image, caption)) in images.iter().zip(&captions).enumerate() {
        let mut frame = RgbImage::from_pixel(fw, fh + bar, BACKGROUND);
        let shape = image
            .as_ref()
            .map_or(panel_shape(project, i), RgbImage::dimensions);
        let fit = (f64::from(fw) / f64::from(shape.0)).min(f64::from(fh) / f64::from(shape.1));
        let (pw, ph) = (
            ((f64::from(shape.0) * fit).round() as u32).clamp(1, fw),
            ((f64::from(shape.1) * fit).round() as u32).clamp(1, fh),
        );
        let (x, y) = ((fw - pw) / 2, (fh - ph) / 2);
        let picture = match image {
            Some(img) => imageops::resize(img, pw, ph, FilterType::Triangle),
            None => RgbImage::from_pixel(pw, ph, PLACEHOLDER),
        };
        imageops::replace(&mut frame, &picture, i64::from(x), i64::from(y));
        for (k, l) in caption.iter().enumerate() {
            let ly = (fh + PAD) as f32 + k as f32 * line_height;
            text.draw(&mut frame, l, PAD as f32, ly, CAPTION_PX, INK);
        }
        out.push(AnimaticFrame {
            image: frame,
            seconds: project.panels[i].duration,
        });
    }
    Ok(out)
}

/// Writes `frames` as a looping animated GIF at `path` (atomically). GIF counts delays in
/// hundredths of a second, so each duration is rounded to the nearest 10 ms.
pub fn write_gif(frames: &[AnimaticFrame], path: &Path) -> Result<()> {
    write_atomic_with(path, |w| {
        let mut encoder = GifEncoder::new_with_speed(w, GIF_SPEED);
        encoder.set_repeat(Repeat::Infinite)?;
        for f in frames {
            let centis = (f.seconds * 100.0).round() as u32;
            let delay = Delay::from_numer_denom_ms(centis * 10, 1);
            let rgba = image::DynamicImage::ImageRgb8(f.image.clone()).into_rgba8();
            encoder.encode_frame(Frame::from_parts(rgba, 0, 0, delay))?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write the animatic {}", path.display()))
}

/// Writes `frames` as `dir/0001.png`, `dir/0002.png`, ... and `dir/animatic.ffconcat`, which
/// holds each for its duration. All files are staged first and committed together; on any
/// failure none is written (and a folder made for them is removed again).
pub fn write_sequence(frames: &[AnimaticFrame], dir: &Path) -> Result<Vec<PathBuf>> {
    let made = !dir.exists();
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the animatic folder {}", dir.display()))?;
    let mut concat = String::from("ffconcat version 1.0\n");
    let mut names = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        let name = format!("{:04}.png", k + 1);
        concat += &format!("file {name}\nduration {}\n", f.seconds);
        names.push(name);
    }
    // The concat demuxer ignores the last duration unless its file is listed once more.
    if let Some(last) = names.last() {
        concat += &format!("file {last}\n");
    }
    let written = (|| -> Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut files = frames
            .iter()
            .zip(&names)
            .map(|(f, name)| Ok((dir.join(name), png_bytes(&f.image)?)))
            .collect::<Result<Vec<_>>>()?;
        files.push((dir.join("animatic.ffconcat"), concat.into_bytes()));
        write_all_in_order(&files)?;
        Ok(files)
    })();
    let targets = match written {
        Ok(files) => files.into_iter().map(|(path, _)| path).collect(),
        Err(e) => {
            if made {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    Ok(targets)
}
