//! Evaluating detectors on labelled datasets, the way the literature reports them.
//!
//! A [`Dataset`] is training traces plus labelled test traces; [`evaluate`] trains one
//! model and measures it (ROC AUC, detection rate at fixed false-alarm rates, per
//! attack type, detection delay, speed); [`EvalReport`] renders the results as a table
//! or JSON and [`plot::roc_svg`] draws the ROC curves. The dataset builders in
//! [`datasets`] know ADFA-LD's folder layout, UNM-style files and plain labelled lists.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arguments;
pub mod cv;
pub mod datasets;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod run;

pub use report::EvalReport;
pub use run::{evaluate, Dataset, LabelledTrace, ModelReport, Options};
