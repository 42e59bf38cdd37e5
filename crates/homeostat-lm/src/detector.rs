//! The lm model behind the core's [`Detector`] interface, so the CLI's `train`, `scan`
//! and `eval` use it by name (`--model lm`, parameters with `-P name=value`).

use std::sync::Arc;

use homeostat_core::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress as CoreProgress, TraceResult,
    TraceStream,
};
use homeostat_core::registry::Entry;
use homeostat_core::Scratch;

use crate::score::{LmScore, LmState, SCORE_NAMES};
use crate::store::KIND;
use crate::train::{train, Progress};
use crate::{Lm, LmConfig};

/// Parameter names the model reads (see [`LmConfig`] for each).
pub const PARAMS: [&str; 15] = [
    "cell",
    "layers",
    "hidden",
    "dropout",
    "chunk",
    "batch",
    "epochs",
    "patience",
    "lr",
    "weight_decay",
    "holdout_every",
    "quantile",
    "locality",
    "seed",
    "time_limit",
];

impl LmConfig {
    /// The defaults overridden by `params`.
    pub fn from_params(p: &Params) -> Result<Self, DetectorError> {
        let d = LmConfig::default();
        let c = LmConfig {
            cell: p.get(KIND, "cell", d.cell)?,
            layers: p.get(KIND, "layers", d.layers)?,
            hidden: p.get(KIND, "hidden", d.hidden)?,
            dropout: p.get(KIND, "dropout", d.dropout)?,
            chunk: p.get(KIND, "chunk", d.chunk)?,
            batch: p.get(KIND, "batch", d.batch)?,
            epochs: p.get(KIND, "epochs", d.epochs)?,
            patience: p.get(KIND, "patience", d.patience)?,
            lr: p.get(KIND, "lr", d.lr)?,
            weight_decay: p.get(KIND, "weight_decay", d.weight_decay)?,
            clip: d.clip,
            holdout_every: p.get(KIND, "holdout_every", d.holdout_every)?,
            quantile: p.get(KIND, "quantile", d.quantile)?,
            locality: p.get(KIND, "locality", d.locality)?,
            seed: p.get(KIND, "seed", d.seed)?,
            time_limit_secs: p.get(KIND, "time_limit", d.time_limit_secs)?,
        };
        c.validate().map_err(|e| DetectorError::Param {
            model: KIND.into(),
            msg: e.to_string(),
        })?;
        Ok(c)
    }
}

fn result(s: &LmScore) -> TraceResult {
    TraceResult {
        calls: s.calls,
        anomalies: Some(s.anomalies),
        scores: SCORE_NAMES.iter().filter_map(|n| s.get(n)).collect(),
    }
}

impl Detector for Lm {
    fn kind(&self) -> &str {
        KIND
    }
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} layers={} hidden={} epoch {}/{} held-out nll {:.3} seed={} L={}",
            c.cell.name(),
            c.layers,
            c.hidden,
            self.stats.best_epoch,
            self.stats.epochs_run,
            self.stats.holdout_nll,
            c.seed,
            c.locality
        )
    }
    fn score_names(&self) -> Vec<String> {
        SCORE_NAMES.iter().map(|s| s.to_string()).collect()
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        scratch.anomalies.clear();
        result(&self.score_stream(calls))
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(LmStream {
            model: self,
            state: self.start(),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.stats.train_calls
    }
    fn profile_size(&self) -> usize {
        self.parameters()
    }
    fn size_unit(&self) -> &'static str {
        "parameters"
    }
    fn symbols(&self) -> Vec<u32> {
        self.alphabet.symbols().to_vec()
    }
    fn save(&self) -> Vec<u8> {
        self.save_payload()
    }
    fn held_out_scores(&self) -> Option<&[Vec<f64>]> {
        (!self.held_out.is_empty()).then_some(self.held_out.as_slice())
    }
}

/// One trace being scored: the hidden vector and running scores, bounded in size.
struct LmStream<'a> {
    model: &'a Lm,
    state: LmState,
}

impl TraceStream for LmStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        f64::from(self.model.push(&mut self.state, call))
    }
    fn finish(self: Box<Self>) -> TraceResult {
        result(&self.state.score())
    }
}

/// Training: buffers the traces (gradient descent makes several passes).
#[derive(Debug)]
pub struct LmBuilder {
    config: LmConfig,
    traces: Vec<Vec<u32>>,
}

impl LmBuilder {
    /// An empty training set.
    pub fn new(config: LmConfig) -> Self {
        LmBuilder {
            config,
            traces: vec![],
        }
    }
}

impl DetectorBuilder for LmBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        self.traces.push(calls.to_vec());
    }
    fn build(
        self: Box<Self>,
        progress: CoreProgress<'_>,
    ) -> Result<Box<dyn Detector>, DetectorError> {
        let refs: Vec<&[u32]> = self.traces.iter().map(Vec::as_slice).collect();
        let lm = train(&refs, &self.config, Progress::Report(progress)).map_err(|e| {
            DetectorError::Train {
                model: KIND.into(),
                msg: e.to_string(),
            }
        })?;
        Ok(Box::new(lm))
    }
}

/// The registry entry for `lm`.
pub fn entry() -> Entry {
    Entry {
        name: KIND.into(),
        aliases: vec!["gru".into()],
        about: "GRU or LSTM language model of system calls: per-call negative log-likelihood"
            .into(),
        params: PARAMS.iter().map(|s| s.to_string()).collect(),
        build: Arc::new(|p| {
            Ok(Box::new(LmBuilder::new(LmConfig::from_params(p)?)) as Box<dyn DetectorBuilder>)
        }),
        load: Arc::new(|payload| {
            Lm::from_payload(payload)
                .map(|lm| Box::new(lm) as Box<dyn Detector>)
                .map_err(|e| DetectorError::Corrupt {
                    model: KIND.into(),
                    msg: e.to_string(),
                })
        }),
    }
}
