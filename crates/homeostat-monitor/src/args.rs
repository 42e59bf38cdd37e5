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

/// A socket call as the x86_64 ABI makes it: its name and argument registers.
pub type SocketCall = (&'static str, [u64; 6]);

/// A socket call of either ABI as the x86_64 ABI makes it: its name and argument
/// registers. An i386 call's registers hold 32-bit values; an i386 `socketcall(call,
/// args)` passes the socket call's arguments as 32-bit words in the caller's memory
/// (read here, from task `tid`). `None` for an x86_64 call with no name, for any i386
/// call but a socket call, and when socketcall's arguments cannot be read. What the
/// connection throttle looks at, whichever way a program connects.
pub fn socket_call(tid: i32, arch: Arch, nr: u32, regs: &[u64; 6]) -> Option<SocketCall> {
    let name = arch.name(nr)?;
    if arch == Arch::X86_64 {
        return Some((name, *regs));
    }
    let low = regs.map(|r| r & 0xffff_ffff);
    if name != "socketcall" {
        // i386's direct socket calls (connect is 362, ...) take their arguments in
        // registers, as x86_64's do.
        let socket = (1..=20).any(|c| symbols::socketcall(c).is_some_and(|(n, _)| n == name));
        return socket.then_some((name, low));
    }
    let (call, words) = symbols::socketcall(low[0])?;
    let bytes = Memory::open(tid).ok()?.read(low[1], 4 * words).ok()?;
    let mut args = [0u64; 6];
    for (a, w) in args.iter_mut().zip(bytes.chunks_exact(4)) {
        *a = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    Some((call, args))
}

/// The address a call that opens a connection connects to, whichever way it does
/// ([`symbols::opens_connection`]: a connect, or TCP Fast Open by `sendto` or
/// `sendmsg`, of either ABI): `None` when call `nr` opens none; `Some(None)` when it
/// does but its address cannot be read. `captured`: the call's [`capture_call`], if
/// the caller has it (saves reading socketcall's words and the address again). The
/// throttle's one question, for `homeostat run` and the daemon's response thread
/// alike.
pub fn connection(
    pid: i32,
    tid: i32,
    arch: Arch,
    nr: u32,
    regs: &[u64; 6],
    captured: Option<&Captured>,
) -> Option<Option<Arg>> {
    let (name, args) = match captured.and_then(|c| c.socket.as_deref().copied()) {
        Some(sc) => sc,
        None => socket_call(tid, arch, nr, regs)?,
    };
    let flags = symbols::connection_flags(name).map(|i| args[i]);
    if !symbols::opens_connection(name, flags) {
        return None;
    }
    if symbols::address_in_msghdr(name) {
        return Some(msg_name(tid, arch, args[1]));
    }
    if let Some(arg) = captured.and_then(|c| c.arg.as_ref()) {
        return Some(Some(arg.clone()));
    }
    Some(match symbols::arg_spec(name) {
        Some(spec @ ArgSpec::Sockaddr { .. }) => capture_spec(pid, tid, spec, &args),
        _ => None,
    })
}

/// The address in the `msghdr` at `msg` (its `msg_name`, `msg_namelen`), in the
/// layout of ABI `arch` (i386's: two 32-bit words).
fn msg_name(tid: i32, arch: Arch, msg: u64) -> Option<Arg> {
    let m = Memory::open(tid).ok()?;
    let (name, len) = if arch == Arch::X86_64 {
        let b = m.read(msg, 12).ok()?;
        let name = u64::from_le_bytes(b[..8].try_into().ok()?);
        (name, u32::from_le_bytes(b[8..12].try_into().ok()?))
    } else {
        let b = m.read(msg, 8).ok()?;
        let name = u32::from_le_bytes(b[..4].try_into().ok()?);
        (
            u64::from(name),
            u32::from_le_bytes(b[4..8].try_into().ok()?),
        )
    };
    if name == 0 {
        return None;
    }
    let bytes = m.read(name, (len as usize).min(MAX_SOCKADDR)).ok()?;
    symbols::sockaddr(&bytes)
}

/// The [`Arg`] of call `nr` made by task `tid` of process `pid` with registers
/// `regs`; `None` when the call has no argument that matters or it cannot be read (a
/// bad pointer, a task that is gone). i386 calls get one for their socket calls
/// ([`socket_call`]; the throttle) and their path calls (the rate limits read an
/// open's flags): the pH symbols use x86_64's arguments alone
/// ([`crate::engine::symbol_arg`]).
pub fn capture(pid: i32, tid: i32, arch: Arch, nr: u32, regs: &[u64; 6]) -> Option<Arg> {
    capture_call(pid, tid, arch, nr, regs).arg
}

/// What [`capture_call`] read of a call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captured {
    /// The argument that matters ([`capture`]).
    pub arg: Option<Arg>,
    /// An i386 socket call as x86_64 makes it ([`socket_call`]): socketcall's
    /// argument words are in memory, read once here for every later question (boxed:
    /// rare, and every call event carries the field).
    pub socket: Option<Box<SocketCall>>,
}

/// [`capture`], keeping an i386 socket call's decoded arguments.
pub fn capture_call(pid: i32, tid: i32, arch: Arch, nr: u32, regs: &[u64; 6]) -> Captured {
    if arch == Arch::X86_64 {
        return Captured {
            arg: Arch::X86_64
                .name(nr)
                .and_then(symbols::arg_spec)
                .and_then(|spec| capture_spec(pid, tid, spec, regs)),
            socket: None,
        };
    }
    let socket = socket_call(tid, arch, nr, regs);
    Captured {
        arg: capture_i386(pid, tid, arch, nr, regs, socket),
        socket: socket.map(Box::new),
    }
}

/// An i386 call's argument: its socket call's address, or a path.
fn capture_i386(
    pid: i32,
    tid: i32,
    arch: Arch,
    nr: u32,
    regs: &[u64; 6],
    socket: Option<SocketCall>,
) -> Option<Arg> {
    if let Some((name, args)) = socket {
        return match symbols::arg_spec(name)? {
            spec @ ArgSpec::Sockaddr { .. } => capture_spec(pid, tid, spec, &args),
            _ => None,
        };
    }
    // i386's path calls (open, openat, creat, ...) take their arguments in registers
    // in x86_64's order; not so every call (its old mmap takes a struct), hence paths
    // alone.
    match symbols::arg_spec(arch.name(nr)?)? {
        spec @ ArgSpec::Path { .. } => capture_spec(pid, tid, spec, &regs.map(|r| r & 0xffff_ffff)),
        _ => None,
    }
}

/// The argument `spec` names, of a call with (x86_64-style) registers `regs`.
fn capture_spec(pid: i32, tid: i32, spec: ArgSpec, regs: &[u64; 6]) -> Option<Arg> {
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
