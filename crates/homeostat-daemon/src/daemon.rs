//! The daemon's state, owned by its one loop thread ([`crate::main_loop`]): profiles,
//! responses under way, counters. Each concern adds its methods in its own module:
//! events ([`crate::events`]), the freeze / normal rule ([`crate::lifecycle`]), admin
//! requests ([`crate::admin`]), saving and loading ([`crate::persist`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use homeostat_core::ph::{ExeKey, Mode, PhConfig, ProfileState};
use homeostat_core::symbols::SymbolConfig;
use homeostat_ebpf::{ArgStats, Kernel, Stats};
use homeostat_monitor::sink::EventSink;
use tracing::warn;

use crate::lifecycle::{kernel_state, Prof};
use crate::prometheus::Snapshot;
use crate::respond::Responders;

pub(crate) struct Daemon {
    pub config: PhConfig,
    /// Per-executable modes (config `[modes]`, by path) over `config.mode`.
    pub modes: BTreeMap<String, Mode>,
    pub dir: PathBuf,
    pub profiles: HashMap<ExeKey, Prof>,
    pub json: Option<EventSink>,
    pub quiet: bool,
    pub stats: Stats,
    /// Normal profiles stop anomalous processes (enforce mode, with a stop guard).
    pub respond: bool,
    pub responders: Responders,
    /// Processes whose LFC went above tolerize_limit, until their response ends: their
    /// anomalies do not count toward anomaly_limit.
    pub tolerized: HashSet<u32>,
    /// The profile of each process under response (from its stop event).
    pub resp_keys: HashMap<u32, ExeKey>,
    /// Responses whose first delay was reported (one `delay_start` each).
    pub delaying: HashSet<u32>,
    /// Counters for `homeostat status` and the metrics endpoint.
    pub counts: Snapshot,
    pub started: Instant,
    /// The kernel's rows_full counter when eviction last looked.
    pub rows_full_seen: u64,
    /// The kernel's profile map size (for `status`).
    pub max_profiles: u64,
    /// Argument classes on (`--symbols args`), with these settings.
    pub symbols: Option<SymbolConfig>,
    /// The argument side's loss counters at the last sample.
    pub arg_stats: ArgStats,
    /// The kernel's loss counters of the throttle and the rate limits, as last read.
    pub limit_stats: homeostat_ebpf::ThrottleStats,
    /// The last class a normal profile never saw, by thread (its anomaly event comes
    /// next): (call, class name). Bounded: cleared past 4096 threads.
    pub unseen: HashMap<u32, (u32, Arc<str>)>,
    /// The connection throttle (`--throttle-connect`), if on.
    pub throttle: Option<crate::throttle::ConnThrottle>,
    /// What the throttle and the rate limits did (`status`, metrics, exit line).
    pub limit_counts: homeostat_monitor::control::LimitCounts,
    /// Fork and file-creation rate limits (`--rate-limit`), if on.
    pub rates: Option<crate::rates::RateLimits>,
    /// `homeostat run`'s profiles, which seed an executable the daemon has no profile
    /// for: at start, and when a file reusing a profile's inode number runs.
    pub store: Option<homeostat_monitor::ProfileStore>,
}

impl Daemon {
    /// A daemon with no profiles yet; `respond`: it has a stop guard.
    pub(crate) fn new(
        config: PhConfig,
        modes: BTreeMap<String, Mode>,
        dir: PathBuf,
        json: Option<EventSink>,
        quiet: bool,
        respond: bool,
    ) -> Daemon {
        Daemon {
            respond,
            responders: Responders::new(config.clone()),
            config,
            modes,
            dir,
            profiles: HashMap::new(),
            json,
            quiet,
            stats: Stats::default(),
            tolerized: HashSet::new(),
            resp_keys: HashMap::new(),
            delaying: HashSet::new(),
            counts: Snapshot::default(),
            started: Instant::now(),
            rows_full_seen: 0,
            max_profiles: 0,
            symbols: None,
            arg_stats: ArgStats::default(),
            limit_stats: homeostat_ebpf::ThrottleStats::default(),
            unseen: HashMap::new(),
            throttle: None,
            limit_counts: Default::default(),
            rates: None,
            store: None,
        }
    }

    /// Moves a profile to state `to`, tells the kernel (test or learn, respond or
    /// not) and reports the change.
    pub(crate) fn set_state(
        &mut self,
        kernel: &Kernel,
        key: ExeKey,
        to: ProfileState,
        reason: &str,
    ) {
        let Some(p) = self.profiles.get_mut(&key) else {
            return;
        };
        let from = p.state;
        p.state = to;
        p.dirty = true;
        if to == ProfileState::Normal || to == ProfileState::Training {
            p.anomalies = 0;
        }
        if to == ProfileState::Training && from != ProfileState::Training {
            p.reset_by(reason);
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
    pub(crate) fn mode_of(&self, key: ExeKey) -> Mode {
        match self.profiles.get(&key) {
            Some(p) => p
                .paths
                .iter()
                .find_map(|x| self.modes.get(&**x).copied())
                .unwrap_or_else(|| self.mode_for(&p.path)),
            None => self.config.mode,
        }
    }

    /// Whether the profile's anomalous processes are to be stopped once it is normal:
    /// it is in enforce mode and the daemon can respond (it has a stop guard).
    pub(crate) fn responds(&self, key: ExeKey) -> bool {
        self.respond && self.mode_of(key) == Mode::Enforce
    }

    /// The mode of the executable at `path`: its `[modes]` entry, else the host's.
    pub(crate) fn mode_for(&self, path: &str) -> Mode {
        self.modes.get(path).copied().unwrap_or(self.config.mode)
    }
}
