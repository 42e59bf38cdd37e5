//! Running a program under a seccomp allow-list (what `homeostat profile
//! export-seccomp` writes): the filter is loaded into this process, then the program is
//! executed and inherits it, with everything it starts.
//!
//! The filter is the plain kind (no listener): the kernel enforces it alone, so it
//! outlives any monitor. Loading needs no privilege once `no_new_privs` is set, which
//! also keeps setuid programs from shedding it.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::sys::last_errno;

/// One classic BPF instruction: (code, jt, jf, k), as in `struct sock_filter`.
pub type Insn = (u16, u8, u8, u32);

/// Loads `filter` into the calling process and executes `argv` under it (PATH is
/// searched). Returns only on failure; the filter may already be loaded then, so the
/// caller should do no more than report and exit.
pub fn exec_filtered(filter: &[Insn], argv: &[OsString]) -> io::Error {
    let Some(first) = argv.first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no command");
    };
    // Everything allocated before the filter: the program may not allow brk or mmap.
    let Ok(args) = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the command");
    };
    let Ok(file) = CString::new(first.as_bytes()) else {
        return io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the command");
    };
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut insns: Vec<libc::sock_filter> = filter
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let Ok(len) = u16::try_from(insns.len()) else {
        return io::Error::new(io::ErrorKind::InvalidInput, "filter too long");
    };
    let prog = libc::sock_fprog {
        len,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return io::Error::from_raw_os_error(last_errno());
    }
    // SAFETY: `prog` points at `insns`, which lives until after the call; the kernel
    // copies and verifies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return io::Error::from_raw_os_error(last_errno());
    }
    // SAFETY: `file` and the NULL-terminated `ptrs` point into `args`/`file`, alive
    // for the call; execvp returns only on failure.
    unsafe { libc::execvp(file.as_ptr(), ptrs.as_ptr()) };
    io::Error::from_raw_os_error(last_errno())
}
