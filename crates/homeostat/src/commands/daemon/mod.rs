//! `homeostat daemon`: system-wide pH on the eBPF kernel side (`homeostat-ebpf`). The
//! kernel runs the per-call work (sequences, training, testing, locality frames) for
//! every task and stops a process at its first anomaly when its profile responds; this
//! loop decides what the kernel cannot: when a profile freezes and becomes normal,
//! tolerization and the anomaly limit, what is saved, loaded and reported, and the
//! response itself (`respond.rs`: ptrace delays and execve refusal), with `keeper.rs`
//! making sure nothing stays stopped if the daemon dies.
//!
//! Lifecycle from the kernel's counters, sampled every [`TICK`]: for each profile the
//! deltas since the last sample, `dcalls` (its `calls`) and `dnew` (its `new_pairs`),
//! give pH's counters at one-tick granularity:
//! - `train_count += dcalls`;
//! - `dnew > 0`: the profile changed in this tick, `last_mod_count = 0` (a frozen
//!   profile goes back to training); the calls after the tick's last new pair are not
//!   credited, which only delays freezing;
//! - `dnew == 0`: `last_mod_count += dcalls`.
//!
//! Then pH's freeze rule (`train_count * normal_factor_den > normal_count *
//! normal_factor`, `normal_count = train_count - last_mod_count > 0`) and, once
//! frozen for `normal_wait`, normal: the kernel is told to test instead of learning.
//!
//! Profiles are saved as `daemon/<dev>-<ino>.json` in the state directory (docs/daemon.md).

pub mod keeper;
mod respond;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use homeostat_core::ph::{ExeKey, Mode, PhConfig, ProfileState};
use homeostat_ebpf::{Event, EventKind, ExecLsm, Kernel, KernelState, Options, Stats};
use homeostat_monitor::daemon_profile::{self, DaemonProfile};
use homeostat_monitor::{write_atomic, EventRecord, ProfileStore};
use homeostat_syscalls::Arch;
use keeper::KeeperHandle;
use respond::{Report, Responders};
use tracing::{info, warn};

use super::run::{describe, now_ns, open_events, open_store, settings_from_flags};
use crate::cli::{DaemonArgs, StateFlags};
use crate::control::{broadcast, Request, Server};
use crate::metrics::{MetricsServer, Snapshot};

/// How often the kernel's counters are sampled.
const TICK: Duration = Duration::from_secs(1);
/// How often profiles are saved (and on exit).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// Ring buffer poll timeout.
const POLL: Duration = Duration::from_millis(200);
/// What the kernel does with a profile's calls: it tests only normal ones (training
/// and frozen profiles both learn there).
fn kernel_state(st: ProfileState) -> KernelState {
    if st == ProfileState::Normal {
        KernelState::Normal
    } else {
        KernelState::Training
    }
}

/// Userspace's half of a profile.
struct Prof {
    path: Arc<str>,
    state: ProfileState,
    train_count: u64,
    last_mod_count: u64,
    normal_time_ns: u64,
    /// Anomalies since the profile last became normal, outside tolerized episodes
    /// (what `anomaly_limit` is checked against, as in `homeostat run`).
    anomalies: u64,
    /// The kernel's counters at the last sample.
    seen_calls: u64,
    seen_new: u64,
    dirty: bool,
}

impl Prof {
    /// pH's "training data wiped" (tolerize, sensitize, anomaly_limit): the kernel
    /// keeps one pair set, so what is wiped is the freeze rule's counters.
    fn wipe_training(&mut self) {
        self.train_count = 0;
        self.last_mod_count = 0;
        self.dirty = true;
    }

    fn new(path: Arc<str>) -> Prof {
        Prof {
            path,
            state: ProfileState::Training,
            train_count: 0,
            last_mod_count: 0,
            normal_time_ns: 0,
            anomalies: 0,
            seen_calls: 0,
            seen_new: 0,
            dirty: true,
        }
    }
}

struct Daemon {
    config: PhConfig,
    /// Per-executable modes (config `[modes]`, by path) over `config.mode`.
    modes: std::collections::BTreeMap<String, Mode>,
    dir: PathBuf,
    profiles: HashMap<ExeKey, Prof>,
    json: Option<Box<dyn Write + Send>>,
    quiet: bool,
    stats: Stats,
    /// Normal profiles stop anomalous processes (enforce mode, with a keeper).
    respond: bool,
    responders: Responders,
    /// Processes whose LFC went above tolerize_limit, until their response ends: their
    /// anomalies do not count toward anomaly_limit.
    tolerized: HashSet<u32>,
    /// The profile of each process under response (from its stop event).
    resp_keys: HashMap<u32, ExeKey>,
    /// Responses whose first delay was reported (one `delay_start` each).
    delaying: HashSet<u32>,
    /// Counters for `homeostat status` and the metrics endpoint.
    counts: Snapshot,
    started: Instant,
}

impl Daemon {
    fn emit(&mut self, r: &EventRecord) {
        if let Some(w) = self.json.as_mut() {
            // A full disk loses events, not monitoring.
            let _ = serde_json::to_writer(&mut *w, r)
                .map(|_| w.write_all(b"\n"))
                .map(|_| w.flush());
        }
        if !self.quiet {
            let line = match r.event {
                "anomaly" => Some(format!(
                    "{} [{}]: anomaly at {} ({} missing pairs, LFC {})",
                    r.exe, r.pid, r.syscall, r.detail["misses"], r.lfc
                )),
                _ => describe(r),
            };
            if let Some(line) = line {
                info!("{line}");
            }
        }
    }

    fn record(
        &self,
        event: &'static str,
        key: ExeKey,
        (pid, tid): (u32, u32),
        syscall: String,
        lfc: u32,
        detail: serde_json::Value,
    ) -> EventRecord {
        let p = self.profiles.get(&key);
        EventRecord {
            ts: now_ns() as f64 / 1e9,
            event,
            pid: pid as i32,
            tid: tid as i32,
            exe: p.map(|p| p.path.clone()).unwrap_or_else(|| Arc::from("?")),
            profile: key.to_string(),
            state: p.map(|p| p.state).unwrap_or(ProfileState::Training),
            syscall,
            lfc,
            action: "none",
            detail,
        }
    }

    fn set_state(&mut self, kernel: &Kernel, key: ExeKey, to: ProfileState, reason: &str) {
        let Some(p) = self.profiles.get_mut(&key) else {
            return;
        };
        let from = p.state;
        p.state = to;
        p.dirty = true;
        if to == ProfileState::Normal || to == ProfileState::Training {
            p.anomalies = 0;
        }
        let ks = kernel_state(to);
        let respond = to == ProfileState::Normal && self.responds(key);
        if let Err(e) = kernel
            .set_state(key, ks)
            .and_then(|()| kernel.set_respond(key, respond))
        {
            warn!("profile {key}: {e}");
        }
        let r = self.record(
            "state_change",
            key,
            (0, 0),
            String::new(),
            0,
            serde_json::json!({ "from": from, "to": to, "reason": reason }),
        );
        self.emit(&r);
    }

    /// A profile's mode: its `[modes]` entry, else the host's.
    fn mode_of(&self, key: ExeKey) -> Mode {
        match self.profiles.get(&key) {
            Some(p) => self.mode_for(&p.path),
            None => self.config.mode,
        }
    }

    /// Whether the profile's anomalous processes are to be stopped once it is normal:
    /// it is in enforce mode and the daemon can respond (it has a keeper).
    fn responds(&self, key: ExeKey) -> bool {
        self.respond && self.mode_of(key) == Mode::Enforce
    }

    /// The mode of the executable at `path`: its `[modes]` entry, else the host's.
    fn mode_for(&self, path: &str) -> Mode {
        self.modes.get(path).copied().unwrap_or(self.config.mode)
    }

    fn on_event(&mut self, kernel: &Kernel, e: Event) {
        self.counts.events_total += 1;
        match e.kind {
            EventKind::Exec => {
                let path = e.path.unwrap_or_default();
                let path = if path.starts_with('/') {
                    path
                } else {
                    std::fs::read_link(format!("/proc/{}/exe", e.pid))
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or(path)
                };
                let p = self
                    .profiles
                    .entry(e.exe)
                    .or_insert_with(|| Prof::new(Arc::from(path.as_str())));
                if &*p.path != path.as_str() {
                    p.path = Arc::from(path.as_str());
                    p.dirty = true;
                    // Its mode may depend on the path, now known.
                    let normal = p.state == ProfileState::Normal;
                    let on = normal && self.responds(e.exe);
                    if normal {
                        let _ = kernel.set_respond(e.exe, on);
                    }
                }
            }
            EventKind::NewPairs => {}
            EventKind::ExecRefused => {
                self.counts.execve_refused_total += 1;
                let r = self.record(
                    "exec_refused",
                    e.exe,
                    (e.pid, e.tid),
                    "execve".into(),
                    e.lfc,
                    serde_json::json!({ "by": "lsm" }),
                );
                self.emit(&EventRecord {
                    action: "refuse_exec",
                    ..r
                });
            }
            EventKind::Anomaly => {
                self.counts.anomalies_total += 1;
                if e.stopped {
                    self.resp_keys.insert(e.pid, e.exe);
                    self.responders.start(kernel, e.pid);
                }
                let r = self.record(
                    "anomaly",
                    e.exe,
                    (e.pid, e.tid),
                    Arch::X86_64.display(e.nr).into_owned(),
                    e.lfc,
                    serde_json::json!({ "misses": e.misses }),
                );
                let r = EventRecord {
                    action: if e.stopped { "stop" } else { "none" },
                    ..r
                };
                self.emit(&r);
                self.limits(kernel, &e);
            }
        }
    }

    /// pH's tolerize_limit and anomaly_limit, for an anomaly event. An LFC above
    /// tolerize_limit starts a tolerized episode for the process (until its response
    /// ends): the profile's training counters are wiped (the kernel keeps one pair set,
    /// so there is no separate training data to wipe) and its anomalies stop counting
    /// toward anomaly_limit; more than anomaly_limit counted anomalies send the profile
    /// back to training, as in `homeostat run` (docs/launcher-mode.md).
    fn limits(&mut self, kernel: &Kernel, e: &Event) {
        let c = &self.config;
        if e.lfc > c.tolerize_limit && self.tolerized.insert(e.pid) {
            if self.tolerized.len() > 4096 {
                // Bounded: pids of long-gone processes.
                self.tolerized.clear();
                self.tolerized.insert(e.pid);
            }
            if let Some(p) = self.profiles.get_mut(&e.exe) {
                p.wipe_training();
            }
            let r = self.record(
                "tolerized",
                e.exe,
                (e.pid, e.tid),
                Arch::X86_64.display(e.nr).into_owned(),
                e.lfc,
                serde_json::json!({}),
            );
            self.emit(&r);
        }
        if self.tolerized.contains(&e.pid) {
            return;
        }
        let limit = self.config.anomaly_limit;
        let Some(p) = self.profiles.get_mut(&e.exe) else {
            return;
        };
        p.anomalies += 1;
        p.dirty = true;
        if p.state == ProfileState::Normal && p.anomalies > limit {
            p.wipe_training();
            self.set_state(kernel, e.exe, ProfileState::Training, "anomaly_limit");
        }
    }

    /// What the response threads reported: events and counters.
    fn on_reports(&mut self, kernel: &Kernel) {
        for r in self.responders.reports() {
            match r {
                Report::Started => self.counts.responses_total += 1,
                Report::Delayed {
                    pid,
                    tid,
                    nr,
                    lfc,
                    delay_ns,
                } => {
                    self.counts.delays_total += 1;
                    if self.delaying.insert(pid) {
                        let key = self.key_of(pid);
                        let r = self.record(
                            "delay_start",
                            key,
                            (pid, tid),
                            Arch::X86_64.display(nr).into_owned(),
                            lfc,
                            serde_json::json!({ "delay_ms": delay_ns as f64 / 1e6 }),
                        );
                        self.emit(&EventRecord {
                            action: "delay",
                            ..r
                        });
                    }
                }
                Report::ExecRefused { pid, tid, lfc } => {
                    self.counts.execve_refused_total += 1;
                    let key = self.key_of(pid);
                    let r = self.record(
                        "exec_refused",
                        key,
                        (pid, tid),
                        "execve".into(),
                        lfc,
                        serde_json::json!({}),
                    );
                    self.emit(&EventRecord {
                        action: "refuse_exec",
                        ..r
                    });
                }
                Report::Finished {
                    pid,
                    delays,
                    refused,
                    why,
                } => {
                    self.delaying.remove(&pid);
                    self.tolerized.remove(&pid);
                    let key = self.key_of(pid);
                    let r = self.record(
                        "delay_stop",
                        key,
                        (pid, pid),
                        String::new(),
                        0,
                        serde_json::json!({ "delays": delays, "exec_refused": refused, "why": why }),
                    );
                    self.emit(&r);
                    self.resp_keys.remove(&pid);
                }
                Report::Failed { pid, error } => {
                    warn!("no response to {pid} (resumed): {error}");
                    let key = self.key_of(pid);
                    let r = self.record(
                        "response_failed",
                        key,
                        (pid, pid),
                        String::new(),
                        0,
                        serde_json::json!({ "error": error }),
                    );
                    self.emit(&r);
                    self.resp_keys.remove(&pid);
                }
            }
        }
        // A stop whose event was lost (full ring buffer) is found here.
        let active = self.responders.active();
        for (pid, _, _) in kernel.stopped() {
            if !active.contains(&pid) {
                if self.respond {
                    self.responders.start(kernel, pid);
                } else {
                    kernel.release(pid);
                }
            }
        }
    }

    /// The profile of process `pid` as the kernel knows it (for response events).
    fn key_of(&self, pid: u32) -> ExeKey {
        if let Some(&k) = self.resp_keys.get(&pid) {
            return k;
        }
        let e = homeostat_proc::exe(pid as i32);
        ExeKey {
            dev: e.dev,
            ino: e.ino,
        }
    }

    /// Samples the kernel's counters and applies pH's freeze / normal rules.
    fn tick(&mut self, kernel: &Kernel) {
        let now = now_ns();
        let mut changes: Vec<(ExeKey, ProfileState, &'static str)> = vec![];
        for key in kernel.profiles() {
            let Ok(Some(kp)) = kernel.profile(key) else {
                continue;
            };
            let p = self.profiles.entry(key).or_insert_with(|| {
                let path = format!("?{key}");
                Prof::new(Arc::from(path.as_str()))
            });
            let dcalls = kp.calls.saturating_sub(p.seen_calls);
            let dnew = kp.new_pairs.saturating_sub(p.seen_new);
            p.seen_calls = kp.calls;
            p.seen_new = kp.new_pairs;
            if p.state == ProfileState::Normal || dcalls == 0 {
                continue;
            }
            p.dirty = true;
            p.train_count += dcalls;
            if dnew > 0 {
                p.last_mod_count = 0;
                if p.state == ProfileState::Frozen {
                    changes.push((key, ProfileState::Training, "new behaviour"));
                }
                continue;
            }
            p.last_mod_count += dcalls;
            let c = &self.config;
            let normal_count = p.train_count - p.last_mod_count.min(p.train_count);
            if p.state == ProfileState::Training
                && normal_count > 0
                && u128::from(p.train_count) * u128::from(c.normal_factor_den)
                    > u128::from(normal_count) * u128::from(c.normal_factor)
            {
                p.normal_time_ns = now.saturating_add((c.normal_wait_secs * 1e9) as u64);
                changes.push((key, ProfileState::Frozen, "stable"));
            }
        }
        for (&key, p) in &self.profiles {
            let changing = changes.iter().any(|c| c.0 == key);
            let learn = self.mode_for(&p.path) == Mode::Learn;
            if p.state == ProfileState::Frozen && now >= p.normal_time_ns && !changing && !learn {
                changes.push((key, ProfileState::Normal, "normal_wait elapsed"));
            }
        }
        for (key, to, reason) in changes {
            self.set_state(kernel, key, to, reason);
        }
        match kernel.stats() {
            Ok(s) if s != self.stats => {
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
                    let _ = writeln!(w, "{j}").and_then(|_| w.flush());
                }
                self.stats = s;
            }
            Ok(_) => {}
            Err(e) => warn!("{e}"),
        }
        let by = |st| self.profiles.values().filter(|p| p.state == st).count() as u64;
        self.counts.profiles_training = by(ProfileState::Training);
        self.counts.profiles_frozen = by(ProfileState::Frozen);
        self.counts.profiles_normal = by(ProfileState::Normal);
        self.counts.under_response = self.responders.active().len() as u64;
    }

    /// Answers a control request (`homeostat ps`, `status`, `profile ...`).
    fn answer(&mut self, kernel: &Kernel, req: Request) -> serde_json::Value {
        use serde_json::json;
        let key = match &req {
            Request::Ps => return json!({ "tasks": self.tasks(kernel) }),
            Request::Status => return self.status_json(),
            Request::Save => {
                let (saved, failed) = self.save(kernel);
                return json!({ "ok": failed == 0, "saved": saved });
            }
            Request::Profiles => {
                let list: Vec<_> = self
                    .profiles
                    .iter()
                    .map(|(k, p)| {
                        json!({ "key": k.to_string(), "path": &*p.path, "state": p.state,
                                "train_count": p.train_count, "anomalies": p.anomalies })
                    })
                    .collect();
                return json!({ "daemon": true, "profiles": list });
            }
            Request::Normalize { key }
            | Request::Sensitize { key }
            | Request::Tolerize { key }
            | Request::Reset { key } => match key.parse::<ExeKey>() {
                Ok(k) if self.profiles.contains_key(&k) => k,
                Ok(_) => return json!({ "error": "no such profile in the daemon" }),
                Err(e) => return json!({ "error": e.to_string() }),
            },
        };
        match req {
            Request::Normalize { .. } => {
                self.set_state(kernel, key, ProfileState::Normal, "normalized")
            }
            Request::Sensitize { .. } => {
                if let Some(p) = self.profiles.get_mut(&key) {
                    p.wipe_training();
                }
                self.set_state(kernel, key, ProfileState::Training, "sensitized");
            }
            Request::Tolerize { .. } => {
                if let Some(p) = self.profiles.get_mut(&key) {
                    p.wipe_training();
                }
            }
            Request::Reset { .. } => {
                if let Err(e) = kernel.remove_profile(key) {
                    return json!({ "error": e.to_string() });
                }
                self.profiles.remove(&key);
                let _ = std::fs::remove_file(self.dir.join(format!("{key}.json")));
                return json!({ "ok": true });
            }
            _ => unreachable!("answered above"),
        }
        self.save(kernel);
        json!({ "ok": true })
    }

    fn status_json(&self) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let c = &self.counts;
        serde_json::json!({
            "daemon": true,
            "pid": std::process::id(),
            "uptime_s": secs,
            "mode": self.config.mode,
            "respond": self.respond,
            "events": c.events_total,
            "events_per_s": c.events_total as f64 / secs,
            "anomalies": c.anomalies_total,
            "responses": c.responses_total,
            "under_response": self.responders.active(),
            "delays": c.delays_total,
            "execve_refused": c.execve_refused_total,
            "losses": {
                "lost_events": self.stats.lost_events, "rows_full": self.stats.rows_full,
                "tasks_full": self.stats.tasks_full, "profiles_full": self.stats.profiles_full,
                "stops_failed": self.stats.stops_failed,
            },
            "profiles": {
                "training": c.profiles_training, "frozen": c.profiles_frozen,
                "normal": c.profiles_normal,
            },
        })
    }

    /// Every task the kernel follows under a profile, from /proc and the kernel's task
    /// states, in `homeostat ps`'s form.
    fn tasks(&self, kernel: &Kernel) -> Vec<serde_json::Value> {
        let active = self.responders.active();
        let mut out = vec![];
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return out;
        };
        for pid in procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            let Ok(tids) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for tid in tids
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                let Ok(Some(t)) = kernel.task(tid) else {
                    continue;
                };
                let Some(p) = self.profiles.get(&t.exe) else {
                    continue;
                };
                let under = active.contains(&pid);
                out.push(serde_json::json!({
                    "pid": pid, "tid": tid, "exe": &*p.path, "profile": t.exe.to_string(),
                    "state": p.state, "lfc": t.lfc,
                    "delay_ms": if under { self.config.delay_ns(t.lfc) as f64 / 1e6 } else { 0.0 },
                    "anomalies": p.anomalies, "calls": p.train_count,
                    "response": under,
                }));
            }
        }
        out
    }

    /// Saves every changed profile; returns (saved, failed).
    fn save(&mut self, kernel: &Kernel) -> (usize, usize) {
        let pairs = match kernel.all_pairs() {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot read pairs: {e}");
                return (0, 1);
            }
        };
        let (mut saved, mut failed) = (0, 0);
        for (key, p) in self.profiles.iter_mut().filter(|(_, p)| p.dirty) {
            let Some(pairs) = pairs.get(key) else {
                // Nothing learnt yet: nothing worth a file.
                continue;
            };
            let s = DaemonProfile {
                version: daemon_profile::VERSION,
                dev: key.dev,
                ino: key.ino,
                path: p.path.to_string(),
                state: p.state,
                train_count: p.train_count,
                last_mod_count: p.last_mod_count,
                normal_time_ns: p.normal_time_ns,
                anomalies: p.anomalies,
                pairs: pairs.clone(),
            };
            match write_atomic(&self.dir.join(format!("{key}.json")), &s.to_bytes()) {
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
    /// calls only); bad files are reported and skipped. Returns how many were loaded.
    fn load(&mut self, kernel: &Kernel, store: &ProfileStore) -> usize {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for path in entries.flatten().map(|e| e.path()) {
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                match DaemonProfile::load(&path) {
                    Ok(d) => match self.adopt(kernel, d, "daemon") {
                        Ok(()) => n += 1,
                        Err(e) => warn!("profile {} skipped: {e}", path.display()),
                    },
                    Err(e) => warn!("profile {} skipped: {e}", path.display()),
                }
            }
        }
        let (run_profiles, errors) = store.load_all();
        for e in errors {
            warn!("{e}");
        }
        for p in run_profiles {
            if self.profiles.contains_key(&p.key) {
                continue;
            }
            let d = DaemonProfile::from_ph(&p);
            if d.pairs.is_empty() {
                continue;
            }
            match self.adopt(kernel, d, "homeostat run") {
                Ok(()) => {
                    // Not ours on disk yet: written to daemon/ at the next save.
                    if let Some(q) = self.profiles.get_mut(&p.key) {
                        q.dirty = true;
                    }
                    n += 1;
                }
                Err(e) => warn!(
                    "profile {} not seeded: {e}",
                    store.path_for(p.key).display()
                ),
            }
        }
        n
    }

    /// Puts a loaded profile into the kernel and the daemon's table.
    fn adopt(&mut self, kernel: &Kernel, d: DaemonProfile, from: &str) -> Result<()> {
        let key = d.key();
        kernel.add_pairs(key, &d.pairs)?;
        let learn = self.mode_for(&d.path) == Mode::Learn;
        let state = match d.state {
            ProfileState::Normal if learn => ProfileState::Frozen,
            st => st,
        };
        let ks = kernel_state(state);
        kernel.set_state(key, ks)?;
        self.profiles.insert(
            key,
            Prof {
                path: Arc::from(d.path.as_str()),
                state,
                train_count: d.train_count,
                last_mod_count: d.last_mod_count.min(d.train_count),
                normal_time_ns: d.normal_time_ns,
                anomalies: d.anomalies,
                seen_calls: 0,
                seen_new: 0,
                dirty: false,
            },
        );
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
            serde_json::json!({ "pairs": d.pairs.len(), "from": from }),
        );
        if let Some(w) = self.json.as_mut() {
            let _ = serde_json::to_writer(&mut *w, &r)
                .map(|_| w.write_all(b"\n"))
                .map(|_| w.flush());
        }
        Ok(())
    }
}

/// Logs go to stderr through `tracing` (the journal adds its own timestamps under
/// systemd; a terminal gets them here). Errors that end the daemon are printed by
/// `main` as one line, like every command's.
fn init_logging() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

pub fn run(a: DaemonArgs) -> Result<()> {
    init_logging();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let mode = if a.learn {
        Some(Mode::Learn)
    } else if a.detect {
        Some(Mode::Detect)
    } else if a.enforce {
        Some(Mode::Enforce)
    } else {
        None
    };
    let settings = settings_from_flags(&a.state, mode, a.normal_wait)?;
    let (config, modes) = (settings.ph, settings.modes);
    let store = open_store(&a.state)?;
    let state_dir = store.dir().to_path_buf();
    let dir = state_dir.join("daemon");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = open_events(a.events.as_deref())?;

    let enforce = config.mode == Mode::Enforce || modes.values().any(|&m| m == Mode::Enforce);
    let kernel = Kernel::load(&Options {
        auto_create: true,
        // Where BPF LSM loads, execve is refused in the kernel too (else reported why).
        exec_lsm_at: if enforce { config.suspend_execve } else { 0 },
        ..Options::default()
    })?;
    match kernel.exec_lsm() {
        ExecLsm::NotRequested => {}
        ExecLsm::Active => info!("daemon: execve refusal in the kernel (BPF LSM): on"),
        ExecLsm::Unconfirmed => info!(
            "daemon: execve refusal in the kernel (BPF LSM): loaded, but whether the bpf LSM is active is unknown (securityfs not mounted)"
        ),
        ExecLsm::Unavailable(why) => info!(
            "daemon: execve refusal in the kernel (BPF LSM): unavailable ({why}); execve is refused by the ptrace response only"
        ),
    }
    // No response without a keeper: a process stopped by the kernel must never be
    // left stopped if this process dies.
    if enforce && !homeostat_ebpf::thread_pidfds_supported() {
        warn!(
            "this kernel has no thread pidfds (PIDFD_THREAD, Linux 6.9), \
             so the response cannot follow LFCs: detect only"
        );
    }
    let keeper = if enforce && homeostat_ebpf::thread_pidfds_supported() {
        match kernel
            .stopped_map_id()
            .map_err(anyhow::Error::from)
            .and_then(KeeperHandle::start)
        {
            Ok(k) => Some(k),
            Err(e) => {
                warn!("no keeper, so no response (detect only): {e:#}");
                None
            }
        }
    } else {
        None
    };
    let metrics_shared = Arc::new(Mutex::new(Snapshot::default()));
    let metrics = match a.metrics {
        Some(addr) => {
            let m = MetricsServer::start(addr, metrics_shared.clone())?;
            info!("daemon: metrics on http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    let mut d = Daemon {
        respond: keeper.is_some(),
        responders: Responders::new(config.clone()),
        config,
        modes,
        dir,
        profiles: HashMap::new(),
        json,
        quiet: a.quiet,
        stats: Stats::default(),
        tolerized: HashSet::new(),
        resp_keys: HashMap::new(),
        delaying: HashSet::new(),
        counts: Snapshot::default(),
        started: Instant::now(),
    };
    let loaded = d.load(&kernel, &store);
    let control = match Server::start(&state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("no control channel: {e:#}");
            None
        }
    };
    let queue: Rc<RefCell<Vec<Event>>> = Rc::default();
    let q = queue.clone();
    let events = kernel.events(move |e| q.borrow_mut().push(e))?;
    info!(
        "daemon: watching ({:?} hook, {loaded} profiles loaded from {}, mode {:?}{})",
        kernel.hook(),
        d.dir.display(),
        d.config.mode,
        match &keeper {
            Some(k) => format!(", keeper pid {}", k.pid()),
            None => String::new(),
        }
    );

    let start = Instant::now();
    let deadline = a.duration.map(Duration::from_secs_f64);
    let mut last_tick = Instant::now();
    let mut last_save = Instant::now();
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
        // Short while responses run: their reports (and lost stops) are handled here.
        let poll = if d.responders.active().is_empty() {
            POLL
        } else {
            POLL / 4
        };
        if let Err(e) = events.poll(poll) {
            // A signal (the stop signal, whose handler runs on another thread) is not
            // an error.
            if !e.is_interrupted() {
                result = Err(anyhow!(e));
                break;
            }
        }
        let batch = std::mem::take(&mut *queue.borrow_mut());
        for e in batch {
            d.on_event(&kernel, e);
        }
        d.on_reports(&kernel);
        if last_tick.elapsed() >= TICK {
            d.tick(&kernel);
            if let Ok(mut m) = metrics_shared.lock() {
                *m = d.counts.clone();
            }
            last_tick = Instant::now();
        }
        if last_save.elapsed() >= SAVE_EVERY {
            d.save(&kernel);
            last_save = Instant::now();
        }
        if let Some(server) = &control {
            server.poll(|req| d.answer(&kernel, req));
        }
    }
    // Let every response go (their processes run on), then the last events and
    // counters, then save; then whatever the kernel stopped meanwhile is resumed.
    d.respond = false;
    d.responders.shutdown();
    let _ = events.poll(Duration::ZERO);
    let batch = std::mem::take(&mut *queue.borrow_mut());
    for e in batch {
        d.on_event(&kernel, e);
    }
    d.on_reports(&kernel);
    d.tick(&kernel);
    let (saved, failed) = d.save(&kernel);
    info!(
        "daemon: stopped; {saved} profiles saved in {}{}",
        d.dir.display(),
        if failed > 0 {
            format!(", {failed} not saved")
        } else {
            String::new()
        }
    );
    drop(events);
    drop(control);
    drop(metrics);
    drop(kernel);
    // The keeper resumes any process stopped between the shutdown and the detach.
    drop(keeper);
    result
}

/// `homeostat status`: a running daemon's counters.
pub fn status(json: bool, state: &StateFlags) -> Result<()> {
    let store = open_store(state)?;
    let replies: Vec<(u32, serde_json::Value)> = broadcast(store.dir(), &Request::Status)
        .into_iter()
        .filter(|(_, v)| v["daemon"] == true)
        .collect();
    if json {
        let all: Vec<&serde_json::Value> = replies.iter().map(|(_, v)| v).collect();
        println!("{}", serde_json::to_string(&all)?);
        return Ok(());
    }
    if replies.is_empty() {
        anyhow::bail!("no running daemon in {}", store.dir().display());
    }
    for (pid, v) in &replies {
        let l = &v["losses"];
        let p = &v["profiles"];
        println!(
            "daemon pid {pid}: mode {}, up {:.0} s, response {}",
            v["mode"],
            v["uptime_s"].as_f64().unwrap_or(0.0),
            if v["respond"] == true { "on" } else { "off" }
        );
        println!(
            "  events {} ({:.1}/s), anomalies {}, responses {} ({} now), delayed calls {}, execve refused {}",
            v["events"], v["events_per_s"].as_f64().unwrap_or(0.0), v["anomalies"], v["responses"],
            v["under_response"].as_array().map_or(0, Vec::len), v["delays"], v["execve_refused"]
        );
        println!(
            "  profiles: {} training, {} frozen, {} normal",
            p["training"], p["frozen"], p["normal"]
        );
        println!(
            "  losses: {} events, {} pairs (rows full), {} tasks, {} profiles, {} stops",
            l["lost_events"],
            l["rows_full"],
            l["tasks_full"],
            l["profiles_full"],
            l["stops_failed"]
        );
    }
    Ok(())
}
