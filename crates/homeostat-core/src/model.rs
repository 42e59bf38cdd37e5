//! The one interface every detector implements, and the configuration that picks one.
//!
//! Front ends differ in how calls arrive: batch evaluation has whole traces, the live
//! monitor sees one call at a time per task. So a model trains and tests both ways: a
//! [`Cursor`] carries one task's recent calls between steps, and the whole-trace
//! methods are tuned loops that must agree with stepping call by call.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::locality::{Anomaly, TraceScore};

/// Which detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Forrest et al.'s sequence database: a window never seen in training is a mismatch.
    Stide,
    /// Warrender et al.'s threshold stide: rare training windows count as mismatches too.
    #[serde(rename = "tstide")]
    TStide,
    /// pH's lookahead pairs: (call, call d back, d) must all have been seen.
    Pairs,
    /// An n-gram Markov model with smoothed transition probabilities.
    Markov,
}

impl ModelKind {
    /// All kinds, in the order reports list them.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Stide,
        ModelKind::TStide,
        ModelKind::Pairs,
        ModelKind::Markov,
    ];

    /// Name used on the command line, in profiles and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Stide => "stide",
            ModelKind::TStide => "tstide",
            ModelKind::Pairs => "pairs",
            ModelKind::Markov => "markov",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model name that [`ModelKind::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown model {0:?} (expected stide, tstide, pairs or markov)")]
pub struct UnknownModel(pub String);

impl FromStr for ModelKind {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "stide" => Ok(ModelKind::Stide),
            "tstide" | "t-stide" => Ok(ModelKind::TStide),
            "pairs" | "lookahead" | "lookahead-pairs" | "ph" => Ok(ModelKind::Pairs),
            "markov" | "ngram" | "n-gram" => Ok(ModelKind::Markov),
            _ => Err(UnknownModel(s.to_string())),
        }
    }
}

/// Everything that configures a model. Stored in profiles so a profile tests the way
/// it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The detector.
    pub kind: ModelKind,
    /// Window length: `k` calls for the window models, `w` (current call plus `w - 1`
    /// predecessors) for lookahead pairs.
    pub window: usize,
    /// Locality frame size `L` in test units.
    pub locality: usize,
    /// t-stide: windows whose share of training windows is below this are rare.
    pub rare_fraction: f64,
    /// Markov: a call is anomalous when its conditional probability is below this.
    pub threshold: f64,
    /// Markov: additive (Lidstone) smoothing constant.
    pub smoothing: f64,
}

/// Largest window for stide, t-stide and Markov (14 symbols of 9 bits fill a u128).
pub const MAX_SEQ_WINDOW: usize = 14;
/// Largest lookahead-pairs window (33 = current call plus 32 predecessors).
pub const MAX_PAIRS_WINDOW: usize = 33;
/// Largest locality frame.
pub const MAX_LOCALITY: usize = 1 << 16;

/// A [`ModelSpec`] that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {kind} model: {msg}")]
pub struct SpecError {
    /// The model kind.
    pub kind: ModelKind,
    /// What is wrong.
    pub msg: String,
}

impl ModelSpec {
    /// The defaults from the literature: stide and t-stide k = 6 with L = 20, lookahead
    /// pairs w = 9 with L = 128 (pH), Markov trigram with L = 20.
    pub fn new(kind: ModelKind) -> Self {
        let (window, locality) = match kind {
            ModelKind::Stide | ModelKind::TStide => (6, 20),
            ModelKind::Pairs => (9, 128),
            ModelKind::Markov => (3, 20),
        };
        ModelSpec {
            kind,
            window,
            locality,
            rare_fraction: 0.00001,
            threshold: 0.001,
            smoothing: 0.01,
        }
    }

    /// The same spec with another window.
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// The same spec with another locality frame.
    pub fn with_locality(mut self, locality: usize) -> Self {
        self.locality = locality;
        self
    }

    /// Checks ranges; every constructor goes through this so a bad profile or flag
    /// becomes an error, never a panic.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |msg: String| {
            Err(SpecError {
                kind: self.kind,
                msg,
            })
        };
        let max = match self.kind {
            ModelKind::Pairs => MAX_PAIRS_WINDOW,
            _ => MAX_SEQ_WINDOW,
        };
        let min = if self.kind == ModelKind::Pairs { 2 } else { 1 };
        if self.window < min || self.window > max {
            return err(format!("window {} out of range {min}..={max}", self.window));
        }
        if self.locality == 0 || self.locality > MAX_LOCALITY {
            return err(format!(
                "locality frame {} out of range 1..={MAX_LOCALITY}",
                self.locality
            ));
        }
        if !(0.0..=1.0).contains(&self.rare_fraction) {
            return err(format!(
                "rare fraction {} not in [0, 1]",
                self.rare_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return err(format!("threshold {} not in [0, 1]", self.threshold));
        }
        if !(self.smoothing > 0.0 && self.smoothing.is_finite()) {
            return err(format!("smoothing {} must be > 0", self.smoothing));
        }
        Ok(())
    }

    /// Number of test units in a trace of `calls` calls: stide and t-stide test each
    /// full window (a trace shorter than the window is one short window); lookahead
    /// pairs and Markov test every call.
    pub fn units(&self, calls: usize) -> u64 {
        match self.kind {
            ModelKind::Stide | ModelKind::TStide => {
                if calls == 0 {
                    0
                } else if calls < self.window {
                    1
                } else {
                    (calls - self.window + 1) as u64
                }
            }
            ModelKind::Pairs | ModelKind::Markov => calls as u64,
        }
    }
}

/// One task's position in its call stream: what a model needs to test the next call.
///
/// One type serves every model (a packed window for the window models, a ring of
/// recent symbols for lookahead pairs) so a monitor can keep one per task without
/// knowing which model is loaded.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub(crate) key: u128,
    pub(crate) ring: [u16; 32],
    pub(crate) calls: u64,
}

impl Cursor {
    pub(crate) fn new(key: u128) -> Self {
        Cursor {
            key,
            ring: [0; 32],
            calls: 0,
        }
    }

    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

/// Reusable buffers for whole-trace testing, so the hot loop allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    pub(crate) ids: Vec<u16>,
    pub(crate) ids8: Vec<u8>,
    /// Anomalies of the last tested trace, in call order.
    pub anomalies: Vec<Anomaly>,
}

/// The interface of every detector.
///
/// Training adds to the profile; [`Model::finish`] derives the test tables (rarity,
/// probabilities) from it, and testing uses the tables as of the last `finish`. This
/// is pH's separation of training and testing data: what a process does while being
/// tested does not silently become normal.
pub trait Model {
    /// The configuration.
    fn spec(&self) -> &ModelSpec;
    /// A fresh cursor for a new trace (task).
    fn cursor(&self) -> Cursor;
    /// Trains on the next call of a trace; true when the profile changed (a new window
    /// or pair), which pH uses to decide when a profile has stabilised.
    fn train_call(&mut self, cursor: &mut Cursor, call: u32) -> bool;
    /// The trace ended; trains what only the end reveals (a short trace's window).
    fn train_end(&mut self, cursor: &mut Cursor) -> bool;
    /// Rebuilds the test tables from the training data.
    fn finish(&mut self);
    /// Tests the next call; returns the number of failed checks (0 = normal).
    fn test_call(&self, cursor: &mut Cursor, call: u32) -> u32;
    /// The trace ended; tests what only the end reveals. Returns failed checks.
    fn test_end(&self, cursor: &mut Cursor) -> u32;
    /// Calls trained so far.
    fn trained_calls(&self) -> u64;
    /// Size of the profile: distinct windows, or distinct (call, previous, distance)
    /// pairs.
    fn profile_size(&self) -> usize;

    /// Trains on a whole trace.
    fn train_trace(&mut self, calls: &[u32]) {
        let mut c = self.cursor();
        for &call in calls {
            self.train_call(&mut c, call);
        }
        self.train_end(&mut c);
    }

    /// Tests a whole trace, leaving its anomalies in `scratch.anomalies`.
    fn test_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceScore {
        scratch.anomalies.clear();
        let mut c = self.cursor();
        for (pos, &call) in calls.iter().enumerate() {
            let misses = self.test_call(&mut c, call);
            if misses > 0 {
                scratch.anomalies.push(Anomaly {
                    pos: pos as u32,
                    misses,
                });
            }
        }
        let misses = self.test_end(&mut c);
        if misses > 0 {
            scratch.anomalies.push(Anomaly {
                pos: calls.len().saturating_sub(1) as u32,
                misses,
            });
        }
        let spec = self.spec();
        TraceScore::new(
            calls.len() as u64,
            spec.units(calls.len()),
            &scratch.anomalies,
            spec.locality,
        )
    }
}

/// Scores one trace as its calls arrive: the streaming counterpart of
/// [`Model::test_trace`], with the same test units and locality frame, for monitors
/// and for scans that must not hold whole traces in memory.
#[derive(Debug, Clone)]
pub struct StreamScorer {
    cursor: Cursor,
    frame: crate::locality::LocalityFrame,
    score: TraceScore,
    /// Calls before the first test unit (k - 1 for the stide family, else 0).
    lead: u64,
}

impl StreamScorer {
    /// A scorer for a new trace under `model`.
    pub fn new(model: &impl Model) -> Self {
        let spec = model.spec();
        let lead = match spec.kind {
            ModelKind::Stide | ModelKind::TStide => spec.window as u64 - 1,
            ModelKind::Pairs | ModelKind::Markov => 0,
        };
        StreamScorer {
            cursor: model.cursor(),
            frame: crate::locality::LocalityFrame::new(spec.locality),
            score: TraceScore::default(),
            lead,
        }
    }

    /// Tests the next call; returns `(failed checks, current LFC)`.
    pub fn call(&mut self, model: &impl Model, call: u32) -> (u32, u32) {
        let misses = model.test_call(&mut self.cursor, call);
        self.score.calls += 1;
        if self.score.calls > self.lead {
            self.unit(misses);
        }
        (misses, self.frame.lfc())
    }

    fn unit(&mut self, misses: u32) {
        self.score.units += 1;
        if misses > 0 {
            self.score.mismatches += 1;
            self.score.misses += u64::from(misses);
        }
        let lfc = self.frame.push(misses > 0);
        self.score.max_lfc = self.score.max_lfc.max(lfc);
    }

    /// The current locality frame count.
    pub fn lfc(&self) -> u32 {
        self.frame.lfc()
    }

    /// The trace ended: tests a short trace's single window and returns the score.
    pub fn finish(mut self, model: &impl Model) -> TraceScore {
        let misses = model.test_end(&mut self.cursor);
        if self.score.calls > 0 && self.score.calls <= self.lead {
            self.unit(misses);
        }
        self.score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in ModelKind::ALL {
            assert_eq!(k.name().parse::<ModelKind>().unwrap(), k);
        }
        assert_eq!("t-stide".parse::<ModelKind>().unwrap(), ModelKind::TStide);
        assert!("hmm2".parse::<ModelKind>().is_err());
    }

    #[test]
    fn validation_rejects_bad_ranges() {
        assert!(ModelSpec::new(ModelKind::Stide).validate().is_ok());
        let bad = ModelSpec::new(ModelKind::Stide).with_window(15);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("window 15"));
        assert!(ModelSpec::new(ModelKind::Pairs)
            .with_window(1)
            .validate()
            .is_err());
        assert!(ModelSpec::new(ModelKind::Pairs)
            .with_locality(0)
            .validate()
            .is_err());
    }

    #[test]
    fn units_per_trace() {
        let s = ModelSpec::new(ModelKind::Stide);
        assert_eq!(s.units(0), 0);
        assert_eq!(s.units(3), 1);
        assert_eq!(s.units(6), 1);
        assert_eq!(s.units(10), 5);
        assert_eq!(ModelSpec::new(ModelKind::Pairs).units(10), 10);
    }
}
