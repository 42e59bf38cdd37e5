//! What a capture front end (the seccomp launcher, the ptrace attach) reports for one
//! system call it holds before the call runs, and the answer it applies. Both front ends
//! hold a call the same way and answer it the same ways, so the monitor above them sees
//! one type: pH's responses map onto these answers (a delay is an answer given later,
//! an execve refused is `Deny(EPERM)`).

use std::sync::Arc;

use crate::Exe;

/// One system call about to run, held until it is answered.
#[derive(Clone, Debug)]
pub struct Call {
    /// Thread id of the caller.
    pub tid: i32,
    /// Process (thread group) id of the caller.
    pub pid: i32,
    /// `AUDIT_ARCH_X86_64` (0xc000003e) or `AUDIT_ARCH_I386` (0x40000003): the same
    /// number means different calls in the two ABIs (`homeostat_syscalls::call_kind`).
    pub arch: u32,
    /// System call number (x32 calls keep their 0x40000000 bit).
    pub nr: u32,
    /// The call's arguments, as registers.
    pub args: [u64; 6],
    /// The executable the task runs now, before this call.
    pub exe: Arc<Exe>,
    /// First call reported for this task: a new process or thread, or (launcher) the
    /// program's first call after its exec, or (attach) a task present at attach.
    pub new_task: bool,
}

/// The answer to one held call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let the call run.
    Continue,
    /// Do not run it; it returns `-errno` (errno in `1..=4095`, e.g. `libc::EPERM`).
    Deny(i32),
}

impl Action {
    /// The largest errno a call can return (the kernel's `MAX_ERRNO`).
    pub const MAX_ERRNO: i32 = 4095;

    /// The action if it can be applied; `Err(errno)` for a `Deny` outside
    /// `1..=MAX_ERRNO`, which the kernel would not read as an error.
    pub fn checked(self) -> Result<Action, i32> {
        match self {
            Action::Deny(e) if !(1..=Self::MAX_ERRNO).contains(&e) => Err(e),
            a => Ok(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_errnos_can_be_returned() {
        assert_eq!(Action::Continue.checked(), Ok(Action::Continue));
        assert_eq!(Action::Deny(1).checked(), Ok(Action::Deny(1)));
        assert_eq!(Action::Deny(4095).checked(), Ok(Action::Deny(4095)));
        assert_eq!(Action::Deny(0).checked(), Err(0));
        assert_eq!(Action::Deny(4096).checked(), Err(4096));
        assert_eq!(Action::Deny(-1).checked(), Err(-1));
    }
}
