//! Sequence covering (`cover`, Marteau 2019) end to end on the real ADFA-LD: train on
//! Training, test on Validation + Attack, and check the AUCs against what was
//! measured (docs/models.md, "Sequence covering"). The model has no random part and
//! no hyper-parameter in its primary score, so the band is narrow: a piece allowed to
//! cross two training traces, a lost break or an off-by-one in the normalisation
//! moves `covering` by more than 0.01. Skips with a message when the dataset is
//! absent (a fresh clone).

use homeostat_eval::datasets::adfa_ld;

use homeostat_testsupport::adfa_dir;

mod common;
use common::{eval, within};

// Measured 2026-12-01 02:02 UTC (standard split).
const COVERING: f64 = 0.8419;
const INV_MATCH: f64 = 0.8434;
const MAX_LFC: f64 = 0.6959;
// Marteau's own normalisation (breaks per call), measured 02:19 UTC.
const RATE: f64 = 0.8418;
// The pre-registered ensemble: one member per view, mean rank.
const ENS_COVER_KNN_RANK: f64 = 0.8641;

#[test]
fn sequence_covering_aucs() {
    let Some(dir) = adfa_dir() else { return };
    let ds = adfa_ld(&dir, None).unwrap();
    let c = eval(&ds, "cover", "");
    assert_eq!(c.score_names, ["covering", "max_lfc", "inv_match", "rate"]);
    assert_eq!(c.train_calls, 308_077);
    // 62 of the 833 training traces are substrings of one stored trace; nothing hits
    // the cap.
    assert_eq!(
        c.config, "L=20 traces=771 calls=294977 states=458961",
        "{}",
        c.config
    );
    assert_eq!(c.profile_size, 458_961);
    within("cover covering", c.scores["covering"].auc, COVERING, 0.01);
    within(
        "cover inv_match",
        c.scores["inv_match"].auc,
        INV_MATCH,
        0.01,
    );
    within("cover max_lfc", c.scores["max_lfc"].auc, MAX_LFC, 0.01);
    within("cover rate", c.scores["rate"].auc, RATE, 0.01);
    assert_eq!(c.per_attack.len(), 6);

    let e = eval(&ds, "ensemble:cover,knn", "");
    within("member cover", e.scores["cover"].auc, COVERING, 1e-4);
    within(
        "cover+knn mean_rank",
        e.scores["mean_rank"].auc,
        ENS_COVER_KNN_RANK,
        0.01,
    );
}

/// A smaller cap skips whole traces and says so; the model still scores.
#[test]
fn the_cap_on_real_traces() {
    let Some(dir) = adfa_dir() else { return };
    let ds = adfa_ld(&dir, None).unwrap();
    let c = eval(&ds, "cover", "max_calls=100000");
    assert!(c.config.contains("past max_calls=100000"), "{}", c.config);
    let stored: u64 = c
        .config
        .split_whitespace()
        .find_map(|w| w.strip_prefix("calls="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(stored <= 100_000, "{}", c.config);
    // A third of the dictionary makes normal traces look stranger: lower AUC, but
    // far from chance.
    let auc = c.scores["covering"].auc.unwrap();
    assert!(auc > 0.6 && auc < COVERING, "{auc}");
}
