//! Williamson's connection throttle in the daemon (`homeostat daemon
//! --throttle-connect`; docs/daemon.md, "Connection throttle").
//!
//! The rule is `homeostat_monitor::throttle::Throttle`, the one `homeostat run`
//! applies: per profile, a working set of recently contacted hosts, and a queue that
//! lets one new host through every 1/RATE seconds. Here it is split like pH's response:
//! - the kernel (src/bpf/throttle.bpf.h) holds a mirror of each profile's working set,
//!   so a connect to a known host costs one lookup and nothing else; a connect to any
//!   other host is reported and, in enforce mode, stops its process (the response's
//!   `respond_stop`);
//! - the response thread ([`crate::respond`]) takes the process over with ptrace and
//!   holds each connect to a new host until the rule releases it; it keeps the process
//!   until the profile's queue would let a new host through at once
//!   ([`Throttle::clear_at`]), so the connect that stops a process next is one the rule
//!   lets run without a wait: the first one, which runs before the stop lands;
//! - this module applies the rule to what the kernel reports of processes not under a
//!   response (the connect has run: it is booked, so later ones queue behind it, and
//!   reported), releases hosts into the kernel's working sets, and takes the least
//!   recently used host out of a full set, with the kernel's record of last use.
//!
//! Modes, per profile as the daemon's other responses: enforce holds connects (with a
//! stop guard), detect reports what would have been held, learn does nothing.
//!
//! Each profile's working set is saved beside it (`daemon/<key>.hosts`, a file of its
//! own as the rates are) and given back at the next start, to the rule and to the
//! kernel: a restarted daemon does not make every program wait again, one host a
//! period, for the hosts it always talks to. The queue is saved with it (each host's
//! release time, and the last release booked): a held connect is let go when the
//! daemon stops, but its host still joins the working set at its time, and a new host
//! queues behind it, so a restart does not open the rate to a scanner.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use homeostat_core::ph::{ExeKey, Mode};
use homeostat_core::symbols::Arg;
use homeostat_ebpf::{Event, Kernel, ThrottleFlags};
use homeostat_monitor::sink::write_event;
use homeostat_monitor::throttle::{
    host_text, Decision, SavedQueue, Throttle, ThrottleEvent, UNKNOWN_HOST,
};
use homeostat_monitor::write_atomic;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::daemon::Daemon;
use crate::now_ns;

/// What the daemon loop and the response threads share.
pub struct Shared {
    /// The rule, for every profile.
    pub rule: Throttle,
    /// The flags of each profile whose mode is known (else `default`).
    pub flags: HashMap<ExeKey, ThrottleFlags>,
    /// The host's mode's flags.
    pub default: ThrottleFlags,
}

impl Shared {
    /// What the throttle does with `exe`'s connects to new hosts.
    pub fn flags_of(&self, exe: ExeKey) -> ThrottleFlags {
        self.flags.get(&exe).copied().unwrap_or(self.default)
    }
}

/// The shared throttle state.
pub type SharedThrottle = crate::shared::Locked<Shared>;

/// The daemon loop's side.
pub(crate) struct ConnThrottle {
    pub shared: SharedThrottle,
    /// Each profile's hosts put in the kernel's working set (the rule's set, mirrored).
    mirrored: HashMap<ExeKey, Vec<Vec<u8>>>,
    /// Working set size (the rule's).
    working_set: usize,
    /// Each profile's file as last written or read (what need not be saved again).
    saved: HashMap<ExeKey, HostsFile>,
}

/// The kernel flags of a profile in `mode`; `stop` when the daemon can respond.
pub(crate) fn flags_for(mode: Mode, respond: bool) -> ThrottleFlags {
    match mode {
        Mode::Learn => ThrottleFlags::default(),
        Mode::Detect => ThrottleFlags {
            report: true,
            stop: false,
        },
        Mode::Enforce => ThrottleFlags {
            report: true,
            stop: respond,
        },
    }
}

impl ConnThrottle {
    pub(crate) fn new(rule: Throttle, working_set: usize, default: ThrottleFlags) -> Self {
        ConnThrottle {
            shared: SharedThrottle::new(Shared {
                rule,
                flags: HashMap::new(),
                default,
            }),
            mirrored: HashMap::new(),
            working_set,
            saved: HashMap::new(),
        }
    }
}

/// Format version of the working-set files.
pub const HOSTS_VERSION: u32 = 1;
/// Largest working-set file read: a full queue of IPv6 hosts (1,024, about 80 bytes
/// each as written) and a working set of as many fit with room to spare.
const HOSTS_FILE_MAX: u64 = 256 * 1024;

/// One working-set file: the hosts as text, least recently used first, and the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostsFile {
    pub version: u32,
    pub dev: u64,
    pub ino: u64,
    pub hosts: Vec<String>,
    /// Connects waiting, in release order: (release time in ns since the epoch, host;
    /// `?` for an address the kernel could not read). Absent in files of earlier
    /// builds: an empty queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<(u64, String)>,
    /// The last release booked (ns since the epoch): a new host waits a period after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release_ns: Option<u64>,
}

impl HostsFile {
    /// Profile `key`'s file for working set `set` and queue `q`.
    fn of(key: ExeKey, set: &[Vec<u8>], q: &SavedQueue) -> HostsFile {
        HostsFile {
            version: HOSTS_VERSION,
            dev: key.dev,
            ino: key.ino,
            hosts: set.iter().map(|h| host_text(h)).collect(),
            queue: q.pending.iter().map(|(t, h)| (*t, host_text(h))).collect(),
            last_release_ns: q.last_release,
        }
    }

    /// Whether it says nothing (no file is written for it).
    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.queue.is_empty() && self.last_release_ns.is_none()
    }
}

/// One host of a working-set file: an IP address, or `?` (the unknown host) where
/// `unknown` allows it.
fn parse_host(h: &str, unknown: bool) -> Result<Vec<u8>, String> {
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a.octets().to_vec()),
        Ok(IpAddr::V6(a)) => Ok(a.octets().to_vec()),
        Err(_) if unknown && h == host_text(UNKNOWN_HOST) => Ok(UNKNOWN_HOST.to_vec()),
        Err(_) => Err(format!("{h:?} is not an IP address")),
    }
}

/// `<dir>/<key>.hosts`.
pub fn hosts_path_in(dir: &Path, key: ExeKey) -> PathBuf {
    dir.join(format!("{key}.hosts"))
}

/// What a working-set file of `key` holds: its hosts (4 or 16 bytes each), at most the
/// `cap` most recent, and its queue; `file` as read, to know when it changes.
#[derive(Debug)]
pub struct SavedHosts {
    pub hosts: Vec<Vec<u8>>,
    pub queue: SavedQueue,
    pub file: HostsFile,
}

/// Reads a working-set file of `key`. A one-line error for anything but a valid file
/// of `key`.
pub fn read_hosts(path: &Path, key: ExeKey, cap: usize) -> Result<SavedHosts, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let b = homeostat_monitor::read_capped(path, HOSTS_FILE_MAX).map_err(|e| err(&e))?;
    let f: HostsFile = serde_json::from_slice(&b).map_err(|e| err(&e))?;
    if f.version != HOSTS_VERSION {
        return Err(err(&format!(
            "format version {} (want {HOSTS_VERSION})",
            f.version
        )));
    }
    if (f.dev, f.ino) != (key.dev, key.ino) {
        return Err(err(&"another profile's working set"));
    }
    let mut hosts = f
        .hosts
        .iter()
        .map(|h| parse_host(h, false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    let extra = hosts.len().saturating_sub(cap);
    hosts.drain(..extra);
    let pending = f
        .queue
        .iter()
        .map(|(t, h)| parse_host(h, true).map(|h| (*t, h)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    Ok(SavedHosts {
        hosts,
        queue: SavedQueue {
            pending,
            last_release: f.last_release_ns,
        },
        file: f,
    })
}

/// The host of a connect's address (IP only: other families are never throttled).
pub fn host_of(arg: Option<&Arg>) -> Option<&[u8]> {
    match arg {
        Some(Arg::Inet { addr, .. }) => Some(addr),
        _ => None,
    }
}

/// A throttle event as `homeostat run` writes it (docs/events.md), at `ts_ns`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn event(
    ts_ns: u64,
    event: &'static str,
    (pid, tid): (u32, u32),
    exe: ExeKey,
    path: Arc<str>,
    host: &[u8],
    queue: usize,
    delay_ns: Option<u64>,
    action: Option<&'static str>,
) -> ThrottleEvent {
    ThrottleEvent {
        ts: ts_ns as f64 / 1e9,
        event,
        pid: pid as i32,
        tid: tid as i32,
        profile: exe.to_string(),
        exe: path,
        host: host_text(host),
        queue,
        delay_ms: delay_ns.map(|d| d as f64 / 1e6),
        action,
    }
}

impl Daemon {
    /// Writes a throttle event; an alarm is logged too (unless quiet).
    pub(crate) fn emit_throttle(&mut self, e: &ThrottleEvent) {
        if let Some(w) = self.json.as_mut() {
            write_event(w, e);
        }
        self.limit_counts.count(e.event);
        match e.event {
            "throttle_alarm" if !self.quiet => warn!(
                "{} [{}]: {} connects to new hosts waiting (throttled)",
                e.exe, e.pid, e.queue
            ),
            _ => {}
        }
    }

    /// The path of profile `exe`, for events.
    fn path_of(&self, exe: ExeKey) -> Arc<str> {
        self.profiles
            .get(&exe)
            .map(|p| p.path.clone())
            .unwrap_or_else(|| Arc::from("?"))
    }

    /// Sets profile `exe`'s throttle flags from its mode (at load and at each exec,
    /// which may tell its path and so its `[modes]` entry), in the kernel only when
    /// they change.
    pub(crate) fn throttle_mode(&mut self, kernel: &Kernel, exe: ExeKey) {
        let Some(t) = &self.throttle else {
            return;
        };
        let f = flags_for(self.mode_of(exe), self.respond);
        let shared = t.shared.clone();
        let mut s = shared.lock();
        if s.flags.get(&exe) == Some(&f) {
            return;
        }
        match kernel.set_throttle(exe, f) {
            Ok(()) => {
                s.flags.insert(exe, f);
            }
            Err(e) => warn!("throttle of profile {exe}: {e}"),
        }
    }

    /// A connect to a host outside its profile's working set, from the kernel.
    pub(crate) fn on_throttle(&mut self, kernel: &Kernel, e: &Event) {
        // No address: the kernel could not read it (not resident), a host of unknown
        // address ([`homeostat_monitor::throttle::UNKNOWN_HOST`]); its process may be
        // stopped, and must be taken over or let go as any other's.
        let host = match &e.arg {
            None => homeostat_monitor::throttle::UNKNOWN_HOST.to_vec(),
            arg => match host_of(arg.as_ref()) {
                Some(h) => h.to_vec(),
                None => {
                    if e.stopped {
                        kernel.release(e.pid);
                    }
                    return;
                }
            },
        };
        let Some(t) = &self.throttle else {
            if e.stopped {
                kernel.release(e.pid);
            }
            return;
        };
        if !e.stopped && self.responders.active().contains(&e.pid) {
            // Its tracer applies the rule at the call's entry.
            return;
        }
        let shared = t.shared.clone();
        let now = now_ns();
        let decision = shared.lock().rule.connect(e.exe, &host, now);
        if e.stopped {
            if self.respond {
                self.resp_keys.insert(e.pid, e.exe);
                self.responders.start(kernel, e.pid, Some(e.tid));
            } else {
                // No stop guard (or stopping): never leave it stopped.
                kernel.release(e.pid);
            }
        }
        let Decision::Queued {
            delay_ns,
            queue,
            alarm,
        } = decision
        else {
            return;
        };
        // The connect has run: what it would have waited is reported, not applied.
        let path = self.path_of(e.exe);
        let mut ev = event(
            now,
            "throttle_queued",
            (e.pid, e.tid),
            e.exe,
            path,
            &host,
            queue,
            Some(delay_ns),
            Some("none"),
        );
        self.emit_throttle(&ev);
        if alarm {
            ev.event = "throttle_alarm";
            self.emit_throttle(&ev);
        }
    }

    /// A connect a response thread held (or let run: `delay_ns` 0).
    pub(crate) fn on_throttled(
        &mut self,
        at_ns: u64,
        (pid, tid): (u32, u32),
        exe: ExeKey,
        host: &[u8],
        (delay_ns, queue, alarm): (u64, usize, bool),
        held: bool,
    ) {
        let path = self.path_of(exe);
        let mut ev = event(
            at_ns,
            "throttle_queued",
            (pid, tid),
            exe,
            path,
            host,
            queue,
            Some(delay_ns),
            Some(if held && delay_ns > 0 {
                "delay"
            } else {
                "none"
            }),
        );
        if held && delay_ns > 0 {
            self.limit_counts.throttle_held += 1;
        }
        self.emit_throttle(&ev);
        if alarm {
            ev.event = "throttle_alarm";
            self.emit_throttle(&ev);
        }
    }

    /// Releases the hosts whose time has come into their working sets, in the rule
    /// and in the kernel. Before, a profile whose set is full learns from the kernel
    /// which of its hosts were used last (the kernel passes them without telling), so
    /// that the rule replaces the least recently used one.
    pub(crate) fn throttle_tick(&mut self, kernel: &Kernel) {
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        let now = now_ns();
        let shared = t.shared.clone();
        let mut s = shared.lock();
        for (exe, hosts) in &t.mirrored {
            if hosts.len() < t.working_set || s.rule.queued(*exe) == 0 {
                continue;
            }
            let mut used: Vec<(u64, &Vec<u8>)> = hosts
                .iter()
                .map(|h| (kernel.host_used(*exe, h).ok().flatten().unwrap_or(0), h))
                // Added at its release, or used since: the kernel's time says which
                // was last.
                .collect();
            used.sort();
            for (_, h) in used {
                // A host of the working set: the rule marks it used, nothing else.
                let _ = s.rule.connect(*exe, h, now);
            }
        }
        let releases = s.rule.release_due(now);
        let mut changed: Vec<ExeKey> = releases.iter().map(|r| r.exe).collect();
        changed.sort_unstable_by_key(|k| (k.dev, k.ino));
        changed.dedup();
        for exe in changed {
            let now_set = s.rule.working_set(exe);
            let before = t.mirrored.remove(&exe).unwrap_or_default();
            for h in before.iter().filter(|h| !now_set.contains(h)) {
                if let Err(e) = kernel.remove_host(exe, h) {
                    warn!("throttle of profile {exe}: {e}");
                }
            }
            for h in now_set.iter().filter(|h| !before.contains(h)) {
                if let Err(e) = kernel.add_host(exe, h) {
                    warn!("throttle of profile {exe}: {e}");
                }
            }
            t.mirrored.insert(exe, now_set);
        }
        drop(s);
        for r in releases {
            let path = self.path_of(r.exe);
            let ev = event(
                now,
                "throttle_release",
                (0, 0),
                r.exe,
                path,
                &r.host,
                r.queue,
                None,
                None,
            );
            self.emit_throttle(&ev);
        }
    }

    /// What the throttle and the rate limits did, and what waits in their queues now
    /// (`None` when neither is on).
    pub(crate) fn limits_now(&self) -> Option<homeostat_monitor::control::LimitCounts> {
        if self.throttle.is_none() && self.rates.is_none() {
            return None;
        }
        let mut c = self.limit_counts.clone();
        c.unread_addresses = self.limit_stats.unread;
        c.lost_events = self.limit_stats.lost_events;
        if let Some(t) = &self.throttle {
            c.throttle_waiting = t.shared.lock().rule.queued_total() as u64;
        }
        if let Some(r) = &self.rates {
            c.rate_waiting = r
                .shared
                .lock()
                .states
                .values()
                .map(|s| s.queued() as u64)
                .sum();
        }
        Some(c)
    }

    /// Gives every profile loaded its saved working set and queue, in the rule and in
    /// the kernel; a bad file is reported and left. Returns how many were given.
    pub(crate) fn throttle_load(&mut self, kernel: &Kernel) -> usize {
        let dir = self.dir.clone();
        let keys: Vec<ExeKey> = self.profiles.keys().copied().collect();
        let Some(t) = self.throttle.as_mut() else {
            return 0;
        };
        let mut s = t.shared.lock();
        let mut n = 0;
        for key in keys {
            let p = hosts_path_in(&dir, key);
            if !p.exists() {
                continue;
            }
            let saved = match read_hosts(&p, key, t.working_set) {
                Ok(h) => h,
                Err(e) => {
                    warn!("working set not loaded: {e}");
                    continue;
                }
            };
            s.rule.restore(key, &saved.hosts);
            s.rule.restore_queue(key, &saved.queue, crate::now_ns());
            let set = s.rule.working_set(key);
            for h in &set {
                if let Err(e) = kernel.add_host(key, h) {
                    warn!("throttle of profile {key}: {e}");
                }
            }
            t.saved.insert(key, saved.file);
            t.mirrored.insert(key, set);
            n += 1;
        }
        n
    }

    /// Saves the working sets and queues that changed, `<key>.hosts` beside each
    /// profile.
    pub(crate) fn throttle_save(&mut self) {
        let dir = self.dir.clone();
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        let files: Vec<(ExeKey, HostsFile)> = {
            let s = t.shared.lock();
            s.rule
                .profiles()
                .into_iter()
                .filter(|k| self.profiles.contains_key(k))
                .map(|k| {
                    (
                        k,
                        HostsFile::of(k, &s.rule.working_set(k), &s.rule.queue_of(k)),
                    )
                })
                .collect()
        };
        for (key, f) in files {
            if t.saved.get(&key) == Some(&f) || (f.is_empty() && !t.saved.contains_key(&key)) {
                continue;
            }
            let bytes = serde_json::to_vec_pretty(&f).unwrap_or_default();
            match write_atomic(&hosts_path_in(&dir, key), &bytes) {
                Ok(()) => {
                    t.saved.insert(key, f);
                }
                Err(e) => warn!("working set of profile {key} not saved: {e}"),
            }
        }
    }

    /// A profile left (evicted, reset): its working set and queue go with it, and so
    /// do its rate limits. Their files go with the profile's others
    /// ([`crate::remove_profile_files`], which both callers run).
    pub(crate) fn limits_forget(&mut self, kernel: &Kernel, exe: ExeKey) {
        self.rates_forget(exe);
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        t.saved.remove(&exe);
        for h in t.mirrored.remove(&exe).unwrap_or_default() {
            let _ = kernel.remove_host(exe, &h);
        }
        let mut s = t.shared.lock();
        s.rule.forget(exe);
        s.flags.remove(&exe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_kernel_flags() {
        assert_eq!(flags_for(Mode::Learn, true), ThrottleFlags::default());
        assert_eq!(
            flags_for(Mode::Detect, true),
            ThrottleFlags {
                report: true,
                stop: false
            }
        );
        assert!(flags_for(Mode::Enforce, true).stop);
        // Without a stop guard, enforce can only report.
        assert!(!flags_for(Mode::Enforce, false).stop);
        assert_eq!(host_of(Some(&Arg::Family(2))), None);
        let a = Arg::Inet {
            addr: vec![127, 0, 0, 2],
            port: 80,
        };
        assert_eq!(host_of(Some(&a)), Some(&[127u8, 0, 0, 2][..]));
    }

    #[test]
    fn a_hosts_file_is_read_within_its_limit_whatever_its_size_says() {
        // procfs files say 0 bytes and hold megabytes: the size check alone let the
        // read take all of it. A FIFO put there after the check must not block.
        let dir = tempfile::tempdir().unwrap();
        let key = ExeKey { dev: 1, ino: 2 };
        let p = hosts_path_in(dir.path(), key);
        std::os::unix::fs::symlink("/proc/kallsyms", &p).unwrap();
        let err = read_hosts(&p, key, 5).unwrap_err();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn hosts_files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = ExeKey { dev: 1, ino: 2 };
        let p = hosts_path_in(dir.path(), key);
        let f = HostsFile {
            version: HOSTS_VERSION,
            dev: 1,
            ino: 2,
            hosts: vec!["10.0.0.1".into(), "::1".into(), "10.0.0.2".into()],
            queue: vec![],
            last_release_ns: None,
        };
        std::fs::write(&p, serde_json::to_vec(&f).unwrap()).unwrap();
        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        assert_eq!(
            read_hosts(&p, key, 5).unwrap().hosts,
            vec![vec![10, 0, 0, 1], v6, vec![10, 0, 0, 2]]
        );
        // A smaller working set keeps the most recent.
        assert_eq!(
            read_hosts(&p, key, 1).unwrap().hosts,
            vec![vec![10, 0, 0, 2]]
        );
        // A file of an earlier build (no queue) reads as an empty queue.
        let old = r#"{"version": 1, "dev": 1, "ino": 2, "hosts": ["10.0.0.1"]}"#;
        std::fs::write(&p, old).unwrap();
        assert_eq!(read_hosts(&p, key, 5).unwrap().queue, SavedQueue::default());
        // The queue comes back as written, the unknown host with it.
        let q = SavedQueue {
            pending: vec![(7, vec![10, 0, 0, 9]), (8, UNKNOWN_HOST.to_vec())],
            last_release: Some(8),
        };
        let written = HostsFile::of(key, &[vec![10, 0, 0, 1]], &q);
        std::fs::write(&p, serde_json::to_vec_pretty(&written).unwrap()).unwrap();
        let back = read_hosts(&p, key, 5).unwrap();
        assert_eq!((back.queue, back.file), (q, written));
        let bad = HostsFile {
            queue: vec![(1, "example.com".into())],
            ..f.clone()
        };
        std::fs::write(&p, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(read_hosts(&p, key, 5)
            .unwrap_err()
            .contains("not an IP address"));
        assert!(read_hosts(&p, ExeKey { dev: 1, ino: 3 }, 5)
            .unwrap_err()
            .contains("another profile"));
        let bad = HostsFile {
            hosts: vec!["example.com".into()],
            ..f.clone()
        };
        std::fs::write(&p, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(read_hosts(&p, key, 5)
            .unwrap_err()
            .contains("not an IP address"));
        std::fs::write(&p, b"{\"version\": 1").unwrap();
        assert!(read_hosts(&p, key, 5).is_err());
        std::fs::write(&p, vec![b' '; 300_000]).unwrap();
        assert!(read_hosts(&p, key, 5).unwrap_err().contains("limit"));
        // A directory (or a device) where the file should be: an error, no read.
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert!(read_hosts(&p, key, 5)
            .unwrap_err()
            .contains("not a regular file"));
    }
}
