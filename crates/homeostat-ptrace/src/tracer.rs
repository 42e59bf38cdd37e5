//! The tracer: attach (seize every thread), turn ptrace stops into [`TraceEvent`]s,
//! answer syscall entries, detach.
//!
//! Every tracee is in one of a few states (see [`State`]); each wait status moves one
//! task. Only syscall-entry stops are reported; everything else (syscall exits, fork,
//! clone and exec events, signal deliveries, group-stops, the stops `PTRACE_INTERRUPT`
//! causes) is handled here and the task resumed at once, so a task the caller is not
//! holding is never left stopped.
//!
//! Threading: ptrace requests are accepted only from the thread that attached (the
//! kernel links tracees to a thread, not a process), so a [`Tracer`] is neither `Send`
//! nor `Sync`: create it on the thread that will run the monitor loop. Waiting uses
//! `__WNOTHREAD`, so tracers on other threads of the same process, and children of other
//! threads, are never disturbed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{self, Errno, SyscallInfo};
use crate::{proc, Action, AttachError, AttachOptions, Call, Exe, SyscallStop, TraceEvent};

/// Upper bound on the sleeps between polls when `next` has a deadline: the most a stop
/// can wait unnoticed once the spin is over.
const NAP_MAX: Duration = Duration::from_micros(500);
const NAP_MIN: Duration = Duration::from_micros(20);
/// In `detach_all`, how often to look for tracees that can never stop (zombie leaders).
const DETACH_RECHECK: Duration = Duration::from_millis(50);
/// Attach re-lists /proc/PID/task until a pass finds no new thread; a process creating
/// threads faster than that converges anyway (threads created by seized threads are
/// attached by the kernel), so this bound is only a guard.
const MAX_SEIZE_PASSES: usize = 1000;

/// How to restart a task that is being kept at its first stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// `PTRACE_SYSCALL`, delivering this signal (0: none).
    Syscall(i32),
    /// `PTRACE_LISTEN`: it is in group-stop.
    Listen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Running (resumed with `PTRACE_SYSCALL`, or seized and interrupted, or announced by
    /// its creator's fork/clone event): its next stop comes through `waitpid`.
    Running,
    /// At a syscall-entry stop that was reported; waits for `respond`.
    Held,
    /// In group-stop (the process was stopped by SIGSTOP & co.), restarted with
    /// `PTRACE_LISTEN`: stays stopped, but reports when the stop ends.
    Listening,
    /// A new tracee whose first stop came before its creator's fork/clone event: kept
    /// stopped until that event names its parent, so its first report carries it.
    AwaitParent(Resume),
}

#[derive(Debug)]
struct Task {
    /// Thread group id; 0 until known.
    tgid: i32,
    /// `None`: read /proc/TID/exe at the next report (new task, or after an exec).
    exe: Option<Arc<Exe>>,
    parent: Option<i32>,
    /// A syscall stop has been reported for this tid.
    reported: bool,
    state: State,
    /// An entry answered `Deny(errno)`: set the return value at the exit stop.
    deny: Option<i32>,
    /// Seized inside a call that a signal cut short (the stop that made it ours, or
    /// our interrupt): its number. The task's next entry of that number is that call
    /// again, not a new one ([`SyscallStop::restarted`]).
    restarting: Option<u64>,
}

impl Task {
    fn new(tgid: i32, parent: Option<i32>, exe: Option<Arc<Exe>>, state: State) -> Task {
        Task {
            tgid,
            exe,
            parent,
            reported: false,
            state,
            deny: None,
            restarting: None,
        }
    }
}

/// A wait status, decoded.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Gone,
    /// A syscall-entry or -exit stop (`SIGTRAP | 0x80` with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// `PTRACE_EVENT_*` stop: (event, signal).
    Event(i32, i32),
    /// Signal-delivery-stop: the signal the task is about to receive.
    Signal(i32),
    /// `WIFCONTINUED` or anything else not asked for.
    Other,
}

fn decode(status: i32) -> Stop {
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Stop::Gone;
    }
    if !libc::WIFSTOPPED(status) {
        return Stop::Other;
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xffff;
    if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else if event != 0 {
        Stop::Event(event, sig)
    } else {
        Stop::Signal(sig)
    }
}

/// A `PTRACE_EVENT_STOP` with one of these signals is a group-stop; with SIGTRAP it is
/// an interrupt, a new tracee's first stop, or the end of a group-stop (SIGCONT).
fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

fn ptrace_err(call: &'static str, pid: i32) -> impl Fn(Errno) -> AttachError {
    move |errno| AttachError::Ptrace { call, pid, errno }
}

/// An attached process tree. See the crate docs.
///
/// Dropping it without [`Tracer::detach_all`] detaches too (best effort, errors ignored).
pub struct Tracer {
    /// The process attached to (for messages).
    pid: i32,
    opts: AttachOptions,
    tasks: HashMap<i32, Task>,
    /// Events decoded but not yet returned (one wait status can yield two).
    queue: VecDeque<TraceEvent>,
    detached: bool,
    /// ptrace requests must come from the attaching thread: not `Send`, not `Sync`.
    _thread: PhantomData<*const ()>,
}

impl Tracer {
    /// Seizes every thread of process `pid` (a thread id stands for its process),
    /// retrying for threads created meanwhile, with
    /// `PTRACE_O_TRACESYSGOOD | TRACEFORK | TRACEVFORK | TRACECLONE | TRACEEXEC` — and
    /// deliberately not `EXITKILL`: if the tracer dies, the tracees run on. Each is then
    /// interrupted; [`Tracer::next`] restarts it so that every syscall entry stops.
    ///
    /// Processes `pid` creates from now on are traced from their creation; ones already
    /// running below it only with [`AttachOptions::descendants`]. Must be called on the
    /// thread that will call the other methods (see the module docs).
    ///
    /// Errors: [`AttachError::InvalidPid`], [`AttachError::NoSuchProcess`],
    /// [`AttachError::SelfAttach`] (this process or one of its threads),
    /// [`AttachError::AlreadyTraced`] (a debugger, strace, another tracer),
    /// [`AttachError::PermissionDenied`] (not root, Yama, a kernel thread, ...).
    /// On error nothing stays attached.
    pub fn attach(pid: i32, opts: &AttachOptions) -> Result<Tracer, AttachError> {
        if pid <= 0 {
            return Err(AttachError::InvalidPid(pid));
        }
        let me = std::process::id() as i32;
        if pid == me {
            return Err(AttachError::SelfAttach(pid));
        }
        let Some(tgid) = proc::tgid(pid) else {
            return Err(AttachError::NoSuchProcess(pid));
        };
        if tgid == me {
            return Err(AttachError::SelfAttach(pid));
        }
        let mut tracer = Tracer {
            pid: tgid,
            opts: opts.clone(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            detached: false,
            _thread: PhantomData,
        };
        match tracer.seize_all() {
            Ok(()) => Ok(tracer),
            Err(e) => {
                // Leave nothing half-attached; the error that matters is the first one.
                let _ = tracer.detach_inner();
                Err(e)
            }
        }
    }

    /// Seizes the process, and with `opts.descendants` every process below it, until a
    /// scan of /proc finds nothing new. Processes created by seized ones are attached by
    /// the kernel and need no scan; the rescans catch those forked by processes not yet
    /// seized.
    fn seize_all(&mut self) -> Result<(), AttachError> {
        let me = sys::gettid();
        // Threads already ours because a seized task created them (the kernel attached
        // them); they announce themselves through waitpid like any new tracee.
        let mut auto: HashSet<i32> = HashSet::new();
        self.seize_process(self.pid, true, me, &mut auto)?;
        if !self.opts.descendants {
            return Ok(());
        }
        let mut procs: HashSet<i32> = HashSet::from([self.pid]);
        for _ in 0..MAX_SEIZE_PASSES {
            let fresh: Vec<i32> = proc::children_of(&procs)
                .into_iter()
                .filter(|c| !procs.contains(c))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for child in fresh {
                procs.insert(child);
                // A descendant that cannot be traced (gone, or not ours to trace) is
                // skipped: the process asked for is what must succeed.
                match self.seize_process(child, false, me, &mut auto) {
                    Ok(()) => {}
                    Err(AttachError::NoSuchProcess(_) | AttachError::PermissionDenied { .. }) => {}
                    Err(AttachError::AlreadyTraced { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Seizes every thread of process `pid`, re-listing /proc/PID/task until a pass finds
    /// no new thread. `root`: the process the caller named (errors name it).
    fn seize_process(
        &mut self,
        pid: i32,
        root: bool,
        me: i32,
        auto: &mut HashSet<i32>,
    ) -> Result<(), AttachError> {
        let options = sys::PTRACE_O_TRACESYSGOOD
            | sys::PTRACE_O_TRACEFORK
            | sys::PTRACE_O_TRACEVFORK
            | sys::PTRACE_O_TRACECLONE
            | sys::PTRACE_O_TRACEEXEC;
        let mut seized_any = false;
        for _ in 0..MAX_SEIZE_PASSES {
            let Some(tids) = proc::threads(pid) else {
                if !seized_any {
                    return Err(AttachError::NoSuchProcess(pid));
                }
                break; // the process died meanwhile: its exits will be reported
            };
            let mut fresh = 0;
            for tid in tids {
                if self.tasks.contains_key(&tid) || auto.contains(&tid) {
                    continue;
                }
                match sys::seize(tid, options) {
                    Ok(()) => {
                        fresh += 1;
                        seized_any = true;
                        self.tasks
                            .insert(tid, Task::new(pid, None, None, State::Running));
                        // ESRCH: it died already; its exit will be reported.
                        match sys::interrupt(tid) {
                            Ok(()) | Err(Errno(libc::ESRCH)) => {}
                            Err(errno) => {
                                return Err(AttachError::Ptrace {
                                    call: "PTRACE_INTERRUPT",
                                    pid: tid,
                                    errno,
                                })
                            }
                        }
                    }
                    // A thread that exited between the listing and now.
                    Err(Errno(libc::ESRCH)) if seized_any => {}
                    Err(Errno(libc::ESRCH)) if tid != pid => {}
                    Err(Errno(libc::ESRCH)) => return Err(AttachError::NoSuchProcess(pid)),
                    Err(Errno(libc::EPERM)) if proc::tracer(tid) == Some(me) => {
                        auto.insert(tid);
                        seized_any = true;
                    }
                    Err(Errno(libc::EPERM)) => return Err(permission_error(pid, tid)),
                    Err(errno) => {
                        return Err(AttachError::Ptrace {
                            call: "PTRACE_SEIZE",
                            pid: tid,
                            errno,
                        })
                    }
                }
            }
            if fresh == 0 {
                break;
            }
        }
        if root && !seized_any {
            return Err(AttachError::NoSuchProcess(pid));
        }
        Ok(())
    }

    /// The process attached to (its thread group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Number of tasks currently traced (including ones announced but not yet seen).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Whether `tid` is stopped at a reported syscall entry, waiting for `respond`.
    pub fn is_held(&self, tid: i32) -> bool {
        self.tasks.get(&tid).is_some_and(|t| t.state == State::Held)
    }

    /// Waits up to `timeout` (`None`: without limit) for the next event. `Ok(None)`: the
    /// time ran out, or (without a timeout) a signal handler interrupted the wait.
    ///
    /// With a timeout the wait is a poll (`WNOHANG`) with sleeps of at most half a
    /// millisecond between looks, because `waitpid` cannot time out; without one it
    /// blocks in `waitpid` after the spin. A caller holding calls must pass a timeout:
    /// when every task is held, nothing can happen but their death.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<TraceEvent>, AttachError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            if self.tasks.is_empty() || self.detached {
                return Ok(Some(TraceEvent::AllGone));
            }
            match self.wait(deadline)? {
                Some((tid, status)) => {
                    if let Some(ev) = self.handle(tid, status)? {
                        return Ok(Some(ev));
                    }
                }
                None => return Ok(self.queue.pop_front()),
            }
        }
    }

    /// One wait status, with the spin / sleep / block policy described on `next`.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<Option<(i32, i32)>, AttachError> {
        let start = Instant::now();
        let mut nap = NAP_MIN;
        loop {
            match sys::wait_any(true) {
                Ok(Some(got)) => return Ok(Some(got)),
                Ok(None) => {}
                Err(Errno(libc::EINTR)) => continue,
                Err(Errno(libc::ECHILD)) => {
                    self.all_vanished();
                    return Ok(None);
                }
                Err(errno) => {
                    return Err(AttachError::Wait {
                        pid: self.pid,
                        errno,
                    })
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if now.duration_since(start) < self.opts.spin {
                sys::sched_yield();
                continue;
            }
            match deadline {
                None => {
                    return match sys::wait_any(false) {
                        Ok(got) => Ok(got),
                        Err(Errno(libc::EINTR)) => Ok(None),
                        Err(Errno(libc::ECHILD)) => {
                            self.all_vanished();
                            Ok(None)
                        }
                        Err(errno) => Err(AttachError::Wait {
                            pid: self.pid,
                            errno,
                        }),
                    }
                }
                Some(d) => {
                    std::thread::sleep(nap.min(d.saturating_duration_since(now)));
                    nap = (nap * 2).min(NAP_MAX);
                }
            }
        }
    }

    /// `waitpid` says this thread has no tracee left although the table has entries
    /// (it should not happen): report them all gone rather than wait forever.
    fn all_vanished(&mut self) {
        let mut tids: Vec<i32> = self.tasks.keys().copied().collect();
        tids.sort_unstable();
        self.tasks.clear();
        self.queue
            .extend(tids.into_iter().map(|tid| TraceEvent::TaskGone { tid }));
    }

    /// Moves task `tid` on after wait status `status`; returns the event to report, if
    /// any (further events go to the queue).
    fn handle(&mut self, tid: i32, status: i32) -> Result<Option<TraceEvent>, AttachError> {
        let stop = decode(status);
        if let Stop::Gone = stop {
            // An unknown tid is a new tracee that died before its first stop was seen,
            // or a child of this thread's own (never a tracee): nothing to report.
            let known = self.tasks.remove(&tid).is_some();
            // A creator killed between creating a task and reporting the event never
            // reports it: do not keep its child waiting for it.
            self.release_awaiting();
            return Ok(known.then_some(TraceEvent::TaskGone { tid }));
        }
        let Some(task) = self.tasks.get_mut(&tid) else {
            return self.first_stop_of_unknown(tid, stop);
        };
        if !task.reported && task.restarting.is_none() && !matches!(stop, Stop::Syscall) {
            // Stopped before any call of its own was seen: perhaps inside one that will
            // run again. ESRCH and the like: nothing known, nothing marked.
            task.restarting = sys::restarting_call(tid).ok().flatten();
        }
        match stop {
            Stop::Gone | Stop::Other => Ok(None),
            Stop::Syscall => self.syscall_stop(tid),
            Stop::Signal(sig) => {
                // Signal-delivery-stop: deliver it as the kernel would have.
                task.state = State::Running;
                resume(tid, sig)?;
                Ok(None)
            }
            Stop::Event(sys::PTRACE_EVENT_STOP, sig) => {
                if is_stop_signal(sig) {
                    // Group-stop: the process was stopped (SIGSTOP, ^Z ...). Resuming it
                    // with PTRACE_SYSCALL would undo the stop; LISTEN keeps it stopped
                    // and makes it report again when SIGCONT (or a new signal) comes.
                    task.state = State::Listening;
                    match sys::listen(tid) {
                        Ok(()) | Err(Errno(libc::ESRCH)) => Ok(None),
                        Err(errno) => Err(AttachError::Ptrace {
                            call: "PTRACE_LISTEN",
                            pid: tid,
                            errno,
                        }),
                    }
                } else {
                    // The stop our PTRACE_INTERRUPT asked for, or the end of a
                    // group-stop: from here on stop at every syscall.
                    task.state = State::Running;
                    resume(tid, 0)?;
                    Ok(None)
                }
            }
            Stop::Event(
                ev @ (sys::PTRACE_EVENT_FORK | sys::PTRACE_EVENT_VFORK | sys::PTRACE_EVENT_CLONE),
                _,
            ) => {
                task.state = State::Running;
                let parent_exe = task.exe.clone();
                let parent_tgid = task.tgid;
                let child = match sys::geteventmsg(tid) {
                    Ok(c) => Some(c as i32),
                    Err(Errno(libc::ESRCH)) => None,
                    Err(errno) => {
                        resume(tid, 0)?;
                        return Err(AttachError::Ptrace {
                            call: "PTRACE_GETEVENTMSG",
                            pid: tid,
                            errno,
                        });
                    }
                };
                if let Some(child) = child.filter(|&c| c > 0) {
                    self.adopt(tid, child, ev, parent_tgid, parent_exe)?;
                }
                resume(tid, 0)?;
                Ok(None)
            }
            Stop::Event(sys::PTRACE_EVENT_EXEC, _) => self.exec_stop(tid),
            Stop::Event(_, _) => {
                task.state = State::Running;
                resume(tid, 0)?;
                Ok(None)
            }
        }
    }

    /// The first stop of a tid not in the table: a process or thread a tracee just
    /// created, whose creator's event has not been seen yet. Keep it stopped until it
    /// has, so its first report can name its parent (the pitfall noted in the capture
    /// notes: that first stop may be a group-stop rather than the usual trap).
    fn first_stop_of_unknown(
        &mut self,
        tid: i32,
        stop: Stop,
    ) -> Result<Option<TraceEvent>, AttachError> {
        let resume_with = match stop {
            Stop::Event(sys::PTRACE_EVENT_STOP, sig) if is_stop_signal(sig) => Resume::Listen,
            Stop::Signal(sig) => Resume::Syscall(sig),
            Stop::Event(_, _) | Stop::Other => Resume::Syscall(0),
            Stop::Syscall | Stop::Gone => {
                // Not expected as a first stop; handle it as a known task's.
                self.tasks
                    .insert(tid, Task::new(0, None, None, State::Running));
                return match stop {
                    Stop::Syscall => self.syscall_stop(tid),
                    _ => Ok(None),
                };
            }
        };
        self.tasks.insert(
            tid,
            Task::new(0, None, None, State::AwaitParent(resume_with)),
        );
        Ok(None)
    }

    /// Records `child`, created by `parent` (fork/vfork/clone event), and restarts it if
    /// it was already waiting for this.
    fn adopt(
        &mut self,
        parent: i32,
        child: i32,
        event: i32,
        parent_tgid: i32,
        parent_exe: Option<Arc<Exe>>,
    ) -> Result<(), AttachError> {
        // A fork or vfork makes a process; a clone event may be a thread (same group) or
        // a process with an unusual exit signal: ask /proc, once.
        let tgid = if event == sys::PTRACE_EVENT_CLONE {
            match proc::tgid(child) {
                Some(t) => t,
                None if parent_tgid != 0 => parent_tgid,
                None => child,
            }
        } else {
            child
        };
        match self.tasks.get_mut(&child) {
            Some(c) => {
                c.parent = Some(parent);
                c.tgid = tgid;
                if c.exe.is_none() {
                    c.exe = parent_exe;
                }
                if let State::AwaitParent(how) = c.state {
                    restart(child, how, c)?;
                }
            }
            None => {
                // Its first stop is still to come; then it is restarted like any task.
                self.tasks.insert(
                    child,
                    Task::new(tgid, Some(parent), parent_exe, State::Running),
                );
            }
        }
        Ok(())
    }

    /// Restarts every task kept at its first stop (their creator may never report).
    fn release_awaiting(&mut self) {
        for (&tid, task) in self.tasks.iter_mut() {
            if let State::AwaitParent(how) = task.state {
                // Errors here are ESRCH-like races with death; the exit will be reported.
                let _ = restart(tid, how, task);
            }
        }
    }

    fn syscall_stop(&mut self, tid: i32) -> Result<Option<TraceEvent>, AttachError> {
        let info = match sys::get_syscall_info(tid) {
            Ok(info) => info,
            // Killed meanwhile; the exit comes next.
            Err(Errno(libc::ESRCH)) => return Ok(None),
            Err(errno) => {
                resume(tid, 0)?;
                return Err(
                    if errno == Errno(libc::EIO) || errno == Errno(libc::EINVAL) {
                        AttachError::Unsupported(errno)
                    } else {
                        AttachError::Ptrace {
                            call: "PTRACE_GET_SYSCALL_INFO",
                            pid: tid,
                            errno,
                        }
                    },
                );
            }
        };
        let Some(task) = self.tasks.get_mut(&tid) else {
            return Ok(None);
        };
        match info {
            SyscallInfo::Entry { arch, nr, args } => {
                let new_task = !task.reported;
                let restarted = task.restarting.take() == Some(nr);
                task.reported = true;
                task.state = State::Held;
                if task.tgid == 0 {
                    task.tgid = proc::tgid(tid).unwrap_or(tid);
                }
                let exe = match &task.exe {
                    Some(e) => e.clone(),
                    None => {
                        let e = Arc::new(proc::exe(tid));
                        // An unreadable link (a race with death) is not cached.
                        if e.ino != 0 {
                            task.exe = Some(e.clone());
                        }
                        e
                    }
                };
                Ok(Some(TraceEvent::Syscall(SyscallStop {
                    call: Call {
                        tid,
                        pid: task.tgid,
                        arch,
                        nr: nr as u32,
                        args,
                        exe,
                        new_task,
                    },
                    parent: task.parent,
                    restarted,
                })))
            }
            SyscallInfo::Exit => {
                task.state = State::Running;
                if let Some(errno) = task.deny.take() {
                    match sys::set_return(tid, -(errno as i64)) {
                        Ok(()) => {}
                        Err(Errno(libc::ESRCH)) => return Ok(None),
                        Err(errno) => {
                            resume(tid, 0)?;
                            return Err(AttachError::Ptrace {
                                call: "PTRACE_POKEUSER (return value)",
                                pid: tid,
                                errno,
                            });
                        }
                    }
                }
                resume(tid, 0)?;
                Ok(None)
            }
            SyscallInfo::Other => {
                task.state = State::Running;
                resume(tid, 0)?;
                Ok(None)
            }
        }
    }

    /// `PTRACE_EVENT_EXEC`: the task runs a new program. If a thread other than the
    /// leader exec'd, the kernel has given it the leader's tid and reaped the old leader
    /// without a report; the message names the tid the thread had.
    fn exec_stop(&mut self, tid: i32) -> Result<Option<TraceEvent>, AttachError> {
        let former = match sys::geteventmsg(tid) {
            Ok(f) => f as i32,
            Err(Errno(libc::ESRCH)) => return Ok(None),
            Err(errno) => {
                resume(tid, 0)?;
                return Err(ptrace_err("PTRACE_GETEVENTMSG", tid)(errno));
            }
        };
        if former != tid && former > 0 {
            let execer = self.tasks.remove(&former);
            let old_leader = self.tasks.remove(&tid);
            self.queue.push_back(TraceEvent::TaskGone { tid: former });
            if old_leader.is_some() {
                // Whatever the leader was doing (even a held call) ended with it.
                self.queue.push_back(TraceEvent::TaskGone { tid });
            }
            let (tgid, parent) = execer
                .or(old_leader)
                .map_or((0, None), |t| (t.tgid, t.parent));
            self.tasks
                .insert(tid, Task::new(tgid, parent, None, State::Running));
        } else if let Some(task) = self.tasks.get_mut(&tid) {
            task.exe = None;
            task.state = State::Running;
        }
        resume(tid, 0)?;
        Ok(None)
    }

    /// Answers the reported syscall entry of `tid`. Holding a tid (not answering yet) is
    /// how the caller delays it; other tasks go on meanwhile.
    ///
    /// `Deny(errno)` sets the call number to -1, which makes the kernel skip the call,
    /// and sets the return value to `-errno` at the exit stop. A tid that is gone (its
    /// `TaskGone` reported or about to be) is answered `Ok`; a live tid that is not at a
    /// reported entry gives [`AttachError::NotHeld`].
    pub fn respond(&mut self, tid: i32, action: Action) -> Result<(), AttachError> {
        action.checked().map_err(AttachError::BadErrno)?;
        let Some(task) = self.tasks.get_mut(&tid) else {
            return Ok(());
        };
        if task.state != State::Held {
            return Err(AttachError::NotHeld(tid));
        }
        task.state = State::Running;
        if let Action::Deny(errno) = action {
            match sys::skip_syscall(tid) {
                Ok(()) => task.deny = Some(errno),
                Err(Errno(libc::ESRCH)) => return Ok(()),
                Err(errno) => {
                    resume(tid, 0)?;
                    return Err(AttachError::Ptrace {
                        call: "PTRACE_POKEUSER (call number)",
                        pid: tid,
                        errno,
                    });
                }
            }
        }
        resume(tid, 0)
    }

    /// Detaches every tracee and leaves it running — or stopped, if its process was
    /// stopped by a signal (then SIGCONT continues it as usual). Held entries run (as if
    /// answered `Continue`); a pending denial still gets its return value; a signal
    /// intercepted at a signal-delivery-stop is delivered. Running tracees are
    /// interrupted first, because a tracee can only be detached from a ptrace-stop.
    pub fn detach_all(mut self) -> Result<(), AttachError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), AttachError> {
        if self.detached {
            return Ok(());
        }
        self.detached = true;
        self.queue.clear();
        let deadline = Instant::now() + self.opts.detach_timeout;
        let mut first_err: Option<AttachError> = None;
        // tid -> errno of a denial still waiting for its exit stop.
        let mut waiting: HashMap<i32, Option<i32>> = HashMap::new();
        let mut done: HashSet<i32> = HashSet::new();
        let mut tasks: Vec<(i32, Task)> = self.tasks.drain().collect();
        tasks.sort_unstable_by_key(|(tid, _)| *tid);
        for (tid, task) in tasks {
            let sig = match task.state {
                // At a syscall-entry stop: detaching lets the call run, as Continue would.
                State::Held => Some(0),
                State::AwaitParent(Resume::Syscall(sig)) => Some(sig),
                State::AwaitParent(Resume::Listen) => Some(0),
                State::Running | State::Listening => None,
            };
            match sig {
                Some(sig) => detach_stopped(tid, sig, &mut done, &mut waiting, &mut first_err),
                None => {
                    // Running or listening: make it stop, then detach it at that stop.
                    // ESRCH: dying; its exit status is collected below all the same.
                    if let Err(errno) = sys::interrupt(tid) {
                        if errno != Errno(libc::ESRCH) {
                            first_err.get_or_insert(ptrace_err("PTRACE_INTERRUPT", tid)(errno));
                        }
                    }
                    waiting.insert(tid, task.deny);
                }
            }
        }
        let mut recheck = Instant::now() + DETACH_RECHECK;
        while !waiting.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now >= recheck {
                // A zombie leader (its thread exited, others live on) never stops and
                // cannot be detached; one no longer in /proc was reaped elsewhere.
                waiting.retain(|&t, _| proc::exists(t) && proc::state(t) != Some('Z'));
                recheck = now + DETACH_RECHECK;
                continue;
            }
            let got = match sys::wait_any(true) {
                Ok(Some(got)) => got,
                Ok(None) => {
                    std::thread::sleep(NAP_MIN * 5);
                    continue;
                }
                Err(Errno(libc::EINTR)) => continue,
                Err(Errno(libc::ECHILD)) => {
                    waiting.clear();
                    break;
                }
                Err(errno) => {
                    first_err.get_or_insert(AttachError::Wait {
                        pid: self.pid,
                        errno,
                    });
                    break;
                }
            };
            let (tid, status) = got;
            let deny = waiting.remove(&tid).flatten();
            let sig = match decode(status) {
                Stop::Gone | Stop::Other => continue,
                Stop::Syscall => {
                    if let (Some(errno), Ok(SyscallInfo::Exit)) = (deny, sys::get_syscall_info(tid))
                    {
                        let _ = sys::set_return(tid, -(errno as i64));
                    }
                    0
                }
                Stop::Event(
                    sys::PTRACE_EVENT_FORK | sys::PTRACE_EVENT_VFORK | sys::PTRACE_EVENT_CLONE,
                    _,
                ) => {
                    // The kernel attached the new task: it must be detached too.
                    if let Ok(child) = sys::geteventmsg(tid) {
                        let child = child as i32;
                        if child > 0 && !done.contains(&child) {
                            waiting.insert(child, None);
                        }
                    }
                    0
                }
                Stop::Event(sys::PTRACE_EVENT_EXEC, _) => {
                    if let Ok(former) = sys::geteventmsg(tid) {
                        if former as i32 != tid {
                            waiting.remove(&(former as i32));
                        }
                    }
                    0
                }
                Stop::Event(_, _) => 0,
                Stop::Signal(sig) => sig,
            };
            detach_stopped(tid, sig, &mut done, &mut waiting, &mut first_err);
        }
        if !waiting.is_empty() {
            let mut tids: Vec<i32> = waiting.into_keys().collect();
            tids.sort_unstable();
            return Err(AttachError::DetachTimeout {
                pid: self.pid,
                timeout: self.opts.detach_timeout,
                tids,
            });
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// `PTRACE_DETACH(sig)` of a tracee in a ptrace-stop, for `detach_all`: on success it
/// is `done`; killed while stopped (ESRCH), it goes back to `waiting` so that its exit
/// is collected; any other error is kept (the first one) and the others still go on.
fn detach_stopped(
    tid: i32,
    sig: i32,
    done: &mut HashSet<i32>,
    waiting: &mut HashMap<i32, Option<i32>>,
    first_err: &mut Option<AttachError>,
) {
    match sys::detach(tid, sig) {
        Ok(()) => {
            done.insert(tid);
        }
        Err(Errno(libc::ESRCH)) => {
            waiting.insert(tid, None);
        }
        Err(errno) => {
            first_err.get_or_insert(ptrace_err("PTRACE_DETACH", tid)(errno));
        }
    }
}

/// `PTRACE_SYSCALL(sig)`; ESRCH (the task was killed while stopped) is not an error: its
/// exit will be reported.
fn resume(tid: i32, sig: i32) -> Result<(), AttachError> {
    match sys::syscall(tid, sig) {
        Ok(()) | Err(Errno(libc::ESRCH)) => Ok(()),
        Err(errno) => Err(AttachError::Ptrace {
            call: "PTRACE_SYSCALL",
            pid: tid,
            errno,
        }),
    }
}

/// Restarts a task kept at its first stop, the way that stop asked for.
fn restart(tid: i32, how: Resume, task: &mut Task) -> Result<(), AttachError> {
    match how {
        Resume::Syscall(sig) => {
            task.state = State::Running;
            resume(tid, sig)
        }
        Resume::Listen => {
            task.state = State::Listening;
            match sys::listen(tid) {
                Ok(()) | Err(Errno(libc::ESRCH)) => Ok(()),
                Err(errno) => Err(AttachError::Ptrace {
                    call: "PTRACE_LISTEN",
                    pid: tid,
                    errno,
                }),
            }
        }
    }
}

/// Explains an EPERM from PTRACE_SEIZE as precisely as /proc allows.
fn permission_error(pid: i32, tid: i32) -> AttachError {
    if let Some(tracer) = proc::tracer(tid).filter(|&t| t != 0) {
        return AttachError::AlreadyTraced { pid, tracer };
    }
    let hint = if proc::is_kernel_thread(pid) {
        "it looks like a kernel thread, which cannot be traced".to_string()
    } else {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        let mut hint = if euid != 0 {
            "ptrace needs the same user or CAP_SYS_PTRACE; try as root".to_string()
        } else {
            "denied although root: a security module (Yama, SELinux, AppArmor) or lockdown refuses it"
                .to_string()
        };
        if let Some(scope) = proc::yama_scope().filter(|&s| s > 0) {
            hint.push_str(&format!("; kernel.yama.ptrace_scope is {scope}"));
        }
        hint
    };
    AttachError::PermissionDenied { pid, hint }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Tracees left attached to a live thread would stay stopped at their next stop.
        let _ = self.detach_inner();
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("pid", &self.pid)
            .field("tasks", &self.tasks.len())
            .field(
                "held",
                &self
                    .tasks
                    .values()
                    .filter(|t| t.state == State::Held)
                    .count(),
            )
            .field("detached", &self.detached)
            .finish()
    }
}
