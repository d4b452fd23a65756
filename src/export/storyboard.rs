//! The storyboard as a deliverable: a captioned panel sheet (PNG), a printable PDF and the
//! numbered panel images, written together into one folder by [`export_all`].
//!
//! Unlike [`super::sheet::contact_sheet`], which is a bare grid for checking consistency, the
//! sheet here carries the title, panel numbers and captions, because it is meant to be handed
//! to someone who has not read the project file.

use anyhow::{bail, ensure, Context, Result};
use image::{imageops, imageops::FilterType, Rgb, RgbImage};
use std::fs;
use std::path::{Path, PathBuf};

use super::board::{panel_text, running_time_label, BoardFields};
use super::panel_shape;
use super::pdf::{storyboard_pdf, PdfOptions};
use super::text::TextRenderer;
use crate::atomic_file::{save_png, write_atomic};
use crate::consist::plan::Target;
use crate::limits;
use crate::project::images::{not_current, ImagesStore, RenderedImage};
use crate::project::model::Project;

/// How the panel sheet is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetOptions {
    pub columns: usize,
    /// Width in pixels every panel image is scaled to.
    pub cell_width: u32,
    /// Put the identity shot in the first cell, for reviewing the character's look.
    pub include_identity: bool,
    /// What is printed under each panel.
    pub fields: BoardFields,
}

impl Default for SheetOptions {
    fn default() -> Self {
        Self {
            columns: 3,
            cell_width: 320,
            include_identity: false,
            fields: BoardFields::all(),
        }
    }
}

const BACKGROUND: Rgb<u8> = Rgb([0xff, 0xff, 0xff]);
const INK: Rgb<u8> = Rgb([0x22, 0x22, 0x22]);
const CAPTION_INK: Rgb<u8> = Rgb([0x33, 0x33, 0x33]);
const PLACEHOLDER: Rgb<u8> = Rgb([0xe0, 0xe0, 0xe0]);
const PLACEHOLDER_INK: Rgb<u8> = Rgb([0x80, 0x80, 0x80]);
const BADGE_INK: Rgb<u8> = Rgb([0xff, 0xff, 0xff]);

const MARGIN: u32 = 24;
const GAP: u32 = 20;
const TITLE_PX: f32 = 30.0;
const CAPTION_PX: f32 = 15.0;
const BADGE_PX: f32 = 16.0;
const PLACEHOLDER_PX: f32 = 16.0;
/// Space between an image and its caption.
const CAPTION_GAP: u32 = 6;
/// Badge padding and its offset from the image corner.
const BADGE_PAD: u32 = 4;
const BADGE_INSET: u32 = 6;

/// One cell of the sheet before it is drawn: its image already scaled to the cell width.
struct Cell {
    image: Option<RgbImage>,
    image_height: u32,
    label: String,
    caption: Vec<String>,
}

/// Height of a `w`×`h` picture scaled to `width` wide (at least one pixel).
fn scaled_height((w, h): (u32, u32), width: u32) -> u32 {
    let (w, h) = (u64::from(w.max(1)), u64::from(h));
    ((h * u64::from(width) + w / 2) / w).max(1) as u32
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// Pixel height of `lines` lines of text, rounded up so nothing is clipped.
fn text_height(text: &TextRenderer, lines: usize, px: f32) -> u32 {
    (lines as f32 * text.line_height(px)).ceil() as u32
}

/// The panel sheet: the title and running time at the top, then one cell per panel in reading
/// order, each with its image scaled to `opts.cell_width` (a grey "not rendered" box where
/// `images[i]` is `None`), its number in a dark badge on the image's corner and its whole board
/// text (see [`panel_text`]) wrapped underneath. Rows are as tall as their tallest cell, so long captions are never cut.
///
/// `images` has one entry per panel of `project`; `identity` is used only with
/// `opts.include_identity`, as a first cell labelled "identity".
pub fn panel_sheet(
    project: &Project,
    images: &[Option<RgbImage>],
    identity: Option<&RgbImage>,
    opts: &SheetOptions,
) -> Result<RgbImage> {
    super::check_one_image_a_panel(project, images)?;
    limits::check("columns", opts.columns, &limits::COLUMNS)?;
    ensure!(
        opts.cell_width > 0,
        "a panel sheet needs a non-zero cell width"
    );
    ensure!(!images.is_empty(), "the project has no panels to show");

    let text = TextRenderer::new()?;
    let cell_width = opts.cell_width;
    let make_cell = |image: Option<&RgbImage>, shape: (u32, u32), label: String, caption: &str| {
        let shape = image.map_or(shape, RgbImage::dimensions);
        let image_height = scaled_height(shape, cell_width);
        Cell {
            image: image
                .map(|img| imageops::resize(img, cell_width, image_height, FilterType::Triangle)),
            image_height,
            label,
            caption: text.wrap(caption, CAPTION_PX, cell_width as f32),
        }
    };

    let mut cells = Vec::with_capacity(images.len() + 1);
    if opts.include_identity {
        let shape = (
            project.settings.width.max(1) as u32,
            project.settings.height.max(1) as u32,
        );
        cells.push(make_cell(
            identity,
            shape,
            "identity".into(),
            &project.characters[0].prompt,
        ));
    }
    for (i, image) in images.iter().enumerate() {
        cells.push(make_cell(
            image.as_ref(),
            panel_shape(project, i),
            (i + 1).to_string(),
            &panel_text(project, i, &opts.fields),
        ));
    }

    let cell_height = |c: &Cell| {
        if c.caption.is_empty() {
            c.image_height
        } else {
            c.image_height + CAPTION_GAP + text_height(&text, c.caption.len(), CAPTION_PX)
        }
    };
    let row_heights: Vec<u32> = cells
        .chunks(opts.columns)
        .map(|row| row.iter().map(cell_height).max().unwrap_or(0))
        .collect();
    let used_columns = opts.columns.min(cells.len()) as u32;
    let content_width = used_columns * cell_width + (used_columns - 1) * GAP;
    let mut title = text.wrap(&project.title, TITLE_PX, content_width as f32);
    title.extend(text.wrap(&running_time_label(project), TITLE_PX, content_width as f32));
    let title_height = if title.is_empty() {
        0
    } else {
        text_height(&text, title.len(), TITLE_PX) + GAP
    };
    let width = content_width + 2 * MARGIN;
    let height = 2 * MARGIN
        + title_height
        + row_heights.iter().sum::<u32>()
        + (row_heights.len() as u32 - 1) * GAP;
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);

    let title_line = text.line_height(TITLE_PX);
    for (k, line) in title.iter().enumerate() {
        let y = MARGIN as f32 + k as f32 * title_line;
        text.draw(&mut sheet, line, MARGIN as f32, y, TITLE_PX, INK);
    }

    let mut y = MARGIN + title_height;
    for (row, row_height) in cells.chunks(opts.columns).zip(&row_heights) {
        for (col, cell) in row.iter().enumerate() {
            let x = MARGIN + col as u32 * (cell_width + GAP);
            draw_cell(&mut sheet, &text, cell, x, y, cell_width);
        }
        y += row_height + GAP;
    }
    Ok(sheet)
}

fn draw_cell(sheet: &mut RgbImage, text: &TextRenderer, cell: &Cell, x: u32, y: u32, width: u32) {
    match &cell.image {
        Some(img) => imageops::replace(sheet, img, i64::from(x), i64::from(y)),
        None => {
            fill_rect(sheet, x, y, width, cell.image_height, PLACEHOLDER);
            let lines = text.wrap("not rendered", PLACEHOLDER_PX, width as f32);
            let line = text.line_height(PLACEHOLDER_PX);
            let top = y as f32 + (cell.image_height as f32 - lines.len() as f32 * line) / 2.0;
            for (k, l) in lines.iter().enumerate() {
                let lx = x as f32 + (width as f32 - text.measure(l, PLACEHOLDER_PX)) / 2.0;
                let ly = top + k as f32 * line;
                text.draw(sheet, l, lx, ly, PLACEHOLDER_PX, PLACEHOLDER_INK);
            }
        }
    }

    let badge_w = text.measure(&cell.label, BADGE_PX).ceil() as u32 + 2 * BADGE_PAD;
    let badge_h = text_height(text, 1, BADGE_PX) + 2 * BADGE_PAD;
    let (bx, by) = (x + BADGE_INSET, y + BADGE_INSET);
    fill_rect(sheet, bx, by, badge_w, badge_h, INK);
    let (tx, ty) = ((bx + BADGE_PAD) as f32, (by + BADGE_PAD) as f32);
    text.draw(sheet, &cell.label, tx, ty, BADGE_PX, BADGE_INK);

    let line = text.line_height(CAPTION_PX);
    let top = (y + cell.image_height + CAPTION_GAP) as f32;
    for (k, l) in cell.caption.iter().enumerate() {
        let ly = top + k as f32 * line;
        text.draw(sheet, l, x as f32, ly, CAPTION_PX, CAPTION_INK);
    }
}

/// What to do with a panel whose saved image was rendered from other inputs than the project
/// holds now (an edited prompt, another seed or size): an old picture must not appear under a
/// new caption without a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StalePanels {
    /// Refuse the export, naming the stale panels.
    Refuse,
    /// Export them with "(stale)" before their caption.
    Mark,
}

/// What an export wrote (sheet and PDF first), and which panels (0-based) it marked stale.
#[derive(Debug)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub stale: Vec<usize>,
}

/// `[1, 4]` as "panels 2 and 5".
pub fn panel_list(panels: &[usize]) -> String {
    let names: Vec<String> = panels.iter().map(|i| (i + 1).to_string()).collect();
    match names.as_slice() {
        [one] => format!("panel {one}"),
        [rest @ .., last] => format!("panels {} and {last}", rest.join(", ")),
        [] => "no panel".into(),
    }
}

/// Exports a rendered storyboard into `out_dir` (created if needed): `sheet.png` (see
/// [`panel_sheet`]), `storyboard.pdf` (see [`storyboard_pdf`]) and `01.png`,
/// `02.png`, ... as byte-for-byte copies of the rendered panels. Panels not rendered yet appear
/// as placeholders on the sheet and PDF and get no numbered file.
///
/// Images are read from the project's images store; one that is there but is not this
/// project's (damaged, another project's) stops the export with the reason, and stale panels
/// are refused or marked as `stale` says. Everything is checked before anything is written.
pub fn export_all(
    project: &Project,
    store: &ImagesStore,
    out_dir: &Path,
    opts: &SheetOptions,
    pdf: &PdfOptions,
    stale: StalePanels,
) -> Result<Exported> {
    // The layout is checked again by `panel_sheet`; here it is checked before any image is read.
    limits::check("columns", opts.columns, &limits::COLUMNS)?;
    limits::check("rows", pdf.rows, &limits::ROWS)?;
    let Board {
        shown,
        images,
        takes,
        stale: stale_panels,
    } = read_board(project, store, stale)?;
    let identity = match opts.include_identity {
        true => read_saved(project, store, Target::Identity)?.map(|saved| saved.image),
        false => None,
    };

    let sheet = panel_sheet(&shown, &images, identity.as_ref(), opts)?;
    let pdf = storyboard_pdf(&shown, &images, pdf)?;

    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the output folder {}", out_dir.display()))?;
    let mut written = Vec::new();
    let sheet_path = out_dir.join("sheet.png");
    save_png(&sheet, &sheet_path)?;
    written.push(sheet_path);
    let pdf_path = out_dir.join("storyboard.pdf");
    write_atomic(&pdf_path, &pdf)?;
    written.push(pdf_path);

    for (i, take) in takes.iter().enumerate() {
        let Some(take) = take else {
            continue;
        };
        let from = store.png_path(Target::Panel(i), *take);
        let to = out_dir.join(format!("{:02}.png", i + 1));
        let bytes = fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        write_atomic(&to, &bytes)?;
        written.push(to);
    }
    Ok(Exported {
        files: written,
        stale: stale_panels,
    })
}

/// A storyboard's rendered panels as an export shows them.
struct Board {
    /// The project with stale panels' captions marked.
    shown: Project,
    /// One per panel, its active take's; `None` where it is not rendered yet.
    images: Vec<Option<RgbImage>>,
    /// The active take of each panel.
    takes: Vec<Option<u32>>,
    /// The stale panels (0-based).
    stale: Vec<usize>,
}

/// Reads every panel's active take and checks them against the project: one that is there but
/// is not this project's (or is gone) stops the export with the reason, no rendered panel at all
/// asks for a render, and stale panels are refused or marked as `stale` says.
fn read_board(project: &Project, store: &ImagesStore, stale: StalePanels) -> Result<Board> {
    let saved = (0..project.panels.len())
        .map(|i| read_saved(project, store, Target::Panel(i)))
        .collect::<Result<Vec<_>>>()?;
    if saved.iter().all(Option::is_none) {
        bail!(
            "no rendered panels in {}: render the project first (charaboard render PROJECT.ron)",
            store.dir().display()
        );
    }
    let stale_panels: Vec<usize> =
        not_current(project, &saved.iter().flatten().collect::<Vec<_>>())?
            .into_iter()
            .filter_map(|t| match t {
                Target::Panel(i) => Some(i),
                Target::Identity | Target::IdentityOf(_) => None,
            })
            .collect();
    let mut shown = project.clone();
    if !stale_panels.is_empty() {
        match stale {
            StalePanels::Refuse => bail!(
                "{} of {} {} rendered from other prompts or settings than the project has now: render {} again, or export anyway with --allow-stale",
                panel_list(&stale_panels),
                project.title,
                if stale_panels.len() == 1 { "was" } else { "were" },
                if stale_panels.len() == 1 { "it" } else { "them" }
            ),
            StalePanels::Mark => {
                for &i in &stale_panels {
                    let caption = &mut shown.panels[i].caption;
                    *caption = format!("(stale) {caption}").trim_end().to_string();
                }
            }
        }
    }
    let takes = saved.iter().map(|s| s.as_ref().map(|t| t.take)).collect();
    let images = saved
        .into_iter()
        .map(|s| s.map(|saved| saved.image))
        .collect();
    Ok(Board {
        shown,
        images,
        takes,
        stale: stale_panels,
    })
}

/// Exports the animatic into `out_dir` (created if needed): `animatic.gif` and the numbered
/// PNG sequence with its ffconcat file in `animatic/` (see [`super::animatic`]), frames
/// `long_side` pixels on their long side. Checked as [`export_all`] checks; nothing is written
/// before every frame is made.
pub fn export_animatic(
    project: &Project,
    store: &ImagesStore,
    out_dir: &Path,
    long_side: u32,
    stale: StalePanels,
) -> Result<Exported> {
    let board = read_board(project, store, stale)?;
    let frames = super::animatic::frames(&board.shown, &board.images, long_side)?;
    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the output folder {}", out_dir.display()))?;
    let gif = out_dir.join("animatic.gif");
    super::animatic::write_gif(&frames, &gif)?;
    let mut files = vec![gif];
    files.extend(super::animatic::write_sequence(
        &frames,
        &out_dir.join("animatic"),
    )?);
    Ok(Exported {
        files,
        stale: board.stale,
    })
}

/// The active take of `target`; `None` means "not rendered yet".
fn read_saved(
    project: &Project,
    store: &ImagesStore,
    target: Target,
) -> Result<Option<RenderedImage>> {
    store
        .read_active(target, project.takes.get(&target))
        .with_context(|| format!("cannot export {}", target.label()))
}
