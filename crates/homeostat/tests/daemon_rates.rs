//! `homeostat daemon --rate-limit` on the real kernel (root, BPF, BTF; skips with a
//! message otherwise): a private perl is trained forking at a modest rate, its profile
//! is normalized, and then a storm of forks by the same program is slowed to about the
//! learned limit, while the program at its trained rate is not held at all. Every
//! figure is measured beside the same run without a daemon. The peaks are saved
//! beside the profile.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use homeostat_testsupport::daemon::{events, ready};
use homeostat_testsupport::{serial, spawn};

mod common;
use common::{INT80, STORM};
use serde_json::Value;

fn daemon(state: &Path, events: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    homeostat_testsupport::daemon::start(
        Path::new(env!("CARGO_BIN_EXE_homeostat")),
        state,
        events,
        extra,
    )
}

/// A storm program (`prog`: its argv up to the count, e.g. perl, the storm script and
/// the kind) making `n` calls `ms` apart (files in a fresh directory); its pid and
/// wall time.
fn storm(prog: &[&str], n: u32, ms: u32) -> (u32, f64) {
    let files = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let c = spawn(
        Command::new(prog[0])
            .args(&prog[1..])
            .args([&n.to_string(), &ms.to_string()])
            .arg(files.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = c.id();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    (pid, t.elapsed().as_secs_f64())
}

fn of(ev: &[Value], event: &str, pid: u32) -> usize {
    ev.iter()
        .filter(|e| e["event"] == event && e["pid"] == pid)
        .count()
}

#[test]
fn a_fork_storm_is_slowed_to_the_learned_limit_and_the_trained_rate_never_waits() {
    storm_case(Program::Perl, "fork", "fork_peak");
}

#[test]
fn a_file_creation_storm_is_slowed_to_the_learned_limit_too() {
    storm_case(Program::Perl, "create", "create_peak");
}

/// The i386 ABI is no way around the kernel's count: python creating its files with
/// `creat` through `int 0x80` learns its peak from those calls and is held to the
/// limit (the kernel's call table holds both ABIs, from one rule). Before, the
/// kernel's table held x86_64 calls only: nothing was learned (no peak) or held.
#[test]
fn an_i386_creation_storm_is_slowed_to_the_learned_limit_as_well() {
    storm_case(Program::Int80, "create", "create_peak");
}

/// The program of a storm case.
#[derive(Clone, Copy)]
enum Program {
    /// perl running `STORM`: forks or file creations.
    Perl,
    /// python creating files through `int 0x80` (`INT80`).
    Int80,
}

fn storm_case(program: Program, kind: &str, peak_field: &str) {
    if !homeostat_testsupport::daemon::possible() {
        return;
    }
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A private copy of the interpreter: a profile of its own.
    let (real, code) = match program {
        Program::Perl => {
            common::perl();
            let script = dir.join("storm.pl");
            std::fs::write(&script, STORM).unwrap();
            ("/usr/bin/perl", script.to_str().unwrap().to_string())
        }
        Program::Int80 => (common::python3().to_str().unwrap(), INT80.to_string()),
    };
    let exe = dir.join("interpreter-copy");
    std::fs::copy(homeostat_testsupport::real(real), &exe).unwrap();
    let m = std::fs::metadata(&exe).unwrap();
    let key = format!("{:x}-{:x}", m.dev(), m.ino());
    let exe_s = exe.to_str().unwrap();
    let prog: Vec<&str> = match program {
        Program::Perl => vec![exe_s, &code, kind],
        Program::Int80 => vec![exe_s, "-c", &code, "creat"],
    };
    // pH's own response is off (no delays; anomalies never send the profile back to
    // training), so that the delays measured are the rate limit's alone.
    std::fs::write(
        dir.join("config.toml"),
        "[ph]\ndelay_factor_ms = 0.0\nanomaly_limit = 1000000\n",
    )
    .unwrap();
    // Without a daemon, for the record.
    let (_, plain_storm) = storm(&prog, 200, 0);
    let (_, plain_trained) = storm(&prog, 20, 50);

    let state = dir.join("state");
    let ev = dir.join("events.jsonl");
    let (mut d, rx) = daemon(
        &state,
        &ev,
        &[
            "--enforce",
            "--rate-limit",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
            "--normal-wait",
            "3600",
            "--duration",
            "120",
        ],
    );
    if ready(&mut d, &rx).is_none() {
        return;
    }
    // Training: 20 calls 50 ms apart (about 20 in a second at most), and bursts of 5.
    for _ in 0..2 {
        storm(&prog, 20, 50);
        storm(&prog, 5, 0);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["profile", "normalize"])
        .arg(&exe)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kernel is told the limit at the next tick.
    std::thread::sleep(Duration::from_millis(1500));
    let (trained_pid, trained) = storm(&prog, 20, 50);
    let (storm_pid, limited) = storm(&prog, 200, 0);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    let all = events(&ev);
    let rates: Value = serde_json::from_slice(
        &std::fs::read(state.join("daemon").join(format!("{key}.rates"))).unwrap(),
    )
    .unwrap();
    let peak = rates["rates"][peak_field].as_u64().unwrap();
    let limit = 2 * peak;
    let held = of(&all, "rate_queued", storm_pid);
    eprintln!(
        "{kind} peak learned {peak} a second (limit {limit}); 200 calls: {limited:.2} s \
         limited ({plain_storm:.2} s without a daemon), {held} held; 20 at the trained \
         rate: {trained:.2} s ({plain_trained:.2} s without), load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    assert!((15..=30).contains(&peak), "peak {peak}");
    // The trained rate: never held.
    assert_eq!(of(&all, "rate_queued", trained_pid), 0);
    assert_eq!(of(&all, "rate_exceeded", trained_pid), 0);
    // The storm: stopped once beyond the limit, then held; at most `limit` forks in a
    // second means at least (200 - limit) / limit seconds.
    assert!(of(&all, "rate_exceeded", storm_pid) >= 1);
    assert!(held > 0);
    let floor = (200 - limit) as f64 / limit as f64;
    assert!(limited >= floor * 0.9, "{limited:.2} s, floor {floor:.2} s");
    assert!(all.iter().any(|e| e["event"] == "rate_release"));
}
