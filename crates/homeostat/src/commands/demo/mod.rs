//! `homeostat demo`: the pH cycle, end to end, on a real program.
//!
//! The program is `homeostat-demo-service`, a note service built with homeostat that
//! has a real bug (a note name starting with `|` runs a shell command). The demo runs
//! it under the seccomp launcher with pH: normal sessions until its profile is stable
//! and normal, one more normal session (no anomaly expected), then a session carrying
//! the exploit. It prints what pH sees and does: the anomalous calls, the locality
//! frame count climbing, delays growing as 2^LFC, and the shell's execve refused.

mod daemon;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use homeostat_core::ph::{Mode, PhConfig, ProfileState};
use homeostat_monitor::monitor_loop as launch;
use homeostat_monitor::sink::describe;
use homeostat_monitor::{Engine, EventRecord, PhConsumer, ProfileStore};
use homeostat_seccomp::LaunchOptions;

use crate::cli::DemoArgs;

fn service_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the homeostat binary")?;
    let svc = me.with_file_name("homeostat-demo-service");
    if !svc.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` (it is built with homeostat)",
            svc.display()
        );
    }
    Ok(svc)
}

/// A normal client's session: store, read, count and list notes.
pub(super) fn normal_requests(i: usize) -> String {
    let mut r = String::new();
    for j in 0..(3 + i % 4) {
        r += &format!(
            "PUT note{}-{j} meeting at {} o'clock, room {}\n",
            i % 5,
            9 + j,
            i * 7 % 13
        );
    }
    r += &format!("GET note{}-0\n", i % 5);
    r += "LIST\n";
    r += &format!("COUNT note{}-1\n", i % 5);
    r += "GET missing-note\n";
    r
}

struct Session<'a> {
    svc: &'a Path,
    data: &'a Path,
    work: &'a Path,
}

impl Session<'_> {
    /// Runs one session under pH; returns (wall seconds, service output, exit code).
    fn run(
        &self,
        consumer: &mut PhConsumer,
        name: &str,
        requests: &str,
    ) -> Result<(f64, String, i32)> {
        let req = self.work.join(format!("{name}.req"));
        let out = self.work.join(format!("{name}.out"));
        std::fs::write(&req, requests)?;
        let argv: Vec<OsString> = vec![
            self.svc.into(),
            self.data.into(),
            req.into(),
            out.clone().into(),
        ];
        let t = Instant::now();
        let status = launch::run(&argv, &LaunchOptions::default(), consumer)?;
        let secs = t.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        Ok((secs, text, launch::exit_code(status)))
    }
}

/// Announces the exploit and returns its session: a normal start, then a note name
/// that the service's pipe-open bug hands to /bin/sh.
pub(super) fn exploit() -> String {
    println!(
        "3. the exploit: GET \"|id; cat /etc/passwd\" (the service's pipe-open bug runs /bin/sh)"
    );
    let mut attack = normal_requests(2);
    attack += "GET |id; cat /etc/passwd\n";
    attack += "LIST\n";
    attack
}

/// Prints what the service answered the exploit and whether the shell's output leaked.
pub(super) fn report_answer(out: &str, leaked: bool) {
    let answer = out.lines().rev().nth(1).unwrap_or("");
    println!(
        "   the service answered the exploit with: {answer:?}; attacker got the shell's output: {}",
        if leaked { "YES" } else { "no" }
    );
}

/// What both demos start from.
pub(super) struct Setup {
    /// The note service binary.
    pub svc: PathBuf,
    /// Requests, outputs and (by default) state live here; removed at the end.
    pub tmp: tempfile::TempDir,
    /// `--state-dir`, else `state` in `tmp`.
    pub state_dir: PathBuf,
    /// The service's notes.
    pub data: PathBuf,
}

pub(super) fn setup(a: &DemoArgs) -> Result<Setup> {
    let svc = service_binary()?;
    let tmp = tempfile::Builder::new()
        .prefix("homeostat-demo-")
        .tempdir()?;
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("state"));
    let data = tmp.path().join("notes");
    std::fs::create_dir_all(&data)?;
    Ok(Setup {
        svc,
        tmp,
        state_dir,
        data,
    })
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.daemon {
        return daemon::run(a);
    }
    let started = Instant::now();
    let Setup {
        svc,
        tmp,
        state_dir,
        data,
    } = setup(&a)?;
    let store = ProfileStore::open(&state_dir)?;
    let config = PhConfig {
        normal_wait_secs: 1.0,
        delay_factor_ms: 1.0,
        max_delay_ms: 100.0,
        mode: Mode::Enforce,
        ..PhConfig::default()
    };
    println!("homeostat demo: pH on a real program, {}", svc.display());
    println!(
        "settings: lookahead pairs w={}, locality frame {} calls, normal_wait {} s, delay {} ms x 2^LFC capped at {} ms, execve refused at LFC >= {}",
        config.window, config.locality, config.normal_wait_secs, config.delay_factor_ms, config.max_delay_ms, config.suspend_execve
    );
    println!("(pH's own defaults: normal_wait 7 days, delays 4 ms x 2^LFC; shortened so the demo takes seconds)\n");

    let events: Arc<Mutex<Vec<EventRecord>>> = Arc::default();
    let sink_events = events.clone();
    let sink = Box::new(move |r: &EventRecord| {
        sink_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.clone())
    });
    let (engine, _) = Engine::new(config.clone(), Some(store.clone()), sink);
    let mut consumer = PhConsumer::new(engine);
    let session = Session {
        svc: &svc,
        data: &data,
        work: tmp.path(),
    };
    let take = |events: &Arc<Mutex<Vec<EventRecord>>>| {
        std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let state = |c: &PhConsumer| {
        c.engine
            .profiles()
            .find(|p| p.path.ends_with("homeostat-demo-service"))
            .map(|p| (p.state, p.pairs(), p.train_count))
    };

    println!("1. learning: normal client sessions (store, read, count and list notes)");
    let mut normal_secs = vec![];
    let mut i = 0;
    loop {
        if i >= a.sessions.max(40) {
            bail!("the service's profile did not become normal in {i} sessions");
        }
        if i >= a.sessions && state(&consumer).map(|s| s.0) == Some(ProfileState::Normal) {
            break;
        }
        let (secs, _, code) =
            session.run(&mut consumer, &format!("normal{i}"), &normal_requests(i))?;
        if code != 0 {
            bail!("normal session {i} failed with exit code {code}");
        }
        normal_secs.push(secs);
        for e in take(&events) {
            if e.event == "state_change" {
                println!(
                    "   session {:>2}: {}",
                    i + 1,
                    describe(&e).unwrap_or_default()
                );
            }
        }
        if let Some((st, pairs, calls)) = state(&consumer) {
            if i < 3 || i % 4 == 3 {
                println!(
                    "   session {:>2}: profile {st}, {pairs} pairs from {calls} calls",
                    i + 1
                );
            }
            if st == ProfileState::Frozen {
                // Let normal_wait pass, as days would in production.
                std::thread::sleep(std::time::Duration::from_secs_f64(config.normal_wait_secs));
            }
        }
        i += 1;
    }
    consumer.save();
    println!("   profile saved in {}\n", store.dir().display());

    println!("2. a normal session against the normal profile");
    let (secs, _, code) = session.run(&mut consumer, "check", &normal_requests(1))?;
    let ev = take(&events);
    let anomalies = ev.iter().filter(|e| e.event == "anomaly").count();
    println!("   exit {code}, {secs:.2} s, {anomalies} anomalous calls\n");

    let attack = exploit();
    let (secs, out, code) = session.run(&mut consumer, "attack", &attack)?;
    let ev = take(&events);
    let mut shown = 0;
    let mut max_lfc = 0;
    let mut max_delay: f64 = 0.0;
    for e in &ev {
        max_lfc = max_lfc.max(e.lfc);
        match e.event {
            "anomaly" => {
                let delay = config.delay_ns(e.lfc) as f64 / 1e6;
                max_delay = max_delay.max(delay);
                if shown < 14 || e.action == "refuse" {
                    println!(
                        "   anomaly: {:<14} pid {:<7} {:<12} missing pairs {} LFC {:>2} -> {}",
                        e.exe.rsplit('/').next().unwrap_or(""),
                        e.pid,
                        e.syscall,
                        e.detail["misses"],
                        e.lfc,
                        match e.action {
                            "delay" => format!("delayed {delay:.0} ms"),
                            "refuse" => "REFUSED (EPERM)".to_string(),
                            _ => "no response".to_string(),
                        }
                    );
                    shown += 1;
                } else if shown == 14 {
                    println!("   ...");
                    shown += 1;
                }
            }
            _ => {
                if let Some(line) = describe(e) {
                    println!("   {line}");
                }
            }
        }
    }
    let refused = ev.iter().filter(|e| e.event == "exec_refused").count();
    let n = ev.iter().filter(|e| e.event == "anomaly").count();
    let leaked = out.contains("root:") || out.contains("uid=");
    println!(
        "   {n} anomalous calls, highest LFC {max_lfc}, longest delay {max_delay:.0} ms, {refused} execve refused; session took {secs:.2} s (normal: {:.2} s), exit {code}",
        normal_secs.iter().sum::<f64>() / normal_secs.len().max(1) as f64
    );
    report_answer(&out, leaked);
    consumer.save();
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    if refused == 0 || leaked {
        bail!("the exploit was not stopped");
    }
    Ok(())
}
