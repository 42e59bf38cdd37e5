//! Userspace side of the BPF programs: load and attach them, drive their maps, read
//! their events.
//!
//! The kernel keeps pH's per-call state (sequences, locality frames, lookahead pairs);
//! userspace decides what the kernel cannot: when a profile becomes normal, what to
//! save and load, how to respond. So this module gives the daemon exactly that: set a
//! profile's state, read and write its pairs, drain events, read the loss counters.
//!
//! After attaching, only the links and duplicated map fds are kept: the skeleton and
//! its object are dropped, so `Kernel` has no self-borrow. The links keep the programs
//! attached, the programs keep their maps; dropping `Kernel` detaches everything.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use homeostat_core::ph::ExeKey;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, Link, MapCore, MapFlags, MapHandle, PrintLevel, RingBuffer};

use crate::skel::HomeostatSkelBuilder;

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Why the kernel side could not be used or driven. Each displays as a one-liner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not privileged enough to load BPF programs.
    #[error("bpf: permission denied (need root, or CAP_BPF and CAP_PERFMON)")]
    PermissionDenied,
    /// The kernel exposes no BTF, which CO-RE relocation needs.
    #[error("bpf: kernel has no BTF ({BTF_PATH} missing); needs CONFIG_DEBUG_INFO_BTF")]
    NoBtf,
    /// Loading or attaching failed for another reason.
    #[error("bpf: {0}")]
    Unavailable(String),
    /// A call number outside pH's 9-bit table.
    #[error("bpf: call number {0} out of range (the kernel table has {ROW} rows)")]
    OutOfRange(u16),
    /// A map operation failed.
    #[error("bpf map {map}: {what}: {err}")]
    Map {
        /// The map.
        map: &'static str,
        /// The operation.
        what: &'static str,
        /// The error.
        err: String,
    },
}

fn load_error(what: &str, e: libbpf_rs::Error) -> Error {
    if e.kind() == ErrorKind::PermissionDenied {
        let _ = libbpf_tail();
        Error::PermissionDenied
    } else {
        Error::Unavailable(format!("{what}: {e}{}", libbpf_tail()))
    }
}

fn map_err(map: &'static str, what: &'static str) -> impl Fn(libbpf_rs::Error) -> Error {
    move |e| Error::Map {
        map,
        what,
        err: e.to_string(),
    }
}

/// A profile's state as the kernel knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelState {
    /// Calls train the profile's pairs (pH's training and frozen).
    Training,
    /// Calls are tested; misses update the task's locality frame.
    Normal,
}

/// A profile's entry in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelProfile {
    /// Training or normal.
    pub state: KernelState,
    /// Calls seen.
    pub calls: u64,
    /// Pairs learnt in the kernel.
    pub new_pairs: u64,
    /// Anomalous calls while normal.
    pub anomalies: u64,
    /// Whether an anomalous call of a normal profile stops its process for a response.
    pub respond: bool,
}

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A call of a normal profile's task with missing pairs.
    Anomaly,
    /// A training profile learnt `misses` pairs at this call.
    NewPairs,
    /// A task started an executable (nr, misses, lfc are 0).
    Exec,
    /// The LSM program refused an execve (`lfc`: the task's).
    ExecRefused,
}

/// One event from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Process id (thread group).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The executable's profile key.
    pub exe: ExeKey,
    /// The call number (x86_64 numbering; i386 calls are not told apart yet).
    pub nr: u32,
    /// Anomaly: missing pairs. NewPairs: pairs learnt.
    pub misses: u32,
    /// The task's locality frame count after this call.
    pub lfc: u32,
    /// Exec: the path as passed to execve (may be relative; cut at 255 bytes).
    pub path: Option<String>,
    /// Anomaly: this call sent the process SIGSTOP for a response ([`Kernel::stopped`]
    /// lists it until [`Kernel::unstop`]).
    pub stopped: bool,
}

/// Counters of what the kernel side could not do; none is ever silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events dropped because the ring buffer was full.
    pub lost_events: u64,
    /// Rows of pairs not created (pairs not learnt) because the rows map was full.
    pub rows_full: u64,
    /// Tasks not followed because task storage or the fork map could not be written.
    pub tasks_full: u64,
    /// Profiles not created (auto_create) because the profiles map was full.
    pub profiles_full: u64,
    /// Responses due but not started: the stop map was full or SIGSTOP failed.
    pub stops_failed: u64,
}

/// How to load the programs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Give every new executable a training profile in the kernel (system-wide
    /// learning). Off: only profiles userspace creates are followed.
    pub auto_create: bool,
    /// Wake the event consumer every this many events (1: every event). The consumer
    /// drains on its poll timeout anyway.
    pub wakeup_every: u32,
    /// Do not follow this process (the daemon itself), by thread-group id.
    pub ignore_pid: Option<u32>,
    /// Use this sys_enter hook only (default: tp_btf, falling back to the tracepoint).
    pub hook: Option<Hook>,
    /// Size of the event ring buffer in bytes: a power of two, at least the page size.
    pub ring_bytes: u32,
    /// Also try to refuse execve in the kernel (BPF LSM) for tasks of responding
    /// normal profiles at this LFC or above (0: do not try). Where BPF LSM does not
    /// load, the programs load without it ([`Kernel::exec_lsm`] says why).
    pub exec_lsm_at: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auto_create: false,
            wakeup_every: 64,
            ignore_pid: Some(std::process::id()),
            hook: None,
            ring_bytes: 4 << 20,
            exec_lsm_at: 0,
        }
    }
}

/// The in-kernel execve refusal ([`Options::exec_lsm_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecLsm {
    /// Not asked for.
    NotRequested,
    /// Loaded and attached, and the bpf LSM is listed as active.
    Active,
    /// Loaded and attached; whether the bpf LSM is active could not be read
    /// (securityfs not mounted).
    Unconfirmed,
    /// Not loaded: why (e.g. EPERM under lockdown, or the bpf LSM not active).
    Unavailable(String),
}

/// How sys_enter is hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// BTF-typed tracepoint (preferred: cheaper argument access).
    TpBtf,
    /// Raw tracepoint raw_syscalls/sys_enter, untyped (fallback; needs neither
    /// vmlinux BTF for attaching nor tracefs).
    RawTp,
}

// Mirrors of src/bpf/homeostat.h (keep in step).
const KEY_LEN: usize = 16;
const ROW_KEY_LEN: usize = 24;
/// Rows (current call) and columns (previous call) of pH's table in the kernel.
pub const ROW: usize = 512;
const PROFILE_LEN: usize = 32;
const CONFIG_LEN: usize = 24;
const EVENT_LEN: usize = 48;
const NSTATS: u32 = 5;
const TASK_LEN: usize = 80;
const STOP_LEN: usize = 16;

fn key_bytes(k: ExeKey) -> [u8; KEY_LEN] {
    let mut b = [0; KEY_LEN];
    b[..8].copy_from_slice(&k.dev.to_ne_bytes());
    b[8..].copy_from_slice(&k.ino.to_ne_bytes());
    b
}

fn row_key_bytes(k: ExeKey, cur: u16) -> [u8; ROW_KEY_LEN] {
    let mut b = [0; ROW_KEY_LEN];
    b[..KEY_LEN].copy_from_slice(&key_bytes(k));
    b[16..20].copy_from_slice(&u32::from(cur).to_ne_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn decode_event(b: &[u8]) -> Option<Event> {
    if b.len() < EVENT_LEN {
        return None;
    }
    let kind = match u32_at(b, 0) {
        1 => EventKind::Anomaly,
        2 => EventKind::NewPairs,
        3 => EventKind::Exec,
        4 => EventKind::ExecRefused,
        _ => return None,
    };
    Some(Event {
        kind,
        pid: u32_at(b, 4),
        tid: u32_at(b, 8),
        nr: u32_at(b, 12),
        exe: ExeKey {
            dev: u64_at(b, 16),
            ino: u64_at(b, 24),
        },
        misses: u32_at(b, 32),
        lfc: u32_at(b, 36),
        stopped: u32_at(b, 40) & 1 != 0,
        path: (kind == EventKind::Exec).then(|| {
            let p = &b[EVENT_LEN..];
            let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        }),
    })
}

/// libbpf's warnings of the load in progress: kept, not printed, so that a failure
/// is one line with its cause. The RLIMIT_MEMLOCK / "ulimit -l" hints are dropped:
/// they are misleading on kernels that charge BPF memory to the memory cgroup.
static LIBBPF_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
const LOG_KEEP: usize = 64;

fn libbpf_print(_level: PrintLevel, msg: String) {
    if msg.contains("ulimit") || msg.contains("RLIMIT_MEMLOCK") {
        return;
    }
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        if log.len() >= LOG_KEEP {
            log.remove(0);
        }
        log.push(msg.trim().to_string());
    }
}

/// The last few libbpf warnings, to append to an error.
fn libbpf_tail() -> String {
    let log = match LIBBPF_LOG.lock() {
        Ok(mut log) => std::mem::take(&mut *log),
        Err(_) => return String::new(),
    };
    let tail: Vec<&str> = log.iter().rev().take(3).rev().map(String::as_str).collect();
    if tail.is_empty() {
        String::new()
    } else {
        format!(" ({})", tail.join("; "))
    }
}

/// A profile's pairs: (current call, previous call, distance mask), as
/// [`Kernel::pairs`] returns them.
pub type PairList = Vec<(u16, u16, u8)>;

/// The loaded and attached programs and their maps.
pub struct Kernel {
    _links: Vec<Link>,
    hook: Hook,
    exec_lsm: ExecLsm,
    config: MapHandle,
    profiles: MapHandle,
    rows: MapHandle,
    events: MapHandle,
    stats: MapHandle,
    stopped: MapHandle,
    tasks: MapHandle,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").field("hook", &self.hook).finish()
    }
}

impl Kernel {
    /// Loads and attaches the programs: tp_btf/sys_enter, or raw_tp/sys_enter when
    /// tp_btf is refused; and the fork/exec raw tracepoints.
    pub fn load(opts: &Options) -> Result<Kernel, Error> {
        if !Path::new(BTF_PATH).exists() {
            return Err(Error::NoBtf);
        }
        libbpf_rs::set_print(Some((PrintLevel::Warn, libbpf_print)));
        let _ = libbpf_tail();
        if opts.exec_lsm_at == 0 {
            return Self::load_hooks(opts, false);
        }
        // The bpf LSM must be active for an LSM program to run at all.
        let active = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
        if let Some(list) = &active {
            if !list.trim().split(',').any(|l| l == "bpf") {
                let mut k = Self::load_hooks(opts, false)?;
                k.exec_lsm = ExecLsm::Unavailable(format!(
                    "the bpf LSM is not active (/sys/kernel/security/lsm: {})",
                    list.trim()
                ));
                return Ok(k);
            }
        }
        match Self::load_hooks(opts, true) {
            Ok(mut k) => {
                k.exec_lsm = if active.is_some() {
                    ExecLsm::Active
                } else {
                    ExecLsm::Unconfirmed
                };
                Ok(k)
            }
            Err(e) => {
                let mut k = Self::load_hooks(opts, false)?;
                let why = match e {
                    // As root this is the kernel refusing LSM programs (lockdown).
                    Error::PermissionDenied => "EPERM: the kernel refuses BPF LSM programs \
                                                (lockdown?)"
                        .to_string(),
                    e => e.to_string(),
                };
                k.exec_lsm = ExecLsm::Unavailable(format!("lsm/bprm_check_security: {why}"));
                Ok(k)
            }
        }
    }

    /// Loads with tp_btf, falling back to raw_tp (unless `opts.hook` says which).
    fn load_hooks(opts: &Options, lsm: bool) -> Result<Kernel, Error> {
        if let Some(hook) = opts.hook {
            return Self::load_with(opts, hook, lsm);
        }
        match Self::load_with(opts, Hook::TpBtf, lsm) {
            Err(Error::Unavailable(first)) => {
                Self::load_with(opts, Hook::RawTp, lsm).map_err(|e| match e {
                    Error::Unavailable(second) => {
                        Error::Unavailable(format!("tp_btf: {first}; raw_tp fallback: {second}"))
                    }
                    e => e,
                })
            }
            r => r,
        }
    }

    fn load_with(opts: &Options, hook: Hook, lsm: bool) -> Result<Kernel, Error> {
        let mut object = MaybeUninit::uninit();
        let mut open = HomeostatSkelBuilder::default()
            .open(&mut object)
            .map_err(|e| load_error("open", e))?;
        open.progs.sys_enter_btf.set_autoload(hook == Hook::TpBtf);
        open.progs.sys_enter_raw.set_autoload(hook == Hook::RawTp);
        open.progs.exec_check.set_autoload(lsm);
        open.maps
            .hs_events
            .set_max_entries(opts.ring_bytes)
            .map_err(|e| load_error("ring buffer size", e))?;
        let skel = open.load().map_err(|e| load_error("load", e))?;

        let dup = |m: &libbpf_rs::MapMut<'_>, name: &'static str| {
            MapHandle::try_from(m).map_err(map_err(name, "dup fd"))
        };
        let kernel = Kernel {
            _links: vec![],
            hook,
            exec_lsm: ExecLsm::NotRequested,
            config: dup(&skel.maps.hs_config, "hs_config")?,
            profiles: dup(&skel.maps.hs_profiles, "hs_profiles")?,
            rows: dup(&skel.maps.hs_rows, "hs_rows")?,
            events: dup(&skel.maps.hs_events, "hs_events")?,
            stats: dup(&skel.maps.hs_stats, "hs_stats")?,
            stopped: dup(&skel.maps.hs_stopped, "hs_stopped")?,
            tasks: dup(&skel.maps.hs_tasks, "hs_tasks")?,
        };
        kernel.configure(opts)?;

        // Attach the task-lifecycle hooks first, so no task is seen by sys_enter
        // before its fork is.
        let mut links = Vec::with_capacity(5);
        for (name, prog) in [
            ("sched_process_fork", &skel.progs.sched_fork),
            ("sched_process_exec", &skel.progs.sched_exec),
            ("sched_process_exit", &skel.progs.sched_exit),
        ] {
            links.push(
                prog.attach()
                    .map_err(|e| load_error(&format!("attach {name}"), e))?,
            );
        }
        let sys_enter = match hook {
            Hook::TpBtf => &skel.progs.sys_enter_btf,
            Hook::RawTp => &skel.progs.sys_enter_raw,
        };
        links.push(
            sys_enter
                .attach()
                .map_err(|e| load_error("attach sys_enter", e))?,
        );
        if lsm {
            links.push(
                skel.progs
                    .exec_check
                    .attach_lsm()
                    .map_err(|e| load_error("attach lsm/bprm_check_security", e))?,
            );
        }
        Ok(Kernel {
            _links: links,
            ..kernel
        })
    }

    fn configure(&self, opts: &Options) -> Result<(), Error> {
        let mut c = [0u8; CONFIG_LEN];
        c[..4].copy_from_slice(&opts.ignore_pid.unwrap_or(0).to_ne_bytes());
        c[4..8].copy_from_slice(&u32::from(opts.auto_create).to_ne_bytes());
        c[8..12].copy_from_slice(&opts.wakeup_every.max(1).to_ne_bytes());
        // Generation 1: a task's cache (generation 0 when new) is stale at first.
        c[12..16].copy_from_slice(&1u32.to_ne_bytes());
        c[16..20].copy_from_slice(&opts.exec_lsm_at.to_ne_bytes());
        self.config
            .update(&0u32.to_ne_bytes(), &c, MapFlags::ANY)
            .map_err(map_err("hs_config", "update"))
    }

    /// Tells the programs that hs_profiles changed: tasks cache their profile's state
    /// and look it up again when the generation moves.
    fn bump_generation(&self) -> Result<(), Error> {
        let k = 0u32.to_ne_bytes();
        let mut c = self
            .config
            .lookup(&k, MapFlags::ANY)
            .map_err(map_err("hs_config", "lookup"))?
            .filter(|c| c.len() == CONFIG_LEN)
            .ok_or_else(|| Error::Map {
                map: "hs_config",
                what: "lookup",
                err: "no entry".into(),
            })?;
        let g = u32_at(&c, 12).wrapping_add(1).max(1);
        c[12..16].copy_from_slice(&g.to_ne_bytes());
        self.config
            .update(&k, &c, MapFlags::ANY)
            .map_err(map_err("hs_config", "update"))
    }

    /// How sys_enter is hooked.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Whether execve is also refused in the kernel (BPF LSM), and if not, why.
    pub fn exec_lsm(&self) -> &ExecLsm {
        &self.exec_lsm
    }

    /// Sets a profile's state, creating its entry (counters at 0) if absent.
    pub fn set_state(&self, exe: ExeKey, state: KernelState) -> Result<(), Error> {
        let s: u32 = match state {
            KernelState::Training => 0,
            KernelState::Normal => 1,
        };
        self.set_profile_word(exe, 0, s)
    }

    /// Writes the u32 at byte `at` of a profile's entry (`state` 0, `respond` 4),
    /// creating the entry (counters at 0) if absent, and tells the tasks.
    fn set_profile_word(&self, exe: ExeKey, at: usize, value: u32) -> Result<(), Error> {
        let k = key_bytes(exe);
        let mut v = match self
            .profiles
            .lookup(&k, MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?
        {
            Some(v) if v.len() == PROFILE_LEN => v,
            _ => vec![0; PROFILE_LEN],
        };
        v[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        // Counters may move between lookup and update; they are statistics only.
        self.profiles
            .update(&k, &v, MapFlags::ANY)
            .map_err(map_err("hs_profiles", "update"))?;
        // The entry may be new, or its state changed: cached states are stale.
        self.bump_generation()
    }

    /// A profile's entry, if the kernel has one.
    pub fn profile(&self, exe: ExeKey) -> Result<Option<KernelProfile>, Error> {
        let v = self
            .profiles
            .lookup(&key_bytes(exe), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?;
        Ok(v.filter(|v| v.len() == PROFILE_LEN).map(|v| KernelProfile {
            state: if u32_at(&v, 0) == 1 {
                KernelState::Normal
            } else {
                KernelState::Training
            },
            calls: u64_at(&v, 8),
            new_pairs: u64_at(&v, 16),
            anomalies: u64_at(&v, 24),
            respond: u32_at(&v, 4) != 0,
        }))
    }

    /// Whether the profile's anomalous processes are stopped for a response (only
    /// while it is normal). Creates the profile (training) if absent.
    pub fn set_respond(&self, exe: ExeKey, on: bool) -> Result<(), Error> {
        self.set_profile_word(exe, 4, u32::from(on))
    }

    /// What the kernel keeps for thread `tid` (`None`: no such thread, or one the
    /// programs have not seen make a call).
    pub fn task(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        self.probe_ref().task(tid)
    }

    /// The processes the kernel stopped for a response and userspace has not taken
    /// over yet: (pid, thread whose call was anomalous, that call).
    pub fn stopped(&self) -> Vec<(u32, u32, u32)> {
        stopped_in(&self.stopped)
    }

    /// Forgets a stopped process (userspace has taken it over, or resumed it).
    pub fn unstop(&self, pid: u32) {
        unstop_in(&self.stopped, pid);
    }

    /// See [`Probe::release`].
    pub fn release(&self, pid: u32) {
        release_in(&self.stopped, pid);
    }

    /// A handle for other threads: task states and rows, for the response.
    pub fn probe(&self) -> Result<Probe, Error> {
        Ok(Probe {
            tasks: MapHandle::try_from(&self.tasks).map_err(map_err("hs_tasks", "dup fd"))?,
            rows: MapHandle::try_from(&self.rows).map_err(map_err("hs_rows", "dup fd"))?,
            stopped: MapHandle::try_from(&self.stopped).map_err(map_err("hs_stopped", "dup fd"))?,
        })
    }

    fn probe_ref(&self) -> ProbeRef<'_> {
        ProbeRef { tasks: &self.tasks }
    }

    /// The kernel's id of the stop map, for a keeper process to open it
    /// ([`resume_stopped_by_id`]) and so outlive this one.
    pub fn stopped_map_id(&self) -> Result<u32, Error> {
        self.stopped
            .info()
            .map(|i| i.info.id)
            .map_err(map_err("hs_stopped", "info"))
    }

    /// Every profile key the kernel has (with auto_create, every executable seen).
    pub fn profiles(&self) -> Vec<ExeKey> {
        self.profiles
            .keys()
            .filter(|k| k.len() == KEY_LEN)
            .map(|k| ExeKey {
                dev: u64_at(&k, 0),
                ino: u64_at(&k, 8),
            })
            .collect()
    }

    /// Removes a profile and its pairs; its tasks stop being followed.
    pub fn remove_profile(&self, exe: ExeKey) -> Result<(), Error> {
        match self.profiles.delete(&key_bytes(exe)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(map_err("hs_profiles", "delete")(e)),
        }
        self.bump_generation()?;
        for k in self.row_keys(exe) {
            match self.rows.delete(&k) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("hs_rows", "delete")(e)),
            }
        }
        Ok(())
    }

    /// The keys of a profile's rows. Walks the whole map.
    fn row_keys(&self, exe: ExeKey) -> Vec<Vec<u8>> {
        let want = key_bytes(exe);
        self.rows
            .keys()
            .filter(|k| k.len() == ROW_KEY_LEN && k[..KEY_LEN] == want)
            .collect()
    }

    /// A profile's pairs: (current call, previous call, distance mask), bit d-1 of
    /// the mask meaning "previous came d calls before current"; only non-zero masks.
    pub fn pairs(&self, exe: ExeKey) -> Result<Vec<(u16, u16, u8)>, Error> {
        let mut out = vec![];
        for k in self.row_keys(exe) {
            // A row deleted since the walk saw its key is simply skipped.
            let Some(row) = self
                .rows
                .lookup(&k, MapFlags::ANY)
                .map_err(map_err("hs_rows", "lookup"))?
            else {
                continue;
            };
            let cur = u32_at(&k, 16) as u16;
            for (prev, &m) in row.iter().enumerate().take(ROW) {
                if m != 0 {
                    out.push((cur, prev as u16, m));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every profile's pairs in one walk of the rows map (what [`Kernel::pairs`] gives
    /// for one profile), for saving many profiles at once.
    pub fn all_pairs(&self) -> Result<BTreeMap<ExeKey, PairList>, Error> {
        let mut out: BTreeMap<ExeKey, PairList> = BTreeMap::new();
        for k in self.rows.keys().filter(|k| k.len() == ROW_KEY_LEN) {
            let Some(row) = self
                .rows
                .lookup(&k, MapFlags::ANY)
                .map_err(map_err("hs_rows", "lookup"))?
            else {
                continue;
            };
            let exe = ExeKey {
                dev: u64_at(&k, 0),
                ino: u64_at(&k, 8),
            };
            let cur = u32_at(&k, 16) as u16;
            let v = out.entry(exe).or_default();
            for (prev, &m) in row.iter().enumerate().take(ROW) {
                if m != 0 {
                    v.push((cur, prev as u16, m));
                }
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        Ok(out)
    }

    /// Loads pairs into a profile (ORed into what the kernel has), e.g. a saved
    /// profile at start-up. Call numbers must be below [`ROW`].
    pub fn add_pairs(&self, exe: ExeKey, pairs: &[(u16, u16, u8)]) -> Result<(), Error> {
        let mut rows: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        for &(cur, prev, mask) in pairs {
            for n in [cur, prev] {
                if usize::from(n) >= ROW {
                    return Err(Error::OutOfRange(n));
                }
            }
            if mask != 0 {
                rows.entry(cur).or_insert_with(|| vec![0; ROW])[usize::from(prev)] |= mask;
            }
        }
        for (cur, add) in rows {
            let k = row_key_bytes(exe, cur);
            let mut row = self
                .rows
                .lookup(&k, MapFlags::ANY)
                .map_err(map_err("hs_rows", "lookup"))?
                .filter(|r| r.len() == ROW)
                .unwrap_or_else(|| vec![0; ROW]);
            for (r, a) in row.iter_mut().zip(add) {
                *r |= a;
            }
            // Bits the kernel learns between lookup and update are lost; they are
            // learnt again at their next occurrence.
            self.rows
                .update(&k, &row, MapFlags::ANY)
                .map_err(map_err("hs_rows", "update"))?;
        }
        Ok(())
    }

    /// The loss counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let mut sums = [0u64; NSTATS as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("hs_stats", "lookup"))?
                .unwrap_or_default();
            *sum = per_cpu
                .iter()
                .filter(|v| v.len() >= 8)
                .map(|v| u64_at(v, 0))
                .sum();
        }
        Ok(Stats {
            lost_events: sums[0],
            rows_full: sums[1],
            tasks_full: sums[2],
            profiles_full: sums[3],
            stops_failed: sums[4],
        })
    }

    /// A reader of the event ring buffer that hands each event to `f`.
    pub fn events<'a, F>(&'a self, mut f: F) -> Result<Events<'a>, Error>
    where
        F: FnMut(Event) + 'a,
    {
        let mut b = libbpf_rs::RingBufferBuilder::new();
        b.add(&self.events, move |data: &[u8]| {
            if let Some(e) = decode_event(data) {
                f(e);
            }
            0
        })
        .map_err(map_err("hs_events", "ring buffer"))?;
        let rb = b.build().map_err(map_err("hs_events", "ring buffer"))?;
        Ok(Events { rb })
    }
}

/// Reads events; see [`Kernel::events`].
pub struct Events<'a> {
    rb: RingBuffer<'a>,
}

impl Events<'_> {
    /// Waits up to `timeout` for a wakeup, then drains everything pending (the
    /// programs wake the reader only every `wakeup_every` events).
    pub fn poll(&self, timeout: Duration) -> Result<(), Error> {
        self.rb
            .poll(timeout)
            .map_err(map_err("hs_events", "poll"))?;
        self.rb.consume().map_err(map_err("hs_events", "consume"))
    }

    /// The epoll fd, to wait on it with other fds.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // The ring buffer's epoll fd lives as long as `self.rb`.
        let fd = self.rb.epoll_fd();
        // SAFETY: fd is owned by self.rb and valid while the borrow lasts.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
    }
}

/// What the kernel keeps for a task (`hs_task` in `src/bpf/homeostat.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    /// The executable's profile key.
    pub exe: ExeKey,
    /// The last calls, `seq[0]` the most recent (9-bit numbers).
    pub seq: [u16; 8],
    /// How many of `seq` are valid.
    pub nseq: u32,
    /// The next slot of the locality frame.
    pub fpos: u32,
    /// The locality frame count.
    pub lfc: u32,
    /// The locality frame, one bit per call of the last 128.
    pub frame: [u64; 2],
}

/// Locality frame size in the kernel.
pub const LOCALITY: u32 = 128;

impl TaskState {
    fn decode(v: &[u8]) -> Option<TaskState> {
        if v.len() < TASK_LEN || u32_at(v, 44) == 0 {
            return None;
        }
        let mut seq = [0u16; 8];
        for (i, s) in seq.iter_mut().enumerate() {
            *s = u16::from_ne_bytes([v[16 + 2 * i], v[17 + 2 * i]]);
        }
        Some(TaskState {
            exe: ExeKey {
                dev: u64_at(v, 0),
                ino: u64_at(v, 8),
            },
            seq,
            nseq: u32_at(v, 32),
            fpos: u32_at(v, 36),
            lfc: u32_at(v, 40),
            frame: [u64_at(v, 48), u64_at(v, 56)],
        })
    }

    /// What the kernel will make of this task's next call `nr` against its profile's
    /// row for `nr` (`None`: no row), in a normal profile: (missing pairs, LFC after
    /// the call). The same arithmetic as the BPF program, so that a tracer stopped at
    /// the call's entry (before the tracepoint runs) knows its LFC, as pH did.
    pub fn after_call(&self, row: Option<&[u8]>, nr: u32) -> (u32, u32) {
        let _ = nr; // the row is already the one of `nr`
        let mut misses = 0;
        for d in 1..=self.nseq.min(8) as usize {
            let prev = usize::from(self.seq[d - 1]) & (ROW - 1);
            let bit = 1u8 << (d - 1);
            if row.is_none_or(|r| r.get(prev).is_none_or(|m| m & bit == 0)) {
                misses += 1;
            }
        }
        let pos = self.fpos & (LOCALITY - 1);
        let old = (self.frame[((pos >> 6) & 1) as usize] >> (pos & 63)) & 1;
        let mut lfc = self.lfc;
        if old != 0 && lfc > 0 {
            lfc -= 1;
        }
        if misses > 0 {
            lfc += 1;
        }
        (misses, lfc)
    }
}

/// Task states and rows, for threads other than the one driving [`Kernel`] (the
/// response); from [`Kernel::probe`].
#[derive(Debug)]
pub struct Probe {
    tasks: MapHandle,
    rows: MapHandle,
    stopped: MapHandle,
}

struct ProbeRef<'a> {
    tasks: &'a MapHandle,
}

impl Probe {
    fn as_ref(&self) -> ProbeRef<'_> {
        ProbeRef { tasks: &self.tasks }
    }

    /// See [`Kernel::task`].
    pub fn task(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        self.as_ref().task(tid)
    }

    /// The LFC thread `tid` will have after its next call `nr` (see
    /// [`TaskState::after_call`]); `None` when the kernel does not follow it.
    pub fn lfc_after(&self, tid: u32, nr: u32) -> Result<Option<u32>, Error> {
        let Some(t) = self.task(tid)? else {
            return Ok(None);
        };
        let cur = (nr as usize).min(ROW - 1) as u16;
        let row = self
            .rows
            .lookup(&row_key_bytes(t.exe, cur), MapFlags::ANY)
            .map_err(map_err("hs_rows", "lookup"))?;
        Ok(Some(t.after_call(row.as_deref(), nr).1))
    }

    /// Ends the kernel's stop of process `pid`: SIGCONT, then [`Kernel::unstop`]. Done
    /// once a tracer holds it (the tracer, not the stop, controls it from then on), or
    /// instead of a takeover that failed, so that it never stays stopped.
    pub fn release(&self, pid: u32) {
        release_in(&self.stopped, pid);
    }
}

fn unstop_in(map: &MapHandle, pid: u32) {
    // Absent already is fine: a second unstop, or an entry never made.
    let _ = map.delete(&pid.to_ne_bytes());
}

fn release_in(map: &MapHandle, pid: u32) {
    crate::sys::sigcont(pid as i32);
    unstop_in(map, pid);
}

impl ProbeRef<'_> {
    fn task(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        // Task storage is keyed by a pidfd from userspace; PIDFD_THREAD names a
        // thread rather than a process (Linux 6.9+).
        let Some(fd) = crate::sys::pidfd_thread(tid as i32) else {
            return Ok(None);
        };
        use std::os::fd::AsRawFd;
        match self
            .tasks
            .lookup(&fd.as_raw_fd().to_ne_bytes(), MapFlags::ANY)
        {
            Ok(v) => Ok(v.and_then(|v| TaskState::decode(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err("hs_tasks", "lookup")(e)),
        }
    }
}

fn stopped_in(map: &MapHandle) -> Vec<(u32, u32, u32)> {
    map.keys()
        .filter(|k| k.len() == 4)
        .filter_map(|k| {
            let v = map.lookup(&k, MapFlags::ANY).ok().flatten()?;
            (v.len() >= STOP_LEN).then(|| (u32_at(&k, 0), u32_at(&v, 8), u32_at(&v, 12)))
        })
        .collect()
}

/// Whether this kernel gives pidfds for threads (`PIDFD_THREAD`, Linux 6.9), which
/// reading a task's state from userspace ([`Kernel::task`]) needs.
pub fn thread_pidfds_supported() -> bool {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<i32>().ok());
    tid.is_some_and(|t| crate::sys::pidfd_thread(t).is_some())
}

/// Opens the stop map by id (a keeper process, while the daemon lives) so that it
/// survives the daemon; see [`Keeper`].
pub fn open_stopped_map(id: u32) -> Result<Keeper, Error> {
    MapHandle::from_map_id(id)
        .map(|stopped| Keeper { stopped })
        .map_err(map_err("hs_stopped", "open by id"))
}

/// The stop map held by a process other than the daemon, to resume what the daemon
/// left stopped if it dies.
#[derive(Debug)]
pub struct Keeper {
    stopped: MapHandle,
}

impl Keeper {
    /// Sends SIGCONT to every process in the stop map that is stopped (state `T`), and
    /// empties the map; returns the pids resumed. A process already taken over (traced)
    /// or running is left alone.
    pub fn resume_stopped(&self) -> Vec<u32> {
        resume_in(&self.stopped)
    }
}

impl Kernel {
    /// What [`Keeper::resume_stopped`] does, from the daemon (at exit).
    pub fn resume_stopped(&self) -> Vec<u32> {
        resume_in(&self.stopped)
    }
}

fn resume_in(map: &MapHandle) -> Vec<u32> {
    let mut resumed = vec![];
    for (pid, _, _) in stopped_in(map) {
        // `T`: stopped by a signal (a traced task shows `t`).
        if homeostat_proc::stat_field(pid as i32, 3).as_deref() == Some("T")
            && crate::sys::sigcont(pid as i32)
        {
            resumed.push(pid);
        }
        unstop_in(map, pid);
    }
    resumed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: [u16; 8], nseq: u32, lfc: u32, frame: [u64; 2], fpos: u32) -> TaskState {
        TaskState {
            exe: ExeKey { dev: 1, ino: 2 },
            seq,
            nseq,
            fpos,
            lfc,
            frame,
        }
    }

    #[test]
    fn after_call_mirrors_the_bpf_test_and_locality_frame() {
        // seq[0] = 3 (one call back), seq[1] = 4 (two back).
        let t = task([3, 4, 0, 0, 0, 0, 0, 0], 2, 0, [0, 0], 0);
        let mut row = vec![0u8; ROW];
        row[3] = 0b01;
        row[4] = 0b10;
        assert_eq!(t.after_call(Some(&row), 7), (0, 0));
        row[4] = 0b01; // 4 seen one back only: the distance-2 pair is missing
        assert_eq!(t.after_call(Some(&row), 7), (1, 1));
        assert_eq!(t.after_call(None, 7), (2, 1));
        // The slot leaving the frame (pos 65, set) gives its anomaly back.
        let t = task([3, 4, 0, 0, 0, 0, 0, 0], 2, 5, [0, 1 << 1], 65);
        assert_eq!(t.after_call(None, 7), (2, 5));
        row[4] = 0b10;
        assert_eq!(t.after_call(Some(&row), 7), (0, 4));
        // Only nseq predecessors count.
        let t = task([3, 9, 9, 9, 9, 9, 9, 9], 1, 0, [0, 0], 0);
        assert_eq!(t.after_call(Some(&row), 7), (0, 0));
    }
}
