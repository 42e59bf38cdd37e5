//! Minimal foreign sequences (Tan & Maxion 2002): the shortest pieces of a trace that
//! training never produced, although every shorter piece inside them was produced.
//!
//! A sequence is foreign when it is not a contiguous subsequence of any training
//! trace, and minimal when its two subsequences one call shorter (hence all proper
//! ones) are not foreign. stide with window k sees an MFS of length L exactly when
//! L <= k: a longer one has every k-window in the database, which is the "blind
//! region" of the window.
//!
//! What a profile can tell (docs/analyze.md has the reasoning):
//! - stide, t-stide (window k) and Markov (n-grams, n = k) keep every k-window of
//!   training (Markov also the start-padded ones), and every sequence of length <= k
//!   that occurred lies inside one of them, so foreignness of sequences up to k calls
//!   is known exactly and every MFS up to length k is found. A longer sequence whose
//!   k-windows are all stored may or may not have occurred: MFSs longer than k cannot
//!   be found from this profile (a larger-k profile of the same traces finds them).
//! - lookahead pairs (window w) keep, for each distance d < w, which calls came d
//!   apart. One call and two adjacent calls are known exactly, so MFSs of length 1 and
//!   2 are exact. From length 3 to w a missing pair proves a sequence foreign, but all
//!   pairs present does not prove it occurred; the analysis reports the shortest spans
//!   that a missing pair proves foreign (first and last call never that far apart,
//!   every inner pair present), marked not exact: each contains a true MFS no longer
//!   than the span.

use serde::Serialize;

use crate::rules::{pack, Rules, Sym, View};

/// One minimal foreign sequence of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mfs {
    /// Index of its first call in the trace.
    pub pos: usize,
    /// Its length.
    pub len: usize,
    /// True when it is a proven MFS; false for a pairs span that a missing pair proves
    /// foreign (it contains an MFS of at most this length).
    pub exact: bool,
}

impl Mfs {
    /// Smallest stide window that detects it (any window >= its length does).
    pub fn min_window(&self) -> usize {
        self.len
    }
}

/// The MFSs of one trace and how far the profile could look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MfsReport {
    /// In order of position.
    pub mfs: Vec<Mfs>,
    /// Lengths up to which foreignness is known exactly (k for window models, 2 for
    /// lookahead pairs).
    pub exact_to: usize,
    /// Longest length searched (k, or w for lookahead pairs).
    pub searched_to: usize,
}

impl MfsReport {
    /// How many of the MFSs stide with window `k` sees.
    pub fn visible(&self, k: usize) -> usize {
        self.mfs.iter().filter(|m| m.len <= k).count()
    }
}

impl View {
    /// Whether `s` (dense ids) occurred in training, for lengths up to the window
    /// (window models) or 2 (pairs); `None` when the profile cannot tell.
    pub(crate) fn seen(&self, s: &[Sym]) -> Option<bool> {
        if s.contains(&0) {
            return Some(false);
        }
        match &self.rules {
            Rules::Window { k, .. } | Rules::Markov { n: k, .. } => {
                if s.len() > *k {
                    return None;
                }
                Some(s.is_empty() || self.seen_set().contains(&(s.len() as u8, pack(s, s.len()))))
            }
            Rules::Pairs { .. } => match s.len() {
                0 | 1 => Some(true),
                2 => Some(self.pair(s[1], s[0], 1)),
                _ => None,
            },
        }
    }

    fn pair(&self, cur: Sym, prev: Sym, d: usize) -> bool {
        match &self.rules {
            Rules::Pairs { n, masks, .. } => {
                let side = n + 1;
                let (c, p) = (usize::from(cur), usize::from(prev));
                c < side && p < side && masks[c * side + p] & (1 << (d - 1)) != 0
            }
            _ => false,
        }
    }

    /// Whether every lookahead pair inside `s` is in the profile.
    fn pair_consistent(&self, s: &[Sym]) -> bool {
        if s.contains(&0) {
            return false;
        }
        (1..s.len()).all(|j| (0..j).all(|i| self.pair(s[j], s[i], j - i)))
    }

    /// The minimal foreign sequences of a trace (raw call numbers).
    pub fn mfs(&self, trace: &[u32]) -> MfsReport {
        let ids: Vec<Sym> = trace.iter().map(|&c| self.alphabet.id(c)).collect();
        let mut out = vec![];
        let pairs = matches!(self.rules, Rules::Pairs { .. });
        let (exact_to, searched_to) = if pairs {
            (2, self.window)
        } else {
            (self.window, self.window)
        };
        for i in 0..ids.len() {
            for len in 1..=searched_to.min(ids.len() - i) {
                let s = &ids[i..i + len];
                let foreign = if pairs {
                    // The prefix is pair-consistent (shorter lengths were), so only
                    // the pairs of the last call can be missing.
                    !self.pair_consistent(s)
                } else {
                    self.seen(s) == Some(false)
                };
                if !foreign {
                    continue;
                }
                // The prefix is not foreign (else a shorter length stopped the loop);
                // minimal when the suffix is not foreign either.
                let suffix_ok = if pairs {
                    self.pair_consistent(&s[1..])
                } else {
                    self.seen(&s[1..]) == Some(true)
                };
                if suffix_ok {
                    out.push(Mfs {
                        pos: i,
                        len,
                        exact: len <= exact_to,
                    });
                }
                break;
            }
        }
        MfsReport {
            mfs: out,
            exact_to,
            searched_to,
        }
    }
}
