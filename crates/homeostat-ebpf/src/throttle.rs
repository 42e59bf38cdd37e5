//! The connection throttle's kernel half (`homeostat daemon --throttle-connect`;
//! src/bpf/throttle.bpf.h): each profile's working set of hosts, which a connect
//! passes with one lookup, and the per-profile flags that say whether a connect to
//! another host is reported, and whether its process is stopped for the response.
//!
//! Why only the working set here: the rule (the queue released at a fixed rate, which
//! host joins the set, which leaves it) is `homeostat_monitor::throttle::Throttle`,
//! the one `homeostat run` applies; the daemon applies it in userspace and mirrors
//! each profile's working set into `hs_thr_hosts`, so that known hosts cost the
//! monitored program nothing but the lookup.

use bytemuck::bytes_of;
use homeostat_core::ph::ExeKey;
use homeostat_syscalls::Arch;
use libbpf_rs::{MapCore, MapFlags};

use homeostat_core::rate::{kind_of, RateKind};
use homeostat_core::symbols::{
    address_in_msghdr, arg_spec, flags, opens_connection, Arg, ArgSpec, MSG_FASTOPEN,
};

use crate::abi::{
    self, hs_profile, hs_rate_cfg, hs_rate_ring, hs_thr_key, hs_thr_mode, COMPAT, TABLE,
};
use crate::error::{map_err, Error};
use crate::kernel::percpu_sums;
use crate::Kernel;

/// `HS_THR_CONNECT`, `HS_THR_STOP`.
const THR_CONNECT: u32 = 1;
const THR_STOP: u32 = 2;
/// `HS_TNSTATS`.
const TNSTATS: usize = 2;
/// `HS_TC_*`: what `hs_thr_call` says of a call.
const TC_CONNECT: u8 = 1;
const TC_FORK: u8 = 2;
const TC_CREATE: u8 = 4;
const TC_IFCREAT: u8 = 8;
const TC_FASTOPEN: u8 = 128;
const TC_MSG: u8 = 64;
/// `HS_RATE_*`.
const RATE_LEARN: u32 = 1;
const RATE_CHECK: u32 = 2;
const RATE_STOP: u32 = 4;
/// `HS_RATE_RING`: the most calls per window a limit is checked for in the kernel.
pub const RATE_RING: u32 = 128;

/// What the kernel does with a profile's forks and file creations
/// (`--rate-limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateFlags {
    /// Report each one (training: userspace learns the peaks).
    pub learn: bool,
    /// Report the ones beyond the limit.
    pub check: bool,
    /// Also stop the process for the response (enforce; needs `check`).
    pub stop: bool,
}

impl RateFlags {
    pub(crate) fn bits(self) -> u32 {
        (if self.learn { RATE_LEARN } else { 0 })
            | (if self.check { RATE_CHECK } else { 0 })
            | (if self.check && self.stop {
                RATE_STOP
            } else {
                0
            })
    }
}

/// The kernel's monotonic clock (`bpf_ktime_get_ns`), ns: the clock of
/// [`crate::RateCall::ktime_ns`] and [`Kernel::rate_ring`].
pub fn ktime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// What the kernel does with a profile's connects to hosts outside its working set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleFlags {
    /// Report them (a `Throttle` event).
    pub report: bool,
    /// Also stop the process for the response (enforce; needs `report`).
    pub stop: bool,
}

impl ThrottleFlags {
    pub(crate) fn bits(self) -> u32 {
        (if self.report { THR_CONNECT } else { 0 })
            | (if self.report && self.stop {
                THR_STOP
            } else {
                0
            })
    }
}

/// The throttle's loss counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Connects whose address could not be read (not resident): throttled as a host
    /// of unknown address.
    pub unread: u64,
    /// Throttle events dropped (ring buffer full).
    pub lost_events: u64,
}

/// `hs_thr_call`: the calls the hook looks at, by the tables' index (x86_64 calls,
/// then [`COMPAT`] + i386 calls): connect (the throttle, `connect`) and what the
/// core's `rate::kind_of` counts (`rates`): forks, creations, and opens whose flags
/// (the register the core's `arg_spec` names) have O_CREAT. Both ABIs by the same
/// rules, each by its own call names (i386's open and openat take their flags in
/// x86_64's argument order); i386's `socketcall` is a connect the kernel reads
/// through (a `SYS_CONNECT`, or a `SYS_SENDTO` with `MSG_FASTOPEN`).
pub(crate) fn call_table(connect: bool, rates: bool) -> [u8; TABLE] {
    let mut t = [0u8; TABLE];
    let creat = Arg::Path {
        path: vec![],
        flags: flags::CREATE,
    };
    for (i, x) in t.iter_mut().enumerate() {
        let (arch, nr) = if i < COMPAT {
            (Arch::X86_64, i)
        } else {
            (Arch::I386, i - COMPAT)
        };
        let Some(name) = arch.name(nr as u32) else {
            continue;
        };
        if connect && (opens_connection(name, None) || name == "socketcall") {
            *x = TC_CONNECT;
        } else if connect && opens_connection(name, Some(MSG_FASTOPEN)) {
            // Only with MSG_FASTOPEN in its flags (the kernel side checks), the address
            // where the core's `arg_spec` says, or in sendmsg's msghdr.
            *x = TC_CONNECT | TC_FASTOPEN;
            if address_in_msghdr(name) {
                *x |= TC_MSG;
            }
        }
        if !rates {
            continue;
        }
        match (kind_of(name, None), kind_of(name, Some(&creat))) {
            (Some(RateKind::Fork), _) => *x = TC_FORK,
            (Some(RateKind::Create), _) => *x = TC_CREATE,
            (None, Some(RateKind::Create)) => {
                if let Some(ArgSpec::Path { flags: Some(r), .. }) = arg_spec(name) {
                    *x = TC_CREATE | TC_IFCREAT | ((r as u8 & 7) << 4);
                }
            }
            _ => {}
        }
    }
    t
}

fn host_key(exe: ExeKey, host: &[u8]) -> Result<hs_thr_key, Error> {
    if host.len() != 4 && host.len() != 16 {
        return Err(Error::Config(format!(
            "a throttle host is 4 or 16 bytes, not {}",
            host.len()
        )));
    }
    let mut addr = [0u8; 16];
    addr[..host.len()].copy_from_slice(host);
    Ok(hs_thr_key {
        key: abi::key(exe),
        addr,
        alen: host.len() as u32,
        pad: 0,
    })
}

/// The slot of profile `exe`.
fn slot_of(k: &Kernel, exe: ExeKey) -> Result<u32, Error> {
    let p: hs_profile = k
        .profiles
        .lookup(bytes_of(&abi::key(exe)), MapFlags::ANY)
        .map_err(map_err("hs_profiles", "lookup"))?
        .and_then(|v| abi::decode(&v))
        .ok_or_else(|| Error::Config(format!("no kernel profile {exe}")))?;
    Ok(p.slot)
}

impl Kernel {
    /// Whether the rate limits' hook is loaded, with the flags of profiles not set.
    pub fn rates(&self) -> Option<RateFlags> {
        self.rates
    }

    /// Sets what the kernel does with profile `exe`'s forks and file creations: the
    /// flags, the limits (calls per `window_ns`, fork then create; 0: none; above
    /// [`RATE_RING`] not checked in the kernel).
    pub fn set_rates(
        &self,
        exe: ExeKey,
        flags: RateFlags,
        limits: [u32; 2],
        window_ns: u64,
    ) -> Result<(), Error> {
        let slot = slot_of(self, exe)?;
        let c = hs_rate_cfg {
            key: abi::key(exe),
            flags: flags.bits(),
            set: 1,
            limit: limits,
            window_ns,
        };
        self.rate_cfg
            .update(&slot.to_ne_bytes(), bytes_of(&c), MapFlags::ANY)
            .map_err(map_err("hs_rate_cfg", "update"))
    }

    /// The times ([`ktime_ns`]) of profile `exe`'s last counted calls of `kind` (at
    /// most [`RATE_RING`]), oldest first.
    pub fn rate_ring(&self, exe: ExeKey, kind: RateKind) -> Result<Vec<u64>, Error> {
        let slot = slot_of(self, exe)?;
        let idx = slot * 2 + u32::from(kind == RateKind::Create);
        let Some(r) = self
            .rate_ring
            .lookup(&idx.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_rate_ring", "lookup"))?
            .and_then(|v| abi::decode::<hs_rate_ring>(&v))
        else {
            return Ok(vec![]);
        };
        let n = RATE_RING;
        Ok((0..n)
            .map(|i| r.ts[(r.head.wrapping_add(i) % n) as usize])
            .filter(|&t| t != 0)
            .collect())
    }

    /// Whether the throttle's hook is loaded, with the flags of profiles not set.
    pub fn throttle(&self) -> Option<ThrottleFlags> {
        self.throttle
    }

    /// Sets what the kernel does with profile `exe`'s connects to new hosts (the
    /// profile must exist: its slot holds the flags).
    pub fn set_throttle(&self, exe: ExeKey, flags: ThrottleFlags) -> Result<(), Error> {
        let slot = slot_of(self, exe)?;
        let m = hs_thr_mode {
            key: abi::key(exe),
            flags: flags.bits(),
            set: 1,
        };
        self.thr_mode
            .update(&slot.to_ne_bytes(), bytes_of(&m), MapFlags::ANY)
            .map_err(map_err("hs_thr_mode", "update"))
    }

    /// Puts `host` (an IPv4 or IPv6 address, 4 or 16 bytes) in `exe`'s working set:
    /// its connects pass without a report. Its last use is now (a released host is the
    /// most recently used, as in the rule).
    pub fn add_host(&self, exe: ExeKey, host: &[u8]) -> Result<(), Error> {
        let k = host_key(exe, host)?;
        let now = ktime_ns();
        self.thr_hosts
            .update(bytes_of(&k), &now.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_thr_hosts", "update"))
    }

    /// Takes `host` out of `exe`'s working set (absent: nothing to do).
    pub fn remove_host(&self, exe: ExeKey, host: &[u8]) -> Result<(), Error> {
        let k = host_key(exe, host)?;
        match self.thr_hosts.delete(bytes_of(&k)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err("hs_thr_hosts", "delete")(e)),
        }
    }

    /// When a connect of `exe` last used `host` of its working set, or it was added
    /// ([`ktime_ns`]); None: not in the set.
    pub fn host_used(&self, exe: ExeKey, host: &[u8]) -> Result<Option<u64>, Error> {
        let k = host_key(exe, host)?;
        Ok(self
            .thr_hosts
            .lookup(bytes_of(&k), MapFlags::ANY)
            .map_err(map_err("hs_thr_hosts", "lookup"))?
            .and_then(|v| abi::decode::<u64>(&v)))
    }

    /// The throttle's loss counters.
    pub fn throttle_stats(&self) -> Result<ThrottleStats, Error> {
        let [unread, lost_events] = percpu_sums::<TNSTATS>(&self.thr_stats, "hs_thr_stats")?;
        Ok(ThrottleStats {
            unread,
            lost_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connect_is_looked_at_and_stop_needs_report() {
        let t = call_table(true, false);
        assert_eq!(t.iter().filter(|&&x| x != 0).count(), 7);
        assert_eq!(t[46], TC_CONNECT | TC_FASTOPEN | TC_MSG, "sendmsg is 46");
        assert_eq!(
            t[COMPAT + 370],
            TC_CONNECT | TC_FASTOPEN | TC_MSG,
            "i386 sendmsg"
        );
        assert_eq!(t[42], TC_CONNECT, "connect is x86_64 call 42");
        assert_eq!(t[44], TC_CONNECT | TC_FASTOPEN, "sendto is 44");
        assert_eq!(t[COMPAT + 102], TC_CONNECT, "i386 socketcall");
        assert_eq!(t[COMPAT + 362], TC_CONNECT, "i386 connect");
        assert_eq!(t[COMPAT + 369], TC_CONNECT | TC_FASTOPEN, "i386 sendto");
        // The core's kinds: clone, fork, vfork, clone3; mkdir; open and openat with
        // O_CREAT in their flags register (rsi, rdx).
        let r = call_table(false, true);
        assert_eq!(r[42], 0);
        for nr in [56, 57, 58, 435] {
            assert_eq!(r[nr], TC_FORK, "{nr}");
        }
        assert_eq!(r[83], TC_CREATE);
        assert_eq!(r[85], TC_CREATE, "creat");
        assert_eq!(r[2], TC_CREATE | TC_IFCREAT | (1 << 4));
        assert_eq!(r[257], TC_CREATE | TC_IFCREAT | (2 << 4));
        assert_eq!(r[0], 0, "read");
        // i386 (COMPAT + its numbers): fork 2, vfork 190, clone 120, clone3 435;
        // creat 8, mkdir 39; open 5 (flags in ecx) and openat 295 (edx).
        for nr in [2, 190, 120, 435] {
            assert_eq!(r[COMPAT + nr], TC_FORK, "i386 {nr}");
        }
        assert_eq!(r[COMPAT + 8], TC_CREATE, "i386 creat");
        assert_eq!(r[COMPAT + 39], TC_CREATE, "i386 mkdir");
        assert_eq!(r[COMPAT + 5], TC_CREATE | TC_IFCREAT | (1 << 4));
        assert_eq!(r[COMPAT + 295], TC_CREATE | TC_IFCREAT | (2 << 4));
        assert_eq!(r[COMPAT + 3], 0, "i386 read");
        let x86 = r[..COMPAT].iter().filter(|&&x| x != 0).count();
        assert_eq!(x86, 4 + 11);
        assert_eq!(r[COMPAT..].iter().filter(|&&x| x != 0).count(), x86);
        let f = |learn, check, stop| RateFlags { learn, check, stop }.bits();
        assert_eq!(f(false, false, true), 0);
        assert_eq!(f(false, true, true), RATE_CHECK | RATE_STOP);
        let f = |report, stop| ThrottleFlags { report, stop }.bits();
        assert_eq!(f(false, true), 0);
        assert_eq!(f(true, false), THR_CONNECT);
        assert_eq!(f(true, true), THR_CONNECT | THR_STOP);
        assert!(host_key(ExeKey { dev: 1, ino: 2 }, &[1, 2, 3]).is_err());
    }
}
