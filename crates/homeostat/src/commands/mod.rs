//! One module per subcommand; each turns parsed arguments into library calls.

pub mod analyze;
mod daemon;
mod demo;
mod eval;
mod inspect;
mod models;
mod profile;
mod run;
mod scan;
mod state;
mod train;

use anyhow::Result;
use homeostat_traces::ReadOptions;

use crate::cli::{Cli, Command, InputFlags};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Daemon(_)) {
        crate::logging::init_plain();
    }
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Analyze(c) => analyze::run(c),
        Command::SeccompExec { filter, command } => analyze::seccomp_exec(&filter, &command),
        Command::Scan(a) => scan::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Inspect { profile } => inspect::run(&profile),
        Command::Run(a) => run::run(a),
        Command::Attach(a) => run::attach(a),
        Command::Record(a) => run::record(a),
        Command::Profile(c) => profile::run(c),
        Command::Ps { json, state } => profile::ps(json, &state),
        Command::Demo(a) => demo::run(a),
        Command::Daemon(a) => daemon::run(a),
        Command::Status { json, state } => daemon::status(json, &state),
        Command::Hook { to, state } => daemon::hook(to, &state),
        Command::DaemonStopGuard { map_id } => daemon::stop_guard(map_id),
    }
}

/// Reader options from the input flags.
pub fn read_options(f: &InputFlags) -> ReadOptions {
    ReadOptions {
        format: f.format,
        arch: f.arch,
        ..ReadOptions::default()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
