//! The argument that matters of a held call, read by the monitor before it answers:
//! the capture half of argument-aware symbols (docs/arguments.md). The registers come
//! with the call (seccomp notification or ptrace stop); strings and socket addresses
//! are read from the caller's memory ([`homeostat_proc::mem`]); the core's
//! [`homeostat_core::symbols`] says which argument of which call matters and turns it
//! into a class.
//!
//! Cost: nothing for the calls without an argument spec (most calls); for the others,
//! an open and one or two preads of /proc/PID/mem, plus a readlink of the cwd for a
//! relative path. Only consumers that want arguments (the recorder) pay it.

use homeostat_core::symbols::{self, flags, Arg, ArgSpec, Target};
use homeostat_proc::mem::{self, Memory, MAX_STRING};
use homeostat_syscalls::Arch;

/// `AT_FDCWD` as the kernel sees it in a register (an `int`).
const AT_FDCWD: i32 = -100;
/// Longest socket address read (`sizeof(struct sockaddr_storage)`).
const MAX_SOCKADDR: usize = 128;

/// The [`Arg`] of call `nr` (x86_64 numbering; i386 calls get none) made by task
/// `tid` of process `pid` with registers `regs`; `None` when the call has no argument
/// that matters or it cannot be read (a bad pointer, a task that is gone).
pub fn capture(pid: i32, tid: i32, arch: Arch, nr: u32, regs: &[u64; 6]) -> Option<Arg> {
    if arch != Arch::X86_64 {
        return None;
    }
    let spec = symbols::arg_spec(Arch::X86_64.name(nr)?)?;
    let int = |i: usize| regs[i] as i32;
    let path_at = |dirfd: Option<usize>, path: usize| -> Option<Vec<u8>> {
        let m = Memory::open(tid).ok()?;
        let p = m.string(regs[path], MAX_STRING).ok()?;
        if p.first() == Some(&b'/') {
            return Some(symbols::resolve(b"/", &p));
        }
        let base = match dirfd.map(int) {
            None | Some(AT_FDCWD) => mem::cwd(tid),
            Some(fd) => mem::fd_path(pid, fd),
        };
        Some(match base {
            Some(b) => symbols::resolve(b.as_os_str().as_encoded_bytes(), &p),
            None => p,
        })
    };
    match spec {
        ArgSpec::Exec { dirfd, path } => Some(Arg::Exec {
            path: path_at(dirfd, path)?,
        }),
        ArgSpec::Path {
            dirfd,
            path,
            flags: f,
            creat,
        } => {
            let mut bits = f.map_or(0, |i| flags::of_open(regs[i]));
            if creat {
                bits |= flags::CREATE | flags::WRITE;
            }
            Some(Arg::Path {
                path: path_at(dirfd, path)?,
                flags: bits,
            })
        }
        ArgSpec::Sockaddr { addr, len } => {
            if regs[addr] == 0 {
                return None;
            }
            let n = usize::try_from(regs[len]).ok()?.min(MAX_SOCKADDR);
            let bytes = Memory::open(tid).ok()?.read(regs[addr], n).ok()?;
            symbols::sockaddr(&bytes)
        }
        ArgSpec::Pid { pid: i } => Some(Arg::Target(Target::of_pid(
            i64::from(int(i)),
            i64::from(pid),
        ))),
        ArgSpec::Ptrace => {
            const PTRACE_TRACEME: u64 = 0;
            (regs[0] != PTRACE_TRACEME)
                .then(|| Arg::Target(Target::of_pid(i64::from(int(1)), i64::from(pid))))
        }
        ArgSpec::Prot { prot } => Some(Arg::Prot {
            exec: regs[prot] & flags::PROT_EXEC != 0,
        }),
    }
}
