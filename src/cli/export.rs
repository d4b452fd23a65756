//! `charaboard export`: the captioned sheet, the PDF and the numbered panels.

use anyhow::Result;
use std::path::PathBuf;

use crate::export::board::BoardFields;
use crate::export::pdf::{Orientation, Paper, PdfOptions};
use crate::export::storyboard::{
    export_all, export_animatic, panel_list, SheetOptions, StalePanels,
};
use crate::project::images::ImagesStore;

#[derive(clap::Args)]
pub struct Export {
    project: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Panels per row on the sheet and on each PDF page.
    #[arg(long, default_value_t = 3)]
    columns: usize,
    /// Rows of panels on each PDF page.
    #[arg(long, default_value_t = 2)]
    rows: usize,
    /// a4, letter, a3 or tabloid.
    #[arg(long, default_value = "a4")]
    paper: Paper,
    /// portrait or landscape.
    #[arg(long, default_value = "landscape")]
    orientation: Orientation,
    /// What is printed under each panel: all, none, or a comma-separated list of shot, angle,
    /// move, duration, dialogue, caption, notes, scenes (scene headers).
    #[arg(long, default_value = "all")]
    fields: BoardFields,
    /// Also write the animatic: animatic.gif and a numbered PNG sequence with an ffconcat file
    /// in animatic/, frames this many pixels on their long side.
    #[arg(long, value_name = "LONG_SIDE", num_args = 0..=1, default_missing_value = "512")]
    animatic: Option<u32>,
    /// Export panels whose image was rendered from other prompts or settings than the project
    /// has now, marked "(stale)", instead of refusing.
    #[arg(long)]
    allow_stale: bool,
}

pub fn run(args: Export) -> Result<()> {
    let project = crate::project::io::load(&args.project)?;
    let store = ImagesStore::beside(&args.project);
    let options = SheetOptions {
        columns: args.columns,
        fields: args.fields,
        ..Default::default()
    };
    let pdf = PdfOptions {
        paper: args.paper,
        orientation: args.orientation,
        columns: args.columns,
        rows: args.rows,
        fields: args.fields,
    };
    let stale = match args.allow_stale {
        true => StalePanels::Mark,
        false => StalePanels::Refuse,
    };
    let mut exported = export_all(&project, &store, &args.out, &options, &pdf, stale)?;
    if let Some(side) = args.animatic {
        let animatic = export_animatic(&project, &store, &args.out, side, stale)?;
        exported.files.extend(animatic.files);
    }
    for file in &exported.files {
        println!("{}", file.display());
    }
    if !exported.stale.is_empty() {
        eprintln!(
            "warning: {} exported marked (stale): render again for current images",
            panel_list(&exported.stale)
        );
    }
    Ok(())
}
