//! What every capture mechanism (seccomp launcher, ptrace attach) needs to know about a
//! task beyond its call number: which executable it runs (the key of its pH profile),
//! its thread group and parent, its state; and errno values that print like the shell's.
//! Read once per task (and once per exec), never per call. Also the type both front
//! ends report a held call as, and the answer they apply (`call`).
#![forbid(unsafe_code)]

mod call;
pub mod mem;

pub use call::{Action, Call};

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// An executable, identified by device and inode (what homeostat keys profiles on) and
/// named by the path the kernel reports for `/proc/PID/exe`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Exe {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Its path when read.
    pub path: PathBuf,
    /// Its birth time (ns since the epoch), when the file system reports one: a later
    /// file that reuses the inode number is born later (`PhProfile::check_file`).
    pub born: Option<u64>,
}

impl Exe {
    /// What is reported when /proc could not be read for a live task (dev = ino = 0).
    pub fn unknown() -> Exe {
        Exe {
            dev: 0,
            ino: 0,
            path: PathBuf::new(),
            born: None,
        }
    }
}

/// What /proc/TID/exe names now; [`Exe::unknown`] if it cannot be read (a kernel
/// thread, a task that just died).
pub fn exe(tid: i32) -> Exe {
    let link = format!("/proc/{tid}/exe");
    match (std::fs::metadata(&link), std::fs::read_link(&link)) {
        (Ok(md), Ok(path)) => Exe {
            dev: md.dev(),
            ino: md.ino(),
            path,
            born: birth_time(&md),
        },
        _ => Exe::unknown(),
    }
}

/// A file's birth time (ns since the epoch), when its file system reports one
/// (`statx` btime): what tells a file from a later one reusing its inode number
/// (`PhProfile::check_file`).
pub fn birth_time(md: &std::fs::Metadata) -> Option<u64> {
    let t = md.created().ok()?;
    u64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

/// A numeric field of /proc/TID/status, by its label (`"Tgid:"`, `"PPid:"`,
/// `"TracerPid:"`); `None` if the task is gone.
pub fn status_field(tid: i32, label: &str) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(label))?
        .trim()
        .parse()
        .ok()
}

/// Field `n` (1-based, as numbered in proc(5)) of /proc/TID/stat, for `n >= 3`: the
/// fields after the command name, which may itself hold spaces and parentheses.
pub fn stat_field(tid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read(format!("/proc/{tid}/stat")).ok()?;
    let close = stat.iter().rposition(|&c| c == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace()
        .nth(n.checked_sub(3)?)
        .map(str::to_string)
}

/// An `errno` value. `Display` gives the C library's text ("No such process") without
/// Rust's " (os error N)" suffix, so messages read like the shell's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        let text = match text.rfind(" (os error ") {
            Some(cut) => &text[..cut],
            None => &text[..],
        };
        f.write_str(text)
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        assert_eq!(status_field(me, "Tgid:"), Some(i64::from(me)));
        // The test thread itself is running; the main thread may be asleep.
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: i32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(stat_field(tid, 3).as_deref(), Some("R"));
        assert_eq!(
            stat_field(me, 4).and_then(|p| p.parse::<i64>().ok()),
            status_field(me, "PPid:")
        );
        let e = exe(me);
        assert_ne!(e.ino, 0);
        assert_eq!(e.path, std::env::current_exe().unwrap());
        assert_eq!(exe(-5), Exe::unknown());
        assert_eq!(stat_field(-5, 3), None);
    }

    #[test]
    fn errno_reads_like_the_shell() {
        assert_eq!(Errno(3).to_string(), "No such process");
    }
}
