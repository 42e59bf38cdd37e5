//! stide and t-stide: databases of fixed-length call windows.
//!
//! stide (Forrest, Hofmeyr, Somayaji, Longstaff 1996; Warrender et al. 1999) stores
//! every length-`k` window seen in training; a test window not in the database is a
//! mismatch. t-stide also treats windows that were rare in training (share below
//! `rare_fraction`) as mismatches, since rare windows are where attacks hide in normal
//! data. Both reduce to one membership test per call, against "all windows" or
//! "common windows", so they share this code and the same speed.
//!
//! Edges: windows exist from the `k`-th call on; a trace shorter than `k` is one short
//! window, padded with a symbol no call has, so it only matches an identical short
//! training trace.

use crate::alphabet::Alphabet;
use crate::locality::{Anomaly, TraceScore};
use crate::model::{Cursor, Model, ModelKind, ModelSpec, Scratch};
use crate::table::{Key, KeySet};
use crate::window::{both, roll, Width, WindowDb};

/// stide or t-stide (by `spec.kind`).
#[derive(Debug, Clone)]
pub struct Stide {
    spec: ModelSpec,
    inner: Width<StideDb<u64>, StideDb<u128>>,
}

#[derive(Debug, Clone)]
struct StideDb<K: Key> {
    db: WindowDb<K>,
    /// Windows that test as normal: all of them for stide, the common ones for t-stide.
    accept: KeySet<K>,
}

impl<K: Key> StideDb<K> {
    fn train_call(&mut self, cur: &mut Cursor, call: u32) -> bool {
        let id = self.db.alphabet.intern(call);
        let key = roll::<K>(cur, id, self.db.mask);
        self.db.calls += 1;
        if cur.calls >= self.db.k as u64 {
            self.db.add(key)
        } else {
            false
        }
    }

    fn train_end(&mut self, cur: &mut Cursor) -> bool {
        if cur.calls > 0 && cur.calls < self.db.k as u64 {
            let key = K::from_u128(cur.key).unwrap_or_default();
            return self.db.add(key);
        }
        false
    }

    fn finish(&mut self, spec: &ModelSpec) {
        let keys = self.db.counts.iter();
        self.accept = if spec.kind == ModelKind::TStide {
            // Rare when count / total < fraction, i.e. count < fraction * total.
            let limit = spec.rare_fraction * self.db.total as f64;
            KeySet::from_keys(keys.filter(|&(_, c)| f64::from(c) >= limit).map(|(k, _)| k))
        } else {
            KeySet::from_keys(keys.map(|(k, _)| k))
        };
    }

    fn test_call(&self, cur: &mut Cursor, call: u32) -> u32 {
        let key = roll::<K>(cur, self.db.alphabet.id(call), self.db.mask);
        u32::from(cur.calls >= self.db.k as u64 && !self.accept.contains(key))
    }

    fn test_end(&self, cur: &mut Cursor) -> u32 {
        if cur.calls > 0 && cur.calls < self.db.k as u64 {
            let key = K::from_u128(cur.key).unwrap_or_default();
            return u32::from(!self.accept.contains(key));
        }
        0
    }

    /// The tuned whole-trace loop: same result as stepping, no cursor traffic.
    fn test_trace(&self, calls: &[u32], out: &mut Vec<Anomaly>) {
        let k = self.db.k;
        let mask = self.db.mask;
        let alphabet = &self.db.alphabet;
        let mut key = K::padded(k);
        if calls.len() < k {
            for &c in calls {
                key = key.push(alphabet.id(c), mask);
            }
            if !calls.is_empty() && !self.accept.contains(key) {
                out.push(Anomaly {
                    pos: calls.len() as u32 - 1,
                    misses: 1,
                });
            }
            return;
        }
        let (head, rest) = calls.split_at(k - 1);
        for &c in head {
            key = key.push(alphabet.id(c), mask);
        }
        for (i, &c) in rest.iter().enumerate() {
            key = key.push(alphabet.id(c), mask);
            if !self.accept.contains(key) {
                out.push(Anomaly {
                    pos: (i + k - 1) as u32,
                    misses: 1,
                });
            }
        }
    }
}

impl Stide {
    /// An empty database (spec assumed validated by [`crate::AnyModel::new`]).
    pub fn new(spec: ModelSpec) -> Self {
        let inner = if spec.window <= u64::MAX_WINDOW {
            Width::Narrow(StideDb {
                db: WindowDb::new(spec.window),
                accept: KeySet::default(),
            })
        } else {
            Width::Wide(StideDb {
                db: WindowDb::new(spec.window),
                accept: KeySet::default(),
            })
        };
        Stide { spec, inner }
    }

    /// The symbol map.
    pub fn alphabet(&self) -> &Alphabet {
        both!(&self.inner, s => &s.db.alphabet)
    }

    /// Total training windows (with repeats).
    pub fn total_windows(&self) -> u64 {
        both!(&self.inner, s => s.db.total)
    }

    /// Every distinct training window (widened) with its count, sorted by key.
    pub fn windows(&self) -> Vec<(u128, u32)> {
        both!(&self.inner, s => s.db.stored_windows())
    }

    /// Rebuilds a trained database from stored parts; `None` when a key does not fit.
    pub(crate) fn from_parts(
        spec: ModelSpec,
        symbols: &[u32],
        windows: &[(u128, u32)],
        calls: u64,
    ) -> Option<Self> {
        let mut m = Stide::new(spec);
        both!(&mut m.inner, s => s.db.restore(symbols, windows, calls))?;
        m.finish();
        Some(m)
    }
}

impl Model for Stide {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn cursor(&self) -> Cursor {
        Cursor::new(both!(&self.inner, s => s.db.padded()))
    }
    fn train_call(&mut self, cursor: &mut Cursor, call: u32) -> bool {
        both!(&mut self.inner, s => s.train_call(cursor, call))
    }
    fn train_end(&mut self, cursor: &mut Cursor) -> bool {
        both!(&mut self.inner, s => s.train_end(cursor))
    }
    fn finish(&mut self) {
        let spec = &self.spec;
        both!(&mut self.inner, s => s.finish(spec))
    }
    fn test_call(&self, cursor: &mut Cursor, call: u32) -> u32 {
        both!(&self.inner, s => s.test_call(cursor, call))
    }
    fn test_end(&self, cursor: &mut Cursor) -> u32 {
        both!(&self.inner, s => s.test_end(cursor))
    }
    fn trained_calls(&self) -> u64 {
        both!(&self.inner, s => s.db.calls)
    }
    fn profile_size(&self) -> usize {
        both!(&self.inner, s => s.db.counts.len())
    }
    fn test_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceScore {
        scratch.anomalies.clear();
        both!(&self.inner, s => s.test_trace(calls, &mut scratch.anomalies));
        TraceScore::new(
            calls.len() as u64,
            self.spec.units(calls.len()),
            &scratch.anomalies,
            self.spec.locality,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::AnyModel;

    fn trained(kind: ModelKind, k: usize, traces: &[&[u32]]) -> AnyModel {
        let mut m = AnyModel::new(ModelSpec::new(kind).with_window(k)).unwrap();
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
    fn stide_mismatch_positions_by_hand() {
        // Training windows (k=3): 123 234 341 412.
        let m = trained(ModelKind::Stide, 3, &[&[1, 2, 3, 4, 1, 2]]);
        assert_eq!(m.profile_size(), 4);
        // Test: windows 123 (ok) 235 (bad, ends at 3) 351 (bad, 4) 512 (bad, 5) 123 (ok, 6)
        assert_eq!(positions(&m, &[1, 2, 3, 5, 1, 2, 3]), vec![3, 4, 5]);
        let mut s = Scratch::default();
        let score = m.test_trace(&[1, 2, 3, 5, 1, 2, 3], &mut s);
        assert_eq!((score.units, score.mismatches, score.max_lfc), (5, 3, 3));
        // An unknown call number is a symbol too: 9 never trained.
        assert_eq!(positions(&m, &[1, 2, 9]), vec![2]);
    }

    #[test]
    fn short_traces_are_one_short_window() {
        let m = trained(ModelKind::Stide, 4, &[&[1, 2], &[1, 2, 3, 4]]);
        assert_eq!(positions(&m, &[1, 2]), Vec::<u32>::new());
        // [1, 2, 3] is a prefix of a training window but was never a whole trace.
        assert_eq!(positions(&m, &[1, 2, 3]), vec![2]);
        assert_eq!(positions(&m, &[]), Vec::<u32>::new());
    }

    #[test]
    fn tstide_flags_rare_windows() {
        // 1000 copies of window 111, and one window 112: share 1/1001 of windows.
        let mut trace = vec![1u32; 1002];
        trace.push(2);
        let mut spec = ModelSpec::new(ModelKind::TStide).with_window(3);
        spec.rare_fraction = 0.01;
        let mut m = AnyModel::new(spec).unwrap();
        m.train_trace(&trace);
        m.finish();
        assert_eq!(positions(&m, &[1, 1, 2]), vec![2]);
        assert_eq!(positions(&m, &[1, 1, 1]), Vec::<u32>::new());
        // plain stide accepts it
        let s = trained(ModelKind::Stide, 3, &[&trace]);
        assert_eq!(positions(&s, &[1, 1, 2]), Vec::<u32>::new());
    }

    #[test]
    fn stepping_matches_the_tuned_loop() {
        for k in [1, 3, 6, 7, 8, 14] {
            let m = trained(ModelKind::Stide, k, &[&[1, 2, 3, 4, 5, 1, 2, 3, 6, 1, 2]]);
            for t in [
                &[1u32, 2, 3, 4, 5, 6, 1, 2, 3][..],
                &[2, 3],
                &[1, 2, 3, 4, 5, 1, 2, 3],
            ] {
                let mut c = m.cursor();
                let mut stepped = vec![];
                for (i, &x) in t.iter().enumerate() {
                    if m.test_call(&mut c, x) > 0 {
                        stepped.push(i as u32);
                    }
                }
                if m.test_end(&mut c) > 0 {
                    stepped.push(t.len() as u32 - 1);
                }
                assert_eq!(stepped, positions(&m, t), "k={k} trace={t:?}");
            }
        }
    }
}
