//! The per-call state machine: what a profile and a task do with each system call
//! (train, test, tolerize, respond), with the events to report.

use serde::Serialize;

use super::lifecycle::{self, TrainCounts};
use super::{ExeKey, Mode, PhConfig, ProfileState};
use crate::locality::LocalityFrame;
use crate::model::{Cursor, Model};
use crate::pairs::Pairs;
use crate::rate::{LearnedRates, RateKind, RateState};
use crate::symbols::{Arg, SymbolMode, SymbolTable};

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
    /// A call beyond the profile's learned rate waits in its queue (enforce).
    RateQueued {
        /// What is counted.
        kind: RateKind,
        /// Calls allowed per window.
        limit: u32,
        /// Calls waiting, this one included.
        queue: usize,
        /// How long this call waits, ns.
        delay_ns: u64,
    },
    /// Queued calls were released.
    RateRelease {
        /// What is counted.
        kind: RateKind,
        /// Calls released.
        released: usize,
        /// Calls still waiting.
        queue: usize,
    },
    /// A profile's queue reached the alarm length (a storm in parallel).
    RateAlarm {
        /// What is counted.
        kind: RateKind,
        /// Calls allowed per window.
        limit: u32,
        /// Calls waiting.
        queue: usize,
    },
    /// A call beyond the profile's learned rate (detect: reported, not held).
    RateExceeded {
        /// What is counted.
        kind: RateKind,
        /// Calls allowed per window.
        limit: u32,
        /// Calls in the window, this one included.
        count: u32,
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

    /// Inside a tolerized episode (it neither trains nor learns classes).
    pub fn tolerized(&self) -> bool {
        self.tolerized
    }
}

/// A rate-limited queue reaching this length raises a `RateAlarm`.
pub const RATE_ALARM_QUEUE: usize = 5;

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
    /// The (call, argument class) table of an argument-aware profile; `None`: plain
    /// call numbers.
    pub(super) symbols: Option<SymbolTable>,
    /// The fork and file-creation peaks learned in training; `None`: no limit.
    pub(super) rates: Option<LearnedRates>,
    /// The rate meters and queues (not saved).
    pub(super) rate_state: RateState,
    /// The birth time (ns since the epoch) of the file the profile was made for, when
    /// the file system reports one: it tells a file from a later one that reuses its
    /// inode number ([`PhProfile::check_file`]). `None`: not known.
    pub(super) born: Option<u64>,
}

/// Why a profile was dropped for [`FileMatch::Replaced`], in events and logs of every
/// front end.
pub const REPLACED: &str = "executable replaced (its inode number reused by another file)";

/// What a profile is to the file a task runs ([`PhProfile::check_file`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMatch {
    /// The file the profile was made for, or one that cannot be told apart from it.
    Same,
    /// The profile did not know its file's birth time and takes this one.
    Adopted,
    /// Another file, born after the profile's file was deleted, that reuses its
    /// device and inode number: the profile says nothing about it.
    Replaced,
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
            symbols: match config.symbols {
                SymbolMode::Calls => None,
                // validate() checked the settings; a bad one falls back to plain calls.
                SymbolMode::Args => SymbolTable::new(config.symbol_config()).ok(),
            },
            rates: config
                .rate_limit
                .then(|| LearnedRates::new(config.rate_window_ns())),
            rate_state: RateState::default(),
            born: None,
        }
    }

    /// The profile for a file born at `born` (see [`PhProfile::check_file`]).
    pub fn with_born(mut self, born: Option<u64>) -> Self {
        self.born = born;
        self
    }

    /// The birth time of the profile's file, if known.
    pub fn born(&self) -> Option<u64> {
        self.born
    }

    /// Whether this profile belongs to the file born at `born` that a task runs now.
    /// A profile is keyed by (device, inode), and a file system gives a deleted file's
    /// inode number to a later file: a program installed in its place would inherit a
    /// normal profile it never trained, and be delayed for calls that are its own. The
    /// birth time tells the two apart. A profile that does not know its file's birth
    /// time (made before it was recorded, or seeded from the daemon) adopts the first
    /// one seen; when the file system gives none, nothing can be told.
    pub fn check_file(&mut self, born: Option<u64>) -> FileMatch {
        match (self.born, born) {
            (Some(mine), Some(seen)) if mine != seen => FileMatch::Replaced,
            (None, Some(seen)) => {
                self.born = Some(seen);
                self.dirty = true;
                FileMatch::Adopted
            }
            _ => FileMatch::Same,
        }
    }

    /// The symbol table of an argument-aware profile.
    pub fn symbol_table(&self) -> Option<&SymbolTable> {
        self.symbols.as_ref()
    }

    /// The rates learned, if any.
    pub fn learned_rates(&self) -> Option<&LearnedRates> {
        self.rates.as_ref()
    }

    /// The symbol of `call` with its argument in this profile's alphabet: the plain
    /// number for a plain profile; for an argument-aware one, its class's symbol,
    /// learned while the profile is not normal and the task trains, else looked up
    /// (a class never learned is a foreign symbol, [`crate::symbols::UNSEEN`]).
    pub fn symbol_of(&mut self, task: &PhTask, call: u32, arg: Option<&Arg>) -> u32 {
        let learning = self.learns_from(task);
        match &mut self.symbols {
            None => call,
            Some(t) if learning => {
                let before = t.classes().len();
                let s = t.learn(call, arg);
                if t.classes().len() != before {
                    self.dirty = true;
                }
                s
            }
            Some(t) => t.symbol(call, arg),
        }
    }

    /// Whether what `task` does now may be learned: the profile is not normal and the
    /// task is not in a tolerized episode (pH's guard against learning an attack, for
    /// argument classes and rate peaks as for pairs).
    fn learns_from(&self, task: &PhTask) -> bool {
        self.state != ProfileState::Normal && !task.tolerized
    }

    /// Whether the profile reads arguments (argument-aware alphabet).
    pub fn wants_args(&self) -> bool {
        self.symbols.is_some()
    }

    /// Applies the rate rule ([`crate::rate`]) to `task`'s call of `kind` at `now_ns`:
    /// while the profile is not normal, learns the peak (when `rate_limit` is on), but
    /// not from a task in a tolerized episode: an attack that pushed the profile back
    /// to training would otherwise raise its own limit; once normal, a call beyond the
    /// limit is delayed (enforce) or reported (detect). Returns the call's delay, ns
    /// (0: none).
    pub fn on_rate(
        &mut self,
        task: &PhTask,
        kind: RateKind,
        now_ns: u64,
        config: &PhConfig,
        emit: &mut dyn FnMut(PhEvent),
    ) -> u64 {
        if !config.rate_limit {
            return 0;
        }
        if self.state != ProfileState::Normal {
            if !self.learns_from(task) {
                return 0;
            }
            let learned = self
                .rates
                .get_or_insert_with(|| LearnedRates::new(config.rate_window_ns()));
            let window = learned.window_ns;
            let count = self.rate_state.meter(kind).observe(now_ns, window);
            if learned.record(kind, count) {
                self.dirty = true;
            }
            return 0;
        }
        let Some(learned) = self.rates else {
            return 0;
        };
        let limit = learned.limit(kind, config.rate_margin);
        match config.mode {
            Mode::Learn => 0,
            Mode::Detect => {
                let count = self
                    .rate_state
                    .meter(kind)
                    .observe(now_ns, learned.window_ns);
                if count > limit {
                    emit(PhEvent::RateExceeded { kind, limit, count });
                }
                0
            }
            Mode::Enforce => {
                self.rate_releases(now_ns, emit);
                let slot = self
                    .rate_state
                    .limiter(kind)
                    .admit(now_ns, limit, learned.window_ns);
                if slot.delay_ns > 0 {
                    emit(PhEvent::RateQueued {
                        kind,
                        limit,
                        queue: slot.queue,
                        delay_ns: slot.delay_ns,
                    });
                }
                if self.rate_state.alarm(kind, slot.queue, RATE_ALARM_QUEUE) {
                    emit(PhEvent::RateAlarm {
                        kind,
                        limit,
                        queue: slot.queue,
                    });
                }
                slot.delay_ns
            }
        }
    }

    /// Gives back the queue place booked for a call of `kind` released at
    /// `release_ns` that will not run then (its task died, or its wait was
    /// interrupted and the call comes again): [`crate::rate::Limiter::cancel`].
    pub fn cancel_rate(&mut self, kind: RateKind, release_ns: u64, now_ns: u64) -> bool {
        self.rate_state.cancel(kind, release_ns, now_ns)
    }

    /// Reports the queued calls released by `now_ns`; returns how many still wait.
    pub fn rate_releases(&mut self, now_ns: u64, emit: &mut dyn FnMut(PhEvent)) -> usize {
        for kind in RateKind::ALL {
            let l = self.rate_state.limiter(kind);
            let released = l.release_due(now_ns);
            if released > 0 {
                let queue = l.queued();
                emit(PhEvent::RateRelease {
                    kind,
                    released,
                    queue,
                });
            }
        }
        self.rate_state.queued()
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
                    self.anomalies = self.anomalies.saturating_add(1);
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

    #[test]
    fn an_argument_aware_profile_sees_the_same_calls_on_another_file() {
        use crate::symbols::{flags, Arg};
        let c = PhConfig {
            symbols: SymbolMode::Args,
            ..config()
        };
        let open = |p: &str| Arg::Path {
            path: p.as_bytes().to_vec(),
            flags: 0,
        };
        // open, read, close of a note; the attack opens /etc/passwd with the same calls.
        let session = |p: &mut PhProfile, file: &str| -> Vec<Step> {
            let mut task = PhTask::new(p);
            let arg = open(file);
            [(257u32, Some(&arg)), (0, None), (3, None), (231, None)]
                .iter()
                .map(|&(call, a)| {
                    let s = p.symbol_of(&task, call, a);
                    p.on_syscall(&mut task, s, false, 0, &c, &mut |_| {})
                })
                .collect()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        session(&mut p, "/srv/notes/a.txt");
        session(&mut p, "/srv/notes/b.txt");
        assert_eq!(p.symbol_table().unwrap().classes().len(), 1);
        p.normalize(&mut |_| {});
        assert!(session(&mut p, "/srv/notes/c.txt")
            .iter()
            .all(|s| s.misses == 0));
        let attack = session(&mut p, "/etc/passwd");
        // The foreign open shows in the pairs of the calls after it.
        assert!(attack.iter().any(|s| s.misses > 0), "{attack:?}");
        // Normal profiles do not learn classes: the table is unchanged.
        assert_eq!(p.symbol_table().unwrap().classes().len(), 1);
        // The table survives a save, and plain calls are not affected by it.
        let back = PhProfile::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(back.symbol_table(), p.symbol_table());
        // The daemon's view folds classes back to calls: the plain pairs.
        let mut plain_twin = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &config());
        let mut t = PhTask::new(&plain_twin);
        for call in [257, 0, 3, 231] {
            plain_twin.on_syscall(&mut t, call, false, 0, &config(), &mut |_| {});
        }
        plain_twin.normalize(&mut |_| {});
        let mut got = p.raw_pairs();
        got.sort_unstable();
        let mut want = plain_twin.raw_pairs();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(p.calls(), vec![0, 3, 231, 257]);
        let plain = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &config());
        assert!(plain.symbol_table().is_none());
        let _ = flags::CREATE;
    }

    #[test]
    fn rates_learned_in_training_limit_the_normal_profile() {
        let c = PhConfig {
            rate_limit: true,
            rate_margin: 2.0,
            ..config()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        let t = PhTask::new(&p);
        let mut none = |_| {};
        // Training: bursts of 5 forks 10 ms apart, one burst a second.
        for s in 0..3 {
            for i in 0..5 {
                assert_eq!(
                    p.on_rate(&t, RateKind::Fork, s * SEC + i * SEC / 100, &c, &mut none),
                    0
                );
            }
        }
        assert_eq!(p.learned_rates().unwrap().fork_peak, 5);
        p.normalize(&mut |_| {});
        // At the trained rate, nothing waits.
        for s in 10..13 {
            for i in 0..5 {
                assert_eq!(
                    p.on_rate(&t, RateKind::Fork, s * SEC + i * SEC / 100, &c, &mut none),
                    0
                );
            }
        }
        // A storm of 30 forks in 30 ms: 10 run, the rest leave every 100 ms.
        let mut events = vec![];
        let delays: Vec<u64> = (0..30)
            .map(|i| {
                p.on_rate(
                    &t,
                    RateKind::Fork,
                    20 * SEC + i * SEC / 1000,
                    &c,
                    &mut |e| events.push(e),
                )
            })
            .collect();
        assert!(delays[..10].iter().all(|&d| d == 0), "{delays:?}");
        assert_eq!(20 * SEC + 10 * SEC / 1000 + delays[10], 21 * SEC);
        assert_eq!(delays[29] + 29 * SEC / 1000, SEC + 19 * SEC / 10);
        assert!(events
            .iter()
            .any(|e| matches!(e, PhEvent::RateAlarm { queue: 5, .. })));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, PhEvent::RateQueued { .. }))
                .count(),
            20
        );
        let mut released = vec![];
        assert_eq!(
            p.rate_releases(21 * SEC + SEC / 2, &mut |e| released.push(e)),
            14
        );
        assert_eq!(
            released,
            vec![PhEvent::RateRelease {
                kind: RateKind::Fork,
                released: 6,
                queue: 14
            }]
        );
        // File creations have their own limit: nothing created in training, so 1 a
        // second.
        assert_eq!(p.on_rate(&t, RateKind::Create, 30 * SEC, &c, &mut none), 0);
        assert_eq!(
            p.on_rate(&t, RateKind::Create, 30 * SEC, &c, &mut none),
            SEC
        );

        // Detect reports the calls beyond the limit and holds none.
        let d = PhConfig {
            mode: Mode::Detect,
            ..c.clone()
        };
        let mut q = PhProfile::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(q.learned_rates(), p.learned_rates());
        let mut events = vec![];
        let held: u64 = (0..12)
            .map(|i| {
                q.on_rate(&t, RateKind::Fork, 40 * SEC + i, &d, &mut |e| {
                    events.push(e)
                })
            })
            .sum();
        assert_eq!(held, 0);
        assert_eq!(
            events,
            vec![
                PhEvent::RateExceeded {
                    kind: RateKind::Fork,
                    limit: 10,
                    count: 11
                },
                PhEvent::RateExceeded {
                    kind: RateKind::Fork,
                    limit: 10,
                    count: 12
                }
            ]
        );
        // Without rate_limit, or without rates learned (an older profile), no limit.
        let off = config();
        assert_eq!(q.on_rate(&t, RateKind::Fork, 50 * SEC, &off, &mut none), 0);
        let mut old = normal_profile(&config());
        assert!(old.learned_rates().is_none());
        assert!((0..100).all(|i| old.on_rate(&t, RateKind::Fork, 60 * SEC + i, &c, &mut none) == 0));
    }

    #[test]
    fn a_tolerized_task_does_not_raise_the_rate_peak() {
        let c = PhConfig {
            rate_limit: true,
            ..config()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        let calm = PhTask::new(&p);
        for i in 0..3 {
            p.on_rate(&calm, RateKind::Fork, i * SEC, &c, &mut |_| {});
        }
        assert_eq!(p.learned_rates().unwrap().fork_peak, 1);
        // An attack that pushed the profile back to training storms in a tolerized
        // episode: its forks are not learned, so the old limit stands.
        let mut attacker = PhTask::new(&p);
        attacker.tolerized = true;
        for i in 0..50 {
            assert_eq!(
                p.on_rate(&attacker, RateKind::Fork, 10 * SEC + i, &c, &mut |_| {}),
                0
            );
        }
        assert_eq!(p.learned_rates().unwrap().fork_peak, 1);
    }

    #[test]
    fn plain_profiles_stay_frame_version_1_and_extras_are_version_2() {
        let p = normal_profile(&config());
        assert_eq!(&p.to_bytes()[8..10], &1u16.to_le_bytes());
        let c = PhConfig {
            rate_limit: true,
            ..config()
        };
        let q = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/bin/x", &c);
        let bytes = q.to_bytes();
        assert_eq!(&bytes[8..10], &2u16.to_le_bytes());
        // A damaged extras section is an error, never a panic.
        let payload_end = bytes.len();
        let mut cut = bytes[..payload_end - 1].to_vec();
        let len = (cut.len() - 24) as u64;
        cut[16..24].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&cut[24..]);
        cut[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(PhProfile::from_bytes(&cut).is_err());
    }

    #[test]
    fn a_file_born_at_another_time_is_another_executable() {
        let mut p = normal_profile(&config());
        // Unknown on both sides, or on the file's: nothing can be told.
        assert_eq!(p.check_file(None), FileMatch::Same);
        // The first birth time seen is adopted (and must be saved).
        p.dirty = false;
        assert_eq!(p.check_file(Some(10)), FileMatch::Adopted);
        assert!(p.dirty);
        assert_eq!(p.born(), Some(10));
        assert_eq!(p.check_file(Some(10)), FileMatch::Same);
        assert_eq!(p.check_file(None), FileMatch::Same);
        // A later file under the same key is not this profile's.
        assert_eq!(p.check_file(Some(11)), FileMatch::Replaced);
        assert_eq!(p.born(), Some(10));
        // Two profiles of different files under one key do not merge.
        let other = normal_profile(&config()).with_born(Some(11));
        assert!(p.merged_with(&other).is_none());
        let same = normal_profile(&config()).with_born(Some(10));
        assert_eq!(p.merged_with(&same).unwrap().born(), Some(10));
        let unknown = normal_profile(&config());
        assert_eq!(unknown.merged_with(&p).unwrap().born(), Some(10));
    }
}
