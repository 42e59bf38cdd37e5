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

/// The programs loaded with `opts`; `None`, after saying why, when BPF is not
/// available here (not root, or the kernel refused for lack of privilege or BTF). Any
/// other error, a program the verifier rejected first of all, fails the test.
pub fn kernel_with(opts: &homeostat_ebpf::Options) -> Option<homeostat_ebpf::Kernel> {
    use homeostat_ebpf::{Error, Kernel};
    if !homeostat_testsupport::is_root() {
        eprintln!("skipped: needs root to load BPF programs");
        return None;
    }
    match Kernel::load(opts) {
        // A floor build (feature `floor`) starts at the floor: these tests are about
        // the real program, swapped in (which tests the swap too).
        Ok(k) if k.at_floor() == Some(true) => {
            k.set_floor(false).unwrap();
            Some(k)
        }
        Ok(k) => Some(k),
        Err(e @ (Error::PermissionDenied | Error::NoBtf)) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}
