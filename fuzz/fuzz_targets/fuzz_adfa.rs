//! Feeds arbitrary bytes to the adfa reader: it must return Ok or Err, never panic, and
//! must keep the Visitor protocol (calls only inside begun traces; all ended on Ok).
#![no_main]

use homeostat_fuzz::check;
use homeostat_traces::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check(Format::Adfa, data));
