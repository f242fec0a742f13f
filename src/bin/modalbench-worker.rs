//! `modalbench-worker`: the part of modalbench that runs models (the service's workers,
//! `train`, `forward`, the step and loader benchmarks), linked against libtorch. It takes every
//! `modalbench` command (see [`modalbench::cli`]).

use clap::Parser;
use modalbench::cli::{self, Cli};

fn main() {
    modalbench::train::keep_freed_memory();
    let cli = Cli::parse();
    cli::init_tracing();
    if let Err(e) = cli::torch::run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
