//! Trace-level detectors: the interface every model offers to evaluation and scanning,
//! whatever it keeps per task.
//!
//! The classic models share one per-task state, the [`Cursor`](crate::Cursor), which
//! is what lets the launcher and the daemon keep one per task without knowing the
//! model. Newer models do not fit it: a hidden Markov model carries a state
//! distribution, a neural language model a hidden vector, a frequency model a count
//! vector. So evaluation and `scan` talk to a [`Detector`]: it scores a whole trace
//! ([`Detector::score_trace`]) or streams one ([`Detector::stream`], a boxed
//! [`TraceStream`] that owns whatever state the model needs), and names the trace
//! scores it produces (max LFC, rate, mean NLL, distance...). Training goes through a
//! [`DetectorBuilder`], which may buffer traces (Baum-Welch and gradient descent need
//! several passes) and reports progress.
//!
//! The classic models implement it through their tuned whole-trace loops (see
//! [`crate::classic`]), so the abstraction costs one virtual call per trace, not per
//! system call. Crates outside the core add models by registering them in a
//! [`Registry`](crate::registry::Registry); profiles store any model as a kind tag and
//! an opaque payload the model's crate encodes.

use std::collections::BTreeMap;
use std::fmt;

use crate::classic::AnyModel;
use crate::model::{Scratch, SpecError};

/// What scoring one trace produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceResult {
    /// System calls in the trace.
    pub calls: u64,
    /// Anomalous test units, for models that judge units one by one (`None` for
    /// whole-trace models such as kNN).
    pub anomalies: Option<u64>,
    /// One value per name in [`Detector::score_names`]; higher is more anomalous.
    pub scores: Vec<f64>,
}

/// One trace's scoring state, fed call by call with bounded memory.
pub trait TraceStream: Send {
    /// Scores the next call; returns its anomaly score (0 = normal): failed checks
    /// for the classic models, a negative log-likelihood for probabilistic ones, 0 for
    /// models that judge only whole traces.
    fn call(&mut self, call: u32) -> f64;
    /// The trace ended: its scores, as [`Detector::score_trace`] gives them.
    fn finish(self: Box<Self>) -> TraceResult;
}

/// A trained model that scores traces. `Send + Sync` so evaluation scores traces on
/// several threads against one shared detector.
pub trait Detector: Send + Sync + fmt::Debug {
    /// The registry name; also the profile's kind tag (e.g. `stide`, `knn`).
    fn kind(&self) -> &str;
    /// Short configuration summary for reports, e.g. `w=6 L=20` or `k=5 n=1..3`.
    fn describe(&self) -> String;
    /// Names of the trace scores, in the order of [`TraceResult::scores`]; the first
    /// is the model's primary score.
    fn score_names(&self) -> Vec<String>;
    /// Scores a whole trace; must agree with streaming it. Models with per-call
    /// anomalies leave them in `scratch.anomalies` (used for detection delay).
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult;
    /// A fresh scoring state for a new trace.
    fn stream(&self) -> Box<dyn TraceStream + '_>;
    /// Calls trained.
    fn trained_calls(&self) -> u64;
    /// Size of the trained model in the model's own unit (windows, pairs, traces,
    /// parameters).
    fn profile_size(&self) -> usize;
    /// What [`Detector::profile_size`] counts, for display.
    fn size_unit(&self) -> &'static str;
    /// Raw call numbers the model knows, in id order (empty when it keeps none).
    fn symbols(&self) -> Vec<u32> {
        vec![]
    }
    /// The locality frame over `scratch.anomalies` when the first score is a max LFC
    /// (enables detection-delay figures), else `None`.
    fn locality(&self) -> Option<usize> {
        None
    }
    /// The stored form of the trained model: the profile payload under the kind tag
    /// [`Detector::kind`], decoded again by the registry entry's `load`.
    fn save(&self) -> Vec<u8>;
    /// The classic model behind this detector, for front ends that need a
    /// [`crate::Cursor`] per task (launcher, daemon).
    fn as_classic(&self) -> Option<&AnyModel> {
        None
    }
    /// Trace scores (in [`Detector::score_names`] order) of training traces this
    /// model held out and never fitted on, when its training keeps some (the LM holds
    /// out traces for early stopping). An ensemble normalises such a member on them
    /// instead of training a second copy without its own held-out traces, which for
    /// a model that trains for minutes halves the ensemble's training time. Only a
    /// freshly trained model has them; a loaded one returns `None`.
    fn held_out_scores(&self) -> Option<&[Vec<f64>]> {
        None
    }
}

/// Progress of a long training: `(done, total)` in units the model chooses.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Training for one detector.
pub trait DetectorBuilder: Send {
    /// Adds one normal training trace.
    fn add_trace(&mut self, calls: &[u32]);
    /// Fits the model (may take long: reports through `progress`).
    fn build(self: Box<Self>, progress: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError>;
    /// The classic model being trained, so a front end can train call by call with
    /// cursors instead of buffering whole traces.
    fn as_classic_mut(&mut self) -> Option<&mut AnyModel> {
        None
    }
}

/// Why a detector cannot be built, trained or loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorError {
    /// No registered model has this name.
    #[error("unknown model {name:?} (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: String,
    },
    /// A classic model's configuration is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A model parameter is invalid.
    #[error("invalid {model} model: {msg}")]
    Param {
        /// The model.
        model: String,
        /// What is wrong.
        msg: String,
    },
    /// Training failed (e.g. no training traces).
    #[error("training {model} failed: {msg}")]
    Train {
        /// The model.
        model: String,
        /// What went wrong.
        msg: String,
    },
    /// A stored payload does not describe a valid model.
    #[error("stored {model} model is corrupt: {msg}")]
    Corrupt {
        /// The model.
        model: String,
        /// What is wrong.
        msg: String,
    },
}

/// Model parameters as `name=value` pairs, parsed by each model.
///
/// Models differ in what they take (window and locality; neighbours and n-gram
/// orders; states and iterations; hidden size and epochs), and external models add
/// their own, so parameters travel as strings and each model parses and range-checks
/// those it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// No parameters: every model's defaults.
    pub fn new() -> Self {
        Params::default()
    }

    /// Parses `name=value[,name=value...]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Params::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("parameter {item:?} is not name=value"))?;
            p.set(k.trim(), v.trim());
        }
        Ok(p)
    }

    /// Sets one parameter (a later value replaces an earlier one).
    pub fn set(&mut self, name: &str, value: impl ToString) {
        self.0.insert(name.to_ascii_lowercase(), value.to_string());
    }

    /// The parameter names given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The raw value of a parameter.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parameter parsed as `T`, or `default` when absent; `model` names the model
    /// in the error.
    pub fn get<T: std::str::FromStr>(
        &self,
        model: &str,
        name: &str,
        default: T,
    ) -> Result<T, DetectorError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| DetectorError::Param {
                model: model.to_string(),
                msg: format!("{name}={v} does not parse"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_type() {
        let p = Params::parse("k=5, tf = log ,").unwrap();
        assert_eq!(p.get("knn", "k", 1usize).unwrap(), 5);
        assert_eq!(p.raw("tf"), Some("log"));
        assert_eq!(p.get("knn", "missing", 7usize).unwrap(), 7);
        let e = p.get::<usize>("knn", "tf", 0).unwrap_err().to_string();
        assert!(e.contains("tf=log does not parse"), "{e}");
        assert!(Params::parse("k").is_err());
    }
}
