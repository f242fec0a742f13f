//! `modalbench`: the service and the commands over its store and data. Commands that run a
//! model are handed to `modalbench-worker` (see [`modalbench::cli`]).

use clap::Parser;
use modalbench::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    if cli.command.runs_models() {
        cli::exec_worker();
    }
    cli::init_tracing();
    if let Err(e) = cli::run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
