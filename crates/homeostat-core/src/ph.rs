//! pH, process homeostasis (Somayaji & Forrest 2000): per-executable lookahead-pair
//! profiles that learn by themselves, and a graduated response to anomalies.
//!
//! This module is the whole policy, free of any OS: a front end (the seccomp launcher,
//! the eBPF daemon, a replayed recording) calls [`PhProfile::on_syscall`] before each
//! system call with the task's state and the time, and gets back what to do with the
//! call (continue, delay, refuse) plus the events to report. Time is an argument, so
//! the state machine is tested by replay with a fake clock.
//!
//! The life of a profile, with pH's defaults:
//! - **training**: every call trains the profile's pairs. `train_count` counts calls,
//!   `last_mod_count` the calls since the profile last changed. When
//!   `train_count * normal_factor_den > normal_count * normal_factor` (128/32: the
//!   profile has gone unchanged for three quarters of its training life), where
//!   `normal_count = train_count - last_mod_count`, it **freezes**.
//! - **frozen**: still training; any new pair unfreezes it. After `normal_wait`
//!   frozen, it becomes **normal** and the training pairs are copied to testing.
//! - **normal**: every call is also tested; a task's locality frame counts anomalies
//!   among its last `locality` calls (LFC). An LFC above `tolerize_limit` wipes the
//!   training data, and the task stops training until its LFC is back to 0, so the
//!   attack is not learned. Other anomalies count against the profile; more than
//!   `anomaly_limit` send it back to training. (pH counted every anomaly; then a dense
//!   attack would exceed the limit and switch off its own response, which we saw in
//!   the demo, so anomalies inside a tolerized episode do not count.)
//! - **response** (mode enforce, profile normal): a call of a task with LFC > 0 is
//!   delayed `delay_factor * 2^LFC` (capped at `max_delay`); an execve while
//!   LFC >= `suspend_execve` is refused with EPERM.

use serde::{Deserialize, Serialize};

use crate::locality::LocalityFrame;
use crate::model::{Cursor, Model, ModelKind, ModelSpec};
use crate::pairs::Pairs;
use crate::profile::{frame, unframe, ProfileError};

mod merge;

/// What a monitor does: only learn, also detect, or also respond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Train profiles; never test, never respond.
    Learn,
    /// Train, and once a profile is normal test and report anomalies; no response.
    Detect,
    /// What pH did: train, test once normal, delay and refuse execve.
    #[default]
    Enforce,
}

/// pH's parameters. Defaults are pH's / ebpH's, with units chosen for today's clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhConfig {
    /// Lookahead window (current call plus `window - 1` predecessors).
    pub window: usize,
    /// Locality frame size, in calls.
    pub locality: usize,
    /// Freeze when train_count / normal_count exceeds normal_factor / normal_factor_den.
    pub normal_factor: u64,
    /// See `normal_factor`.
    pub normal_factor_den: u64,
    /// Time frozen before a profile becomes normal, in seconds (pH: 7 days).
    pub normal_wait_secs: f64,
    /// Anomalies a normal profile tolerates before it returns to training.
    pub anomaly_limit: u64,
    /// An LFC above this wipes the profile's training data.
    pub tolerize_limit: u32,
    /// Base delay in milliseconds: a call is delayed `delay_factor * 2^LFC`. pH used 4
    /// jiffies; 4 ms is that at HZ = 1000.
    pub delay_factor_ms: f64,
    /// Cap on one call's delay, in milliseconds (2^LFC grows without bound).
    pub max_delay_ms: f64,
    /// An execve while the LFC is at least this is refused.
    pub suspend_execve: u32,
    /// Learn, detect or enforce.
    pub mode: Mode,
}

impl Default for PhConfig {
    fn default() -> Self {
        PhConfig {
            window: 9,
            locality: 128,
            normal_factor: 128,
            normal_factor_den: 32,
            normal_wait_secs: 7.0 * 24.0 * 3600.0,
            anomaly_limit: 30,
            tolerize_limit: 12,
            delay_factor_ms: 4.0,
            max_delay_ms: 2000.0,
            suspend_execve: 10,
            mode: Mode::Enforce,
        }
    }
}

impl PhConfig {
    /// Checks ranges, so a bad config file is an error and not a panic.
    pub fn validate(&self) -> Result<(), String> {
        self.spec().validate().map_err(|e| e.to_string())?;
        if self.normal_factor_den == 0 || self.normal_factor == 0 {
            return Err("normal_factor and normal_factor_den must be positive".into());
        }
        for (name, v) in [
            ("normal_wait_secs", self.normal_wait_secs),
            ("delay_factor_ms", self.delay_factor_ms),
            ("max_delay_ms", self.max_delay_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a finite number >= 0, not {v}"));
            }
        }
        Ok(())
    }

    /// The lookahead-pairs model spec these parameters describe.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec::new(ModelKind::Pairs)
            .with_window(self.window)
            .with_locality(self.locality)
    }

    /// The delay for a call of a task at `lfc`, in nanoseconds (0 when lfc is 0).
    pub fn delay_ns(&self, lfc: u32) -> u64 {
        if lfc == 0 {
            return 0;
        }
        let ms = self.delay_factor_ms * 2f64.powi(lfc.min(1023) as i32);
        (ms.min(self.max_delay_ms) * 1e6) as u64
    }

    fn normal_wait_ns(&self) -> u64 {
        (self.normal_wait_secs * 1e9) as u64
    }
}

/// Identity of an executable: pH keys profiles by file, not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExeKey {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
}

impl std::str::FromStr for ExeKey {
    type Err = String;
    /// Parses the `<dev>-<ino>` hex form that `Display` prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (d, i) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a profile key (<dev>-<ino> in hex)"))?;
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|e| format!("{s:?}: {e}"));
        Ok(ExeKey {
            dev: hex(d)?,
            ino: hex(i)?,
        })
    }
}

impl std::fmt::Display for ExeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.dev, self.ino)
    }
}

/// Where a profile is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    /// Learning; not tested.
    Training,
    /// Stable, waiting out `normal_wait`; still learning.
    Frozen,
    /// Tested; anomalies get a response.
    Normal,
}

impl std::fmt::Display for ProfileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProfileState::Training => "training",
            ProfileState::Frozen => "frozen",
            ProfileState::Normal => "normal",
        })
    }
}

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
    model: Pairs,
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
        if self.state == ProfileState::Frozen && now_ns >= self.normal_time_ns {
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
        self.train_count += 1;
        // Counters are part of the profile too: a restart must not lose progress.
        self.dirty = true;
        if self.model.train_call(&mut task.train, call) {
            self.last_mod_count = 0;
            if self.state == ProfileState::Frozen {
                self.set_state(ProfileState::Training, "new behaviour", emit);
            }
            return;
        }
        self.last_mod_count += 1;
        if self.state != ProfileState::Training {
            return;
        }
        let normal_count = self.train_count - self.last_mod_count;
        if normal_count > 0
            && u128::from(self.train_count) * u128::from(config.normal_factor_den)
                > u128::from(normal_count) * u128::from(config.normal_factor)
        {
            self.normal_time_ns = now_ns.saturating_add(config.normal_wait_ns());
            self.set_state(ProfileState::Frozen, "stable", emit);
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

    /// A profile made from pairs over raw call numbers (`(cur, prev, mask)`, bit d-1 of
    /// `mask` = prev came d calls before cur), e.g. learnt by the daemon's kernel side:
    /// its training and testing data are both these pairs. `None` if a mask has bits
    /// beyond the configured window or there are more than 4095 distinct calls.
    pub fn from_raw_pairs(
        key: ExeKey,
        path: impl Into<String>,
        config: &PhConfig,
        state: ProfileState,
        pairs: &[(u32, u32, u32)],
    ) -> Option<Self> {
        let mut symbols: Vec<u32> = pairs.iter().flat_map(|&(c, p, _)| [c, p]).collect();
        symbols.sort_unstable();
        symbols.dedup();
        if symbols.len() > 4095 {
            return None;
        }
        let id = |raw: u32| symbols.binary_search(&raw).map(|i| i as u16 + 1).ok();
        let entries: Vec<(u16, u16, u32)> = pairs
            .iter()
            .filter(|&&(_, _, m)| m != 0)
            .map(|&(c, p, m)| Some((id(c)?, id(p)?, m)))
            .collect::<Option<_>>()?;
        let model = Pairs::from_parts(config.spec(), &symbols, &entries, 0)?;
        Some(PhProfile {
            key,
            path: path.into(),
            state,
            model,
            train_count: 0,
            last_mod_count: 0,
            normal_time_ns: 0,
            anomalies: 0,
            dirty: true,
        })
    }

    /// The pairs the profile acts on, over raw call numbers (`(cur, prev, mask)`): the
    /// testing data once normal, else the training data.
    pub fn raw_pairs(&self) -> Vec<(u32, u32, u32)> {
        let entries = if self.state == ProfileState::Normal {
            self.model.test_entries()
        } else {
            self.model.entries()
        };
        let a = self.model.alphabet();
        entries
            .into_iter()
            .filter_map(|(c, p, m)| Some((a.raw(c)?, a.raw(p)?, m)))
            .collect()
    }

    /// The profile as file contents (versioned, checksummed; write atomically).
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = StoredPhProfile {
            key: self.key,
            path: self.path.clone(),
            state: self.state,
            spec: self.model.spec().clone(),
            symbols: self.model.alphabet().symbols().to_vec(),
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
            normal_time_ns: self.normal_time_ns,
            anomalies: self.anomalies,
            calls: self.model.trained_calls(),
            train: self.model.entries(),
            test: self.model.test_entries(),
        };
        let payload =
            postcard::to_allocvec(&stored).expect("serialising plain data into a Vec cannot fail");
        frame(PH_MAGIC, &payload)
    }

    /// Parses and validates file contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProfileError> {
        let payload = unframe(PH_MAGIC, bytes)?;
        let (s, rest): (StoredPhProfile, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|e| ProfileError::Corrupt(format!("payload does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(ProfileError::TrailingData(rest.len() as u64));
        }
        s.spec
            .validate()
            .map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        if s.spec.kind != ModelKind::Pairs || s.symbols.len() > 4096 {
            return Err(ProfileError::Corrupt(
                "not a lookahead-pairs profile".into(),
            ));
        }
        let bad = || ProfileError::Corrupt("invalid pair entry".into());
        let mut model = Pairs::from_parts(s.spec, &s.symbols, &s.train, s.calls).ok_or_else(bad)?;
        model.restore_test(&s.test).ok_or_else(bad)?;
        Ok(PhProfile {
            key: s.key,
            path: s.path,
            state: s.state,
            model,
            train_count: s.train_count,
            last_mod_count: s.last_mod_count.min(s.train_count),
            normal_time_ns: s.normal_time_ns,
            anomalies: s.anomalies,
            dirty: false,
        })
    }
}

/// First bytes of a pH profile file.
pub const PH_MAGIC: &[u8; 8] = b"HMSTPHPF";

#[derive(Debug, Serialize, Deserialize)]
struct StoredPhProfile {
    key: ExeKey,
    path: String,
    state: ProfileState,
    spec: ModelSpec,
    symbols: Vec<u32>,
    train_count: u64,
    last_mod_count: u64,
    normal_time_ns: u64,
    anomalies: u64,
    calls: u64,
    train: Vec<(u16, u16, u32)>,
    test: Vec<(u16, u16, u32)>,
}

#[cfg(test)]
mod raw_pair_tests {
    use super::*;

    #[test]
    fn raw_pairs_round_trip_and_test_like_the_original() {
        let config = PhConfig::default();
        let key = ExeKey { dev: 1, ino: 2 };
        let pairs = vec![(3, 5, 0b1), (3, 7, 0b10), (9, 3, 0b101)];
        let p =
            PhProfile::from_raw_pairs(key, "/x", &config, ProfileState::Normal, &pairs).unwrap();
        let mut got = p.raw_pairs();
        got.sort_unstable();
        assert_eq!(got, pairs);
        assert_eq!(p.pairs(), 4);
        // A mask beyond the window (9: distances 1..=8) is refused.
        assert!(PhProfile::from_raw_pairs(
            key,
            "/x",
            &config,
            ProfileState::Training,
            &[(1, 2, 1 << 8)]
        )
        .is_none());
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
