//! Forks the filter lets through without a notification, reported in their place.
//!
//! Why: until the supervisor has *received* a notification, the notifying task waits
//! interruptibly; a signal then makes the call return `-ERESTARTSYS`, which becomes
//! EINTR when the program's handler lacks `SA_RESTART`. For a fork that is a failure no
//! program expects (natively `fork` restarts: `-ERESTARTNOINTR`); dash, whose SIGCHLD
//! handler lacks `SA_RESTART`, printed "Cannot fork" in a few percent of pipelines.
//! No user-space step closes that window (`WAIT_KILLABLE_RECV` covers only the time
//! after receipt), so the filter lets `vfork` and fork-shaped `clone` run natively
//! (`child::filter`) and the supervisor reports them itself, in order:
//!
//! * **Learning of a fork.** The kernel's process-events connector queues a
//!   `PROC_EVENT_FORK` inside the fork, before it returns to the parent or the child
//!   runs. The connector's socket is polled *after* the listener in the same `poll`, and
//!   read before any notification is received: a notification seen by a poll was queued
//!   before that poll looked at the connector, so every fork that preceded it in its
//!   task is read first. The event names the creating thread (the child's
//!   `real_parent`, which is the caller for the clone shapes the filter lets through).
//! * **Order.** A thread makes one call at a time, so a fork known when one of its
//!   calls is dressed came before that call; and one that came before is known by then
//!   (above). So the synthesized call is reported just before the creating thread's
//!   next call, or before the child's first call if that comes first (a task's birth
//!   is reported before anything it does), whichever the supervisor receives first.
//! * **Delay.** The synthesized call is answered like any other. Until it is, the
//!   creating thread's next call and the child's first call are parked (received, so
//!   recorded in the in-flight table, and answered by the keeper or `shutdown` like any
//!   held call). A delayed parent therefore pays its fork's delay before its next call,
//!   and the child does not start making calls until then: the same total delay as a
//!   held fork, paid just after the fork instead of just before.
//! * **Which call.** `vfork` and `clone` are told apart by `/proc/PARENT/syscall`: a
//!   vfork's parent waits in the call until the child's execve or exit, both notified
//!   calls that come after the child's first; a parent no longer in the call made a
//!   `clone`.
//! * **Not double-counted.** Notified clone-family calls (clone3, `fork`, threads,
//!   `CLONE_PARENT`, i386) also produce events; events of threads are ignored, and a
//!   thread inside a process-creating call that was notified and let through has its
//!   next event consumed by that call.
//!
//! Subscribing needs CAP_NET_ADMIN (in the initial namespaces). Without it, or if the
//! probe at spawn finds no events arriving, every clone-family call stays notified, as
//! before, with the EINTR window documented in `docs/seccomp-supervisor.md`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use homeostat_syscalls::AUDIT_ARCH_X86_64;

use super::{Pending, Supervisor};
use crate::sys::{self, Errno, Notif, ProcEvent};
use crate::{Call, Exe, LaunchError, SyscallEvent};

const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;
const NOT_A_FORK: u64 = (libc::CLONE_THREAD | libc::CLONE_PARENT) as u64;

/// A synthesized call the caller has not answered yet.
struct Held {
    /// The creating thread and the child: their calls wait for the answer.
    tids: [i32; 2],
    /// Their calls received meanwhile, in order.
    parked: Vec<(Notif, Option<u32>)>,
}

#[derive(Default)]
pub(super) struct Forks {
    /// The connector; `None`: the filter notifies every fork.
    events: Option<OwnedFd>,
    /// Forks not yet reported, per creating thread, oldest first.
    made: HashMap<i32, VecDeque<i32>>,
    /// Child -> creating thread, for forks not yet reported.
    born: HashMap<i32, i32>,
    /// Threads inside a notified, let-through call that may create a process: the next
    /// fork event naming them is that call's, already reported. The value is the
    /// parent's thread group for `CLONE_PARENT` (the event then names the grandparent).
    expecting: HashMap<i32, Option<i32>>,
    held: HashMap<u64, Held>,
    /// Threads whose calls wait for a synthesized call's answer.
    holding: HashMap<i32, u64>,
    next_id: u64,
    /// Connector overflows (events dropped: forks that could go unreported).
    lost: u64,
}

impl Forks {
    pub(super) fn new(events: Option<OwnedFd>) -> Forks {
        Forks {
            events,
            next_id: 1 << 63,
            ..Forks::default()
        }
    }

    pub(super) fn fd(&self) -> i32 {
        self.events.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Is `id` a synthesized call?
    pub(super) fn is_synth(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }

    /// Every parked notification (for a hand-over: they must be answered).
    pub(super) fn parked_ids(&self) -> Vec<u64> {
        self.held
            .values()
            .flat_map(|h| h.parked.iter().map(|(n, _)| n.id))
            .collect()
    }

    pub(super) fn lost(&self) -> u64 {
        self.lost
    }

    /// Forgets the unreported forks of tasks that are gone (`alive` says which are not).
    pub(super) fn prune(&mut self, alive: impl Fn(i32) -> bool) {
        self.made.retain(|tid, _| alive(*tid));
        self.born
            .retain(|child, parent| alive(*child) || alive(*parent));
        self.expecting.retain(|tid, _| alive(*tid));
    }
}

impl Supervisor {
    /// Is `tid` (of thread group `tgid`) one of the monitored tree's?
    fn in_tree(&self, tid: i32, tgid: i32) -> bool {
        self.tasks.contains_key(&tid)
            || self.forks.born.contains_key(&tid)
            || self.tasks.contains_key(&tgid)
            || tid == self.child_pid
    }

    /// Reads every queued fork event. Called whenever the connector is readable, before
    /// any notification is received (see the module docs for why that gives the order).
    pub(super) fn read_fork_events(&mut self) {
        let fd = self.forks.fd();
        if fd < 0 {
            return;
        }
        // Bounded: a fork storm elsewhere must not starve the monitored programs.
        for _ in 0..4096 {
            let ev = match sys::proc_events_recv(fd) {
                Ok(ProcEvent::Fork(ev)) => ev,
                Ok(ProcEvent::Other) => continue,
                Ok(ProcEvent::Empty) => return,
                Err(Errno(libc::ENOBUFS)) => {
                    self.forks.lost += 1;
                    continue;
                }
                Err(_) => return,
            };
            if ev.child_tid != ev.child_tgid {
                continue; // a thread: made by a notified call
            }
            if self.forks.expecting.remove(&ev.parent_tid).is_some() {
                continue;
            }
            if let Some(&t) = self
                .forks
                .expecting
                .iter()
                .find(|(_, g)| **g == Some(ev.parent_tgid))
                .map(|(t, _)| t)
            {
                self.forks.expecting.remove(&t);
                continue;
            }
            if self.in_tree(ev.parent_tid, ev.parent_tgid) {
                self.forks
                    .made
                    .entry(ev.parent_tid)
                    .or_default()
                    .push_back(ev.child_tid);
                self.forks.born.insert(ev.child_tid, ev.parent_tid);
            }
        }
    }

    /// A notified call that may create a process was let through (`p`: the call).
    pub(super) fn note_notified_fork(&mut self, p: &Pending) {
        if self.forks.events.is_none() {
            return;
        }
        let is_clone = match p.arch {
            AUDIT_ARCH_X86_64 => p.nr == libc::SYS_clone as u32,
            _ => p.nr == 120, // i386 clone
        };
        if is_clone && p.flags & libc::CLONE_THREAD as u64 != 0 {
            return; // a thread: its event is ignored anyway
        }
        let grandparent = if is_clone && p.flags & libc::CLONE_PARENT as u64 != 0 {
            homeostat_proc::status_field(p.tid, "PPid:").and_then(|v| i32::try_from(v).ok())
        } else {
            None
        };
        self.forks.expecting.insert(p.tid, grandparent);
    }

    /// Called with each notification about to be dressed. `Ok(None)`: go ahead with it.
    /// `Ok(Some(None))`: it was parked. `Ok(Some(Some(ev)))`: it was parked behind this
    /// synthesized fork, to be reported first.
    pub(super) fn before_dressing(
        &mut self,
        n: Notif,
        slot: Option<u32>,
    ) -> Result<Option<Option<SyscallEvent>>, LaunchError> {
        let f = &self.forks;
        // The common case, kept to a few loads: no fork in flight anywhere.
        if f.made.is_empty() && f.holding.is_empty() && f.expecting.is_empty() {
            return Ok(None);
        }
        // Its previous call is over, so any event of a notified fork has been read.
        self.forks.expecting.remove(&n.tid);
        if let Some(&id) = self.forks.holding.get(&n.tid) {
            self.park(id, n, slot);
            return Ok(Some(None));
        }
        // A task's birth comes before anything it does: walk up to the oldest unreported
        // fork on the way (bounded, in case of a cycle through recycled tids).
        let mut t = n.tid;
        for _ in 0..64 {
            match self.forks.born.get(&t) {
                Some(&p) => t = p,
                None => break,
            }
        }
        let Some(child) = self.forks.made.get(&t).and_then(|q| q.front().copied()) else {
            return Ok(None);
        };
        if let Some(&id) = self.forks.holding.get(&t) {
            self.park(id, n, slot);
            return Ok(Some(None));
        }
        Ok(Some(Some(self.synthesize(t, child, n, slot))))
    }

    fn park(&mut self, id: u64, n: Notif, slot: Option<u32>) {
        if let Some(h) = self.forks.held.get_mut(&id) {
            h.parked.push((n, slot));
        }
    }

    /// Reports `parent`'s fork of `child` (its oldest unreported one) and parks `n`.
    fn synthesize(&mut self, parent: i32, child: i32, n: Notif, slot: Option<u32>) -> SyscallEvent {
        let last = {
            let q = self.forks.made.entry(parent).or_default();
            q.pop_front();
            q.is_empty()
        };
        if last {
            self.forks.made.remove(&parent);
        }
        self.forks.born.remove(&child);
        // Which call: a vfork's parent is still in it (see the module docs). Only the
        // newest fork can be the one it is in.
        let (nr, args) = match sys::current_syscall(parent) {
            Some((nr, args))
                if last
                    && (nr == libc::SYS_vfork as u32
                        || (nr == libc::SYS_clone as u32
                            && args[0] & CLONE_VFORK != 0
                            && args[0] & NOT_A_FORK == 0)) =>
            {
                (nr, args)
            }
            _ => (libc::SYS_clone as u32, [0; 6]),
        };
        let (tgid, exe, new_task) = self.synth_task_info(parent);
        // A task was created: cached tids are re-checked for recycling, as after a
        // notified clone.
        self.fork_gen += 1;
        let mut id = self.forks.next_id;
        while self.pending.contains_key(&id) || self.forks.held.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.forks.next_id = id.wrapping_add(1);
        self.forks.held.insert(
            id,
            Held {
                tids: [parent, child],
                parked: vec![(n, slot)],
            },
        );
        self.forks.holding.insert(parent, id);
        self.forks.holding.insert(child, id);
        SyscallEvent {
            id,
            call: Call {
                tid: parent,
                pid: tgid,
                arch: AUDIT_ARCH_X86_64,
                nr,
                args,
                exe,
                new_task,
            },
        }
    }

    /// The caller answered a synthesized call: the calls parked behind it go first.
    pub(super) fn answer_synth(&mut self, id: u64) -> bool {
        let Some(h) = self.forks.held.remove(&id) else {
            return false;
        };
        for t in h.tids {
            if self.forks.holding.get(&t) == Some(&id) {
                self.forks.holding.remove(&t);
            }
        }
        for q in h.parked.into_iter().rev() {
            self.queue.push_front(q);
        }
        true
    }

    /// Identity of a creating thread for a synthesized call. It may never have made a
    /// notified call (a child that forks first thing), or be gone; /proc is read as
    /// for a new task, without a notification to check it against.
    fn synth_task_info(&mut self, tid: i32) -> (i32, Arc<Exe>, bool) {
        self.cached_task(tid).unwrap_or_else(|| {
            let (tgid, exe) = self.new_task_entry(tid);
            (tgid, exe, true)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ffi::OsString;
    use std::time::{Duration, Instant};

    use crate::{Action, Event, LaunchOptions, Supervisor};

    /// A synthesized fork held by the caller holds the parent and the child: neither
    /// makes a call until it is answered (how a pH delay of a fork still delays).
    #[test]
    fn a_held_fork_holds_the_parent_and_the_child() {
        let argv: Vec<OsString> = ["sh", "-c", "/bin/true; /bin/true | /bin/cat"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut sup = Supervisor::spawn(&argv, &LaunchOptions::default()).unwrap();
        if !sup.forks_unnotified() {
            println!("skipping: no process-events connector (needs CAP_NET_ADMIN)");
            return;
        }
        let shell = sup.child_pid();
        let hold = Duration::from_millis(150);
        let mut seen: HashSet<i32> = HashSet::from([shell]);
        let mut forks = vec![];
        let mut held: Option<(u64, Instant)> = None;
        let start = Instant::now();
        loop {
            if let Some((id, since)) = held {
                if since.elapsed() >= hold {
                    assert!(sup.respond(id, Action::Continue).unwrap());
                    held = None;
                }
            }
            let ev = match sup.next(Some(Duration::from_millis(10))).unwrap() {
                None | Some(Event::ChildExited(_)) => continue,
                Some(Event::TreeGone) => break,
                Some(Event::Syscall(ev)) => ev,
            };
            let new = seen.insert(ev.tid);
            if held.is_some() {
                // Only tasks other than the shell and its new child may go on.
                assert!(ev.tid != shell && !new, "{:?} during a held fork", ev.call);
            }
            if ev.tid == shell && (ev.nr == 56 || ev.nr == 58) {
                forks.push(ev.nr);
                held = Some((ev.id, Instant::now()));
                continue;
            }
            sup.respond(ev.id, Action::Continue).unwrap();
        }
        assert_eq!(
            forks,
            [58, 56, 56],
            "the shell's vfork and the pipeline's clones"
        );
        assert!(start.elapsed() >= hold * 3);
    }
}
