//! Fork and file-creation rate limits in the daemon (`homeostat daemon --rate-limit`;
//! docs/daemon.md, "Rate limits").
//!
//! The rule is the core's `homeostat_core::rate`, the one `homeostat run` applies:
//! what counts (`kind_of`), the peak of each kind in any window of training
//! (`PeakMeter`, `LearnedRates`), the limit `max(1, ceil(peak x margin))` once normal,
//! and the queue that releases calls beyond it at the limit (`Limiter`). Split as the
//! pH response and the connection throttle are:
//! - the kernel (src/bpf/throttle.bpf.h, `hs_rate`) counts each profile's forks and
//!   creations in a ring of their times; in training it reports each one (with the
//!   kernel's time), from which this module learns the peaks with the core's meter;
//!   once normal it reports a call whose profile already made `limit` calls in the
//!   window, and in enforce mode stops its process;
//! - the response thread ([`crate::respond`]) takes the process over and asks the
//!   core's limiter for each counted call (held until its release); the limiter is
//!   first told the calls the kernel counted meanwhile ([`Limiter::seed`]), and the
//!   process is kept until the limiter would let a call run at once
//!   ([`Limiter::free_at`]);
//! - the peaks are saved beside the profile (`daemon/<key>.rates`, a file of its own
//!   as the classes are: the profile format is shared with `homeostat run`); a
//!   profile without one (saved before, or trained without `--rate-limit`) has no
//!   limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use homeostat_core::ph::{ExeKey, Mode, ProfileState};
use homeostat_core::rate::{LearnedRates, RateKind, RateState};
use homeostat_ebpf::{Event, Kernel, RateFlags, RATE_RING};
use homeostat_monitor::write_atomic;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::daemon::Daemon;

/// A queue this long raises `rate_alarm` (as `homeostat run`'s).
pub const ALARM_QUEUE: usize = 5;
/// Format version of the rates files.
pub const VERSION: u32 = 1;

/// What the response threads need: each profile's queues and limits.
#[derive(Default)]
pub struct Shared {
    /// Meters and queues per profile (the core's).
    pub states: HashMap<ExeKey, RateState>,
    /// The limits of the profiles whose calls are checked: (fork, create) calls per
    /// window, the window, and whether beyond-limit calls are held (enforce).
    pub limits: HashMap<ExeKey, Limits>,
}

/// A normal profile's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub fork: u32,
    pub create: u32,
    pub window_ns: u64,
    pub hold: bool,
}

impl Limits {
    /// The limit of `kind`.
    pub fn of(&self, kind: RateKind) -> u32 {
        match kind {
            RateKind::Fork => self.fork,
            RateKind::Create => self.create,
        }
    }
}

/// The shared rate state.
pub type SharedRates = crate::shared::Locked<Shared>;

/// The daemon loop's side.
pub(crate) struct RateLimits {
    pub shared: SharedRates,
    margin: f64,
    window_ns: u64,
    /// Peaks learned (or loaded) per profile, and whether they changed since saved.
    learned: HashMap<ExeKey, (LearnedRates, bool)>,
    /// What the kernel was last told per profile.
    set: HashMap<ExeKey, (RateFlags, [u32; 2])>,
}

impl RateLimits {
    pub(crate) fn new(margin: f64, window_ns: u64) -> Self {
        RateLimits {
            shared: SharedRates::default(),
            margin,
            window_ns,
            learned: HashMap::new(),
            set: HashMap::new(),
        }
    }
}

/// One rates file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatesFile {
    pub version: u32,
    pub dev: u64,
    pub ino: u64,
    pub rates: LearnedRates,
}

/// `<dir>/<key>.rates`.
pub fn path_in(dir: &Path, key: ExeKey) -> PathBuf {
    dir.join(format!("{key}.rates"))
}

/// Reads a rates file; a one-line error for anything but a valid one of `key`.
pub fn read(path: &Path, key: ExeKey) -> Result<LearnedRates, String> {
    let b = homeostat_monitor::read_capped(path, 4096)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let f: RatesFile =
        serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?;
    if f.version != VERSION {
        return Err(format!(
            "{}: format version {} (want {VERSION})",
            path.display(),
            f.version
        ));
    }
    if (f.dev, f.ino) != (key.dev, key.ino) {
        return Err(format!("{}: another profile's rates", path.display()));
    }
    f.rates
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(f.rates)
}

/// The kernel's view of a profile: its flags and limits (fork, create; 0: none).
fn kernel_view(
    state: ProfileState,
    mode: Mode,
    respond: bool,
    learned: Option<&LearnedRates>,
    margin: f64,
) -> (RateFlags, [u32; 2]) {
    if state != ProfileState::Normal {
        return (
            RateFlags {
                learn: true,
                ..RateFlags::default()
            },
            [0, 0],
        );
    }
    let Some(r) = learned else {
        return (RateFlags::default(), [0, 0]);
    };
    let limits = RateKind::ALL.map(|k| r.limit(k, margin));
    match mode {
        Mode::Learn => (RateFlags::default(), [0, 0]),
        Mode::Detect | Mode::Enforce => (
            RateFlags {
                learn: false,
                check: true,
                stop: mode == Mode::Enforce && respond,
            },
            limits,
        ),
    }
}

impl Daemon {
    /// Tells the kernel what each profile's forks and creations are to do (learn,
    /// check, stop) and its limits, where that changed (every tick: states and modes
    /// move).
    pub(crate) fn rates_sync(&mut self, kernel: &Kernel) {
        let Some(r) = self.rates.as_ref() else {
            return;
        };
        let mut want = vec![];
        for (key, p) in &self.profiles {
            let learned = r.learned.get(key).map(|(l, _)| l);
            let v = kernel_view(p.state, self.mode_of(*key), self.respond, learned, r.margin);
            if r.set.get(key) != Some(&v) {
                want.push((*key, v, learned.map_or(r.window_ns, |l| l.window_ns)));
            }
        }
        let Some(r) = self.rates.as_mut() else {
            return;
        };
        let mut s = r.shared.lock();
        for (key, (flags, limits), window) in want {
            // Beyond the kernel's ring, a limit is not checked there (documented).
            let checked = limits.map(|l| if l <= RATE_RING { l } else { 0 });
            if let Err(e) = kernel.set_rates(key, flags, checked, window) {
                warn!("rate limits of profile {key}: {e}");
                continue;
            }
            if flags.check {
                s.limits.insert(
                    key,
                    Limits {
                        fork: limits[0],
                        create: limits[1],
                        window_ns: window,
                        hold: flags.stop,
                    },
                );
            } else {
                s.limits.remove(&key);
            }
            r.set.insert(key, (flags, limits));
        }
    }

    /// A counted call of a training profile: the core's meter, the profile's peak.
    pub(crate) fn on_rate_call(&mut self, e: &Event) {
        if self
            .profiles
            .get(&e.exe)
            .is_some_and(|p| p.state == ProfileState::Normal)
        {
            // A normal profile learns no more (its kernel flags lag by up to a tick).
            return;
        }
        let (Some(r), Some(c)) = (self.rates.as_mut(), e.rate) else {
            return;
        };
        let window = r.window_ns;
        let entry = r
            .learned
            .entry(e.exe)
            .or_insert((LearnedRates::new(window), false));
        let mut s = r.shared.lock();
        let n = s
            .states
            .entry(e.exe)
            .or_default()
            .meter(c.kind)
            .observe(c.ktime_ns, entry.0.window_ns);
        if entry.0.record(c.kind, n) {
            entry.1 = true;
        }
    }

    /// A call beyond its normal profile's limit, from the kernel: the limiter learns
    /// the calls the kernel counted; a stopped process is taken over; detect reports.
    pub(crate) fn on_rate_over(&mut self, kernel: &Kernel, e: &Event) {
        let Some(c) = e.rate else {
            return;
        };
        let Some(r) = self.rates.as_ref() else {
            if e.stopped {
                kernel.release(e.pid);
            }
            return;
        };
        if !e.stopped && self.responders.active().contains(&e.pid) {
            return; // its tracer asks the limiter at the call's entry
        }
        if let Ok(times) = kernel.rate_ring(e.exe, c.kind) {
            let mut s = r.shared.lock();
            s.states
                .entry(e.exe)
                .or_default()
                .limiter(c.kind)
                .seed(times);
        }
        if e.stopped {
            if self.respond {
                self.resp_keys.insert(e.pid, e.exe);
                self.responders.start(kernel, e.pid, Some(e.tid));
            } else {
                kernel.release(e.pid);
            }
        }
        let rec = self.record(
            "rate_exceeded",
            e.exe,
            (e.pid, e.tid),
            homeostat_syscalls::Arch::X86_64.display(e.nr).into_owned(),
            e.lfc,
            serde_json::json!({ "kind": c.kind.as_str(), "limit": c.limit }),
        );
        self.emit(&homeostat_monitor::EventRecord {
            action: if e.stopped { "stop" } else { "none" },
            ..rec
        });
    }

    /// A call a response thread held (or let run).
    pub(crate) fn on_rate_queued(
        &mut self,
        (pid, tid): (u32, u32),
        exe: ExeKey,
        (kind, limit): (RateKind, u32),
        (delay_ns, queue, alarm): (u64, usize, bool),
        nr: u32,
    ) {
        let rec = self.record(
            "rate_queued",
            exe,
            (pid, tid),
            homeostat_syscalls::Arch::X86_64.display(nr).into_owned(),
            0,
            serde_json::json!({
                "kind": kind.as_str(),
                "limit": limit,
                "queue": queue,
                "delay_ms": delay_ns as f64 / 1e6,
            }),
        );
        let rec = homeostat_monitor::EventRecord {
            action: "delay",
            ..rec
        };
        self.emit(&rec);
        if alarm {
            if !self.quiet {
                warn!(
                    "{} [{pid}]: {queue} {} calls waiting (rate limit)",
                    rec.exe,
                    kind.as_str()
                );
            }
            let a = homeostat_monitor::EventRecord {
                event: "rate_alarm",
                ..rec
            };
            self.emit(&a);
        }
    }

    /// Releases of the queues (events only: the response threads hold the calls).
    pub(crate) fn rates_tick(&mut self) {
        let Some(r) = self.rates.as_ref() else {
            return;
        };
        let now = homeostat_ebpf::ktime_ns();
        let mut out = vec![];
        {
            let mut s = r.shared.lock();
            for (key, st) in s.states.iter_mut() {
                for kind in RateKind::ALL {
                    let l = st.limiter(kind);
                    let n = l.release_due(now);
                    if n > 0 {
                        out.push((*key, kind, n, l.queued()));
                    }
                }
            }
        }
        for (key, kind, n, queue) in out {
            self.on_rate_released(key, kind, n, queue);
        }
    }

    /// `released` calls of `key`'s queue of `kind` released.
    pub(crate) fn on_rate_released(
        &mut self,
        key: ExeKey,
        kind: RateKind,
        released: usize,
        queue: usize,
    ) {
        let rec = self.record(
            "rate_release",
            key,
            (0, 0),
            String::new(),
            0,
            serde_json::json!({ "kind": kind.as_str(), "released": released, "queue": queue }),
        );
        self.emit(&rec);
    }

    /// Saves the rates that changed, `<key>.rates` beside each profile.
    pub(crate) fn rates_save(&mut self) {
        let dir = self.dir.clone();
        let Some(r) = self.rates.as_mut() else {
            return;
        };
        for (key, (rates, dirty)) in r.learned.iter_mut().filter(|(_, (_, d))| *d) {
            if !self.profiles.contains_key(key) {
                continue;
            }
            let f = RatesFile {
                version: VERSION,
                dev: key.dev,
                ino: key.ino,
                rates: *rates,
            };
            let bytes = serde_json::to_vec_pretty(&f).unwrap_or_default();
            match write_atomic(&path_in(&dir, *key), &bytes) {
                Ok(()) => *dirty = false,
                Err(e) => warn!("rates of profile {key} not saved: {e}"),
            }
        }
    }

    /// Loads the saved rates of every profile loaded; a bad file is reported and left.
    pub(crate) fn rates_load(&mut self) -> usize {
        let dir = self.dir.clone();
        let keys: Vec<ExeKey> = self.profiles.keys().copied().collect();
        let Some(r) = self.rates.as_mut() else {
            return 0;
        };
        let mut n = 0;
        for key in keys {
            let p = path_in(&dir, key);
            if !p.exists() {
                continue;
            }
            match read(&p, key) {
                Ok(rates) => {
                    r.learned.insert(key, (rates, false));
                    n += 1;
                }
                Err(e) => warn!("rates not loaded: {e}"),
            }
        }
        n
    }

    /// A profile left: its rates and queues go with it (its file goes with the
    /// profile's others: [`crate::remove_profile_files`]).
    pub(crate) fn rates_forget(&mut self, key: ExeKey) {
        let Some(r) = self.rates.as_mut() else {
            return;
        };
        r.learned.remove(&key);
        r.set.remove(&key);
        let mut s = r.shared.lock();
        s.states.remove(&key);
        s.limits.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_rates_file_that_is_a_fifo_or_a_proc_file_is_refused_at_once() {
        // The whole file was read before its size was looked at: a FIFO with no
        // writer blocked the daemon's start for ever, a procfs file was read whole.
        let dir = tempfile::tempdir().unwrap();
        let key = ExeKey { dev: 1, ino: 2 };
        let fifo = path_in(dir.path(), key);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(read(&f, key)).unwrap());
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked")
            .unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink("/proc/kallsyms", &fifo).unwrap();
        let err = read(&fifo, key).unwrap_err();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn what_the_kernel_is_told() {
        let mut r = LearnedRates::new(S);
        r.record(RateKind::Fork, 7);
        // Training learns whatever the mode.
        let (f, l) = kernel_view(ProfileState::Frozen, Mode::Enforce, true, Some(&r), 2.0);
        assert!(f.learn && !f.check && l == [0, 0]);
        // Normal: the core's limits, held in enforce with a stop guard only.
        let (f, l) = kernel_view(ProfileState::Normal, Mode::Enforce, true, Some(&r), 2.0);
        assert!(f.check && f.stop && !f.learn);
        assert_eq!(l, [14, 1]);
        let (f, _) = kernel_view(ProfileState::Normal, Mode::Enforce, false, Some(&r), 2.0);
        assert!(f.check && !f.stop);
        let (f, _) = kernel_view(ProfileState::Normal, Mode::Detect, true, Some(&r), 2.0);
        assert!(f.check && !f.stop);
        // No rates learned (an older file): no limit.
        assert_eq!(
            kernel_view(ProfileState::Normal, Mode::Enforce, true, None, 2.0),
            (RateFlags::default(), [0, 0])
        );
    }

    #[test]
    fn rates_files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = ExeKey { dev: 1, ino: 2 };
        let mut r = LearnedRates::new(S);
        r.record(RateKind::Create, 5);
        let f = RatesFile {
            version: VERSION,
            dev: 1,
            ino: 2,
            rates: r,
        };
        let p = path_in(dir.path(), key);
        std::fs::write(&p, serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(read(&p, key).unwrap(), r);
        assert!(read(&p, ExeKey { dev: 1, ino: 3 })
            .unwrap_err()
            .contains("another profile"));
        let bad = RatesFile {
            rates: LearnedRates {
                window_ns: u64::MAX,
                ..r
            },
            ..f.clone()
        };
        std::fs::write(&p, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(read(&p, key).unwrap_err().contains("window"));
        std::fs::write(&p, b"{\"version\": 2").unwrap();
        assert!(read(&p, key).is_err());
    }
}
