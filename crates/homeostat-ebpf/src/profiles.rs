//! Profiles in the kernel: each executable's entry in `hs_profiles` (state, respond,
//! counters, slot) and its rows of pH's table: the slot's `hs_index` entry maps each
//! call to a row of the pool `hs_rows` (pairs in and out). Slots and rows are taken
//! from and given back to the free queues the programs use too.

use std::collections::BTreeMap;

use bytemuck::bytes_of;
use homeostat_core::ph::ExeKey;
use libbpf_rs::{ErrorKind, MapCore, MapFlags};

use crate::abi::{self, hs_key, hs_profile, hs_row, ROW, SLOTS, TABLE};
use crate::error::{map_err, Error};
use crate::kernel::percpu_sum;
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
    /// The generation (`i_generation`) of the file the profile was made for; 0: not
    /// known yet (the next exec's is adopted).
    pub igen: u32,
}

/// A profile's pairs: (current call, previous call, distance mask), as
/// [`Kernel::pairs`] returns them. Current calls below [`ROW`] are x86_64's; from
/// [`crate::COMPAT`] on, i386's (number + 512).
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
        .map(|_| ())
    }

    /// Whether the profile's anomalous processes are stopped for a response (only
    /// while it is normal). Creates the profile (training) if absent.
    pub fn set_respond(&self, exe: ExeKey, on: bool) -> Result<(), Error> {
        self.update_profile(exe, |p| p.respond = u32::from(on))
            .map(|_| ())
    }

    /// Which tasks the profile learns from: only `uid`'s, only those of the cgroup v2
    /// with id `cgroup`, both, or (both None) every task. A task that does not match
    /// neither trains the profile nor counts toward its limits; once the profile is
    /// normal it is tested like any other (its anomalies flagged [`Event::foreign`]).
    /// Decided per task when its cached state is refreshed (at exec, or when any
    /// profile changes, as this call does). Creates the profile (training) if absent.
    ///
    /// [`Event::foreign`]: crate::Event::foreign
    pub fn set_learn_from(
        &self,
        exe: ExeKey,
        uid: Option<u32>,
        cgroup: Option<u64>,
    ) -> Result<(), Error> {
        self.update_profile(exe, |p| {
            p.learn_flags =
                uid.map_or(0, |_| abi::LEARN_UID) | cgroup.map_or(0, |_| abi::LEARN_CGROUP);
            p.learn_uid = uid.unwrap_or(0);
            p.learn_cgroup = cgroup.unwrap_or(0);
        })
        .map(|_| ())
    }

    fn lookup_profile(&self, k: &hs_key) -> Result<Option<hs_profile>, Error> {
        Ok(self
            .profiles
            .lookup(bytes_of(k), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?
            .and_then(|v| abi::decode(&v)))
    }

    /// Changes a profile's entry, creating it (counters at 0, a free slot) if absent,
    /// and tells the tasks. Returns the entry as written.
    fn update_profile(
        &self,
        exe: ExeKey,
        change: impl Fn(&mut hs_profile),
    ) -> Result<hs_profile, Error> {
        let k = abi::key(exe);
        // Twice at most: the programs may create the entry between our lookup and our
        // insert (auto_create at an exec).
        for _ in 0..2 {
            if let Some(mut p) = self.lookup_profile(&k)? {
                change(&mut p);
                // Counters may move between lookup and update; they are statistics only.
                // The slot is the profile's for life: written back unchanged.
                self.profiles
                    .update(bytes_of(&k), bytes_of(&p), MapFlags::EXIST)
                    .map_err(map_err("hs_profiles", "update"))?;
                self.bump_generation()?;
                return Ok(p);
            }
            let slot = pop(&self.free_slots, "hs_free_slots")?.ok_or(Error::Map {
                map: "hs_profiles",
                what: "create",
                kind: ErrorKind::Other,
                err: format!("full ({SLOTS} profiles)"),
            })?;
            let mut p = hs_profile {
                slot,
                ..Default::default()
            };
            change(&mut p);
            match self
                .profiles
                .update(bytes_of(&k), bytes_of(&p), MapFlags::NO_EXIST)
            {
                Ok(()) => {
                    // The entry is new: cached states are stale.
                    self.bump_generation()?;
                    return Ok(p);
                }
                Err(e) => {
                    push(&self.free_slots, "hs_free_slots", slot)?;
                    if e.kind() != ErrorKind::AlreadyExists {
                        return Err(map_err("hs_profiles", "create")(e));
                    }
                }
            }
        }
        Err(Error::Map {
            map: "hs_profiles",
            what: "update",
            kind: ErrorKind::Other,
            err: "created and removed concurrently".into(),
        })
    }

    /// The slot of a profile, if the kernel has it.
    pub(crate) fn slot_of(&self, exe: ExeKey) -> Result<Option<u32>, Error> {
        Ok(self.lookup_profile(&abi::key(exe))?.map(|p| p.slot))
    }

    /// The slot of a profile, created (training) if absent.
    pub(crate) fn ensure_profile(&self, exe: ExeKey) -> Result<u32, Error> {
        Ok(self.update_profile(exe, |_| {})?.slot)
    }

    /// A profile's entry, if the kernel has one.
    pub fn profile(&self, exe: ExeKey) -> Result<Option<KernelProfile>, Error> {
        let Some(p) = self.lookup_profile(&abi::key(exe))? else {
            return Ok(None);
        };
        // Those flushed at exec and exit, and those the common call flushed to the
        // slot's per-CPU counter (hs_calls).
        let calls = p
            .calls
            .wrapping_add(percpu_sum(&self.slot_calls, "hs_calls", p.slot)?);
        Ok(Some(KernelProfile {
            state: if p.state == abi::NORMAL {
                KernelState::Normal
            } else {
                KernelState::Training
            },
            calls,
            new_pairs: p.new_pairs,
            anomalies: p.anomalies,
            respond: p.respond != 0,
            igen: p.igen,
        }))
    }

    /// Records the generation of the file a profile is for (a profile loaded from
    /// disk: its file's), so that an exec of another file reusing the inode number is
    /// told apart. Creates the profile (training) if absent.
    pub fn set_igen(&self, exe: ExeKey, igen: u32) -> Result<(), Error> {
        self.update_profile(exe, |p| p.igen = igen).map(|_| ())
    }

    /// Every profile key the kernel has (with auto_create, every executable seen).
    pub fn profiles(&self) -> Vec<ExeKey> {
        self.profiles
            .keys()
            .filter_map(|k| abi::decode::<hs_key>(&k))
            .map(|k| abi::exe(&k))
            .collect()
    }

    /// Removes a profile and its pairs; its tasks stop being followed. Its rows and
    /// slot go back to the free queues, cleared.
    pub fn remove_profile(&self, exe: ExeKey) -> Result<(), Error> {
        let k = abi::key(exe);
        let Some(p) = self.lookup_profile(&k)? else {
            return Ok(());
        };
        match self.profiles.delete(bytes_of(&k)) {
            Ok(()) => {}
            // Removed meanwhile by another caller, who frees the slot.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(map_err("hs_profiles", "delete")(e)),
        }
        self.bump_generation()?;
        let zero = hs_row::default();
        for cur in 0..TABLE {
            let r = self.index.take(p.slot, cur);
            if r != 0 {
                self.rows
                    .update(&r.to_ne_bytes(), bytes_of(&zero), MapFlags::ANY)
                    .map_err(map_err("hs_rows", "clear"))?;
                push(&self.free_rows, "hs_free_rows", r)?;
            }
        }
        if self.symbols.is_some() {
            self.clear_classes(p.slot)?;
        }
        // The slot's next profile counts from 0 (but for the few calls of a task that
        // was mid-call at the removal: hs_calls).
        let ncpu = libbpf_rs::num_possible_cpus().map_err(map_err("hs_calls", "clear"))?;
        self.slot_calls
            .update_percpu(
                &p.slot.to_ne_bytes(),
                &vec![0u64.to_ne_bytes().to_vec(); ncpu],
                MapFlags::ANY,
            )
            .map_err(map_err("hs_calls", "clear"))?;
        push(&self.free_slots, "hs_free_slots", p.slot)
    }

    /// Row `r` of the pool.
    fn row(&self, r: u32) -> Result<Option<hs_row>, Error> {
        Ok(self
            .rows
            .lookup(&r.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_rows", "lookup"))?
            .and_then(|r| abi::decode(&r)))
    }

    /// The pairs of the profile in `slot`, appended to `out`.
    fn slot_pairs(&self, slot: u32, out: &mut PairList) -> Result<(), Error> {
        for cur in 0..TABLE {
            let r = self.index.get(slot, cur);
            if r != 0 {
                if let Some(row) = self.row(r)? {
                    row_pairs(cur as u16, &row, out);
                }
            }
        }
        Ok(())
    }

    /// A profile's pairs: (current call, previous call, distance mask), bit d-1 of
    /// the mask meaning "previous came d calls before current"; only non-zero masks.
    pub fn pairs(&self, exe: ExeKey) -> Result<PairList, Error> {
        let mut out = vec![];
        if let Some(p) = self.lookup_profile(&abi::key(exe))? {
            self.slot_pairs(p.slot, &mut out)?;
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every profile's pairs (what [`Kernel::pairs`] gives for one profile), for
    /// saving many profiles at once; profiles without pairs are left out.
    pub fn all_pairs(&self) -> Result<BTreeMap<ExeKey, PairList>, Error> {
        let mut out: BTreeMap<ExeKey, PairList> = BTreeMap::new();
        for exe in self.profiles() {
            let v = self.pairs(exe)?;
            if !v.is_empty() {
                out.insert(exe, v);
            }
        }
        Ok(out)
    }

    /// Loads pairs into a profile (ORed into what the kernel has), e.g. a saved
    /// profile at start-up; creates the profile (training) if absent. Current calls
    /// must be below [`TABLE`] (i386 calls at 512 + number), previous calls below
    /// [`ROW`].
    pub fn add_pairs(&self, exe: ExeKey, pairs: &[(u16, u16, u8)]) -> Result<(), Error> {
        let mut rows: BTreeMap<u16, hs_row> = BTreeMap::new();
        for &(cur, prev, mask) in pairs {
            if usize::from(cur) >= TABLE {
                return Err(Error::OutOfRange(cur));
            }
            if usize::from(prev) >= ROW {
                return Err(Error::OutOfRange(prev));
            }
            if mask != 0 {
                rows.entry(cur).or_default().mask[usize::from(prev)] |= mask;
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let slot = match self.lookup_profile(&abi::key(exe))? {
            Some(p) => p.slot,
            None => self.update_profile(exe, |_| {})?.slot,
        };
        for (cur, add) in rows {
            let cur = usize::from(cur);
            let mut r = self.index.get(slot, cur);
            if r == 0 {
                let new = pop(&self.free_rows, "hs_free_rows")?.ok_or(Error::Map {
                    map: "hs_rows",
                    what: "allocate",
                    kind: ErrorKind::Other,
                    err: format!("full ({} rows)", abi::ROWS - 1),
                })?;
                // Filled before it is published, so the programs never see it half made.
                self.rows
                    .update(&new.to_ne_bytes(), bytes_of(&add), MapFlags::ANY)
                    .map_err(map_err("hs_rows", "update"))?;
                r = self.index.set_if_none(slot, cur, new);
                if r == new {
                    continue;
                }
                // The programs made this row meanwhile: ours goes back.
                push(&self.free_rows, "hs_free_rows", new)?;
                if r == 0 {
                    continue;
                }
            }
            let mut row = self.row(r)?.unwrap_or_default();
            for (m, a) in row.mask.iter_mut().zip(add.mask) {
                *m |= a;
            }
            // Bits the kernel learns between lookup and update are lost; they are
            // learnt again at their next occurrence.
            self.rows
                .update(&r.to_ne_bytes(), bytes_of(&row), MapFlags::ANY)
                .map_err(map_err("hs_rows", "update"))?;
        }
        Ok(())
    }
}

/// Takes a value from a queue map (`None`: empty).
fn pop(q: &libbpf_rs::MapHandle, name: &'static str) -> Result<Option<u32>, Error> {
    match q.lookup_and_delete(&[]) {
        Ok(v) => Ok(v.and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(map_err(name, "pop")(e)),
    }
}

/// Gives a value back to a queue map.
fn push(q: &libbpf_rs::MapHandle, name: &'static str, v: u32) -> Result<(), Error> {
    q.update(&[], &v.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_err(name, "push"))
}
