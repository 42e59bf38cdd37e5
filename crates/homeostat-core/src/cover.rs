//! Sequence covering (`--model cover`): Marteau's covering similarity (SC4ID, IEEE
//! TIFS 2019, "Sequence Covering for Efficient Host-Based Intrusion Detection").
//!
//! The window models (stide, kn) judge each call by a context of fixed length. The
//! covering model has no window: the training traces define a dictionary, every
//! contiguous piece of a training trace, and a test trace is cut into as few
//! dictionary pieces as possible. A normal run of a known program is long stretches
//! of some training trace, so few pieces; an attack strings together material no
//! training trace had in that order, so many short pieces. A call training never saw
//! is a piece of its own (the dictionary is extended with every single symbol, so
//! every trace has a cover).
//!
//! Because the dictionary is closed under substrings, the greedy cover (extend the
//! current piece while it stays a dictionary word, otherwise start a new one) is a
//! minimal one: any cover's k-th piece ends no later than greedy's k-th piece (by
//! induction, since a piece starting later inside a dictionary word is itself a
//! dictionary word), so greedy never needs more pieces. A property test checks this
//! against a brute-force minimum.
//!
//! The dictionary is a generalised suffix automaton over all training traces (Blumer
//! et al. 1985; one automaton, its "last" state reset to the root at every trace, so
//! it recognises exactly the substrings of single traces: no piece crosses two
//! traces). It has at most 2N states for N training calls and is built online, trace
//! by trace. Scoring streams: the state of the current piece, advanced by one
//! transition per call; a call with no transition starts a new piece from the root.
//! The same automaton's suffix links give the matching statistics (the longest
//! training substring ending at each call) for the second score.
//!
//! Trace scores (primary first):
//! - `covering`: `(pieces - 1) / (calls - 1)`: 0 when the trace is one piece of a
//!   training trace, 1 when every call is a piece of its own (0 for traces of at
//!   most one call). Pre-registered as the primary score in the belief that it was
//!   Marteau's normalisation; his own code divides by the length instead (`rate`);
//! - `rate`: `(pieces - 1) / calls`, breaks per call: one minus the covering
//!   similarity `(|x| - |c*(x)| + 1) / |x|` as Marteau's reference implementation
//!   (STree4CS, `evaluateDichotomic`) computes it;
//! - `max_lfc`: the largest number of *breaks* (calls that start a new piece after
//!   the first) among `locality` consecutive calls: pH's locality frame with a break
//!   as the anomaly;
//! - `inv_match`: the mean over calls of `1 / (1 + m)`, `m` the longest suffix of the
//!   trace so far that is a substring of one training trace (1 for an unknown call).
//!
//! Memory: the automaton is bounded by `max_calls` training calls (a trace that would
//! take the total past it is skipped whole and counted in `describe`); a trace already
//! a substring of one training trace adds nothing and is not stored. The profile
//! stores the stored traces and rebuilds the automaton on load, so the two cannot
//! disagree.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap as StdHashMap;
use std::collections::VecDeque;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alphabet::{Alphabet, MAX_ID, UNKNOWN};
use crate::classic::decode_all;
use crate::detector::{
    Detector, DetectorBuilder, DetectorError, Params, Progress, TraceResult, TraceStream,
};
use crate::model::Scratch;
use crate::registry::Entry;

/// The registry name and profile kind tag.
pub const KIND: &str = "cover";
/// Payload layout version.
const VERSION: u32 = 1;
/// Parameters the model reads.
pub const PARAMS: [&str; 2] = ["locality", "max_calls"];
/// The trace scores, primary first.
pub const SCORE_NAMES: [&str; 4] = ["covering", "max_lfc", "inv_match", "rate"];
/// The largest `max_calls`: 16 Mi calls, at most 32 Mi automaton states.
pub const MAX_CALLS_LIMIT: u64 = 1 << 24;

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// Transitions from which a state's are indexed instead of walked.
const INDEXED: u16 = 16;

/// No state: the transition is missing, or the root's suffix link.
const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverConfig {
    /// Calls per locality frame of `max_lfc`.
    pub locality: usize,
    /// Training calls the automaton may hold (about 50 bytes each while training).
    pub max_calls: u64,
}

impl Default for CoverConfig {
    fn default() -> Self {
        // max_calls: 13 times ADFA-LD's 308,077 standard training calls (its LID-DS
        // split trains on 1.05 million), about 200 MB at most while training.
        CoverConfig {
            locality: 20,
            max_calls: 4_000_000,
        }
    }
}

impl CoverConfig {
    /// The defaults overridden by `p`.
    pub fn from_params(p: &Params) -> Result<Self, DetectorError> {
        let d = CoverConfig::default();
        let c = CoverConfig {
            locality: p.get(KIND, "locality", d.locality)?,
            max_calls: p.get(KIND, "max_calls", d.max_calls)?,
        };
        c.validate().map_err(|msg| DetectorError::Param {
            model: KIND.into(),
            msg,
        })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=1 << 16).contains(&self.locality) {
            return Err(format!("locality={} out of range 1..=65536", self.locality));
        }
        if !(1..=MAX_CALLS_LIMIT).contains(&self.max_calls) {
            return Err(format!(
                "max_calls={} out of range 1..={MAX_CALLS_LIMIT}",
                self.max_calls
            ));
        }
        Ok(())
    }
}

/// The suffix automaton while it grows. A clone copies its original's transitions,
/// so each state's transitions are a list in one arena (12 bytes an edge, no
/// allocation per state): about 50 bytes per stored training call in all. A state
/// with many transitions (the root and its near neighbours over a varied alphabet
/// have hundreds) is also indexed by (state, call): walking such a list at every
/// lookup made building quadratic in the alphabet (minutes for 4 million calls).
#[derive(Debug)]
struct Growing {
    len: Vec<u32>,
    link: Vec<u32>,
    /// First edge of each state's list (`NONE`: no transition).
    head: Vec<u32>,
    /// Transitions of each state.
    degree: Vec<u16>,
    edges: Vec<Edge>,
    /// The edge of (state, call) for states of at least `INDEXED` transitions.
    index: HashMap<u64, u32>,
    /// Edges looked at by lookups (tests bound the work per call).
    #[cfg(test)]
    probes: std::cell::Cell<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    sym: u16,
    to: u32,
    next: u32,
}

impl Growing {
    fn new() -> Self {
        Growing {
            len: vec![0],
            link: vec![NONE],
            head: vec![NONE],
            degree: vec![0],
            edges: Vec::new(),
            index: HashMap::default(),
            #[cfg(test)]
            probes: Default::default(),
        }
    }

    fn states(&self) -> usize {
        self.len.len()
    }

    fn key(s: u32, c: u16) -> u64 {
        u64::from(s) << 16 | u64::from(c)
    }

    fn edge(&self, s: u32, c: u16) -> Option<usize> {
        if self.degree[s as usize] >= INDEXED {
            #[cfg(test)]
            self.probes.set(self.probes.get() + 1);
            return self.index.get(&Self::key(s, c)).map(|&e| e as usize);
        }
        let mut e = self.head[s as usize];
        while e != NONE {
            #[cfg(test)]
            self.probes.set(self.probes.get() + 1);
            let x = &self.edges[e as usize];
            if x.sym == c {
                return Some(e as usize);
            }
            e = x.next;
        }
        None
    }

    fn get(&self, s: u32, c: u16) -> Option<u32> {
        self.edge(s, c).map(|e| self.edges[e].to)
    }

    fn set(&mut self, s: u32, c: u16, t: u32) {
        match self.edge(s, c) {
            Some(e) => self.edges[e].to = t,
            None => self.push_edge(s, c, t),
        }
    }

    /// Adds a transition `s` does not have yet.
    fn push_edge(&mut self, s: u32, c: u16, t: u32) {
        let e = self.edges.len() as u32;
        self.edges.push(Edge {
            sym: c,
            to: t,
            next: self.head[s as usize],
        });
        self.head[s as usize] = e;
        let d = &mut self.degree[s as usize];
        *d += 1;
        if *d > INDEXED {
            self.index.insert(Self::key(s, c), e);
        } else if *d == INDEXED {
            let mut e = self.head[s as usize];
            while e != NONE {
                let x = self.edges[e as usize];
                self.index.insert(Self::key(s, x.sym), e);
                e = x.next;
            }
        }
    }

    fn add_state(&mut self, len: u32, link: u32) -> u32 {
        self.len.push(len);
        self.link.push(link);
        self.head.push(NONE);
        self.degree.push(0);
        (self.len.len() - 1) as u32
    }

    /// Splits `q` so that the state reached from `p` by `c` has length `len(p) + 1`;
    /// redirects `p` and its suffix-link ancestors that pointed to `q`.
    fn clone_state(&mut self, mut p: u32, c: u16, q: u32) -> u32 {
        let clone = self.add_state(self.len[p as usize] + 1, self.link[q as usize]);
        let mut e = self.head[q as usize];
        while e != NONE {
            let x = self.edges[e as usize];
            self.push_edge(clone, x.sym, x.to);
            e = x.next;
        }
        while p != NONE && self.get(p, c) == Some(q) {
            self.set(p, c, clone);
            p = self.link[p as usize];
        }
        self.link[q as usize] = clone;
        clone
    }

    /// Appends `c` to the trace ending in state `last` (generalised construction:
    /// an existing transition is reused or split instead of adding a state).
    fn extend(&mut self, last: u32, c: u16) -> u32 {
        if let Some(q) = self.get(last, c) {
            if self.len[last as usize] + 1 == self.len[q as usize] {
                return q;
            }
            return self.clone_state(last, c, q);
        }
        let cur = self.add_state(self.len[last as usize] + 1, ROOT);
        let mut p = last;
        while p != NONE && self.get(p, c).is_none() {
            self.set(p, c, cur);
            p = self.link[p as usize];
        }
        if p != NONE {
            let q = self.get(p, c).unwrap_or(ROOT);
            self.link[cur as usize] = if self.len[p as usize] + 1 == self.len[q as usize] {
                q
            } else {
                self.clone_state(p, c, q)
            };
        }
        cur
    }

    fn add_trace(&mut self, ids: &[u16]) {
        let mut last = ROOT;
        for &c in ids {
            last = self.extend(last, c);
        }
    }

    /// True when `ids` is a substring of one trace added so far.
    fn contains(&self, ids: &[u16]) -> bool {
        let mut s = ROOT;
        for &c in ids {
            match self.get(s, c) {
                Some(t) => s = t,
                None => return false,
            }
        }
        true
    }

    /// The compact, read-only form scoring uses.
    fn freeze(self, symbols: usize) -> Automaton {
        let mut start = Vec::with_capacity(self.states() + 1);
        let mut syms = Vec::with_capacity(self.edges.len());
        let mut to = Vec::with_capacity(self.edges.len());
        let mut root = vec![NONE; symbols + 1];
        let mut list = Vec::new();
        for s in 0..self.states() {
            start.push(syms.len() as u32);
            list.clear();
            let mut e = self.head[s];
            while e != NONE {
                let x = self.edges[e as usize];
                list.push((x.sym, x.to));
                e = x.next;
            }
            list.sort_unstable();
            for &(c, t) in &list {
                if s == ROOT as usize {
                    if let Some(r) = root.get_mut(usize::from(c)) {
                        *r = t;
                    }
                }
                syms.push(c);
                to.push(t);
            }
        }
        start.push(syms.len() as u32);
        Automaton {
            len: self.len,
            link: self.link,
            start,
            syms,
            to,
            root,
        }
    }
}

/// The frozen automaton: transitions in one sorted array per state (CSR), the root's
/// in a direct table since nearly every piece starts there.
#[derive(Debug)]
struct Automaton {
    len: Vec<u32>,
    link: Vec<u32>,
    start: Vec<u32>,
    syms: Vec<u16>,
    to: Vec<u32>,
    root: Vec<u32>,
}

impl Automaton {
    fn states(&self) -> usize {
        self.len.len()
    }

    #[inline]
    fn next(&self, s: u32, c: u16) -> Option<u32> {
        if s == ROOT {
            return self
                .root
                .get(usize::from(c))
                .copied()
                .filter(|&t| t != NONE);
        }
        if s == NONE {
            return None;
        }
        let (a, b) = (
            self.start[s as usize] as usize,
            self.start[s as usize + 1] as usize,
        );
        let syms = &self.syms[a..b];
        syms.binary_search(&c).ok().map(|i| self.to[a + i])
    }
}

/// A trained model.
#[derive(Debug)]
pub struct Cover {
    config: CoverConfig,
    alphabet: Alphabet,
    automaton: Automaton,
    traces: Traces,
    counts: Counts,
}

/// The stored training traces, end to end in one array: two bytes a call and four a
/// trace, where a `Vec` each cost 24 bytes more and an allocation. Encoded as a
/// sequence of sequences; decoding never holds more than `MAX_CALLS_LIMIT` calls nor
/// an empty trace, whatever the payload declares (a 50 MB payload of empty traces
/// took 1.3 GB to refuse), and notes what it dropped for [`Cover::from_traces`] to
/// name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Traces {
    calls: Vec<u16>,
    /// Where each trace ends in `calls`.
    ends: Vec<u32>,
    /// Decoding met an empty trace.
    empty: bool,
    /// Calls decoded, stored or not.
    decoded: u64,
}

impl Traces {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u16]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(a, &b)| &self.calls[a as usize..b as usize])
    }

    fn push(&mut self, ids: &[u16]) {
        self.calls.extend_from_slice(ids);
        self.ends.push(self.calls.len() as u32);
        self.decoded += ids.len() as u64;
    }
}

impl Serialize for Traces {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Traces {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, SeqAccess, Visitor};
        struct All;
        /// One trace, appended to the others.
        struct One<'a>(&'a mut Traces);
        impl<'de> Visitor<'de> for All {
            type Value = Traces;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of traces")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Traces, A::Error> {
                let mut t = Traces::default();
                while seq.next_element_seed(One(&mut t))?.is_some() {}
                Ok(t)
            }
        }
        impl<'de> DeserializeSeed<'de> for One<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_seq(self)
            }
        }
        impl<'de> Visitor<'de> for One<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a trace")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                let t = self.0;
                let start = t.calls.len();
                let mut n = 0u64;
                while let Some(c) = seq.next_element::<u16>()? {
                    n += 1;
                    if (t.calls.len() as u64) < MAX_CALLS_LIMIT {
                        t.calls.push(c);
                    }
                }
                t.decoded += n;
                if n == 0 {
                    t.empty = true;
                } else if t.calls.len() > start {
                    t.ends.push(t.calls.len() as u32);
                }
                Ok(())
            }
        }
        d.deserialize_seq(All)
    }
}

/// What training saw besides the stored traces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    /// Every training call, stored or not.
    calls: u64,
    /// Traces already a substring of one stored trace (nothing to add).
    redundant: u64,
    /// Traces skipped because they would take the automaton past `max_calls`.
    skipped_traces: u64,
    /// Their calls.
    skipped_calls: u64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    config: CoverConfig,
    symbols: Vec<u32>,
    counts: Counts,
    traces: Traces,
}

/// One trace being scored: bounded by the frame length.
#[derive(Debug, Clone)]
struct CoverState {
    calls: u64,
    pieces: u64,
    /// The automaton state of the current piece (`NONE`: an unknown call, which no
    /// call can extend).
    piece: u32,
    /// Calls in the current piece.
    piece_len: u32,
    /// Matching statistics: the state and length of the longest suffix of the trace
    /// so far that is a training substring.
    ms_state: u32,
    ms_len: u32,
    inv_match: f64,
    frame: VecDeque<bool>,
    frame_breaks: usize,
    max_lfc: usize,
}

impl Cover {
    fn from_traces(
        config: CoverConfig,
        alphabet: Alphabet,
        counts: Counts,
        traces: Traces,
    ) -> Result<Self, String> {
        config.validate()?;
        if traces.empty {
            return Err("an empty trace".into());
        }
        let total = traces.decoded;
        if total > config.max_calls {
            return Err(format!(
                "traces hold more than max_calls={} calls",
                config.max_calls
            ));
        }
        let max_id = alphabet.len() as u16;
        if let Some(&c) = traces.calls.iter().find(|&&c| c == UNKNOWN || c > max_id) {
            return Err(format!("symbol id {c} outside the alphabet"));
        }
        if counts.calls < total {
            return Err(format!(
                "{} training calls but {total} stored",
                counts.calls
            ));
        }
        let mut g = Growing::new();
        for t in traces.iter() {
            g.add_trace(t);
        }
        Ok(Cover {
            automaton: g.freeze(alphabet.len()),
            config,
            alphabet,
            traces,
            counts,
        })
    }

    fn start(&self) -> CoverState {
        CoverState {
            calls: 0,
            pieces: 0,
            piece: NONE,
            piece_len: 0,
            ms_state: ROOT,
            ms_len: 0,
            inv_match: 0.0,
            frame: VecDeque::with_capacity(self.config.locality),
            frame_breaks: 0,
            max_lfc: 0,
        }
    }

    /// Scores one call: 1 when it starts a new piece after the first (a break), else 0.
    #[inline]
    fn push_call(&self, s: &mut CoverState, call: u32) -> f64 {
        let a = &self.automaton;
        let c = self.alphabet.id(call);
        let extended = if s.calls == 0 {
            None
        } else {
            a.next(s.piece, c)
        };
        let brk = match extended {
            Some(t) => {
                s.piece = t;
                s.piece_len += 1;
                false
            }
            None => {
                let first = s.pieces == 0;
                s.pieces += 1;
                s.piece = a.next(ROOT, c).unwrap_or(NONE);
                s.piece_len = 1;
                !first
            }
        };
        // Matching statistics: shorten the matched suffix along suffix links until
        // the call extends it.
        loop {
            if let Some(t) = a.next(s.ms_state, c) {
                s.ms_state = t;
                s.ms_len += 1;
                break;
            }
            if s.ms_state == ROOT {
                s.ms_len = 0;
                break;
            }
            s.ms_state = a.link[s.ms_state as usize];
            s.ms_len = a.len[s.ms_state as usize];
        }
        s.inv_match += 1.0 / (1.0 + f64::from(s.ms_len));
        s.calls += 1;
        if s.frame.len() == self.config.locality && s.frame.pop_front() == Some(true) {
            s.frame_breaks -= 1;
        }
        s.frame.push_back(brk);
        s.frame_breaks += usize::from(brk);
        s.max_lfc = s.max_lfc.max(s.frame_breaks);
        if brk {
            1.0
        } else {
            0.0
        }
    }

    fn finish_state(&self, s: &CoverState) -> TraceResult {
        let covering = if s.calls > 1 {
            (s.pieces - 1) as f64 / (s.calls - 1) as f64
        } else {
            0.0
        };
        let inv_match = if s.calls > 0 {
            s.inv_match / s.calls as f64
        } else {
            0.0
        };
        let breaks = s.pieces.saturating_sub(1);
        let rate = if s.calls > 0 {
            breaks as f64 / s.calls as f64
        } else {
            0.0
        };
        TraceResult {
            calls: s.calls,
            anomalies: Some(breaks),
            scores: vec![covering, s.max_lfc as f64, inv_match, rate],
        }
    }

    /// The greedy (minimal) cover of a trace: its pieces' lengths, in order.
    pub fn cover(&self, calls: &[u32]) -> Vec<u32> {
        let mut s = self.start();
        let mut pieces = Vec::new();
        for &c in calls {
            self.push_call(&mut s, c);
            if s.piece_len == 1 {
                pieces.push(1);
            } else if let Some(l) = pieces.last_mut() {
                *l += 1;
            }
        }
        pieces
    }

    /// The matching statistics of a trace: for each call, the length of the longest
    /// substring of one training trace ending there.
    pub fn matching_statistics(&self, calls: &[u32]) -> Vec<u32> {
        let mut s = self.start();
        calls
            .iter()
            .map(|&c| {
                self.push_call(&mut s, c);
                s.ms_len
            })
            .collect()
    }
}

struct CoverStream<'a> {
    model: &'a Cover,
    state: CoverState,
}

impl TraceStream for CoverStream<'_> {
    fn call(&mut self, call: u32) -> f64 {
        self.model.push_call(&mut self.state, call)
    }
    fn finish(self: Box<Self>) -> TraceResult {
        self.model.finish_state(&self.state)
    }
}

impl Detector for Cover {
    fn kind(&self) -> &str {
        KIND
    }
    fn describe(&self) -> String {
        let stored = self.traces.calls.len();
        let mut d = format!(
            "L={} traces={} calls={} states={}",
            self.config.locality,
            self.traces.len(),
            stored,
            self.automaton.states()
        );
        if self.counts.skipped_traces > 0 {
            d += &format!(
                " skipped={} traces ({} calls) past max_calls={}",
                self.counts.skipped_traces, self.counts.skipped_calls, self.config.max_calls
            );
        }
        d
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
        Box::new(CoverStream {
            model: self,
            state: self.start(),
        })
    }
    fn trained_calls(&self) -> u64 {
        self.counts.calls
    }
    fn profile_size(&self) -> usize {
        self.automaton.states()
    }
    fn size_unit(&self) -> &'static str {
        "states"
    }
    fn symbols(&self) -> Vec<u32> {
        self.alphabet.symbols().to_vec()
    }
    fn save(&self) -> Vec<u8> {
        let stored = Stored {
            version: VERSION,
            config: self.config,
            symbols: self.alphabet.symbols().to_vec(),
            counts: self.counts,
            traces: self.traces.clone(),
        };
        postcard::to_allocvec(&stored).expect("serialising plain data into a Vec cannot fail")
    }
}

/// Training: the automaton grows trace by trace (bounded by `max_calls`).
#[derive(Debug)]
pub struct CoverBuilder {
    config: CoverConfig,
    alphabet: Alphabet,
    automaton: Growing,
    traces: Traces,
    stored: u64,
    counts: Counts,
}

impl CoverBuilder {
    /// An untrained model.
    pub fn new(config: CoverConfig) -> Self {
        CoverBuilder {
            config,
            alphabet: Alphabet::new(),
            automaton: Growing::new(),
            traces: Traces::default(),
            stored: 0,
            counts: Counts::default(),
        }
    }

    /// The trained model.
    pub fn finish(self) -> Result<Cover, DetectorError> {
        if self.counts.calls == 0 {
            return Err(DetectorError::Train {
                model: KIND.into(),
                msg: "no training calls".into(),
            });
        }
        let symbols = self.alphabet.len();
        Ok(Cover {
            automaton: self.automaton.freeze(symbols),
            config: self.config,
            alphabet: self.alphabet,
            traces: self.traces,
            counts: self.counts,
        })
    }
}

impl DetectorBuilder for CoverBuilder {
    fn add_trace(&mut self, calls: &[u32]) {
        if calls.is_empty() {
            return;
        }
        let n = calls.len() as u64;
        self.counts.calls += n;
        // Past MAX_ID distinct calls ids are shared; they stay valid symbols.
        let ids: Vec<u16> = calls.iter().map(|&c| self.alphabet.intern(c)).collect();
        debug_assert!(ids.iter().all(|&c| c <= MAX_ID));
        if self.automaton.contains(&ids) {
            self.counts.redundant += 1;
            return;
        }
        if self.stored + n > self.config.max_calls {
            self.counts.skipped_traces += 1;
            self.counts.skipped_calls += n;
            return;
        }
        self.automaton.add_trace(&ids);
        self.stored += n;
        self.traces.push(&ids);
    }

    fn build(self: Box<Self>, _: Progress<'_>) -> Result<Box<dyn Detector>, DetectorError> {
        Ok(Box::new(self.finish()?))
    }
}

/// The registry entry.
pub fn entry() -> Entry {
    Entry {
        name: KIND.into(),
        aliases: vec!["sc4id".into(), "covering".into()],
        about:
            "sequence covering: pieces of training traces needed to cover a trace (Marteau 2019)"
                .into(),
        params: PARAMS.iter().map(|s| s.to_string()).collect(),
        build: Arc::new(|p| {
            Ok(Box::new(CoverBuilder::new(CoverConfig::from_params(p)?))
                as Box<dyn DetectorBuilder>)
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
            Ok(Box::new(
                Cover::from_traces(s.config, alphabet, s.counts, s.traces).map_err(corrupt)?,
            ) as Box<dyn Detector>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cover_model(traces: &[&[u32]]) -> Cover {
        let mut b = CoverBuilder::new(CoverConfig {
            locality: 3,
            ..CoverConfig::default()
        });
        for t in traces {
            b.add_trace(t);
        }
        b.finish().unwrap()
    }

    fn scores(m: &Cover, t: &[u32]) -> Vec<f64> {
        m.score_trace(t, &mut Scratch::default()).scores
    }

    #[test]
    fn covers_by_hand() {
        // Dictionary: substrings of "1 2 3 1 2 4".
        let m = cover_model(&[&[1, 2, 3, 1, 2, 4]]);
        // A training trace is one piece.
        assert_eq!(m.cover(&[1, 2, 3, 1, 2, 4]), [6]);
        // "1 2 4" | "1 2 3": "4 1" never occurs.
        assert_eq!(m.cover(&[1, 2, 4, 1, 2, 3]), [3, 3]);
        // "3 1 2 4" | "4": the repeated call is a new piece.
        assert_eq!(m.cover(&[3, 1, 2, 4, 4]), [4, 1]);
        // Unknown calls (9) are pieces of their own and break what follows too.
        assert_eq!(m.cover(&[1, 2, 9, 9, 3, 1]), [2, 1, 1, 2]);
        // covering = (pieces - 1) / (calls - 1): 1 / 4 for the second-to-last.
        // rate = (pieces - 1) / calls: 1 / 5 (Marteau's similarity 0.8).
        let s = scores(&m, &[3, 1, 2, 4, 4]);
        assert_eq!(s[0], 0.25);
        assert_eq!(s[3], 0.2);
        // Breaks in a frame of 3: "1 2 9 9 3 1" breaks at calls 3, 4, 5.
        let s = scores(&m, &[1, 2, 9, 9, 3, 1]);
        assert_eq!(s[0], 3.0 / 5.0);
        assert_eq!(s[1], 3.0);
        // Matching statistics: longest training substring ending at each call.
        assert_eq!(
            m.matching_statistics(&[2, 4, 1, 2, 3, 9, 2]),
            [1, 2, 1, 2, 3, 0, 1]
        );
        let ms = [1.0f64, 2.0, 1.0, 2.0, 3.0, 0.0, 1.0];
        let want = ms.iter().map(|m| 1.0 / (1.0 + m)).sum::<f64>() / 7.0;
        assert!((scores(&m, &[2, 4, 1, 2, 3, 9, 2])[2] - want).abs() < 1e-12);
        // Empty and one-call traces score 0 on the covering score.
        assert_eq!(scores(&m, &[]), [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(scores(&m, &[1])[0], 0.0);
    }

    #[test]
    fn marteaus_published_example() {
        // The README of Marteau's STree4CS: S = {1 1 2 2 3 4 1 1 5 6, 1 2 4 3 4 5 7 5 1,
        // 6 5 1 7 4 5 6}, s = 1 1 5 7 5 1 7 4 has the optimal covering
        // [1 1 5] [7 5 1] [7 4] and covering similarity 0.75.
        let m = cover_model(&[
            &[1, 1, 2, 2, 3, 4, 1, 1, 5, 6],
            &[1, 2, 4, 3, 4, 5, 7, 5, 1],
            &[6, 5, 1, 7, 4, 5, 6],
        ]);
        let s = [1u32, 1, 5, 7, 5, 1, 7, 4];
        assert_eq!(m.cover(&s), [3, 3, 2]);
        assert_eq!(1.0 - scores(&m, &s)[3], 0.75);
    }

    #[test]
    fn pieces_never_cross_two_training_traces() {
        let m = cover_model(&[&[1, 2], &[3, 4]]);
        assert_eq!(m.cover(&[1, 2, 3, 4]), [2, 2]);
        assert_eq!(m.cover(&[2, 3]), [1, 1]);
        assert_eq!(m.matching_statistics(&[1, 2, 3, 4]), [1, 2, 1, 2]);
        // Same with a shared call at the seam: "2 2" exists in neither trace.
        let m = cover_model(&[&[1, 2], &[2, 3]]);
        assert_eq!(m.cover(&[1, 2, 2, 3]), [2, 2]);
        assert_eq!(m.cover(&[1, 2, 3]), [2, 1]);
    }

    #[test]
    fn streaming_equals_whole_trace_and_redundant_traces_are_dropped() {
        let normal: Vec<u32> = (0..300).map(|i| [1, 2, 3, 4, 2, 3, 5][i % 7]).collect();
        let mut b = CoverBuilder::new(CoverConfig::default());
        b.add_trace(&normal);
        b.add_trace(&normal[10..50]);
        b.add_trace(&[6, 7, 8]);
        let m = b.finish().unwrap();
        assert_eq!(m.traces.len(), 2);
        assert_eq!(m.counts.redundant, 1);
        assert_eq!(m.trained_calls(), 343);
        let odd = [1u32, 2, 3, 5, 5, 4, 6, 7, 2, 9, 3, 4, 2, 3];
        let whole = m.score_trace(&odd, &mut Scratch::default());
        let mut st = m.stream();
        let breaks: f64 = odd.iter().map(|&c| st.call(c)).sum();
        assert_eq!(st.finish(), whole);
        assert_eq!(breaks as u64, whole.anomalies.unwrap());
        assert_eq!(m.cover(&odd).len() as u64, whole.anomalies.unwrap() + 1);
        // The odd trace needs more pieces per call than a stretch of normal.
        assert!(scores(&m, &odd)[0] > scores(&m, &normal[3..90])[0]);
        assert!(scores(&m, &odd)[2] > scores(&m, &normal[3..90])[2]);
    }

    #[test]
    fn the_cap_skips_whole_traces() {
        let mut b = CoverBuilder::new(CoverConfig {
            max_calls: 10,
            ..CoverConfig::default()
        });
        b.add_trace(&[1, 2, 3, 4, 5, 6]);
        b.add_trace(&[7, 8, 9, 1, 2]); // 11 > 10: skipped
        b.add_trace(&[3, 3, 3, 3]); // fits: 10
        let m = b.finish().unwrap();
        assert_eq!(m.traces.len(), 2);
        assert!(
            m.describe().contains("skipped=1 traces (5 calls)"),
            "{}",
            m.describe()
        );
        // The skipped trace's calls are known symbols but not pieces together.
        assert_eq!(m.cover(&[7, 8, 9]), [1, 1, 1]);
        assert_eq!(m.cover(&[3, 3, 3, 4, 5]), [3, 2]);
        assert!(CoverConfig::from_params(&Params::parse("max_calls=0").unwrap()).is_err());
        assert!(CoverConfig::from_params(&Params::parse("locality=0").unwrap()).is_err());
    }

    #[test]
    fn profile_round_trip_and_damage() {
        let t: Vec<u32> = (0..120u32).map(|i| (i * 7 + i / 5) % 6 + 1).collect();
        let m = cover_model(&[&t, &[2, 2, 9, 1]]);
        let e = entry();
        let payload = m.save();
        let d = (e.load)(&payload).unwrap();
        let probe = [1u32, 2, 3, 8, 1, 2, 2, 9, 1];
        let mut s = Scratch::default();
        assert_eq!(d.score_trace(&probe, &mut s), m.score_trace(&probe, &mut s));
        assert_eq!(d.describe(), m.describe());
        for i in 0..payload.len() {
            for bit in [0x01u8, 0x41, 0x80] {
                let mut p = payload.clone();
                p[i] ^= bit;
                if let Ok(d) = (e.load)(&p) {
                    d.score_trace(&probe, &mut s);
                }
            }
        }
        for n in 0..payload.len() {
            let err = (e.load)(&payload[..n]).unwrap_err().to_string();
            assert!(err.starts_with("stored cover model is corrupt"), "{err}");
        }
        // A symbol id outside the alphabet is named.
        let mut bad: Stored = decode_all(&payload).unwrap();
        bad.traces.calls[3] = 40;
        let bytes = postcard::to_allocvec(&bad).unwrap();
        let err = (e.load)(&bytes).unwrap_err().to_string();
        assert!(err.contains("symbol id 40 outside the alphabet"), "{err}");
        // More stored calls than the cap allows.
        let mut bad: Stored = decode_all(&payload).unwrap();
        bad.config.max_calls = 10;
        let bytes = postcard::to_allocvec(&bad).unwrap();
        let err = (e.load)(&bytes).unwrap_err().to_string();
        assert!(err.contains("more than max_calls=10"), "{err}");
    }

    #[test]
    fn the_flat_traces_keep_the_stored_layout() {
        // Profiles written while traces were a Vec<Vec<u16>> load alike.
        #[derive(Serialize)]
        struct Before {
            version: u32,
            config: CoverConfig,
            symbols: Vec<u32>,
            counts: Counts,
            traces: Vec<Vec<u16>>,
        }
        let m = cover_model(&[&[1, 2, 3, 1, 2, 4], &[4, 4, 2]]);
        let before = Before {
            version: VERSION,
            config: m.config,
            symbols: m.alphabet.symbols().to_vec(),
            counts: m.counts,
            traces: m.traces.iter().map(<[u16]>::to_vec).collect(),
        };
        assert_eq!(before.traces, [vec![1, 2, 3, 1, 2, 4], vec![4, 4, 2]]);
        assert_eq!(postcard::to_allocvec(&before).unwrap(), m.save());
    }

    #[test]
    fn a_profile_past_the_shared_id_loads() {
        // 600 distinct calls: ids past MAX_ID are shared, as in training, and the
        // profile training wrote loads and scores alike.
        let t: Vec<u32> = (0..600).collect();
        let m = cover_model(&[&t]);
        let payload = m.save();
        let d = (entry().load)(&payload).unwrap();
        let mut s = Scratch::default();
        let probe: Vec<u32> = (500..600).chain(0..50).chain([7000]).collect();
        assert_eq!(d.score_trace(&probe, &mut s), m.score_trace(&probe, &mut s));
        // A symbol stored twice is still refused, past the shared id or before it.
        for i in [3, 550] {
            let mut bad: Stored = decode_all(&payload).unwrap();
            bad.symbols[i] = bad.symbols[1];
            let err = (entry().load)(&postcard::to_allocvec(&bad).unwrap()).unwrap_err();
            assert!(err.to_string().contains("stored twice"), "{err}");
        }
    }

    #[test]
    fn many_distinct_calls_build_in_linear_time() {
        // A trace of 50,000 pseudo-random calls over 509 symbols: states near the root
        // have hundreds of transitions. Looking one up must not walk them all (a
        // 4-million-call profile like this took minutes to load).
        let mut x = 1u32;
        let t: Vec<u32> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x % 509
            })
            .collect();
        let mut b = CoverBuilder::new(CoverConfig::default());
        b.add_trace(&t);
        let probes = b.automaton.probes.get();
        assert!(
            probes < 40 * t.len() as u64,
            "{probes} edge probes for {} calls",
            t.len()
        );
        let m = b.finish().unwrap();
        assert_eq!(m.cover(&t), [t.len() as u32]);
    }

    /// The fewest pieces covering `x` with substrings of single training traces plus
    /// every single symbol, by dynamic programming over all cut points.
    fn brute_min_cover(train: &[Vec<u32>], x: &[u32]) -> usize {
        let mut dict: HashSet<&[u32]> = HashSet::new();
        for t in train {
            for i in 0..t.len() {
                for j in i + 1..=t.len() {
                    dict.insert(&t[i..j]);
                }
            }
        }
        let mut best = vec![usize::MAX; x.len() + 1];
        best[0] = 0;
        for j in 1..=x.len() {
            for i in 0..j {
                if best[i] != usize::MAX && (j - i == 1 || dict.contains(&x[i..j])) {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[x.len()]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn greedy_cover_is_minimal(
            train in proptest::collection::vec(
                proptest::collection::vec(1u32..4, 1..9), 1..4),
            x in proptest::collection::vec(1u32..5, 0..12),
        ) {
            check_against_brute_force(&train, &x)?;
        }

        #[test]
        fn greedy_cover_is_minimal_over_indexed_states(
            train in proptest::collection::vec(
                proptest::collection::vec(1u32..40, 1..120), 1..4),
            x in proptest::collection::vec(1u32..42, 0..40),
        ) {
            // 40 symbols: states near the root pass INDEXED transitions.
            check_against_brute_force(&train, &x)?;
        }
    }

    fn check_against_brute_force(
        train: &[Vec<u32>],
        x: &[u32],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let refs: Vec<&[u32]> = train.iter().map(Vec::as_slice).collect();
        let m = cover_model(&refs);
        let pieces = m.cover(x);
        proptest::prop_assert_eq!(pieces.len(), brute_min_cover(train, x));
        proptest::prop_assert_eq!(pieces.iter().sum::<u32>() as usize, x.len());
        // Matching statistics by brute force: the longest dictionary suffix.
        let ms = m.matching_statistics(x);
        for (j, &l) in ms.iter().enumerate() {
            let want = (0..=j + 1)
                .rev()
                .find(|&k| {
                    k == 0
                        || train
                            .iter()
                            .any(|t| t.windows(k).any(|w| w == &x[j + 1 - k..=j]))
                })
                .unwrap();
            proptest::prop_assert_eq!(l as usize, want);
        }
        for t in train {
            proptest::prop_assert_eq!(m.cover(t), [t.len() as u32]);
        }
        Ok(())
    }
}
