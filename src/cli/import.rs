//! `charaboard import`: the reference implementation's prompt file as projects.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Import {
    prompts: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Lock every scene's background (the reference's --share_bg).
    #[arg(long)]
    lock_background: bool,
}

pub fn run(args: Import) -> Result<()> {
    let projects = crate::project::import::import_file(&args.prompts, args.lock_background)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let stem = args
        .prompts
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("story");
    for (k, project) in projects.iter().enumerate() {
        let path = args.out.join(format!("{stem}-{:02}.ron", k + 1));
        crate::project::io::save(project, &path)?;
        println!("{}", path.display());
    }
    Ok(())
}
