//! The stop map (`hs_stopped`): processes the programs stopped (SIGSTOP) for a
//! response, until userspace takes them over or lets them go; and [`Keeper`], which
//! holds the map from another process so that nothing stays stopped if the daemon dies.

use bytemuck::bytes_of;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::abi::{self, hs_stop};
use crate::error::{map_err, Error};
use crate::{Kernel, Probe};

/// (pid, thread whose call was anomalous, that call) of every stopped process.
fn stopped_in(map: &MapHandle) -> Vec<(u32, u32, u32)> {
    map.keys()
        .filter_map(|k| abi::decode::<u32>(&k))
        .filter_map(|pid| {
            let v = map.lookup(bytes_of(&pid), MapFlags::ANY).ok().flatten()?;
            let s: hs_stop = abi::decode(&v)?;
            Some((pid, s.tid, s.nr))
        })
        .collect()
}

fn unstop_in(map: &MapHandle, pid: u32) {
    // Absent already is fine: a second unstop, or an entry never made.
    let _ = map.delete(bytes_of(&pid));
}

fn release_in(map: &MapHandle, pid: u32) {
    crate::sys::sigcont(pid as i32);
    unstop_in(map, pid);
}

fn resume_in(map: &MapHandle) -> Vec<u32> {
    let mut resumed = vec![];
    for (pid, _, _) in stopped_in(map) {
        // `T`: stopped by a signal (a traced task shows `t`).
        if homeostat_proc::stat_field(pid as i32, 3).as_deref() == Some("T")
            && crate::sys::sigcont(pid as i32)
        {
            resumed.push(pid);
        }
        unstop_in(map, pid);
    }
    resumed
}

impl Kernel {
    /// The processes the kernel stopped for a response and userspace has not taken
    /// over yet: (pid, thread whose call was anomalous, that call).
    pub fn stopped(&self) -> Vec<(u32, u32, u32)> {
        stopped_in(&self.stopped)
    }

    /// Forgets a stopped process (userspace has taken it over, or resumed it).
    pub fn unstop(&self, pid: u32) {
        unstop_in(&self.stopped, pid);
    }

    /// See [`Probe::release`].
    pub fn release(&self, pid: u32) {
        release_in(&self.stopped, pid);
    }

    /// The kernel's id of the stop map, for a keeper process to open it
    /// ([`open_stopped_map`]) and so outlive this one.
    pub fn stopped_map_id(&self) -> Result<u32, Error> {
        self.stopped
            .info()
            .map(|i| i.info.id)
            .map_err(map_err("hs_stopped", "info"))
    }

    /// What [`Keeper::resume_stopped`] does, from the daemon (at exit).
    pub fn resume_stopped(&self) -> Vec<u32> {
        resume_in(&self.stopped)
    }
}

impl Probe {
    /// Ends the kernel's stop of process `pid`: SIGCONT, then [`Kernel::unstop`]. Done
    /// once a tracer holds it (the tracer, not the stop, controls it from then on), or
    /// instead of a takeover that failed, so that it never stays stopped.
    pub fn release(&self, pid: u32) {
        release_in(&self.stopped, pid);
    }
}

/// Opens the stop map by id (a keeper process, while the daemon lives) so that it
/// survives the daemon; see [`Keeper`].
pub fn open_stopped_map(id: u32) -> Result<Keeper, Error> {
    MapHandle::from_map_id(id)
        .map(|stopped| Keeper { stopped })
        .map_err(map_err("hs_stopped", "open by id"))
}

/// The stop map held by a process other than the daemon, to resume what the daemon
/// left stopped if it dies.
#[derive(Debug)]
pub struct Keeper {
    stopped: MapHandle,
}

impl Keeper {
    /// Sends SIGCONT to every process in the stop map that is stopped (state `T`), and
    /// empties the map; returns the pids resumed. A process already taken over (traced)
    /// or running is left alone.
    pub fn resume_stopped(&self) -> Vec<u32> {
        resume_in(&self.stopped)
    }
}
