//! The profiles' generation (`hs_shared.generation`, the first word of the programs'
//! `.data` map), mapped into the loader's memory: a task caches its profile's state
//! until the generation moves.
//! Both sides move it with an atomic add on the same word (the programs when
//! auto_create makes a profile, userspace at every other change), the word of
//! `hs_shared` that the common call tests its task's state against; a map update
//! from userspace would rewrite it and could undo an increment the programs made
//! meanwhile.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `hs_shared.generation`, mmapped.
#[derive(Debug)]
pub(crate) struct Generation {
    word: NonNull<AtomicU32>,
}

// SAFETY: the mapping is only accessed through an atomic, and lives until Drop.
unsafe impl Send for Generation {}
// SAFETY: as above.
unsafe impl Sync for Generation {}

/// One page: the map's value area (`hs_shared`, 16 bytes) rounded up, as the kernel
/// maps it.
const LEN: usize = 4096;

impl Generation {
    /// Maps the `.data` map `fd`, whose value starts with `hs_shared.generation`.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> std::io::Result<Generation> {
        // SAFETY: a fresh shared mapping of a BPF array map that libbpf created with
        // BPF_F_MMAPABLE (global data), one page: its value area rounded up; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let word = NonNull::new(p.cast::<AtomicU32>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Generation { word })
    }

    /// Moves the generation, skipping 0 (a new task state is at generation 0, and a
    /// task's `fast` is 0 when it may not take the common call): a bump that
    /// reaches 0 adds one more at once.
    pub(crate) fn bump(&self) {
        // SAFETY: the first word of the live, page-aligned mapping.
        let g = unsafe { self.word.as_ref() };
        if g.fetch_add(1, Ordering::SeqCst) == u32::MAX {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            libc::munmap(self.word.as_ptr().cast(), LEN);
        }
    }
}
