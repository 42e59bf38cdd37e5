//! Loading: open the skeleton, size and configure its maps, attach the programs, and
//! keep only what the daemon needs afterwards.
//!
//! After attaching, only the links and duplicated map fds are kept: the skeleton and
//! its object are dropped, so `Kernel` has no self-borrow. The links keep the programs
//! attached, the programs keep their maps; dropping `Kernel` detaches everything. The
//! other modules add the methods for each map: `profiles` (states and rows), `events`
//! (ring buffer and loss counters), `task` (task states: the tid array, task storage),
//! `stop` (the stop map).

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};

use homeostat_core::symbols::SymbolConfig;

use crate::abi::{hs_config, ROWS, SLOTS, TIDS};
use crate::error::{capture_libbpf_log, load_error, map_err, Error, BTF_PATH};
use crate::generation::Generation;
use crate::index::Index;
use crate::skel::HomeostatSkelBuilder;

/// The kernel function every open goes through, whose exit retries the argument read.
const OPEN_FUNCTION: &str = "do_sys_openat2";

/// Whether the running kernel's BTF has function `name` (an fexit program needs it).
fn kernel_has_function(name: &str) -> bool {
    libbpf_rs::btf::Btf::from_vmlinux().is_ok_and(|b| {
        b.type_by_name::<libbpf_rs::btf::types::Func<'_>>(name)
            .is_some()
    })
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
    /// At most this many profiles (slots handed out), up to [`crate::SLOTS`] (4096,
    /// the default). Smaller maps are for tests and small machines: the memory is
    /// preallocated for 4096 whatever this says.
    pub max_profiles: u32,
    /// Follow only the tasks of this cgroup (v2 id, the inode number of its directory
    /// under /sys/fs/cgroup): decided at each exec and at a task's first call seen, and
    /// inherited by forks. A task outside is not followed at all (no profile, no
    /// learning, no test, no response). None: every task.
    pub scope_cgroup: Option<u64>,
    /// Classify the argument that matters of the calls that matter (the core's
    /// `arg_spec`) with these settings, and test (call, class) beside the pairs: a
    /// class a normal profile never saw is a miss (docs/arguments.md, "The daemon").
    /// None: plain call numbers; the class hook is then removed by the verifier.
    /// `path_depth` is at most [`crate::MAX_PATH_DEPTH`].
    pub symbols: Option<SymbolConfig>,
    /// Load the connection throttle's hook (`--throttle-connect`,
    /// [`crate::ThrottleFlags`]): connects to hosts outside their profile's working set
    /// are reported (and their process stopped, with `stop`), with these flags for
    /// profiles whose own are not set ([`Kernel::set_throttle`]). None: the hook is
    /// removed by the verifier.
    pub throttle: Option<crate::ThrottleFlags>,
    /// Load the rate limits' hook (`--rate-limit`): forks and file creations are
    /// counted per profile, reported as profiles' flags say ([`Kernel::set_rates`]),
    /// with these flags for profiles whose own are not set. None: off.
    pub rates: Option<crate::RateFlags>,
    /// Slots of the task array (`hs_tids`, 192 bytes each, preallocated), where a
    /// task's slot is the one its key (its user registers' address) hashes to or that
    /// slot's neighbour: a task that finds both held by others keeps its state in task
    /// storage, and its calls all take the general path (with n tasks alive in N
    /// slots, about 2n^3 / 3N^2 of them in all). 0 (the
    /// default): [`crate::TIDS`] (32768: 6 MiB); else rounded up to a power of two,
    /// at most that. Smaller arrays are for tests (1: every task but one in storage).
    pub tid_slots: u32,
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
            max_profiles: SLOTS,
            scope_cgroup: None,
            symbols: None,
            throttle: None,
            rates: None,
            tid_slots: 0,
        }
    }
}

/// The size of `hs_tids` for [`Options::tid_slots`] `asked`.
fn tid_slots(asked: u32) -> u32 {
    let want = if asked == 0 { TIDS } else { asked };
    want.clamp(1, TIDS).next_power_of_two()
}

/// Entry `key` of per-CPU u64 array `map` (named `name` in errors), summed over CPUs
/// (an absent entry: 0).
pub(crate) fn percpu_sum(map: &MapHandle, name: &'static str, key: u32) -> Result<u64, Error> {
    Ok(map
        .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_err(name, "lookup"))?
        .unwrap_or_default()
        .iter()
        .filter_map(|v| crate::abi::decode_prefix::<u64>(v))
        .fold(0, u64::wrapping_add))
}

/// Entries 0..N of per-CPU u64 array `map`, each summed over CPUs: a counter array's
/// totals.
pub(crate) fn percpu_sums<const N: usize>(
    map: &MapHandle,
    name: &'static str,
) -> Result<[u64; N], Error> {
    let mut sums = [0u64; N];
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = percpu_sum(map, name, i as u32)?;
    }
    Ok(sums)
}

/// The programs' links, detached in the reverse order of attaching: sys_enter first,
/// sched_process_exit last (see `load_once`).
struct Links(Vec<Link>);

impl Drop for Links {
    fn drop(&mut self) {
        while let Some(link) = self.0.pop() {
            drop(link);
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

/// The loaded and attached programs and their maps.
pub struct Kernel {
    /// Feature `floor`: the swappable sys_enter hook (`floor`), first so that it is
    /// dropped, and sys_enter detached, before the other links (`Links`). `None` only
    /// while loading.
    #[cfg(feature = "floor")]
    pub(crate) floor: Option<crate::floor::Switch>,
    _links: Links,
    /// The attached programs' ids, for their run-time counters (`runstats`).
    pub(crate) prog_ids: Vec<u32>,
    hook: Hook,
    exec_lsm: ExecLsm,
    max_profiles: u32,
    pub(crate) symbols: Option<SymbolConfig>,
    open_fallback: bool,
    open_fallback_error: Option<String>,
    pub(crate) config: MapHandle,
    pub(crate) profiles: MapHandle,
    pub(crate) rows: MapHandle,
    pub(crate) index: Arc<Index>,
    generation: Generation,
    pub(crate) free_slots: MapHandle,
    pub(crate) free_rows: MapHandle,
    pub(crate) events: MapHandle,
    pub(crate) stats: MapHandle,
    /// Per-CPU call counts by profile slot (`hs_calls`).
    pub(crate) slot_calls: MapHandle,
    pub(crate) stopped: MapHandle,
    /// `hs_tids`' size - 1.
    pub(crate) tid_mask: u32,
    /// Task states by tid ([`Kernel::task`]; [`Kernel::probe`] takes a copy).
    pub(crate) task_maps: crate::task::TaskMaps,
    pub(crate) classes_map: MapHandle,
    pub(crate) class_count_map: MapHandle,
    pub(crate) arg_stats_map: MapHandle,
    pub(crate) thr_mode: MapHandle,
    pub(crate) thr_hosts: MapHandle,
    pub(crate) thr_stats: MapHandle,
    pub(crate) throttle: Option<crate::ThrottleFlags>,
    pub(crate) rate_cfg: MapHandle,
    pub(crate) rate_ring: MapHandle,
    pub(crate) rates: Option<crate::RateFlags>,
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
        capture_libbpf_log();
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
        // Any failure but a missing privilege or BTF (which raw_tp needs as much) may
        // be tp_btf's own: an older kernel, or a verifier stricter about typed args.
        match Self::load_with(opts, Hook::TpBtf, lsm) {
            Err(e @ (Error::Load { .. } | Error::Rejected { .. })) => {
                let e = e.to_string();
                let first = e.strip_prefix("bpf: ").unwrap_or(&e);
                Self::load_with(opts, Hook::RawTp, lsm).map_err(|e| match e {
                    Error::Load {
                        stage,
                        kind,
                        detail,
                    } => Error::Load {
                        stage: format!("tp_btf: {first}; raw_tp fallback: {stage}"),
                        kind,
                        detail,
                    },
                    Error::Rejected { stage, detail } => Error::Rejected {
                        stage: format!("tp_btf: {first}; raw_tp fallback: {stage}"),
                        detail,
                    },
                    e => e,
                })
            }
            r => r,
        }
    }

    /// Loads with the open fallback where the kernel has its function; where it
    /// refuses it (e.g. EPERM under lockdown), without, saying why.
    fn load_with(opts: &Options, hook: Hook, lsm: bool) -> Result<Kernel, Error> {
        if opts.symbols.is_none() || !kernel_has_function(OPEN_FUNCTION) {
            return Self::load_once(opts, hook, lsm, false);
        }
        match Self::load_once(opts, hook, lsm, true) {
            Ok(k) => Ok(k),
            Err(e) => {
                let mut k = Self::load_once(opts, hook, lsm, false)?;
                let why = match e {
                    // As root (the programs without it loaded) this is the kernel
                    // refusing BPF trampolines, as it refuses the LSM program.
                    Error::PermissionDenied => {
                        "EPERM: the kernel refuses BPF trampolines (lockdown?)".to_string()
                    }
                    e => e.to_string(),
                };
                k.open_fallback_error = Some(format!("fexit/{OPEN_FUNCTION}: {why}"));
                Ok(k)
            }
        }
    }

    fn load_once(
        opts: &Options,
        hook: Hook,
        lsm: bool,
        open_fallback: bool,
    ) -> Result<Kernel, Error> {
        let mut object = MaybeUninit::uninit();
        let mut open = HomeostatSkelBuilder::default()
            .open(&mut object)
            .map_err(|e| load_error("open", e))?;
        open.progs.sys_enter_btf.set_autoload(hook == Hook::TpBtf);
        open.progs.sys_enter_raw.set_autoload(hook == Hook::RawTp);
        #[cfg(feature = "floor")]
        {
            open.progs.floor_btf.set_autoload(hook == Hook::TpBtf);
            open.progs.floor_raw.set_autoload(hook == Hook::RawTp);
        }
        open.progs.exec_check.set_autoload(lsm);
        let symbols = match opts.symbols {
            Some(c) if c.path_depth == 0 || c.path_depth > crate::MAX_PATH_DEPTH => {
                return Err(Error::Config(format!(
                    "path depth {} is outside 1..={}",
                    c.path_depth,
                    crate::MAX_PATH_DEPTH
                )))
            }
            s => s,
        };
        // Opens whose path is not resident at sys_enter are retried at their exit
        // where the kernel has this function (docs/arguments.md, "The daemon").
        open.progs.hs_open_exit.set_autoload(open_fallback);
        if let Some(c) = symbols {
            let ro = open
                .maps
                .rodata_data
                .as_deref_mut()
                .ok_or_else(|| Error::Config("the object has no read-only data".into()))?;
            ro.hs_args_on = 1;
            ro.hs_path_depth = u32::from(c.path_depth);
            ro.hs_max_classes = c.max_classes;
            ro.hs_arg_spec = crate::args::spec_table();
            ro.hs_open_fallback = u32::from(open_fallback);
        }
        if opts.throttle.is_some() || opts.rates.is_some() {
            let ro = open
                .maps
                .rodata_data
                .as_deref_mut()
                .ok_or_else(|| Error::Config("the object has no read-only data".into()))?;
            ro.hs_thr_on = 1;
            ro.hs_thr_default = opts.throttle.unwrap_or_default().bits();
            ro.hs_rate_default = opts.rates.unwrap_or_default().bits();
            ro.hs_thr_call =
                crate::throttle::call_table(opts.throttle.is_some(), opts.rates.is_some());
        }
        if opts.rates.is_none() {
            // 8 MiB of rings, for nothing.
            open.maps
                .hs_rate_ring
                .set_max_entries(1)
                .map_err(|e| load_error("rate ring size", e))?;
        }
        open.maps
            .hs_events
            .set_max_entries(opts.ring_bytes)
            .map_err(|e| load_error("ring buffer size", e))?;
        let tids = tid_slots(opts.tid_slots);
        open.maps
            .hs_tids
            .set_max_entries(tids)
            .map_err(|e| load_error("tid array size", e))?;
        open.maps
            .data_data
            .as_deref_mut()
            .ok_or_else(|| Error::Config("the object has no data".into()))?
            .hs_shared
            .tid_mask = tids - 1;
        let skel = open.load().map_err(|e| load_error("load", e))?;

        let dup = |m: &libbpf_rs::MapMut<'_>, name: &'static str| {
            MapHandle::try_from(m).map_err(map_err(name, "dup fd"))
        };
        let slots = Arc::new(
            crate::task::Slots::map(skel.maps.hs_tids.as_fd(), tids).map_err(|e| Error::Map {
                map: "hs_tids",
                what: "mmap",
                kind: libbpf_rs::ErrorKind::Other,
                err: e.to_string(),
            })?,
        );
        let kernel = Kernel {
            #[cfg(feature = "floor")]
            floor: None,
            _links: Links(vec![]),
            prog_ids: vec![],
            hook,
            exec_lsm: ExecLsm::NotRequested,
            max_profiles: opts.max_profiles.clamp(1, SLOTS),
            symbols,
            open_fallback,
            open_fallback_error: None,
            config: dup(&skel.maps.hs_config, "hs_config")?,
            profiles: dup(&skel.maps.hs_profiles, "hs_profiles")?,
            rows: dup(&skel.maps.hs_rows, "hs_rows")?,
            index: Index::map(skel.maps.hs_index.as_fd()).map_err(|e| Error::Map {
                map: "hs_index",
                what: "mmap",
                kind: libbpf_rs::ErrorKind::Other,
                err: e.to_string(),
            })?,
            generation: Generation::map(skel.maps.data.as_fd()).map_err(|e| Error::Map {
                map: ".data (hs_shared)",
                what: "mmap",
                kind: libbpf_rs::ErrorKind::Other,
                err: e.to_string(),
            })?,
            free_slots: dup(&skel.maps.hs_free_slots, "hs_free_slots")?,
            free_rows: dup(&skel.maps.hs_free_rows, "hs_free_rows")?,
            events: dup(&skel.maps.hs_events, "hs_events")?,
            stats: dup(&skel.maps.hs_stats, "hs_stats")?,
            slot_calls: dup(&skel.maps.hs_calls, "hs_calls")?,
            stopped: dup(&skel.maps.hs_stopped, "hs_stopped")?,
            tid_mask: tids - 1,
            task_maps: crate::task::TaskMaps::new(
                dup(&skel.maps.hs_tids, "hs_tids")?,
                slots,
                dup(&skel.maps.hs_tasks, "hs_tasks")?,
            ),
            classes_map: dup(&skel.maps.hs_classes, "hs_classes")?,
            class_count_map: dup(&skel.maps.hs_class_count, "hs_class_count")?,
            arg_stats_map: dup(&skel.maps.hs_arg_stats, "hs_arg_stats")?,
            thr_mode: dup(&skel.maps.hs_thr_mode, "hs_thr_mode")?,
            thr_hosts: dup(&skel.maps.hs_thr_hosts, "hs_thr_hosts")?,
            thr_stats: dup(&skel.maps.hs_thr_stats, "hs_thr_stats")?,
            throttle: opts.throttle,
            rate_cfg: dup(&skel.maps.hs_rate_cfg, "hs_rate_cfg")?,
            rate_ring: dup(&skel.maps.hs_rate_ring, "hs_rate_ring")?,
            rates: opts.rates,
        };
        kernel.configure(opts)?;

        // Attach the task-lifecycle hooks first, so no task is seen by sys_enter
        // before its fork is; exit first of all, so that every hs_tids slot claimed
        // (by a fork, an exec or a call) is freed when its task exits: a slot left
        // with a dead task's key would be adopted by the next task given that kernel
        // stack. Detached in the reverse order (`Links`).
        let mut links = Vec::with_capacity(6);
        for (name, prog) in [
            ("sched_process_exit", &skel.progs.sched_exit),
            ("sched_process_fork", &skel.progs.sched_fork),
            ("sched_process_exec", &skel.progs.sched_exec),
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
        #[cfg(not(feature = "floor"))]
        links.push(
            sys_enter
                .attach()
                .map_err(|e| load_error("attach sys_enter", e))?,
        );
        // A floor build attaches the floor, and keeps the real program to swap in.
        #[cfg(feature = "floor")]
        let floor = crate::floor::Switch::new(
            hook,
            sys_enter.as_fd(),
            match hook {
                Hook::TpBtf => skel.progs.floor_btf.as_fd(),
                Hook::RawTp => skel.progs.floor_raw.as_fd(),
            },
        )?;
        if open_fallback {
            links.push(
                skel.progs
                    .hs_open_exit
                    .attach()
                    .map_err(|e| load_error("attach fexit/do_sys_openat2", e))?,
            );
        }
        if lsm {
            links.push(
                skel.progs
                    .exec_check
                    .attach_lsm()
                    .map_err(|e| load_error("attach lsm/bprm_check_security", e))?,
            );
        }
        let mut progs = vec![
            &skel.progs.sched_exit,
            &skel.progs.sched_fork,
            &skel.progs.sched_exec,
            sys_enter,
        ];
        if lsm {
            progs.push(&skel.progs.exec_check);
        }
        if open_fallback {
            progs.push(&skel.progs.hs_open_exit);
        }
        #[allow(unused_mut)] // a floor build adds its floor program
        let mut prog_ids: Vec<u32> = progs
            .into_iter()
            .filter_map(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).ok())
            .collect();
        #[cfg(feature = "floor")]
        prog_ids.extend(libbpf_rs::Program::id_from_fd(floor.floor_fd()).ok());
        Ok(Kernel {
            #[cfg(feature = "floor")]
            floor: Some(floor),
            _links: Links(links),
            prog_ids,
            ..kernel
        })
    }

    /// In a floor build (feature `floor`), swaps the sys_enter hook between the real
    /// program and the floor (module `floor`); in any other build, an error.
    #[cfg(not(feature = "floor"))]
    pub fn set_floor(&self, _floor: bool) -> Result<(), Error> {
        Err(Error::Config(
            "this build has no floor switch (cargo build -p homeostat --features floor)".into(),
        ))
    }

    /// `Some(at the floor)` in a floor build (feature `floor`), else `None`.
    #[cfg(not(feature = "floor"))]
    pub fn at_floor(&self) -> Option<bool> {
        None
    }

    fn configure(&self, opts: &Options) -> Result<(), Error> {
        // Every slot (up to the limit) and every row but the zero row is free (before
        // any program runs): the free queue of slots is what bounds the profiles.
        for slot in 0..self.max_profiles {
            self.free_slots
                .update(&[], &slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("hs_free_slots", "push"))?;
        }
        for row in 1..ROWS {
            self.free_rows
                .update(&[], &row.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("hs_free_rows", "push"))?;
        }
        let c = hs_config {
            ignore_tgid: opts.ignore_pid.unwrap_or(0),
            auto_create: u32::from(opts.auto_create),
            wakeup_every: opts.wakeup_every.max(1),
            pad0: 0,
            suspend_execve: opts.exec_lsm_at,
            pad: 0,
            scope_cgroup: opts.scope_cgroup.unwrap_or(0),
        };
        self.config
            .update(&0u32.to_ne_bytes(), bytemuck::bytes_of(&c), MapFlags::ANY)
            .map_err(map_err("hs_config", "update"))
    }

    /// Tells the programs that hs_profiles changed: tasks cache their profile's state
    /// and look it up again when the generation moves.
    pub(crate) fn bump_generation(&self) -> Result<(), Error> {
        self.generation.bump();
        Ok(())
    }

    /// How many profiles the kernel can hold ([`Options::max_profiles`]).
    pub fn max_profiles(&self) -> u32 {
        self.max_profiles
    }

    /// Arguments on: whether an open whose path was not resident at sys_enter is
    /// classified at its exit (fexit/do_sys_openat2 loaded); else it is counted in
    /// [`crate::ArgStats::unread`] and not tested.
    pub fn open_fallback(&self) -> bool {
        self.open_fallback
    }

    /// Why the open fallback is off though arguments are on, if the kernel refused it.
    pub fn open_fallback_error(&self) -> Option<&str> {
        self.open_fallback_error.as_deref()
    }

    /// How sys_enter is hooked.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Slots of the task array ([`Options::tid_slots`]).
    pub fn tid_slots(&self) -> u32 {
        self.tid_mask + 1
    }

    /// Whether execve is also refused in the kernel (BPF LSM), and if not, why.
    pub fn exec_lsm(&self) -> &ExecLsm {
        &self.exec_lsm
    }
}
