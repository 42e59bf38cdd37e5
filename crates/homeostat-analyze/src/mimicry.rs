//! Mimicry search: the shortest call sequence that makes an attacker's goal calls, in
//! order, with anything between them, and raises no anomaly under a profile
//! (Wagner & Soto 2002).
//!
//! Every model here judges a call by the last few calls only (stide: the k-1 before it,
//! lookahead pairs: w-1, Markov: n-1), so a sequence is accepted exactly when it is a
//! path in a finite automaton whose state is that history. Breadth-first search over
//! (history, goal calls made so far) therefore finds a shortest accepted sequence, or
//! proves that none exists up to the bound. Making a goal call as soon as it is
//! allowed is never worse (the history is the same either way), so progress only
//! moves forward.
//!
//! The search starts at the start of a trace, with each model's own edge rule: stide
//! tests nothing until its first full window (and a sequence shorter than k must be a
//! whole training trace), lookahead pairs have no pairs to test for the first call,
//! Markov pads the context with a start symbol. "No anomaly" means exactly what the
//! model's whole-trace test reports for the sequence.

use std::collections::HashMap;

use homeostat_core::alphabet::{PAD, SYMBOL_BITS};
use serde::Serialize;

use crate::rules::{mask, pack, Rules, Sym, View};

/// Limits of one search.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest sequence considered.
    pub max_len: usize,
    /// Most search states kept (each costs about 40 bytes); the search gives up, and
    /// says so, when it would need more.
    pub max_states: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_len: 64,
            max_states: 4_000_000,
        }
    }
}

/// How a search ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A shortest accepted sequence (raw call numbers).
    Found {
        /// The calls.
        sequence: Vec<u32>,
    },
    /// No accepted sequence of at most `max_len` calls exists.
    NoneWithin {
        /// The bound searched.
        max_len: usize,
    },
    /// No sequence up to `depth` calls exists, and searching further needed more
    /// than `max_states` states.
    Budget {
        /// Lengths ruled out.
        depth: usize,
        /// States explored.
        states: usize,
    },
}

impl Outcome {
    /// The sequence, when found.
    pub fn sequence(&self) -> Option<&[u32]> {
        match self {
            Outcome::Found { sequence } => Some(sequence),
            _ => None,
        }
    }
}

/// One step of the goal: any of these raw call numbers will do (e.g. open or openat).
pub type GoalStep = Vec<u32>;

/// A search state: calls made (capped), packed history, goal steps done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    t: u8,
    key: u128,
    done: u8,
}

impl View {
    fn start(&self) -> State {
        State {
            t: 0,
            key: pack(&[], self.history()),
            done: 0,
        }
    }

    /// Appends the symbols that may follow `s` to `out` (sorted, distinct).
    fn successors(&self, s: &State, all: &[Sym], out: &mut Vec<Sym>) {
        out.clear();
        let t = usize::from(s.t);
        match &self.rules {
            Rules::Window { succ, .. } => {
                if let Some(v) = succ.get(&s.key) {
                    out.extend_from_slice(v);
                }
            }
            Rules::Pairs {
                w, n, masks, succ1, ..
            } => {
                if t == 0 {
                    out.extend_from_slice(all);
                    return;
                }
                let side = n + 1;
                let back = t.min(w - 1);
                let prev =
                    |d: usize| ((s.key >> (SYMBOL_BITS as usize * (d - 1))) & 0x1ff) as usize;
                let last = prev(1);
                for &c in succ1.get(last).map_or(&[][..], |v| &v[..]) {
                    let c_ = usize::from(c);
                    if (2..=back).all(|d| masks[c_ * side + prev(d)] & (1 << (d - 1)) != 0) {
                        out.push(c);
                    }
                }
            }
            Rules::Markov {
                succ,
                lenient,
                unseen_ok,
                ..
            } => match succ.get(&s.key) {
                Some(v) => {
                    if lenient.contains(&s.key) {
                        out.extend_from_slice(all);
                    } else {
                        out.extend_from_slice(v);
                    }
                }
                None => {
                    if *unseen_ok {
                        out.extend_from_slice(all);
                    }
                }
            },
        }
    }

    fn advance(&self, s: &State, c: Sym, done: u8) -> State {
        let h = self.history();
        let cap = match self.rules {
            // stide's end rule needs to know whether fewer than k calls were made.
            Rules::Window { .. } => h + 1,
            _ => h,
        };
        State {
            t: (usize::from(s.t) + 1).min(cap) as u8,
            key: ((s.key << SYMBOL_BITS) | u128::from(c)) & mask(h),
            done,
        }
    }

    /// Whether a sequence ending in state `s` passes the model's end-of-trace test.
    fn ends_ok(&self, s: &State) -> bool {
        match &self.rules {
            Rules::Window { k, accept, .. } => {
                let t = usize::from(s.t);
                // Fewer than k calls: stide tests the PAD-filled short window.
                t >= *k
                    || accept
                        .contains(&((u128::from(PAD) << (SYMBOL_BITS as usize * (k - 1))) | s.key))
            }
            _ => true,
        }
    }

    /// The shortest sequence making the goal calls in order without an anomaly.
    ///
    /// `other` is the raw number printed for a call the profile never saw (all such
    /// calls behave the same under every model). `progress` is told (length searched,
    /// states) after each length.
    pub fn mimicry(
        &self,
        goal: &[GoalStep],
        bounds: Bounds,
        other: u32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Outcome {
        let goal_ids: Vec<Vec<Sym>> = goal
            .iter()
            .map(|step| {
                let mut v: Vec<Sym> = step.iter().map(|&r| self.alphabet.id(r)).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let all: Vec<Sym> = (0..=self.symbols() as Sym).collect();
        let g = goal.len().min(u8::MAX as usize) as u8;
        // Nodes: (parent index, symbol, advanced a goal step); index 0 is the start.
        let mut nodes: Vec<(u32, Sym, bool)> = vec![(u32::MAX, 0, false)];
        let mut seen: HashMap<State, u32> = HashMap::new();
        let start = self.start();
        seen.insert(start, 0);
        let mut layer = vec![(start, 0u32)];
        let mut next = vec![];
        let mut succ = vec![];
        let found = |idx: u32, nodes: &[(u32, Sym, bool)]| {
            let mut path = vec![];
            let mut i = idx;
            while i != 0 {
                path.push(nodes[i as usize]);
                i = nodes[i as usize].0;
            }
            path.reverse();
            let mut step = 0;
            let seq = path
                .into_iter()
                .map(|(_, sym, adv)| {
                    let raw = match self.alphabet.raw(sym) {
                        Some(r) => r,
                        // An unknown call standing for a goal call prints as that call.
                        None if adv => goal[step]
                            .iter()
                            .copied()
                            .find(|&r| self.alphabet.id(r) == 0)
                            .unwrap_or(other),
                        None => other,
                    };
                    step += usize::from(adv);
                    raw
                })
                .collect();
            Outcome::Found { sequence: seq }
        };
        if g == 0 && self.ends_ok(&start) {
            return Outcome::Found { sequence: vec![] };
        }
        for depth in 1..=bounds.max_len {
            for &(s, idx) in &layer {
                self.successors(&s, &all, &mut succ);
                for &c in &succ {
                    let adv = s.done < g && goal_ids[usize::from(s.done)].binary_search(&c).is_ok();
                    let n = self.advance(&s, c, s.done + u8::from(adv));
                    if seen.contains_key(&n) {
                        continue;
                    }
                    if nodes.len() >= bounds.max_states {
                        return Outcome::Budget {
                            depth: depth - 1,
                            states: nodes.len(),
                        };
                    }
                    let ni = nodes.len() as u32;
                    nodes.push((idx, c, adv));
                    seen.insert(n, ni);
                    if n.done == g && self.ends_ok(&n) {
                        return found(ni, &nodes);
                    }
                    next.push((n, ni));
                }
            }
            progress(depth, nodes.len());
            if next.is_empty() {
                break;
            }
            std::mem::swap(&mut layer, &mut next);
            next.clear();
        }
        Outcome::NoneWithin {
            max_len: bounds.max_len,
        }
    }
}
