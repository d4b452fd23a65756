//! Inspection pictures for CharaConsist: foreground masks and point matches
//! drawn over the rendered images, so a user can see why a panel kept (or lost)
//! its character's identity.

use anyhow::{ensure, Result};
use image::{imageops, Rgb, RgbImage};

/// Side of one FLUX transformer token in pixels (8x VAE downsampling, 2x2 patches).
const TOKEN_PX: u32 = 16;

/// Radius in pixels of the dots marking both ends of a match line.
const DOT_RADIUS: i64 = 2;

/// The transformer's token grid over an image, in row-major order
/// (token index `r * cols + c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub rows: usize,
    pub cols: usize,
}

impl TokenGrid {
    /// The grid FLUX uses for an image of this size: one token per 16x16 pixels.
    pub fn of_image(img: &RgbImage) -> TokenGrid {
        TokenGrid {
            rows: (img.height() / TOKEN_PX) as usize,
            cols: (img.width() / TOKEN_PX) as usize,
        }
    }

    /// Number of tokens, i.e. the length a mask over this grid must have.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the grid has no tokens (image smaller than one token).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixel centre `(x, y)` of `token` in an image of `img_w` x `img_h` pixels.
    ///
    /// Computed by scaling rather than assuming 16-pixel tokens, so the same grid
    /// can be drawn over a resized copy of the image. An empty grid is treated as
    /// a single token so this never divides by zero.
    pub fn center(&self, token: usize, img_w: u32, img_h: u32) -> (f32, f32) {
        let cols = self.cols.max(1);
        let rows = self.rows.max(1);
        let (r, c) = (token / cols, token % cols);
        let x = (c as f32 + 0.5) * img_w as f32 / cols as f32;
        let y = (r as f32 + 0.5) * img_h as f32 / rows as f32;
        (x, y)
    }

    /// The token covering pixel `(x, y)` of an `img_w` x `img_h` image, if any.
    fn token_at(&self, x: u32, y: u32, img_w: u32, img_h: u32) -> Option<usize> {
        if self.is_empty() || img_w == 0 || img_h == 0 {
            return None;
        }
        let r = y as usize * self.rows / img_h as usize;
        let c = x as usize * self.cols / img_w as usize;
        (r < self.rows && c < self.cols).then_some(r * self.cols + c)
    }
}

/// Average of two channel values, rounded half up: the 50% blends below.
fn half_blend(a: u8, b: u8) -> u8 {
    ((u16::from(a) + u16::from(b)).div_ceil(2)) as u8
}

/// Blends `px` 50% towards `towards`, channel by channel.
fn blend_pixel(px: Rgb<u8>, towards: Rgb<u8>) -> Rgb<u8> {
    Rgb(std::array::from_fn(|i| half_blend(px.0[i], towards.0[i])))
}

/// Each character's colour in masks: the first pure red (the reference's foreground colour, as
/// a one-character storyboard has always shown it), the others from Okabe and Ito's palette,
/// which colour-blind readers tell apart too.
pub const CHARACTER_COLOURS: [[u8; 3]; crate::limits::MAX_CHARACTERS] =
    [[255, 0, 0], [0, 114, 178], [0, 158, 115], [240, 228, 66]];

/// The colour of a token whose owner is `owner` (0 background: none; `k + 1` the image's `k`-th
/// character, which is the storyboard's character `characters[k]`).
pub fn owner_colour(owner: u8, characters: &[usize]) -> Option<Rgb<u8>> {
    let k = usize::from(owner).checked_sub(1)?;
    let character = characters.get(k).copied().unwrap_or(k);
    Some(Rgb(CHARACTER_COLOURS[character % CHARACTER_COLOURS.len()]))
}

/// The image's foreground beside it: on the left the image at half brightness with each
/// character's tokens blended 50% towards the character's colour, on the right the mask alone
/// (the colours on black). Output is twice the image's width. `owners` holds each token's owner
/// as [`owner_colour`] reads it, with the image's `characters`.
///
/// Errors when `owners` does not have one entry per token of `grid`, since a mask from another
/// resolution would silently mislabel tokens.
pub fn mask_overlay(
    image: &RgbImage,
    owners: &[u8],
    characters: &[usize],
    grid: TokenGrid,
) -> Result<RgbImage> {
    ensure!(
        owners.len() == grid.len(),
        "mask has {} entries but the {}x{} token grid has {}",
        owners.len(),
        grid.rows,
        grid.cols,
        grid.len()
    );
    let (w, h) = image.dimensions();
    let mut out = RgbImage::new(2 * w, h);
    for (x, y, px) in image.enumerate_pixels() {
        let colour = grid
            .token_at(x, y, w, h)
            .and_then(|t| owner_colour(owners[t], characters));
        let (left, right) = match colour {
            Some(c) => (blend_pixel(*px, c), c),
            None => (blend_pixel(*px, Rgb([0, 0, 0])), Rgb([0, 0, 0])),
        };
        out.put_pixel(x, y, left);
        out.put_pixel(w + x, y, right);
    }
    Ok(out)
}

/// Viridis sampled at nine evenly spaced points: perceptually ordered and
/// readable for colour-blind users, so stronger matches look "hotter".
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// Colour for a match similarity on a viridis scale over [0.5, 1.0]; values
/// outside are clamped (NaN counts as the weakest) because CharaConsist's
/// similarities sit in that range and the extremes should stay distinguishable.
pub fn similarity_color(sim: f32) -> Rgb<u8> {
    let t = if sim.is_nan() {
        0.0
    } else {
        ((sim - 0.5) / 0.5).clamp(0.0, 1.0)
    };
    let pos = t * (VIRIDIS.len() - 1) as f32;
    let lo = (pos.floor() as usize).min(VIRIDIS.len() - 2);
    let frac = pos - lo as f32;
    Rgb(std::array::from_fn(|i| {
        let (a, b) = (f32::from(VIRIDIS[lo][i]), f32::from(VIRIDIS[lo + 1][i]));
        (a + (b - a) * frac).round() as u8
    }))
}

/// At most `max` items spread evenly over `items`, always starting with the
/// first. Deterministic (every k-th item, with a fractional stride so exactly
/// `max` come back), so repeated exports and the UI show the same subset.
pub fn subsample<T: Clone>(items: &[T], max: usize) -> Vec<T> {
    if max >= items.len() {
        return items.to_vec();
    }
    (0..max)
        .map(|i| items[i * items.len() / max].clone())
        .collect()
}

/// Sets a pixel, ignoring coordinates off the canvas so callers can draw
/// shapes that cross its edges.
fn plot(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(img.width()) && y < i64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// A 2-pixel-wide Bresenham line (thickened across its minor axis), wide
/// enough to follow by eye when many matches cross.
fn draw_line(img: &mut RgbImage, from: (i64, i64), to: (i64, i64), color: Rgb<u8>) {
    let (mut x, mut y) = from;
    let dx = (to.0 - x).abs();
    let dy = -(to.1 - y).abs();
    let sx = if x < to.0 { 1 } else { -1 };
    let sy = if y < to.1 { 1 } else { -1 };
    let (tx, ty) = if dx >= -dy { (0, 1) } else { (1, 0) };
    let mut err = dx + dy;
    loop {
        plot(img, x, y, color);
        plot(img, x + tx, y + ty, color);
        if (x, y) == to {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled disc marking a match end point.
fn draw_dot(img: &mut RgbImage, (cx, cy): (i64, i64), color: Rgb<u8>) {
    for dy in -DOT_RADIUS..=DOT_RADIUS {
        for dx in -DOT_RADIUS..=DOT_RADIUS {
            if dx * dx + dy * dy <= DOT_RADIUS * DOT_RADIUS {
                plot(img, cx + dx, cy + dy, color);
            }
        }
    }
}

/// Rounds a token centre to the pixel that contains it, shifted by `x_offset`.
fn to_pixel((x, y): (f32, f32), x_offset: u32) -> (i64, i64) {
    (x.floor() as i64 + i64::from(x_offset), y.floor() as i64)
}

/// The panel (left) and identity image (right, black padding below the
/// shorter one) joined by one line per match, coloured by similarity, with a
/// dot at each end. Only an even subsample of `max_lines` matches is drawn so
/// the picture stays readable; matches naming tokens outside either grid are
/// skipped rather than drawn somewhere misleading.
pub fn match_overlay(
    panel: &RgbImage,
    identity: &RgbImage,
    matches: &[(usize, usize, f32)],
    max_lines: usize,
) -> RgbImage {
    draw_matches(panel, &[identity], matches, max_lines, |_, sim| {
        Some((0, similarity_color(sim)))
    })
}

/// A panel of several characters: the panel (left) and the identities of the characters it
/// shows (right, stacked top to bottom in its prompt's order), each match drawn into the
/// identity of the character that owns its panel token and in that character's colour
/// ([`owner_colour`] of `owners`, with the panel's `characters`). Subsampled and checked as
/// [`match_overlay`]; a match from a background token (none is kept) is skipped.
pub fn cast_match_overlay(
    panel: &RgbImage,
    identities: &[&RgbImage],
    owners: &[u8],
    characters: &[usize],
    matches: &[(usize, usize, f32)],
    max_lines: usize,
) -> RgbImage {
    draw_matches(panel, identities, matches, max_lines, |p, _| {
        let owner = owners.get(p).copied()?;
        let colour = owner_colour(owner, characters)?;
        Some((usize::from(owner) - 1, colour))
    })
}

/// The panel and `identities` (stacked on its right), joined by the matches `style` gives an
/// identity (by index) and a colour, lines first and dots over them.
fn draw_matches(
    panel: &RgbImage,
    identities: &[&RgbImage],
    matches: &[(usize, usize, f32)],
    max_lines: usize,
    style: impl Fn(usize, f32) -> Option<(usize, Rgb<u8>)>,
) -> RgbImage {
    let (pw, ph) = panel.dimensions();
    let iw = identities.iter().map(|i| i.width()).max().unwrap_or(0);
    let tops: Vec<u32> = identities
        .iter()
        .scan(0, |top, i| {
            let at = *top;
            *top += i.height();
            Some(at)
        })
        .collect();
    let ih: u32 = identities.iter().map(|i| i.height()).sum();
    let mut canvas = RgbImage::new(pw + iw, ph.max(ih));
    imageops::replace(&mut canvas, panel, 0, 0);
    for (identity, &top) in identities.iter().zip(&tops) {
        imageops::replace(&mut canvas, *identity, i64::from(pw), i64::from(top));
    }

    let pgrid = TokenGrid::of_image(panel);
    let segments: Vec<_> = subsample(matches, max_lines)
        .into_iter()
        .filter_map(|(p, i, sim)| {
            let (k, color) = style(p, sim)?;
            let identity = identities.get(k)?;
            let igrid = TokenGrid::of_image(identity);
            if p >= pgrid.len() || i >= igrid.len() {
                return None;
            }
            let a = to_pixel(pgrid.center(p, pw, ph), 0);
            let (x, y) = igrid.center(i, identity.width(), identity.height());
            let b = to_pixel((x, y + tops[k] as f32), pw);
            Some((a, b, color))
        })
        .collect();
    for &(a, b, color) in &segments {
        draw_line(&mut canvas, a, b, color);
    }
    // Dots last so crossing lines never hide where a match starts or ends.
    for &(a, b, color) in &segments {
        draw_dot(&mut canvas, a, color);
        draw_dot(&mut canvas, b, color);
    }
    canvas
}
