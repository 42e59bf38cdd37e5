//! Train a model on a dataset's training traces, score every test trace, and turn the
//! scores into the figures a researcher compares detectors by.

use std::collections::BTreeMap;
use std::time::Instant;

use homeostat_core::detector::Progress;
use homeostat_core::locality::first_alarm;
use homeostat_core::{Anomaly, Detector, DetectorError, Params, Registry, Scratch};
use homeostat_traces::Trace;
use serde::Serialize;

use crate::metrics::{at_far, auc, median, roc, OperatingPoint};

/// A test trace and its label.
#[derive(Debug, Clone)]
pub struct LabelledTrace {
    /// The trace.
    pub trace: Trace,
    /// `None` for normal behaviour, else the attack type.
    pub attack: Option<String>,
}

/// What an evaluation runs on.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Name for reports (e.g. "ADFA-LD").
    pub name: String,
    /// Architecture of the call numbers.
    pub arch: String,
    /// Normal traces to train on.
    pub train: Vec<Trace>,
    /// Normal traces that only set the alarm threshold (LID-DS protocol); usually empty.
    pub threshold: Vec<Trace>,
    /// Labelled test traces.
    pub test: Vec<LabelledTrace>,
}

impl Dataset {
    /// Calls in the test traces.
    pub fn test_calls(&self) -> u64 {
        self.test.iter().map(|t| t.trace.calls.len() as u64).sum()
    }

    /// Attack types present, sorted.
    pub fn attack_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.test.iter().filter_map(|t| t.attack.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads that test traces in parallel (timing is reported with this count).
    pub threads: usize,
    /// False-alarm limits to report detection rates at.
    pub fars: Vec<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: 1,
            fars: vec![0.01, 0.05, 0.1],
        }
    }
}

/// Figures for one trace score (max LFC or mismatch rate).
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    /// ROC area (Mann-Whitney, ties 0.5); null without normal or attack traces.
    pub auc: Option<f64>,
    /// Detection rate at each false-alarm limit, keyed by the limit ("0.01", ...).
    pub dr_at_far: BTreeMap<String, f64>,
    /// The threshold chosen for each limit (null: no threshold meets it but "never").
    pub threshold_at_far: BTreeMap<String, Option<f64>>,
    /// The false-alarm rate actually reached at that threshold.
    pub far_at_threshold: BTreeMap<String, f64>,
    /// ROC curve points (false-alarm rate, detection rate), for plots.
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
}

/// The same figures restricted to one attack type (normals shared).
#[derive(Debug, Clone, Serialize)]
pub struct AttackTypeReport {
    /// Attack traces of this type.
    pub traces: usize,
    /// Figures per trace score (flattened: `per_attack.<type>.<score>` in JSON).
    #[serde(flatten)]
    pub scores: BTreeMap<String, ScoreReport>,
}

/// How quickly an online monitor would react at the 1% false-alarm LFC threshold.
#[derive(Debug, Clone, Serialize)]
pub struct DelayReport {
    /// The score the delay is measured on (LFC is the online one).
    pub score: &'static str,
    /// The false-alarm limit whose threshold is used.
    pub far: f64,
    /// LFC threshold (null when no finite threshold meets the limit).
    pub threshold: Option<f64>,
    /// Attack traces detected at that threshold.
    pub detected: usize,
    /// Median number of calls up to and including the first alarm.
    pub median_calls: Option<f64>,
}

/// Results at a threshold fixed on held-out normal traces (LID-DS protocol).
#[derive(Debug, Clone, Serialize)]
pub struct FixedThreshold {
    /// Threshold = highest score among the threshold traces; alarm when score > it.
    pub threshold: f64,
    /// False-alarm rate on the test normals.
    pub far: f64,
    /// Detection rate on the attacks.
    pub dr: f64,
}

/// Everything measured for one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Model name (canonical, e.g. `tstide`, `ensemble:knn,stide.rate`).
    pub model: String,
    /// The model's configuration, e.g. `w=6 L=20`.
    pub config: String,
    /// Size of the trained model.
    pub profile_size: usize,
    /// What `profile_size` counts.
    pub size_unit: String,
    /// Training traces.
    pub train_traces: usize,
    /// Training calls.
    pub train_calls: u64,
    /// Wall time to train and finish the profile.
    pub train_seconds: f64,
    /// Test traces.
    pub test_traces: usize,
    /// Test calls scored.
    pub test_calls: u64,
    /// Wall time to score every test trace.
    pub test_seconds: f64,
    /// Threads used for testing.
    pub threads: usize,
    /// Test calls scored per second of `test_seconds`.
    pub calls_per_second: f64,
    /// The model's trace scores, primary first.
    pub score_names: Vec<String>,
    /// Figures per trace score (e.g. "max_lfc" and "rate").
    pub scores: BTreeMap<String, ScoreReport>,
    /// Figures per attack type.
    pub per_attack: BTreeMap<String, AttackTypeReport>,
    /// Detection delay at the 1% false-alarm LFC threshold (models with per-call
    /// anomalies and a locality frame only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_delay: Option<DelayReport>,
    /// Results at a threshold fixed on held-out normals, when the dataset has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_threshold: Option<BTreeMap<String, FixedThreshold>>,
}

impl ModelReport {
    /// The figures of the model's primary (first) score.
    pub fn primary(&self) -> &ScoreReport {
        &self.scores[&self.score_names[0]]
    }
}

/// One test trace's outcome.
struct Scored {
    scores: Vec<f64>,
    /// Kept for attack traces only, to measure detection delay.
    anomalies: Option<Vec<Anomaly>>,
}

fn far_key(f: f64) -> String {
    format!("{f}")
}

fn score_report(normal: &[f64], attack: &[f64], fars: &[f64], integer: bool) -> ScoreReport {
    let mut r = ScoreReport {
        auc: auc(normal, attack),
        dr_at_far: BTreeMap::new(),
        threshold_at_far: BTreeMap::new(),
        far_at_threshold: BTreeMap::new(),
        roc: roc(normal, attack),
    };
    for &f in fars {
        let OperatingPoint { threshold, far, dr } = at_far(normal, attack, f, integer);
        r.dr_at_far.insert(far_key(f), dr);
        r.threshold_at_far
            .insert(far_key(f), threshold.is_finite().then_some(threshold));
        r.far_at_threshold.insert(far_key(f), far);
    }
    r
}

/// Scores traces on `threads` threads, preserving order; `progress` gets call counts.
fn score_all(
    model: &dyn Detector,
    traces: &[&Trace],
    keep: &[bool],
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Scored> {
    let run = |chunk: &[&Trace], keep: &[bool]| -> Vec<Scored> {
        let mut scratch = Scratch::default();
        let mut out = Vec::with_capacity(chunk.len());
        let mut pending = 0u64;
        for (t, &k) in chunk.iter().zip(keep) {
            let r = model.score_trace(&t.calls, &mut scratch);
            out.push(Scored {
                scores: r.scores,
                anomalies: k.then(|| scratch.anomalies.clone()),
            });
            pending += t.calls.len() as u64;
            if pending > 1 << 20 {
                progress(pending);
                pending = 0;
            }
        }
        progress(pending);
        out
    };
    if threads <= 1 || traces.len() < 2 {
        return run(traces, keep);
    }
    let per = traces.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = traces
            .chunks(per)
            .zip(keep.chunks(per))
            .map(|(c, k)| s.spawn(move || run(c, k)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("scoring thread panicked"))
            .collect()
    })
}

/// Trains the model `name` (any model `reg` knows, with `params`) on the dataset's
/// training traces and evaluates it. `train_progress` gets the model's own training
/// progress, `progress` the test calls scored.
pub fn evaluate(
    ds: &Dataset,
    reg: &Registry,
    name: &str,
    params: &Params,
    opts: &Options,
    train_progress: Progress<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ModelReport, DetectorError> {
    let t0 = Instant::now();
    let mut builder = reg.builder(name, params)?;
    for t in &ds.train {
        builder.add_trace(&t.calls);
    }
    let model = builder.build(train_progress)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let model = model.as_ref();

    let traces: Vec<&Trace> = ds.test.iter().map(|t| &t.trace).collect();
    let keep: Vec<bool> = ds.test.iter().map(|t| t.attack.is_some()).collect();
    let none = vec![false; traces.len()];
    let threads = opts.threads.max(1);
    // One untimed pass first, as a benchmark warms up, then the median of three timed
    // passes: a single ~10 ms pass varies by 30% on a shared 2-core machine. Slow
    // models (a full pass over a second) are timed once: their variation is small.
    let t = Instant::now();
    let mut scored = score_all(model, &traces, &none, threads, &|_| {});
    let mut times = vec![t.elapsed().as_secs_f64()];
    if times[0] < 1.0 {
        times.clear();
        for pass in 0..3 {
            let t = Instant::now();
            scored = if pass == 2 {
                score_all(model, &traces, &keep, threads, progress)
            } else {
                score_all(model, &traces, &none, threads, &|_| {})
            };
            times.push(t.elapsed().as_secs_f64());
        }
    } else {
        progress(ds.test_calls());
        if model.locality().is_some() {
            scored = score_all(model, &traces, &keep, threads, &|_| {});
        }
    }
    let test_seconds = median(&mut times).unwrap_or(0.0);
    let test_calls = ds.test_calls();

    let score_names = model.score_names();
    let split = |i: usize, want: Option<&str>| -> Vec<f64> {
        ds.test
            .iter()
            .zip(&scored)
            .filter(|(t, _)| match want {
                None => t.attack.is_none(),
                Some("*") => t.attack.is_some(),
                Some(ty) => t.attack.as_deref() == Some(ty),
            })
            .map(|(_, s)| s.scores.get(i).copied().unwrap_or(0.0))
            .collect()
    };
    // Integer scores (counts) take thresholds between integers.
    let integer = |n: &str| n == "max_lfc";
    let mut scores = BTreeMap::new();
    let mut normals = vec![];
    let mut attacks = vec![];
    for (i, n) in score_names.iter().enumerate() {
        let (normal, attack) = (split(i, None), split(i, Some("*")));
        scores.insert(
            n.clone(),
            score_report(&normal, &attack, &opts.fars, integer(n)),
        );
        normals.push(normal);
        attacks.push(attack);
    }

    let mut per_attack = BTreeMap::new();
    for ty in ds.attack_types() {
        let mut m = BTreeMap::new();
        let mut traces = 0;
        for (i, n) in score_names.iter().enumerate() {
            let a = split(i, Some(&ty));
            traces = a.len();
            m.insert(
                n.clone(),
                score_report(&normals[i], &a, &opts.fars, integer(n)),
            );
        }
        per_attack.insert(ty, AttackTypeReport { traces, scores: m });
    }

    let delay_far = 0.01;
    let detection_delay = match (model.locality(), score_names.first()) {
        (Some(locality), Some(first)) if first == "max_lfc" => {
            let op = at_far(&normals[0], &attacks[0], delay_far, true);
            let mut delays: Vec<f64> = if op.threshold.is_finite() {
                scored
                    .iter()
                    .filter_map(|s| s.anomalies.as_ref())
                    .filter_map(|a| first_alarm(a, locality, op.threshold as u32))
                    .map(|a| f64::from(a.pos) + 1.0)
                    .collect()
            } else {
                vec![]
            };
            Some(DelayReport {
                score: "max_lfc",
                far: delay_far,
                threshold: op.threshold.is_finite().then_some(op.threshold),
                detected: delays.len(),
                median_calls: median(&mut delays),
            })
        }
        _ => None,
    };

    let fixed_threshold = (!ds.threshold.is_empty()).then(|| {
        let held: Vec<&Trace> = ds.threshold.iter().collect();
        let keep = vec![false; held.len()];
        let held = score_all(model, &held, &keep, threads, &|_| {});
        let mut m = BTreeMap::new();
        for (i, name) in score_names.iter().enumerate() {
            let threshold = held
                .iter()
                .map(|s| s.scores.get(i).copied().unwrap_or(0.0))
                .fold(f64::MIN, f64::max);
            let above = |v: &[f64]| {
                v.iter().filter(|&&s| s > threshold).count() as f64 / v.len().max(1) as f64
            };
            m.insert(
                name.clone(),
                FixedThreshold {
                    threshold,
                    far: above(&normals[i]),
                    dr: above(&attacks[i]),
                },
            );
        }
        m
    });

    Ok(ModelReport {
        model: reg.canonical(name)?,
        config: model.describe(),
        profile_size: model.profile_size(),
        size_unit: model.size_unit().to_string(),
        train_traces: ds.train.len(),
        train_calls: model.trained_calls(),
        train_seconds,
        test_traces: ds.test.len(),
        test_calls,
        test_seconds,
        threads,
        calls_per_second: if test_seconds > 0.0 {
            test_calls as f64 / test_seconds
        } else {
            0.0
        },
        score_names,
        scores,
        per_attack,
        detection_delay,
        fixed_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::ModelKind;

    fn trace(id: &str, calls: &[u32]) -> Trace {
        Trace {
            id: id.to_string(),
            calls: calls.to_vec(),
        }
    }

    #[test]
    fn separable_toy_dataset() {
        let normal: Vec<u32> = [1, 2, 3, 4].repeat(20);
        let mut attack = normal.clone();
        attack.splice(30..30, [9, 9, 9, 9, 9, 9, 9, 9]);
        let ds = Dataset {
            name: "toy".into(),
            arch: "x86_64".into(),
            train: vec![trace("n0", &normal)],
            threshold: vec![],
            test: vec![
                LabelledTrace {
                    trace: trace("n1", &normal),
                    attack: None,
                },
                LabelledTrace {
                    trace: trace("a1", &attack),
                    attack: Some("inject".into()),
                },
            ],
        };
        let reg = Registry::builtin();
        for kind in ModelKind::ALL {
            let r = evaluate(
                &ds,
                &reg,
                kind.name(),
                &Params::new(),
                &Options::default(),
                &|_, _| {},
                &|_| {},
            )
            .unwrap();
            assert_eq!(r.scores["max_lfc"].auc, Some(1.0), "{kind}");
            assert_eq!(r.scores["max_lfc"].dr_at_far["0.01"], 1.0, "{kind}");
            assert_eq!(r.per_attack["inject"].traces, 1);
            let delay = r.detection_delay.as_ref().unwrap();
            assert_eq!(delay.detected, 1);
            // The first foreign call is call 31 (index 30); the threshold is 1 anomaly.
            assert_eq!(delay.median_calls, Some(31.0), "{kind}");
            assert_eq!(r.test_calls, (normal.len() + attack.len()) as u64);
        }
    }
}
