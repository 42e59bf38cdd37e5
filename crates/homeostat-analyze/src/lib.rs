//! The attacker's view of a profile: how far an attack can hide from it.
//!
//! A defender who has learnt a profile wants to know how evadable it is before
//! relying on it. Two views from the literature answer that from the profile alone:
//! - [`mfs`]: Tan and Maxion's minimal foreign sequences of a trace, and for each
//!   stide window which of them it would see (an attack whose foreign sequences are
//!   all longer than the window is invisible: the "blind region");
//! - [`mimicry`]: Wagner and Soto's mimicry attack, the shortest sequence of calls
//!   that makes the attacker's calls in order and raises no anomaly, by exact search
//!   over the model's states;
//! - [`tightness`]: one figure per profile (the mean padding such attacks need over
//!   a standard set of goals), so profiles of different programs can be compared.
//!
//! Pure analysis over the core's models: no system calls, no file I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod mfs;
pub mod mimicry;
pub mod policy;
pub mod rules;

use serde::Serialize;

pub use mfs::{Mfs, MfsReport};
pub use mimicry::{Bounds, GoalStep, Outcome};
pub use rules::{View, ViewError};

/// The standard attacker goals tightness is measured on, by call name; each step
/// lists the calls that achieve it (a shell: `execve`; writing a file: `open`, then
/// `write`; a reverse shell: socket, connect, dup2, execve). Alternatives cover the
/// ABI's variants (`openat` for `open` on today's x86_64 libcs; i386 libcs of
/// ADFA-LD's era reach sockets through `socketcall`).
pub const STANDARD_GOALS: [&str; 3] = [
    "execve|execveat",
    "open|openat|creat,write|writev|pwrite64",
    "socket|socketcall,connect|socketcall,dup2|dup3,execve|execveat",
];

/// The mimicry result for one goal.
#[derive(Debug, Clone, Serialize)]
pub struct GoalResult {
    /// The goal as written.
    pub goal: String,
    /// Calls the goal itself takes.
    pub goal_len: usize,
    /// Calls added to hide it (shortest sequence length minus goal length), or the
    /// bound when no sequence was found within it.
    pub padding: usize,
    /// The search result.
    pub outcome: Outcome,
}

/// How evadable a profile is, as one figure.
#[derive(Debug, Clone, Serialize)]
pub struct Tightness {
    /// Mean padding over the goals ("none within the bound" counts as the bound):
    /// 0 means the goals run unhidden, larger means the profile forces more
    /// camouflage; the bound means no goal could be hidden at all.
    pub mean_padding: f64,
    /// Longest padding.
    pub max_padding: usize,
    /// Goals with no sequence found within the bound.
    pub unreachable: usize,
    /// Per goal.
    pub goals: Vec<GoalResult>,
    /// The bound used.
    pub max_len: usize,
}

/// Tightness over `goals` (label, resolved steps).
pub fn tightness(
    view: &View,
    goals: &[(String, Vec<GoalStep>)],
    bounds: Bounds,
    other: u32,
    progress: &mut dyn FnMut(usize, usize),
) -> Tightness {
    let mut results = vec![];
    for (label, steps) in goals {
        let outcome = view.mimicry(steps, bounds, other, progress);
        let padding = match &outcome {
            Outcome::Found { sequence, .. } => sequence.len() - steps.len(),
            _ => bounds.max_len.saturating_sub(steps.len()),
        };
        results.push(GoalResult {
            goal: label.clone(),
            goal_len: steps.len(),
            padding,
            outcome,
        });
    }
    let n = results.len().max(1) as f64;
    Tightness {
        mean_padding: results.iter().map(|r| r.padding as f64).sum::<f64>() / n,
        max_padding: results.iter().map(|r| r.padding).max().unwrap_or(0),
        unreachable: results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Found { .. }))
            .count(),
        goals: results,
        max_len: bounds.max_len,
    }
}
