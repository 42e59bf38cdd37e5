//! pH, process homeostasis (Somayaji & Forrest 2000): per-executable lookahead-pair
//! profiles that learn by themselves, and a graduated response to anomalies.
//!
//! This module is the whole policy, free of any OS: a front end (the seccomp launcher,
//! the eBPF daemon, a replayed recording) calls [`PhProfile::on_syscall`] before each
//! system call with the task's state and the time, and gets back what to do with the
//! call (continue, delay, refuse) plus the events to report. Time is an argument, so
//! the state machine is tested by replay with a fake clock.
//!
//! The life of a profile, with pH's defaults:
//! - **training**: every call trains the profile's pairs. `train_count` counts calls,
//!   `last_mod_count` the calls since the profile last changed. When
//!   `train_count * normal_factor_den > normal_count * normal_factor` (128/32: the
//!   profile has gone unchanged for three quarters of its training life), where
//!   `normal_count = train_count - last_mod_count`, it **freezes**.
//! - **frozen**: still training; any new pair unfreezes it. After `normal_wait`
//!   frozen, it becomes **normal** and the training pairs are copied to testing.
//! - **normal**: every call is also tested; a task's locality frame counts anomalies
//!   among its last `locality` calls (LFC). An LFC above `tolerize_limit` wipes the
//!   training data, and the task stops training until its LFC is back to 0, so the
//!   attack is not learned. Other anomalies count against the profile; more than
//!   `anomaly_limit` send it back to training. (pH counted every anomaly; then a dense
//!   attack would exceed the limit and switch off its own response, which we saw in
//!   the demo, so anomalies inside a tolerized episode do not count.)
//! - **response** (mode enforce, profile normal): a call of a task with LFC > 0 is
//!   delayed `delay_factor * 2^LFC` (capped at `max_delay`); an execve while
//!   LFC >= `suspend_execve` is refused with EPERM.
//!
//! One module per concern: [`config`] (parameters and modes), [`lifecycle`] (the
//! freeze / normal rule, shared with the daemon, which applies it to the kernel's
//! counters), [`profile`] (the per-call state machine), [`codec`] (the profile file).

pub mod codec;
pub mod config;
pub mod lifecycle;
mod merge;
pub mod profile;

use serde::{Deserialize, Serialize};

pub use codec::PH_MAGIC;
pub use config::{Mode, PhConfig};
pub use lifecycle::TrainCounts;
pub use profile::{FileMatch, PhEvent, PhProfile, PhTask, Step, Verdict, REPLACED};

/// Identity of an executable: pH keys profiles by file, not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExeKey {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
}

impl std::str::FromStr for ExeKey {
    type Err = String;
    /// Parses the `<dev>-<ino>` hex form that `Display` prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (d, i) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a profile key (<dev>-<ino> in hex)"))?;
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|e| format!("{s:?}: {e}"));
        Ok(ExeKey {
            dev: hex(d)?,
            ino: hex(i)?,
        })
    }
}

impl std::fmt::Display for ExeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.dev, self.ino)
    }
}

/// Where a profile is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    /// Learning; not tested.
    Training,
    /// Stable, waiting out `normal_wait`; still learning.
    Frozen,
    /// Tested; anomalies get a response.
    Normal,
}

impl std::fmt::Display for ProfileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProfileState::Training => "training",
            ProfileState::Frozen => "frozen",
            ProfileState::Normal => "normal",
        })
    }
}
