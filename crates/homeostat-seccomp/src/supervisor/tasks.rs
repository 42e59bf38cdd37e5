//! The per-task cache: who a thread is (thread group, start time, executable), kept
//! right by the calls that go by (see the parent module's docs).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use homeostat_syscalls::{call_kind, CallKind as Kind};

use super::{Pending, Supervisor};
use crate::sys;
use crate::{Exe, LaunchError};

pub(super) struct Task {
    tgid: i32,
    /// Start time (clock ticks since boot), to tell a recycled tid from the same task.
    start: u64,
    /// `fork_gen` when the entry was last known right.
    gen: u64,
    /// `None` after an `execve` was let through: re-read at the next event.
    exe: Option<Arc<Exe>>,
}

mod proc {
    pub(super) use homeostat_proc::exe;
    use homeostat_proc::{stat_field, status_field};

    /// (Tgid, start time) of a task, or `None` if it is gone.
    pub(super) fn tgid_and_start(tid: i32) -> Option<(i32, u64)> {
        let tgid = i32::try_from(status_field(tid, "Tgid:")?).ok()?;
        Some((tgid, start_time(tid)?))
    }

    /// Field 22 of /proc/TID/stat (start time in clock ticks since boot).
    pub(super) fn start_time(tid: i32) -> Option<u64> {
        stat_field(tid, 22)?.parse().ok()
    }
}

impl Supervisor {
    /// Will dressing an event from `tid` need /proc reads?
    pub(super) fn needs_proc(&self, tid: i32) -> bool {
        match self.tasks.get(&tid) {
            Some(t) => t.gen != self.fork_gen || t.exe.is_none(),
            None => true,
        }
    }

    /// Is notification `id` still pending (its task alive, not yet answered)? Checked
    /// after reading a call's arguments from the task's memory, so a recycled pid is
    /// never misread.
    pub fn id_valid(&self, id: u64) -> Result<bool, LaunchError> {
        sys::notif_id_valid(self.listener.as_raw_fd(), id).map_err(|errno| LaunchError::Sys {
            call: "seccomp NOTIF_ID_VALID",
            errno,
        })
    }

    pub(super) fn task_info(
        &mut self,
        tid: i32,
        id: u64,
    ) -> Result<Option<(i32, Arc<Exe>, bool)>, LaunchError> {
        if let Some(known) = self.cached_task(tid) {
            return Ok(Some(known));
        }
        let info = proc::tgid_and_start(tid);
        let exe = Arc::new(proc::exe(tid));
        // Only if the notification is still pending is the task we read the task that
        // made the call.
        if !self.id_valid(id)? {
            return Ok(None);
        }
        let tgid = self.insert_task(tid, info, exe.clone());
        Ok(Some((tgid, exe, true)))
    }

    /// The cached identity of `tid` (re-checked once after a fork, and the executable
    /// re-read after an exec), `None` if it is not cached (or was a recycled tid).
    pub(super) fn cached_task(&mut self, tid: i32) -> Option<(i32, Arc<Exe>, bool)> {
        let gen = self.fork_gen;
        if let Some(t) = self.tasks.get_mut(&tid) {
            if t.gen != gen {
                if proc::start_time(tid) == Some(t.start) {
                    t.gen = gen;
                } else {
                    self.tasks.remove(&tid);
                }
            }
        }
        let t = self.tasks.get_mut(&tid)?;
        let exe = match &t.exe {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(proc::exe(tid));
                t.exe = Some(e.clone());
                e
            }
        };
        Some((t.tgid, exe, false))
    }

    /// Reads and caches a task no notification vouches for (the creator of a fork the
    /// filter let through). Returns its thread group and executable.
    pub(super) fn new_task_entry(&mut self, tid: i32) -> (i32, Arc<Exe>) {
        let info = proc::tgid_and_start(tid);
        let exe = Arc::new(proc::exe(tid));
        let tgid = self.insert_task(tid, info, exe.clone());
        (tgid, exe)
    }

    fn insert_task(&mut self, tid: i32, info: Option<(i32, u64)>, exe: Arc<Exe>) -> i32 {
        let (tgid, start) = info.unwrap_or((tid, 0));
        self.maybe_prune();
        self.tasks.insert(
            tid,
            Task {
                tgid,
                start,
                gen: self.fork_gen,
                exe: Some(exe),
            },
        );
        tgid
    }

    /// Drops cache entries of tasks that died without an exit call (killed by a signal),
    /// when the cache has doubled since the last look.
    pub(super) fn maybe_prune(&mut self) {
        if self.tasks.len() < self.prune_at {
            return;
        }
        let alive = |tid: i32| Path::new(&format!("/proc/{tid}")).exists();
        self.tasks.retain(|tid, _| alive(*tid));
        self.forks.prune(alive);
        self.prune_at = (self.tasks.len() * 2).max(1024);
    }

    pub(super) fn after_continue(&mut self, p: &Pending) {
        match call_kind(p.arch, p.nr) {
            // Every thread of the group runs the new image if the exec succeeds (the
            // caller's tid may even become the group id); if it fails, re-reading finds
            // the old image. Either way: re-read at the next event.
            Kind::Exec => {
                for t in self.tasks.values_mut().filter(|t| t.tgid == p.tgid) {
                    t.exe = None;
                }
            }
            Kind::Exit => {
                self.tasks.remove(&p.tid);
            }
            Kind::ExitGroup => self.tasks.retain(|_, t| t.tgid != p.tgid),
            Kind::Clone => {
                self.fork_gen += 1;
                self.note_notified_fork(p);
            }
            Kind::Other => {}
        }
    }
}
