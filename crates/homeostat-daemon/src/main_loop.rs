//! The daemon's main loop: load the BPF programs, start the stop guard, the metrics
//! endpoint and the control channel, load the saved profiles, then poll the kernel's
//! events, sample its counters every tick, save now and then, answer admin requests;
//! on stop, end every response, save, and let the stop guard resume what is left.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use homeostat_core::ph::Mode;
use homeostat_core::symbols::{SymbolConfig, SymbolTable};
use homeostat_ebpf::{Event, ExecLsm, Kernel, Options};
use homeostat_monitor::config::ConfigFile;
use homeostat_monitor::control::Server;
use homeostat_monitor::daemon_profile;
use homeostat_monitor::sink::EventSink;
use homeostat_monitor::store::over_watermark;
use homeostat_monitor::throttle::{Throttle, ThrottleConfig};
use homeostat_monitor::ProfileStore;
use tracing::{info, warn};

use crate::daemon::Daemon;
use crate::evict::DELETED_SCAN;
use crate::prometheus::{MetricsServer, Snapshot};
use crate::stop_guard::StopGuard;

/// How often the kernel's counters are sampled.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// How often profiles are saved (and on exit).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// Ring buffer poll timeout.
const POLL: Duration = Duration::from_millis(200);

/// What the daemon is to do, from the command line and the configuration file.
pub struct DaemonOptions {
    /// pH's parameters and the per-executable `[modes]`.
    pub settings: ConfigFile,
    /// The state directory (the daemon's profiles go to its `daemon/` folder).
    pub store: ProfileStore,
    /// Where events go as JSON lines, if anywhere.
    pub events: Option<EventSink>,
    /// No event summary in the log (losses are still reported).
    pub quiet: bool,
    /// Serve Prometheus metrics on this loopback address.
    pub metrics: Option<SocketAddr>,
    /// Stop after this long (default: when `stop` is set).
    pub duration: Option<Duration>,
    /// The kernel's profile map holds at most this many (default and most 4096);
    /// eviction keeps it below 90% (docs/daemon.md).
    pub max_profiles: Option<u32>,
    /// Watch only the processes of this cgroup (v2 directory, e.g. a systemd scope or a
    /// container's cgroup): everything else on the machine is left alone.
    pub cgroup: Option<std::path::PathBuf>,
    /// Test (call, argument class) beside the pairs, with these settings
    /// (`--symbols args`; docs/arguments.md, "The daemon"); None: calls only.
    pub symbols: Option<SymbolConfig>,
    /// Williamson's connection throttle (`--throttle-connect`; docs/daemon.md,
    /// "Connection throttle"), the rule `homeostat run` applies.
    pub throttle: Option<ThrottleConfig>,
}

/// The id of a cgroup v2 directory (its inode number, what
/// `bpf_get_current_cgroup_id` returns), checked to be one.
pub(crate) fn cgroup_id(dir: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    if !dir.join("cgroup.procs").exists() || !dir.join("cgroup.controllers").exists() {
        anyhow::bail!(
            "{}: not a cgroup v2 directory (no cgroup.procs / cgroup.controllers)",
            dir.display()
        );
    }
    Ok(std::fs::metadata(dir)
        .with_context(|| format!("{}", dir.display()))?
        .ino())
}

/// Runs the daemon until `stop` is set (a signal handler's flag) or the duration is
/// over. Needs root, BPF and BTF; the error says what is missing.
pub fn run(opts: DaemonOptions, stop: &AtomicBool) -> Result<()> {
    let DaemonOptions {
        settings,
        store,
        events: json,
        quiet,
        metrics: metrics_addr,
        duration,
        max_profiles,
        cgroup,
        symbols,
        throttle,
    } = opts;
    let rule = throttle
        .map(Throttle::new)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--throttle-connect")?;
    if let Some(cfg) = symbols {
        // The core's limits on the settings (the kernel's path depth is checked at load).
        SymbolTable::new(cfg).context("--symbols args")?;
    }
    let scope_cgroup = cgroup
        .as_deref()
        .map(cgroup_id)
        .transpose()
        .context("--cgroup")?;
    let (config, modes) = (settings.ph, settings.modes);
    let state_dir = store.dir().to_path_buf();
    let dir = daemon_profile::dir_in(&state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let enforce = config.mode == Mode::Enforce || modes.values().any(|&m| m == Mode::Enforce);
    // Until the daemon sets a profile's own throttle flags (at its exec event), the
    // host's mode's apply, with a stop if a response is possible (the stop guard
    // starts after the load: if it fails, stopped processes are resumed at once).
    let thr_default =
        crate::throttle::flags_for(config.mode, homeostat_ebpf::thread_pidfds_supported());
    let kernel = Kernel::load(&Options {
        auto_create: true,
        // Where BPF LSM loads, execve is refused in the kernel too (else reported why).
        exec_lsm_at: if enforce { config.suspend_execve } else { 0 },
        max_profiles: max_profiles.unwrap_or(homeostat_ebpf::SLOTS),
        scope_cgroup,
        symbols,
        throttle: rule.as_ref().map(|_| thr_default),
        // A profile made at an exec trains: its forks and creations teach its peaks.
        rates: config.rate_limit.then_some(homeostat_ebpf::RateFlags {
            learn: true,
            check: false,
            stop: false,
        }),
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
    // No response without a stop guard: a process stopped by the kernel must never be
    // left stopped if this process dies.
    if enforce && !homeostat_ebpf::thread_pidfds_supported() {
        warn!(
            "this kernel has no thread pidfds (PIDFD_THREAD, Linux 6.9), \
             so the response cannot follow LFCs: detect only"
        );
    }
    let guard = if enforce && homeostat_ebpf::thread_pidfds_supported() {
        match kernel
            .stopped_map_id()
            .map_err(anyhow::Error::from)
            .and_then(StopGuard::start)
        {
            Ok(k) => Some(k),
            Err(e) => {
                warn!("no stop guard, so no response (detect only): {e:#}");
                None
            }
        }
    } else {
        None
    };
    let metrics_shared = Arc::new(Mutex::new(Snapshot::default()));
    let metrics = match metrics_addr {
        Some(addr) => {
            let m = MetricsServer::start(addr, metrics_shared.clone())?;
            info!("daemon: metrics on http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    let mut d = Daemon::new(config, modes, dir, json, quiet, guard.is_some());
    d.max_profiles = u64::from(kernel.max_profiles());
    d.symbols = kernel.symbols();
    if let Some(why) = kernel.open_fallback_error() {
        warn!(
            "argument classes: an open whose path is not resident at sys_enter cannot be retried at its exit ({why}): such opens are counted as unread and not tested"
        );
    }
    if let (Some(rule), Some(cfg)) = (rule, throttle) {
        let t = crate::throttle::ConnThrottle::new(
            rule,
            cfg.working_set,
            crate::throttle::flags_for(d.config.mode, d.respond),
        );
        d.responders.set_throttle(t.shared.clone());
        d.throttle = Some(t);
    }
    if d.config.rate_limit {
        let r = crate::rates::RateLimits::new(d.config.rate_margin, d.config.rate_window_ns());
        d.responders.set_rates(r.shared.clone());
        d.rates = Some(r);
    }
    let loaded = d.load(&kernel, &store);
    d.rates_load();
    d.rates_sync(&kernel);
    d.throttle_load(&kernel);
    let keys: Vec<_> = d.profiles.keys().copied().collect();
    for k in keys {
        d.throttle_mode(&kernel, k);
    }
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
        "daemon: watching ({:?} hook, {}, {loaded} profiles loaded from {}, room for {}, mode {:?}{}{})",
        kernel.hook(),
        match kernel.symbols() {
            Some(c) => format!(
                "symbols args (path depth {}, at most {} classes a profile{})",
                c.path_depth,
                c.max_classes,
                if kernel.open_fallback() {
                    ""
                } else {
                    "; no open fallback: opens of non-resident paths not tested"
                }
            ),
            None => "symbols calls".to_string(),
        },
        d.dir.display(),
        kernel.max_profiles(),
        d.config.mode,
        match &guard {
            Some(g) => format!(", stop guard pid {}", g.pid()),
            None => String::new(),
        },
        match &cgroup {
            Some(c) => format!(", only cgroup {}", c.display()),
            None => String::new(),
        }
    );

    let start = Instant::now();
    let deadline = duration;
    let mut last_tick = Instant::now();
    let mut last_save = Instant::now();
    let mut last_scan = Instant::now();
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
        d.throttle_tick(&kernel);
        d.rates_tick();
        // New executables arrive faster than ticks on a build machine: look at the
        // map's fill as soon as the execs say it may be near full.
        if over_watermark(d.profiles.len(), kernel.max_profiles() as usize) > 0 {
            d.evict(&kernel, false);
        }
        if last_tick.elapsed() >= TICK {
            d.tick(&kernel);
            d.rates_sync(&kernel);
            let scan = last_scan.elapsed() >= DELETED_SCAN;
            if scan {
                last_scan = Instant::now();
            }
            d.evict(&kernel, scan);
            if let Ok(mut m) = metrics_shared.lock() {
                *m = d.counts.clone();
            }
            last_tick = Instant::now();
        }
        if last_save.elapsed() >= SAVE_EVERY {
            d.save(&kernel);
            d.rates_save();
            d.throttle_save();
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
    d.rates_save();
    d.throttle_save();
    if d.throttle.is_some() && !d.quiet {
        info!(
            "throttle: {} connects to new hosts queued, {} of them held",
            d.limit_counts.throttle_queued, d.limit_counts.throttle_held
        );
    }
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
    // The stop guard resumes any process stopped between the shutdown and the detach.
    drop(guard);
    result
}
