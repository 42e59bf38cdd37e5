//! `homeostat daemon` on the real kernel (root, BPF, BTF; skips with a message
//! otherwise): a private copy of ls is learnt until normal, an unusual run of it
//! raises anomalies with its pid, SIGINT saves the profile, and a restarted daemon
//! loads it as normal and detects with it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

fn daemon(state: &Path, events: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .arg("daemon")
        .arg("--state-dir")
        .arg(state)
        .arg("--events")
        .arg(events)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for "daemon: watching"; None (after printing why) if BPF is unavailable.
fn ready(child: &mut Child, rx: &Receiver<String>) -> Option<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("daemon: watching") => return Some(()),
            Ok(l) if l.contains("bpf:") => {
                eprintln!("skipping: {l}");
                let _ = child.wait();
                return None;
            }
            _ => {}
        }
    }
    let _ = child.kill();
    panic!("daemon not ready after 20 s");
}

fn events(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has(evs: &[Value], f: impl Fn(&Value) -> bool) -> bool {
    evs.iter().any(f)
}

#[test]
fn learns_detects_saves_and_reloads() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: homeostat daemon needs root");
        return;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipping: the kernel has no BTF");
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lsc = dir.path().join("ls-copy");
    std::fs::copy("/usr/bin/ls", &lsc).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in ["a", "b", "c"] {
        std::fs::write(data.join(f), f).unwrap();
    }
    let m = std::fs::metadata(&lsc).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let state = dir.path().join("state");
    let ev1 = dir.path().join("ev1.jsonl");

    let (mut d, rx) = daemon(&state, &ev1, &["--duration", "25", "--normal-wait", "0.5"]);
    if ready(&mut d, &rx).is_none() {
        return;
    }
    let run = |args: &[&Path]| {
        let c = Command::new(&lsc)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        c.wait_with_output().unwrap();
        pid
    };
    let mine = |e: &Value| e["profile"] == key.as_str();
    // Learn: the same run until the profile is normal.
    let t = Instant::now();
    loop {
        for _ in 0..5 {
            run(&[&data]);
        }
        std::thread::sleep(Duration::from_millis(100));
        let evs = events(&ev1);
        if has(&evs, |e| {
            mine(e) && e["event"] == "state_change" && e["to"] == "normal"
        }) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(12),
            "ls copy not normal after 12 s"
        );
    }
    // Detect: a different run of the same program.
    let weird = [
        Path::new("-laR"),
        Path::new("/nonexistent"),
        Path::new("/proc/self/"),
    ];
    let pid = run(&weird);
    let t = Instant::now();
    while !has(&events(&ev1), |e| {
        mine(e) && e["event"] == "anomaly" && e["pid"] == pid
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no anomaly for pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let evs = events(&ev1);
    let a = evs
        .iter()
        .find(|e| mine(e) && e["event"] == "anomaly" && e["pid"] == pid)
        .unwrap();
    assert_eq!(a["state"], "normal");
    assert_eq!(a["action"], "none");
    assert!(a["lfc"].as_u64().unwrap() > 0, "{a}");
    assert!(a["misses"].as_u64().unwrap() > 0, "{a}");
    assert!(a["exe"].as_str().unwrap().ends_with("ls-copy"), "{a}");
    assert!(!a["syscall"].as_str().unwrap().is_empty(), "{a}");

    // SIGINT: clean stop, profile saved as normal.
    unsafe { libc::kill(d.id() as i32, libc::SIGINT) };
    let st = d.wait().unwrap();
    assert!(st.success(), "{st}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state.join(format!("daemon/{key}.json"))).unwrap())
            .unwrap();
    assert_eq!(saved["state"], "normal");
    assert!(!saved["pairs"].as_array().unwrap().is_empty());

    // Restart: loaded as normal, detects at once.
    let ev2 = dir.path().join("ev2.jsonl");
    let (mut d, rx) = daemon(&state, &ev2, &["--duration", "3"]);
    ready(&mut d, &rx).expect("BPF worked a moment ago");
    let pid = run(&weird);
    let st = d.wait().unwrap();
    assert!(st.success(), "{st}");
    let evs = events(&ev2);
    assert!(
        has(&evs, |e| mine(e)
            && e["event"] == "profile_loaded"
            && e["state"] == "normal"),
        "profile not loaded as normal"
    );
    assert!(
        has(&evs, |e| mine(e)
            && e["event"] == "anomaly"
            && e["pid"] == pid),
        "no anomaly after reload"
    );
    eprintln!("daemon test took {:.1} s", t0.elapsed().as_secs_f64());
}
