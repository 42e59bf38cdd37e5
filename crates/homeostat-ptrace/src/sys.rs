//! Thin wrappers over `ptrace(2)` and `waitpid(2)` (through rustix): the crate's
//! unsafe edge. The ptrace requests stay hand-written: nix lacks `PTRACE_LISTEN`, and its
//! `PTRACE_GET_SYSCALL_INFO` returns a C union that would need unsafe to read anyway.
//!
//! The raw `syscall(SYS_ptrace, ..)` is used rather than glibc's variadic `ptrace()`
//! wrapper, whose `PEEK*` requests change the calling convention; none of the requests
//! here needs that. Errors come back as [`Errno`] values, never panics.

use libc::{c_int, c_long, c_void};

pub use homeostat_proc::Errno;

fn last_errno() -> i32 {
    // SAFETY: __errno_location always returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

// Requests, options and events (uapi/linux/ptrace.h). Spelled out here because libc
// types them differently per C library.
const PTRACE_DETACH: c_long = 17;
const PTRACE_SYSCALL: c_long = 24;
const PTRACE_PEEKUSER: c_long = 3;
const PTRACE_POKEUSER: c_long = 6;
const PTRACE_GETEVENTMSG: c_long = 0x4201;
const PTRACE_SEIZE: c_long = 0x4206;
const PTRACE_INTERRUPT: c_long = 0x4207;
const PTRACE_LISTEN: c_long = 0x4208;
const PTRACE_GET_SYSCALL_INFO: c_long = 0x420e;

pub(crate) const PTRACE_O_TRACESYSGOOD: c_long = 1;
pub(crate) const PTRACE_O_TRACEFORK: c_long = 1 << 1;
pub(crate) const PTRACE_O_TRACEVFORK: c_long = 1 << 2;
pub(crate) const PTRACE_O_TRACECLONE: c_long = 1 << 3;
pub(crate) const PTRACE_O_TRACEEXEC: c_long = 1 << 4;

pub(crate) const PTRACE_EVENT_FORK: i32 = 1;
pub(crate) const PTRACE_EVENT_VFORK: i32 = 2;
pub(crate) const PTRACE_EVENT_CLONE: i32 = 3;
pub(crate) const PTRACE_EVENT_EXEC: i32 = 4;
pub(crate) const PTRACE_EVENT_STOP: i32 = 128;

pub(crate) const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
pub(crate) const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;

/// Byte offsets in x86_64 `struct user_regs_struct` (the `PTRACE_POKEUSER` area starts
/// with it): `orig_rax` is the call number the kernel will dispatch, `rax` the return
/// value.
const OFFSET_ORIG_RAX: usize = 15 * 8;
const OFFSET_RAX: usize = 10 * 8;

fn ptrace(req: c_long, tid: i32, addr: usize, data: usize) -> Result<c_long, Errno> {
    // SAFETY: every request used in this module takes integer arguments or, where
    // `addr`/`data` are pointers, a pointer to a live buffer of the size the request
    // writes (see the callers); the kernel validates the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            req,
            tid as c_long,
            addr as *mut c_void,
            data as *mut c_void,
        )
    };
    if r < 0 {
        Err(Errno(last_errno()))
    } else {
        Ok(r)
    }
}

pub(crate) fn seize(tid: i32, options: c_long) -> Result<(), Errno> {
    ptrace(PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

pub(crate) fn interrupt(tid: i32) -> Result<(), Errno> {
    ptrace(PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// Resumes a stopped tracee until its next system call entry or exit (or other stop),
/// delivering `sig` (0 for none).
pub(crate) fn syscall(tid: i32, sig: i32) -> Result<(), Errno> {
    ptrace(PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// Leaves a tracee in group-stop stopped but lets it report when the stop ends.
pub(crate) fn listen(tid: i32) -> Result<(), Errno> {
    ptrace(PTRACE_LISTEN, tid, 0, 0).map(drop)
}

pub(crate) fn detach(tid: i32, sig: i32) -> Result<(), Errno> {
    ptrace(PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

pub(crate) fn geteventmsg(tid: i32) -> Result<u64, Errno> {
    let mut msg: libc::c_ulong = 0;
    // The kernel writes one unsigned long to `data`.
    ptrace(
        PTRACE_GETEVENTMSG,
        tid,
        0,
        std::ptr::addr_of_mut!(msg) as usize,
    )?;
    Ok(msg as u64)
}

/// A word of the tracee's saved registers, at byte `offset` of the user area (the raw
/// call stores it at `data`, unlike glibc's wrapper, which returns it).
fn peek_user(tid: i32, offset: usize) -> Result<u64, Errno> {
    let mut word: u64 = 0;
    ptrace(
        PTRACE_PEEKUSER,
        tid,
        offset,
        std::ptr::addr_of_mut!(word) as usize,
    )?;
    Ok(word)
}

/// The call a stopped tracee is inside and will enter again when it runs on: a call a
/// signal cut short returns -ERESTARTSYS, -ERESTARTNOINTR or -ERESTARTNOHAND (512 to
/// 514), which the kernel turns into the same call again (same number and arguments)
/// when no handler runs, as after a stop. `None` if it is in no such call. (The
/// kernel stores a call's return as a 64-bit value for either ABI, so -512 is
/// sign-extended; a 64-bit call that returned 0xfffffe00 as a positive value is not
/// taken for it.)
pub(crate) fn restarting_call(tid: i32) -> Result<Option<u64>, Errno> {
    let ax = peek_user(tid, OFFSET_RAX)? as i64;
    let orig = peek_user(tid, OFFSET_ORIG_RAX)? as i64;
    let restarts = (-514..=-512).contains(&ax);
    Ok((orig >= 0 && restarts).then_some(orig as u64))
}

/// Makes the system call the tracee is entering not run: the kernel skips dispatch when
/// the number it is about to dispatch is -1 (and the return value is then whatever is
/// in rax at the exit stop).
pub(crate) fn skip_syscall(tid: i32) -> Result<(), Errno> {
    ptrace(PTRACE_POKEUSER, tid, OFFSET_ORIG_RAX, usize::MAX).map(drop)
}

/// Sets the return value of the call the tracee is leaving.
pub(crate) fn set_return(tid: i32, value: i64) -> Result<(), Errno> {
    ptrace(PTRACE_POKEUSER, tid, OFFSET_RAX, value as u64 as usize).map(drop)
}

/// `struct ptrace_syscall_info` (Linux 5.3). The union is laid out as its largest member
/// (seccomp: nr, six args, ret_data + padding); entry and exit views are read from it.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawSyscallInfo {
    op: u8,
    reserved: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    data: [u64; 8],
}

/// What a syscall-stop is, from `PTRACE_GET_SYSCALL_INFO`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SyscallInfo {
    Entry {
        arch: u32,
        nr: u64,
        args: [u64; 6],
    },
    Exit,
    /// Not a syscall-stop after all (op NONE or SECCOMP).
    Other,
}

pub(crate) fn get_syscall_info(tid: i32) -> Result<SyscallInfo, Errno> {
    let mut raw = RawSyscallInfo {
        op: 0,
        reserved: [0; 3],
        arch: 0,
        instruction_pointer: 0,
        stack_pointer: 0,
        data: [0; 8],
    };
    // `addr` is the buffer size; the kernel writes at most that many bytes to `data`.
    ptrace(
        PTRACE_GET_SYSCALL_INFO,
        tid,
        std::mem::size_of::<RawSyscallInfo>(),
        std::ptr::addr_of_mut!(raw) as usize,
    )?;
    Ok(match raw.op {
        PTRACE_SYSCALL_INFO_ENTRY => {
            let d = raw.data;
            SyscallInfo::Entry {
                arch: raw.arch,
                nr: d[0],
                args: [d[1], d[2], d[3], d[4], d[5], d[6]],
            }
        }
        PTRACE_SYSCALL_INFO_EXIT => SyscallInfo::Exit,
        _ => SyscallInfo::Other,
    })
}

/// `waitpid(-1, .., __WALL | __WNOTHREAD [| WNOHANG])`: the next state change of a tracee
/// of *this thread* (tracees belong to the thread that attached; `__WNOTHREAD` keeps
/// other threads' children and tracees out of it). `Ok(None)`: nothing yet (WNOHANG).
/// The status is the raw wait status, which carries the ptrace event in its high bits.
pub(crate) fn wait_any(nohang: bool) -> Result<Option<(i32, c_int)>, Errno> {
    use rustix::process::WaitOptions;
    // rustix names neither __WALL nor __WNOTHREAD; it passes unnamed flags through.
    let mut flags = WaitOptions::from_bits_retain((libc::__WALL | libc::__WNOTHREAD) as u32);
    if nohang {
        flags |= WaitOptions::NOHANG;
    }
    match rustix::process::wait(flags) {
        Ok(None) => Ok(None),
        Ok(Some((pid, status))) => Ok(Some((pid.as_raw_nonzero().get(), status.as_raw()))),
        Err(e) => Err(Errno(e.raw_os_error())),
    }
}

pub(crate) fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

pub(crate) fn sched_yield() {
    // std's yield_now is sched_yield(2) on Linux.
    std::thread::yield_now();
}
