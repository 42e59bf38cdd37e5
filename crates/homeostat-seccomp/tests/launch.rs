//! Real-process tests of the launcher (run as root; no mocks).
//!
//! Tests that need a supervisor in another process (to SIGKILL it) re-run this test
//! binary with `--ignored --exact helper_supervisor` and an environment variable saying
//! what to do. The threads test does the same with `thread_helper` as the *monitored*
//! program. The helpers are `#[ignore]`d so that they do not count as tests; run on their
//! own (`--ignored`), without the variable, they do nothing.
//!
//! All tests take one lock: several use wall-clock time or count processes, and the
//! machine has two CPUs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeostat_proc::stat_field;
use homeostat_seccomp::{
    Action, ChildStatus, Event, Exe, FailMode, LaunchError, LaunchOptions, Supervisor, SyscallEvent,
};
use homeostat_syscalls::AUDIT_ARCH_X86_64;
use homeostat_testsupport::nr::{EXECVE as NR_EXECVE, MKDIR as NR_MKDIR};
use homeostat_testsupport::nr::{MKDIRAT as NR_MKDIRAT, OPENAT as NR_OPENAT};
use homeostat_testsupport::{real, serial};

const LIMIT: Duration = Duration::from_secs(60);

fn argv(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

fn sh(script: &str) -> Vec<OsString> {
    argv(&["/bin/sh", "-c", script])
}

struct Run {
    events: Vec<SyscallEvent>,
    status: ChildStatus,
    /// From spawn's return to the child's exit.
    wall: Duration,
}

/// Serves every event until the tree is gone, answering with `answer` (which may also
/// hold an id and return `None`; held ids come back through `release`).
fn run_with(
    sup: &mut Supervisor,
    mut answer: impl FnMut(&SyscallEvent) -> Option<Action>,
    mut release: impl FnMut(&mut Supervisor),
) -> Run {
    let start = Instant::now();
    let deadline = start + LIMIT;
    let mut events = Vec::new();
    let mut status = None;
    let mut wall = Duration::ZERO;
    loop {
        assert!(
            Instant::now() < deadline,
            "monitored run took over {LIMIT:?}"
        );
        release(sup);
        match sup.next(Some(Duration::from_millis(10))).expect("next") {
            Some(Event::Syscall(ev)) => {
                if let Some(action) = answer(&ev) {
                    sup.respond(ev.id, action).expect("respond");
                }
                events.push(ev);
            }
            Some(Event::ChildExited(st)) => {
                status = Some(st);
                wall = start.elapsed();
            }
            Some(Event::TreeGone) => break,
            None => {}
        }
    }
    Run {
        events,
        status: status.expect("ChildExited before TreeGone"),
        wall,
    }
}

fn run_all(argv: &[OsString]) -> Run {
    let mut sup = Supervisor::spawn(argv, &LaunchOptions::default()).expect("spawn");
    run_with(&mut sup, |_| Some(Action::Continue), |_| {})
}

/// Runs `script` under `sh -c` through `go`, with the shell's stderr captured, and
/// retries (twice at most) only when the shell said "Cannot fork".
///
/// Why: a notified call waits interruptibly until the supervisor has received it, and a
/// signal landing in that window (SIGCHLD from the shell's previous child: dash's handler
/// has no SA_RESTART) makes even fork fail with EINTR. That is the kernel's behaviour
/// (see docs/seccomp-supervisor.md, "Known limits"); the supervisor narrows the window but
/// cannot close it, and on a loaded two-CPU machine a debug build hits it now and then.
fn shell_run<T>(script: &str, mut go: impl FnMut(Vec<OsString>) -> (Run, T)) -> (Run, T) {
    for attempt in 1.. {
        let err = tempfile::NamedTempFile::new().unwrap();
        let full = format!("exec 2>{}; {script}", err.path().display());
        let out = go(sh(&full));
        let text = std::fs::read_to_string(err.path()).unwrap_or_default();
        if out.0.status != ChildStatus::Exited(0) && text.contains("Cannot fork") && attempt < 3 {
            eprintln!(
                "note: attempt {attempt}: {}: EINTR from fork, retrying",
                text.trim()
            );
            continue;
        }
        if !text.is_empty() {
            eprintln!("shell stderr: {text}");
        }
        return out;
    }
    unreachable!()
}

#[test]
fn traces_a_shell_pipeline() {
    let _g = serial();
    // The first child sleeps so that it cannot exit while the shell's second fork
    // waits on the supervisor (fork's EINTR under a SIGCHLD is a known defect, tested
    // in crates/homeostat/tests/run.rs).
    let (run, ()) = shell_run(
        "ls / >/dev/null; { sleep 0.5; echo hi; } | cat >/dev/null",
        |argv| (run_all(&argv), ()),
    );
    assert_eq!(run.status, ChildStatus::Exited(0));

    assert!(
        run.events
            .iter()
            .any(|e| e.arch == AUDIT_ARCH_X86_64 && e.nr == NR_EXECVE),
        "no execve seen"
    );
    let tids: HashSet<i32> = run.events.iter().map(|e| e.tid).collect();
    let pids: HashSet<i32> = run.events.iter().map(|e| e.pid).collect();
    assert!(tids.len() >= 3, "expected several tasks, saw {tids:?}");
    assert!(pids.len() >= 3, "expected several processes, saw {pids:?}");

    // new_task exactly on each task's first event.
    let mut seen = HashSet::new();
    for e in &run.events {
        assert_eq!(
            e.new_task,
            seen.insert(e.tid),
            "new_task wrong for tid {} nr {}",
            e.tid,
            e.nr
        );
    }

    let exes: HashSet<&Exe> = run.events.iter().map(|e| &*e.exe).collect();
    let paths: HashSet<&Path> = exes.iter().map(|e| e.path.as_path()).collect();
    for want in ["/usr/bin/ls", "/usr/bin/cat", "/bin/sh"] {
        let want = real(want);
        assert!(
            paths.contains(want.as_path()),
            "{want:?} not among {paths:?}"
        );
    }
    // Device and inode are those of the file.
    for exe in &exes {
        let md = std::fs::metadata(&exe.path).expect("stat exe");
        use std::os::unix::fs::MetadataExt;
        assert_eq!((exe.dev, exe.ino), (md.dev(), md.ino()), "{:?}", exe.path);
    }
    // The launched program's first event is its own, after the exec.
    let first = &run.events[0];
    assert!(first.new_task);
    assert_eq!(first.exe.path, real("/bin/sh"));
}

#[test]
fn deny_mkdir_with_eperm() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("x");
    let out = dir.path().join("out");
    let script = format!(
        "mkdir {} 2>/dev/null && echo made > {o} || echo denied > {o}",
        target.display(),
        o = out.display()
    );
    let mut sup = Supervisor::spawn(&sh(&script), &LaunchOptions::default()).unwrap();
    let mut denied = 0;
    let run = run_with(
        &mut sup,
        |e| {
            if e.arch == AUDIT_ARCH_X86_64 && (e.nr == NR_MKDIR || e.nr == NR_MKDIRAT) {
                denied += 1;
                Some(Action::Deny(libc::EPERM))
            } else {
                Some(Action::Continue)
            }
        },
        |_| {},
    );
    assert!(denied >= 1, "mkdir never called");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "denied");
    assert!(!target.exists());
    assert_eq!(run.status, ChildStatus::Exited(0));
}

#[test]
fn delay_holds_one_call_and_serves_the_rest() {
    let _g = serial();
    let script = "cat /dev/null & cat /dev/null; wait";
    let baseline = (0..3)
        .map(|_| shell_run(script, |a| (run_all(&a), ())).0.wall)
        .min()
        .unwrap();

    let hold = Duration::from_millis(200);
    let (run, (served_while_held, released_after)) = shell_run(script, |argv| {
        let mut sup = Supervisor::spawn(&argv, &LaunchOptions::default()).unwrap();
        let held: Mutex<Option<(u64, Instant)>> = Mutex::default();
        let mut served_while_held = 0;
        let mut released_after = None;
        let mut already = false;
        let run = run_with(
            &mut sup,
            |e| {
                let mut h = held.lock().unwrap();
                if !already
                    && e.nr == NR_OPENAT
                    && e.exe.path.file_name().is_some_and(|n| n == "cat")
                {
                    already = true;
                    *h = Some((e.id, Instant::now()));
                    return None;
                }
                if h.is_some() {
                    served_while_held += 1;
                }
                Some(Action::Continue)
            },
            |sup| {
                let mut h = held.lock().unwrap();
                if let Some((id, since)) = *h {
                    if since.elapsed() >= hold {
                        released_after = Some(since.elapsed());
                        assert!(sup.respond(id, Action::Continue).unwrap());
                        *h = None;
                    }
                }
            },
        );
        (run, (served_while_held, released_after))
    });
    assert_eq!(run.status, ChildStatus::Exited(0));
    let released_after = released_after.expect("the held call was never released");
    assert!(released_after >= hold);
    assert!(
        served_while_held > 0,
        "nothing else was served while one call was held"
    );
    assert!(
        run.wall >= hold && run.wall >= baseline + Duration::from_millis(150),
        "wall {:?} vs baseline {:?}",
        run.wall,
        baseline
    );
}

#[test]
fn exec_failure_is_a_clear_error() {
    let _g = serial();
    for cmd in ["/nonexistent/homeostat-test", "homeostat-no-such-command"] {
        let err = Supervisor::spawn(&argv(&[cmd]), &LaunchOptions::default()).unwrap_err();
        assert!(matches!(err, LaunchError::Exec { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot run {cmd}: No such file or directory")
        );
    }
    // Exists, but cannot be executed: the exec itself fails in the child (under the
    // filter) and the errno comes back.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let err = Supervisor::spawn(&argv(&[&d]), &LaunchOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot run {d}: Permission denied")
    );
    let err = Supervisor::spawn(&[], &LaunchOptions::default()).unwrap_err();
    assert!(matches!(err, LaunchError::EmptyCommand));
}

#[test]
fn exit_codes_and_signals() {
    let _g = serial();
    assert_eq!(run_all(&sh("exit 3")).status, ChildStatus::Exited(3));
    assert_eq!(run_all(&sh("kill -9 $$")).status, ChildStatus::Signaled(9));
}

#[test]
fn deny_rejects_a_non_errno() {
    let _g = serial();
    let mut sup = Supervisor::spawn(&argv(&["/bin/true"]), &LaunchOptions::default()).unwrap();
    let deadline = Instant::now() + LIMIT;
    let ev = loop {
        assert!(Instant::now() < deadline, "no event");
        if let Some(Event::Syscall(ev)) = sup.next(Some(LIMIT)).unwrap() {
            break ev;
        }
    };
    assert!(matches!(
        sup.respond(ev.id, Action::Deny(0)),
        Err(LaunchError::BadErrno(0))
    ));
    assert!(sup.respond(ev.id, Action::Continue).unwrap());
    // Answering twice: the kernel no longer knows the id.
    assert!(!sup.respond(ev.id, Action::Continue).unwrap());
    let run = run_with(&mut sup, |_| Some(Action::Continue), |_| {});
    assert_eq!(run.status, ChildStatus::Exited(0));
}

/// The monitored side of `threads_are_followed`: four threads making calls.
#[test]
#[ignore = "helper process, run by threads_are_followed"]
fn thread_helper() {
    if std::env::var_os("HOMEOSTAT_SECCOMP_THREADS").is_none() {
        return;
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..10 {
                    let _ = std::fs::metadata("/");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn threads_are_followed() {
    let _g = serial();
    let exe = std::env::current_exe().unwrap();
    // Through sh and env (one process, three execs), quietly: the inner libtest's summary
    // line must not pass for ours.
    let mut cmd = sh(
        "exec env HOMEOSTAT_SECCOMP_THREADS=1 \"$0\" --ignored --exact thread_helper --test-threads=1 -q >/dev/null",
    );
    cmd.push(exe.into_os_string());
    let run = {
        let mut sup = Supervisor::spawn(&cmd, &LaunchOptions::default()).unwrap();
        run_with(&mut sup, |_| Some(Action::Continue), |_| {})
    };
    assert_eq!(run.status, ChildStatus::Exited(0));
    let mut by_pid: HashMap<i32, HashSet<i32>> = HashMap::new();
    for e in &run.events {
        by_pid.entry(e.pid).or_default().insert(e.tid);
    }
    let most = by_pid.values().map(|t| t.len()).max().unwrap();
    assert!(most >= 5, "expected a process with 5+ threads: {by_pid:?}");
    // The threads run the executable their process exec'd last (the test binary).
    let test_pid = by_pid.iter().max_by_key(|(_, t)| t.len()).unwrap().0;
    let exes: HashSet<_> = run
        .events
        .iter()
        .filter(|e| e.pid == *test_pid && e.tid != e.pid)
        .map(|e| e.exe.path.clone())
        .collect();
    let me = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(exes, HashSet::from([me]));
}

#[test]
fn normal_shutdown_fail_open_lets_the_program_finish() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    let script = format!("sleep 0.3; echo done > {}", file.display());
    let mut sup = Supervisor::spawn(&sh(&script), &LaunchOptions::default()).unwrap();
    let keeper = sup.keeper_pid();
    // Hold a call, then hand over: it must be let through.
    for _ in 0..20 {
        if let Some(Event::Syscall(ev)) = sup.next(Some(LIMIT)).unwrap() {
            sup.respond(ev.id, Action::Continue).unwrap();
        }
    }
    let deadline = Instant::now() + LIMIT;
    while sup.pending() == 0 {
        assert!(Instant::now() < deadline, "no call to hold");
        sup.next(Some(LIMIT)).unwrap();
    }
    sup.shutdown();
    wait_for(
        || read(&file) == "done",
        "the program to finish after shutdown",
    );
    wait_for(|| !alive(keeper), "the keeper to exit");
}

#[test]
fn normal_shutdown_fail_closed_kills_the_program() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    let script = format!("sleep 5; echo done > {}", file.display());
    let opts = LaunchOptions {
        fail_mode: FailMode::Closed,
        ..LaunchOptions::default()
    };
    let mut sup = Supervisor::spawn(&sh(&script), &opts).unwrap();
    let (child, keeper) = (sup.child_pid(), sup.keeper_pid());
    for _ in 0..5 {
        if let Some(Event::Syscall(ev)) = sup.next(Some(LIMIT)).unwrap() {
            sup.respond(ev.id, Action::Continue).unwrap();
        }
    }
    drop(sup);
    wait_for(|| !alive(child), "the child to be killed");
    wait_for(|| !alive(keeper), "the keeper to exit");
    assert_eq!(read(&file), "");
}

// ------------------------------------------------------------------------------------
// Supervisor death: the supervisor runs in a helper process that the test SIGKILLs.

/// The supervisor side of the failure tests. `HOMEOSTAT_SECCOMP_HELPER` is `open`,
/// `open-unrecorded` or `closed`; `HOMEOSTAT_SECCOMP_HELPER_FILE` is the file the
/// monitored script writes when done. Serves calls, then holds one (never answering it)
/// and prints `HOLDING child=PID keeper=PID`, then waits to be killed.
#[test]
#[ignore = "helper process, run by the supervisor-death tests"]
fn helper_supervisor() {
    let Some(mode) = std::env::var_os("HOMEOSTAT_SECCOMP_HELPER") else {
        return;
    };
    let mode = mode.to_string_lossy().into_owned();
    let file = std::env::var("HOMEOSTAT_SECCOMP_HELPER_FILE").unwrap();
    let script = format!("for i in $(seq 1 200); do cat /dev/null; done; echo done > {file}");
    let opts = LaunchOptions {
        fail_mode: if mode == "closed" {
            FailMode::Closed
        } else {
            FailMode::Open
        },
        ..LaunchOptions::default()
    };
    let mut sup = Supervisor::spawn(&sh(&script), &opts).unwrap();
    let mut cats = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "helper: no call to hold");
        match sup.next(Some(LIMIT)).unwrap() {
            Some(Event::Syscall(ev)) => {
                if ev.nr == NR_EXECVE && ev.exe.path.ends_with("dash") {
                    cats += 1;
                }
                if cats >= 20 && ev.nr == NR_OPENAT && ev.exe.path.ends_with("cat") {
                    if mode == "open-unrecorded" {
                        sup.debug_forget_in_flight(ev.id);
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "HOLDING child={} keeper={}",
                        sup.child_pid(),
                        sup.keeper_pid()
                    )
                    .unwrap();
                    out.flush().unwrap();
                    drop(out);
                    // Wait to be killed (bounded, in case the test died).
                    std::thread::sleep(LIMIT);
                    std::process::exit(3);
                }
                sup.respond(ev.id, Action::Continue).unwrap();
            }
            Some(Event::TreeGone) => panic!("tree ended before the helper held a call"),
            _ => {}
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// State letter from /proc/PID/stat (`None`: no such process).
fn state(pid: i32) -> Option<char> {
    stat_field(pid, 3)?.chars().next()
}

fn ppid(pid: i32) -> Option<i32> {
    stat_field(pid, 4)?.parse().ok()
}

/// Alive = exists and is not a zombie (an exited keeper may stay a zombie under an init
/// that does not reap).
fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Live processes descended from `root` (excluding it).
fn descendants(root: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut p = pid;
        for _ in 0..64 {
            match ppid(p) {
                Some(pp) if pp == root => {
                    if let Some(s) = state(pid) {
                        if s != 'Z' && s != 'X' {
                            out.push((pid, s));
                        }
                    }
                    break;
                }
                Some(pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    out
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Helper {
    child: i32,
    keeper: i32,
    file: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the helper supervisor, waits until it holds a call, and SIGKILLs it.
fn kill_supervisor_mid_run(mode: &str) -> Helper {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    let stderr = dir.path().join("stderr");
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_supervisor",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOMEOSTAT_SECCOMP_HELPER", mode)
        .env("HOMEOSTAT_SECCOMP_HELPER_FILE", &file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test helper_supervisor ... " before it, on the same line.
            if let Some(at) = line.find("HOLDING") {
                let _ = tx.send(line[at..].to_string());
                return;
            }
        }
    });
    let line = match rx.recv_timeout(LIMIT) {
        Ok(line) => line,
        Err(_) => {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!(
                "helper never held a call; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
    };
    let field = |name: &str| -> i32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (child, keeper) = (field("child="), field("keeper="));
    assert!(alive(child) && alive(keeper));
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    Helper {
        child,
        keeper,
        file,
        stderr,
        _dir: dir,
    }
}

fn check_fail_open(mode: &str) {
    let h = kill_supervisor_mid_run(mode);
    let mut stopped = Vec::new();
    wait_for(
        || {
            stopped.extend(
                descendants(h.keeper)
                    .into_iter()
                    .filter(|(_, s)| *s == 'T' || *s == 't'),
            );
            read(&h.file) == "done"
        },
        "the program to finish after its supervisor died",
    );
    assert!(stopped.is_empty(), "stopped tasks: {stopped:?}");
    wait_for(|| !alive(h.keeper), "the keeper to exit");
    assert!(descendants(h.keeper).is_empty());
    assert!(!alive(h.child));
    let err = std::fs::read_to_string(&h.stderr).unwrap();
    assert!(err.contains("supervisor died"), "stderr: {err}");
}

#[test]
fn fail_open_survives_supervisor_sigkill() {
    let _g = serial();
    check_fail_open("open");
}

#[test]
fn fail_open_recovers_a_call_received_but_not_recorded() {
    let _g = serial();
    check_fail_open("open-unrecorded");
}

#[test]
fn fail_closed_kills_the_tree_when_the_supervisor_dies() {
    let _g = serial();
    let h = kill_supervisor_mid_run("closed");
    wait_for(|| !alive(h.child), "the child to be killed");
    wait_for(|| descendants(h.keeper).is_empty(), "the tree to be killed");
    wait_for(|| !alive(h.keeper), "the keeper to exit");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&h.file), "", "the program ran to its end");
}

#[test]
fn supervisor_carries_on_if_the_keeper_is_killed() {
    let _g = serial();
    let mut sup = Supervisor::spawn(&sh("sleep 0.2; exit 4"), &LaunchOptions::default()).unwrap();
    let keeper = sup.keeper_pid();
    // SAFETY: signalling the keeper this test started.
    assert_eq!(unsafe { libc::kill(keeper, libc::SIGKILL) }, 0);
    wait_for(|| !alive(keeper), "the keeper to die");
    // The program still runs and is still served; its exit status died with the keeper
    // (its parent, which reaps it and reports the status), so it is reported unknown.
    let run = run_with(&mut sup, |_| Some(Action::Continue), |_| {});
    assert!(run.events.len() > 10);
    assert_eq!(run.status, ChildStatus::Unknown);
}
