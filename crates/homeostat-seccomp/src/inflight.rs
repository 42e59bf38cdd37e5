//! The in-flight table: notifications the supervisor has received but not yet answered,
//! kept in memory shared with the keeper.
//!
//! Why it exists: once the supervisor has received a notification (`NOTIF_RECV`), the
//! kernel will not hand it out again, so if the supervisor dies before answering (it may
//! be holding it on purpose — that is how a delay is made), the task waits for an answer
//! nobody knows is owed. The keeper holds a duplicate of the listener and can answer any
//! id, but it must learn which ids. So the supervisor writes every id here when it
//! receives it and clears it when it answers; the keeper reads the table only after the
//! supervisor is gone (or has handed over), so there is never a concurrent writer.
//!
//! The one gap — the supervisor dies after `NOTIF_RECV` returns but before the slot is
//! written — is closed by `max_id`: notification ids of one filter are handed out in
//! increasing order and received oldest first, so an unrecorded in-flight id can only be
//! just above the highest recorded one. The keeper answers a small window above it too
//! (answering an id that is not in flight is harmless: `ENOENT`/`EINPROGRESS`).
//!
//! Memory: `MAP_SHARED | MAP_ANONYMOUS`, created before the keeper is forked. Slots are
//! reused lowest first, so only the pages actually used are ever touched (a few KiB in
//! practice out of the 1 MiB reserved).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::sys::{last_errno, Errno};

/// Capacity: at most this many notifications recorded at once (one per blocked thread).
pub(crate) const SLOTS: usize = 65_536;

/// How far above the highest recorded id the keeper answers blindly.
pub(crate) const ID_WINDOW: u64 = 8;

#[repr(C)]
pub(crate) struct Slot {
    /// Thread id of the notifying task; 0 marks the slot free. Written last (Release),
    /// so a non-zero tid means `id` is valid.
    pub tid: AtomicI32,
    _pad: u32,
    pub id: AtomicU64,
}

#[repr(C)]
pub(crate) struct Shared {
    /// Non-zero once `max_id` holds a real id (ids start at a random value, so 0 is not
    /// a usable "none").
    pub have_max: AtomicU32,
    /// Slots at or above this index have never been used.
    pub high_water: AtomicU32,
    /// The most recently received notification id.
    pub max_id: AtomicU64,
    /// Set if a notification could not be recorded because the table was full.
    pub overflowed: AtomicU32,
    _pad: u32,
    pub slots: [Slot; SLOTS],
}

/// Owner of the shared mapping (unmapped on drop in this process only; the keeper keeps
/// its own mapping).
pub(crate) struct SharedMap {
    ptr: NonNull<Shared>,
}

// SAFETY: the mapping is process-wide memory accessed only through atomics.
unsafe impl Send for SharedMap {}

impl SharedMap {
    pub(crate) fn new() -> Result<SharedMap, Errno> {
        // SAFETY: an anonymous shared mapping of the struct's size; zero-filled by the
        // kernel, and all-zero is a valid Shared (every field is an atomic integer).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Shared>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno(last_errno()));
        }
        Ok(SharedMap {
            ptr: NonNull::new(p.cast()).ok_or(Errno(libc::ENOMEM))?,
        })
    }

    pub(crate) fn as_ptr(&self) -> *const Shared {
        self.ptr.as_ptr()
    }

    pub(crate) fn get(&self) -> &Shared {
        // SAFETY: the mapping lives as long as self and holds a valid Shared.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mmap returned; no references outlive self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), std::mem::size_of::<Shared>());
        }
    }
}

/// The supervisor's side: allocates slots, records and clears ids.
pub(crate) struct InFlight {
    map: SharedMap,
    free: Vec<u32>,
    fresh: u32,
}

impl InFlight {
    pub(crate) fn new(map: SharedMap) -> InFlight {
        InFlight {
            map,
            free: Vec::new(),
            fresh: 0,
        }
    }

    /// Records a just-received notification. `None` if the table is full (then the id is
    /// covered only by the `max_id` window; `overflowed` tells the keeper).
    pub(crate) fn record(&mut self, id: u64, tid: i32) -> Option<u32> {
        let sh = self.map.get();
        let slot = match self.free.pop() {
            Some(s) => Some(s),
            None if (self.fresh as usize) < SLOTS => {
                let s = self.fresh;
                self.fresh += 1;
                // Publish the new bound before the slot is written, so a slot the keeper
                // might need is never above it.
                sh.high_water.store(self.fresh, Ordering::Release);
                Some(s)
            }
            None => None,
        };
        match slot {
            Some(s) => {
                let sl = &sh.slots[s as usize];
                sl.id.store(id, Ordering::Relaxed);
                sl.tid.store(tid.max(1), Ordering::Release);
            }
            None => sh.overflowed.store(1, Ordering::Release),
        }
        sh.max_id.store(id, Ordering::Release);
        sh.have_max.store(1, Ordering::Release);
        slot
    }

    pub(crate) fn clear(&mut self, slot: Option<u32>) {
        if let Some(s) = slot {
            self.map.get().slots[s as usize]
                .tid
                .store(0, Ordering::Release);
            self.free.push(s);
        }
    }

    /// Test hook: make a recorded id look as if the supervisor died between receiving it
    /// and recording it (slot empty, `max_id` just below it).
    pub(crate) fn forget(&mut self, slot: Option<u32>, id: u64) {
        self.clear(slot);
        self.map
            .get()
            .max_id
            .store(id.wrapping_sub(1), Ordering::Release);
    }
}
