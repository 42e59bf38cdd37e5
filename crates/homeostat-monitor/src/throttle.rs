//! Williamson's connection throttle ("Throttling viruses", 2002) as a launcher response:
//! per executable profile, a small working set of recently contacted hosts; a connect
//! to a host in it runs at once, a connect to any other host waits in a queue released
//! at a fixed rate (default 1 per second), and a released host joins the working set.
//! Normal programs talk to few hosts again and again, so they are almost never
//! delayed; a worm or a scanner contacting many new hosts is slowed to the release
//! rate however fast it tries, and its growing queue is an alarm of its own.
//!
//! [`Throttle`] is the rule, with time as an argument (tested by replay);
//! [`Throttled`] wraps any [`Consumer`] (the pH engine) and adds the rule's delays to
//! its verdicts. Destinations are IP addresses from the connect's argument
//! ([`crate::args`]); Unix sockets and other families are never throttled.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use homeostat_core::ph::{ExeKey, Verdict};
use homeostat_core::symbols::{hides_later_calls, Arg};
use serde::Serialize;

use crate::monitor_loop::{CallEvent, Consumer};

/// Throttle settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleConfig {
    /// New hosts released per second.
    pub rate: f64,
    /// Hosts remembered per profile (Williamson used 5).
    pub working_set: usize,
    /// Queue length that raises a `throttle_alarm` (once per growth above it).
    pub alarm_queue: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            rate: 1.0,
            working_set: 5,
            alarm_queue: 5,
        }
    }
}

/// Most new hosts one profile's queue books. A process the throttle does not hold (the
/// daemon in detect mode, a process under a debugger) can connect to new hosts as fast
/// as it likes: unbounded, the queue would grow without end, and each connect's search
/// of it would make the daemon's loop quadratic (30,000 connects of one scan took it
/// 16 s). At the default rate this is 17 minutes of waiting already.
pub const MAX_QUEUE: usize = 1024;

/// The host of a connect whose address could not be read (the daemon's kernel side
/// reads it without faulting pages in, and a scanner could keep its addresses in
/// pages not yet touched): a new host every time, that never joins a working set.
pub const UNKNOWN_HOST: &[u8] = &[];

/// What the throttle does with one connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A host of the working set: runs now.
    Known,
    /// A new host: runs after `delay_ns`; `queue` connects (this one included) are
    /// waiting in this profile's queue; `alarm` when the queue just grew past the limit.
    Queued {
        delay_ns: u64,
        queue: usize,
        alarm: bool,
    },
}

#[derive(Default)]
struct Profile {
    /// Most recent last.
    recent: VecDeque<Vec<u8>>,
    /// (release time, host), in release order.
    pending: VecDeque<(u64, Vec<u8>)>,
    last_release: Option<u64>,
    alarmed: bool,
}

/// A profile's queue as it outlives a restart ([`Throttle::queue_of`],
/// [`Throttle::restore_queue`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedQueue {
    /// (release time, host), in release order; the host of an unreadable address is
    /// [`UNKNOWN_HOST`].
    pub pending: Vec<(u64, Vec<u8>)>,
    /// The last release booked: a new host waits a period after it.
    pub last_release: Option<u64>,
}

/// The throttle of every profile.
pub struct Throttle {
    cfg: ThrottleConfig,
    period_ns: u64,
    profiles: HashMap<ExeKey, Profile>,
}

/// A host the queue released (for events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The profile.
    pub exe: ExeKey,
    /// The host.
    pub host: Vec<u8>,
    /// Connects still waiting after it.
    pub queue: usize,
}

impl Throttle {
    /// A throttle; `rate` must be positive and finite.
    pub fn new(cfg: ThrottleConfig) -> Result<Throttle, String> {
        if !(cfg.rate.is_finite() && cfg.rate > 0.0) || cfg.working_set == 0 {
            return Err(format!(
                "throttle rate {} and working set {} must be positive",
                cfg.rate, cfg.working_set
            ));
        }
        Ok(Throttle {
            cfg,
            period_ns: (1e9 / cfg.rate).round().max(1.0) as u64,
            profiles: HashMap::new(),
        })
    }

    /// Moves every host whose release time has come into its working set.
    pub fn release_due(&mut self, now_ns: u64) -> Vec<Release> {
        let mut out = vec![];
        let cap = self.cfg.working_set;
        for (exe, p) in &mut self.profiles {
            while p.pending.front().is_some_and(|(t, _)| *t <= now_ns) {
                let Some((_, host)) = p.pending.pop_front() else {
                    break;
                };
                if host != UNKNOWN_HOST {
                    p.recent.retain(|h| *h != host);
                    p.recent.push_back(host.clone());
                }
                while p.recent.len() > cap {
                    p.recent.pop_front();
                }
                out.push(Release {
                    exe: *exe,
                    host,
                    queue: p.pending.len(),
                });
            }
            if p.pending.len() < self.cfg.alarm_queue {
                p.alarmed = false;
            }
        }
        out
    }

    /// The hosts of `exe`'s working set, least recently used first.
    pub fn working_set(&self, exe: ExeKey) -> Vec<Vec<u8>> {
        self.profiles
            .get(&exe)
            .map(|p| p.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Connects of `exe` waiting in its queue.
    pub fn queued(&self, exe: ExeKey) -> usize {
        self.profiles.get(&exe).map_or(0, |p| p.pending.len())
    }

    /// Connects waiting in every profile's queue.
    pub fn queued_total(&self) -> usize {
        self.profiles.values().map(|p| p.pending.len()).sum()
    }

    /// From when a connect of `exe` to a new host would run at once (0: from now):
    /// one period after the last release booked. Until then a new host waits, so a
    /// front end that can hold a connect only once it has taken the process over (the
    /// daemon) keeps holding it that long.
    pub fn clear_at(&self, exe: ExeKey) -> u64 {
        self.profiles
            .get(&exe)
            .and_then(|p| p.pending.back().map(|&(t, _)| t).or(p.last_release))
            .map_or(0, |t| t.saturating_add(self.period_ns))
    }

    /// Gives profile `exe` a working set saved before (least recently used first), as
    /// if those hosts had been released: a restarted daemon does not make a program
    /// wait again for the hosts it always talks to. Only a profile the rule knows
    /// nothing of yet takes it (hosts seen since the start are newer); the unknown host
    /// and repeats are skipped, and the most recent `working_set` hosts kept.
    pub fn restore(&mut self, exe: ExeKey, hosts: &[Vec<u8>]) {
        let cap = self.cfg.working_set;
        if self.profiles.get(&exe).is_some_and(|p| {
            !p.recent.is_empty() || !p.pending.is_empty() || p.last_release.is_some()
        }) {
            return;
        }
        let p = self.profiles.entry(exe).or_default();
        for h in hosts.iter().filter(|h| h.as_slice() != UNKNOWN_HOST) {
            p.recent.retain(|r| r != h);
            p.recent.push_back(h.clone());
        }
        while p.recent.len() > cap {
            p.recent.pop_front();
        }
    }

    /// Every profile the rule holds a working set, a queue or a release time for.
    pub fn profiles(&self) -> Vec<ExeKey> {
        self.profiles.keys().copied().collect()
    }

    /// Profile `exe`'s queue, as it is saved to outlive a restart.
    pub fn queue_of(&self, exe: ExeKey) -> SavedQueue {
        self.profiles
            .get(&exe)
            .map(|p| SavedQueue {
                pending: p.pending.iter().cloned().collect(),
                last_release: p.last_release,
            })
            .unwrap_or_default()
    }

    /// Gives profile `exe` a queue saved before a restart: its hosts join the working
    /// set at their release times (those past at the first [`Self::release_due`]), and a
    /// new host queues behind them, as if the rule had run on. Without it a restart
    /// would let a scanner's next hosts through at once. Only a profile with no queue
    /// and no release since the start takes it; times out of order are put in order,
    /// at most [`MAX_QUEUE`] connects are kept (the first ones), and no time is later
    /// than this rule could have booked from `now_ns` (i periods ahead for the i-th
    /// connect, counting from 1): a damaged file, or a clock set back since, cannot
    /// hold connects longer than a real queue of that length would.
    pub fn restore_queue(&mut self, exe: ExeKey, q: &SavedQueue, now_ns: u64) {
        let period = self.period_ns;
        let p = self.profiles.entry(exe).or_default();
        if !p.pending.is_empty() || p.last_release.is_some() {
            return;
        }
        let mut pending = q.pending.clone();
        pending.sort_by_key(|(t, _)| *t);
        pending.truncate(MAX_QUEUE);
        for (i, (t, _)) in pending.iter_mut().enumerate() {
            *t = (*t).min(now_ns.saturating_add(period.saturating_mul(i as u64 + 1)));
        }
        let latest = now_ns.saturating_add(period.saturating_mul(pending.len().max(1) as u64));
        p.last_release = pending
            .last()
            .map(|(t, _)| *t)
            .max(q.last_release.map(|t| t.min(latest)));
        p.pending = pending.into();
    }

    /// Forgets profile `exe` (removed): its working set and queue.
    pub fn forget(&mut self, exe: ExeKey) {
        self.profiles.remove(&exe);
    }

    /// A connect by profile `exe` to `host` at `now_ns`.
    pub fn connect(&mut self, exe: ExeKey, host: &[u8], now_ns: u64) -> Decision {
        let period = self.period_ns;
        let alarm_at = self.cfg.alarm_queue;
        let p = self.profiles.entry(exe).or_default();
        if let Some(i) = p.recent.iter().position(|h| h == host) {
            // Most recently used last, so the working set keeps the hosts in use.
            if let Some(h) = p.recent.remove(i) {
                p.recent.push_back(h);
            }
            return Decision::Known;
        }
        // A host already queued leaves with its first connect.
        let queued = p
            .pending
            .iter()
            .find(|(_, h)| h == host && host != UNKNOWN_HOST);
        let release = match queued {
            Some(&(t, _)) => t,
            // A full queue books no more: the connect waits what the last booked one
            // does, plus a period (its host is not remembered, so it queues again: a
            // delay, never a pass).
            None if p.pending.len() >= MAX_QUEUE => p
                .pending
                .back()
                .map_or(now_ns, |&(t, _)| t.saturating_add(period).max(now_ns)),
            None => {
                let last = p.pending.back().map(|&(t, _)| t).or(p.last_release);
                let t = match last {
                    Some(l) => now_ns.max(l.saturating_add(period)),
                    None => now_ns,
                };
                p.pending.push_back((t, host.to_vec()));
                p.last_release = Some(t);
                t
            }
        };
        let queue = p.pending.len();
        let alarm = queue >= alarm_at && !p.alarmed;
        if alarm {
            p.alarmed = true;
        }
        Decision::Queued {
            delay_ns: release.saturating_sub(now_ns),
            queue,
            alarm,
        }
    }
}

/// One throttle event (docs/events.md): `throttle_queued`, `throttle_release`,
/// `throttle_alarm`; and `io_uring_refused` (no host, queue 0, action `refuse`).
#[derive(Debug, Clone, Serialize)]
pub struct ThrottleEvent {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// The event.
    pub event: &'static str,
    /// Process id (0 for a release: the queue is the profile's).
    pub pid: i32,
    /// Thread id (0 for a release).
    pub tid: i32,
    /// Profile key (`<dev>-<ino>`, hex).
    pub profile: String,
    /// Executable path.
    pub exe: Arc<str>,
    /// The host (address text).
    pub host: String,
    /// Connects waiting in the profile's queue.
    pub queue: usize,
    /// How long this connect is held (queued), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// The daemon: `delay` (the connect is held), `none` (detect mode, or the connect
    /// ran before the process was stopped); `homeostat run` always holds (absent);
    /// `refuse` for `io_uring_refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
}

/// An address as text (IPv4 or IPv6 by its length).
pub fn host_text(h: &[u8]) -> String {
    match h.len() {
        0 => "?".to_string(),
        4 => std::net::Ipv4Addr::new(h[0], h[1], h[2], h[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(h);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{h:?}"),
    }
}

/// A consumer with the connection throttle in front: its delays are added to the
/// inner consumer's verdicts (a refusal stays a refusal).
pub struct Throttled<C: Consumer> {
    /// The consumer that decides everything else (pH).
    pub inner: C,
    throttle: Throttle,
    paths: HashMap<ExeKey, Arc<str>>,
    sink: Box<dyn FnMut(&ThrottleEvent) + Send>,
    /// Connects delayed, and the total delay, ns (for reports).
    pub delayed: (u64, u64),
}

impl<C: Consumer> Throttled<C> {
    /// Wraps `inner`; events go to `sink`.
    pub fn new(inner: C, throttle: Throttle, sink: Box<dyn FnMut(&ThrottleEvent) + Send>) -> Self {
        Throttled {
            inner,
            throttle,
            paths: HashMap::new(),
            sink,
            delayed: (0, 0),
        }
    }

    fn releases(&mut self, now: u64) {
        for r in self.throttle.release_due(now) {
            let exe = self
                .paths
                .get(&r.exe)
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            (self.sink)(&ThrottleEvent {
                ts: now as f64 / 1e9,
                event: "throttle_release",
                pid: 0,
                tid: 0,
                profile: r.exe.to_string(),
                exe,
                host: host_text(&r.host),
                queue: r.queue,
                delay_ms: None,
                action: None,
            });
        }
    }
}

impl<C: Consumer> Consumer for Throttled<C> {
    fn wants_args(&self) -> bool {
        true
    }

    fn call(&mut self, ev: &CallEvent) -> Verdict {
        let verdict = self.inner.call(ev);
        let now = crate::now_ns();
        self.releases(now);
        // io_uring's connects would pass unseen (symbols::hides_later_calls).
        if ev.arch.name(ev.nr).is_some_and(hides_later_calls) {
            (self.sink)(&ThrottleEvent {
                ts: now as f64 / 1e9,
                event: "io_uring_refused",
                pid: ev.pid,
                tid: ev.tid,
                profile: ev.exe.to_string(),
                exe: Arc::from(ev.path.to_string_lossy().as_ref()),
                host: String::new(),
                queue: 0,
                delay_ms: None,
                action: Some("refuse"),
            });
            return Verdict::Refuse;
        }
        // The rule the daemon applies too: a connect, or TCP Fast Open by sendto or
        // sendmsg, made through either ABI (an i386 program reaches them through
        // socketcall).
        let host =
            crate::args::connection(ev.pid, ev.tid, ev.arch, ev.nr, &ev.args, Some(&ev.captured));
        let Some(Some(Arg::Inet { addr, .. })) = host.as_ref() else {
            return verdict;
        };
        let Decision::Queued {
            delay_ns,
            queue,
            alarm,
        } = self.throttle.connect(ev.exe, addr, now)
        else {
            return verdict;
        };
        let path: Arc<str> = Arc::from(ev.path.to_string_lossy().as_ref());
        self.paths.insert(ev.exe, path.clone());
        let mut event = ThrottleEvent {
            ts: now as f64 / 1e9,
            event: "throttle_queued",
            pid: ev.pid,
            tid: ev.tid,
            profile: ev.exe.to_string(),
            exe: path,
            host: host_text(addr),
            queue,
            delay_ms: Some(delay_ns as f64 / 1e6),
            action: None,
        };
        (self.sink)(&event);
        if alarm {
            event.event = "throttle_alarm";
            (self.sink)(&event);
        }
        if delay_ns == 0 {
            return verdict;
        }
        self.delayed.0 += 1;
        self.delayed.1 += delay_ns;
        match verdict {
            Verdict::Refuse => Verdict::Refuse,
            Verdict::Continue => Verdict::Delay(delay_ns),
            Verdict::Delay(d) => Verdict::Delay(d.max(delay_ns)),
        }
    }

    fn exit(&mut self, pid: i32, tid: i32, group: bool) {
        self.inner.exit(pid, tid, group);
    }

    fn tick(&mut self) {
        self.releases(crate::now_ns());
        self.inner.tick();
    }

    fn poll(&mut self) {
        self.inner.poll();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const EXE: ExeKey = ExeKey { dev: 1, ino: 2 };

    fn queued(d: &Decision) -> (u64, usize) {
        match d {
            Decision::Queued {
                delay_ns, queue, ..
            } => (*delay_ns, *queue),
            Decision::Known => (0, 0),
        }
    }

    #[test]
    fn new_hosts_leave_at_the_rate_known_hosts_never_wait() {
        let mut t = Throttle::new(ThrottleConfig::default()).unwrap();
        // Five new hosts at t=0: released at 0, 1, 2, 3, 4 s.
        let d: Vec<_> = (1..=5u8)
            .map(|i| queued(&t.connect(EXE, &[10, 0, 0, i], 0)))
            .collect();
        assert_eq!(d, vec![(0, 1), (S, 2), (2 * S, 3), (3 * S, 4), (4 * S, 5)]);
        // The same host again while queued leaves with its first connect.
        assert_eq!(
            queued(&t.connect(EXE, &[10, 0, 0, 3], S / 2)),
            (3 * S / 2, 5)
        );
        // Released hosts join the working set and never wait again.
        assert_eq!(t.release_due(2 * S).len(), 3);
        assert_eq!(t.connect(EXE, &[10, 0, 0, 1], 2 * S), Decision::Known);
        assert_eq!(t.connect(EXE, &[10, 0, 0, 3], 2 * S), Decision::Known);
        // Another profile has its own working set and queue.
        let other = ExeKey { dev: 9, ino: 9 };
        assert_eq!(queued(&t.connect(other, &[10, 0, 0, 1], 2 * S)), (0, 1));
        // After a quiet spell a new host goes at once.
        t.release_due(100 * S);
        assert_eq!(queued(&t.connect(EXE, &[10, 0, 0, 9], 100 * S)), (0, 1));
    }

    #[test]
    fn the_working_set_is_bounded_and_the_queue_alarms_once() {
        let cfg = ThrottleConfig {
            rate: 10.0,
            working_set: 2,
            alarm_queue: 3,
        };
        let mut t = Throttle::new(cfg).unwrap();
        let alarms: Vec<bool> = (1..=5u8)
            .map(|i| match t.connect(EXE, &[i], 0) {
                Decision::Queued { alarm, .. } => alarm,
                Decision::Known => panic!(),
            })
            .collect();
        assert_eq!(alarms, vec![false, false, true, false, false]);
        assert_eq!(t.release_due(S).len(), 5);
        // Only the two most recent hosts are remembered.
        assert_eq!(t.connect(EXE, &[5], S), Decision::Known);
        assert_eq!(t.connect(EXE, &[4], S), Decision::Known);
        assert!(matches!(t.connect(EXE, &[1], S), Decision::Queued { .. }));
        assert!(Throttle::new(ThrottleConfig { rate: 0.0, ..cfg }).is_err());
    }

    #[test]
    fn a_storm_of_new_hosts_books_a_bounded_queue() {
        // A scanner the throttle does not hold (the daemon in detect mode, or a
        // process under a debugger) connects to 20,000 new hosts in a fifth of a second.
        let mut t = Throttle::new(ThrottleConfig::default()).unwrap();
        let mut last = (0, 0);
        for i in 0..20_000u32 {
            last = queued(&t.connect(EXE, &i.to_be_bytes(), S + u64::from(i) * 10_000));
        }
        assert_eq!(t.queued(EXE), MAX_QUEUE);
        // Past the bound, a new host waits as long as the last booked one, plus a
        // period: the delay stops growing, and its host is not remembered.
        assert_eq!(last.1, MAX_QUEUE);
        // (Booked hosts leave at 1 s, 2 s, ... MAX_QUEUE s; the last connect is at
        // 1 s + 19,999 x 10 us.)
        assert_eq!(last.0, (MAX_QUEUE as u64 + 1) * S - (S + 19_999 * 10_000));
        // Once the queue drains, it books again.
        let drained = t.release_due(u64::MAX / 2);
        assert_eq!(drained.len(), MAX_QUEUE);
        assert_eq!(t.working_set(EXE).len(), 5);
        assert!(matches!(
            t.connect(EXE, &[7; 4], u64::MAX / 2),
            Decision::Queued { queue: 1, .. }
        ));
    }

    #[test]
    fn unknown_hosts_each_wait_their_turn_and_are_never_remembered() {
        let mut t = Throttle::new(ThrottleConfig::default()).unwrap();
        let waits: Vec<(u64, usize)> = (0..3)
            .map(|_| queued(&t.connect(EXE, UNKNOWN_HOST, 10 * S)))
            .collect();
        assert_eq!(waits, vec![(0, 1), (S, 2), (2 * S, 3)]);
        assert_eq!(t.clear_at(EXE), 13 * S);
        assert_eq!(t.release_due(20 * S).len(), 3);
        assert!(t.working_set(EXE).is_empty());
        assert_eq!(host_text(UNKNOWN_HOST), "?");
    }

    #[test]
    fn a_new_host_runs_at_once_from_clear_at() {
        let mut t = Throttle::new(ThrottleConfig::default()).unwrap();
        assert_eq!(t.clear_at(EXE), 0);
        t.connect(EXE, &[1], 10 * S);
        t.connect(EXE, &[2], 10 * S);
        // Booked at 10 s and 11 s: a third new host would wait until 12 s.
        assert_eq!(t.clear_at(EXE), 12 * S);
        assert_eq!(t.queued(EXE), 2);
        t.connect(ExeKey { dev: 7, ino: 7 }, &[1], 10 * S);
        assert_eq!(t.queued_total(), 3);
        t.release_due(12 * S);
        assert_eq!(t.working_set(EXE), vec![vec![1], vec![2]]);
        assert_eq!(queued(&t.connect(EXE, &[3], 12 * S)), (0, 1));
        t.forget(EXE);
        assert!(t.working_set(EXE).is_empty());
    }
    #[test]
    fn a_restored_working_set_is_known_at_once_and_bounded() {
        let cfg = ThrottleConfig {
            working_set: 2,
            ..ThrottleConfig::default()
        };
        let mut t = Throttle::new(cfg).unwrap();
        // Saved least recently used first; the unknown host and a repeat are skipped,
        // and only the two most recent are kept.
        let saved = vec![vec![1], UNKNOWN_HOST.to_vec(), vec![2], vec![3], vec![2]];
        t.restore(EXE, &saved);
        assert_eq!(t.working_set(EXE), vec![vec![3], vec![2]]);
        assert_eq!(t.connect(EXE, &[2], S), Decision::Known);
        assert!(matches!(t.connect(EXE, &[1], S), Decision::Queued { .. }));
        // A profile already at work keeps what it saw since the start.
        t.release_due(10 * S);
        let now = t.working_set(EXE);
        t.restore(EXE, &[vec![9]]);
        assert_eq!(t.working_set(EXE), now);
    }

    #[test]
    fn a_restored_queue_releases_at_its_times_and_new_hosts_queue_behind_it() {
        let mut t = Throttle::new(ThrottleConfig::default()).unwrap();
        // Three new hosts at t=0: released at 0, 1, 2 s; saved at 0.5 s.
        for i in 1..=3u8 {
            t.connect(EXE, &[10, 0, 0, i], 0);
        }
        t.release_due(S / 2);
        let q = t.queue_of(EXE);
        assert_eq!(q.pending.len(), 2);
        assert_eq!(q.last_release, Some(2 * S));
        // A new daemon, started at 0.6 s: its working set and queue as saved.
        let mut u = Throttle::new(ThrottleConfig::default()).unwrap();
        u.restore(EXE, &t.working_set(EXE));
        u.restore_queue(EXE, &q, S * 6 / 10);
        assert_eq!(u.queued(EXE), 2);
        assert_eq!(u.clear_at(EXE), 3 * S);
        // A new host waits behind the queue (3 s), not from its start; a queued one
        // keeps its place.
        assert_eq!(
            queued(&u.connect(EXE, &[10, 0, 0, 9], S * 6 / 10)).0,
            3 * S - S * 6 / 10
        );
        assert_eq!(
            queued(&u.connect(EXE, &[10, 0, 0, 2], S * 6 / 10)).0,
            S - S * 6 / 10
        );
        // Released at their times, into the working set.
        assert_eq!(u.release_due(2 * S).len(), 2);
        assert_eq!(u.connect(EXE, &[10, 0, 0, 3], 2 * S), Decision::Known);
        // A profile that queued since the start keeps its own queue.
        let before = u.queue_of(EXE);
        u.restore_queue(EXE, &q, 2 * S);
        assert_eq!(u.queue_of(EXE), before);
        // Out of order and oversized: put in order and bounded.
        let big = SavedQueue {
            pending: (0..MAX_QUEUE as u64 + 10)
                .rev()
                .map(|i| (i * S, vec![1]))
                .collect(),
            last_release: None,
        };
        let other = ExeKey { dev: 7, ino: 7 };
        u.restore_queue(other, &big, 0);
        let got = u.queue_of(other);
        assert_eq!(got.pending.len(), MAX_QUEUE);
        assert!(got.pending.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(got.last_release, Some((MAX_QUEUE as u64 - 1) * S));
        // Times no real queue could have booked (a damaged file, a clock set back):
        // no later than one period per connect ahead from now.
        let far = SavedQueue {
            pending: vec![(u64::MAX, vec![1]), (u64::MAX, vec![2])],
            last_release: Some(u64::MAX),
        };
        let third = ExeKey { dev: 8, ino: 8 };
        u.restore_queue(third, &far, 10 * S);
        let got = u.queue_of(third);
        assert_eq!(
            got.pending.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![11 * S, 12 * S]
        );
        assert_eq!(got.last_release, Some(12 * S));
    }
}
