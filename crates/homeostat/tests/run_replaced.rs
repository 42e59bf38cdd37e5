//! A profile is keyed by (device, inode), and a file system gives a deleted file's
//! inode number to a later file. `homeostat run` records the birth time of the file a
//! profile was made for and drops the profile when a task runs a file born at another
//! time under the same key, so a program installed where another was deleted does not
//! inherit a normal profile it never trained (docs/homeostat-run.md).
//!
//! Provoking the file system into reusing an inode number is not reliable, so the test
//! takes the other side: a real program's real profile is rewritten to say it was made
//! for a file born one nanosecond earlier, which is what a reused number looks like.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use homeostat_core::ph::PhProfile;
use serde_json::Value;

mod common;
use common::{bin, ok};

fn born(path: &Path) -> Option<u64> {
    let t = std::fs::metadata(path).ok()?.created().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64)
}

/// A copy of `true` at `dir/prog` and its birth time; `None`, after saying so, on a
/// file system that reports no birth time (run cannot tell a reused inode number
/// there: the check is off too).
fn program(dir: &Path) -> Option<(PathBuf, u64)> {
    let prog = dir.join("prog");
    std::fs::copy("/usr/bin/true", &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(birth) = born(&prog) else {
        eprintln!(
            "SKIP: the file system under {} reports no birth time",
            dir.display()
        );
        return None;
    };
    Some((prog, birth))
}

/// The profile key (`<dev>-<ino>`, hex) of the file at `path` now.
fn key_of(path: &Path) -> String {
    let md = std::fs::metadata(path).unwrap();
    format!("{:x}-{:x}", md.dev(), md.ino())
}

fn run(state: &Path, mode: &str, events: &Path, prog: &Path) -> Vec<Value> {
    ok(bin()
        .args(["run", "--quiet", mode, "--state-dir"])
        .arg(state)
        .arg("--events")
        .arg(events)
        .arg("--")
        .arg(prog));
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[test]
fn a_profile_made_for_an_earlier_file_with_the_same_inode_number_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some((prog, birth)) = program(dir) else {
        return;
    };
    let state = dir.join("state");
    for i in 0..3 {
        run(
            &state,
            "--learn",
            &dir.join(format!("learn{i}.jsonl")),
            &prog,
        );
    }
    let file = state
        .join("profiles")
        .join(format!("{}.phprof", key_of(&prog)));
    let learnt = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(learnt.born(), Some(birth), "the profile records its file");
    ok(bin()
        .args(["profile", "normalize", "prog", "--state-dir"])
        .arg(&state));

    // The same file: the normal profile applies, nothing is dropped.
    let same = run(&state, "--enforce", &dir.join("same.jsonl"), &prog);
    assert!(named(&same, "profile_evicted").is_empty(), "{same:?}");
    assert!(named(&same, "anomaly").is_empty(), "{same:?}");
    let normal = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(normal.state, homeostat_core::ph::ProfileState::Normal);

    // The profile now says it was made for an earlier file under the same key.
    let earlier = normal.with_born(Some(birth - 1));
    std::fs::write(&file, earlier.to_bytes()).unwrap();
    let other = run(&state, "--enforce", &dir.join("other.jsonl"), &prog);
    let evicted = named(&other, "profile_evicted");
    assert_eq!(evicted.len(), 1, "{other:?}");
    assert_eq!(evicted[0]["reason"], homeostat_core::ph::REPLACED);
    let created = named(&other, "profile_created");
    assert!(created.iter().any(|e| e["from"] == "new"), "{other:?}");
    assert!(named(&other, "anomaly").is_empty(), "{other:?}");
    let fresh = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(fresh.state, homeostat_core::ph::ProfileState::Training);
    assert_eq!(fresh.born(), Some(birth));
}

/// Copies `from` to `path` after deleting what `path` was, until the file system gives
/// the new file the old one's inode number (ext4 and tmpfs do so at once when nothing
/// else is created meanwhile); `false` when it never does.
fn replace_reusing_inode(path: &Path, from: &str) -> bool {
    let ino = std::fs::metadata(path).unwrap().ino();
    for _ in 0..20 {
        std::fs::remove_file(path).unwrap();
        std::fs::copy(from, path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        if std::fs::metadata(path).unwrap().ino() == ino {
            return true;
        }
    }
    false
}

#[test]
fn a_daemon_profile_of_an_earlier_file_with_the_same_inode_number_seeds_nothing() {
    use homeostat_monitor::daemon_profile::DaemonProfile;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some((prog, _)) = program(dir) else {
        return;
    };
    // A normal profile of `true`, as the daemon's file (the daemon learnt it, then
    // stopped).
    let learnt = dir.join("learnt");
    for i in 0..3 {
        run(&learnt, "--learn", &dir.join(format!("l{i}.jsonl")), &prog);
    }
    ok(bin()
        .args(["profile", "normalize", "prog", "--state-dir"])
        .arg(&learnt));
    let key = key_of(&prog);
    let ph = learnt.join("profiles").join(format!("{key}.phprof"));
    let normal = PhProfile::from_bytes(&std::fs::read(ph).unwrap()).unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("daemon")).unwrap();
    for d in [&state, &state.join("daemon")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let daemon_file = state.join("daemon").join(format!("{key}.json"));
    std::fs::write(&daemon_file, DaemonProfile::from_ph(&normal).to_bytes()).unwrap();

    // The file it was learnt for starts from it.
    let same = run(&state, "--enforce", &dir.join("same.jsonl"), &prog);
    let created = named(&same, "profile_created");
    assert!(created.iter().any(|e| e["from"] == "daemon"), "{same:?}");
    std::fs::remove_file(state.join("profiles").join(format!("{key}.phprof"))).unwrap();

    // Another program installed where it was, under the same inode number, after the
    // daemon's file was written: the daemon never saw it, its profile is another's.
    if !replace_reusing_inode(&prog, "/usr/bin/echo") {
        eprintln!(
            "SKIP: the file system under {} gave no inode number twice",
            dir.display()
        );
        return;
    }
    // (Detect: judged by the wrong profile, enforce would delay echo for minutes.)
    let other = run(&state, "--detect", &dir.join("other.jsonl"), &prog);
    let created = named(&other, "profile_created");
    assert!(
        created.iter().all(|e| e["from"] == "new") && !created.is_empty(),
        "{created:?}"
    );
    let anomalies = named(&other, "anomaly").len();
    assert_eq!(anomalies, 0, "{created:?}");
}

#[test]
fn a_monitor_saving_a_deleted_files_profile_does_not_overwrite_its_successors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some((prog, first)) = program(dir) else {
        return;
    };
    let state = dir.join("state");
    let file = state
        .join("profiles")
        .join(format!("{}.phprof", key_of(&prog)));
    // Monitor A learns the first file, and saves when its shell exits, later.
    let mut a = bin()
        .args(["run", "--quiet", "--learn", "--state-dir"])
        .arg(&state)
        .args(["--", "sh", "-c"])
        .arg(format!("{} && sleep 1.5", prog.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    // Meanwhile another program is installed in its place, reusing its inode number,
    // and monitor B learns it and saves first.
    if !replace_reusing_inode(&prog, "/usr/bin/echo") {
        a.wait().unwrap();
        eprintln!(
            "SKIP: the file system under {} gave no inode number twice",
            dir.display()
        );
        return;
    }
    let second = born(&prog).unwrap();
    assert_ne!(first, second);
    run(&state, "--learn", &dir.join("b.jsonl"), &prog);
    let b = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(b.born(), Some(second));
    assert!(a.wait().unwrap().success());
    // A's profile is of a file that no longer exists: B's stays.
    let kept = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(kept.born(), Some(second), "the deleted file's profile won");
    assert_eq!(kept.train_count, b.train_count);
}

#[test]
fn a_profile_of_an_older_build_adopts_its_files_birth_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some((prog, birth)) = program(dir) else {
        return;
    };
    let state = dir.join("state");
    run(&state, "--learn", &dir.join("l0.jsonl"), &prog);
    let file = state
        .join("profiles")
        .join(format!("{}.phprof", key_of(&prog)));
    // As an older build wrote it: no birth time (frame version 1).
    let old = PhProfile::from_bytes(&std::fs::read(&file).unwrap())
        .unwrap()
        .with_born(None);
    let bytes = old.to_bytes();
    assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let evs = run(&state, "--learn", &dir.join("l1.jsonl"), &prog);
    assert!(named(&evs, "profile_evicted").is_empty(), "{evs:?}");
    let now = PhProfile::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(now.born(), Some(birth));
    assert!(now.train_count > old.train_count, "its training kept");
}
