//! A discrete hidden Markov model of system calls (Warrender, Forrest and Pearlmutter,
//! 1999).
//!
//! Why an HMM: stide and its relatives only know which short sequences occurred. An HMM
//! learns a small hidden "program state" that explains the whole stream, so it can judge
//! a call by everything before it, and it gives a graded score (the call's probability)
//! instead of a yes/no lookup. Warrender et al. found it the most accurate of their
//! detectors, and the slowest to train; this module is about making training cheap
//! enough to be routine.
//!
//! **Training** is Baum-Welch with per-step scaling (Rabiner's scaled forward and
//! backward variables), so no log-space arithmetic is needed in the inner loops and every
//! accumulator is `f64`. The cost is three `N x N` passes per call (forward, backward,
//! transition counts); the layout is chosen so that each is a vectorisable loop:
//!
//! - states are padded to a multiple of 8 with zero-probability states, so rows have no
//!   scalar tails;
//! - the forward step keeps a 32-wide block of the next state distribution in registers
//!   and streams the rows of `A`; the backward step does the same with the stored
//!   transpose `A^T`, so neither needs a horizontal reduction;
//! - emissions are stored symbol-major (`B^T`), so the column of the observed call is
//!   one contiguous slice, indexed by the call's dense id from [`Alphabet`];
//! - transition counts are not a rank-1 update per call (which would read and write
//!   the whole `N x N` accumulator at every step) but a small matrix product over blocks
//!   of 8 steps, using `xi_t(i, j) = alpha_t(i) A(i, j) w_{t+1}(j)` with `A(i, j)` factored
//!   out until the M-step;
//! - the kernels run under [`pulp::Arch::dispatch`], which compiles them for AVX2 + FMA
//!   and picks that version at run time when the CPU has it, without `unsafe` here.
//!
//! The E-step runs in parallel over traces with rayon. Traces are cut into a fixed
//! number of contiguous chunks that depends only on the data; each chunk is accumulated
//! by one thread, and chunk totals are added in chunk order. So a trained model is
//! bit-for-bit the same for a given seed whatever the number of threads (a test checks
//! 1 and 2). Scratch buffers are reused, so the inner loops allocate nothing.
//!
//! **Initialisation** is random from a seeded SplitMix64 generator (a few lines here,
//! instead of a dependency, because only uniform doubles are needed and the sequence
//! must never change under us). **Stopping**: when the training log-likelihood per call
//! improves by less than [`HmmSpec::tolerance`], or after [`HmmSpec::iterations`].
//!
//! **Testing** runs the forward filter: the score of a call is its predictive probability
//! `P(o_t | o_1 .. o_{t-1})`, which is exactly the scaling factor of the forward pass. A
//! call whose probability is below [`HmmSpec::threshold`] is anomalous and counts in the
//! locality frame like any other model's mismatches. A call never seen in training has
//! probability [`HmmSpec::floor`] and only moves the state distribution one transition
//! forward. The streaming state ([`HmmState`]) is one distribution over states, so a
//! monitor's memory per task is bounded by the state count.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::alphabet::{Alphabet, UNKNOWN};
use crate::classic::decode_all;
use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress, TraceResult, TraceStream,
};
use crate::locality::{Anomaly, LocalityFrame, TraceScore};
use crate::model::Scratch;
use crate::registry::Entry;

/// Largest state count accepted (a 1024-state model is 8 MiB of transitions; beyond
/// that training a system call model is not sensible on one machine).
pub const MAX_STATES: usize = 1024;
/// Largest number of Baum-Welch iterations accepted.
pub const MAX_ITERATIONS: usize = 100_000;

/// Rows are padded to a multiple of this many states.
const PAD: usize = 8;
/// Steps per block of the transition-count matrix product.
const BLOCK: usize = 8;
/// Traces are split into this many chunks for the parallel E-step (fixed, so that the
/// summation order never depends on the number of threads).
const CHUNKS: usize = 32;

/// Everything that configures an HMM; stored in profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HmmSpec {
    /// Hidden states `N`. Warrender et al. used about as many as distinct calls.
    pub states: usize,
    /// Most Baum-Welch iterations.
    pub iterations: usize,
    /// Stop when the training log-likelihood per call improves by less than this (nats);
    /// 0 runs every iteration.
    pub tolerance: f64,
    /// Seed of the random initial parameters.
    pub seed: u64,
    /// A call whose predictive probability is below this is anomalous.
    pub threshold: f64,
    /// Probability given to a call never seen in training (and the least probability
    /// any call is given, so negative log-likelihoods stay finite).
    pub floor: f64,
    /// Locality frame size `L` in calls.
    pub locality: usize,
}

impl Default for HmmSpec {
    /// The defaults chosen on ADFA-LD's training traces only (docs/models.md, "hmm").
    fn default() -> Self {
        HmmSpec {
            states: 150,
            iterations: 40,
            tolerance: 1e-4,
            seed: 1,
            threshold: 1e-3,
            floor: 1e-8,
            locality: 20,
        }
    }
}

/// Why an HMM cannot be built or loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HmmError {
    /// A configuration value out of range.
    #[error("invalid hmm model: {0}")]
    Spec(String),
    /// Training data that cannot train a model.
    #[error("cannot train hmm: {0}")]
    Data(String),
    /// Stored parameters that do not describe a valid model.
    #[error("corrupt hmm parameters: {0}")]
    Corrupt(String),
}

impl HmmSpec {
    /// Checks ranges, so a bad flag or profile is an error and never a panic.
    pub fn validate(&self) -> Result<(), HmmError> {
        let err = |m: String| Err(HmmError::Spec(m));
        if self.states == 0 || self.states > MAX_STATES {
            return err(format!(
                "states {} out of range 1..={MAX_STATES}",
                self.states
            ));
        }
        if self.iterations > MAX_ITERATIONS {
            return err(format!(
                "iterations {} out of range 0..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return err(format!("tolerance {} must be >= 0", self.tolerance));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return err(format!("threshold {} not in [0, 1]", self.threshold));
        }
        if !(self.floor > 0.0 && self.floor <= 1.0) {
            return err(format!("floor {} not in (0, 1]", self.floor));
        }
        if self.locality == 0 || self.locality > crate::model::MAX_LOCALITY {
            return err(format!(
                "locality frame {} out of range 1..={}",
                self.locality,
                crate::model::MAX_LOCALITY
            ));
        }
        Ok(())
    }
}

/// SplitMix64: tiny, well-mixed, and fixed forever (profiles depend on its sequence).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so no initial probability is exactly zero.
    fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// A trained (or initialised) HMM over the calls of its alphabet.
#[derive(Debug, Clone)]
pub struct Hmm {
    spec: HmmSpec,
    alphabet: Alphabet,
    /// Real states.
    n: usize,
    /// Padded row length.
    np: usize,
    /// Symbols (dense ids 1..=k map to rows 0..k).
    k: usize,
    /// Initial distribution, length `np`.
    pi: Vec<f64>,
    /// Transitions, `np x np` row-major: `a[i * np + j] = P(next = j | now = i)`.
    a: Vec<f64>,
    /// The transpose of `a`, for the backward pass.
    at: Vec<f64>,
    /// Emissions, symbol-major `k x np`: `b[s * np + j] = P(symbol s | state j)`.
    b: Vec<f64>,
    trained_calls: u64,
    /// Training log-likelihood per call before each iteration's update.
    history: Vec<f64>,
    arch: Arch,
}

/// The parameters as stored in a profile: unpadded, row-major, validated on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredHmm {
    /// The configuration.
    pub spec: HmmSpec,
    /// Raw call numbers in dense-id order.
    pub symbols: Vec<u32>,
    /// Initial distribution (`states` values).
    pub pi: Vec<f64>,
    /// Transitions, `states x states`, row `i` = distribution of the next state.
    pub a: Vec<f64>,
    /// Emissions, `states x symbols`, row `i` = distribution of calls in state `i`.
    pub b: Vec<f64>,
    /// Calls trained on.
    pub trained_calls: u64,
    /// Training log-likelihood per call at each iteration.
    pub history: Vec<f64>,
}

/// How a training run went.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Iterations run (E-steps followed by an update).
    pub iterations: usize,
    /// Whether the tolerance was reached before the iteration cap.
    pub converged: bool,
    /// Training log-likelihood per call after the last update.
    pub log_likelihood_per_call: f64,
}

impl Hmm {
    /// A randomly initialised model over `alphabet` (seeded by `spec.seed`).
    pub fn init(spec: HmmSpec, alphabet: Alphabet) -> Result<Self, HmmError> {
        spec.validate()?;
        let n = spec.states;
        let k = alphabet.len();
        if k == 0 {
            return Err(HmmError::Data("no system calls to train on".into()));
        }
        let np = n.div_ceil(PAD) * PAD;
        let mut rng = SplitMix64(spec.seed);
        let mut random_row = |len: usize| -> Vec<f64> {
            let mut row: Vec<f64> = (0..len).map(|_| rng.next_f64()).collect();
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= s);
            row
        };
        let mut pi = vec![0.0; np];
        pi[..n].copy_from_slice(&random_row(n));
        let mut a = vec![0.0; np * np];
        for i in 0..n {
            a[i * np..i * np + n].copy_from_slice(&random_row(n));
        }
        let mut b = vec![0.0; k * np];
        for j in 0..n {
            for (s, p) in random_row(k).into_iter().enumerate() {
                b[s * np + j] = p;
            }
        }
        let mut m = Hmm {
            spec,
            alphabet,
            n,
            np,
            k,
            pi,
            a,
            at: vec![0.0; np * np],
            b,
            trained_calls: 0,
            history: Vec::new(),
            arch: Arch::new(),
        };
        m.transpose();
        Ok(m)
    }

    /// Trains a model on `traces` (raw call numbers): builds the alphabet, initialises
    /// from the seed and runs Baum-Welch until convergence or the iteration cap.
    /// `progress(iteration, log-likelihood per call)` is called after each E-step.
    pub fn train(
        spec: HmmSpec,
        traces: &[&[u32]],
        mut progress: impl FnMut(usize, f64),
    ) -> Result<(Self, TrainReport), HmmError> {
        spec.validate()?;
        let mut alphabet = Alphabet::new();
        for t in traces {
            for &c in *t {
                alphabet.intern(c);
            }
        }
        let mut hmm = Hmm::init(spec, alphabet)?;
        let mut trainer = Trainer::new(&hmm, traces)?;
        let mut prev = f64::NEG_INFINITY;
        let mut converged = false;
        let mut iterations = 0;
        while iterations < hmm.spec.iterations {
            let ll = trainer.iterate(&mut hmm)?;
            iterations += 1;
            progress(iterations, ll);
            if hmm.spec.tolerance > 0.0 && ll - prev < hmm.spec.tolerance {
                converged = true;
                break;
            }
            prev = ll;
        }
        let log_likelihood_per_call = trainer.log_likelihood(&hmm);
        Ok((
            hmm,
            TrainReport {
                iterations,
                converged,
                log_likelihood_per_call,
            },
        ))
    }

    fn transpose(&mut self) {
        let np = self.np;
        for i in 0..np {
            for j in 0..np {
                self.at[j * np + i] = self.a[i * np + j];
            }
        }
    }

    /// The configuration.
    pub fn spec(&self) -> &HmmSpec {
        &self.spec
    }

    /// The training alphabet.
    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    /// Number of hidden states.
    pub fn states(&self) -> usize {
        self.n
    }

    /// Calls trained on (summed over iterations' data, counted once).
    pub fn trained_calls(&self) -> u64 {
        self.trained_calls
    }

    /// Training log-likelihood per call before each update, in iteration order.
    pub fn history(&self) -> &[f64] {
        &self.history
    }

    /// Changes the test-time settings (threshold, floor, locality), keeping the trained
    /// parameters.
    pub fn set_test_options(
        &mut self,
        threshold: f64,
        floor: f64,
        locality: usize,
    ) -> Result<(), HmmError> {
        let spec = HmmSpec {
            threshold,
            floor,
            locality,
            ..self.spec.clone()
        };
        spec.validate()?;
        self.spec = spec;
        Ok(())
    }

    /// `P(next = j | now = i)`.
    pub fn transition(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.np + j]
    }

    /// `P(call | state)`; 0 for a call outside the alphabet.
    pub fn emission(&self, state: usize, call: u32) -> f64 {
        match self.alphabet.id(call) {
            UNKNOWN => 0.0,
            id => self.b[(usize::from(id) - 1) * self.np + state],
        }
    }

    /// The parameters in their stored form.
    pub fn to_stored(&self) -> StoredHmm {
        let (n, np, k) = (self.n, self.np, self.k);
        let mut a = Vec::with_capacity(n * n);
        for i in 0..n {
            a.extend_from_slice(&self.a[i * np..i * np + n]);
        }
        let mut b = Vec::with_capacity(n * k);
        for j in 0..n {
            b.extend((0..k).map(|s| self.b[s * np + j]));
        }
        StoredHmm {
            spec: self.spec.clone(),
            symbols: self.alphabet.symbols().to_vec(),
            pi: self.pi[..n].to_vec(),
            a,
            b,
            trained_calls: self.trained_calls,
            history: self.history.clone(),
        }
    }

    /// Rebuilds a model from stored parameters, checking every shape and that each
    /// distribution is non-negative, finite and sums to 1 (within 1e-6).
    pub fn from_stored(s: StoredHmm) -> Result<Self, HmmError> {
        s.spec
            .validate()
            .map_err(|e| HmmError::Corrupt(e.to_string()))?;
        let n = s.spec.states;
        let alphabet = Alphabet::from_stored(&s.symbols).map_err(HmmError::Corrupt)?;
        let k = alphabet.len();
        if k == 0 {
            return Err(HmmError::Corrupt("no symbols".into()));
        }
        let shape = |name: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(HmmError::Corrupt(format!(
                    "{name} has {got} values, expected {want}"
                )))
            }
        };
        shape("pi", s.pi.len(), n)?;
        shape("transitions", s.a.len(), n * n)?;
        shape("emissions", s.b.len(), n * k)?;
        let check = |name: &str, row: &[f64]| {
            let ok = row.iter().all(|&x| x.is_finite() && x >= 0.0);
            let sum: f64 = row.iter().sum();
            if ok && (sum - 1.0).abs() <= 1e-6 {
                Ok(())
            } else {
                Err(HmmError::Corrupt(format!(
                    "{name} is not a probability distribution"
                )))
            }
        };
        check("pi", &s.pi)?;
        for row in s.a.chunks_exact(n) {
            check("a transition row", row)?;
        }
        for row in s.b.chunks_exact(k) {
            check("an emission row", row)?;
        }
        let np = n.div_ceil(PAD) * PAD;
        let mut pi = vec![0.0; np];
        pi[..n].copy_from_slice(&s.pi);
        let mut a = vec![0.0; np * np];
        for i in 0..n {
            a[i * np..i * np + n].copy_from_slice(&s.a[i * n..(i + 1) * n]);
        }
        let mut b = vec![0.0; k * np];
        for j in 0..n {
            for sym in 0..k {
                b[sym * np + j] = s.b[j * k + sym];
            }
        }
        let mut m = Hmm {
            spec: s.spec,
            alphabet,
            n,
            np,
            k,
            pi,
            a,
            at: vec![0.0; np * np],
            b,
            trained_calls: s.trained_calls,
            history: s.history,
            arch: Arch::new(),
        };
        m.transpose();
        Ok(m)
    }

    /// A fresh filter state for a new trace (task).
    pub fn state(&self) -> HmmState {
        HmmState {
            alpha: vec![0.0; self.np],
            next: vec![0.0; self.np],
            calls: 0,
        }
    }

    /// Feeds the next call of a trace and returns its predictive probability
    /// `P(call | calls before it)` (at least [`HmmSpec::floor`]).
    pub fn step(&self, st: &mut HmmState, call: u32) -> f64 {
        let id = self.alphabet.id(call);
        let np = self.np;
        let emit = (id != UNKNOWN).then(|| {
            let s = usize::from(id) - 1;
            &self.b[s * np..(s + 1) * np]
        });
        let first = st.calls == 0;
        st.calls += 1;
        let (a, pi) = (&self.a, &self.pi);
        let HmmState { alpha, next, .. } = st;
        let p = self.arch.dispatch(Predict {
            alpha,
            next,
            a,
            pi,
            emit,
            first,
        });
        if p > 0.0 && p.is_finite() {
            let inv = 1.0 / p;
            alpha.iter_mut().for_each(|x| *x *= inv);
        } else {
            // A call never seen in training (or one no likely state emits): only time
            // passes, the filter keeps the prediction.
            std::mem::swap(alpha, next);
        }
        p.max(self.spec.floor)
    }

    /// Scores a whole trace: anomalies (calls below the threshold) into
    /// `scratch.anomalies`, and the locality frame count, rate and mean negative
    /// log-likelihood.
    pub fn score_trace(&self, calls: &[u32], scratch: &mut HmmScratch) -> HmmTraceScore {
        scratch.anomalies.clear();
        let st = scratch.state.get_or_insert_with(|| self.state());
        if st.alpha.len() != self.np {
            *st = self.state();
        }
        st.calls = 0;
        let mut nll = 0.0;
        for (pos, &c) in calls.iter().enumerate() {
            let p = self.step(st, c);
            nll -= p.ln();
            if p < self.spec.threshold {
                scratch.anomalies.push(Anomaly {
                    pos: pos as u32,
                    misses: 1,
                });
            }
        }
        HmmTraceScore {
            score: TraceScore::new(
                calls.len() as u64,
                calls.len() as u64,
                &scratch.anomalies,
                self.spec.locality,
            ),
            nll,
        }
    }
}

/// One task's filter: the distribution over hidden states given its calls so far.
/// Memory is two vectors of the (padded) state count, whatever the trace length.
#[derive(Debug, Clone)]
pub struct HmmState {
    alpha: Vec<f64>,
    next: Vec<f64>,
    calls: u64,
}

impl HmmState {
    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The current filtered distribution over the model's states.
    pub fn distribution(&self) -> &[f64] {
        &self.alpha
    }
}

/// Reusable buffers for [`Hmm::score_trace`].
#[derive(Debug, Clone, Default)]
pub struct HmmScratch {
    state: Option<HmmState>,
    /// Anomalies of the last scored trace, in call order.
    pub anomalies: Vec<Anomaly>,
}

/// What one trace scored under an HMM.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HmmTraceScore {
    /// Calls, anomalous calls, largest locality frame count.
    pub score: TraceScore,
    /// Sum over calls of `-ln P(call | before)`.
    pub nll: f64,
}

impl HmmTraceScore {
    /// Mean negative log-likelihood per call (0 for an empty trace).
    pub fn mean_nll(&self) -> f64 {
        if self.score.calls == 0 {
            0.0
        } else {
            self.nll / self.score.calls as f64
        }
    }
}

/// Scores one trace as its calls arrive, with the locality frame: the streaming
/// counterpart of [`Hmm::score_trace`] (same results), memory bounded by the model.
#[derive(Debug, Clone)]
pub struct HmmStream {
    state: HmmState,
    frame: LocalityFrame,
    score: HmmTraceScore,
}

impl HmmStream {
    /// A scorer for a new trace under `hmm`.
    pub fn new(hmm: &Hmm) -> Self {
        HmmStream {
            state: hmm.state(),
            frame: LocalityFrame::new(hmm.spec.locality),
            score: HmmTraceScore::default(),
        }
    }

    /// Scores the next call; returns `(probability, anomalous, current LFC)`.
    pub fn call(&mut self, hmm: &Hmm, call: u32) -> (f64, bool, u32) {
        let p = hmm.step(&mut self.state, call);
        let bad = p < hmm.spec.threshold;
        let s = &mut self.score;
        s.nll -= p.ln();
        s.score.calls += 1;
        s.score.units += 1;
        if bad {
            s.score.mismatches += 1;
            s.score.misses += 1;
        }
        let lfc = self.frame.push(bad);
        s.score.max_lfc = s.score.max_lfc.max(lfc);
        (p, bad, lfc)
    }

    /// The score so far.
    pub fn score(&self) -> HmmTraceScore {
        self.score
    }
}

// ---------------------------------------------------------------------------------
// Kernels. All `#[inline(always)]`, and entered through `WithSimd` impls whose
// `with_simd` is `#[inline(always)]` too: that is what makes them compile inside
// pulp's target-feature function (AVX2 + FMA when available). A plain closure is not
// enough: when it is not inlined, it is compiled for the baseline CPU, where every
// `mul_add` becomes a call into libm.

/// One filter step: predicts into `next`, then conditions on the call into `alpha`
/// (unnormalised); returns the predictive probability (0 for an unknown call).
struct Predict<'a> {
    alpha: &'a mut [f64],
    next: &'a mut [f64],
    a: &'a [f64],
    pi: &'a [f64],
    emit: Option<&'a [f64]>,
    first: bool,
}

impl WithSimd for Predict<'_> {
    type Output = f64;
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> f64 {
        if self.first {
            self.next.copy_from_slice(self.pi);
        } else {
            mat_vec(self.alpha, self.a, self.next);
        }
        let Some(b) = self.emit else { return 0.0 };
        for ((x, &y), &e) in self.alpha.iter_mut().zip(self.next.iter()).zip(b) {
            *x = y * e;
        }
        sum(self.alpha)
    }
}

struct Forward<'a> {
    hmm: &'a Hmm,
    group: &'a [Vec<u16>],
    work: &'a mut Work,
}

impl WithSimd for Forward<'_> {
    type Output = f64;
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> f64 {
        forward(self.hmm, self.group, self.work)
    }
}

struct EStep<'a> {
    hmm: &'a Hmm,
    group: &'a [Vec<u16>],
    work: &'a mut Work,
    acc: &'a mut Accum,
}

impl WithSimd for EStep<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        e_step_group(self.hmm, self.group, self.work, self.acc)
    }
}

/// `out = x^T M` for a row-major `np x np` matrix `M` (rows are streamed; blocks of
/// `out` stay in registers). Summation over rows is in row order, so results do not
/// depend on the block width.
#[inline(always)]
fn mat_vec(x: &[f64], m: &[f64], out: &mut [f64]) {
    let np = out.len();
    let mut j = 0;
    while j + 32 <= np {
        mat_vec_block::<32>(x, m, out, j);
        j += 32;
    }
    while j + 8 <= np {
        mat_vec_block::<8>(x, m, out, j);
        j += 8;
    }
}

#[inline(always)]
fn mat_vec_block<const W: usize>(x: &[f64], m: &[f64], out: &mut [f64], j: usize) {
    let np = out.len();
    let mut acc = [0.0f64; W];
    for (i, &xi) in x.iter().enumerate() {
        let row: &[f64; W] = m[i * np + j..i * np + j + W].try_into().unwrap();
        for l in 0..W {
            acc[l] = xi.mul_add(row[l], acc[l]);
        }
    }
    out[j..j + W].copy_from_slice(&acc);
}

/// Traces per lockstep group.
const G: usize = 8;

/// `out[g] = xs[g]^T M` for `G` vectors at once: each row block of `M` is loaded once
/// and used `G` times. Per output the sum runs over rows in order with the same fused
/// multiply-adds as [`mat_vec`], so the results are identical to it.
#[inline(always)]
fn mat_vec_multi(xs: &[&[f64]; G], m: &[f64], out: &mut [f64]) {
    let np = xs[0].len();
    let mut j = 0;
    while j + 16 <= np {
        mat_vec_multi_block::<16>(xs, m, out, j, np);
        j += 16;
    }
    while j + 8 <= np {
        mat_vec_multi_block::<8>(xs, m, out, j, np);
        j += 8;
    }
}

#[inline(always)]
fn mat_vec_multi_block<const W: usize>(
    xs: &[&[f64]; G],
    m: &[f64],
    out: &mut [f64],
    j: usize,
    np: usize,
) {
    let mut acc = [[0.0f64; W]; G];
    let xs: [&[f64]; G] = std::array::from_fn(|g| &xs[g][..np]);
    for i in 0..np {
        let row: &[f64; W] = m[i * np + j..i * np + j + W].try_into().unwrap();
        for g in 0..G {
            let x = xs[g][i];
            for l in 0..W {
                acc[g][l] = x.mul_add(row[l], acc[g][l]);
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        out[g * np + j..g * np + j + W].copy_from_slice(a);
    }
}

/// Sum in 8 interleaved lanes (vectorisable; the order is fixed, so deterministic).
#[inline(always)]
fn sum(x: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    let tail: f64 = x.chunks_exact(8).remainder().iter().sum();
    lanes.iter().sum::<f64>() + tail
}

/// `acc[i][j] += sum_k coef[k][i] * w[k][j]` for a block of `BLOCK` steps: the
/// transition counts as a small matrix product, `acc` row by row.
#[inline(always)]
fn outer_block(acc: &mut [f64], alpha: &[f64], rows: &[usize; BLOCK], w: &[f64], np: usize) {
    for i in 0..np {
        let coef: [f64; BLOCK] = std::array::from_fn(|k| alpha[rows[k] * np + i]);
        let row = &mut acc[i * np..(i + 1) * np];
        let mut j = 0;
        while j + 8 <= np {
            let r: &mut [f64; 8] = (&mut row[j..j + 8]).try_into().unwrap();
            let mut v = *r;
            for (k, &c) in coef.iter().enumerate() {
                let wk: &[f64; 8] = w[k * np + j..k * np + j + 8].try_into().unwrap();
                for l in 0..8 {
                    v[l] = c.mul_add(wk[l], v[l]);
                }
            }
            *r = v;
            j += 8;
        }
    }
}

// ---------------------------------------------------------------------------------
// Training.

/// Expected counts from one chunk of traces.
#[derive(Debug, Clone)]
struct Accum {
    pi: Vec<f64>,
    /// `sum_t alpha_t(i) w_{t+1}(j)`; times `A(i, j)` gives the expected transitions.
    xi: Vec<f64>,
    /// Symbol-major expected emissions.
    b: Vec<f64>,
    ll: f64,
}

impl Accum {
    fn new(np: usize, k: usize) -> Self {
        Accum {
            pi: vec![0.0; np],
            xi: vec![0.0; np * np],
            b: vec![0.0; k * np],
            ll: 0.0,
        }
    }

    fn clear(&mut self) {
        self.pi.fill(0.0);
        self.xi.fill(0.0);
        self.b.fill(0.0);
        self.ll = 0.0;
    }

    fn add(&mut self, o: &Accum) {
        let add = |x: &mut Vec<f64>, y: &Vec<f64>| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        add(&mut self.pi, &o.pi);
        add(&mut self.xi, &o.xi);
        add(&mut self.b, &o.b);
        self.ll += o.ll;
    }
}

/// Per-thread buffers for the E-step of one group of up to `G` traces.
#[derive(Debug)]
struct Work {
    /// Scaled forward variables of each trace, `T x np`.
    alpha: [Vec<f64>; G],
    /// Scaling factors `c_t` of each trace.
    scale: [Vec<f64>; G],
    /// `G x np`: backward variables, one row per trace.
    beta: Vec<f64>,
    /// `G x np`: output of the batched matrix-vector product.
    next: Vec<f64>,
    /// `G x BLOCK x np`: `w_{t+1} = b(o_{t+1}) * beta_{t+1} / c_{t+1}` for one block of
    /// steps of each trace.
    w: Vec<f64>,
    /// Input for the slots of traces that are shorter than the group's longest.
    zeros: Vec<f64>,
}

impl Default for Work {
    fn default() -> Self {
        Work {
            alpha: std::array::from_fn(|_| Vec::new()),
            scale: std::array::from_fn(|_| Vec::new()),
            beta: Vec::new(),
            next: Vec::new(),
            w: Vec::new(),
            zeros: Vec::new(),
        }
    }
}

/// Baum-Welch over a fixed set of traces: the traces as dense ids, cut into chunks,
/// with their accumulators kept between iterations.
#[derive(Debug)]
pub struct Trainer {
    /// Traces as 0-based symbol rows.
    traces: Vec<Vec<u16>>,
    /// `chunks[c]` is a range of `traces`.
    chunks: Vec<std::ops::Range<usize>>,
    accs: Vec<Accum>,
    total: Accum,
    calls: u64,
}

impl Trainer {
    /// Prepares `traces` for training `hmm` (every call must be in its alphabet; empty
    /// traces are ignored).
    pub fn new(hmm: &Hmm, traces: &[&[u32]]) -> Result<Self, HmmError> {
        let mut enc = Vec::with_capacity(traces.len());
        for t in traces.iter().filter(|t| !t.is_empty()) {
            let mut ids = Vec::with_capacity(t.len());
            for &c in *t {
                match hmm.alphabet.id(c) {
                    UNKNOWN => {
                        return Err(HmmError::Data(format!(
                            "call {c} is not in the model's alphabet"
                        )))
                    }
                    id => ids.push(id - 1),
                }
            }
            enc.push(ids);
        }
        let calls: u64 = enc.iter().map(|t| t.len() as u64).sum();
        if calls == 0 {
            return Err(HmmError::Data("no system calls to train on".into()));
        }
        // Contiguous chunks of about equal call counts; boundaries depend on the data
        // only, so the reduction order is the same for every thread count.
        let per = calls.div_ceil(CHUNKS as u64);
        let mut chunks = Vec::new();
        let (mut start, mut acc) = (0, 0u64);
        for (i, t) in enc.iter().enumerate() {
            acc += t.len() as u64;
            if acc >= per {
                chunks.push(start..i + 1);
                start = i + 1;
                acc = 0;
            }
        }
        if start < enc.len() {
            chunks.push(start..enc.len());
        }
        // Within a chunk, traces go by length, so that the groups of `G` traces that
        // run in lockstep have similar lengths and little padding.
        for r in &chunks {
            enc[r.clone()].sort_by_key(|t| t.len());
        }
        let accs = chunks.iter().map(|_| Accum::new(hmm.np, hmm.k)).collect();
        Ok(Trainer {
            traces: enc,
            chunks,
            accs,
            total: Accum::new(hmm.np, hmm.k),
            calls,
        })
    }

    /// Calls in the training set.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// One Baum-Welch iteration: E-step over all traces (parallel), then the update.
    /// Returns the log-likelihood per call of the parameters before the update.
    pub fn iterate(&mut self, hmm: &mut Hmm) -> Result<f64, HmmError> {
        self.e_step(hmm);
        let ll = self.total.ll / self.calls as f64;
        if !ll.is_finite() {
            return Err(HmmError::Data(
                "training log-likelihood is not finite (numerical underflow)".into(),
            ));
        }
        m_step(hmm, &self.total);
        hmm.history.push(ll);
        hmm.trained_calls = self.calls;
        Ok(ll)
    }

    /// Log-likelihood per call of the traces under `hmm` (forward pass only).
    pub fn log_likelihood(&self, hmm: &Hmm) -> f64 {
        let lls: Vec<f64> = self
            .chunks
            .par_iter()
            .map_init(Work::default, |work, r| {
                self.traces[r.clone()]
                    .chunks(G)
                    .map(|group| hmm.arch.dispatch(Forward { hmm, group, work }))
                    .sum::<f64>()
            })
            .collect();
        lls.iter().sum::<f64>() / self.calls as f64
    }

    fn e_step(&mut self, hmm: &Hmm) {
        let traces = &self.traces;
        self.accs
            .par_iter_mut()
            .zip(self.chunks.par_iter())
            .for_each_init(Work::default, |work, (acc, r)| {
                acc.clear();
                for group in traces[r.clone()].chunks(G) {
                    hmm.arch.dispatch(EStep {
                        hmm,
                        group,
                        work,
                        acc,
                    });
                }
            });
        self.total.clear();
        for a in &self.accs {
            self.total.add(a);
        }
    }
}

/// Scaled forward pass of up to `G` traces in lockstep; fills `work.alpha` and
/// `work.scale`, returns the sum of `ln P(trace)`.
///
/// Running several traces at once reads each row of `A` once for all of them, which
/// turns the memory-bound matrix-vector product into a compute-bound one. Each trace's
/// numbers are exactly those of running it alone (same operations in the same order).
#[inline(always)]
fn forward(hmm: &Hmm, group: &[Vec<u16>], work: &mut Work) -> f64 {
    let np = hmm.np;
    let longest = group.iter().map(Vec::len).max().unwrap_or(0);
    for (g, obs) in group.iter().enumerate() {
        if work.alpha[g].len() < obs.len() * np {
            work.alpha[g].resize(obs.len() * np, 0.0);
        }
        if work.scale[g].len() < obs.len() {
            work.scale[g].resize(obs.len(), 0.0);
        }
    }
    work.next.resize(G * np, 0.0);
    work.zeros.resize(np, 0.0);
    let mut ll = 0.0;
    for t in 0..longest {
        if t > 0 {
            let xs: [&[f64]; G] = std::array::from_fn(|g| match group.get(g) {
                Some(obs) if t < obs.len() => &work.alpha[g][(t - 1) * np..t * np],
                _ => &work.zeros[..],
            });
            mat_vec_multi(&xs, &hmm.a, &mut work.next);
        }
        for (g, obs) in group.iter().enumerate() {
            let Some(&o) = obs.get(t) else { continue };
            let o = usize::from(o);
            let cur = &mut work.alpha[g][t * np..(t + 1) * np];
            let pred = if t == 0 {
                &hmm.pi[..]
            } else {
                &work.next[g * np..(g + 1) * np]
            };
            for ((x, &p), &e) in cur.iter_mut().zip(pred).zip(&hmm.b[o * np..(o + 1) * np]) {
                *x = p * e;
            }
            // A zero here would mean the trace is impossible under the model; keep the
            // arithmetic finite and let the caller see the resulting huge loss.
            let c = sum(cur).max(f64::MIN_POSITIVE);
            let inv = 1.0 / c;
            cur.iter_mut().for_each(|x| *x *= inv);
            work.scale[g][t] = c;
            ll += c.ln();
        }
    }
    ll
}

/// Expected counts of up to `G` traces (run in lockstep from their ends), added into
/// `acc`.
#[inline(always)]
fn e_step_group(hmm: &Hmm, group: &[Vec<u16>], work: &mut Work, acc: &mut Accum) {
    let np = hmm.np;
    acc.ll += forward(hmm, group, work);
    work.beta.clear();
    work.beta.resize(G * np, 1.0);
    work.w.clear();
    work.w.resize(G * BLOCK * np, 0.0);
    let Work {
        alpha,
        scale,
        beta,
        next,
        w,
        zeros,
    } = work;
    // Padded states have alpha = 0, so beta = 1 there adds nothing.
    for (g, obs) in group.iter().enumerate() {
        if let Some(last) = obs.len().checked_sub(1) {
            gamma_into(
                &mut acc.b,
                obs,
                &alpha[g],
                last,
                &beta[g * np..(g + 1) * np],
                np,
            );
        }
    }
    let mut rows = [[0usize; BLOCK]; G];
    let mut filled = [0usize; G];
    let longest = group.iter().map(Vec::len).max().unwrap_or(0);
    // Step `r` takes each trace from `t + 1 = len - 1 - r` back to `t`.
    for r in 0..longest.saturating_sub(1) {
        let mut active = [false; G];
        for (g, obs) in group.iter().enumerate() {
            let Some(t) = obs.len().checked_sub(2 + r) else {
                continue;
            };
            active[g] = true;
            let o = usize::from(obs[t + 1]);
            let inv = 1.0 / scale[g][t + 1];
            let slot = (g * BLOCK + filled[g]) * np;
            let wk = &mut w[slot..slot + np];
            for ((x, &e), &bt) in wk
                .iter_mut()
                .zip(&hmm.b[o * np..(o + 1) * np])
                .zip(&beta[g * np..(g + 1) * np])
            {
                *x = e * bt * inv;
            }
            rows[g][filled[g]] = t;
        }
        {
            let xs: [&[f64]; G] = std::array::from_fn(|g| {
                if active[g] {
                    let slot = (g * BLOCK + filled[g]) * np;
                    &w[slot..slot + np]
                } else {
                    &zeros[..]
                }
            });
            mat_vec_multi(&xs, &hmm.at, next);
        }
        for (g, obs) in group.iter().enumerate() {
            if !active[g] {
                continue;
            }
            let t = obs.len() - 2 - r;
            let bg = &mut beta[g * np..(g + 1) * np];
            bg.copy_from_slice(&next[g * np..(g + 1) * np]);
            gamma_into(&mut acc.b, obs, &alpha[g], t, bg, np);
            filled[g] += 1;
            if filled[g] == BLOCK || t == 0 {
                // Unfilled slots get zero weights: they add exact zeros.
                let wg = &mut w[g * BLOCK * np..(g + 1) * BLOCK * np];
                wg[filled[g] * np..].fill(0.0);
                for row in rows[g].iter_mut().skip(filled[g]) {
                    *row = t;
                }
                outer_block(&mut acc.xi, &alpha[g], &rows[g], wg, np);
                filled[g] = 0;
            }
        }
    }
    for (g, obs) in group.iter().enumerate() {
        if obs.is_empty() {
            continue;
        }
        let b0 = &beta[g * np..(g + 1) * np];
        for ((p, &a), &b) in acc.pi.iter_mut().zip(&alpha[g][..np]).zip(b0) {
            *p = a.mul_add(b, *p);
        }
    }
}

/// Adds `gamma_t = alpha_t * beta_t` to the emission counts of the call at `t`.
#[inline(always)]
fn gamma_into(acc_b: &mut [f64], obs: &[u16], alpha: &[f64], t: usize, beta: &[f64], np: usize) {
    let o = usize::from(obs[t]);
    let row = &mut acc_b[o * np..(o + 1) * np];
    let a = &alpha[t * np..(t + 1) * np];
    for ((r, &x), &y) in row.iter_mut().zip(a).zip(beta) {
        *r = x.mul_add(y, *r);
    }
}

/// The re-estimation from expected counts. A state that was never occupied keeps its
/// old rows (they do not affect the likelihood), so no division by zero.
fn m_step(hmm: &mut Hmm, acc: &Accum) {
    let (n, np, k) = (hmm.n, hmm.np, hmm.k);
    let total: f64 = acc.pi[..n].iter().sum();
    if total > 0.0 {
        for i in 0..n {
            hmm.pi[i] = acc.pi[i] / total;
        }
    }
    for i in 0..n {
        let row = &mut hmm.a[i * np..i * np + n];
        let xi = &acc.xi[i * np..i * np + n];
        let s: f64 = row.iter().zip(xi).map(|(a, x)| a * x).sum();
        if s > 0.0 {
            row.iter_mut().zip(xi).for_each(|(a, x)| *a = *a * x / s);
        }
    }
    for j in 0..n {
        let s: f64 = (0..k).map(|sym| acc.b[sym * np + j]).sum();
        if s > 0.0 {
            for sym in 0..k {
                hmm.b[sym * np + j] = acc.b[sym * np + j] / s;
            }
        }
    }
    hmm.transpose();
}

// ---------------------------------------------------------------------------------
// The `hmm` entry of the model registry: `--model hmm` in train, scan and eval.

/// Trace scores, in [`Detector::score_names`] order: the mean negative log-likelihood
/// first (the HMM's own measure, and on ADFA-LD its best; docs/models.md), then the
/// locality frame count and the rate of calls below the threshold.
pub const SCORE_NAMES: [&str; 3] = ["mean_nll", "max_lfc", "rate"];

/// Parameters read from `-P name=value`.
pub const PARAMS: [&str; 7] = [
    "states",
    "iterations",
    "tolerance",
    "seed",
    "threshold",
    "floor",
    "locality",
];

/// Payload version, the first field of the stored form.
const PAYLOAD_VERSION: u16 = 1;

impl HmmSpec {
    /// A spec from registry parameters (defaults for those absent).
    pub fn from_params(p: &Params) -> Result<Self, DetectorError> {
        let d = HmmSpec::default();
        let spec = HmmSpec {
            states: p.get("hmm", "states", d.states)?,
            iterations: p.get("hmm", "iterations", d.iterations)?,
            tolerance: p.get("hmm", "tolerance", d.tolerance)?,
            seed: p.get("hmm", "seed", d.seed)?,
            threshold: p.get("hmm", "threshold", d.threshold)?,
            floor: p.get("hmm", "floor", d.floor)?,
            locality: p.get("hmm", "locality", d.locality)?,
        };
        spec.validate().map_err(|e| DetectorError::Param {
            model: "hmm".into(),
            msg: e
                .to_string()
                .trim_start_matches("invalid hmm model: ")
                .into(),
        })?;
        Ok(spec)
    }
}

fn trace_result(s: &HmmTraceScore) -> TraceResult {
    TraceResult {
        calls: s.score.calls,
        anomalies: Some(s.score.mismatches),
        scores: vec![s.mean_nll(), f64::from(s.score.max_lfc), s.score.rate()],
    }
}

impl Detector for Hmm {
    fn kind(&self) -> &str {
        "hmm"
    }
    fn describe(&self) -> String {
        format!(
            "states={} iters={} threshold={} L={}",
            self.n,
            self.history.len(),
            self.spec.threshold,
            self.spec.locality
        )
    }
    fn score_names(&self) -> Vec<String> {
        SCORE_NAMES.iter().map(|s| s.to_string()).collect()
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        let mut own = HmmScratch {
            state: None,
            anomalies: std::mem::take(&mut scratch.anomalies),
        };
        let s = Hmm::score_trace(self, calls, &mut own);
        scratch.anomalies = own.anomalies;
        trace_result(&s)
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(DetectorStream {
            hmm: self,
            inner: HmmStream::new(self),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.trained_calls
    }
    fn profile_size(&self) -> usize {
        self.n * self.n + self.n * self.k + self.n
    }
    fn size_unit(&self) -> &'static str {
        "parameters"
    }
    fn symbols(&self) -> Vec<u32> {
        self.alphabet.symbols().to_vec()
    }
    fn save(&self) -> Vec<u8> {
        postcard::to_allocvec(&(PAYLOAD_VERSION, self.to_stored()))
            .expect("serialising plain data into a Vec cannot fail")
    }
}

/// The registry's streaming form: per-call score = `-ln P(call | before)`.
struct DetectorStream<'a> {
    hmm: &'a Hmm,
    inner: HmmStream,
}

impl TraceStream for DetectorStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        -self.inner.call(self.hmm, call).0.ln()
    }
    fn finish(self: Box<Self>) -> TraceResult {
        trace_result(&self.inner.score())
    }
}

/// Training through the registry: buffers the traces (Baum-Welch makes many passes).
#[derive(Debug)]
pub struct HmmBuilder {
    spec: HmmSpec,
    traces: Vec<Vec<u32>>,
}

impl HmmBuilder {
    /// An empty training set for `spec`.
    pub fn new(spec: HmmSpec) -> Self {
        HmmBuilder {
            spec,
            traces: Vec::new(),
        }
    }
}

impl DetectorBuilder for HmmBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        self.traces.push(calls.to_vec());
    }
    fn build(self: Box<Self>, progress: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        let refs: Vec<&[u32]> = self.traces.iter().map(Vec::as_slice).collect();
        let total = self.spec.iterations as u64;
        let (hmm, _) =
            Hmm::train(self.spec, &refs, |it, _| progress(it as u64, total)).map_err(|e| {
                DetectorError::Train {
                    model: "hmm".into(),
                    msg: e.to_string(),
                }
            })?;
        progress(total, total);
        Ok(Box::new(hmm))
    }
}

/// The registry entry: `--model hmm`, `-P states=64,iterations=50,...`.
pub fn entry() -> Entry {
    Entry {
        name: "hmm".into(),
        aliases: vec!["warrender".into()],
        about: "hidden Markov model, Baum-Welch (Warrender et al. 1999)".into(),
        params: PARAMS.iter().map(|s| s.to_string()).collect(),
        build: Arc::new(|p| {
            Ok(Box::new(HmmBuilder::new(HmmSpec::from_params(p)?)) as Box<dyn DetectorBuilder>)
        }),
        load: Arc::new(|payload| {
            let corrupt = |msg: String| DetectorError::Corrupt {
                model: "hmm".into(),
                msg,
            };
            let (version, stored): (u16, StoredHmm) = decode_all(payload).map_err(corrupt)?;
            if version != PAYLOAD_VERSION {
                return Err(corrupt(format!(
                    "payload version {version} is not supported (this build reads {PAYLOAD_VERSION})"
                )));
            }
            let hmm = Hmm::from_stored(stored).map_err(|e| corrupt(e.to_string()))?;
            Ok(Box::new(hmm) as Box<dyn Detector>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-state, 2-symbol model with known parameters (calls 10 and 20).
    fn hand_model() -> Hmm {
        Hmm::from_stored(StoredHmm {
            spec: HmmSpec {
                states: 2,
                threshold: 0.3,
                locality: 3,
                ..HmmSpec::default()
            },
            symbols: vec![10, 20],
            pi: vec![0.6, 0.4],
            a: vec![0.7, 0.3, 0.4, 0.6],
            // state 0 emits 10 w.p. 0.9; state 1 emits 10 w.p. 0.2.
            b: vec![0.9, 0.1, 0.2, 0.8],
            trained_calls: 0,
            history: vec![],
        })
        .unwrap()
    }

    #[test]
    fn forward_probabilities_by_hand() {
        let m = hand_model();
        let mut st = m.state();
        // P(o1 = 10) = 0.6 * 0.9 + 0.4 * 0.2 = 0.62.
        let p1 = m.step(&mut st, 10);
        assert!((p1 - 0.62).abs() < 1e-15, "{p1}");
        // Filter: (0.54, 0.08) / 0.62. Predict: s0 = (0.54*0.7 + 0.08*0.4)/0.62 =
        // 0.41/0.62, s1 = (0.54*0.3 + 0.08*0.6)/0.62 = 0.21/0.62.
        // P(o2 = 20 | o1) = (0.41*0.1 + 0.21*0.8) / 0.62 = 0.209 / 0.62.
        let p2 = m.step(&mut st, 20);
        assert!((p2 - 0.209 / 0.62).abs() < 1e-15, "{p2}");
        // Filter: (0.041, 0.168) / 0.209; predict s0 = (0.041*0.7 + 0.168*0.4)/0.209
        // = 0.0959/0.209, s1 = (0.041*0.3 + 0.168*0.6)/0.209 = 0.1131/0.209.
        // P(o3 = 20) = (0.0959*0.1 + 0.1131*0.8)/0.209 = 0.10007/0.209.
        let p3 = m.step(&mut st, 20);
        assert!((p3 - 0.10007 / 0.209).abs() < 1e-15, "{p3}");
        // The joint probability is the product: 0.10007, as enumerating paths gives.
        let joint: f64 = {
            let (pi, a, b) = (
                [0.6, 0.4],
                [[0.7, 0.3], [0.4, 0.6]],
                [[0.9, 0.1], [0.2, 0.8]],
            );
            let obs = [0, 1, 1];
            let mut total = 0.0;
            for s0 in 0..2 {
                for s1 in 0..2 {
                    for s2 in 0..2 {
                        total += pi[s0]
                            * b[s0][obs[0]]
                            * a[s0][s1]
                            * b[s1][obs[1]]
                            * a[s1][s2]
                            * b[s2][obs[2]];
                    }
                }
            }
            total
        };
        assert!((p1 * p2 * p3 - joint).abs() < 1e-15);
        assert!((joint - 0.10007).abs() < 1e-15);
    }

    #[test]
    fn unknown_call_gets_the_floor_and_only_advances_time() {
        let m = hand_model();
        let mut st = m.state();
        m.step(&mut st, 10);
        let before = st.distribution()[..2].to_vec();
        assert_eq!(m.step(&mut st, 99), m.spec().floor);
        // One transition, no evidence: (0.54*0.7 + 0.08*0.4, ...) / 0.62.
        let d = st.distribution();
        let want0 = before[0] * 0.7 + before[1] * 0.4;
        assert!((d[0] - want0).abs() < 1e-15);
        assert!((d[0] + d[1] - 1.0).abs() < 1e-15);
        // An unknown first call leaves the initial distribution.
        let mut st = m.state();
        m.step(&mut st, 99);
        assert_eq!(&st.distribution()[..2], &[0.6, 0.4]);
    }

    #[test]
    fn trace_scores_and_stream_agree() {
        let m = hand_model();
        let trace = [10, 20, 20, 99, 10, 10, 20, 20, 20];
        let mut scratch = HmmScratch::default();
        let s = m.score_trace(&trace, &mut scratch);
        let mut stream = HmmStream::new(&m);
        let mut nll = 0.0;
        for &c in &trace {
            let (p, bad, _) = stream.call(&m, c);
            assert_eq!(bad, p < 0.3);
            nll -= p.ln();
        }
        assert_eq!(stream.score(), s);
        assert!((s.nll - nll).abs() < 1e-12);
        assert_eq!(s.score.calls, 9);
        // The unknown call (at the floor) is certainly anomalous.
        assert!(scratch.anomalies.iter().any(|a| a.pos == 3));
        assert!((s.mean_nll() - nll / 9.0).abs() < 1e-12);
    }

    /// Exhaustive forward-backward on a tiny model, for checking the fast E-step.
    fn brute_counts(m: &Hmm, obs: &[u16]) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, np, k) = (m.n, m.np, m.k);
        let len = obs.len();
        let mut ll = 0.0;
        let mut pi = vec![0.0; n];
        let mut xi = vec![0.0; n * n];
        let mut eb = vec![0.0; k * n];
        let paths = n.pow(len as u32);
        for code in 0..paths {
            let mut s = Vec::with_capacity(len);
            let mut c = code;
            for _ in 0..len {
                s.push(c % n);
                c /= n;
            }
            let mut p = m.pi[s[0]] * m.b[usize::from(obs[0]) * np + s[0]];
            for t in 1..len {
                p *= m.a[s[t - 1] * np + s[t]] * m.b[usize::from(obs[t]) * np + s[t]];
            }
            ll += p;
            pi[s[0]] += p;
            for t in 1..len {
                xi[s[t - 1] * n + s[t]] += p;
            }
            for t in 0..len {
                eb[usize::from(obs[t]) * n + s[t]] += p;
            }
        }
        for v in pi.iter_mut().chain(xi.iter_mut()).chain(eb.iter_mut()) {
            *v /= ll;
        }
        (ll.ln(), pi, xi, eb)
    }

    #[test]
    fn e_step_matches_path_enumeration() {
        let spec = HmmSpec {
            states: 3,
            seed: 7,
            ..HmmSpec::default()
        };
        let m = Hmm::init(spec, Alphabet::from_symbols(&[1, 2, 3, 4])).unwrap();
        // Lengths 1, 2 and 10 cover the single-step trace and a partial final block;
        // run alone and as one lockstep group (with an empty slot), the counts must be
        // the sums over paths.
        let traces = [vec![2u16], vec![0, 3], vec![0, 1, 2, 3, 3, 2, 1, 0, 0, 1]];
        let mut groups: Vec<Vec<Vec<u16>>> = traces.iter().map(|t| vec![t.clone()]).collect();
        groups.push(traces.to_vec());
        for group in groups {
            let mut want = (0.0, vec![0.0; 3], vec![0.0; 9], vec![0.0; 12]);
            for obs in &group {
                let (ll, pi, xi, eb) = brute_counts(&m, obs);
                want.0 += ll;
                want.1.iter_mut().zip(pi).for_each(|(a, b)| *a += b);
                want.2.iter_mut().zip(xi).for_each(|(a, b)| *a += b);
                want.3.iter_mut().zip(eb).for_each(|(a, b)| *a += b);
            }
            let (ll, pi, xi, eb) = want;
            let mut acc = Accum::new(m.np, m.k);
            let mut work = Work::default();
            e_step_group(&m, &group, &mut work, &mut acc);
            assert!((acc.ll - ll).abs() < 1e-10, "{} vs {ll}", acc.ll);
            for i in 0..3 {
                assert!((acc.pi[i] - pi[i]).abs() < 1e-12);
                for j in 0..3 {
                    let got = acc.xi[i * m.np + j] * m.a[i * m.np + j];
                    assert!((got - xi[i * 3 + j]).abs() < 1e-12, "xi {i} {j}");
                }
                for s in 0..4 {
                    assert!((acc.b[s * m.np + i] - eb[s * 3 + i]).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn a_model_past_the_shared_id_round_trips() {
        // Trained on 600 distinct calls, ids past MAX_ID shared: what it stores loads.
        let spec = HmmSpec {
            states: 2,
            ..HmmSpec::default()
        };
        let symbols: Vec<u32> = (0..600).collect();
        let m = Hmm::init(spec, Alphabet::from_symbols(&symbols)).unwrap();
        let s = m.to_stored();
        let back = Hmm::from_stored(s.clone()).unwrap();
        assert_eq!(back.to_stored(), s);
        let mut bad = s;
        bad.symbols[550] = bad.symbols[2];
        let err = Hmm::from_stored(bad).unwrap_err().to_string();
        assert!(err.contains("stored twice"), "{err}");
    }

    #[test]
    fn stored_round_trip_and_corruption() {
        let m = hand_model();
        let s = m.to_stored();
        let back = Hmm::from_stored(s.clone()).unwrap();
        assert_eq!(back.to_stored(), s);
        let mut bad = s.clone();
        bad.a[0] = 0.9;
        assert!(Hmm::from_stored(bad).is_err());
        let mut bad = s.clone();
        bad.b.pop();
        assert!(Hmm::from_stored(bad).is_err());
        let mut bad = s.clone();
        bad.pi[0] = f64::NAN;
        assert!(Hmm::from_stored(bad).is_err());
        let mut bad = s;
        bad.spec.states = 0;
        assert!(Hmm::from_stored(bad).is_err());
    }

    #[test]
    fn spec_ranges() {
        assert!(HmmSpec::default().validate().is_ok());
        for bad in [
            HmmSpec {
                states: 0,
                ..HmmSpec::default()
            },
            HmmSpec {
                states: MAX_STATES + 1,
                ..HmmSpec::default()
            },
            HmmSpec {
                tolerance: f64::NAN,
                ..HmmSpec::default()
            },
            HmmSpec {
                threshold: 2.0,
                ..HmmSpec::default()
            },
            HmmSpec {
                floor: 0.0,
                ..HmmSpec::default()
            },
            HmmSpec {
                locality: 0,
                ..HmmSpec::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(Hmm::train(HmmSpec::default(), &[], |_, _| {}).is_err());
        assert!(Hmm::train(HmmSpec::default(), &[&[]], |_, _| {}).is_err());
    }

    fn lcg_traces(seed: u64, count: usize, symbols: u32) -> Vec<Vec<u32>> {
        let mut r = SplitMix64(seed);
        (0..count)
            .map(|_| {
                let len = 1 + (r.next_u64() % 40) as usize;
                // Some structure: a noisy cycle through the symbols.
                let mut c = (r.next_u64() % u64::from(symbols)) as u32;
                (0..len)
                    .map(|_| {
                        c = if r.next_u64().is_multiple_of(4) {
                            (r.next_u64() % u64::from(symbols)) as u32
                        } else {
                            (c + 1) % symbols
                        };
                        c
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn training_is_deterministic_across_thread_counts() {
        let traces = lcg_traces(3, 120, 9);
        let refs: Vec<&[u32]> = traces.iter().map(|t| t.as_slice()).collect();
        let spec = HmmSpec {
            states: 11,
            iterations: 6,
            tolerance: 0.0,
            seed: 42,
            ..HmmSpec::default()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| Hmm::train(spec.clone(), &refs, |_, _| {}).unwrap())
        };
        let (one, r1) = run(1);
        let (two, r2) = run(2);
        assert_eq!(r1, r2);
        assert_eq!(one.to_stored(), two.to_stored());
        // A different seed gives a different model.
        let other = Hmm::train(
            HmmSpec {
                seed: 43,
                ..spec.clone()
            },
            &refs,
            |_, _| {},
        )
        .unwrap()
        .0;
        assert_ne!(other.to_stored().a, one.to_stored().a);
    }

    #[test]
    fn training_learns_a_cycle() {
        // A strict cycle 1 -> 2 -> 3 -> 1 with 3 states is learnable exactly; after
        // training, the next call of the cycle is near-certain and a break is anomalous.
        let traces: Vec<Vec<u32>> = (0..20)
            .map(|s| (0..30).map(|i| 1 + (i + s) % 3).collect())
            .collect();
        let refs: Vec<&[u32]> = traces.iter().map(|t| t.as_slice()).collect();
        let spec = HmmSpec {
            states: 3,
            iterations: 200,
            tolerance: 1e-10,
            threshold: 0.01,
            ..HmmSpec::default()
        };
        let (m, report) = Hmm::train(spec, &refs, |_, _| {}).unwrap();
        assert!(report.log_likelihood_per_call > -0.05, "{report:?}");
        let mut scratch = HmmScratch::default();
        let good = m.score_trace(&[1, 2, 3, 1, 2, 3, 1, 2], &mut scratch);
        assert_eq!(good.score.mismatches, 0);
        let bad = m.score_trace(&[1, 2, 3, 1, 3, 2, 1, 2], &mut scratch);
        assert!(bad.score.mismatches >= 1);
        assert!(bad.mean_nll() > good.mean_nll());
    }

    #[test]
    fn registry_entry_trains_streams_and_round_trips() {
        let traces = lcg_traces(5, 40, 6);
        let mut reg = crate::registry::Registry::new();
        reg.register(entry());
        let p = Params::parse("states=5,iterations=4,threshold=0.05,locality=4").unwrap();
        let e = entry();
        let mut b = (e.build)(&p).unwrap();
        for t in &traces {
            b.add_trace(t);
        }
        let calls = std::sync::Mutex::new(vec![]);
        let d = b
            .build(&|done, total| calls.lock().unwrap().push((done, total)))
            .unwrap();
        assert_eq!(calls.lock().unwrap().last(), Some(&(4, 4)));
        assert_eq!(d.score_names(), ["mean_nll", "max_lfc", "rate"]);
        let test = [0u32, 1, 2, 3, 4, 5, 77, 5, 4, 3];
        let mut scratch = Scratch::default();
        let whole = d.score_trace(&test, &mut scratch);
        let mut s = d.stream();
        let mut nll = 0.0;
        for &c in &test {
            nll += s.call(c);
        }
        let streamed = s.finish();
        assert_eq!(whole, streamed);
        assert!((whole.scores[0] - nll / 10.0).abs() < 1e-12);
        assert_eq!(whole.anomalies, Some(scratch.anomalies.len() as u64));
        let loaded = (e.load)(&d.save()).unwrap();
        assert_eq!(loaded.score_trace(&test, &mut scratch), whole);
        // Damaged payloads are errors, never panics.
        let bytes = d.save();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!((e.load)(&bytes[..cut]).is_err());
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!((e.load)(&bad).is_err());
        // Every byte flipped in turn: Ok or Err, and a model that loads scores.
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut p = bytes.clone();
                p[i] ^= bit;
                if let Ok(m) = (e.load)(&p) {
                    m.score_trace(&test, &mut scratch);
                }
            }
        }
        assert!((e.build)(&Params::parse("states=0").unwrap()).is_err());
        assert!((e.build)(&Params::parse("states=x").unwrap()).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// EM never lowers the likelihood of its training data.
        #[test]
        fn baum_welch_never_decreases_the_likelihood(
            traces in proptest::collection::vec(
                proptest::collection::vec(1u32..6, 1..25), 1..7),
            states in 1usize..6,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let refs: Vec<&[u32]> = traces.iter().map(|t| t.as_slice()).collect();
            let spec = HmmSpec { states, iterations: 12, tolerance: 0.0, seed, ..HmmSpec::default() };
            let (m, report) = Hmm::train(spec, &refs, |_, _| {}).unwrap();
            let h = m.history();
            proptest::prop_assert_eq!(h.len(), 12);
            for w in h.windows(2) {
                proptest::prop_assert!(w[1] >= w[0] - 1e-9, "{:?}", h);
            }
            proptest::prop_assert!(report.log_likelihood_per_call >= h[11] - 1e-9);
        }
    }
}
