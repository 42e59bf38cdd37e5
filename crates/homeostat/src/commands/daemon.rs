//! `homeostat daemon`: system-wide pH, detect only (like ebpH), on the eBPF kernel side
//! (`homeostat-ebpf`). The kernel runs the per-call work (sequences, training, testing,
//! locality frames) for every task; this loop decides what the kernel cannot: when a
//! profile freezes and becomes normal, what is saved and loaded, and what is reported.
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

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use homeostat_core::ph::{ExeKey, Mode, PhConfig, ProfileState};
use homeostat_ebpf::{Event, EventKind, Kernel, KernelState, Options, Stats};
use homeostat_monitor::{write_atomic, EventRecord};
use homeostat_syscalls::Arch;
use serde::{Deserialize, Serialize};

use super::run::{config_from_flags, describe, now_ns, open_events, open_store};
use crate::cli::DaemonArgs;
use crate::control::{Request, Server};

/// How often the kernel's counters are sampled.
const TICK: Duration = Duration::from_secs(1);
/// How often profiles are saved (and on exit).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// Ring buffer poll timeout.
const POLL: Duration = Duration::from_millis(200);
const FORMAT_VERSION: u32 = 1;

/// A profile as saved in `daemon/<dev>-<ino>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    version: u32,
    dev: u64,
    ino: u64,
    path: String,
    state: ProfileState,
    train_count: u64,
    last_mod_count: u64,
    normal_time_ns: u64,
    anomalies: u64,
    /// (current call, previous call, distance mask: bit d-1 = d calls before).
    pairs: Vec<(u16, u16, u8)>,
}

/// Userspace's half of a profile.
struct Prof {
    path: Arc<str>,
    state: ProfileState,
    train_count: u64,
    last_mod_count: u64,
    normal_time_ns: u64,
    anomalies: u64,
    /// The kernel's counters at the last sample.
    seen_calls: u64,
    seen_new: u64,
    dirty: bool,
}

impl Prof {
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
    dir: PathBuf,
    profiles: HashMap<ExeKey, Prof>,
    json: Option<Box<dyn Write + Send>>,
    quiet: bool,
    stats: Stats,
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
                eprintln!("homeostat: {line}");
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
        let ks = if to == ProfileState::Normal {
            KernelState::Normal
        } else {
            KernelState::Training
        };
        if let Err(e) = kernel.set_state(key, ks) {
            eprintln!("homeostat: warning: profile {key}: {e}");
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

    fn on_event(&mut self, e: Event) {
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
                }
            }
            EventKind::NewPairs => {}
            EventKind::Anomaly => {
                if let Some(p) = self.profiles.get_mut(&e.exe) {
                    p.anomalies += 1;
                    p.dirty = true;
                }
                let r = self.record(
                    "anomaly",
                    e.exe,
                    (e.pid, e.tid),
                    Arch::X86_64.display(e.nr).into_owned(),
                    e.lfc,
                    serde_json::json!({ "misses": e.misses }),
                );
                self.emit(&r);
            }
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
        if self.config.mode != Mode::Learn {
            for (&key, p) in &self.profiles {
                let changing = changes.iter().any(|c| c.0 == key);
                if p.state == ProfileState::Frozen && now >= p.normal_time_ns && !changing {
                    changes.push((key, ProfileState::Normal, "normal_wait elapsed"));
                }
            }
        }
        for (key, to, reason) in changes {
            self.set_state(kernel, key, to, reason);
        }
        match kernel.stats() {
            Ok(s) if s != self.stats => {
                // Never silent, even with --quiet.
                eprintln!(
                    "homeostat: kernel losses: {} events, {} pairs (rows map full), {} tasks, {} profiles",
                    s.lost_events, s.rows_full, s.tasks_full, s.profiles_full
                );
                if let Some(w) = self.json.as_mut() {
                    let j = serde_json::json!({
                        "ts": now as f64 / 1e9, "event": "kernel_losses",
                        "lost_events": s.lost_events, "rows_full": s.rows_full,
                        "tasks_full": s.tasks_full, "profiles_full": s.profiles_full,
                    });
                    let _ = writeln!(w, "{j}").and_then(|_| w.flush());
                }
                self.stats = s;
            }
            Ok(_) => {}
            Err(e) => eprintln!("homeostat: warning: {e}"),
        }
    }

    /// Saves every changed profile; returns (saved, failed).
    fn save(&mut self, kernel: &Kernel) -> (usize, usize) {
        let pairs = match kernel.all_pairs() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("homeostat: warning: cannot read pairs: {e}");
                return (0, 1);
            }
        };
        let (mut saved, mut failed) = (0, 0);
        for (key, p) in self.profiles.iter_mut().filter(|(_, p)| p.dirty) {
            let Some(pairs) = pairs.get(key) else {
                // Nothing learnt yet: nothing worth a file.
                continue;
            };
            let s = Saved {
                version: FORMAT_VERSION,
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
            let bytes = serde_json::to_vec(&s).expect("serializable");
            match write_atomic(&self.dir.join(format!("{key}.json")), &bytes) {
                Ok(()) => {
                    p.dirty = false;
                    saved += 1;
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("homeostat: warning: cannot save profile: {e}");
                }
            }
        }
        (saved, failed)
    }

    /// Loads `daemon/*.json` into the kernel; bad files are reported and skipped.
    fn load(&mut self, kernel: &Kernel) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match load_one(kernel, &path) {
                Ok(s) => {
                    let key = ExeKey {
                        dev: s.dev,
                        ino: s.ino,
                    };
                    let state = match s.state {
                        ProfileState::Normal if self.config.mode == Mode::Learn => {
                            ProfileState::Frozen
                        }
                        st => st,
                    };
                    let ks = if state == ProfileState::Normal {
                        KernelState::Normal
                    } else {
                        KernelState::Training
                    };
                    if let Err(e) = kernel.set_state(key, ks) {
                        eprintln!("homeostat: warning: {}: {e}", path.display());
                        continue;
                    }
                    let p = Prof {
                        path: Arc::from(s.path.as_str()),
                        state,
                        train_count: s.train_count,
                        last_mod_count: s.last_mod_count.min(s.train_count),
                        normal_time_ns: s.normal_time_ns,
                        anomalies: s.anomalies,
                        seen_calls: 0,
                        seen_new: 0,
                        dirty: false,
                    };
                    self.profiles.insert(key, p);
                    let r = self.record(
                        "profile_loaded",
                        key,
                        (0, 0),
                        String::new(),
                        0,
                        serde_json::json!({ "pairs": s.pairs.len() }),
                    );
                    if let Some(w) = self.json.as_mut() {
                        let _ = serde_json::to_writer(&mut *w, &r)
                            .map(|_| w.write_all(b"\n"))
                            .map(|_| w.flush());
                    }
                    n += 1;
                }
                Err(e) => eprintln!(
                    "homeostat: warning: profile {} skipped: {e:#}",
                    path.display()
                ),
            }
        }
        n
    }
}

fn load_one(kernel: &Kernel, path: &Path) -> Result<Saved> {
    let bytes = std::fs::read(path)?;
    let s: Saved = serde_json::from_slice(&bytes)?;
    if s.version != FORMAT_VERSION {
        return Err(anyhow!(
            "format version {} (want {FORMAT_VERSION})",
            s.version
        ));
    }
    kernel.add_pairs(
        ExeKey {
            dev: s.dev,
            ino: s.ino,
        },
        &s.pairs,
    )?;
    Ok(s)
}

pub fn run(a: DaemonArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    // The daemon has no response yet: enforce (the config default) means detect here.
    let mut config = config_from_flags(
        &a.state,
        if a.learn {
            Some(Mode::Learn)
        } else if a.detect {
            Some(Mode::Detect)
        } else {
            None
        },
        a.normal_wait,
    )?;
    if config.mode == Mode::Enforce {
        config.mode = Mode::Detect;
    }
    let store = open_store(&a.state)?;
    let state_dir = store.dir().to_path_buf();
    let dir = state_dir.join("daemon");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = open_events(a.events.as_deref())?;

    let kernel = Kernel::load(&Options {
        auto_create: true,
        ..Options::default()
    })?;
    let mut d = Daemon {
        config,
        dir,
        profiles: HashMap::new(),
        json,
        quiet: a.quiet,
        stats: Stats::default(),
    };
    let loaded = d.load(&kernel);
    let control = match Server::start(&state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("homeostat: warning: no control channel: {e:#}");
            None
        }
    };
    let queue: Rc<RefCell<Vec<Event>>> = Rc::default();
    let q = queue.clone();
    let events = kernel.events(move |e| q.borrow_mut().push(e))?;
    eprintln!(
        "homeostat: daemon: watching ({:?} hook, {loaded} profiles loaded from {}, mode {:?})",
        kernel.hook(),
        d.dir.display(),
        d.config.mode
    );

    let start = Instant::now();
    let deadline = a.duration.map(Duration::from_secs_f64);
    let mut last_tick = Instant::now();
    let mut last_save = Instant::now();
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
        if let Err(e) = events.poll(POLL) {
            // A signal (the stop signal, whose handler runs on another thread) is not
            // an error.
            let msg = e.to_string();
            if !msg.contains("nterrupted") && !msg.contains("EINTR") {
                result = Err(anyhow!(e));
                break;
            }
        }
        let batch = std::mem::take(&mut *queue.borrow_mut());
        for e in batch {
            d.on_event(e);
        }
        if last_tick.elapsed() >= TICK {
            d.tick(&kernel);
            last_tick = Instant::now();
        }
        if last_save.elapsed() >= SAVE_EVERY {
            d.save(&kernel);
            last_save = Instant::now();
        }
        if let Some(server) = &control {
            let mut save_now = false;
            server.poll(|req| match req {
                Request::Ps => serde_json::json!({ "tasks": [] }),
                Request::Save => {
                    save_now = true;
                    serde_json::json!({ "ok": true })
                }
                _ => serde_json::json!({ "error": "not supported by homeostat daemon yet" }),
            });
            if save_now {
                d.save(&kernel);
            }
        }
    }
    // Last events and counters, then save.
    let _ = events.poll(Duration::ZERO);
    let batch = std::mem::take(&mut *queue.borrow_mut());
    for e in batch {
        d.on_event(e);
    }
    d.tick(&kernel);
    let (saved, failed) = d.save(&kernel);
    eprintln!(
        "homeostat: daemon: stopped; {saved} profiles saved in {}{}",
        d.dir.display(),
        if failed > 0 {
            format!(", {failed} not saved")
        } else {
            String::new()
        }
    );
    drop(events);
    drop(control);
    result
}
