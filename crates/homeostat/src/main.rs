//! The `homeostat` command: it parses arguments, calls the library crates (core
//! models, trace readers, evaluation, the monitor, the daemon) and prints what they
//! return. Work that is not argument handling or printing belongs in a library crate
//! (ARCHITECTURE.md).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod fsutil;
mod logging;
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
