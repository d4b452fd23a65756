//! Text drawn into raster images: titles, panel numbers and captions on storyboard sheets.
//!
//! The font is egui's bundled Ubuntu-Light, compiled into the binary, so that a sheet looks the
//! same on every machine and exporting never depends on which system fonts are installed.

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

/// Lays out and rasterises single-style text with the bundled font.
pub struct TextRenderer {
    font: FontRef<'static>,
}

impl TextRenderer {
    /// Errors only if the bundled font cannot be parsed, which would be a build problem.
    pub fn new() -> Result<Self> {
        let font = FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT)
            .context("cannot read the bundled Ubuntu-Light font")?;
        Ok(Self { font })
    }

    /// Width in pixels of `text` on one line at `px` pixels per em, kerning included.
    pub fn measure(&self, text: &str, px: f32) -> f32 {
        let font = self.font.as_scaled(PxScale::from(px));
        let mut width = 0.0;
        let mut previous: Option<GlyphId> = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                width += font.kern(p, id);
            }
            width += font.h_advance(id);
            previous = Some(id);
        }
        width
    }

    /// Distance between the tops of two consecutive lines.
    pub fn line_height(&self, px: f32) -> f32 {
        let font = self.font.as_scaled(PxScale::from(px));
        font.ascent() - font.descent() + font.line_gap()
    }

    /// Greedy word wrap to `max_width` pixels; see [`wrap_by`].
    pub fn wrap(&self, text: &str, px: f32, max_width: f32) -> Vec<String> {
        wrap_by(text, max_width, |s| self.measure(s, px))
    }

    /// Draws one line of `text` with its top-left corner at (`x`, `y`), blending each glyph's
    /// coverage over what is already there so that edges stay smooth on any background.
    /// Whatever falls outside the image is clipped.
    pub fn draw(&self, img: &mut RgbImage, text: &str, x: f32, y: f32, px: f32, color: Rgb<u8>) {
        let font = self.font.as_scaled(PxScale::from(px));
        let baseline = y + font.ascent();
        let mut caret = x;
        let mut previous: Option<GlyphId> = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                caret += font.kern(p, id);
            }
            let glyph = id.with_scale_and_position(font.scale(), ab_glyph::point(caret, baseline));
            caret += font.h_advance(id);
            previous = Some(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px_x = bounds.min.x as i64 + i64::from(gx);
                let px_y = bounds.min.y as i64 + i64::from(gy);
                if px_x < 0
                    || px_y < 0
                    || px_x >= i64::from(img.width())
                    || px_y >= i64::from(img.height())
                {
                    return;
                }
                let a = coverage.clamp(0.0, 1.0);
                let dst = img.get_pixel_mut(px_x as u32, px_y as u32);
                for (d, s) in dst.0.iter_mut().zip(color.0) {
                    *d = (f32::from(*d) * (1.0 - a) + f32::from(s) * a).round() as u8;
                }
            });
        }
    }
}

/// Greedy word wrap of `text` to `max_width`, in whatever unit `measure` gives a line's width.
/// Line breaks in `text` start new lines; runs of spaces collapse to one. A word wider than the
/// line is broken between characters, so no text is ever lost; only a single character wider
/// than `max_width` can overflow. Shared by the raster sheet and the PDF, which measure
/// differently but must wrap by the same rules.
pub(crate) fn wrap_by(text: &str, max_width: f32, measure: impl Fn(&str) -> f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if measure(&candidate) <= max_width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            if measure(word) <= max_width {
                line = word.to_string();
            } else {
                let mut pieces = break_word(word, max_width, &measure);
                // The last piece may still share its line with the next words.
                line = pieces.pop().unwrap_or_default();
                lines.extend(pieces);
            }
        }
        lines.push(line);
    }
    lines
}

/// Splits a word into pieces that each fit `max_width`, at least one character each.
fn break_word(word: &str, max_width: f32, measure: impl Fn(&str) -> f32) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for c in word.chars() {
        piece.push(c);
        if piece.chars().count() > 1 && measure(&piece) > max_width {
            piece.pop();
            pieces.push(std::mem::replace(&mut piece, c.to_string()));
        }
    }
    pieces.push(piece);
    pieces
}
