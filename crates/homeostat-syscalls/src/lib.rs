//! System call tables: number -> name and name -> number for the architectures whose
//! traces homeostat reads.
//!
//! The tables come from the maintained `syscalls` crate (generated from the kernel's
//! `syscall_64.tbl` / `syscall_32.tbl`), so nothing here is hand-copied. Numbers that
//! an architecture does not define are never dropped: they print as `#<number>` and
//! parse back from that form, so a trace with an unknown number round-trips.
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
    fn arch_names_parse() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("i686".parse::<Arch>().unwrap(), Arch::I386);
        assert!("sparc".parse::<Arch>().is_err());
    }
}
