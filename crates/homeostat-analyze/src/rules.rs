//! What a profile accepts, rebuilt from the core's public accessors into tables that
//! answer the two questions the analyses ask: "may call `c` follow this history?" and
//! "did this short sequence occur in training?".
//!
//! The core's test tables are laid out for one membership test per call; a search
//! needs the successors of a history instead, so they are re-derived here from the
//! stored training data with the same rules (t-stide's rarity limit, Markov's smoothed
//! probability and lenient contexts). The property tests check every answer against
//! the core model itself, so the two cannot drift apart unnoticed.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use homeostat_core::alphabet::{Alphabet, PAD, SYMBOL_BITS};
use homeostat_core::markov::Markov;
use homeostat_core::pairs::Pairs;
use homeostat_core::stide::Stide;
use homeostat_core::{AnyModel, Model, ModelKind};

/// Largest history (calls before the current one) the exact search packs into a key:
/// 14 symbols of 9 bits fill a u128, so stide / Markov (k <= 14) always fit and
/// lookahead pairs fit up to w = 15.
pub const MAX_HISTORY: usize = 14;

/// Dense symbol id as the core assigns it (0 = a call the profile never saw).
pub type Sym = u16;

/// The acceptance rules of one profile over dense ids.
#[derive(Debug, Clone)]
pub(crate) enum Rules {
    /// stide / t-stide with window `k`.
    Window {
        k: usize,
        /// Allowed next symbols after a (k-1)-symbol context key (PAD-filled at the
        /// start of a trace): from full accepted windows, and from prefixes of accepted
        /// windows and short traces while the first window is still filling.
        succ: HashMap<u128, Vec<Sym>>,
        /// Accepted windows, including short-trace windows (PAD-filled).
        accept: HashSet<u128>,
        /// Lengths of the accepted short-trace windows, ascending.
        short_lens: Vec<usize>,
    },
    /// Lookahead pairs with window `w`.
    Pairs {
        w: usize,
        /// Symbols 0..n (0 = unknown).
        n: usize,
        /// masks[cur * (n + 1) + prev]: bit d-1 set when prev may come d calls before cur.
        masks: Vec<u32>,
        /// Symbols that may follow `prev` directly (distance 1).
        succ1: Vec<Vec<Sym>>,
    },
    /// n-gram Markov model.
    Markov {
        n: usize,
        /// Accepted continuations of each context seen in training (not lenient).
        succ: HashMap<u128, Vec<Sym>>,
        /// Contexts seen in training so rarely that any next call passes.
        lenient: HashSet<u128>,
        /// Whether any call passes after a context training never saw.
        unseen_ok: bool,
    },
}

/// A profile's rules plus the facts the analyses need about it.
#[derive(Debug, Clone)]
pub struct View {
    pub(crate) rules: Rules,
    pub(crate) alphabet: Alphabet,
    pub(crate) kind: ModelKind,
    pub(crate) window: usize,
    /// Every contiguous sequence of length 1..=k of the training data (window models
    /// only), keyed by (length, packed symbols); built on first use, since only the
    /// MFS analysis needs it and for k = 14 it holds millions of sequences.
    seen: OnceLock<HashSet<(u8, u128)>>,
    /// The stored windows and their length, to build `seen` from.
    windows: Vec<(u128, u32)>,
}

/// A profile the analyses cannot handle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    /// Lookahead pairs with a window too large for the packed search state.
    #[error("exact search supports lookahead-pairs windows up to 15 (this profile: {0})")]
    WindowTooLarge(usize),
}

/// The symbols of a packed key, oldest first, without the PAD filler.
pub(crate) fn unpack(key: u128, len: usize) -> Vec<Sym> {
    let mut v: Vec<Sym> = (0..len)
        .rev()
        .map(|i| ((key >> (SYMBOL_BITS as usize * i)) & u128::from(PAD)) as Sym)
        .collect();
    v.retain(|&s| s != PAD);
    v
}

/// Packs symbols (oldest first) into a key, PAD-filled to `len` symbols.
pub(crate) fn pack(syms: &[Sym], len: usize) -> u128 {
    let mut key = 0u128;
    for _ in syms.len()..len {
        key = (key << SYMBOL_BITS) | u128::from(PAD);
    }
    for &s in syms {
        key = (key << SYMBOL_BITS) | u128::from(s);
    }
    key
}

pub(crate) fn mask(len: usize) -> u128 {
    let bits = len as u32 * SYMBOL_BITS;
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn seen_substrings(windows: &[(u128, u32)], k: usize) -> HashSet<(u8, u128)> {
    let mut seen = HashSet::new();
    for &(key, _) in windows {
        let syms = unpack(key, k);
        for i in 0..syms.len() {
            for j in i + 1..=syms.len() {
                seen.insert(((j - i) as u8, pack(&syms[i..j], j - i)));
            }
        }
    }
    seen
}

impl View {
    /// The rules of a finished model.
    pub fn new(model: &AnyModel) -> Result<View, ViewError> {
        let spec = model.spec().clone();
        let (rules, alphabet, windows) = match model {
            AnyModel::Stide(m) => (window_rules(m), m.alphabet().clone(), m.windows()),
            AnyModel::Pairs(m) => {
                if spec.window > MAX_HISTORY + 1 {
                    return Err(ViewError::WindowTooLarge(spec.window));
                }
                (pairs_rules(m), m.alphabet().clone(), vec![])
            }
            AnyModel::Markov(m) => (markov_rules(m), m.alphabet().clone(), m.windows()),
        };
        Ok(View {
            rules,
            alphabet,
            kind: spec.kind,
            window: spec.window,
            seen: OnceLock::new(),
            windows,
        })
    }

    /// The model kind.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The window (k, w or n).
    pub fn window(&self) -> usize {
        self.window
    }

    /// The symbol map of the profile.
    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    /// Number of known symbols (ids 1..=n; 0 is "never seen").
    pub(crate) fn symbols(&self) -> usize {
        self.alphabet.len()
    }

    /// Every sequence of up to `window` calls training produced (window models).
    pub(crate) fn seen_set(&self) -> &HashSet<(u8, u128)> {
        self.seen
            .get_or_init(|| seen_substrings(&self.windows, self.window))
    }

    /// Calls before the current one that decide its verdict.
    pub(crate) fn history(&self) -> usize {
        self.window - 1
    }
}

fn window_rules(m: &Stide) -> Rules {
    let spec = m.spec();
    let k = spec.window;
    let windows = m.windows();
    // The same comparison as the core's t-stide finish, so borderline windows agree.
    let limit = spec.rare_fraction * m.total_windows() as f64;
    let tstide = spec.kind == ModelKind::TStide;
    let accept: HashSet<u128> = windows
        .iter()
        .filter(|&&(_, c)| !tstide || f64::from(c) >= limit)
        .map(|&(key, _)| key)
        .collect();
    let mut succ: HashMap<u128, HashSet<Sym>> = HashMap::new();
    for &key in &accept {
        let syms = unpack(key, k);
        // Prefixes of length 1..=len while the first window fills; for a full window
        // its last step is the ordinary (k-1)-context transition.
        for j in 1..=syms.len() {
            let ctx = pack(&syms[..j - 1], k - 1);
            succ.entry(ctx).or_default().insert(syms[j - 1]);
        }
    }
    let succ = succ
        .into_iter()
        .map(|(c, s)| {
            let mut v: Vec<Sym> = s.into_iter().collect();
            v.sort_unstable();
            (c, v)
        })
        .collect();
    let mut short_lens: Vec<usize> = accept
        .iter()
        .map(|&key| unpack(key, k).len())
        .filter(|&l| l < k)
        .collect();
    short_lens.sort_unstable();
    short_lens.dedup();
    Rules::Window {
        k,
        succ,
        accept,
        short_lens,
    }
}

fn pairs_rules(m: &Pairs) -> Rules {
    let w = m.spec().window;
    let n = m.alphabet().len();
    let side = n + 1;
    let mut masks = vec![0u32; side * side];
    let mut succ1 = vec![vec![]; side];
    for (cur, prev, bits) in m.test_entries() {
        let (c, p) = (usize::from(cur), usize::from(prev));
        if c < side && p < side {
            masks[c * side + p] = bits;
            if bits & 1 != 0 {
                succ1[p].push(cur);
            }
        }
    }
    Rules::Pairs { w, n, masks, succ1 }
}

fn markov_rules(m: &Markov) -> Rules {
    let spec = m.spec();
    let n = spec.window;
    let windows = m.windows();
    let mut ctx_counts: HashMap<u128, f64> = HashMap::new();
    for &(key, c) in &windows {
        *ctx_counts.entry(key >> SYMBOL_BITS).or_default() += f64::from(c);
    }
    // The core's smoothed probability, computed with the same operations in the same
    // order so that a probability exactly at the threshold is judged the same way.
    let a = spec.smoothing;
    let symbols = (m.alphabet().len() + 1) as f64;
    let theta = spec.threshold;
    let prob = |c: f64, total: f64| (c + a) / (total + a * symbols);
    let mut succ: HashMap<u128, Vec<Sym>> = HashMap::new();
    for &(key, c) in &windows {
        let ctx = key >> SYMBOL_BITS;
        if prob(f64::from(c), ctx_counts[&ctx]) >= theta {
            succ.entry(ctx)
                .or_default()
                .push((key & u128::from(PAD)) as Sym);
        }
    }
    for v in succ.values_mut() {
        v.sort_unstable();
    }
    // Contexts seen but with no accepted continuation still count as seen.
    for &ctx in ctx_counts.keys() {
        succ.entry(ctx).or_default();
    }
    let lenient = ctx_counts
        .iter()
        .filter(|&(_, &c)| prob(0.0, c) >= theta)
        .map(|(&k, _)| k)
        .collect();
    let unseen_ok = prob(0.0, 0.0) >= theta;
    Rules::Markov {
        n,
        succ,
        lenient,
        unseen_ok,
    }
}
