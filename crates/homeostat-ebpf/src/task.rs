//! Per-task state in the kernel (a slot of the array `hs_tids`, or task storage
//! `hs_tasks` for a task whose two slots others hold): what a tracer needs to know a
//! thread's LFC before its next call runs, and [`Probe`], the handle that reads it
//! from the response threads.
//!
//! The programs find a task's slot by its key, the address of its user registers on
//! its kernel stack, which userspace cannot know; each slot records its task's tid
//! (`hs_task.tid`), so userspace finds a tid's slot by reading the array, mmapped
//! ([`Slots`]), and remembers where it found it: the responder asks for the same few
//! threads at every call it traces.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytemuck::bytes_of;
use homeostat_core::ph::ExeKey;
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{self, hs_profile, hs_row, hs_task, hs_tid, COMPAT, LOCALITY, ROW, SEQ};
use crate::error::{map_err, Error};
use crate::index::Index;
use crate::Kernel;

/// What the kernel keeps for a task (`hs_task` in `src/bpf/homeostat.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    /// The executable's profile key.
    pub exe: ExeKey,
    /// The last calls, `seq[0]` the most recent (table rows: x86_64 numbers, i386 ones
    /// at 512 + number).
    pub seq: [u16; SEQ],
    /// How many of `seq` are valid.
    pub nseq: u32,
    /// The next slot of the locality frame.
    pub fpos: u32,
    /// The locality frame count.
    pub lfc: u32,
    /// The locality frame, one bit per call of the last 128.
    pub frame: [u64; 2],
    /// Whether the state is in the task's slot of the array `hs_tids`, else in task
    /// storage (both of its slots were other tasks': [`crate::Stats::tids_taken`]).
    pub tid_slot: bool,
}

impl TaskState {
    fn decode(v: &[u8]) -> Option<TaskState> {
        Self::from_task(&abi::decode(v)?, false)
    }

    fn from_task(t: &hs_task, tid_slot: bool) -> Option<TaskState> {
        // Storage is created zeroed; `valid` is HS_VALID (1) once the programs filled
        // it, HS_VALID_OUT (2) for a task outside the scope (not followed).
        (t.valid == 1).then(|| TaskState {
            exe: abi::exe(&t.key),
            seq: seq(t),
            nseq: t.nseq,
            fpos: t.fpos,
            lfc: t.lfc,
            frame: t.frame,
            tid_slot,
        })
    }

    /// What the kernel will make of this task's next call `nr` against its profile's
    /// row for `nr` (`None`: no row), in a normal profile: (missing pairs, LFC after
    /// the call). The same arithmetic as the BPF program, so that a tracer stopped at
    /// the call's entry (before the tracepoint runs) knows its LFC, as pH did.
    pub fn after_call(&self, row: Option<&[u8]>, nr: u32) -> (u32, u32) {
        let _ = nr; // the row is already the one of `nr`
        let mut misses = 0;
        for d in 1..=self.nseq.min(8) as usize {
            let prev = usize::from(self.seq[d - 1]) & (ROW - 1);
            let bit = 1u8 << (d - 1);
            if row.is_none_or(|r| r.get(prev).is_none_or(|m| m & bit == 0)) {
                misses += 1;
            }
        }
        let pos = self.fpos & (LOCALITY - 1);
        let old = (self.frame[((pos >> 6) & 1) as usize] >> (pos & 63)) & 1;
        let mut lfc = self.lfc;
        if old != 0 && lfc > 0 {
            lfc -= 1;
        }
        if misses > 0 {
            lfc += 1;
        }
        (misses, lfc)
    }
}

/// The task's last calls. While its local window is full (`lvalid` = 8) the
/// kernel's common call keeps the window only in `lwin` (byte d-1: the bit of the
/// local slot of the call d back) over `ltag`, and `seq` is as the last other call
/// left it; the programs rebuild it the same way (`seq_from_local`).
fn seq(t: &hs_task) -> [u16; SEQ] {
    if usize::from(t.lvalid) < SEQ {
        return t.seq;
    }
    std::array::from_fn(|d| {
        let slot = ((t.lwin >> (8 * d)) & 0xff).trailing_zeros() as usize;
        t.ltag[slot & (t.ltag.len() - 1)]
    })
}

/// Task states and rows, for threads other than the one driving [`Kernel`] (the
/// response); from [`Kernel::probe`].
#[derive(Debug)]
pub struct Probe {
    tasks: TaskMaps,
    profiles: MapHandle,
    index: Arc<Index>,
    rows: MapHandle,
    pub(crate) stopped: MapHandle,
}

impl Probe {
    /// See [`Kernel::task`].
    pub fn task(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        self.tasks.get(tid)
    }

    /// The LFC thread `tid` will have after its next call `nr` (see
    /// [`TaskState::after_call`]); `None` when the kernel does not follow it.
    pub fn lfc_after(&self, tid: u32, nr: u32) -> Result<Option<u32>, Error> {
        let Some(t) = self.task(tid)? else {
            return Ok(None);
        };
        let profile: Option<hs_profile> = self
            .profiles
            .lookup(bytes_of(&abi::key(t.exe)), MapFlags::ANY)
            .map_err(map_err("hs_profiles", "lookup"))?
            .and_then(|p| abi::decode(&p));
        let r = profile.map_or(0, |p| self.index.get(p.slot, table_row(nr)));
        let row: Option<hs_row> = if r == 0 {
            None
        } else {
            self.rows
                .lookup(&r.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("hs_rows", "lookup"))?
                .and_then(|r| abi::decode(&r))
        };
        Ok(Some(t.after_call(row.as_ref().map(|r| &r.mask[..]), nr).1))
    }
}

/// The kernel table's row of call `nr` as tracers number it: x86_64 numbers as they
/// are (x32 and beyond on the last row), i386 ones offset by 0x10000
/// (`homeostat_syscalls`) on rows [`COMPAT`]...
pub fn table_row(nr: u32) -> usize {
    match nr.checked_sub(0x10000) {
        Some(i386) => COMPAT + (i386 as usize).min(ROW - 1),
        None => (nr as usize).min(ROW - 1),
    }
}

/// `hs_tids`, mmapped read-only: the owner word and the tid of every slot, read
/// atomically while the programs write them.
#[derive(Debug)]
pub(crate) struct Slots {
    base: NonNull<u8>,
    len: usize,
    n: usize,
}

// SAFETY: the mapping is only read, through atomics, and lives until Drop.
unsafe impl Send for Slots {}
// SAFETY: as above.
unsafe impl Sync for Slots {}

const SLOT: usize = std::mem::size_of::<hs_tid>();
const TID_AT: usize = std::mem::offset_of!(hs_tid, t) + std::mem::offset_of!(hs_task, tid);
const _: () = assert!(TID_AT.is_multiple_of(4) && SLOT.is_multiple_of(8));

impl Slots {
    /// Maps `n` slots of the array map `fd` (made with BPF_F_MMAPABLE: its values
    /// from the mapping's start, page-aligned).
    pub(crate) fn map(fd: BorrowedFd<'_>, n: u32) -> std::io::Result<Slots> {
        let n = n as usize;
        let len = (n * SLOT).next_multiple_of(4096);
        // SAFETY: a fresh shared read-only mapping of an mmappable array map of `n`
        // values of SLOT bytes; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Slots { base, len, n })
    }

    /// The indices of the held slots whose words say tid `tid`: candidates, since a
    /// slot read while a claim or a fork fills it can show another task's tid for an
    /// instant (the caller checks the kernel's copy).
    fn find(&self, tid: u32) -> impl Iterator<Item = u32> + '_ {
        // The tid's line only for a held slot (most are free).
        (0..self.n)
            .filter_map(move |i| (self.owner(i) != 0 && self.tid(i) == tid).then_some(i as u32))
    }

    /// How many slots are held now (owner word not 0).
    fn held(&self) -> u32 {
        (0..self.n).filter(|&i| self.owner(i) != 0).count() as u32
    }

    /// Slot `i`'s owner word (offset 0), read atomically.
    fn owner(&self, i: usize) -> u64 {
        assert!(i < self.n);
        // SAFETY: slot i < n lies in the mapping, which lives as long as `self`; its
        // owner word is 8-aligned (SLOT is a multiple of 8, the mapping
        // page-aligned) and only read, through the atomic.
        unsafe { (*self.base.as_ptr().add(i * SLOT).cast::<AtomicU64>()).load(Ordering::Relaxed) }
    }

    /// Slot `i`'s tid word (`hs_task.tid`), read atomically.
    fn tid(&self, i: usize) -> u32 {
        assert!(i < self.n);
        // SAFETY: as in `owner`; the tid is 4-aligned (TID_AT is).
        unsafe {
            (*self
                .base
                .as_ptr()
                .add(i * SLOT + TID_AT)
                .cast::<AtomicU32>())
            .load(Ordering::Relaxed)
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Remembered slots, by tid, at most this many (then forgotten all at once).
const HINTS: usize = 4096;
/// A hint's value for a thread found in task storage rather than a slot.
const IN_STORAGE: u32 = u32::MAX;

/// Where the programs keep tasks' states: the slot array, then task storage.
#[derive(Debug)]
pub(crate) struct TaskMaps {
    tids: MapHandle,
    slots: Arc<Slots>,
    /// Where each tid was last found: its slot, or `IN_STORAGE` (checked at every
    /// use). A thread in storage would otherwise cost a scan of every slot at each
    /// read, and the response reads at every call it traces.
    hints: Mutex<HashMap<u32, u32>>,
    storage: MapHandle,
}

impl TaskMaps {
    pub(crate) fn new(tids: MapHandle, slots: Arc<Slots>, storage: MapHandle) -> TaskMaps {
        TaskMaps {
            tids,
            slots,
            hints: Mutex::new(HashMap::new()),
            storage,
        }
    }

    /// Another handle on the same maps and mapping, with hints of its own (for a
    /// response thread).
    fn dup(&self) -> Result<TaskMaps, Error> {
        Ok(TaskMaps::new(
            MapHandle::try_from(&self.tids).map_err(map_err("hs_tids", "dup fd"))?,
            Arc::clone(&self.slots),
            MapHandle::try_from(&self.storage).map_err(map_err("hs_tasks", "dup fd"))?,
        ))
    }

    /// The state of thread `tid`, looked for as the programs do (`task_at`): its slot,
    /// else its task storage.
    fn get(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        match hints.get(&tid).copied() {
            // Found in storage last time: still there unless the thread has since
            // claimed a slot (at an exec), which deletes its storage.
            Some(IN_STORAGE) => {
                if let Some(t) = self.stored(tid)? {
                    return Ok(Some(t));
                }
                hints.remove(&tid);
            }
            Some(i) => {
                if let Some(t) = self.slot(i, tid)? {
                    return Ok(Some(t));
                }
                hints.remove(&tid);
            }
            None => {}
        }
        if hints.len() >= HINTS {
            hints.clear();
        }
        for i in self.slots.find(tid) {
            if let Some(t) = self.slot(i, tid)? {
                hints.insert(tid, i);
                return Ok(Some(t));
            }
        }
        let t = self.stored(tid)?;
        if t.is_some() {
            hints.insert(tid, IN_STORAGE);
        }
        Ok(t)
    }

    /// Thread `tid`'s state in task storage. Task storage is keyed by a pidfd from
    /// userspace; PIDFD_THREAD names a thread rather than a process (Linux 6.9+).
    fn stored(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        let Some(fd) = crate::sys::pidfd_thread(tid as i32) else {
            return Ok(None);
        };
        match self
            .storage
            .lookup(&fd.as_raw_fd().to_ne_bytes(), MapFlags::ANY)
        {
            Ok(v) => Ok(v.and_then(|v| TaskState::decode(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err("hs_tasks", "lookup")(e)),
        }
    }

    /// Slot `i`'s state if it is held by thread `tid` (a copy the kernel makes: the
    /// mapping's words only say where to look). A slot is freed when its task exits,
    /// before the tid can be reused, so a held slot with this tid is this thread's.
    fn slot(&self, i: u32, tid: u32) -> Result<Option<TaskState>, Error> {
        let slot = self
            .tids
            .lookup(&i.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_tids", "lookup"))?
            .and_then(|v| abi::decode::<hs_tid>(&v));
        Ok(slot
            .filter(|s| s.owner != 0 && s.t.tid == tid)
            .and_then(|s| TaskState::from_task(&s.t, true)))
    }
}

/// Whether this kernel gives pidfds for threads (`PIDFD_THREAD`, Linux 6.9), which
/// reading a task's state from userspace ([`Kernel::task`]) needs.
pub fn thread_pidfds_supported() -> bool {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<i32>().ok());
    tid.is_some_and(|t| crate::sys::pidfd_thread(t).is_some())
}

impl Kernel {
    /// What the kernel keeps for thread `tid` (`None`: no such thread, or one the
    /// programs have not seen make a call).
    pub fn task(&self, tid: u32) -> Result<Option<TaskState>, Error> {
        self.task_maps.get(tid)
    }

    /// How many slots of the task array ([`crate::Options::tid_slots`]) tasks hold
    /// now: every task the programs have seen make a call, followed or not, that is
    /// not in task storage. A scan of the array, for tests and diagnosis.
    pub fn slots_held(&self) -> u32 {
        self.task_maps.slots.held()
    }

    /// A handle for other threads: task states and rows, for the response.
    pub fn probe(&self) -> Result<Probe, Error> {
        Ok(Probe {
            tasks: self.task_maps.dup()?,
            profiles: MapHandle::try_from(&self.profiles)
                .map_err(map_err("hs_profiles", "dup fd"))?,
            index: Arc::clone(&self.index),
            rows: MapHandle::try_from(&self.rows).map_err(map_err("hs_rows", "dup fd"))?,
            stopped: MapHandle::try_from(&self.stopped).map_err(map_err("hs_stopped", "dup fd"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: [u16; 8], nseq: u32, lfc: u32, frame: [u64; 2], fpos: u32) -> TaskState {
        TaskState {
            exe: ExeKey { dev: 1, ino: 2 },
            seq,
            nseq,
            fpos,
            lfc,
            frame,
            tid_slot: true,
        }
    }

    #[test]
    fn a_full_local_window_gives_the_calls_its_slots_name() {
        let mut t: hs_task = bytemuck::Zeroable::zeroed();
        t.valid = 1;
        t.seq = [9; SEQ]; // stale: the common call does not write it
        t.ltag = [0, 1, 257, 3, 60, 5, 6, 0xffff];
        // Calls back 1..8 in slots 2, 0, 0, 4, 1, 3, 6, 5.
        t.lwin = u64::from_le_bytes([1 << 2, 1, 1, 1 << 4, 1 << 1, 1 << 3, 1 << 6, 1 << 5]);
        t.lvalid = 7;
        assert_eq!(seq(&t), [9; SEQ]);
        t.lvalid = 8;
        assert_eq!(seq(&t), [257, 0, 0, 60, 1, 3, 6, 5]);
        let decoded = TaskState::decode(bytes_of(&t)).unwrap();
        assert_eq!(decoded.seq, [257, 0, 0, 60, 1, 3, 6, 5]);
    }

    #[test]
    fn after_call_mirrors_the_bpf_test_and_locality_frame() {
        // seq[0] = 3 (one call back), seq[1] = 4 (two back).
        let t = task([3, 4, 0, 0, 0, 0, 0, 0], 2, 0, [0, 0], 0);
        let mut row = vec![0u8; ROW];
        row[3] = 0b01;
        row[4] = 0b10;
        assert_eq!(t.after_call(Some(&row), 7), (0, 0));
        row[4] = 0b01; // 4 seen one back only: the distance-2 pair is missing
        assert_eq!(t.after_call(Some(&row), 7), (1, 1));
        assert_eq!(t.after_call(None, 7), (2, 1));
        // The slot leaving the frame (pos 65, set) gives its anomaly back.
        let t = task([3, 4, 0, 0, 0, 0, 0, 0], 2, 5, [0, 1 << 1], 65);
        assert_eq!(t.after_call(None, 7), (2, 5));
        row[4] = 0b10;
        assert_eq!(t.after_call(Some(&row), 7), (0, 4));
        // Only nseq predecessors count.
        let t = task([3, 9, 9, 9, 9, 9, 9, 9], 1, 0, [0, 0], 0);
        assert_eq!(t.after_call(Some(&row), 7), (0, 0));
    }
}
