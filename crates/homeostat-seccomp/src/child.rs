//! The monitored child between `fork` and `execve`: install the filter, then exec.
//!
//! Runs in a forked copy of a possibly multi-threaded process, so it only makes raw
//! system calls on data prepared before the fork (no allocation, no locks).
//!
//! Ordering, deliberately: once the filter is installed, *every* system call of this
//! process is notified and blocks until someone answers it. The listener descriptor the
//! kernel returns exists only in this process, so sending it to the supervisor over a
//! socket (sendmsg + SCM_RIGHTS) would itself be notified — and wait forever for an
//! answer only the holder of that very descriptor could give. So the child makes the
//! filter installation its last act before `execve`:
//!
//! 1. before installing, it finds the descriptor number the listener will get (the
//!    lowest free one; this process is single-threaded, so nothing else can take it) and
//!    writes `HELLO {pid, fd}` to the status pipe — not yet filtered, so not notified;
//! 2. it installs the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`;
//! 3. it calls `execve` — notified; the supervisor, meanwhile, has copied the listener
//!    out of this process with `pidfd_getfd(2)` and answers it.
//!
//! The listener is close-on-exec, so the new program never holds it. If `execve` fails,
//! the child reports the errno on the status pipe (that write is notified and the
//! supervisor answers it) and exits 127. A successful `execve` closes the status pipe
//! (close-on-exec), which the supervisor reads as "exec succeeded".

use std::os::fd::RawFd;

use libc::{c_char, c_int};

use crate::sys::{last_errno, write_msg, Msg, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV};

pub(crate) const HELLO: u32 = 1;
pub(crate) const FAIL: u32 = 2;

pub(crate) const STAGE_NNP: i32 = 1;
pub(crate) const STAGE_FD: i32 = 2;
pub(crate) const STAGE_SECCOMP: i32 = 3;
pub(crate) const STAGE_EXEC: i32 = 4;
pub(crate) const STAGE_KEEPER: i32 = 5;

/// Everything the child needs, prepared (and kept alive) by `spawn` before forking.
pub(crate) struct ChildPlan {
    pub path: *const c_char,
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
    pub status_w: RawFd,
    pub prog: libc::sock_fprog,
}

/// The filter: every system call of the x86_64 and i386 ABIs goes to the supervisor;
/// anything else (no other ABI exists on x86_64 hardware) is allowed.
///
/// With `allow_forks`, two x86_64 calls are let through *without* a notification:
/// `vfork`, and `clone` without `CLONE_THREAD` or `CLONE_PARENT` (glibc's `fork`).
/// Why: a task waiting for the supervisor to *receive* its notification can be
/// interrupted by a signal, and the call then fails with EINTR when the handler lacks
/// `SA_RESTART` — which a fork natively never does (dash: "Cannot fork"). Not notified,
/// the fork runs natively; the supervisor learns of it from the kernel's process-events
/// connector and reports it in its place (`supervisor/forks.rs`). Only these shapes:
/// the connector names the creating thread exactly for them, and `clone` and `vfork`
/// can be told apart afterwards; every other clone-family call stays notified.
pub(crate) fn filter(allow_forks: bool) -> Vec<libc::sock_filter> {
    use homeostat_syscalls::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64};
    const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARG0_OFFSET: u32 = 16; // low word of args[0] (little-endian)
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |op: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = |off: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, off);
    let allow = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    let notify = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF);
    if !allow_forks {
        return vec![
            ld(ARCH_OFFSET),
            jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 2, 0),
            jump(libc::BPF_JEQ, AUDIT_ARCH_I386, 1, 0),
            allow,
            notify,
        ];
    }
    // The kernel reads only the low 32 bits of clone's flags.
    let not_a_fork = (libc::CLONE_THREAD | libc::CLONE_PARENT) as u32;
    vec![
        /* 0 */ ld(ARCH_OFFSET),
        /* 1 */ jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 2, 0),
        /* 2 */ jump(libc::BPF_JEQ, AUDIT_ARCH_I386, 7, 0),
        /* 3 */ allow,
        /* 4 */ ld(NR_OFFSET),
        /* 5 */ jump(libc::BPF_JEQ, libc::SYS_vfork as u32, 3, 0),
        /* 6 */ jump(libc::BPF_JEQ, libc::SYS_clone as u32, 0, 3),
        /* 7 */ ld(ARG0_OFFSET),
        /* 8 */ jump(libc::BPF_JSET, not_a_fork, 1, 0),
        /* 9 */ allow,
        /* 10 */ notify,
    ]
}

fn fail(status_w: RawFd, stage: i32, errno: i32) -> ! {
    let _ = write_msg(status_w, Msg::new(FAIL, stage, errno));
    // SAFETY: _exit is async-signal-safe and ends this forked child without running
    // the parent's atexit handlers or destructors.
    unsafe { libc::_exit(127) }
}

/// The child's whole life up to `execve`.
///
/// # Safety
/// Must be called only in a freshly forked child; `plan`'s pointers must be valid in it.
pub(crate) unsafe fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY: (whole block) raw system calls on stack data and on the plan's pointers,
    // which the caller guarantees are valid in this process image.
    unsafe {
        // A program expects the signal state a shell gives it: nothing blocked (the
        // keeper blocks SIGCHLD for its signalfd) and SIGPIPE at its default (Rust
        // programs ignore it, and an ignored disposition survives execve).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        // Needed to install a filter without CAP_SYS_ADMIN; also what makes setuid
        // binaries unable to shed the filter. Inherited by everything the program runs.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan.status_w, STAGE_NNP, last_errno());
        }

        // Step 1 (see the module docs): predict the listener's descriptor number.
        let probe: c_int = libc::fcntl(plan.status_w, libc::F_DUPFD, 0);
        if probe < 0 {
            fail(plan.status_w, STAGE_FD, last_errno());
        }
        libc::close(probe);
        if write_msg(plan.status_w, Msg::new(HELLO, libc::getpid(), probe)).is_err() {
            libc::_exit(127);
        }

        // Step 2. WAIT_KILLABLE_RECV (5.19): once the supervisor has received a
        // notification, a non-fatal signal no longer interrupts the wait — otherwise
        // the call would be restarted and reported twice. Fatal signals still kill.
        let install = |flags: libc::c_ulong| {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &plan.prog as *const libc::sock_fprog,
            )
        };
        let mut fd = install(
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
        );
        if fd < 0 && last_errno() == libc::EINVAL {
            fd = install(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER);
        }
        if fd < 0 {
            // Not filtered (installation failed), so this report is not notified.
            fail(plan.status_w, STAGE_SECCOMP, last_errno());
        }

        // Step 3. From here on every call is notified and answered by the supervisor.
        libc::execve(plan.path, plan.argv, plan.envp);
        fail(plan.status_w, STAGE_EXEC, last_errno());
    }
}
