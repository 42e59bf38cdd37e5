//! pH's response for the daemon: take over a process the kernel side has stopped at an
//! anomalous call, delay each of its calls by `delay_factor x 2^LFC`, refuse execve
//! while its LFC is at least `suspend_execve`, and let it go once its LFC is back to 0.
//!
//! Why ptrace: a BPF tracepoint cannot sleep or fail a call, and BPF LSM / fentry are
//! refused on these kernels, so the kernel side can only stop the process
//! (`bpf_send_signal(SIGSTOP)`, at the first anomalous call, which has already run).
//! A thread per process then seizes it (`homeostat-ptrace`, which follows its forks),
//! resumes it with SIGCONT, and holds each call at its entry. The LFC a call will have
//! is computed from the kernel's own state of the thread and the profile's row, with
//! the BPF program's arithmetic (`TaskState::after_call`), because the tracer stops
//! the call before the tracepoint sees it.
//!
//! The same takeover serves the connection throttle ([`crate::throttle`]): while a
//! process is held, each connect to a host outside its profile's working set waits
//! until the rule releases it, and the process is let go only once its LFCs are 0 and
//! its profile's queue would let a new host through at once.
//!
//! The process comes first: if the takeover fails it is resumed at once; the tracer
//! does not set EXITKILL, so if the daemon dies its tracees are detached and run on;
//! and a process stopped but not yet taken over is resumed by the stop guard
//! (`stop_guard.rs`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use homeostat_core::ph::{ExeKey, PhConfig};
use homeostat_ebpf::{Kernel, Probe};
use homeostat_monitor::throttle::Decision;
use homeostat_ptrace::{Action, AttachOptions, SyscallStop, TraceEvent, Tracer};
use homeostat_syscalls::Arch;
use tracing::warn;

use crate::rates::{SharedRates, ALARM_QUEUE};
use crate::throttle::{host_of, SharedThrottle};
use homeostat_core::rate::{kind_of, RateKind};

/// What a response thread tells the daemon loop.
#[derive(Debug, Clone)]
pub enum Report {
    /// The process is traced and running again under delays.
    Started,
    /// A call is held for `delay_ns`; `first` for the first delay of the response.
    Delayed {
        pid: u32,
        tid: u32,
        nr: u32,
        lfc: u32,
        delay_ns: u64,
    },
    /// An execve was refused with EPERM.
    ExecRefused { pid: u32, tid: u32, lfc: u32 },
    /// The response ended (LFC back to 0, the process gone, or the daemon stopping);
    /// the process was detached.
    Finished {
        pid: u32,
        delays: u64,
        refused: u64,
        why: &'static str,
    },
    /// The takeover failed; the process was resumed without a response.
    Failed { pid: u32, error: String },
    /// A connect to a host outside profile `exe`'s working set, put in its queue:
    /// held for `delay_ns` when `held` (enforce), else only reported.
    Throttled {
        at_ns: u64,
        pid: u32,
        tid: u32,
        exe: ExeKey,
        host: Vec<u8>,
        delay_ns: u64,
        queue: usize,
        alarm: bool,
        held: bool,
    },
    /// Calls of profile `exe`'s queue of `kind` released (`queue` still waiting).
    RateReleased {
        exe: ExeKey,
        kind: RateKind,
        released: usize,
        queue: usize,
    },
    /// A fork or file creation beyond profile `exe`'s limit, held for `delay_ns`.
    RateQueued {
        pid: u32,
        tid: u32,
        exe: ExeKey,
        nr: u32,
        kind: RateKind,
        limit: u32,
        delay_ns: u64,
        queue: usize,
        alarm: bool,
    },
}

/// The running responses, one thread each.
pub struct Responders {
    config: Arc<PhConfig>,
    stop: Arc<AtomicBool>,
    threads: HashMap<u32, JoinHandle<()>>,
    tx: Sender<Report>,
    rx: Receiver<Report>,
    throttle: Option<SharedThrottle>,
    rates: Option<SharedRates>,
}

impl Responders {
    pub fn new(config: PhConfig) -> Responders {
        let (tx, rx) = channel();
        Responders {
            config: Arc::new(config),
            stop: Arc::new(AtomicBool::new(false)),
            threads: HashMap::new(),
            tx,
            rx,
            throttle: None,
            rates: None,
        }
    }

    /// Responses also apply the rate limits.
    pub fn set_rates(&mut self, r: SharedRates) {
        self.rates = Some(r);
    }

    /// Responses also apply the connection throttle.
    pub fn set_throttle(&mut self, t: SharedThrottle) {
        self.throttle = Some(t);
    }

    /// Takes over process `pid` (stopped by the kernel at a call of thread `tid`, when
    /// known), unless a response to it runs.
    pub fn start(&mut self, kernel: &Kernel, pid: u32, tid: Option<u32>) {
        if self.threads.contains_key(&pid) {
            return;
        }
        let probe = match kernel.probe() {
            Ok(p) => p,
            Err(e) => {
                // No way to follow its LFC: resume it rather than leave it stopped.
                kernel.release(pid);
                let _ = self.tx.send(Report::Failed {
                    pid,
                    error: e.to_string(),
                });
                return;
            }
        };
        let (config, stop, tx) = (self.config.clone(), self.stop.clone(), self.tx.clone());
        let throttle = self.throttle.clone();
        let rates = self.rates.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("respond-{pid}"))
            .spawn(move || {
                let r = Response {
                    pid,
                    probe: &probe,
                    config: &config,
                    throttle: throttle.as_ref(),
                    rates: rates.as_ref(),
                    tx: &tx,
                };
                respond(&r, tid, &stop)
            });
        match spawned {
            Ok(h) => {
                self.threads.insert(pid, h);
            }
            Err(e) => {
                kernel.release(pid);
                let _ = self.tx.send(Report::Failed {
                    pid,
                    error: format!("cannot start a thread: {e}"),
                });
            }
        }
    }

    /// Reports since the last call; finished threads are reaped.
    pub fn reports(&mut self) -> Vec<Report> {
        let reports: Vec<Report> = self.rx.try_iter().collect();
        for r in &reports {
            if let Report::Finished { pid, .. } | Report::Failed { pid, .. } = r {
                if let Some(h) = self.threads.remove(pid) {
                    let _ = h.join();
                }
            }
        }
        reports
    }

    /// Processes under response now.
    pub fn active(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.threads.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Ends every response (their processes are detached and run on) and waits.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, h) in self.threads.drain() {
            let _ = h.join();
        }
    }
}

/// How long `Tracer::next` waits when no delay is due: also how soon a response
/// notices the daemon stopping.
const IDLE: Duration = Duration::from_millis(50);

fn is_execve(arch: u32, nr: u32) -> bool {
    homeostat_syscalls::call_kind(arch, nr) == homeostat_syscalls::CallKind::Exec
}

/// A held call's place in a rate queue: (profile, kind, release time).
type Booking = (ExeKey, RateKind, u64);

/// What a response thread works with.
struct Response<'a> {
    pid: u32,
    probe: &'a Probe,
    config: &'a PhConfig,
    throttle: Option<&'a SharedThrottle>,
    rates: Option<&'a SharedRates>,
    tx: &'a Sender<Report>,
}

impl Response<'_> {
    /// The throttle's delay for call `s`, if it is a connect to a host outside its
    /// profile's working set (0 otherwise, or when the profile's mode only reports);
    /// the profile is noted in `keys`.
    fn throttle_delay(&self, s: &SyscallStop, keys: &mut Vec<ExeKey>) -> u64 {
        let Some(t) = self.throttle else {
            return 0;
        };
        // Either ABI: an i386 program (or a 64-bit one through int 0x80) connects
        // through socketcall, or i386's own connect.
        let Some(arch) = Arch::from_audit_arch(s.arch) else {
            return 0;
        };
        let Some(arg) =
            homeostat_monitor::args::connection(s.pid, s.tid, arch, s.nr, &s.args, None)
        else {
            return 0;
        };
        let Some(exe) = self.probe.task(s.tid as u32).ok().flatten().map(|t| t.exe) else {
            return 0;
        };
        let Some(host) = host_of(arg.as_ref()) else {
            return 0;
        };
        let mut shared = t.lock();
        let flags = shared.flags_of(exe);
        if !flags.report {
            return 0;
        }
        let at_ns = crate::now_ns();
        let Decision::Queued {
            delay_ns,
            queue,
            alarm,
        } = shared.rule.connect(exe, host, at_ns)
        else {
            return 0;
        };
        drop(shared);
        if !keys.contains(&exe) {
            keys.push(exe);
        }
        if s.restarted {
            // The connect whose report stopped the process (its host booked then),
            // cut short by that stop and entered again: held as booked, not reported
            // a second time.
            return if flags.stop { delay_ns } else { 0 };
        }
        let _ = self.tx.send(Report::Throttled {
            at_ns,
            pid: self.pid,
            tid: s.tid as u32,
            exe,
            host: host.to_vec(),
            delay_ns,
            queue,
            alarm,
            held: flags.stop,
        });
        if flags.stop {
            delay_ns
        } else {
            0
        }
    }

    /// The rate limit's delay for call `s`, if it is a fork or file creation of a
    /// profile whose limit holds calls (0 otherwise); the profile is noted in `keys`
    /// and the booking returned, to be given back if the call never runs.
    fn rate_delay(&self, s: &SyscallStop, keys: &mut Vec<ExeKey>) -> (u64, Option<Booking>) {
        let Some(r) = self.rates else {
            return (0, None);
        };
        // Either ABI, as the kernel's table and `homeostat run` count them.
        let Some(arch) = Arch::from_audit_arch(s.arch) else {
            return (0, None);
        };
        let Some(name) = arch.name(s.nr) else {
            return (0, None);
        };
        let kind = match kind_of(name, None) {
            Some(k) => k,
            None if matches!(name, "open" | "openat") => {
                let arg = homeostat_monitor::args::capture(s.pid, s.tid, arch, s.nr, &s.args);
                match kind_of(name, arg.as_ref()) {
                    Some(k) => k,
                    None => return (0, None),
                }
            }
            None => return (0, None),
        };
        let Some(exe) = self.probe.task(s.tid as u32).ok().flatten().map(|t| t.exe) else {
            return (0, None);
        };
        let mut shared = r.lock();
        let Some(l) = shared.limits.get(&exe).copied().filter(|l| l.hold) else {
            return (0, None);
        };
        if !keys.contains(&exe) {
            keys.push(exe);
        }
        let limit = l.of(kind);
        let now = homeostat_ebpf::ktime_ns();
        let st = shared.states.entry(exe).or_default();
        // Releases are reported before the limiter's admit drops them.
        let released = st.limiter(kind).release_due(now);
        if released > 0 {
            let _ = self.tx.send(Report::RateReleased {
                exe,
                kind,
                released,
                queue: st.limiter(kind).queued(),
            });
        }
        let slot = st.limiter(kind).admit(now, limit, l.window_ns);
        if slot.delay_ns == 0 {
            return (0, None);
        }
        let alarm = st.alarm(kind, slot.queue, ALARM_QUEUE);
        drop(shared);
        let _ = self.tx.send(Report::RateQueued {
            pid: self.pid,
            tid: s.tid as u32,
            exe,
            nr: s.nr,
            kind,
            limit,
            delay_ns: slot.delay_ns,
            queue: slot.queue,
            alarm,
        });
        (
            slot.delay_ns,
            Some((exe, kind, now.saturating_add(slot.delay_ns))),
        )
    }

    /// Gives back the queue place of a held call that will not run.
    fn rate_cancel(&self, b: Booking) {
        if let Some(r) = self.rates {
            let (exe, kind, at) = b;
            let mut shared = r.lock();
            if let Some(st) = shared.states.get_mut(&exe) {
                st.cancel(kind, at, homeostat_ebpf::ktime_ns());
            }
        }
    }

    /// Whether each profile this response held calls of would let a call run at once.
    fn rates_clear(&self, keys: &[ExeKey]) -> bool {
        let Some(r) = self.rates else {
            return true;
        };
        let now = homeostat_ebpf::ktime_ns();
        let mut shared = r.lock();
        keys.iter().all(|k| {
            let Some(l) = shared.limits.get(k).copied().filter(|l| l.hold) else {
                return true;
            };
            let Some(st) = shared.states.get_mut(k) else {
                return true;
            };
            RateKind::ALL
                .iter()
                .all(|&kind| st.limiter(kind).free_at(l.of(kind), l.window_ns) <= now)
        })
    }

    /// Whether every profile this response throttled would let a new host through at
    /// once: until then a new host's connect must be held, so the process is kept.
    fn throttle_clear(&self, keys: &[ExeKey]) -> bool {
        let Some(t) = self.throttle else {
            return true;
        };
        let now = crate::now_ns();
        let shared = t.lock();
        keys.iter().all(|&k| shared.rule.clear_at(k) <= now)
    }
}

/// One response, on its own thread (ptrace requests must come from the thread that
/// attached).
fn respond(r: &Response<'_>, stop_tid: Option<u32>, stop: &AtomicBool) {
    let (pid, probe, config, tx) = (r.pid, r.probe, r.config, r.tx);
    let opts = AttachOptions {
        detach_timeout: Duration::from_secs(2),
        spin: Duration::ZERO,
        descendants: false,
    };
    let mut tracer = match Tracer::attach(pid as i32, &opts) {
        Ok(t) => t,
        Err(e) => {
            probe.release(pid);
            let _ = tx.send(Report::Failed {
                pid,
                error: e.to_string(),
            });
            return;
        }
    };
    // Traced now: the tracer holds it, so the job-control stop can end.
    probe.release(pid);
    let _ = tx.send(Report::Started);

    // LFC of each thread seen since the takeover, after its last call; the stopping
    // thread's from the kernel (a throttle's stop may leave every LFC at 0).
    let mut lfcs: HashMap<i32, u32> = HashMap::new();
    let mut keys: Vec<ExeKey> = vec![];
    let mut rate_keys: Vec<ExeKey> = vec![];
    let mut bookings: HashMap<i32, Booking> = HashMap::new();
    if let Some(tid) = stop_tid {
        if let Ok(Some(t)) = probe.task(tid) {
            lfcs.insert(tid as i32, t.lfc);
            if r.throttle.is_some() {
                keys.push(t.exe);
            }
            if r.rates.is_some() {
                rate_keys.push(t.exe);
            }
        }
    }
    let mut timers: BinaryHeap<Reverse<(Instant, i32)>> = BinaryHeap::new();
    let (mut delays, mut refused) = (0u64, 0u64);
    let mut why = "LFC back to 0";
    loop {
        if stop.load(Ordering::Relaxed) {
            why = "daemon stopping";
            break;
        }
        let now = Instant::now();
        while timers.peek().is_some_and(|t| t.0 .0 <= now) {
            let Reverse((_, tid)) = timers.pop().expect("peeked");
            bookings.remove(&tid);
            let _ = tracer.respond(tid, Action::Continue);
        }
        if timers.is_empty()
            && !lfcs.is_empty()
            && lfcs.values().all(|&l| l == 0)
            && r.throttle_clear(&keys)
            && r.rates_clear(&rate_keys)
        {
            break;
        }
        let wait = timers
            .peek()
            .map_or(IDLE, |t| t.0 .0.saturating_duration_since(now).min(IDLE));
        match tracer.next(Some(wait)) {
            Ok(Some(TraceEvent::Syscall(s))) => {
                // The kernel table numbers i386 calls apart from x86_64's: ask with the
                // tracers' i386 numbering so a 32-bit tracee's delay uses its own row.
                let nr = if s.arch == homeostat_syscalls::AUDIT_ARCH_I386 {
                    s.nr + homeostat_monitor::engine::I386_OFFSET
                } else {
                    s.nr
                };
                let lfc = probe
                    .lfc_after(s.tid as u32, nr)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                lfcs.insert(s.tid, lfc);
                if is_execve(s.arch, s.nr) && lfc >= config.suspend_execve {
                    refused += 1;
                    let _ = tracer.respond(s.tid, Action::Deny(libc::EPERM));
                    let _ = tx.send(Report::ExecRefused {
                        pid,
                        tid: s.tid as u32,
                        lfc,
                    });
                    continue;
                }
                let (rate_ns, booking) = r.rate_delay(&s, &mut rate_keys);
                let delay_ns = config
                    .delay_ns(lfc)
                    .max(r.throttle_delay(&s, &mut keys))
                    .max(rate_ns);
                if let Some(b) = booking {
                    bookings.insert(s.tid, b);
                }
                if delay_ns == 0 {
                    let _ = tracer.respond(s.tid, Action::Continue);
                    continue;
                }
                delays += 1;
                timers.push(Reverse((
                    Instant::now() + Duration::from_nanos(delay_ns),
                    s.tid,
                )));
                let _ = tx.send(Report::Delayed {
                    pid,
                    tid: s.tid as u32,
                    nr: s.nr,
                    lfc,
                    delay_ns,
                });
            }
            Ok(Some(TraceEvent::TaskGone { tid })) => {
                lfcs.remove(&tid);
                if let Some(b) = bookings.remove(&tid) {
                    r.rate_cancel(b);
                }
            }
            Ok(Some(TraceEvent::AllGone)) => {
                why = "process gone";
                break;
            }
            Ok(None) => {}
            Err(e) => {
                warn!("response to {pid}: {e}");
                why = "tracer error";
                break;
            }
        }
    }
    // Held calls run as answered Continue; the process and its children run on.
    if let Err(e) = tracer.detach_all() {
        warn!("response to {pid}: {e}");
    }
    let _ = tx.send(Report::Finished {
        pid,
        delays,
        refused,
        why,
    });
}
