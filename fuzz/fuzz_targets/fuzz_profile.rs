//! Feeds arbitrary bytes to the profile loader, both through the checksummed file
//! format and straight to the payload decoder behind the checksum (which random bytes
//! would otherwise rarely reach). It must return Ok or Err, never panic; a profile that
//! loads must test a trace and save again without panicking.
#![no_main]

use homeostat_core::{Model, Profile, Scratch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Profile::from_bytes(data);
    if let Ok(p) = Profile::from_payload(data) {
        let mut s = Scratch::default();
        let probe: Vec<u32> = data.iter().map(|&b| u32::from(b)).collect();
        p.model.test_trace(&probe, &mut s);
        let again = Profile::from_bytes(&p.to_bytes()).expect("a loaded profile reloads");
        assert_eq!(again.model.profile_size(), p.model.profile_size());
    }
});
