//! Argument classes in the kernel (`Options::symbols`), on the real kernel with real
//! programs: root and BTF, no mocks. Skips with a message when not root or the kernel
//! has no BTF / refuses BPF for lack of privilege; a rejected program is a failure.
#![cfg(feature = "bpf")]

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kernel_with, private_copy};
use homeostat_core::ph::ExeKey;
use homeostat_core::symbols::SymbolConfig;
use homeostat_ebpf::{class_name, Error, Event, EventKind, Hook, Kernel, KernelState, Options};
use homeostat_testsupport::{is_root, spawn};

fn with_args(hook: Option<Hook>) -> Options {
    Options {
        symbols: Some(SymbolConfig::default()),
        hook,
        ..Options::default()
    }
}

fn run(bin: &Path, args: &[&str]) -> u32 {
    let child = spawn(
        Command::new(bin)
            .args(args)
            .env("LC_ALL", "C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{bin:?} {args:?}: {out:?}");
    pid
}

#[test]
fn both_hooks_load_with_arguments() {
    for hook in [Hook::TpBtf, Hook::RawTp] {
        let Some(k) = kernel_with(&with_args(Some(hook))) else {
            return;
        };
        assert_eq!(k.symbols(), Some(SymbolConfig::default()));
        eprintln!(
            "{hook:?}: open fallback {} {:?}",
            k.open_fallback(),
            k.open_fallback_error()
        );
        assert_eq!(k.arg_stats().unwrap().map_full, 0);
    }
    let deep = Options {
        symbols: Some(SymbolConfig {
            path_depth: 9,
            max_classes: 8,
        }),
        ..Options::default()
    };
    if is_root() {
        let e = Kernel::load(&deep).unwrap_err().to_string();
        assert!(e.contains("path depth 9"), "{e}");
    }
}

/// The webshell case: the same program, making the same calls, on a file under a
/// directory it never used in training. Two sets of programs watch the same runs at
/// once, one with argument classes and one with plain calls.
#[test]
fn the_same_calls_on_another_file_are_anomalous_with_arguments_only() {
    let Some(args) = kernel_with(&with_args(None)) else {
        return;
    };
    let Some(plain) = kernel_with(&Options::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cat, exe) = private_copy(dir.path(), "/bin/cat");
    let notes = dir.path().join("srv/notes");
    std::fs::create_dir_all(&notes).unwrap();
    let secret = tempfile::tempdir_in("/var/tmp").unwrap();
    for (d, name) in [
        (&notes, "a"),
        (&notes, "b"),
        (&notes, "c"),
        (&notes, "held-out"),
        (&secret.path().to_path_buf(), "secret"),
    ] {
        std::fs::write(d.join(name), "one line of text\n").unwrap();
    }
    let file = |n: &str| notes.join(n).to_str().unwrap().to_string();
    let got = RefCell::new(Vec::<Event>::new());
    let got_plain = RefCell::new(Vec::<Event>::new());
    let ev = args.events(|e| got.borrow_mut().push(e)).unwrap();
    let ev_plain = plain.events(|e| got_plain.borrow_mut().push(e)).unwrap();
    let drain = || {
        ev.poll(Duration::from_millis(50)).unwrap();
        ev_plain.poll(Duration::from_millis(50)).unwrap();
        (
            std::mem::take(&mut *got.borrow_mut())
                .into_iter()
                .filter(|e| e.exe == exe)
                .collect::<Vec<_>>(),
            std::mem::take(&mut *got_plain.borrow_mut())
                .into_iter()
                .filter(|e| e.exe == exe)
                .collect::<Vec<_>>(),
        )
    };

    for k in [&args, &plain] {
        k.set_state(exe, KernelState::Training).unwrap();
    }
    for _ in 0..4 {
        for f in ["a", "b", "c"] {
            run(&cat, &[&file(f)]);
        }
    }
    let (evs, _) = drain();
    let cfg = SymbolConfig::default();
    let learnt: Vec<(u32, String)> = evs
        .iter()
        .filter(|e| e.kind == EventKind::NewClass)
        .map(|e| (e.nr, class_name(e.arg.as_ref().unwrap(), &cfg)))
        .collect();
    eprintln!("classes learnt: {learnt:?}");
    let prefix = |p: &Path| {
        let c: Vec<_> = p.components().skip(1).take(2).collect();
        format!(
            "/{}/",
            c.iter()
                .map(|c| c.as_os_str().to_str().unwrap())
                .collect::<Vec<_>>()
                .join("/")
        )
    };
    let openat = 257;
    assert!(
        learnt.contains(&(openat, prefix(&notes))),
        "no class {} among {learnt:?}",
        prefix(&notes)
    );
    assert!(learnt.iter().any(|(_, c)| c == "prot exec"), "{learnt:?}");
    let classes = args.classes(exe).unwrap();
    assert_eq!(classes.len(), learnt.len(), "{classes:?}");
    // One kernel class per class the core names (the file name never counts).
    let unique: std::collections::BTreeSet<_> = learnt.iter().collect();
    assert_eq!(
        unique.len(),
        learnt.len(),
        "a class hashed twice: {learnt:?}"
    );
    assert_eq!(args.arg_stats().unwrap().map_full, 0);

    for k in [&args, &plain] {
        k.set_state(exe, KernelState::Normal).unwrap();
    }
    // A file of the trained directory not used in training: its class is known.
    run(&cat, &[&file("held-out")]);
    let (evs, evs_plain) = drain();
    let anomalies = |v: &[Event]| v.iter().filter(|e| e.kind == EventKind::Anomaly).count();
    assert_eq!(anomalies(&evs), 0, "held-out, args: {evs:?}");
    assert_eq!(anomalies(&evs_plain), 0, "held-out, plain: {evs_plain:?}");

    // The same calls on a file elsewhere.
    let other = secret.path().join("secret");
    let pid = run(&cat, &[other.to_str().unwrap()]);
    let (evs, evs_plain) = drain();
    eprintln!("args: {evs:?}\nplain: {evs_plain:?}");
    assert_eq!(anomalies(&evs_plain), 0, "plain calls see nothing new");
    let unseen: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == EventKind::UnseenClass)
        .collect();
    assert_eq!(unseen.len(), 1, "{evs:?}");
    assert_eq!(
        (unseen[0].pid, unseen[0].nr),
        (pid, openat),
        "{:?}",
        unseen[0]
    );
    assert_eq!(
        class_name(unseen[0].arg.as_ref().unwrap(), &cfg),
        prefix(secret.path().join("x").as_path())
    );
    let anomaly: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == EventKind::Anomaly)
        .collect();
    assert_eq!(anomaly.len(), 1, "{evs:?}");
    assert_eq!((anomaly[0].nr, anomaly[0].lfc), (openat, 1));
    // Nothing was learnt while normal; removing the profile frees its classes.
    assert_eq!(args.classes(exe).unwrap(), classes);
    args.remove_profile(exe).unwrap();
    assert!(args.classes(exe).unwrap().is_empty());
    plain.remove_profile(exe).unwrap();
}

/// Classes saved and loaded back test the same, and the per-profile cap sends
/// further classes to the call's `other` class (counted), as the core does.
#[test]
fn classes_round_trip_and_the_cap_overflows_into_other() {
    let Some(k) = kernel_with(&Options {
        symbols: Some(SymbolConfig {
            path_depth: 2,
            max_classes: 2,
        }),
        ..Options::default()
    }) else {
        return;
    };
    let exe = ExeKey {
        dev: u64::MAX,
        ino: 0xa595,
    };
    k.add_classes(exe, &[(257, 11), (257, 12)]).unwrap();
    assert_eq!(k.classes(exe).unwrap(), vec![(257, 11), (257, 12)]);
    let e = k.add_classes(exe, &[(257, 13), (2, 0)]).unwrap_err();
    assert!(e.to_string().contains("1 classes past"), "{e}");
    // `other` is not counted against the cap.
    assert_eq!(k.classes(exe).unwrap(), vec![(2, 0), (257, 11), (257, 12)]);
    assert!(matches!(
        k.add_classes(exe, &[(512, 1)]),
        Err(Error::OutOfRange(512))
    ));
    k.remove_profile(exe).unwrap();
    assert!(k.classes(exe).unwrap().is_empty());

    // A real program past the cap: its extra classes are `other`, and counted.
    let dir = tempfile::tempdir().unwrap();
    let (cat, exe) = private_copy(dir.path(), "/bin/cat");
    k.set_state(exe, KernelState::Training).unwrap();
    run(&cat, &["/etc/hostname"]);
    let classes = k.classes(exe).unwrap();
    let real = classes.iter().filter(|c| c.1 != 0).count();
    assert!(real <= 2, "{classes:?}");
    assert!(
        classes.iter().any(|c| c.1 == 0),
        "no other class: {classes:?}"
    );
    assert!(k.arg_stats().unwrap().overflowed > 0);
    k.remove_profile(exe).unwrap();

    // A normal profile that learnt no class (made normal before classes were on) is
    // tested on its calls only: misses of pairs, no unseen class.
    let got = RefCell::new(Vec::<Event>::new());
    let ev = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Normal).unwrap();
    run(&cat, &["/etc/hostname"]);
    ev.poll(Duration::from_millis(50)).unwrap();
    let evs: Vec<Event> = got.take().into_iter().filter(|e| e.exe == exe).collect();
    assert!(
        evs.iter().any(|e| e.kind == EventKind::Anomaly),
        "no pair was learnt, so pairs miss: {evs:?}"
    );
    assert!(
        !evs.iter().any(|e| e.kind == EventKind::UnseenClass),
        "{evs:?}"
    );
    assert!(k.classes(exe).unwrap().is_empty());
    k.remove_profile(exe).unwrap();
}

/// Relative names are resolved in the kernel against the cwd or the dirfd (walking
/// the base directory's dentries up through its mounts): a relative name and the
/// absolute name of the same directory are one class (one hash, one name), and `..`
/// pops the base as the core's `resolve` does.
#[test]
fn relative_names_are_resolved_against_the_cwd_and_the_dirfd() {
    let cfg = SymbolConfig {
        path_depth: 3,
        ..SymbolConfig::default()
    };
    let Some(k) = kernel_with(&Options {
        symbols: Some(cfg),
        ..Options::default()
    }) else {
        return;
    };
    // Under /tmp (its own mount on many systems: the walk crosses it) and not below
    // the current directory.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let top = dir.path().canonicalize().unwrap();
    let (cat, exe) = private_copy(&top, "/bin/cat");
    let (find, find_exe) = private_copy(&top, "/usr/bin/find");
    for f in ["a", "b", "c"] {
        std::fs::write(top.join(f), "x\n").unwrap();
    }
    std::fs::create_dir_all(top.join("sub/deeper/deepest")).unwrap();
    std::fs::write(top.join("sub/d"), "x\n").unwrap();
    std::fs::write(top.join("sub/deeper/deepest/e"), "x\n").unwrap();
    let got = RefCell::new(Vec::<Event>::new());
    let ev = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    k.set_state(find_exe, KernelState::Training).unwrap();
    let abs_a = top.join("a");
    let abs_d = top.join("sub/d");
    let up = format!("../{}/sub/d", top.file_name().unwrap().to_str().unwrap());
    for (cwd, args) in [
        (top.clone(), vec!["a", "b", "c", abs_a.to_str().unwrap()]),
        (
            top.clone(),
            vec!["./a", "sub/d", "sub/../a", abs_d.to_str().unwrap()],
        ),
        (
            top.join("sub/deeper"),
            vec!["deepest/e", "../../../../etc/passwd"],
        ),
        (top.clone(), vec![&up]),
        (
            PathBuf::from("/"),
            vec!["etc/hostname", "etc/../etc/./group"],
        ),
        // The cwd is a mount's root: the walk steps to its mountpoint.
        (PathBuf::from("/proc"), vec!["sys/kernel/hostname"]),
    ] {
        let c = spawn(
            Command::new(&cat)
                .args(&args)
                .current_dir(&cwd)
                .stdout(Stdio::null()),
        );
        assert!(c.wait_with_output().unwrap().status.success(), "{args:?}");
    }
    // find opens each directory relative to its parent's fd (openat(dirfd, name)).
    let c = spawn(
        Command::new(&find)
            .arg(".")
            .current_dir(&top)
            .stdout(Stdio::null()),
    );
    assert!(c.wait_with_output().unwrap().status.success());
    ev.poll(Duration::from_millis(50)).unwrap();
    let learnt = |exe: ExeKey| -> Vec<(String, u64)> {
        got.borrow()
            .iter()
            .filter(|e| e.exe == exe && e.kind == EventKind::NewClass && e.nr == 257)
            .map(|e| (class_name(e.arg.as_ref().unwrap(), &cfg), e.class_hash))
            .collect()
    };
    let t = top.to_str().unwrap();
    let one_hash_per_name = |l: &[(String, u64)]| {
        let names: std::collections::BTreeSet<&String> = l.iter().map(|(c, _)| c).collect();
        let hashes: std::collections::BTreeSet<u64> = l.iter().map(|(_, h)| *h).collect();
        assert_eq!(names.len(), l.len(), "a class hashed twice: {l:?}");
        assert_eq!(hashes.len(), l.len(), "two classes, one hash: {l:?}");
    };
    let cat_classes = learnt(exe);
    one_hash_per_name(&cat_classes);
    let mut names: Vec<String> = cat_classes.into_iter().map(|(c, _)| c).collect();
    names.sort();
    eprintln!("cat: {names:?}");
    // /tmp/<dir>/ at depth 3 is `/tmp/<name>/` when /tmp is not itself a link.
    let mut want = vec![
        "/etc/".to_string(),
        format!("{t}/"),
        format!("{t}/sub/"),
        format!("{t}/sub/deeper/"),
        "/proc/sys/kernel/".to_string(),
    ];
    want.retain(|c| c.matches('/').count() <= 4);
    want.sort();
    want.dedup();
    assert!(
        names.iter().all(|n| !n.starts_with("rel:")),
        "unresolved: {names:?}"
    );
    for w in &want {
        assert!(names.contains(w), "{w} not in {names:?}");
    }
    // find: every directory it walks into by dirfd is classed by its real place.
    let find_classes = learnt(find_exe);
    one_hash_per_name(&find_classes);
    let fnames: Vec<&str> = find_classes.iter().map(|(c, _)| c.as_str()).collect();
    eprintln!("find: {fnames:?}");
    assert!(
        fnames.iter().all(|n| !n.starts_with("rel:")),
        "find: unresolved: {fnames:?}"
    );
    assert!(
        fnames.contains(&format!("{t}/sub/").as_str()),
        "find: {fnames:?}"
    );
    k.remove_profile(exe).unwrap();
    k.remove_profile(find_exe).unwrap();
}

/// The names of a base's top directories are cached per CPU (hs_top_cache): a class
/// event from a cached base still carries them, and a top directory renamed in place
/// (the same dentry under a new name) makes the new name's class at once.
#[test]
fn a_renamed_base_directory_makes_its_new_class_at_once() {
    let cfg = SymbolConfig {
        path_depth: 3,
        ..SymbolConfig::default()
    };
    let Some(k) = kernel_with(&Options {
        symbols: Some(cfg),
        ..Options::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let top = dir.path().canonicalize().unwrap();
    let (cat, exe) = private_copy(&top, "/bin/cat");
    std::fs::create_dir_all(top.join("one/sub")).unwrap();
    std::fs::create_dir_all(top.join("three")).unwrap();
    std::fs::write(top.join("one/sub/f"), "x\n").unwrap();
    std::fs::write(top.join("three/h"), "x\n").unwrap();
    let got = RefCell::new(Vec::<Event>::new());
    let ev = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    let cat_in = |cwd: &Path, args: &[&str]| {
        let c = spawn(
            Command::new(&cat)
                .args(args)
                .current_dir(cwd)
                .stdout(Stdio::null()),
        );
        assert!(c.wait_with_output().unwrap().status.success(), "{args:?}");
    };
    // Fills the cache with the base's top names, then uses them for a new class
    // (three/, by `..` from the same base) and for a known one.
    cat_in(&top.join("one/sub"), &["f"]);
    cat_in(&top.join("one/sub"), &["../../three/h", "f"]);
    std::fs::rename(top.join("one"), top.join("two")).unwrap();
    cat_in(&top.join("two/sub"), &["f"]);
    ev.poll(Duration::from_millis(50)).unwrap();
    let t = top.to_str().unwrap();
    let learnt: Vec<(String, u64)> = got
        .borrow()
        .iter()
        .filter(|e| e.exe == exe && e.kind == EventKind::NewClass && e.nr == 257)
        .map(|e| (class_name(e.arg.as_ref().unwrap(), &cfg), e.class_hash))
        .filter(|(c, _)| c.starts_with(t))
        .collect();
    eprintln!("{learnt:?}");
    let names: Vec<&str> = learnt.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{t}/one/"),
            format!("{t}/three/"),
            format!("{t}/two/")
        ],
        "{learnt:?}"
    );
    let hashes: std::collections::BTreeSet<u64> = learnt.iter().map(|(_, h)| *h).collect();
    assert_eq!(hashes.len(), 3, "{learnt:?}");
    k.remove_profile(exe).unwrap();
}
