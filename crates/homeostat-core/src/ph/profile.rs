//! The per-call state machine: what a profile and a task do with each system call
//! (train, test, tolerize, respond), with the events to report.

use serde::Serialize;

use super::lifecycle::{self, TrainCounts};
use super::{ExeKey, Mode, PhConfig, ProfileState};
use crate::locality::LocalityFrame;
use crate::model::{Cursor, Model};
use crate::pairs::Pairs;

/// What to do with the call that is about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it run now.
    Continue,
    /// Let it run after this many nanoseconds.
    Delay(u64),
    /// Do not run it; fail it with EPERM (only ever an execve).
    Refuse,
}

/// Something a monitor reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PhEvent {
    /// A call with missing pairs in a normal profile.
    Anomaly {
        /// Missing pairs.
        misses: u32,
        /// The task's LFC including this call.
        lfc: u32,
    },
    /// The task's calls start being delayed.
    DelayStart {
        /// Delay of this call, ns.
        delay_ns: u64,
        /// LFC.
        lfc: u32,
    },
    /// The task's LFC fell to 0: no more delays.
    DelayStop,
    /// An execve was refused.
    ExecRefused {
        /// LFC.
        lfc: u32,
    },
    /// The profile changed state.
    StateChange {
        /// Old state.
        from: ProfileState,
        /// New state.
        to: ProfileState,
        /// Why.
        reason: &'static str,
    },
    /// The profile's training data was wiped (LFC above tolerize_limit).
    Tolerized {
        /// LFC.
        lfc: u32,
    },
}

/// One task's pH state: its place in the call stream and its locality frame.
#[derive(Debug, Clone)]
pub struct PhTask {
    train: Cursor,
    test: Cursor,
    frame: LocalityFrame,
    delaying: bool,
    /// Set when LFC exceeds tolerize_limit, until it is back to 0: the task does not
    /// train and its anomalies do not count toward anomaly_limit.
    tolerized: bool,
    calls: u64,
}

impl PhTask {
    /// A task starting (or starting a new program after execve) under `profile`.
    pub fn new(profile: &PhProfile) -> Self {
        PhTask {
            train: profile.model.cursor(),
            test: profile.model.cursor(),
            frame: LocalityFrame::new(profile.model.spec().locality),
            delaying: false,
            tolerized: false,
            calls: 0,
        }
    }

    /// The current locality frame count.
    pub fn lfc(&self) -> u32 {
        self.frame.lfc()
    }

    /// Calls seen.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

/// The outcome of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What to do with the call.
    pub verdict: Verdict,
    /// Missing pairs (0 when normal or not tested).
    pub misses: u32,
    /// The task's LFC after this call.
    pub lfc: u32,
}

/// A pH profile: one executable's training and testing pairs and its state.
#[derive(Debug, Clone)]
pub struct PhProfile {
    /// The executable's identity.
    pub key: ExeKey,
    /// Its path when first seen (for people; the key is what matters).
    pub path: String,
    /// Training, frozen or normal.
    pub state: ProfileState,
    pub(super) model: Pairs,
    /// Calls trained.
    pub train_count: u64,
    /// Calls trained since the profile last changed.
    pub last_mod_count: u64,
    /// When a frozen profile becomes normal (ns since the epoch).
    pub normal_time_ns: u64,
    /// Anomalies since the profile became normal.
    pub anomalies: u64,
    /// Whether the profile changed since it was last saved.
    pub dirty: bool,
}

impl PhProfile {
    /// A new, empty profile in training.
    pub fn new(key: ExeKey, path: impl Into<String>, config: &PhConfig) -> Self {
        PhProfile {
            key,
            path: path.into(),
            state: ProfileState::Training,
            model: Pairs::new(config.spec()),
            train_count: 0,
            last_mod_count: 0,
            normal_time_ns: 0,
            anomalies: 0,
            dirty: true,
        }
    }

    /// Distinct (call, previous, distance) pairs trained.
    pub fn pairs(&self) -> usize {
        self.model.profile_size()
    }

    /// The model (for inspection and export).
    pub fn model(&self) -> &Pairs {
        &self.model
    }

    fn set_state(&mut self, to: ProfileState, reason: &'static str, emit: &mut dyn FnMut(PhEvent)) {
        if self.state != to {
            emit(PhEvent::StateChange {
                from: self.state,
                to,
                reason,
            });
            self.state = to;
            self.dirty = true;
        }
    }

    /// Makes the profile normal now (admin "normalize"): testing data = training data.
    pub fn normalize(&mut self, emit: &mut dyn FnMut(PhEvent)) {
        self.model.finish();
        self.anomalies = 0;
        self.set_state(ProfileState::Normal, "normalized", emit);
    }

    /// Sends the profile back to training (admin "sensitize", or too many anomalies).
    pub fn sensitize(&mut self, reason: &'static str, emit: &mut dyn FnMut(PhEvent)) {
        self.train_count = 0;
        self.last_mod_count = 0;
        self.anomalies = 0;
        self.set_state(ProfileState::Training, reason, emit);
    }

    /// Wipes the training data (admin "tolerize", or LFC above tolerize_limit); a
    /// normal profile keeps testing with its testing data.
    pub fn tolerize(&mut self) {
        self.model.clear_training();
        self.train_count = 0;
        self.last_mod_count = 0;
        self.dirty = true;
    }

    /// Processes one system call of `task`, before it runs.
    ///
    /// `is_execve`: the call is execve/execveat (its number depends on the ABI, which
    /// this module does not know). `now_ns`: wall-clock time, ns since the epoch.
    pub fn on_syscall(
        &mut self,
        task: &mut PhTask,
        call: u32,
        is_execve: bool,
        now_ns: u64,
        config: &PhConfig,
        emit: &mut dyn FnMut(PhEvent),
    ) -> Step {
        task.calls += 1;
        if lifecycle::due_normal(self.state, self.normal_time_ns, now_ns) {
            self.model.finish();
            self.anomalies = 0;
            self.set_state(ProfileState::Normal, "normal_wait elapsed", emit);
        }

        // Test first: testing data is what the profile was when it became normal.
        let mut misses = 0;
        let mut lfc = 0;
        if self.state == ProfileState::Normal && config.mode != Mode::Learn {
            misses = self.model.test_call(&mut task.test, call);
            lfc = task.frame.push(misses > 0);
            if lfc > config.tolerize_limit && !task.tolerized {
                task.tolerized = true;
                self.tolerize();
                emit(PhEvent::Tolerized { lfc });
            } else if lfc == 0 {
                task.tolerized = false;
            }
            if misses > 0 {
                emit(PhEvent::Anomaly { misses, lfc });
                // The limit is for scattered anomalies (an incomplete profile), not
                // for an attack in progress: otherwise a dense enough attack would
                // return the profile to training and switch off its own response.
                if !task.tolerized {
                    self.anomalies += 1;
                    self.dirty = true;
                    if self.anomalies > config.anomaly_limit {
                        self.sensitize("anomaly_limit exceeded", emit);
                    }
                }
            }
        }

        if !task.tolerized {
            self.train(task, call, now_ns, config, emit);
        }

        let verdict = self.respond(task, lfc, is_execve, config, emit);
        Step {
            verdict,
            misses,
            lfc,
        }
    }

    fn train(
        &mut self,
        task: &mut PhTask,
        call: u32,
        now_ns: u64,
        config: &PhConfig,
        emit: &mut dyn FnMut(PhEvent),
    ) {
        let changed = self.model.train_call(&mut task.train, call);
        // Counters are part of the profile too: a restart must not lose progress.
        self.dirty = true;
        let mut counts = TrainCounts {
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
        };
        let change = counts.record(self.state, 1, changed, config);
        self.train_count = counts.train_count;
        self.last_mod_count = counts.last_mod_count;
        if let Some((to, reason)) = change {
            if to == ProfileState::Frozen {
                self.normal_time_ns = lifecycle::normal_at(now_ns, config);
            }
            self.set_state(to, reason, emit);
        }
    }

    fn respond(
        &self,
        task: &mut PhTask,
        lfc: u32,
        is_execve: bool,
        config: &PhConfig,
        emit: &mut dyn FnMut(PhEvent),
    ) -> Verdict {
        if config.mode != Mode::Enforce || self.state != ProfileState::Normal {
            if task.delaying {
                task.delaying = false;
                emit(PhEvent::DelayStop);
            }
            return Verdict::Continue;
        }
        if is_execve && lfc >= config.suspend_execve {
            emit(PhEvent::ExecRefused { lfc });
            return Verdict::Refuse;
        }
        let delay = config.delay_ns(lfc);
        if delay == 0 {
            if task.delaying {
                task.delaying = false;
                emit(PhEvent::DelayStop);
            }
            return Verdict::Continue;
        }
        if !task.delaying {
            task.delaying = true;
            emit(PhEvent::DelayStart {
                delay_ns: delay,
                lfc,
            });
        }
        Verdict::Delay(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, ModelSpec};
    use crate::profile::ProfileError;

    const SEC: u64 = 1_000_000_000;

    fn config() -> PhConfig {
        PhConfig {
            normal_wait_secs: 10.0,
            ..PhConfig::default()
        }
    }

    struct Run {
        events: Vec<PhEvent>,
        steps: Vec<Step>,
    }

    fn run(p: &mut PhProfile, calls: &[u32], execve: u32, now: u64, c: &PhConfig) -> Run {
        let mut task = PhTask::new(p);
        let mut events = vec![];
        let steps = calls
            .iter()
            .map(|&x| p.on_syscall(&mut task, x, x == execve, now, c, &mut |e| events.push(e)))
            .collect();
        Run { events, steps }
    }

    /// A program's normal run: open, read loop, write, close, exit.
    fn normal_run() -> Vec<u32> {
        let mut v = vec![59, 12, 9, 2, 0];
        for _ in 0..20 {
            v.extend([0, 1]);
        }
        v.extend([3, 231]);
        v
    }

    #[test]
    fn training_freezes_then_becomes_normal_after_the_wait() {
        let c = config();
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        // The first run adds pairs up to its last call (47 calls). Later runs add
        // nothing; the profile freezes once unchanged calls exceed 3/4 of all calls
        // trained: train_count > 4 * 47, i.e. during the fifth run.
        for i in 0..4 {
            run(&mut p, &normal_run(), 59, 0, &c);
            assert_eq!(p.state, ProfileState::Training, "run {i}");
        }
        assert_eq!(p.last_mod_count, 3 * 47);
        let fifth = run(&mut p, &normal_run(), 59, 0, &c);
        assert_eq!(p.state, ProfileState::Frozen, "{:?}", fifth.events);
        assert_eq!(p.normal_time_ns, 10 * SEC);
        let again = run(&mut p, &normal_run(), 59, 5 * SEC, &c);
        assert_eq!(p.state, ProfileState::Frozen);
        assert!(again.events.is_empty());
        let later = run(&mut p, &normal_run(), 59, 11 * SEC, &c);
        assert_eq!(p.state, ProfileState::Normal);
        assert_eq!(
            later.events,
            vec![PhEvent::StateChange {
                from: ProfileState::Frozen,
                to: ProfileState::Normal,
                reason: "normal_wait elapsed"
            }]
        );
        assert!(later
            .steps
            .iter()
            .all(|s| s.verdict == Verdict::Continue && s.lfc == 0));
    }

    #[test]
    fn new_pairs_unfreeze() {
        let c = config();
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        for _ in 0..5 {
            run(&mut p, &normal_run(), 59, 0, &c);
        }
        assert_eq!(p.state, ProfileState::Frozen);
        let mut odd = normal_run();
        odd.insert(10, 42);
        let r = run(&mut p, &odd, 59, SEC, &c);
        assert_eq!(p.state, ProfileState::Training);
        assert_eq!(
            r.events,
            vec![PhEvent::StateChange {
                from: ProfileState::Frozen,
                to: ProfileState::Training,
                reason: "new behaviour"
            }]
        );
        // Stable again later: re-frozen, with the wait restarted.
        for _ in 0..30 {
            run(&mut p, &normal_run(), 59, 2 * SEC, &c);
        }
        assert_eq!(p.state, ProfileState::Frozen);
        assert_eq!(p.normal_time_ns, 12 * SEC);
    }

    fn normal_profile(c: &PhConfig) -> PhProfile {
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", c);
        run(&mut p, &normal_run(), 59, 0, c);
        let mut events = vec![];
        p.normalize(&mut |e| events.push(e));
        assert_eq!(p.state, ProfileState::Normal);
        assert_eq!(events.len(), 1);
        p
    }

    #[test]
    fn anomalies_delay_growing_with_lfc_and_execve_is_refused() {
        let c = config();
        let mut p = normal_profile(&c);
        // An exploit: after the open, a burst of calls never seen (socket, dup2...),
        // then execve.
        let mut attack = vec![59, 12, 9, 2, 0];
        attack.extend([41, 42, 33, 33, 33, 41, 42, 33, 33, 33, 41, 42, 59]);
        let r = run(&mut p, &attack, 59, 20 * SEC, &c);
        let lfcs: Vec<u32> = r.steps.iter().map(|s| s.lfc).collect();
        assert_eq!(&lfcs[..5], &[0, 0, 0, 0, 0]);
        assert!(lfcs[5..].windows(2).all(|w| w[1] >= w[0]), "{lfcs:?}");
        // Delays follow delay_factor * 2^LFC, capped.
        for s in &r.steps {
            match s.verdict {
                Verdict::Delay(ns) => assert_eq!(ns, c.delay_ns(s.lfc)),
                Verdict::Continue => assert_eq!(s.lfc, 0),
                Verdict::Refuse => {}
            }
        }
        assert_eq!(c.delay_ns(1), 8_000_000);
        assert_eq!(c.delay_ns(3), 32_000_000);
        assert_eq!(c.delay_ns(40), 2_000_000_000);
        let last = r.steps.last().unwrap();
        assert!(last.lfc >= c.suspend_execve);
        assert_eq!(last.verdict, Verdict::Refuse);
        assert!(r.events.contains(&PhEvent::ExecRefused { lfc: last.lfc }));
        assert!(matches!(
            r.events
                .iter()
                .find(|e| matches!(e, PhEvent::DelayStart { .. })),
            Some(PhEvent::DelayStart { lfc: 1, .. })
        ));
        // LFC above tolerize_limit (12) wiped the training data once.
        assert_eq!(
            r.events
                .iter()
                .filter(|e| matches!(e, PhEvent::Tolerized { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn anomaly_limit_returns_to_training() {
        let c = PhConfig {
            anomaly_limit: 5,
            ..config()
        };
        let mut p = normal_profile(&c);
        let r = run(&mut p, &[59, 12, 77, 78, 79, 80, 81, 82], 59, 20 * SEC, &c);
        assert_eq!(p.state, ProfileState::Training);
        assert!(r.events.contains(&PhEvent::StateChange {
            from: ProfileState::Normal,
            to: ProfileState::Training,
            reason: "anomaly_limit exceeded"
        }));
        // The sixth anomaly (the last call) crossed the limit: delayed before, not now.
        let n = r.steps.len();
        assert!(matches!(r.steps[n - 2].verdict, Verdict::Delay(_)));
        assert_eq!(r.steps[n - 1].verdict, Verdict::Continue);
        assert_eq!(p.anomalies, 0);
        // Back in training nothing is tested.
        let later = run(&mut p, &[59, 12, 77, 78, 79], 59, 21 * SEC, &c);
        assert!(later
            .steps
            .iter()
            .all(|s| s.misses == 0 && s.verdict == Verdict::Continue));
    }

    #[test]
    fn detect_mode_reports_but_never_responds() {
        let c = PhConfig {
            mode: Mode::Detect,
            ..config()
        };
        let mut p = normal_profile(&c);
        let r = run(
            &mut p,
            &[59, 12, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 59],
            59,
            20 * SEC,
            &c,
        );
        assert!(r.steps.iter().all(|s| s.verdict == Verdict::Continue));
        assert!(r
            .events
            .iter()
            .any(|e| matches!(e, PhEvent::Anomaly { .. })));
        let learn = PhConfig {
            mode: Mode::Learn,
            ..config()
        };
        let mut p = normal_profile(&learn);
        let r = run(&mut p, &[59, 12, 41, 42, 43], 59, 20 * SEC, &learn);
        assert!(r.events.is_empty() && r.steps.iter().all(|s| s.lfc == 0));
    }

    #[test]
    fn profiles_survive_a_save_and_load() {
        let c = config();
        let mut p = normal_profile(&c);
        run(
            &mut p,
            &[59, 12, 9, 2, 0, 0, 1, 99, 3, 231],
            59,
            20 * SEC,
            &c,
        );
        let q = PhProfile::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(q.state, p.state);
        assert_eq!(q.anomalies, p.anomalies);
        assert_eq!(q.pairs(), p.pairs());
        assert_eq!(q.model.test_entries(), p.model.test_entries());
        assert_eq!(q.model.entries(), p.model.entries());
        let mut bytes = p.to_bytes();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert!(matches!(
            PhProfile::from_bytes(&bytes),
            Err(ProfileError::Checksum { .. })
        ));
        assert_eq!(
            PhProfile::from_bytes(
                &crate::Profile::new(
                    Default::default(),
                    crate::AnyModel::new(ModelSpec::new(ModelKind::Pairs)).unwrap()
                )
                .to_bytes()
            )
            .unwrap_err(),
            ProfileError::NotAProfile
        );
    }
}
