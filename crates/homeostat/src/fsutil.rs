//! File-system edges of the CLI: atomic profile writes (never over a special file)
//! and defended profile reads (bounded by the header).

use std::path::Path;

use anyhow::{Context, Result};
use homeostat_core::profile::MAGIC;
use homeostat_core::Profile;

/// Writes `bytes` to `path` atomically (the state directory's writer: temporary file,
/// fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(homeostat_monitor::write_atomic(path, bytes)?)
}

/// Reads and validates a profile, naming the file in every error. Only as many bytes
/// as the header announces are read, and only from a regular file: `/dev/zero` or a
/// huge foreign file is refused after its first 24 bytes.
pub fn read_profile(path: &Path) -> Result<Profile> {
    let what = || format!("reading profile {}", path.display());
    let bytes = homeostat_monitor::read_framed(path, MAGIC).with_context(what)?;
    Profile::from_bytes(&bytes).with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, ProfileMeta};

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
        let e = format!("{:#}", read_profile(&p).unwrap_err());
        assert!(e.contains("bad.profile") && e.contains("truncated"), "{e}");
        let missing = format!("{:#}", read_profile(&dir.path().join("nope")).unwrap_err());
        assert!(
            missing.contains("nope") && missing.contains("No such file"),
            "{missing}"
        );

        let mut m = AnyModel::new(ModelSpec::new(ModelKind::Pairs)).unwrap();
        m.train_trace(&[1, 2, 3]);
        let good = Profile::new(ProfileMeta::default(), m);
        write_atomic(&p, &good.to_bytes()).unwrap();
        assert_eq!(read_profile(&p).unwrap().model.profile_size(), 3);
    }
}
