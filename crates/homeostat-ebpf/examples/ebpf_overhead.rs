//! Overhead of the BPF programs on a call-heavy workload: `dd bs=1` (two calls a byte)
//! timed without the programs, with them attached and dd's profile absent, in
//! training, and normal. Rounds interleave the four so machine noise hits all alike;
//! medians are printed with their ratio to the untraced run. With
//! `kernel.bpf_stats_enabled=1`, also the sys_enter program's mean run time per call
//! in each traced condition (every call on the machine during the dd runs; the
//! accounting slows the timed runs a little). Needs root.
//!
//! `cargo run --release -p homeostat-ebpf --example ebpf_overhead [ROUNDS] [COUNT]`

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use homeostat_core::ph::ExeKey;
use homeostat_ebpf::{Kernel, KernelState, Options};

fn dd(bin: &Path, count: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let st = Command::new(bin)
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={count}"),
        ])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !st.success() {
        return Err(format!("dd failed: {st}"));
    }
    Ok(start.elapsed())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args
        .next()
        .map_or(Ok(5), |a| a.parse())
        .map_err(|e| format!("ROUNDS: {e}"))?;
    let count: u64 = args
        .next()
        .map_or(Ok(500_000), |a| a.parse())
        .map_err(|e| format!("COUNT: {e}"))?;
    let dir = std::env::temp_dir().join(format!("homeostat-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // A private copy: its profile is ours alone.
    let bin = dir.join("dd");
    std::fs::copy("/bin/dd", &bin).map_err(|e| format!("copy /bin/dd: {e}"))?;
    let m = std::fs::metadata(&bin).map_err(|e| e.to_string())?;
    let exe = ExeKey {
        dev: m.dev(),
        ino: m.ino(),
    };

    let names = ["untraced", "attached, no profile", "training", "normal"];
    let mut times: [Vec<Duration>; 4] = Default::default();
    // (runs, ns) of sys_enter per traced condition.
    let mut runs = [(0u64, 0u64); 4];
    let sys_enter = |k: &Kernel| {
        k.prog_stats()
            .into_iter()
            .filter(|p| p.name.starts_with("sys_enter"))
            .fold((0, 0), |(n, t), p| (n + p.run_cnt, t + p.run_time_ns))
    };
    let mut timed = |k: &Kernel, i: usize, times: &mut [Vec<Duration>; 4]| -> Result<(), String> {
        let (n0, t0) = sys_enter(k);
        times[i].push(dd(&bin, count)?);
        let (n1, t1) = sys_enter(k);
        runs[i].0 += n1 - n0;
        runs[i].1 += t1 - t0;
        Ok(())
    };
    for round in 0..rounds {
        times[0].push(dd(&bin, count)?);
        let k = Kernel::load(&Options::default()).map_err(|e| e.to_string())?;
        timed(&k, 1, &mut times)?;
        k.set_state(exe, KernelState::Training)
            .map_err(|e| e.to_string())?;
        dd(&bin, 1000)?; // learn dd's pairs first: time the steady state
        timed(&k, 2, &mut times)?;
        k.set_state(exe, KernelState::Normal)
            .map_err(|e| e.to_string())?;
        timed(&k, 3, &mut times)?;
        let s = k.stats().map_err(|e| e.to_string())?;
        let p = k.profile(exe).map_err(|e| e.to_string())?;
        eprintln!("round {round}: {s:?} {p:?}");
        drop(k);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let base = median(&mut times[0]).as_secs_f64();
    println!("dd if=/dev/zero of=/dev/null bs=1 count={count}, median of {rounds} rounds");
    for ((name, t), (n, ns)) in names.iter().zip(times.iter_mut()).zip(runs) {
        let m = median(t).as_secs_f64();
        let per = if n > 0 {
            format!("  sys_enter {:.1} ns/call", ns as f64 / n as f64)
        } else {
            String::new()
        };
        println!("{name:>22}: {m:.3} s  {:.2}x{per}", m / base);
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overhead: {e}");
            ExitCode::FAILURE
        }
    }
}
