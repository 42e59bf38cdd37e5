//! Feeds arbitrary bytes to the pH profile loader (`PhProfile::from_bytes`: the
//! `profiles/*.phprof` files of `homeostat run`'s state directory, which another user
//! or a crash may have damaged). An input starting with byte `0xff` (`0xfe`) gets the
//! rest wrapped in a valid version 1 (version 2: with a symbol table and learned rates)
//! header (magic, version, length, checksum), so the payload decoder behind the
//! checksum is reached. It must return Ok or Err, never panic; a profile
//! that loads must save and reload to the same pairs, merge with its copy to itself,
//! convert to the daemon's format and monitor calls without panicking.
#![no_main]

use homeostat_core::ph::{PhConfig, PhProfile, PhTask, PH_MAGIC};
use homeostat_core::profile::frame_version;
use homeostat_core::rate::RateKind;
use homeostat_monitor::daemon_profile::DaemonProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let owned;
    let bytes = match data.first() {
        Some(&0xff) => {
            owned = frame_version(PH_MAGIC, 1, &data[1..]);
            &owned[..]
        }
        Some(&0xfe) => {
            owned = frame_version(PH_MAGIC, 2, &data[1..]);
            &owned[..]
        }
        _ => data,
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
    assert_eq!(again.learned_rates(), p.learned_rates());
    assert_eq!(again.symbol_table(), p.symbol_table());
    let config = PhConfig {
        rate_limit: true,
        ..PhConfig::default()
    };
    let mut task = PhTask::new(&p);
    for (i, &b) in data.iter().take(256).enumerate() {
        let s = p.symbol_of(&task, u32::from(b), None);
        p.on_syscall(&mut task, s, i % 17 == 0, i as u64, &config, &mut |_| {});
        let kind = if b & 1 == 0 { RateKind::Fork } else { RateKind::Create };
        p.on_rate(&task, kind, i as u64 * 1_000_000, &config, &mut |_| {});
    }
});
