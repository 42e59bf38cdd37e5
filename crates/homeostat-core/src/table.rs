//! Packed window keys and the open-addressing tables that hold them.
//!
//! Testing a window is the hot path of every sequence model: it runs on every system
//! call of every monitored process. A window of `k` dense ids packs into one integer
//! (9 bits a symbol), rolled forward with a shift and a mask, so a test is a multiply,
//! a shift and usually one cache-resident load. A general-purpose hash set with SipHash
//! measured 4x slower here, which is why this small table exists.

use crate::alphabet::{PAD, SYMBOL_BITS};

/// A packed window of dense symbol ids, newest symbol in the low bits.
pub trait Key:
    Copy
    + Eq
    + Ord
    + Default
    + std::fmt::Debug
    + std::ops::BitAnd<Output = Self>
    + Send
    + Sync
    + 'static
{
    /// Windows longer than this do not fit.
    const MAX_WINDOW: usize;
    /// A value no valid key takes (marks free slots).
    const EMPTY: Self;
    /// The mask that keeps the newest `k` symbols.
    fn mask(k: usize) -> Self;
    /// A window filled with [`PAD`], the state before the first call of a trace.
    fn padded(k: usize) -> Self;
    /// Shift in one symbol, dropping the oldest.
    fn push(self, id: u16, mask: Self) -> Self;
    /// The window without its newest symbol (the Markov context).
    fn context(self) -> Self;
    /// Slot index in a table of `1 << bits` slots.
    fn slot(self, bits: u32) -> usize;
    /// Widened for storage in a profile.
    fn to_u128(self) -> u128;
    /// Narrowed back from storage; `None` when it does not fit.
    fn from_u128(v: u128) -> Option<Self>;
}

macro_rules! impl_key {
    ($t:ty, $bits:expr, $fold:expr) => {
        impl Key for $t {
            const MAX_WINDOW: usize = ($bits / SYMBOL_BITS) as usize;
            const EMPTY: Self = <$t>::MAX;
            #[inline(always)]
            fn mask(k: usize) -> Self {
                let bits = k as u32 * SYMBOL_BITS;
                if bits >= $bits {
                    <$t>::MAX
                } else {
                    ((1 as $t) << bits) - 1
                }
            }
            fn padded(k: usize) -> Self {
                let mut key: $t = 0;
                for _ in 0..k {
                    key = (key << SYMBOL_BITS) | PAD as $t;
                }
                key
            }
            #[inline(always)]
            fn push(self, id: u16, mask: Self) -> Self {
                ((self << SYMBOL_BITS) | id as $t) & mask
            }
            #[inline(always)]
            fn context(self) -> Self {
                self >> SYMBOL_BITS
            }
            #[inline(always)]
            fn slot(self, bits: u32) -> usize {
                let folded: u64 = $fold(self);
                // Fibonacci hashing: the multiply spreads the low (newest) symbols,
                // which vary most, into the high bits that pick the slot.
                (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
            }
            fn to_u128(self) -> u128 {
                self as u128
            }
            fn from_u128(v: u128) -> Option<Self> {
                <$t>::try_from(v).ok().filter(|k| *k != Self::EMPTY)
            }
        }
    };
}

impl_key!(u64, 64u32, |k: u64| k);
impl_key!(u128, 128u32, |k: u128| (k as u64)
    ^ ((k >> 64) as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));

/// Smallest table that keeps the load factor at or below 1/4 for `n` keys.
fn bits_for(n: usize) -> u32 {
    let want = (n.max(1) * 4).next_power_of_two();
    want.trailing_zeros().max(4)
}

/// A set of windows with training counts (the training side of every sequence model).
///
/// Keys and counts sit side by side, so counting a window already seen (most windows
/// in training) touches one cache line.
#[derive(Debug, Clone)]
pub struct CountTable<K: Key> {
    bits: u32,
    slots: Vec<(K, u32)>,
    len: usize,
}

impl<K: Key> Default for CountTable<K> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<K: Key> CountTable<K> {
    /// A table sized for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        let bits = bits_for(n);
        CountTable {
            bits,
            slots: vec![(K::EMPTY, 0); 1 << bits],
            len: 0,
        }
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `n` to the count of `key`; returns true when the key is new.
    #[inline]
    pub fn add(&mut self, key: K, n: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = key.slot(self.bits);
        loop {
            let slot = &mut self.slots[i];
            if slot.0 == key {
                slot.1 = slot.1.saturating_add(n);
                return false;
            }
            if slot.0 == K::EMPTY {
                *slot = (key, n);
                self.len += 1;
                // Grow at load 1/2, by 4x: few rehashes while a profile fills up.
                if self.len * 2 > self.slots.len() {
                    self.grow();
                }
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// The training count of `key` (0 when absent).
    pub fn count(&self, key: K) -> u32 {
        let mask = self.slots.len() - 1;
        let mut i = key.slot(self.bits);
        loop {
            let (k, c) = self.slots[i];
            if k == key {
                return c;
            }
            if k == K::EMPTY {
                return 0;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let mut bigger = CountTable::with_capacity(self.len * 4);
        for (k, c) in self.iter() {
            bigger.add(k, c);
        }
        *self = bigger;
    }

    /// Every key with its count, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (K, u32)> + '_ {
        self.slots.iter().copied().filter(|(k, _)| *k != K::EMPTY)
    }

    /// Every key with its count, sorted by key (a stable order for files and diffs).
    pub fn sorted(&self) -> Vec<(K, u32)>
    where
        K: Ord,
    {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_unstable();
        v
    }
}

/// Slots past the last home slot, so probes never wrap and the two-slot check below
/// never needs a bounds test on the second slot.
const OVERHANG: usize = 32;

/// A read-only set of windows laid out for the test loop: keys only, load at most 1/8.
///
/// Linear probing without wrap-around: each lookup reads its home slot and the next
/// one and decides from both without a branch; only when both hold other keys (about
/// 1% of lookups at this load) does it walk further. On ADFA-LD, where a quarter of
/// test windows are foreign, this made stide 1.25x faster than branching per slot,
/// and load 1/8 was 1.25x faster than 1/4 (shorter probes beat the larger table).
#[derive(Debug, Clone)]
pub struct KeySet<K: Key> {
    bits: u32,
    keys: Vec<K>,
    len: usize,
}

impl<K: Key> Default for KeySet<K> {
    fn default() -> Self {
        Self::from_keys(std::iter::empty())
    }
}

impl<K: Key> KeySet<K> {
    /// Builds the set from distinct keys.
    pub fn from_keys(keys: impl IntoIterator<Item = K>) -> Self {
        let keys: Vec<K> = keys.into_iter().collect();
        let mut bits = (keys.len().max(1) * 8)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        loop {
            if let Some(set) = Self::build(&keys, bits) {
                return set;
            }
            // A probe run reached the overhang: practically never at load 1/8.
            bits += 1;
        }
    }

    fn build(keys: &[K], bits: u32) -> Option<Self> {
        let mut set = KeySet {
            bits,
            keys: vec![K::EMPTY; (1 << bits) + OVERHANG],
            len: 0,
        };
        for &key in keys {
            let mut i = key.slot(bits);
            while set.keys[i] != K::EMPTY && set.keys[i] != key {
                i += 1;
                if i + 1 >= set.keys.len() {
                    return None;
                }
            }
            if set.keys[i] == K::EMPTY {
                set.keys[i] = key;
                set.len += 1;
            }
        }
        Some(set)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Membership test: the inner loop of stide.
    #[inline(always)]
    pub fn contains(&self, key: K) -> bool {
        for &k in &self.keys[key.slot(self.bits)..] {
            if k == key {
                return true;
            }
            if k == K::EMPTY {
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_key_keeps_newest_symbols() {
        let mask = u64::mask(3);
        let mut key = u64::padded(3);
        for id in [1u16, 2, 3, 4] {
            key = key.push(id, mask);
        }
        assert_eq!(key, (2 << 18) | (3 << 9) | 4);
        assert_eq!(key.context(), (2 << 9) | 3);
        let short = u64::padded(3).push(7, mask);
        assert_eq!(short, (u64::from(PAD) << 18) | (u64::from(PAD) << 9) | 7);
    }

    #[test]
    fn count_table_grows_and_counts() {
        let mut t = CountTable::<u64>::default();
        for i in 0..10_000u64 {
            assert!(t.add(i * 7919, 1));
        }
        assert!(!t.add(7919, 2));
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.count(7919), 3);
        assert_eq!(t.count(1), 0);
        let set = KeySet::from_keys(t.iter().map(|(k, _)| k));
        assert_eq!(set.len(), 10_000);
        assert!(set.contains(9999 * 7919));
        assert!(!set.contains(3));
    }

    #[test]
    fn wide_keys_work() {
        let mask = u128::mask(14);
        let mut key = u128::padded(14);
        for id in 1..=20u16 {
            key = key.push(id, mask);
        }
        let set = KeySet::from_keys([key]);
        assert!(set.contains(key));
        assert!(!set.contains(key.push(1, mask)));
        assert_eq!(u128::MAX_WINDOW, 14);
        assert_eq!(u64::MAX_WINDOW, 7);
    }
}
