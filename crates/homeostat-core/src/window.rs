//! The window machinery stide, t-stide and Markov share: a database of packed
//! fixed-length windows with counts, the cursor roll that builds them call by call,
//! and the choice of key width.
//!
//! It lives apart from the models so that each model imports only this and never
//! another model: stide and Markov differ in what they derive from the same counts
//! (a set of accepted windows, or smoothed transition probabilities), not in how
//! windows are formed.

use crate::alphabet::Alphabet;
use crate::model::Cursor;
use crate::table::{CountTable, Key};

/// Training windows with counts, and the symbol map; shared by stide, t-stide and the
/// Markov model.
#[derive(Debug, Clone)]
pub struct WindowDb<K: Key> {
    pub(crate) k: usize,
    pub(crate) mask: K,
    pub(crate) alphabet: Alphabet,
    pub(crate) counts: CountTable<K>,
    pub(crate) total: u64,
    pub(crate) calls: u64,
}

impl<K: Key> WindowDb<K> {
    pub(crate) fn new(k: usize) -> Self {
        WindowDb {
            k,
            mask: K::mask(k),
            alphabet: Alphabet::new(),
            counts: CountTable::default(),
            total: 0,
            calls: 0,
        }
    }

    /// The cursor key of a trace that has not started.
    pub(crate) fn padded(&self) -> u128 {
        K::padded(self.k).to_u128()
    }

    /// Every distinct window (widened) with its count, sorted by key: the stored form.
    pub(crate) fn stored_windows(&self) -> Vec<(u128, u32)> {
        self.counts
            .sorted()
            .into_iter()
            .map(|(k, c)| (k.to_u128(), c))
            .collect()
    }

    /// Restores stored training data; `None` when a key does not fit the window.
    pub(crate) fn restore(
        &mut self,
        symbols: &[u32],
        windows: &[(u128, u32)],
        calls: u64,
    ) -> Option<()> {
        self.alphabet = Alphabet::from_symbols(symbols);
        self.calls = calls;
        for &(k, c) in windows {
            let key = K::from_u128(k)?;
            if key != (key & self.mask) {
                return None;
            }
            self.counts.add(key, c);
            self.total += u64::from(c);
        }
        Some(())
    }

    #[inline]
    pub(crate) fn add(&mut self, key: K) -> bool {
        self.total += 1;
        self.counts.add(key, 1)
    }
}

/// The packed-key width a window length needs. Windows of up to 7 calls use `u64`
/// keys (the fast common case); longer ones `u128`.
#[derive(Debug, Clone)]
pub(crate) enum Width<T64, T128> {
    Narrow(T64),
    Wide(T128),
}

/// Shifts a call into a cursor's packed window and returns the window.
#[inline]
pub(crate) fn roll<K: Key>(cur: &mut Cursor, id: u16, mask: K) -> K {
    let wide_mask = mask.to_u128();
    cur.key = ((cur.key << crate::alphabet::SYMBOL_BITS) | u128::from(id)) & wide_mask;
    cur.calls += 1;
    K::from_u128(cur.key).unwrap_or_default()
}

macro_rules! both {
    ($self:expr, $db:ident => $e:expr) => {
        match $self {
            Width::Narrow($db) => $e,
            Width::Wide($db) => $e,
        }
    };
}
pub(crate) use both;
