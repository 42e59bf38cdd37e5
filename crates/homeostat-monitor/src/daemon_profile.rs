//! The daemon's profile files, `daemon/<dev>-<ino>.json` in the state directory, and
//! their conversion to and from `homeostat run`'s profiles (`profiles/*.phprof`).
//!
//! Why a second format: the daemon's kernel side keeps one set of pairs per executable
//! over 9-bit x86_64 call numbers with a window of 9 (pH's table), where `homeostat
//! run` keeps training and testing sets over interned call ids of either ABI, with the
//! configured window. JSON keeps the daemon's files readable by people and tools.
//! Sharing goes through the conversions here: each side seeds a profile it does not
//! have from the other's file, and never writes the other's.

use std::path::{Path, PathBuf};

use homeostat_core::ph::{ExeKey, PhConfig, PhProfile, ProfileState};
use serde::{Deserialize, Serialize};

/// Format version of the JSON files.
pub const VERSION: u32 = 1;
/// Largest file read: every possible pair (1024 x 512 calls, about 15 bytes each in
/// JSON) fits with room to spare, and a device or a huge file is refused unread.
pub const MAX_FILE: u64 = 16 << 20;
/// Call numbers the kernel table holds (x86_64, 9 bits): its columns (previous call).
pub const KERNEL_CALLS: u32 = 512;
/// Rows (current call) of the kernel table: x86_64 calls, then i386 calls at
/// [`KERNEL_CALLS`] + their number.
pub const KERNEL_ROWS: u32 = 1024;
/// How `homeostat run` numbers i386 calls: this offset + the i386 number.
const RUN_I386: u32 = 0x10000;

/// One daemon profile file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonProfile {
    pub version: u32,
    pub dev: u64,
    pub ino: u64,
    pub path: String,
    pub state: ProfileState,
    pub train_count: u64,
    pub last_mod_count: u64,
    pub normal_time_ns: u64,
    pub anomalies: u64,
    /// (current call, previous call, distance mask: bit d-1 = d calls before).
    pub pairs: Vec<(u16, u16, u8)>,
    /// Every path the executable was run by (symbolic links resolved by the kernel
    /// are not: the path given to execve), `path` first; at most [`MAX_PATHS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Scripts run through this executable as their interpreter (`#!`), at most
    /// [`MAX_PATHS`]: their calls are the interpreter's profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<String>,
    /// When its training was last reset (unix ns; 0: never) and why.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_reset_ns: u64,
    /// See `last_reset_ns`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_reset_why: String,
    /// Learn only from this user's processes (`homeostat profile learn-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_uid: Option<u32>,
    /// Learn only from this cgroup's processes (a cgroup v2 directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_cgroup: Option<String>,
    /// The cgroups of the processes that ran it (at most [`MAX_PATHS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<String>,
    /// The inode generation (`i_generation`) of the file the profile was made for,
    /// so that another file that reuses its inode number is not judged by it. 0 (and
    /// absent, in files of older daemons): not known; the next exec's is adopted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub igen: u32,
}

/// A container's id from a cgroup path, when the path names one: docker
/// (`docker-<id>.scope`, `/docker/<id>`), podman (`libpod-<id>.scope`), containerd
/// (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`); the first 12 hex digits,
/// as `docker ps` shows them.
pub fn container_id(cgroup: &str) -> Option<String> {
    let hex = |s: &str| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for part in cgroup.rsplit('/') {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = ["docker-", "libpod-", "cri-containerd-", "crio-"]
            .iter()
            .find_map(|p| part.strip_prefix(p))
            .unwrap_or(part);
        if hex(id) && id.len() >= 32 {
            return Some(id[..12].to_string());
        }
    }
    None
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How many more calls without a new pair a training profile needs before pH's
/// freeze rule (`homeostat_core::ph::lifecycle`) freezes it, given its counters: each
/// such call adds one to `train_count` and to `last_mod_count`, so `normal_count =
/// train_count - last_mod_count` stays and the rule `train_count * den > normal_count
/// * factor` is met after `normal_count * factor / den - train_count + 1` more.
/// `None` when `normal_count` is 0: the rule needs a learnt call to be stable about.
pub fn calls_to_freeze(train_count: u64, last_mod_count: u64, config: &PhConfig) -> Option<u64> {
    let normal = u128::from(train_count.saturating_sub(last_mod_count));
    if normal == 0 {
        return None;
    }
    let den = u128::from(config.normal_factor_den.max(1));
    let bound = normal * u128::from(config.normal_factor) / den;
    let need = (bound + 1).saturating_sub(u128::from(train_count));
    Some(u64::try_from(need).unwrap_or(u64::MAX))
}

/// Paths and scripts kept per profile: a program run by thousands of names (a
/// busybox) keeps the first ones.
pub const MAX_PATHS: usize = 16;

/// `daemon/` under `state_dir`: the daemon's profile folder.
pub fn dir_in(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon")
}

/// `daemon/<key>.json` under `state_dir`.
pub fn path_in(state_dir: &Path, key: ExeKey) -> PathBuf {
    dir_in(state_dir).join(format!("{key}.json"))
}

/// Whether the daemon's profile file `file` was last written before `born` (ns since
/// the epoch), the birth time of the executable now under its key. A daemon file names
/// no birth time, and the kernel's inode generation cannot be read here: a file written
/// before the executable existed was learnt from an earlier file, deleted, whose inode
/// number this one reuses. The one rule both sides apply: `homeostat run` does not
/// start from such a file, and the daemon does not load it (so `run`'s own profile of
/// the new file can seed it). `false` when `file` cannot be read.
pub fn written_before(file: &Path, born: u64) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|w| w.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|w| w.as_nanos() < u128::from(born))
}

/// What [`scan`] found: the files read, and the files that could not be read with a
/// one-line reason.
pub type Scan = (Vec<(PathBuf, DaemonProfile)>, Vec<(PathBuf, String)>);

/// Every profile file of the daemon's folder `dir` (`*.json`), read and checked, with
/// the files that could not be read as `(path, one-line reason)`. The one scan of the
/// folder, shared by the daemon's start and the profile commands, so both see the
/// same files and skip the same ones. A missing folder is an empty one.
pub fn scan(dir: &Path) -> Scan {
    let (mut found, mut bad) = (vec![], vec![]);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (found, bad);
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    // Directory order is the file system's; a sorted scan lists and loads the same
    // way on every machine.
    paths.sort();
    for path in paths {
        match DaemonProfile::load(&path) {
            Ok(d) => found.push((path, d)),
            Err(e) => bad.push((path, e)),
        }
    }
    (found, bad)
}

impl DaemonProfile {
    /// The profile's key.
    pub fn key(&self) -> ExeKey {
        ExeKey {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Reads and checks a file; the error is one line without the path (the caller
    /// names the file).
    pub fn load(path: &Path) -> Result<DaemonProfile, String> {
        let bytes = crate::store::read_capped(path, MAX_FILE).map_err(|e| e.to_string())?;
        Self::from_bytes(&bytes)
    }

    /// Parses and checks file contents (the decoder [`load`](Self::load) uses, exposed
    /// for fuzzing); the error is one line.
    pub fn from_bytes(bytes: &[u8]) -> Result<DaemonProfile, String> {
        let mut p: DaemonProfile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        p.paths.truncate(MAX_PATHS);
        p.scripts.truncate(MAX_PATHS);
        p.cgroups.truncate(MAX_PATHS);
        if p.version != VERSION {
            return Err(format!("format version {} (want {VERSION})", p.version));
        }
        if let Some(&(c, q, _)) = p
            .pairs
            .iter()
            .find(|&&(c, q, _)| u32::from(c) >= KERNEL_ROWS || u32::from(q) >= KERNEL_CALLS)
        {
            return Err(format!("call number out of range in pair ({c}, {q})"));
        }
        Ok(p)
    }

    /// Distinct (cur, prev, distance) pairs, as `PhProfile::pairs` counts them.
    pub fn pair_count(&self) -> usize {
        self.pairs.iter().map(|p| p.2.count_ones() as usize).sum()
    }

    /// The file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serialises")
    }

    /// As a `homeostat run` profile: its pairs become training and testing data, with
    /// `homeostat run`'s numbers (x86_64 as they are; i386 rows, whose previous calls
    /// are taken as i386 too, from 0x10000). `None` if the configured window is too
    /// small for the distances (window < 9).
    pub fn to_ph(&self, config: &PhConfig) -> Option<PhProfile> {
        let raw: Vec<(u32, u32, u32)> = self
            .pairs
            .iter()
            .map(|&(c, q, m)| {
                let (c, q) = (u32::from(c), u32::from(q));
                if c >= KERNEL_CALLS {
                    (c - KERNEL_CALLS + RUN_I386, q + RUN_I386, u32::from(m))
                } else {
                    (c, q, u32::from(m))
                }
            })
            .collect();
        let mut p = PhProfile::from_raw_pairs(self.key(), &self.path, config, self.state, &raw)?;
        p.train_count = self.train_count;
        p.last_mod_count = self.last_mod_count.min(self.train_count);
        p.normal_time_ns = self.normal_time_ns;
        p.anomalies = self.anomalies;
        Some(p)
    }

    /// From a `homeostat run` profile: the pairs it acts on, limited to what the kernel
    /// table holds (calls below 512 of one ABI, distances up to 8): i386 pairs (numbered
    /// from 0x10000) go to the i386 rows; pairs mixing the ABIs and longer distances
    /// are dropped.
    pub fn from_ph(p: &PhProfile) -> DaemonProfile {
        let kernel = |c: u32, q: u32| -> Option<(u16, u16)> {
            if c < KERNEL_CALLS && q < KERNEL_CALLS {
                Some((c as u16, q as u16))
            } else {
                let (c, q) = (c.checked_sub(RUN_I386)?, q.checked_sub(RUN_I386)?);
                (c < KERNEL_CALLS && q < KERNEL_CALLS)
                    .then_some(((c + KERNEL_CALLS) as u16, q as u16))
            }
        };
        let mut pairs: Vec<(u16, u16, u8)> = p
            .raw_pairs()
            .into_iter()
            .filter(|&(_, _, m)| m & 0xff != 0)
            .filter_map(|(c, q, m)| kernel(c, q).map(|(c, q)| (c, q, (m & 0xff) as u8)))
            .collect();
        pairs.sort_unstable();
        DaemonProfile {
            paths: vec![],
            scripts: vec![],
            last_reset_ns: 0,
            last_reset_why: String::new(),
            learn_uid: None,
            learn_cgroup: None,
            cgroups: vec![],
            igen: 0,
            version: VERSION,
            dev: p.key.dev,
            ino: p.key.ino,
            path: p.path.clone(),
            state: p.state,
            train_count: p.train_count,
            last_mod_count: p.last_mod_count,
            normal_time_ns: p.normal_time_ns,
            anomalies: p.anomalies,
            pairs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DaemonProfile {
        DaemonProfile {
            paths: vec![],
            scripts: vec![],
            last_reset_ns: 0,
            last_reset_why: String::new(),
            learn_uid: None,
            learn_cgroup: None,
            cgroups: vec![],
            igen: 0,
            version: VERSION,
            dev: 0xfe00,
            ino: 42,
            path: "/usr/bin/x".into(),
            state: ProfileState::Normal,
            train_count: 1000,
            last_mod_count: 900,
            normal_time_ns: 5,
            anomalies: 1,
            pairs: vec![
                (0, 1, 0b1),
                (1, 0, 0b11),
                (59, 1, 0b1000_0000),
                (523, 5, 0b10),
            ],
        }
    }

    #[test]
    fn container_ids_come_from_the_runtimes_cgroup_names() {
        let id = "4f1d2c3b4a5968778695a4b3c2d1e0f94f1d2c3b4a5968778695a4b3c2d1e0f9";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("/kubepods/burstable/pod9/crio-{id}.scope"),
        ] {
            assert_eq!(
                container_id(&path).as_deref(),
                Some("4f1d2c3b4a59"),
                "{path}"
            );
        }
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/cron.service",
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn calls_to_freeze_is_exactly_what_the_freeze_rule_needs() {
        use homeostat_core::ph::lifecycle::TrainCounts;
        for config in [
            PhConfig::default(),
            PhConfig {
                normal_factor: 3,
                normal_factor_den: 2,
                ..PhConfig::default()
            },
        ] {
            for (t, l) in [
                (1000, 0),
                (1000, 900),
                (5000, 1000),
                (1, 0),
                (7, 3),
                (10, 10),
            ] {
                let Some(n) = calls_to_freeze(t, l, &config) else {
                    assert_eq!(t, l, "only a profile with nothing learnt has no answer");
                    continue;
                };
                // n stable calls freeze it (or it is already stable with n = 0), and
                // one fewer does not.
                let after = |k: u64| TrainCounts {
                    train_count: t + k,
                    last_mod_count: l + k,
                };
                assert!(after(n).stable(&config), "{t} {l}: {n}");
                if n > 0 {
                    assert!(!after(n - 1).stable(&config), "{t} {l}: {n}");
                }
            }
        }
        assert_eq!(calls_to_freeze(1000, 0, &PhConfig::default()), Some(3001));
    }

    #[test]
    fn round_trips_through_a_run_profile() {
        let d = sample();
        let p = d.to_ph(&PhConfig::default()).unwrap();
        assert_eq!(p.state, ProfileState::Normal);
        assert_eq!((p.train_count, p.last_mod_count), (1000, 900));
        assert_eq!(p.pairs(), d.pair_count());
        assert_eq!(DaemonProfile::from_ph(&p), d);
    }

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, sample().to_bytes()).unwrap();
        assert_eq!(DaemonProfile::load(&f).unwrap(), sample());
        let mut bad = sample();
        bad.pairs.push((1100, 1, 1));
        std::fs::write(&f, bad.to_bytes()).unwrap();
        assert!(DaemonProfile::load(&f).unwrap_err().contains("(1100, 1)"));
        let mut bad = sample();
        bad.pairs.push((600, 512, 1));
        std::fs::write(&f, bad.to_bytes()).unwrap();
        assert!(DaemonProfile::load(&f).unwrap_err().contains("(600, 512)"));
        let mut old = sample();
        old.version = 7;
        std::fs::write(&f, old.to_bytes()).unwrap();
        assert!(DaemonProfile::load(&f).unwrap_err().contains("version 7"));
        std::fs::write(&f, b"{\"version\": 1, \"dev\"").unwrap();
        assert!(DaemonProfile::load(&f).is_err());
    }

    #[test]
    fn one_scan_finds_good_files_and_names_bad_ones() {
        let state = tempfile::tempdir().unwrap();
        let dir = dir_in(state.path());
        assert_eq!(scan(&dir).0.len() + scan(&dir).1.len(), 0, "missing folder");
        std::fs::create_dir_all(&dir).unwrap();
        let good = sample();
        std::fs::write(path_in(state.path(), good.key()), good.to_bytes()).unwrap();
        std::fs::write(dir.join("broken.json"), b"{").unwrap();
        std::fs::write(dir.join("notes.txt"), b"not a profile").unwrap();
        let (found, bad) = scan(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, good);
        assert_eq!(found[0].0, path_in(state.path(), good.key()));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].0.ends_with("broken.json"), "{bad:?}");
    }
}
