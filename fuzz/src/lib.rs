//! Shared body of the fuzz targets: run one reader on the input and check that it
//! neither panics nor breaks the `Visitor` protocol.
#![forbid(unsafe_code)]

use std::collections::HashSet;

use homeostat_traces::recording::{Header, Writer};
use homeostat_traces::{detect_format, read_from, Arch, Format, ReadOptions, Visitor};

/// Counts events and asserts the protocol: unique keys, calls only between `begin`
/// and `end`.
#[derive(Default)]
pub struct Checker {
    open: HashSet<u64>,
    seen: HashSet<u64>,
    pub calls: u64,
}

impl Visitor for Checker {
    fn begin(&mut self, key: u64, name: &str) {
        assert!(!name.is_empty(), "empty trace name");
        assert!(self.seen.insert(key), "key {key} begun twice");
        self.open.insert(key);
    }
    fn call(&mut self, key: u64, _syscall: u32) {
        assert!(
            self.open.contains(&key),
            "call on trace {key} that is not open"
        );
        self.calls += 1;
    }
    fn end(&mut self, key: u64) {
        assert!(
            self.open.remove(&key),
            "end of trace {key} that is not open"
        );
    }
    fn program(&mut self, key: u64, _path: &str) {
        assert!(
            self.open.contains(&key),
            "program for trace {key} that is not open"
        );
    }
}

/// A valid recording header, so the record decoder gets fuzzed without the fuzzer
/// having to invent JSON first.
fn recording_prefix() -> Vec<u8> {
    let header = Header::new(Arch::X86_64, "fuzz", 1_000_000);
    match Writer::new(Vec::new(), &header).and_then(|w| w.finish()) {
        Ok(bytes) => bytes,
        Err(e) => panic!("writing a header to a Vec failed: {e}"),
    }
}

/// Reads `data` as `format` and checks the outcome.
pub fn check(format: Format, data: &[u8]) {
    let _ = detect_format(data);
    // A small per-trace cap exercises the TooLarge paths too.
    let cap = data
        .first()
        .map_or(1 << 28, |&b| if b & 1 == 1 { 1 << 28 } else { 64 });
    let opts = ReadOptions {
        format: Some(format),
        arch: if data.len() % 2 == 0 {
            Arch::X86_64
        } else {
            Arch::I386
        },
        max_trace_calls: cap,
    };
    let owned;
    let input: &[u8] = if format == Format::Recording && data.first() == Some(&0xff) {
        owned = [recording_prefix().as_slice(), &data[1..]].concat();
        &owned
    } else {
        data
    };
    let mut v = Checker::default();
    if read_from("fuzz", input, format, &opts, &mut v).is_ok() {
        assert!(v.open.is_empty(), "Ok but traces left open: {:?}", v.open);
    }
}
