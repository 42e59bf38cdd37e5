//! A neural language model of system calls: a small GRU trained on normal traces to
//! predict each next call; a call's anomaly score is its negative log-likelihood (NLL)
//! given everything the task called before.
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

/// Hyper-parameters of the model and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    /// GRU hidden units.
    pub hidden: usize,
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
            hidden: 128,
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

/// The trained weights as plain row-major arrays.
///
/// Inputs are dense ids: 0 for a call unseen in training, `1..=n` for the `n` calls of
/// the alphabet, `n + 1` for the start of a trace. Outputs are ids `0..=n`. The input
/// table already holds the three GRU gate pre-activations per input id (an embedding
/// followed by the input projection, folded into one lookup since inputs are one-hot).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Hidden units H.
    pub hidden: usize,
    /// Input ids (n + 2).
    pub vocab_in: usize,
    /// Output ids (n + 1).
    pub vocab_out: usize,
    /// `[vocab_in, 3H]`: reset, update, candidate pre-activations of each input.
    pub emb: Vec<f32>,
    /// `[H, 3H]`: recurrent weights (h times this).
    pub w_hh: Vec<f32>,
    /// `[3H]`: recurrent biases.
    pub b_hh: Vec<f32>,
    /// `[H, vocab_out]`: output projection.
    pub out_w: Vec<f32>,
    /// `[vocab_out]`: output biases.
    pub out_b: Vec<f32>,
}

impl Weights {
    /// Names and shapes in storage order.
    pub(crate) fn shapes(&self) -> [(&'static str, [usize; 2]); 5] {
        let (h, vi, vo) = (self.hidden, self.vocab_in, self.vocab_out);
        [
            ("emb", [vi, 3 * h]),
            ("w_hh", [h, 3 * h]),
            ("b_hh", [1, 3 * h]),
            ("out_w", [h, vo]),
            ("out_b", [1, vo]),
        ]
    }

    pub(crate) fn tensors(&self) -> [&Vec<f32>; 5] {
        [&self.emb, &self.w_hh, &self.b_hh, &self.out_w, &self.out_b]
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
