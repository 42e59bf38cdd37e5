//! System-wide pH on the eBPF kernel side (`homeostat-ebpf`): the userspace half of
//! `homeostat daemon`. The kernel runs the per-call work (sequences, training, testing,
//! locality frames) for every task and stops a process at its first anomaly when its
//! profile responds; this crate decides what the kernel cannot: when a profile freezes
//! and becomes normal, tolerization and the anomaly limit, what is saved, loaded and
//! reported, and the response itself ([`respond`]: ptrace delays and execve refusal),
//! with the [`stop_guard`] making sure nothing stays stopped if the daemon dies.
//!
//! Lifecycle from the kernel's counters, sampled every tick (one second): for each
//! profile the deltas since the last sample, `dcalls` (its `calls`) and `dnew` (its
//! `new_pairs`), give pH's counters at one-tick granularity:
//! - `train_count += dcalls`;
//! - `dnew > 0`: the profile changed in this tick, `last_mod_count = 0` (a frozen
//!   profile goes back to training); the calls after the tick's last new pair are not
//!   credited, which only delays freezing;
//! - `dnew == 0`: `last_mod_count += dcalls`.
//!
//! Then pH's freeze rule (`train_count * normal_factor_den > normal_count *
//! normal_factor`, `normal_count = train_count - last_mod_count > 0`) and, once
//! frozen for `normal_wait`, normal: the kernel is told to test instead of learning.
//! The rule is the core's (`homeostat_core::ph::lifecycle`), the one `homeostat run`
//! applies call by call; only the step differs.
//!
//! Profiles are saved as `daemon/<dev>-<ino>.json` in the state directory
//! (docs/daemon.md); with `--symbols args`, a profile's argument classes go beside it
//! as `daemon/<dev>-<ino>.classes` ([`classes`]). One module per concern: [`main_loop`] (start, loop, shutdown),
//! `daemon` (the state), `events`, `lifecycle`, `evict` (profiles of deleted
//! executables, and the least valuable when the map is near full), `admin` (control requests), `persist`,
//! [`prometheus`] (the metrics endpoint), [`respond`], [`stop_guard`], [`throttle`]
//! (Williamson's connection throttle, on the response's stop and takeover), [`rates`]
//! (fork and file-creation rate limits learned per profile, on the same mechanism).
#![forbid(unsafe_code)]

mod admin;
pub mod classes;
mod daemon;
mod events;
mod evict;
mod lifecycle;
pub mod main_loop;
mod persist;
pub mod prometheus;
pub mod rates;
pub mod respond;
pub mod shared;
pub mod stop_guard;
pub mod throttle;

use homeostat_monitor::now_ns;
pub use main_loop::{run, DaemonOptions};

/// Every file the daemon keeps for profile `key` in its folder `dir`: the profile and
/// what lives beside it (argument classes, rates, the connection working set). A
/// profile that goes (reset or evicted by the daemon, or reset by `homeostat profile
/// reset` while none runs) takes them all: a file left behind would be given to the
/// executable's next profile.
pub fn profile_files(
    dir: &std::path::Path,
    key: homeostat_core::ph::ExeKey,
) -> [std::path::PathBuf; 4] {
    [
        dir.join(format!("{key}.json")),
        classes::path_in(dir, key),
        rates::path_in(dir, key),
        throttle::hosts_path_in(dir, key),
    ]
}

/// Deletes the [`profile_files`] of `key` (those absent are no error).
pub fn remove_profile_files(dir: &std::path::Path, key: homeostat_core::ph::ExeKey) {
    for f in profile_files(dir, key) {
        let _ = std::fs::remove_file(f);
    }
}
