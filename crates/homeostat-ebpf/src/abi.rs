//! The byte layout shared with the BPF programs, in one place.
//!
//! The structs are the `#[repr(C)]` types libbpf-cargo generates from the object's BTF
//! (so a field added in `src/bpf/homeostat.h` changes them too, and code using a moved
//! field stops compiling instead of reading the wrong bytes); map keys and values are
//! encoded and decoded through them with bytemuck. Only the `#define`s of the header
//! are repeated here, because BTF does not carry them.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use homeostat_core::ph::ExeKey;

pub(crate) use crate::skel::types::{
    hs_class_event, hs_class_key, hs_config, hs_event, hs_exec_event, hs_index, hs_key, hs_profile,
    hs_row, hs_stop, hs_task, hs_tid,
};
pub(crate) use crate::skel::types::{
    hs_rate_cfg, hs_rate_event, hs_rate_ring, hs_thr_event, hs_thr_key, hs_thr_mode,
};

/// Columns (previous call) of pH's table in the kernel, and the rows of x86_64 calls
/// (`HS_ROW`).
pub const ROW: usize = 512;
/// Rows of a profile's table (`HS_TABLE`): x86_64 calls, then i386 (compat) calls at
/// [`COMPAT`] + their number.
pub const TABLE: usize = 1024;
/// Where i386 calls' rows start (`HS_COMPAT`).
pub const COMPAT: usize = 512;
/// Profiles, i.e. slots of the row index (`HS_SLOTS`).
pub const SLOTS: u32 = 4096;
/// Rows of the pool, row 0 the all-zero one (`HS_ROWS`).
pub(crate) const ROWS: u32 = 65536;
/// Locality frame size in the kernel (`HS_LOCALITY`).
pub const LOCALITY: u32 = 128;
/// Predecessors kept per task (`HS_SEQ`).
pub(crate) const SEQ: usize = 8;

/// `hs_profile.state`.
pub(crate) const TRAINING: u32 = 0;
pub(crate) const NORMAL: u32 = 1;

/// `hs_event.kind`.
pub(crate) const EV_ANOMALY: u32 = 1;
pub(crate) const EV_NEW_PAIRS: u32 = 2;
pub(crate) const EV_EXEC: u32 = 3;
pub(crate) const EV_EXEC_REFUSED: u32 = 4;
/// `HS_EV_NEW_CLASS`, `HS_EV_UNSEEN_CLASS` (src/bpf/args.bpf.h).
pub(crate) const EV_NEW_CLASS: u32 = 5;
pub(crate) const EV_UNSEEN_CLASS: u32 = 6;
/// `hs_event.flags`: the process was sent SIGSTOP for a response.
pub(crate) const EVF_STOPPED: u32 = 1;
/// `hs_event.flags`: the anomaly's task is not one its profile learns from.
pub(crate) const EVF_FOREIGN: u32 = 2;
/// `hs_event.flags` of an exec: the profile of its (dev, ino) is another file's.
pub(crate) const EVF_REPLACED: u32 = 4;
/// `HS_EV_THROTTLE` (src/bpf/throttle.bpf.h).
pub(crate) const EV_THROTTLE: u32 = 7;
/// `HS_EV_RATE_CALL`, `HS_EV_RATE_OVER`.
pub(crate) const EV_RATE_CALL: u32 = 8;
pub(crate) const EV_RATE_OVER: u32 = 9;
/// `hs_profile.learn_flags`.
pub(crate) const LEARN_UID: u32 = 1;
pub(crate) const LEARN_CGROUP: u32 = 2;

/// Entries of the per-CPU `hs_stats` array (`HS_NSTATS`), in `HS_STAT_*` order: the
/// five loss counters, events submitted (for wakeup batching, not a loss), tasks
/// both of whose `hs_tids` slots were taken (their state in task storage instead), and calls
/// that took the general path.
pub(crate) const NSTATS: usize = 8;
/// Slots of the task array (`hs_tids`) at most and by default (`HS_TIDS`, a power of two).
pub const TIDS: u32 = 32768;

/// Marks the generated types as plain data for bytemuck.
macro_rules! plain {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: the type is #[repr(C)], made only of integers and arrays of integers,
        // with explicit `pad` fields where C would pad (the sizes are checked below), so
        // it has no padding bytes and every bit pattern is a valid value.
        unsafe impl Zeroable for $t {}
        // SAFETY: as for Zeroable; it is also Copy and 'static (no references).
        unsafe impl Pod for $t {}
    )*};
}

plain!(
    hs_key,
    hs_index,
    hs_row,
    hs_profile,
    hs_task,
    hs_tid,
    hs_config,
    hs_event,
    hs_exec_event,
    hs_stop,
    hs_class_key,
    hs_class_event,
    hs_thr_mode,
    hs_thr_key,
    hs_thr_event,
    hs_rate_cfg,
    hs_rate_ring,
    hs_rate_event,
);

// The sizes the C compiler gives these types (docs/ebpf.md lists them): a generated
// type with implicit padding would differ from its field sum, and so fail here.
const _: () = {
    assert!(size_of::<hs_key>() == 16);
    assert!(size_of::<hs_index>() == 4 * TABLE);
    assert!(size_of::<hs_row>() == ROW);
    assert!(size_of::<hs_profile>() == 56);
    assert!(size_of::<hs_task>() == 176);
    assert!(size_of::<hs_tid>() == 192);
    assert!(size_of::<hs_config>() == 32);
    assert!(size_of::<hs_event>() == 48);
    assert!(size_of::<hs_exec_event>() == 48 + 2 * 256);
    assert!(size_of::<hs_stop>() == 16);
    assert!(size_of::<hs_class_key>() == 16);
    assert!(size_of::<hs_class_event>() == 48 + 24 + 256 + 8 + 512);
    assert!(size_of::<hs_thr_mode>() == 24);
    assert!(size_of::<hs_thr_key>() == 40);
    assert!(size_of::<hs_thr_event>() == 48 + 8 + 32);
    assert!(size_of::<hs_rate_cfg>() == 40);
    assert!(size_of::<hs_rate_ring>() == 8 + 8 * 128);
    assert!(size_of::<hs_rate_event>() == 48 + 16);
};

/// A value of `T` from a map's bytes; `None` if they are not exactly one `T` (a map
/// of another layout: a stale pinned map, or a kernel/loader mismatch).
pub(crate) fn decode<T: Pod>(b: &[u8]) -> Option<T> {
    (b.len() == size_of::<T>()).then(|| bytemuck::pod_read_unaligned(b))
}

/// A value of `T` from the start of `b` (ring buffer records may be longer).
pub(crate) fn decode_prefix<T: Pod>(b: &[u8]) -> Option<T> {
    b.get(..size_of::<T>()).map(bytemuck::pod_read_unaligned)
}

pub(crate) fn key(k: ExeKey) -> hs_key {
    hs_key {
        dev: k.dev,
        ino: k.ino,
    }
}

pub(crate) fn exe(k: &hs_key) -> ExeKey {
    ExeKey {
        dev: k.dev,
        ino: k.ino,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_bytes() {
        let k = key(ExeKey { dev: 7, ino: 9 });
        let back: hs_key = decode(bytemuck::bytes_of(&k)).unwrap();
        assert_eq!(exe(&back), ExeKey { dev: 7, ino: 9 });
        assert!(decode::<hs_key>(&bytemuck::bytes_of(&k)[..12]).is_none());
    }
}
