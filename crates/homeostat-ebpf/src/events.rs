//! What the programs report: events from the ring buffer (anomalies, learnt pairs,
//! execs, refused execs) and the per-CPU loss counters.

use std::time::Duration;

use libbpf_rs::RingBuffer;

use crate::abi::{self, hs_class_event, hs_event, hs_exec_event, NSTATS};
use crate::error::{map_err, Error};
use crate::kernel::percpu_sums;
use crate::Kernel;
use homeostat_core::ph::ExeKey;
use homeostat_core::symbols::Arg;

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
    /// Arguments on, training: the profile learnt a class ([`Event::arg`],
    /// [`Event::class_hash`]) of call `nr`.
    NewClass,
    /// Arguments on, normal: call `nr` had a class training never saw (a miss; the
    /// call's anomaly event follows).
    UnseenClass,
    /// Throttle on: call `nr` (a connect) went to a host outside its profile's working
    /// set ([`Event::arg`]: the address; `None` when the kernel could not read it
    /// without a fault); `stopped` when the process was stopped for the response.
    Throttle,
    /// Rate limits on: a fork or file creation ([`Event::rate`]) of a profile that
    /// learns its rates (training).
    RateCall,
    /// Rate limits on: a fork or file creation beyond its normal profile's limit
    /// ([`Event::rate`]); `stopped` when the process was stopped for the response.
    RateOver,
}

/// A counted call of a rate-limit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCall {
    /// When (the kernel's monotonic clock, ns: [`crate::ktime_ns`]).
    pub ktime_ns: u64,
    /// What it counts as.
    pub kind: homeostat_core::rate::RateKind,
    /// RateOver: the limit it went beyond (calls per window).
    pub limit: u32,
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
    /// Exec of a `#!` script: the interpreter's path (whose file runs, and whose
    /// profile `exe` is); `path` is then the script's.
    pub interp: Option<String>,
    /// Anomaly: this call sent the process SIGSTOP for a response ([`Kernel::stopped`]
    /// lists it until [`Kernel::unstop`]).
    pub stopped: bool,
    /// Anomaly: of a task its profile does not learn from
    /// ([`Kernel::set_learn_from`]): it does not count toward the profile's limits.
    pub foreign: bool,
    /// NewClass / UnseenClass: the argument read (a path cut at 255 bytes, a socket
    /// address at 128); name its class with [`crate::class_name`]. Throttle: the
    /// connect's address (`Arg::Inet`).
    pub arg: Option<Arg>,
    /// NewClass / UnseenClass: the class's hash in the kernel ([`Kernel::classes`]).
    pub class_hash: u64,
    /// RateCall / RateOver: the call counted.
    pub rate: Option<RateCall>,
    /// Exec: the executable's inode generation (`i_generation`; 0 where the file
    /// system keeps none).
    pub igen: u32,
    /// Exec: the kernel's profile of this (dev, ino) was made for another file (its
    /// generation differs: a deleted file's inode number was reused). The kernel does
    /// not follow the task: remove the profile and make a new one for this file
    /// ([`Kernel::remove_profile`], [`Kernel::set_igen`]).
    pub replaced: bool,
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
    /// Not a loss: states made while both of the task's slots of the task array were
    /// other tasks' ([`crate::Options::tid_slots`]): in task storage (such a task's
    /// calls all take the general path), or for a forked child in `hs_forks` until its
    /// first call, which tries the slots again. Counted per state made (first call,
    /// exec, fork), so one task can count more than once.
    pub tids_taken: u64,
    /// Not a loss: calls of followed tasks that took the general path (the common
    /// call could not finish them: a task's first calls, a window not yet known, a
    /// call with a hook, a miss or a learnt pair, a profile changed since). The rest
    /// of the calls cost only the common call's few loads.
    pub general_calls: u64,
}

fn decode_event(b: &[u8]) -> Option<Event> {
    let e: hs_event = abi::decode_prefix(b)?;
    let kind = match e.kind {
        abi::EV_ANOMALY => EventKind::Anomaly,
        abi::EV_NEW_PAIRS => EventKind::NewPairs,
        abi::EV_EXEC => EventKind::Exec,
        abi::EV_EXEC_REFUSED => EventKind::ExecRefused,
        abi::EV_NEW_CLASS => EventKind::NewClass,
        abi::EV_UNSEEN_CLASS => EventKind::UnseenClass,
        abi::EV_THROTTLE => EventKind::Throttle,
        abi::EV_RATE_CALL => EventKind::RateCall,
        abi::EV_RATE_OVER => EventKind::RateOver,
        _ => return None,
    };
    let (arg, class_hash) = if matches!(kind, EventKind::NewClass | EventKind::UnseenClass) {
        let c: hs_class_event = abi::decode_prefix(b)?;
        (Some(crate::args::event_arg(&c)?), c.hash)
    } else if kind == EventKind::Throttle {
        let t: abi::hs_thr_event = abi::decode_prefix(b)?;
        let n = (t.len as usize).min(t.sa.len());
        // Nothing read (the address was not resident): a host of unknown address,
        // kept (its process may be stopped and waiting for the daemon).
        let arg = match n {
            0 => None,
            _ => Some(homeostat_core::symbols::sockaddr(&t.sa[..n])?),
        };
        (arg, 0)
    } else {
        (None, 0)
    };
    let rate = if matches!(kind, EventKind::RateCall | EventKind::RateOver) {
        let r: abi::hs_rate_event = abi::decode_prefix(b)?;
        Some(RateCall {
            ktime_ns: r.ktime,
            kind: if r.rkind == 0 {
                homeostat_core::rate::RateKind::Fork
            } else {
                homeostat_core::rate::RateKind::Create
            },
            limit: r.limit,
        })
    } else {
        None
    };
    let (path, interp) = if kind == EventKind::Exec {
        // A short record is not an exec event of these programs; drop it as any other
        // unknown record is dropped.
        let x: hs_exec_event = abi::decode_prefix(b)?;
        let text = |s: &[i8]| {
            let p = bytemuck::cast_slice::<i8, u8>(s);
            let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        };
        let (path, interp) = (text(&x.path), text(&x.interp));
        let interp = (!interp.is_empty() && interp != path).then_some(interp);
        (Some(path), interp)
    } else {
        (None, None)
    };
    Some(Event {
        kind,
        pid: e.pid,
        tid: e.tid,
        nr: e.nr,
        exe: ExeKey {
            dev: e.dev,
            ino: e.ino,
        },
        misses: e.misses,
        lfc: e.lfc,
        stopped: e.flags & abi::EVF_STOPPED != 0,
        foreign: e.flags & abi::EVF_FOREIGN != 0,
        path,
        interp,
        arg,
        class_hash,
        rate,
        igen: if kind == EventKind::Exec { e.igen } else { 0 },
        replaced: kind == EventKind::Exec && e.flags & abi::EVF_REPLACED != 0,
    })
}

impl Kernel {
    /// The loss counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        // In HS_STAT_* order.
        let [lost_events, rows_full, tasks_full, profiles_full, stops_failed, _events, tids_taken, general_calls] =
            percpu_sums::<NSTATS>(&self.stats, "hs_stats")?;
        Ok(Stats {
            lost_events,
            rows_full,
            tasks_full,
            profiles_full,
            stops_failed,
            tids_taken,
            general_calls,
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
