//! Reading a held call's arguments out of the caller's memory, for argument-aware
//! symbols (docs/arguments.md).
//!
//! A notified (or ptrace-stopped) call's registers hold pointers; the path of an open
//! or the address of a connect lives in the caller's memory. It is read through
//! `/proc/PID/mem` with `pread`, so this crate stays free of unsafe code: the kernel
//! checks that the reader may ptrace the task (the launcher and the attach are its
//! tracer or its ancestor with the same credentials, or root).
//!
//! Every read is capped ([`MAX_STRING`], the caller's length), and stops at page ends
//! so a string that ends just before an unmapped page still reads. What is read is a
//! copy taken *before* the call runs: another thread of the caller can change the
//! memory between this read and the kernel's own (time of check, time of use), so the
//! result is good for detection and must never be used to decide that a path is safe
//! to open. The seccomp front end must also confirm, after reading, that the
//! notification is still valid (`SECCOMP_IOCTL_NOTIF_ID_VALID`): if the task died
//! meanwhile, its pid may already name another process whose memory was read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Longest string read (PATH_MAX, counting the NUL).
pub const MAX_STRING: usize = 4096;
const PAGE: u64 = 4096;

/// An open handle on a task's memory, for several reads of one call.
pub struct Memory(File);

impl Memory {
    /// Opens `/proc/TID/mem`.
    pub fn open(tid: i32) -> io::Result<Memory> {
        File::open(format!("/proc/{tid}/mem")).map(Memory)
    }

    /// Up to `len` bytes at `addr` (fewer when the range runs into unmapped memory).
    pub fn read(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let at = addr
                .checked_add(got as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
            let to_page_end = (PAGE - at % PAGE) as usize;
            let want = (len - got).min(to_page_end);
            match self.0.read_at(&mut out[got..got + want], at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if got > 0 => {
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        out.truncate(got);
        Ok(out)
    }

    /// The NUL-terminated string at `addr`, at most `cap` bytes (longer strings are
    /// cut: their prefix is what classes use).
    pub fn string(&self, addr: u64, cap: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < cap {
            let chunk = ((PAGE - at % PAGE) as usize).min(cap - out.len()).min(256);
            let b = self.read(at, chunk)?;
            if let Some(nul) = b.iter().position(|&c| c == 0) {
                out.extend_from_slice(&b[..nul]);
                return Ok(out);
            }
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
            at = at
                .checked_add(b.len() as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
        }
        Ok(out)
    }
}

/// The current directory of task `tid` (what relative paths resolve against).
pub fn cwd(tid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{tid}/cwd")).ok()
}

/// What file descriptor `fd` of process `pid` names (a dirfd of an `*at` call).
pub fn fd_path(pid: i32, fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_strings_and_stops_at_the_cap_and_bad_addresses() {
        let me = std::process::id() as i32;
        let m = Memory::open(me).unwrap();
        let s = b"/srv/www/notes/a\0tail".to_vec();
        let addr = s.as_ptr() as u64;
        assert_eq!(m.string(addr, MAX_STRING).unwrap(), b"/srv/www/notes/a");
        assert_eq!(m.string(addr, 4).unwrap(), b"/srv");
        assert_eq!(m.read(addr + 17, 4).unwrap(), b"tail");
        // A long string crossing pages.
        let long = vec![b'x'; 10_000];
        assert_eq!(m.string(long.as_ptr() as u64, 5000).unwrap().len(), 5000);
        assert!(m.string(0, 16).is_err() || m.string(0, 16).unwrap().is_empty());
        assert!(cwd(me).is_some());
        assert!(cwd(-3).is_none());
        assert!(Memory::open(-3).is_err());
    }
}
