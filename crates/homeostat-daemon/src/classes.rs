//! A daemon profile's argument classes on disk (`daemon --symbols args`):
//! `daemon/<dev>-<ino>.classes` beside the profile's `.json` (docs/daemon.md).
//!
//! Why a file of its own: the profile file's format (`homeostat_monitor::
//! daemon_profile`, version 1) is shared with `homeostat run`'s conversions and read by
//! every version of the profile commands; the classes are the daemon's alone and exist
//! only with `--symbols args`. A profile without a classes file (an older daemon, or
//! plain calls) still loads: it is tested on its calls only until it trains again. The
//! file keeps each class's kernel hash (what the programs test) and its name (what
//! `profile show` lists), and the path depth the hashes were made with: hashes of
//! another depth are not loaded (they would never match).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use homeostat_core::ph::ExeKey;
use serde::{Deserialize, Serialize};

/// Format version of the classes files.
pub const VERSION: u32 = 1;
/// Largest classes file read (a profile holds at most 1536 classes plus one `other`
/// per call, each well under 400 bytes of JSON).
pub const MAX_FILE: u64 = 1 << 20;
/// The name of a call's `other` class (the core's `symbols::OTHER`).
pub const OTHER: &str = homeostat_core::symbols::OTHER;

/// One class: the call, the kernel's hash, the core's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Class {
    pub call: u16,
    pub hash: u64,
    pub class: String,
}

/// One classes file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassesFile {
    pub version: u32,
    pub dev: u64,
    pub ino: u64,
    /// The path depth the hashes were made with.
    pub path_depth: u8,
    pub classes: Vec<Class>,
}

/// `<dir>/<key>.classes`, `dir` the daemon's profile folder.
pub fn path_in(dir: &Path, key: ExeKey) -> PathBuf {
    dir.join(format!("{key}.classes"))
}

impl ClassesFile {
    /// The profile's key.
    pub fn key(&self) -> ExeKey {
        ExeKey {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Parses and checks file contents; the error is one line.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClassesFile, String> {
        let f: ClassesFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.version != VERSION {
            return Err(format!("format version {} (want {VERSION})", f.version));
        }
        let max = homeostat_core::symbols::MAX_CLASS_BYTES;
        if let Some(c) = f
            .classes
            .iter()
            .find(|c| c.call >= 512 || c.class.len() > max)
        {
            return Err(format!("bad class of call {}", c.call));
        }
        Ok(f)
    }

    /// Reads a file: `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<ClassesFile>, String> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut bytes = vec![];
        f.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(format!("larger than {MAX_FILE} bytes"));
        }
        Self::from_bytes(&bytes).map(Some)
    }

    /// The file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serialises")
    }

    /// A profile's classes as the kernel has them, named from `names` (the classes
    /// the daemon heard of; a class whose event was lost is named `?`).
    pub fn of(
        key: ExeKey,
        path_depth: u8,
        kernel: &[(u16, u64)],
        names: &BTreeMap<(u16, u64), Arc<str>>,
    ) -> ClassesFile {
        ClassesFile {
            version: VERSION,
            dev: key.dev,
            ino: key.ino,
            path_depth,
            classes: kernel
                .iter()
                .map(|&(call, hash)| Class {
                    call,
                    hash,
                    class: if hash == homeostat_ebpf::OTHER_HASH {
                        OTHER.to_string()
                    } else {
                        names
                            .get(&(call, hash))
                            .map_or_else(|| "?".to_string(), |n| n.to_string())
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classes_file_round_trips_and_hostile_ones_are_refused() {
        let key = ExeKey { dev: 1, ino: 2 };
        let mut names = BTreeMap::new();
        names.insert((257u16, 9u64), Arc::from("/srv/www/"));
        let f = ClassesFile::of(key, 2, &[(2, 0), (257, 9), (257, 10)], &names);
        let names: Vec<&str> = f.classes.iter().map(|c| c.class.as_str()).collect();
        assert_eq!(names, ["other", "/srv/www/", "?"]);
        let back = ClassesFile::from_bytes(&f.to_bytes()).unwrap();
        assert_eq!(back, f);
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path(), key);
        assert_eq!(ClassesFile::load(&p).unwrap(), None);
        std::fs::write(&p, f.to_bytes()).unwrap();
        assert_eq!(ClassesFile::load(&p).unwrap(), Some(f.clone()));
        let mut bad = f.clone();
        bad.version = 7;
        assert!(ClassesFile::from_bytes(&bad.to_bytes())
            .unwrap_err()
            .contains("version 7"));
        let mut bad = f;
        bad.classes[0].call = 600;
        assert!(ClassesFile::from_bytes(&bad.to_bytes()).is_err());
        assert!(ClassesFile::from_bytes(b"{").is_err());
    }
}
