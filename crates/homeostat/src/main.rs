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

/// Commands that only read and print. When their reader goes away (`homeostat profile
/// list | head -1`) they end as `cat` does, killed quietly by SIGPIPE, instead of
/// panicking in `println!` (Rust ignores SIGPIPE, so a closed stdout is an error there).
/// Monitors (`run`, `attach`, `daemon`, ...) keep SIGPIPE ignored: a control-socket
/// client that hangs up must never kill the monitor of a running program.
fn prints_only(c: &cli::Command) -> bool {
    use cli::Command::*;
    matches!(
        c,
        Train(_) | Scan(_) | Eval(_) | Inspect { .. } | Ps { .. } | Profile(_) | Status { .. }
    )
}

/// 1, except when the monitored command could not be started: then what a shell
/// gives, 127 when it was not found and 126 when it was found but could not run.
fn exit_code(e: &anyhow::Error) -> i32 {
    use homeostat_seccomp::LaunchError;
    match e.chain().find_map(|c| c.downcast_ref::<LaunchError>()) {
        Some(LaunchError::Exec { errno, .. })
            if std::io::Error::from_raw_os_error(errno.0).kind()
                == std::io::ErrorKind::NotFound =>
        {
            127
        }
        Some(LaunchError::Exec { .. }) => 126,
        _ => 1,
    }
}

fn main() {
    let cli = cli::Cli::parse();
    if prints_only(&cli.command) {
        homeostat_seccomp::signals::die_on_broken_pipe();
    }
    if let Err(e) = commands::run(cli) {
        // One line, outermost context first: "reading profile p.hsp: profile is damaged: ..."
        eprintln!("homeostat: error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}
