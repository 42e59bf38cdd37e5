//! Chooses an ensemble's members among the fast models by cross-validation on
//! ADFA-LD's TRAINING traces only (`homeostat_eval::cv`: held-out normal traces
//! against synthetic anomalies made of normal material). Every subset of at least two
//! candidates is scored; criterion: mean AUC over five folds of the combined score
//! named on the command line (default `mean_rank`); ties (within 0.001) go to fewer
//! members. The language model is not a candidate: five folds of it would take most
//! of an hour per subset. Deterministic.
//!
//! Its choice did worse on ADFA-LD's attacks than its best member (docs/models.md);
//! `select_ensemble` scores the same kind of search by leaving a cluster of training
//! traces out instead, and compares both proxies with the test ranking.
//!
//! Run: `cargo run --release -p homeostat-eval --example tune_ensemble [-- DIR [SCORE]]`.

use std::path::PathBuf;

use homeostat_core::{Params, Registry};
use homeostat_eval::cv::{adfa_training, cv_auc, folds};

/// Each fast model with its primary score, and the classic models' rate (their
/// stronger trace score on ADFA-LD's training CV and in the literature's use).
const CANDIDATES: [&str; 6] = [
    "kn",
    "knn",
    "stide.rate",
    "tstide.rate",
    "markov.rate",
    "pairs",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from);
    let score = args.next().unwrap_or_else(|| "mean_rank".into());
    let index = homeostat_core::ensemble::COMBINED
        .iter()
        .position(|s| *s == score)
        .unwrap_or_else(|| panic!("score {score:?} is not a combined ensemble score"));
    let train = adfa_training(dir);
    let reg = Registry::builtin();
    let folds = folds(&train, 5, 0x5EED);
    let params = Params::new();
    let mut results = vec![];
    for m in 1u32..(1 << CANDIDATES.len()) {
        if m.count_ones() < 2 {
            continue;
        }
        let members: Vec<&str> = (0..CANDIDATES.len())
            .filter(|i| m & (1 << i) != 0)
            .map(|i| CANDIDATES[i])
            .collect();
        let name = format!("ensemble:{}", members.join(","));
        let a = cv_auc(&reg, &train, &folds, &name, &params);
        println!("{name:<60} cv-auc {score} {:.4}", a[index]);
        results.push((a[index], members.len(), name));
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top = results[0].0;
    let best = results
        .iter()
        .filter(|r| r.0 >= top - 0.001)
        .min_by_key(|r| r.1)
        .unwrap();
    println!(
        "chosen: {} (cv-auc {score} {:.4}; best {:.4})",
        best.2, best.0, top
    );
}
