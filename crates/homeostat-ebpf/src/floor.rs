//! Feature `floor`: a daemon whose sys_enter hook can be swapped, while it runs,
//! between the real program and one that returns at once (the price of the tracepoint
//! alone, which every eBPF syscall monitor pays). A floor build starts at the floor.
//!
//! Why a swap inside one daemon: comparing a real daemon with a floor daemon started
//! minutes later compares two moments of a noisy machine, and this machine's run-to-run
//! spread (5–15 %) is larger than the cost being measured. With the swap, a benchmark
//! times each run under the real program beside one under the floor a moment apart
//! (`scripts/bench-daemon.sh`, `PAIRS`), through [`Kernel::set_floor`] and the control
//! request behind `homeostat hook`.
//!
//! Why attach and detach rather than a flag the program reads: the real program stays
//! the one a release build runs, instruction for instruction; a flag would add a load
//! to every call of the thing being measured.
//!
//! The skeleton is gone once loading is done (only links and fds are kept), so
//! attaching later goes through the programs' fds and libbpf's
//! `bpf_raw_tracepoint_open`, the call libbpf's own attach makes for these
//! programs.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use libbpf_rs::libbpf_sys;

use crate::error::load_error;
use crate::{Error, Hook, Kernel};

/// The attached programs' links (closing one detaches its program), in the order
/// they are detached in: sys_enter first.
struct Attached {
    floor: bool,
    /// Held to be closed: never read.
    _sys_enter: OwnedFd,
}

/// The two sys_enter programs.
pub(crate) struct Switch {
    hook: Hook,
    real: OwnedFd,
    floor: OwnedFd,
    attached: Mutex<Attached>,
}

impl Switch {
    /// Keeps the programs (fds duplicated) and attaches the floor.
    pub(crate) fn new(
        hook: Hook,
        real: BorrowedFd<'_>,
        floor: BorrowedFd<'_>,
    ) -> Result<Self, Error> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| load_error("floor: duplicate a program fd", e.into()))
        };
        let (real, floor) = (dup(real)?, dup(floor)?);
        let sys_enter = attach(sys_enter_name(hook), floor.as_fd())?;
        Ok(Switch {
            hook,
            real,
            floor,
            attached: Mutex::new(Attached {
                floor: true,
                _sys_enter: sys_enter,
            }),
        })
    }

    /// Attaches the floor (`true`) or the real program. The new program is attached
    /// before the old is detached: no call goes unhooked in between (both run for the
    /// calls made in that instant).
    pub(crate) fn set(&self, floor: bool) -> Result<(), Error> {
        let mut at = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if at.floor == floor {
            return Ok(());
        }
        let name = sys_enter_name(self.hook);
        let new = Attached {
            floor,
            _sys_enter: attach(
                name,
                if floor {
                    self.floor.as_fd()
                } else {
                    self.real.as_fd()
                },
            )?,
        };
        // The old link's fd is closed here, which detaches its program.
        *at = new;
        Ok(())
    }

    pub(crate) fn at_floor(&self) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .floor
    }

    /// The floor program's fd (for its id, in the run-time counters).
    pub(crate) fn floor_fd(&self) -> BorrowedFd<'_> {
        self.floor.as_fd()
    }
}

/// A tp_btf program names its tracepoint through the BTF id it was loaded with (no
/// name), a raw_tp program by name.
fn sys_enter_name(hook: Hook) -> Option<&'static CStr> {
    match hook {
        Hook::TpBtf => None,
        Hook::RawTp => Some(c"sys_enter"),
    }
}

/// BPF_RAW_TRACEPOINT_OPEN of `prog` on the tracepoint `name` (see
/// `sys_enter_name`).
fn attach(name: Option<&CStr>, prog: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    let name = name.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `name` is null or a NUL-terminated string that outlives the call;
    // `prog` is an open program fd borrowed for the call. libbpf returns a new fd
    // or a negative errno and keeps neither argument.
    let fd = unsafe { libbpf_sys::bpf_raw_tracepoint_open(name, prog.as_raw_fd()) };
    if fd < 0 {
        let err = libbpf_rs::Error::from_raw_os_error(-fd);
        return Err(load_error("floor: attach", err));
    }
    // SAFETY: a non-negative return is a new link fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Kernel {
    /// In a floor build (feature `floor`), swaps the sys_enter hook between the real
    /// program (`false`) and the floor (`true`), waiting for nothing: the swap is in
    /// effect when this returns. Calls made while the floor was attached are not seen
    /// by the real program, so a long-running task's sequence window has a gap at the
    /// swap back (possibly an anomaly or two); benchmarks run fresh processes.
    pub fn set_floor(&self, floor: bool) -> Result<(), Error> {
        match &self.floor {
            Some(s) => s.set(floor),
            None => Err(Error::Config("no floor switch (not attached)".into())),
        }
    }

    /// `Some(at the floor)` in a floor build.
    pub fn at_floor(&self) -> Option<bool> {
        self.floor.as_ref().map(Switch::at_floor)
    }
}
