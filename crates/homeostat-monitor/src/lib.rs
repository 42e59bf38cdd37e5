//! The live monitor, shared by `homeostat run` (seccomp launcher), `homeostat attach`
//! (ptrace) and the daemon: per-task pH state and verdicts ([`engine`]), the loop that
//! drives a capture mechanism into a consumer and applies its verdicts
//! ([`monitor_loop`], [`ph_consumer`]), the control channel of a running monitor
//! ([`control`]), the events sink ([`sink`]), the state directory of profiles
//! ([`store`]), the daemon's profile files and their conversion ([`daemon_profile`]),
//! and the configuration file ([`config`]).
//!
//! Capturing calls is the job of the mechanism crates (`homeostat-seccomp`,
//! `homeostat-ptrace`, `homeostat-ebpf`); this crate only adapts them to one loop, and
//! never parses command lines or prints (that is the CLI's job).
#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod control;
pub mod daemon_profile;
pub mod engine;
pub mod monitor_loop;
pub mod ph_consumer;
pub mod sink;
pub mod store;
pub mod throttle;

pub use engine::{Call, Engine, EventRecord, TaskInfo};
pub use ph_consumer::PhConsumer;
pub use store::{
    default_state_dir, read_capped, read_framed, write_atomic, ProfileStore, ReadError, StoreError,
};

/// Wall-clock time in ns since the Unix epoch (0 if the clock is before it): pH's
/// normal_wait spans monitor restarts, so it is not a monotonic clock.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
