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
    /// Most search states kept (about 200 bytes each with the hash table); the
    /// search gives up, and says so, when it would need more.
    pub max_states: usize,
    /// The attacker takes over mid-trace: any calls the model accepts may come first
    /// (the program's own, free), and length counts from the first goal call. For
    /// lookahead pairs the trace start already is that case at its most favourable
    /// (pairs reaching back before the first call are not checked), so it is used.
    pub mid_trace: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_len: 64,
            max_states: 4_000_000,
            mid_trace: false,
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
        /// Mid-trace: calls of the program before the attack that lead to the state it
        /// starts from (not counted).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        prefix: Vec<u32>,
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
            Outcome::Found { sequence, .. } => Some(sequence),
            _ => None,
        }
    }

    /// Mid-trace: the program's calls before the attack.
    pub fn prefix(&self) -> &[u32] {
        match self {
            Outcome::Found { prefix, .. } => prefix,
            _ => &[],
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

    /// Fewest further calls before a sequence in state `s` may end: stide needs a full
    /// first window, or a short training trace's length.
    fn calls_to_end(&self, s: &State) -> usize {
        match &self.rules {
            Rules::Window { k, short_lens, .. } => {
                let t = usize::from(s.t);
                if t >= *k {
                    return 0;
                }
                let short = short_lens.iter().find(|&&m| m >= t).map(|&m| m - t);
                short.unwrap_or(k - t).min(k - t)
            }
            _ => 0,
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

    /// Which symbols may directly follow each symbol in any accepted sequence (a
    /// relaxation of the model: it forgets everything but the last call). `None` when
    /// the model keeps no last call (window 1) or lets anything follow (Markov with
    /// lenient or unseen contexts), where the relaxation would not help.
    fn follow_relation(&self) -> Option<Vec<Vec<Sym>>> {
        let side = self.symbols() + 1;
        if self.history() == 0 {
            return None;
        }
        let mut rel = vec![vec![]; side];
        match &self.rules {
            Rules::Pairs { succ1, .. } => {
                for (a, v) in succ1.iter().enumerate() {
                    rel[a] = v.clone();
                }
            }
            Rules::Window { succ, .. } => {
                for (&ctx, v) in succ {
                    let last = (ctx & u128::from(PAD)) as usize;
                    if last < side {
                        rel[last].extend_from_slice(v);
                    }
                }
            }
            Rules::Markov { .. } => return None,
        }
        for v in &mut rel {
            v.sort_unstable();
            v.dedup();
        }
        Some(rel)
    }

    /// The shortest sequence making the goal calls in order without an anomaly.
    ///
    /// A* over (history, goal steps done), with unit costs and the exact distance in
    /// the relaxed "may follow" graph as the heuristic: the relaxation accepts every
    /// sequence the model accepts, so the heuristic never overestimates, and it is
    /// consistent, so the first goal state taken from the queue is a shortest one.
    /// Without a relaxation the heuristic is the number of goal steps left.
    ///
    /// `other` is the raw number printed for a call the profile never saw (all such
    /// calls behave the same under every model). `progress` is told (length bound
    /// proven so far, states) as the search deepens.
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
        if goal.len() > usize::from(u8::MAX) - 1 {
            return Outcome::NoneWithin {
                max_len: bounds.max_len,
            };
        }
        let g = goal.len() as u8;
        let side = self.symbols() + 1;
        let all: Vec<Sym> = (0..side as Sym).collect();
        let in_goal =
            |done: u8, c: Sym| done < g && goal_ids[usize::from(done)].binary_search(&c).is_ok();
        let heur = self.relaxed_distances(&goal_ids, side);
        let mid = bounds.mid_trace && !matches!(self.rules, Rules::Pairs { .. });
        let h = |s: &State| -> usize {
            if mid && s.done == 0 {
                // Calls before the first goal call are free: only the steps count.
                return usize::from(g);
            }
            let relaxed = match (&heur, s.t) {
                (Some(d), t) if t > 0 => {
                    let last = (s.key & u128::from(PAD)) as usize;
                    d[usize::from(s.done)][last.min(side - 1)]
                }
                _ => usize::from(g - s.done),
            };
            relaxed.max(self.calls_to_end(s))
        };
        // Nodes: (state, cost, parent, symbol, advanced a goal step).
        let mut nodes: Vec<(State, u32, u32, Sym, bool)> = vec![];
        let mut best: HashMap<State, u32> = HashMap::new();
        let mut buckets: Vec<Vec<u32>> = vec![vec![]; bounds.max_len + 2];
        let start = self.start();
        nodes.push((start, 0, u32::MAX, 0, false));
        best.insert(start, 0);
        buckets[h(&start).min(bounds.max_len + 1)].push(0);
        let mut succ = vec![];
        let mut reported = 0;
        for f in 0..=bounds.max_len {
            if f > reported {
                progress(f, nodes.len());
                reported = f;
            }
            while let Some(idx) = buckets[f].pop() {
                let (s, len, ..) = nodes[idx as usize];
                if best.get(&s).is_some_and(|&b| b < len) {
                    continue;
                }
                if s.done == g && self.ends_ok(&s) {
                    return self.path(&nodes, idx, goal, other);
                }
                self.successors(&s, &all, &mut succ);
                let options = succ.iter().flat_map(|&c| {
                    let adv = in_goal(s.done, c);
                    // Mid-trace, before the attack: a call is the program's own (free),
                    // or the first goal call, which starts the attack.
                    let free = (mid && s.done == 0).then_some((c, false, 0));
                    let paid = (!mid || s.done > 0 || adv).then_some((c, adv, 1));
                    free.into_iter().chain(paid)
                });
                for (c, adv, cost) in options {
                    let n = self.advance(&s, c, s.done + u8::from(adv));
                    let nl = len + cost;
                    if best.get(&n).is_some_and(|&b| b <= nl) {
                        continue;
                    }
                    let nf = nl as usize + h(&n);
                    if nf > bounds.max_len {
                        continue;
                    }
                    if nodes.len() >= bounds.max_states {
                        return Outcome::Budget {
                            depth: f.saturating_sub(1),
                            states: nodes.len(),
                        };
                    }
                    best.insert(n, nl);
                    nodes.push((n, nl, idx, c, adv));
                    // Consistent heuristic: nf >= f, so nothing goes to a done bucket
                    // (free calls stay in this one).
                    buckets[nf].push((nodes.len() - 1) as u32);
                }
            }
        }
        Outcome::NoneWithin {
            max_len: bounds.max_len,
        }
    }

    /// d[done][sym]: fewest calls that finish the goal from `done` steps in, when the
    /// last call was `sym`, in the relaxed graph (infinite = usize::MAX / 2).
    fn relaxed_distances(&self, goal_ids: &[Vec<Sym>], side: usize) -> Option<Vec<Vec<usize>>> {
        const INF: usize = usize::MAX / 2;
        let rel = self.follow_relation()?;
        let g = goal_ids.len();
        let mut d = vec![vec![INF; side]; g + 1];
        d[g] = vec![0; side];
        for done in (0..g).rev() {
            let step = &goal_ids[done];
            let mut cur: Vec<usize> = (0..side)
                .map(|a| {
                    rel[a]
                        .iter()
                        .filter(|b| step.binary_search(b).is_ok())
                        .map(|&b| 1 + d[done + 1][usize::from(b)])
                        .min()
                        .unwrap_or(INF)
                })
                .collect();
            // Bellman-Ford inside the layer: unit edges, at most `side` rounds.
            loop {
                let mut changed = false;
                for a in 0..side {
                    for &b in &rel[a] {
                        if step.binary_search(&b).is_err() {
                            let via = cur[usize::from(b)].saturating_add(1);
                            if via < cur[a] {
                                cur[a] = via;
                                changed = true;
                            }
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
            d[done] = cur;
        }
        Some(d)
    }

    fn path(
        &self,
        nodes: &[(State, u32, u32, Sym, bool)],
        idx: u32,
        goal: &[GoalStep],
        other: u32,
    ) -> Outcome {
        let mut steps = vec![];
        let mut i = idx;
        while i != 0 {
            let (_, cost, parent, sym, adv) = nodes[i as usize];
            let paid = cost > nodes[parent as usize].1;
            steps.push((sym, adv, paid));
            i = parent;
        }
        steps.reverse();
        // Mid-trace, the attack starts at the first paid call.
        let split = steps.iter().position(|s| s.2).unwrap_or(steps.len());
        let mut step = 0;
        let mut raws = steps
            .into_iter()
            .map(|(sym, adv, _)| {
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
            .collect::<Vec<u32>>();
        let sequence = raws.split_off(split);
        Outcome::Found {
            sequence,
            prefix: raws,
        }
    }
}
