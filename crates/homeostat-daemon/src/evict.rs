//! Eviction from the kernel's profile map, so that a machine's lifetime of executables
//! does not fill it: on a build server every freshly built binary is a new inode, so a
//! new training profile that will never run again, and once the map (4096 profiles, or
//! `--max-profiles`) is full new executables go unwatched (`profiles_full`).
//!
//! The policy is the profile store's (`homeostat_monitor::store`: [`exe_gone`],
//! [`over_watermark`], [`eviction_order`]), applied to the daemon's profiles:
//! - every [`DELETED_SCAN`], profiles of executables that no longer exist (no path seen
//!   for the profile names its inode any more, and no process runs it); never judged
//!   for a profile run in a container (its paths name files in the container's root)
//!   or whose path names a file on another device here (another mount namespace);
//! - every tick, when the map is 90% full (or the row pool ran out since the last
//!   look), down to 75%: least recently used training profiles with few calls first,
//!   then other training and frozen ones, normal profiles last.
//!
//! Never evicted: a profile whose process is under response. An evicted profile is
//! removed from the kernel (its rows and slot freed) and its file deleted, reported
//! as a `profile_evicted` event and counted (`status`, metrics).

use std::time::Duration;

use homeostat_core::ph::ExeKey;
use homeostat_ebpf::Kernel;
use homeostat_monitor::daemon_profile::container_id;
use homeostat_monitor::store::{
    eviction_order, exe_gone, over_watermark, running_exes, EvictCandidate,
};
use tracing::{info, warn};

use crate::daemon::Daemon;

/// How often profiles of deleted executables are looked for.
pub(crate) const DELETED_SCAN: Duration = Duration::from_secs(10);

/// Why a profile was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its executable no longer exists.
    Deleted,
    /// The map was near full and it was among the least valuable.
    Lru,
    /// Its executable was deleted and another file got its inode number (seen at
    /// that file's exec: another inode generation). Counted with `Deleted`.
    Replaced,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Deleted => "deleted executable",
            Why::Lru => "map near full",
            Why::Replaced => homeostat_core::ph::REPLACED,
        }
    }
}

impl Daemon {
    /// Evicts what the policy says (module docs); `scan_deleted`: look for deleted
    /// executables too. Returns how many profiles were evicted.
    pub(crate) fn evict(&mut self, kernel: &Kernel, scan_deleted: bool) -> usize {
        let capacity = kernel.max_profiles() as usize;
        let keys = kernel.profiles();
        let rows_ran_out = self.stats.rows_full > self.rows_full_seen;
        self.rows_full_seen = self.stats.rows_full;
        let mut need = over_watermark(keys.len(), capacity);
        if !scan_deleted && need == 0 && !rows_ran_out {
            return 0;
        }
        let protected: Vec<ExeKey> = self.resp_keys.values().copied().collect();
        let running = running_exes();
        let mut gone = vec![];
        let mut cands = vec![];
        for key in keys {
            if protected.contains(&key) {
                continue;
            }
            let Some(p) = self.profiles.get(&key) else {
                continue;
            };
            // A container's paths name files in its own root, which the daemon does
            // not see: whether they still exist cannot be told from here.
            let in_container = p.cgroups.iter().any(|c| container_id(c).is_some());
            if !in_container && exe_gone(key, p.paths.iter().map(|s| &**s), &running) {
                gone.push(key);
            } else {
                cands.push(EvictCandidate {
                    key,
                    state: p.state,
                    train_count: p.train_count,
                    last_used_ns: p.last_used_ns,
                });
            }
        }
        let mut n = 0;
        for key in &gone {
            n += usize::from(self.evict_one(kernel, *key, Why::Deleted));
        }
        let left = kernel.profiles().len();
        need = over_watermark(left, capacity);
        if need == 0 && rows_ran_out {
            // The pool of rows ran out before the map of profiles: free a twentieth.
            need = (capacity / 20).max(1);
        }
        eviction_order(&mut cands);
        for c in cands.iter().take(need) {
            n += usize::from(self.evict_one(kernel, c.key, Why::Lru));
        }
        if n > 0 {
            info!(
                "daemon: {n} profiles evicted ({} of deleted executables, {} least recently used; {} of {capacity} left)",
                gone.len(),
                n - gone.len().min(n),
                kernel.profiles().len()
            );
        }
        n
    }

    /// Removes one profile from the kernel, the daemon and the disk; reports it.
    pub(crate) fn evict_one(&mut self, kernel: &Kernel, key: ExeKey, why: Why) -> bool {
        if let Err(e) = kernel.remove_profile(key) {
            warn!("profile {key} not evicted: {e}");
            return false;
        }
        let r = self.record(
            "profile_evicted",
            key,
            (0, 0),
            String::new(),
            0,
            serde_json::json!({ "reason": why.as_str() }),
        );
        if let Some(w) = self.json.as_mut() {
            homeostat_monitor::sink::write_event(w, &r);
        }
        self.profiles.remove(&key);
        self.limits_forget(kernel, key);
        crate::remove_profile_files(&self.dir, key);
        match why {
            Why::Deleted | Why::Replaced => self.counts.evicted_deleted_total += 1,
            Why::Lru => self.counts.evicted_lru_total += 1,
        }
        true
    }
}
