//! What the real-kernel test files of this crate share.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use homeostat_core::ph::ExeKey;

/// A private copy of `bin`, so its profile key (dev, ino) is ours alone: other
/// processes on the machine running the same program do not touch it.
pub fn private_copy(dir: &Path, bin: &str) -> (PathBuf, ExeKey) {
    let dst = dir.join(Path::new(bin).file_name().unwrap());
    std::fs::copy(bin, &dst).unwrap();
    let m = std::fs::metadata(&dst).unwrap();
    (
        dst,
        ExeKey {
            dev: m.dev(),
            ino: m.ino(),
        },
    )
}
