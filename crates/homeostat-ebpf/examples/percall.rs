//! The sys_enter program's run time per call (the kernel's `run_time_ns / run_cnt`,
//! `kernel.bpf_stats_enabled` on only around each measured run) on the workloads of
//! scripts/bench-daemon.sh, with every new executable profiled (`auto_create`, as the
//! daemon): first with the profiles training (after one learning pass), then with all
//! of them normal. One load per invocation, so that two builds of this example (or a
//! build with `--features floor`) can be alternated by scripts/bench-percall.sh and
//! compared in one run. Prints `workload state ns_per_call runs skipped general`
//! lines (skipped: calls the kernel's recursion guard kept from the program;
//! general: calls that took the general path per 1000 runs). Root.
//! `PERCALL_SYMBOLS=args`: with argument classes (`Options::symbols`, the default
//! path depth and cap, as `homeostat daemon --symbols args`). `PERCALL_EVENTS=1`:
//! print the workload programs' anomaly and new-pair events on stderr after each
//! phase (`all`: every anomaly event). `PERCALL_NORMAL=dd,find`: make only these
//! programs normal (default: every workload program).
//!
//! `cargo run --release -p homeostat-ebpf --example percall [dd1|find|tar|forkexec|relopen...]`

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, ExitCode, Stdio};

use homeostat_core::ph::ExeKey;
use homeostat_core::symbols::SymbolConfig;

use homeostat_ebpf::{Event, EventKind, Kernel, KernelState, Options};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn workload(name: &str) -> Option<&'static str> {
    Some(match name {
        "dd1" => "dd if=/dev/zero of=/dev/null bs=1 count=200000 status=none",
        // Four at once on two CPUs: what one task's calls cost another's (shared
        // lines, migrations between CPUs).
        "dd4" => {
            "for i in 1 2 3 4; do dd if=/dev/zero of=/dev/null bs=1 count=200000 status=none & \
             done; wait"
        }
        "find" => "find /usr >/dev/null 2>&1",
        "tar" => "tar c /usr/include 2>/dev/null | wc -c >/dev/null",
        "forkexec" => "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
        // Relative opens alone (openat(dirfd, ".") and close): the price of an
        // argument of interest with --symbols args (PERCALL_SYMBOLS=args).
        "relopen" => {
            "/usr/bin/python3 -c 'import os\nd = os.open(\"/usr/share/doc\", os.O_RDONLY)\n\
             for i in range(100000): os.close(os.open(\".\", os.O_RDONLY, dir_fd=d))'"
        }
        _ => return None,
    })
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = Command::new("/bin/sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("sh: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}`: {st}"))
    }
}

/// The sys_enter programs' counters, summed: a floor build has the real program and
/// the floor (`floor_btf`) loaded, and only the attached one runs.
fn sys_enter(k: &Kernel) -> (u64, u64, u64) {
    k.prog_stats()
        .into_iter()
        .filter(|p| p.name.starts_with("sys_enter") || p.name.starts_with("floor_"))
        .fold((0, 0, 0), |(n, t, m), p| {
            (n + p.run_cnt, t + p.run_time_ns, m + p.recursion_misses)
        })
}

/// One measured run of `cmd`: sys_enter's runs, its run time and the calls its
/// recursion guard skipped, with the counters on only meanwhile, and how many calls
/// took the general path (every followed task on the machine, as the runs).
struct Measured {
    runs: u64,
    ns: u64,
    skipped: u64,
    general: u64,
}

fn measured(k: &Kernel, cmd: &str) -> Result<Measured, String> {
    let general = || {
        k.stats()
            .map(|s| s.general_calls)
            .map_err(|e| e.to_string())
    };
    let (n0, t0, m0) = sys_enter(k);
    let g0 = general()?;
    std::fs::write(SYSCTL, "1").map_err(|e| format!("{SYSCTL}: {e}"))?;
    let r = sh(cmd);
    std::fs::write(SYSCTL, "0").map_err(|e| format!("{SYSCTL}: {e}"))?;
    r?;
    let g1 = general()?;
    let (n1, t1, m1) = sys_enter(k);
    Ok(Measured {
        runs: n1 - n0,
        ns: t1 - t0,
        skipped: m1 - m0,
        general: g1 - g0,
    })
}

/// The output line of one measured run: `workload state ns_per_call runs skipped
/// general_per_1000_runs`.
fn print(name: &str, state: &str, m: &Measured) {
    let per = |x: u64, scale: f64| x as f64 * scale / m.runs.max(1) as f64;
    println!(
        "{name} {state} {:.1} {} {} {:.2}",
        per(m.ns, 1.0),
        m.runs,
        m.skipped,
        per(m.general, 1000.0)
    );
}

/// The workload profiles' counters so far, on stderr (learning or anomalies in a
/// measured run add events to its cost).
fn report(k: &Kernel, exes: &[(&str, ExeKey)]) {
    let mut line = String::new();
    for &(name, exe) in exes {
        if let Ok(Some(p)) = k.profile(exe) {
            line += &format!(" {name}: {} new, {} anomalous;", p.new_pairs, p.anomalies);
        }
    }
    eprintln!("  {}", line.trim());
}

fn run() -> Result<(), String> {
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        names = ["dd1", "find", "tar", "forkexec"]
            .map(String::from)
            .to_vec();
    }
    let cmds = names
        .iter()
        .map(|n| {
            workload(n)
                .map(|c| (n.as_str(), c))
                .ok_or(format!("unknown workload {n}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut exes = Vec::new();
    for prog in ["dd", "find", "tar", "wc", "sh", "true", "python3"] {
        let Some(path) = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(prog))
            .find(|p| p.exists())
        else {
            if prog == "python3" {
                continue; // only for the relopen workload
            }
            return Err(format!("{prog} not found"));
        };
        let m = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let exe = ExeKey {
            dev: m.dev(),
            ino: m.ino(),
        };
        exes.push((prog, exe));
    }
    let symbols = match std::env::var("PERCALL_SYMBOLS").as_deref() {
        Ok("args") => Some(SymbolConfig::default()),
        Ok("calls") | Err(_) => None,
        Ok(other) => return Err(format!("PERCALL_SYMBOLS={other}: calls or args")),
    };
    let k = Kernel::load(&Options {
        auto_create: true,
        symbols,
        ..Options::default()
    })
    .map_err(|e| e.to_string())?;
    let show = std::env::var("PERCALL_EVENTS").unwrap_or_default();
    let got = RefCell::new(Vec::<Event>::new());
    let ev = if show.is_empty() {
        None
    } else {
        Some(
            k.events(|e| got.borrow_mut().push(e))
                .map_err(|e| e.to_string())?,
        )
    };
    let events = |phase: &str| -> Result<(), String> {
        let Some(ev) = &ev else { return Ok(()) };
        ev.poll(std::time::Duration::from_millis(0))
            .map_err(|e| e.to_string())?;
        for e in got.borrow_mut().drain(..) {
            let name = exes.iter().find(|(_, x)| *x == e.exe).map(|(n, _)| *n);
            let wanted = match e.kind {
                EventKind::Anomaly => name.is_some() || show == "all",
                EventKind::NewPairs => name.is_some(),
                _ => false,
            };
            if wanted {
                eprintln!(
                    "  event {phase}: {:?} {} pid {} nr {} misses {} lfc {} (exe {:x}/{:x})",
                    e.kind,
                    name.unwrap_or("?"),
                    e.pid,
                    e.nr,
                    e.misses,
                    e.lfc,
                    e.exe.dev,
                    e.exe.ino
                );
            }
        }
        Ok(())
    };
    // Learning pass: the measured training runs are the steady state, as the
    // daemon's after its first minutes.
    for (_, c) in &cmds {
        sh(c)?;
    }
    events("learning")?;
    for (n, c) in &cmds {
        print(n, "training", &measured(&k, c)?);
        report(&k, &exes);
        events(&format!("{n} training"))?;
    }
    // Only the workloads' programs: other processes on the machine keep training, as
    // under the daemon (their anomalies would add events to the counted calls).
    let only = std::env::var("PERCALL_NORMAL").ok();
    for &(name, exe) in &exes {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|n| n == name))
        {
            continue;
        }
        k.set_state(exe, KernelState::Normal)
            .map_err(|e| e.to_string())?;
    }
    // One run to settle (tasks refresh their cached state at the new generation).
    for (_, c) in &cmds {
        sh(c)?;
    }
    events("settle")?;
    for (n, c) in &cmds {
        print(n, "normal", &measured(&k, c)?);
        report(&k, &exes);
        events(&format!("{n} normal"))?;
    }
    let s = k.stats().map_err(|e| e.to_string())?;
    eprintln!("percall: {s:?}");
    // PERCALL_HOLD=S: keep the programs attached S more seconds (to profile them).
    if let Some(secs) = std::env::var("PERCALL_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("percall: holding for {secs} s");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    Ok(())
}

fn main() -> ExitCode {
    let r = run();
    let _ = std::fs::write(SYSCTL, "0");
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("percall: {e}");
            ExitCode::FAILURE
        }
    }
}
