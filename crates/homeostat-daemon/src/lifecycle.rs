//! A profile's life in the daemon: userspace's half of each profile ([`Prof`]) and
//! pH's freeze / normal rule applied to the kernel's counters, sampled every tick.
//!
//! The kernel counts calls and new pairs per profile but does not decide when a
//! profile freezes or becomes normal: that needs wall-clock time and the
//! configuration, so it is done here, at one-tick granularity, with the core's rule
//! (`homeostat_core::ph::lifecycle`, the one `homeostat run` applies call by call).

use std::collections::BTreeMap;
use std::sync::Arc;

use homeostat_core::ph::lifecycle::{self, Change};
use homeostat_core::ph::{ExeKey, Mode, PhConfig, ProfileState, TrainCounts};
use homeostat_ebpf::{Kernel, KernelState, Stats};
use homeostat_monitor::control::{LastReset, Progress};
use homeostat_monitor::daemon_profile::MAX_PATHS;
use homeostat_monitor::sink::write_event;
use tracing::warn;

use crate::daemon::Daemon;
use crate::now_ns;

/// What the kernel does with a profile's calls: it tests only normal ones (training
/// and frozen profiles both learn there).
pub(crate) fn kernel_state(st: ProfileState) -> KernelState {
    if st == ProfileState::Normal {
        KernelState::Normal
    } else {
        KernelState::Training
    }
}

/// Userspace's half of a profile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prof {
    /// The executable's own path (for a script run through it: the interpreter's).
    pub path: Arc<str>,
    /// Every path it was run by, `path` first (at most `MAX_PATHS`).
    pub paths: Vec<Arc<str>>,
    /// Scripts run with it as their interpreter (at most `MAX_PATHS`).
    pub scripts: Vec<Arc<str>>,
    pub state: ProfileState,
    pub train_count: u64,
    pub last_mod_count: u64,
    pub normal_time_ns: u64,
    /// Anomalies since the profile last became normal, outside tolerized episodes
    /// (what `anomaly_limit` is checked against, as in `homeostat run`).
    pub anomalies: u64,
    /// The kernel's counters at the last sample.
    pub seen_calls: u64,
    pub seen_new: u64,
    /// When its calls last moved, or it was exec'd or loaded (eviction's LRU clock).
    pub last_used_ns: u64,
    /// When its training was last reset (back to training, or wiped), and why.
    pub last_reset_ns: u64,
    pub last_reset_why: Arc<str>,
    /// Learns only from this user's / this cgroup's processes (`profile learn-from`).
    pub learn_uid: Option<u32>,
    pub learn_cgroup: Option<Arc<str>>,
    /// The cgroups (v2 paths, not the root) of the processes that ran it.
    pub cgroups: Vec<Arc<str>>,
    /// Argument classes heard of (`--symbols args`), by (call, kernel hash): their
    /// names for the classes file. Bounded by the kernel's cap per profile.
    pub classes: BTreeMap<(u16, u64), Arc<str>>,
    /// The inode generation of the file it is for (0: not known yet).
    pub igen: u32,
    pub dirty: bool,
}

impl Prof {
    /// pH's "training data wiped" (tolerize, sensitize, anomaly_limit): the kernel
    /// keeps one pair set, so what is wiped is the freeze rule's counters.
    pub fn wipe_training(&mut self, why: &str) {
        self.train_count = 0;
        self.last_mod_count = 0;
        self.reset_by(why);
    }

    /// Records a reset of its training (for `profile show`'s progress).
    pub fn reset_by(&mut self, why: &str) {
        self.last_reset_ns = crate::now_ns();
        self.last_reset_why = Arc::from(why);
        self.dirty = true;
    }

    pub fn new(path: Arc<str>) -> Prof {
        Prof {
            paths: if path.starts_with('/') {
                vec![path.clone()]
            } else {
                vec![]
            },
            scripts: vec![],
            path,
            state: ProfileState::Training,
            train_count: 0,
            last_mod_count: 0,
            normal_time_ns: 0,
            anomalies: 0,
            seen_calls: 0,
            seen_new: 0,
            last_used_ns: crate::now_ns(),
            last_reset_ns: 0,
            last_reset_why: Arc::from(""),
            learn_uid: None,
            learn_cgroup: None,
            cgroups: vec![],
            classes: BTreeMap::new(),
            igen: 0,
            dirty: true,
        }
    }

    /// How far it is from normal at `now_ns`: calls since its last new pair against
    /// what pH's freeze rule needs, time left of normal_wait, its last reset.
    pub fn progress(&self, now_ns: u64, config: &PhConfig) -> Progress {
        Progress::of(
            self.state,
            self.train_count,
            self.last_mod_count,
            self.normal_time_ns,
            LastReset::at(self.last_reset_ns, &self.last_reset_why),
            now_ns,
            config,
        )
    }

    /// Records a path the executable was run by; the first absolute one names it.
    /// Returns whether it was new.
    pub fn saw_path(&mut self, path: &str) -> bool {
        if self.paths.iter().any(|p| &**p == path) {
            return false;
        }
        if !self.path.starts_with('/') && path.starts_with('/') {
            self.path = Arc::from(path);
        }
        if self.paths.len() < MAX_PATHS {
            self.paths.push(Arc::from(path));
        }
        self.dirty = true;
        true
    }

    /// Records the cgroup of a process that ran it.
    pub fn saw_cgroup(&mut self, cgroup: &str) {
        if self.cgroups.len() < MAX_PATHS && !self.cgroups.iter().any(|p| &**p == cgroup) {
            self.cgroups.push(Arc::from(cgroup));
            self.dirty = true;
        }
    }

    /// Records a script run through this executable (its interpreter).
    pub fn saw_script(&mut self, script: &str) {
        if self.scripts.len() < MAX_PATHS && !self.scripts.iter().any(|p| &**p == script) {
            self.scripts.push(Arc::from(script));
            self.dirty = true;
        }
    }

    /// One sample of the kernel's counters for this profile (`calls`, `new_pairs`:
    /// its totals so far): pH's counters move by the deltas since the last sample, and
    /// the state change they call for, if any, is returned (the caller applies it).
    /// A normal profile's counters are not followed: it no longer trains.
    pub fn sample(
        &mut self,
        calls: u64,
        new_pairs: u64,
        now_ns: u64,
        config: &PhConfig,
    ) -> Option<Change> {
        let dcalls = calls.saturating_sub(self.seen_calls);
        let dnew = new_pairs.saturating_sub(self.seen_new);
        self.seen_calls = calls;
        self.seen_new = new_pairs;
        if dcalls > 0 {
            self.last_used_ns = self.last_used_ns.max(now_ns);
        }
        if self.state == ProfileState::Normal || dcalls == 0 {
            return None;
        }
        self.dirty = true;
        let mut counts = TrainCounts {
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
        };
        let change = counts.record(self.state, dcalls, dnew > 0, config);
        self.train_count = counts.train_count;
        self.last_mod_count = counts.last_mod_count;
        if let Some((ProfileState::Frozen, _)) = change {
            self.normal_time_ns = lifecycle::normal_at(now_ns, config);
        }
        change
    }

    /// Whether a frozen profile becomes normal at `now_ns` (never in learn mode).
    pub fn due_normal(&self, now_ns: u64, learn: bool) -> bool {
        lifecycle::due_normal(self.state, self.normal_time_ns, now_ns) && !learn
    }
}

impl Daemon {
    /// Samples the kernel's counters and applies pH's freeze / normal rules.
    pub(crate) fn tick(&mut self, kernel: &Kernel) {
        let now = now_ns();
        let mut changes: Vec<(ExeKey, ProfileState, &'static str)> = vec![];
        let keys = kernel.profiles();
        // An exec is reported even when the kernel had no room for its profile
        // (profiles_full): userspace keeps only what the kernel has.
        let held: std::collections::HashSet<ExeKey> = keys.iter().copied().collect();
        self.profiles.retain(|k, _| held.contains(k));
        for key in keys {
            let Ok(Some(kp)) = kernel.profile(key) else {
                continue;
            };
            let p = self.profiles.entry(key).or_insert_with(|| {
                let path = format!("?{key}");
                Prof::new(Arc::from(path.as_str()))
            });
            let dcalls = kp.calls.saturating_sub(p.seen_calls);
            self.counts.calls_total += dcalls;
            if p.state == ProfileState::Normal {
                self.counts.calls_normal_total += dcalls;
            }
            if let Some((to, why)) = p.sample(kp.calls, kp.new_pairs, now, &self.config) {
                changes.push((key, to, why));
            }
        }
        for (&key, p) in &self.profiles {
            let changing = changes.iter().any(|c| c.0 == key);
            let learn = self.mode_of(key) == Mode::Learn;
            if !changing && p.due_normal(now, learn) {
                changes.push((key, ProfileState::Normal, "normal_wait elapsed"));
            }
        }
        for (key, to, reason) in changes {
            self.set_state(kernel, key, to, reason);
        }
        match kernel.stats() {
            Ok(s) => {
                // Not losses (a task's state in task storage, general-path calls):
                // counted, not warned of.
                self.counts.tids_taken_total = s.tids_taken;
                self.counts.general_calls_total = s.general_calls;
                let losses = |s: Stats| Stats {
                    tids_taken: 0,
                    general_calls: 0,
                    ..s
                };
                if losses(s) != losses(self.stats) {
                    self.counts.lost_events_total = s.lost_events;
                    self.counts.rows_full_total = s.rows_full;
                    self.counts.tasks_full_total = s.tasks_full;
                    self.counts.profiles_full_total = s.profiles_full;
                    // Never silent, even with --quiet.
                    warn!(
                        "kernel losses: {} events, {} pairs (rows map full), {} tasks, {} profiles, {} stops",
                        s.lost_events, s.rows_full, s.tasks_full, s.profiles_full, s.stops_failed
                    );
                    if let Some(w) = self.json.as_mut() {
                        let j = serde_json::json!({
                            "ts": now as f64 / 1e9, "event": "kernel_losses",
                            "lost_events": s.lost_events, "rows_full": s.rows_full,
                            "tasks_full": s.tasks_full, "profiles_full": s.profiles_full,
                            "stops_failed": s.stops_failed,
                        });
                        write_event(w, &j);
                    }
                }
                self.stats = s;
            }
            Err(e) => warn!("{e}"),
        }
        if self.symbols.is_some() {
            match kernel.arg_stats() {
                Ok(s) if s != self.arg_stats => {
                    // Never silent, even with --quiet.
                    warn!(
                        "argument classes: {} training calls past a profile's cap (class `other`), {} classes not learnt (map full), {} arguments unreadable in the kernel (calls not tested), {} class events lost",
                        s.overflowed, s.map_full, s.unread, s.lost_events
                    );
                    if let Some(w) = self.json.as_mut() {
                        let j = serde_json::json!({
                            "ts": now as f64 / 1e9, "event": "argument_losses",
                            "overflowed": s.overflowed, "map_full": s.map_full,
                            "unread": s.unread, "lost_events": s.lost_events,
                        });
                        write_event(w, &j);
                    }
                    self.arg_stats = s;
                }
                Ok(_) => {}
                Err(e) => warn!("{e}"),
            }
            let s = &self.arg_stats;
            self.counts.argument_losses = Some([s.overflowed, s.map_full, s.unread, s.lost_events]);
        }
        if self.throttle.is_some() || self.rates.is_some() {
            match kernel.throttle_stats() {
                Ok(s) if s != self.limit_stats => {
                    // Never silent, even with --quiet: a lost event is a connect or a
                    // fork the limits did not see.
                    warn!(
                        "throttle and rate limits: {} connect addresses unreadable in the kernel (throttled as an unknown host), {} events lost",
                        s.unread, s.lost_events
                    );
                    if let Some(w) = self.json.as_mut() {
                        let j = serde_json::json!({
                            "ts": now as f64 / 1e9, "event": "limit_losses",
                            "unread": s.unread, "lost_events": s.lost_events,
                        });
                        write_event(w, &j);
                    }
                    self.limit_stats = s;
                }
                Ok(_) => {}
                Err(e) => warn!("{e}"),
            }
        }
        self.counts.limits = self.limits_now();
        let by = |st| self.profiles.values().filter(|p| p.state == st).count() as u64;
        self.counts.profiles_training = by(ProfileState::Training);
        self.counts.profiles_frozen = by(ProfileState::Frozen);
        self.counts.profiles_normal = by(ProfileState::Normal);
        self.counts.under_response = self.responders.active().len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn config() -> PhConfig {
        PhConfig {
            normal_wait_secs: 10.0,
            ..PhConfig::default()
        }
    }

    /// A profile that learnt `calls` calls in one tick, `new` of them new pairs.
    fn learnt(calls: u64, new: u64) -> Prof {
        let mut p = Prof::new(Arc::from("/bin/x"));
        assert_eq!(p.sample(calls, new, 0, &config()), None);
        p
    }

    #[test]
    fn a_stable_profile_freezes_then_becomes_normal_after_the_wait() {
        let c = config();
        // 1000 calls with new pairs, then stable ticks. normal_count is the calls up
        // to the last change (1000); with pH's 128/32 the profile freezes once
        // train_count > 4 x normal_count, i.e. past 4000 calls.
        let mut p = learnt(1000, 50);
        assert_eq!((p.train_count, p.last_mod_count), (1000, 0));
        assert_eq!(p.sample(1200, 50, 1, &c), None, "200 stable calls of 1200");
        assert_eq!((p.train_count, p.last_mod_count), (1200, 200));
        assert_eq!(p.sample(4000, 50, 2 * SEC, &c), None, "4000 = 4 x 1000");
        assert_eq!(
            p.sample(4001, 50, 3 * SEC, &c),
            Some((ProfileState::Frozen, "stable"))
        );
        p.state = ProfileState::Frozen;
        assert_eq!(p.normal_time_ns, 3 * SEC + 10 * SEC);
        assert!(!p.due_normal(12 * SEC, false), "normal_wait not over");
        assert!(p.due_normal(13 * SEC, false));
        assert!(!p.due_normal(13 * SEC, true), "learn mode never tests");
    }

    #[test]
    fn new_pairs_unfreeze_and_reset_the_stable_count() {
        let c = config();
        let mut p = learnt(100, 10);
        p.state = ProfileState::Frozen;
        p.last_mod_count = 300;
        assert_eq!(
            p.sample(150, 11, SEC, &c),
            Some((ProfileState::Training, "new behaviour"))
        );
        assert_eq!((p.train_count, p.last_mod_count), (150, 0));
        // In training, new pairs only reset the count.
        p.state = ProfileState::Training;
        assert_eq!(p.sample(160, 12, SEC, &c), None);
        assert_eq!(p.last_mod_count, 0);
    }

    #[test]
    fn idle_and_normal_profiles_do_not_move() {
        let c = config();
        let mut p = learnt(100, 10);
        let before = p.clone();
        assert_eq!(p.sample(100, 10, SEC, &c), None);
        assert_eq!(p, before, "no calls, no change");
        p.state = ProfileState::Normal;
        p.dirty = false;
        assert_eq!(p.sample(100_000, 10, SEC, &c), None);
        assert_eq!(p.train_count, 100, "a normal profile no longer trains");
        assert_eq!(p.seen_calls, 100_000, "but its counters are followed");
        assert!(!p.dirty);
    }

    #[test]
    fn a_kernel_counter_reset_is_not_a_negative_delta() {
        // The kernel's copy starts from 0 when the daemon restarts or reloads.
        let c = config();
        let mut p = learnt(1000, 50);
        assert_eq!(p.sample(10, 0, SEC, &c), None);
        assert_eq!(p.train_count, 1000);
        assert_eq!((p.seen_calls, p.seen_new), (10, 0));
    }

    #[test]
    fn only_normal_profiles_are_tested_by_the_kernel() {
        assert_eq!(kernel_state(ProfileState::Normal), KernelState::Normal);
        assert_eq!(kernel_state(ProfileState::Frozen), KernelState::Training);
        assert_eq!(kernel_state(ProfileState::Training), KernelState::Training);
    }
}
