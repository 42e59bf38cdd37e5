//! An ensemble: several detectors' trace scores combined into one.
//!
//! The models see different things (kNN the mix of calls, stide rare windows, an HMM
//! or a language model improbable sequences), and their scores live on different
//! scales (a cosine distance, an LFC count, a rate), so they are put on one scale
//! before they are combined. The scale is fitted on normal behaviour the members did
//! not train on: every `holdout`-th training trace is held out, copies of the members
//! are trained on the rest and score the held-out traces, and each member's held-out
//! scores give its normalisation. The members are then retrained on every training
//! trace (so the ensemble's members are as good as the same models alone). A member
//! that holds out training traces of its own (the LM, for early stopping) is
//! normalised on its own held-out scores instead, so it trains once, not twice.
//! Nothing is fitted on test or attack traces.
//!
//! Scores: `mean_z` averages z-scores (score minus the held-out mean, over the
//! held-out standard deviation); `mean_rank` averages each score's rank among the
//! held-out scores (0 to 1, ties counting half); `max_rank` takes the largest rank.
//! `view_rank` and `view_z` weight the *views* rather than the members: members are
//! grouped by what they look at ([`View`]: call sequences, or the mix of calls in
//! the whole trace), each view's members are averaged, then the views are averaged.
//! Several sequence models agree on which traces are unusual, so under an equal
//! weight per member adding one more of them mostly re-weights the ensemble toward
//! that one view; one weight per view keeps the views' balance whatever the count.
//! `mean_leaky` is Kim et al. 2016's blend of thresholding classifiers as an
//! independent reimplementation reads it (weights 1/m, biases the members' medians):
//! the mean over members of `leaky_relu(score - held-out median)` with slope 0.001, so
//! a member votes with its raw excess over a typical normal trace and hardly at all
//! below it (a trace is "highly normal" when every member finds it so); it suits
//! members on one scale (language models' NLLs), not a mix of units.
//! A member is written `name` (its primary score) or `name.score`, e.g.
//! `ensemble:knn,stide.rate`, optionally with parameters of its own that override the
//! shared ones: `ensemble:lm(seed=1),lm(seed=2,hidden=64),stide.rate`. Several copies
//! of one model (different seeds or sizes) are what an ensemble of language models
//! needs (Kim et al. 2016), and the shared `-P` flags cannot tell them apart.
//!
//! Besides the combined scores, the ensemble reports each member's own trace score
//! (named after the member), so one run gives the members' figures without training
//! them a second time.

use serde::{Deserialize, Serialize};

use crate::classic::decode_all;
use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress, TraceResult, TraceStream,
};
use crate::model::Scratch;
use crate::profile::StoredModel;
use crate::registry::{Registry, ENSEMBLE};

/// Parameters the ensemble reads.
pub const PARAMS: [&str; 1] = ["holdout"];
/// The combined scores, before the members' own.
pub const COMBINED: [&str; 6] = [
    "mean_z",
    "mean_rank",
    "max_rank",
    "view_rank",
    "view_z",
    "mean_leaky",
];
/// Slope of `mean_leaky` below a member's median (Kim et al. 2016's leaky ReLU).
pub const LEAKY_SLOPE: f64 = 0.001;
/// Default: every 5th training trace (20%) fits the normalisation.
pub const DEFAULT_HOLDOUT: usize = 5;

/// One member: a registered model, its own parameters, and which of its trace
/// scores to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Canonical model name.
    pub model: String,
    /// Parameters of this member only (they override the shared ones).
    pub params: Params,
    /// Trace score name; `None` for the model's primary score.
    pub score: Option<String>,
}

impl Member {
    /// The member as written canonically: `lm(hidden=64,seed=2).mean_nll`.
    pub fn name(&self) -> String {
        let mut s = self.model.clone();
        let own: Vec<String> = self
            .params
            .names()
            .map(|n| format!("{n}={}", self.params.raw(n).unwrap_or_default()))
            .collect();
        if !own.is_empty() {
            s.push('(');
            s.push_str(&own.join(","));
            s.push(')');
        }
        if let Some(sc) = &self.score {
            s.push('.');
            s.push_str(sc);
        }
        s
    }

    /// The shared parameters overridden by the member's own.
    pub fn merged(&self, shared: &Params) -> Params {
        let mut p = shared.clone();
        for n in self.params.names() {
            p.set(n, self.params.raw(n).unwrap_or_default());
        }
        p
    }
}

/// Splits a member list at `,` or `+` outside parentheses; `None` when parentheses
/// do not balance.
fn split_items(list: &str) -> Option<Vec<&str>> {
    let (mut depth, mut start, mut out) = (0usize, 0, vec![]);
    for (i, ch) in list.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' | '+' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    (depth == 0).then(|| {
        out.push(&list[start..]);
        out
    })
}

/// The member list of an ensemble name (`ensemble:a,b` or `ensemble:a+b`), if it
/// is one.
pub fn members_of(name: &str) -> Option<&str> {
    let (head, rest) = name.split_once(':')?;
    head.eq_ignore_ascii_case(ENSEMBLE).then_some(rest)
}

/// Parses and checks a member list.
pub fn parse_members(reg: &Registry, list: &str) -> Result<Vec<Member>, DetectorError> {
    let err = |msg: String| DetectorError::Param {
        model: ENSEMBLE.into(),
        msg,
    };
    let mut out = vec![];
    let items =
        split_items(list).ok_or_else(|| err(format!("unbalanced parentheses in {list:?}")))?;
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        // `model(params).score`: the parameters may hold dots (lr=0.001), so the
        // score is what follows the closing parenthesis.
        let (head, own, tail) = match item.split_once('(') {
            Some((m, rest)) => {
                let (inner, after) = rest
                    .rsplit_once(')')
                    .ok_or_else(|| err(format!("unbalanced parentheses in {item:?}")))?;
                (m.trim(), Some(inner), after.trim())
            }
            None => match item.split_once('.') {
                Some((m, _)) => (m, None, &item[m.len()..]),
                None => (item, None, ""),
            },
        };
        let score = match tail.strip_prefix('.') {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            None if tail.is_empty() => None,
            _ => {
                return Err(err(format!(
                    "cannot read member {item:?} (write model(p=v).score)"
                )))
            }
        };
        let model = head;
        if members_of(model).is_some() || model.eq_ignore_ascii_case(ENSEMBLE) {
            return Err(err("ensembles do not nest".into()));
        }
        let e = reg.get(model).ok_or_else(|| DetectorError::Unknown {
            name: model.to_string(),
            known: reg
                .entries()
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let params = match own {
            None => Params::new(),
            Some(inner) => {
                let p = Params::parse(inner).map_err(|m| err(format!("{item}: {m}")))?;
                if let Some(bad) = p.names().find(|n| !e.params.iter().any(|k| k == n)) {
                    return Err(err(format!(
                        "{} takes no parameter {bad:?} (it takes {})",
                        e.name,
                        e.params.join(", ")
                    )));
                }
                p
            }
        };
        out.push(Member {
            model: e.name.clone(),
            params,
            score,
        });
    }
    if out.len() < 2 {
        return Err(err(format!(
            "needs at least two members (got {:?}; write ensemble:knn,stide)",
            list
        )));
    }
    let names: Vec<String> = out.iter().map(Member::name).collect();
    if let Some(dup) = repeated(&names) {
        return Err(err(format!(
            "member {dup} twice (identical members score the same; give each its own \
             parameters, e.g. lm(seed=1),lm(seed=2))"
        )));
    }
    Ok(out)
}

/// A name that appears twice in `names` (members name their score columns, so
/// they must differ).
fn repeated(names: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .find(|n| !seen.insert(n.as_str()))
        .map(String::as_str)
}

/// The canonical name of an ensemble of `members`.
pub fn name_of(members: &[Member]) -> String {
    let list: Vec<String> = members.iter().map(Member::name).collect();
    format!("{ENSEMBLE}:{}", list.join(","))
}

/// What a member's model looks at, for the per-view combinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// The order of calls (stide, t-stide, pairs, Markov, kn, HMM, LM).
    Sequence,
    /// The mix of calls over the whole trace, order ignored (kNN).
    Mix,
}

impl View {
    /// The view of a registered model (by canonical name): kNN's bag of n-grams is
    /// the one model that scores the whole trace's mix; every other model scores
    /// calls in their sequence.
    pub fn of(model: &str) -> View {
        if model.eq_ignore_ascii_case("knn") {
            View::Mix
        } else {
            View::Sequence
        }
    }
}

/// A member's fitted normalisation: its scores on held-out normal traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    mean: f64,
    std: f64,
    /// Held-out scores, sorted.
    held: Vec<f64>,
}

/// The combined scores ([`COMBINED`], in that order) of members' `picked` scores,
/// each with its normalisation and view. The one definition the ensemble and the
/// model-selection cross-validation (`homeostat_eval::cv`) both use.
pub fn combine(norms: &[&Norm], views: &[View], picked: &[f64]) -> Vec<f64> {
    let n = norms.len().max(1) as f64;
    let (mut z, mut r, mut rmax, mut leaky) = (0.0, 0.0, f64::MIN, 0.0);
    // Per view: (sum of ranks, sum of z, members).
    let mut per = [(0.0, 0.0, 0usize); 2];
    for ((norm, view), &s) in norms.iter().zip(views).zip(picked) {
        let (zs, rank) = (norm.z(s), norm.rank(s));
        let over = s - norm.median();
        leaky += if over > 0.0 { over } else { LEAKY_SLOPE * over };
        z += zs;
        r += rank;
        rmax = rmax.max(rank);
        let v = &mut per[*view as usize];
        v.0 += rank;
        v.1 += zs;
        v.2 += 1;
    }
    let present: Vec<_> = per.iter().filter(|v| v.2 > 0).collect();
    let views_n = present.len().max(1) as f64;
    let view_rank = present.iter().map(|v| v.0 / v.2 as f64).sum::<f64>() / views_n;
    let view_z = present.iter().map(|v| v.1 / v.2 as f64).sum::<f64>() / views_n;
    vec![z / n, r / n, rmax, view_rank, view_z, leaky / n]
}

impl Norm {
    /// Fits the normalisation to held-out scores.
    pub fn fit(mut held: Vec<f64>) -> Self {
        held.sort_by(f64::total_cmp);
        let n = held.len().max(1) as f64;
        let mean = held.iter().sum::<f64>() / n;
        let var = held.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Norm {
            mean,
            std: var.sqrt(),
            held,
        }
    }

    /// The z-score of `s` against the held-out scores.
    pub fn z(&self, s: f64) -> f64 {
        // A member whose held-out scores are all equal (stide's LFC is often 0 on
        // normal traces) would divide by zero; a floor keeps its step finite.
        (s - self.mean) / self.std.max(1e-3 * self.mean.abs()).max(1e-9)
    }

    /// The median of the held-out scores (0 without any).
    pub fn median(&self) -> f64 {
        let n = self.held.len();
        match n {
            0 => 0.0,
            _ if n % 2 == 1 => self.held[n / 2],
            _ => (self.held[n / 2 - 1] + self.held[n / 2]) / 2.0,
        }
    }

    /// The rank of `s` among the held-out scores (0..1, ties count half).
    pub fn rank(&self, s: f64) -> f64 {
        if self.held.is_empty() {
            return 0.5;
        }
        let below = self.held.partition_point(|&x| x < s);
        let upto = self.held.partition_point(|&x| x <= s);
        (below + upto) as f64 / (2 * self.held.len()) as f64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberStored {
    model: StoredModel,
    score: String,
    norm: Norm,
}

/// The payload before members had parameters of their own (still loaded).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredV1 {
    holdout: usize,
    members: Vec<MemberStored>,
}

/// First field of the current payload: a value no [`StoredV1`] starts with (its
/// first field, `holdout`, is at most 100), so the two layouts cannot be confused
/// and a truncated current payload is an error, not an old one.
const MARK_V2: u32 = 0xE45E_0002;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    mark: u32,
    holdout: usize,
    members: Vec<MemberStored>,
    /// Each member as written (`lm(seed=2).mean_nll`), naming its score column.
    labels: Vec<String>,
}

#[derive(Debug)]
struct Part {
    detector: Box<dyn Detector>,
    score: String,
    index: usize,
    norm: Norm,
    label: String,
    view: View,
}

/// A trained ensemble.
#[derive(Debug)]
pub struct Ensemble {
    holdout: usize,
    parts: Vec<Part>,
}

fn score_index(d: &dyn Detector, score: Option<&str>) -> Result<(usize, String), DetectorError> {
    let names = d.score_names();
    match score {
        None => names
            .first()
            .map(|s| (0, s.clone()))
            .ok_or_else(|| DetectorError::Param {
                model: ENSEMBLE.into(),
                msg: format!("{} has no trace score", d.kind()),
            }),
        Some(s) => names
            .iter()
            .position(|n| n == s)
            .map(|i| (i, s.to_string()))
            .ok_or_else(|| DetectorError::Param {
                model: ENSEMBLE.into(),
                msg: format!(
                    "{} has no score {s:?} (it has {})",
                    d.kind(),
                    names.join(", ")
                ),
            }),
    }
}

impl Ensemble {
    fn combine(&self, picked: &[f64]) -> Vec<f64> {
        let norms: Vec<&Norm> = self.parts.iter().map(|p| &p.norm).collect();
        let views: Vec<View> = self.parts.iter().map(|p| p.view).collect();
        let mut out = combine(&norms, &views, picked);
        out.extend_from_slice(picked);
        out
    }
}

struct EnsembleStream<'a> {
    model: &'a Ensemble,
    streams: Vec<Box<dyn TraceStream + 'a>>,
}

impl TraceStream for EnsembleStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        self.streams
            .iter_mut()
            .map(|s| s.call(call))
            .fold(0.0, f64::max)
    }
    fn finish(self: Box<Self>) -> TraceResult {
        let m = self.model;
        let mut calls = 0;
        let picked: Vec<f64> = self
            .streams
            .into_iter()
            .zip(&m.parts)
            .map(|(s, p)| {
                let r = s.finish();
                calls = r.calls;
                r.scores.get(p.index).copied().unwrap_or(0.0)
            })
            .collect();
        TraceResult {
            calls,
            anomalies: None,
            scores: m.combine(&picked),
        }
    }
}

impl Detector for Ensemble {
    fn kind(&self) -> &str {
        ENSEMBLE
    }
    fn describe(&self) -> String {
        let m: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{}.{}", p.detector.kind(), p.score))
            .collect();
        format!("{} holdout 1/{}", m.join("+"), self.holdout)
    }
    fn score_names(&self) -> Vec<String> {
        let mut v: Vec<String> = COMBINED.iter().map(|s| s.to_string()).collect();
        v.extend(self.parts.iter().map(|p| p.label.clone()));
        v
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        let picked: Vec<f64> = self
            .parts
            .iter()
            .map(|p| {
                let r = p.detector.score_trace(calls, scratch);
                r.scores.get(p.index).copied().unwrap_or(0.0)
            })
            .collect();
        scratch.anomalies.clear();
        TraceResult {
            calls: calls.len() as u64,
            anomalies: None,
            scores: self.combine(&picked),
        }
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(EnsembleStream {
            model: self,
            streams: self.parts.iter().map(|p| p.detector.stream()).collect(),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.parts.first().map_or(0, |p| p.detector.trained_calls())
    }
    fn profile_size(&self) -> usize {
        self.parts.len()
    }
    fn size_unit(&self) -> &'static str {
        "member models"
    }
    fn save(&self) -> Vec<u8> {
        let stored = Stored {
            mark: MARK_V2,
            holdout: self.holdout,
            members: self
                .parts
                .iter()
                .map(|p| MemberStored {
                    model: StoredModel {
                        kind: p.detector.kind().to_string(),
                        payload: p.detector.save(),
                    },
                    score: p.score.clone(),
                    norm: p.norm.clone(),
                })
                .collect(),
            labels: self.parts.iter().map(|p| p.label.clone()).collect(),
        };
        postcard::to_allocvec(&stored).expect("serialising plain data into a Vec cannot fail")
    }
}

struct EnsembleBuilder {
    members: Vec<Member>,
    holdout: usize,
    /// Members trained on the traces not held out, to fit the normalisation.
    fit: Vec<Box<dyn DetectorBuilder>>,
    /// Members trained on every trace.
    full: Vec<Box<dyn DetectorBuilder>>,
    held: Vec<Vec<u32>>,
    seen: usize,
}

/// An untrained ensemble of the members in `list`.
pub fn builder(
    reg: &Registry,
    list: &str,
    params: &Params,
) -> Result<Box<dyn DetectorBuilder>, DetectorError> {
    let members = parse_members(reg, list)?;
    let holdout = params.get(ENSEMBLE, "holdout", DEFAULT_HOLDOUT)?;
    if !(2..=100).contains(&holdout) {
        return Err(DetectorError::Param {
            model: ENSEMBLE.into(),
            msg: format!("holdout={holdout} out of range 2..=100 (1 in N traces held out)"),
        });
    }
    let make = || {
        members
            .iter()
            .map(|m| reg.builder(&m.model, &m.merged(params)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Box::new(EnsembleBuilder {
        fit: make()?,
        full: make()?,
        members,
        holdout,
        held: vec![],
        seen: 0,
    }))
}

impl DetectorBuilder for EnsembleBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        for b in &mut self.full {
            b.add_trace(calls);
        }
        if self.seen % self.holdout == self.holdout - 1 {
            self.held.push(calls.to_vec());
        } else {
            for b in &mut self.fit {
                b.add_trace(calls);
            }
        }
        self.seen += 1;
    }

    fn build(self: Box<Self>, progress: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        if self.held.is_empty() {
            return Err(DetectorError::Train {
                model: ENSEMBLE.into(),
                msg: format!(
                    "needs at least {} training traces to hold some out",
                    self.holdout
                ),
            });
        }
        let mut parts = vec![];
        let mut scratch = Scratch::default();
        for ((m, fit), full) in self.members.iter().zip(self.fit).zip(self.full) {
            let detector = full.build(progress)?;
            let (index, score) = score_index(detector.as_ref(), m.score.as_deref())?;
            // A member that held out traces of its own (never fitted on them) is
            // normalised on those; the others through a copy trained without ours.
            let own: Option<Vec<f64>> = detector.held_out_scores().map(|rows| {
                rows.iter()
                    .map(|r| r.get(index).copied().unwrap_or(0.0))
                    .collect()
            });
            let held = match own {
                Some(v) if !v.is_empty() => v,
                _ => {
                    let fitted = fit.build(progress)?;
                    self.held
                        .iter()
                        .map(|t| {
                            let r = fitted.score_trace(t, &mut scratch);
                            r.scores.get(index).copied().unwrap_or(0.0)
                        })
                        .collect()
                }
            };
            parts.push(Part {
                detector,
                score,
                index,
                norm: Norm::fit(held),
                label: m.name(),
                view: View::of(&m.model),
            });
        }
        Ok(Box::new(Ensemble {
            holdout: self.holdout,
            parts,
        }))
    }
}

/// Rebuilds a trained ensemble, loading each member through the registry.
pub fn load(reg: &Registry, payload: &[u8]) -> Result<Box<dyn Detector>, DetectorError> {
    let corrupt = |msg: String| DetectorError::Corrupt {
        model: ENSEMBLE.into(),
        msg,
    };
    let v2 = matches!(postcard::take_from_bytes::<u32>(payload), Ok((MARK_V2, _)));
    let stored: Stored = if v2 {
        decode_all(payload).map_err(corrupt)?
    } else {
        let v1: StoredV1 = decode_all(payload).map_err(corrupt)?;
        Stored {
            mark: MARK_V2,
            labels: v1
                .members
                .iter()
                .map(|m| format!("{}.{}", m.model.kind, m.score))
                .collect(),
            holdout: v1.holdout,
            members: v1.members,
        }
    };
    if stored.members.len() < 2 || stored.labels.len() != stored.members.len() {
        return Err(corrupt(
            "fewer than two members, or labels not one per member".into(),
        ));
    }
    // Before members had parameters, two copies of one model were legal (and
    // identical); such files still load.
    if let Some(dup) = repeated(&stored.labels).filter(|_| v2) {
        return Err(corrupt(format!("member {dup} twice")));
    }
    let mut parts = vec![];
    for (m, label) in stored.members.into_iter().zip(stored.labels) {
        if m.model.kind == ENSEMBLE {
            return Err(corrupt("nested ensemble".into()));
        }
        let detector = reg.load(&m.model)?;
        let (index, score) =
            score_index(detector.as_ref(), Some(&m.score)).map_err(|e| corrupt(e.to_string()))?;
        if m.norm.held.iter().any(|x| !x.is_finite()) || !m.norm.std.is_finite() {
            return Err(corrupt("non-finite normalisation".into()));
        }
        let view = View::of(&m.model.kind);
        parts.push(Part {
            detector,
            score,
            index,
            norm: m.norm,
            label,
            view,
        });
    }
    Ok(Box::new(Ensemble {
        holdout: stored.holdout,
        parts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_z_scores_by_hand() {
        let n = Norm::fit(vec![3.0, 1.0, 2.0, 2.0]);
        assert_eq!(n.held, vec![1.0, 2.0, 2.0, 3.0]);
        assert_eq!(n.mean, 2.0);
        assert!((n.std - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(n.rank(0.0), 0.0);
        assert_eq!(n.rank(2.0), 0.5); // one below, two tied: (1 + 3) / 8
        assert_eq!(n.rank(9.0), 1.0);
        assert!((n.z(3.0) - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn view_scores_weight_each_view_once() {
        // Three sequence members and one mix member: the mix member's rank weighs
        // 1/4 in mean_rank but 1/2 in view_rank.
        let n = Norm::fit(vec![0.0, 1.0, 2.0, 3.0]);
        let norms = [&n, &n, &n, &n];
        let views = [View::Sequence, View::Sequence, View::Sequence, View::Mix];
        let c = combine(&norms, &views, &[0.0, 0.0, 0.0, 9.0]);
        // Ranks 1/8 (three times, ties half) and 1.
        assert!((c[1] - (3.0 * 0.125 + 1.0) / 4.0).abs() < 1e-12, "{c:?}");
        assert_eq!(c[2], 1.0);
        assert!((c[3] - (0.125 + 1.0) / 2.0).abs() < 1e-12, "{c:?}");
        let z = |s: f64| n.z(s);
        assert!((c[4] - (z(0.0) + z(9.0)) / 2.0).abs() < 1e-12, "{c:?}");
        // One view only: the per-view scores are the plain means.
        let c = combine(&norms[..2], &views[..2], &[1.0, 3.0]);
        assert_eq!(c[3], c[1]);
        assert_eq!(c[4], c[0]);
        assert_eq!(View::of("knn"), View::Mix);
        // mean_leaky: excess over each member's median (here 1.5), a thousandth of
        // it below: (7.5 + 0.001 * -1.5) / 2.
        assert_eq!(n.median(), 1.5);
        assert!((c[5] - (-0.5 * 0.001 + 1.5) / 2.0).abs() < 1e-12, "{c:?}");
        let c = combine(&norms[..2], &views[..2], &[9.0, 0.0]);
        assert!((c[5] - (7.5 - 0.0015) / 2.0).abs() < 1e-12, "{c:?}");
        assert_eq!(Norm::fit(vec![4.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(View::of("kn"), View::Sequence);
    }

    #[test]
    fn members_parse_and_are_checked() {
        let r = Registry::builtin();
        let m = parse_members(&r, "knn,t-stide.rate").unwrap();
        assert_eq!(name_of(&m), "ensemble:knn,tstide.rate");
        assert_eq!(parse_members(&r, "knn+stide").unwrap().len(), 2);
        assert!(parse_members(&r, "knn").is_err());
        assert!(parse_members(&r, "knn,bogus").is_err());
        assert!(parse_members(&r, "knn,ensemble:knn").is_err());
        // Members with parameters of their own; commas inside parentheses stay.
        let m = parse_members(&r, "knn(k=3,n=2).relative,knn(k=1),stide.rate").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].params.raw("k"), Some("3"));
        assert_eq!(m[0].score.as_deref(), Some("relative"));
        assert_eq!(m[1].score, None);
        assert_eq!(
            name_of(&m),
            "ensemble:knn(k=3,n=2).relative,knn(k=1),stide.rate"
        );
        let bad = |l: &str| parse_members(&r, l).unwrap_err().to_string();
        assert!(
            bad("knn(k=3,stide").contains("unbalanced"),
            "{}",
            bad("knn(k=3,stide")
        );
        assert!(bad("knn(states=3),stide").contains("takes no parameter \"states\""));
        assert!(bad("knn(k),stide").contains("not name=value"));
        assert!(bad("knn(k=1)x,stide").contains("cannot read member"));
        // The same member twice scores the same twice, and its two score columns
        // share one name (JSON output kept one of them).
        assert!(bad("kn(order=2),kn(order=2)").contains("twice"));
        assert!(bad("stide,knn,Stide").contains("twice"));
        assert!(bad("kn(order=2,discount=0.5),kn(discount=0.5,order=2)").contains("twice"));
        assert_eq!(
            parse_members(&r, "kn(order=2),kn(order=3)").unwrap().len(),
            2
        );
    }

    #[test]
    fn members_take_their_own_parameters_and_report_their_scores() {
        let r = Registry::builtin();
        // Shared n=1; the second member overrides it. Different settings, different
        // scores, each reported under its member's name after the combined ones.
        let name = "ensemble:knn,knn(n=3),stide.rate";
        let mut b = r.builder(name, &Params::parse("n=1").unwrap()).unwrap();
        for i in 0..20u32 {
            let t: Vec<u32> = (0..60).map(|j| (i * j + j / 3) % 6 + 1).collect();
            b.add_trace(&t);
        }
        let e = b.build(&|_, _| {}).unwrap();
        let mut want = COMBINED.to_vec();
        want.extend(["knn", "knn(n=3)", "stide.rate"]);
        assert_eq!(e.score_names(), want);
        assert!(e.describe().contains("n=1..1") || e.describe().contains("knn"));
        let probe = [1u32, 2, 3, 4, 1, 2, 5, 6, 6, 1, 3, 3, 2];
        let mut s = Scratch::default();
        let got = e.score_trace(&probe, &mut s).scores;
        let c = COMBINED.len();
        assert_eq!(got.len(), c + 3);
        let mut one = |n: &str| {
            let mut b = r.builder("knn", &Params::parse(n).unwrap()).unwrap();
            for i in 0..20u32 {
                let t: Vec<u32> = (0..60).map(|j| (i * j + j / 3) % 6 + 1).collect();
                b.add_trace(&t);
            }
            b.build(&|_, _| {})
                .unwrap()
                .score_trace(&probe, &mut s)
                .scores[0]
        };
        assert_eq!(got[c], one("n=1"));
        assert_eq!(got[c + 1], one("n=3"));
        assert_ne!(got[c], got[c + 1]);
        // The profile keeps the members' names; the stream agrees.
        let d = load(&r, &e.save()).unwrap();
        assert_eq!(d.score_names(), e.score_names());
        let mut st = d.stream();
        for &c in &probe {
            st.call(c);
        }
        assert_eq!(st.finish().scores, got);
    }

    #[test]
    fn payloads_without_member_labels_still_load() {
        let r = Registry::builtin();
        let mut b = r
            .builder("ensemble:knn,stide.rate", &Params::new())
            .unwrap();
        for i in 0..10u32 {
            b.add_trace(&(0..30).map(|j| (i + j) % 5 + 1).collect::<Vec<_>>());
        }
        let e = b.build(&|_, _| {}).unwrap();
        let new: Stored = decode_all(&e.save()).unwrap();
        // A current payload naming one member twice is damaged.
        let mut twice = new.clone();
        twice.labels[1] = twice.labels[0].clone();
        let twice = postcard::to_allocvec(&twice).unwrap();
        assert!(load(&r, &twice).unwrap_err().to_string().contains("twice"));
        let old = postcard::to_allocvec(&StoredV1 {
            holdout: new.holdout,
            members: new.members,
        })
        .unwrap();
        let d = load(&r, &old).unwrap();
        assert_eq!(
            d.score_names()[COMBINED.len()..],
            ["knn.distance", "stide.rate"]
        );
        let mut s = Scratch::default();
        assert_eq!(
            d.score_trace(&[1, 2, 9], &mut s).scores[..3],
            e.score_trace(&[1, 2, 9], &mut s).scores[..3]
        );
    }

    #[test]
    fn a_held_out_fit_that_separates_a_foreign_trace() {
        let r = Registry::builtin();
        let mut b = r
            .builder("ensemble:knn,stide.rate", &Params::new())
            .unwrap();
        for i in 0..20u32 {
            let t: Vec<u32> = (0..60).map(|j| (i + j) % 5 + 1).collect();
            b.add_trace(&t);
        }
        let e = b.build(&|_, _| {}).unwrap();
        let mut s = Scratch::default();
        let normal: Vec<u32> = (0..60).map(|j| (j + 2) % 5 + 1).collect();
        let foreign: Vec<u32> = (0..60).map(|j| (j * 7) % 11 + 1).collect();
        let a = e.score_trace(&normal, &mut s).scores;
        let f = e.score_trace(&foreign, &mut s).scores;
        for i in 0..3 {
            assert!(f[i] > a[i], "score {i}: normal {a:?} foreign {f:?}");
        }
        // Bad member score names are named.
        let mut b = r.builder("ensemble:knn,stide.nll", &Params::new()).unwrap();
        for _ in 0..10 {
            b.add_trace(&[1, 2, 3]);
        }
        let err = b.build(&|_, _| {}).unwrap_err().to_string();
        assert!(err.contains("no score \"nll\""), "{err}");
    }
}
