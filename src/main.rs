//! The `charaboard` binary: parse and dispatch; the commands live in the library's `cli`.

use clap::Parser;

fn main() {
    if let Err(e) = charaboard::cli::run(charaboard::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
