//! `charaboard export`: the captioned sheet, the PDF and the numbered panels.

use anyhow::Result;
use std::path::PathBuf;

use crate::export::pdf::Paper;
use crate::export::storyboard::{export_all, panel_list, SheetOptions, StalePanels};
use crate::project::images::ImagesStore;

#[derive(clap::Args)]
pub struct Export {
    project: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Panels per row on the sheet.
    #[arg(long, default_value_t = 3)]
    columns: usize,
    /// a4 or letter (landscape).
    #[arg(long, default_value = "a4")]
    paper: Paper,
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
        ..Default::default()
    };
    let stale = match args.allow_stale {
        true => StalePanels::Mark,
        false => StalePanels::Refuse,
    };
    let exported = export_all(&project, &store, &args.out, &options, args.paper, stale)?;
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
