//! A neural language model of system calls: a small recurrent net (GRU or LSTM, one or
//! more layers) trained on normal traces to predict each next call; a call's anomaly
//! score is its negative log-likelihood (NLL) given everything the task called before.
//!
//! Why: the 1996-99 detectors (stide, lookahead pairs, Markov) only know contexts of a
//! fixed few calls and call everything else foreign, which tops out near AUC 0.83 on
//! ADFA-LD. A recurrent model summarises the whole prefix, and its NLL grades how
//! surprising a call is instead of a yes/no. Kim et al. (2016) report AUC ~0.93 on
//! ADFA-LD with an ensemble of LSTM language models.
//!
//! Shape of the code:
//! - [`train`] fits the model with candle (CPU) by truncated back-propagation through
//!   time over mini-batches of chunks, AdamW, a seed, and early stopping on a held-out
//!   part of the *normal* training traces (never the attacks);
//! - [`Lm`] holds the trained weights as plain `f32` arrays. Streaming ([`Lm::start`],
//!   [`Lm::push`]) updates one task's hidden state call by call in plain Rust with
//!   bounded memory (the hidden vector and a locality frame), because a tensor
//!   library's per-operation overhead dwarfs one small matrix-vector product; the batched
//!   path ([`Lm::score_traces`]) packs many traces into the lanes of a candle batch for
//!   evaluation speed. Both compute the same numbers (tested);
//! - [`Lm::to_bytes`] / [`Lm::from_bytes`] store the model in the project's profile
//!   format (versioned, CRC-32, kind tag [`KIND`]) with the weights as named tensors;
//! - [`entry`] registers the model as `lm` with the core's detector registry, so
//!   `train`, `scan` and `eval` take `--model lm`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod detector;
mod net;
mod pack;
mod rng;
mod score;
mod store;
mod train;

pub use detector::{entry, LmBuilder, PARAMS};
pub use score::{LmScore, LmState, SCORE_NAMES};
pub use store::{StoredLm, StoredTensor, KIND, PAYLOAD_VERSION};
pub use train::{train, Progress};

use homeostat_core::alphabet::Alphabet;
use serde::{Deserialize, Serialize};

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cell {
    /// Gated recurrent unit (PyTorch's `nn.GRU` equations): 3 gates.
    Gru,
    /// Long short-term memory (PyTorch's `nn.LSTM`, no peepholes), the cell of Kim
    /// et al. 2016: 4 gates and a cell state besides the hidden state.
    Lstm,
}

impl Cell {
    /// Gate pre-activations per hidden unit (3 for the GRU, 4 for the LSTM).
    pub fn gates(self) -> usize {
        match self {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }

    /// State vectors per layer (the LSTM keeps a cell state besides `h`).
    pub fn states(self) -> usize {
        match self {
            Cell::Gru => 1,
            Cell::Lstm => 2,
        }
    }

    /// The parameter spelling.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Gru => "gru",
            Cell::Lstm => "lstm",
        }
    }
}

impl std::str::FromStr for Cell {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gru" => Ok(Cell::Gru),
            "lstm" => Ok(Cell::Lstm),
            _ => Err(format!("unknown cell {s} (gru or lstm)")),
        }
    }
}

/// Hyper-parameters of the model and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    /// Recurrent cell.
    pub cell: Cell,
    /// Stacked recurrent layers (each of `hidden` units).
    pub layers: usize,
    /// Hidden units per layer.
    pub hidden: usize,
    /// Training only: dropout probability on each layer's output (what the next layer
    /// or the softmax reads, never the recurrent path); 0 for none.
    pub dropout: f64,
    /// Truncated BPTT length: calls per chunk before gradients are cut.
    pub chunk: usize,
    /// Chunks per mini-batch (parallel lanes of concatenated traces).
    pub batch: usize,
    /// Most passes over the training traces.
    pub epochs: usize,
    /// Stop after this many epochs without a better held-out loss.
    pub patience: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm (gradients are scaled down above it).
    pub clip: f64,
    /// Every `holdout_every`-th training trace (indices n-1, 2n-1, ...) is held out for
    /// early stopping and the call threshold; 0 holds out nothing.
    pub holdout_every: usize,
    /// Quantile of held-out per-call NLLs used as the anomalous-call threshold.
    pub quantile: f64,
    /// Locality frame size L (calls) for the LFC and frame-NLL scores.
    pub locality: usize,
    /// Seed for initial weights and trace order.
    pub seed: u64,
    /// Skip epochs that would end past this many seconds of training (0: no limit).
    pub time_limit_secs: u64,
}

impl Default for LmConfig {
    /// Sizes chosen so ADFA-LD's training set (308k calls) trains in a few minutes on
    /// two cores; see docs/models.md for the measurements behind them.
    fn default() -> Self {
        LmConfig {
            cell: Cell::Gru,
            layers: 1,
            hidden: 128,
            dropout: 0.0,
            chunk: 32,
            batch: 64,
            epochs: 45,
            patience: 5,
            lr: 3e-3,
            weight_decay: 0.01,
            clip: 1.0,
            holdout_every: 10,
            quantile: 0.99,
            locality: 20,
            seed: 1,
            time_limit_secs: 540,
        }
    }
}

impl LmConfig {
    /// Checks ranges; the message names the bad field.
    pub fn validate(&self) -> Result<(), LmError> {
        let bad = |m: String| Err(LmError::Config(m));
        if !(1..=4096).contains(&self.hidden) {
            return bad(format!("hidden size {} out of range 1..=4096", self.hidden));
        }
        if !(1..=8).contains(&self.layers) {
            return bad(format!("layers {} out of range 1..=8", self.layers));
        }
        if !(self.dropout.is_finite() && (0.0..0.95).contains(&self.dropout)) {
            return bad(format!("dropout {} out of range [0, 0.95)", self.dropout));
        }
        if !(1..=100_000).contains(&self.chunk) {
            return bad(format!("chunk {} out of range 1..=100000", self.chunk));
        }
        if !(1..=100_000).contains(&self.batch) {
            return bad(format!("batch {} out of range 1..=100000", self.batch));
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {} must be >= 0", self.weight_decay));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("gradient clip {} must be positive", self.clip));
        }
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return bad(format!("quantile {} out of range (0, 1)", self.quantile));
        }
        if self.locality == 0 || self.locality > homeostat_core::model::MAX_LOCALITY {
            return bad(format!(
                "locality frame {} out of range 1..={}",
                self.locality,
                homeostat_core::model::MAX_LOCALITY
            ));
        }
        Ok(())
    }
}

/// What training did, kept in the profile for provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    /// Traces trained on (excluding held-out ones).
    pub train_traces: u64,
    /// Calls trained on.
    pub train_calls: u64,
    /// Held-out traces.
    pub holdout_traces: u64,
    /// Epochs run.
    pub epochs_run: u32,
    /// Epoch (1-based) whose weights were kept.
    pub best_epoch: u32,
    /// Mean per-call NLL (nats) of the kept weights on the held-out traces (on the
    /// training traces when nothing is held out).
    pub holdout_nll: f64,
    /// Wall-clock seconds of training.
    pub seconds: f64,
    /// Per epoch: mean training loss and held-out NLL (nats per call).
    pub history: Vec<(f64, f64)>,
}

/// Errors of training, scoring and loading.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A hyper-parameter out of range.
    #[error("invalid lm configuration: {0}")]
    Config(String),
    /// Nothing to train on.
    #[error("no training calls")]
    Empty,
    /// The tensor library failed (shapes, allocation).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Bytes that are not a usable lm profile.
    #[error(transparent)]
    Profile(#[from] homeostat_core::ProfileError),
}

/// Weights of a layer above the first: its input is the hidden state below.
#[derive(Debug, Clone, PartialEq)]
pub struct Upper {
    /// `[H, G*H]`: input weights (the lower layer's h times this).
    pub w_ih: Vec<f32>,
    /// `[G*H]`: input biases.
    pub b_ih: Vec<f32>,
    /// `[H, G*H]`: recurrent weights.
    pub w_hh: Vec<f32>,
    /// `[G*H]`: recurrent biases.
    pub b_hh: Vec<f32>,
}

/// The trained weights as plain row-major arrays (G = the cell's gate count).
///
/// Inputs are dense ids: 0 for a call unseen in training, `1..=n` for the `n` calls of
/// the alphabet, `n + 1` for the start of a trace. Outputs are ids `0..=n`. The input
/// table already holds the first layer's G gate pre-activations per input id (an
/// embedding followed by the input projection, folded into one lookup since inputs
/// are one-hot; an embedding of E >= n + 2 dimensions, as Kim et al.'s of the layer's
/// size, constrains nothing this table cannot express).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Recurrent cell.
    pub cell: Cell,
    /// Hidden units H per layer.
    pub hidden: usize,
    /// Input ids (n + 2).
    pub vocab_in: usize,
    /// Output ids (n + 1).
    pub vocab_out: usize,
    /// `[vocab_in, G*H]`: the first layer's gate pre-activations of each input (GRU:
    /// reset, update, candidate; LSTM: input, forget, cell, output).
    pub emb: Vec<f32>,
    /// `[H, G*H]`: the first layer's recurrent weights (h times this).
    pub w_hh: Vec<f32>,
    /// `[G*H]`: the first layer's recurrent biases.
    pub b_hh: Vec<f32>,
    /// Layers 2.. (empty for one layer).
    pub upper: Vec<Upper>,
    /// `[H, vocab_out]`: output projection (from the top layer).
    pub out_w: Vec<f32>,
    /// `[vocab_out]`: output biases.
    pub out_b: Vec<f32>,
}

impl Weights {
    /// Names and shapes in storage order: `emb`, `w_hh`, `b_hh` (the first layer, as a
    /// one-layer GRU has always stored them), then per upper layer k = 2.. `w_ih.k`,
    /// `b_ih.k`, `w_hh.k`, `b_hh.k`, then `out_w`, `out_b`.
    pub(crate) fn shapes(&self) -> Vec<(String, [usize; 2])> {
        Self::shapes_for(
            self.cell,
            self.upper.len() + 1,
            self.hidden,
            self.vocab_in,
            self.vocab_out,
        )
    }

    pub(crate) fn shapes_for(
        cell: Cell,
        layers: usize,
        h: usize,
        vi: usize,
        vo: usize,
    ) -> Vec<(String, [usize; 2])> {
        let gh = cell.gates() * h;
        let mut v = vec![
            ("emb".to_string(), [vi, gh]),
            ("w_hh".to_string(), [h, gh]),
            ("b_hh".to_string(), [1, gh]),
        ];
        for k in 2..=layers {
            v.push((format!("w_ih.{k}"), [h, gh]));
            v.push((format!("b_ih.{k}"), [1, gh]));
            v.push((format!("w_hh.{k}"), [h, gh]));
            v.push((format!("b_hh.{k}"), [1, gh]));
        }
        v.push(("out_w".to_string(), [h, vo]));
        v.push(("out_b".to_string(), [1, vo]));
        v
    }

    pub(crate) fn tensors(&self) -> Vec<&Vec<f32>> {
        let mut v = vec![&self.emb, &self.w_hh, &self.b_hh];
        for u in &self.upper {
            v.extend([&u.w_ih, &u.b_ih, &u.w_hh, &u.b_hh]);
        }
        v.push(&self.out_w);
        v.push(&self.out_b);
        v
    }

    /// Rebuilds from tensors in [`Weights::shapes`] order (lengths already checked).
    pub(crate) fn from_tensors(
        cell: Cell,
        hidden: usize,
        vocab_in: usize,
        vocab_out: usize,
        data: Vec<Vec<f32>>,
    ) -> Weights {
        let upper_n = data.len().saturating_sub(5) / 4;
        let mut it = data.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let (emb, w_hh, b_hh) = (next(), next(), next());
        let upper = (0..upper_n)
            .map(|_| Upper {
                w_ih: next(),
                b_ih: next(),
                w_hh: next(),
                b_hh: next(),
            })
            .collect();
        let (out_w, out_b) = (next(), next());
        Weights {
            cell,
            hidden,
            vocab_in,
            vocab_out,
            emb,
            w_hh,
            b_hh,
            upper,
            out_w,
            out_b,
        }
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.upper.len() + 1
    }
}

/// A trained language model of one program's (or data set's) normal traces.
#[derive(Debug, Clone)]
pub struct Lm {
    alphabet: Alphabet,
    weights: Weights,
    threshold: f32,
    config: LmConfig,
    stats: TrainStats,
    /// Trace scores of the held-out training traces under the kept weights (fresh
    /// training only; not stored in profiles).
    held_out: Vec<Vec<f64>>,
}

impl Lm {
    /// The id of the start-of-trace input.
    fn bos(&self) -> usize {
        self.weights.vocab_in - 1
    }

    /// The configuration it was trained with.
    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// What training did.
    pub fn stats(&self) -> &TrainStats {
        &self.stats
    }

    /// The alphabet of calls seen in training.
    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Per-call NLL (nats) above which a call counts as anomalous for the LFC.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The same model with another anomalous-call threshold.
    pub fn with_threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        self.weights.tensors().iter().map(|t| t.len()).sum()
    }
}
