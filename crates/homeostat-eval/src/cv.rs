//! Cross-validation on normal training traces only: how well a model's trace scores
//! separate held-out normal traces from synthetic anomalies made of normal material.
//!
//! Without attacks in training this is the criterion the tuning examples
//! (`tune_knn`, `tune_kn`, `tune_ensemble`) choose settings by: five folds (trace i in
//! fold i mod 5); a model trained on four folds scores the fifth fold's traces and,
//! for each, two perturbed copies: one with a segment of another held-out trace
//! spliced in (normal calls out of context, as when an exploit starts a different
//! program), one with a segment replaced by calls drawn from the training call
//! distribution. Segments are 10% of the trace (at least 10 calls). The result is the
//! mean AUC (held-out normal vs perturbed) over folds, per trace score.
//! Deterministic (fixed seed). No test or attack trace is involved.

use std::path::PathBuf;

use homeostat_core::{Params, Registry, Scratch};
use homeostat_traces::adfa;

use crate::metrics::auc;

/// The tuning examples' input: ADFA-LD's training traces (calls only) from `dir`, else
/// `$HOMEOSTAT_ADFA_DIR`, else `../shared/datasets/ADFA-LD`. Panics with the path on
/// a load error (the examples are run by hand).
pub fn adfa_training(dir: Option<PathBuf>) -> Vec<Vec<u32>> {
    let dir = dir
        .or_else(|| std::env::var_os("HOMEOSTAT_ADFA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/datasets/ADFA-LD"));
    adfa::load(&dir)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
        .training
        .into_iter()
        .map(|t| t.calls)
        .collect()
}

/// A small deterministic generator (SplitMix64), so the folds' anomalies are fixed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Held-out trace indices and their perturbed copies, per fold.
pub fn folds(train: &[Vec<u32>], k: usize, seed: u64) -> Vec<(Vec<usize>, Vec<Vec<u32>>)> {
    let mut rng = Rng(seed);
    let all: Vec<u32> = train.iter().flatten().copied().collect();
    (0..k)
        .map(|f| {
            let held: Vec<usize> = (0..train.len()).filter(|i| i % k == f).collect();
            let mut bad = vec![];
            for (j, &i) in held.iter().enumerate() {
                let t = &train[i];
                let seg = (t.len() / 10).max(10);
                let at = rng.below(t.len() + 1);
                // Splice: a segment of another held-out trace.
                let other = &train[held[(j + 1 + rng.below(held.len() - 1)) % held.len()]];
                let start = rng.below(other.len().saturating_sub(seg) + 1);
                let piece = &other[start..(start + seg).min(other.len())];
                let mut a = t[..at].to_vec();
                a.extend_from_slice(piece);
                a.extend_from_slice(&t[at..]);
                bad.push(a);
                // Replace: calls drawn from the training distribution.
                let mut b = t.clone();
                let from = rng.below(b.len().saturating_sub(seg) + 1);
                for c in b.iter_mut().skip(from).take(seg) {
                    *c = all[rng.below(all.len())];
                }
                if b.len() < seg {
                    b.extend((0..seg - b.len()).map(|_| all[rng.below(all.len())]));
                }
                bad.push(b);
            }
            (held, bad)
        })
        .collect()
}

/// Mean AUC over folds of `model` with `params`, per trace score.
pub fn cv_auc(
    reg: &Registry,
    train: &[Vec<u32>],
    folds: &[(Vec<usize>, Vec<Vec<u32>>)],
    model: &str,
    params: &Params,
) -> Vec<f64> {
    let k = folds.len();
    let mut sum: Vec<f64> = vec![];
    for (f, (held, bad)) in folds.iter().enumerate() {
        let mut b = reg.builder(model, params).expect("valid setting");
        for (i, t) in train.iter().enumerate() {
            if i % k != f {
                b.add_trace(t);
            }
        }
        let d = b.build(&|_, _| {}).expect("trains");
        let mut s = Scratch::default();
        let normal: Vec<Vec<f64>> = held
            .iter()
            .map(|&i| d.score_trace(&train[i], &mut s).scores)
            .collect();
        let anomalous: Vec<Vec<f64>> = bad
            .iter()
            .map(|t| d.score_trace(t, &mut s).scores)
            .collect();
        let names = d.score_names().len();
        sum.resize(names, 0.0);
        for (j, acc) in sum.iter_mut().enumerate() {
            let n: Vec<f64> = normal.iter().map(|v| v[j]).collect();
            let a: Vec<f64> = anomalous.iter().map(|v| v[j]).collect();
            *acc += auc(&n, &a).unwrap_or(0.5);
        }
    }
    sum.iter().map(|s| s / k as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_hold_out_every_trace_once_with_two_perturbed_copies() {
        let train: Vec<Vec<u32>> = (0..12u32)
            .map(|i| (0..40 + i).map(|j| (i + j) % 6 + 1).collect())
            .collect();
        let f = folds(&train, 3, 7);
        assert_eq!(f, folds(&train, 3, 7), "deterministic");
        let mut seen: Vec<usize> = f.iter().flat_map(|(h, _)| h.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        for (held, bad) in &f {
            assert_eq!(bad.len(), 2 * held.len());
            for (j, &i) in held.iter().enumerate() {
                // Splice adds a segment of 10% (at least 10 calls); replace keeps length.
                assert_eq!(bad[2 * j].len(), train[i].len() + 10);
                assert_eq!(bad[2 * j + 1].len(), train[i].len());
            }
        }
        // A model that sees the perturbations separates them from the normals.
        let reg = Registry::builtin();
        let a = cv_auc(&reg, &train, &f, "kn", &Params::new());
        assert_eq!(a.len(), 3);
        assert!(a[0] > 0.5, "{a:?}");
    }
}
