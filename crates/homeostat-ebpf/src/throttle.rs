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

use crate::abi::{self, hs_profile, hs_thr_key, hs_thr_mode, ROW};
use crate::error::{map_err, Error};
use crate::Kernel;

/// `HS_THR_CONNECT`, `HS_THR_STOP`.
const THR_CONNECT: u32 = 1;
const THR_STOP: u32 = 2;
/// `HS_TNSTATS`.
const TNSTATS: usize = 2;

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
    /// Connects whose address could not be read (not resident): not throttled.
    pub unread: u64,
    /// Throttle events dropped (ring buffer full).
    pub lost_events: u64,
}

/// `hs_thr_call`: the calls the hook looks at (connect).
pub(crate) fn call_table() -> [u8; ROW] {
    let mut t = [0u8; ROW];
    if let Some(nr) = Arch::X86_64.number("connect") {
        if let Some(x) = t.get_mut(nr as usize) {
            *x = 1;
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

impl Kernel {
    /// Whether the throttle's hook is loaded, with the flags of profiles not set.
    pub fn throttle(&self) -> Option<ThrottleFlags> {
        self.throttle
    }

    /// Sets what the kernel does with profile `exe`'s connects to new hosts (the
    /// profile must exist: its slot holds the flags).
    pub fn set_throttle(&self, exe: ExeKey, flags: ThrottleFlags) -> Result<(), Error> {
        let p: hs_profile = self
            .profiles
            .lookup(bytes_of(&abi::key(exe)), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?
            .and_then(|v| abi::decode(&v))
            .ok_or_else(|| Error::Config(format!("no kernel profile {exe}")))?;
        let m = hs_thr_mode {
            key: abi::key(exe),
            flags: flags.bits(),
            set: 1,
        };
        self.thr_mode
            .update(&p.slot.to_ne_bytes(), bytes_of(&m), MapFlags::ANY)
            .map_err(map_err("hs_thr_mode", "update"))
    }

    /// Puts `host` (an IPv4 or IPv6 address, 4 or 16 bytes) in `exe`'s working set:
    /// its connects pass without a report.
    pub fn add_host(&self, exe: ExeKey, host: &[u8]) -> Result<(), Error> {
        let k = host_key(exe, host)?;
        let now = 0u64;
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

    /// When a connect of `exe` last used `host` of its working set (the kernel's
    /// monotonic clock, ns; 0: not since it was added); None: not in the set.
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
        let mut sums = [0u64; TNSTATS];
        for (i, sum) in sums.iter_mut().enumerate() {
            let per_cpu = self
                .thr_stats
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("hs_thr_stats", "lookup"))?
                .unwrap_or_default();
            *sum = per_cpu
                .iter()
                .filter_map(|v| abi::decode_prefix::<u64>(v))
                .sum();
        }
        let [unread, lost_events] = sums;
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
        let t = call_table();
        assert_eq!(t.iter().filter(|&&x| x != 0).count(), 1);
        assert_eq!(t[42], 1, "connect is x86_64 call 42");
        let f = |report, stop| ThrottleFlags { report, stop }.bits();
        assert_eq!(f(false, true), 0);
        assert_eq!(f(true, false), THR_CONNECT);
        assert_eq!(f(true, true), THR_CONNECT | THR_STOP);
        assert!(host_key(ExeKey { dev: 1, ino: 2 }, &[1, 2, 3]).is_err());
    }
}
