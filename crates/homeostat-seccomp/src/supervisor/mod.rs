//! The supervisor: spawns the command (with its keeper), turns notifications into
//! [`Event`]s with the task's identity attached, and sends the caller's answers.
//!
//! Per-task identity (thread group, executable) comes from /proc and is cached per
//! thread id, because reading /proc on every call would cost more than the notification
//! itself. The cache is kept honest by the calls the supervisor sees go by: an answered
//! `execve` marks the thread group's executable stale, `exit`/`exit_group` drop entries,
//! and after any `clone`/`fork` each cached tid is re-checked once (start time) in case
//! the kernel recycled it for a new task. After reading /proc for a task, the
//! notification id is checked still valid, so the data read is known to belong to the
//! task that made the call and not to a successor that took its tid.
//!
//! Submodules: `boot` (spawn: the fork, the keeper and the child up to the exec),
//! `tasks` (the per-task cache), `forks` (forks the filter lets through unnotified,
//! reported in their place). This file is the event loop.

mod boot;
mod forks;
mod tasks;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::inflight::InFlight;
use crate::keeper;
use crate::sys::{self, Errno, Msg, Notif, NotifBuf};
use crate::{Action, Call, ChildStatus, Event, FailMode, LaunchError, SyscallEvent};
use tasks::Task;

/// After the listener reports the tree gone, how long to wait for the keeper's report of
/// the child's exit status before reporting it as unknown.
const EXIT_REPORT_GRACE: Duration = Duration::from_secs(2);

struct Pending {
    tid: i32,
    tgid: i32,
    arch: u32,
    nr: u32,
    /// `args[0]` (clone's flags).
    flags: u64,
    slot: Option<u32>,
}

/// A running, monitored command. See the crate docs.
///
/// Dropping it (or [`Supervisor::shutdown`]) hands the still-running programs to the
/// keeper: fail-open, they keep running unmonitored (the calls this supervisor was
/// holding are let through); fail-closed, they are killed.
pub struct Supervisor {
    cmd: String,
    listener: OwnedFd,
    /// Command socket to the keeper; `None` once the keeper is known dead.
    sock: Option<OwnedFd>,
    child_pid: i32,
    child_pidfd: OwnedFd,
    keeper_pid: i32,
    fail_mode: FailMode,
    inflight: InFlight,
    pending: HashMap<u64, Pending>,
    /// Received but not yet reported (see `drain`).
    queue: VecDeque<(Notif, Option<u32>)>,
    tasks: HashMap<i32, Task>,
    forks: forks::Forks,
    fork_gen: u64,
    prune_at: usize,
    child_status: Option<ChildStatus>,
    exit_delivered: bool,
    gone_since: Option<Instant>,
    shut: bool,
    buf: NotifBuf,
}

fn sys_err(call: &'static str) -> impl Fn(Errno) -> LaunchError {
    move |errno| LaunchError::Sys { call, errno }
}

fn remaining_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so a short wait does not become a busy poll of 0 ms.
            (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
        }
    }
}

impl Supervisor {
    /// Process id of the launched program.
    pub fn child_pid(&self) -> i32 {
        self.child_pid
    }

    /// Process id of the keeper (see the crate docs).
    pub fn keeper_pid(&self) -> i32 {
        self.keeper_pid
    }

    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Number of notifications received and not yet answered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// True when forks run without a notification and are reported by the supervisor
    /// in their place (the process-events connector is available; see
    /// `docs/seccomp-supervisor.md`).
    pub fn forks_unnotified(&self) -> bool {
        self.forks.fd() >= 0
    }

    /// Fork events the kernel dropped (the connector's buffer overflowed): forks that
    /// may have gone unreported.
    pub fn fork_events_lost(&self) -> u64 {
        self.forks.lost()
    }

    /// Waits up to `timeout` (`None`: no limit) for the next event. `Ok(None)` means the
    /// timeout passed. After the tree is gone every call returns [`Event::TreeGone`].
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, LaunchError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.queue.is_empty() {
                if let Some(ev) = self.receive()? {
                    return Ok(Some(Event::Syscall(ev)));
                }
                continue;
            }
            if let Some(st) = self.child_status {
                if !self.exit_delivered {
                    self.exit_delivered = true;
                    return Ok(Some(Event::ChildExited(st)));
                }
            }
            if let Some(since) = self.gone_since {
                if self.exit_delivered {
                    return Ok(Some(Event::TreeGone));
                }
                if since.elapsed() >= EXIT_REPORT_GRACE {
                    self.child_status = Some(ChildStatus::Unknown);
                    continue;
                }
            }

            let mut fds = [sys::pollfd(-1, 0); 4];
            let gone = self.gone_since.is_some();
            if !gone {
                fds[0] = sys::pollfd(self.listener.as_raw_fd(), libc::POLLIN);
                // After the listener: see `forks` for why the order matters.
                fds[3] = sys::pollfd(self.forks.fd(), libc::POLLIN);
            }
            if let Some(sock) = &self.sock {
                fds[1] = sys::pollfd(sock.as_raw_fd(), libc::POLLIN);
            } else if self.child_status.is_none() {
                // Without the keeper's report, notice the exit ourselves.
                fds[2] = sys::pollfd(self.child_pidfd.as_raw_fd(), libc::POLLIN);
            }
            let mut wait = remaining_ms(deadline);
            if let Some(since) = self.gone_since {
                let grace = EXIT_REPORT_GRACE.saturating_sub(since.elapsed());
                let g = grace.as_millis() as i32 + 1;
                wait = if wait < 0 { g } else { wait.min(g) };
            }
            match sys::poll(&mut fds, wait) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(Errno(libc::EINTR)) => continue,
                Err(errno) => {
                    return Err(LaunchError::Sys {
                        call: "poll",
                        errno,
                    })
                }
            }
            if fds[3].revents != 0 {
                self.read_fork_events();
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Some(ev) = self.receive()? {
                    return Ok(Some(Event::Syscall(ev)));
                }
                continue;
            }
            // POLLHUP: no task uses the filter any more. (POLLERR alone only means the
            // kernel's poll was interrupted; poll again.)
            if fds[0].revents & libc::POLLHUP != 0 {
                self.gone_since = Some(Instant::now());
            }
            if fds[1].revents != 0 {
                self.read_keeper();
            }
            if fds[2].revents != 0 {
                self.child_status = Some(ChildStatus::Unknown);
            }
        }
    }

    /// Answers notification `id`. `Ok(false)` if the kernel no longer waits for an answer
    /// to it: the task died, a signal cut its wait short (the call is then notified
    /// again under a new id), or it was already answered.
    pub fn respond(&mut self, id: u64, action: Action) -> Result<bool, LaunchError> {
        // A synthesized fork has run already: any answer releases the calls parked
        // behind it.
        if self.forks.is_synth(id) {
            if let Action::Deny(e) = action {
                action.checked().map_err(|_| LaunchError::BadErrno(e))?;
            }
            return Ok(self.answer_synth(id));
        }
        let (error, flags) = match action {
            Action::Continue => (0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Action::Deny(e) => match action.checked() {
                Ok(_) => (-e, 0),
                Err(e) => return Err(LaunchError::BadErrno(e)),
            },
        };
        let r = sys::notif_send(self.listener.as_raw_fd(), &mut self.buf, id, error, flags);
        let pending = self.pending.remove(&id);
        match r {
            Ok(()) => {
                if let Some(p) = pending {
                    self.inflight.clear(p.slot);
                    if action == Action::Continue {
                        self.after_continue(&p);
                    }
                }
                Ok(true)
            }
            // ENOENT: the task is gone (or a signal cut its wait short, and the call will
            // be notified afresh); EINPROGRESS: already answered.
            Err(Errno(libc::ENOENT | libc::EINPROGRESS)) => {
                if let Some(p) = pending {
                    self.inflight.clear(p.slot);
                }
                Ok(false)
            }
            Err(errno) => {
                if let Some(p) = pending {
                    self.pending.insert(id, p);
                }
                Err(LaunchError::Sys {
                    call: "seccomp NOTIF_SEND",
                    errno,
                })
            }
        }
    }

    /// Hands over to the keeper now (what dropping does): fail-open, the calls held here
    /// are let through and the programs run on unmonitored; fail-closed, they are killed.
    pub fn shutdown(mut self) {
        self.hand_over();
    }

    /// Test hook: pretend this process died between receiving `id` and recording it
    /// in the shared in-flight table, so the keeper's recovery of such a call can be
    /// exercised. Not for production use.
    #[doc(hidden)]
    pub fn debug_forget_in_flight(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            let slot = p.slot.take();
            self.inflight.forget(slot, id);
        }
    }

    fn hand_over(&mut self) {
        if self.shut {
            return;
        }
        self.shut = true;
        if self.fail_mode == FailMode::Open {
            let mut queued: Vec<u64> = self.queue.iter().map(|(n, _)| n.id).collect();
            queued.extend(self.forks.parked_ids());
            for id in queued {
                let _ = sys::notif_send(
                    self.listener.as_raw_fd(),
                    &mut self.buf,
                    id,
                    0,
                    libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                );
            }
            let ids: Vec<u64> = self.pending.keys().copied().collect();
            for id in ids {
                let _ = self.respond(id, Action::Continue);
            }
        }
        if let Some(sock) = &self.sock {
            let _ = sys::send_msg(
                sock.as_raw_fd(),
                Msg::new(keeper::S_SHUTDOWN, 0, 0),
                None,
                false,
            );
        }
    }

    fn read_keeper(&mut self) {
        let Some(sock) = &self.sock else { return };
        match sys::recv_msg(sock.as_raw_fd()) {
            Ok(Some((m, _))) if m.kind == keeper::K_EXIT && m.a == self.child_pid => {
                self.child_status = Some(ChildStatus::from_wait(m.b));
            }
            Ok(Some(_)) => {}
            Err(Errno(libc::EINTR | libc::EAGAIN)) => {}
            // The keeper is gone: the program's exit is then noticed through its pidfd.
            Ok(None) | Err(_) => self.sock = None,
        }
    }

    /// Receives one notification and dresses it as an event. `Ok(None)`: it vanished
    /// (the task died before we could look at it).
    /// Takes one notification off the listener (`NOTIF_RECV`) and records it in the
    /// in-flight table. `Ok(None)`: it vanished between poll and receive.
    fn recv_one(&mut self) -> Result<Option<(Notif, Option<u32>)>, LaunchError> {
        match sys::notif_recv(self.listener.as_raw_fd(), &mut self.buf) {
            Ok(n) => {
                let slot = self.inflight.record(n.id, n.tid);
                Ok(Some((n, slot)))
            }
            Err(Errno(libc::ENOENT | libc::EINTR)) => Ok(None),
            Err(errno) => Err(LaunchError::Sys {
                call: "seccomp NOTIF_RECV",
                errno,
            }),
        }
    }

    /// Receives every notification already waiting, into `queue`.
    ///
    /// Why: until it is received, a notified task waits *interruptibly*, and a signal
    /// arriving then (say SIGCHLD to a shell whose handler lacks SA_RESTART) makes the
    /// call fail with EINTR — even calls that never fail so, like fork ("sh: Cannot
    /// fork"). Once received, the task waits killably only
    /// (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV). So after any slow step (reading /proc
    /// for a new task) the supervisor first moves whatever queued up meanwhile out of
    /// that window.
    fn drain(&mut self) -> Result<(), LaunchError> {
        for _ in 0..1024 {
            let mut fds = [
                sys::pollfd(self.listener.as_raw_fd(), libc::POLLIN),
                sys::pollfd(self.forks.fd(), libc::POLLIN),
            ];
            if !matches!(sys::poll(&mut fds, 0), Ok(1..)) {
                return Ok(());
            }
            if fds[1].revents != 0 {
                self.read_fork_events();
            }
            if fds[0].revents & libc::POLLIN == 0 {
                return Ok(());
            }
            if let Some(q) = self.recv_one()? {
                self.queue.push_back(q);
            }
        }
        Ok(())
    }

    /// The next notification (queued first, else from the listener), dressed as an
    /// event. `Ok(None)`: it vanished (its task died before we could look at it).
    fn receive(&mut self) -> Result<Option<SyscallEvent>, LaunchError> {
        let (n, slot) = match self.queue.pop_front() {
            Some(q) => q,
            None => match self.recv_one()? {
                Some(q) => q,
                None => return Ok(None),
            },
        };
        match self.before_dressing(n, slot)? {
            None => {}
            Some(None) => return Ok(None),
            Some(Some(fork)) => {
                // Dressing it may have read /proc: move what queued meanwhile out of
                // the receive window (see `drain`).
                self.drain()?;
                return Ok(Some(fork));
            }
        }
        let slow = self.needs_proc(n.tid);
        let info = self.task_info(n.tid, n.id);
        if slow {
            self.drain()?;
        }
        let Some((tgid, exe, new_task)) = info? else {
            self.inflight.clear(slot);
            return Ok(None);
        };
        self.pending.insert(
            n.id,
            Pending {
                tid: n.tid,
                tgid,
                arch: n.arch,
                nr: n.nr,
                flags: n.args[0],
                slot,
            },
        );
        Ok(Some(SyscallEvent {
            id: n.id,
            call: Call {
                tid: n.tid,
                pid: tgid,
                arch: n.arch,
                nr: n.nr,
                args: n.args,
                exe,
                new_task,
            },
        }))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.hand_over();
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("cmd", &self.cmd)
            .field("child_pid", &self.child_pid)
            .field("keeper_pid", &self.keeper_pid)
            .field("fail_mode", &self.fail_mode)
            .field("pending", &self.pending.len())
            .finish()
    }
}
