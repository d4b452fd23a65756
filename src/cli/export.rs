//! `charaboard export`: the captioned sheet, the PDF and the numbered panels.

use anyhow::Result;
use std::path::PathBuf;

use crate::export::pdf::Paper;
use crate::export::storyboard::{export_all, SheetOptions};
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
}

pub fn run(args: Export) -> Result<()> {
    let project = crate::project::io::load(&args.project)?;
    let store = ImagesStore::beside(&args.project);
    let options = SheetOptions {
        columns: args.columns,
        ..Default::default()
    };
    for file in export_all(&project, &store, &args.out, &options, args.paper)? {
        println!("{}", file.display());
    }
    Ok(())
}
