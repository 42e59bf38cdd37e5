//! `homeostat run` (pH monitoring of a command) and `homeostat record`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use homeostat_core::ph::{ExeKey, Mode, PhConfig, Verdict};
use homeostat_monitor::config::ConfigFile;
use homeostat_monitor::{default_state_dir, Call, Engine, EventRecord, ProfileStore};
use homeostat_seccomp::{FailMode, LaunchOptions};
use homeostat_syscalls::Arch;
use homeostat_traces::recording::{Header, Writer};

use crate::cli::{AttachArgs, MonitorFlags, RecordArgs, RunArgs, StateFlags};
use crate::control::{Request, Server};
use crate::launch::{self, Attached, CallEvent, Consumer};

/// The configuration file (`--config`), or the defaults when there is none.
fn config_file(state: &StateFlags) -> Result<ConfigFile> {
    match &state.config {
        Some(p) => homeostat_monitor::config::load(p).map_err(|e| anyhow!(e)),
        None => Ok(ConfigFile::default()),
    }
}

/// The pH parameters: the config file's, with the mode and normal_wait flags (when
/// given) on top, validated.
pub fn config_from_flags(
    state: &StateFlags,
    mode: Option<Mode>,
    normal_wait: Option<f64>,
) -> Result<PhConfig> {
    Ok(settings_from_flags(state, mode, normal_wait)?.ph)
}

/// The whole configuration (pH parameters as [`config_from_flags`] gives them, and the
/// per-executable `[modes]`), from one read of the file.
pub fn settings_from_flags(
    state: &StateFlags,
    mode: Option<Mode>,
    normal_wait: Option<f64>,
) -> Result<ConfigFile> {
    let mut file = config_file(state)?;
    let config = &mut file.ph;
    if let Some(mode) = mode {
        config.mode = mode;
    }
    if let Some(w) = normal_wait {
        config.normal_wait_secs = w;
    }
    config
        .validate()
        .map_err(|e| anyhow!("configuration: {e}"))?;
    Ok(file)
}

/// The `--events` sink: appended JSON lines to a file, `-` for standard output.
pub fn open_events(path: Option<&Path>) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match path {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(BufWriter::new(
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening events file {}", p.display()))?,
        ))),
    })
}

/// Opens the state directory named by the flags (or the default one).
pub fn open_store(state: &StateFlags) -> Result<ProfileStore> {
    let dir = state.state_dir.clone().unwrap_or_else(default_state_dir);
    Ok(ProfileStore::open(&dir)?)
}

/// Wall-clock time in ns: pH's normal_wait spans monitor restarts.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Feeds calls to the pH engine, saves profiles now and then, answers the control
/// channel.
pub struct PhConsumer {
    pub engine: Engine,
    last_save: Instant,
    control: Option<Server>,
}

impl PhConsumer {
    pub fn new(engine: Engine) -> Self {
        PhConsumer {
            engine,
            last_save: Instant::now(),
            control: None,
        }
    }

    /// Serves `homeostat ps` and profile commands from the state directory's socket.
    pub fn serve_control(&mut self, state_dir: &std::path::Path) {
        match Server::start(state_dir) {
            Ok(s) => self.control = Some(s),
            Err(e) => eprintln!("homeostat: warning: no control channel: {e:#}"),
        }
    }

    /// Saves changed profiles, reporting failures on stderr (the program goes on).
    pub fn save(&mut self) {
        for e in self.engine.save() {
            eprintln!("homeostat: warning: cannot save profile: {e}");
        }
        self.last_save = Instant::now();
    }
}

impl Consumer for PhConsumer {
    fn call(&mut self, ev: &CallEvent) -> Verdict {
        let path = ev.path.to_string_lossy();
        self.engine.on_syscall(
            &Call {
                tid: ev.tid,
                pid: ev.pid,
                exe: ev.exe,
                path: &path,
                arch: ev.arch,
                nr: ev.nr,
                parent: ev.parent,
            },
            now_ns(),
        )
    }

    fn exit(&mut self, pid: i32, tid: i32, group: bool) {
        if group {
            self.engine.on_process_exit(pid);
        } else {
            self.engine.on_task_exit(tid);
        }
    }

    fn tick(&mut self) {
        if self.last_save.elapsed() >= Duration::from_secs(30) {
            self.save();
        }
    }

    fn poll(&mut self) {
        let Some(server) = &self.control else {
            return;
        };
        let engine = &mut self.engine;
        server.poll(|req| handle(engine, req));
    }
}

/// Answers one control request against the live engine.
fn handle(engine: &mut Engine, req: Request) -> serde_json::Value {
    use serde_json::json;
    let key = match &req {
        Request::Ps => return json!({ "tasks": engine.tasks() }),
        Request::Status | Request::Profiles => {
            return json!({ "error": "not a daemon (homeostat run keeps its profiles in profiles/)" })
        }
        Request::Save => {
            let errors: Vec<String> = engine.save().iter().map(|e| e.to_string()).collect();
            return json!({ "ok": errors.is_empty(), "errors": errors });
        }
        Request::Normalize { key }
        | Request::Sensitize { key }
        | Request::Tolerize { key }
        | Request::Reset { key } => match key.parse::<ExeKey>() {
            Ok(k) => k,
            Err(e) => return json!({ "error": e }),
        },
    };
    if let Request::Reset { .. } = req {
        return match engine.reset(key) {
            Ok(found) => json!({ "ok": found }),
            Err(e) => json!({ "error": e.to_string() }),
        };
    }
    let Some(p) = engine.profile_mut(key) else {
        return json!({ "ok": false });
    };
    match req {
        Request::Normalize { .. } => p.normalize(&mut |_| {}),
        Request::Sensitize { .. } => p.sensitize("sensitized", &mut |_| {}),
        Request::Tolerize { .. } => p.tolerize(),
        Request::Ps
        | Request::Save
        | Request::Status
        | Request::Profiles
        | Request::Reset { .. } => {}
    }
    p.dirty = true;
    let state = p.state;
    let errors = engine.save();
    match errors.first() {
        Some(e) => json!({ "error": e.to_string() }),
        None => json!({ "ok": true, "state": state }),
    }
}

/// A one-line human account of an event, or `None` for events too frequent to print.
pub fn describe(r: &EventRecord) -> Option<String> {
    let who = format!("{} [{}]", r.exe, r.pid);
    Some(match r.event {
        "state_change" => format!(
            "profile {} ({}): {} -> {} ({})",
            r.profile,
            r.exe,
            r.detail["from"].as_str()?,
            r.detail["to"].as_str()?,
            r.detail["reason"].as_str()?
        ),
        "delay_start" => format!(
            "{who}: anomalous (LFC {}): delaying its calls, {:.0} ms for {}",
            r.lfc,
            r.detail["delay_ms"].as_f64()?,
            r.syscall
        ),
        "delay_stop" => format!("{who}: LFC back to 0, delays stop"),
        "exec_refused" => format!("{who}: execve refused (LFC {})", r.lfc),
        "tolerized" => format!(
            "{who}: LFC {} above the tolerize limit: training data of {} wiped",
            r.lfc, r.exe
        ),
        _ => return None,
    })
}

/// A pH consumer set up from the monitoring flags: config, state directory, events
/// sink, control channel. Returns it with a counter of anomalous calls.
fn monitor(m: &MonitorFlags) -> Result<(PhConsumer, Arc<Mutex<u64>>)> {
    let mode = [
        (m.learn, Mode::Learn),
        (m.detect, Mode::Detect),
        (m.enforce, Mode::Enforce),
    ]
    .into_iter()
    .find_map(|(set, mode)| set.then_some(mode));
    let config = config_from_flags(&m.state, mode, m.normal_wait)?;
    let store = open_store(&m.state)?;
    let state_dir = store.dir().to_path_buf();

    let mut json = open_events(m.events.as_deref())?;
    let quiet = m.quiet;
    let anomalies = Arc::new(Mutex::new(0u64));
    let count = anomalies.clone();
    let sink = Box::new(move |r: &EventRecord| {
        if let Some(w) = json.as_mut() {
            // Events must not stop the program: a full disk loses events, not calls.
            let _ = serde_json::to_writer(&mut *w, r)
                .map(|_| w.write_all(b"\n"))
                .map(|_| w.flush());
        }
        if r.event == "anomaly" {
            *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
        if !quiet {
            if let Some(line) = describe(r) {
                eprintln!("homeostat: {line}");
            }
        }
    });
    let (engine, errors) = Engine::new(config, Some(store), sink);
    for e in errors {
        eprintln!("homeostat: warning: profile set aside: {e}");
    }
    let mut consumer = PhConsumer::new(engine);
    consumer.serve_control(&state_dir);
    Ok((consumer, anomalies))
}

fn report(quiet: bool, anomalies: &Mutex<u64>) {
    let n = *anomalies.lock().unwrap_or_else(|e| e.into_inner());
    if !quiet && n > 0 {
        eprintln!("homeostat: {n} anomalous calls");
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    let (mut consumer, anomalies) = monitor(&a.monitor)?;
    let opts = LaunchOptions {
        fail_mode: if a.fail_closed {
            FailMode::Closed
        } else {
            FailMode::Open
        },
        ..LaunchOptions::default()
    };
    let command = super::analyze::seccomp_command(&a.command, a.seccomp.as_deref())?;
    let status = launch::run(&command, &opts, &mut consumer);
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
    let (mut consumer, anomalies) = monitor(&a.monitor)?;
    let opts = homeostat_ptrace::AttachOptions {
        descendants: a.descendants,
        ..Default::default()
    };
    let tracer = homeostat_ptrace::Tracer::attach(a.pid, &opts)?;
    if !a.monitor.quiet {
        eprintln!(
            "homeostat: attached to {}; Ctrl-C detaches and leaves it running",
            a.pid
        );
    }
    let mut source = Attached(Some(tracer));
    let result = launch::drive(&mut source, &mut consumer, &stop);
    // Detach whatever happened: the process must never stay traced or stopped.
    let detached = source.0.take().map(|t| t.detach_all()).transpose();
    consumer.save();
    result?;
    detached?;
    report(a.monitor.quiet, &anomalies);
    if !a.monitor.quiet {
        eprintln!("homeostat: detached from {}", a.pid);
    }
    Ok(())
}

/// Writes every call to a recording.
struct Recorder {
    w: Writer<BufWriter<File>>,
    exes: HashMap<ExeKey, u64>,
    task_exe: HashMap<i32, u64>,
    error: Option<std::io::Error>,
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
        self.w
            .syscall(ev.pid as u32, ev.tid as u32, id, nr, now_ns())
    }
}

impl Consumer for Recorder {
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
    };
    let status = launch::run(&a.command, &LaunchOptions::default(), &mut rec)?;
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
