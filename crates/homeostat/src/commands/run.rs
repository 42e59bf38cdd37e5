//! `homeostat run` (pH monitoring of a command) and `homeostat record`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use homeostat_core::ph::{ExeKey, Mode, PhConfig, Verdict};
use homeostat_monitor::monitor_loop::{self as launch, Attached, CallEvent, Consumer};
use homeostat_monitor::sink::{describe, open_events, write_event};
use homeostat_monitor::throttle::{Throttle, ThrottleConfig, ThrottleEvent, Throttled};
use homeostat_monitor::{now_ns, Engine, EventRecord, PhConsumer};
use homeostat_seccomp::{signals, FailMode, LaunchOptions};
use homeostat_syscalls::Arch;
use homeostat_traces::recording::{Header, Writer};
use tracing::{info, warn};

use super::state::{open_store, settings};
use crate::cli::{AttachArgs, MonitorFlags, RecordArgs, RunArgs};

/// SIGINT, SIGTERM and SIGHUP go to the monitored program, as strace passes them on,
/// instead of killing the monitor: it then sees the program end, saves what it learnt,
/// removes its control socket and exits with the program's status (killed: 128 + the
/// signal, as a shell reports it).
fn forward_signals() {
    if let Err(e) = signals::forward_to_program() {
        warn!("cannot forward signals to the program: {e}");
    }
}

/// A pH consumer set up from the monitoring flags: config, state directory, events
/// sink, control channel. Returns it with a counter of anomalous calls.
fn monitor(
    m: &MonitorFlags,
    overrides: &dyn Fn(&mut PhConfig),
) -> Result<(PhConsumer, Arc<Mutex<Counts>>, SharedSink)> {
    let mode = [
        (m.learn, Mode::Learn),
        (m.detect, Mode::Detect),
        (m.enforce, Mode::Enforce),
    ]
    .into_iter()
    .find_map(|(set, mode)| set.then_some(mode));
    let mut config = settings(&m.state, mode, m.normal_wait)?.ph;
    overrides(&mut config);
    config.validate().map_err(anyhow::Error::msg)?;
    let store = open_store(&m.state)?;
    let state_dir = store.dir().to_path_buf();

    let json: SharedSink = Arc::new(Mutex::new(open_events(m.events.as_deref())?));
    let events = json.clone();
    let quiet = m.quiet;
    let anomalies = Arc::new(Mutex::new(Counts::default()));
    let count = anomalies.clone();
    let sink = Box::new(move |r: &EventRecord| {
        if let Some(w) = events.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            write_event(w, r);
        }
        let mut c = count.lock().unwrap_or_else(|e| e.into_inner());
        match r.event {
            "anomaly" => c.anomalies += 1,
            "rate_queued" => {
                c.rate_delayed += 1;
                c.rate_delay_ms += r.detail["delay_ms"].as_f64().unwrap_or(0.0);
            }
            "rate_exceeded" => c.rate_exceeded += 1,
            _ => {}
        }
        drop(c);
        if !quiet {
            if let Some(line) = describe(r) {
                info!("{line}");
            }
        }
    });
    let (engine, errors) = Engine::new(config, Some(store), sink);
    for e in errors {
        warn!("profile set aside: {e}");
    }
    let mut consumer = PhConsumer::new(engine);
    consumer.serve_control(&state_dir);
    Ok((consumer, anomalies, json))
}

/// The `--events` writer, shared by the pH engine and the throttle.
type SharedSink = Arc<Mutex<Option<homeostat_monitor::sink::EventSink>>>;

/// The pH consumer behind Williamson's connection throttle.
fn throttled(
    consumer: PhConsumer,
    a: &RunArgs,
    rate: f64,
    json: SharedSink,
) -> Result<Throttled<PhConsumer>> {
    let throttle = Throttle::new(ThrottleConfig {
        rate,
        working_set: a.throttle_working_set,
        ..ThrottleConfig::default()
    })
    .map_err(anyhow::Error::msg)
    .context("--throttle-connect")?;
    let quiet = a.monitor.quiet;
    let sink = Box::new(move |e: &ThrottleEvent| {
        if let Some(w) = json.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            write_event(w, e);
        }
        if !quiet && e.event == "throttle_alarm" {
            warn!(
                "{} [{}]: {} connects to new hosts waiting (throttled)",
                e.exe, e.pid, e.queue
            );
        }
    });
    Ok(Throttled::new(consumer, throttle, sink))
}

/// What the end-of-run summary reports.
#[derive(Default)]
struct Counts {
    anomalies: u64,
    rate_delayed: u64,
    rate_delay_ms: f64,
    rate_exceeded: u64,
}

fn report(quiet: bool, counts: &Mutex<Counts>) {
    let c = counts.lock().unwrap_or_else(|e| e.into_inner());
    if quiet {
        return;
    }
    if c.anomalies > 0 {
        info!("{} anomalous calls", c.anomalies);
    }
    if c.rate_delayed > 0 {
        info!(
            "rate limit: {} calls delayed, {:.1} s in all",
            c.rate_delayed,
            c.rate_delay_ms / 1e3
        );
    }
    if c.rate_exceeded > 0 {
        info!(
            "rate limit: {} calls beyond the limit (detect: not held)",
            c.rate_exceeded
        );
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    forward_signals();
    let overrides = |c: &mut PhConfig| {
        if let Some(s) = a.symbols {
            c.symbols = s;
        }
        if let Some(d) = a.path_depth {
            c.path_depth = d;
        }
        if let Some(m) = a.max_classes {
            c.max_classes = m;
        }
        c.rate_limit |= a.rate_limit;
        if let Some(m) = a.rate_margin {
            c.rate_margin = m;
        }
        if let Some(w) = a.rate_window {
            c.rate_window_secs = w;
        }
    };
    let (consumer, anomalies, json) = monitor(&a.monitor, &overrides)?;
    let opts = LaunchOptions {
        fail_mode: if a.fail_closed {
            FailMode::Closed
        } else {
            FailMode::Open
        },
        ..LaunchOptions::default()
    };
    let command = super::analyze::seccomp_command(&a.command, a.seccomp.as_deref())?;
    let (status, mut consumer) = match a.throttle_connect {
        None => {
            let mut c = consumer;
            let st = launch::run_with(&command, &opts, &mut c, &mut signals::program_started);
            (st, c)
        }
        Some(rate) => {
            let mut c = throttled(consumer, &a, rate, json)?;
            let st = launch::run_with(&command, &opts, &mut c, &mut signals::program_started);
            if !a.monitor.quiet && c.delayed.0 > 0 {
                info!(
                    "throttle: {} connects to new hosts delayed, {:.1} s in all",
                    c.delayed.0,
                    c.delayed.1 as f64 / 1e9
                );
            }
            (st, c.inner)
        }
    };
    consumer.save();
    let status = status?;
    report(a.monitor.quiet, &anomalies);
    // exit() skips destructors: close the control socket first.
    drop(consumer);
    std::process::exit(launch::exit_code(status));
}

pub fn attach(a: AttachArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let (mut consumer, anomalies, _) = monitor(&a.monitor, &|_| {})?;
    let opts = homeostat_ptrace::AttachOptions {
        descendants: a.descendants,
        ..Default::default()
    };
    let tracer = homeostat_ptrace::Tracer::attach(a.pid, &opts)?;
    if !a.monitor.quiet {
        info!(
            "attached to {}; Ctrl-C detaches and leaves it running",
            a.pid
        );
    }
    let mut source = Attached(Some(tracer), false);
    let result = launch::drive(&mut source, &mut consumer, &stop);
    // Detach whatever happened: the process must never stay traced or stopped.
    let detached = source.0.take().map(|t| t.detach_all()).transpose();
    consumer.save();
    result?;
    detached?;
    report(a.monitor.quiet, &anomalies);
    if !a.monitor.quiet {
        info!("detached from {}", a.pid);
    }
    Ok(())
}

/// Writes every call to a recording.
struct Recorder {
    w: Writer<BufWriter<File>>,
    exes: HashMap<ExeKey, u64>,
    task_exe: HashMap<i32, u64>,
    error: Option<std::io::Error>,
    args: bool,
}

impl Recorder {
    fn try_call(&mut self, ev: &CallEvent) -> std::io::Result<()> {
        let key = ev.exe;
        let next = self.exes.len() as u64 + 1;
        let id = match self.exes.get(&key) {
            Some(&id) => id,
            None => {
                self.w.exe(
                    next,
                    key.dev,
                    key.ino,
                    ev.path.as_os_str().as_encoded_bytes(),
                )?;
                self.exes.insert(key, next);
                next
            }
        };
        match self.task_exe.insert(ev.tid, id) {
            Some(old) if old != id => self.w.exec(ev.pid as u32, ev.tid as u32, id)?,
            _ => {}
        }
        let nr = match ev.arch {
            Arch::X86_64 => ev.nr,
            Arch::I386 => homeostat_monitor::engine::I386_OFFSET + ev.nr,
        };
        match ev.symbol_arg() {
            Some(arg) => self
                .w
                .syscall_arg(ev.pid as u32, ev.tid as u32, id, nr, now_ns(), arg),
            None => self
                .w
                .syscall(ev.pid as u32, ev.tid as u32, id, nr, now_ns()),
        }
    }
}

impl Consumer for Recorder {
    /// Recordings carry arguments, for training on the argument-aware alphabet.
    fn wants_args(&self) -> bool {
        self.args
    }

    fn call(&mut self, ev: &CallEvent) -> Verdict {
        if self.error.is_none() {
            if let Err(e) = self.try_call(ev) {
                self.error = Some(e);
            }
        }
        Verdict::Continue
    }

    fn exit(&mut self, pid: i32, tid: i32, group: bool) {
        let tids: Vec<i32> = if group {
            // exit_group ends every thread of the process; their tids are those whose
            // thread group is pid, which the recording knows only by pid == tid for
            // the leader, so end the caller and the leader.
            vec![tid, pid]
        } else {
            vec![tid]
        };
        for t in tids {
            if self.task_exe.remove(&t).is_some() && self.error.is_none() {
                if let Err(e) = self.w.exit(pid as u32, t as u32) {
                    self.error = Some(e);
                }
            }
        }
    }
}

pub fn record(a: RecordArgs) -> Result<()> {
    forward_signals();
    homeostat_monitor::store::check_replaceable(&a.output)?;
    let file = File::create(&a.output)
        .with_context(|| format!("creating recording {}", a.output.display()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut header = Header::new(Arch::X86_64, host, now_ns());
    header.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string());
    let w = Writer::new(BufWriter::new(file), &header)
        .with_context(|| format!("writing recording {}", a.output.display()))?;
    let mut rec = Recorder {
        w,
        exes: HashMap::new(),
        task_exe: HashMap::new(),
        error: None,
        args: !a.no_args,
    };
    let status = launch::run_with(
        &a.command,
        &LaunchOptions::default(),
        &mut rec,
        &mut signals::program_started,
    )?;
    let what = || format!("writing recording {}", a.output.display());
    if let Some(e) = rec.error {
        return Err(e).with_context(what);
    }
    rec.w
        .finish()
        .and_then(|mut b| b.flush())
        .with_context(what)?;
    std::process::exit(launch::exit_code(status));
}
