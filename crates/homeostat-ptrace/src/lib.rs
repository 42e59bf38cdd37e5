//! Attach mode's capture-and-response edge: monitor an *already running* process, and
//! every process and thread it creates afterwards, with ptrace; report each system call
//! at its entry and let the caller answer it — continue, deny with an errno, or answer
//! later (which is how homeostat delays a process).
//!
//! Why ptrace, when launcher mode (`homeostat-seccomp`) uses seccomp user notification:
//! a seccomp filter can only be installed by the process itself, before the code to be
//! watched runs, so a process that is already running can only be interposed from
//! outside, and ptrace is the kernel's one interface for that. It costs more: every call
//! is two stops (entry and exit), each a round trip through the tracer — several
//! microseconds per call even with tracer and tracee on one CPU, much more across CPUs on
//! a virtual machine — so it is the mechanism for `homeostat attach`, not for launching.
//!
//! Failure is open by construction: the attach does not set `PTRACE_O_EXITKILL`, so if
//! the tracer (this process, or just the thread that attached) dies, the kernel detaches
//! every tracee and it runs on, including a call that was being held. The design, the
//! stop handling and the limits are described in `docs/attach.md`.
//!
//! Modules: `tracer` (attach, the stop state machine, respond, detach), `proc` (/proc
//! readers, once per task), `sys` (the raw system calls; the crate's unsafe edge).
//!
//! Needs Linux 5.3 or later (`PTRACE_GET_SYSCALL_INFO`) on x86_64; 32-bit (i386) programs
//! are traced too and reported with their own architecture.
#![deny(clippy::undocumented_unsafe_blocks)]

mod proc;
mod sys;
mod tracer;

use std::time::Duration;

pub use sys::Errno;
pub use tracer::Tracer;

/// Options for [`Tracer::attach`].
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// How long [`Tracer::detach_all`] waits for running tracees to stop so they can be
    /// detached. A task blocked in the kernel uninterruptibly may take longer; it is then
    /// left to the kernel, which detaches it when the tracing thread exits.
    pub detach_timeout: Duration,
    /// How long [`Tracer::next`] polls (yielding the CPU) before it sleeps. Most stops
    /// follow the previous resume within microseconds; catching them awake saves a
    /// wake-up, which costs tens of microseconds when it crosses CPUs. Zero disables it.
    pub spin: Duration,
    /// Also attach to the processes already running below `pid` (children, their
    /// children, ...), found by scanning /proc. Without it, only `pid` and what it creates
    /// from now on are traced. Descendants that cannot be traced are skipped.
    pub descendants: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            detach_timeout: Duration::from_secs(5),
            spin: Duration::from_micros(50),
            descendants: false,
        }
    }
}

/// The answer to one system-call entry; the same type as the seccomp front end's.
pub use homeostat_proc::Action;
/// What a syscall-entry stop reports, shared with the seccomp front end.
pub use homeostat_proc::Call;

/// What [`Tracer::next`] reports.
#[derive(Clone, Debug)]
pub enum TraceEvent {
    /// A syscall-entry stop: the task waits for [`Tracer::respond`]; other tasks go on.
    Syscall(SyscallStop),
    /// Task `tid` is gone: it exited or was killed, or (multithreaded `execve`) the
    /// thread that exec'd took over the leader's tid. A later event for the same tid is
    /// a new task (`new_task` set). A call held for it needs no answer any more.
    TaskGone { tid: i32 },
    /// No tracee is left. Reported again on every later call to `next`.
    AllGone,
}

/// One system call about to run: the [`Call`] (its fields read through `Deref`; its
/// `tid` is what [`Tracer::respond`] takes) and where the task came from.
#[derive(Clone, Debug)]
pub struct SyscallStop {
    /// The call.
    pub call: Call,
    /// For a process or thread created under tracing: the tid that forked or cloned it.
    /// `None` for the tasks found at attach.
    pub parent: Option<i32>,
    /// The first entry of a task found at attach that was then inside this very call,
    /// cut short by a signal (the stop that handed it over, or the attach itself) and
    /// now entered again: a second entry of one call, seen before it was traced.
    pub restarted: bool,
}

impl std::ops::Deref for SyscallStop {
    type Target = Call;
    fn deref(&self) -> &Call {
        &self.call
    }
}

pub use homeostat_proc::Exe;

/// Why attaching, waiting, answering or detaching failed. Messages are one line naming
/// the pid and what failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot attach to pid {0}: not a valid process id")]
    InvalidPid(i32),
    #[error("cannot attach to pid {0}: no such process")]
    NoSuchProcess(i32),
    #[error("cannot attach to pid {0}: that is this process (a tracer cannot trace itself)")]
    SelfAttach(i32),
    #[error("cannot attach to pid {pid}: it is already traced by pid {tracer}")]
    AlreadyTraced { pid: i32, tracer: i32 },
    #[error("cannot attach to pid {pid}: permission denied ({hint})")]
    PermissionDenied { pid: i32, hint: String },
    #[error("{call} on pid {pid}: {errno}")]
    Ptrace {
        call: &'static str,
        pid: i32,
        errno: Errno,
    },
    #[error("waiting for tracees of pid {pid}: {errno}")]
    Wait { pid: i32, errno: Errno },
    #[error("tid {0} is not stopped at a system call entry (already answered?)")]
    NotHeld(i32),
    #[error("Action::Deny({0}): errno must be in 1..=4095")]
    BadErrno(i32),
    #[error("detaching from pid {pid}: {} task(s) did not stop within {timeout:?}: {tids:?}", tids.len())]
    DetachTimeout {
        pid: i32,
        timeout: Duration,
        tids: Vec<i32>,
    },
    #[error("this kernel lacks PTRACE_GET_SYSCALL_INFO (needs Linux 5.3): {0}")]
    Unsupported(Errno),
}
