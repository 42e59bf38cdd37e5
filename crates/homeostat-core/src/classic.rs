//! [`AnyModel`]: the classic models (stide, t-stide, lookahead pairs, Markov) chosen
//! at run time, dispatched by a `match` rather than a trait object.
//!
//! It is kept out of [`crate::model`] so the trait module does not import the models
//! that implement it. An enum keeps the hot loops monomorphic: each arm calls the
//! model's own tuned `test_trace`, with no virtual call per system call.

use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Progress, TraceResult, TraceStream,
};
use crate::locality::TraceScore;
use crate::markov::Markov;
use crate::model::{Cursor, Model, ModelKind, ModelSpec, Scratch, SpecError, StreamScorer};
use crate::pairs::Pairs;
use crate::stide::Stide;

/// Any model, chosen at run time (what profiles hold and commands use).
#[derive(Debug, Clone)]
pub enum AnyModel {
    /// stide or t-stide.
    Stide(Stide),
    /// Lookahead pairs.
    Pairs(Pairs),
    /// Markov / n-gram.
    Markov(Markov),
}

impl AnyModel {
    /// An untrained model of the given configuration.
    pub fn new(spec: ModelSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        Ok(match spec.kind {
            ModelKind::Stide | ModelKind::TStide => AnyModel::Stide(Stide::new(spec)),
            ModelKind::Pairs => AnyModel::Pairs(Pairs::new(spec)),
            ModelKind::Markov => AnyModel::Markov(Markov::new(spec)),
        })
    }

    /// The raw call numbers the model has seen, in order of first appearance.
    pub fn symbols(&self) -> &[u32] {
        match self {
            AnyModel::Stide(m) => m.alphabet().symbols(),
            AnyModel::Pairs(m) => m.alphabet().symbols(),
            AnyModel::Markov(m) => m.alphabet().symbols(),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            AnyModel::Stide($m) => $e,
            AnyModel::Pairs($m) => $e,
            AnyModel::Markov($m) => $e,
        }
    };
}

impl Model for AnyModel {
    fn spec(&self) -> &ModelSpec {
        dispatch!(self, m => m.spec())
    }
    fn cursor(&self) -> Cursor {
        dispatch!(self, m => m.cursor())
    }
    fn train_call(&mut self, cursor: &mut Cursor, call: u32) -> bool {
        dispatch!(self, m => m.train_call(cursor, call))
    }
    fn train_end(&mut self, cursor: &mut Cursor) -> bool {
        dispatch!(self, m => m.train_end(cursor))
    }
    fn finish(&mut self) {
        dispatch!(self, m => m.finish())
    }
    fn test_call(&self, cursor: &mut Cursor, call: u32) -> u32 {
        dispatch!(self, m => m.test_call(cursor, call))
    }
    fn test_end(&self, cursor: &mut Cursor) -> u32 {
        dispatch!(self, m => m.test_end(cursor))
    }
    fn trained_calls(&self) -> u64 {
        dispatch!(self, m => m.trained_calls())
    }
    fn profile_size(&self) -> usize {
        dispatch!(self, m => m.profile_size())
    }
    fn train_trace(&mut self, calls: &[u32]) {
        dispatch!(self, m => m.train_trace(calls))
    }
    fn test_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceScore {
        dispatch!(self, m => m.test_trace(calls, scratch))
    }
}

/// The stored form of a classic model: its configuration and training data, not its
/// derived test tables (those are rebuilt on load, so they can never disagree with the
/// training data).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassicParts {
    /// The model configuration.
    pub spec: ModelSpec,
    /// Raw call numbers in id order.
    pub symbols: Vec<u32>,
    /// Calls trained.
    pub calls: u64,
    /// Window models: packed windows with training counts.
    pub windows: Vec<(u128, u32)>,
    /// Lookahead pairs: (current id, previous id, distance bitmask).
    pub pairs: Vec<(u16, u16, u32)>,
}

impl AnyModel {
    /// The stored form.
    pub fn to_parts(&self) -> ClassicParts {
        let (windows, pairs) = match self {
            AnyModel::Stide(m) => (m.windows(), vec![]),
            AnyModel::Markov(m) => (m.windows(), vec![]),
            AnyModel::Pairs(m) => (vec![], m.entries()),
        };
        ClassicParts {
            spec: self.spec().clone(),
            symbols: self.symbols().to_vec(),
            calls: self.trained_calls(),
            windows,
            pairs,
        }
    }

    /// Rebuilds a trained, finished model from its stored form, validating every
    /// field; the error says what is invalid.
    pub fn from_parts(s: ClassicParts) -> Result<Self, String> {
        s.spec.validate().map_err(|e| e.to_string())?;
        // Any number of symbols (training keeps every distinct call), none twice.
        crate::alphabet::Alphabet::from_stored(&s.symbols)?;
        let bad = |what: &str| format!("invalid {what} entry");
        Ok(match s.spec.kind {
            ModelKind::Stide | ModelKind::TStide => AnyModel::Stide(
                Stide::from_parts(s.spec, &s.symbols, &s.windows, s.calls)
                    .ok_or_else(|| bad("window"))?,
            ),
            ModelKind::Markov => AnyModel::Markov(
                Markov::from_parts(s.spec, &s.symbols, &s.windows, s.calls)
                    .ok_or_else(|| bad("n-gram"))?,
            ),
            ModelKind::Pairs => AnyModel::Pairs(
                Pairs::from_parts(s.spec, &s.symbols, &s.pairs, s.calls)
                    .ok_or_else(|| bad("pair"))?,
            ),
        })
    }
}

/// A finished classic model as a [`Detector`]: whole traces go through the model's
/// tuned loop, streams through a [`StreamScorer`].
#[derive(Debug, Clone)]
pub struct ClassicDetector(pub AnyModel);

/// Trace scores of the classic models.
pub const CLASSIC_SCORES: [&str; 2] = ["max_lfc", "rate"];

fn classic_result(s: &TraceScore) -> TraceResult {
    TraceResult {
        calls: s.calls,
        anomalies: Some(s.mismatches),
        scores: vec![f64::from(s.max_lfc), s.rate()],
    }
}

struct ClassicStream<'a> {
    model: &'a AnyModel,
    scorer: StreamScorer,
}

impl TraceStream for ClassicStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        f64::from(self.scorer.call(self.model, call).0)
    }
    fn finish(self: Box<Self>) -> TraceResult {
        classic_result(&self.scorer.finish(self.model))
    }
}

impl Detector for ClassicDetector {
    fn kind(&self) -> &str {
        self.0.spec().kind.name()
    }
    fn describe(&self) -> String {
        let s = self.0.spec();
        format!("w={} L={}", s.window, s.locality)
    }
    fn score_names(&self) -> Vec<String> {
        CLASSIC_SCORES.iter().map(|s| s.to_string()).collect()
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        classic_result(&self.0.test_trace(calls, scratch))
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(ClassicStream {
            model: &self.0,
            scorer: StreamScorer::new(&self.0),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.0.trained_calls()
    }
    fn profile_size(&self) -> usize {
        self.0.profile_size()
    }
    fn size_unit(&self) -> &'static str {
        if self.0.spec().kind == ModelKind::Pairs {
            "pairs"
        } else {
            "windows"
        }
    }
    fn symbols(&self) -> Vec<u32> {
        self.0.symbols().to_vec()
    }
    fn locality(&self) -> Option<usize> {
        Some(self.0.spec().locality)
    }
    fn save(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0.to_parts())
            .expect("serialising plain data into a Vec cannot fail")
    }
    fn as_classic(&self) -> Option<&AnyModel> {
        Some(&self.0)
    }
}

/// Trains a classic model (whole traces, or call by call through
/// [`DetectorBuilder::as_classic_mut`]).
#[derive(Debug)]
pub struct ClassicBuilder(pub AnyModel);

impl DetectorBuilder for ClassicBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        self.0.train_trace(calls);
    }
    fn build(self: Box<Self>, _progress: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        let mut m = self.0;
        m.finish();
        Ok(Box::new(ClassicDetector(m)))
    }
    fn as_classic_mut(&mut self) -> Option<&mut AnyModel> {
        Some(&mut self.0)
    }
}

/// Decodes a classic payload stored under `tag`.
pub fn load_classic(tag: &str, payload: &[u8]) -> Result<Box<dyn Detector>, DetectorError> {
    let corrupt = |msg: String| DetectorError::Corrupt {
        model: tag.to_string(),
        msg,
    };
    let parts: ClassicParts = decode_all(payload).map_err(corrupt)?;
    if parts.spec.kind.name() != tag {
        return Err(corrupt(format!(
            "payload holds a {} model",
            parts.spec.kind.name()
        )));
    }
    Ok(Box::new(ClassicDetector(
        AnyModel::from_parts(parts).map_err(corrupt)?,
    )))
}

/// Decodes a postcard payload that must be consumed whole.
pub fn decode_all<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let (v, rest): (T, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| format!("payload does not decode: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the payload", rest.len()));
    }
    Ok(v)
}
