//! Profiles in the kernel: each executable's entry in `hs_profiles` (state, respond,
//! counters) and its rows of pH's table in `hs_rows` (pairs in and out).

use std::collections::BTreeMap;

use bytemuck::bytes_of;
use homeostat_core::ph::ExeKey;
use libbpf_rs::{ErrorKind, MapCore, MapFlags};

use crate::abi::{self, hs_key, hs_profile, hs_row, hs_row_key, ROW};
use crate::error::{map_err, Error};
use crate::Kernel;

/// A profile's state as the kernel knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelState {
    /// Calls train the profile's pairs (pH's training and frozen).
    Training,
    /// Calls are tested; misses update the task's locality frame.
    Normal,
}

/// A profile's entry in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelProfile {
    /// Training or normal.
    pub state: KernelState,
    /// Calls seen.
    pub calls: u64,
    /// Pairs learnt in the kernel.
    pub new_pairs: u64,
    /// Anomalous calls while normal.
    pub anomalies: u64,
    /// Whether an anomalous call of a normal profile stops its process for a response.
    pub respond: bool,
}

/// A profile's pairs: (current call, previous call, distance mask), as
/// [`Kernel::pairs`] returns them.
pub type PairList = Vec<(u16, u16, u8)>;

/// The (current, previous, mask) triples of one row, non-zero masks only.
fn row_pairs(cur: u16, row: &hs_row, out: &mut PairList) {
    for (prev, &m) in row.mask.iter().enumerate() {
        if m != 0 {
            out.push((cur, prev as u16, m));
        }
    }
}

impl Kernel {
    /// Sets a profile's state, creating its entry (counters at 0) if absent.
    pub fn set_state(&self, exe: ExeKey, state: KernelState) -> Result<(), Error> {
        self.update_profile(exe, |p| {
            p.state = match state {
                KernelState::Training => abi::TRAINING,
                KernelState::Normal => abi::NORMAL,
            }
        })
    }

    /// Whether the profile's anomalous processes are stopped for a response (only
    /// while it is normal). Creates the profile (training) if absent.
    pub fn set_respond(&self, exe: ExeKey, on: bool) -> Result<(), Error> {
        self.update_profile(exe, |p| p.respond = u32::from(on))
    }

    /// Changes a profile's entry, creating it (counters at 0) if absent, and tells the
    /// tasks.
    fn update_profile(
        &self,
        exe: ExeKey,
        change: impl FnOnce(&mut hs_profile),
    ) -> Result<(), Error> {
        let k = abi::key(exe);
        let mut p: hs_profile = self
            .profiles
            .lookup(bytes_of(&k), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?
            .and_then(|v| abi::decode(&v))
            .unwrap_or_default();
        change(&mut p);
        // Counters may move between lookup and update; they are statistics only.
        self.profiles
            .update(bytes_of(&k), bytes_of(&p), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "update"))?;
        // The entry may be new, or its state changed: cached states are stale.
        self.bump_generation()
    }

    /// A profile's entry, if the kernel has one.
    pub fn profile(&self, exe: ExeKey) -> Result<Option<KernelProfile>, Error> {
        let v = self
            .profiles
            .lookup(bytes_of(&abi::key(exe)), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?;
        Ok(v.and_then(|v| abi::decode::<hs_profile>(&v))
            .map(|p| KernelProfile {
                state: if p.state == abi::NORMAL {
                    KernelState::Normal
                } else {
                    KernelState::Training
                },
                calls: p.calls,
                new_pairs: p.new_pairs,
                anomalies: p.anomalies,
                respond: p.respond != 0,
            }))
    }

    /// Every profile key the kernel has (with auto_create, every executable seen).
    pub fn profiles(&self) -> Vec<ExeKey> {
        self.profiles
            .keys()
            .filter_map(|k| abi::decode::<hs_key>(&k))
            .map(|k| abi::exe(&k))
            .collect()
    }

    /// Removes a profile and its pairs; its tasks stop being followed.
    pub fn remove_profile(&self, exe: ExeKey) -> Result<(), Error> {
        match self.profiles.delete(bytes_of(&abi::key(exe))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(map_err("hs_profiles", "delete")(e)),
        }
        self.bump_generation()?;
        for k in self.row_keys(exe) {
            match self.rows.delete(bytes_of(&k)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("hs_rows", "delete")(e)),
            }
        }
        Ok(())
    }

    /// Every row key, decoded. Walks the whole map.
    fn all_row_keys(&self) -> impl Iterator<Item = hs_row_key> + '_ {
        self.rows.keys().filter_map(|k| abi::decode(&k))
    }

    /// The keys of a profile's rows. Walks the whole map.
    fn row_keys(&self, exe: ExeKey) -> Vec<hs_row_key> {
        self.all_row_keys()
            .filter(|k| abi::row_exe(k) == exe)
            .collect()
    }

    /// A row, if it is (still) there: one deleted since a walk saw its key is `None`.
    fn row(&self, k: &hs_row_key) -> Result<Option<hs_row>, Error> {
        Ok(self
            .rows
            .lookup(bytes_of(k), MapFlags::ANY)
            .map_err(map_err("hs_rows", "lookup"))?
            .and_then(|r| abi::decode(&r)))
    }

    /// A profile's pairs: (current call, previous call, distance mask), bit d-1 of
    /// the mask meaning "previous came d calls before current"; only non-zero masks.
    pub fn pairs(&self, exe: ExeKey) -> Result<PairList, Error> {
        let mut out = vec![];
        for k in self.row_keys(exe) {
            if let Some(row) = self.row(&k)? {
                row_pairs(k.cur as u16, &row, &mut out);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every profile's pairs in one walk of the rows map (what [`Kernel::pairs`] gives
    /// for one profile), for saving many profiles at once.
    pub fn all_pairs(&self) -> Result<BTreeMap<ExeKey, PairList>, Error> {
        let mut out: BTreeMap<ExeKey, PairList> = BTreeMap::new();
        for k in self.all_row_keys() {
            if let Some(row) = self.row(&k)? {
                row_pairs(k.cur as u16, &row, out.entry(abi::row_exe(&k)).or_default());
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        Ok(out)
    }

    /// Loads pairs into a profile (ORed into what the kernel has), e.g. a saved
    /// profile at start-up. Call numbers must be below [`ROW`].
    pub fn add_pairs(&self, exe: ExeKey, pairs: &[(u16, u16, u8)]) -> Result<(), Error> {
        let mut rows: BTreeMap<u16, hs_row> = BTreeMap::new();
        for &(cur, prev, mask) in pairs {
            for n in [cur, prev] {
                if usize::from(n) >= ROW {
                    return Err(Error::OutOfRange(n));
                }
            }
            if mask != 0 {
                rows.entry(cur).or_default().mask[usize::from(prev)] |= mask;
            }
        }
        for (cur, add) in rows {
            let k = abi::row_key(exe, cur);
            let mut row = self.row(&k)?.unwrap_or_default();
            for (r, a) in row.mask.iter_mut().zip(add.mask) {
                *r |= a;
            }
            // Bits the kernel learns between lookup and update are lost; they are
            // learnt again at their next occurrence.
            self.rows
                .update(bytes_of(&k), bytes_of(&row), MapFlags::ANY)
                .map_err(map_err("hs_rows", "update"))?;
        }
        Ok(())
    }
}
