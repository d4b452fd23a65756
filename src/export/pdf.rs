//! A printable storyboard: landscape pages with a grid of panels, each numbered and captioned.
//!
//! Text uses the standard Helvetica fonts, which every PDF reader has, so nothing is embedded
//! and the file stays small; the price is WinAnsi text only (see [`win_ansi`]). Panel images are
//! embedded losslessly at their rendered size, PNG-predicted and deflated, so the PDF prints at
//! the quality the panels were rendered at.

use std::str::FromStr;

use anyhow::{bail, ensure, Result};
use image::RgbImage;
use miniz_oxide::deflate::compress_to_vec_zlib;
use pdf_writer::types::Predictor;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use super::board::{panel_text, running_time_label, BoardFields};
use super::panel_shape;
use super::text::wrap_by;
use crate::limits;
use crate::project::model::Project;

/// Paper sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paper {
    #[default]
    A4,
    Letter,
    A3,
    /// 11 x 17 inches (ledger when landscape).
    Tabloid,
}

impl Paper {
    /// `(width, height)` in points, portrait.
    pub fn size(self) -> (f32, f32) {
        match self {
            Paper::A4 => (595.0, 842.0),
            Paper::Letter => (612.0, 792.0),
            Paper::A3 => (842.0, 1191.0),
            Paper::Tabloid => (792.0, 1224.0),
        }
    }
}

impl FromStr for Paper {
    type Err = anyhow::Error;

    /// `a4`, `letter`, `a3` or `tabloid`, in any case, as typed on a command line.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "a4" => Ok(Paper::A4),
            "letter" => Ok(Paper::Letter),
            "a3" => Ok(Paper::A3),
            "tabloid" => Ok(Paper::Tabloid),
            _ => bail!("unknown paper size {s:?}: use a4, letter, a3 or tabloid"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Orientation {
    Portrait,
    /// Panels sit side by side, as storyboards are usually printed.
    #[default]
    Landscape,
}

impl FromStr for Orientation {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "portrait" => Ok(Orientation::Portrait),
            "landscape" => Ok(Orientation::Landscape),
            _ => bail!("unknown orientation {s:?}: use portrait or landscape"),
        }
    }
}

/// How the PDF is laid out: the paper, its orientation, the panel grid of every page and the
/// fields printed under each panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfOptions {
    pub paper: Paper,
    pub orientation: Orientation,
    pub columns: usize,
    pub rows: usize,
    pub fields: BoardFields,
}

impl Default for PdfOptions {
    /// A4 landscape, 3 columns x 2 rows, every field.
    fn default() -> Self {
        Self {
            paper: Paper::A4,
            orientation: Orientation::Landscape,
            columns: 3,
            rows: 2,
            fields: BoardFields::all(),
        }
    }
}

impl PdfOptions {
    /// `(width, height)` of a page in points.
    pub fn page_size(&self) -> (f32, f32) {
        let (w, h) = self.paper.size();
        match self.orientation {
            Orientation::Portrait => (w, h),
            Orientation::Landscape => (h, w),
        }
    }
}

const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

const MARGIN: f32 = 36.0;
const GAP: f32 = 18.0;
const TITLE_PT: f32 = 16.0;
const PAGE_LABEL_PT: f32 = 9.0;
const HEADER_GAP: f32 = 12.0;
const CAPTION_PT: f32 = 9.0;
/// Captions shrink to this size before they are allowed to run below their cell.
const MIN_CAPTION_PT: f32 = 6.0;
const CAPTION_STEP_PT: f32 = 0.5;
const CAPTION_GAP: f32 = 4.0;
const LEADING: f32 = 1.2;
/// An image may shrink to this fraction of its height to make room for its caption, and to the
/// last fraction once the caption is as small as it gets.
const MIN_IMAGE_FRACTION: f32 = 0.5;
const LAST_IMAGE_FRACTION: f32 = 0.2;
const BADGE_PT: f32 = 9.0;
const BADGE_PAD: f32 = 2.5;
const BADGE_INSET: f32 = 3.0;
const PLACEHOLDER_PT: f32 = 8.0;

/// Glyph widths in thousandths of an em for ASCII 32..=126: the larger of Helvetica's and
/// Helvetica-Bold's, so one table measures both and text never comes out wider than measured.
const ASCII_WIDTHS: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 278, 333, 333, 389, 584, 278, 333, 278, 278, // ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, // 0..?
    1015, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778, // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556, // P.._
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, // `..o
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584, // p..~
];

/// Width of WinAnsi `bytes` at `size` points. Non-ASCII glyphs count as a full em, wider than
/// any of them really is, so measuring errs on the side of wrapping early.
fn text_width(bytes: &[u8], size: f32) -> f32 {
    let units: u32 = bytes
        .iter()
        .map(|&b| match b {
            32..=126 => u32::from(ASCII_WIDTHS[usize::from(b - 32)]),
            _ => 1000,
        })
        .sum();
    units as f32 * size / 1000.0
}

/// `text` in WinAnsiEncoding, the encoding the fonts are declared with. Latin-1 maps to itself,
/// typographic quotes, dashes and a few others to their WinAnsi slots; control characters
/// become spaces and anything else `?`, so that every character keeps a visible place.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            ' '..='~' | '\u{a0}'..='\u{ff}' => c as u8,
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8a,
            '‹' => 0x8b,
            'Œ' => 0x8c,
            'Ž' => 0x8e,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9a,
            '›' => 0x9b,
            'œ' => 0x9c,
            'ž' => 0x9e,
            'Ÿ' => 0x9f,
            c if c.is_control() => b' ',
            _ => b'?',
        })
        .collect()
}

fn wrap(text: &str, size: f32, max_width: f32) -> Vec<Vec<u8>> {
    wrap_by(text, max_width, |s| text_width(&win_ansi(s), size))
        .iter()
        .map(|l| win_ansi(l))
        .collect()
}

/// Allocates object ids in order.
struct Ids(i32);

impl Ids {
    fn next(&mut self) -> Ref {
        self.0 += 1;
        Ref::new(self.0)
    }
}

/// One line of text with its baseline at (`x`, `y`).
fn show(content: &mut Content, font: Name, size: f32, x: f32, y: f32, text: &[u8]) {
    content
        .begin_text()
        .set_font(font, size)
        .next_line(x, y)
        .show(Str(text))
        .end_text();
}

fn fill_rect(content: &mut Content, x: f32, y: f32, w: f32, h: f32, grey: f32) {
    content
        .set_fill_rgb(grey, grey, grey)
        .rect(x, y, w, h)
        .fill_nonzero();
}

/// RGB samples with the PNG Paeth filter on every row, zlib-deflated: with
/// `/Predictor 15` this decodes back to the exact pixels and is much smaller than deflating
/// the raw samples of a photograph-like image.
fn encode_image(img: &RgbImage) -> Vec<u8> {
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    let mut filtered = Vec::with_capacity(raw.len() + img.height() as usize);
    let zeros = vec![0u8; stride];
    for (r, row) in raw.chunks_exact(stride).enumerate() {
        let above = if r == 0 {
            &zeros[..]
        } else {
            &raw[(r - 1) * stride..r * stride]
        };
        filtered.push(4);
        for x in 0..stride {
            let (left, upper_left) = if x >= 3 {
                (row[x - 3], above[x - 3])
            } else {
                (0, 0)
            };
            filtered.push(row[x].wrapping_sub(paeth(left, above[x], upper_left)));
        }
    }
    compress_to_vec_zlib(&filtered, 6)
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Where a cell's image and caption go.
struct CellLayout {
    image_width: f32,
    image_height: f32,
    caption_pt: f32,
    caption: Vec<Vec<u8>>,
}

/// Fits an image of `aspect` (height / width) and its caption into a `w`×`h` cell. The image
/// first fills the cell; the caption starts at full size, and the image gives up height (down
/// to [`MIN_IMAGE_FRACTION`]) before the caption shrinks, step by step, to [`MIN_CAPTION_PT`];
/// then the image gives up more, down to [`LAST_IMAGE_FRACTION`]. A caption that still does not
/// fit runs on below the cell: text is never dropped.
fn layout_cell(caption: &str, aspect: f32, w: f32, h: f32) -> CellLayout {
    let natural = (w * aspect).min(h);
    let min_height = natural * MIN_IMAGE_FRACTION;
    let mut size = CAPTION_PT;
    loop {
        let lines = wrap(caption, size, w);
        let caption_height = if lines.is_empty() {
            0.0
        } else {
            CAPTION_GAP + lines.len() as f32 * size * LEADING
        };
        let image_height = natural.min(h - caption_height);
        let smallest = size - CAPTION_STEP_PT < MIN_CAPTION_PT;
        if image_height >= min_height || smallest {
            let floor = match smallest {
                true => natural * LAST_IMAGE_FRACTION,
                false => min_height,
            };
            let image_height = image_height.max(floor);
            return CellLayout {
                image_width: image_height / aspect,
                image_height,
                caption_pt: size,
                caption: lines,
            };
        }
        size -= CAPTION_STEP_PT;
    }
}

/// The storyboard as a PDF: `opts.columns` x `opts.rows` panels a page, in reading order, on
/// `opts.paper`. Every page has the title, "Page k of n" and the running time at the top; each
/// cell has the panel image (a grey "not rendered" box where `images[i]` is `None`), its number
/// in a dark badge on the image's corner and its board text (see [`panel_text`]) wrapped
/// underneath in Helvetica, shrunk when long but never cut.
///
/// `images` has one entry per panel of `project`.
pub fn storyboard_pdf(
    project: &Project,
    images: &[Option<RgbImage>],
    opts: &PdfOptions,
) -> Result<Vec<u8>> {
    super::check_one_image_a_panel(project, images)?;
    limits::check("columns", opts.columns, &limits::COLUMNS)?;
    limits::check("rows", opts.rows, &limits::ROWS)?;
    ensure!(!images.is_empty(), "the project has no panels to print");
    ensure!(
        images
            .iter()
            .flatten()
            .all(|i| i.width() > 0 && i.height() > 0),
        "cannot print an empty panel image"
    );

    let (page_w, page_h) = opts.page_size();
    let (cols, rows) = (opts.columns, opts.rows);
    let per_page = cols * rows;
    let pages = images.len().div_ceil(per_page);

    // The header is the same on every page but for the page number, whose widest form is
    // "Page n of n"; the title wraps in the room left beside it.
    let running_time = win_ansi(&running_time_label(project));
    let widest_label = win_ansi(&format!("Page {pages} of {pages}"));
    let label_w =
        text_width(&widest_label, PAGE_LABEL_PT).max(text_width(&running_time, PAGE_LABEL_PT));
    let title = wrap(
        &project.title,
        TITLE_PT,
        page_w - 2.0 * MARGIN - label_w - GAP,
    );
    let header_h = (title.len().max(1) as f32 * TITLE_PT * LEADING)
        .max(2.0 * PAGE_LABEL_PT * LEADING + TITLE_PT * 0.8)
        + HEADER_GAP;
    let grid_top = page_h - MARGIN - header_h;
    let cell_w = (page_w - 2.0 * MARGIN - (cols - 1) as f32 * GAP) / cols as f32;
    let cell_h = (grid_top - MARGIN - (rows - 1) as f32 * GAP) / rows as f32;
    ensure!(
        cell_w >= 24.0 && cell_h >= 24.0,
        "{cols} x {rows} panels and a {}-line title leave no room for panels on a page; \
         use fewer panels per page, larger paper or a shorter title",
        title.len()
    );

    let mut pdf = Pdf::new();
    let mut ids = Ids(0);
    let catalog_id = ids.next();
    let tree_id = ids.next();
    let regular_id = ids.next();
    let bold_id = ids.next();
    let info_id = ids.next();
    let page_ids: Vec<Ref> = (0..pages).map(|_| ids.next()).collect();

    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids(page_ids.iter().copied())
        .count(pages as i32);
    for (id, name) in [(regular_id, "Helvetica"), (bold_id, "Helvetica-Bold")] {
        pdf.type1_font(id)
            .base_font(Name(name.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    pdf.document_info(info_id)
        .title(TextStr(&project.title))
        .creator(TextStr("charaboard"));

    for (k, (chunk, &page_id)) in images.chunks(per_page).zip(&page_ids).enumerate() {
        let mut content = Content::new();
        content.set_fill_rgb(0.1, 0.1, 0.1);
        for (n, line) in title.iter().enumerate() {
            let y = page_h - MARGIN - TITLE_PT * (0.8 + n as f32 * LEADING);
            show(&mut content, BOLD, TITLE_PT, MARGIN, y, line);
        }
        let label = win_ansi(&format!("Page {} of {pages}", k + 1));
        let label_x = page_w - MARGIN - text_width(&label, PAGE_LABEL_PT);
        let label_y = page_h - MARGIN - TITLE_PT * 0.8;
        show(
            &mut content,
            REGULAR,
            PAGE_LABEL_PT,
            label_x,
            label_y,
            &label,
        );
        let time_x = page_w - MARGIN - text_width(&running_time, PAGE_LABEL_PT);
        let time_y = label_y - PAGE_LABEL_PT * LEADING;
        show(
            &mut content,
            REGULAR,
            PAGE_LABEL_PT,
            time_x,
            time_y,
            &running_time,
        );

        let mut x_objects = Vec::new();
        for (j, image) in chunk.iter().enumerate() {
            let i = k * per_page + j;
            let cell_x = MARGIN + (j % cols) as f32 * (cell_w + GAP);
            let cell_top = grid_top - (j / cols) as f32 * (cell_h + GAP);
            let (w, h) = image
                .as_ref()
                .map_or_else(|| panel_shape(project, i), RgbImage::dimensions);
            let layout = layout_cell(
                &panel_text(project, i, &opts.fields),
                h as f32 / w as f32,
                cell_w,
                cell_h,
            );
            let img_x = cell_x + (cell_w - layout.image_width) / 2.0;
            let img_y = cell_top - layout.image_height;

            match image {
                Some(img) => {
                    let id = ids.next();
                    let name = format!("Im{}", i + 1);
                    let encoded = encode_image(img);
                    let mut xobject = pdf.image_xobject(id, &encoded);
                    xobject.filter(Filter::FlateDecode);
                    xobject.width(img.width() as i32);
                    xobject.height(img.height() as i32);
                    xobject.color_space().device_rgb();
                    xobject.bits_per_component(8);
                    xobject
                        .decode_parms()
                        .predictor(Predictor::PngOptimum)
                        .colors(3)
                        .bits_per_component(8)
                        .columns(img.width() as i32);
                    xobject.finish();
                    content.save_state();
                    content.transform([
                        layout.image_width,
                        0.0,
                        0.0,
                        layout.image_height,
                        img_x,
                        img_y,
                    ]);
                    content.x_object(Name(name.as_bytes()));
                    content.restore_state();
                    x_objects.push((name, id));
                }
                None => {
                    fill_rect(
                        &mut content,
                        img_x,
                        img_y,
                        layout.image_width,
                        layout.image_height,
                        0.88,
                    );
                    content.set_fill_rgb(0.5, 0.5, 0.5);
                    let lines = wrap("not rendered", PLACEHOLDER_PT, layout.image_width);
                    let block = lines.len() as f32 * PLACEHOLDER_PT * LEADING;
                    let top = img_y + (layout.image_height + block) / 2.0;
                    for (n, line) in lines.iter().enumerate() {
                        let lx =
                            img_x + (layout.image_width - text_width(line, PLACEHOLDER_PT)) / 2.0;
                        let ly = top - PLACEHOLDER_PT * (0.9 + n as f32 * LEADING);
                        show(&mut content, REGULAR, PLACEHOLDER_PT, lx, ly, line);
                    }
                }
            }

            let number = win_ansi(&(i + 1).to_string());
            let badge_w = text_width(&number, BADGE_PT) + 2.0 * BADGE_PAD;
            let badge_h = BADGE_PT + 2.0 * BADGE_PAD;
            let badge_x = img_x + BADGE_INSET;
            let badge_y = cell_top - BADGE_INSET - badge_h;
            fill_rect(&mut content, badge_x, badge_y, badge_w, badge_h, 0.13);
            content.set_fill_rgb(1.0, 1.0, 1.0);
            let number_y = badge_y + BADGE_PAD + 0.15 * BADGE_PT;
            show(
                &mut content,
                BOLD,
                BADGE_PT,
                badge_x + BADGE_PAD,
                number_y,
                &number,
            );

            content.set_fill_rgb(0.2, 0.2, 0.2);
            let size = layout.caption_pt;
            for (n, line) in layout.caption.iter().enumerate() {
                let y = img_y - CAPTION_GAP - size * (0.8 + n as f32 * LEADING);
                show(&mut content, REGULAR, size, cell_x, y, line);
            }
        }

        let content_id = ids.next();
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, page_w, page_h));
        page.parent(tree_id);
        page.contents(content_id);
        let mut resources = page.resources();
        resources
            .fonts()
            .pair(REGULAR, regular_id)
            .pair(BOLD, bold_id);
        let mut dict = resources.x_objects();
        for (name, id) in &x_objects {
            dict.pair(Name(name.as_bytes()), *id);
        }
        dict.finish();
        resources.finish();
        page.finish();
        pdf.stream(content_id, &content.finish());
    }
    Ok(pdf.finish())
}
