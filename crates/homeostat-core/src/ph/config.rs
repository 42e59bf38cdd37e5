//! pH's parameters (`[ph]` in the configuration file) and the monitor's mode.

use serde::{Deserialize, Serialize};

use crate::model::{ModelKind, ModelSpec};
use crate::symbols::{SymbolConfig, SymbolMode, MAX_CLASSES_LIMIT};

/// What a monitor does: only learn, also detect, or also respond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Train profiles; never test, never respond.
    Learn,
    /// Train, and once a profile is normal test and report anomalies; no response.
    Detect,
    /// What pH did: train, test once normal, delay and refuse execve.
    #[default]
    Enforce,
}

/// pH's parameters. Defaults are pH's / ebpH's, with units chosen for today's clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhConfig {
    /// Lookahead window (current call plus `window - 1` predecessors).
    pub window: usize,
    /// Locality frame size, in calls.
    pub locality: usize,
    /// Freeze when train_count / normal_count exceeds normal_factor / normal_factor_den.
    pub normal_factor: u64,
    /// See `normal_factor`.
    pub normal_factor_den: u64,
    /// Time frozen before a profile becomes normal, in seconds (pH: 7 days).
    pub normal_wait_secs: f64,
    /// Anomalies a normal profile tolerates before it returns to training.
    pub anomaly_limit: u64,
    /// An LFC above this wipes the profile's training data.
    pub tolerize_limit: u32,
    /// Base delay in milliseconds: a call is delayed `delay_factor * 2^LFC`. pH used 4
    /// jiffies; 4 ms is that at HZ = 1000.
    pub delay_factor_ms: f64,
    /// Cap on one call's delay, in milliseconds (2^LFC grows without bound).
    pub max_delay_ms: f64,
    /// An execve while the LFC is at least this is refused.
    pub suspend_execve: u32,
    /// Learn, detect or enforce.
    pub mode: Mode,
    /// The alphabet of new profiles: plain call numbers, or (call, argument class)
    /// symbols (docs/arguments.md). A loaded profile keeps the alphabet it was saved with.
    #[serde(with = "symbol_mode")]
    pub symbols: SymbolMode,
    /// Directories of a path that make its class (`symbols = "args"`).
    pub path_depth: u8,
    /// Most argument classes a profile learns (`symbols = "args"`).
    pub max_classes: u32,
    /// Learn fork and file-creation rates, and limit them once normal
    /// ([`crate::rate`]).
    pub rate_limit: bool,
    /// Limit = the peak learned in training times this margin.
    pub rate_margin: f64,
    /// The sliding window rates are counted in, seconds (for profiles that start
    /// learning; a profile keeps the window its peaks were counted in).
    pub rate_window_secs: f64,
}

/// `symbols` as its command-line name in TOML.
mod symbol_mode {
    use super::SymbolMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &SymbolMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SymbolMode, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for PhConfig {
    fn default() -> Self {
        PhConfig {
            window: 9,
            locality: 128,
            normal_factor: 128,
            normal_factor_den: 32,
            normal_wait_secs: 7.0 * 24.0 * 3600.0,
            anomaly_limit: 30,
            tolerize_limit: 12,
            delay_factor_ms: 4.0,
            max_delay_ms: 2000.0,
            suspend_execve: 10,
            mode: Mode::Enforce,
            symbols: SymbolMode::Calls,
            path_depth: SymbolConfig::default().path_depth,
            max_classes: SymbolConfig::default().max_classes,
            rate_limit: false,
            rate_margin: 2.0,
            rate_window_secs: 1.0,
        }
    }
}

impl PhConfig {
    /// Checks ranges, so a bad config file is an error and not a panic.
    pub fn validate(&self) -> Result<(), String> {
        self.spec().validate().map_err(|e| e.to_string())?;
        if self.normal_factor_den == 0 || self.normal_factor == 0 {
            return Err("normal_factor and normal_factor_den must be positive".into());
        }
        for (name, v) in [
            ("normal_wait_secs", self.normal_wait_secs),
            ("delay_factor_ms", self.delay_factor_ms),
            ("max_delay_ms", self.max_delay_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a finite number >= 0, not {v}"));
            }
        }
        if !(self.rate_margin.is_finite() && self.rate_margin >= 1.0) {
            return Err(format!(
                "rate_margin must be a finite number >= 1, not {}",
                self.rate_margin
            ));
        }
        let (lo, hi) = (
            crate::rate::MIN_WINDOW_NS as f64 / 1e9,
            crate::rate::MAX_WINDOW_NS as f64 / 1e9,
        );
        if !(self.rate_window_secs.is_finite()
            && self.rate_window_secs >= lo
            && self.rate_window_secs <= hi)
        {
            return Err(format!(
                "rate_window_secs must be between {lo} and {hi}, not {}",
                self.rate_window_secs
            ));
        }
        if self.path_depth == 0 || self.path_depth > 16 {
            return Err(format!(
                "path_depth must be 1..=16, not {}",
                self.path_depth
            ));
        }
        if self.max_classes == 0 || self.max_classes > MAX_CLASSES_LIMIT {
            return Err(format!(
                "max_classes must be 1..={MAX_CLASSES_LIMIT}, not {}",
                self.max_classes
            ));
        }
        Ok(())
    }

    /// The symbol table settings of new argument-aware profiles.
    pub fn symbol_config(&self) -> SymbolConfig {
        SymbolConfig {
            path_depth: self.path_depth,
            max_classes: self.max_classes,
        }
    }

    /// The rate window in ns, in the range a saved profile may hold (so rounding
    /// never makes a profile that does not load).
    pub fn rate_window_ns(&self) -> u64 {
        ((self.rate_window_secs * 1e9) as u64)
            .clamp(crate::rate::MIN_WINDOW_NS, crate::rate::MAX_WINDOW_NS)
    }

    /// The lookahead-pairs model spec these parameters describe.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec::new(ModelKind::Pairs)
            .with_window(self.window)
            .with_locality(self.locality)
    }

    /// The delay for a call of a task at `lfc`, in nanoseconds (0 when lfc is 0).
    pub fn delay_ns(&self, lfc: u32) -> u64 {
        if lfc == 0 {
            return 0;
        }
        let ms = self.delay_factor_ms * 2f64.powi(lfc.min(1023) as i32);
        (ms.min(self.max_delay_ms) * 1e6) as u64
    }

    pub(crate) fn normal_wait_ns(&self) -> u64 {
        (self.normal_wait_secs * 1e9) as u64
    }
}
