//! A cover profile's stored traces are rebuilt into an automaton on load; what the
//! loader allocates must stay within a small multiple of the payload, whatever the
//! payload declares. Its own test binary: the counting allocator sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(n, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A cover payload (layout version 1) of ten symbols whose traces are `traces`,
/// already encoded, `n` of them.
fn payload(n: u64, calls: u64, traces: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [1, 20, 1 << 24, 10] {
        varint(v, &mut p); // version, locality, max_calls, symbols
    }
    p.extend(1..=10u8);
    for v in [calls, 0, 0, 0, n] {
        varint(v, &mut p); // counts, traces
    }
    p.extend_from_slice(traces);
    p
}

/// A cover payload of `symbols` (raw numbers) and one trace of one call.
fn payload_of_symbols(symbols: &[u32]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [1, 20, 1 << 24, symbols.len() as u64] {
        varint(v, &mut p);
    }
    for &s in symbols {
        varint(u64::from(s), &mut p);
    }
    for v in [1, 0, 0, 0, 1, 1, 1] {
        varint(v, &mut p); // counts (1 call), one trace of one call: id 1
    }
    p
}

/// Peak bytes allocated while loading `p`, and whether it loaded.
fn load_peak(p: &[u8]) -> (usize, Result<(), String>) {
    let load = homeostat_core::cover::entry().load;
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = load(p).map(drop).map_err(|e| e.to_string());
    let peak = PEAK.load(Ordering::SeqCst) - base;
    eprintln!("{peak} bytes at most to load a {}-byte payload", p.len());
    (peak, r)
}

#[test]
fn loading_is_bounded_by_the_payload() {
    // Two million empty traces: one byte of payload each.
    let n = 2_000_000u64;
    let p = payload(n, 0, &vec![0u8; n as usize]);
    let (peak, r) = load_peak(&p);
    assert!(r.unwrap_err().contains("an empty trace"));
    assert!(
        peak < 4 * p.len() + (1 << 20),
        "{peak} bytes allocated for a {}-byte payload of empty traces",
        p.len()
    );
    // A million one-call traces: valid, two payload bytes each.
    let n = 1_000_000u64;
    let p = payload(n, n, &[1u8, 3].repeat(n as usize));
    let (peak, r) = load_peak(&p);
    r.unwrap();
    assert!(
        peak < 8 * p.len() + (1 << 20),
        "{peak} bytes allocated for a {}-byte payload of one-call traces",
        p.len()
    );
    // A million distinct symbols past the direct table (the alphabet's map), and a
    // million copies of one (refused as stored twice).
    for (symbols, loads) in [
        (
            (0..1_000_000u32).map(|i| 5000 + i * 7).collect::<Vec<_>>(),
            true,
        ),
        (vec![3u32; 1_000_000], false),
    ] {
        let p = payload_of_symbols(&symbols);
        let (peak, r) = load_peak(&p);
        assert_eq!(r.is_ok(), loads, "{r:?}");
        assert!(
            peak < 16 * p.len() + (1 << 20),
            "{peak} bytes allocated for a {}-byte payload of {} symbols",
            p.len(),
            symbols.len()
        );
    }
}
