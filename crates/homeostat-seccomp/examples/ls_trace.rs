//! Runs a command under the supervisor, lets every call through, and prints one line per
//! system call: `tid exe nr` (x86_64 numbers; i386 calls are marked `i386:`).
//!
//! `cargo run -p homeostat-seccomp --example ls_trace -- ls -l /`

use std::ffi::OsString;
use std::io::Write;

use homeostat_seccomp::{Action, Event, LaunchOptions, Supervisor};
use homeostat_syscalls::AUDIT_ARCH_I386;

fn main() {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.is_empty() {
        eprintln!("usage: ls_trace COMMAND [ARG...]");
        std::process::exit(2);
    }
    let mut sup = match Supervisor::spawn(&argv, &LaunchOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ls_trace: {e}");
            std::process::exit(127);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut code = 0;
    loop {
        match sup.next(None) {
            Ok(Some(Event::Syscall(ev))) => {
                let abi = if ev.arch == AUDIT_ARCH_I386 {
                    "i386:"
                } else {
                    ""
                };
                let mark = if ev.new_task { " new" } else { "" };
                let _ = writeln!(
                    out,
                    "{} {} {abi}{}{mark}",
                    ev.tid,
                    ev.exe.path.display(),
                    ev.nr
                );
                if let Err(e) = sup.respond(ev.id, Action::Continue) {
                    eprintln!("ls_trace: {e}");
                    break;
                }
            }
            Ok(Some(Event::ChildExited(st))) => {
                let _ = writeln!(out, "# child exited: {st:?} (in {})", std::process::id());
                code = match st {
                    homeostat_seccomp::ChildStatus::Exited(c) => c,
                    homeostat_seccomp::ChildStatus::Signaled(s) => 128 + s,
                    homeostat_seccomp::ChildStatus::Unknown => 1,
                };
            }
            Ok(Some(Event::TreeGone)) => break,
            Ok(None) => {}
            Err(e) => {
                eprintln!("ls_trace: {e}");
                code = 1;
                break;
            }
        }
    }
    let _ = out.flush();
    std::process::exit(code);
}
