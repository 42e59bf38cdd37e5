//! System call tables: number -> name and name -> number for the architectures whose
//! traces homeostat reads.
//!
//! The tables come from the maintained `syscalls` crate (generated from the kernel's
//! `syscall_64.tbl` / `syscall_32.tbl`), so nothing here is hand-copied. Numbers that
//! an architecture does not define are never dropped: they print as `#<number>` and
//! parse back from that form, so a trace with an unknown number round-trips.
//!
//! It is also the one place for the facts about calls that the capture front ends
//! (seccomp, ptrace, the daemon) and the monitor act on: the `AUDIT_ARCH_*` values the
//! kernel reports, and which numbers are execve, exit, exit_group and the clone family
//! in each ABI ([`call_kind`], [`Arch::is_execve`]).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The instruction-set ABI a trace was recorded on; it decides how numbers map to names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit x86 (`syscall_64.tbl`), the default for live capture on this project's hosts.
    #[default]
    X86_64,
    /// 32-bit x86 (`syscall_32.tbl`); ADFA-LD was recorded on it.
    I386,
}

/// An architecture name that [`Arch::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown architecture {0:?} (expected x86_64 or i386)")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" | "x64" => Ok(Arch::X86_64),
            "i386" | "i686" | "x86" | "ia32" => Ok(Arch::I386),
            _ => Err(UnknownArch(s.to_string())),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Arch {
    /// The canonical lower-case name, as written in profile and recording headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I386 => "i386",
        }
    }

    /// The architecture this binary runs on, if it is one we have a table for.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "x86") {
            Some(Arch::I386)
        } else {
            None
        }
    }

    /// The kernel's name for system call `nr`, or `None` when this ABI has no such call.
    pub fn name(self, nr: u32) -> Option<&'static str> {
        let nr = usize::try_from(nr).ok()?;
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::new(nr).map(|s| s.name()),
            Arch::I386 => syscalls::x86::Sysno::new(nr).map(|s| s.name()),
        }
    }

    /// The number of the system call called `name` on this ABI.
    ///
    /// Accepts the `#<number>` form that [`Arch::display`] prints for unknown numbers,
    /// and strace's `syscall_<number>` / `syscall_0x<hex>` form for calls it cannot name.
    pub fn number(self, name: &str) -> Option<u32> {
        if let Some(n) = parse_numeric_name(name) {
            return Some(n);
        }
        let id = match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
            Arch::I386 => syscalls::x86::Sysno::from_str(name).ok()?.id(),
        };
        u32::try_from(id).ok()
    }

    /// A printable name for `nr`: the kernel's name, or `#<nr>` when it has none.
    pub fn display(self, nr: u32) -> Cow<'static, str> {
        match self.name(nr) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("#{nr}")),
        }
    }

    /// The highest system call number the table defines.
    pub fn max_number(self) -> u32 {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::last().id() as u32,
            Arch::I386 => syscalls::x86::Sysno::last().id() as u32,
        }
    }
}

/// `AUDIT_ARCH_X86_64`: what seccomp and `PTRACE_GET_SYSCALL_INFO` report for a 64-bit
/// (or x32) call.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`: a call made through the 32-bit ABI (`int 0x80`), whose numbers
/// mean other calls than the same numbers in 64-bit mode.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// Set in the number of x32-ABI calls (which report `AUDIT_ARCH_X86_64`).
pub const X32_BIT: u32 = 0x4000_0000;

/// What the capture front ends must know about a call to keep their bookkeeping right
/// (which executable a task runs, which tasks exist) and to refuse execve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// execve or execveat: the task may run another executable afterwards.
    Exec,
    /// exit: this thread ends.
    Exit,
    /// exit_group: every thread of the process ends.
    ExitGroup,
    /// clone, clone3, fork or vfork: a task may be created.
    Clone,
    /// Anything else.
    Other,
}

mod nr64 {
    use syscalls::x86_64::Sysno;
    pub const EXECVE: u32 = Sysno::execve as u32;
    pub const EXECVEAT: u32 = Sysno::execveat as u32;
    pub const EXIT: u32 = Sysno::exit as u32;
    pub const EXIT_GROUP: u32 = Sysno::exit_group as u32;
    pub const CLONE: u32 = Sysno::clone as u32;
    pub const FORK: u32 = Sysno::fork as u32;
    pub const VFORK: u32 = Sysno::vfork as u32;
    pub const CLONE3: u32 = Sysno::clone3 as u32;
    /// x32 has its own execve and execveat (they take 32-bit pointer arrays); the rest
    /// share the 64-bit numbers (syscall_64.tbl, "x32" rows).
    pub const X32_EXECVE: u32 = 520;
    pub const X32_EXECVEAT: u32 = 545;
}

mod nr32 {
    use syscalls::x86::Sysno;
    pub const EXECVE: u32 = Sysno::execve as u32;
    pub const EXECVEAT: u32 = Sysno::execveat as u32;
    pub const EXIT: u32 = Sysno::exit as u32;
    pub const EXIT_GROUP: u32 = Sysno::exit_group as u32;
    pub const CLONE: u32 = Sysno::clone as u32;
    pub const FORK: u32 = Sysno::fork as u32;
    pub const VFORK: u32 = Sysno::vfork as u32;
    pub const CLONE3: u32 = Sysno::clone3 as u32;
}

impl Arch {
    /// The `AUDIT_ARCH_*` value the kernel reports for this ABI.
    pub fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::I386 => AUDIT_ARCH_I386,
        }
    }

    /// The ABI of an `AUDIT_ARCH_*` value, if it is one of ours.
    pub fn from_audit_arch(audit_arch: u32) -> Option<Arch> {
        match audit_arch {
            AUDIT_ARCH_X86_64 => Some(Arch::X86_64),
            AUDIT_ARCH_I386 => Some(Arch::I386),
            _ => None,
        }
    }

    /// What call `nr` of this ABI is, for the front ends' bookkeeping.
    pub fn call_kind(self, nr: u32) -> CallKind {
        match self {
            Arch::X86_64 => match nr {
                nr64::EXECVE | nr64::EXECVEAT => CallKind::Exec,
                nr64::EXIT => CallKind::Exit,
                nr64::EXIT_GROUP => CallKind::ExitGroup,
                nr64::CLONE | nr64::FORK | nr64::VFORK | nr64::CLONE3 => CallKind::Clone,
                _ => CallKind::Other,
            },
            Arch::I386 => match nr {
                nr32::EXECVE | nr32::EXECVEAT => CallKind::Exec,
                nr32::EXIT => CallKind::Exit,
                nr32::EXIT_GROUP => CallKind::ExitGroup,
                nr32::CLONE | nr32::FORK | nr32::VFORK | nr32::CLONE3 => CallKind::Clone,
                _ => CallKind::Other,
            },
        }
    }

    /// Whether `nr` is execve or execveat in this ABI (the calls pH refuses).
    pub fn is_execve(self, nr: u32) -> bool {
        self.call_kind(nr) == CallKind::Exec
    }
}

/// What a call reported by seccomp or ptrace is: `(AUDIT_ARCH_*, number)`, x32 calls
/// (number with [`X32_BIT`]) included. Unknown ABIs are [`CallKind::Other`].
pub fn call_kind(audit_arch: u32, nr: u32) -> CallKind {
    match audit_arch {
        AUDIT_ARCH_X86_64 if nr & X32_BIT != 0 => match nr & !X32_BIT {
            nr64::X32_EXECVE | nr64::X32_EXECVEAT => CallKind::Exec,
            n @ (nr64::EXIT
            | nr64::EXIT_GROUP
            | nr64::CLONE
            | nr64::FORK
            | nr64::VFORK
            | nr64::CLONE3) => Arch::X86_64.call_kind(n),
            _ => CallKind::Other,
        },
        AUDIT_ARCH_X86_64 => Arch::X86_64.call_kind(nr),
        AUDIT_ARCH_I386 => Arch::I386.call_kind(nr),
        _ => CallKind::Other,
    }
}

fn parse_numeric_name(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix('#') {
        return rest.parse().ok();
    }
    let rest = name.strip_prefix("syscall_")?;
    match rest.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => rest.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i386_numbers_match_adfa_source_notes() {
        // The ADFA-LD SOURCE.md lists these from syscall_32.tbl.
        for (nr, name) in [
            (3, "read"),
            (4, "write"),
            (5, "open"),
            (6, "close"),
            (11, "execve"),
            (102, "socketcall"),
            (192, "mmap2"),
            (240, "futex"),
            (252, "exit_group"),
        ] {
            assert_eq!(Arch::I386.name(nr), Some(name));
            assert_eq!(Arch::I386.number(name), Some(nr));
        }
    }

    #[test]
    fn x86_64_core_calls() {
        assert_eq!(Arch::X86_64.name(0), Some("read"));
        assert_eq!(Arch::X86_64.name(59), Some("execve"));
        assert_eq!(Arch::X86_64.number("openat"), Some(257));
        assert_eq!(Arch::X86_64.number("no_such_call"), None);
    }

    #[test]
    fn unknown_numbers_round_trip() {
        let shown = Arch::X86_64.display(9999);
        assert_eq!(shown, "#9999");
        assert_eq!(Arch::X86_64.number(&shown), Some(9999));
        assert_eq!(Arch::X86_64.number("syscall_0x1b4"), Some(0x1b4));
        assert_eq!(Arch::I386.number("syscall_500"), Some(500));
    }

    #[test]
    fn call_kinds_match_the_kernel_tables() {
        // The numbers the launcher and the daemon used before these facts lived here.
        for (arch, nr, kind) in [
            (AUDIT_ARCH_X86_64, 59, CallKind::Exec),
            (AUDIT_ARCH_X86_64, 322, CallKind::Exec),
            (AUDIT_ARCH_X86_64, 60, CallKind::Exit),
            (AUDIT_ARCH_X86_64, 231, CallKind::ExitGroup),
            (AUDIT_ARCH_X86_64, 56, CallKind::Clone),
            (AUDIT_ARCH_X86_64, 57, CallKind::Clone),
            (AUDIT_ARCH_X86_64, 58, CallKind::Clone),
            (AUDIT_ARCH_X86_64, 435, CallKind::Clone),
            (AUDIT_ARCH_X86_64, 0, CallKind::Other),
            (AUDIT_ARCH_X86_64, X32_BIT | 520, CallKind::Exec),
            (AUDIT_ARCH_X86_64, X32_BIT | 545, CallKind::Exec),
            (AUDIT_ARCH_X86_64, X32_BIT | 59, CallKind::Other),
            (AUDIT_ARCH_X86_64, X32_BIT | 60, CallKind::Exit),
            (AUDIT_ARCH_X86_64, X32_BIT | 231, CallKind::ExitGroup),
            (AUDIT_ARCH_X86_64, X32_BIT | 435, CallKind::Clone),
            (AUDIT_ARCH_I386, 11, CallKind::Exec),
            (AUDIT_ARCH_I386, 358, CallKind::Exec),
            (AUDIT_ARCH_I386, 1, CallKind::Exit),
            (AUDIT_ARCH_I386, 252, CallKind::ExitGroup),
            (AUDIT_ARCH_I386, 2, CallKind::Clone),
            (AUDIT_ARCH_I386, 120, CallKind::Clone),
            (AUDIT_ARCH_I386, 190, CallKind::Clone),
            (AUDIT_ARCH_I386, 435, CallKind::Clone),
            (AUDIT_ARCH_I386, 59, CallKind::Other),
            (0x1234, 59, CallKind::Other),
        ] {
            assert_eq!(call_kind(arch, nr), kind, "arch {arch:#x} nr {nr:#x}");
        }
        assert!(Arch::X86_64.is_execve(322) && !Arch::X86_64.is_execve(11));
        assert!(Arch::I386.is_execve(11) && !Arch::I386.is_execve(59));
        for a in [Arch::X86_64, Arch::I386] {
            assert_eq!(Arch::from_audit_arch(a.audit_arch()), Some(a));
        }
        assert_eq!(Arch::from_audit_arch(0), None);
    }

    #[test]
    fn arch_names_parse() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("i686".parse::<Arch>().unwrap(), Arch::I386);
        assert!("sparc".parse::<Arch>().is_err());
    }
}
