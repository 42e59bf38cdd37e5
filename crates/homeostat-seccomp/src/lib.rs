//! Launcher mode's capture-and-response edge: run a command under a seccomp
//! user-notification filter, report every system call of every process and thread it
//! creates *before* the call runs, and let the caller answer each one — continue, deny
//! with an errno, or answer later (which is how homeostat delays a process).
//!
//! Why seccomp user notification rather than ptrace: cost and semantics. A notified call
//! costs one round trip to the supervisor (on `dd bs=1`, nothing but calls, about a
//! quarter of what `strace -f` costs; figures in `docs/seccomp-supervisor.md`), the
//! kernel follows forks and threads for us (the filter is inherited and cannot be
//! removed), and a call can be held without stopping the task in a ptrace stop that
//! other tools or the program could observe.
//! What it cannot do is see a call's result: homeostat only needs the sequence of call
//! numbers, which is exactly what it gets, before each call runs.
//!
//! Why the extra process (the *keeper*; the design is in `docs/seccomp-supervisor.md`):
//! if the supervisor dies, a plain listener closes and every monitored program breaks
//! (`ENOSYS` from every later call) or hangs (a call it was delaying is never answered).
//! The keeper holds a second copy of the listener and answers for the supervisor —
//! continuing everything ([`FailMode::Open`]) or killing the tree ([`FailMode::Closed`]).
//!
//! Modules: `child` (the pre-exec child: filter, then exec), `keeper`, `inflight` (the
//! shared table of received-but-unanswered notifications), `supervisor` (spawn, the event
//! loop, per-task caches, and the forks the filter lets through unnotified — so that a
//! signal cannot fail them with EINTR — reported in their place), `sys` (the raw system
//! calls; the crate's unsafe edge).
//!
//! Needs Linux 5.10 or later on x86_64 (`pidfd_getfd`, `SECCOMP_USER_NOTIF_FLAG_CONTINUE`,
//! `POLLHUP` on a listener no task uses any more); uses
//! `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6), `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`
//! (5.19) and the process-events connector (`CAP_NET_ADMIN`) when present.
#![deny(clippy::undocumented_unsafe_blocks)]

mod child;
mod inflight;
mod keeper;
pub mod load;
pub mod signals;
mod supervisor;
mod sys;

pub use supervisor::Supervisor;
pub use sys::Errno;

/// What happens to the monitored programs if the supervisor dies (or shuts down while
/// they still run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// They keep running, unmonitored: the keeper answers CONTINUE to every call.
    #[default]
    Open,
    /// They are killed (SIGKILL), at the latest at their next system call.
    Closed,
}

/// Options for [`Supervisor::spawn`].
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub fail_mode: FailMode,
    /// Ask the kernel to wake the supervisor on the notifying task's CPU and back
    /// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6; ignored where missing). Cuts the
    /// per-call cost several-fold on machines where cross-CPU wake-ups are slow.
    pub sync_wakeup: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            fail_mode: FailMode::Open,
            sync_wakeup: true,
        }
    }
}

/// The answer to one notified system call (`Continue`: answered with
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`); the same type as the ptrace front end's.
pub use homeostat_proc::Action;
/// What a notified call reports, shared with the ptrace front end.
pub use homeostat_proc::Call;

/// How the direct child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It is gone, but its status could not be learned (the keeper, which reaps it, died).
    Unknown,
}

impl ChildStatus {
    pub(crate) fn from_wait(status: i32) -> ChildStatus {
        if libc::WIFEXITED(status) {
            ChildStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ChildStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ChildStatus::Unknown
        }
    }

    /// True for `Exited(0)`.
    pub fn success(self) -> bool {
        self == ChildStatus::Exited(0)
    }
}

/// What [`Supervisor::next`] reports.
#[derive(Clone, Debug)]
pub enum Event {
    /// A task is about to make this call and waits for [`Supervisor::respond`].
    Syscall(SyscallEvent),
    /// The direct child exited. Its descendants may still run (and report calls).
    ChildExited(ChildStatus),
    /// No task uses the filter any more: the whole monitored tree is gone. Reported after
    /// `ChildExited`, and again on every later call to `next`.
    TreeGone,
}

/// One notified system call: the [`Call`] (its fields read through `Deref`) and the
/// notification id to answer it by.
#[derive(Clone, Debug)]
pub struct SyscallEvent {
    /// Notification id: pass it to [`Supervisor::respond`].
    pub id: u64,
    /// The call.
    pub call: Call,
}

impl std::ops::Deref for SyscallEvent {
    type Target = Call;
    fn deref(&self) -> &Call {
        &self.call
    }
}

pub use homeostat_proc::Exe;

/// Why spawning or serving failed. Messages are one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    EmptyCommand,
    #[error("cannot run {cmd}: {errno}")]
    Exec { cmd: String, errno: Errno },
    #[error("seccomp: {what}: {errno}")]
    Seccomp { what: &'static str, errno: Errno },
    #[error("{call}: {errno}")]
    Sys { call: &'static str, errno: Errno },
    #[error("launching {cmd}: {what}")]
    Launch { cmd: String, what: String },
    #[error("Action::Deny({0}): errno must be in 1..=4095")]
    BadErrno(i32),
    #[error("launcher mode supports x86_64 only")]
    UnsupportedArch,
}
