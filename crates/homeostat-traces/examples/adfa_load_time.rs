//! Times `adfa::load` on the ADFA-LD dataset (the speed target is under 60 ms wall on a
//! 2-core machine, release build, warm page cache).
//!
//! ```text
//! cargo run --release -p homeostat-traces --example adfa_load_time -- [ADFA-LD dir] [runs]
//! ```
//! The directory defaults to `$HOMEOSTAT_ADFA_DIR`, then `../shared/datasets/ADFA-LD`
//! relative to the workspace.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use homeostat_traces::adfa;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOMEOSTAT_ADFA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ADFA-LD")
        });
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);

    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut calls = 0;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let ds = match adfa::load(&dir) {
            Ok(ds) => ds,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        times.push(start.elapsed());
        calls = ds.training.iter().map(|t| t.calls.len()).sum::<usize>()
            + ds.validation.iter().map(|t| t.calls.len()).sum::<usize>()
            + ds.attacks
                .iter()
                .map(|a| a.trace.calls.len())
                .sum::<usize>();
        drop(ds);
    }
    let first = times[0];
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "adfa::load {}: {calls} calls; {} runs: min {:.1} ms, median {:.1} ms, max {:.1} ms (first run {:.1} ms)",
        dir.display(),
        times.len(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        ms(first),
    );
}
