//! The TOML configuration file: pH's parameters (`[ph]`), every one optional.
//!
//! ```toml
//! [ph]
//! normal_wait_secs = 604800   # 7 days
//! anomaly_limit = 30
//! tolerize_limit = 12
//! delay_factor_ms = 4.0
//! max_delay_ms = 2000.0
//! suspend_execve = 10
//! mode = "enforce"             # learn | detect | enforce
//! symbols = "calls"            # calls | args: alphabet of new profiles (homeostat run)
//! rate_limit = false           # fork / file-creation limits learned per profile (run)
//! rate_margin = 2.0
//! rate_window_secs = 1.0
//!
//! [modes]                        # per executable (homeostat daemon), by path
//! "/usr/sbin/sshd" = "enforce"
//! "/usr/bin/make" = "learn"
//! ```

use std::path::Path;

use homeostat_core::ph::{Mode, PhConfig};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// pH parameters.
    #[serde(default)]
    pub ph: PhConfig,
    /// Per-executable modes (by path), overriding `ph.mode`; used by the daemon,
    /// which watches many programs at once.
    #[serde(default)]
    pub modes: std::collections::BTreeMap<String, Mode>,
}

/// Reads and validates a configuration file; errors name the file.
pub fn load(path: &Path) -> Result<ConfigFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: ConfigFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    file.ph
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file)
}

/// The whole configuration of a monitor: the file at `path` (or the defaults when there
/// is none), with the mode and normal_wait given on the command line on top,
/// validated. Read once, so pH's parameters and `[modes]` come from the same file.
pub fn settings(
    path: Option<&Path>,
    mode: Option<Mode>,
    normal_wait_secs: Option<f64>,
) -> Result<ConfigFile, String> {
    let mut file = match path {
        Some(p) => load(p)?,
        None => ConfigFile::default(),
    };
    if let Some(mode) = mode {
        file.ph.mode = mode;
    }
    if let Some(w) = normal_wait_secs {
        file.ph.normal_wait_secs = w;
    }
    file.ph
        .validate()
        .map_err(|e| format!("configuration: {e}"))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_keep_defaults_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[ph]\nnormal_wait_secs = 5\nmode = \"detect\"\n").unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.ph.normal_wait_secs, 5.0);
        assert_eq!(c.ph.mode, Mode::Detect);
        assert_eq!(c.ph.anomaly_limit, 30);
        std::fs::write(&p, "[ph]\nanomaly_limt = 5\n").unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.contains("c.toml") && e.contains("anomaly_limt"), "{e}");
        std::fs::write(&p, "[modes]\n\"/bin/sh\" = \"learn\"\n").unwrap();
        assert_eq!(load(&p).unwrap().modes["/bin/sh"], Mode::Learn);
        std::fs::write(&p, "[modes]\n\"/bin/sh\" = \"lurk\"\n").unwrap();
        assert!(load(&p).unwrap_err().contains("c.toml"));
        std::fs::write(&p, "[ph]\nwindow = 1\n").unwrap();
        assert!(load(&p).unwrap_err().contains("window 1"));
    }

    #[test]
    fn flags_override_the_file_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[ph]\nnormal_wait_secs = 5\nmode = \"detect\"\n").unwrap();
        let c = settings(Some(&p), Some(Mode::Learn), None).unwrap();
        assert_eq!((c.ph.mode, c.ph.normal_wait_secs), (Mode::Learn, 5.0));
        let c = settings(None, None, Some(0.5)).unwrap();
        assert_eq!((c.ph.mode, c.ph.normal_wait_secs), (Mode::Enforce, 0.5));
        let e = settings(None, None, Some(f64::NAN)).unwrap_err();
        assert!(e.starts_with("configuration: normal_wait_secs"), "{e}");
    }
}
