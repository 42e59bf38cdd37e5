//! The lm profile: the project's profile file (format version 2: magic, version,
//! CRC-32, length, then provenance and a model stored as kind tag `lm` plus payload).
//! The payload is postcard of [`StoredLm`], led by its own version number, with the
//! weights as named `f32` tensors.
//!
//! Every field is checked on load (names, shapes against the hidden size and
//! alphabet, finite values, configuration ranges) so damaged bytes become an error,
//! never a panic or a model that computes garbage.

use homeostat_core::alphabet::Alphabet;
use homeostat_core::profile::{decode_profile, encode_profile, StoredModel};
use homeostat_core::{ProfileError, ProfileMeta};
use serde::{Deserialize, Serialize};

use crate::{Cell, Lm, LmConfig, LmError, TrainStats, Weights};

/// The profile kind tag and registry name.
pub const KIND: &str = "lm";
/// Version of the [`StoredLm`] layout this build writes. Version 1 (a one-layer GRU,
/// written before the configuration had `cell`, `layers` and `dropout`) still loads.
pub const PAYLOAD_VERSION: u16 = 2;

/// One named tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTensor {
    /// Name (`emb`, `w_hh`, `b_hh`, per upper layer k `w_ih.k`, `b_ih.k`, `w_hh.k`,
    /// `b_hh.k`, then `out_w`, `out_b`).
    pub name: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// The payload of an lm profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLm {
    /// Layout version ([`PAYLOAD_VERSION`]).
    pub version: u16,
    /// Hyper-parameters (hidden size, locality frame, ...).
    pub config: LmConfig,
    /// What training did.
    pub stats: TrainStats,
    /// Raw call numbers in id order (id = index + 1).
    pub symbols: Vec<u32>,
    /// Per-call NLL threshold for the LFC.
    pub threshold: f32,
    /// The weights.
    pub tensors: Vec<StoredTensor>,
}

/// The configuration as version 1 payloads stored it (a one-layer GRU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LmConfigV1 {
    hidden: usize,
    chunk: usize,
    batch: usize,
    epochs: usize,
    patience: usize,
    lr: f64,
    weight_decay: f64,
    clip: f64,
    holdout_every: usize,
    quantile: f64,
    locality: usize,
    seed: u64,
    time_limit_secs: u64,
}

/// A version 1 payload: [`StoredLm`] with the old configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredLmV1 {
    version: u16,
    config: LmConfigV1,
    stats: TrainStats,
    symbols: Vec<u32>,
    threshold: f32,
    tensors: Vec<StoredTensor>,
}

impl From<StoredLmV1> for StoredLm {
    fn from(s: StoredLmV1) -> StoredLm {
        let c = s.config;
        StoredLm {
            version: PAYLOAD_VERSION,
            config: LmConfig {
                cell: Cell::Gru,
                layers: 1,
                hidden: c.hidden,
                dropout: 0.0,
                chunk: c.chunk,
                batch: c.batch,
                epochs: c.epochs,
                patience: c.patience,
                lr: c.lr,
                weight_decay: c.weight_decay,
                clip: c.clip,
                holdout_every: c.holdout_every,
                quantile: c.quantile,
                locality: c.locality,
                seed: c.seed,
                time_limit_secs: c.time_limit_secs,
            },
            stats: s.stats,
            symbols: s.symbols,
            threshold: s.threshold,
            tensors: s.tensors,
        }
    }
}

fn corrupt(msg: String) -> LmError {
    LmError::Profile(ProfileError::Corrupt(msg))
}

impl Lm {
    /// The stored form.
    pub fn to_stored(&self) -> StoredLm {
        let w = &self.weights;
        let tensors = w
            .shapes()
            .iter()
            .zip(w.tensors())
            .map(|((name, shape), data)| StoredTensor {
                name: name.clone(),
                shape: shape.iter().map(|&d| d as u64).collect(),
                data: data.clone(),
            })
            .collect();
        StoredLm {
            version: PAYLOAD_VERSION,
            config: self.config.clone(),
            stats: self.stats.clone(),
            symbols: self.alphabet.symbols().to_vec(),
            threshold: self.threshold,
            tensors,
        }
    }

    /// Rebuilds a model from its stored form, validating every field.
    pub fn from_stored(s: StoredLm) -> Result<Lm, LmError> {
        if s.version != PAYLOAD_VERSION {
            return Err(corrupt(format!(
                "lm payload version {} (this build reads {PAYLOAD_VERSION})",
                s.version
            )));
        }
        s.config.validate().map_err(|e| corrupt(e.to_string()))?;
        // Any number of symbols: past MAX_ID training shares the last id (the net's
        // vocabulary is the alphabet's length, not the symbols').
        let alphabet = Alphabet::from_stored(&s.symbols).map_err(corrupt)?;
        if !s.threshold.is_finite() {
            return Err(corrupt(format!("threshold {}", s.threshold)));
        }
        let n = alphabet.len();
        let (cell, layers, hidden) = (s.config.cell, s.config.layers, s.config.hidden);
        let shapes = Weights::shapes_for(cell, layers, hidden, n + 2, n + 1);
        if s.tensors.len() != shapes.len() {
            return Err(corrupt(format!(
                "{} tensors, expected {}",
                s.tensors.len(),
                shapes.len()
            )));
        }
        let mut data = Vec::with_capacity(shapes.len());
        for (t, (name, shape)) in s.tensors.into_iter().zip(shapes) {
            let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            if t.name != name || t.shape != want {
                return Err(corrupt(format!(
                    "tensor {} {:?} where {name} {want:?} was expected",
                    t.name, t.shape
                )));
            }
            if t.data.len() != shape[0] * shape[1] {
                return Err(corrupt(format!(
                    "tensor {name} holds {} values, its shape needs {}",
                    t.data.len(),
                    shape[0] * shape[1]
                )));
            }
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(corrupt(format!("tensor {name} holds a non-finite value")));
            }
            data.push(t.data);
        }
        let w = Weights::from_tensors(cell, hidden, n + 2, n + 1, data);
        Ok(Lm {
            alphabet,
            weights: w,
            threshold: s.threshold,
            config: s.config,
            stats: s.stats,
            held_out: vec![],
        })
    }

    /// The profile payload (what the registry stores under kind [`KIND`]).
    pub fn save_payload(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.to_stored())
            .expect("serialising plain data into a Vec cannot fail")
    }

    /// Decodes and validates a payload.
    pub fn from_payload(payload: &[u8]) -> Result<Lm, LmError> {
        let bad = |e: postcard::Error| corrupt(format!("payload does not decode: {e}"));
        // Both layouts lead with the version number.
        let (version, _): (u16, &[u8]) = postcard::take_from_bytes(payload).map_err(bad)?;
        let (stored, rest): (StoredLm, &[u8]) = if version == 1 {
            let (v1, rest): (StoredLmV1, &[u8]) =
                postcard::take_from_bytes(payload).map_err(bad)?;
            (v1.into(), rest)
        } else {
            postcard::take_from_bytes(payload).map_err(bad)?
        };
        if !rest.is_empty() {
            return Err(LmError::Profile(ProfileError::TrailingData(
                rest.len() as u64
            )));
        }
        Self::from_stored(stored)
    }

    /// The complete profile file contents.
    pub fn to_bytes(&self, meta: &ProfileMeta) -> Vec<u8> {
        encode_profile(
            meta,
            StoredModel {
                kind: KIND.into(),
                payload: self.save_payload(),
            },
        )
    }

    /// Parses and validates a profile file holding an lm model.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Lm, ProfileMeta), LmError> {
        let s = decode_profile(bytes)?;
        if s.model.kind != KIND {
            return Err(corrupt(format!(
                "profile holds a {} model, not lm",
                s.model.kind
            )));
        }
        Ok((Self::from_payload(&s.model.payload)?, s.meta))
    }
}
