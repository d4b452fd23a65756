//! Contact sheets: every panel of a storyboard on one picture, for a quick
//! look at consistency across the whole story.

use anyhow::{ensure, Result};
use image::{imageops, imageops::FilterType, Rgb, RgbImage};

/// Off-white background: separates panels without the glare of pure white.
const BACKGROUND: Rgb<u8> = Rgb([0xf4, 0xf4, 0xf4]);

/// Height of an image scaled to `cell_width` wide, keeping its aspect ratio
/// (at least one pixel so thin images still appear).
fn scaled_height(img: &RgbImage, cell_width: u32) -> u32 {
    let h = u64::from(img.height()) * u64::from(cell_width);
    let w = u64::from(img.width());
    ((h + w / 2) / w).max(1) as u32
}

/// Images laid out in reading order on a grid of `columns` cells, each scaled
/// to `cell_width` wide, rows as tall as their tallest cell, with `gap` pixels
/// between and around the cells. The sheet is only as wide as the columns
/// actually used, so a short story does not leave an empty band on the right.
///
/// Errors when there are no columns or no images, or an image is empty, since
/// none of those has a sensible picture.
pub fn contact_sheet(
    images: &[&RgbImage],
    columns: usize,
    cell_width: u32,
    gap: u32,
) -> Result<RgbImage> {
    ensure!(columns > 0, "a contact sheet needs at least one column");
    ensure!(
        !images.is_empty(),
        "a contact sheet needs at least one image"
    );
    ensure!(
        cell_width > 0,
        "a contact sheet needs a non-zero cell width"
    );
    ensure!(
        images.iter().all(|img| img.width() > 0 && img.height() > 0),
        "cannot place an empty image on a contact sheet"
    );

    let cells: Vec<RgbImage> = images
        .iter()
        .map(|img| {
            let h = scaled_height(img, cell_width);
            imageops::resize(*img, cell_width, h, FilterType::Triangle)
        })
        .collect();
    let used_columns = columns.min(cells.len()) as u32;
    let row_heights: Vec<u32> = cells
        .chunks(columns)
        .map(|row| row.iter().map(RgbImage::height).max().unwrap_or(0))
        .collect();

    let width = used_columns * cell_width + (used_columns + 1) * gap;
    let height = row_heights.iter().sum::<u32>() + (row_heights.len() as u32 + 1) * gap;
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);

    let mut y = gap;
    for (row, row_height) in cells.chunks(columns).zip(&row_heights) {
        for (col, cell) in row.iter().enumerate() {
            let x = gap + col as u32 * (cell_width + gap);
            imageops::replace(&mut sheet, cell, i64::from(x), i64::from(y));
        }
        y += row_height + gap;
    }
    Ok(sheet)
}
