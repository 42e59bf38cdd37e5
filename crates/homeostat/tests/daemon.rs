//! `homeostat daemon` on the real kernel (root, BPF, BTF; skips with a message
//! otherwise): a private copy of ls is learnt until normal, an unusual run of it
//! raises anomalies with its pid, SIGINT saves the profile, and a restarted daemon
//! loads it as normal and detects with it. With enforce, a private shell is stopped at
//! its first anomaly, delayed, refused an execve, and let go once its LFC is 0.

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

    let (mut d, rx) = daemon(
        &state,
        &ev1,
        &["--duration", "25", "--normal-wait", "0.5", "--detect"],
    );
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
    let (mut d, rx) = daemon(&state, &ev2, &["--duration", "3", "--detect"]);
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

fn root_and_btf() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: homeostat daemon needs root");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipping: the kernel has no BTF");
        return false;
    }
    true
}

/// A private copy of dash, a data file and the trained script: 300 reads of the file
/// by shell builtins only (no fork), so every run is the same calls.
struct Shell {
    dir: tempfile::TempDir,
    sh: std::path::PathBuf,
    key: String,
    trained: String,
}

fn shell() -> Shell {
    let dir = tempfile::tempdir().unwrap();
    let sh = dir.path().join("sh-copy");
    std::fs::copy("/usr/bin/dash", &sh).unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "x\n").unwrap();
    let m = std::fs::metadata(&sh).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let trained = format!(
        "i=0; while [ $i -lt 300 ]; do read x < {}; i=$((i+1)); done; echo done",
        data.display()
    );
    Shell {
        dir,
        sh,
        key,
        trained,
    }
}

/// Runs the shell until the daemon's events say its profile is normal.
fn train_until_normal(s: &Shell, ev: &Path) {
    let t = Instant::now();
    loop {
        for _ in 0..5 {
            let o = Command::new(&s.sh)
                .arg("-c")
                .arg(&s.trained)
                .output()
                .unwrap();
            assert!(o.status.success());
        }
        std::thread::sleep(Duration::from_millis(100));
        if has(&events(ev), |e| {
            e["profile"] == s.key.as_str() && e["event"] == "state_change" && e["to"] == "normal"
        }) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "shell not normal after 20 s"
        );
    }
}

fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn enforce_stops_delays_refuses_execve_and_lets_go() {
    if !root_and_btf() {
        return;
    }
    let s = shell();
    let state = s.dir.path().join("state");
    let ev = s.dir.path().join("ev.jsonl");
    let conf = s.dir.path().join("ph.toml");
    // Small delays so the test is quick; execve refused from LFC 1. Only the private
    // shell responds: the host is in detect mode, so with a normal_wait this short the
    // machine's other programs (the test harness, cargo...) are never stopped.
    std::fs::write(
        &conf,
        format!(
            "[ph]\nmode = \"detect\"\ndelay_factor_ms = 0.5\nmax_delay_ms = 8.0\nsuspend_execve = 1\n\n[modes]\n\"{}\" = \"enforce\"\n",
            s.sh.display()
        ),
    )
    .unwrap();
    let (mut d, rx) = daemon(
        &state,
        &ev,
        &[
            "--duration",
            "60",
            "--normal-wait",
            "0.5",
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    if ready(&mut d, &rx).is_none() {
        return;
    }
    train_until_normal(&s, &ev);

    // New behaviour first (calls dash's trained run never made), then a command (fork
    // + execve while the LFC is high), then the trained loop, long enough for the
    // locality frame to empty.
    let script = format!(
        "umask 077; cd /; kill -0 $$; /bin/true; echo rc=$?; {}",
        s.trained
    );
    let t = Instant::now();
    let out = Command::new(&s.sh).arg("-c").arg(&script).output().unwrap();
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The execve was refused (dash reports 126 for a command it cannot execute), and
    // the shell itself ran to its end.
    assert!(
        stdout.contains("rc=126"),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stdout.contains("done"), "{stdout:?}");
    assert!(out.status.success());

    std::thread::sleep(Duration::from_millis(400));
    let evs = events(&ev);
    let mine: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["profile"] == s.key.as_str()
                || e["exe"].as_str().is_some_and(|x| x.ends_with("sh-copy"))
        })
        .collect();
    let stop = mine
        .iter()
        .find(|e| e["event"] == "anomaly" && e["action"] == "stop")
        .unwrap_or_else(|| panic!("no stop: {mine:?}"));
    let pid = stop["pid"].as_u64().unwrap();
    assert_eq!(stop["state"], "normal");
    assert!(
        has(&evs, |e| e["event"] == "delay_start" && e["pid"] == pid),
        "no delay_start"
    );
    assert!(
        has(&evs, |e| e["event"] == "exec_refused"
            && e["action"] == "refuse_exec"),
        "no exec_refused: {mine:?}"
    );
    let end = evs
        .iter()
        .find(|e| e["event"] == "delay_stop" && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no delay_stop for {pid}"));
    assert_eq!(end["why"], "LFC back to 0", "{end}");
    let delays = end["delays"].as_u64().unwrap();
    assert!(delays > 0, "{end}");
    // Each delay is at least delay_factor x 2 = 1 ms.
    assert!(
        took >= Duration::from_millis(delays),
        "{delays} delays in {took:?}"
    );
    eprintln!("shell under response: {delays} delayed calls, ran {took:?}");

    // `homeostat status` sees the response.
    let st = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v[0]["responses"].as_u64().unwrap() >= 1, "{v}");
    assert!(v[0]["execve_refused"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v[0]["losses"]["lost_events"], 0, "{v}");

    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    assert_eq!(state_of(pid as u32), None, "the shell is gone");
}
