//! Measures what attach-mode tracing costs per system call: runs `dd bs=1` (two calls per
//! byte) untraced and traced, and prints the difference per call. Four traced variants:
//! unpinned or with tracer and program pinned to CPU 0, each with and without the spin
//! before sleeping ([`AttachOptions::spin`]).
//!
//! `cargo run --release -p homeostat-ptrace --example attach_cost -- [BYTES] [ROUNDS]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use homeostat_ptrace::{Action, AttachOptions, TraceEvent, Tracer};

/// The program: waits (so the tracer can attach), then times `dd` itself.
fn script(bytes: u64, out: &Path) -> String {
    format!(
        "sleep 0.3; s=$(date +%s%N); dd if=/dev/zero of=/dev/null bs=1 count={bytes} 2>/dev/null; \
         e=$(date +%s%N); echo $((e - s)) > {}",
        out.display()
    )
}

fn pin_self_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the call applies to
    // the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs the program once; with `trace`, attaches from a new thread and answers every
/// call `Continue`. Returns dd's wall time and the number of calls seen.
fn run(bytes: u64, trace: Option<(bool, Duration)>) -> (Duration, u64) {
    let dir = std::env::temp_dir().join(format!("attach-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("ns");
    let pinned = trace.is_some_and(|(p, _)| p);
    let cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "/bin/sh", "-c", &script(bytes, &out)]);
        c
    } else {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", &script(bytes, &out)]);
        c
    };
    // Not a child of this process: a tracer thread here would otherwise reap it.
    let mut wrapper = Command::new("/bin/sh")
        .args(["-c", "\"$@\" & echo $!; wait $!", "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(wrapper.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    let mut calls = 0;
    if let Some((pinned, spin)) = trace {
        // Let taskset exec the shell first.
        std::thread::sleep(Duration::from_millis(50));
        calls = std::thread::spawn(move || {
            if pinned {
                pin_self_to_cpu0();
            }
            let opts = AttachOptions {
                spin,
                ..AttachOptions::default()
            };
            let mut t = Tracer::attach(pid, &opts).unwrap();
            let mut calls = 0u64;
            loop {
                match t.next(None).unwrap() {
                    Some(TraceEvent::Syscall(s)) => {
                        calls += 1;
                        t.respond(s.tid, Action::Continue).unwrap();
                    }
                    Some(TraceEvent::AllGone) => break,
                    _ => {}
                }
            }
            calls
        })
        .join()
        .unwrap();
    }
    wrapper.wait().unwrap();
    let ns: u64 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (Duration::from_nanos(ns), calls)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bytes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let base = median((0..rounds).map(|_| run(bytes, None).0).collect());
    println!("dd bs=1 count={bytes}: untraced {base:?} (median of {rounds})");
    for (pinned, spin) in [
        (false, Duration::ZERO),
        (false, AttachOptions::default().spin),
        (true, Duration::ZERO),
        (true, AttachOptions::default().spin),
    ] {
        let mut times = Vec::new();
        let mut calls = 0;
        for _ in 0..rounds {
            let (t, c) = run(bytes, Some((pinned, spin)));
            times.push(t);
            calls = c;
        }
        let t = median(times);
        let per_call = t.saturating_sub(base).as_nanos() as f64 / (2 * bytes) as f64 / 1000.0;
        println!(
            "traced, {}, spin {spin:?}: {t:?} = {:.1}x, {per_call:.1} us per call ({calls} calls reported)",
            if pinned { "pinned to CPU 0" } else { "unpinned" },
            t.as_secs_f64() / base.as_secs_f64(),
        );
    }
}
