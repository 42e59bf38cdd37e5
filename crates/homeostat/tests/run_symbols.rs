//! pH on the argument-aware alphabet under the real launcher: `cat`, trained under
//! `homeostat run --symbols args` on notes in one directory, then run (enforce, no
//! `--symbols`: the saved profile's alphabet applies) on a file of the same size in
//! another directory. The calls are the same, so the plain profile, trained alike,
//! sees nothing; the argument-aware one sees the open of a directory `cat` never
//! opened there, live.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{bin, ok};

fn cat(dir: &Path, state: &str, flags: &[&str], file: &Path, events: Option<&str>) -> Vec<Value> {
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--quiet")
        .arg("--state-dir")
        .arg(dir.join(state))
        .args(flags);
    let ev = events.map(|e| dir.join(e));
    if let Some(e) = &ev {
        cmd.arg("--events").arg(e);
    }
    let out = cmd.arg("--").arg("cat").arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(file).unwrap());
    ev.map(|e| {
        std::fs::read_to_string(e)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn the_same_calls_on_another_file_are_anomalous_with_arguments_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    let notes: Vec<_> = (1..=5)
        .map(|i| {
            let p = dir.join(format!("notes/n{i}.txt"));
            std::fs::write(&p, &text[..i * 500]).unwrap();
            p
        })
        .collect();
    let secret = dir.join("secret/key.txt");
    std::fs::write(&secret, &text[..1500]).unwrap();

    let mut anomalies = vec![];
    for (state, symbols) in [("plain", "calls"), ("args", "args")] {
        // Depth 3: the temporary directory's notes/ and secret/ are classes of their own.
        let learn = ["--learn", "--symbols", symbols, "--path-depth", "3"];
        for _ in 0..3 {
            for n in &notes {
                cat(dir, state, &learn, n, None);
            }
        }
        ok(bin()
            .args(["profile", "normalize", "cat", "--state-dir"])
            .arg(dir.join(state)));
        let normal = cat(
            dir,
            state,
            &["--enforce"],
            &notes[2],
            Some(&format!("{state}-n")),
        );
        let attack = cat(
            dir,
            state,
            &["--enforce"],
            &secret,
            Some(&format!("{state}-a")),
        );
        let count = |ev: &[Value]| ev.iter().filter(|e| e["event"] == "anomaly").count();
        assert_eq!(count(&normal), 0, "{state}: {normal:?}");
        anomalies.push((state, count(&attack), attack));
    }
    let (_, plain, ev) = &anomalies[0];
    assert_eq!(*plain, 0, "plain calls: {ev:?}");
    let (_, args, ev) = &anomalies[1];
    assert!(*args > 0, "argument-aware: no anomaly");
    // The first anomalous call is the open of the other directory.
    let first = ev.iter().find(|e| e["event"] == "anomaly").unwrap();
    assert_eq!(first["syscall"], "openat", "{first}");
    assert_eq!(first["class"], "unseen class", "{first}");
    eprintln!("cat on a file in another directory: {plain} anomalies with plain calls, {args} with arguments");
}
