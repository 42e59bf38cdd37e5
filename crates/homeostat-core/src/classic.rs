//! [`AnyModel`]: the classic models (stide, t-stide, lookahead pairs, Markov) chosen
//! at run time, dispatched by a `match` rather than a trait object.
//!
//! It is kept out of [`crate::model`] so the trait module does not import the models
//! that implement it. An enum keeps the hot loops monomorphic: each arm calls the
//! model's own tuned `test_trace`, with no virtual call per system call.

use crate::locality::TraceScore;
use crate::markov::Markov;
use crate::model::{Cursor, Model, ModelKind, ModelSpec, Scratch, SpecError};
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
