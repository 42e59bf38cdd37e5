//! The control channel of a running monitor: a Unix socket in the state directory,
//! `run/<pid>.sock`, owner-only (the directory is 0700 and the socket 0600), speaking
//! one JSON request line and one JSON reply line per connection.
//!
//! The engine belongs to the monitor loop, so a listener thread only forwards requests
//! over a channel; the loop answers them between calls ([`Server::poll`]), which keeps
//! every profile change on the one thread that owns the profiles. Each client is read
//! on its own thread with a deadline and a length cap, so a slow or endless client can
//! never make the monitor look absent to `homeostat ps` or grow its memory.
//!
//! Replies are typed: each request has its reply struct, and any request may be
//! answered with an [`ErrorReply`] instead (an unknown profile, a busy monitor, a
//! request this kind of monitor does not serve). Clients read a [`Reply<T>`], so a
//! field renamed on one side is a compile error or a parse error, never a silent
//! `null` from a lookup by string.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use homeostat_core::ph::{Mode, PhConfig, ProfileState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::TaskInfo;

/// A request to a running monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The monitored tasks.
    Ps,
    /// Save every profile now (so admin commands see the live state on disk).
    Save,
    /// Counters (the daemon; a `homeostat run` monitor answers an error).
    Status,
    /// The daemon's profiles (a `homeostat run` monitor answers an error).
    Profiles,
    /// Profile administration, by profile key (`<dev>-<ino>`).
    Normalize { key: String },
    /// Back to training.
    Sensitize { key: String },
    /// Forget the training data.
    Tolerize { key: String },
    /// Forget the profile.
    Reset { key: String },
    /// Learn only from one user's processes and/or one cgroup's (the daemon only;
    /// both absent: from every process).
    #[serde(rename = "learn_from")]
    LearnFrom {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
    },
    /// Benchmarks: swap a floor build's sys_enter program between the real one and
    /// one that returns at once (`floor: true`); any other monitor answers an error.
    Hook { floor: bool },
}

/// How a `homeostat run` monitor's error reply to a daemon-only request begins.
pub const NOT_A_DAEMON: &str = "not a daemon";

/// `{"error": ...}`: the request failed or is not served by this monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, for people.
    pub error: String,
}

/// What a client reads back: an error, or the request's own reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    /// `{"error": ...}` (tried first: no reply type has an `error` field).
    Error(ErrorReply),
    /// The reply proper.
    Ok(T),
}

impl<T> Reply<T> {
    /// The reply proper, if it is not an error.
    pub fn ok(self) -> Option<T> {
        match self {
            Reply::Ok(t) => Some(t),
            Reply::Error(_) => None,
        }
    }
}

/// The reply to [`Request::Ps`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsReply {
    /// The monitored tasks.
    pub tasks: Vec<TaskInfo>,
}

/// The reply to [`Request::Save`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SaveReply {
    /// Every changed profile was saved.
    pub ok: bool,
    /// What could not be saved (`homeostat run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    /// How many profiles were written (the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<usize>,
}

/// The reply to an admin request (normalize, sensitize, tolerize, reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminReply {
    /// The change was made (false: the monitor does not have the profile).
    pub ok: bool,
    /// The profile's state afterwards (`homeostat run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProfileState>,
}

/// One of the daemon's profiles, as [`Request::Profiles`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// `<dev>-<ino>`.
    pub key: String,
    /// The executable's path.
    pub path: String,
    /// Its state.
    pub state: ProfileState,
    /// Calls trained (pH's train_count).
    pub train_count: u64,
    /// Anomalies counted toward anomaly_limit.
    pub anomalies: u64,
    /// Every path it was run by (the executable's own first).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Scripts run with it as their interpreter.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// How far it is from normal.
    #[serde(default)]
    pub progress: Progress,
    /// It learns only from this user's processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_uid: Option<u32>,
    /// It learns only from the processes of this cgroup (v2 directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_cgroup: Option<String>,
    /// The cgroups (v2 paths) of the processes that ran it, with the container id when
    /// the path names one (docker, podman, containerd, CRI-O scopes).
    #[serde(default)]
    pub cgroups: Vec<String>,
}

/// How far a profile is from normal (docs/daemon.md, "Progress to normal").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Calls trained since its last new pair (pH's last_mod_count).
    pub calls_since_new_pair: u64,
    /// Training: calls without a new pair it still needs to freeze (pH's rule,
    /// [`crate::daemon_profile::calls_to_freeze`]); absent when it has learnt nothing
    /// to be stable about yet, or is not training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_to_freeze: Option<u64>,
    /// Frozen: seconds left of normal_wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal_in_s: Option<f64>,
    /// When it was last sent back to training or had its training wiped (unix
    /// seconds), and why (`new behaviour`, `anomaly_limit`, `tolerized`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<LastReset>,
}

impl Progress {
    /// A profile's progress at `now_ns` from its counters (either monitor's).
    pub fn of(
        state: ProfileState,
        train_count: u64,
        last_mod_count: u64,
        normal_time_ns: u64,
        last_reset: Option<LastReset>,
        now_ns: u64,
        config: &PhConfig,
    ) -> Progress {
        Progress {
            calls_since_new_pair: last_mod_count,
            calls_to_freeze: (state == ProfileState::Training)
                .then(|| {
                    crate::daemon_profile::calls_to_freeze(train_count, last_mod_count, config)
                })
                .flatten(),
            normal_in_s: (state == ProfileState::Frozen)
                .then(|| normal_time_ns.saturating_sub(now_ns) as f64 / 1e9),
            last_reset,
        }
    }

    /// One line for people at `now_s` (unix seconds): `3001 calls without a new pair
    /// to freeze (120 since the last)`, `frozen, normal in 12 s`, `normal`, and the last
    /// reset's reason and age.
    pub fn describe(&self, state: ProfileState, now_s: f64) -> String {
        let mut s = match state {
            ProfileState::Normal => "normal".to_string(),
            ProfileState::Frozen => match self.normal_in_s {
                Some(t) => format!("frozen, normal in {t:.0} s"),
                None => "frozen".to_string(),
            },
            ProfileState::Training => match self.calls_to_freeze {
                Some(n) => format!(
                    "{n} calls without a new pair to freeze ({} since the last)",
                    self.calls_since_new_pair
                ),
                None => "nothing learnt yet".to_string(),
            },
        };
        if let Some(r) = &self.last_reset {
            s.push_str(&format!(
                "; last reset: {}, {:.0} s ago",
                r.why,
                (now_s - r.ts).max(0.0)
            ));
        }
        s
    }
}

/// The last time a profile's training was reset, in [`Progress`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastReset {
    /// Unix seconds.
    pub ts: f64,
    /// Why.
    pub why: String,
}

impl LastReset {
    /// The reset recorded at `ns` (unix ns; 0: never reset, None).
    pub fn at(ns: u64, why: &str) -> Option<LastReset> {
        (ns > 0).then(|| LastReset {
            ts: ns as f64 / 1e9,
            why: why.to_string(),
        })
    }
}

/// The reply to [`Request::Profiles`] (the daemon only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfilesReply {
    /// Always true: marks a daemon's reply.
    pub daemon: bool,
    /// Its profiles.
    pub profiles: Vec<ProfileEntry>,
}

/// The kernel's loss counters, in [`StatusReply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    /// Events the ring buffer could not take.
    pub lost_events: u64,
    /// Pairs not learnt: the rows map was full.
    pub rows_full: u64,
    /// Tasks not followed: the task map was full.
    pub tasks_full: u64,
    /// Executables without a profile: the profile map was full.
    pub profiles_full: u64,
    /// Stops the kernel could not make.
    pub stops_failed: u64,
}

/// Profiles by state, in [`StatusReply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileCounts {
    /// In training.
    pub training: u64,
    /// Frozen.
    pub frozen: u64,
    /// Normal.
    pub normal: u64,
}

/// Profiles evicted, in [`StatusReply`] (docs/daemon.md, "Eviction").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evictions {
    /// Their executable no longer exists.
    pub deleted: u64,
    /// The map was near full: least recently used, few calls, normal last.
    pub lru: u64,
}

/// What the kernel could not learn or test of argument classes (`daemon --symbols
/// args`), in [`StatusReply`] (docs/arguments.md, "The daemon").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArgumentLosses {
    /// Training calls whose class went to the call's `other` class (the profile's cap).
    pub overflowed: u64,
    /// Classes not learnt: the kernel's class map was full.
    pub map_full: u64,
    /// Arguments the kernel could not read (calls not tested for their class).
    pub unread: u64,
    /// Class events lost (ring buffer full).
    pub lost_events: u64,
}

/// What the daemon's connection throttle and rate limits did since it started
/// (`--throttle-connect`, `--rate-limit`), in [`StatusReply`]: the counts of their
/// events (docs/events.md), so an operator sees a storm being held without reading
/// the events file, and how much is waiting in their queues now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitCounts {
    /// Connects to hosts outside the working set (`throttle_queued`).
    pub throttle_queued: u64,
    /// Of those, connects a response actually held.
    pub throttle_held: u64,
    /// `throttle_release` events.
    pub throttle_released: u64,
    /// `throttle_alarm` events (a queue of 5 or more).
    pub throttle_alarms: u64,
    /// Calls over a learned fork or file-creation limit (`rate_exceeded`).
    pub rate_exceeded: u64,
    /// Calls held in a rate queue (`rate_queued`).
    pub rate_queued: u64,
    /// `rate_release` events.
    pub rate_released: u64,
    /// `rate_alarm` events.
    pub rate_alarms: u64,
    /// Connects to new hosts waiting in the throttle's queues now (every profile).
    #[serde(default)]
    pub throttle_waiting: u64,
    /// Forks and file creations waiting in the rate limits' queues now.
    #[serde(default)]
    pub rate_waiting: u64,
    /// Connects whose address the kernel could not read (throttled as a host of
    /// unknown address).
    #[serde(default)]
    pub unread_addresses: u64,
    /// The throttle's and the rate limits' events the kernel dropped (ring full).
    #[serde(default)]
    pub lost_events: u64,
}

impl LimitCounts {
    /// Counts event `name` if it is one of the throttle's or the rate limits'.
    pub fn count(&mut self, name: &str) {
        let c = match name {
            "throttle_queued" => &mut self.throttle_queued,
            "throttle_release" => &mut self.throttle_released,
            "throttle_alarm" => &mut self.throttle_alarms,
            "rate_exceeded" => &mut self.rate_exceeded,
            "rate_queued" => &mut self.rate_queued,
            "rate_release" => &mut self.rate_released,
            "rate_alarm" => &mut self.rate_alarms,
            _ => return,
        };
        *c = c.saturating_add(1);
    }
}

/// The reply to [`Request::Status`] (the daemon only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// Always true: marks a daemon's reply.
    pub daemon: bool,
    /// The daemon's pid.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Its host-wide mode.
    pub mode: Mode,
    /// Whether it can respond (it has a stop guard).
    pub respond: bool,
    /// Events received from the kernel.
    pub events: u64,
    /// `events / uptime_s`.
    pub events_per_s: f64,
    /// Anomalous calls.
    pub anomalies: u64,
    /// Responses started.
    pub responses: u64,
    /// Pids under response now.
    pub under_response: Vec<u32>,
    /// Calls delayed.
    pub delays: u64,
    /// execve calls refused.
    pub execve_refused: u64,
    /// The kernel's loss counters.
    pub losses: Losses,
    /// Profiles by state.
    pub profiles: ProfileCounts,
    /// Profiles the kernel's map holds at most (absent from daemons that predate it).
    #[serde(default)]
    pub max_profiles: u64,
    /// Profiles evicted, by reason.
    #[serde(default)]
    pub evicted: Evictions,
    /// Calls of profiled executables counted since start, and those under normal
    /// profiles (their share is how much of the machine's work is protected).
    #[serde(default)]
    pub calls: u64,
    /// See `calls`.
    #[serde(default)]
    pub calls_normal: u64,
    /// Times a task's state found both of its slots held by others (docs/ebpf.md,
    /// "Two slots a key") and went to task storage (a forked child's to `hs_forks`
    /// until its first call, which tries again): followed all the same, each call of a
    /// task in storage on the general path; not a loss. A task may count more than
    /// once (its fork, its first call, each exec).
    #[serde(default)]
    pub tids_taken: u64,
    /// Calls that took the kernel's general path rather than the common call (a
    /// task's first calls, a window not yet known, a miss or a learnt pair, a task in
    /// storage; docs/ebpf.md, "The common call"), of every task the programs see,
    /// with or without a profile. Not a loss: the measure of what the common call
    /// saves. Absent from daemons that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general_calls: Option<u64>,
    /// The daemon's BPF programs' run time, when `kernel.bpf_stats_enabled` is 1
    /// (absent otherwise, and from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_run_time: Option<Vec<ProgRunTime>>,
    /// A floor build's sys_enter hook: `true` while the floor (a program that returns
    /// at once) is attached, when nothing is monitored (absent in other builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<bool>,
    /// With `--symbols args`: the argument classes' loss counters (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<ArgumentLosses>,
    /// With `--throttle-connect` or `--rate-limit`: what they did (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitCounts>,
}

/// One BPF program's run-time counters, in [`StatusReply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgRunTime {
    /// The program's name (`sys_enter_btf`, `sched_fork`, ...).
    pub name: String,
    /// Runs counted since the sysctl was on.
    pub run_cnt: u64,
    /// Their total run time, ns.
    pub run_time_ns: u64,
}

/// What a monitor answers: one of the reply types, or an error.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// See [`PsReply`].
    Ps(PsReply),
    /// See [`SaveReply`].
    Save(SaveReply),
    /// See [`AdminReply`].
    Admin(AdminReply),
    /// See [`ProfilesReply`].
    Profiles(ProfilesReply),
    /// See [`StatusReply`].
    Status(Box<StatusReply>),
    /// See [`ErrorReply`].
    Error(ErrorReply),
}

impl Response {
    /// An error reply.
    pub fn error(msg: impl Into<String>) -> Response {
        Response::Error(ErrorReply { error: msg.into() })
    }
}

/// The directory of control sockets.
pub fn run_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run")
}

/// The serving side, owned by the monitor loop.
pub struct Server {
    path: PathBuf,
    rx: Receiver<(Request, Sender<Response>)>,
}

impl Server {
    /// Binds `run/<pid>.sock` and starts the listener thread.
    pub fn start(state_dir: &Path) -> Result<Server> {
        let dir = run_dir(state_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {}", dir.display()))?;
        let path = dir.join(format!("{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("securing {}", path.display()))?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("homeostat-control".into())
            .spawn(move || accept_loop(&listener, &tx))
            .context("starting the control thread")?;
        Ok(Server { path, rx })
    }

    /// Answers pending requests with `handle`; never blocks.
    pub fn poll(&self, mut handle: impl FnMut(Request) -> Response) {
        while let Ok((req, reply)) = self.rx.try_recv() {
            let _ = reply.send(handle(req));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Clients served at once. Each has [`REQUEST_DEADLINE`] to send its request, so a
/// slow or silent client holds its slot for at most that long, and never the others'.
const MAX_CLIENTS: usize = 16;
/// How long a client has to send its whole request line (not per read: a client
/// sending a byte a second would otherwise never time out).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request line read; requests are a few dozen bytes, so anything longer
/// is hostile or broken and is cut off before it costs memory.
const MAX_REQUEST: usize = 64 * 1024;

/// Serves each client on its own thread (up to [`MAX_CLIENTS`]; more are hung up on),
/// so one slow client never makes the monitor look absent to the others.
fn accept_loop(listener: &UnixListener, tx: &Sender<(Request, Sender<Response>)>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming().flatten() {
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (tx, slot) = (tx.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("homeostat-client".into())
            .spawn(move || {
                let _ = serve(conn, &tx);
                slot.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Reads one request line within [`REQUEST_DEADLINE`] and [`MAX_REQUEST`] bytes.
fn read_request(conn: &UnixStream) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::new(ErrorKind::TimedOut, "request not sent in time"))?;
        conn.set_read_timeout(Some(left))?;
        let n = match (&*conn).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(line);
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..end]);
            return Ok(line);
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_REQUEST {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("request longer than {MAX_REQUEST} bytes"),
            ));
        }
    }
}

fn serve(conn: UnixStream, tx: &Sender<(Request, Sender<Response>)>) -> Result<()> {
    // A client that does not read its reply must not hold the thread either.
    conn.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let line = read_request(&conn)?;
    let reply = match serde_json::from_slice::<Request>(&line) {
        Ok(req) => {
            let (rtx, rrx) = channel();
            tx.send((req, rtx))?;
            rrx.recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| Response::error("monitor busy"))
        }
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut w = &conn;
    serde_json::to_writer(&mut w, &reply)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// Sends `req` to every running monitor; returns (monitor pid, reply) pairs, `T` being
/// the request's reply type. Sockets of monitors that died are removed; a reply that is
/// neither `T` nor an error is left out, like a monitor that does not answer.
pub fn broadcast<T: DeserializeOwned>(state_dir: &Path, req: &Request) -> Vec<(u32, Reply<T>)> {
    let Ok(entries) = std::fs::read_dir(run_dir(state_dir)) else {
        return vec![];
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let path = e.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match ask(&path, req) {
            Ok(v) => out.push((pid, v)),
            Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    out.sort_by_key(|(p, _)| *p);
    out
}

fn ask<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<Reply<T>> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = &conn;
    serde_json::to_writer(&mut w, req)?;
    w.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as it crosses the socket: serialized by the monitor, read by a client.
    fn wire<T: DeserializeOwned>(r: &Response) -> Reply<T> {
        serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()
    }

    #[test]
    fn requests_keep_their_wire_form() {
        let r = Request::Normalize { key: "1-2".into() };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"normalize","key":"1-2"}"#);
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"cmd":"ps"}"#).unwrap(),
            Request::Ps
        ));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
    }

    #[test]
    fn errors_and_replies_are_told_apart() {
        let e: Reply<AdminReply> = wire(&Response::error("no such profile"));
        assert!(matches!(e, Reply::Error(ErrorReply { ref error }) if error == "no such profile"));
        let ok: Reply<AdminReply> = wire(&Response::Admin(AdminReply {
            ok: true,
            state: Some(ProfileState::Normal),
        }));
        assert_eq!(
            ok.ok(),
            Some(AdminReply {
                ok: true,
                state: Some(ProfileState::Normal)
            })
        );
        // A reply of another request is not mistaken for this one.
        let ps = serde_json::to_string(&Response::Ps(PsReply { tasks: vec![] })).unwrap();
        assert!(serde_json::from_str::<Reply<StatusReply>>(&ps).is_err());
    }

    #[test]
    fn progress_follows_the_freeze_rule_and_normal_wait() {
        let c = PhConfig::default();
        let sec = 1_000_000_000;
        // 1000 calls learnt, 200 stable since: 4 x 800 = 3200 < 3201 needed.
        let p = Progress::of(ProfileState::Training, 1000, 200, 0, None, 0, &c);
        assert_eq!(p.calls_to_freeze, Some(2201));
        assert_eq!(
            p.describe(ProfileState::Training, 0.0),
            "2201 calls without a new pair to freeze (200 since the last)"
        );
        let f = Progress::of(
            ProfileState::Frozen,
            1000,
            900,
            30 * sec,
            None,
            18 * sec,
            &c,
        );
        assert_eq!((f.calls_to_freeze, f.normal_in_s), (None, Some(12.0)));
        let reset = Some(LastReset {
            ts: 100.0,
            why: "anomaly_limit".into(),
        });
        let n = Progress::of(ProfileState::Normal, 1, 1, 0, reset, 0, &c);
        assert_eq!(
            n.describe(ProfileState::Normal, 160.0),
            "normal; last reset: anomaly_limit, 60 s ago"
        );
    }

    #[test]
    fn status_round_trips() {
        let s = StatusReply {
            daemon: true,
            pid: 7,
            uptime_s: 2.5,
            mode: Mode::Detect,
            respond: false,
            events: 10,
            events_per_s: 4.0,
            anomalies: 1,
            responses: 0,
            under_response: vec![42],
            delays: 3,
            execve_refused: 0,
            losses: Losses {
                rows_full: 9,
                ..Losses::default()
            },
            profiles: ProfileCounts {
                training: 1,
                frozen: 2,
                normal: 3,
            },
            max_profiles: 512,
            evicted: Evictions { deleted: 5, lru: 6 },
            calls: 100,
            calls_normal: 60,
            tids_taken: 2,
            general_calls: Some(7),
            bpf_run_time: Some(vec![ProgRunTime {
                name: "sys_enter_btf".into(),
                run_cnt: 4,
                run_time_ns: 100,
            }]),
            floor: Some(true),
            arguments: Some(ArgumentLosses {
                unread: 7,
                ..ArgumentLosses::default()
            }),
            limits: Some(LimitCounts {
                throttle_held: 3,
                ..LimitCounts::default()
            }),
        };
        let back = wire::<StatusReply>(&Response::Status(Box::new(s.clone())))
            .ok()
            .unwrap();
        assert_eq!(back.under_response, vec![42]);
        assert_eq!(back.losses, s.losses);
        assert_eq!(back.profiles, s.profiles);
        assert_eq!(back.mode, Mode::Detect);
        assert_eq!(back.bpf_run_time, s.bpf_run_time);
        assert_eq!(back.floor, Some(true));
        assert_eq!(back.evicted, s.evicted);
        assert_eq!(back.arguments, s.arguments);
        assert_eq!(back.limits, s.limits);
        assert_eq!(
            (back.max_profiles, back.calls, back.calls_normal),
            (512, 100, 60)
        );
        // An older daemon's reply (no eviction or call counts) still reads.
        let mut old = serde_json::to_value(&s).unwrap();
        for k in [
            "max_profiles",
            "evicted",
            "calls",
            "calls_normal",
            "arguments",
            "limits",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: StatusReply = serde_json::from_value(old).unwrap();
        assert_eq!(back.evicted, Evictions::default());
        assert_eq!(back.arguments, None);
        assert_eq!(back.limits, None);
    }

    #[test]
    fn limit_counts_count_only_their_events() {
        let mut c = LimitCounts::default();
        for e in [
            "throttle_queued",
            "throttle_queued",
            "throttle_release",
            "throttle_alarm",
            "rate_exceeded",
            "rate_queued",
            "rate_release",
            "rate_alarm",
            "anomaly",
            "delay_start",
        ] {
            c.count(e);
        }
        assert_eq!(
            c,
            LimitCounts {
                throttle_queued: 2,
                throttle_held: 0,
                throttle_released: 1,
                throttle_alarms: 1,
                rate_exceeded: 1,
                rate_queued: 1,
                rate_released: 1,
                rate_alarms: 1,
                ..LimitCounts::default()
            }
        );
    }

    #[test]
    fn a_live_server_answers_and_removes_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path()).unwrap();
        let me = std::process::id();
        let asker = {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || {
                broadcast::<AdminReply>(&d, &Request::Tolerize { key: "1-2".into() })
            })
        };
        let t0 = std::time::Instant::now();
        let mut served = false;
        while !asker.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            server.poll(|req| {
                served = matches!(req, Request::Tolerize { ref key } if key == "1-2");
                Response::Admin(AdminReply {
                    ok: true,
                    state: None,
                })
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        let replies = asker.join().unwrap();
        assert!(served);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, me);
        assert!(matches!(
            replies[0].1,
            Reply::Ok(AdminReply { ok: true, .. })
        ));
        drop(server);
        assert!(!run_dir(dir.path()).join(format!("{me}.sock")).exists());
    }
}
