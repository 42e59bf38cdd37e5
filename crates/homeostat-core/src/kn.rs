//! An interpolated Kneser-Ney n-gram language model of system calls (`--model kn`).
//!
//! The Markov model turns probabilities into a yes/no per call at a fixed threshold,
//! and its additive smoothing gives every unseen continuation of a known context the
//! same tiny probability. A smoothed language model grades surprise instead: a call's
//! score is its negative log-likelihood given the `n - 1` calls before it, and the
//! trace's score the mean over its calls, as for the neural LM, at the cost of a few
//! hash lookups per call. Kneser-Ney (Chen and Goodman 1998's interpolated form, one
//! absolute discount per order) backs off to lower orders in proportion to how many
//! distinct calls follow a context, and its lower orders count in how many contexts a
//! call appears rather than how often, which is what a back-off distribution should
//! measure.
//!
//! ```text
//! P_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .) + D_k N1+(h .) / c_k(h .) P_{k-1}(w | h')
//! ```
//!
//! with `c_n` the raw counts, `c_k` for `k < n` the continuation counts
//! `N1+(. h w)`, `h'` the context without its oldest call, `D_k = n1 / (n1 + 2 n2)`
//! from the order's count-of-counts, and below order 1 the uniform distribution over
//! the training calls plus one "unknown" symbol (every call training never saw), so
//! every probability is positive. A context training never saw passes its lower
//! order's probability through. Contexts reaching back before a trace's start are
//! padded with a start symbol, so the first calls are judged too.
//!
//! Trace scores: `mean_nll` (primary), `max_frame_nll` (the largest mean NLL over
//! `locality` consecutive calls), `rate` (calls with probability below `threshold`).
//! Streaming keeps the last `n - 1` calls and a ring of `locality` NLLs per trace.
//! The profile stores the highest-order counts; every other table is rebuilt on load,
//! so they cannot disagree.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap as StdHashMap;
use std::collections::VecDeque;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alphabet::{Alphabet, MAX_ID, PAD, SYMBOL_BITS};
use crate::classic::decode_all;
use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress, TraceResult, TraceStream,
};
use crate::model::Scratch;
use crate::registry::Entry;

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// The registry name and profile kind tag.
pub const KIND: &str = "kn";
/// Largest order: seven 9-bit symbols pack into one `u64` key.
pub const MAX_ORDER: usize = 7;
/// Payload layout version.
const VERSION: u32 = 1;
/// Parameters the model reads.
pub const PARAMS: [&str; 4] = ["order", "threshold", "locality", "discount"];
/// The trace scores, primary first.
pub const SCORE_NAMES: [&str; 3] = ["mean_nll", "max_frame_nll", "rate"];

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnConfig {
    /// n: the call is predicted from the `n - 1` before it.
    pub order: usize,
    /// A call below this probability counts in `rate`.
    pub threshold: f64,
    /// Calls per frame of `max_frame_nll`.
    pub locality: usize,
    /// A fixed discount for every order in (0, 1); 0 = estimate each order's
    /// `n1 / (n1 + 2 n2)` from its counts.
    pub discount: f64,
}

impl Default for KnConfig {
    fn default() -> Self {
        // order: chosen on training data only (docs/models.md, `tune_kn`).
        KnConfig {
            order: 7,
            threshold: 0.001,
            locality: 20,
            discount: 0.0,
        }
    }
}

impl KnConfig {
    /// The defaults overridden by `p`.
    pub fn from_params(p: &Params) -> Result<Self, DetectorError> {
        let d = KnConfig::default();
        let c = KnConfig {
            order: p.get(KIND, "order", d.order)?,
            threshold: p.get(KIND, "threshold", d.threshold)?,
            locality: p.get(KIND, "locality", d.locality)?,
            discount: p.get(KIND, "discount", d.discount)?,
        };
        c.validate().map_err(|msg| DetectorError::Param {
            model: KIND.into(),
            msg,
        })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ORDER).contains(&self.order) {
            return Err(format!("order={} out of range 1..={MAX_ORDER}", self.order));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("threshold={} not in (0, 1)", self.threshold));
        }
        if !(1..=1 << 16).contains(&self.locality) {
            return Err(format!("locality={} out of range 1..=65536", self.locality));
        }
        if !(self.discount == 0.0 || (self.discount > 0.0 && self.discount < 1.0)) {
            return Err(format!(
                "discount={} not 0 (estimated) or in (0, 1)",
                self.discount
            ));
        }
        Ok(())
    }
}

fn push(key: u64, sym: u16) -> u64 {
    (key << SYMBOL_BITS) | u64::from(sym)
}

/// The last `k` symbols of a packed key.
fn tail(key: u64, k: usize) -> u64 {
    if k == 0 {
        0
    } else {
        key & ((1u64 << (SYMBOL_BITS as usize * k)) - 1)
    }
}

/// One order's table.
#[derive(Debug, Default)]
struct Order {
    /// Count (raw at the top order, continuation below) of each k-gram.
    grams: HashMap<u64, u32>,
    /// Per context (the k-gram without its last call): total count, distinct calls.
    contexts: HashMap<u64, (u32, u32)>,
    discount: f64,
}

/// A trained model.
#[derive(Debug)]
pub struct Kn {
    config: KnConfig,
    alphabet: Alphabet,
    /// `orders[k - 1]` is order k.
    orders: Vec<Order>,
    /// Training calls.
    calls: u64,
    /// Highest-order counts, as stored.
    top: Vec<(u64, u32)>,
    /// Uniform share: 1 / (training calls' alphabet + unknown).
    uniform: f64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    config: KnConfig,
    symbols: Vec<u32>,
    calls: u64,
    top: Vec<(u64, u32)>,
}

impl Kn {
    fn from_counts(
        config: KnConfig,
        alphabet: Alphabet,
        calls: u64,
        mut top: Vec<(u64, u32)>,
    ) -> Result<Self, String> {
        config.validate()?;
        let n = config.order;
        top.sort_unstable();
        let max_id = alphabet.len() as u64;
        let mut orders: Vec<Order> = (0..n).map(|_| Order::default()).collect();
        for w in top.windows(2) {
            if w[0].0 == w[1].0 {
                return Err("an n-gram is stored twice".into());
            }
        }
        for &(key, count) in &top {
            if count == 0 {
                return Err("an n-gram with count 0".into());
            }
            if key >> (SYMBOL_BITS as usize * n).min(63) != 0 {
                return Err("an n-gram longer than the order".into());
            }
            // Every position holds a known call or the start pad; only the last (the
            // predicted call) cannot be the pad, and pads only lead.
            let mut seen_call = false;
            for i in (0..n).rev() {
                let s = (key >> (SYMBOL_BITS as usize * i)) & u64::from(PAD);
                if s == u64::from(PAD) {
                    if seen_call || i == 0 {
                        return Err("a start symbol after a call".into());
                    }
                } else if s == 0 || s > max_id {
                    return Err(format!("symbol id {s} outside the alphabet"));
                } else {
                    seen_call = true;
                }
            }
            orders[n - 1].grams.insert(key, count);
        }
        // Continuation counts: each distinct (k+1)-gram adds one to its last k calls.
        for k in (1..n).rev() {
            let keys: Vec<u64> = orders[k].grams.keys().copied().collect();
            let lower = &mut orders[k - 1].grams;
            for key in keys {
                *lower.entry(tail(key, k)).or_insert(0) += 1;
            }
        }
        for o in orders.iter_mut() {
            let (mut n1, mut n2) = (0u64, 0u64);
            for (&key, &c) in &o.grams {
                let e = o.contexts.entry(key >> SYMBOL_BITS).or_insert((0, 0));
                e.0 = e.0.saturating_add(c);
                e.1 += 1;
                match c {
                    1 => n1 += 1,
                    2 => n2 += 1,
                    _ => {}
                }
            }
            o.discount = if config.discount > 0.0 {
                config.discount
            } else if n1 > 0 && n2 > 0 {
                (n1 as f64 / (n1 + 2 * n2) as f64).clamp(0.05, 0.95)
            } else {
                0.5
            };
        }
        Ok(Kn {
            uniform: 1.0 / (alphabet.len() + 1) as f64,
            config,
            alphabet,
            orders,
            calls,
            top,
        })
    }

    /// P(w | history), `history` the packed last `n - 1` symbols (pads included).
    fn prob(&self, history: u64, w: u16) -> f64 {
        let mut p = self.uniform;
        for (k, o) in self.orders.iter().enumerate() {
            // Order k + 1: context is the last k symbols of the history.
            let ctx = tail(history, k);
            let Some(&(total, distinct)) = o.contexts.get(&ctx) else {
                continue;
            };
            let c = o.grams.get(&push(ctx, w)).copied().unwrap_or(0);
            let t = f64::from(total);
            p = (f64::from(c) - o.discount).max(0.0) / t + o.discount * f64::from(distinct) / t * p;
        }
        p
    }

    fn start(&self) -> KnState {
        KnState {
            history: self.start_history(),
            sum: 0.0,
            calls: 0,
            below: 0,
            frame: VecDeque::with_capacity(self.config.locality),
            frame_sum: 0.0,
            max_frame: 0.0,
        }
    }

    fn start_history(&self) -> u64 {
        (0..self.config.order - 1).fold(0, |h, _| push(h, PAD))
    }

    fn push_call(&self, s: &mut KnState, call: u32) -> f64 {
        let id = self.alphabet.id(call);
        let p = self.prob(s.history, id);
        let nll = -p.ln();
        s.history = tail(push(s.history, id), self.config.order - 1);
        s.sum += nll;
        s.calls += 1;
        if p < self.config.threshold {
            s.below += 1;
        }
        if s.frame.len() == self.config.locality {
            s.frame_sum -= s.frame.pop_front().unwrap_or(0.0);
        }
        s.frame.push_back(nll);
        s.frame_sum += nll;
        if s.frame.len() == self.config.locality {
            s.max_frame = s.max_frame.max(s.frame_sum / s.frame.len() as f64);
        }
        nll
    }

    fn finish_state(&self, s: &KnState) -> TraceResult {
        let n = s.calls.max(1) as f64;
        // A trace shorter than a frame is one frame.
        let frame = if s.frame.len() < self.config.locality && s.calls > 0 {
            s.frame_sum / s.frame.len() as f64
        } else {
            s.max_frame
        };
        TraceResult {
            calls: s.calls,
            anomalies: Some(s.below),
            scores: vec![s.sum / n, frame, s.below as f64 / n],
        }
    }
}

/// One trace being scored: bounded by the order and the frame length.
#[derive(Debug, Clone)]
struct KnState {
    history: u64,
    sum: f64,
    calls: u64,
    below: u64,
    frame: VecDeque<f64>,
    frame_sum: f64,
    max_frame: f64,
}

struct KnStream<'a> {
    model: &'a Kn,
    state: KnState,
}

impl TraceStream for KnStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        self.model.push_call(&mut self.state, call)
    }
    fn finish(self: Box<Self>) -> TraceResult {
        self.model.finish_state(&self.state)
    }
}

impl Detector for Kn {
    fn kind(&self) -> &str {
        KIND
    }
    fn describe(&self) -> String {
        let d: Vec<String> = self
            .orders
            .iter()
            .map(|o| format!("{:.2}", o.discount))
            .collect();
        format!(
            "n={} D={} threshold={} L={}",
            self.config.order,
            d.join("/"),
            self.config.threshold,
            self.config.locality
        )
    }
    fn score_names(&self) -> Vec<String> {
        SCORE_NAMES.iter().map(|s| s.to_string()).collect()
    }
    fn score_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceResult {
        scratch.anomalies.clear();
        let mut s = self.start();
        for &c in calls {
            self.push_call(&mut s, c);
        }
        self.finish_state(&s)
    }
    fn stream(&self) -> Box<dyn TraceStream + '_> {
        Box::new(KnStream {
            model: self,
            state: self.start(),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.calls
    }
    fn profile_size(&self) -> usize {
        self.top.len()
    }
    fn size_unit(&self) -> &'static str {
        "n-grams"
    }
    fn symbols(&self) -> Vec<u32> {
        self.alphabet.symbols().to_vec()
    }
    fn save(&self) -> Vec<u8> {
        let stored = Stored {
            version: VERSION,
            config: self.config,
            symbols: self.alphabet.symbols().to_vec(),
            calls: self.calls,
            top: self.top.clone(),
        };
        postcard::to_allocvec(&stored).expect("serialising plain data into a Vec cannot fail")
    }
}

/// Training: counts of the highest order, gathered trace by trace (bounded by the
/// distinct n-grams, not the calls).
#[derive(Debug)]
pub struct KnBuilder {
    config: KnConfig,
    alphabet: Alphabet,
    counts: HashMap<u64, u32>,
    calls: u64,
}

impl KnBuilder {
    /// An untrained model.
    pub fn new(config: KnConfig) -> Self {
        KnBuilder {
            config,
            alphabet: Alphabet::new(),
            counts: HashMap::default(),
            calls: 0,
        }
    }

    /// The trained model.
    pub fn finish(self) -> Result<Kn, DetectorError> {
        if self.calls == 0 {
            return Err(DetectorError::Train {
                model: KIND.into(),
                msg: "no training calls".into(),
            });
        }
        Kn::from_counts(
            self.config,
            self.alphabet,
            self.calls,
            self.counts.into_iter().collect(),
        )
        .map_err(|msg| DetectorError::Train {
            model: KIND.into(),
            msg,
        })
    }
}

impl DetectorBuilder for KnBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        let n = self.config.order;
        let mut key = (0..n - 1).fold(0, |h, _| push(h, PAD));
        for &c in calls {
            let id = self.alphabet.intern(c);
            // Past MAX_ID distinct calls ids are shared; they stay valid symbols.
            debug_assert!(id <= MAX_ID);
            key = tail(push(key, id), n);
            let e = self.counts.entry(key).or_insert(0);
            *e = e.saturating_add(1);
            self.calls += 1;
        }
    }

    fn build(self: Box<Self>, _: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        Ok(Box::new(self.finish()?))
    }
}

/// The registry entry.
pub fn entry() -> Entry {
    Entry {
        name: KIND.into(),
        aliases: vec!["kneser-ney".into()],
        about: "interpolated Kneser-Ney n-gram language model (mean NLL per call)".into(),
        params: PARAMS.iter().map(|s| s.to_string()).collect(),
        build: Arc::new(|p| {
            Ok(Box::new(KnBuilder::new(KnConfig::from_params(p)?)) as Box<dyn DetectorBuilder>)
        }),
        load: Arc::new(|payload| {
            let corrupt = |msg| DetectorError::Corrupt {
                model: KIND.into(),
                msg,
            };
            let s: Stored = decode_all(payload).map_err(corrupt)?;
            if s.version != VERSION {
                return Err(corrupt(format!(
                    "payload version {} (want {VERSION})",
                    s.version
                )));
            }
            let alphabet = Alphabet::from_stored(&s.symbols).map_err(corrupt)?;
            Ok(
                Box::new(Kn::from_counts(s.config, alphabet, s.calls, s.top).map_err(corrupt)?)
                    as Box<dyn Detector>,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_past_the_shared_id_loads() {
        // 600 distinct calls: training shares the last id past MAX_ID, and the
        // profile it wrote must load and score alike.
        let t: Vec<u32> = (0..600).collect();
        let m = kn(3, 0.75, &[&t]);
        let d = (entry().load)(&m.save()).unwrap();
        let probe: Vec<u32> = (500..600).chain(0..50).chain([7000]).collect();
        let mut s = Scratch::default();
        assert_eq!(d.score_trace(&probe, &mut s), m.score_trace(&probe, &mut s));
    }

    fn kn(order: usize, discount: f64, traces: &[&[u32]]) -> Kn {
        let mut b = KnBuilder::new(KnConfig {
            order,
            discount,
            locality: 2,
            ..KnConfig::default()
        });
        for t in traces {
            b.add_trace(t);
        }
        b.finish().unwrap()
    }

    #[test]
    fn bigram_probabilities_by_hand() {
        // Training "1 2 1 3" with n = 2, D = 0.5; ids 1, 2, 3 in order; V = 3 + 1.
        // Bigrams (pad counts as a context): S1, 12, 21, 13 once each.
        // Order 1 continuation counts: 1 <- {S, 2}: 2; 2 <- {1}: 1; 3 <- {1}: 1; total 4,
        // 3 distinct. P1(w) = (c - 0.5) / 4 + 0.5 * 3 / 4 * 1/4.
        let m = kn(2, 0.5, &[&[1, 2, 1, 3]]);
        let u = 0.25;
        let p1 = |c: f64| (c - 0.5f64).max(0.0) / 4.0 + 0.5 * 3.0 / 4.0 * u;
        let pad = u64::from(PAD);
        let id = |c: u32| m.alphabet.id(c);
        // Context "1": followed by 2 and 3 (total 2, distinct 2).
        let p_2_after_1 = (1.0 - 0.5) / 2.0 + 0.5 * 2.0 / 2.0 * p1(1.0);
        assert!((m.prob(u64::from(id(1)), id(2)) - p_2_after_1).abs() < 1e-12);
        // An unseen continuation gets only the back-off share.
        let p_1_after_1 = 0.5 * 2.0 / 2.0 * p1(2.0);
        assert!((m.prob(u64::from(id(1)), id(1)) - p_1_after_1).abs() < 1e-12);
        // Start context: only "1" followed it.
        let p_1_first = (1.0 - 0.5) / 1.0 + 0.5 * p1(2.0);
        assert!((m.prob(pad, id(1)) - p_1_first).abs() < 1e-12);
        // Context "3" never seen: the unigram passes through; an unknown call gets
        // only the uniform share.
        assert!((m.prob(u64::from(id(3)), id(2)) - p1(1.0)).abs() < 1e-12);
        assert!((m.prob(u64::from(id(3)), id(99)) - 0.5 * 3.0 / 4.0 * u).abs() < 1e-12);
        // Each context's distribution sums to one over the alphabet plus unknown.
        for h in [pad, u64::from(id(1)), u64::from(id(2)), u64::from(id(3))] {
            let s: f64 = (0..=3).map(|w| m.prob(h, w)).sum();
            assert!((s - 1.0).abs() < 1e-12, "context {h}: sum {s}");
        }
    }

    #[test]
    fn distributions_sum_to_one_at_higher_orders() {
        let t: Vec<u32> = (0..300u32).map(|i| (i * i + i / 7) % 9 + 1).collect();
        let m = kn(4, 0.0, &[&t, &[1, 2, 3, 4, 5]]);
        let v = m.alphabet.len() as u16;
        let mut h = m.start_history();
        for &c in &t[..50] {
            let s: f64 = (0..=v).map(|w| m.prob(h, w)).sum();
            assert!((s - 1.0).abs() < 1e-9, "sum {s}");
            h = tail(push(h, m.alphabet.id(c)), 3);
        }
        // Estimated discounts are in range.
        assert!(m
            .orders
            .iter()
            .all(|o| o.discount > 0.0 && o.discount < 1.0));
    }

    #[test]
    fn scores_rank_a_foreign_trace_higher_and_stream_equals_whole() {
        let normal: Vec<u32> = (0..200).map(|i| [1, 2, 3, 4, 2, 3][i % 6]).collect();
        let m = kn(3, 0.0, &[&normal]);
        let mut s = Scratch::default();
        let a = m.score_trace(&normal[..60], &mut s).scores;
        let odd = [1u32, 2, 3, 4, 4, 4, 1, 3, 2, 9, 9, 2, 3];
        let b = m.score_trace(&odd, &mut s).scores;
        assert!(b[0] > a[0] && b[1] > a[1], "{a:?} vs {b:?}");
        assert!(b[2] >= a[2], "{a:?} vs {b:?}");
        let mut st = m.stream();
        for &c in &odd {
            st.call(c);
        }
        assert_eq!(st.finish().scores, b);
        // An empty trace scores 0.
        assert_eq!(m.score_trace(&[], &mut s).scores, vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn profile_round_trip_and_damage() {
        let t: Vec<u32> = (0..100u32).map(|i| (i * 7) % 5 + 1).collect();
        let m = kn(3, 0.0, &[&t]);
        let e = entry();
        let d = (e.load)(&m.save()).unwrap();
        let probe = [1u32, 2, 3, 8, 1];
        let mut s = Scratch::default();
        assert_eq!(d.score_trace(&probe, &mut s), m.score_trace(&probe, &mut s));
        let payload = m.save();
        for i in 0..payload.len() {
            let mut p = payload.clone();
            p[i] ^= 0x41;
            if let Ok(d) = (e.load)(&p) {
                d.score_trace(&probe, &mut s);
            }
        }
        for n in 0..payload.len() {
            assert!((e.load)(&payload[..n]).is_err(), "truncated at {n} loads");
        }
        assert!(KnConfig::from_params(&Params::parse("order=9").unwrap()).is_err());
        assert!(KnConfig::from_params(&Params::parse("discount=1").unwrap()).is_err());
    }
}
