//! `homeostat daemon` and `homeostat status`: the arguments turned into
//! `homeostat_daemon` options, and a running daemon's counters printed. The daemon
//! itself (lifecycle, response, persistence, admin, metrics) is the `homeostat-daemon`
//! crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use homeostat_core::ph::Mode;
use homeostat_core::symbols::{SymbolConfig, SymbolMode};
use homeostat_daemon::DaemonOptions;
use homeostat_monitor::control::{
    broadcast, AdminReply, Reply, Request, StatusReply, NOT_A_DAEMON,
};
use homeostat_monitor::sink::open_events;
use homeostat_monitor::throttle::ThrottleConfig;

use super::state::{open_store, settings};
use crate::cli::{DaemonArgs, HookTo, StateFlags};

/// `homeostat daemon`.
pub fn run(a: DaemonArgs) -> Result<()> {
    crate::logging::init_daemon();
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
    let mut settings = settings(&a.state, mode, a.normal_wait)?;
    settings.ph.rate_limit |= a.rate_limit;
    if let Some(m) = a.rate_margin {
        settings.ph.rate_margin = m;
    }
    if let Some(w) = a.rate_window {
        settings.ph.rate_window_secs = w;
    }
    settings.ph.validate().map_err(anyhow::Error::msg)?;
    let opts = DaemonOptions {
        settings,
        store: open_store(&a.state)?,
        events: open_events(a.events.as_deref())?,
        quiet: a.quiet,
        metrics: a.metrics,
        duration: a.duration.map(Duration::from_secs_f64),
        max_profiles: a.max_profiles,
        cgroup: a.cgroup,
        symbols: (a.symbols.symbols == SymbolMode::Args).then_some(SymbolConfig {
            path_depth: a.symbols.path_depth,
            max_classes: a.symbols.max_classes,
        }),
        throttle: a.throttle_connect.map(|rate| ThrottleConfig {
            rate,
            working_set: a.throttle_working_set,
            ..ThrottleConfig::default()
        }),
    };
    homeostat_daemon::run(opts, &stop)
}

/// `homeostat daemon-stop-guard` (started by the daemon, never by hand).
pub fn stop_guard(map_id: u32) -> Result<()> {
    // Ignored: only the daemon's exit ends the guard.
    ctrlc::set_handler(|| {}).context("ignoring termination signals")?;
    homeostat_daemon::stop_guard::serve(map_id)
}

/// `homeostat hook floor|real`: swaps every running floor daemon's sys_enter program;
/// an error unless at least one did and none refused.
pub fn hook(to: HookTo, state: &StateFlags) -> Result<()> {
    let store = open_store(state)?;
    let req = Request::Hook {
        floor: to == HookTo::Floor,
    };
    // Only daemons: a `homeostat run` monitor in the same directory refuses the
    // request as it refuses `status`, and is no failure here.
    let mut swapped = 0;
    for (pid, r) in broadcast::<AdminReply>(store.dir(), &req) {
        match r {
            Reply::Ok(_) => swapped += 1,
            Reply::Error(e) if e.error.starts_with(NOT_A_DAEMON) => {}
            Reply::Error(e) => anyhow::bail!("daemon pid {pid}: {}", e.error),
        }
    }
    if swapped == 0 {
        anyhow::bail!("no running daemon in {}", store.dir().display());
    }
    Ok(())
}

/// `homeostat status`: a running daemon's counters.
pub fn status(json: bool, state: &StateFlags) -> Result<()> {
    let store = open_store(state)?;
    let replies: Vec<(u32, StatusReply)> = broadcast::<StatusReply>(store.dir(), &Request::Status)
        .into_iter()
        .filter_map(|(pid, r)| Some((pid, r.ok().filter(|s| s.daemon)?)))
        .collect();
    if json {
        // Through a JSON value, whose keys print sorted: the output of earlier versions.
        let all = replies
            .iter()
            .map(|(_, s)| serde_json::to_value(s))
            .collect::<serde_json::Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string(&all)?);
        return Ok(());
    }
    if replies.is_empty() {
        anyhow::bail!("no running daemon in {}", store.dir().display());
    }
    for (pid, s) in &replies {
        let (l, p) = (&s.losses, &s.profiles);
        println!(
            "daemon pid {pid}: mode {}, up {:.0} s, response {}",
            serde_json::to_string(&s.mode)?,
            s.uptime_s,
            if s.respond { "on" } else { "off" }
        );
        match s.floor {
            Some(true) => println!(
                "  sys_enter hook: the floor (a floor build): nothing is monitored; `homeostat hook real` swaps the real program in"
            ),
            Some(false) => println!("  sys_enter hook: the real program (a floor build)"),
            None => {}
        }
        println!(
            "  events {} ({:.1}/s), anomalies {}, responses {} ({} now), delayed calls {}, execve refused {}",
            s.events, s.events_per_s, s.anomalies, s.responses,
            s.under_response.len(), s.delays, s.execve_refused
        );
        println!(
            "  profiles: {} training, {} frozen, {} normal (room for {}); evicted: {} of deleted executables, {} least recently used",
            p.training, p.frozen, p.normal, s.max_profiles, s.evicted.deleted, s.evicted.lru
        );
        let share = if s.calls > 0 {
            format!("{:.1}%", 100.0 * s.calls_normal as f64 / s.calls as f64)
        } else {
            "-".to_string()
        };
        println!(
            "  calls under normal profiles: {share} ({} of {} since start)",
            s.calls_normal, s.calls
        );
        println!(
            "  losses: {} events, {} pairs (rows full), {} tasks, {} profiles, {} stops",
            l.lost_events, l.rows_full, l.tasks_full, l.profiles_full, l.stops_failed
        );
        if let Some(g) = s.general_calls {
            println!("  calls on the general path (every task's, not the common call): {g}");
        }
        if s.tids_taken > 0 {
            println!(
                "  task states sent to task storage (both slots held): {}",
                s.tids_taken
            );
        }
        if let Some(a) = &s.arguments {
            println!(
                "  argument classes: {} calls past a profile's cap (class `other`), {} not learnt (map full), {} arguments unreadable (not tested), {} events lost",
                a.overflowed, a.map_full, a.unread, a.lost_events
            );
        }
        if let Some(l) = &s.limits {
            println!(
                "  throttle: {} connects to new hosts queued ({} held), {} released, {} alarms; {} waiting now",
                l.throttle_queued, l.throttle_held, l.throttle_released, l.throttle_alarms, l.throttle_waiting
            );
            println!(
                "  rate limits: {} calls over a limit, {} queued, {} released, {} alarms; {} waiting now",
                l.rate_exceeded, l.rate_queued, l.rate_released, l.rate_alarms, l.rate_waiting
            );
            println!(
                "  limits' losses: {} connect addresses unreadable (throttled as unknown hosts), {} events lost",
                l.unread_addresses, l.lost_events
            );
        }
        for r in s.bpf_run_time.iter().flatten() {
            let per = if r.run_cnt > 0 {
                format!("{:.1} ns per run", r.run_time_ns as f64 / r.run_cnt as f64)
            } else {
                "no runs".to_string()
            };
            println!("  bpf {}: {per} ({} runs)", r.name, r.run_cnt);
        }
    }
    Ok(())
}
