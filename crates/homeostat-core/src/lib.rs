//! The detection core of homeostat: what "normal" means for a program and how far a
//! running process strays from it.
//!
//! Every front end (trace files, the launcher, the eBPF daemon) reduces its input to
//! streams of system call numbers per task and feeds them here. This crate holds the
//! models from the Forrest-Hofmeyr-Somayaji line of work, the locality frame scoring
//! that pH responds to, and the profile file format. It does no I/O and has no unsafe
//! code, so it is tested by replaying recorded traces and runs unchanged wherever the
//! calls come from.
//!
//! - [`model`]: the [`Model`] trait, [`ModelSpec`] and [`AnyModel`];
//! - [`stide`], [`pairs`], [`markov`]: the detectors;
//! - [`hmm`]: a hidden Markov model trained by Baum-Welch (Warrender et al. 1999);
//! - [`locality`]: LFC, per-trace scores;
//! - [`profile`]: the versioned, checksummed profile format;
//! - [`alphabet`], [`table`]: the dense symbol ids and packed-window tables that make
//!   testing cost a few nanoseconds a call.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alphabet;
pub mod hmm;
pub mod locality;
pub mod markov;
pub mod model;
pub mod pairs;
pub mod ph;
pub mod profile;
pub mod stide;
pub mod table;

pub use locality::{Anomaly, LocalityFrame, TraceScore};
pub use model::{AnyModel, Cursor, Model, ModelKind, ModelSpec, Scratch, SpecError, StreamScorer};
pub use profile::{Profile, ProfileError, ProfileMeta};
