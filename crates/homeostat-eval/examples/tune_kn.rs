//! Chooses the Kneser-Ney model's order (and discount) by cross-validation on
//! ADFA-LD's TRAINING traces only (`homeostat_eval::cv`: held-out normal traces
//! against synthetic anomalies made of normal material). Criterion: mean AUC of the
//! primary score (`mean_nll`) over five folds; ties (within 0.001) go to the lower
//! order, then to the estimated discount. Deterministic.
//!
//! Run: `cargo run --release -p homeostat-eval --example tune_kn [-- DIR]`.

use std::path::PathBuf;

use homeostat_core::{Params, Registry};
use homeostat_eval::cv::{adfa_training, cv_auc, folds};

fn main() {
    let train = adfa_training(std::env::args().nth(1).map(PathBuf::from));
    let reg = Registry::builtin();
    let folds = folds(&train, 5, 0x5EED);
    let mut results = vec![];
    for order in 2..=7usize {
        // 0 = each order's discount estimated from its count-of-counts.
        for discount in [0.0, 0.5, 0.9] {
            let p = Params::parse(&format!("order={order},discount={discount}")).unwrap();
            let a = cv_auc(&reg, &train, &folds, "kn", &p);
            println!(
                "order={order} discount={discount:<3} cv-auc mean_nll {:.4} max_frame_nll {:.4} rate {:.4}",
                a[0], a[1], a[2]
            );
            // Estimated discount first among equals: it has no free value.
            let rank = if discount == 0.0 {
                0
            } else {
                (discount * 10.0) as u32
            };
            results.push((a[0], order, rank, discount));
        }
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top = results[0].0;
    let best = results
        .iter()
        .filter(|r| r.0 >= top - 0.001)
        .min_by_key(|r| (r.1, r.2))
        .unwrap();
    println!(
        "chosen: order={} discount={} (cv-auc {:.4}; best {:.4})",
        best.1, best.3, best.0, top
    );
}
