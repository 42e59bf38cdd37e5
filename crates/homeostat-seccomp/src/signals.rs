//! Signal dispositions of the process that launches and monitors a program.
//!
//! Why here: the CLI has no unsafe code, and signal handlers need it. A launcher must
//! not die of a signal meant for the program it runs: `homeostat run` killed by
//! SIGINT, SIGTERM or SIGHUP saved nothing, left its control socket and left the
//! program running unmonitored. So, as strace does, the launcher passes those signals
//! on to the program and stays until the program ends.

use std::sync::atomic::{AtomicI32, Ordering};

/// The program's pid (0 until it runs).
static PROGRAM: AtomicI32 = AtomicI32::new(0);
/// A signal that came before the program ran, passed on once it does.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals passed on to the program.
pub const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Only `kill` and atomics, which are async-signal-safe, run in the handler.
extern "C" fn forward(sig: libc::c_int) {
    let pid = PROGRAM.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill has no memory effects and may be called from a signal handler.
        unsafe {
            libc::kill(pid, sig);
        }
    } else {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

/// From now on, [`FORWARDED`] signals to this process go to the program named by
/// [`program_started`] (or wait for it) instead of ending this process. Call it before
/// starting the program, so none is lost; the keeper resets every handler it inherits,
/// and the program's execve does.
pub fn forward_to_program() -> std::io::Result<()> {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only calls
        // kill and touches atomics.
        let failed = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The program runs as `pid`: forwarded signals go to it, and one that came before is
/// passed on now.
pub fn program_started(pid: i32) {
    PROGRAM.store(pid, Ordering::SeqCst);
    let sig = PENDING.swap(0, Ordering::SeqCst);
    if sig != 0 {
        // SAFETY: kill has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Restores SIGPIPE's default disposition, so writing to a closed pipe ends this
/// process quietly as it ends `cat` (Rust ignores SIGPIPE, and then `println!`
/// panics). Only for processes that just print: a monitor must keep it ignored, or a
/// control-socket client that hangs up would kill it.
pub fn die_on_broken_pipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
