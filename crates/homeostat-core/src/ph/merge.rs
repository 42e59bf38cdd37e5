//! Merging two saves of one executable's profile.
//!
//! Why: two monitors learning the same program at the same time (two `homeostat run
//! --learn` sharing a state directory) each hold their own copy and save it over the
//! file; without a merge the last writer wins and the other's learning is lost. The
//! merge is a union of pair sets, so it is idempotent: merging a file that already
//! holds our pairs adds nothing, and repeated saves never inflate the profile.

use std::collections::HashMap;

use super::PhProfile;
use crate::alphabet::Alphabet;
use crate::model::Model;
use crate::pairs::Pairs;

impl PhProfile {
    /// This profile with `other`'s training and testing pairs added (set union), keeping
    /// this profile's state, counters and call ids (live tasks hold those ids). `None`
    /// when the two cannot be merged: different executables (keys, or files born at
    /// different times under one key) or model settings, or more
    /// distinct calls together than a profile holds.
    pub fn merged_with(&self, other: &PhProfile) -> Option<PhProfile> {
        // Symbol numbers of two tables mean different things: only profiles with the
        // same table (or none) merge; otherwise the caller keeps this one.
        if self.key != other.key
            || self.model.spec() != other.model.spec()
            || self.symbols.as_ref().map(|t| t.classes())
                != other.symbols.as_ref().map(|t| t.classes())
            || matches!((self.born, other.born), (Some(a), Some(b)) if a != b)
        {
            return None;
        }
        let mut symbols = self.model.alphabet().symbols().to_vec();
        let mut index: HashMap<u32, u16> = HashMap::with_capacity(symbols.len());
        for (i, &s) in symbols.iter().enumerate() {
            index.insert(s, u16::try_from(i + 1).ok()?);
        }
        for &s in other.model.alphabet().symbols() {
            if let std::collections::hash_map::Entry::Vacant(e) = index.entry(s) {
                symbols.push(s);
                e.insert(u16::try_from(symbols.len()).ok()?);
            }
        }
        if symbols.len() > 4095 {
            return None;
        }
        let remap = |a: &Alphabet, entries: Vec<(u16, u16, u32)>| {
            entries
                .into_iter()
                .map(|(c, p, m)| Some((index[&a.raw(c)?], index[&a.raw(p)?], m)))
                .collect::<Option<Vec<_>>>()
        };
        let (mine, theirs) = (self.model.alphabet(), other.model.alphabet());
        let mut train = remap(mine, self.model.entries())?;
        train.extend(remap(theirs, other.model.entries())?);
        let mut test = remap(mine, self.model.test_entries())?;
        test.extend(remap(theirs, other.model.test_entries())?);
        let calls = self.model.trained_calls().max(other.model.trained_calls());
        let mut model = Pairs::from_parts(self.model.spec().clone(), &symbols, &train, calls)?;
        model.restore_test(&test)?;
        Some(PhProfile {
            key: self.key,
            path: self.path.clone(),
            state: self.state,
            model,
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
            normal_time_ns: self.normal_time_ns,
            anomalies: self.anomalies,
            dirty: true,
            symbols: self.symbols.clone(),
            rates: match (self.rates, other.rates) {
                (Some(a), Some(b)) => Some(a.merged(&b)),
                (a, b) => a.or(b),
            },
            rate_state: self.rate_state.clone(),
            born: self.born.or(other.born),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ph::{ExeKey, PhConfig, PhTask};

    fn learnt(calls: &[u32]) -> PhProfile {
        let config = PhConfig::default();
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &config);
        let mut task = PhTask::new(&p);
        for &c in calls {
            p.on_syscall(&mut task, c, false, 0, &config, &mut |_| {});
        }
        p
    }

    #[test]
    fn merge_is_the_union_and_idempotent() {
        let a = learnt(&[1, 2, 3, 4, 1, 2, 3, 4]);
        let b = learnt(&[9, 3, 7, 9, 3, 7]);
        let ab = a.merged_with(&b).unwrap();
        let raw = |p: &PhProfile| {
            let mut v = p.raw_pairs();
            v.sort_unstable();
            v
        };
        // Every pair of either side is in the merge, and nothing else.
        let mut expect: HashMap<(u32, u32), u32> = HashMap::new();
        for (c, q, m) in raw(&a).into_iter().chain(raw(&b)) {
            *expect.entry((c, q)).or_default() |= m;
        }
        let mut expect: Vec<_> = expect.into_iter().map(|((c, q), m)| (c, q, m)).collect();
        expect.sort_unstable();
        assert_eq!(raw(&ab), expect);
        assert!(ab.pairs() > a.pairs() && ab.pairs() > b.pairs());
        // Ids of `a` are kept, so its live tasks stay valid.
        assert_eq!(
            &ab.model().alphabet().symbols()[..a.model().alphabet().len()],
            a.model().alphabet().symbols()
        );
        let again = ab.merged_with(&b).unwrap();
        assert_eq!(raw(&again), raw(&ab));
        assert_eq!(again.pairs(), ab.pairs());
        let other_exe = PhProfile::new(ExeKey { dev: 1, ino: 3 }, "/bin/y", &PhConfig::default());
        assert!(a.merged_with(&other_exe).is_none());
    }
}
