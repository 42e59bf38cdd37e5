//! Model selection on normal training traces only: how well a model's trace scores
//! separate held-out normal traces from anomalies made of normal material.
//!
//! Without attacks in training, every choice of settings or ensemble members is
//! judged by a *proxy*: folds of the training traces, each with the traces to train
//! on and held-out traces labelled normal or anomalous ([`Fold`]). Two proxies:
//!
//! - [`folds`] (synthetic segments): five folds (trace i in fold i mod 5); a model
//!   trained on four folds scores the fifth fold's traces and, for each, two
//!   perturbed copies: one with a segment of another held-out trace spliced in, one
//!   with a segment replaced by calls drawn from the training call distribution.
//!   Segments are 10% of the trace (at least 10 calls). It rewards noticing a short
//!   foreign stretch. It is kept for settings *within* a model (kn's order, kNN's
//!   weighting), where it ranked kn's orders as the test set later did.
//! - [`cluster_folds`] (leave a cluster out): ADFA-LD's attack traces differ from
//!   normal ones over their whole length (a different program, or a process taken
//!   over that then behaves like one), and the segment proxy chose an ensemble that
//!   does worse on them than its best member (docs/models.md). So the training
//!   traces are clustered by their mix of calls ([`clusters`]) into groups that
//!   approximate programs; each fold holds one cluster out as the anomalies, plus a
//!   share of the other clusters' traces as held-out normals, and trains on the
//!   rest. Each held-out cluster trace also gives a *takeover* trace: the start of a
//!   held-out normal trace followed by the cluster trace from a point in its first
//!   half (a process that starts as a known program and continues as an unknown
//!   one). The criterion rewards telling behaviour training never showed from
//!   familiar behaviour, over whole traces.
//!
//! [`cv_auc`] trains a registered model per fold and returns the mean AUC per trace
//! score. For choosing an ensemble among many member subsets, [`member_scores`]
//! trains each candidate member once per fold, with the ensemble's own held-out
//! normalisation, and [`subset_auc`] combines any subset offline through
//! [`homeostat_core::ensemble::combine`], the ensemble's own rule: thousands of
//! subsets cost one training per member and fold. Deterministic (fixed seeds). No
//! test or attack trace is involved unless the caller passes them as a fold.

use std::path::PathBuf;

use homeostat_core::ensemble::{combine, parse_members, Member, Norm, View, COMBINED};
use homeostat_core::{Params, Registry, Scratch};
use homeostat_traces::adfa;

use crate::metrics::auc;

/// The tuning examples' input: ADFA-LD's training traces (calls only) from `dir`, else
/// `$HOMEOSTAT_ADFA_DIR`, else `../shared/datasets/ADFA-LD`. Panics with the path on
/// a load error (the examples are run by hand).
pub fn adfa_training(dir: Option<PathBuf>) -> Vec<Vec<u32>> {
    let dir = adfa_path(dir);
    adfa::load(&dir)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
        .training
        .into_iter()
        .map(|t| t.calls)
        .collect()
}

/// The dataset directory the examples use: `dir`, else `$HOMEOSTAT_ADFA_DIR`, else
/// `../shared/datasets/ADFA-LD`.
pub fn adfa_path(dir: Option<PathBuf>) -> PathBuf {
    dir.or_else(|| std::env::var_os("HOMEOSTAT_ADFA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/datasets/ADFA-LD"))
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

/// One fold of a proxy: which training traces to train on, and held-out traces
/// labelled normal or anomalous.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// Indices of the training traces to train on, in order.
    pub train: Vec<usize>,
    /// Held-out normal traces.
    pub normal: Vec<Vec<u32>>,
    /// Anomalous traces.
    pub anomalous: Vec<Vec<u32>>,
}

/// The synthetic-segment proxy: `k` folds, trace i held out in fold i mod k with two
/// perturbed copies of it (module docs).
pub fn folds(train: &[Vec<u32>], k: usize, seed: u64) -> Vec<Fold> {
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
            Fold {
                train: (0..train.len()).filter(|i| i % k != f).collect(),
                normal: held.iter().map(|&i| train[i].clone()).collect(),
                anomalous: bad,
            }
        })
        .collect()
}

/// Each trace's mix of calls: 1 + ln(count) per distinct call, times the call's
/// inverse document frequency, L2-normalised (dense over the calls present).
fn mix_vectors(train: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let mut calls: Vec<u32> = train.iter().flatten().copied().collect();
    calls.sort_unstable();
    calls.dedup();
    let id = |c: u32| calls.binary_search(&c).expect("call from the traces");
    let counts: Vec<Vec<f64>> = train
        .iter()
        .map(|t| {
            let mut v = vec![0.0; calls.len()];
            for &c in t {
                v[id(c)] += 1.0;
            }
            v
        })
        .collect();
    let n = train.len() as f64;
    let idf: Vec<f64> = (0..calls.len())
        .map(|j| {
            let df = counts.iter().filter(|v| v[j] > 0.0).count() as f64;
            ((1.0 + n) / (1.0 + df)).ln() + 1.0
        })
        .collect();
    counts
        .into_iter()
        .map(|mut v| {
            for (x, w) in v.iter_mut().zip(&idf) {
                if *x > 0.0 {
                    *x = (1.0 + x.ln()) * w;
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

/// Clusters the traces by their mix of calls into at most `k` groups (k-medoids
/// under cosine distance of TF-IDF call vectors): one cluster id (0..k) per trace.
///
/// Deterministic: medoids start from PAM's greedy BUILD (each next medoid the trace
/// that lowers the total distance most, so outliers do not become medoids of their
/// own as under farthest-first), then alternate assignment and medoid update (the
/// member with the least distance to its cluster) until nothing changes. Ties go to
/// the lower index. Empty traces share one zero vector (distance 1 to all others).
/// Keeps the `n x n` distance matrix: meant for training sets of a few thousand
/// traces (ADFA-LD's 833 take 5.5 MB and well under a second).
pub fn clusters(train: &[Vec<u32>], k: usize) -> Vec<usize> {
    let n = train.len();
    if n == 0 {
        return vec![];
    }
    let v = mix_vectors(train);
    let d: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let dot: f64 = v[i].iter().zip(&v[j]).map(|(a, b)| a * b).sum();
                    if i == j {
                        0.0
                    } else {
                        (1.0 - dot).max(0.0)
                    }
                })
                .collect()
        })
        .collect();
    let k = k.clamp(1, n);
    // BUILD: the first medoid is the most central trace; each next one lowers the
    // sum of distances to the nearest medoid most.
    let mut near = vec![f64::INFINITY; n];
    let mut medoids: Vec<usize> = vec![];
    while medoids.len() < k {
        let best = (0..n)
            .filter(|c| !medoids.contains(c))
            .map(|c| {
                let cost: f64 = (0..n).map(|i| near[i].min(d[c][i])).sum();
                (cost, c)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .expect("fewer medoids than traces");
        medoids.push(best.1);
        for i in 0..n {
            near[i] = near[i].min(d[best.1][i]);
        }
    }
    let assign = |medoids: &[usize]| -> Vec<usize> {
        (0..n)
            .map(|i| {
                (0..medoids.len())
                    .min_by(|&a, &b| d[medoids[a]][i].total_cmp(&d[medoids[b]][i]))
                    .expect("at least one medoid")
            })
            .collect()
    };
    let mut label = assign(&medoids);
    for _ in 0..100 {
        let next: Vec<usize> = (0..k)
            .map(|c| {
                let members: Vec<usize> = (0..n).filter(|&i| label[i] == c).collect();
                members
                    .iter()
                    .map(|&m| (members.iter().map(|&i| d[m][i]).sum::<f64>(), m))
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                    .map_or(medoids[c], |x| x.1)
            })
            .collect();
        if next == medoids {
            break;
        }
        medoids = next;
        label = assign(&medoids);
    }
    label
}

/// The leave-a-cluster-out proxy (module docs): the traces clustered into `k`
/// groups ([`clusters`]); one fold per cluster of at least `min_size` traces, which
/// is held out as anomalies together with one takeover trace per member; a share
/// `normal_share` of every other cluster's traces (at least one each) is held out
/// as normals; the fold trains on the rest.
pub fn cluster_folds(
    train: &[Vec<u32>],
    k: usize,
    min_size: usize,
    normal_share: f64,
    seed: u64,
) -> Vec<Fold> {
    let label = clusters(train, k);
    let mut rng = Rng(seed);
    let mut out = vec![];
    for c in 0..k {
        let inside: Vec<usize> = (0..train.len()).filter(|&i| label[i] == c).collect();
        if inside.len() < min_size {
            continue;
        }
        let mut normal = vec![];
        for o in (0..k).filter(|&o| o != c) {
            let mut members: Vec<usize> = (0..train.len()).filter(|&i| label[i] == o).collect();
            if members.is_empty() {
                continue;
            }
            // A seeded shuffle picks the share.
            for i in (1..members.len()).rev() {
                members.swap(i, rng.below(i + 1));
            }
            // Clamped: a share outside 0..1 (a caller's mistake) still leaves a fold.
            let take =
                ((members.len() as f64 * normal_share).round() as usize).clamp(1, members.len());
            normal.extend_from_slice(&members[..take]);
        }
        normal.sort_unstable();
        if normal.is_empty() {
            // One cluster only: nothing familiar to compare it with.
            continue;
        }
        let mut anomalous: Vec<Vec<u32>> = inside.iter().map(|&i| train[i].clone()).collect();
        for &i in &inside {
            let host = &train[normal[rng.below(normal.len())]];
            let keep = host.len() * (10 + rng.below(41)) / 100;
            let from = rng.below(train[i].len() / 2 + 1);
            let mut t = host[..keep].to_vec();
            t.extend_from_slice(&train[i][from..]);
            anomalous.push(t);
        }
        out.push(Fold {
            train: (0..train.len())
                .filter(|&i| label[i] != c && normal.binary_search(&i).is_err())
                .collect(),
            normal: normal.iter().map(|&i| train[i].clone()).collect(),
            anomalous,
        });
    }
    out
}

/// Mean AUC over folds of `model` with `params`, per trace score.
pub fn cv_auc(
    reg: &Registry,
    train: &[Vec<u32>],
    folds: &[Fold],
    model: &str,
    params: &Params,
) -> Vec<f64> {
    let k = folds.len();
    let mut sum: Vec<f64> = vec![];
    for fold in folds {
        let mut b = reg.builder(model, params).expect("valid setting");
        for &i in &fold.train {
            b.add_trace(&train[i]);
        }
        let d = b.build(&|_, _| {}).expect("trains");
        let mut s = Scratch::default();
        let normal: Vec<Vec<f64>> = fold
            .normal
            .iter()
            .map(|t| d.score_trace(t, &mut s).scores)
            .collect();
        let anomalous: Vec<Vec<f64>> = fold
            .anomalous
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

/// One candidate member's scores in one fold.
#[derive(Debug, Clone)]
pub struct MemberScores {
    /// The normalisation the ensemble would fit in this fold.
    pub norm: Norm,
    /// The member's view.
    pub view: View,
    /// Its score on the fold's normal traces.
    pub normal: Vec<f64>,
    /// Its score on the fold's anomalous traces.
    pub anomalous: Vec<f64>,
}

/// The candidate members of a list (`kn,knn(n=2),stide.rate`, as in an ensemble
/// name).
pub fn candidates(reg: &Registry, list: &str) -> Vec<Member> {
    parse_members(reg, list).unwrap_or_else(|e| panic!("candidates {list:?}: {e}"))
}

/// Trains `member` on the fold's training traces and scores the fold, normalised as
/// an ensemble with `holdout` (its default is
/// [`homeostat_core::ensemble::DEFAULT_HOLDOUT`]) would normalise it: a copy trained
/// without every `holdout`-th training trace scores those, unless the member holds
/// out traces of its own.
pub fn member_scores(
    reg: &Registry,
    train: &[Vec<u32>],
    fold: &Fold,
    member: &Member,
    params: &Params,
    holdout: usize,
) -> MemberScores {
    // Every trace held out (1) or a division by zero (0) would leave nothing to fit.
    let holdout = holdout.max(2);
    let p = member.merged(params);
    let mut full = reg.builder(&member.model, &p).expect("valid member");
    let mut fit = reg.builder(&member.model, &p).expect("valid member");
    let mut held = vec![];
    for (seen, &i) in fold.train.iter().enumerate() {
        full.add_trace(&train[i]);
        if seen % holdout == holdout - 1 {
            held.push(&train[i]);
        } else {
            fit.add_trace(&train[i]);
        }
    }
    let d = full.build(&|_, _| {}).expect("trains");
    let names = d.score_names();
    let index = match &member.score {
        None => 0,
        Some(s) => names
            .iter()
            .position(|n| n == s)
            .unwrap_or_else(|| panic!("{} has no score {s}", member.model)),
    };
    let mut s = Scratch::default();
    let mut score = |d: &dyn homeostat_core::Detector, t: &[u32]| {
        d.score_trace(t, &mut s)
            .scores
            .get(index)
            .copied()
            .unwrap_or(0.0)
    };
    let own: Option<Vec<f64>> = d
        .held_out_scores()
        .map(|rows| rows.iter().map(|r| r[index]).collect());
    let held_scores = match own {
        Some(v) if !v.is_empty() => v,
        _ => {
            let f = fit.build(&|_, _| {}).expect("trains");
            held.iter().map(|t| score(f.as_ref(), t)).collect()
        }
    };
    MemberScores {
        norm: Norm::fit(held_scores),
        view: View::of(&member.model),
        normal: fold.normal.iter().map(|t| score(d.as_ref(), t)).collect(),
        anomalous: fold
            .anomalous
            .iter()
            .map(|t| score(d.as_ref(), t))
            .collect(),
    }
}

/// Per fold, the AUC of the subset `members` (indices into each fold's
/// [`MemberScores`]) under each combined score ([`COMBINED`], in order); a single
/// member gives its own score's AUC under every rule.
pub fn subset_auc(per_fold: &[Vec<MemberScores>], members: &[usize]) -> Vec<Vec<f64>> {
    per_fold
        .iter()
        .map(|ms| {
            let picked: Vec<&MemberScores> = members.iter().map(|&m| &ms[m]).collect();
            if let [one] = picked[..] {
                let a = auc(&one.normal, &one.anomalous).unwrap_or(0.5);
                return vec![a; COMBINED.len()];
            }
            let norms: Vec<&Norm> = picked.iter().map(|m| &m.norm).collect();
            let views: Vec<View> = picked.iter().map(|m| m.view).collect();
            let side = |get: &dyn Fn(&MemberScores) -> &Vec<f64>| -> Vec<Vec<f64>> {
                let len = get(picked[0]).len();
                (0..len)
                    .map(|t| {
                        let s: Vec<f64> = picked.iter().map(|m| get(m)[t]).collect();
                        combine(&norms, &views, &s)
                    })
                    .collect()
            };
            let (n, a) = (side(&|m| &m.normal), side(&|m| &m.anomalous));
            (0..COMBINED.len())
                .map(|j| {
                    let nj: Vec<f64> = n.iter().map(|v| v[j]).collect();
                    let aj: Vec<f64> = a.iter().map(|v| v[j]).collect();
                    auc(&nj, &aj).unwrap_or(0.5)
                })
                .collect()
        })
        .collect()
}

/// Spearman's rank correlation of two equally long lists (average ranks for ties).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j < idx.len() && v[idx[j]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..j] {
                r[k] = (i + j - 1) as f64 / 2.0;
            }
            i = j;
        }
        r
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt().max(1e-300)
}

/// Per trace score: (held-out normal scores, anomalous scores) of one fold.
pub type FoldScores = Vec<(Vec<f64>, Vec<f64>)>;

/// The prototype examples' command line, `[DIR] [--test]`: ADFA-LD loaded from DIR
/// (else [`adfa_path`]'s default), and whether to score the test split too.
pub fn prototype_args() -> (homeostat_traces::adfa::AdfaDataset, bool) {
    let mut dir = None;
    let mut test = false;
    for a in std::env::args().skip(1) {
        if a == "--test" {
            test = true;
        } else {
            dir = Some(PathBuf::from(a));
        }
    }
    let dir = adfa_path(dir);
    let data =
        homeostat_traces::adfa::load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (data, test)
}

/// How the eval examples judge a prototype's trace scores (`names`), one line each:
/// the mean AUC over the leave-a-cluster-out folds (with each fold's AUCs) and over
/// the segment folds, built as `select_ensemble` builds them; with `test`, also the
/// standard split (train on Training, normals from Validation, anomalies from the
/// attacks), printed as a measurement, not a choice. `fold_scores` trains on
/// `fold.train` (indices into the training traces) and scores the fold's traces.
pub fn judge_prototype(
    names: &[&str],
    data: &homeostat_traces::adfa::AdfaDataset,
    test: bool,
    fold_scores: impl Fn(&[Vec<u32>], &Fold) -> FoldScores,
) {
    let train: Vec<Vec<u32>> = data.training.iter().map(|t| t.calls.clone()).collect();
    let proxies = [
        (
            "cluster proxy",
            cluster_folds(&train, 10, 10, 0.2, 0xC105_7E55),
        ),
        ("segment proxy", folds(&train, 5, 0x5EED)),
    ];
    for (what, folds) in &proxies {
        let mut sum = vec![0.0; names.len()];
        let mut per = vec![];
        for f in folds {
            let sc = fold_scores(&train, f);
            check_scores(names, &sc);
            let a: Vec<f64> = sc
                .iter()
                .map(|(n, a)| crate::metrics::auc(n, a).unwrap_or(0.5))
                .collect();
            sum.iter_mut().zip(&a).for_each(|(s, x)| *s += x);
            per.push(
                a.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
        let k = folds.len().max(1) as f64;
        let means: Vec<String> = names
            .iter()
            .zip(&sum)
            .map(|(n, s)| format!("{n} {:.4}", s / k))
            .collect();
        println!("{what}: {} (per fold: {})", means.join(", "), per.join(" "));
    }
    if test {
        let fold = Fold {
            train: (0..train.len()).collect(),
            normal: data.validation.iter().map(|t| t.calls.clone()).collect(),
            anomalous: data.attacks.iter().map(|a| a.trace.calls.clone()).collect(),
        };
        let sc = fold_scores(&train, &fold);
        check_scores(names, &sc);
        for (name, (n, a)) in names.iter().zip(&sc) {
            let dr: Vec<String> = [0.01, 0.05, 0.1]
                .iter()
                .map(|&l| format!("{:.1}%", 100.0 * crate::metrics::at_far(n, a, l, false).dr))
                .collect();
            println!(
                "test (measurement only): {name} AUC {:.4}, DR at 1/5/10% FAR {}",
                crate::metrics::auc(n, a).unwrap_or(f64::NAN),
                dr.join(" / ")
            );
        }
    }
}

/// One (normal, anomalous) pair per score name: a missing one would be printed as
/// a measured AUC of 0 (the sums start at 0), an extra one silently dropped.
fn check_scores(names: &[&str], sc: &FoldScores) {
    assert_eq!(
        sc.len(),
        names.len(),
        "fold_scores gave {} score pairs for the {} scores {names:?}",
        sc.len(),
        names.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prototype_with_a_score_missing_is_refused_not_printed_as_zero() {
        let trace = |i: usize| homeostat_traces::Trace {
            id: format!("t{i}"),
            calls: (0..30 + i as u32)
                .map(|j| (j * 7 + i as u32) % 9 + 1)
                .collect(),
        };
        let data = homeostat_traces::adfa::AdfaDataset {
            training: (0..60).map(trace).collect(),
            validation: (60..70).map(trace).collect(),
            attacks: vec![],
        };
        let one_pair = |_: &[Vec<u32>], f: &Fold| -> FoldScores {
            vec![(vec![0.0; f.normal.len()], vec![1.0; f.anomalous.len()])]
        };
        // One name, one pair: runs.
        judge_prototype(&["a"], &data, false, one_pair);
        let r = std::panic::catch_unwind(|| judge_prototype(&["a", "b"], &data, false, one_pair));
        let msg = r.unwrap_err();
        let msg = msg
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(msg.contains("1 score pairs for the 2 scores"), "{msg}");
    }

    fn toy() -> Vec<Vec<u32>> {
        (0..12u32)
            .map(|i| (0..40 + i).map(|j| (i + j) % 6 + 1).collect())
            .collect()
    }

    #[test]
    fn folds_hold_out_every_trace_once_with_two_perturbed_copies() {
        let train = toy();
        let f = folds(&train, 3, 7);
        assert_eq!(f, folds(&train, 3, 7), "deterministic");
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|k| (0..12).filter(move |i| i % 3 == k))
            .collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        for (k, fold) in f.iter().enumerate() {
            assert_eq!(fold.anomalous.len(), 2 * fold.normal.len());
            assert!(fold.train.iter().all(|i| i % 3 != k));
            for (j, i) in (0..12).filter(|i| i % 3 == k).enumerate() {
                assert_eq!(fold.normal[j], train[i]);
                // Splice adds a segment of 10% (at least 10 calls); replace keeps length.
                assert_eq!(fold.anomalous[2 * j].len(), train[i].len() + 10);
                assert_eq!(fold.anomalous[2 * j + 1].len(), train[i].len());
            }
        }
        // A model that sees the perturbations separates them from the normals.
        let reg = Registry::builtin();
        let a = cv_auc(&reg, &train, &f, "kn", &Params::new());
        assert_eq!(a.len(), 3);
        assert!(a[0] > 0.5, "{a:?}");
    }

    /// Three "programs" with disjoint call mixes, eight traces each.
    fn programs() -> Vec<Vec<u32>> {
        (0..24u32)
            .map(|i| {
                let p = i % 3;
                (0..30 + i).map(|j| 10 * p + (j * (i + 1)) % 4).collect()
            })
            .collect()
    }

    #[test]
    fn clusters_find_programs() {
        let train = programs();
        let c = clusters(&train, 3);
        assert_eq!(c, clusters(&train, 3), "deterministic");
        for i in 0..24 {
            assert_eq!(c[i], c[i % 3], "trace {i} with its program: {c:?}");
        }
        let mut ids = vec![c[0], c[1], c[2]];
        ids.sort();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(clusters(&[], 3), Vec::<usize>::new());
        assert_eq!(clusters(&[vec![], vec![1]], 5).len(), 2);
    }

    #[test]
    fn cluster_folds_hold_out_a_program_and_a_share_of_the_rest() {
        let train = programs();
        let f = cluster_folds(&train, 3, 5, 0.25, 9);
        assert_eq!(f, cluster_folds(&train, 3, 5, 0.25, 9), "deterministic");
        assert_eq!(f.len(), 3);
        let label = clusters(&train, 3);
        for fold in &f {
            // 8 cluster traces and 8 takeovers; 2 normals from each other cluster.
            assert_eq!(fold.anomalous.len(), 16);
            assert_eq!(fold.normal.len(), 4);
            assert_eq!(fold.train.len(), 24 - 8 - 4);
            let out = label[train.iter().position(|t| *t == fold.anomalous[0]).unwrap()];
            assert!(fold.train.iter().all(|&i| label[i] != out));
            for t in &fold.normal {
                assert!(!fold.train.iter().any(|&i| train[i] == *t));
            }
            // A takeover starts as a held-out normal trace.
            for t in &fold.anomalous[8..] {
                assert!(fold.normal.iter().any(|n| n[..3] == t[..3]), "{t:?}");
            }
        }
        // A held-out program is foreign to a model of the others.
        let reg = Registry::builtin();
        let a = cv_auc(&reg, &train, &f, "knn", &Params::new());
        assert!(a[0] > 0.9, "{a:?}");
        // Too small clusters make no fold, nor does a single cluster.
        assert!(cluster_folds(&train, 3, 9, 0.25, 9).is_empty());
        assert!(cluster_folds(&train, 1, 1, 0.25, 9).is_empty());
        // A share above 1 holds out each other cluster whole, and panics no more;
        // a holdout of 0 or 1 fits on every other trace.
        let all = cluster_folds(&train, 3, 5, 3.0, 9);
        assert!(all
            .iter()
            .all(|f| f.normal.len() == 16 && f.train.is_empty()));
        let knn = candidates(&reg, "knn,stide");
        let m = member_scores(&reg, &train, &f[0], &knn[0], &Params::new(), 0);
        assert!(m.anomalous.iter().all(|x| x.is_finite()), "{m:?}");
    }

    #[test]
    fn offline_subsets_match_the_ensemble() {
        // The offline combination gives the AUCs of the ensemble trained per fold.
        let train = programs();
        let f = cluster_folds(&train, 3, 5, 0.25, 9);
        let reg = Registry::builtin();
        let params = Params::new();
        let cands = candidates(&reg, "kn,knn,stide.rate");
        let per: Vec<Vec<MemberScores>> = f
            .iter()
            .map(|fold| {
                cands
                    .iter()
                    .map(|m| member_scores(&reg, &train, fold, m, &params, 5))
                    .collect()
            })
            .collect();
        for (subset, name) in [
            (vec![0, 1, 2], "ensemble:kn,knn,stide.rate"),
            (vec![1, 2], "ensemble:knn,stide.rate"),
        ] {
            let folds_auc = subset_auc(&per, &subset);
            let mean: Vec<f64> = (0..COMBINED.len())
                .map(|j| folds_auc.iter().map(|v| v[j]).sum::<f64>() / f.len() as f64)
                .collect();
            let want = cv_auc(&reg, &train, &f, name, &params);
            for j in 0..COMBINED.len() {
                assert!(
                    (mean[j] - want[j]).abs() < 1e-12,
                    "{name} {j}: {mean:?} {want:?}"
                );
            }
        }
        let single = subset_auc(&per, &[0]);
        let want = cv_auc(&reg, &train, &f, "kn", &params)[0];
        let got = single.iter().map(|v| v[0]).sum::<f64>() / f.len() as f64;
        assert!((got - want).abs() < 1e-12);
    }

    #[test]
    fn spearman_by_hand() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ranks (0, 1, 2, 3) against (1.5, 0, 1.5, 3).
        let r = spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 2.0, 5.0]);
        assert!((r - 0.6324555320336759).abs() < 1e-9, "{r}");
    }
}
