//! `charaboard models`: the FLUX.1 models on this machine, component by component.

use anyhow::Result;
use std::path::PathBuf;

use crate::models::{discovery, inventory};

#[derive(clap::Args)]
pub struct Models {
    /// Also look in this folder (and up to 3 levels below); repeatable.
    #[arg(long = "in")]
    dirs: Vec<PathBuf>,
}

pub fn run(args: Models) -> Result<()> {
    let caches = discovery::cache_dirs();
    println!(
        "Hugging Face caches: {}",
        match caches.is_empty() {
            true => "none".to_string(),
            false => caches
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    );
    let mut listing = inventory::in_caches();
    for dir in &args.dirs {
        listing.extend(inventory::in_dir(dir)?);
    }
    let found = &listing.found;
    if found.is_empty() {
        println!("no FLUX.1 models found");
    }
    for model in found {
        let status = match model.complete {
            true => "",
            false => "  (incomplete: not every component is here)",
        };
        println!("{}  {}{status}", model.name, model.path.display());
        for c in &model.components {
            println!(
                "  {:<12} {:<25} {:<10} {:>14} bytes  {}",
                c.role.name(),
                c.format,
                c.dtype,
                c.bytes,
                c.path.display()
            );
        }
    }
    for bad in &listing.unreadable {
        println!("unreadable  {}: {}", bad.path.display(), bad.why);
    }
    Ok(())
}
