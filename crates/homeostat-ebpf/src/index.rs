//! The row index (`hs_index`), mapped into the loader's memory: a profile's slot maps
//! each call to a row of the pool `hs_rows`. The programs set entries with
//! compare-and-swap; so does userspace, on the same memory (the map is
//! `BPF_F_MMAPABLE`), so neither side can overwrite the other's new row. A map
//! update from userspace would copy a whole slot and could undo an entry the kernel
//! set meanwhile, leaking its row.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::abi::{SLOTS, TABLE};

/// `hs_index`, mmapped; shared by [`crate::Kernel`] and [`crate::Probe`].
#[derive(Debug)]
pub(crate) struct Index {
    base: NonNull<AtomicU32>,
    len: usize,
}

// SAFETY: the mapping is only accessed through atomics, and lives until Drop.
unsafe impl Send for Index {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for Index {}

impl Index {
    /// Maps the index map `fd` (SLOTS x TABLE u32 entries).
    pub(crate) fn map(fd: BorrowedFd<'_>) -> std::io::Result<Arc<Index>> {
        let len = SLOTS as usize * TABLE;
        let bytes = len * std::mem::size_of::<u32>();
        // SAFETY: a fresh shared mapping of a BPF array map created with
        // BPF_F_MMAPABLE whose value area is exactly `bytes` long (4096 slots of 4 KiB,
        // page-aligned); the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<AtomicU32>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Arc::new(Index { base, len }))
    }

    fn entry(&self, slot: u32, cur: usize) -> Option<&AtomicU32> {
        let i = (slot as usize).checked_mul(TABLE)?.checked_add(cur)?;
        (cur < TABLE && i < self.len).then(|| {
            // SAFETY: i < len entries of the live mapping; AtomicU32 has u32's layout
            // and the map's values are 4-byte aligned (page-aligned slots of u32s).
            unsafe { &*self.base.as_ptr().add(i) }
        })
    }

    /// The pool index of the row of call `cur` of profile `slot` (0: none).
    pub(crate) fn get(&self, slot: u32, cur: usize) -> u32 {
        self.entry(slot, cur)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Sets the row of `cur` to `row` if it has none: the row there afterwards.
    pub(crate) fn set_if_none(&self, slot: u32, cur: usize, row: u32) -> u32 {
        match self.entry(slot, cur) {
            Some(e) => match e.compare_exchange(0, row, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => row,
                Err(other) => other,
            },
            None => 0,
        }
    }

    /// Clears the row of `cur`: the row that was there.
    pub(crate) fn take(&self, slot: u32, cur: usize) -> u32 {
        self.entry(slot, cur)
            .map_or(0, |e| e.swap(0, Ordering::AcqRel))
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len * 4);
        }
    }
}
