//! A picture the user brings for the identity: checked, decoded and fitted to the identity's
//! size. PNG, JPEG and WebP; 8 or 16 bits; EXIF orientation applied; alpha flattened on white.
//!
//! Every way a picture can fail is found here, before any model work, and named in one message
//! that says what to do.

use anyhow::{anyhow, bail, Result};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Rgb32FImage, RgbImage};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// The most pixels a picture may have, read from its header before it is decoded: 64 MP, far
/// beyond any identity, and the decoded f32 copy (768 MB) still fits in memory.
pub const MAX_PIXELS: u64 = 64_000_000;

/// How a picture of another shape becomes the identity's size.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum Fit {
    /// Scaled to cover the identity, the overflow cut off evenly on both sides.
    #[default]
    CentreCrop,
    /// Scaled to fit inside the identity, the rest filled with white.
    Letterbox,
}

impl Fit {
    pub const ALL: [Fit; 2] = [Fit::CentreCrop, Fit::Letterbox];

    pub fn label(self) -> &'static str {
        match self {
            Fit::CentreCrop => "Centre crop",
            Fit::Letterbox => "Letterbox",
        }
    }
}

/// The FNV-1a digest of the picture file's bytes: what the identity's key holds, so that a
/// picture replaced under the same name renders again.
pub fn digest(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).map_err(|e| missing(path, &e))?;
    Ok(crate::digest::fnv64(&bytes))
}

fn missing(path: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "cannot read the identity picture {}: {e}; put the file back or choose another picture for the identity",
        path.display()
    )
}

/// Loads `path` fitted to `width` x `height`, or says what is wrong with it.
pub fn load(path: &Path, width: usize, height: usize, fit: Fit) -> Result<RgbImage> {
    let name = path.display();
    // The format comes from the content, never the name: a text file called .png is no PNG.
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .and_then(|f| f.take(64).read_to_end(&mut head))
        .map_err(|e| missing(path, &e))?;
    let format = match image::guess_format(&head) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        _ => bail!(
            "{name} is not a PNG, JPEG or WebP picture: choose a picture in one of those formats"
        ),
    };
    let mut reader = ImageReader::open(path).map_err(|e| missing(path, &e))?;
    reader.set_format(format);
    let mut decoder = reader.into_decoder().map_err(|e| {
        anyhow!("{name} cannot be read as a picture ({e}): save it again or choose another picture")
    })?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        bail!(
            "{name} is {w}x{h} ({:.0} MP), over the {} MP a picture may have: scale it down first",
            pixels as f64 / 1e6,
            MAX_PIXELS / 1_000_000
        );
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut picture = DynamicImage::from_decoder(decoder).map_err(|e| {
        anyhow!("{name} is damaged or truncated ({e}): save it again or choose another picture")
    })?;
    picture.apply_orientation(orientation);
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    let scale = scale_of(fit, (w, h), (width, height));
    if scale > 1.0 {
        bail!(
            "{name} is {w}x{h}, smaller than the identity's {width}x{height} ({}): choose a larger picture or a smaller identity size",
            match fit {
                Fit::CentreCrop => "a centre crop must cover it",
                Fit::Letterbox => "a letterbox must fill one side",
            }
        );
    }
    Ok(to_rgb8(&fitted(
        &on_white(&picture),
        width,
        height,
        fit,
        scale,
    )))
}

/// How much the picture is scaled by to fit (above 1 would mean enlarging it).
fn scale_of(fit: Fit, (w, h): (usize, usize), (width, height): (usize, usize)) -> f64 {
    let (sx, sy) = (width as f64 / w as f64, height as f64 / h as f64);
    match fit {
        Fit::CentreCrop => sx.max(sy),
        Fit::Letterbox => sx.min(sy),
    }
}

/// The picture in f32 RGB from 0 to 1, any alpha composited over white.
fn on_white(picture: &DynamicImage) -> Rgb32FImage {
    let rgba = picture.to_rgba32f();
    let (w, h) = rgba.dimensions();
    Rgb32FImage::from_fn(w, h, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: f32| c * a + (1.0 - a);
        image::Rgb([over(r), over(g), over(b)])
    })
}

fn fitted(picture: &Rgb32FImage, width: usize, height: usize, fit: Fit, scale: f64) -> Rgb32FImage {
    let (w, h) = picture.dimensions();
    // Rounded up for a crop so that the scaled picture always covers the identity.
    let side = |n: u32, target: usize| match fit {
        Fit::CentreCrop => ((f64::from(n) * scale).ceil() as u32).max(target as u32),
        Fit::Letterbox => ((f64::from(n) * scale).round() as u32).clamp(1, target as u32),
    };
    let (sw, sh) = (side(w, width), side(h, height));
    let scaled = imageops::resize(picture, sw, sh, FilterType::Lanczos3);
    let (width, height) = (width as u32, height as u32);
    match fit {
        Fit::CentreCrop => {
            imageops::crop_imm(&scaled, (sw - width) / 2, (sh - height) / 2, width, height)
                .to_image()
        }
        Fit::Letterbox => {
            let mut canvas = Rgb32FImage::from_pixel(width, height, image::Rgb([1.0; 3]));
            let (x, y) = ((width - sw) / 2, (height - sh) / 2);
            imageops::replace(&mut canvas, &scaled, i64::from(x), i64::from(y));
            canvas
        }
    }
}

fn to_rgb8(picture: &Rgb32FImage) -> RgbImage {
    let (w, h) = picture.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = picture.get_pixel(x, y).0;
        image::Rgb(p.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

/// The peak signal-to-noise ratio of `b` against `a` in dB (infinite where they are equal).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = a.as_raw().len().max(1) as f64;
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / n;
    10.0 * (255.0f64.powi(2) / mse).log10()
}

/// The per-pixel absolute difference of two pictures, brightened four times so that small
/// errors show.
pub fn difference(a: &RgbImage, b: &RgbImage) -> RgbImage {
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        image::Rgb([0, 1, 2].map(|c| (p[c].abs_diff(q[c]) as u16 * 4).min(255) as u8))
    })
}
