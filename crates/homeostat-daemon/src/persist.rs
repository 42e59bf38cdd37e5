//! The daemon's profiles on disk: `daemon/<dev>-<ino>.json` in the state directory
//! (format in `homeostat_monitor::daemon_profile`, docs/daemon.md). Saving writes the
//! changed profiles atomically; loading scans the folder once, then seeds executables
//! it has no file for from `homeostat run`'s profiles.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::Result;
use homeostat_core::ph::{ExeKey, FileMatch, Mode, PhProfile, ProfileState};
use homeostat_ebpf::Kernel;
use homeostat_monitor::daemon_profile::{self, DaemonProfile};
use homeostat_monitor::sink::write_event;
use homeostat_monitor::{write_atomic, ProfileStore};
use tracing::warn;

use crate::classes::{self, ClassesFile};
use crate::daemon::Daemon;
use crate::lifecycle::{kernel_state, Prof};

impl Prof {
    /// The profile's file, with the pairs the kernel holds for it.
    pub fn to_file(&self, key: ExeKey, pairs: Vec<(u16, u16, u8)>) -> DaemonProfile {
        DaemonProfile {
            version: daemon_profile::VERSION,
            dev: key.dev,
            ino: key.ino,
            path: self.path.to_string(),
            state: self.state,
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
            normal_time_ns: self.normal_time_ns,
            anomalies: self.anomalies,
            pairs,
            paths: self.paths.iter().map(|p| p.to_string()).collect(),
            scripts: self.scripts.iter().map(|p| p.to_string()).collect(),
            last_reset_ns: self.last_reset_ns,
            last_reset_why: self.last_reset_why.to_string(),
            learn_uid: self.learn_uid,
            learn_cgroup: self.learn_cgroup.as_deref().map(str::to_string),
            cgroups: self.cgroups.iter().map(|p| p.to_string()).collect(),
            igen: self.igen,
        }
    }

    /// The profile a file describes, as loaded. A normal profile of an executable in
    /// learn mode comes back frozen: learn mode never tests. The kernel's counters
    /// start from 0, as the kernel's copy of the profile does.
    pub fn from_file(d: &DaemonProfile, learn: bool) -> Prof {
        let path: Arc<str> = Arc::from(d.path.as_str());
        let mut paths: Vec<Arc<str>> = d.paths.iter().map(|p| Arc::from(p.as_str())).collect();
        if path.starts_with('/') && !paths.contains(&path) {
            paths.insert(0, path.clone());
        }
        Prof {
            path,
            paths,
            scripts: d.scripts.iter().map(|p| Arc::from(p.as_str())).collect(),
            state: match d.state {
                ProfileState::Normal if learn => ProfileState::Frozen,
                st => st,
            },
            train_count: d.train_count,
            last_mod_count: d.last_mod_count.min(d.train_count),
            normal_time_ns: d.normal_time_ns,
            anomalies: d.anomalies,
            seen_calls: 0,
            seen_new: 0,
            last_used_ns: crate::now_ns(),
            last_reset_ns: d.last_reset_ns,
            last_reset_why: Arc::from(d.last_reset_why.as_str()),
            learn_uid: d.learn_uid,
            learn_cgroup: d.learn_cgroup.as_deref().map(Arc::from),
            cgroups: d.cgroups.iter().map(|p| Arc::from(p.as_str())).collect(),
            classes: Default::default(),
            igen: d.igen,
            dirty: false,
        }
    }
}

impl Daemon {
    /// Saves every changed profile; returns (saved, failed).
    pub(crate) fn save(&mut self, kernel: &Kernel) -> (usize, usize) {
        let pairs = match kernel.all_pairs() {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot read pairs: {e}");
                return (0, 1);
            }
        };
        // One pass over the kernel's classes for every profile.
        let all_classes = match self.symbols.map(|_| kernel.all_classes()) {
            Some(Err(e)) => {
                warn!("cannot read argument classes: {e}");
                return (0, 1);
            }
            Some(Ok(c)) => c,
            None => Default::default(),
        };
        let (mut saved, mut failed) = (0, 0);
        for (key, p) in self.profiles.iter_mut().filter(|(_, p)| p.dirty) {
            let Some(pairs) = pairs.get(key) else {
                // Nothing learnt yet: nothing worth a file.
                continue;
            };
            let s = p.to_file(*key, pairs.clone());
            let classes = match (self.symbols, all_classes.get(key)) {
                (Some(cfg), Some(c)) => Some(ClassesFile::of(*key, cfg.path_depth, c, &p.classes)),
                _ => None,
            };
            // The classes first: a profile file never names classes it lacks.
            let written: anyhow::Result<()> = match classes {
                Some(c) => write_atomic(&classes::path_in(&self.dir, *key), &c.to_bytes())
                    .map_err(anyhow::Error::from),
                None => Ok(()),
            };
            match written.and_then(|()| {
                Ok(write_atomic(
                    &self.dir.join(format!("{key}.json")),
                    &s.to_bytes(),
                )?)
            }) {
                Ok(()) => {
                    p.dirty = false;
                    saved += 1;
                }
                Err(e) => {
                    failed += 1;
                    warn!("cannot save profile: {e}");
                }
            }
        }
        (saved, failed)
    }

    /// Loads `daemon/*.json` into the kernel, then seeds the executables it has no file
    /// for from `homeostat run`'s profiles (`profiles/*.phprof`, converted: x86_64
    /// calls only); bad files are reported and skipped, and so is a daemon file of an
    /// earlier executable whose inode number a later one has now (so that `run`'s
    /// profile of the later one seeds it). Returns how many were loaded.
    pub(crate) fn load(&mut self, kernel: &Kernel, store: &ProfileStore) -> usize {
        self.store = Some(store.clone());
        let mut n = 0;
        let (found, bad) = daemon_profile::scan(&self.dir);
        for (path, e) in bad {
            warn!("profile {} skipped: {e}", path.display());
        }
        for (path, d) in found {
            if of_an_earlier_file(&path, &d) {
                warn!(
                    "profile {} not loaded: {} (the file at its path was born after it was written)",
                    path.display(),
                    homeostat_core::ph::REPLACED
                );
                continue;
            }
            match self.adopt(kernel, d, "daemon") {
                Ok(()) => n += 1,
                Err(e) => warn!("profile {} skipped: {e}", path.display()),
            }
        }
        let (run_profiles, errors) = store.load_all();
        for e in errors {
            warn!("{e}");
        }
        for mut p in run_profiles {
            if self.profiles.contains_key(&p.key) {
                continue;
            }
            // A run profile knows its file's birth time, the kernel only the inode
            // generation, which it adopts at a seeded profile's first exec: a profile
            // of a deleted file whose inode number a later file has now would judge
            // that file.
            if let Ok(m) = std::fs::metadata(&p.path) {
                if (m.dev(), m.ino()) == (p.key.dev, p.key.ino)
                    && p.check_file(homeostat_proc::birth_time(&m)) == FileMatch::Replaced
                {
                    warn!(
                        "profile {} not seeded: {}",
                        store.path_for(p.key).display(),
                        homeostat_core::ph::REPLACED
                    );
                    continue;
                }
            }
            n += usize::from(self.seed_from_run(kernel, store, &p));
        }
        n
    }

    /// The exec of a file that reuses the inode number of profile `key`'s executable
    /// (deleted), after that profile was evicted: `homeostat run`'s profile of `key`
    /// takes its place if it was made for this very file (`born`, the birth time of the
    /// file the process runs; a run profile that records none could be either file's).
    /// Returns whether it did.
    pub(crate) fn seed_replaced(
        &mut self,
        kernel: &Kernel,
        key: ExeKey,
        born: Option<u64>,
    ) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        let path = store.path_for(key);
        if born.is_none() || !path.exists() {
            return false;
        }
        match store.load_file(&path) {
            // Same, with a birth time given: made for this file (Adopted: it knew none).
            Ok(mut p) => {
                p.key == key
                    && p.check_file(born) == FileMatch::Same
                    && self.seed_from_run(kernel, &store, &p)
            }
            Err(e) => {
                warn!("{e}");
                false
            }
        }
    }

    /// Seeds the daemon's profile of `p.key` from `homeostat run`'s profile `p`
    /// (nothing if it has no pair the kernel can hold); written to `daemon/` at the next
    /// save. Returns whether it was seeded.
    fn seed_from_run(&mut self, kernel: &Kernel, store: &ProfileStore, p: &PhProfile) -> bool {
        let d = DaemonProfile::from_ph(p);
        if d.pairs.is_empty() {
            return false;
        }
        match self.adopt(kernel, d, "homeostat run") {
            Ok(()) => {
                // Not ours on disk yet: written to daemon/ at the next save.
                if let Some(q) = self.profiles.get_mut(&p.key) {
                    q.dirty = true;
                }
                true
            }
            Err(e) => {
                warn!(
                    "profile {} not seeded: {e}",
                    store.path_for(p.key).display()
                );
                false
            }
        }
    }

    /// Puts a loaded profile into the kernel and the daemon's table.
    pub(crate) fn adopt(&mut self, kernel: &Kernel, d: DaemonProfile, from: &str) -> Result<()> {
        let key = d.key();
        kernel.add_pairs(key, &d.pairs)?;
        let learn = self.mode_for(&d.path) == Mode::Learn;
        let prof = Prof::from_file(&d, learn);
        let state = prof.state;
        kernel.set_state(key, kernel_state(state))?;
        if prof.igen != 0 {
            kernel.set_igen(key, prof.igen)?;
        }
        let filter = (prof.learn_uid, prof.learn_cgroup.clone());
        let mut prof = prof;
        let n_classes = self.load_classes(kernel, key, &mut prof);
        self.profiles.insert(key, prof);
        if filter.0.is_some() || filter.1.is_some() {
            self.apply_learn_from(kernel, key)?;
        }
        if state == ProfileState::Normal {
            let on = self.responds(key);
            kernel.set_respond(key, on)?;
        }
        let r = self.record(
            "profile_loaded",
            key,
            (0, 0),
            String::new(),
            0,
            serde_json::json!({ "pairs": d.pairs.len(), "classes": n_classes, "from": from }),
        );
        if let Some(w) = self.json.as_mut() {
            write_event(w, &r);
        }
        Ok(())
    }
}

/// Whether the daemon's profile file `file` (holding `d`) is of an earlier executable,
/// deleted, whose inode number the file at one of its paths has now: that file was born
/// after the profile was last written ([`daemon_profile::written_before`]).
fn of_an_earlier_file(file: &std::path::Path, d: &DaemonProfile) -> bool {
    let key = d.key();
    std::iter::once(&d.path)
        .chain(&d.paths)
        .filter(|p| p.starts_with('/'))
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| (m.dev(), m.ino()) == (key.dev, key.ino))
        .filter_map(|m| homeostat_proc::birth_time(&m))
        .any(|born| daemon_profile::written_before(file, born))
}

impl Daemon {
    /// With `--symbols args`, a profile's saved classes into the kernel and `prof`;
    /// returns how many. A missing file is no class (the profile is tested on its
    /// calls only until it trains again); a bad file, or one of another path depth,
    /// is reported and not loaded.
    fn load_classes(&self, kernel: &Kernel, key: ExeKey, prof: &mut Prof) -> usize {
        let Some(cfg) = self.symbols else {
            return 0;
        };
        let path = classes::path_in(&self.dir, key);
        let f = match ClassesFile::load(&path) {
            Ok(Some(f)) => f,
            Ok(None) => return 0,
            Err(e) => {
                warn!("classes {} skipped: {e}", path.display());
                return 0;
            }
        };
        if f.path_depth != cfg.path_depth || f.key() != key {
            warn!(
                "classes {} skipped: made with path depth {} for {}, not {} for {key}",
                path.display(),
                f.path_depth,
                f.key(),
                cfg.path_depth
            );
            return 0;
        }
        let pairs: Vec<(u16, u64)> = f.classes.iter().map(|c| (c.call, c.hash)).collect();
        if let Err(e) = kernel.add_classes(key, &pairs) {
            warn!("classes {}: {e}", path.display());
        }
        for c in f.classes {
            prof.classes
                .insert((c.call, c.hash), Arc::from(c.class.as_str()));
        }
        prof.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof() -> Prof {
        Prof {
            path: Arc::from("/usr/sbin/sshd"),
            paths: vec![Arc::from("/usr/sbin/sshd"), Arc::from("/sbin/sshd")],
            scripts: vec![Arc::from("/etc/x.sh")],
            state: ProfileState::Normal,
            train_count: 5000,
            last_mod_count: 4000,
            normal_time_ns: 77,
            anomalies: 3,
            seen_calls: 123,
            seen_new: 4,
            last_used_ns: 5,
            last_reset_ns: 6,
            last_reset_why: Arc::from("anomaly_limit"),
            learn_uid: Some(1000),
            learn_cgroup: Some(Arc::from("/sys/fs/cgroup/x.scope")),
            cgroups: vec![Arc::from("/system.slice/sshd.service")],
            classes: Default::default(),
            igen: 0x5eed,
            dirty: true,
        }
    }

    #[test]
    fn a_profile_survives_its_file() {
        let key = ExeKey {
            dev: 0xfd01,
            ino: 9,
        };
        let pairs = vec![(0, 1, 0b1), (257, 0, 0b101)];
        let d = prof().to_file(key, pairs.clone());
        assert_eq!((d.key(), &d.pairs), (key, &pairs));
        // Through the bytes and the folder scan the daemon starts with.
        let state = tempfile::tempdir().unwrap();
        let dir = daemon_profile::dir_in(state.path());
        std::fs::create_dir_all(&dir).unwrap();
        write_atomic(&daemon_profile::path_in(state.path(), key), &d.to_bytes()).unwrap();
        let (found, bad) = daemon_profile::scan(&dir);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(found.len(), 1);
        let back = Prof::from_file(&found[0].1, false);
        // What is saved comes back; the kernel's counters start again from 0.
        let want = Prof {
            seen_calls: 0,
            seen_new: 0,
            last_used_ns: back.last_used_ns,
            dirty: false,
            ..prof()
        };
        assert_eq!(back, want);
    }

    #[test]
    fn learn_mode_loads_a_normal_profile_frozen_and_bad_counters_are_clamped() {
        let key = ExeKey { dev: 1, ino: 2 };
        let mut d = prof().to_file(key, vec![]);
        assert_eq!(
            Prof::from_file(&d, true).state,
            ProfileState::Frozen,
            "learn mode never tests"
        );
        assert_eq!(Prof::from_file(&d, false).state, ProfileState::Normal);
        d.last_mod_count = d.train_count + 10;
        assert_eq!(Prof::from_file(&d, false).last_mod_count, d.train_count);
    }
}
