//! The `charaboard` binary: parse and dispatch; the commands live in the library's `cli`.

use clap::Parser;

// Counts heap bytes for the benchmarks' memory figures (`bench lockstep`); two relaxed atomic
// additions per allocation, nothing a render notices.
#[global_allocator]
static HEAP: charaboard::heap_meter::CountingAllocator = charaboard::heap_meter::CountingAllocator;

fn main() {
    charaboard::heap_policy::reuse_freed_memory();
    charaboard::compute_pool::set_defaults();
    if let Err(e) = charaboard::cli::run(charaboard::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
