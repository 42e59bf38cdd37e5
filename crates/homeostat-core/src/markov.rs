//! An n-gram Markov model of system calls.
//!
//! The probability of a call given the `n - 1` calls before it is estimated from
//! training counts with additive (Lidstone) smoothing over the training alphabet plus
//! one "unknown call" symbol:
//! `P(c | ctx) = (count(ctx, c) + a) / (count(ctx) + a * (|alphabet| + 1))`.
//! A call is anomalous when that probability is below `threshold`. Unlike stide, every
//! call is tested: contexts reaching back before the trace's start are padded with a
//! start symbol, as n-gram language models do, so the first calls are judged too.
//!
//! The threshold is fixed per profile, so [`Markov::finish`] turns probabilities into
//! the set of accepted n-grams; testing is then one membership test per call, the
//! same cost as stide, with a second lookup only on the rare miss.

use crate::alphabet::Alphabet;
use crate::locality::{Anomaly, TraceScore};
use crate::model::{Cursor, Model, ModelSpec, Scratch};
use crate::table::{CountTable, Key, KeySet};
use crate::window::{both, roll, Width, WindowDb};

/// A Markov / n-gram profile.
#[derive(Debug, Clone)]
pub struct Markov {
    spec: ModelSpec,
    inner: Width<MarkovDb<u64>, MarkovDb<u128>>,
}

#[derive(Debug, Clone)]
struct MarkovDb<K: Key> {
    db: WindowDb<K>,
    /// n-grams whose smoothed probability reaches the threshold.
    accept: KeySet<K>,
    /// Contexts seen in training.
    seen_ctx: KeySet<K>,
    /// Contexts so rarely seen that even an unseen next call is probable enough.
    lenient_ctx: KeySet<K>,
    /// Whether a call after a never-seen context (probability 1 / (|alphabet| + 1))
    /// passes.
    unseen_ctx_ok: bool,
}

impl<K: Key> MarkovDb<K> {
    fn new(n: usize) -> Self {
        MarkovDb {
            db: WindowDb::new(n),
            accept: KeySet::default(),
            seen_ctx: KeySet::default(),
            lenient_ctx: KeySet::default(),
            unseen_ctx_ok: false,
        }
    }

    fn finish(&mut self, spec: &ModelSpec) {
        let mut ctx_counts = CountTable::<K>::default();
        for (k, c) in self.db.counts.iter() {
            ctx_counts.add(k.context(), c);
        }
        let a = spec.smoothing;
        let symbols = (self.db.alphabet.len() + 1) as f64;
        let theta = spec.threshold;
        let prob = |c: f64, total: f64| (c + a) / (total + a * symbols);
        self.accept = KeySet::from_keys(
            self.db
                .counts
                .iter()
                .filter(|&(k, c)| {
                    prob(f64::from(c), f64::from(ctx_counts.count(k.context()))) >= theta
                })
                .map(|(k, _)| k),
        );
        self.seen_ctx = KeySet::from_keys(ctx_counts.iter().map(|(k, _)| k));
        self.lenient_ctx = KeySet::from_keys(
            ctx_counts
                .iter()
                .filter(|&(_, c)| prob(0.0, f64::from(c)) >= theta)
                .map(|(k, _)| k),
        );
        self.unseen_ctx_ok = prob(0.0, 0.0) >= theta;
    }

    #[inline]
    fn anomalous(&self, key: K) -> bool {
        if self.accept.contains(key) {
            return false;
        }
        self.rejected_miss(key)
    }

    #[cold]
    fn rejected_miss(&self, key: K) -> bool {
        let ctx = key.context();
        if self.seen_ctx.contains(ctx) {
            !self.lenient_ctx.contains(ctx)
        } else {
            !self.unseen_ctx_ok
        }
    }

    fn test_trace(&self, calls: &[u32], out: &mut Vec<Anomaly>) {
        let mask = self.db.mask;
        let alphabet = &self.db.alphabet;
        let mut key = K::padded(self.db.k);
        for (i, &c) in calls.iter().enumerate() {
            key = key.push(alphabet.id(c), mask);
            if self.anomalous(key) {
                out.push(Anomaly {
                    pos: i as u32,
                    misses: 1,
                });
            }
        }
    }
}

impl Markov {
    /// An empty model (spec assumed validated).
    pub fn new(spec: ModelSpec) -> Self {
        let inner = if spec.window <= u64::MAX_WINDOW {
            Width::Narrow(MarkovDb::new(spec.window))
        } else {
            Width::Wide(MarkovDb::new(spec.window))
        };
        Markov { spec, inner }
    }

    /// The symbol map.
    pub fn alphabet(&self) -> &Alphabet {
        both!(&self.inner, m => &m.db.alphabet)
    }

    /// Every distinct training n-gram (widened) with its count, sorted by key.
    pub fn windows(&self) -> Vec<(u128, u32)> {
        both!(&self.inner, m => m.db.stored_windows())
    }

    /// Rebuilds a trained model from stored parts; `None` when a key does not fit.
    pub(crate) fn from_parts(
        spec: ModelSpec,
        symbols: &[u32],
        windows: &[(u128, u32)],
        calls: u64,
    ) -> Option<Self> {
        let mut m = Markov::new(spec);
        both!(&mut m.inner, s => s.db.restore(symbols, windows, calls))?;
        m.finish();
        Some(m)
    }
}

impl Model for Markov {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn cursor(&self) -> Cursor {
        Cursor::new(both!(&self.inner, m => m.db.padded()))
    }
    fn train_call(&mut self, cursor: &mut Cursor, call: u32) -> bool {
        both!(&mut self.inner, m => {
            let id = m.db.alphabet.intern(call);
            let key = roll(cursor, id, m.db.mask);
            m.db.calls += 1;
            m.db.add(key)
        })
    }
    fn train_end(&mut self, _cursor: &mut Cursor) -> bool {
        false
    }
    fn finish(&mut self) {
        let spec = &self.spec;
        both!(&mut self.inner, m => m.finish(spec))
    }
    fn test_call(&self, cursor: &mut Cursor, call: u32) -> u32 {
        both!(&self.inner, m => {
            let key = roll(cursor, m.db.alphabet.id(call), m.db.mask);
            u32::from(m.anomalous(key))
        })
    }
    fn test_end(&self, _cursor: &mut Cursor) -> u32 {
        0
    }
    fn trained_calls(&self) -> u64 {
        both!(&self.inner, m => m.db.calls)
    }
    fn profile_size(&self) -> usize {
        both!(&self.inner, m => m.db.counts.len())
    }
    fn test_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceScore {
        scratch.anomalies.clear();
        both!(&self.inner, m => m.test_trace(calls, &mut scratch.anomalies));
        TraceScore::new(
            calls.len() as u64,
            calls.len() as u64,
            &scratch.anomalies,
            self.spec.locality,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::AnyModel;
    use crate::model::ModelKind;

    fn model(n: usize, threshold: f64, traces: &[&[u32]]) -> AnyModel {
        let mut spec = ModelSpec::new(ModelKind::Markov).with_window(n);
        spec.threshold = threshold;
        spec.smoothing = 0.5;
        let mut m = AnyModel::new(spec).unwrap();
        for t in traces {
            m.train_trace(t);
        }
        m.finish();
        m
    }

    fn positions(m: &AnyModel, trace: &[u32]) -> Vec<u32> {
        let mut s = Scratch::default();
        m.test_trace(trace, &mut s);
        s.anomalies.iter().map(|a| a.pos).collect()
    }

    #[test]
    fn probabilities_by_hand() {
        // Bigram model on "1 2 1 2 1 3": alphabet {1,2,3} + unknown = 4 symbols, a = 0.5.
        // Context 1 seen 3 times: P(2|1) = (2+.5)/(3+2) = .5, P(3|1) = 1.5/5 = .3,
        // P(1|1) = .5/5 = .1. Context <start>: P(1|start) = 1.5/3 = .5, P(2|start) = .5/3.
        let m = model(2, 0.2, &[&[1, 2, 1, 2, 1, 3]]);
        assert_eq!(positions(&m, &[1, 2, 1, 3]), Vec::<u32>::new());
        // 1 1: P(1|1) = .1 < .2 -> anomaly at 1. 2 first: P(2|start) = .167 < .2.
        assert_eq!(positions(&m, &[1, 1]), vec![1]);
        assert_eq!(positions(&m, &[2]), vec![0]);
        // Context 3 never seen: P = 1/4 = .25 >= .2, so whatever follows 3 passes.
        assert_eq!(positions(&m, &[1, 3, 3]), Vec::<u32>::new());
        let strict = model(2, 0.3, &[&[1, 2, 1, 2, 1, 3]]);
        assert_eq!(positions(&strict, &[1, 3, 3]), vec![2]);
        // Context 2 seen twice, never followed by 3: P(3|2) = .5/(2+2) = .125.
        assert_eq!(positions(&m, &[1, 2, 3]), vec![2]);
        let lenient = model(2, 0.1, &[&[1, 2, 1, 2, 1, 3]]);
        assert_eq!(positions(&lenient, &[1, 2, 3]), Vec::<u32>::new());
    }

    #[test]
    fn stepping_matches_the_tuned_loop() {
        for n in [1, 2, 3, 8] {
            let m = model(n, 0.2, &[&[1, 2, 3, 4, 5, 1, 2, 3, 6, 1, 2]]);
            for t in [&[1u32, 2, 3, 4, 5, 6, 1, 2, 3][..], &[2, 3], &[9, 9, 1]] {
                let mut c = m.cursor();
                let stepped: Vec<u32> = t
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| m.test_call(&mut c, x) > 0)
                    .map(|(i, _)| i as u32)
                    .collect();
                assert_eq!(stepped, positions(&m, t), "n={n} trace={t:?}");
            }
        }
    }
}
