//! File-system edges of the CLI: atomic profile writes and defended profile reads.

use std::path::Path;

use anyhow::{bail, Context, Result};
use homeostat_core::profile::MAX_PAYLOAD;
use homeostat_core::{DetectorProfile, Registry};

/// Writes `bytes` to `path` atomically (the state directory's writer: temporary file,
/// fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(homeostat_monitor::write_atomic(path, bytes)?)
}

/// Reads and validates a profile of any model `reg` knows, naming the file in every
/// error.
pub fn read_profile(path: &Path, reg: &Registry) -> Result<DetectorProfile> {
    let what = || format!("reading profile {}", path.display());
    let len = std::fs::metadata(path).with_context(what)?.len();
    if len > MAX_PAYLOAD + 24 {
        bail!(
            "reading profile {}: file is {len} bytes, larger than any profile",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(what)?;
    reg.load_profile(&bytes).with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Profile, ProfileMeta};

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.profile");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn profile_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.profile");
        std::fs::write(&p, b"HMSTPROF\x01\x00").unwrap();
        let e = format!("{:#}", read_profile(&p, &Registry::builtin()).unwrap_err());
        assert!(e.contains("bad.profile") && e.contains("truncated"), "{e}");
        let missing = format!(
            "{:#}",
            read_profile(&dir.path().join("nope"), &Registry::builtin()).unwrap_err()
        );
        assert!(
            missing.contains("nope") && missing.contains("No such file"),
            "{missing}"
        );

        let mut m = AnyModel::new(ModelSpec::new(ModelKind::Pairs)).unwrap();
        m.train_trace(&[1, 2, 3]);
        let good = Profile::new(ProfileMeta::default(), m);
        write_atomic(&p, &good.to_bytes()).unwrap();
        assert_eq!(
            read_profile(&p, &Registry::builtin())
                .unwrap()
                .detector
                .profile_size(),
            3
        );
    }
}
