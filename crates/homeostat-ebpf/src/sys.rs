//! The two system calls of the response path, through rustix: a pidfd naming one
//! thread (task storage is keyed by pidfd from userspace) and SIGCONT.

use std::os::fd::OwnedFd;

use rustix::process::{kill_process, pidfd_open, Pid, PidfdFlags, Signal};

/// `PIDFD_THREAD` (Linux 6.9): the pidfd names the thread `tid`, not its process. Not
/// named by rustix yet; it is `O_EXCL`'s value.
const PIDFD_THREAD: PidfdFlags = PidfdFlags::from_bits_retain(libc::O_EXCL as u32);

/// A pidfd for thread `tid`; `None` if it is gone (or the kernel is older than 6.9).
pub fn pidfd_thread(tid: i32) -> Option<OwnedFd> {
    pidfd_open(Pid::from_raw(tid)?, PIDFD_THREAD).ok()
}

/// Sends SIGCONT to process `pid`; whether it was sent.
pub fn sigcont(pid: i32) -> bool {
    Pid::from_raw(pid).is_some_and(|p| kill_process(p, Signal::CONT).is_ok())
}
