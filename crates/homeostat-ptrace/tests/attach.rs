//! Real-process tests of attach mode (run as root; no mocks).
//!
//! The monitored programs are started with `std::process::Command` on the test thread;
//! the tracer always runs on a thread of its own, as the CLI's would: a tracer that is
//! also the real parent would collect the program's exit status itself.
//!
//! Tests that need a tracer in another process (to SIGKILL it), or a particular program
//! to trace, re-run this test binary with `--ignored --exact <helper>` and an environment
//! variable saying what to do. The helpers are `#[ignore]`d so that they do not count as
//! tests; run on their own (`--ignored`), without the variable, they do nothing.
//!
//! All tests take one lock: several use wall-clock time, and the machine has two CPUs.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homeostat_proc::{stat_field, status_field};
use homeostat_ptrace::{Action, AttachError, AttachOptions, SyscallStop, TraceEvent, Tracer};
use homeostat_syscalls::AUDIT_ARCH_X86_64;
use homeostat_testsupport::nr::{EXECVE as NR_EXECVE, MKDIR as NR_MKDIR, MKDIRAT as NR_MKDIRAT};
use homeostat_testsupport::{real, serial};

/// Upper bound for any one wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// A monitored program, run under a small `sh` parent of its own so that it is *not* a
/// child of this process: a tracer thread in the real parent's process is treated as the
/// parent by the kernel and would collect the exit status itself. The wrapper waits for
/// it and exits with its status. Killed (with its process group) and reaped on drop.
struct Proc {
    wrapper: Child,
    pid: i32,
}

impl Proc {
    /// Starts `argv` (with extra environment `env`) under the wrapper, in a new process
    /// group; returns once it has been exec'd.
    fn spawn(argv: &[&str], env: &[(&str, &str)]) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut wrapper = Command::new("/bin/sh")
            .arg("-c")
            .arg("\"$@\" </dev/null >/dev/null & echo $!; wait $!")
            .arg("sh")
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn wrapper sh");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: i32 = line.trim().parse().expect("pid from the wrapper");
        let p = Proc { wrapper, pid };
        let want = real(argv[0]);
        assert!(wait_until(Duration::from_secs(5), || {
            proc_exe(pid).is_some_and(|e| e == want)
        }));
        p
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the program's exit (bounded); `None` on timeout.
    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.wrapper.try_wait().expect("try_wait") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: wrapper, program, and the program's children.
        // SAFETY: kill(2) with integer arguments; the group is the wrapper's own.
        unsafe {
            libc::kill(-(self.wrapper.id() as i32), libc::SIGKILL);
        }
        let _ = self.wrapper.wait();
    }
}

/// `sh -c script`, see [`Proc`].
fn spawn_sh(script: &str) -> Proc {
    Proc::spawn(&["/bin/sh", "-c", script], &[])
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn proc_exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// State letter of /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    stat_field(pid, 3)?.chars().next()
}

/// Samples the state a few times: never stopped (T) or in a ptrace stop (t). Sleeping
/// (S), running (R), and briefly D (a shell waiting for its vfork child) are fine.
fn assert_running(pid: i32) {
    for _ in 0..10 {
        let st = proc_state(pid).expect("process gone");
        assert!(!matches!(st, 'T' | 't' | 'Z'), "state {st} of {pid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tracer_pid(pid: i32) -> Option<i32> {
    i32::try_from(status_field(pid, "TracerPid:")?).ok()
}

/// Runs `body` with a tracer attached to `pid`, on a thread of its own, then detaches
/// (the result of `detach_all` is checked).
fn traced<R: Send + 'static>(pid: i32, body: impl FnOnce(&mut Tracer) -> R + Send + 'static) -> R {
    traced_with(pid, AttachOptions::default(), body)
}

fn traced_with<R: Send + 'static>(
    pid: i32,
    opts: AttachOptions,
    body: impl FnOnce(&mut Tracer) -> R + Send + 'static,
) -> R {
    std::thread::spawn(move || {
        let mut t = Tracer::attach(pid, &opts).expect("attach");
        let r = body(&mut t);
        t.detach_all().expect("detach_all");
        r
    })
    .join()
    .expect("tracer thread panicked")
}

/// Serves events for `dur` (or until AllGone), answering with `answer`; returns the
/// syscall stops seen and whether AllGone came.
fn serve(
    t: &mut Tracer,
    dur: Duration,
    mut answer: impl FnMut(&SyscallStop) -> Action,
) -> (Vec<SyscallStop>, bool) {
    let end = Instant::now() + dur;
    let mut stops = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            return (stops, false);
        }
        match t.next(Some(end - now)).expect("next") {
            Some(TraceEvent::Syscall(s)) => {
                t.respond(s.tid, answer(&s)).expect("respond");
                stops.push(s);
            }
            Some(TraceEvent::TaskGone { .. }) | None => {}
            Some(TraceEvent::AllGone) => return (stops, true),
        }
    }
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn follows_a_running_shell_and_its_children_then_detaches() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let sh = spawn_sh(&format!(
        "while true; do cat /dev/null; date >> {}; sleep 0.05; done",
        log.display()
    ));
    let pid = sh.pid();
    let progs = ["/usr/bin/cat", "/usr/bin/sleep", "/usr/bin/date"].map(real);
    let wanted = progs.clone();
    let stops = traced(pid, move |t| {
        assert_eq!(t.pid(), pid);
        // About a second, longer if a loaded machine has not run each program yet.
        let start = Instant::now();
        let mut stops = Vec::new();
        while start.elapsed() < LIMIT {
            stops.extend(serve(t, Duration::from_millis(250), |_| Action::Continue).0);
            let seen = |p: &PathBuf| stops.iter().any(|s: &SyscallStop| &s.exe.path == p);
            if start.elapsed() >= Duration::from_secs(1) && wanted.iter().all(seen) {
                break;
            }
        }
        stops
    });

    // The shell itself.
    let own: Vec<&SyscallStop> = stops.iter().filter(|s| s.tid == pid).collect();
    assert!(!own.is_empty(), "no calls from the shell {pid}");
    assert!(own[0].new_task && own[0].parent.is_none());
    assert!(own
        .iter()
        .all(|s| s.pid == pid && s.exe.path == real("/bin/sh")));
    assert!(stops.iter().all(|s| s.arch == AUDIT_ARCH_X86_64));

    // new_task exactly on each tid's first stop.
    let mut seen = HashSet::new();
    for s in &stops {
        assert_eq!(
            s.new_task,
            seen.insert(s.tid),
            "new_task wrong for {}",
            s.tid
        );
    }

    // Children: forked by the shell, then exec'ing cat / date / sleep.
    let mut by_tid: HashMap<i32, Vec<&SyscallStop>> = HashMap::new();
    for s in stops.iter().filter(|s| s.tid != pid) {
        by_tid.entry(s.tid).or_default().push(s);
    }
    let mut ran: HashMap<PathBuf, usize> = HashMap::new();
    for (tid, ss) in &by_tid {
        let first = ss[0];
        assert!(first.new_task, "child {tid}: first stop not new_task");
        assert_eq!(first.parent, Some(pid), "child {tid}: parent");
        assert_eq!(
            first.pid, *tid,
            "child {tid}: a forked child is its own process"
        );
        // Before its exec it runs the shell; afterwards the new program.
        assert_eq!(first.exe.path, real("/bin/sh"));
        if let Some(last) = ss.last() {
            *ran.entry(last.exe.path.clone()).or_default() += 1;
        }
        if let Some(i) = ss.iter().position(|s| s.nr == NR_EXECVE) {
            if let Some(after) = ss.get(i + 1) {
                assert_ne!(
                    after.exe.path,
                    real("/bin/sh"),
                    "exe not refreshed after exec"
                );
            }
        }
    }
    for prog in &progs {
        assert!(
            ran.get(prog).copied().unwrap_or(0) >= 1,
            "too few runs of {prog:?}: {ran:?}"
        );
    }
    // Device and inode are those of the file.
    for s in &stops {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&s.exe.path).unwrap();
        assert_eq!((s.exe.dev, s.exe.ino), (md.dev(), md.ino()));
    }

    // Detached: running (not in a ptrace stop, not stopped), untraced, still forking.
    assert_running(pid);
    assert_eq!(tracer_pid(pid), Some(0));
    let before = line_count(&log);
    assert!(wait_until(Duration::from_secs(5), || line_count(&log) >= before + 3));
}

/// Children running before the attach are traced only with `descendants`.
#[test]
fn descendants_option_attaches_the_existing_tree() {
    let _g = serial();
    let sh = spawn_sh("(while true; do cat /dev/null; sleep 0.02; done) & wait");
    let pid = sh.pid();
    let sub = {
        let mut sub = None;
        assert!(wait_until(Duration::from_secs(5), || {
            sub = children(pid).first().copied();
            sub.is_some()
        }));
        sub.unwrap()
    };
    // Without: the shell sits in wait(2); nothing from the subshell or its children.
    let (stops, _) = traced(pid, |t| {
        serve(t, Duration::from_millis(300), |_| Action::Continue)
    });
    assert!(
        stops.iter().all(|s| s.pid == pid),
        "untraced subtree reported"
    );

    let opts = AttachOptions {
        descendants: true,
        ..AttachOptions::default()
    };
    let (stops, _) = traced_with(pid, opts, |t| {
        serve(t, Duration::from_millis(500), |_| Action::Continue)
    });
    let first = stops
        .iter()
        .find(|s| s.tid == sub)
        .expect("no calls from the running subshell");
    assert!(first.new_task && first.parent.is_none() && first.pid == sub);
    // ... and from the processes it created since, with it as their parent.
    assert!(stops
        .iter()
        .any(|s| s.new_task && s.parent == Some(sub) && s.pid != sub));
    assert_eq!(tracer_pid(sub), Some(0));
}

/// Processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if stat_field(p, 4) == Some(pid.to_string()) {
            out.push(p);
        }
    }
    out
}

#[test]
fn deny_mkdir_with_eperm() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("htest");
    let out = dir.path().join("F");
    let err = dir.path().join("E");
    let mut sh = spawn_sh(&format!(
        "sleep 0.5; mkdir {t} 2>{e} && echo made > {o} || echo denied > {o}",
        t = target.display(),
        e = err.display(),
        o = out.display()
    ));
    let (stops, all_gone) = traced(sh.pid(), |t| {
        serve(t, LIMIT, |s| {
            if s.arch == AUDIT_ARCH_X86_64 && (s.nr == NR_MKDIR || s.nr == NR_MKDIRAT) {
                Action::Deny(libc::EPERM)
            } else {
                Action::Continue
            }
        })
    });
    assert!(all_gone);
    assert!(stops.iter().any(|s| s.nr == NR_MKDIR || s.nr == NR_MKDIRAT));
    assert!(sh.wait_for(LIMIT).expect("sh did not exit").success());
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "denied");
    assert!(!target.exists());
    let msg = std::fs::read_to_string(&err).unwrap();
    assert!(msg.contains("Operation not permitted"), "{msg}");
}

#[test]
fn delay_holds_one_call_and_serves_the_rest() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, d) = (
        dir.path().join("A"),
        dir.path().join("B"),
        dir.path().join("D"),
    );
    // A background loop keeps calling while the foreground's mkdir is held. It starts
    // after the attach (an already running child would not be traced).
    let mut sh = spawn_sh(&format!(
        "sleep 0.3; (while true; do cat /dev/null; sleep 0.02; done) & bg=$!; sleep 0.3; \
         date +%s%N > {a}; mkdir {d}; date +%s%N > {b}; kill $bg",
        a = a.display(),
        b = b.display(),
        d = d.display()
    ));
    let hold = Duration::from_millis(300);
    let (served_during, held_for) = traced(sh.pid(), move |t| {
        let end = Instant::now() + LIMIT;
        let mut held: Option<(i32, Instant)> = None;
        let mut done = false;
        let mut served_during = 0;
        let mut held_for = Duration::ZERO;
        while Instant::now() < end {
            // Wake when the held call is due.
            let wait = held.map_or(Duration::from_millis(50), |(_, at)| {
                (at + hold).saturating_duration_since(Instant::now())
            });
            match t.next(Some(wait)).expect("next") {
                Some(TraceEvent::Syscall(s)) => {
                    if !done && (s.nr == NR_MKDIR || s.nr == NR_MKDIRAT) {
                        assert!(t.is_held(s.tid));
                        held = Some((s.tid, Instant::now()));
                        done = true;
                        continue;
                    }
                    if held.is_some() {
                        served_during += 1;
                    }
                    t.respond(s.tid, Action::Continue).expect("respond");
                }
                Some(TraceEvent::AllGone) => break,
                Some(TraceEvent::TaskGone { .. }) | None => {}
            }
            if let Some((tid, at)) = held {
                if at.elapsed() >= hold {
                    held_for = at.elapsed();
                    t.respond(tid, Action::Continue).expect("respond held");
                    held = None;
                }
            }
        }
        (served_during, held_for)
    });
    assert!(sh.wait_for(LIMIT).is_some());
    // The lower bound is the property under test; the upper one only says the hold
    // ended, with room for a loaded machine to wake the tracer late (it once took
    // more than 100 ms at load 14).
    assert!(
        held_for >= hold && held_for < hold + Duration::from_secs(2),
        "{held_for:?}"
    );
    assert!(served_during > 0, "nothing served while one call was held");
    let ns = |p: &Path| -> u128 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let wall = Duration::from_nanos((ns(&b) - ns(&a)) as u64);
    assert!(wall >= hold, "mkdir took {wall:?} with a {hold:?} hold");
    assert!(wall < hold + Duration::from_secs(2), "{wall:?}");
    assert!(d.is_dir(), "the held call did not run after all");
}

#[test]
fn detach_lets_a_held_call_run() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (d, f) = (dir.path().join("D"), dir.path().join("F"));
    let mut sh = spawn_sh(&format!(
        "sleep 0.3; mkdir {d} && echo made > {f}",
        d = d.display(),
        f = f.display()
    ));
    let pid = sh.pid();
    let mkdir_tid = traced(pid, |t| {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            if let Some(TraceEvent::Syscall(s)) = t.next(Some(Duration::from_millis(50))).unwrap() {
                if s.nr == NR_MKDIR || s.nr == NR_MKDIRAT {
                    return s.tid; // held: detach_all must let it run
                }
                t.respond(s.tid, Action::Continue).unwrap();
            }
        }
        panic!("no mkdir seen");
    });
    assert!(sh.wait_for(LIMIT).expect("sh did not finish").success());
    assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), "made");
    assert!(d.is_dir());
    assert!(tracer_pid(mkdir_tid).unwrap_or(0) == 0);
}

#[test]
fn group_stop_is_kept_and_detach_leaves_a_stopped_process_stopped() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let sh = spawn_sh(&format!(
        "while true; do date >> {}; sleep 0.02; done",
        log.display()
    ));
    let pid = sh.pid();
    let kill = move |sig| {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    traced(pid, move |t| {
        let (stops, _) = serve(t, Duration::from_millis(300), |_| Action::Continue);
        assert!(stops.iter().any(|s| s.tid == pid));

        // Stopped while traced: it must stay stopped (no calls from it).
        kill(libc::SIGSTOP);
        serve(t, Duration::from_millis(150), |_| Action::Continue);
        let (stops, _) = serve(t, Duration::from_millis(300), |_| Action::Continue);
        assert!(
            !stops.iter().any(|s| s.tid == pid),
            "the stopped shell made calls"
        );
        let st = proc_state(pid).unwrap();
        assert!(st == 't' || st == 'T', "state {st} while group-stopped");

        // SIGCONT: it goes on, still traced.
        kill(libc::SIGCONT);
        let (stops, _) = serve(t, Duration::from_millis(300), |_| Action::Continue);
        assert!(stops.iter().any(|s| s.tid == pid), "no calls after SIGCONT");

        // Stopped again, then detached: stays stopped (T), untraced.
        kill(libc::SIGSTOP);
        serve(t, Duration::from_millis(150), |_| Action::Continue);
    });
    assert!(wait_until(Duration::from_secs(2), || proc_state(pid) == Some('T')));
    assert_eq!(tracer_pid(pid), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(proc_state(pid), Some('T'));
    let before = line_count(&log);
    kill(libc::SIGCONT);
    assert!(wait_until(Duration::from_secs(5), || line_count(&log) >= before + 3));
    assert_running(pid);
}

/// SIGKILL while a call is held: the task just goes; answering it afterwards is fine.
#[test]
fn killed_while_held() {
    let _g = serial();
    let mut sh = spawn_sh("while true; do sleep 0.02; done");
    let pid = sh.pid();
    let events = traced(pid, move |t| {
        let end = Instant::now() + LIMIT;
        let held = loop {
            assert!(Instant::now() < end);
            if let Some(TraceEvent::Syscall(s)) = t.next(Some(Duration::from_millis(50))).unwrap() {
                if s.tid == pid {
                    break s.tid;
                }
                t.respond(s.tid, Action::Continue).unwrap();
            }
        };
        // SAFETY: kill(2) on the traced shell.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let mut events = Vec::new();
        while Instant::now() < end {
            match t.next(Some(Duration::from_millis(50))).unwrap() {
                Some(TraceEvent::Syscall(s)) => t.respond(s.tid, Action::Continue).unwrap(),
                Some(TraceEvent::TaskGone { tid }) => events.push(tid),
                Some(TraceEvent::AllGone) => break,
                None => {}
            }
        }
        t.respond(held, Action::Continue).unwrap();
        events
    });
    assert!(events.contains(&pid), "{events:?}");
    let st = sh.wait_for(LIMIT).expect("shell not reaped");
    use std::os::unix::process::ExitStatusExt;
    // The wrapper reports its child's death by signal as 128 + 9.
    assert_eq!(st.code().or(st.signal()), Some(137));
}

#[test]
fn signals_are_delivered_to_tracees() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("F");
    let mut sh = spawn_sh(&format!(
        "trap 'echo usr1 > {f}; exit 0' USR1; while true; do sleep 0.02; done",
        f = f.display()
    ));
    let pid = sh.pid();
    let (_, all_gone) = traced(pid, move |t| {
        serve(t, Duration::from_millis(200), |_| Action::Continue);
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
        serve(t, LIMIT, |_| Action::Continue)
    });
    assert!(all_gone);
    assert!(sh.wait_for(LIMIT).expect("sh did not exit").success());
    assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), "usr1");
}

/// The tracer process is SIGKILLed while it holds a call: the kernel detaches, the held
/// call runs, the program finishes and is never left stopped.
#[test]
fn tracer_death_leaves_the_program_running() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("F");
    let mut sh = spawn_sh(&format!(
        "i=0; while [ $i -lt 20 ]; do i=$((i+1)); cat /dev/null; sleep 0.05; done; echo finished > {}",
        f.display()
    ));
    let pid = sh.pid();
    let exe = std::env::current_exe().unwrap();
    let helper = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "helper_tracer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOMEOSTAT_PTRACE_HELPER_PID", pid.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut helper = KillOnDrop(helper);
    let mut lines = BufReader::new(helper.0.stdout.take().unwrap()).lines();
    let held_tid: i32 = loop {
        let line = lines.next().expect("helper ended before holding").unwrap();
        // libtest's "test helper_tracer ... " may precede it on the same line.
        if let Some((_, rest)) = line.split_once("HOLDING ") {
            break rest.trim().parse().unwrap();
        }
    };
    // Held: the task sits in a ptrace stop.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(proc_state(held_tid), Some('t'));

    helper.0.kill().unwrap();
    helper.0.wait().unwrap();

    assert!(wait_until(Duration::from_secs(2), || tracer_pid(pid) == Some(0)));
    for _ in 0..5 {
        if let Some(st) = proc_state(pid) {
            assert!(
                st != 't' && st != 'T',
                "shell state {st} after tracer death"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = sh.wait_for(LIMIT).expect("program did not finish");
    assert!(st.success());
    assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), "finished");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Helper for `tracer_death_leaves_the_program_running`: attaches, serves some calls,
/// then holds one and waits to be killed.
#[test]
#[ignore = "helper process, run by tracer_death_leaves_the_program_running"]
fn helper_tracer() {
    let Ok(pid) = std::env::var("HOMEOSTAT_PTRACE_HELPER_PID") else {
        return;
    };
    let pid: i32 = pid.parse().unwrap();
    let mut t = Tracer::attach(pid, &AttachOptions::default()).unwrap();
    let mut served = 0;
    loop {
        match t.next(Some(LIMIT)).unwrap() {
            Some(TraceEvent::Syscall(s)) => {
                served += 1;
                if served >= 50 && s.exe.path == real("/usr/bin/cat") {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "HOLDING {}", s.tid).unwrap();
                    out.flush().unwrap();
                    drop(out);
                    // Wait to be killed (bounded, in case the test died).
                    std::thread::sleep(LIMIT);
                    std::process::exit(3);
                }
                t.respond(s.tid, Action::Continue).unwrap();
            }
            Some(TraceEvent::AllGone) => std::process::exit(4),
            _ => {}
        }
    }
}

/// A thread other than the leader execs: it takes over the leader's tid; the tracer
/// reports the old tids gone and the new program under the leader's tid.
#[test]
fn multithreaded_exec_moves_to_the_leader_tid() {
    let _g = serial();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut child = Proc::spawn(
        &[
            exe,
            "--ignored",
            "--exact",
            "helper_mt_exec",
            "--nocapture",
            "--test-threads=1",
        ],
        &[("HOMEOSTAT_PTRACE_MT_EXEC", "1")],
    );
    let pid = child.pid();
    // Attach once its extra threads run (it waits 300 ms before exec'ing).
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) >= 4
    }));
    let (stops, gone) = std::thread::spawn(move || {
        let mut t = Tracer::attach(pid, &AttachOptions::default()).expect("attach");
        let mut stops = Vec::new();
        let mut gone = Vec::new();
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            match t.next(Some(Duration::from_millis(50))).unwrap() {
                Some(TraceEvent::Syscall(s)) => {
                    t.respond(s.tid, Action::Continue).unwrap();
                    stops.push(s);
                }
                Some(TraceEvent::TaskGone { tid }) => gone.push((tid, stops.len())),
                Some(TraceEvent::AllGone) => break,
                None => {}
            }
        }
        t.detach_all().unwrap();
        (stops, gone)
    })
    .join()
    .unwrap();
    assert!(child
        .wait_for(LIMIT)
        .expect("helper did not exit")
        .success());

    let exec = stops
        .iter()
        .position(|s| s.nr == NR_EXECVE && s.pid == pid)
        .expect("no execve from the helper");
    let execer = stops[exec].tid;
    assert_ne!(
        execer, pid,
        "the exec was meant to come from a non-leader thread"
    );
    // The exec'ing thread's old tid and the old leader are reported gone ...
    assert!(gone.iter().any(|&(t, _)| t == execer), "{gone:?}");
    let leader_gone = gone
        .iter()
        .find(|&&(t, at)| t == pid && at > exec)
        .unwrap_or_else(|| panic!("old leader not reported gone after the exec: {gone:?}"))
        .1;
    // ... and the new program runs as the leader tid, a new task, exe refreshed. Its
    // first call is the first one after the old leader's end, not after the execve
    // entry: until the kernel has killed them, the other old threads still make calls
    // (their sleeps) in between.
    let after = stops[leader_gone..]
        .iter()
        .find(|s| s.pid == pid)
        .expect("no calls after the exec");
    assert_eq!(after.tid, pid);
    assert!(after.new_task);
    assert_eq!(after.exe.path, real("/bin/sh"));
    assert!(!stops[exec + 1..].iter().any(|s| s.tid == execer));
}

/// Helper for `multithreaded_exec_moves_to_the_leader_tid`: start three threads that keep
/// making calls, then exec from this (non-leader: libtest's) thread.
#[test]
#[ignore = "helper process, run by multithreaded_exec_moves_to_the_leader_tid"]
fn helper_mt_exec() {
    if std::env::var_os("HOMEOSTAT_PTRACE_MT_EXEC").is_none() {
        return;
    }
    for _ in 0..3 {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(5));
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    // Exec from a thread of our own: certainly not the leader.
    std::thread::spawn(|| {
        use std::os::unix::process::CommandExt;
        let err = Command::new("/bin/sh")
            .args(["-c", "sleep 0.1; exit 0"])
            .exec();
        eprintln!("exec: {err}");
        std::process::exit(5);
    })
    .join()
    .unwrap();
}

#[test]
fn clear_errors() {
    let _g = serial();
    // A pid that existed and is gone.
    let mut c = Command::new("/bin/true").spawn().unwrap();
    let gone = c.id() as i32;
    c.wait().unwrap();
    let e = Tracer::attach(gone, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(e, AttachError::NoSuchProcess(p) if p == gone),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("cannot attach to pid {gone}: no such process")
    );

    let me = std::process::id() as i32;
    let e = Tracer::attach(me, &AttachOptions::default()).unwrap_err();
    assert!(matches!(e, AttachError::SelfAttach(_)), "{e}");
    assert!(e.to_string().contains(&me.to_string()), "{e}");
    // One of our own threads is this process too.
    // SAFETY: gettid has no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let e = Tracer::attach(tid, &AttachOptions::default()).unwrap_err();
    assert!(matches!(e, AttachError::SelfAttach(_)), "{e}");

    for bad in [0, -1] {
        let e = Tracer::attach(bad, &AttachOptions::default()).unwrap_err();
        assert!(matches!(e, AttachError::InvalidPid(_)), "{e}");
    }

    // Kernel threads (kthreadd is pid 2) cannot be traced.
    let e = Tracer::attach(2, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(e, AttachError::PermissionDenied { pid: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("kernel thread"), "{e}");
}

#[test]
fn second_tracer_gets_already_traced() {
    let _g = serial();
    let sh = spawn_sh("while true; do sleep 0.05; done");
    let pid = sh.pid();
    let err = traced(pid, move |t| {
        // A tracer on another thread of this process.
        let err = std::thread::spawn(move || {
            Tracer::attach(pid, &AttachOptions::default())
                .err()
                .map(|e| e.to_string())
        })
        .join()
        .unwrap();
        serve(t, Duration::from_millis(100), |_| Action::Continue);
        err
    });
    let err = err.expect("second attach succeeded");
    assert!(err.contains("already traced by pid"), "{err}");
    assert!(err.contains(&pid.to_string()), "{err}");
}

#[test]
fn respond_checks_its_arguments() {
    let _g = serial();
    let sh = spawn_sh("while true; do sleep 0.05; done");
    traced(sh.pid(), |t| {
        let end = Instant::now() + LIMIT;
        let s = loop {
            assert!(Instant::now() < end);
            if let Some(TraceEvent::Syscall(s)) = t.next(Some(Duration::from_millis(50))).unwrap() {
                break s;
            }
        };
        assert!(matches!(
            t.respond(s.tid, Action::Deny(0)),
            Err(AttachError::BadErrno(0))
        ));
        assert!(matches!(
            t.respond(s.tid, Action::Deny(4096)),
            Err(AttachError::BadErrno(4096))
        ));
        t.respond(s.tid, Action::Continue).unwrap();
        // Answered already.
        assert!(matches!(
            t.respond(s.tid, Action::Continue),
            Err(AttachError::NotHeld(_))
        ));
        // A tid that is not traced at all is gone as far as the tracer knows.
        t.respond(i32::MAX, Action::Continue).unwrap();
    });
}

/// A process stopped inside a call that waits (a read of an empty FIFO; the stop cuts it
/// short) enters that call again when it runs on: the tracer attached meanwhile marks
/// that first entry `restarted` (the call was entered once before it was traced), and
/// no later one.
#[test]
fn the_entry_of_a_call_the_stop_cut_short_is_marked_restarted() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let ready = dir.path().join("ready");
    let script = format!(
        "import os\nfd = os.open({:?}, os.O_RDWR)\nos.close(os.open({:?}, os.O_CREAT))\n\
         os.read(fd, 1)\nos.getppid()\n",
        fifo.to_str().unwrap(),
        ready.to_str().unwrap()
    );
    let p = Proc::spawn(&["/usr/bin/python3", "-c", &script], &[]);
    let pid = p.pid();
    // Waiting in its read of the FIFO (the first read after the marker: a read python
    // makes while it starts, of a module, is not one that waits).
    assert!(wait_until(LIMIT, || {
        ready.exists()
            && std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .is_ok_and(|s| s.split(' ').next() == Some("0"))
    }));
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    assert!(wait_until(LIMIT, || proc_state(pid) == Some('T')));
    let fifo2 = fifo.clone();
    let stops = traced(pid, move |t| {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        let (mut stops, _) = serve(t, Duration::from_millis(300), |_| Action::Continue);
        // The read is entered again and waits; a byte ends it, and the program exits.
        std::fs::write(&fifo2, b"x").unwrap();
        let (more, _) = serve(t, Duration::from_secs(5), |_| Action::Continue);
        stops.extend(more);
        stops
    });
    let calls: Vec<(u32, bool)> = stops
        .iter()
        .filter(|s| s.tid == pid)
        .map(|s| (s.nr, s.restarted))
        .collect();
    assert_eq!(calls.first(), Some(&(0, true)), "{calls:?}");
    assert!(calls[1..].iter().all(|c| !c.1), "{calls:?}");
    assert!(calls.len() > 3, "the program went on: {calls:?}");
}
