//! Length-aware trace scores from kn's per-call negative log-likelihoods.
//!
//! A trace's mean NLL is noisy for short traces: a 20-call normal trace with two
//! surprising calls has the mean of a long attack. The scores here ask how *sure*
//! a trace is abnormal rather than how abnormal its average call is:
//! - `mean`: the mean NLL (kn's primary score, the baseline);
//! - `z`: (sum - n mu) / (sigma sqrt n), mu and sigma the per-call NLL's mean and
//!   deviation on training traces the model did not train on (trace i in part i mod
//!   5 scored by a kn trained on the other four parts): the evidence, in standard
//!   errors, that the trace's calls are drawn from a more surprising distribution;
//! - `excess`: the sum of the NLL above the held-out 99th percentile of per-call
//!   NLL, over sqrt n (surprising calls only, length-aware the same way);
//! - `win50`: the largest mean NLL of 50 consecutive calls (a burst; the whole trace
//!   when shorter).
//!
//! Fixed before the first run: kn with its defaults; the 99th percentile; windows of
//! 50. Judged by the leave-a-cluster-out and segment proxies
//! (`homeostat_eval::cv`); `--test` also scores the standard split (a measurement,
//! not a choice).
//!
//! Run: `cargo run --release -p homeostat-eval --example length_aware -- [DIR] [--test]`.

use homeostat_core::{Detector, Params, Registry};
use homeostat_eval::cv::{judge_prototype, prototype_args, Fold, FoldScores};

const SCORES: [&str; 4] = ["mean", "z", "excess", "win50"];
const WIN: usize = 50;

fn kn(reg: &Registry, traces: &[&Vec<u32>]) -> Box<dyn Detector> {
    let mut b = reg.builder("kn", &Params::new()).unwrap();
    for t in traces {
        b.add_trace(t);
    }
    b.build(&|_, _| {}).unwrap()
}

fn nlls(d: &dyn Detector, t: &[u32]) -> Vec<f64> {
    let mut s = d.stream();
    t.iter().map(|&c| s.call(c)).collect()
}

/// Per-call NLL statistics on held-out training traces: mean, deviation, 99th pct.
struct Calib {
    mu: f64,
    sigma: f64,
    q99: f64,
}

fn calibrate(reg: &Registry, train: &[&Vec<u32>]) -> Calib {
    let mut all = vec![];
    for part in 0..5 {
        let fit: Vec<&Vec<u32>> = train
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != part)
            .map(|(_, t)| *t)
            .collect();
        let d = kn(reg, &fit);
        for (_, t) in train.iter().enumerate().filter(|(i, _)| i % 5 == part) {
            all.extend(nlls(d.as_ref(), t));
        }
    }
    let n = all.len().max(1) as f64;
    let mu = all.iter().sum::<f64>() / n;
    let sigma = (all.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-9);
    all.sort_by(f64::total_cmp);
    let q99 = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)];
    Calib { mu, sigma, q99 }
}

fn scores(c: &Calib, v: &[f64]) -> [f64; 4] {
    if v.is_empty() {
        return [0.0; 4];
    }
    let n = v.len() as f64;
    let sum: f64 = v.iter().sum();
    let excess: f64 = v.iter().map(|x| (x - c.q99).max(0.0)).sum();
    let w = WIN.min(v.len());
    let mut run: f64 = v[..w].iter().sum();
    let mut best = run;
    for i in w..v.len() {
        run += v[i] - v[i - w];
        best = best.max(run);
    }
    [
        sum / n,
        (sum - n * c.mu) / (c.sigma * n.sqrt()),
        excess / n.sqrt(),
        best / w as f64,
    ]
}

fn fold_scores(reg: &Registry, train: &[Vec<u32>], f: &Fold) -> FoldScores {
    let fit: Vec<&Vec<u32>> = f.train.iter().map(|&i| &train[i]).collect();
    let c = calibrate(reg, &fit);
    let d = kn(reg, &fit);
    let mut out: FoldScores = vec![(vec![], vec![]); SCORES.len()];
    for (t, anomalous) in f
        .normal
        .iter()
        .map(|t| (t, false))
        .chain(f.anomalous.iter().map(|t| (t, true)))
    {
        let s = scores(&c, &nlls(d.as_ref(), t));
        for (o, x) in out.iter_mut().zip(s) {
            if anomalous {
                o.1.push(x);
            } else {
                o.0.push(x);
            }
        }
    }
    out
}

fn main() {
    let (data, test) = prototype_args();
    let reg = Registry::builtin();
    judge_prototype(&SCORES, &data, test, |train, f| fold_scores(&reg, train, f));
}
