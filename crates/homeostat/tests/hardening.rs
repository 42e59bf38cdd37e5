//! The `homeostat` binary against a hostile user: closed pipes, special files, huge
//! or foreign inputs, state directories owned by someone else. Each test reproduces a
//! failure found by hand (issue 9) on real processes and files.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
}

fn sample(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(part)
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("homeostat runs");
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
