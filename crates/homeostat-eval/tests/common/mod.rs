//! Helpers shared by the ADFA-LD pin tests (each test file is its own crate and uses a
//! subset of these, hence the allow).
#![allow(dead_code)]

use homeostat_core::{Params, Registry};
use homeostat_eval::{evaluate, Dataset, ModelReport, Options};

/// `model` with `params`, trained and scored on `ds` with the default options.
pub fn eval(ds: &Dataset, model: &str, params: &str) -> ModelReport {
    evaluate(
        ds,
        &Registry::builtin(),
        model,
        &Params::parse(params).unwrap(),
        &Options::default(),
        &|_, _| {},
        &|_| {},
    )
    .unwrap()
}

/// An AUC pinned to its measured value, within `band`.
pub fn within(what: &str, got: Option<f64>, want: f64, band: f64) {
    let got = got.unwrap_or(f64::NAN);
    assert!(
        (got - want).abs() <= band,
        "{what}: AUC {got:.4}, measured {want:.4} +- {band}"
    );
}
