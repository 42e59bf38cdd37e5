//! What does supervision cost? Runs `dd if=/dev/zero of=/dev/null bs=1 count=200000`
//! (about 400 000 system calls: the worst case, nothing but calls) untraced, under the
//! supervisor answering CONTINUE to everything (loop in this process), with and without
//! `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, and under `strace -f -o /dev/null`; several runs
//! each, alternating, and prints medians and ratios to untraced.
//!
//! `cargo run --release -p homeostat-seccomp --example overhead -- [--runs N] [--count N] [--pin]`
//!
//! `--pin` pins this process (and so everything it starts) to CPU 0 first, so the
//! supervisor and the workload share one CPU and every wake-up is local.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homeostat_seccomp::{Action, Event, LaunchOptions, Supervisor};

fn dd_args(count: u64) -> Vec<String> {
    vec![
        "if=/dev/zero".into(),
        "of=/dev/null".into(),
        "bs=1".into(),
        format!("count={count}"),
        "status=none".into(),
    ]
}

fn untraced(count: u64) -> Duration {
    let t = Instant::now();
    let st = Command::new("dd")
        .args(dd_args(count))
        .stdin(Stdio::null())
        .status()
        .expect("run dd");
    assert!(st.success());
    t.elapsed()
}

fn straced(count: u64) -> Option<Duration> {
    let t = Instant::now();
    let st = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "dd"])
        .args(dd_args(count))
        .stdin(Stdio::null())
        .status()
        .ok()?;
    st.success().then(|| t.elapsed())
}

/// Returns the wall time and the number of calls seen.
fn supervised(count: u64, sync_wakeup: bool) -> (Duration, u64) {
    let mut argv: Vec<OsString> = vec!["dd".into()];
    argv.extend(dd_args(count).into_iter().map(OsString::from));
    let opts = LaunchOptions {
        sync_wakeup,
        ..LaunchOptions::default()
    };
    let t = Instant::now();
    let mut sup = Supervisor::spawn(&argv, &opts).expect("spawn");
    let mut calls = 0;
    loop {
        match sup.next(None).expect("next") {
            Some(Event::Syscall(ev)) => {
                calls += 1;
                sup.respond(ev.id, Action::Continue).expect("respond");
            }
            Some(Event::ChildExited(st)) => assert!(st.success(), "dd: {st:?}"),
            Some(Event::TreeGone) => break,
            None => {}
        }
    }
    (t.elapsed(), calls)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pin_to_cpu0() {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity
    // reads it. Children inherit the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "sched_setaffinity failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() {
    let mut runs = 5;
    let mut count = 200_000u64;
    let mut pin = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--count" => count = args.next().and_then(|v| v.parse().ok()).unwrap_or(count),
            "--pin" => pin = true,
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if pin {
        pin_to_cpu0();
    }
    let mut base = Vec::new();
    let mut sync = Vec::new();
    let mut nosync = Vec::new();
    let mut st = Vec::new();
    let mut calls = 0;
    for i in 0..runs {
        base.push(untraced(count));
        let (d, c) = supervised(count, true);
        sync.push(d);
        calls = c;
        nosync.push(supervised(count, false).0);
        if let Some(d) = straced(count) {
            st.push(d);
        }
        eprintln!(
            "run {}: untraced {:?}, supervised {:?} / no sync {:?}, strace {:?}",
            i + 1,
            base[i],
            sync[i],
            nosync[i],
            st.get(i)
        );
    }
    let b = median(base);
    let ratio = |d: Duration| d.as_secs_f64() / b.as_secs_f64();
    let per_call = |d: Duration| (d.saturating_sub(b)).as_secs_f64() * 1e6 / calls.max(1) as f64;
    println!(
        "dd bs=1 count={count}, {runs} runs each, medians{}:",
        if pin {
            ", pinned to CPU 0"
        } else {
            ", unpinned"
        }
    );
    println!(
        "  untraced                 {:>10.1} ms",
        b.as_secs_f64() * 1e3
    );
    for (name, v) in [
        ("supervisor, sync wake-up", sync),
        ("supervisor, plain wake-up", nosync),
    ] {
        let m = median(v);
        println!(
            "  {name:<24} {:>10.1} ms  {:>6.1}x  {:.2} us/call ({calls} calls)",
            m.as_secs_f64() * 1e3,
            ratio(m),
            per_call(m)
        );
    }
    if st.is_empty() {
        println!("  strace -f                (strace not available)");
    } else {
        let m = median(st);
        println!(
            "  strace -f -o /dev/null   {:>10.1} ms  {:>6.1}x",
            m.as_secs_f64() * 1e3,
            ratio(m)
        );
    }
}
