//! Williamson's connection throttle under the real launcher (`homeostat run
//! --throttle-connect`): a real program (bash, connecting through /dev/tcp) that
//! contacts many new loopback hosts is held to the release rate; one that keeps
//! contacting the same host is not delayed at all. Both are measured, beside the
//! same scan without the throttle.

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

mod common;
use common::bin;

/// Connects (refused: nothing listens on port 9) to 127.0.0.2 .. 127.0.0.(N+1), or N
/// times to 127.0.0.1.
fn script(new_hosts: bool, n: u32) -> String {
    let host = if new_hosts {
        "127.0.0.$((i+1))"
    } else {
        "127.0.0.1"
    };
    format!("for i in $(seq {n}); do {{ : 3<>/dev/tcp/{host}/9; }} 2>/dev/null; done; exit 0")
}

/// Runs `script` (bash) under the launcher (learning, so pH never delays); returns the
/// wall time and the throttle's events.
fn run(
    dir: &std::path::Path,
    name: &str,
    throttle: Option<&str>,
    script: &str,
) -> (f64, Vec<Value>) {
    run_cmd(dir, name, throttle, &["bash", "-c", script])
}

/// Runs `cmd` under the launcher (learning, so pH never delays); returns the wall
/// time and the throttle's events.
fn run_cmd(
    dir: &std::path::Path,
    name: &str,
    throttle: Option<&str>,
    cmd_line: &[&str],
) -> (f64, Vec<Value>) {
    let events = dir.join(format!("{name}.events"));
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--learn")
        .arg("--quiet")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--events")
        .arg(&events);
    if let Some(rate) = throttle {
        cmd.args(["--throttle-connect", rate]);
    }
    let t = Instant::now();
    let st = cmd.arg("--").args(cmd_line).status().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(st.success(), "{name}: {st}");
    let ev = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"].as_str().unwrap_or("").starts_with("throttle_"))
        .collect();
    (secs, ev)
}

/// The hosts of the `throttle_queued` events.
fn queued_hosts(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["event"] == "throttle_queued")
        .map(|e| e["host"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn new_hosts_are_released_at_the_rate_and_known_hosts_never_wait() {
    assert!(
        Command::new("bash")
            .arg("-c")
            .arg("true")
            .status()
            .unwrap()
            .success(),
        "bash is needed"
    );
    let dir = tempfile::tempdir().unwrap();
    let n = 8;
    let rate = 4.0;
    let (plain, _) = run(dir.path(), "plain", None, &script(true, n));
    let (scan, ev) = run(dir.path(), "scan", Some("4"), &script(true, n));
    let (reuse, ev_reuse) = run(dir.path(), "reuse", Some("4"), &script(false, n));
    eprintln!(
        "{n} connects: to new hosts {scan:.2} s throttled ({plain:.2} s without the throttle), \
         to one host {reuse:.2} s throttled (load {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // New hosts leave at 0, 1/rate, 2/rate ...: the last after (n-1)/rate.
    let floor = f64::from(n - 1) / rate;
    assert!(
        scan >= floor * 0.95,
        "scan took {scan} s, expected >= {floor}"
    );
    let queued: Vec<&Value> = ev
        .iter()
        .filter(|e| e["event"] == "throttle_queued")
        .collect();
    assert_eq!(queued.len(), n as usize, "{ev:?}");
    let max_queue = queued
        .iter()
        .map(|e| e["queue"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_queue >= 1);
    let delays: Vec<f64> = queued
        .iter()
        .map(|e| e["delay_ms"].as_f64().unwrap())
        .collect();
    assert!(delays[1..].iter().all(|&d| d > 0.0), "{delays:?}");
    assert!(
        ev.iter().any(|e| e["event"] == "throttle_release"),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e["event"] == "throttle_alarm") || max_queue < 5);
    // One host: its first connect finds the queue empty and leaves at once; after
    // that it is in the working set. Nothing is ever delayed.
    let held: f64 = ev_reuse.iter().filter_map(|e| e["delay_ms"].as_f64()).sum();
    assert_eq!(held, 0.0, "{ev_reuse:?}");
    assert!(reuse < floor / 2.0, "reuse took {reuse} s");
}

/// TCP Fast Open opens a connection with a `sendto` (MSG_FASTOPEN), no `connect`: the
/// launcher's throttle holds such a scan as the daemon's does (one rule,
/// `symbols::opens_connection`). Before, `run` looked for `connect` alone and let it
/// through at full speed.
#[test]
fn a_scan_by_tcp_fast_open_is_held_to_the_rate() {
    tfo_scan("tfo", "s.sendto(b'x', socket.MSG_FASTOPEN, a)");
}

/// The same by `sendmsg`, whose address is inside its `msghdr` (`args::connection`
/// reads it). Before, sendmsg was not looked at: no event, no delay.
#[test]
fn a_scan_by_tcp_fast_open_sendmsg_is_held_to_the_rate() {
    tfo_scan("tfo-msg", "s.sendmsg([b'x'], [], socket.MSG_FASTOPEN, a)");
}

/// A python scanner opening connections to 127.0.7.1 ..= 6 with `send` (python, the
/// address in `a`) under `run --throttle-connect 4`.
fn tfo_scan(name: &str, send: &str) {
    common::python3();
    let dir = tempfile::tempdir().unwrap();
    let n = 6;
    // Nothing listens on port 9: each attempt fails, after its SYN.
    let py = format!(
        "import socket\n\
         for i in range({n}):\n    \
         s = socket.socket()\n    \
         a = ('127.0.7.%d' % (i + 1), 9)\n    \
         try:\n        {send}\n    \
         except OSError:\n        pass\n    \
         s.close()\n"
    );
    let (secs, ev) = run_cmd(dir.path(), name, Some("4"), &["python3", "-c", &py]);
    eprintln!("{n} TCP Fast Open connections ({send}) under run --throttle-connect 4: {secs:.2} s");
    let want: Vec<String> = (1..=n).map(|i| format!("127.0.7.{i}")).collect();
    assert_eq!(queued_hosts(&ev), want, "each new host queued once");
    // Released at 0, 0.25, ..., 1.25 s.
    assert!(secs >= 1.2, "the scan took {secs:.2} s: not held");
}

/// The i386 ABI is no way around the throttle: `socketcall(SYS_CONNECT)` through
/// `int 0x80` is read through (`args::socket_call`) and held as a connect is.
/// Before, only x86_64 connects were throttled and this scan ran at full speed.
#[test]
fn a_scan_through_the_i386_socketcall_is_held_to_the_rate() {
    i386_scan("connect");
}

/// So is TCP Fast Open by `socketcall(SYS_SENDMSG)`, its address in an i386 msghdr
/// (`args::connection`). Before, no event.
#[test]
fn a_tcp_fast_open_scan_through_the_i386_sendmsg_is_held_to_the_rate() {
    i386_scan("sendmsg");
}

/// `common::INT80` making `call` to 127.0.8.1 ..= 6, without the launcher
/// (it works here) and under `run --throttle-connect 4`.
fn i386_scan(call: &str) {
    common::python3();
    let dir = tempfile::tempdir().unwrap();
    let n = 6;
    let count = n.to_string();
    let args = ["-c", common::INT80, call, &count, "8", "9"];
    let plain = Command::new("python3").args(args).output().unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let mut cmd = vec!["python3"];
    cmd.extend(args);
    let (secs, ev) = run_cmd(dir.path(), &format!("int80-{call}"), Some("4"), &cmd);
    eprintln!("{n} {call}s through int 0x80 under run --throttle-connect 4: {secs:.2} s");
    let want: Vec<String> = (1..=n).map(|i| format!("127.0.8.{i}")).collect();
    assert_eq!(
        queued_hosts(&ev),
        want,
        "each new host queued once, read through socketcall"
    );
    assert!(secs >= 1.2, "the scan took {secs:.2} s: not held");
}

/// Sets up an io_uring (and exits): prints `ok`, or the errno's name.
const IO_URING_SETUP: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_char * 120)()
fd = libc.syscall(425, 8, params)
print("ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()])
"#;

/// io_uring's operations are no system calls the launcher sees, so a connect made
/// through a ring would pass the throttle unseen, and a file created through one the
/// rate limits: with either on, `run` refuses io_uring_setup (EPERM, one event),
/// and without them it does not. Before, the ring was set up and its connects ran
/// at full speed.
#[test]
fn io_uring_is_refused_while_a_limit_depends_on_seeing_calls() {
    common::python3();
    let plain = Command::new("python3")
        .args(["-c", IO_URING_SETUP])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout).trim().to_string();
    if plain != "ok" {
        // kernel.io_uring_disabled, or a kernel built without it: nothing to refuse.
        eprintln!("skipped: io_uring_setup fails here without the launcher ({plain})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outcome = |name: &str, extra: &[&str]| -> (String, usize) {
        let events = dir.path().join(format!("{name}.events"));
        let out = bin()
            .args(["run", "--learn", "--quiet", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--events")
            .arg(&events)
            .args(extra)
            .args(["--", "python3", "-c", IO_URING_SETUP])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let refused = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"io_uring_refused\""))
            .count();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            refused,
        )
    };
    assert_eq!(outcome("none", &[]), ("ok".to_string(), 0));
    assert_eq!(
        outcome("throttle", &["--throttle-connect", "4"]),
        ("EPERM".to_string(), 1)
    );
    assert_eq!(
        outcome("rates", &["--rate-limit"]),
        ("EPERM".to_string(), 1)
    );
}
