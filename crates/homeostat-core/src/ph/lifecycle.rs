//! pH's lifecycle rule, written once: when a training profile freezes, when a frozen
//! one goes back to training, and when it becomes normal.
//!
//! The launcher applies it call by call ([`super::PhProfile::on_syscall`]); the daemon
//! applies it to the kernel's counters once a tick, with the tick's calls at once.
//! Both call [`TrainCounts::record`] and [`due_normal`], so the two monitors cannot
//! drift apart. Pure arithmetic: no clock (time is an argument), no I/O.

use super::{PhConfig, ProfileState};

/// A state change the rule calls for: the new state and why (the reason shown in
/// `state_change` events).
pub type Change = (ProfileState, &'static str);

/// The counters pH's freeze rule reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainCounts {
    /// Calls trained.
    pub train_count: u64,
    /// Calls trained since the profile last changed (gained a pair).
    pub last_mod_count: u64,
}

impl TrainCounts {
    /// `calls` more calls were trained on a profile in `state`; `changed`: they added
    /// pairs to it (then the calls after the last new pair are not credited as stable,
    /// which can only delay freezing). Returns the state change this calls for:
    /// - a frozen profile that changed goes back to training ("new behaviour");
    /// - a training profile freezes ("stable") once
    ///   `train_count * normal_factor_den > normal_count * normal_factor`, where
    ///   `normal_count = train_count - last_mod_count > 0`: with pH's 128/32, once it
    ///   has gone unchanged for three quarters of its training life.
    ///
    /// The caller sets the normal time of a profile that freezes ([`normal_at`]).
    /// Inlined: the launcher calls it for every trained call.
    #[inline]
    pub fn record(
        &mut self,
        state: ProfileState,
        calls: u64,
        changed: bool,
        config: &PhConfig,
    ) -> Option<Change> {
        // Saturating: counters come from files and the kernel, and a wrap to 0 would
        // restart the freeze rule (and panic in a debug build).
        self.train_count = self.train_count.saturating_add(calls);
        if changed {
            self.last_mod_count = 0;
            return (state == ProfileState::Frozen)
                .then_some((ProfileState::Training, "new behaviour"));
        }
        self.last_mod_count = self.last_mod_count.saturating_add(calls);
        (state == ProfileState::Training && self.stable(config))
            .then_some((ProfileState::Frozen, "stable"))
    }

    /// pH's freeze condition on these counters.
    #[inline]
    pub fn stable(&self, config: &PhConfig) -> bool {
        let normal_count = self.train_count.saturating_sub(self.last_mod_count);
        normal_count > 0
            && u128::from(self.train_count) * u128::from(config.normal_factor_den)
                > u128::from(normal_count) * u128::from(config.normal_factor)
    }
}

/// When a profile that freezes at `now_ns` becomes normal: after `normal_wait`.
#[inline]
pub fn normal_at(now_ns: u64, config: &PhConfig) -> u64 {
    now_ns.saturating_add(config.normal_wait_ns())
}

/// Whether a profile in `state`, due normal at `normal_time_ns`, becomes normal at
/// `now_ns` (only a frozen profile does). Learn mode is the caller's business: the
/// launcher still lets such a profile turn normal and never tests it, the daemon keeps
/// it frozen.
#[inline]
pub fn due_normal(state: ProfileState, normal_time_ns: u64, now_ns: u64) -> bool {
    state == ProfileState::Frozen && now_ns >= normal_time_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_at_a_time_or_a_tick_at_once_freeze_alike() {
        let c = PhConfig::default();
        // 1000 calls that changed the profile, then stable calls: pH's 128/32 freezes
        // once train_count > 4 x 1000.
        let mut one = TrainCounts::default();
        let mut tick = TrainCounts::default();
        for _ in 0..1000 {
            assert_eq!(one.record(ProfileState::Training, 1, true, &c), None);
        }
        assert_eq!(tick.record(ProfileState::Training, 1000, true, &c), None);
        assert_eq!(one, tick);
        let mut froze_at = None;
        for n in 1001..=5000u64 {
            if one.record(ProfileState::Training, 1, false, &c).is_some() {
                froze_at = Some(n);
                break;
            }
        }
        assert_eq!(froze_at, Some(4001));
        assert_eq!(tick.record(ProfileState::Training, 3000, false, &c), None);
        assert_eq!(
            tick.record(ProfileState::Training, 1, false, &c),
            Some((ProfileState::Frozen, "stable"))
        );
        assert_eq!(one, tick);
    }

    #[test]
    fn change_unfreezes_and_only_training_freezes() {
        let c = PhConfig::default();
        let mut t = TrainCounts {
            train_count: 10_000,
            last_mod_count: 9_000,
        };
        assert!(t.stable(&c));
        assert_eq!(t.record(ProfileState::Frozen, 5, false, &c), None);
        assert_eq!(t.record(ProfileState::Normal, 5, false, &c), None);
        assert_eq!(
            t.record(ProfileState::Frozen, 5, true, &c),
            Some((ProfileState::Training, "new behaviour"))
        );
        assert_eq!(t.last_mod_count, 0);
        assert_eq!(t.record(ProfileState::Training, 5, true, &c), None);
        // Nothing trained yet, or nothing stable: never frozen.
        assert!(!TrainCounts::default().stable(&c));
        let inconsistent = TrainCounts {
            train_count: 5,
            last_mod_count: 50,
        };
        assert!(!inconsistent.stable(&c));
    }

    #[test]
    fn normal_after_the_wait() {
        let c = PhConfig {
            normal_wait_secs: 2.0,
            ..PhConfig::default()
        };
        let at = normal_at(10, &c);
        assert_eq!(at, 2_000_000_010);
        assert!(!due_normal(ProfileState::Frozen, at, at - 1));
        assert!(due_normal(ProfileState::Frozen, at, at));
        assert!(!due_normal(ProfileState::Training, at, at));
        assert_eq!(normal_at(u64::MAX - 1, &c), u64::MAX);
    }
}
