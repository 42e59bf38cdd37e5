//! Lookahead pairs, as pH stores them.
//!
//! For each call and each distance `d = 1..w-1`, the pair (call `d` back, current call,
//! `d`) must have been seen in training; a call with any missing pair is anomalous,
//! and the number of missing pairs is kept. As in pH, the profile is a table indexed
//! by (current, previous) whose entry is a bitmask of distances, so a test is `w - 1`
//! loads from one row of a table that fits in L1 (w = 9: one byte an entry).
//!
//! Edges: a call at index `t` has only the pairs with `d <= t` (nothing before a
//! trace's start is assumed). With this rule, for `w = k`, every sequence stide accepts
//! is accepted by lookahead pairs too: each pair lies inside some accepted window.

use crate::alphabet::Alphabet;
use crate::locality::{Anomaly, TraceScore};
use crate::model::{Cursor, Model, ModelSpec, Scratch};

/// Ring length of [`Cursor::ring`]: the most predecessors a cursor keeps.
const RING: usize = 32;

/// The distance bitmasks: one byte an entry for w <= 9 (pH's default), four otherwise.
#[derive(Debug, Clone)]
enum Masks {
    Narrow(Vec<u8>),
    Wide(Vec<u32>),
}

impl Masks {
    fn new(w: usize, side_bits: u32) -> Self {
        let n = 1usize << (2 * side_bits);
        if w <= 9 {
            Masks::Narrow(vec![0; n])
        } else {
            Masks::Wide(vec![0; n])
        }
    }

    #[inline]
    fn get(&self, i: usize) -> u32 {
        match self {
            Masks::Narrow(v) => u32::from(v[i]),
            Masks::Wide(v) => v[i],
        }
    }

    /// Sets bit `d - 1` of entry `i`; true when it was not set.
    #[inline]
    fn set(&mut self, i: usize, d: usize) -> bool {
        let bit = 1u32 << (d - 1);
        match self {
            Masks::Narrow(v) => {
                let new = v[i] & bit as u8 == 0;
                v[i] |= bit as u8;
                new
            }
            Masks::Wide(v) => {
                let new = v[i] & bit == 0;
                v[i] |= bit;
                new
            }
        }
    }
}

/// A lookahead-pairs profile.
#[derive(Debug, Clone)]
pub struct Pairs {
    spec: ModelSpec,
    alphabet: Alphabet,
    /// log2 of the table's side; the table is `side x side`, row = current call.
    side_bits: u32,
    train: Masks,
    test: Masks,
    test_side_bits: u32,
    pairs: usize,
    calls: u64,
}

impl Pairs {
    /// An empty profile (spec assumed validated).
    pub fn new(spec: ModelSpec) -> Self {
        let side_bits = 5;
        Pairs {
            train: Masks::new(spec.window, side_bits),
            test: Masks::new(spec.window, side_bits),
            spec,
            alphabet: Alphabet::new(),
            side_bits,
            test_side_bits: side_bits,
            pairs: 0,
            calls: 0,
        }
    }

    /// The symbol map.
    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    /// Every (current id, previous id, distance mask) entry that has a bit set.
    pub fn entries(&self) -> Vec<(u16, u16, u32)> {
        let side = 1usize << self.side_bits;
        let mut v = vec![];
        for i in 0..side * side {
            let m = self.train.get(i);
            if m != 0 {
                v.push(((i / side) as u16, (i % side) as u16, m));
            }
        }
        v
    }

    /// Rebuilds a trained profile from stored parts; `None` on out-of-range data.
    pub(crate) fn from_parts(
        spec: ModelSpec,
        symbols: &[u32],
        entries: &[(u16, u16, u32)],
        calls: u64,
    ) -> Option<Self> {
        let mut m = Pairs::new(spec);
        m.alphabet = Alphabet::from_symbols(symbols);
        m.calls = calls;
        let max_id = m.alphabet.len() as u16;
        let limit = if m.spec.window >= 33 {
            u32::MAX
        } else {
            (1u32 << (m.spec.window - 1)) - 1
        };
        for &(cur, prev, mask) in entries {
            if cur == 0 || prev == 0 || cur > max_id || prev > max_id || mask & !limit != 0 {
                return None;
            }
            m.ensure_side(cur.max(prev));
            let i = m.index(cur, prev);
            for d in 1..m.spec.window {
                if mask & (1 << (d - 1)) != 0 && m.train.set(i, d) {
                    m.pairs += 1;
                }
            }
        }
        m.finish();
        Some(m)
    }

    #[inline]
    fn index(&self, cur: u16, prev: u16) -> usize {
        (usize::from(cur) << self.side_bits) | usize::from(prev)
    }

    /// Grows the table so that `id` has a row and column.
    fn ensure_side(&mut self, id: u16) {
        if usize::from(id) < (1 << self.side_bits) {
            return;
        }
        let mut bits = self.side_bits;
        while usize::from(id) >= (1 << bits) {
            bits += 1;
        }
        let mut bigger = Masks::new(self.spec.window, bits);
        let old_side = 1usize << self.side_bits;
        for i in 0..old_side * old_side {
            let m = self.train.get(i);
            if m != 0 {
                let (cur, prev) = (i / old_side, i % old_side);
                let j = (cur << bits) | prev;
                match &mut bigger {
                    Masks::Narrow(v) => v[j] = m as u8,
                    Masks::Wide(v) => v[j] = m,
                }
            }
        }
        self.train = bigger;
        self.side_bits = bits;
    }

    /// Missing pairs of the call `ids[t]` against up to `w - 1` predecessors, for the
    /// first `w - 1` calls of a trace (the only ones with fewer predecessors).
    fn head_misses(&self, ids: &[u16], t: usize) -> u32 {
        let w = self.spec.window;
        let side_bits = self.test_side_bits;
        let mut miss = 0;
        for d in 1..w.min(t + 1) {
            let i = (usize::from(ids[t]) << side_bits) | usize::from(ids[t - d]);
            miss += u32::from(self.test.get(i) & (1 << (d - 1)) == 0);
        }
        miss
    }
}

/// The tuned loop for pH's byte masks: `W` is the window, known at compile time so
/// the distance loop unrolls and bounds checks fold away.
fn test_narrow<const W: usize>(table: &[u8], side_bits: u32, ids: &[u16], out: &mut Vec<Anomaly>) {
    let side = 1usize << side_bits;
    for (i, win) in ids.windows(W).enumerate() {
        let cur = usize::from(win[W - 1]);
        let row = &table[(cur << side_bits) & (table.len() - side)..][..side];
        let mut miss = 0u32;
        for d in 1..W {
            let m = row[usize::from(win[W - 1 - d]) & (side - 1)];
            miss += u32::from((m >> (d - 1)) & 1 ^ 1);
        }
        if miss != 0 {
            out.push(Anomaly {
                pos: (i + W - 1) as u32,
                misses: miss,
            });
        }
    }
}

impl Model for Pairs {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn cursor(&self) -> Cursor {
        Cursor::new(0)
    }

    fn train_call(&mut self, cur: &mut Cursor, call: u32) -> bool {
        let id = self.alphabet.intern(call);
        self.ensure_side(id);
        self.calls += 1;
        let mut changed = false;
        let back = (cur.calls as usize).min(self.spec.window - 1);
        for d in 1..=back {
            let prev = cur.ring[(cur.calls as usize - d) % RING];
            let i = self.index(id, prev);
            if self.train.set(i, d) {
                self.pairs += 1;
                changed = true;
            }
        }
        cur.ring[cur.calls as usize % RING] = id;
        cur.calls += 1;
        changed
    }

    fn train_end(&mut self, _cursor: &mut Cursor) -> bool {
        false
    }

    fn finish(&mut self) {
        self.test = self.train.clone();
        self.test_side_bits = self.side_bits;
    }

    fn test_call(&self, cur: &mut Cursor, call: u32) -> u32 {
        let id = self.alphabet.id(call);
        let side = 1usize << self.test_side_bits;
        let back = (cur.calls as usize).min(self.spec.window - 1);
        let mut miss = 0;
        for d in 1..=back {
            let prev = cur.ring[(cur.calls as usize - d) % RING];
            // Ids trained after the last finish have no row yet: missing.
            let m = if usize::from(id) < side && usize::from(prev) < side {
                self.test
                    .get((usize::from(id) << self.test_side_bits) | usize::from(prev))
            } else {
                0
            };
            miss += u32::from(m & (1 << (d - 1)) == 0);
        }
        cur.ring[cur.calls as usize % RING] = id;
        cur.calls += 1;
        miss
    }

    fn test_end(&self, _cursor: &mut Cursor) -> u32 {
        0
    }

    fn trained_calls(&self) -> u64 {
        self.calls
    }

    fn profile_size(&self) -> usize {
        self.pairs
    }

    fn test_trace(&self, calls: &[u32], scratch: &mut Scratch) -> TraceScore {
        let Scratch { ids, anomalies } = scratch;
        anomalies.clear();
        self.alphabet.map_into(calls, ids);
        let side = 1usize << self.test_side_bits;
        if self.alphabet.len() >= side {
            // Calls first trained after the last finish have no test row: unknown.
            ids.iter_mut()
                .filter(|id| usize::from(**id) >= side)
                .for_each(|id| *id = 0);
        }
        let w = self.spec.window;
        // Ids are below the alphabet size, which the test table always covers.
        for t in 0..ids.len().min(w - 1) {
            let miss = self.head_misses(ids, t);
            if miss != 0 {
                anomalies.push(Anomaly {
                    pos: t as u32,
                    misses: miss,
                });
            }
        }
        match (&self.test, w) {
            (Masks::Narrow(table), 9) => {
                test_narrow::<9>(table, self.test_side_bits, ids, anomalies)
            }
            (Masks::Narrow(table), 6) => {
                test_narrow::<6>(table, self.test_side_bits, ids, anomalies)
            }
            _ => {
                for t in w - 1..ids.len() {
                    let miss = self.head_misses(ids, t);
                    if miss != 0 {
                        anomalies.push(Anomaly {
                            pos: t as u32,
                            misses: miss,
                        });
                    }
                }
            }
        }
        TraceScore::new(
            calls.len() as u64,
            calls.len() as u64,
            anomalies,
            self.spec.locality,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnyModel, ModelKind};

    fn trained(w: usize, traces: &[&[u32]]) -> AnyModel {
        let mut m = AnyModel::new(ModelSpec::new(ModelKind::Pairs).with_window(w)).unwrap();
        for t in traces {
            m.train_trace(t);
        }
        m.finish();
        m
    }

    fn anomalies(m: &AnyModel, trace: &[u32]) -> Vec<(u32, u32)> {
        let mut s = Scratch::default();
        m.test_trace(trace, &mut s);
        s.anomalies.iter().map(|a| (a.pos, a.misses)).collect()
    }

    #[test]
    fn missing_pairs_by_hand() {
        // w = 3: training 1 2 3 gives pairs (2<-1,d1) (3<-2,d1) (3<-1,d2).
        let m = trained(3, &[&[1, 2, 3]]);
        assert_eq!(m.profile_size(), 3);
        assert_eq!(anomalies(&m, &[1, 2, 3]), vec![]);
        // 1 3: (3<-1,d1) missing -> 1 miss at call 1.
        assert_eq!(anomalies(&m, &[1, 3]), vec![(1, 1)]);
        // 2 1 3: (1<-2,d1) missing at 1; at 2: (3<-1,d1) missing, (3<-2,d2) missing.
        assert_eq!(anomalies(&m, &[2, 1, 3]), vec![(1, 1), (2, 2)]);
        // An unknown call misses every pair it has.
        assert_eq!(anomalies(&m, &[1, 2, 7]), vec![(2, 2)]);
        // The first call has no predecessors, so no pairs to miss.
        assert_eq!(anomalies(&m, &[7]), vec![]);
    }

    #[test]
    fn pairs_generalise_beyond_stide() {
        // Each pair of "1 2 3" comes from a different training trace, so lookahead
        // pairs accept it although stide (k = 3) never saw the window.
        let traces: [&[u32]; 3] = [&[1, 2, 9], &[1, 8, 3], &[7, 2, 3]];
        let m = trained(3, &traces);
        assert_eq!(anomalies(&m, &[1, 2, 3]), vec![]);
        let mut stide = AnyModel::new(ModelSpec::new(ModelKind::Stide).with_window(3)).unwrap();
        for t in traces {
            stide.train_trace(t);
        }
        stide.finish();
        let mut s = Scratch::default();
        assert_eq!(stide.test_trace(&[1, 2, 3], &mut s).mismatches, 1);
        // A missing pair at distance 2 is counted on its own: 1 then 9 at d1 is new.
        assert_eq!(anomalies(&m, &[1, 9]), vec![(1, 1)]);
        assert_eq!(anomalies(&m, &[1, 2, 3, 1, 2]), vec![(3, 2), (4, 1)]);
    }

    #[test]
    fn table_grows_with_alphabet() {
        let trace: Vec<u32> = (0..300).chain(0..300).collect();
        let m = trained(9, &[&trace]);
        assert_eq!(anomalies(&m, &trace), vec![]);
        let mut rev = trace.clone();
        rev.reverse();
        assert!(!anomalies(&m, &rev).is_empty());
    }

    #[test]
    fn stepping_matches_the_tuned_loop() {
        for w in [2, 6, 9, 12, 33] {
            let m = trained(w, &[&[1, 2, 3, 4, 5, 1, 2, 3, 6, 1, 2, 7, 7, 7, 1]]);
            for t in [
                &[1u32, 2, 3, 4, 5, 6, 1, 2, 3, 9, 7, 1, 2][..],
                &[2, 3],
                &[5, 1, 2, 3, 4],
            ] {
                let mut c = m.cursor();
                let stepped: Vec<(u32, u32)> = t
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (i as u32, m.test_call(&mut c, x)))
                    .filter(|p| p.1 > 0)
                    .collect();
                assert_eq!(stepped, anomalies(&m, t), "w={w} trace={t:?}");
            }
        }
    }
}
