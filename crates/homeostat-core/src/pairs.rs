//! Lookahead pairs, as pH stores them.
//!
//! For each call and each distance `d = 1..w-1`, the pair (call `d` back, current call,
//! `d`) must have been seen in training; a call with any missing pair is anomalous,
//! and the number of missing pairs is kept. As in pH, the profile is a table indexed
//! by (current, previous) whose entry is a bitmask of distances, so a test is `w - 1`
//! loads from one row (w = 9: one byte an entry, pH's layout).
//!
//! Rows are fixed arrays of 512 entries, one per possible symbol id, so indexing a
//! row by a 9-bit id needs no bounds check: with dynamic sides the compiler kept a
//! compare-and-branch per distance and the loop ran 1.4x slower. Only rows of ids in
//! use are allocated, and only the first `|alphabet|` entries of each are touched.
//!
//! Edges: a call at index `t` has only the pairs with `d <= t` (nothing before a
//! trace's start is assumed). With this rule, for `w = k`, every sequence stide accepts
//! is accepted by lookahead pairs too: each pair lies inside some accepted window.

use crate::alphabet::{Alphabet, SYMBOL_BITS};
use crate::locality::{Anomaly, TraceScore};
use crate::model::{Cursor, Model, ModelSpec, Scratch};

/// Ring length of [`Cursor::ring`]: the most predecessors a cursor keeps.
const RING: usize = 32;
/// Entries in a row: every 9-bit symbol id.
const ROW: usize = 1 << SYMBOL_BITS;
const ID_MASK: usize = ROW - 1;

/// The distance bitmasks, one row per current call: one byte an entry for w <= 9
/// (pH's default), four otherwise.
#[derive(Debug, Clone)]
enum Masks {
    Narrow(Vec<[u8; ROW]>),
    Wide(Vec<[u32; ROW]>),
}

impl Masks {
    fn new(w: usize) -> Self {
        if w <= 9 {
            Masks::Narrow(vec![])
        } else {
            Masks::Wide(vec![])
        }
    }

    fn rows(&self) -> usize {
        match self {
            Masks::Narrow(v) => v.len(),
            Masks::Wide(v) => v.len(),
        }
    }

    /// The mask of (cur, prev); 0 for rows never allocated.
    #[inline]
    fn get(&self, cur: u16, prev: u16) -> u32 {
        let (c, p) = (usize::from(cur), usize::from(prev) & ID_MASK);
        match self {
            Masks::Narrow(v) => v.get(c).map_or(0, |r| u32::from(r[p])),
            Masks::Wide(v) => v.get(c).map_or(0, |r| r[p]),
        }
    }

    /// Sets bit `d - 1` of (cur, prev); true when it was not set.
    fn set(&mut self, cur: u16, prev: u16, d: usize) -> bool {
        let (c, p) = (usize::from(cur), usize::from(prev) & ID_MASK);
        let bit = 1u32 << (d - 1);
        match self {
            Masks::Narrow(v) => {
                if v.len() <= c {
                    v.resize(c + 1, [0; ROW]);
                }
                let new = v[c][p] & bit as u8 == 0;
                v[c][p] |= bit as u8;
                new
            }
            Masks::Wide(v) => {
                if v.len() <= c {
                    v.resize(c + 1, [0; ROW]);
                }
                let new = v[c][p] & bit == 0;
                v[c][p] |= bit;
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
    train: Masks,
    test: Masks,
    pairs: usize,
    calls: u64,
}

impl Pairs {
    /// An empty profile (spec assumed validated).
    pub fn new(spec: ModelSpec) -> Self {
        Pairs {
            train: Masks::new(spec.window),
            test: Masks::new(spec.window),
            spec,
            alphabet: Alphabet::new(),
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
        entries_of(&self.train)
    }

    /// Every entry of the test tables (as of the last `finish`).
    pub fn test_entries(&self) -> Vec<(u16, u16, u32)> {
        entries_of(&self.test)
    }

    /// Forgets the training data but keeps the test tables and the symbol map: pH's
    /// response to a high LFC, so an attack in progress is not learned as normal.
    pub fn clear_training(&mut self) {
        self.train = Masks::new(self.spec.window);
        self.pairs = 0;
    }

    /// Replaces the test tables with stored entries (pH profiles persist testing data
    /// separately from training data); `None` on out-of-range data.
    pub(crate) fn restore_test(&mut self, entries: &[(u16, u16, u32)]) -> Option<()> {
        let mut test = Masks::new(self.spec.window);
        let max_id = self.alphabet.len() as u16;
        for &(cur, prev, mask) in entries {
            if cur == 0
                || prev == 0
                || cur > max_id
                || prev > max_id
                || mask & !self.mask_limit() != 0
            {
                return None;
            }
            for d in 1..self.spec.window {
                if mask & (1 << (d - 1)) != 0 {
                    test.set(cur, prev, d);
                }
            }
        }
        self.test = test;
        Some(())
    }

    fn mask_limit(&self) -> u32 {
        if self.spec.window >= 33 {
            u32::MAX
        } else {
            (1u32 << (self.spec.window - 1)) - 1
        }
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
        let limit = m.mask_limit();
        for &(cur, prev, mask) in entries {
            if cur == 0 || prev == 0 || cur > max_id || prev > max_id || mask & !limit != 0 {
                return None;
            }
            for d in 1..m.spec.window {
                if mask & (1 << (d - 1)) != 0 && m.train.set(cur, prev, d) {
                    m.pairs += 1;
                }
            }
        }
        m.finish();
        Some(m)
    }

    /// Missing pairs of the call `ids[t]` against up to `w - 1` predecessors.
    fn misses_at(&self, ids: &[u16], t: usize) -> u32 {
        let w = self.spec.window;
        let mut miss = 0;
        for d in 1..w.min(t + 1) {
            miss += u32::from(self.test.get(ids[t], ids[t - d]) & (1 << (d - 1)) == 0);
        }
        miss
    }
}

fn entries_of(masks: &Masks) -> Vec<(u16, u16, u32)> {
    let mut v = vec![];
    for cur in 0..masks.rows() {
        for prev in 0..ROW {
            let m = masks.get(cur as u16, prev as u16);
            if m != 0 {
                v.push((cur as u16, prev as u16, m));
            }
        }
    }
    v
}

/// The tuned loop for pH's byte masks, from call `W - 1` on (earlier calls have fewer
/// predecessors and go through [`Pairs::misses_at`]). `W` is known at compile time,
/// so the distance loop unrolls; the `W - 1` mask bytes are gathered into one word and
/// compared at once against the bits that must be set (bit `d - 1` of byte `d - 1`).
/// Ids without a row (trained after the last finish) are tested as unknown.
fn test_narrow<const W: usize, I: RowIndex>(rows: &[[u8; ROW]], ids: &[I], out: &mut Vec<Anomaly>) {
    static NONE: [u8; ROW] = [0; ROW];
    let need: u64 = (1..W).fold(0, |m, d| m | 1 << (9 * (d - 1)));
    for (i, win) in ids.windows(W).enumerate() {
        let row = rows.get(win[W - 1].index()).unwrap_or(&NONE);
        let mut got = 0u64;
        for d in 1..W {
            got |= u64::from(row[win[W - 1 - d].index()]) << (8 * (d - 1));
        }
        if got & need != need {
            out.push(Anomaly {
                pos: (i + W - 1) as u32,
                misses: (need & !got).count_ones(),
            });
        }
    }
}

/// A symbol id that indexes a row without a bounds check: `u8` ids (alphabets under
/// 256 calls, nearly every program) need no masking at all, saving an instruction per
/// distance.
trait RowIndex: Copy {
    fn index(self) -> usize;
}

impl RowIndex for u8 {
    #[inline(always)]
    fn index(self) -> usize {
        usize::from(self)
    }
}

impl RowIndex for u16 {
    #[inline(always)]
    fn index(self) -> usize {
        usize::from(self) & ID_MASK
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
        self.calls += 1;
        let mut changed = false;
        let back = (cur.calls as usize).min(self.spec.window - 1);
        for d in 1..=back {
            let prev = cur.ring[(cur.calls as usize - d) % RING];
            if self.train.set(id, prev, d) {
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
    }

    fn test_call(&self, cur: &mut Cursor, call: u32) -> u32 {
        let id = self.alphabet.id(call);
        let back = (cur.calls as usize).min(self.spec.window - 1);
        let mut miss = 0;
        for d in 1..=back {
            let prev = cur.ring[(cur.calls as usize - d) % RING];
            miss += u32::from(self.test.get(id, prev) & (1 << (d - 1)) == 0);
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
        let Scratch {
            ids,
            ids8,
            anomalies,
        } = scratch;
        anomalies.clear();
        let w = self.spec.window;
        let narrow = matches!(self.test, Masks::Narrow(_));
        let small = narrow && self.alphabet.len() < 256;
        // The first w - 1 calls (and everything, without a tuned loop) take the
        // generic path on u16 ids; the tuned loop reads u8 ids when they fit.
        let generic_to = if narrow {
            calls.len().min(w - 1)
        } else {
            calls.len()
        };
        let mapped = if small { generic_to } else { calls.len() };
        self.alphabet.map_into(&calls[..mapped], ids);
        for t in 0..generic_to {
            let miss = self.misses_at(ids, t);
            if miss != 0 {
                anomalies.push(Anomaly {
                    pos: t as u32,
                    misses: miss,
                });
            }
        }
        if let Masks::Narrow(rows) = &self.test {
            if small {
                ids8.clear();
                ids8.extend(calls.iter().map(|&c| self.alphabet.id(c) as u8));
            }
            macro_rules! narrow {
                ($($w:literal)*) => {
                    match (w, small) {
                        $(($w, true) => test_narrow::<$w, u8>(rows, ids8, anomalies),)*
                        $(($w, false) => test_narrow::<$w, u16>(rows, ids, anomalies),)*
                        _ => unreachable!("narrow masks hold windows up to 9"),
                    }
                };
            }
            narrow!(2 3 4 5 6 7 8 9);
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
    use crate::classic::AnyModel;
    use crate::model::ModelKind;

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
