//! The `homeostat` binary against a hostile user: closed pipes, special files, huge
//! or foreign inputs, state directories owned by someone else. Each test reproduces a
//! failure found by hand (issue 9) on real processes and files.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{bin, ok, sample};

/// Runs a command that must fail with exit 1 and a one-line error; returns the line.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("homeostat runs");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "should fail, stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    err
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A pipe whose reading end is already closed: the first write to the other end fails
/// with EPIPE, every time (closing after spawning would race the child's first write).
fn widowed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

fn train_sample(dir: &Path) -> PathBuf {
    let profile = dir.join("p.profile");
    ok(bin()
        .args(["train", "-o"])
        .arg(&profile)
        .arg(sample("training")));
    profile
}

#[test]
fn closed_stdout_ends_printing_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let profile = train_sample(dir.path());
    let state = dir.path().join("state");
    let state_arg = ["--state-dir", state.to_str().unwrap()];
    let mut commands: Vec<Vec<String>> = vec![
        vec!["inspect".into(), profile.display().to_string()],
        vec!["eval".into()],
        vec![
            "scan".into(),
            "-p".into(),
            profile.display().to_string(),
            sample("validation").display().to_string(),
        ],
    ];
    for c in [vec!["profile", "list"], vec!["ps"], vec!["ps", "--json"]] {
        commands.push(c.iter().chain(&state_arg).map(|s| s.to_string()).collect());
    }
    for args in commands {
        let out = bin()
            .args(&args)
            .stdout(Stdio::from(widowed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} ends like cat on a closed pipe: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?} is quiet: {err}");
    }
}

/// A character device node (the null device, 1:3) made for the test with mknod, or
/// `None` (with the reason printed) when not root.
fn device_node(dir: &Path) -> Option<PathBuf> {
    if !is_root() {
        println!("skipping the device-node case: mknod needs root");
        return None;
    }
    let node = dir.join("node");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status();
    assert!(st.unwrap().success(), "mknod as root");
    Some(node)
}

fn file_type(path: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(path).unwrap().file_type()
}

#[test]
fn outputs_never_replace_special_files() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut targets = vec![(fifo.clone(), "a FIFO")];
    if let Some(node) = device_node(dir.path()) {
        targets.push((node, "a character device"));
    }
    for (target, kind) in &targets {
        let err = fails(
            bin()
                .args(["train", "-o"])
                .arg(target)
                .arg(sample("training/ls-01.unm")),
        );
        assert!(err.contains(kind) && err.contains("refusing"), "{err}");
        let err = fails(
            bin()
                .args(["eval", "traces", "--model", "pairs", "--train"])
                .arg(sample("training"))
                .arg("--normal")
                .arg(sample("validation"))
                .arg("--attack")
                .arg(sample("attack"))
                .arg("--plot")
                .arg(target),
        );
        assert!(err.contains(kind) && err.contains("refusing"), "{err}");
    }
    for (target, kind) in &targets {
        let err = fails(
            bin()
                .args(["record", "-o"])
                .arg(target)
                .args(["--", "true"]),
        );
        assert!(err.contains(kind) && err.contains("refusing"), "{err}");
    }
    assert!(file_type(&fifo).is_fifo(), "the FIFO is still a FIFO");
    if let Some((node, _)) = targets.get(1) {
        assert!(
            file_type(node).is_char_device(),
            "the node is still a device"
        );
    }
    // A regular file or a missing path is written as before.
    let out = dir.path().join("p.profile");
    std::fs::write(&out, b"old").unwrap();
    ok(bin()
        .args(["train", "-o"])
        .arg(&out)
        .arg(sample("training/ls-01.unm")));
    assert!(std::fs::read(&out).unwrap().starts_with(b"HMSTPROF"));
}

#[test]
fn profiles_are_read_no_further_than_their_header() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // Read whole, /dev/zero grew to 7 GB in 5 s; now refused before any payload.
    let err = fails(bin().args(["inspect", "/dev/zero"]));
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
    let err = fails(
        bin()
            .args(["scan", "--profile", "/dev/zero"])
            .arg(sample("validation")),
    );
    assert!(err.contains("not a regular file"), "{err}");
    if let Some(node) = device_node(dir.path()) {
        let err = fails(bin().arg("inspect").arg(&node));
        assert!(err.contains("character device"), "{err}");
    }
    // A FIFO with no writer: opening it must not hang.
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = fails(bin().arg("inspect").arg(&fifo));
    assert!(err.contains("FIFO"), "{err}");

    // A 2 GiB sparse file among the state's profiles: set aside after its header.
    let state = dir.path().join("state");
    ok(bin().args(["profile", "list", "--state-dir"]).arg(&state));
    let big = state.join("profiles/1-2.phprof");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out = bin()
        .args(["profile", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1-2.phprof") && err.contains("bad magic"),
        "{err}"
    );
    // All of it took 12 s for the sparse file alone when profiles were read whole.
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
}

/// `(pairs, trained)` of the profile of the executable whose path ends with `exe`, from
/// `homeostat profile list`.
fn listed(state: &Path, exe: &str) -> (u64, u64) {
    let out = ok(bin().args(["profile", "list", "--state-dir"]).arg(state));
    let line = out
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.ends_with(exe))
        })
        .unwrap_or_else(|| panic!("no {exe} profile in:\n{out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}

fn learn(state: &Path, script: &str) -> std::process::Child {
    bin()
        .args(["run", "--learn", "--quiet", "--state-dir"])
        .arg(state)
        .args(["--", "/bin/sh", "-c", script])
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_learners_of_one_program_add_up() {
    let dir = tempfile::tempdir().unwrap();
    // Two different uses of the shell, so each run learns pairs the other does not.
    let a = "ls / >/dev/null; sleep 1";
    let b = "i=0; while [ $i -lt 20 ]; do i=$((i+1)); done; read x </etc/hostname; sleep 1";
    let alone = |name: &str, script: &str| {
        let state = dir.path().join(name);
        assert!(learn(&state, script).wait().unwrap().success());
        listed(&state, "sh")
    };
    let (pa, ta) = alone("a", a);
    let (pb, tb) = alone("b", b);
    // Both load the (missing) profile, learn for a second side by side, and save.
    let both = dir.path().join("both");
    let (mut ca, mut cb) = (learn(&both, a), learn(&both, b));
    assert!(ca.wait().unwrap().success() && cb.wait().unwrap().success());
    let (pc, tc) = listed(&both, "sh");
    // The last writer alone would keep one run's pairs and calls (542/256 of 576/678).
    assert!(pc > pa.max(pb), "pairs {pc} vs alone {pa} and {pb}");
    assert!(
        tc * 10 >= (ta + tb) * 9,
        "trained {tc} vs alone {ta} + {tb}"
    );
}

#[test]
fn temporary_files_of_killed_saves_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(bin().args(["profile", "list", "--state-dir"]).arg(&state));
    // A save killed by SIGKILL: the process that owned the temporary file is gone.
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let stale = state.join(format!("profiles/.homeostat-{}-k1LLed.tmp", victim.id()));
    std::fs::write(&stale, b"half a profile").unwrap();
    ok(bin().args(["profile", "list", "--state-dir"]).arg(&state));
    assert!(stale.exists(), "kept while its process lives");
    victim.kill().unwrap();
    victim.wait().unwrap();
    ok(bin().args(["profile", "list", "--state-dir"]).arg(&state));
    assert!(!stale.exists(), "removed once its process is gone");
}

/// A user created for one test and removed after it (`useradd`/`userdel`).
struct ThrowawayUser {
    name: String,
    uid: u32,
}

impl ThrowawayUser {
    /// `None` (with the reason printed) when not root.
    fn create() -> Option<ThrowawayUser> {
        if !is_root() {
            println!("skipping the other-user cases: creating a user needs root");
            return None;
        }
        let name = format!("hmst9-{}", std::process::id());
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("useradd runs");
        assert!(st.success(), "useradd {name}");
        let id = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = String::from_utf8(id.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Some(ThrowawayUser { name, uid })
    }

    /// The homeostat binary, run as this user.
    fn homeostat(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", env!("CARGO_BIN_EXE_homeostat")]);
        c
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[test]
fn state_and_processes_of_other_users() {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let Some(user) = ThrowawayUser::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The user's state dir, whose `profiles` links to a root-owned folder: root must
    // neither follow the link nor chmod or fill the folder.
    let theirs = dir.path().join("theirs");
    let target = dir.path().join("root-owned");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&target, theirs.join("profiles")).unwrap();
    chown(&theirs, Some(user.uid), None).unwrap();
    std::os::unix::fs::lchown(theirs.join("profiles"), Some(user.uid), None).unwrap();
    let train = |state: &Path| {
        bin()
            .args(["run", "--learn", "--quiet", "--state-dir"])
            .arg(state)
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    let out = train(&theirs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("owned by uid {}", user.uid)) && err.contains("uid 0"),
        "{err}"
    );
    // Even when the state dir is root's own, a symlinked folder is refused.
    chown(&theirs, Some(0), None).unwrap();
    let out = train(&theirs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written"
    );
    let m = std::fs::metadata(&target).unwrap();
    assert_eq!(m.mode() & 0o777, 0o755, "the target is not chmodded");

    // `status` (and `ps`) by a user who does not own root's state dir: a clear error,
    // not a failed chmod.
    let mine = dir.path().join("mine");
    ok(bin().args(["profile", "list", "--state-dir"]).arg(&mine));
    for cmd in ["status", "ps"] {
        let err = fails(user.homeostat().args([cmd, "--state-dir"]).arg(&mine));
        assert!(
            err.contains("owned by uid 0") && err.contains(&format!("uid {}", user.uid)),
            "{cmd}: {err}"
        );
        assert!(!err.contains("Operation not permitted"), "{err}");
    }

    // `attach` to root's process as the user: a permission problem, said so.
    let userstate = dir.path().join("userstate");
    std::fs::create_dir(&userstate).unwrap();
    chown(&userstate, Some(user.uid), None).unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let err = fails(
        user.homeostat()
            .args(["attach", "--quiet", "--state-dir"])
            .arg(&userstate)
            .arg(sleeper.id().to_string()),
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(!err.contains("kernel thread"), "{err}");
    assert!(err.contains("same user or CAP_SYS_PTRACE"), "{err}");
}

#[test]
fn commands_that_cannot_start_exit_like_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let notexec = dir.path().join("data.txt");
    std::fs::write(&notexec, "not a program\n").unwrap();
    for (cmd, code) in [
        (dir.path().join("missing"), 127),
        (notexec, 126),
        (dir.path().to_path_buf(), 126),
    ] {
        let out = bin()
            .args(["run", "--quiet", "--state-dir"])
            .arg(&state)
            .arg("--")
            .arg(&cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{}: {err}", cmd.display());
        assert_eq!(err.matches("cannot run").count(), 1, "said once: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn text_from_files_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // The trace's file name becomes the profile's `source`; make it hostile.
    let hostile = dir
        .path()
        .join("x\u{1b}]0;pwned\u{7}\u{1b}[2J\nsource    fake.unm");
    std::fs::copy(sample("training/ls-01.unm"), &hostile).unwrap();
    let profile = dir.path().join("p.profile");
    ok(bin()
        .args(["train", "--format", "unm", "-o"])
        .arg(&profile)
        .arg(&hostile));
    let info = ok(bin().arg("inspect").arg(&profile));
    assert!(
        !info.contains('\u{1b}') && !info.contains('\u{7}'),
        "{info:?}"
    );
    let source_lines = info.lines().filter(|l| l.starts_with("source")).count();
    assert_eq!(source_lines, 1, "no forged line: {info}");
    assert!(
        info.contains("x\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\nsource"),
        "{info}"
    );
    let table = ok(bin().args(["scan", "-p"]).arg(&profile).arg(&hostile));
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert_eq!(table.lines().count(), 2, "{table}");

    // A profile for an architecture homeostat does not know is refused.
    use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Profile, ProfileMeta};
    let mut m = AnyModel::new(ModelSpec::new(ModelKind::Stide)).unwrap();
    m.train_trace(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let meta = ProfileMeta {
        arch: "pdp11".into(),
        ..ProfileMeta::default()
    };
    std::fs::write(&profile, Profile::new(meta, m).to_bytes()).unwrap();
    let err = fails(bin().arg("inspect").arg(&profile));
    assert!(err.contains("unknown architecture \"pdp11\""), "{err}");
    let err = fails(bin().args(["scan", "-p"]).arg(&profile).arg(&hostile));
    assert!(err.contains("unknown architecture"), "{err}");
}

#[test]
fn empty_training_input_writes_no_profile() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.unm");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.path().join("blank.unm");
    std::fs::write(&blank, "\n\n").unwrap();
    let out = dir.path().join("p.profile");
    for input in [&empty, &blank] {
        let err = fails(
            bin()
                .args(["train", "--format", "unm", "-o"])
                .arg(&out)
                .arg(input),
        );
        assert!(
            err.contains("no system calls in the training input"),
            "{err}"
        );
        assert!(!out.exists(), "no profile trained on nothing");
    }
}

/// Whether a `sleep` with argument `marker` runs (the monitor's own command line holds
/// the marker too, so argv[0] tells them apart).
fn sleeping(marker: &str) -> bool {
    pids_with(marker).into_iter().any(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmd.starts_with(b"sleep\0")
    })
}

/// Pids (other than this test's) whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmd).contains(marker) {
            v.push(pid);
        }
    }
    v
}

/// Waits until `cond` holds, for up to `secs` seconds.
fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

fn sockets(state: &Path) -> usize {
    std::fs::read_dir(state.join("run")).map_or(0, |d| d.count())
}

/// A monitor started by a test, killed (with its program) if the test fails midway.
struct Running {
    child: std::process::Child,
    marker: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids_with(&self.marker) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `homeostat run --learn` of a long `sleep` (its argument is `marker`), once its
/// control socket is up: the program runs and the monitor serves.
fn monitored_sleep(state: &Path, marker: &str, group: bool) -> Running {
    use std::os::unix::process::CommandExt;
    let mut c = bin();
    c.args(["run", "--learn", "--quiet", "--state-dir"])
        .arg(state)
        .args(["--", "sleep", marker]);
    if group {
        // Its own process group, as a shell job would be: a "terminal" Ctrl-C goes
        // to the whole group.
        c.process_group(0);
    }
    let running = Running {
        child: c.spawn().unwrap(),
        marker: marker.to_string(),
    };
    assert!(
        wait_until(10.0, || sockets(state) == 1 && sleeping(marker)),
        "monitor up"
    );
    running
}

#[test]
fn signals_to_run_are_forwarded_and_the_learning_saved() {
    for (sig, name, group) in [
        (libc::SIGINT, "INT", false),
        (libc::SIGTERM, "TERM", false),
        (libc::SIGHUP, "HUP", false),
        (libc::SIGINT, "INT to the group", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // A unique duration marks the monitored program.
        let marker = format!("{}.{}{}", 600 + sig, std::process::id(), u8::from(group));
        let mut running = monitored_sleep(&state, &marker, group);
        let monitor = &mut running.child;
        let target = if group {
            -(monitor.id() as i32)
        } else {
            monitor.id() as i32
        };
        // SAFETY: kill has no memory effects; the target is our child (or its group).
        assert_eq!(unsafe { libc::kill(target, sig) }, 0);
        let st = wait_until(10.0, || matches!(monitor.try_wait(), Ok(Some(_))));
        assert!(st, "SIG{name}: the monitor ends once its program does");
        let status = monitor.wait().unwrap();
        // The program got the signal and died of it; the monitor says so, as a shell.
        assert_eq!(status.code(), Some(128 + sig), "SIG{name}: {status:?}");
        assert!(
            pids_with(&marker).is_empty(),
            "SIG{name}: program left running"
        );
        assert_eq!(sockets(&state), 0, "SIG{name}: control socket removed");
        let profiles = std::fs::read_dir(state.join("profiles"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".phprof"))
            .count();
        assert!(profiles >= 1, "SIG{name}: the learning was saved");
    }
}

/// Connects to the only control socket in `state`.
fn control_socket(state: &Path) -> PathBuf {
    let entry = std::fs::read_dir(state.join("run"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    entry.path()
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slow_or_huge_clients_cannot_stall_the_control_socket() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let marker = format!("700.{}", std::process::id());
    let running = monitored_sleep(&state, &marker, false);
    let monitor = running.child.id();
    let socket = control_socket(&state);

    // A client that sends a byte every half second and never ends its line.
    let slow = UnixStream::connect(&socket).unwrap();
    let dripping = std::thread::spawn(move || {
        let mut w = &slow;
        for _ in 0..12 {
            if w.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Meanwhile `ps` is answered at once (it reported "no running monitor" before).
    let t = std::time::Instant::now();
    let ps = ok(bin().args(["ps", "--state-dir"]).arg(&state));
    assert!(ps.contains("sleep"), "{ps}");
    assert!(t.elapsed().as_secs_f64() < 3.0, "ps took {:?}", t.elapsed());

    // A client sending an endless line: cut off early, the monitor's memory stays put.
    let before = rss_kb(monitor);
    let mut huge = UnixStream::connect(&socket).unwrap();
    // A server that stops reading without hanging up fails the test, not hangs it.
    huge.set_write_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 300 << 20 {
        if huge.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let grown = rss_kb(monitor).saturating_sub(before);
    assert!(sent < 300 << 20, "the server read a 300 MiB line");
    assert!(grown < 16 << 10, "monitor grew by {grown} KiB");
    let ps = ok(bin().args(["ps", "--state-dir"]).arg(&state));
    assert!(ps.contains("sleep"), "{ps}");

    dripping.join().unwrap();
}
