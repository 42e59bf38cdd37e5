//! The monitor loop shared by every capture mechanism: calls captured by a [`Source`]
//! (the seccomp launcher, or a ptrace attach) go to a [`Consumer`] (the pH engine, or a
//! recording), and its verdicts are applied — answered at once, held for a delay while
//! other tasks go on, or refused with EPERM.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use homeostat_core::ph::{ExeKey, Verdict};
use homeostat_seccomp::{ChildStatus, LaunchOptions, Supervisor};
use homeostat_syscalls::{call_kind, Arch, CallKind};

use crate::args::Captured;

/// One captured call, whatever captured it.
#[derive(Debug, Clone)]
pub struct CallEvent {
    /// What to answer with (notification id, or tid for ptrace).
    pub id: u64,
    /// Thread id.
    pub tid: i32,
    /// Process id.
    pub pid: i32,
    /// ABI of `nr`.
    pub arch: Arch,
    /// The raw AUDIT_ARCH value (for classifying exit calls).
    pub audit_arch: u32,
    /// Call number.
    pub nr: u32,
    /// The call's six argument registers, as the source read them (flags that decide
    /// what a call does, e.g. a `sendto`'s MSG_FASTOPEN, are not in [`CallEvent::arg`]).
    pub args: [u64; 6],
    /// The executable the task runs now.
    pub exe: ExeKey,
    /// Its path.
    pub path: Arc<Path>,
    /// Its birth time, when known (tells a file from a later one reusing its inode).
    pub born: Option<u64>,
    /// For a task seen for the first time: the task it came from.
    pub parent: Option<i32>,
    /// The argument that matters ([`crate::args`]), when the consumer asked for
    /// arguments and it could be read, and an i386 socket call's decoded arguments.
    pub captured: Captured,
}

impl CallEvent {
    /// The argument pH's symbols and the rate limits use ([`crate::engine::symbol_arg`]).
    pub fn symbol_arg(&self) -> Option<&homeostat_core::symbols::Arg> {
        crate::engine::symbol_arg(self.arch, self.captured.arg.as_ref())
    }
}

/// What a source reports.
pub enum SourceEvent {
    /// A call waits for an answer.
    Call(CallEvent),
    /// A task is gone.
    TaskGone(i32),
    /// The direct child exited (launcher only).
    ChildExited(ChildStatus),
    /// Nothing left to watch.
    Done,
}

/// A capture mechanism.
pub trait Source {
    /// The next event within `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Option<SourceEvent>>;
    /// Answers a call: `None` runs it, `Some(errno)` fails it.
    fn respond(&mut self, id: u64, deny: Option<i32>) -> Result<()>;
    /// Read each call's argument that matters into [`CallEvent::arg`] from now on.
    fn capture_args(&mut self, on: bool) {
        let _ = on;
    }
}

/// What the loop feeds each call to.
pub trait Consumer {
    /// A call is about to run; decide what to do with it.
    fn call(&mut self, ev: &CallEvent) -> Verdict;
    /// Task `tid` of process `pid` exits (`group`: the whole process).
    fn exit(&mut self, pid: i32, tid: i32, group: bool);
    /// Called about once a second: periodic saves and status.
    fn tick(&mut self) {}
    /// Called on every turn of the loop (keep it cheap): control requests.
    fn poll(&mut self) {}
    /// Does it use [`CallEvent::arg`]? Reading arguments costs a few system calls per
    /// open, exec or connect, so only consumers that use them ask.
    fn wants_args(&self) -> bool {
        false
    }
}

/// The profile ABI of a call: anything but i386 counts as x86_64 (the filter lets only
/// those two through, and x32 calls report `AUDIT_ARCH_X86_64`).
fn arch_of(audit_arch: u32) -> Arch {
    Arch::from_audit_arch(audit_arch).unwrap_or(Arch::X86_64)
}

/// The seccomp launcher as a source.
pub struct Launcher {
    sup: Supervisor,
    args: bool,
}

impl Launcher {
    /// A source of the calls `sup` is notified of.
    pub fn new(sup: Supervisor) -> Self {
        Launcher { sup, args: false }
    }
}

/// The parent of a launched task seen for the first time: the thread group leader for
/// a thread, else the PPid from /proc (a forked child).
fn parent_from_proc(tid: i32, pid: i32) -> Option<i32> {
    if tid != pid {
        return Some(pid);
    }
    i32::try_from(homeostat_proc::status_field(tid, "PPid:")?).ok()
}

impl Source for Launcher {
    fn next(&mut self, timeout: Duration) -> Result<Option<SourceEvent>> {
        use homeostat_seccomp::Event;
        Ok(match self.sup.next(Some(timeout))? {
            None => None,
            Some(Event::ChildExited(st)) => Some(SourceEvent::ChildExited(st)),
            Some(Event::TreeGone) => Some(SourceEvent::Done),
            Some(Event::Syscall(ev)) => Some(SourceEvent::Call(CallEvent {
                captured: if self.args {
                    let c = crate::args::capture_call(
                        ev.pid,
                        ev.tid,
                        arch_of(ev.arch),
                        ev.nr,
                        &ev.args,
                    );
                    // A task that died since the notification may have had its pid
                    // recycled: what was read may be another process's memory.
                    match self.sup.id_valid(ev.id) {
                        Ok(true) => c,
                        _ => Captured::default(),
                    }
                } else {
                    Captured::default()
                },
                id: ev.id,
                tid: ev.tid,
                pid: ev.pid,
                arch: arch_of(ev.arch),
                audit_arch: ev.arch,
                nr: ev.nr,
                args: ev.args,
                exe: ExeKey {
                    dev: ev.exe.dev,
                    ino: ev.exe.ino,
                },
                path: Arc::from(ev.exe.path.as_path()),
                born: ev.exe.born,
                parent: if ev.new_task {
                    parent_from_proc(ev.tid, ev.pid)
                } else {
                    None
                },
            })),
        })
    }

    fn respond(&mut self, id: u64, deny: Option<i32>) -> Result<()> {
        use homeostat_seccomp::Action;
        let action = deny.map_or(Action::Continue, Action::Deny);
        self.sup.respond(id, action)?;
        Ok(())
    }

    fn capture_args(&mut self, on: bool) {
        self.args = on;
    }
}

/// A ptrace attach as a source (the bool: capture arguments).
pub struct Attached(pub Option<homeostat_ptrace::Tracer>, pub bool);

impl Source for Attached {
    fn next(&mut self, timeout: Duration) -> Result<Option<SourceEvent>> {
        use homeostat_ptrace::TraceEvent;
        let Some(t) = self.0.as_mut() else {
            return Ok(Some(SourceEvent::Done));
        };
        Ok(match t.next(Some(timeout))? {
            None => None,
            Some(TraceEvent::AllGone) => Some(SourceEvent::Done),
            Some(TraceEvent::TaskGone { tid }) => Some(SourceEvent::TaskGone(tid)),
            Some(TraceEvent::Syscall(s)) => Some(SourceEvent::Call(CallEvent {
                // A ptrace-stopped task cannot die and be replaced under us.
                captured: if self.1 {
                    crate::args::capture_call(s.pid, s.tid, arch_of(s.arch), s.nr, &s.args)
                } else {
                    Captured::default()
                },
                id: s.tid as u64,
                tid: s.tid,
                pid: s.pid,
                arch: arch_of(s.arch),
                audit_arch: s.arch,
                nr: s.nr,
                args: s.args,
                exe: ExeKey {
                    dev: s.exe.dev,
                    ino: s.exe.ino,
                },
                path: Arc::from(s.exe.path.as_path()),
                born: s.exe.born,
                parent: if s.new_task { s.parent } else { None },
            })),
        })
    }

    fn respond(&mut self, id: u64, deny: Option<i32>) -> Result<()> {
        use homeostat_ptrace::Action;
        if let Some(t) = self.0.as_mut() {
            t.respond(id as i32, deny.map_or(Action::Continue, Action::Deny))?;
        }
        Ok(())
    }

    fn capture_args(&mut self, on: bool) {
        self.1 = on;
    }
}

/// Drives `source` into `consumer` until there is nothing left to watch or `stop` is
/// set; returns how the direct child ended (launcher) or `None`.
pub fn drive(
    source: &mut dyn Source,
    consumer: &mut dyn Consumer,
    stop: &AtomicBool,
) -> Result<Option<ChildStatus>> {
    // Delayed calls: (when to answer, id).
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut status = None;
    let mut last_tick = Instant::now();
    source.capture_args(consumer.wants_args());
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, id))) = timers.peek().copied() {
            if due > now {
                break;
            }
            timers.pop();
            source.respond(id, None)?;
        }
        consumer.poll();
        if now.duration_since(last_tick) >= Duration::from_secs(1) {
            consumer.tick();
            last_tick = now;
        }
        if stop.load(Ordering::Relaxed) {
            // Held calls run now: never leave a task waiting on a monitor that leaves.
            while let Some(Reverse((_, id))) = timers.pop() {
                source.respond(id, None)?;
            }
            break;
        }
        let wait = timers
            .peek()
            .map(|Reverse((due, _))| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        match source.next(wait)? {
            None => {}
            Some(SourceEvent::ChildExited(st)) => status = Some(st),
            Some(SourceEvent::TaskGone(tid)) => consumer.exit(tid, tid, false),
            // Nothing is left to watch, so every held call is a dead task's: answer
            // them now (the answers are ignored) rather than wait out their delays,
            // which would keep the monitor alive after its program for as long as the
            // longest (a rate-limit queue can hold a call for hours).
            Some(SourceEvent::Done) => {
                while let Some(Reverse((_, id))) = timers.pop() {
                    source.respond(id, None)?;
                }
                break;
            }
            Some(SourceEvent::Call(ev)) => {
                match consumer.call(&ev) {
                    Verdict::Continue => source.respond(ev.id, None)?,
                    Verdict::Refuse => source.respond(ev.id, Some(libc::EPERM))?,
                    Verdict::Delay(ns) => {
                        timers.push(Reverse((Instant::now() + Duration::from_nanos(ns), ev.id)))
                    }
                }
                match call_kind(ev.audit_arch, ev.nr) {
                    CallKind::Exit => consumer.exit(ev.pid, ev.tid, false),
                    CallKind::ExitGroup => consumer.exit(ev.pid, ev.tid, true),
                    _ => {}
                }
            }
        }
    }
    consumer.tick();
    Ok(status)
}

/// Runs `argv` under the seccomp launcher until the whole process tree is gone;
/// returns how the direct child ended.
pub fn run(
    argv: &[OsString],
    opts: &LaunchOptions,
    consumer: &mut dyn Consumer,
) -> Result<ChildStatus> {
    run_with(argv, opts, consumer, &mut |_| {})
}

/// [`run`], calling `started` with the direct child's pid once it runs (before any of
/// its calls is served): for the caller to forward signals to it, for example.
pub fn run_with(
    argv: &[OsString],
    opts: &LaunchOptions,
    consumer: &mut dyn Consumer,
    started: &mut dyn FnMut(i32),
) -> Result<ChildStatus> {
    let sup = Supervisor::spawn(argv, opts).map_err(|e| match e {
        // Already "cannot run X: <errno>"; main turns it into the shell's 127/126.
        e @ homeostat_seccomp::LaunchError::Exec { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("cannot run {}", argv[0].to_string_lossy())),
    })?;
    started(sup.child_pid());
    let status = drive(&mut Launcher::new(sup), consumer, &AtomicBool::new(false))?;
    Ok(status.unwrap_or(ChildStatus::Unknown))
}

/// The shell-style exit code of a child status.
pub fn exit_code(st: ChildStatus) -> i32 {
    match st {
        ChildStatus::Exited(c) => c,
        ChildStatus::Signaled(s) => 128 + s,
        ChildStatus::Unknown => 1,
    }
}
