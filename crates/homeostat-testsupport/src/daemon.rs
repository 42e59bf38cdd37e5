//! Driving `homeostat daemon` from a test: its start, the moment it watches (or why
//! BPF is unavailable here), and its events file. Every daemon test needs the same
//! rule for telling "no BPF on this machine" (skip, with the reason) from "a program
//! was rejected" (fail), so it lives here once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether a daemon can run here at all: root, and a kernel with BTF; if not, says
/// why (the test then skips). Whether the kernel takes the programs is `ready`'s to
/// tell, and a refusal there fails the test.
pub fn possible() -> bool {
    if !crate::is_root() {
        eprintln!("skipping: homeostat daemon needs root");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipping: the kernel has no BTF");
        return false;
    }
    true
}

/// Starts `bin daemon --state-dir STATE --events EVENTS EXTRA...`; its stderr lines
/// arrive on the receiver. Its stderr is drained to the end even once the receiver is
/// dropped, so a test that stops listening never blocks the daemon on a full pipe.
pub fn start(bin: &Path, state: &Path, events: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(bin)
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
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for "daemon: watching" and returns the lines printed up to it (that line
/// last); None, after printing why, if BPF is unavailable here: the kernel refused
/// for lack of privilege, or has no BTF (homeostat_ebpf's `PermissionDenied` and
/// `NoBtf`). Any other start-up error (a program the verifier rejected, a failed
/// attach) fails the test, as does no answer within 20 s.
pub fn ready(child: &mut Child, rx: &Receiver<String>) -> Option<Vec<String>> {
    const UNAVAILABLE: [&str; 2] = ["bpf: permission denied", "bpf: kernel has no BTF"];
    let t = Instant::now();
    let mut seen = vec![];
    while t.elapsed() < Duration::from_secs(20) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("daemon: watching") => {
                seen.push(l);
                return Some(seen);
            }
            Ok(l) if l.contains("homeostat: error:") => {
                let _ = child.wait();
                if UNAVAILABLE.iter().any(|u| l.contains(u)) {
                    eprintln!("skipping: BPF unavailable: {l}");
                    return None;
                }
                panic!("daemon failed to start: {l}");
            }
            Ok(l) => seen.push(l),
            _ => {}
        }
    }
    let _ = child.kill();
    panic!("daemon not ready after 20 s");
}

/// The JSON lines of an events file written so far (a line cut by a write in
/// progress is skipped).
pub fn events(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
