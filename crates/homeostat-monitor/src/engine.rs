//! The monitor's engine: from "task T of executable E is about to make call N" to a
//! verdict, keeping one pH profile per executable and pH state per task.
//!
//! It knows nothing about how calls are captured: the seccomp launcher, a ptrace
//! attach or the eBPF daemon all feed [`Engine::on_syscall`] and apply the verdict
//! with their own actuator. Events go to a sink as [`EventRecord`]s.

use std::collections::HashMap;
use std::sync::Arc;

use homeostat_core::ph::{
    ExeKey, FileMatch, PhConfig, PhEvent, PhProfile, PhTask, ProfileState, Verdict,
};
use homeostat_core::rate::{self, RateKind};
use homeostat_core::symbols::{hides_later_calls, Arg, UNSEEN};
use homeostat_syscalls::Arch;
use serde::{Deserialize, Serialize};

use crate::store::{ProfileStore, StoreError};

/// Profile call numbers: x86_64 numbers as they are; i386 numbers offset by this, so a
/// 32-bit program's calls never alias 64-bit ones.
pub const I386_OFFSET: u32 = 0x1_0000;

/// One call about to run.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// Thread id.
    pub tid: i32,
    /// Process id.
    pub pid: i32,
    /// The executable the task runs.
    pub exe: ExeKey,
    /// Its birth time, when known ([`PhProfile::check_file`]).
    pub born: Option<u64>,
    /// Its path.
    pub path: &'a str,
    /// ABI of the call number.
    pub arch: Arch,
    /// Call number in that ABI.
    pub nr: u32,
    /// For a task not seen before: the task it was forked or cloned from. As in pH, a
    /// child inherits its parent's sequence and locality frame, so forking does not
    /// wash an anomaly away.
    pub parent: Option<i32>,
    /// The argument that matters, when it was captured ([`crate::args`]): the class
    /// of argument-aware profiles, and what file-creation limits count.
    pub arg: Option<&'a Arg>,
}

/// The argument of a call of ABI `arch` that pH's argument-aware symbols use: x86_64
/// calls' only (the alphabet's argument classes are x86_64's; an i386 call's
/// argument, captured for its socket and path calls, serves the throttle and the rate
/// limits alone).
/// Live scoring and recordings both take it from here, so a profile trained from a
/// recording matches what live scoring sees.
pub fn symbol_arg(arch: Arch, arg: Option<&Arg>) -> Option<&Arg> {
    arg.filter(|_| arch == Arch::X86_64)
}

/// One reported event, in the JSON-lines schema of docs/events.md.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// What happened: anomaly, delay_start, delay_stop, exec_refused, state_change,
    /// tolerized, profile_created.
    pub event: &'static str,
    /// Process id.
    pub pid: i32,
    /// Thread id.
    pub tid: i32,
    /// Executable path.
    pub exe: Arc<str>,
    /// Profile key (`<dev>-<ino>`, hex).
    pub profile: String,
    /// Profile state after the call.
    pub state: ProfileState,
    /// The call's name (`#<n>` when the table has none).
    pub syscall: String,
    /// The task's LFC after the call.
    pub lfc: u32,
    /// What was done to the call: none, delay, refuse.
    pub action: &'static str,
    /// Event details (missing pairs, delay, state change...).
    #[serde(flatten)]
    pub detail: serde_json::Value,
}

struct Task {
    pid: i32,
    exe: ExeKey,
    path: Arc<str>,
    ph: PhTask,
    delay_ns: u64,
    /// The queue place its last call was given by a rate limit (kind, release time),
    /// given back if the call will not run then (the task dies, or the call comes
    /// again after a signal interrupted its wait).
    rate_booking: Option<(RateKind, u64)>,
}

/// A live task, as `homeostat ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Process id.
    pub pid: i32,
    /// Thread id.
    pub tid: i32,
    /// Executable.
    pub exe: String,
    /// Profile key.
    pub profile: String,
    /// Profile state.
    pub state: ProfileState,
    /// LFC.
    pub lfc: u32,
    /// Delay applied to its last call, ms.
    pub delay_ms: f64,
    /// Anomalies of its profile.
    pub anomalies: u64,
    /// Calls seen.
    pub calls: u64,
    /// Whether the process is under response (the daemon only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<bool>,
}

/// Per-executable profiles and per-task state.
pub struct Engine {
    config: PhConfig,
    profiles: HashMap<ExeKey, PhProfile>,
    tasks: HashMap<i32, Task>,
    store: Option<ProfileStore>,
    sink: Box<dyn FnMut(&EventRecord) + Send>,
    /// Rate-limited calls still queued, all profiles (0: no release to report).
    rate_waiting: usize,
}

impl Engine {
    /// An engine with profiles loaded from `store` (if any); events go to `sink`.
    /// Returns the engine and the profiles that failed to load (already set aside).
    pub fn new(
        config: PhConfig,
        store: Option<ProfileStore>,
        sink: Box<dyn FnMut(&EventRecord) + Send>,
    ) -> (Self, Vec<StoreError>) {
        let (loaded, errors) = match &store {
            Some(s) => s.load_all(),
            None => (vec![], vec![]),
        };
        let profiles = loaded.into_iter().map(|p| (p.key, p)).collect();
        (
            Engine {
                config,
                profiles,
                tasks: HashMap::new(),
                store,
                sink,
                rate_waiting: 0,
            },
            errors,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &PhConfig {
        &self.config
    }

    /// Whether calls must come with their argument: new profiles are argument-aware,
    /// a loaded one is, or rates are limited (file creation is an open's O_CREAT).
    pub fn wants_args(&self) -> bool {
        self.config.symbols == homeostat_core::symbols::SymbolMode::Args
            || self.config.rate_limit
            || self.profiles.values().any(PhProfile::wants_args)
    }

    /// Reports the rate-limited calls released by `now_ns` (events only: the loop's
    /// timers release them).
    pub fn rate_releases(&mut self, now_ns: u64) {
        if self.rate_waiting == 0 {
            return;
        }
        let mut waiting = 0;
        for p in self.profiles.values_mut() {
            let mut events = vec![];
            waiting += p.rate_releases(now_ns, &mut |e| events.push(e));
            for e in events {
                let (name, detail) = describe(&e);
                let rec = EventRecord {
                    ts: now_ns as f64 / 1e9,
                    event: name,
                    pid: 0,
                    tid: 0,
                    exe: Arc::from(p.path.as_str()),
                    profile: p.key.to_string(),
                    state: p.state,
                    syscall: String::new(),
                    lfc: 0,
                    action: "none",
                    detail,
                };
                (self.sink)(&rec);
            }
        }
        self.rate_waiting = waiting;
    }

    /// Gives back the rate-queue place of a task's held call that will not run
    /// (a place whose release time has passed was used: kept).
    fn cancel_booking(&mut self, tid: i32, now_ns: u64) {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return;
        };
        if let Some((kind, at)) = t.rate_booking.take() {
            if let Some(p) = self.profiles.get_mut(&t.exe) {
                if p.cancel_rate(kind, at, now_ns) {
                    self.rate_waiting = self.rate_waiting.saturating_sub(1);
                }
            }
        }
    }

    /// Processes a call before it runs and returns what to do with it.
    pub fn on_syscall(&mut self, c: &Call<'_>, now_ns: u64) -> Verdict {
        // A task's next call: its last one, if it was held, ran or will not.
        self.cancel_booking(c.tid, now_ns);
        self.rate_releases(now_ns);
        let config = &self.config;
        let store = &self.store;
        let profile = self.profiles.entry(c.exe).or_insert_with(|| {
            // An executable the daemon already learnt starts from the daemon's profile.
            let seeded = store.as_ref().and_then(|st| {
                let f = crate::daemon_profile::path_in(st.dir(), c.exe);
                // Learnt from another file, deleted, whose inode number this one
                // reuses ([`PhProfile::check_file`] for run's own profiles).
                if c.born
                    .is_some_and(|b| crate::daemon_profile::written_before(&f, b))
                {
                    return None;
                }
                let d = crate::daemon_profile::DaemonProfile::load(&f).ok()?;
                let mut p = d.to_ph(config)?;
                if config.mode == homeostat_core::ph::Mode::Learn && p.state == ProfileState::Normal
                {
                    p.state = ProfileState::Frozen;
                }
                Some(p)
            });
            let from = if seeded.is_some() { "daemon" } else { "new" };
            let p =
                seeded.unwrap_or_else(|| PhProfile::new(c.exe, c.path, config).with_born(c.born));
            let rec = record(
                now_ns,
                "profile_created",
                c,
                &p,
                0,
                "none",
                serde_json::json!({ "from": from }),
            );
            (self.sink)(&rec);
            p
        });
        if profile.check_file(c.born) == FileMatch::Replaced {
            // The profile's file is gone (no task can run a deleted file whose inode
            // was given to another): its tasks are stale, and the new file starts
            // from nothing. The next save overwrites the old profile's file.
            let rec = record(
                now_ns,
                "profile_evicted",
                c,
                profile,
                0,
                "none",
                serde_json::json!({ "reason": homeostat_core::ph::REPLACED }),
            );
            (self.sink)(&rec);
            *profile = PhProfile::new(c.exe, c.path, config).with_born(c.born);
            let rec = record(
                now_ns,
                "profile_created",
                c,
                profile,
                0,
                "none",
                serde_json::json!({ "from": "new" }),
            );
            (self.sink)(&rec);
            self.tasks.retain(|_, t| t.exe != c.exe);
        }
        let fresh = !matches!(self.tasks.get(&c.tid), Some(t) if t.exe == c.exe);
        if fresh {
            // A new task inherits its parent's state when both run the same program;
            // a task that exec'd a new program starts afresh (pH's fork and execve).
            let inherited = c
                .parent
                .filter(|_| !self.tasks.contains_key(&c.tid))
                .and_then(|p| self.tasks.get(&p))
                .filter(|t| t.exe == c.exe)
                .map(|t| t.ph.clone());
            self.tasks.insert(
                c.tid,
                Task {
                    pid: c.pid,
                    exe: c.exe,
                    path: Arc::from(c.path),
                    ph: inherited.unwrap_or_else(|| PhTask::new(profile)),
                    delay_ns: 0,
                    rate_booking: None,
                },
            );
        }
        let task = self.tasks.get_mut(&c.tid).expect("inserted above");
        let call = match c.arch {
            Arch::X86_64 => c.nr,
            Arch::I386 => I386_OFFSET + c.nr,
        };
        let is_execve = c.arch.is_execve(c.nr);
        let arg = symbol_arg(c.arch, c.arg);
        let symbol = profile.symbol_of(&task.ph, call, arg);
        let mut pending: Vec<PhEvent> = vec![];
        let mut step =
            profile.on_syscall(&mut task.ph, symbol, is_execve, now_ns, config, &mut |e| {
                pending.push(e)
            });
        // Either ABI: an i386 fork or creation counts as an x86_64 one (their names
        // and an open's flags agree), so a 32-bit storm is held too.
        let name = c.arch.name(c.nr);
        let kind = match name {
            Some(n) if config.rate_limit => rate::kind_of(n, c.arg),
            _ => None,
        };
        if let Some(kind) = kind {
            let held = profile.on_rate(&task.ph, kind, now_ns, config, &mut |e| pending.push(e));
            if held > 0 {
                self.rate_waiting += 1;
                task.rate_booking = Some((kind, now_ns.saturating_add(held)));
                step.verdict = match step.verdict {
                    Verdict::Refuse => Verdict::Refuse,
                    Verdict::Continue => Verdict::Delay(held),
                    Verdict::Delay(d) => Verdict::Delay(d.max(held)),
                };
            }
        }
        // io_uring would let the program create files out of the limits' sight
        // (symbols::hides_later_calls): with the limits on, it may not use it.
        let hidden = config.rate_limit && name.is_some_and(hides_later_calls);
        if hidden {
            step.verdict = Verdict::Refuse;
        }
        task.delay_ns = match step.verdict {
            Verdict::Delay(ns) => ns,
            _ => 0,
        };
        let action = match step.verdict {
            Verdict::Continue => "none",
            Verdict::Delay(_) => "delay",
            Verdict::Refuse => "refuse",
        };
        for e in pending {
            let (name, mut detail) = describe(&e);
            if let (PhEvent::Anomaly { .. }, Some(t)) = (&e, profile.symbol_table()) {
                // Which (call, class) was foreign, for argument-aware profiles.
                let class = match t.describe(symbol) {
                    Some((_, class)) => class.to_string(),
                    None if symbol == UNSEEN => "unseen class".to_string(),
                    None => String::new(),
                };
                if !class.is_empty() {
                    detail["class"] = class.into();
                }
            }
            let rec = record(now_ns, name, c, profile, step.lfc, action, detail);
            (self.sink)(&rec);
        }
        if hidden {
            let detail = serde_json::json!({ "errno": "EPERM", "by": "rate_limit" });
            let rec = record(
                now_ns,
                "io_uring_refused",
                c,
                profile,
                step.lfc,
                action,
                detail,
            );
            (self.sink)(&rec);
        }
        step.verdict
    }

    /// A task is gone (exit) at `now_ns`; forget its state and give back a queue
    /// place its held call will not use.
    pub fn on_task_exit(&mut self, tid: i32, now_ns: u64) {
        self.cancel_booking(tid, now_ns);
        self.tasks.remove(&tid);
    }

    /// Forgets every task of process `pid` (exit_group), as [`Self::on_task_exit`].
    pub fn on_process_exit(&mut self, pid: i32, now_ns: u64) {
        let tids: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.pid == pid)
            .map(|(&tid, _)| tid)
            .collect();
        for tid in tids {
            self.on_task_exit(tid, now_ns);
        }
    }

    /// Saves every profile changed since its last save; returns the failures.
    pub fn save(&mut self) -> Vec<StoreError> {
        let Some(store) = &self.store else {
            return vec![];
        };
        let mut errors = vec![];
        for p in self.profiles.values_mut().filter(|p| p.dirty) {
            match store.save(p) {
                Ok(()) => p.dirty = false,
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Live tasks, sorted by pid and tid.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut v: Vec<TaskInfo> = self
            .tasks
            .iter()
            .map(|(&tid, t)| {
                let p = &self.profiles[&t.exe];
                TaskInfo {
                    pid: t.pid,
                    tid,
                    exe: t.path.to_string(),
                    profile: t.exe.to_string(),
                    state: p.state,
                    lfc: t.ph.lfc(),
                    delay_ms: t.delay_ns as f64 / 1e6,
                    anomalies: p.anomalies,
                    calls: t.ph.calls(),
                    response: None,
                }
            })
            .collect();
        v.sort_by_key(|t| (t.pid, t.tid));
        v
    }

    /// The profiles in memory.
    pub fn profiles(&self) -> impl Iterator<Item = &PhProfile> {
        self.profiles.values()
    }

    /// A profile by key, for admin commands.
    pub fn profile_mut(&mut self, key: ExeKey) -> Option<&mut PhProfile> {
        self.profiles.get_mut(&key)
    }

    /// Drops a profile (admin "reset"): it starts again from nothing.
    pub fn reset(&mut self, key: ExeKey) -> Result<bool, StoreError> {
        if let Some(s) = &self.store {
            s.remove(key)?;
        }
        self.tasks.retain(|_, t| t.exe != key);
        Ok(self.profiles.remove(&key).is_some())
    }
}

fn describe(e: &PhEvent) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    match e {
        PhEvent::Anomaly { misses, .. } => ("anomaly", json!({ "misses": misses })),
        PhEvent::DelayStart { delay_ns, .. } => {
            ("delay_start", json!({ "delay_ms": *delay_ns as f64 / 1e6 }))
        }
        PhEvent::DelayStop => ("delay_stop", json!({})),
        PhEvent::ExecRefused { .. } => ("exec_refused", json!({ "errno": "EPERM" })),
        PhEvent::StateChange { from, to, reason } => (
            "state_change",
            json!({ "from": from, "to": to, "reason": reason }),
        ),
        PhEvent::Tolerized { .. } => ("tolerized", json!({})),
        PhEvent::RateQueued {
            kind,
            limit,
            queue,
            delay_ns,
        } => (
            "rate_queued",
            json!({ "kind": kind, "limit": limit, "queue": queue,
                    "delay_ms": *delay_ns as f64 / 1e6 }),
        ),
        PhEvent::RateRelease {
            kind,
            released,
            queue,
        } => (
            "rate_release",
            json!({ "kind": kind, "released": released, "queue": queue }),
        ),
        PhEvent::RateAlarm { kind, limit, queue } => (
            "rate_alarm",
            json!({ "kind": kind, "limit": limit, "queue": queue }),
        ),
        PhEvent::RateExceeded { kind, limit, count } => (
            "rate_exceeded",
            json!({ "kind": kind, "limit": limit, "count": count }),
        ),
    }
}

fn record(
    now_ns: u64,
    event: &'static str,
    c: &Call<'_>,
    p: &PhProfile,
    lfc: u32,
    action: &'static str,
    detail: serde_json::Value,
) -> EventRecord {
    EventRecord {
        ts: now_ns as f64 / 1e9,
        event,
        pid: c.pid,
        tid: c.tid,
        exe: Arc::from(c.path),
        profile: p.key.to_string(),
        state: p.state,
        syscall: c.arch.display(c.nr).into_owned(),
        lfc,
        action,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn engine(
        config: PhConfig,
        store: Option<ProfileStore>,
    ) -> (Engine, Arc<Mutex<Vec<EventRecord>>>) {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let (e, errors) = Engine::new(
            config,
            store,
            Box::new(move |r| s.lock().unwrap().push(r.clone())),
        );
        assert!(errors.is_empty());
        (e, seen)
    }

    fn feed(e: &mut Engine, tid: i32, exe: ExeKey, calls: &[u32], now: u64) -> Vec<Verdict> {
        calls
            .iter()
            .map(|&nr| {
                e.on_syscall(
                    &Call {
                        tid,
                        pid: tid,
                        exe,
                        born: None,
                        path: "/usr/bin/demo",
                        arch: Arch::X86_64,
                        nr,
                        parent: None,
                        arg: None,
                    },
                    now,
                )
            })
            .collect()
    }

    /// A held call that will not run gives its rate-queue place back: its task's
    /// exit, or its next call (the same call again after a signal), cancels it, so
    /// later calls do not queue behind calls that never ran.
    #[test]
    fn a_dead_tasks_rate_queue_place_is_given_back() {
        const S: u64 = 1_000_000_000;
        let config = PhConfig {
            normal_wait_secs: 0.0,
            rate_limit: true,
            ..PhConfig::default()
        };
        let (mut e, _) = engine(config, None);
        let exe = ExeKey { dev: 1, ino: 8 };
        const FORK: u32 = 57;
        // Training: 30 forks a second at most (limit 60 a second once normal).
        for tid in 100..110 {
            feed(&mut e, tid, exe, &[0, FORK].repeat(30), tid as u64 * 10 * S);
            e.on_task_exit(tid, tid as u64 * 10 * S);
        }
        feed(&mut e, 200, exe, &[0], 2000 * S);
        assert_eq!(e.profiles().next().unwrap().state, ProfileState::Normal);
        let t = 3000 * S;
        // A storm of one fork per task (a held task makes no other call until its
        // release): the forks within the limit run at once, the next ones wait.
        let mut tid = 300;
        let first = loop {
            match feed(&mut e, tid, exe, &[0, FORK], t)[1] {
                Verdict::Continue => tid += 1,
                Verdict::Delay(d) => break d,
                Verdict::Refuse => panic!("fork refused"),
            }
            assert!(tid < 1000, "no fork held");
        };
        assert!(
            tid - 300 >= 30,
            "only {} forks ran before the limit",
            tid - 300
        );
        let held = |e: &mut Engine, tid: i32| match feed(e, tid, exe, &[0, FORK], t)[1] {
            Verdict::Delay(d) => d,
            other => panic!("fork of {tid} not held: {other:?}"),
        };
        let second = held(&mut e, tid + 1);
        assert!(second > first, "{first} {second}");
        // The second one's task dies before its release: the next fork takes its
        // place (or an earlier one the window allows), not one after it.
        e.on_task_exit(tid + 1, t + 1);
        let third = held(&mut e, tid + 2);
        assert!(third <= second, "{third} after a dead task's {second}");
        // Its call comes again (a signal interrupted the wait): one place, not two.
        assert_eq!(held(&mut e, tid + 2), third);
        assert!(held(&mut e, tid + 3) > third);
    }

    #[test]
    fn profiles_per_executable_events_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        let config = PhConfig {
            normal_wait_secs: 0.0,
            ..PhConfig::default()
        };
        let (mut e, seen) = engine(config.clone(), Some(store.clone()));
        let exe = ExeKey { dev: 1, ino: 7 };
        let normal: Vec<u32> = [0u32, 1].repeat(30);
        for tid in 100..110 {
            feed(&mut e, tid, exe, &normal, 1);
            e.on_task_exit(tid, 0);
        }
        // Stable (frozen) with normal_wait 0: normal at the next call.
        feed(&mut e, 200, exe, &[0], 2);
        assert_eq!(e.profiles().next().unwrap().state, ProfileState::Normal);
        // A foreign call: anomaly, delay.
        let v = feed(&mut e, 200, exe, &[57, 57, 59], 3);
        assert!(matches!(v[0], Verdict::Delay(_)), "{v:?}");
        let events = seen.lock().unwrap();
        let kinds: Vec<&str> = events.iter().map(|r| r.event).collect();
        assert_eq!(kinds[0], "profile_created");
        assert!(kinds.contains(&"anomaly") && kinds.contains(&"delay_start"));
        let anomaly = events.iter().find(|r| r.event == "anomaly").unwrap();
        assert_eq!(anomaly.syscall, "fork");
        assert_eq!(anomaly.action, "delay");
        let json = serde_json::to_value(anomaly).unwrap();
        for key in [
            "ts", "event", "pid", "tid", "exe", "profile", "state", "syscall", "lfc", "action",
            "misses",
        ] {
            assert!(!json[key].is_null(), "missing {key} in {json}");
        }
        drop(events);
        assert!(e.save().is_empty());
        assert_eq!(e.tasks().len(), 1);

        // A restarted monitor finds the normal profile.
        let (e2, _) = engine(config, Some(store));
        assert_eq!(e2.profiles().next().unwrap().state, ProfileState::Normal);
    }
}
