//! The live monitor's mechanism-independent half, shared by `homeostat run` (seccomp
//! launcher) and the daemon: per-task pH state and verdicts ([`engine`]), the state
//! directory of profiles ([`store`]), the daemon's profile files and their conversion
//! ([`daemon_profile`]), and the configuration file ([`config`]).
//! Capturing calls and applying verdicts is the job of the mechanism crates.
#![forbid(unsafe_code)]

pub mod config;
pub mod daemon_profile;
pub mod engine;
pub mod store;

pub use engine::{Call, Engine, EventRecord, TaskInfo};
pub use store::{
    default_state_dir, read_capped, read_framed, write_atomic, ProfileStore, ReadError, StoreError,
};
