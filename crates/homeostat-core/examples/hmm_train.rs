//! Trains the HMM on ADFA-LD's training traces and times Baum-Welch; optionally scores
//! the standard split (validation = normal, attacks) and a held-out part of training.
//!
//! ```text
//! cargo run --release -p homeostat-core --example hmm_train -- \
//!     [--dir ADFA-LD] [--states 150] [--iterations 5] [--tolerance 0] [--seed 1] \
//!     [--threads N] [--eval] [--holdout 5] [--threshold 1e-3]
//! ```
//!
//! `--holdout K` trains on the training traces whose index is not a multiple of K and
//! reports the log-likelihood per call of the others: the criterion for picking the
//! state count and iteration count without looking at attacks. `--eval` prints the AUC
//! of each trace score (validation traces negative, attack traces positive).
//! The last line is machine-readable (`scripts/bench-hmm.sh` reads it).

use std::path::PathBuf;
use std::time::Instant;

use homeostat_core::hmm::{Hmm, HmmScratch, HmmSpec, Trainer};
use homeostat_traces::adfa;

fn main() {
    if let Err(e) = run() {
        eprintln!("hmm_train: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut spec = HmmSpec {
        tolerance: 0.0,
        ..HmmSpec::default()
    };
    let mut dir = std::env::var_os("HOMEOSTAT_ADFA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/datasets/ADFA-LD"));
    let (mut eval, mut holdout, mut threads) = (false, 0usize, 0usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--dir" => dir = PathBuf::from(val()?),
            "--states" => spec.states = num(val()?)? as usize,
            "--iterations" => spec.iterations = num(val()?)? as usize,
            "--tolerance" => spec.tolerance = num(val()?)?,
            "--seed" => spec.seed = num(val()?)? as u64,
            "--threshold" => spec.threshold = num(val()?)?,
            "--locality" => spec.locality = num(val()?)? as usize,
            "--threads" => threads = num(val()?)? as usize,
            "--holdout" => holdout = num(val()?)? as usize,
            "--eval" => eval = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    spec.validate().map_err(|e| e.to_string())?;
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| e.to_string())?;
    }
    if !dir.join("Training_Data_Master").is_dir() {
        return Err(format!(
            "ADFA-LD not found at {} (set HOMEOSTAT_ADFA_DIR or --dir)",
            dir.display()
        ));
    }
    let data = adfa::load(&dir).map_err(|e| e.to_string())?;
    let all: Vec<&[u32]> = data.training.iter().map(|t| t.calls.as_slice()).collect();
    let (train, held): (Vec<&[u32]>, Vec<&[u32]>) = if holdout > 1 {
        let (h, t): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % holdout == 0);
        (
            t.into_iter().map(|(_, x)| *x).collect(),
            h.into_iter().map(|(_, x)| *x).collect(),
        )
    } else {
        (all.clone(), Vec::new())
    };
    let calls: usize = train.iter().map(|t| t.len()).sum();
    println!(
        "training: {} traces, {calls} calls, {} states, {} threads",
        train.len(),
        spec.states,
        rayon::current_num_threads()
    );
    let started = Instant::now();
    let mut last = Instant::now();
    let mut last_cpu = cpu_seconds();
    let mut per_iter = Vec::new();
    let mut cpu_per_iter = Vec::new();
    // With a held-out part, the held-out likelihood every 10 iterations shows how many
    // iterations help (it needs the model between iterations, so train step by step).
    let mut checkpoints = Vec::new();
    let (hmm, report) = if !held.is_empty() {
        let mut alphabet = homeostat_core::alphabet::Alphabet::new();
        train.iter().flat_map(|t| t.iter()).for_each(|&c| {
            alphabet.intern(c);
        });
        let mut hmm = Hmm::init(spec.clone(), alphabet).map_err(|e| e.to_string())?;
        let mut trainer = Trainer::new(&hmm, &train).map_err(|e| e.to_string())?;
        let mut prev = f64::NEG_INFINITY;
        let mut done = 0;
        let mut converged = false;
        while done < spec.iterations {
            let ll = trainer.iterate(&mut hmm).map_err(|e| e.to_string())?;
            done += 1;
            let s = last.elapsed().as_secs_f64();
            let cpu = cpu_seconds();
            per_iter.push(s);
            cpu_per_iter.push(cpu - last_cpu);
            println!("iteration {done:3}: log-likelihood/call {ll:.5}  {s:.3} s");
            if done % 10 == 0 {
                checkpoints.push((done, held_ll(&hmm, &held)?));
            }
            if spec.tolerance > 0.0 && ll - prev < spec.tolerance {
                converged = true;
                break;
            }
            prev = ll;
            last = Instant::now();
            last_cpu = cpu_seconds();
        }
        let final_ll = trainer.log_likelihood(&hmm);
        (
            hmm,
            homeostat_core::hmm::TrainReport {
                iterations: done,
                converged,
                log_likelihood_per_call: final_ll,
            },
        )
    } else {
        Hmm::train(spec.clone(), &train, |it, ll| {
            let s = last.elapsed().as_secs_f64();
            let cpu = cpu_seconds();
            per_iter.push(s);
            cpu_per_iter.push(cpu - last_cpu);
            println!(
                "iteration {it:3}: log-likelihood/call {ll:.5}  {s:.3} s  (cpu {:.2} s)",
                cpu - last_cpu
            );
            last = Instant::now();
            last_cpu = cpu;
        })
        .map_err(|e| e.to_string())?
    };
    let total = started.elapsed().as_secs_f64();
    println!(
        "trained: {} iterations, converged {}, final log-likelihood/call {:.5}, {total:.2} s",
        report.iterations, report.converged, report.log_likelihood_per_call
    );
    if !held.is_empty() {
        println!(
            "held-out (every {holdout}th trace, {} of {} fully known): log-likelihood/call {:.5}",
            held_known(&hmm, &held).len(),
            held.len(),
            held_ll(&hmm, &held)?
        );
        for (it, ll) in &checkpoints {
            println!("held-out after {it:3} iterations: {ll:.5}");
        }
    }
    if eval {
        evaluate(&hmm, &data);
    }
    // Iteration 1 includes no setup (the trainer is built before it), so every
    // iteration counts; the median resists a noisy shared machine.
    let mean = per_iter.iter().sum::<f64>() / per_iter.len().max(1) as f64;
    println!(
        "RESULT rust_seconds_per_iteration_median={:.4} mean={mean:.4} cpu_median={:.4}",
        median(&mut per_iter),
        median(&mut cpu_per_iter)
    );
    Ok(())
}

/// Held-out traces whose calls are all in the model's alphabet (a call unseen in the
/// training part would make the likelihood meaningless; ADFA-LD has 3 such traces).
fn held_known<'a>(hmm: &Hmm, held: &[&'a [u32]]) -> Vec<&'a [u32]> {
    held.iter()
        .copied()
        .filter(|t| t.iter().all(|&c| hmm.alphabet().id(c) != 0))
        .collect()
}

fn held_ll(hmm: &Hmm, held: &[&[u32]]) -> Result<f64, String> {
    let known = held_known(hmm, held);
    Ok(Trainer::new(hmm, &known)
        .map_err(|e| e.to_string())?
        .log_likelihood(hmm))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU seconds used by this process, all threads (utime + stime from /proc/self/stat,
/// in USER_HZ = 100 ticks, the fixed unit of that file on Linux); NaN elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() == 2 {
        (f[0] + f[1]) / 100.0
    } else {
        f64::NAN
    }
}

fn evaluate(hmm: &Hmm, data: &adfa::AdfaDataset) {
    use rayon::prelude::*;
    let started = Instant::now();
    let score = |calls: &[u32]| {
        let mut scratch = HmmScratch::default();
        let s = hmm.score_trace(calls, &mut scratch);
        [s.mean_nll(), f64::from(s.score.max_lfc), s.score.rate()]
    };
    let neg: Vec<[f64; 3]> = data
        .validation
        .par_iter()
        .map(|t| score(&t.calls))
        .collect();
    let pos: Vec<[f64; 3]> = data
        .attacks
        .par_iter()
        .map(|a| score(&a.trace.calls))
        .collect();
    let calls: usize = data
        .validation
        .iter()
        .map(|t| t.calls.len())
        .chain(data.attacks.iter().map(|a| a.trace.calls.len()))
        .sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scored {} normal + {} attack traces, {calls} calls in {secs:.2} s ({:.0} calls/s)",
        neg.len(),
        pos.len(),
        calls as f64 / secs
    );
    for (k, name) in ["mean-nll", "lfc", "rate"].iter().enumerate() {
        let n: Vec<f64> = neg.iter().map(|s| s[k]).collect();
        let p: Vec<f64> = pos.iter().map(|s| s[k]).collect();
        let auc = homeostat_eval::metrics::auc(&n, &p).unwrap_or(f64::NAN);
        println!("AUC {name:9} {auc:.4}");
    }
}
