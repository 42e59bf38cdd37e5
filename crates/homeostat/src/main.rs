//! The `homeostat` command: a thin layer that parses arguments and hands the work to
//! the library crates (core models, trace readers, evaluation).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod control;
mod fsutil;
mod launch;
mod metrics;
mod progress;
mod sample;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = commands::run(cli) {
        // One line, outermost context first: "reading profile p.hsp: profile is damaged: ..."
        eprintln!("homeostat: error: {e:#}");
        std::process::exit(1);
    }
}
