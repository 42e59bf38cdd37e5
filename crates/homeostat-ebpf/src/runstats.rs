//! The programs' own run time, as the kernel measures it when
//! `kernel.bpf_stats_enabled` is 1 (`bpftool prog show`'s `run_time_ns` / `run_cnt`,
//! through BPF_OBJ_GET_INFO_BY_FD): the direct per-call cost of the daemon, without
//! the tracepoint's price that wall-clock ratios include. The sysctl is off by default
//! because the accounting itself costs two clock reads per run.

use libbpf_rs::query::ProgInfoIter;

use crate::Kernel;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's counters since it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStats {
    /// The program's name in the object (`sys_enter_btf`, `sched_fork`, ...).
    pub name: String,
    /// The kernel's program id.
    pub id: u32,
    /// Runs counted while the sysctl was on.
    pub run_cnt: u64,
    /// Time spent in those runs, ns.
    pub run_time_ns: u64,
    /// Runs the kernel skipped because the program was already running on that CPU
    /// (its recursion guard): calls the program never saw. Counted whatever the sysctl.
    pub recursion_misses: u64,
}

impl ProgStats {
    /// Mean run time per run, ns (`None` before any counted run).
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Whether the kernel counts the programs' run time (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string(SYSCTL).is_ok_and(|s| s.trim() != "0")
}

/// Every loaded BPF program's counters, with the programs `keep` accepts (by id and
/// name). Reads the kernel's program list, so it sees other loaders' programs too.
pub fn prog_stats(mut keep: impl FnMut(u32, &str) -> bool) -> Vec<ProgStats> {
    ProgInfoIter::default()
        .filter_map(|p| {
            let name = p.name.to_string_lossy().into_owned();
            keep(p.id, &name).then_some(ProgStats {
                name,
                id: p.id,
                run_cnt: p.run_cnt,
                run_time_ns: p.run_time_ns,
                recursion_misses: p.recursion_misses,
            })
        })
        .collect()
}

impl Kernel {
    /// The counters of this loader's attached programs (zero unless
    /// [`bpf_stats_enabled`]).
    pub fn prog_stats(&self) -> Vec<ProgStats> {
        prog_stats(|id, _| self.prog_ids.contains(&id))
    }
}
