//! What homeostat's integration tests share: they run real programs under real kernel
//! mechanisms (seccomp, ptrace, BPF), which brings the same few problems to every test
//! file. Used as a dev-dependency only.
#![forbid(unsafe_code)]

pub mod daemon;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Spawns, retrying while the executable is "busy": a private copy written by one test
/// can still be open for writing in a child another test thread forked meanwhile
/// (until that child's exec closes it), which makes exec fail with ETXTBSY. Panics on
/// any other error, or if the file is still busy after 2 s.
pub fn spawn(cmd: &mut Command) -> Child {
    for _ in 0..100 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
    panic!("executable still busy after 2 s")
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test binary's one lock: for tests that must not overlap (tracing, timing,
/// or counting processes). A test that panicked while holding it does not poison it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this process runs as root (the BPF and ptrace tests need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `path` with its links resolved (as /proc/PID/exe names it), or as given if it
/// cannot be resolved.
pub fn real(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

/// x86_64 call numbers the tests look for, from the kernel's table (the `syscalls`
/// crate), not written by hand.
pub mod nr {
    use syscalls::x86_64::Sysno;

    pub const EXECVE: u32 = Sysno::execve as u32;
    pub const MKDIR: u32 = Sysno::mkdir as u32;
    pub const MKDIRAT: u32 = Sysno::mkdirat as u32;
    pub const OPENAT: u32 = Sysno::openat as u32;
}

/// Where ADFA-LD is: `$HOMEOSTAT_ADFA_DIR`, else `../shared/datasets/ADFA-LD` beside the
/// checkout. `None`, with the reason printed, when it is absent, so a test that needs
/// it says that it skips instead of passing silently.
pub fn adfa_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HOMEOSTAT_ADFA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ADFA-LD")
        });
    if dir.join("Training_Data_Master").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: ADFA-LD not found at {} (set HOMEOSTAT_ADFA_DIR)",
            dir.display()
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_x86_64_ones() {
        assert_eq!(
            (nr::EXECVE, nr::MKDIR, nr::MKDIRAT, nr::OPENAT),
            (59, 83, 258, 257)
        );
    }

    #[test]
    fn spawn_runs_the_command() {
        let st = spawn(Command::new("true").arg("x")).wait().unwrap();
        assert!(st.success());
    }
}
