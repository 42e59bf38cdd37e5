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
//! - [`model`]: the [`Model`] trait and [`ModelSpec`]; [`classic`]: [`AnyModel`];
//! - [`stide`], [`pairs`], [`markov`]: the classic detectors, which share a
//!   per-task [`Cursor`];
//! - [`detector`]: the trace-level [`Detector`] every model offers (classic ones
//!   through their tuned loops), [`knn`] and [`ensemble`], and the [`registry`]
//!   that maps `--model` names and profile kind tags to them;
//! - [`cover`]: sequence covering, pieces of training traces (Marteau 2019);
//! - [`hmm`]: a hidden Markov model trained by Baum-Welch (Warrender et al. 1999);
//! - [`locality`]: LFC, per-trace scores;
//! - [`profile`]: the versioned, checksummed profile format;
//! - [`window`]: the window database stide, t-stide and Markov share;
//! - [`symbols`]: argument-aware symbols, (call, argument class), for any model;
//! - [`alphabet`], [`table`]: the dense symbol ids and packed-window tables that make
//!   testing cost a few nanoseconds a call.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alphabet;
pub mod classic;
pub mod cover;
pub mod detector;
pub mod ensemble;
pub mod hmm;
pub mod kn;
pub mod knn;
pub mod locality;
pub mod markov;
pub mod model;
pub mod pairs;
pub mod ph;
pub mod profile;
pub mod rate;
pub mod registry;
pub mod stide;
pub mod symbols;
pub mod table;
pub mod window;

pub use classic::{AnyModel, ClassicDetector};
pub use detector::{Detector, DetectorBuilder, DetectorError, Params, TraceResult, TraceStream};
pub use locality::{Anomaly, LocalityFrame, TraceScore};
pub use model::{Cursor, Model, ModelKind, ModelSpec, Scratch, SpecError, StreamScorer};
pub use profile::{Profile, ProfileError, ProfileMeta};
pub use registry::{DetectorProfile, Registry};
