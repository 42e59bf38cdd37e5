//! `homeostat analyze` run as a user would, on every profile kind homeostat writes:
//! what mimicry finds is scanned back with `homeostat scan` and must be clean.

use std::path::Path;
use std::process::Command;

use homeostat_core::ph::{ExeKey, PhConfig, PhProfile, ProfileState};
use homeostat_monitor::daemon_profile::DaemonProfile;

mod common;
use common::{bin, ok};

/// A stide (k = 3) profile of i386 traces: open read write close, then execve.
fn train(dir: &Path) -> std::path::PathBuf {
    let train = dir.join("train");
    std::fs::create_dir(&train).unwrap();
    std::fs::write(train.join("a.txt"), "5 3 4 6 5 3 4 6 11\n").unwrap();
    std::fs::write(train.join("b.txt"), "5 3 3 4 6 5 3 4 6\n").unwrap();
    let prof = dir.join("s.prof");
    ok(bin()
        .args(["train", "--arch", "i386", "-m", "stide", "-w", "3", "-o"])
        .arg(&prof)
        .arg(&train));
    prof
}

fn mimicry(prof: &Path, goal: &str) -> serde_json::Value {
    let out = ok(bin()
        .args(["analyze", "mimicry", "--json", "--goal", goal, "-p"])
        .arg(prof));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn mimicry_json_and_the_sequence_scans_clean() {
    let dir = tempfile::tempdir().unwrap();
    let prof = train(dir.path());
    let v = mimicry(&prof, "write,execve");
    // Exactly the documented keys.
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["found", "goal", "sequence"]);
    assert_eq!(v["goal"], serde_json::json!(["write", "execve"]));
    assert_eq!(v["found"], true);
    // execve only ends the window "write close execve" of a.txt.
    let seq = v["sequence"].as_array().unwrap();
    let nrs: Vec<u64> = seq.iter().map(|c| c["nr"].as_u64().unwrap()).collect();
    assert_eq!(nrs, [4, 6, 11]);
    assert_eq!(seq[2]["name"], "execve");
    let trace = dir.path().join("attack.txt");
    let text: Vec<String> = nrs.iter().map(u64::to_string).collect();
    std::fs::write(&trace, text.join(" ")).unwrap();
    let scan = ok(bin()
        .args(["scan", "--json", "--format", "adfa", "-p"])
        .arg(&prof)
        .arg(&trace));
    let s: serde_json::Value = serde_json::from_str(scan.trim()).unwrap();
    assert_eq!(s["mismatches"], 0);
    // Nothing ever follows execve.
    let none = mimicry(&prof, "execve,open");
    assert_eq!(none["found"], false);
    assert_eq!(none["sequence"], serde_json::json!([]));
    // An unknown name is a one-line error.
    let out = bin()
        .args(["analyze", "mimicry", "--goal", "frobnicate", "-p"])
        .arg(&prof)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn mfs_reads_traces_and_reports_visibility() {
    let dir = tempfile::tempdir().unwrap();
    let prof = train(dir.path());
    // 5 3 4 occurs; 3 4 6 11 ends a.txt; "4 11" never occurred (length 2 MFS).
    let t = dir.path().join("t.txt");
    std::fs::write(&t, "5 3 4 11\n").unwrap();
    let out = ok(bin()
        .args(["analyze", "mfs", "--json", "--format", "adfa", "-p"])
        .arg(&prof)
        .arg(&t));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["exact_to"], 3);
    assert_eq!(v["mfs"][0]["pos"], 2);
    assert_eq!(v["mfs"][0]["len"], 2);
    assert_eq!(v["mfs"][0]["calls"], serde_json::json!(["write", "execve"]));
    assert_eq!(v["visible_k2_to_k15"][0], 1);
    let table = ok(bin()
        .args(["analyze", "mfs", "--list", "--format", "adfa", "-p"])
        .arg(&prof)
        .arg(&t));
    assert!(table.contains("write execve"), "{table}");
    let tight = ok(bin().args(["analyze", "tightness", "-p"]).arg(&prof));
    assert!(tight.starts_with("tightness "), "{tight}");
}

#[test]
fn ph_and_daemon_profiles_are_analysed_too() {
    let dir = tempfile::tempdir().unwrap();
    // x86_64: openat(257) read(0) write(1) close(3), pairs of w = 9 from one run.
    let cfg = PhConfig::default();
    let calls = [257u32, 0, 1, 3, 257, 0, 1, 3, 59];
    let mut pairs = std::collections::BTreeMap::new();
    for t in 1..calls.len() {
        for d in 1..=t.min(8) {
            *pairs.entry((calls[t], calls[t - d])).or_insert(0u32) |= 1 << (d - 1);
        }
    }
    let raw: Vec<(u32, u32, u32)> = pairs.iter().map(|(&(c, p), &m)| (c, p, m)).collect();
    let key = ExeKey { dev: 1, ino: 2 };
    let p = PhProfile::from_raw_pairs(key, "/bin/x", &cfg, ProfileState::Normal, &raw).unwrap();
    let ph = dir.path().join("x.phprof");
    std::fs::write(&ph, p.to_bytes()).unwrap();
    let d = dir.path().join("x.json");
    std::fs::write(&d, DaemonProfile::from_ph(&p).to_bytes()).unwrap();
    for file in [&ph, &d] {
        let v = mimicry(file, "write,execve");
        assert_eq!(v["found"], true, "{}", file.display());
        let names: Vec<&str> = v["sequence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // The first call has no predecessors to check, then close must follow write
        // and execve close (every pair back to the write must be in the profile).
        assert_eq!(names, ["write", "close", "execve"], "{}", file.display());
    }
}

#[test]
fn exported_seccomp_policy_runs_the_program_and_refuses_one_more_call() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sh = |script: &str, extra: &[&str]| {
        bin()
            .args(["run", "--learn", "-q", "--state-dir"])
            .arg(&state)
            .args(extra)
            .args(["--", "/bin/sh", "-c", script])
            .output()
            .unwrap()
    };
    for _ in 0..3 {
        assert!(sh("echo hi", &[]).status.success());
    }
    // Both policies first: the runs below must not teach the profile anything.
    for (format, file) in [("bpf", "sh.bpf"), ("oci", "sh.json")] {
        ok(bin()
            .args([
                "profile",
                "export-seccomp",
                "/bin/sh",
                "--format",
                format,
                "--state-dir",
            ])
            .arg(&state)
            .arg("-o")
            .arg(dir.path().join(file)));
    }
    // kill(self, 0) never fails on its own; the profile never saw kill.
    let script = "echo hi; kill -0 $$; echo rc=$?";
    let free = Command::new("/bin/sh")
        .args(["-c", script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&free.stdout), "hi\nrc=0\n");
    for file in ["sh.bpf", "sh.json"] {
        let p = dir.path().join(file);
        let p = p.to_str().unwrap();
        // The profiled program runs normally under its own policy.
        let out = sh("echo hi", &["--seccomp", p]);
        assert!(out.status.success(), "{file}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        let out = sh(script, &["--seccomp", p]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nrc=1\n", "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("kill: Operation not permitted"),
            "{file}: {err}"
        );
    }
    let oci: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sh.json")).unwrap()).unwrap();
    assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(oci["defaultErrnoRet"], 1);
    let names = oci["syscalls"][0]["names"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "execve") && !names.iter().any(|n| n == "kill"));
}
