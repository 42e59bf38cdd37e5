//! Rate limits learned from the profile: the graduated response of Williamson's
//! throttle applied to how fast a program creates processes and files.
//!
//! Why: a fork bomb, a worm spawning copies of itself, or ransomware writing out
//! encrypted copies makes the calls the program normally makes, just far more of them
//! per second. pH's sequence model sees nothing wrong; a rate does. Rather than a
//! fixed limit, each profile learns the highest rate its program reached in training,
//! and once the profile is normal, calls beyond that rate times a margin are held in a
//! queue released at the allowed rate (enforce) or reported (detect). A program at its
//! trained rate is never held (the limit is at least the peak it was trained on).
//!
//! The rule, all arithmetic with time as an argument:
//! - **What counts.** [`kind_of`]: *forks* are `fork`, `vfork`, `clone` and `clone3`
//!   (threads included: a call's flags are not always known, and a thread storm is as
//!   much a storm); *file creations* are `creat`, `mkdir(at)`, `mknod(at)`,
//!   `link(at)`, `symlink(at)`, and `open`/`openat` with `O_CREAT`. A call is judged
//!   before it runs, so an `O_CREAT` open of a file that already exists counts too
//!   (what is limited is the attempt). `openat2` keeps its flags in a structure that
//!   is not read, so it never counts.
//! - **Rate.** The number of such calls by all tasks of the profile in the last
//!   `window` (a sliding window: the half-open interval (t - window, t]).
//! - **Learning.** While the profile is not normal, [`PeakMeter`] records the highest
//!   count seen in any window: the profile's peak ([`LearnedRates`]).
//! - **Limit.** `max(1, ceil(peak * margin))` calls per window ([`LearnedRates::limit`]),
//!   with the window the peak was measured in. A profile without learned rates (one
//!   saved before rates existed, one seeded from the daemon, one trained without
//!   `--rate-limit`) has no limit.
//! - **Queue** ([`Limiter`]). A call that keeps every window at or under the limit runs
//!   now. Any other is released at the first time that keeps it so, and no sooner
//!   than `window / limit` after the release before it, so a storm leaves the queue
//!   at the allowed rate instead of in bursts.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::symbols::{flags, Arg};

/// Largest count a window tracks; a limit never exceeds it (bounds memory: a meter or
/// limiter holds at most this many timestamps).
pub const MAX_COUNT: u32 = 1 << 16;

/// Shortest rate window, ns (1 ms).
pub const MIN_WINDOW_NS: u64 = 1_000_000;
/// Longest rate window, ns (an hour). A queued call waits up to a window per call
/// ahead of it, so a window read from a damaged profile (up to `u64::MAX` ns, 584
/// years) would hold a program's forks for good.
pub const MAX_WINDOW_NS: u64 = 3_600_000_000_000;

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKind {
    /// Process and thread creation.
    Fork,
    /// File, directory, node and link creation.
    Create,
}

impl RateKind {
    /// Both kinds, in a fixed order.
    pub const ALL: [RateKind; 2] = [RateKind::Fork, RateKind::Create];

    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Fork => "fork",
            RateKind::Create => "create",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The kind of call `name` (an x86_64 call name) with its captured argument, if it
/// counts toward a rate.
pub fn kind_of(name: &str, arg: Option<&Arg>) -> Option<RateKind> {
    match name {
        "fork" | "vfork" | "clone" | "clone3" => Some(RateKind::Fork),
        "creat" | "mkdir" | "mkdirat" | "mknod" | "mknodat" | "link" | "linkat" | "symlink"
        | "symlinkat" => Some(RateKind::Create),
        "open" | "openat" => match arg {
            Some(Arg::Path { flags: f, .. }) if f & flags::CREATE != 0 => Some(RateKind::Create),
            _ => None,
        },
        _ => None,
    }
}

/// The rates a profile learned in training: the highest count of each kind seen in any
/// window of `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRates {
    /// The window the peaks were counted in, ns.
    pub window_ns: u64,
    /// Peak forks per window.
    pub fork_peak: u32,
    /// Peak file creations per window.
    pub create_peak: u32,
}

impl LearnedRates {
    /// Nothing learned yet, counting in windows of `window_ns`.
    pub fn new(window_ns: u64) -> Self {
        LearnedRates {
            window_ns: window_ns.max(1),
            fork_peak: 0,
            create_peak: 0,
        }
    }

    /// Checks rates read from a file: a window in
    /// [`MIN_WINDOW_NS`]..=[`MAX_WINDOW_NS`] (the range a configuration may set) and
    /// peaks no higher than [`MAX_COUNT`] (the most [`LearnedRates::record`] keeps).
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_WINDOW_NS..=MAX_WINDOW_NS).contains(&self.window_ns) {
            return Err(format!(
                "rate window of {} ns is outside {MIN_WINDOW_NS}..={MAX_WINDOW_NS}",
                self.window_ns
            ));
        }
        if self.fork_peak > MAX_COUNT || self.create_peak > MAX_COUNT {
            return Err(format!(
                "rate peaks {} and {} beyond {MAX_COUNT}",
                self.fork_peak, self.create_peak
            ));
        }
        Ok(())
    }

    /// The peak of `kind`.
    pub fn peak(&self, kind: RateKind) -> u32 {
        match kind {
            RateKind::Fork => self.fork_peak,
            RateKind::Create => self.create_peak,
        }
    }

    /// Raises the peak of `kind` to `count` if higher; whether it changed.
    pub fn record(&mut self, kind: RateKind, count: u32) -> bool {
        let p = match kind {
            RateKind::Fork => &mut self.fork_peak,
            RateKind::Create => &mut self.create_peak,
        };
        let changed = count > *p;
        *p = (*p).max(count.min(MAX_COUNT));
        changed
    }

    /// Calls of `kind` allowed per window: `max(1, ceil(peak * margin))`, at most
    /// [`MAX_COUNT`].
    pub fn limit(&self, kind: RateKind, margin: f64) -> u32 {
        let l = (f64::from(self.peak(kind)) * margin).ceil();
        if l.is_nan() {
            return 1;
        }
        l.clamp(1.0, f64::from(MAX_COUNT)) as u32
    }

    /// Both profiles' peaks (a merge of two saves): the higher of each, in `self`'s
    /// window when the windows differ.
    pub fn merged(&self, other: &LearnedRates) -> LearnedRates {
        if self.window_ns != other.window_ns {
            return *self;
        }
        LearnedRates {
            window_ns: self.window_ns,
            fork_peak: self.fork_peak.max(other.fork_peak),
            create_peak: self.create_peak.max(other.create_peak),
        }
    }
}

/// Counts events in a sliding window (training, and detect mode).
#[derive(Debug, Clone, Default)]
pub struct PeakMeter {
    times: VecDeque<u64>,
}

impl PeakMeter {
    /// Adds an event at `now_ns`; returns the events in (now - window, now].
    pub fn observe(&mut self, now_ns: u64, window_ns: u64) -> u32 {
        while self
            .times
            .front()
            .is_some_and(|&t| t.saturating_add(window_ns) <= now_ns)
        {
            self.times.pop_front();
        }
        self.times.push_back(now_ns);
        if self.times.len() > MAX_COUNT as usize {
            self.times.pop_front();
        }
        self.times.len() as u32
    }
}

/// Where a call goes in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// How long the call waits, ns (0: it runs now).
    pub delay_ns: u64,
    /// Calls waiting in the queue, this one included (0 when it runs now).
    pub queue: usize,
}

/// The enforce-mode queue of one profile and kind.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    /// Release times of the most recent calls (at most `limit` of them), in order.
    released: VecDeque<u64>,
    /// Release times still in the future, in order.
    pending: VecDeque<u64>,
}

impl Limiter {
    /// A call at `now_ns` under at most `limit` calls per `window_ns`.
    pub fn admit(&mut self, now_ns: u64, limit: u32, window_ns: u64) -> Slot {
        self.release_due(now_ns);
        let limit = limit.clamp(1, MAX_COUNT) as usize;
        while self.released.len() > limit {
            self.released.pop_front();
        }
        let mut t = now_ns;
        if self.released.len() == limit {
            // The limit-th most recent release leaves the window at this time.
            t = t.max(self.released[0].saturating_add(window_ns));
        }
        if t > now_ns {
            let spacing = window_ns / limit as u64;
            if let Some(&last) = self.released.back() {
                t = t.max(last.saturating_add(spacing));
            }
        }
        // Releases stay in order: a call never overtakes one queued before it.
        if let Some(&last) = self.released.back() {
            t = t.max(last);
        }
        self.released.push_back(t);
        if self.released.len() > limit {
            self.released.pop_front();
        }
        if t > now_ns {
            self.pending.push_back(t);
            Slot {
                delay_ns: t - now_ns,
                queue: self.pending.len(),
            }
        } else {
            Slot {
                delay_ns: 0,
                queue: 0,
            }
        }
    }

    /// Drops the queued calls released by `now_ns`; returns how many.
    pub fn release_due(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        while self.pending.front().is_some_and(|&t| t <= now_ns) {
            self.pending.pop_front();
            n += 1;
        }
        n
    }

    /// Calls waiting.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// From when a call would run at once ([`Limiter::admit`] with no wait) under
    /// `limit` calls per `window_ns` (0: from any time). A front end that can hold a
    /// call only once it has taken the process over (the daemon) holds it that long.
    pub fn free_at(&self, limit: u32, window_ns: u64) -> u64 {
        let limit = limit.clamp(1, MAX_COUNT) as usize;
        let n = self.released.len();
        let full = if n >= limit {
            self.released[n - limit].saturating_add(window_ns)
        } else {
            0
        };
        full.max(self.released.back().copied().unwrap_or(0))
    }

    /// Calls that ran at `times` (oldest first) without the limiter being asked (the
    /// daemon's kernel counts the calls of processes it does not hold): they take
    /// their places in the window, so later calls are judged with them. Times not
    /// after the last one booked are already known and skipped.
    pub fn seed(&mut self, times: impl IntoIterator<Item = u64>) {
        for t in times {
            if self.released.back().is_some_and(|&l| t <= l) {
                continue;
            }
            self.released.push_back(t);
            if self.released.len() > MAX_COUNT as usize {
                self.released.pop_front();
            }
        }
    }

    /// Gives back the booking of a queued call that will not run at `release_ns`
    /// (its task died, or a signal interrupted the wait and the call comes again):
    /// without this, later calls would queue behind calls that never ran. A booking
    /// already due by `now_ns` ran and is kept. Returns whether one was given back.
    pub fn cancel(&mut self, release_ns: u64, now_ns: u64) -> bool {
        if release_ns <= now_ns {
            return false;
        }
        let Some(i) = self.pending.iter().rposition(|&t| t == release_ns) else {
            return false;
        };
        self.pending.remove(i);
        if let Some(j) = self.released.iter().rposition(|&t| t == release_ns) {
            self.released.remove(j);
        }
        // `released` keeps only the last `limit` releases: when the cancelled call was
        // its tail, the latest booking still queued must stay what later calls follow.
        if let Some(&last) = self.pending.back() {
            if self.released.back().is_none_or(|&r| r < last) {
                self.released.push_back(last);
            }
        }
        true
    }
}

/// The live (unsaved) rate state of one profile: meters and queues of each kind.
#[derive(Debug, Clone, Default)]
pub struct RateState {
    meters: [PeakMeter; 2],
    limiters: [Limiter; 2],
    alarmed: [bool; 2],
}

impl RateState {
    /// The meter of `kind`.
    pub fn meter(&mut self, kind: RateKind) -> &mut PeakMeter {
        &mut self.meters[kind.index()]
    }

    /// The queue of `kind`.
    pub fn limiter(&mut self, kind: RateKind) -> &mut Limiter {
        &mut self.limiters[kind.index()]
    }

    /// Whether a queue of `queue` calls of `kind` raises an alarm: once when it reaches
    /// `at`, again only after it fell below.
    pub fn alarm(&mut self, kind: RateKind, queue: usize, at: usize) -> bool {
        let a = &mut self.alarmed[kind.index()];
        if queue < at {
            *a = false;
            return false;
        }
        let fire = !*a;
        *a = true;
        fire
    }

    /// Calls waiting, of every kind.
    pub fn queued(&self) -> usize {
        self.limiters.iter().map(Limiter::queued).sum()
    }

    /// [`Limiter::cancel`] on the queue of `kind`.
    pub fn cancel(&mut self, kind: RateKind, release_ns: u64, now_ns: u64) -> bool {
        self.limiters[kind.index()].cancel(release_ns, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn a_cancelled_booking_frees_its_place_and_a_run_one_stays() {
        let mut l = Limiter::default();
        // Limit 1 per second: 0 runs now, the next two wait 1 s and 2 s.
        assert_eq!(l.admit(0, 1, S).delay_ns, 0);
        assert_eq!(l.admit(0, 1, S).delay_ns, S);
        assert_eq!(l.admit(0, 1, S).delay_ns, 2 * S);
        assert_eq!(l.queued(), 2);
        // The last one's task dies: the next call takes its place, not the one after.
        assert!(l.cancel(2 * S, MS));
        assert_eq!(l.queued(), 1);
        assert_eq!(l.admit(MS, 1, S).delay_ns, 2 * S - MS);
        // A booking that was due has run: nothing to give back.
        assert!(!l.cancel(S, S + MS));
        assert!(!l.cancel(S, S));
        // Nor one never booked.
        assert!(!l.cancel(7 * S, 0));
        assert_eq!(l.queued(), 2);
    }

    #[test]
    fn seeded_calls_count_and_free_at_is_when_a_call_runs_at_once() {
        let mut l = Limiter::default();
        assert_eq!(l.free_at(2, S), 0);
        // Two calls ran (unseen) at 0 and 100 ms: with a limit of 2 per second the
        // next waits until 1 s, and a call at 1 s runs at once.
        l.seed([0, 100 * MS]);
        l.seed([50 * MS, 100 * MS]);
        assert_eq!(l.free_at(2, S), S);
        assert_eq!(l.admit(200 * MS, 2, S).delay_ns, 800 * MS);
        // Booked at 1 s: the next at 1.1 s (the 100 ms call leaves the window).
        assert_eq!(l.free_at(2, S), 1100 * MS);
        let mut m = l.clone();
        assert_eq!(m.admit(1100 * MS, 2, S).delay_ns, 0);
        assert!(l.admit(1099 * MS, 2, S).delay_ns > 0);
    }

    #[test]
    fn what_counts() {
        let open = |f| Arg::Path {
            path: b"/tmp/x".to_vec(),
            flags: f,
        };
        assert_eq!(kind_of("clone", None), Some(RateKind::Fork));
        assert_eq!(kind_of("vfork", None), Some(RateKind::Fork));
        assert_eq!(kind_of("mkdir", None), Some(RateKind::Create));
        assert_eq!(kind_of("symlinkat", None), Some(RateKind::Create));
        assert_eq!(
            kind_of("openat", Some(&open(flags::CREATE | flags::WRITE))),
            Some(RateKind::Create)
        );
        assert_eq!(kind_of("openat", Some(&open(flags::WRITE))), None);
        assert_eq!(kind_of("openat", None), None);
        assert_eq!(kind_of("read", None), None);
    }

    #[test]
    fn the_meter_counts_a_sliding_window() {
        let mut m = PeakMeter::default();
        let counts: Vec<u32> = [0, 100, 200, 999, 1000, 1100, 3000]
            .iter()
            .map(|&t| m.observe(t * MS, S))
            .collect();
        // (t - 1 s, t]: at 1000 ms the event at 0 has left.
        assert_eq!(counts, vec![1, 2, 3, 4, 4, 4, 1]);
    }

    #[test]
    fn limits_from_peaks() {
        let mut r = LearnedRates::new(S);
        assert_eq!(
            r.limit(RateKind::Fork, 2.0),
            1,
            "nothing learned: 1 per window"
        );
        assert!(r.record(RateKind::Fork, 7));
        assert!(!r.record(RateKind::Fork, 3));
        assert_eq!(r.limit(RateKind::Fork, 2.0), 14);
        assert_eq!(r.limit(RateKind::Fork, 1.5), 11);
        assert_eq!(r.limit(RateKind::Create, 2.0), 1);
        assert_eq!(r.limit(RateKind::Fork, f64::NAN), 1);
        assert_eq!(r.limit(RateKind::Fork, 1e30), MAX_COUNT);
        let mut o = LearnedRates::new(S);
        o.record(RateKind::Create, 5);
        assert_eq!(r.merged(&o).create_peak, 5);
        assert_eq!(r.merged(&o).fork_peak, 7);
    }

    #[test]
    fn a_storm_leaves_at_the_limit_and_the_trained_rate_never_waits() {
        // Limit 10 per second. A storm of 100 calls at t = 0..100 ms.
        let mut l = Limiter::default();
        let slots: Vec<Slot> = (0..100).map(|i| l.admit(i * MS, 10, S)).collect();
        // The first ten run at once.
        assert!(slots[..10].iter().all(|s| s.delay_ns == 0));
        // The rest leave every 100 ms from t = 1 s: call k at 1 s + (k - 10) * 100 ms.
        for (k, s) in slots.iter().enumerate().skip(10) {
            let release = k as u64 * MS + s.delay_ns;
            assert_eq!(release, S + (k as u64 - 10) * 100 * MS, "call {k}");
            assert_eq!(s.queue, k - 9);
        }
        // Every window of one second holds at most 10 releases.
        let times: Vec<u64> = slots
            .iter()
            .enumerate()
            .map(|(k, s)| k as u64 * MS + s.delay_ns)
            .collect();
        for &t in &times {
            let n = times.iter().filter(|&&u| u <= t && u + S > t).count();
            assert!(n <= 10, "{n} releases in the window ending at {t}");
        }
        assert_eq!(l.release_due(S + 450 * MS), 5);
        assert_eq!(l.queued(), 85);

        // A program whose every window holds at most its peak, at margin 1, never
        // waits: bursts of 10 every second, the burst's calls 1 ms apart.
        let mut l = Limiter::default();
        let mut m = PeakMeter::default();
        let mut peak = 0;
        let burst: Vec<u64> = (0..20)
            .flat_map(|s| (0..10).map(move |i| s * S + i * MS))
            .collect();
        for &t in &burst {
            peak = peak.max(m.observe(t, S));
        }
        assert_eq!(peak, 10);
        assert!(burst.iter().all(|&t| l.admit(t, peak, S).delay_ns == 0));
    }

    #[test]
    fn alarms_once_per_growth() {
        let mut r = RateState::default();
        let fired: Vec<bool> = [1, 4, 5, 6, 5, 2, 5]
            .iter()
            .map(|&q| r.alarm(RateKind::Fork, q, 5))
            .collect();
        assert_eq!(fired, vec![false, false, true, false, false, false, true]);
    }
}
