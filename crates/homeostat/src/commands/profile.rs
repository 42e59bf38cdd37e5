//! `homeostat profile ...`: the pH profiles in the state directory.
//!
//! These commands edit the profile files (atomically). A `homeostat run` that is
//! running keeps its own copy in memory and saves it over the file when it exits, so
//! administer profiles between runs.

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Result};
use homeostat_core::ph::PhConfig;
use homeostat_core::ph::{ExeKey, PhProfile, ProfileState};
use homeostat_core::Model;
use homeostat_monitor::control::{
    broadcast, AdminReply, LastReset, ProfileEntry, ProfilesReply, Progress, PsReply, Reply,
    Request, SaveReply,
};
use homeostat_monitor::daemon_profile::{self, DaemonProfile};
use homeostat_monitor::now_ns;
use homeostat_monitor::ProfileStore;
use tracing::warn;

use super::state::{open_store, settings};
use crate::cli::{ProfileCmd, ProfileTarget, StateFlags};
use crate::fsutil::printable;

/// The daemon's profile files, the unreadable ones reported.
fn daemon_files(store: &ProfileStore) -> Vec<(std::path::PathBuf, DaemonProfile)> {
    let (found, bad) = daemon_profile::scan(&daemon_profile::dir_in(store.dir()));
    for (path, e) in bad {
        warn!("{}: {e}", path.display());
    }
    found
}

/// Has every running monitor save its profiles, so the files are its live state.
fn save_live(store: &ProfileStore) {
    broadcast::<SaveReply>(store.dir(), &Request::Save);
}

/// Whether a profile with this path and key is what the user named `exe` (a path, a
/// key, or a file name).
fn names(exe: &str, by_file: Option<ExeKey>, path: &str, key: ExeKey) -> bool {
    Some(key) == by_file
        || key.to_string() == exe
        || path == exe
        || std::path::Path::new(path)
            .file_name()
            .is_some_and(|f| f == exe)
}

fn key_of_file(exe: &str) -> Option<ExeKey> {
    std::fs::metadata(exe).ok().map(|m| ExeKey {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The daemon profile file (`daemon/*.json`) named by `exe`, if exactly one is.
fn daemon_file(
    store: &ProfileStore,
    exe: &str,
) -> Result<Option<(std::path::PathBuf, DaemonProfile)>> {
    let by_file = key_of_file(exe);
    let mut found: Vec<_> = daemon_files(store)
        .into_iter()
        .filter(|(_, d)| {
            std::iter::once(&d.path)
                .chain(&d.paths)
                .any(|path| names(exe, by_file, path, d.key()))
        })
        .collect();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        n => bail!("{exe} matches {n} daemon profiles; name it by key"),
    }
}

fn find(store: &ProfileStore, exe: &str) -> Result<PhProfile> {
    // Running monitors hold newer state than their last save: have them save first.
    save_live(store);
    let (all, errors) = store.load_all();
    for e in errors {
        warn!("profile set aside: {e}");
    }
    let by_file = key_of_file(exe);
    let matches: Vec<PhProfile> = all
        .into_iter()
        .filter(|p| names(exe, by_file, &p.path, p.key))
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one match")),
        0 => bail!("no profile for {exe} in {}", store.dir().display()),
        n => bail!("{exe} matches {n} profiles; name it by path or key (homeostat profile list)"),
    }
}

fn line(p: &PhProfile) -> String {
    format!(
        "{:<9} {:>7} {:>10} {:>9}  {:<16} {}",
        p.state.to_string(),
        p.pairs(),
        p.train_count,
        p.anomalies,
        p.key.to_string(),
        printable(&p.path)
    )
}

fn now_s() -> f64 {
    now_ns() as f64 / 1e9
}

/// A `homeostat run` profile's progress to normal, with the configuration's rule.
fn run_progress(p: &PhProfile, config: &PhConfig) -> Progress {
    Progress::of(
        p.state,
        p.train_count,
        p.last_mod_count,
        p.normal_time_ns,
        None,
        now_ns(),
        config,
    )
}

/// A daemon file's progress (no daemon running: its last saved state).
fn file_progress(d: &DaemonProfile, config: &PhConfig) -> Progress {
    Progress::of(
        d.state,
        d.train_count,
        d.last_mod_count,
        d.normal_time_ns,
        LastReset::at(d.last_reset_ns, &d.last_reset_why),
        now_ns(),
        config,
    )
}

/// `homeostat profile list [--json]`.
fn list(json: bool, state: &StateFlags) -> Result<()> {
    let config = settings(state, None, None)?.ph;
    let store = open_store(state)?;
    save_live(&store);
    let (mut all, errors) = store.load_all();
    for e in errors {
        warn!("profile set aside: {e}");
    }
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let live = daemon_profiles(store.dir());
    let files = if live.is_empty() {
        // No daemon running: its files.
        daemon_files(&store)
    } else {
        vec![]
    };
    if json {
        let mut out: Vec<serde_json::Value> = vec![];
        for p in &all {
            out.push(serde_json::json!({
                "source": "run", "key": p.key.to_string(), "path": p.path,
                "paths": [p.path], "scripts": [], "state": p.state, "pairs": p.pairs(),
                "train_count": p.train_count, "last_mod_count": p.last_mod_count,
                "anomalies": p.anomalies, "progress": run_progress(p, &config),
            }));
        }
        for (_, d) in &files {
            out.push(serde_json::json!({
                "source": "daemon file", "key": d.key().to_string(), "path": d.path,
                "paths": d.paths, "scripts": d.scripts, "state": d.state,
                "pairs": d.pair_count(), "train_count": d.train_count,
                "last_mod_count": d.last_mod_count, "anomalies": d.anomalies,
                "progress": file_progress(d, &config),
            }));
        }
        for (pid, p) in &live {
            let mut v = serde_json::to_value(p)?;
            v["source"] = "daemon".into();
            v["daemon"] = (*pid).into();
            out.push(v);
        }
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{:<9} {:>7} {:>10} {:>9}  {:<16} exe  [progress to normal]",
        "state", "pairs", "trained", "anomalies", "key"
    );
    for p in &all {
        println!(
            "{}  [{}]",
            line(p),
            run_progress(p, &config).describe(p.state, now_s())
        );
    }
    for (_, d) in &files {
        println!(
            "{:<9} {:>7} {:>10} {:>9}  {:<16} {}  (daemon file)  [{}]",
            d.state.to_string(),
            d.pair_count(),
            d.train_count,
            d.anomalies,
            d.key().to_string(),
            printable(&d.path),
            file_progress(d, &config).describe(d.state, now_s())
        );
    }
    for (pid, p) in &live {
        println!(
            "{:<9} {:>7} {:>10} {:>9}  {:<16} {}  (daemon {pid})  [{}]",
            p.state.to_string(),
            "-",
            p.train_count,
            p.anomalies,
            p.key,
            printable(&p.path),
            p.progress.describe(p.state, now_s())
        );
    }
    Ok(())
}

/// `homeostat profile show EXE [--json]`.
fn show(json: bool, t: &ProfileTarget) -> Result<()> {
    let config = settings(&t.state, None, None)?.ph;
    let store = open_store(&t.state)?;
    let p = match find(&store, &t.exe) {
        Ok(p) => p,
        Err(e) => {
            // A daemon profile (saved just now by find's broadcast), with the running
            // daemon's view of it when there is one.
            let Some((file, d)) = daemon_file(&store, &t.exe)? else {
                return Err(e);
            };
            let key = d.key().to_string();
            // Its argument classes (daemon --symbols args), from the file beside it.
            let classes: Vec<(String, String)> = file
                .parent()
                .map(|dir| homeostat_daemon::classes::path_in(dir, d.key()))
                .and_then(|p| {
                    homeostat_daemon::classes::ClassesFile::load(&p)
                        .ok()
                        .flatten()
                })
                .map(|f| {
                    f.classes
                        .into_iter()
                        .map(|c| {
                            let call = homeostat_syscalls::Arch::X86_64.display(u32::from(c.call));
                            (call.into_owned(), c.class)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let live = daemon_profiles(store.dir())
                .into_iter()
                .find(|(_, p)| p.key == key);
            let progress = match &live {
                Some((_, p)) => p.progress.clone(),
                None => file_progress(&d, &config),
            };
            let (paths, scripts) = match &live {
                Some((_, p)) => (p.paths.clone(), p.scripts.clone()),
                None => (d.paths.clone(), d.scripts.clone()),
            };
            let cgroups: Vec<String> = match &live {
                Some((_, p)) => p.cgroups.clone(),
                None => d
                    .cgroups
                    .iter()
                    .map(|c| match daemon_profile::container_id(c) {
                        Some(id) => format!("{c} (container {id})"),
                        None => c.clone(),
                    })
                    .collect(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "source": if live.is_some() { "daemon" } else { "daemon file" },
                        "daemon": live.as_ref().map(|l| l.0),
                        "key": key, "path": d.path, "paths": paths, "scripts": scripts,
                        "file": file, "state": d.state, "pairs": d.pair_count(),
                        "train_count": d.train_count, "last_mod_count": d.last_mod_count,
                        "anomalies": d.anomalies, "normal_time_ns": d.normal_time_ns,
                        "progress": progress, "cgroups": cgroups,
                        "learn_uid": d.learn_uid, "learn_cgroup": d.learn_cgroup,
                        "classes": classes.iter().map(|(call, class)| {
                            serde_json::json!({ "call": call, "class": class })
                        }).collect::<Vec<_>>(),
                    }))?
                );
                return Ok(());
            }
            println!("exe            {}", printable(&d.path));
            for p in paths.iter().filter(|p| **p != d.path) {
                println!("also run as    {}", printable(p));
            }
            for s in &scripts {
                println!("script         {}", printable(s));
            }
            for c in &cgroups {
                println!("cgroup         {}", printable(c));
            }
            if d.learn_uid.is_some() || d.learn_cgroup.is_some() {
                println!(
                    "learns from    {}{}",
                    d.learn_uid.map(|u| format!("uid {u} ")).unwrap_or_default(),
                    d.learn_cgroup
                        .as_deref()
                        .map(|c| format!("cgroup {}", printable(c)))
                        .unwrap_or_default()
                );
            }
            println!("key            {}", d.key());
            println!("file           {} (homeostat daemon)", file.display());
            println!("state          {}", d.state);
            println!("progress       {}", progress.describe(d.state, now_s()));
            println!("pairs          {}", d.pair_count());
            println!("train_count    {}", d.train_count);
            println!("last_mod_count {}", d.last_mod_count);
            println!("anomalies      {}", d.anomalies);
            if !classes.is_empty() {
                println!(
                    "classes        {} (argument classes, daemon --symbols args)",
                    classes.len()
                );
                for (call, class) in &classes {
                    println!("  {call:<12} {}", printable(class));
                }
            }
            if let Some(p) = d.to_ph(&homeostat_core::ph::PhConfig::default()) {
                println!("tightness      {}", super::analyze::tightness_line(&p));
            }
            return Ok(());
        }
    };
    let progress = run_progress(&p, &config);
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "source": "run", "key": p.key.to_string(), "path": p.path,
                "paths": [p.path], "scripts": [], "file": store.path_for(p.key),
                "state": p.state, "pairs": p.pairs(), "train_count": p.train_count,
                "last_mod_count": p.last_mod_count, "anomalies": p.anomalies,
                "normal_time_ns": p.normal_time_ns, "progress": progress,
            }))?
        );
        return Ok(());
    }
    println!("exe            {}", printable(&p.path));
    println!("key            {}", p.key);
    println!("file           {}", store.path_for(p.key).display());
    println!("state          {}", p.state);
    println!("progress       {}", progress.describe(p.state, now_s()));
    println!("pairs          {}", p.pairs());
    println!("train_count    {}", p.train_count);
    println!("last_mod_count {}", p.last_mod_count);
    println!("anomalies      {}", p.anomalies);
    if p.state == homeostat_core::ph::ProfileState::Frozen {
        println!("normal at      {} (unix ns)", p.normal_time_ns);
    }
    println!("calls trained  {}", p.model().trained_calls());
    if let Some(t) = p.symbol_table() {
        println!(
            "symbols        args ({} argument classes)",
            t.classes().len()
        );
    }
    match p.learned_rates() {
        Some(r) => println!(
            "rates          peaks per {} s: {} forks, {} file creations",
            r.window_ns as f64 / 1e9,
            r.fork_peak,
            r.create_peak
        ),
        None => println!("rates          none learned (no limit)"),
    }
    println!("tightness      {}", super::analyze::tightness_line(&p));
    Ok(())
}

pub fn run(cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::List { json, state } => list(json, &state),
        ProfileCmd::Show { json, target } => show(json, &target),
        ProfileCmd::Normalize(t) => edit(
            t,
            |key| Request::Normalize { key },
            |p| p.normalize(&mut |_| {}),
        ),
        ProfileCmd::Sensitize(t) => edit(
            t,
            |key| Request::Sensitize { key },
            |p| p.sensitize("sensitized", &mut |_| {}),
        ),
        ProfileCmd::Tolerize(t) => edit(t, |key| Request::Tolerize { key }, |p| p.tolerize()),
        ProfileCmd::ExportSeccomp(a) => {
            let store = open_store(&a.target.state)?;
            let p = match find(&store, &a.target.exe) {
                Ok(p) => p,
                Err(e) => match daemon_file(&store, &a.target.exe)? {
                    Some((_, d)) => d
                        .to_ph(&homeostat_core::ph::PhConfig::default())
                        .ok_or_else(|| {
                            anyhow::anyhow!("daemon profile does not fit a window of 9")
                        })?,
                    None => return Err(e),
                },
            };
            super::analyze::export_seccomp(&a, &p.path, &p.calls())
        }
        ProfileCmd::LearnFrom {
            uid,
            cgroup,
            target,
        } => {
            let store = open_store(&target.state)?;
            let not_found = anyhow::anyhow!(
                "no daemon profile for {} in {}",
                target.exe,
                store.dir().display()
            );
            daemon_edit(
                &store,
                &target.exe,
                |key| Request::LearnFrom {
                    key,
                    uid,
                    cgroup: cgroup.clone(),
                },
                not_found,
            )
        }
        ProfileCmd::Reset(t) => {
            let store = open_store(&t.state)?;
            let p = match find(&store, &t.exe) {
                Ok(p) => p,
                Err(e) => return daemon_edit(&store, &t.exe, |key| Request::Reset { key }, e),
            };
            let live = broadcast::<AdminReply>(
                store.dir(),
                &Request::Reset {
                    key: p.key.to_string(),
                },
            );
            store.remove(p.key)?;
            println!(
                "reset: {} ({}) will be learnt from nothing{}",
                printable(&p.path),
                p.key,
                if live
                    .iter()
                    .any(|(_, r)| matches!(r, Reply::Ok(AdminReply { ok: true, .. })))
                {
                    " (also in the running monitor)"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}

/// Applies an admin change: through a running monitor that has the profile loaded
/// (it owns the live copy and saves it), else to the file.
fn edit(
    t: ProfileTarget,
    request: impl Fn(String) -> Request,
    f: impl FnOnce(&mut PhProfile),
) -> Result<()> {
    let store = open_store(&t.state)?;
    let mut p = match find(&store, &t.exe) {
        Ok(p) => p,
        Err(e) => return daemon_edit(&store, &t.exe, request, e),
    };
    let live = broadcast::<AdminReply>(store.dir(), &request(p.key.to_string()));
    if let Some((pid, _)) = live
        .iter()
        .find(|(_, r)| matches!(r, Reply::Ok(AdminReply { ok: true, .. })))
    {
        let p = store.load_file(&store.path_for(p.key))?;
        println!("{}  (applied by the monitor, pid {pid})", line(&p));
        return Ok(());
    }
    f(&mut p);
    store.save(&p)?;
    println!("{}", line(&p));
    Ok(())
}

/// The profiles of running daemons: (daemon pid, profile as the daemon reports it).
fn daemon_profiles(dir: &std::path::Path) -> Vec<(u32, ProfileEntry)> {
    broadcast::<ProfilesReply>(dir, &Request::Profiles)
        .into_iter()
        .filter_map(|(pid, r)| Some((pid, r.ok().filter(|r| r.daemon)?)))
        .flat_map(|(pid, r)| r.profiles.into_iter().map(move |p| (pid, p)))
        .collect()
}

/// An admin change to a profile of a running daemon (`homeostat daemon` keeps its
/// profiles in the kernel and `daemon/*.json`), found by path, file name or key;
/// `not_found` is the error to give when no daemon has it either.
fn daemon_edit(
    store: &ProfileStore,
    exe: &str,
    request: impl Fn(String) -> Request,
    not_found: anyhow::Error,
) -> Result<()> {
    let by_file = key_of_file(exe);
    let all = daemon_profiles(store.dir());
    let matches: Vec<&(u32, ProfileEntry)> = all
        .iter()
        .filter(|(_, p)| {
            let key = p.key.parse::<ExeKey>().ok();
            key.is_some_and(|k| {
                std::iter::once(&p.path)
                    .chain(&p.paths)
                    .any(|path| names(exe, by_file, path, k))
            })
        })
        .collect();
    let (pid, p) = match matches.as_slice() {
        [one] => *one,
        [] => return edit_daemon_file(store, exe, &request, not_found),
        _ => bail!(
            "{exe} matches {} daemon profiles; name it by key",
            matches.len()
        ),
    };
    let key = p.key.clone();
    let reply = broadcast::<AdminReply>(store.dir(), &request(key.clone()))
        .into_iter()
        .find(|(monitor, _)| monitor == pid)
        .map(|(_, r)| r);
    match reply {
        Some(Reply::Ok(AdminReply { ok: true, .. })) => {}
        Some(Reply::Error(e)) => bail!("daemon {pid}: {}", e.error),
        _ => bail!("daemon {pid}: no answer"),
    }
    println!(
        "{key} {}: done by the daemon (pid {pid})",
        printable(&p.path)
    );
    Ok(())
}

/// An admin change to a daemon profile file while no daemon runs: the same changes
/// the daemon makes (its JSON file, written atomically; `reset` deletes it).
fn edit_daemon_file(
    store: &ProfileStore,
    exe: &str,
    request: &impl Fn(String) -> Request,
    not_found: anyhow::Error,
) -> Result<()> {
    let Some((file, mut d)) = daemon_file(store, exe)? else {
        return Err(not_found);
    };
    match request(d.key().to_string()) {
        Request::Reset { .. } => {
            std::fs::remove_file(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            // What the daemon keeps beside it goes too, as when the daemon resets.
            if let Some(dir) = file.parent() {
                homeostat_daemon::remove_profile_files(dir, d.key());
            }
            println!(
                "reset: {} ({}) will be learnt from nothing",
                printable(&d.path),
                d.key()
            );
            return Ok(());
        }
        Request::Normalize { .. } => {
            d.state = ProfileState::Normal;
            d.anomalies = 0;
        }
        Request::Sensitize { .. } => {
            d.state = ProfileState::Training;
            d.train_count = 0;
            d.last_mod_count = 0;
            d.anomalies = 0;
        }
        Request::Tolerize { .. } => {
            d.train_count = 0;
            d.last_mod_count = 0;
        }
        Request::LearnFrom { uid, cgroup, .. } => {
            d.learn_uid = uid;
            d.learn_cgroup = cgroup;
        }
        _ => {}
    }
    homeostat_monitor::write_atomic(&file, &d.to_bytes())?;
    println!(
        "{} {}: {} (daemon file {})",
        d.key(),
        printable(&d.path),
        d.state,
        file.display()
    );
    Ok(())
}

/// `homeostat ps`: asks every running monitor for its tasks.
pub fn ps(json: bool, state: &StateFlags) -> Result<()> {
    let store = open_store(state)?;
    // A monitor that answers with an error (busy) is listed without tasks.
    let replies: Vec<(u32, Option<PsReply>)> = broadcast::<PsReply>(store.dir(), &Request::Ps)
        .into_iter()
        .map(|(pid, r)| (pid, r.ok()))
        .collect();
    if json {
        let all: Vec<serde_json::Value> = replies
            .iter()
            .map(|(pid, r)| serde_json::json!({ "monitor": pid, "tasks": r.as_ref().map(|r| &r.tasks) }))
            .collect();
        println!("{}", serde_json::to_string(&all)?);
        return Ok(());
    }
    if replies.is_empty() {
        println!("no running monitor in {}", store.dir().display());
        return Ok(());
    }
    println!(
        "{:>7} {:>7} {:>7} {:<9} {:>4} {:>9} {:>9} {:>9}  exe",
        "monitor", "pid", "tid", "state", "lfc", "delay_ms", "anomalies", "calls"
    );
    for (monitor, r) in &replies {
        for t in r.iter().flat_map(|r| &r.tasks) {
            println!(
                "{:>7} {:>7} {:>7} {:<9} {:>4} {:>9.1} {:>9} {:>9}  {}",
                monitor,
                t.pid,
                t.tid,
                t.state.to_string(),
                t.lfc,
                t.delay_ms,
                t.anomalies,
                t.calls,
                printable(&t.exe)
            );
        }
    }
    Ok(())
}
