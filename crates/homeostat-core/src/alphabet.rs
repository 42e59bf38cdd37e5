//! Dense symbol ids for system call numbers.
//!
//! Models index tables by symbol, so raw call numbers (sparse, up to u32) are mapped to
//! small dense ids assigned in order of first appearance in training. Id 0 means "never
//! seen in training": any window or pair holding it is foreign by construction, which
//! is exactly stide's and pH's semantics for a call the profile never saw. Ids fit in
//! [`SYMBOL_BITS`] bits so a window of up to 7 calls packs into one `u64`.

use std::collections::BTreeMap;

/// Id of every call number that training never saw.
pub const UNKNOWN: u16 = 0;
/// Filler for positions before the start of a trace (short windows, Markov context).
pub const PAD: u16 = (1 << SYMBOL_BITS) - 1;
/// The largest id given to a distinct call; later distinct calls share it (Linux has
/// fewer than 500 system calls per ABI, so this only triggers on garbage input).
pub const MAX_ID: u16 = PAD - 1;
/// Bits per symbol in a packed window key.
pub const SYMBOL_BITS: u32 = 9;

/// Calls below this number are looked up in a flat table; others in a map.
const DIRECT_LIMIT: usize = 4096;

/// The mapping from raw system call numbers to dense ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alphabet {
    /// Fixed size, so the hot lookup needs one compare and no bounds check.
    direct: Box<[u16; DIRECT_LIMIT]>,
    spill: BTreeMap<u32, u16>,
    /// `symbols[id - 1]` is the raw number of `id`.
    symbols: Vec<u32>,
}

impl Default for Alphabet {
    fn default() -> Self {
        Alphabet {
            direct: Box::new([UNKNOWN; DIRECT_LIMIT]),
            spill: BTreeMap::new(),
            symbols: Vec::new(),
        }
    }
}

impl Alphabet {
    /// An empty alphabet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds an alphabet from its symbols in id order (as stored in a profile).
    pub fn from_symbols(symbols: &[u32]) -> Self {
        let mut a = Self::new();
        for &s in symbols {
            a.intern(s);
        }
        a
    }

    /// [`from_symbols`](Self::from_symbols) for symbols read from a profile: refuses
    /// a symbol stored twice. Any number is accepted, past [`MAX_ID`] too: training
    /// records every distinct call (later ones share the last id), so a profile of a
    /// model trained on more calls than that must load.
    pub fn from_stored(symbols: &[u32]) -> Result<Self, String> {
        let a = Self::from_symbols(symbols);
        if a.symbols.len() != symbols.len() {
            return Err("a symbol is stored twice".into());
        }
        Ok(a)
    }

    /// The raw call numbers in id order.
    pub fn symbols(&self) -> &[u32] {
        &self.symbols
    }

    /// Number of distinct ids in use.
    pub fn len(&self) -> usize {
        self.symbols.len().min(usize::from(MAX_ID))
    }

    /// True when no call has been seen.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The raw call number of a dense id (`None` for [`UNKNOWN`], [`PAD`] or unused ids).
    pub fn raw(&self, id: u16) -> Option<u32> {
        if id == UNKNOWN || id == PAD {
            return None;
        }
        self.symbols.get(usize::from(id) - 1).copied()
    }

    /// The id of `raw`, or [`UNKNOWN`] when training never saw it.
    #[inline(always)]
    pub fn id(&self, raw: u32) -> u16 {
        if (raw as usize) < DIRECT_LIMIT {
            self.direct[raw as usize]
        } else {
            self.spill_id(raw)
        }
    }

    #[cold]
    fn spill_id(&self, raw: u32) -> u16 {
        self.spill.get(&raw).copied().unwrap_or(UNKNOWN)
    }

    /// The id of `raw`, assigning the next free one when it is new.
    pub fn intern(&mut self, raw: u32) -> u16 {
        let known = self.id(raw);
        if known != UNKNOWN {
            return known;
        }
        // Past MAX_ID every new call shares the last id; it is still recorded so that
        // the same calls map the same way after a save and load.
        let id = (self.symbols.len() + 1).min(usize::from(MAX_ID)) as u16;
        self.symbols.push(raw);
        let idx = raw as usize;
        if idx < DIRECT_LIMIT {
            self.direct[idx] = id;
        } else {
            self.spill.insert(raw, id);
        }
        id
    }

    /// Maps a whole trace to ids, reusing `out`.
    #[inline]
    pub fn map_into(&self, calls: &[u32], out: &mut Vec<u16>) {
        out.clear();
        out.extend(calls.iter().map(|&c| self.id(c)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_order_of_first_appearance() {
        let mut a = Alphabet::new();
        assert_eq!(a.intern(5), 1);
        assert_eq!(a.intern(3), 2);
        assert_eq!(a.intern(5), 1);
        assert_eq!(a.intern(100_000), 3);
        assert_eq!(a.id(3), 2);
        assert_eq!(a.id(100_000), 3);
        assert_eq!(a.id(4), UNKNOWN);
        assert_eq!(a.id(4000), UNKNOWN);
        assert_eq!(a.id(u32::MAX), UNKNOWN);
        assert_eq!(a.raw(3), Some(100_000));
        assert_eq!(Alphabet::from_symbols(a.symbols()), a);
    }

    #[test]
    fn overflow_shares_the_last_id() {
        let mut a = Alphabet::new();
        for raw in 0..600 {
            a.intern(raw);
        }
        assert_eq!(a.len(), usize::from(MAX_ID));
        assert_eq!(a.id(599), MAX_ID);
        assert_eq!(a.id(508), MAX_ID - 1);
        assert_eq!(Alphabet::from_symbols(a.symbols()), a);
    }
}
