//! The `charaboard` command line: one module per command, one shared set of run flags.

mod args;
mod bench;
mod export;
mod generate;
mod import;
mod invert;
mod models;
mod plan;
mod progress;
mod render;
mod tiny_model;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "charaboard",
    version,
    about = "Consistent-character storyboards with FLUX.1"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: open the app, on this project if given.
    project: Option<PathBuf>,
    /// The app's model folder (or a Hugging Face repository id found in the cache).
    #[arg(long)]
    model: Option<String>,
    /// Render every panel as soon as the model is loaded.
    #[arg(long)]
    render_on_start: bool,
    /// Write where the grid's cells are on screen to this file (for the end-to-end test).
    #[arg(long, hide = true)]
    layout_report: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one image with plain FLUX.1.
    Generate(generate::Generate),
    /// Render a storyboard project: the identity, every panel, overlays and a contact sheet.
    Render(render::Render),
    /// The memory plan of a storyboard on a model: every component's bytes, the bank's in each
    /// bank mode, the activations and forwards, and the fastest mode that fits; loads nothing.
    Plan(plan::PlanArgs),
    /// Export a rendered storyboard: a captioned panel sheet, a PDF and the numbered panels.
    Export(export::Export),
    /// Turn the reference implementation's prompt file (`background#character#action` lines,
    /// groups separated by blank lines) into one project per group.
    Import(import::Import),
    /// Invert a picture to the noise FLUX would draw it from under a prompt (a noise file for
    /// `generate --noise`).
    Invert(invert::Invert),
    /// Write a tiny FLUX.1 model with random weights (abstract images) for tests and trying the app.
    TinyModel(tiny_model::TinyModel),
    /// List the FLUX.1 models in the Hugging Face caches and in the given folders, with each
    /// component's format, storage dtype and size.
    Models(models::Models),
    /// Benchmarks that report ratios measured in one run.
    #[command(subcommand)]
    Bench(bench::Bench),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        let model = cli
            .model
            .map(|m| crate::models::discovery::resolve(&m))
            .transpose()?;
        // The window's event loop must run on the main thread; its worker runs its jobs in the
        // compute pool itself.
        return crate::ui::run(cli.project, model, cli.render_on_start, cli.layout_report);
    };
    crate::compute_pool::install(|| match command {
        Command::Generate(args) => generate::run(args),
        Command::Render(args) => render::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
        Command::Invert(args) => invert::run(args),
        Command::TinyModel(args) => tiny_model::run(args),
        Command::Models(args) => models::run(args),
        Command::Bench(args) => bench::run(args),
    })
}
