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

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::c_char;

use crate::child::{self, ChildPlan};
use crate::inflight::{InFlight, SharedMap};
use crate::keeper::{self, KeeperPlan};
use crate::nr::{self, Kind};
use crate::sys::{self, Errno, Msg, Notif, NotifBuf};
use crate::{Action, ChildStatus, Event, Exe, FailMode, LaunchError, LaunchOptions, SyscallEvent};

/// How long spawn waits for the child and keeper to get through their set-up steps.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// After the listener reports the tree gone, how long to wait for the keeper's report of
/// the child's exit status before reporting it as unknown.
const EXIT_REPORT_GRACE: Duration = Duration::from_secs(2);

struct Pending {
    tid: i32,
    tgid: i32,
    arch: u32,
    nr: u32,
    slot: Option<u32>,
}

struct Task {
    tgid: i32,
    /// Start time (clock ticks since boot), to tell a recycled tid from the same task.
    start: u64,
    /// `fork_gen` when the entry was last known right.
    gen: u64,
    /// `None` after an `execve` was let through: re-read at the next event.
    exe: Option<Arc<Exe>>,
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

fn cstring(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// `argv[0]` as `execvp` would find it: as given if it contains a slash, else the first
/// executable regular file of that name in `$PATH`.
fn resolve(cmd: &OsStr) -> Result<PathBuf, Errno> {
    let bytes = cmd.as_bytes();
    if bytes.is_empty() {
        return Err(Errno(libc::ENOENT));
    }
    if bytes.contains(&b'/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let mut err = libc::ENOENT;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() { b".".as_slice() } else { dir };
        let cand = Path::new(OsStr::from_bytes(dir)).join(cmd);
        let Ok(md) = std::fs::metadata(&cand) else {
            continue;
        };
        if !md.is_file() {
            continue;
        }
        let Some(c) = cstring(cand.as_os_str()) else {
            continue;
        };
        // SAFETY: access(2) on a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cand);
        }
        err = libc::EACCES;
    }
    Err(Errno(err))
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

/// /proc readers. Allocation is fine here (supervisor side only).
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
    /// Starts `argv` (`argv[0]` searched in `$PATH`) under the filter. Returns once the
    /// program has been exec'd: its first call is the first event.
    ///
    /// The sequence (details in `docs/launcher.md`): a double fork creates the keeper,
    /// which forks the child; the child announces the descriptor number its listener will
    /// get, installs the filter, and execs; this process copies the listener out of the
    /// child with `pidfd_getfd`, gives the keeper a copy, and answers the child's calls
    /// up to the exec (unreported) until the close-on-exec status pipe says how the exec
    /// went.
    pub fn spawn(argv: &[OsString], opts: &LaunchOptions) -> Result<Supervisor, LaunchError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(LaunchError::UnsupportedArch);
        }
        let first = argv.first().ok_or(LaunchError::EmptyCommand)?;
        let cmd = first.to_string_lossy().into_owned();
        let exec_err = |errno: i32| LaunchError::Exec {
            cmd: cmd.clone(),
            errno: Errno(errno),
        };
        let path = resolve(first).map_err(|e| exec_err(e.0))?;

        // Everything the forked processes use is built here, before forking: they may
        // not allocate.
        let c_path = cstring(path.as_os_str()).ok_or_else(|| exec_err(libc::EINVAL))?;
        let c_args = argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| exec_err(libc::EINVAL))?;
        let c_env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let ptrs = |v: &[CString]| -> Vec<*const c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let arg_ptrs = ptrs(&c_args);
        let env_ptrs = ptrs(&c_env);

        let sizes = sys::notif_sizes().map_err(|errno| LaunchError::Seccomp {
            what: "kernel lacks SECCOMP_USER_NOTIF (needs Linux 5.0)",
            errno,
        })?;
        if sizes.seccomp_notif as usize > sys::NOTIF_BUF_LEN
            || sizes.seccomp_notif_resp as usize > sys::NOTIF_BUF_LEN
        {
            return Err(LaunchError::Launch {
                cmd,
                what: format!(
                    "kernel's seccomp_notif ({} bytes) is larger than this build supports",
                    sizes.seccomp_notif
                ),
            });
        }
        let map = SharedMap::new().map_err(sys_err("mmap (in-flight table)"))?;
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let sup_pidfd = sys::pidfd_open(me).map_err(sys_err("pidfd_open (needs Linux 5.3)"))?;
        let (status_r, status_w) = sys::pipe_cloexec().map_err(sys_err("pipe2"))?;
        let (sock, sock_k) = sys::seqpacket_pair().map_err(sys_err("socketpair"))?;
        let filter = child::filter();
        let plan = KeeperPlan {
            sock: sock_k.as_raw_fd(),
            sock_peer: sock.as_raw_fd(),
            sup_pidfd: sup_pidfd.as_raw_fd(),
            status_r: status_r.as_raw_fd(),
            shared: map.as_ptr(),
            fail_mode: opts.fail_mode,
            notif_buf: NotifBuf::new(),
            child: ChildPlan {
                path: c_path.as_ptr(),
                argv: arg_ptrs.as_ptr(),
                envp: env_ptrs.as_ptr(),
                status_w: status_w.as_raw_fd(),
                prog: libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                },
            },
        };

        // SAFETY: fork. The intermediate and the keeper run only keeper_main / _exit,
        // which make raw system calls on data prepared above (see the keeper module).
        let inter = unsafe { libc::fork() };
        if inter < 0 {
            return Err(LaunchError::Sys {
                call: "fork",
                errno: Errno(sys::last_errno()),
            });
        }
        if inter == 0 {
            // SAFETY: in the forked intermediate: fork the keeper and leave at once, so
            // the keeper is reparented away from the caller's process.
            unsafe {
                let k = libc::fork();
                if k == 0 {
                    keeper::keeper_main(&plan);
                }
                libc::_exit(if k < 0 { 1 } else { 0 });
            }
        }
        drop(status_w);
        drop(sock_k);
        let mut st = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        while unsafe { libc::waitpid(inter, &mut st, 0) } < 0 && sys::last_errno() == libc::EINTR {}
        if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 1 {
            return Err(LaunchError::Sys {
                call: "fork (keeper)",
                errno: Errno(libc::EAGAIN),
            });
        }

        let mut boot = Boot {
            cmd: cmd.clone(),
            deadline: Instant::now() + SPAWN_TIMEOUT,
            status_r,
            sock: Some(sock),
            child_pidfd: None,
        };
        match boot.run(opts, map) {
            Ok(sup) => Ok(sup),
            Err(e) => {
                boot.abort();
                Err(e)
            }
        }
    }

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

            let mut fds = [sys::pollfd(-1, 0); 3];
            let gone = self.gone_since.is_some();
            if !gone {
                fds[0] = sys::pollfd(self.listener.as_raw_fd(), libc::POLLIN);
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
        let (error, flags) = match action {
            Action::Continue => (0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Action::Deny(e) if (1..=4095).contains(&e) => (-e, 0),
            Action::Deny(e) => return Err(LaunchError::BadErrno(e)),
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
            let queued: Vec<u64> = self.queue.iter().map(|(n, _)| n.id).collect();
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
            let mut fds = [sys::pollfd(self.listener.as_raw_fd(), libc::POLLIN)];
            if !matches!(sys::poll(&mut fds, 0), Ok(1)) || fds[0].revents & libc::POLLIN == 0 {
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
                slot,
            },
        );
        Ok(Some(SyscallEvent {
            id: n.id,
            tid: n.tid,
            pid: tgid,
            arch: n.arch,
            nr: n.nr,
            args: n.args,
            exe,
            new_task,
        }))
    }

    /// Will dressing an event from `tid` need /proc reads?
    fn needs_proc(&self, tid: i32) -> bool {
        match self.tasks.get(&tid) {
            Some(t) => t.gen != self.fork_gen || t.exe.is_none(),
            None => true,
        }
    }

    fn id_valid(&self, id: u64) -> Result<bool, LaunchError> {
        sys::notif_id_valid(self.listener.as_raw_fd(), id).map_err(|errno| LaunchError::Sys {
            call: "seccomp NOTIF_ID_VALID",
            errno,
        })
    }

    fn task_info(
        &mut self,
        tid: i32,
        id: u64,
    ) -> Result<Option<(i32, Arc<Exe>, bool)>, LaunchError> {
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
        match self.tasks.get_mut(&tid) {
            Some(t) => {
                let exe = match &t.exe {
                    Some(e) => e.clone(),
                    None => {
                        let e = Arc::new(proc::exe(tid));
                        t.exe = Some(e.clone());
                        e
                    }
                };
                Ok(Some((t.tgid, exe, false)))
            }
            None => {
                let info = proc::tgid_and_start(tid);
                let exe = Arc::new(proc::exe(tid));
                // Only if the notification is still pending is the task we read the
                // task that made the call.
                if !self.id_valid(id)? {
                    return Ok(None);
                }
                let (tgid, start) = info.unwrap_or((tid, 0));
                self.maybe_prune();
                self.tasks.insert(
                    tid,
                    Task {
                        tgid,
                        start,
                        gen,
                        exe: Some(exe.clone()),
                    },
                );
                Ok(Some((tgid, exe, true)))
            }
        }
    }

    /// Drops cache entries of tasks that died without an exit call (killed by a signal),
    /// when the cache has doubled since the last look.
    fn maybe_prune(&mut self) {
        if self.tasks.len() < self.prune_at {
            return;
        }
        self.tasks
            .retain(|tid, _| Path::new(&format!("/proc/{tid}")).exists());
        self.prune_at = (self.tasks.len() * 2).max(1024);
    }

    fn after_continue(&mut self, p: &Pending) {
        match nr::kind(p.arch, p.nr) {
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
            Kind::Clone => self.fork_gen += 1,
            Kind::Other => {}
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Spawn's state between the fork and the exec, with the clean-up for failures.
struct Boot {
    cmd: String,
    deadline: Instant,
    status_r: OwnedFd,
    sock: Option<OwnedFd>,
    child_pidfd: Option<OwnedFd>,
}

impl Boot {
    fn launch_err(&self, what: impl Into<String>) -> LaunchError {
        LaunchError::Launch {
            cmd: self.cmd.clone(),
            what: what.into(),
        }
    }

    fn sock_fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Kill whatever got started: the keeper kills the child (and exits) on ABORT.
    fn abort(&mut self) {
        if let Some(sock) = &self.sock {
            let _ = sys::send_msg(
                sock.as_raw_fd(),
                Msg::new(keeper::S_ABORT, 0, 0),
                None,
                true,
            );
        }
        if let Some(pidfd) = &self.child_pidfd {
            let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        }
    }

    /// Turns a child's failure report into the error for the caller.
    fn child_failure(&self, m: Msg) -> LaunchError {
        let errno = Errno(m.b);
        match m.a {
            child::STAGE_EXEC => LaunchError::Exec {
                cmd: self.cmd.clone(),
                errno,
            },
            child::STAGE_SECCOMP => LaunchError::Seccomp {
                what: match m.b {
                    libc::EINVAL | libc::ENOSYS => {
                        "kernel lacks SECCOMP_USER_NOTIF (needs Linux 5.0)"
                    }
                    libc::EBUSY => {
                        "a user-notification filter is already installed above this process (nested supervision is not supported)"
                    }
                    _ => "installing the filter failed",
                },
                errno,
            },
            child::STAGE_NNP => LaunchError::Sys {
                call: "prctl(PR_SET_NO_NEW_PRIVS)",
                errno,
            },
            child::STAGE_KEEPER => LaunchError::Sys {
                call: "starting the keeper",
                errno,
            },
            _ => LaunchError::Sys {
                call: "preparing the child",
                errno,
            },
        }
    }

    /// Waits until one of `fds` is readable (or the deadline passes).
    fn wait(&self, fds: &mut [libc::pollfd]) -> Result<(), LaunchError> {
        loop {
            let ms = remaining_ms(Some(self.deadline));
            if ms == 0 {
                return Err(self.launch_err("timed out setting up the child"));
            }
            match sys::poll(fds, ms) {
                Ok(0) => return Err(self.launch_err("timed out setting up the child")),
                Ok(_) => return Ok(()),
                Err(Errno(libc::EINTR)) => continue,
                Err(errno) => {
                    return Err(LaunchError::Sys {
                        call: "poll",
                        errno,
                    })
                }
            }
        }
    }

    /// A message from the keeper during set-up: only failures are expected.
    fn keeper_msg(&mut self, want: u32) -> Result<Option<Msg>, LaunchError> {
        match sys::recv_msg(self.sock_fd()) {
            Ok(Some((m, _))) if m.kind == want => Ok(Some(m)),
            Ok(Some((m, _))) if m.kind == keeper::K_FAIL => Err(self.child_failure(m)),
            Ok(Some((m, _))) if m.kind == keeper::K_EXIT => Err(self.launch_err(format!(
                "the child exited during set-up ({:?})",
                ChildStatus::from_wait(m.b)
            ))),
            Ok(Some(_)) => Ok(None),
            Ok(None) => {
                self.sock = None;
                Err(self.launch_err("the keeper process died during set-up"))
            }
            Err(errno) => Err(LaunchError::Sys {
                call: "recvmsg (keeper)",
                errno,
            }),
        }
    }

    fn run(&mut self, opts: &LaunchOptions, map: SharedMap) -> Result<Supervisor, LaunchError> {
        // 1. The child's HELLO: its pid and its listener's future descriptor number.
        let (child_pid, target_fd) = loop {
            let mut fds = [
                sys::pollfd(self.status_r.as_raw_fd(), libc::POLLIN),
                sys::pollfd(self.sock_fd(), libc::POLLIN),
            ];
            self.wait(&mut fds)?;
            if fds[0].revents != 0 {
                match sys::read_msg(self.status_r.as_raw_fd()) {
                    Ok(Some(m)) if m.kind == child::HELLO => break (m.a, m.b),
                    Ok(Some(m)) => return Err(self.child_failure(m)),
                    Ok(None) => return Err(self.launch_err("the child died during set-up")),
                    Err(errno) => {
                        return Err(LaunchError::Sys {
                            call: "read",
                            errno,
                        })
                    }
                }
            }
            if fds[1].revents != 0 {
                self.keeper_msg(u32::MAX)?;
            }
        };
        let child_pidfd =
            sys::pidfd_open(child_pid).map_err(sys_err("pidfd_open (needs Linux 5.3)"))?;
        self.child_pidfd = Some(child_pidfd);

        // 2. Copy the listener out of the child once it exists. The child's window
        // between HELLO and the filter is a few microseconds, so poll with back-off.
        let listener = {
            let mut pause = Duration::from_micros(20);
            loop {
                let pidfd = self.child_pidfd.as_ref().map_or(-1, |f| f.as_raw_fd());
                match sys::pidfd_getfd(pidfd, target_fd) {
                    Ok(fd) => break fd,
                    Err(Errno(libc::EBADF)) => {}
                    Err(errno @ Errno(libc::ENOSYS)) => {
                        return Err(LaunchError::Sys {
                            call: "pidfd_getfd (needs Linux 5.6)",
                            errno,
                        })
                    }
                    Err(errno @ Errno(libc::EPERM)) => {
                        return Err(LaunchError::Sys {
                            call: "pidfd_getfd (needs ptrace access to the child; see kernel.yama.ptrace_scope)",
                            errno,
                        })
                    }
                    Err(errno) => return Err(LaunchError::Sys { call: "pidfd_getfd", errno }),
                }
                // A failure report (the filter could not be installed) or the child's
                // death ends the wait.
                let mut fds = [sys::pollfd(self.status_r.as_raw_fd(), libc::POLLIN)];
                if matches!(sys::poll(&mut fds, 0), Ok(1)) {
                    return match sys::read_msg(self.status_r.as_raw_fd()) {
                        Ok(Some(m)) => Err(self.child_failure(m)),
                        _ => Err(self.launch_err("the child died during set-up")),
                    };
                }
                if Instant::now() >= self.deadline {
                    return Err(self.launch_err("timed out waiting for the seccomp listener"));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        };
        if !sys::is_seccomp_listener(&listener) {
            return Err(
                self.launch_err("descriptor copied from the child is not a seccomp listener")
            );
        }
        if opts.sync_wakeup {
            // EINVAL: kernel older than 6.6; the flag is an optimisation only.
            match sys::notif_set_flags(
                listener.as_raw_fd(),
                sys::SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            ) {
                Ok(()) | Err(Errno(libc::EINVAL)) => {}
                Err(errno) => {
                    return Err(LaunchError::Sys {
                        call: "seccomp NOTIF_SET_FLAGS",
                        errno,
                    })
                }
            }
        }

        // 3. Give the keeper its copy and wait until it is ready (it has then closed its
        // copy of the status pipe, which step 4 relies on).
        sys::send_msg(
            self.sock_fd(),
            Msg::new(keeper::S_LISTENER, 0, 0),
            Some(listener.as_raw_fd()),
            false,
        )
        .map_err(sys_err("sendmsg (listener to keeper)"))?;
        let keeper_pid = loop {
            let mut fds = [sys::pollfd(self.sock_fd(), libc::POLLIN)];
            self.wait(&mut fds)?;
            if let Some(m) = self.keeper_msg(keeper::K_READY)? {
                break m.a;
            }
        };

        let mut sup = Supervisor {
            cmd: self.cmd.clone(),
            listener,
            sock: self.sock.take(),
            child_pid,
            child_pidfd: self
                .child_pidfd
                .take()
                .ok_or_else(|| self.launch_err("internal: no child pidfd"))?,
            keeper_pid,
            fail_mode: opts.fail_mode,
            inflight: InFlight::new(map),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            tasks: HashMap::new(),
            fork_gen: 0,
            prune_at: 1024,
            child_status: None,
            exit_delivered: false,
            gone_since: None,
            shut: false,
            buf: NotifBuf::new(),
        };
        match self.serve_until_exec(&mut sup) {
            Ok(()) => Ok(sup),
            Err(e) => {
                // Put the handles back so abort() can reach the keeper and the child.
                self.sock = sup.sock.take();
                sup.shut = true;
                let _ = sys::pidfd_send_signal(sup.child_pidfd.as_raw_fd(), libc::SIGKILL);
                Err(e)
            }
        }
    }

    /// Step 4: answer the child's own calls (execve, and on failure its report) until the
    /// status pipe tells how the exec went: end of file (closed by the successful exec)
    /// or a failure record.
    fn serve_until_exec(&mut self, sup: &mut Supervisor) -> Result<(), LaunchError> {
        let status = self.status_r.as_raw_fd();
        let listener = sup.listener.as_raw_fd();
        loop {
            let mut fds = [
                sys::pollfd(status, libc::POLLIN),
                sys::pollfd(listener, libc::POLLIN),
            ];
            self.wait(&mut fds)?;
            if fds[0].revents == 0 && fds[1].revents & libc::POLLIN != 0 {
                // The exec closes the status pipe before the new program can make a call,
                // so look at the pipe again *after* seeing the notification: if it is
                // still quiet, the notification is the old image's (the pre-exec child is
                // single-threaded, so it is the only one pending).
                let mut again = [sys::pollfd(status, libc::POLLIN)];
                if !matches!(sys::poll(&mut again, 0), Ok(1)) {
                    let n = match sys::notif_recv(listener, &mut sup.buf) {
                        Ok(n) => n,
                        Err(Errno(libc::ENOENT | libc::EINTR)) => continue,
                        Err(errno) => {
                            return Err(LaunchError::Sys {
                                call: "seccomp NOTIF_RECV",
                                errno,
                            })
                        }
                    };
                    let slot = sup.inflight.record(n.id, n.tid);
                    let r = sys::notif_send(
                        listener,
                        &mut sup.buf,
                        n.id,
                        0,
                        libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                    );
                    sup.inflight.clear(slot);
                    match r {
                        Ok(()) | Err(Errno(libc::ENOENT)) => {}
                        Err(errno @ Errno(libc::EINVAL)) => return Err(LaunchError::Seccomp {
                            what: "kernel lacks SECCOMP_USER_NOTIF_FLAG_CONTINUE (needs Linux 5.5)",
                            errno,
                        }),
                        Err(errno) => {
                            return Err(LaunchError::Sys {
                                call: "seccomp NOTIF_SEND",
                                errno,
                            })
                        }
                    }
                    continue;
                }
            }
            if fds[0].revents != 0 || fds[1].revents & libc::POLLIN != 0 {
                return match sys::read_msg(status) {
                    Ok(None) => Ok(()),
                    Ok(Some(m)) => Err(self.child_failure(m)),
                    Err(errno) => Err(LaunchError::Sys {
                        call: "read",
                        errno,
                    }),
                };
            }
            if fds[1].revents & libc::POLLHUP != 0 {
                return Err(self.launch_err("the child died before its exec"));
            }
        }
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
