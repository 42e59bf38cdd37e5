//! A prototype of *relative surprise*: a trace's kn mean NLL minus the mean NLL of
//! its nearest training traces (by call mix), each of those scored by a kn model that
//! did not train on it. The sequence models' false alarms on ADFA-LD are normal
//! traces that are surprising as sequences; if their neighbours by call mix (runs
//! of the same program) are surprising too, the difference discounts them, while an
//! attack surprising beyond what its neighbours are keeps its score.
//!
//! Fixed before the first run: kn with its defaults (order 7); neighbours by kNN's
//! default representation (call presence times IDF fitted on the training traces,
//! cosine; a call no training trace has weighs ln(1 + N) + 1 in the norm), k = 5;
//! each training trace's own NLL from a kn trained on the other four fifths of the
//! training traces (trace i in part i mod 5). Judged by the leave-a-cluster-out and
//! segment proxies (`homeostat_eval::cv`), against kn alone; `--test` also scores
//! the standard split (a measurement, not a choice).
//!
//! A second variant, added after the leave-a-cluster-out proxy showed that the
//! cluster every sequence model misses holds the longest training traces (a mean
//! NLL falls over a long repetitive run): the neighbours are the 5 training traces
//! closest in length (|ln length difference|) instead of by call mix.
//!
//! Run: `cargo run --release -p homeostat-eval --example relative_surprise -- [DIR] [--test]`.

use std::collections::HashMap;

use homeostat_core::{Detector, Params, Registry, Scratch};
use homeostat_eval::cv::{judge_prototype, prototype_args, Fold, FoldScores};

const K: usize = 5;

fn kn(reg: &Registry, traces: &[&Vec<u32>]) -> Box<dyn Detector> {
    let mut b = reg.builder("kn", &Params::new()).unwrap();
    for t in traces {
        b.add_trace(t);
    }
    b.build(&|_, _| {}).unwrap()
}

/// Call-presence TF-IDF vectors, L2-normalised, as sparse (call, weight) lists.
struct Mix {
    idf: HashMap<u32, f64>,
    unseen: f64,
}
impl Mix {
    fn fit(train: &[&Vec<u32>]) -> Self {
        let mut df: HashMap<u32, f64> = HashMap::new();
        for t in train {
            let mut calls: Vec<u32> = t.to_vec();
            calls.sort_unstable();
            calls.dedup();
            for c in calls {
                *df.entry(c).or_default() += 1.0;
            }
        }
        let n = train.len() as f64;
        Mix {
            idf: df
                .into_iter()
                .map(|(c, d)| (c, ((1.0 + n) / (1.0 + d)).ln() + 1.0))
                .collect(),
            unseen: (1.0 + n).ln() + 1.0,
        }
    }
    fn vector(&self, t: &[u32]) -> HashMap<u32, f64> {
        let mut calls: Vec<u32> = t.to_vec();
        calls.sort_unstable();
        calls.dedup();
        let mut norm = 0.0;
        let mut v = HashMap::new();
        for c in calls {
            match self.idf.get(&c) {
                Some(&w) => {
                    norm += w * w;
                    v.insert(c, w);
                }
                None => norm += self.unseen * self.unseen,
            }
        }
        let norm = norm.sqrt().max(1e-12);
        v.values_mut().for_each(|x| *x /= norm);
        v
    }
}

fn cosine(a: &HashMap<u32, f64>, b: &HashMap<u32, f64>) -> f64 {
    a.iter().filter_map(|(c, x)| b.get(c).map(|y| x * y)).sum()
}

/// Names of the scores [`fold_scores`] returns, in order.
const SCORES: [&str; 3] = [
    "kn mean_nll",
    "relative surprise (mix)",
    "relative surprise (length)",
];

/// The scores in [`SCORES`] of the fold's normal and anomalous traces.
fn fold_scores(reg: &Registry, train: &[Vec<u32>], fold: &Fold) -> FoldScores {
    let tr: Vec<&Vec<u32>> = fold.train.iter().map(|&i| &train[i]).collect();
    let full = kn(reg, &tr);
    let mut s = Scratch::default();
    // Each training trace's NLL under a kn that did not see it.
    let mut own = vec![0.0; tr.len()];
    for part in 0..5 {
        let rest: Vec<&Vec<u32>> = (0..tr.len())
            .filter(|i| i % 5 != part)
            .map(|i| tr[i])
            .collect();
        let m = kn(reg, &rest);
        for i in (0..tr.len()).filter(|i| i % 5 == part) {
            own[i] = m.score_trace(tr[i], &mut s).scores[0];
        }
    }
    let mix = Mix::fit(&tr);
    let vecs: Vec<HashMap<u32, f64>> = tr.iter().map(|t| mix.vector(t)).collect();
    let loglen: Vec<f64> = tr.iter().map(|t| (t.len() as f64 + 1.0).ln()).collect();
    let mean_of = |mut near: Vec<(f64, usize)>| -> f64 {
        near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        near.iter().take(K).map(|&(_, i)| own[i]).sum::<f64>() / K.min(near.len()).max(1) as f64
    };
    let mut score = |t: &[u32]| -> Vec<f64> {
        let nll = full.score_trace(t, &mut s).scores[0];
        let q = mix.vector(t);
        let by_mix = mean_of(
            vecs.iter()
                .enumerate()
                .map(|(i, v)| (-cosine(&q, v), i))
                .collect(),
        );
        let l = (t.len() as f64 + 1.0).ln();
        let by_len = mean_of(
            loglen
                .iter()
                .enumerate()
                .map(|(i, x)| ((x - l).abs(), i))
                .collect(),
        );
        vec![nll, nll - by_mix, nll - by_len]
    };
    let n: Vec<Vec<f64>> = fold.normal.iter().map(|t| score(t)).collect();
    let a: Vec<Vec<f64>> = fold.anomalous.iter().map(|t| score(t)).collect();
    (0..SCORES.len())
        .map(|j| {
            (
                n.iter().map(|x| x[j]).collect(),
                a.iter().map(|x| x[j]).collect(),
            )
        })
        .collect()
}

fn main() {
    let (data, test) = prototype_args();
    let reg = Registry::builtin();
    judge_prototype(&SCORES, &data, test, |train, f| fold_scores(&reg, train, f));
}
