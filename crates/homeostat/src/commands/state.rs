//! The state-directory flags (`--state-dir`, `--config`) turned into library calls;
//! shared by every command that works on the state directory.

use anyhow::{anyhow, Result};
use homeostat_core::ph::Mode;
use homeostat_monitor::config::ConfigFile;
use homeostat_monitor::{default_state_dir, ProfileStore};

use crate::cli::StateFlags;

/// The configuration file (`--config`, else the defaults) with the mode and
/// normal_wait flags on top, validated.
pub fn settings(
    state: &StateFlags,
    mode: Option<Mode>,
    normal_wait: Option<f64>,
) -> Result<ConfigFile> {
    homeostat_monitor::config::settings(state.config.as_deref(), mode, normal_wait)
        .map_err(|e| anyhow!(e))
}

/// Opens the state directory named by the flags (or the default one).
pub fn open_store(state: &StateFlags) -> Result<ProfileStore> {
    let dir = state.state_dir.clone().unwrap_or_else(default_state_dir);
    Ok(ProfileStore::open(&dir)?)
}
