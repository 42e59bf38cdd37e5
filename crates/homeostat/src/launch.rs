//! Launcher mode's loop: calls captured by the seccomp supervisor go to a consumer
//! (the pH engine, or a recording), and its verdicts are applied — answered at once,
//! held for a delay while other tasks go on, or refused.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use homeostat_core::ph::{ExeKey, Verdict};
use homeostat_seccomp::nr::{self, Kind};
use homeostat_seccomp::{Action, ChildStatus, Event, LaunchOptions, Supervisor, SyscallEvent};
use homeostat_syscalls::Arch;

/// What the loop feeds each call to.
pub trait Consumer {
    /// A call is about to run; decide what to do with it.
    fn call(&mut self, ev: &SyscallEvent, arch: Arch, parent: Option<i32>) -> Verdict;
    /// Task `tid` of process `pid` exits (`group`: the whole process).
    fn exit(&mut self, pid: i32, tid: i32, group: bool);
    /// Called about once a second: periodic saves and status.
    fn tick(&mut self) {}
    /// Called on every turn of the loop (keep it cheap): control requests.
    fn poll(&mut self) {}
}

/// The parent of a task seen for the first time: the thread group leader for a
/// thread, else the PPid from /proc (a forked child).
fn parent_of(ev: &SyscallEvent) -> Option<i32> {
    if ev.tid != ev.pid {
        return Some(ev.pid);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", ev.tid)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The executable identity of an event.
pub fn exe_key(ev: &SyscallEvent) -> ExeKey {
    ExeKey {
        dev: ev.exe.dev,
        ino: ev.exe.ino,
    }
}

/// Runs `argv` under the supervisor until the whole process tree is gone; returns how
/// the direct child ended.
pub fn run(
    argv: &[OsString],
    opts: &LaunchOptions,
    consumer: &mut dyn Consumer,
) -> Result<ChildStatus> {
    let mut sup = Supervisor::spawn(argv, opts)
        .with_context(|| format!("cannot run {}", argv[0].to_string_lossy()))?;
    // Delayed calls: (when to answer, notification id).
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut status = ChildStatus::Unknown;
    let mut last_tick = Instant::now();
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, id))) = timers.peek().copied() {
            if due > now {
                break;
            }
            timers.pop();
            sup.respond(id, Action::Continue)?;
        }
        consumer.poll();
        if now.duration_since(last_tick) >= Duration::from_secs(1) {
            consumer.tick();
            last_tick = now;
        }
        let wait = timers
            .peek()
            .map(|Reverse((due, _))| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        match sup.next(Some(wait))? {
            None => {}
            Some(Event::ChildExited(st)) => status = st,
            // Held calls of tasks that died are answered (ENOENT, ignored) first.
            Some(Event::TreeGone) if timers.is_empty() => break,
            // TreeGone comes back at once on every call: wait for the timer instead.
            Some(Event::TreeGone) => std::thread::sleep(wait),
            Some(Event::Syscall(ev)) => {
                let arch = match ev.arch {
                    nr::AUDIT_ARCH_I386 => Arch::I386,
                    _ => Arch::X86_64,
                };
                let parent = if ev.new_task { parent_of(&ev) } else { None };
                let verdict = consumer.call(&ev, arch, parent);
                match verdict {
                    Verdict::Continue => {
                        sup.respond(ev.id, Action::Continue)?;
                    }
                    Verdict::Refuse => {
                        sup.respond(ev.id, Action::Deny(libc::EPERM))?;
                    }
                    Verdict::Delay(ns) => {
                        timers.push(Reverse((Instant::now() + Duration::from_nanos(ns), ev.id)));
                    }
                }
                match nr::kind(ev.arch, ev.nr) {
                    Kind::Exit => consumer.exit(ev.pid, ev.tid, false),
                    Kind::ExitGroup => consumer.exit(ev.pid, ev.tid, true),
                    _ => {}
                }
            }
        }
    }
    consumer.tick();
    Ok(status)
}

/// The shell-style exit code of a child status.
pub fn exit_code(st: ChildStatus) -> i32 {
    match st {
        ChildStatus::Exited(c) => c,
        ChildStatus::Signaled(s) => 128 + s,
        ChildStatus::Unknown => 1,
    }
}
