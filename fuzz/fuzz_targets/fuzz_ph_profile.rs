//! Feeds arbitrary bytes to the pH profile loader (`PhProfile::from_bytes`: the
//! `profiles/*.phprof` files of `homeostat run`'s state directory, which another user
//! or a crash may have damaged). An input starting with byte `0xff` gets the rest
//! wrapped in a valid header (magic, version, length, checksum), so the payload decoder
//! behind the checksum is reached. It must return Ok or Err, never panic; a profile
//! that loads must save and reload to the same pairs, merge with its copy to itself,
//! convert to the daemon's format and monitor calls without panicking.
#![no_main]

use homeostat_core::ph::{PhConfig, PhProfile, PhTask, PH_MAGIC};
use homeostat_core::profile::frame;
use homeostat_monitor::daemon_profile::DaemonProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let owned;
    let bytes = if data.first() == Some(&0xff) {
        owned = frame(PH_MAGIC, &data[1..]);
        &owned[..]
    } else {
        data
    };
    let Ok(mut p) = PhProfile::from_bytes(bytes) else {
        return;
    };
    let again = PhProfile::from_bytes(&p.to_bytes()).expect("a loaded profile reloads");
    assert_eq!(again.raw_pairs(), p.raw_pairs());
    assert_eq!(again.pairs(), p.pairs());
    let merged = p
        .merged_with(&again)
        .expect("a profile merges with its copy");
    assert_eq!(merged.pairs(), p.pairs());
    let _ = DaemonProfile::from_ph(&p);
    let config = PhConfig::default();
    let mut task = PhTask::new(&p);
    for (i, &b) in data.iter().take(256).enumerate() {
        p.on_syscall(
            &mut task,
            u32::from(b),
            i % 17 == 0,
            i as u64,
            &config,
            &mut |_| {},
        );
    }
});
