//! `homeostat daemon --symbols args` on the real kernel (root, BPF, BTF; skips with a
//! message otherwise): a private copy of cat reads files under one directory until
//! its profile is normal; the same cat on another file of that directory raises
//! nothing, on a file elsewhere (the same calls) an anomaly naming the class; the
//! classes are saved beside the profile, listed by `profile show` and loaded back by a
//! restarted daemon. Then the rules agree: the classes the kernel learnt are the ones
//! `homeostat record` + `train --symbols args` learn from the same program.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use homeostat_testsupport::daemon::{events, ready};
use homeostat_testsupport::spawn;
use serde_json::Value;

fn daemon(state: &Path, events: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    homeostat_testsupport::daemon::start(
        Path::new(env!("CARGO_BIN_EXE_homeostat")),
        state,
        events,
        extra,
    )
}

fn stop(d: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.id() as i32, libc::SIGINT) };
    let st = d.wait().unwrap();
    assert!(st.success(), "{st}");
}

fn run(bin: &Path, args: &[&Path]) -> u32 {
    run_in(bin, Path::new("/"), args)
}

/// `run` in the directory `cwd`.
fn run_in(bin: &Path, cwd: &Path, args: &[&Path]) -> u32 {
    let c = spawn(
        Command::new(bin)
            .args(args)
            .current_dir(cwd)
            .env("LC_ALL", "C")
            // As under `homeostat record` below (Command::output).
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    pid
}

/// Waits up to 5 s for an event of `pid` matching `f`.
fn wait_for(ev: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Some(e) = events(ev).into_iter().find(&f) {
            return e;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn another_file_is_an_anomaly_and_the_classes_are_the_cores() {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("cat-copy");
    std::fs::copy("/bin/cat", &cat).unwrap();
    let m = std::fs::metadata(&cat).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let notes = dir.path().join("srv/notes");
    std::fs::create_dir_all(&notes).unwrap();
    let elsewhere = tempfile::tempdir_in("/var/tmp").unwrap();
    for f in ["a", "b", "held-out"] {
        std::fs::write(notes.join(f), "a note\n").unwrap();
    }
    let secret = elsewhere.path().join("secret");
    std::fs::write(&secret, "a secret\n").unwrap();
    let (a, b, held) = (notes.join("a"), notes.join("b"), notes.join("held-out"));
    let state = dir.path().join("state");
    let ev1 = dir.path().join("ev1.jsonl");
    let args = [
        "--symbols",
        "args",
        "--detect",
        "--normal-wait",
        "0.5",
        "--duration",
        "60",
    ];
    // For the agreement below, a program that connects and signals as well.
    let bash = dir.path().join("bash-copy");
    std::fs::copy("/bin/bash", &bash).unwrap();
    let script = "(exec 3<>/dev/udp/127.0.0.1/53) 2>/dev/null; \
                  (exec 3<>/dev/udp/192.0.2.1/9) 2>/dev/null; \
                  kill -0 $$; kill -0 1; true";
    let (mut d, rx) = daemon(&state, &ev1, &args);
    let Some(lines) = ready(&mut d, &rx) else {
        return;
    };
    let line = lines.last().expect("the watching line");
    // Where the kernel refuses BPF trampolines (fexit), an open whose path is not yet
    // mapped in the caller is counted unread and not classified.
    let fallback = !line.contains("no open fallback");
    for _ in 0..3 {
        run(&bash, &[Path::new("-c"), Path::new(script)]);
    }
    // For the agreement below, programs that open relative names: cat from a cwd,
    // with `..` (resolved against the cwd: the launcher reads /proc/PID/cwd, the
    // kernel walks the cwd's dentries), and find, which opens each directory by
    // name relative to its parent's fd.
    let cat_rel = dir.path().join("cat-rel");
    std::fs::copy("/bin/cat", &cat_rel).unwrap();
    let find = dir.path().join("find-copy");
    std::fs::copy("/usr/bin/find", &find).unwrap();
    std::fs::create_dir_all(dir.path().join("srv/notes/deeper/deepest")).unwrap();
    std::fs::write(dir.path().join("srv/notes/deeper/deepest/n"), "x\n").unwrap();
    let rel_args = [
        Path::new("a"),
        Path::new("deeper/deepest/n"),
        Path::new("../notes/deeper/../b"),
        Path::new("../../../../../../../etc/hostname"),
    ];
    let srv = dir.path().join("srv");
    run_in(&cat_rel, &notes, &rel_args);
    run_in(&find, &srv, &[Path::new(".")]);
    assert!(line.contains("symbols args (path depth 2"), "{line}");
    let mine = |e: &Value| e["profile"] == key.as_str();
    let t = Instant::now();
    loop {
        for _ in 0..3 {
            run(&cat, &[&a]);
            run(&cat, &[&b]);
        }
        std::thread::sleep(Duration::from_millis(100));
        if events(&ev1)
            .iter()
            .any(|e| mine(e) && e["event"] == "state_change" && e["to"] == "normal")
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "cat copy not normal after 20 s"
        );
    }
    let learnt: BTreeSet<(String, String)> = events(&ev1)
        .iter()
        .filter(|e| mine(e) && e["event"] == "new_class")
        .map(|e| {
            (
                e["syscall"].as_str().unwrap().to_string(),
                e["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let notes_class = format!(
        "/{}/",
        dir.path()
            .components()
            .skip(1)
            .take(2)
            .map(|c| c.as_os_str().to_str().unwrap())
            .collect::<Vec<_>>()
            .join("/")
    );
    assert!(
        learnt.contains(&("openat".into(), notes_class.clone())),
        "{learnt:?}"
    );

    // The trained directory's other file: nothing.
    let pid = run(&cat, &[&held]);
    // The same calls on a file elsewhere: an anomaly at its openat, naming the class.
    let bad = run(&cat, &[&secret]);
    let e = wait_for(&ev1, "anomaly", |e| {
        mine(e) && e["event"] == "anomaly" && e["pid"] == bad
    });
    assert_eq!(e["syscall"], "openat", "{e}");
    assert_eq!(e["class"], "/var/tmp/", "{e}");
    assert_eq!(e["lfc"], 1, "{e}");
    // The same file by a relative name from the trained directory: resolved in the
    // kernel against the cwd, the same anomaly in the same class (unresolved, it
    // would be a `rel:` class). (Not /etc/passwd: cat opens /etc/ld.so.cache on every
    // run, so /etc/ is one of its trained classes at path depth 2.)
    let up = format!(
        "{}{}",
        "../".repeat(notes.components().count()),
        secret.strip_prefix("/").unwrap().display()
    );
    let bad_rel = run_in(&cat, &notes, &[Path::new(&up)]);
    let e = wait_for(&ev1, "anomaly of a relative name", |e| {
        mine(e) && e["event"] == "anomaly" && e["pid"] == bad_rel
    });
    assert_eq!(e["syscall"], "openat", "{e}");
    assert_eq!(e["class"], "/var/tmp/", "{e}");
    std::thread::sleep(Duration::from_millis(500));
    let evs = events(&ev1);
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "anomaly" && e["pid"] == pid),
        "the held-out file raised an anomaly"
    );
    // `status` reports the argument classes' loss counters of a daemon with classes.
    let st = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    let ours = st
        .as_array()
        .and_then(|a| a.iter().find(|s| s["pid"] == d.id()))
        .unwrap_or_else(|| panic!("no status from the daemon: {st}"));
    assert!(ours["arguments"]["unread"].is_u64(), "{ours}");
    stop(&mut d);

    // Saved beside the profile; `profile show` lists them.
    let classes_file = state.join(format!("daemon/{key}.classes"));
    let saved: Value = serde_json::from_slice(&std::fs::read(&classes_file).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["path_depth"], 2);
    let saved_names: BTreeSet<String> = saved["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap().to_string())
        .collect();
    assert!(saved_names.contains(&notes_class), "{saved_names:?}");
    assert!(
        !saved_names.contains("?"),
        "a class without its name: {saved}"
    );
    let show = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "show", "cat-copy", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(
        show["classes"].as_array().unwrap().len(),
        saved["classes"].as_array().unwrap().len(),
        "{show}"
    );

    // A restarted daemon loads them and detects with them.
    let ev2 = dir.path().join("ev2.jsonl");
    let (mut d, rx) = daemon(&state, &ev2, &args);
    ready(&mut d, &rx).unwrap();
    let loaded = wait_for(&ev2, "profile_loaded", |e| {
        mine(e) && e["event"] == "profile_loaded"
    });
    assert_eq!(
        loaded["classes"],
        saved["classes"].as_array().unwrap().len()
    );
    let bad = run(&cat, &[&secret]);
    let e = wait_for(&ev2, "anomaly after restart", |e| {
        mine(e) && e["event"] == "anomaly" && e["pid"] == bad
    });
    assert_eq!(e["class"], "/var/tmp/", "{e}");
    stop(&mut d);

    // The rules agree: the launcher's recorder and `train --symbols args` on the same
    // runs learn the same (call, class) set (but the exec that starts the program,
    // which the daemon sees in the parent's profile).
    let agree = |bin: &Path, cwd: &Path, args: &[&Path]| {
        let m = std::fs::metadata(bin).unwrap();
        let key = format!("{:x}-{:x}", m.dev(), m.ino());
        let saved: Value = serde_json::from_slice(
            &std::fs::read(state.join(format!("daemon/{key}.classes"))).unwrap(),
        )
        .unwrap();
        let name = bin.file_name().unwrap().to_str().unwrap();
        let rec = dir.path().join(format!("{name}.hrec"));
        let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(["record", "-o"])
            .arg(&rec)
            .arg("--")
            .arg(bin)
            .args(args)
            .current_dir(cwd)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let prof = dir.path().join(format!("{name}.prof"));
        let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(["train", "--symbols", "args", "-m", "stide", "-o"])
            .arg(&prof)
            .arg(&rec)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let table = homeostat_core::profile::profile_symbols(&std::fs::read(&prof).unwrap())
            .unwrap()
            .unwrap();
        let name_of = |call: u32| homeostat_syscalls::Arch::X86_64.display(call).into_owned();
        let launcher: BTreeSet<(String, String)> = table
            .classes()
            .iter()
            .map(|(call, class)| (name_of(*call), class.clone()))
            .filter(|(call, _)| call != "execve")
            .collect();
        let kernel: BTreeSet<(String, String)> = saved["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    name_of(c["call"].as_u64().unwrap() as u32),
                    c["class"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        eprintln!("{name}: classes (daemon = record + train): {kernel:?}");
        // One kernel class (hash) per class the core names.
        assert_eq!(
            kernel.len(),
            saved["classes"].as_array().unwrap().len(),
            "{name}: a class hashed twice: {saved}"
        );
        if fallback {
            assert_eq!(
                kernel, launcher,
                "{name}: daemon vs record + train --symbols args"
            );
        } else {
            // Every class the daemon has, the launcher has; what it lacks, it counted.
            assert!(
                kernel.is_subset(&launcher),
                "{name}: {kernel:?} vs {launcher:?}"
            );
            let missing = launcher.difference(&kernel).count() as u64;
            let unread = events(&ev1)
                .iter()
                .filter(|e| e["event"] == "argument_losses")
                .filter_map(|e| e["unread"].as_u64())
                .max()
                .unwrap_or(0);
            eprintln!("{name}: {missing} classes only under the launcher; unread {unread}");
            assert!(
                missing <= unread,
                "{name}: {missing} classes missing but {unread} unread: {kernel:?} vs {launcher:?}"
            );
        }
        kernel
    };
    agree(&cat, Path::new("/"), &[&a]);
    let r = agree(&cat_rel, &notes, &rel_args);
    let f = agree(&find, &srv, &[Path::new(".")]);
    for classes in [&r, &f] {
        assert!(
            classes.iter().all(|(_, c)| !c.starts_with("rel:")),
            "a relative name not resolved: {classes:?}"
        );
    }
    assert!(
        r.contains(&("openat".into(), "/etc/".into())),
        "cat-rel: {r:?}"
    );
    let b = agree(&bash, Path::new("/"), &[Path::new("-c"), Path::new(script)]);
    for want in [
        ("connect", "inet loopback:53"),
        ("connect", "inet remote:9"),
        ("kill", "target self"),
        ("kill", "target other-process"),
    ] {
        assert!(
            b.contains(&(want.0.into(), want.1.into())),
            "{want:?}: {b:?}"
        );
    }
}
