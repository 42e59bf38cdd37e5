//! Attaches to a running process, lets every call through, and prints one line per
//! system call: `tid exe nr` (x86_64 numbers; i386 calls are marked `i386:`; a task's
//! first call is marked `new`, with its creator if it was created under tracing). Ctrl-C
//! detaches and leaves the process running.
//!
//! `cargo run -p homeostat-ptrace --example attach_trace -- PID`

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use homeostat_ptrace::{Action, AttachOptions, TraceEvent, Tracer};
use homeostat_syscalls::AUDIT_ARCH_I386;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set STOP. No SA_RESTART: a blocking wait returns early, although
/// the loop below also wakes every 200 ms to look.
fn install_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic,
        // which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn main() {
    let pid: i32 = match std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("usage: attach_trace PID");
            std::process::exit(2);
        }
    };
    install_handler();
    let mut tracer = match Tracer::attach(pid, &AttachOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("attach_trace: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("attach_trace: attached to {pid}; Ctrl-C detaches");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut code = 0;
    while !STOP.load(Ordering::SeqCst) {
        match tracer.next(Some(Duration::from_millis(200))) {
            Ok(Some(TraceEvent::Syscall(s))) => {
                let abi = if s.arch == AUDIT_ARCH_I386 {
                    "i386:"
                } else {
                    ""
                };
                let mark = match (s.new_task, s.parent) {
                    (true, Some(p)) => format!(" new (from {p})"),
                    (true, None) => " new".to_string(),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "{} {} {abi}{}{mark}",
                    s.tid,
                    s.exe.path.display(),
                    s.nr
                );
                if let Err(e) = tracer.respond(s.tid, Action::Continue) {
                    eprintln!("attach_trace: {e}");
                    code = 1;
                    break;
                }
            }
            Ok(Some(TraceEvent::TaskGone { tid })) => {
                let _ = writeln!(out, "# {tid} gone");
            }
            Ok(Some(TraceEvent::AllGone)) => {
                let _ = writeln!(out, "# all gone");
                break;
            }
            Ok(None) => {
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("attach_trace: {e}");
                code = 1;
                break;
            }
        }
    }
    let _ = out.flush();
    if let Err(e) = tracer.detach_all() {
        eprintln!("attach_trace: {e}");
        code = 1;
    }
    std::process::exit(code);
}
