//! The raw system calls of the response path, kept apart so the unsafe code is in one
//! small place: a pidfd naming one thread (task storage is keyed by pidfd from
//! userspace) and SIGCONT.

use std::os::fd::{FromRawFd, OwnedFd};

/// `PIDFD_THREAD` (Linux 6.9): the pidfd names the thread `tid`, not its process.
const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;

/// A pidfd for thread `tid`; `None` if it is gone (or the kernel is older than 6.9).
pub fn pidfd_thread(tid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::c_long, PIDFD_THREAD) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends SIGCONT to process `pid`; whether it was sent.
pub fn sigcont(pid: i32) -> bool {
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGCONT) == 0 }
}
