//! The system-wide capture edge of homeostat: eBPF programs that run pH's per-call work
//! (sequence, lookahead-pair test or training, locality frame) inside the kernel, and
//! the userspace loader that the daemon drives.

#[cfg(feature = "bpf")]
mod kernel;
#[cfg(feature = "bpf")]
pub use kernel::*;

#[cfg(feature = "bpf")]
#[allow(clippy::all, missing_docs, unused)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/homeostat.skel.rs"));
}
