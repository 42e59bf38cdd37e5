//! Which models the CLI knows, and how flags become model parameters.
//!
//! `train`, `scan`, `eval` and `inspect` all look models up in one [`Registry`]:
//! the core's models plus those of crates the CLI links (an external model crate
//! registers itself in [`registry`]).

use anyhow::{bail, Result};
use homeostat_core::{Params, Registry};

use crate::cli::ModelFlags;

/// Every model this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register(homeostat_lm::entry());
    r
}

/// Model parameters from the flags; a parameter name no model reads is an error
/// (a typo would otherwise silently leave the default in place).
pub fn params(f: &ModelFlags, reg: &Registry) -> Result<Params> {
    let mut p = Params::new();
    if let Some(w) = f.window {
        p.set("window", w);
    }
    if let Some(l) = f.locality {
        p.set("locality", l);
    }
    if let Some(r) = f.rare_fraction {
        p.set("rare_fraction", r);
    }
    if let Some(t) = f.threshold {
        p.set("threshold", t);
    }
    if let Some(s) = f.smoothing {
        p.set("smoothing", s);
    }
    for item in &f.param {
        let parsed = Params::parse(item).map_err(anyhow::Error::msg)?;
        for name in parsed.names() {
            p.set(name, parsed.raw(name).unwrap_or_default());
        }
    }
    let known = reg.known_params();
    for name in p.names() {
        if !known.iter().any(|k| k == name) {
            bail!(
                "no model takes a parameter {name:?} (known: {})",
                known.join(", ")
            );
        }
    }
    Ok(p)
}

/// Model names from a comma-separated `--model` list: an `ensemble:` item takes the
/// items after it as its members, up to the next `ensemble:`.
pub fn model_names(list: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut in_ensemble = false;
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let starts = homeostat_core::ensemble::members_of(item).is_some();
        match out.last_mut() {
            Some(last) if in_ensemble && !starts => {
                last.push(',');
                last.push_str(item);
            }
            _ => {
                out.push(item.to_string());
                in_ensemble = starts;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_members_follow_their_prefix() {
        let v = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            model_names(&v("stide,knn,ensemble:knn,stide.rate")),
            vec!["stide", "knn", "ensemble:knn,stide.rate"]
        );
        assert_eq!(
            model_names(&v("ensemble:knn+stide,ensemble:knn,markov")),
            vec!["ensemble:knn+stide", "ensemble:knn,markov"]
        );
        // A member's own parameters hold commas; the pieces join up again.
        assert_eq!(
            model_names(&v("kn,ensemble:lm(seed=1,hidden=64),kn(order=3).rate")),
            vec!["kn", "ensemble:lm(seed=1,hidden=64),kn(order=3).rate"]
        );
    }
}
