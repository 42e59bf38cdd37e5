//! The state directory: where pH profiles live between runs.
//!
//! One file per executable, `profiles/<dev>-<ino>.phprof`, written atomically
//! (temporary file, fsync, rename, fsync of the directory) so a crash leaves the old
//! profile or the new one. A profile that does not load is reported, moved aside as
//! `<name>.corrupt-<unix time>` and never silently overwritten. The directory is
//! created 0700: profiles describe what programs do, which is nobody else's business.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use homeostat_core::ph::{ExeKey, PhProfile};

/// A state-directory problem, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct StoreError {
    /// The file or directory.
    pub path: PathBuf,
    /// What went wrong.
    pub msg: String,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// The state directory: `--state-dir`, else `$HOMEOSTAT_STATE_DIR`, else
/// `/var/lib/homeostat` for root, else `$XDG_STATE_HOME/homeostat`, else
/// `~/.local/state/homeostat`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HOMEOSTAT_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // The effective uid from /proc keeps this crate free of unsafe libc calls.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/homeostat");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("homeostat");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/homeostat")
}

/// Writes `bytes` to `path` so readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".homeostat-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| err(dir, format!("cannot create a temporary file: {e}")))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| err(tmp.path(), format!("cannot write: {e}")))?;
    tmp.persist(path)
        .map_err(|e| err(path, format!("cannot replace: {}", e.error)))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, format!("cannot sync directory: {e}")))?;
    Ok(())
}

/// Profiles on disk.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    dir: PathBuf,
}

impl ProfileStore {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let profiles = dir.join("profiles");
        std::fs::create_dir_all(&profiles).map_err(|e| err(&profiles, e))?;
        for d in [dir, profiles.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(d, e))?;
        }
        Ok(ProfileStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the profile for `key`.
    pub fn path_for(&self, key: ExeKey) -> PathBuf {
        self.dir.join("profiles").join(format!("{key}.phprof"))
    }

    /// Saves one profile atomically.
    pub fn save(&self, p: &PhProfile) -> Result<(), StoreError> {
        write_atomic(&self.path_for(p.key), &p.to_bytes())
    }

    /// Removes a profile's file (admin "reset").
    pub fn remove(&self, key: ExeKey) -> Result<(), StoreError> {
        let path = self.path_for(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path, e)),
        }
    }

    /// Loads one profile file; a damaged one is moved aside and reported.
    pub fn load_file(&self, path: &Path) -> Result<PhProfile, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| err(path, e))?;
        PhProfile::from_bytes(&bytes).map_err(|e| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_extension(format!("phprof.corrupt-{now}"));
            let moved = std::fs::rename(path, &aside)
                .map(|_| format!("; moved aside to {}", aside.display()))
                .unwrap_or_default();
            err(path, format!("{e}{moved}"))
        })
    }

    /// Every profile that loads, and one error per file that does not.
    pub fn load_all(&self) -> (Vec<PhProfile>, Vec<StoreError>) {
        let dir = self.dir.join("profiles");
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "phprof"))
                .collect(),
            Err(e) => return (vec![], vec![err(&dir, e)]),
        };
        names.sort();
        let mut ok = vec![];
        let mut bad = vec![];
        for p in names {
            match self.load_file(&p) {
                Ok(profile) => ok.push(profile),
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::ph::PhConfig;

    #[test]
    fn save_load_and_corruption_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(&dir.path().join("state")).unwrap();
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let key = ExeKey { dev: 3, ino: 99 };
        let p = PhProfile::new(key, "/bin/true", &PhConfig::default());
        store.save(&p).unwrap();
        let (loaded, errors) = store.load_all();
        assert!(errors.is_empty());
        assert_eq!(loaded[0].key, key);
        assert_eq!(loaded[0].path, "/bin/true");

        let path = store.path_for(key);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (loaded, errors) = store.load_all();
        assert!(loaded.is_empty());
        let msg = errors[0].to_string();
        assert!(
            msg.contains("3-63.phprof") && msg.contains("checksum") && msg.contains("moved aside"),
            "{msg}"
        );
        assert!(!path.exists(), "the damaged file is moved, not overwritten");
        let aside: Vec<_> = std::fs::read_dir(store.dir().join("profiles"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].file_name().to_string_lossy().contains("corrupt"));
    }
}
